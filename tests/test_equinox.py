"""stn_jax.equinox: shapes, identity at init, gradients, sample_from, jit/vmap, training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from module_fixtures import IDENTITY_ATOL, THETA_SHAPES, images, squares

import stn_jax
from stn_jax.equinox import LocalisationNet, SpatialTransformer


@eqx.filter_jit
def call(model, x, sample_from=None):
  """Jitted forward: one compile per model structure instead of one per eager op."""
  return model(x, sample_from=sample_from)


@pytest.fixture(scope="module")
def loc3():
  return LocalisationNet(3, features=8, key=jax.random.key(0))


def perturb_head(st, scale=0.05, seed=0):
  """Moves the head off its zero weight so that theta depends on the input."""
  noise = np.random.default_rng(seed).normal(scale=scale, size=st.head.weight.shape)
  return eqx.tree_at(lambda m: m.head.weight, st, jnp.asarray(noise, jnp.float32))


@pytest.mark.parametrize("transform", ["affine", "attention", "projective", "tps"])
def test_shapes_theta_and_identity_at_init(transform, loc3):
  x = images()
  st = SpatialTransformer(loc3, 8, transform=transform, key=jax.random.key(1))
  V, theta = call(st, x)
  assert V.shape == x.shape and V.dtype == jnp.float32
  assert theta.shape == (2,) + THETA_SHAPES[transform] == (2,) + st.theta_shape
  identity = stn_jax.identity_theta(transform)
  np.testing.assert_array_equal(theta, jnp.broadcast_to(identity, theta.shape))
  np.testing.assert_allclose(V, x, rtol=0, atol=IDENTITY_ATOL[transform])

  small = SpatialTransformer(
    loc3, 8, transform=transform, output_shape=(8, 10), key=jax.random.key(2)
  )
  V_small, theta_small = call(small, x)
  assert V_small.shape == (2, 8, 10, 3)
  np.testing.assert_array_equal(theta_small, theta)
  np.testing.assert_allclose(
    V_small, stn_jax.warp(x, theta, transform, shape=(8, 10)), rtol=0, atol=1e-6
  )


def test_same_architecture_as_nnx():
  from flax import nnx

  from stn_jax.nnx import SpatialTransformer as NNXTransformer

  ours = SpatialTransformer.with_localisation_net(1, transform="tps", key=jax.random.key(0))
  theirs = NNXTransformer.with_localisation_net(1, transform="tps", rngs=nnx.Rngs(0))
  # Kernels: Equinox stores (out, in, kh, kw) and (out, in); Flax (kh, kw, in, out), (in, out).
  pairs = [
    (ours.localisation.conv1.weight, theirs.localisation.conv1.kernel, (2, 3, 1, 0)),
    (ours.localisation.conv2.weight, theirs.localisation.conv2.kernel, (2, 3, 1, 0)),
    (ours.localisation.dense.weight, theirs.localisation.dense.kernel, (1, 0)),
    (ours.head.weight, theirs.head.kernel, (1, 0)),
  ]
  for w, k, axes in pairs:
    assert jnp.transpose(w, axes).shape == k.shape
  np.testing.assert_array_equal(ours.head.bias, theirs.head.bias[...])

  # With NNX's weights copied in, both compute the same features and theta.
  def copy(w, k, axes):
    return jnp.transpose(jnp.asarray(k[...]), np.argsort(axes))

  loc = ours.localisation
  loc = eqx.tree_at(
    lambda m: (m.conv1.weight, m.conv2.weight, m.dense.weight),
    loc,
    tuple(copy(*p) for p in pairs[:3]),
  )
  loc = eqx.tree_at(
    lambda m: (m.conv1.bias, m.conv2.bias, m.dense.bias),
    loc,
    (
      theirs.localisation.conv1.bias[...][:, None, None],
      theirs.localisation.conv2.bias[...][:, None, None],
      theirs.localisation.dense.bias[...],
    ),
  )
  x = images(n=2, size=30, channels=1, seed=7)
  np.testing.assert_allclose(
    eqx.filter_jit(loc)(x), nnx.jit(lambda m, x: m(x))(theirs.localisation, x), rtol=1e-5, atol=1e-5
  )


def test_gradients_reach_the_localisation_net(loc3):
  x = images(seed=1)
  st = SpatialTransformer(loc3, 8, key=jax.random.key(0))
  weights = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)

  @eqx.filter_jit
  @eqx.filter_grad
  def grad_fn(model):
    V, _ = model(x)
    return jnp.sum(V * weights)

  grads = grad_fn(st)
  # At init the head's zero weight blocks the path back to the localisation net.
  assert float(jnp.abs(grads.head.weight).max()) > 1e-4
  assert float(jnp.abs(grads.head.bias).max()) > 1e-4
  np.testing.assert_array_equal(grads.localisation.conv1.weight, 0)

  grads = grad_fn(perturb_head(st))
  for layer in ("conv1", "conv2", "dense"):
    g = getattr(grads.localisation, layer).weight
    assert float(jnp.abs(g).max()) > 1e-6, layer


def test_sample_from_full_resolution(loc3):
  full = images(size=40, seed=3)
  view = full.reshape(2, 20, 2, 20, 2, 3).mean(axis=(2, 4))
  st = perturb_head(SpatialTransformer(loc3, 8, output_shape=(24, 24), key=jax.random.key(0)))
  V, theta = call(st, view, full)
  assert V.shape == (2, 24, 24, 3)
  assert float(jnp.abs(theta - stn_jax.identity_theta()[None]).max()) > 1e-3
  _, theta_view = call(st, view)
  np.testing.assert_array_equal(theta, theta_view)
  np.testing.assert_allclose(V, stn_jax.warp(full, theta, shape=(24, 24)), rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match=r"sample_from must have the same leading"):
    call(st, view, full[:1])


def test_jit_vmap_and_no_retrace(loc3):
  x = images(n=3, seed=4)
  st = perturb_head(
    SpatialTransformer(loc3, 8, transform="projective", key=jax.random.key(0)), scale=0.02
  )
  traces = []

  @eqx.filter_jit
  def forward(model, x):
    traces.append(None)
    return model(x)

  V, theta = forward(st, x)
  forward(st, x + 1.0)
  assert len(traces) == 1
  assert float(jnp.abs(theta - jnp.eye(3)[None]).max()) > 1e-3
  np.testing.assert_allclose(V, stn_jax.warp(x, theta, "projective"), rtol=1e-5, atol=1e-5)

  # The module is a pytree: jax.vmap over one (H, W, C) image at a time, under jax.jit.
  V_vmap, theta_vmap = jax.jit(jax.vmap(lambda m, xi: m(xi), in_axes=(None, 0)))(st, x)
  assert theta_vmap.shape == (3, 3, 3)
  np.testing.assert_allclose(V_vmap, V, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(theta_vmap, theta, rtol=1e-5, atol=1e-6)


def test_training_recentres_shifted_squares():
  rng = np.random.default_rng(0)
  x = squares(rng.integers(-4, 5, size=(16, 2)))
  target = squares(np.zeros((16, 2), int))
  st = SpatialTransformer.with_localisation_net(
    1, features=8, transform="attention", key=jax.random.key(0)
  )
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(eqx.filter(st, eqx.is_inexact_array))

  @eqx.filter_jit
  def train_step(model, opt_state):
    def loss_fn(model):
      V, _ = model(x)
      return jnp.mean((V - target) ** 2)

    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss

  losses = []
  for _ in range(40):
    st, opt_state, loss = train_step(st, opt_state)
    losses.append(float(loss))
  assert losses[0] > 0.05
  assert losses[-1] < 0.25 * losses[0], losses


def test_bad_options_raise(loc3):
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"unknown transform 'rigid'; expected one of"):
    SpatialTransformer(loc3, 8, transform="rigid", key=key)
  with pytest.raises(ValueError, match=r"output_shape must be .* got \(8,\)"):
    SpatialTransformer(loc3, 8, output_shape=(8,), key=key)
  with pytest.raises(ValueError, match=r"unknown padding_mode 'wrap'"):
    SpatialTransformer(loc3, 8, padding_mode="wrap", key=key)
  with pytest.raises(ValueError, match=r"control_points only applies to transform='tps'"):
    SpatialTransformer(loc3, 8, control_points=np.zeros((4, 2)), key=key)
  with pytest.raises(ValueError, match=r"pool_size must be a pair of positive ints"):
    LocalisationNet(1, pool_size=(0, 4), key=key)
  wrong_width = SpatialTransformer(loc3, 16, key=key)
  with pytest.raises(ValueError, match=r"features of shape \(\.\.\., 16\); got \(8,\)"):
    call(wrong_width, images())

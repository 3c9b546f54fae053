"""stn_jax.nnx: shapes, identity at init, gradients, sample_from, transforms, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from module_fixtures import IDENTITY_ATOL, THETA_SHAPES, images, squares

import stn_jax
from stn_jax.nnx import LocalisationNet, SpatialTransformer


@nnx.jit
def call(model, x, sample_from=None):
  """Jitted forward: one compile per model structure instead of one per eager op."""
  return model(x, sample_from=sample_from)


@pytest.fixture(scope="module")
def loc3():
  """One localisation net for RGB inputs, shared: building nets dominates test time."""
  return LocalisationNet(3, features=8, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def loc1():
  return LocalisationNet(1, features=8, rngs=nnx.Rngs(1))


def perturb_head(stn, scale=0.05, seed=0):
  """Moves the head off its zero kernel so that theta depends on the input."""
  kernel = stn.head.kernel
  noise = np.random.default_rng(seed).normal(scale=scale, size=kernel.shape)
  kernel[...] = jnp.asarray(noise, kernel.dtype)


@pytest.mark.parametrize("transform", ["affine", "attention", "projective", "tps"])
def test_shapes_theta_and_identity_at_init(transform, loc3):
  x = images()
  stn = SpatialTransformer(loc3, 8, transform=transform, rngs=nnx.Rngs(0))
  V, theta = call(stn, x)
  assert V.shape == x.shape and V.dtype == jnp.float32
  assert theta.shape == (2,) + THETA_SHAPES[transform] == (2,) + stn.theta_shape
  identity = stn_jax.identity_theta(transform)
  np.testing.assert_array_equal(theta, jnp.broadcast_to(identity, theta.shape))
  np.testing.assert_allclose(V, x, rtol=0, atol=IDENTITY_ATOL[transform])

  # The paper's downsampling transformer: a smaller output grid over the same input.
  small = SpatialTransformer(loc3, 8, transform=transform, output_shape=(8, 10), rngs=nnx.Rngs(1))
  V_small, theta_small = call(small, x)
  assert V_small.shape == (2, 8, 10, 3)
  np.testing.assert_array_equal(theta_small, theta)
  np.testing.assert_allclose(
    V_small, stn_jax.warp(x, theta, transform, shape=(8, 10)), rtol=0, atol=1e-6
  )


def test_custom_control_points_and_kernel_object(loc3):
  points = np.stack(np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3)), -1).reshape(9, 2)
  x = images()
  stn = SpatialTransformer(
    loc3,
    8,
    transform="tps",
    control_points=points,
    kernel=stn_jax.kernels.keys_cubic(),
    padding_mode="border",
    rngs=nnx.Rngs(0),
  )
  V, theta = call(stn, x)
  assert theta.shape == (2, 9, 2)
  np.testing.assert_allclose(theta, np.broadcast_to(points, (2, 9, 2)), rtol=0, atol=1e-7)
  # Keys' cubic is interpolating: exact at the identity grid, as bilinear.
  np.testing.assert_allclose(V, x, rtol=0, atol=2e-5)


def test_gradients_reach_the_localisation_net(loc3):
  x = images(seed=1)
  stn = SpatialTransformer(loc3, 8, rngs=nnx.Rngs(0))
  weights = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)

  def loss(model):
    V, _ = model(x)
    return jnp.sum(V * weights)

  grad_fn = nnx.jit(nnx.grad(loss))
  grads = grad_fn(stn)
  # At init the head's zero kernel blocks the path back to the localisation net, but the
  # head itself learns.
  assert float(jnp.abs(grads.head.kernel[...]).max()) > 1e-4
  assert float(jnp.abs(grads.head.bias[...]).max()) > 1e-4
  np.testing.assert_array_equal(grads.localisation.conv1.kernel[...], 0)

  perturb_head(stn)
  grads = grad_fn(stn)
  for layer in ("conv1", "conv2", "dense"):
    g = getattr(grads.localisation, layer).kernel[...]
    assert float(jnp.abs(g).max()) > 1e-6, layer


def test_sample_from_full_resolution(loc3):
  full = images(size=40, seed=3)
  view = full.reshape(2, 20, 2, 20, 2, 3).mean(axis=(2, 4))  # 2x2 box downscale
  stn = SpatialTransformer(loc3, 8, output_shape=(24, 24), rngs=nnx.Rngs(0))
  perturb_head(stn)
  V, theta = call(stn, view, full)
  assert V.shape == (2, 24, 24, 3)
  assert float(jnp.abs(theta - stn_jax.identity_theta()[None]).max()) > 1e-3
  # theta comes from the view, the pixels from the full-resolution image.
  _, theta_view = call(stn, view)
  np.testing.assert_array_equal(theta, theta_view)
  np.testing.assert_allclose(V, stn_jax.warp(full, theta, shape=(24, 24)), rtol=0, atol=1e-6)

  with pytest.raises(ValueError, match=r"sample_from must have the same leading"):
    call(stn, view, full[:1])


def test_jit_vmap_and_no_retrace(loc3):
  # Eager calls are covered by the doctests; eager op-by-op compiles are the slow part here.
  x = images(n=3, seed=4)
  stn = SpatialTransformer(loc3, 8, transform="projective", rngs=nnx.Rngs(0))
  perturb_head(stn, scale=0.02)
  traces = []

  @nnx.jit
  def forward(model, x):
    traces.append(None)
    return model(x)

  V, theta = forward(stn, x)
  forward(stn, x + 1.0)
  assert len(traces) == 1
  assert float(jnp.abs(theta - jnp.eye(3)[None]).max()) > 1e-3
  np.testing.assert_allclose(V, stn_jax.warp(x, theta, "projective"), rtol=1e-5, atol=1e-5)

  # Per example: split into a graph and a pytree of state, vmap a pure function over
  # unbatched (H, W, C) images.
  graphdef, state = nnx.split(stn)
  V_vmap, theta_vmap = jax.jit(jax.vmap(lambda xi: nnx.merge(graphdef, state)(xi)))(x)
  assert theta_vmap.shape == (3, 3, 3)
  np.testing.assert_allclose(V_vmap, V, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(theta_vmap, theta, rtol=1e-5, atol=1e-6)


class TwoStageModel(nnx.Module):
  """Affine transformer, then an attention glimpse of its output, then a classifier."""

  def __init__(self, rngs: nnx.Rngs):
    self.align = SpatialTransformer.with_localisation_net(1, features=8, rngs=rngs)
    self.glimpse = SpatialTransformer.with_localisation_net(
      1, features=8, transform="attention", output_shape=(10, 10), rngs=rngs
    )
    self.classify = nnx.Linear(100, 4, rngs=rngs)

  def __call__(self, x):
    aligned, theta_a = self.align(x)
    glimpse, theta_g = self.glimpse(aligned)
    return self.classify(glimpse.reshape(x.shape[0], -1)), (theta_a, theta_g)


def test_two_transformers_in_one_model():
  x = squares([(2, -1), (-3, 0)])
  model = TwoStageModel(nnx.Rngs(0))
  logits, (theta_a, theta_g) = nnx.jit(lambda m, x: m(x))(model, x)
  assert logits.shape == (2, 4) and theta_a.shape == (2, 2, 3) and theta_g.shape == (2, 3)
  np.testing.assert_array_equal(theta_g, jnp.tile(jnp.array([1.0, 0.0, 0.0]), (2, 1)))

  def loss(m):
    return jnp.sum(m(x)[0] ** 2)

  grads = nnx.jit(nnx.grad(loss))(model)
  assert float(jnp.abs(grads.align.head.kernel[...]).max()) > 1e-6
  assert float(jnp.abs(grads.glimpse.head.kernel[...]).max()) > 1e-6
  # The two transformers own separate parameters.
  assert grads.align.head.kernel[...].shape == (8, 6)
  assert grads.glimpse.head.kernel[...].shape == (8, 3)


def test_training_recentres_shifted_squares():
  rng = np.random.default_rng(0)
  x = squares(rng.integers(-4, 5, size=(16, 2)))
  target = squares(np.zeros((16, 2), int))
  stn = SpatialTransformer.with_localisation_net(
    1, features=8, transform="attention", rngs=nnx.Rngs(0)
  )
  optimizer = nnx.Optimizer(stn, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, target):
    def loss_fn(model):
      V, _ = model(x)
      return jnp.mean((V - target) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(stn, optimizer, x, target)) for _ in range(40)]
  assert losses[0] > 0.05  # the shifted squares really differ from the target
  assert losses[-1] < 0.25 * losses[0], losses


def test_localisation_net_is_size_agnostic(loc1):
  assert loc1.features == 8
  for size in (28, 42, 60):
    out = nnx.jit(lambda net, x: net(x))(loc1, images(n=2, size=size, channels=1))
    assert out.shape == (2, 8)
    assert bool(jnp.all(out >= 0)) and float(out.max()) > 0  # ReLU features, not dead


def test_bad_options_raise(loc1):
  rngs = nnx.Rngs(0)
  net = loc1
  with pytest.raises(ValueError, match=r"unknown transform 'rigid'; expected one of"):
    SpatialTransformer(net, 8, transform="rigid", rngs=rngs)
  with pytest.raises(ValueError, match=r"output_shape must be .* got \(8,\)"):
    SpatialTransformer(net, 8, output_shape=(8,), rngs=rngs)
  with pytest.raises(ValueError, match=r"unknown kernel 'cubic'"):
    SpatialTransformer(net, 8, kernel="cubic", rngs=rngs)
  with pytest.raises(ValueError, match=r"unknown padding_mode 'wrap'"):
    SpatialTransformer(net, 8, padding_mode="wrap", rngs=rngs)
  with pytest.raises(ValueError, match=r"control_points only applies to transform='tps'"):
    SpatialTransformer(net, 8, control_points=np.zeros((4, 2)), rngs=rngs)
  with pytest.raises(ValueError, match=r"control_points must be distinct"):
    SpatialTransformer(net, 8, transform="tps", control_points=np.zeros((4, 2)), rngs=rngs)
  with pytest.raises(ValueError, match=r"pool_size must be a pair of positive ints"):
    LocalisationNet(1, pool_size=(0, 4), rngs=rngs)
  wrong_width = SpatialTransformer(net, 16, rngs=rngs)
  with pytest.raises(ValueError, match=r"features of shape \(\.\.\., 16\); got \(2, 8\)"):
    call(wrong_width, images(channels=1))

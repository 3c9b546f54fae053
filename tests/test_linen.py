"""stn_jax.linen: shapes, identity at init, agreement with stn_jax.nnx, jitted training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from module_fixtures import IDENTITY_ATOL, THETA_SHAPES, images, squares

import stn_jax
import stn_jax.nnx
from stn_jax.linen import LocalisationNet, SpatialTransformer


@pytest.fixture(scope="module")
def affine_params():
  """Params of an affine transformer on (N, 20, 20, 3) images, shared to save compiles."""
  model = SpatialTransformer(LocalisationNet(features=8))
  return jax.jit(model.init)(jax.random.key(0), images())


@pytest.fixture(scope="module")
def nnx_localisation():
  return stn_jax.nnx.LocalisationNet(3, features=8, rngs=nnx.Rngs(0))


def perturbed(params, scale=0.05, seed=0):
  """``params`` with the head moved off its zero kernel, so theta depends on the input."""
  kernel = params["params"]["head"]["kernel"]
  noise = np.random.default_rng(seed).normal(scale=scale, size=kernel.shape)
  head = dict(params["params"]["head"], kernel=jnp.asarray(noise, kernel.dtype))
  return {"params": dict(params["params"], head=head)}


@pytest.mark.parametrize("transform", ["affine", "attention", "projective", "tps"])
def test_shapes_theta_and_identity_at_init(transform):
  x = images()
  model = SpatialTransformer(LocalisationNet(features=8), transform=transform)

  @jax.jit
  def init_and_apply(key, x):
    params = model.init(key, x)
    return params, model.apply(params, x)

  params, (V, theta) = init_and_apply(jax.random.key(0), x)
  assert set(params["params"]) == {"localisation", "head"}
  assert set(params["params"]["localisation"]) == {"conv1", "conv2", "dense"}
  np.testing.assert_array_equal(params["params"]["head"]["kernel"], 0)
  assert V.shape == x.shape and V.dtype == jnp.float32
  assert theta.shape == (2,) + THETA_SHAPES[transform]
  identity = stn_jax.identity_theta(transform)
  np.testing.assert_array_equal(theta, jnp.broadcast_to(identity, theta.shape))
  np.testing.assert_allclose(V, x, rtol=0, atol=IDENTITY_ATOL[transform])


def test_smaller_output_shape_and_sample_from(affine_params):
  full = images(size=40, seed=1)
  view = full.reshape(2, 20, 2, 20, 2, 3).mean(axis=(2, 4))  # 2x2 box downscale
  model = SpatialTransformer(LocalisationNet(features=8), output_shape=(12, 16))
  params = perturbed(affine_params)  # the output shape adds no parameters
  apply = jax.jit(lambda p, x, s: model.apply(p, x, sample_from=s))
  V, theta = apply(params, view, full)
  assert V.shape == (2, 12, 16, 3) and theta.shape == (2, 2, 3)
  assert float(jnp.abs(theta - stn_jax.identity_theta()[None]).max()) > 1e-3
  np.testing.assert_allclose(V, stn_jax.warp(full, theta, shape=(12, 16)), rtol=0, atol=1e-5)

  with pytest.raises(ValueError, match=r"sample_from must have the same leading"):
    apply(params, view, full[0])


@pytest.mark.parametrize("transform, output_shape", [("affine", None), ("tps", (10, 14))])
def test_agrees_with_nnx_on_the_same_weights(transform, output_shape, nnx_localisation):
  x = images(seed=2)
  nnx_model = stn_jax.nnx.SpatialTransformer(
    nnx_localisation, 8, transform=transform, output_shape=output_shape, rngs=nnx.Rngs(0)
  )
  head = nnx_model.head.kernel
  head[...] = jnp.asarray(np.random.default_rng(3).normal(scale=0.02, size=head.shape), head.dtype)
  V_nnx, theta_nnx = nnx.jit(lambda m, x: m(x))(nnx_model, x)

  # Same names on both sides, so the NNX state is already a Linen params tree.
  params = {"params": nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))}
  linen_model = SpatialTransformer(
    LocalisationNet(features=8), transform=transform, output_shape=output_shape
  )
  expected = jax.eval_shape(linen_model.init, jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, expected)

  V, theta = jax.jit(linen_model.apply)(params, x)
  assert float(jnp.abs(theta_nnx - stn_jax.identity_theta(transform)[None]).max()) > 1e-3
  np.testing.assert_allclose(theta, theta_nnx, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(V, V_nnx, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_localisation_net(affine_params):
  x = images(seed=4)
  weights = jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32)
  model = SpatialTransformer(LocalisationNet(features=8))
  params = affine_params

  @jax.jit
  def grad_fn(params):
    return jax.grad(lambda p: jnp.sum(model.apply(p, x)[0] * weights))(params)["params"]

  grads = grad_fn(params)
  assert float(jnp.abs(grads["head"]["kernel"]).max()) > 1e-4
  np.testing.assert_array_equal(grads["localisation"]["conv1"]["kernel"], 0)
  grads = grad_fn(perturbed(params))
  for layer in ("conv1", "conv2", "dense"):
    assert float(jnp.abs(grads["localisation"][layer]["kernel"]).max()) > 1e-6, layer


def test_jitted_training_step_lowers_the_loss():
  rng = np.random.default_rng(0)
  x = squares(rng.integers(-4, 5, size=(16, 2)))
  target = squares(np.zeros((16, 2), int))
  model = SpatialTransformer(LocalisationNet(features=8), transform="attention")
  params = jax.jit(model.init)(jax.random.key(0), x)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  def train_step(params, opt_state, x, target):
    def loss_fn(params):
      V, _ = model.apply(params, x)
      return jnp.mean((V - target) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(train_step)
  losses = []
  for _ in range(40):
    params, opt_state, loss = train_step(params, opt_state, x, target)
    losses.append(float(loss))
  assert losses[0] > 0.05  # the shifted squares really differ from the target
  assert losses[-1] < 0.25 * losses[0], losses


def test_bad_options_raise_at_construction():
  net = LocalisationNet(features=8)
  with pytest.raises(ValueError, match=r"unknown transform 'rigid'; expected one of"):
    SpatialTransformer(net, transform="rigid")
  with pytest.raises(ValueError, match=r"output_shape must be .* got \(0, 4\)"):
    SpatialTransformer(net, output_shape=(0, 4))
  with pytest.raises(ValueError, match=r"unknown kernel 'cubic'"):
    SpatialTransformer(net, kernel="cubic")
  with pytest.raises(ValueError, match=r"unknown padding_mode 'wrap'"):
    SpatialTransformer(net, padding_mode="wrap")
  with pytest.raises(ValueError, match=r"control_points needs K >= 3"):
    SpatialTransformer(net, transform="tps", control_points=[[0.0, 0.0], [1.0, 1.0]])
  # A Kernel object and custom TPS control points are accepted.
  model = SpatialTransformer(
    net,
    transform="tps",
    kernel=stn_jax.kernels.triangle(),
    control_points=stn_jax.default_control_points()[::2],
  )
  shapes = jax.eval_shape(model.init, jax.random.key(0), images())
  assert shapes["params"]["head"]["bias"].shape == (16,)

"""stn_jax.nnx.Registration and stn_jax.linen.Registration: identity at init, gradients,
training, jit, the field's units after resizing, and NNX/Linen agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from module_fixtures import squares

from stn_jax import fields, linen
from stn_jax import nnx as stn_nnx


def pair():
  """A square and the same square moved by (dy, dx) = (2, -1): moving, fixed."""
  return squares([(0, 0), (0, 0)]), squares([(2, -1), (2, -1)])


@pytest.mark.parametrize("steps", [0, 7])
def test_nnx_identity_at_init_and_jit(steps):
  moving, fixed = pair()
  reg = stn_nnx.Registration.with_field_net(1, steps=steps, rngs=nnx.Rngs(0))
  warped, disp = nnx.jit(lambda m, a, b: m(a, b))(reg, moving, fixed)
  assert warped.shape == moving.shape and disp.shape == moving.shape[:-1] + (2,)
  np.testing.assert_array_equal(disp, 0.0)
  # Identity field: pixel centres round at ~1e-7 in float32.
  np.testing.assert_allclose(warped, moving, rtol=0, atol=1e-6)
  eager_warped, _ = reg(moving, fixed)
  np.testing.assert_allclose(eager_warped, warped, rtol=0, atol=1e-6)


def _loss(warped, fixed, disp):
  return jnp.mean((warped - fixed) ** 2) + 0.01 * jnp.mean(fields.diffusion(disp))


def test_nnx_gradients_reach_the_head_and_training_lowers_the_loss():
  moving, fixed = pair()
  reg = stn_nnx.Registration.with_field_net(1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(reg, optax.adam(3e-3), wrt=nnx.Param)

  def loss_fn(model):
    warped, disp = model(moving, fixed)
    return _loss(warped, fixed, disp)

  grads = nnx.grad(loss_fn)(reg)
  assert float(jnp.abs(grads.head.kernel[...]).max()) > 0
  assert float(jnp.abs(grads.head.bias[...]).max()) > 0

  @nnx.jit
  def step(model, opt):
    loss, g = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, g)
    return loss

  first = float(step(reg, optimizer))
  for _ in range(30):
    last = float(step(reg, optimizer))
  assert last < 0.7 * first, (first, last)
  _, disp = reg(moving, fixed)
  # The fixed square sits at +2 rows, -1 column: pull displacement points back, (x, y) ~ (+, -).
  centre = np.asarray(disp)[0, 10, 9]
  assert centre[0] > 0.1 and centre[1] < -0.2, centre


def test_linen_matches_nnx_parameter_names_and_outputs():
  moving, fixed = pair()
  reg = linen.Registration(linen.FieldNet(), steps=7)
  params = reg.init(jax.random.key(0), moving, fixed)
  p = params["params"]
  assert set(p) == {"backbone", "head"}
  assert set(p["backbone"]) == {"conv1", "conv2", "conv3"}
  warped, disp = jax.jit(reg.apply)(params, moving, fixed)
  np.testing.assert_array_equal(disp, 0.0)
  np.testing.assert_allclose(warped, moving, rtol=0, atol=1e-6)

  # Same weights in both front ends give the same field and image.
  model = stn_nnx.Registration.with_field_net(1, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  head_kernel = rng.normal(scale=0.05, size=model.head.kernel.shape).astype(np.float32)
  model.head.kernel[...] = head_kernel
  p = jax.tree.map(lambda x: x, p)
  p["head"]["kernel"] = jnp.asarray(head_kernel)
  for name in ("conv1", "conv2", "conv3"):
    layer = getattr(model.backbone, name)
    p["backbone"][name] = {"kernel": layer.kernel[...], "bias": layer.bias[...]}
  w_linen, d_linen = reg.apply({"params": p}, moving, fixed)
  w_nnx, d_nnx = model(moving, fixed)
  assert float(jnp.abs(d_nnx).max()) > 0.01
  np.testing.assert_allclose(d_linen, d_nnx, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(w_linen, w_nnx, rtol=1e-5, atol=1e-6)


def test_coarse_displacement_is_resized_in_pixels_of_the_image():
  """A constant coarse head output of 0.5 pixels (steps=0) moves the image by 1 pixel."""

  class Constant(nnx.Module):
    def __call__(self, x):
      return jnp.ones(x.shape[:-3] + (x.shape[-3] // 2, x.shape[-2] // 2, 4), x.dtype)

  reg = stn_nnx.Registration(Constant(), 4, steps=0, rngs=nnx.Rngs(0))
  reg.head.bias[...] = jnp.array([0.5, 0.0], jnp.float32)
  moving, _ = pair()
  warped, disp = reg(moving, moving)
  np.testing.assert_allclose(disp, np.broadcast_to([1.0, 0.0], disp.shape), atol=1e-6)
  np.testing.assert_allclose(warped[0, :, :-1], moving[0, :, 1:], atol=1e-6)


def test_options_are_checked_at_construction():
  with pytest.raises(ValueError, match="steps must be a non-negative int"):
    stn_nnx.Registration.with_field_net(1, steps=-1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding_mode"):
    linen.Registration(linen.FieldNet(), padding_mode="wrap")
  with pytest.raises(ValueError, match="spatial_dims"):
    stn_nnx.Registration.with_field_net(1, spatial_dims=4, rngs=nnx.Rngs(0))


def test_volume_registration_identity_at_init():
  rng = np.random.default_rng(0)
  moving = jnp.asarray(rng.uniform(size=(1, 8, 8, 8, 1)), jnp.float32)
  reg = stn_nnx.Registration.with_field_net(
    1, channels=(4, 4, 4), spatial_dims=3, steps=2, rngs=nnx.Rngs(0)
  )
  warped, disp = nnx.jit(lambda m, a, b: m(a, b))(reg, moving, moving)
  assert disp.shape == (1, 8, 8, 8, 3)
  np.testing.assert_array_equal(disp, 0.0)
  np.testing.assert_allclose(warped, moving, rtol=0, atol=1e-6)

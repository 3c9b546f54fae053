"""The antialias option of the modules, fields.warp and registration: the core's sampler."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stn_jax
import stn_jax.equinox
import stn_jax.linen
import stn_jax.nnx
from stn_jax import fields
from stn_jax._src import registration

# Module outputs come from jitted float32 code, the reference from eager code on the same
# inputs: equal up to a few float32 roundings of values in [0, 1].
ATOL = 8 * float(jnp.finfo(jnp.float32).eps)


def stripes(n=28, batch=2):
  """High-frequency images: 2x2 dots on a period of 4 pixels, plus noise.

  A 4x zoom-out (align_corners=False) puts each output pixel's centre between the two
  pixels of a dot, so plain sampling reads ~1 where the footprint's mean is ~1/4.
  """
  i, j = np.mgrid[:n, :n] % 4
  dots = ((i == 1) | (i == 2)) & ((j == 1) | (j == 2))
  noise = np.random.default_rng(0).random((batch, n, n, 1)) * 0.1
  return jnp.asarray(dots[None, ..., None] + noise, jnp.float32)


def build(front, antialias):
  kw = dict(output_shape=(7, 7), **({} if antialias is None else dict(antialias=antialias)))
  if front == "nnx":
    st = stn_jax.nnx.SpatialTransformer.with_localisation_net(1, features=8, rngs=nnx.Rngs(0), **kw)
    return lambda x: st(x)
  if front == "equinox":
    st = stn_jax.equinox.SpatialTransformer.with_localisation_net(
      1, features=8, key=jax.random.key(0), **kw
    )
    return eqx.filter_jit(lambda x: st(x))
  st = stn_jax.linen.SpatialTransformer(stn_jax.linen.LocalisationNet(features=8), **kw)
  params = st.init(jax.random.key(0), stripes())
  return jax.jit(lambda x: st.apply(params, x))


@pytest.mark.parametrize("front", ["nnx", "linen", "equinox"])
def test_module_antialias_is_sample_antialias_on_its_grid(front):
  # At initialisation theta is the identity, so the 7x7 output zooms out 4x.
  x = stripes()
  V, theta = build(front, True)(x)
  grid = stn_jax.make_grid(theta, (7, 7))
  want = stn_jax.sample(x, grid, antialias=True)
  np.testing.assert_allclose(np.asarray(V), np.asarray(want), rtol=0, atol=ATOL)
  V_default, theta_default = build(front, None)(x)
  plain = stn_jax.sample(x, stn_jax.make_grid(theta_default, (7, 7)))
  np.testing.assert_allclose(np.asarray(V_default), np.asarray(plain), rtol=0, atol=ATOL)
  # Interior outputs: plain sampling reads the dots (~1), antialiasing their mean (~0.3).
  assert float(jnp.min(jnp.abs(V - V_default)[:, 1:-1, 1:-1])) > 0.5


def test_module_antialias_must_be_a_bool():
  with pytest.raises(TypeError, match="antialias must be a bool"):
    stn_jax.nnx.SpatialTransformer.with_localisation_net(1, antialias="yes", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="antialias must be a bool"):
    stn_jax.linen.SpatialTransformer(stn_jax.linen.LocalisationNet(), antialias=1)


def compressing_field(n, factor):
  """The displacement that pulls pixel p from c + factor (p - c): a zoom-out by factor."""
  c = (n - 1) / 2
  p = np.mgrid[:n, :n].astype(np.float64)[::-1]  # (x, y)
  return jnp.asarray(np.moveaxis((factor - 1) * (p - c), 0, -1))


def test_fields_warp_antialias_is_sample_antialias():
  u = stripes(24, 1)[0].astype(jnp.float64)
  disp = compressing_field(24, 3.0)
  got = fields.warp(u, disp, antialias=True)
  grid = fields.displacement_to_grid(disp)
  want = stn_jax.sample(u, grid, padding_mode="border", antialias=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert float(jnp.max(jnp.abs(got - fields.warp(u, disp)))) > 0.1


def test_registration_antialias_reaches_the_warp():
  u = stripes(24, 1).astype(jnp.float64)
  head = compressing_field(24, 3.0)[None]
  options = registration.check_options(2, 0, "bilinear", "border", False, True)
  warped, disp = registration.field_and_warp(head, u, options)
  np.testing.assert_array_equal(
    np.asarray(warped), np.asarray(fields.warp(u, disp, antialias=True))
  )
  nnx_reg = stn_jax.nnx.Registration.with_field_net(1, antialias=True, rngs=nnx.Rngs(0))
  linen_reg = stn_jax.linen.Registration(stn_jax.linen.FieldNet(), antialias=True)
  assert nnx_reg.options.antialias and linen_reg._checked_options().antialias
  assert not stn_jax.nnx.Registration.with_field_net(1, rngs=nnx.Rngs(0)).options.antialias

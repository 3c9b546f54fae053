"""The digits models: conv_as_matmul computes the same function as XLA's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from stn_jax.digits import models

# float64 checks the indexing exactly (any misplaced tap is O(1) off); float32 the round-off
# of the demo's own dtype.
TOL = {jnp.float32: 2e-5, jnp.float64: 1e-12}
CASES = [
  # (input shape, kernel window, C_out, strides, padding)
  ((3, 28, 28, 1), (3, 3), 16, (1, 1), "SAME"),
  ((3, 42, 42, 16), (3, 3), 32, (2, 2), "SAME"),
  ((2, 11, 11, 5), (3, 3), 4, (2, 2), "SAME"),
  ((2, 10, 13, 3), (5, 5), 6, (2, 2), "SAME"),
  ((2, 10, 13, 3), (2, 4), 6, (3, 1), "VALID"),
  ((2, 9, 9, 2), (3, 3), 3, (1, 2), ((2, 0), (1, 3))),
  ((2, 17, 3), (5,), 4, (2,), "SAME"),
  ((2, 5, 6, 7, 2), (3, 3, 3), 4, (2, 2, 2), "SAME"),
]


def _reference(x, k, strides, padding):
  spec = "NHWD"[: x.ndim - 1] + "C"
  dims = lax.conv_dimension_numbers(x.shape, k.shape, (spec, spec[1:-1] + "IO", spec))
  return lax.conv_general_dilated(
    x, k, strides, padding, dimension_numbers=dims, precision=lax.Precision.HIGHEST
  ), dims


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shape, window, c_out, strides, padding", CASES)
def test_conv_as_matmul_equals_lax_conv(shape, window, c_out, strides, padding, dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), dtype)
  k = jnp.asarray(rng.normal(size=(*window, shape[-1], c_out)), dtype)
  want, dims = _reference(x, k, strides, padding)
  got = models.conv_as_matmul(
    x, k, strides, padding, dimension_numbers=dims, precision=lax.Precision.HIGHEST
  )
  assert got.dtype == want.dtype
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def test_conv_as_matmul_gradients_equal_lax_conv():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 11, 11, 3)))
  k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)))
  r = jnp.asarray(rng.normal(size=(2, 6, 6, 4)))

  def loss(conv, x, k):
    return jnp.sum(conv(x, k) * r)

  def ref(x, k):
    return _reference(x, k, (2, 2), "SAME")[0]

  def mine(x, k):
    return models.conv_as_matmul(x, k, (2, 2), "SAME", precision=lax.Precision.HIGHEST)

  want = jax.grad(loss, argnums=(1, 2))(ref, x, k)
  got = jax.grad(loss, argnums=(1, 2))(mine, x, k)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("side", [28, 42])
def test_cnn_equals_the_same_parameters_on_nnx_conv(side):
  """The demo CNN's logits, on its own float32 parameters, as with nnx.Conv's default."""
  cnn = models.CNN((side, side), rngs=nnx.Rngs(0))
  assert all(c.conv_general_dilated is models.conv_as_matmul for c in cnn.convs)
  x = jax.random.uniform(jax.random.key(1), (4, side, side, 1), jnp.float32)
  got = cnn(x)
  for conv in cnn.convs:
    conv.conv_general_dilated = lax.conv_general_dilated
  want = cnn(x)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"rhs_dilation": (2, 2)}, "dilation"),
    ({"lhs_dilation": (1, 2)}, "dilation"),
    ({"feature_group_count": 2}, "feature groups"),
    ({"dimension_numbers": ("NCHW", "OIHW", "NCHW")}, "channels-last"),
  ],
)
def test_conv_as_matmul_rejects_what_it_does_not_compute(kwargs, match):
  x, k = jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 2, 4))
  with pytest.raises(ValueError, match=match):
    models.conv_as_matmul(x, k, (1, 1), "SAME", **kwargs)

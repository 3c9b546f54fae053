"""Dtype rules shared by the grid generator and the sampler."""

import jax
import jax.numpy as jnp
import numpy as np

# Every contraction in the library (affine and projective grids, TPS, transform composition,
# the sampler's tap sums, adaptive pooling) asks for full float32 products. JAX's default
# precision lets a GPU use TF32 (10-bit mantissa) for float32 dots: an identity grid then
# lands up to ~1e-3 of the half-width off, a tenth of a pixel on a 224-pixel image, where
# PyTorch (TF32 off for matmuls by default) is exact. CPUs ignore the setting.
MATMUL_PRECISION = jax.lax.Precision.HIGHEST


def float_dtype(*dtypes: np.dtype, name: str) -> np.dtype:
  """The promoted dtype of ``dtypes``, at least float32; rejects bool and complex.

  Integer inputs are promoted (a grid of ``-1, 0, 1`` is meaningful). float64 stays
  float64 when x64 is enabled; float16/bfloat16 compute in float32.
  """
  for dt in dtypes:
    if dt == np.bool_ or jnp.issubdtype(dt, jnp.complexfloating):
      raise TypeError(
        f"{name} must be a real number array; got dtype {dt}. Cast it to a float dtype "
        "(for complex data, transform the real and imaginary parts separately)."
      )
  out = jnp.promote_types(jnp.float32, jnp.result_type(*dtypes))
  if not jnp.issubdtype(out, jnp.floating):
    out = jnp.float32
  return jax.dtypes.canonicalize_dtype(out)

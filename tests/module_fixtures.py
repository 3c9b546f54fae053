"""Inputs shared by the NNX and Linen module tests."""

import jax.numpy as jnp
import numpy as np

THETA_SHAPES = {"affine": (2, 3), "attention": (3,), "projective": (3, 3), "tps": (16, 2)}
# float32 identity warps: the grid's pixel centres round at ~1e-7 relative; the TPS grid
# is a 16-term matmul, so it rounds a little more.
IDENTITY_ATOL = {"affine": 1e-6, "attention": 1e-6, "projective": 1e-6, "tps": 2e-5}


def squares(offsets, size=20, side=6):
  """``(N, size, size, 1)`` float32 images of a square shifted by ``(dy, dx)`` pixels."""
  yy, xx = np.mgrid[:size, :size]
  c = (size - side) // 2
  out = [
    (yy >= c + dy) & (yy < c + dy + side) & (xx >= c + dx) & (xx < c + dx + side)
    for dy, dx in offsets
  ]
  return jnp.asarray(np.stack(out)[..., None].astype(np.float32))


def images(n=2, size=20, channels=3, seed=0):
  """``(n, size, size, channels)`` float32 uniform noise."""
  x = np.random.default_rng(seed).uniform(size=(n, size, size, channels))
  return jnp.asarray(x, jnp.float32)

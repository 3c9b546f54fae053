"""The core at JAX's default precision (x64 off), as users run it.

Collected only by ``tests/test_default_precision.py``, which runs this folder (and the
package's doctests) in a subprocess with ``STN_JAX_TEST_X64=0``. NumPy float64 inputs are
cut to float32 and everything computes in float32; the oracles below are NumPy float64
evaluations of the formulas at the float32-rounded inputs, so what is left is float32
round-off, bounded from the maths: the pixel coordinate ``((g + 1) * W - 1) / 2`` carries a
relative error of a few ``eps``, i.e. up to ``~eps * W`` pixels, which moves a value by at most
``|dV/dx| * eps * W``; each of the at most 16 taps adds a rounding of its product and sum.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stn_jax
import stn_jax.nnx

EPS = float(np.finfo(np.float32).eps)
KERNELS = ("nearest", "bilinear", "bicubic")


def test_x64_is_off():
  assert not jax.config.jax_enable_x64
  assert jnp.zeros(()).dtype == jnp.float32


def _unnormalize(g, size):
  return ((g + 1.0) * size - 1.0) / 2.0  # align_corners=False


def _weight(kernel, d):
  t = np.abs(d)
  if kernel == "bilinear":
    return np.maximum(0.0, 1.0 - t)
  a = -0.75  # Keys' cubic, PyTorch's bicubic
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _dense_weights(grid, h, w, kernel):
  """``(Ho * Wo, H * W)`` float64 matrix of ``V = M @ U`` under zero padding."""
  x = _unnormalize(grid[..., 0].reshape(-1, 1), w)
  y = _unnormalize(grid[..., 1].reshape(-1, 1), h)
  m, n = np.arange(w)[None], np.arange(h)[None]
  if kernel == "nearest":
    kx = (np.rint(x) == m).astype(float)  # rint rounds half to even, as PyTorch
    ky = (np.rint(y) == n).astype(float)
  else:
    kx, ky = _weight(kernel, x - m), _weight(kernel, y - n)
  return (ky[:, :, None] * kx[:, None, :]).reshape(len(x), h * w)


def _inputs(seed, h=6, w=7, c=2, out=(5, 4)):
  rng = np.random.default_rng(seed)
  U = rng.uniform(-1, 1, size=(h, w, c))  # NumPy float64, as a user would pass
  grid = rng.uniform(-1.2, 1.2, size=(*out, 2))
  R = rng.normal(size=(*out, c))
  return U, grid, R


@pytest.mark.parametrize("kernel", KERNELS)
def test_sample_values_and_gradients_against_float64_formula(kernel):
  U, grid, R = _inputs(KERNELS.index(kernel))
  h, w, c = U.shape
  u32 = U.astype(np.float32).astype(np.float64)
  g32 = grid.astype(np.float32).astype(np.float64)
  M = _dense_weights(g32, h, w, kernel)

  def loss(u, g):
    return jnp.sum(stn_jax.sample(u, g, kernel) * R.astype(np.float32))

  V = stn_jax.sample(U, grid, kernel)
  assert V.dtype == jnp.float32
  expected = (M @ u32.reshape(h * w, c)).reshape(V.shape)
  sum_w = np.abs(M).sum(1).max()
  # Coordinate error (~eps * W pixels) times the kernel's slope (<= 1.25 per pixel per unit
  # of U for Keys' cubic), plus 16 roundings of products of size <= sum|w| * max|U|.
  atol = EPS * (4 * max(h, w) * 1.25 + 16 * sum_w) * np.abs(u32).max()
  np.testing.assert_allclose(V, expected, rtol=0, atol=atol)

  dU, dg = jax.grad(loss, (0, 1))(U.astype(np.float32), grid.astype(np.float32))
  assert dU.dtype == dg.dtype == jnp.float32
  dU_expected = (M.T @ R.reshape(-1, c)).reshape(U.shape)
  scale = (np.abs(M).T @ np.abs(R).reshape(-1, c)).max()
  np.testing.assert_allclose(dU, dU_expected, rtol=0, atol=EPS * (4 * max(h, w) + 16) * scale)

  if kernel == "nearest":
    np.testing.assert_array_equal(dg, 0.0)
    return
  # d loss / d grid by central differences of the float64 formula (piecewise polynomial:
  # the step is far below the distance to the lattice for these random points).
  step = 1e-6
  fd = np.zeros(grid.shape)
  for k in range(2):
    e = np.zeros(grid.shape)
    e[..., k] = step
    plus = _dense_weights(g32 + e, h, w, kernel) @ u32.reshape(h * w, c)
    minus = _dense_weights(g32 - e, h, w, kernel) @ u32.reshape(h * w, c)
    fd[..., k] = np.sum((plus - minus).reshape(R.shape) * R, -1) / (2 * step)
  # dV/dx is at most ~2.5 max|U| per pixel; d x / d g = W / 2 pixels per unit.
  slope_scale = 2.5 * np.abs(u32).max() * max(h, w) / 2 * np.abs(R).sum(-1).max()
  np.testing.assert_allclose(dg, fd, rtol=0, atol=EPS * 64 * max(h, w) * slope_scale + 1e-6)


def test_make_grid_takes_numpy_float64_and_computes_in_float32():
  rng = np.random.default_rng(3)
  theta = np.eye(2, 3) + 0.3 * rng.normal(size=(2, 3))
  grid = stn_jax.make_grid(theta, (4, 5))
  assert grid.dtype == jnp.float32
  xs = (2 * np.arange(5) + 1) / 5 - 1
  ys = (2 * np.arange(4) + 1) / 4 - 1
  X, Y = np.meshgrid(xs, ys)
  t = theta.astype(np.float32).astype(np.float64)
  expected = np.stack([X, Y, np.ones_like(X)], -1) @ t.T
  np.testing.assert_allclose(grid, expected, rtol=0, atol=8 * EPS * np.abs(t).sum(1).max())


def test_integer_and_python_inputs_promote_to_float32():
  U = [[[1.0], [2.0]], [[3.0], [4.0]]]  # nested lists
  grid = np.array([[[0, 0], [-1, -1]]])  # int64 NumPy grid
  V = stn_jax.sample(U, grid, padding_mode="border", align_corners=True)
  assert V.dtype == jnp.float32
  np.testing.assert_array_equal(V[..., 0], [[2.5, 1.0]])
  assert stn_jax.warp(np.ones((3, 4, 1)), stn_jax.identity_theta()).dtype == jnp.float32


def test_module_is_the_identity_at_init_in_float32():
  rngs = nnx.Rngs(0)
  stn = stn_jax.nnx.SpatialTransformer(
    stn_jax.nnx.LocalisationNet(1, features=8, rngs=rngs), 8, rngs=rngs
  )
  x = np.random.default_rng(0).uniform(size=(2, 12, 10, 1))
  V, theta = stn(jnp.asarray(x, jnp.float32))
  assert V.dtype == theta.dtype == jnp.float32
  # An identity grid reads each pixel centre: exact up to the centre's float32 rounding.
  np.testing.assert_allclose(V, x, rtol=0, atol=4 * EPS * 12)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x, jnp.float32))[0] ** 2))(stn)
  assert all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))

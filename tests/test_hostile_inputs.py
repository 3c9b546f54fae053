"""Hostile inputs not covered elsewhere; docs/reliability.md lists every row and its test."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, -1e30])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_non_finite_and_huge_theta_never_crash_or_leak_nan(bad, padding_mode):
  U = jnp.ones((4, 5, 2))
  theta = np.array([[bad, 0.0, 0.0], [0.0, 1.0, 0.0]])
  V = stn_jax.warp(U, theta, padding_mode=padding_mode)
  assert V.shape == (4, 5, 2) and np.all(np.isfinite(V))
  # Every value is either 0 or the image's (constant) value: nothing invented.
  assert np.all((V == 0) | (V == 1))
  grad = jax.grad(lambda t: jnp.sum(stn_jax.warp(U, t, padding_mode=padding_mode)))(theta)
  assert grad.shape == (2, 3)
  if np.isfinite(bad):
    assert np.all(np.isfinite(grad))


def test_coordinates_beyond_int32_do_not_wrap_around():
  # 2**31 pixels would wrap an int32 index to a negative (then valid-looking) pixel.
  U = jnp.arange(1.0, 13.0).reshape(3, 4, 1)
  for x in (2.0**31, 2.0**32 + 1, -(2.0**31), 3e9):
    grid = stn_jax.pixel_to_normalized(jnp.array([[[x, 1.0]]]), (3, 4))
    assert float(stn_jax.sample(U, grid)[0, 0, 0]) == 0.0
    edge = U[1, -1, 0] if x > 0 else U[1, 0, 0]
    assert float(stn_jax.sample(U, grid, padding_mode="border")[0, 0, 0]) == float(edge)


def test_zero_channels_and_zero_batch():
  assert stn_jax.sample(jnp.ones((4, 4, 0)), jnp.zeros((2, 3, 2))).shape == (2, 3, 0)
  assert stn_jax.sample(jnp.ones((0, 4, 4, 1)), jnp.zeros((0, 2, 3, 2))).shape == (0, 2, 3, 1)
  assert stn_jax.make_grid(np.zeros((0, 2, 3)), (2, 3)).shape == (0, 2, 3, 2)


def test_integer_grid_and_theta_are_promoted_to_float32():
  U = jnp.arange(4.0, dtype=jnp.float32).reshape(2, 2, 1)
  grid = np.zeros((1, 1, 2), dtype=np.int32)
  assert stn_jax.sample(U, grid).dtype == jnp.float32
  np.testing.assert_allclose(stn_jax.sample(U, grid), [[[1.5]]])
  assert stn_jax.make_grid(np.eye(2, 3, dtype=np.int64), (2, 2)).dtype == jnp.float32


def test_nan_in_the_image_reaches_only_outputs_that_read_it():
  U = np.zeros((6, 6, 1))
  U[0, 0] = np.nan
  grid = stn_jax.make_grid(np.eye(2, 3), (6, 6))
  V = np.asarray(stn_jax.sample(U, grid, "bilinear"))
  assert np.isnan(V[0, 0, 0])
  assert np.all(np.isfinite(V.reshape(-1)[1:]))
  # Far from the NaN, out-of-bounds taps are masked by value, so no 0 * NaN appears.
  U[:] = 0.0
  U[:, 0] = np.inf
  far_left = jnp.full((1, 1, 2), -3.0)
  assert float(stn_jax.sample(U, far_left)[0, 0, 0]) == 0.0


@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_no_intermediate_nan_for_finite_input_under_debug_nans(kernel, padding_mode):
  # jax_debug_nans re-runs any primitive that produced a NaN and raises: finite inputs,
  # even far outside the image, must not create one anywhere inside the sampler.
  rng = np.random.default_rng(0)
  U = rng.normal(size=(4, 5, 2))
  grid = np.concatenate([rng.uniform(-1.5, 1.5, size=(2, 3, 2)), np.full((1, 3, 2), 1e30)])
  with jax.debug_nans(True):
    V = stn_jax.sample(U, grid, kernel, padding_mode=padding_mode)
    grads = jax.grad(
      lambda u, g: jnp.sum(stn_jax.sample(u, g, kernel, padding_mode=padding_mode)), (0, 1)
    )(U, grid)
  assert np.all(np.isfinite(V)) and all(np.all(np.isfinite(g)) for g in grads)


def test_numpy_and_list_theta_and_grid_work_under_jit_and_vmap():
  theta = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
  grid = jax.jit(stn_jax.make_grid, static_argnums=(1, 2))(np.asarray(theta), (3, 3), "affine")
  U = np.ones((3, 3, 1))
  np.testing.assert_allclose(jax.vmap(stn_jax.sample)(U[None], grid[None])[0], U)


# A one-pixel axis, written out independently of the sampler: per axis, a NaN coordinate
# (and an infinite one under reflection) makes the point read nothing; with align_corners
# a finite coordinate is the pixel, 0 (scale (1 - 1) / 2 = 0); otherwise PyTorch's
# formula. Coordinates are clamped to +-2**24 pixels; "border" and "reflection" then clip
# into the axis, which equals reflection on the one-pixel axis (every reflected position
# lies in [-0.5, 0.5]) and on the others, whose coordinates stay in [-1, 1] below.
_ONE_PIXEL_SPECIALS = [0.3, -0.6, -1.0, 1e30, -1e30, np.inf, -np.inf, np.nan]


def _axis_taps(g, size, align_corners, padding_mode):
  """``[(index, weight), ...]`` along one axis, or None where the point reads nothing."""
  if np.isnan(g) or (padding_mode == "reflection" and np.isinf(g)):
    return None
  if align_corners and size == 1:
    pos = 0.0 if np.isfinite(g) else g
  elif align_corners:
    pos = (g + 1) * (size - 1) / 2
  else:
    pos = ((g + 1) * size - 1) / 2
  pos = min(max(pos, -(2.0**24)), 2.0**24)
  if padding_mode != "zeros":
    pos = min(max(pos, 0.0), size - 1.0)
  i = np.floor(pos)
  return [(int(k), w) for k, w in ((i, i + 1 - pos), (i + 1, pos - i)) if 0 <= k < size]


def _one_pixel_matrix(spatial, grid, align_corners, padding_mode):
  """``W`` with ``V = W @ U.reshape(-1, C)``: the sampler as a matrix, in float64."""
  nd = len(spatial)
  points = grid.reshape(-1, nd)
  W = np.zeros((len(points), int(np.prod(spatial))))
  for p, g in enumerate(points):
    # Spatial axis j is read by grid component nd - 1 - j (x runs along the last axis).
    axes = [
      _axis_taps(g[nd - 1 - j], n, align_corners, padding_mode) for j, n in enumerate(spatial)
    ]
    if any(a is None for a in axes):
      continue
    for taps in itertools.product(*axes):
      W[p, np.ravel_multi_index([k for k, _ in taps], spatial)] += np.prod([w for _, w in taps])
  return W


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("spatial", [(1, 4), (4, 1), (1, 3, 4), (3, 4, 1)], ids=str)
def test_one_pixel_axis_with_infinite_coordinates(pure_jax, spatial, padding_mode, align_corners):
  # With align_corners every finite coordinate on a one-pixel axis maps to that pixel; an
  # infinite one reads 0 ("zeros": outside), the pixel ("border": the limit of the finite
  # ones) or 0 ("reflection": no reflected position), never NaN; gradients finite, and 0
  # along the one-pixel axis. Both paths: the compiled kernels and the pure-JAX sampler.
  rng = np.random.default_rng(sum(spatial))
  nd, c = len(spatial), 2
  U = rng.normal(size=spatial + (c,))
  one = spatial.index(1)  # the specials go along the first one-pixel axis
  # (Ho, Wo, 2) or (Do, Ho, Wo, 3) points; the first point of each row gets a special.
  grid = rng.uniform(-0.95, 0.95, size=(len(_ONE_PIXEL_SPECIALS), 3) + (1,) * (nd - 2) + (nd,))
  grid[:, 0, ..., nd - 1 - one] = np.reshape(_ONE_PIXEL_SPECIALS, (-1,) + (1,) * (nd - 2))
  R = rng.normal(size=grid.shape[:-1] + (c,))

  def run(u, g):
    def f(u, g):
      return stn_jax.sample(u, g, padding_mode=padding_mode, align_corners=align_corners)

    out, vjp = jax.vjp(f, u, g)
    return (out, *vjp(jnp.asarray(R)))

  W = _one_pixel_matrix(spatial, grid, align_corners, padding_mode)
  expected_V = (W @ U.reshape(-1, c)).reshape(R.shape)
  expected_dU = (W.T @ R.reshape(-1, c)).reshape(U.shape)
  # dgrid by central differences of the oracle, which is linear between lattice points, so
  # exact but for rounding: each of the 2**nd weights is off by about eps * (size + 1)
  # (the pixel coordinate's magnitude), and the difference quotient divides that by h.
  h = 1e-6
  expected_dg = np.zeros_like(grid)
  for k in range(nd):
    step = np.zeros(nd)
    step[k] = h
    ahead = _one_pixel_matrix(spatial, grid + step, align_corners, padding_mode)
    behind = _one_pixel_matrix(spatial, grid - step, align_corners, padding_mode)
    dV = ((ahead - behind) @ U.reshape(-1, c)).reshape(R.shape) / (2 * h)
    expected_dg[..., k] = np.sum(dV * R, -1)
  eps = np.finfo(np.float64).eps
  tol = c * 2**nd * (max(spatial) + 1) * np.abs(U).max() * np.abs(R).max() * eps / h
  for name, outputs in (("compiled", run(U, grid)), ("pure JAX", pure_jax(run, U, grid))):
    V, dU, dg = (np.asarray(x) for x in outputs)
    assert np.all(np.isfinite(V)) and np.all(np.isfinite(dU)) and np.all(np.isfinite(dg)), name
    np.testing.assert_allclose(V, expected_V, rtol=1e-12, atol=1e-12, err_msg=f"{name}: V")
    np.testing.assert_allclose(dU, expected_dU, rtol=1e-12, atol=1e-12, err_msg=f"{name}: dU")
    np.testing.assert_allclose(dg, expected_dg, rtol=0, atol=tol, err_msg=f"{name}: dgrid")

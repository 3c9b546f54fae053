"""make_grid and the transform helpers: exact geometry, numpy oracles, batching, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOLERANCES

import stn_jax

TOL = TOLERANCES[np.dtype(np.float64)]
SHAPES = [(5, 7), (1, 4), (3, 1)]


def pixel_centres(n, align_corners):
  """Normalised pixel centres written independently of the library (PyTorch's rule)."""
  if n == 1:
    return np.zeros(1)
  if align_corners:
    return np.linspace(-1, 1, n)
  return np.linspace(-1, 1, n) * (n - 1) / n


def numpy_base(shape, align_corners):
  gx, gy = np.meshgrid(
    pixel_centres(shape[1], align_corners), pixel_centres(shape[0], align_corners)
  )
  return gx, gy


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_identity_theta_gives_base_grid_for_every_transform(shape, align_corners):
  gx, gy = numpy_base(shape, align_corners)
  for transform in stn_jax.TRANSFORMS:
    theta = stn_jax.identity_theta(transform, dtype=jnp.float64)
    grid = stn_jax.make_grid(theta, shape, transform, align_corners=align_corners)
    assert grid.shape == shape + (2,) and grid.dtype == jnp.float64
    np.testing.assert_allclose(grid[..., 0], gx, **TOL, err_msg=transform)
    np.testing.assert_allclose(grid[..., 1], gy, **TOL, err_msg=transform)


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_matches_numpy_formula(rng, align_corners):
  theta = rng.normal(size=(3, 2, 3))
  grid = stn_jax.make_grid(theta, (4, 6), align_corners=align_corners)
  gx, gy = numpy_base((4, 6), align_corners)
  points = np.stack([gx, gy, np.ones_like(gx)], -1)
  expected = np.einsum("hwk,nik->nhwi", points, theta)
  np.testing.assert_allclose(grid, expected, **TOL)


def test_attention_equals_its_affine(rng):
  theta = rng.normal(size=(2, 3))
  a = stn_jax.make_grid(theta, (5, 4), "attention")
  b = stn_jax.make_grid(stn_jax.attention_to_affine(theta), (5, 4), "affine")
  np.testing.assert_allclose(a, b, **TOL)
  s, tx, ty = theta[0]
  np.testing.assert_allclose(stn_jax.attention_to_affine(theta[0]), [[s, 0, tx], [0, s, ty]])


def test_projective_matches_numpy_formula(rng):
  h = np.eye(3) + 0.2 * rng.normal(size=(2, 3, 3))
  grid = stn_jax.make_grid(h, (6, 5), "projective")
  gx, gy = numpy_base((6, 5), False)
  for b in range(2):
    den = h[b, 2, 0] * gx + h[b, 2, 1] * gy + h[b, 2, 2]
    xs = (h[b, 0, 0] * gx + h[b, 0, 1] * gy + h[b, 0, 2]) / den
    ys = (h[b, 1, 0] * gx + h[b, 1, 1] * gy + h[b, 1, 2]) / den
    np.testing.assert_allclose(grid[b], np.stack([xs, ys], -1), **TOL)


def test_projective_with_affine_bottom_row_equals_affine(rng):
  theta = rng.normal(size=(2, 3))
  h = np.concatenate([theta, [[0, 0, 1]]], 0) * 3.0  # homographies are defined up to scale
  np.testing.assert_allclose(
    stn_jax.make_grid(h, (4, 4), "projective"), stn_jax.make_grid(theta, (4, 4)), **TOL
  )


def test_projective_horizon_is_nan_and_sample_reads_zero_with_finite_gradient():
  # Denominator y + 0 vanishes on the row y = 0 (the middle row of a 3-row grid).
  h = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
  grid = stn_jax.make_grid(h, (3, 4), "projective")
  assert np.all(np.isnan(grid[1])) and np.all(np.isfinite(grid[np.array([0, 2])]))
  U = jnp.ones((4, 4, 1))
  for padding_mode in stn_jax.PADDING_MODES:
    V = stn_jax.sample(U, grid, padding_mode=padding_mode)
    assert np.all(np.isfinite(V)) and np.all(V[1] == 0), padding_mode

  def loss(h):
    return jnp.sum(stn_jax.sample(U, stn_jax.make_grid(h, (3, 4), "projective")))

  assert np.all(np.isfinite(jax.grad(loss)(h)))


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_interpolates_targets_at_control_points(rng, align_corners):
  # Sources at a 4x4 output's pixel centres (-1, -1/3, 1/3, 1 with align_corners=True: the
  # default sources; +-0.25, +-0.75 with False): the grid there is exactly the targets.
  centres = (2 * np.arange(4) + 1) / 4 - 1 if not align_corners else np.linspace(-1, 1, 4)
  xx, yy = np.meshgrid(centres, centres)
  sources = np.stack([xx.ravel(), yy.ravel()], -1)
  if align_corners:
    np.testing.assert_allclose(sources, stn_jax.default_control_points(), atol=1e-15)
  targets = sources + 0.1 * rng.normal(size=(3, 16, 2))
  control_points = None if align_corners else sources
  grid = stn_jax.make_grid(
    targets, (4, 4), "tps", align_corners=align_corners, control_points=control_points
  )
  np.testing.assert_allclose(grid.reshape(3, 16, 2), targets, atol=1e-9)


def test_tps_custom_control_points_and_affine_reproduction(rng):
  sources = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1], [0, 0], [0.5, -0.5]], float)
  # The spline reproduces affine maps exactly: targets from an affine give that affine.
  theta = np.eye(2, 3) + 0.2 * rng.normal(size=(2, 3))
  targets = sources @ theta[:, :2].T + theta[:, 2]
  grid = stn_jax.make_grid(targets, (5, 6), "tps", control_points=sources)
  np.testing.assert_allclose(grid, stn_jax.make_grid(theta, (5, 6)), atol=1e-9)


def test_tps_oracle_against_scipy_rbf(rng):
  scipy_interpolate = pytest.importorskip("scipy.interpolate")
  sources = stn_jax.default_control_points()
  targets = sources + 0.15 * rng.normal(size=(16, 2))
  grid = stn_jax.make_grid(targets, (5, 7), "tps")
  rbf = scipy_interpolate.RBFInterpolator(sources, targets, kernel="thin_plate_spline")
  gx, gy = numpy_base((5, 7), False)
  expected = rbf(np.stack([gx.ravel(), gy.ravel()], -1)).reshape(5, 7, 2)
  np.testing.assert_allclose(grid, expected, atol=1e-9)


def test_tps_smoothing_trades_interpolation_for_smoothness(rng):
  targets = stn_jax.default_control_points() + 0.2 * rng.normal(size=(16, 2))
  exact = stn_jax.make_grid(targets, (4, 4), "tps", align_corners=True).reshape(16, 2)
  smooth = stn_jax.make_grid(targets, (4, 4), "tps", align_corners=True, smoothing=10.0)
  smooth = smooth.reshape(16, 2)
  assert np.abs(exact - targets).max() < 1e-9
  assert np.abs(smooth - targets).max() > 1e-3


@pytest.mark.parametrize(
  "points, message",
  [
    ([[0, 0], [1, 1], [0, 0], [1, 0]], "distinct"),
    ([[0, 0], [1, 1], [2, 2], [3, 3]], "collinear"),
    ([[0, 0], [1, 1]], "K >= 3"),
    ([[0, 0], [1, np.nan], [1, 0]], "finite"),
    ([0, 0, 1], r"\(K, 2\)"),
  ],
)
def test_tps_rejects_degenerate_control_points(points, message):
  with pytest.raises(ValueError, match=message):
    stn_jax.make_grid(np.zeros((4, 2)), (3, 3), "tps", control_points=points)


def test_tps_rejects_traced_control_points():
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(lambda c: stn_jax.make_grid(c, (3, 3), "tps", control_points=c))(
      stn_jax.default_control_points()
    )


@pytest.mark.parametrize("transform", stn_jax.TRANSFORMS)
def test_grid_is_differentiable_and_forward_equals_reverse(rng, transform):
  theta = np.asarray(stn_jax.identity_theta(transform, dtype=jnp.float64))
  theta = theta + 0.05 * rng.normal(size=theta.shape)
  f = lambda t: stn_jax.make_grid(t, (3, 4), transform)  # noqa: E731
  np.testing.assert_allclose(jax.jacfwd(f)(theta), jax.jacrev(f)(theta), **TOL)


@pytest.mark.parametrize("transform", stn_jax.TRANSFORMS)
def test_jit_equals_eager_and_batching_equals_loop(rng, transform):
  base = np.asarray(stn_jax.identity_theta(transform, dtype=jnp.float64))
  theta = base + 0.1 * rng.normal(size=(2, 3) + base.shape)
  f = lambda t: stn_jax.make_grid(t, (4, 5), transform)  # noqa: E731
  batched = f(theta)
  assert batched.shape == (2, 3, 4, 5, 2)
  np.testing.assert_allclose(jax.jit(f)(theta), batched, **TOL)
  np.testing.assert_allclose(jax.vmap(f)(theta), batched, **TOL)
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(f(theta[i, j]), batched[i, j], **TOL)


def test_float32_in_float32_out_and_ints_promote():
  assert stn_jax.make_grid(jnp.eye(2, 3, dtype=jnp.float32), (2, 2)).dtype == jnp.float32
  assert stn_jax.make_grid(np.eye(2, 3, dtype=np.int32), (2, 2)).dtype == jnp.float32
  assert stn_jax.make_grid(np.eye(2, 3), (2, 2)).dtype == jnp.float64


@pytest.mark.parametrize(
  "theta_shape, transform, message",
  [
    ((4, 6), "affine", r"\(\.\.\., 2, 3\); got \(4, 6\)"),
    ((2, 4), "attention", r"\(\.\.\., 3\); got \(2, 4\)"),
    ((2, 3), "projective", r"\(\.\.\., 3, 3\)"),
    ((9, 2), "tps", r"\(\.\.\., 16, 2\)"),
  ],
)
def test_wrong_theta_shape_names_the_expected_shape(theta_shape, transform, message):
  with pytest.raises(ValueError, match=message):
    stn_jax.make_grid(np.zeros(theta_shape), (3, 3), transform)


def test_bad_options_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown transform 'similarity'.*affine"):
    stn_jax.make_grid(np.eye(2, 3), (3, 3), "similarity")
  with pytest.raises(ValueError, match=r"pair of non-negative ints"):
    stn_jax.make_grid(np.eye(2, 3), (3, -1))
  with pytest.raises(ValueError, match=r"pair of non-negative ints"):
    stn_jax.make_grid(np.eye(2, 3), (3.5, 2))
  with pytest.raises(ValueError, match="only applies to transform='tps'"):
    stn_jax.make_grid(np.eye(2, 3), (3, 3), control_points=np.zeros((16, 2)))
  with pytest.raises(ValueError, match="smoothing"):
    stn_jax.make_grid(np.zeros((16, 2)), (3, 3), "tps", smoothing=-1.0)
  with pytest.raises(TypeError, match="real number array"):
    stn_jax.make_grid(np.eye(2, 3, dtype=np.complex64), (3, 3))
  with pytest.raises(TypeError, match="real number array"):
    stn_jax.make_grid(np.ones((2, 3), dtype=bool), (3, 3))


def test_zero_size_grid():
  assert stn_jax.make_grid(np.eye(2, 3), (0, 4)).shape == (0, 4, 2)


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_normalised_round_trip_and_corners(rng, align_corners):
  shape = (5, 8)
  pixels = rng.uniform(-2, 9, size=(10, 2))
  normalised = stn_jax.pixel_to_normalized(pixels, shape, align_corners=align_corners)
  back = stn_jax.normalized_to_pixel(normalised, shape, align_corners=align_corners)
  np.testing.assert_allclose(back, pixels, **TOL)
  corners = stn_jax.normalized_to_pixel(
    jnp.array([[-1.0, -1.0], [1.0, 1.0]]), shape, align_corners=align_corners
  )
  expected = [[0, 0], [7, 4]] if align_corners else [[-0.5, -0.5], [7.5, 4.5]]
  np.testing.assert_allclose(corners, expected)


def test_one_pixel_axis_maps_every_finite_coordinate_to_the_pixel_and_keeps_inf():
  # align_corners on a one-pixel axis: scale (1 - 1) / 2 = 0, so (inf + 1) * 0 would be NaN.
  # The x axis (W = 1) is the one-pixel axis; y (H = 3) is ordinary.
  xs = np.array([-np.inf, -1e30, -1.0, 0.3, 1.0, 1e30, np.inf])
  points = np.stack([xs, np.zeros_like(xs)], -1)
  out = np.asarray(stn_jax.normalized_to_pixel(points, (3, 1), align_corners=True))
  np.testing.assert_array_equal(out[:, 0], [-np.inf, 0, 0, 0, 0, 0, np.inf])
  np.testing.assert_array_equal(out[:, 1], np.ones_like(xs))
  # Without align_corners the axis is the ordinary ((x + 1) * 1 - 1) / 2.
  out = np.asarray(stn_jax.normalized_to_pixel(points, (3, 1), align_corners=False))
  np.testing.assert_array_equal(out[:, 0], ((xs + 1) - 1) / 2)


def test_antialiased_sampling_on_a_one_pixel_axis_with_infinite_coordinates():
  # The antialias path unnormalises the grid for its footprint too (grids.unnormalize): an
  # infinite x on a one-pixel axis reads the border pixel under "border", 0 under "zeros".
  U = jnp.array([[[2.0], [5.0], [7.0]]])  # (1, 3, 1): H = 1, W = 3
  U = jnp.swapaxes(U, 0, 1)  # (3, 1, 1): H = 3, W = 1
  grid = jnp.array([[[np.inf, 0.0], [-np.inf, 0.0], [0.5, 0.0]]])  # (1, 3, 2), y = 0: row 1
  for padding_mode, expected in (("border", [5.0, 5.0, 5.0]), ("zeros", [0.0, 0.0, 5.0])):
    V = stn_jax.sample(U, grid, padding_mode=padding_mode, align_corners=True, antialias=True)
    np.testing.assert_array_equal(np.asarray(V)[0, :, 0], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_pixel_axis_keeps_the_rounding_of_x_plus_one_under_jit(dtype):
  # Without align_corners a one-pixel axis maps x to ((x + 1) * 1 - 1) / 2 with every step
  # rounded in the dtype, as PyTorch computes it. XLA folds that to x / 2 under jit unless
  # told not to. At x = 1 + eps the rounded value is 0.5, which nearest sampling rounds
  # (half to even) to pixel 0, inside; x / 2 = 0.5 + eps / 2 rounds to pixel 1, outside,
  # and read 0 on the pure-JAX path (found by tests/test_native_fuzz.py).
  from stn_jax._src import gather, grids, kernels

  x = np.nextafter(dtype(1), dtype(2))
  expected = ((x + dtype(1)) * dtype(1) - dtype(1)) / dtype(2)  # numpy, in the dtype
  assert expected == 0.5
  assert jax.jit(lambda g: grids.unnormalize(g, 1, False))(jnp.asarray(x)) == expected
  U = jnp.arange(1.0, 4.0, dtype=dtype).reshape(1, 1, 1, 3)  # one pixel, three channels
  grid = jnp.asarray(np.array([[[[0.0, x]]]], dtype))  # y on the pixel's lower edge
  nearest = kernels.resolve("nearest")

  @jax.jit
  def pure(U, grid):
    return jax.vmap(lambda u, g: gather.sample_gather(u, g, nearest, "zeros", False))(U, grid)

  np.testing.assert_array_equal(np.asarray(pure(U, grid)).ravel(), [1.0, 2.0, 3.0])
  # The compiled kernels (where they run) and the public entry point agree.
  sample = jax.jit(lambda U, g: stn_jax.sample(U, g, "nearest", padding_mode="zeros"))
  np.testing.assert_array_equal(np.asarray(sample(U, grid)).ravel(), [1.0, 2.0, 3.0])


def test_compose_and_invert(rng):
  a = np.eye(2, 3) + 0.3 * rng.normal(size=(2, 3))
  b = np.eye(2, 3) + 0.3 * rng.normal(size=(2, 3))
  h = np.eye(3) + 0.1 * rng.normal(size=(3, 3))
  ab = stn_jax.compose(a, b)
  assert ab.shape == (2, 3)
  # Pull maps: composed(p) = a(b(p)).
  p = np.array([0.3, -0.7, 1.0])
  np.testing.assert_allclose(ab @ p, a @ np.append(b @ p, 1.0), **TOL)
  np.testing.assert_allclose(stn_jax.compose(a, stn_jax.invert(a)), np.eye(2, 3), atol=1e-12)
  assert stn_jax.compose(a, h).shape == (3, 3)
  hh = stn_jax.compose(h, stn_jax.invert(h))
  np.testing.assert_allclose(hh / hh[2, 2], np.eye(3), atol=1e-12)
  with pytest.raises(ValueError, match="attention_to_affine"):
    stn_jax.compose(np.zeros(3), a)


def test_compose_matches_warping_twice_on_exact_lattice():
  # Nearest sampling with integer-pixel shifts and flips: both sides are exact.
  U = jnp.arange(36.0).reshape(6, 6, 1)
  shift = np.array([[1.0, 0, 2 / 6], [0, 1.0, -4 / 6]])  # +1 px in x, -2 px in y
  flip = np.array([[-1.0, 0, 0], [0, 1.0, 0]])
  twice = stn_jax.warp(stn_jax.warp(U, shift, kernel="nearest"), flip, kernel="nearest")
  once = stn_jax.warp(U, stn_jax.compose(shift, flip), kernel="nearest")
  np.testing.assert_array_equal(twice, once)

"""Invariants that hold for every drawn shape, dtype and parameter (hypothesis).

Each new shape compiles afresh, so examples are few and shapes small; the invariants are
exact (bit for bit) wherever the geometry allows it.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import stn_jax
from stn_jax import kernels

# No shrinking: every new shape recompiles, so shrinking a failure can take many minutes;
# hypothesis still prints the failing example.
SETTINGS = settings(
  max_examples=12,
  deadline=None,
  suppress_health_check=[HealthCheck.too_slow],
  derandomize=True,
  phases=[Phase.explicit, Phase.generate],
)
INTERPOLATING = {
  "nearest": "nearest",
  "bilinear": "bilinear",
  "bicubic": "bicubic",
  "lanczos2": kernels.lanczos(2),
}
TOL = {np.float32: 2e-5, np.float64: 1e-11}

sizes = st.integers(min_value=1, max_value=6)
dtypes = st.sampled_from([np.float32, np.float64])


def image(draw, h, w, c, dtype):
  seed = draw(st.integers(0, 2**16))
  return np.random.default_rng(seed).normal(size=(h, w, c)).astype(dtype)


@st.composite
def images(draw, square=False):
  h = draw(sizes)
  w = h if square else draw(sizes)
  return image(draw, h, w, draw(st.integers(1, 3)), draw(dtypes))


@SETTINGS
@given(
  U=images(),
  transform=st.sampled_from(stn_jax.TRANSFORMS),
  kernel=st.sampled_from(sorted(INTERPOLATING)),
  padding_mode=st.sampled_from(stn_jax.PADDING_MODES),
  align_corners=st.booleans(),
)
def test_identity_transform_returns_input(U, transform, kernel, padding_mode, align_corners):
  theta = stn_jax.identity_theta(transform, dtype=U.dtype)
  V = stn_jax.warp(
    U,
    theta,
    transform,
    kernel=INTERPOLATING[kernel],
    padding_mode=padding_mode,
    align_corners=align_corners,
  )
  assert V.dtype == U.dtype
  np.testing.assert_allclose(V, U, atol=TOL[U.dtype.type] * 10, rtol=0)


def lattice_maps(size):
  """Affine maps that send pixel centres onto pixel centres of a square image."""
  step = 2 / size  # one pixel in normalised units (align_corners=False)
  rotations = [np.array([[c, -s], [s, c]]) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1))]
  flips = [np.eye(2), np.diag([-1.0, 1.0])]
  shifts = range(-2, 3)
  for r, f, dx, dy in itertools.product(rotations, flips, shifts, shifts):
    yield np.concatenate([r @ f, [[dx * step], [dy * step]]], axis=1)


def apply_on_pixels(theta, size):
  """Exact oracle: which input pixel each output pixel of a lattice map reads (or -1)."""
  centres = (2 * np.arange(size) + 1) / size - 1
  x, y = np.meshgrid(centres, centres)
  xs = theta[0, 0] * x + theta[0, 1] * y + theta[0, 2]
  ys = theta[1, 0] * x + theta[1, 1] * y + theta[1, 2]
  col = np.rint(((xs + 1) * size - 1) / 2).astype(int)
  row = np.rint(((ys + 1) * size - 1) / 2).astype(int)
  inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
  return row, col, inside


MAPS = {n: list(lattice_maps(n)) for n in range(1, 7)}


@SETTINGS
@given(U=images(square=True), data=st.data())
def test_lattice_maps_permute_pixels_bit_for_bit(U, data):
  size = U.shape[0]
  theta = data.draw(st.sampled_from(MAPS[size]))
  V = stn_jax.warp(U, theta.astype(U.dtype), kernel="nearest")
  row, col, inside = apply_on_pixels(theta, size)
  expected = np.where(inside[..., None], U[row.clip(0, size - 1), col.clip(0, size - 1)], 0)
  np.testing.assert_array_equal(V, expected)


@SETTINGS
@given(U=images(square=True), data=st.data())
def test_composition_equals_warping_twice_where_both_are_defined(U, data):
  size = U.shape[0]
  first = data.draw(st.sampled_from(MAPS[size]))
  second = data.draw(st.sampled_from(MAPS[size]))
  twice = stn_jax.warp(stn_jax.warp(U, first, kernel="nearest"), second, kernel="nearest")
  once = stn_jax.warp(U, stn_jax.compose(first, second), kernel="nearest")
  _, _, defined = apply_on_pixels(second, size)  # where the second warp reads inside
  np.testing.assert_array_equal(np.asarray(twice)[defined], np.asarray(once)[defined])


@SETTINGS
@given(
  U=images(),
  kernel=st.sampled_from(["nearest", "bilinear"]),
  padding_mode=st.sampled_from(stn_jax.PADDING_MODES),
  seed=st.integers(0, 2**16),
)
def test_nearest_and_bilinear_stay_within_the_input_range(U, kernel, padding_mode, seed):
  grid = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(4, 5, 2)).astype(U.dtype)
  V = np.asarray(stn_jax.sample(U, grid, kernel, padding_mode=padding_mode))
  low, high = U.min(), U.max()
  if padding_mode == "zeros":  # zero-padded taps join the convex combination
    low, high = min(low, 0), max(high, 0)
  eps = TOL[U.dtype.type] * max(1.0, abs(low), abs(high))
  assert V.min() >= low - eps and V.max() <= high + eps


def dense_double_sum(U, grid, fn, radius, align_corners):
  """The seed formula over the whole image, in NumPy float64."""
  h, w, _ = U.shape
  gx, gy = grid[..., 0], grid[..., 1]
  if align_corners:
    x, y = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
  else:
    x, y = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2

  def k(d):
    return np.where(np.abs(d) < radius, fn(d), 0.0)

  kx = k(x[..., None] - np.arange(w))  # (Ho, Wo, W)
  ky = k(y[..., None] - np.arange(h))  # (Ho, Wo, H)
  return np.einsum("ijn,ijm,nmc->ijc", ky, kx, U)


@SETTINGS
@given(
  U=images(),
  radius=st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.7]),
  width=st.floats(0.3, 2.0),
  align_corners=st.booleans(),
  seed=st.integers(0, 2**16),
)
def test_user_kernels_reproduce_the_dense_double_sum(U, radius, width, align_corners, seed):
  U = U.astype(np.float64)
  grid = np.random.default_rng(seed).uniform(-1.3, 1.3, size=(3, 4, 2))
  fn = lambda d: np.exp(-((d / width) ** 2)) * (1 + 0.3 * d)  # noqa: E731 (asymmetric on purpose)
  kernel = stn_jax.Kernel(lambda d: jnp.exp(-((d / width) ** 2)) * (1 + 0.3 * d), radius)
  V = stn_jax.sample(U, grid, kernel, align_corners=align_corners)
  expected = dense_double_sum(U, grid, fn, radius, align_corners)
  np.testing.assert_allclose(V, expected, atol=1e-12)


def off_lattice_grid(seed, shape, size_hw):
  """Points at least 0.05 px from the integer lattice (where bilinear/bicubic have kinks)."""
  rng = np.random.default_rng(seed)
  h, w = size_hw
  pix = np.floor(rng.uniform(-1.5, [w + 0.5, h + 0.5], size=shape + (2,)))
  pix += rng.uniform(0.05, 0.95, size=pix.shape)
  return np.asarray(stn_jax.pixel_to_normalized(pix, size_hw))


@settings(max_examples=6, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate])
@given(
  U=images(),
  kernel=st.sampled_from(["bilinear", "bicubic", "lanczos2"]),
  padding_mode=st.sampled_from(stn_jax.PADDING_MODES),
  seed=st.integers(0, 2**16),
)
def test_check_grads_at_drawn_points(U, kernel, padding_mode, seed):
  U = U.astype(np.float64)
  grid = off_lattice_grid(seed, (2, 2), U.shape[:2])
  if padding_mode != "zeros" and kernel == "bilinear":
    # Coordinate padding puts kinks at the image edges too: stay inside.
    grid = np.clip(grid, -0.6, 0.6)
  f = lambda u, g: stn_jax.sample(u, g, INTERPOLATING[kernel], padding_mode=padding_mode)  # noqa: E731
  order = 1 if kernel == "bilinear" else 2
  check_grads(f, (U, grid), order=order, modes=("fwd", "rev"), eps=1e-6)


@SETTINGS
@given(
  h=st.integers(2, 7),
  w=st.integers(2, 7),
  scale=st.floats(0.2, 0.6),
  angle=st.floats(-0.4, 0.4),
  shift=st.tuples(st.floats(-0.05, 0.05), st.floats(-0.05, 0.05)),
  align_corners=st.booleans(),
)
def test_theta_gradient_of_a_ramp_warp_has_its_closed_form(
  h, w, scale, angle, shift, align_corners
):
  # U(x, y) = a x + b y + c in pixel units is reproduced exactly by bilinear sampling
  # between pixel centres. |rotation| <= cos 0.4 + sin 0.4 < 1.32, so scale <= 0.6 and
  # |shift| <= 0.05 keep every read inside the centres' hull for any size >= 2.
  a, b, c = 0.7, -1.3, 0.25
  cols, rows = np.meshgrid(np.arange(w), np.arange(h))
  U = (a * cols + b * rows + c)[..., None].astype(np.float64)
  theta = np.array(
    [
      [scale * np.cos(angle), -scale * np.sin(angle), shift[0]],
      [scale * np.sin(angle), scale * np.cos(angle), shift[1]],
    ]
  )
  loss = lambda t: jnp.sum(stn_jax.warp(U, t, align_corners=align_corners))  # noqa: E731
  gx, gy = np.asarray(stn_jax.make_grid(np.eye(2, 3), (h, w), align_corners=align_corners)).T
  # d(pixel x)/d(normalised x) and likewise y.
  sx = (w - 1) / 2 if align_corners else w / 2
  sy = (h - 1) / 2 if align_corners else h / 2
  points = np.stack([gx.T.ravel(), gy.T.ravel(), np.ones(h * w)], -1)
  expected = np.stack([a * sx * points.sum(0), b * sy * points.sum(0)])
  np.testing.assert_allclose(jax.grad(loss)(theta), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
def test_forward_mode_equals_reverse_mode_for_theta(kernel):
  U = np.random.default_rng(1).normal(size=(5, 6, 2))
  theta = np.array([[0.8, 0.1, 0.05], [-0.1, 0.9, 0.02]])
  f = lambda t: stn_jax.warp(U, t, kernel=kernel)  # noqa: E731
  np.testing.assert_allclose(jax.jacfwd(f)(theta), jax.jacrev(f)(theta), atol=1e-11)

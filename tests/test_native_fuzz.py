"""A differential fuzz of the compiled kernels against the pure-JAX sampler (hypothesis).

Drawn as a new user's stress test would: images and volumes of every small size (one-pixel
and zero-size axes included), zero to three channels, float32 and float64, inputs that
arrive as transposed or strided NumPy views or are transposed inside ``jit``, huge, NaN and
infinite coordinates, NaN and infinite pixels, every padding mode and ``align_corners``.
Each example runs all four compiled passes (values, both gradients, the grid tangent) and
the same derivatives of ``gather.sample_gather`` (vmapped over the batch, differentiated by
JAX), and checks that the compiled side really ran the kernels; then each gradient alone
(its own pass), which must equal the fused backward's.

Every compiled kernel is drawn: bilinear, bicubic (tricubic on volumes) and nearest.

Tolerances come from the arithmetic, as in ``test_native_volumes.py``: a sample sums
``T = K**d`` products (``K`` taps per axis: 2 bilinear, 4 cubic, 1 nearest) of a tap value
and ``d`` weights, each weight off by about ``eps * (size + K)`` in absolute terms (its
pixel coordinate's rounding; cubic: its polynomial adds a few ``eps``), and the sum rounds
too, so the error is at most ``gamma * (sum_t |w_t v_t| + sum_t |v_t|)`` with
``gamma = eps * (4 * sum(size + K) + 4 * T)``; ``sum_t |w_t v_t|`` is the reference
sampler run with ``|k|`` for ``k`` on ``|U|``, ``sum_t |v_t|`` the same with weights 1 on
the 4 taps per axis around the point (0 for nearest, whose weights are exact; a weight near
0, a coordinate a hair from a pixel, keeps the absolute error
of its coordinate: XLA's fused multiply-add in the reference's ``(x + 1) * size - 1`` once
moved one such weight of 8e-4 by 1e-7). The derivatives get the same ``gamma`` times a
bound on the sum of the magnitudes of their terms. A cubic weight near the edge of the
support is a small difference of terms up to ~36 (Keys' far polynomial at ``|d| = 2``), so
its error is absolute, not relative: up to ``WEIGHT_ERROR * eps`` per weight (Horner's bound
for that polynomial, ~6 * 36), which the bounds add times the unweighted sum of the
magnitudes of the taps read (the reference with weights 1 on the support). Non-finite
results must agree exactly (NaN where NaN, the same infinity), except the grid tangent at a
point that reads an infinite pixel, where the two sum infinities in different orders (NaN or
+-inf): there they must both be non-finite.

``STN_JAX_FUZZ_EXAMPLES`` sets the number of examples (default 16, so the default test run
stays quick); ``scripts/sanitize.sh`` runs many more under AddressSanitizer and UBSan.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ABS_KERNELS, ONES, ROUNDED_TAPS, TAPS, WEIGHT_ERROR
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from stn_jax._src import gather, kernels, native

pytestmark = pytest.mark.skipif(not native.available(), reason="compiled kernels not built")

SETTINGS = settings(
  max_examples=int(os.environ.get("STN_JAX_FUZZ_EXAMPLES", "16")),
  deadline=None,
  # Fixed examples in the default run (a red test names one that reproduces); the sanitizer
  # script sets STN_JAX_FUZZ_RANDOM=1 to draw new ones each run.
  derandomize=os.environ.get("STN_JAX_FUZZ_RANDOM", "0") != "1",
  phases=[Phase.explicit, Phase.generate],
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Coordinates a careless caller produces: non-finite, huge, the clamp itself, the image
# corners, just past them, and 0.
SPECIAL_COORDS = [np.nan, np.inf, -np.inf, 1e30, -1e30, 2.0**24, -(2.0**24), 1.0, -1.0, 1.0000001]
SPECIAL_PIXELS = [np.nan, np.inf, -np.inf]


@st.composite
def cases(draw):
  d = draw(st.sampled_from(gather.SPATIAL_NDIMS))
  kernel = draw(st.sampled_from(["bilinear", "bicubic", "nearest"]))
  spatial = tuple(draw(st.lists(st.sampled_from([0, 1, 1, 2, 3, 5]), min_size=d, max_size=d)))
  out = tuple(draw(st.lists(st.integers(0, 4), min_size=d, max_size=d)))
  return dict(
    kernel=kernel,
    d=d,
    spatial=spatial,
    out=out,
    batch=draw(st.integers(1, 2)),
    channels=draw(st.sampled_from([0, 1, 1, 2, 3])),
    dtype=draw(st.sampled_from([np.float32, np.float64])),
    padding_mode=draw(st.sampled_from(gather.PADDING_MODES)),
    align_corners=draw(st.booleans()),
    layout=draw(st.sampled_from(["contiguous", "numpy view", "transposed in jit"])),
    special_coords=draw(st.floats(0, 0.5)),
    special_pixels=draw(st.floats(0, 0.1)),
    seed=draw(st.integers(0, 2**31 - 1)),
  )


def _draw_arrays(case):
  rng = np.random.default_rng(case["seed"])
  dtype = case["dtype"]
  u_shape = (case["batch"], *case["spatial"], case["channels"])
  g_shape = (case["batch"], *case["out"], case["d"])
  U = rng.normal(size=u_shape)
  U[rng.random(u_shape) < case["special_pixels"]] = rng.choice(SPECIAL_PIXELS)
  grid = rng.uniform(-1.5, 1.5, size=g_shape)
  special = rng.random(g_shape) < case["special_coords"]
  grid[special] = rng.choice(SPECIAL_COORDS, size=int(special.sum()))
  R = rng.normal(size=g_shape[:-1] + (case["channels"],))
  dgrid = rng.normal(size=g_shape)
  return [x.astype(dtype) for x in (U, grid, R, dgrid)]


def _derivatives(sample, transposed):
  """V, dL/dU, dL/dgrid (for cotangent R) and the tangent of V along dgrid."""

  def run(U, grid, R, dgrid):
    if transposed:  # U arrives with its two outermost spatial axes swapped
      U = jnp.swapaxes(U, 1, 2)
    V, vjp = jax.vjp(sample, U, grid)
    dU, dg = vjp(R)
    tangent = jax.jvp(lambda g: sample(U, g), (grid,), (dgrid,))[1]
    return V, dU, dg, tangent

  return run


def _gradients_alone(sample, transposed):
  """dL/dU with the grid held fixed, and dL/dgrid with U held fixed (cotangent R)."""

  def run(U, grid, R, dgrid):
    del dgrid
    if transposed:
      U = jnp.swapaxes(U, 1, 2)
    dU = jax.vjp(lambda u: sample(u, grid), U)[1](R)[0]
    dg = jax.vjp(lambda g: sample(U, g), grid)[1](R)[0]
    return dU, dg

  return run


def _assert_within(actual, expected, bound, what, same_non_finite=True):
  """Within ``bound`` where finite; the same non-finite values (or, with
  ``same_non_finite=False``, non-finite at the same places) elsewhere."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
  assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
  finite = np.isfinite(expected)
  actual_finite = np.isfinite(actual)
  if not same_non_finite:
    # A zero slope (a clamp holds: border, a one-pixel reflection) gives the kernels' grid
    # tangent exactly 0 even beside an inf pixel, where JAX's jvp multiplies the zero
    # weight tangent by the pixel (NaN): allowed, and only as an exact 0.
    actual_finite = np.where(~finite & (actual == 0), False, actual_finite)
  np.testing.assert_array_equal(actual_finite, finite, err_msg=what)
  if same_non_finite:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
  err = np.abs(actual[finite].astype(np.float64) - expected[finite])
  bound = np.broadcast_to(bound, expected.shape)[finite]
  worst = int(np.argmax(err - bound)) if err.size else 0
  assert np.all(err <= bound), (
    f"{what}: |compiled - reference| = {err[worst]:.3g} > bound {bound[worst]:.3g} "
    f"(compiled {actual[finite][worst]!r}, reference {expected[finite][worst]!r})"
  )


def _bounds(U, grid, R, dgrid, spatial, reference, kernel, ones, rounded):
  """Per-element error bounds for (V, dU, dgrid, tangent), from the magnitudes of terms.
  ``reference(u, g)`` runs the kernel with |weights|, ``ones`` with weights 1 on the cubic's
  support, ``rounded`` with weights 1 on the taps whose weights round (0 for nearest)."""
  dtype = U.dtype
  eps = float(np.finfo(dtype).eps)
  k = TAPS[kernel]
  taps = k ** len(spatial)
  gamma = eps * (4 * sum(s + k for s in spatial) + 4 * taps)
  # Magnitudes from finite values only: where a non-finite value enters, the results
  # must agree exactly (checked separately).
  absU = np.where(np.isfinite(U), np.abs(U), 0).astype(dtype)
  absR = np.abs(R)
  max_u = float(absU.max(initial=0))
  # Grid derivatives: slope (<= size / 2 + 1) times sum_t |dw_t| |U_t| <= max|U| times
  # (sum of |k'| over an axis's taps) (sum of |k|)**(d - 1): 2 for the tent, < 4 for Keys.
  # For the cubic, every tap's derivative weight also carries an absolute error.
  slope = (max(spatial, default=0) / 2 + 1) * (2 if k == 2 else 4 * 2 ** len(spatial))
  delta = eps * WEIGHT_ERROR * 2 * len(spatial)  # d absolute errors per product weight
  if kernel == "bicubic":
    slope += (max(spatial, default=0) / 2 + 1) * taps * delta / gamma
  # In the case's dtype: its rounding of the coordinates decides which taps are read.
  magnitude = np.asarray(reference(absU, grid), np.float64)
  points = int(np.prod(grid.shape[1:-1]))
  # A pixel of dU sums up to T terms per output point of its example.
  gamma_du = gamma + eps * taps * points
  scatter = np.asarray(jax.vjp(lambda u: reference(u, grid), absU)[1](absR)[0], np.float64)
  tiny = np.finfo(dtype).tiny
  # A weight's error is absolute (its coordinate's rounding, and for the cubic its
  # polynomial's): times the unweighted sum of the taps read, not the weighted one.
  absolute = gamma * np.asarray(rounded(absU, grid), np.float64)
  absolute_du = gamma * np.asarray(
    jax.vjp(lambda u: rounded(u, grid), absU)[1](absR)[0], np.float64
  )
  if kernel == "bicubic":  # absolute weight errors, d of them per product weight (each < 2)
    magnitude = magnitude + delta / gamma * np.asarray(ones(absU, grid), np.float64)
    count = np.asarray(jax.vjp(lambda u: ones(u, grid), absU)[1](absR)[0], np.float64)
    scatter = scatter + delta / gamma_du * count
  return [
    gamma * magnitude + absolute + tiny,
    gamma_du * scatter + absolute_du + tiny,
    gamma * slope * max_u * absR.astype(np.float64).sum(-1, keepdims=True) + tiny,
    gamma * slope * max_u * np.abs(dgrid).sum(-1, keepdims=True).astype(np.float64) + tiny,
  ]


# What the fuzz first found (issue 16): a one-pixel axis with align_corners=True and an
# infinite coordinate made the kernels compute (inf + 1) * 0 = NaN.
ONE_PIXEL_INF = dict(
  d=2,
  spatial=(1, 3),
  out=(2, 3),
  batch=1,
  channels=1,
  dtype=np.float32,
  padding_mode="border",
  align_corners=True,
  layout="contiguous",
  special_coords=0.5,
  special_pixels=0.0,
  seed=45,  # draws +-inf in y at finite x
)


@SETTINGS
@given(case=cases())
@example(case=ONE_PIXEL_INF)
@example(case=dict(ONE_PIXEL_INF, padding_mode="zeros", d=3, spatial=(2, 1, 1), out=(1, 2, 3)))
# The same one-pixel axis with infinite coordinates under the separable kernels.
@example(case=dict(ONE_PIXEL_INF, kernel="bicubic"))
@example(case=dict(ONE_PIXEL_INF, kernel="nearest", padding_mode="reflection"))
# Reflected special coordinates, where float32 and float64 read different taps (the bounds
# once used float64 taps).
@example(
  case=dict(
    ONE_PIXEL_INF,
    d=3,
    spatial=(3, 5, 3),
    out=(3, 3, 2),
    batch=2,
    padding_mode="reflection",
    align_corners=False,
    layout="numpy view",
    special_coords=0.08884644241012087,
    special_pixels=0.08884644241012087,
    seed=2,
  )
)
# A one-pixel axis without align_corners, a coordinate on the pixel's edge: the reference
# under jit once let XLA fold ((x + 1) - 1) / 2 into x / 2 (grids.unnormalize), and its
# nearest taps then fell outside where the kernels' (and PyTorch's) fell inside.
@example(
  case=dict(
    ONE_PIXEL_INF,
    kernel="nearest",
    d=3,
    spatial=(1, 1, 1),
    out=(1, 1, 2),
    batch=2,
    channels=3,
    padding_mode="zeros",
    align_corners=False,
    layout="transposed in jit",
    special_coords=0.4601536820982497,
    seed=24853093,
  )
)
# A depth coordinate a hair from a voxel (weight 8e-4): the jitted reference's fused
# multiply-add moved it by one ulp, and the scattered dU by 1.5e-4 relative (the sanitizer
# run's fuzz found it; the bounds now count each weight's absolute error).
@example(
  case=dict(
    ONE_PIXEL_INF,
    d=3,
    spatial=(5, 1, 5),
    out=(2, 3, 2),
    padding_mode="zeros",
    align_corners=False,
    special_coords=0.0,
    special_pixels=0.04825586538338437,
    seed=0,
  )
)
def test_compiled_passes_equal_the_reference(case):
  U, grid, R, dgrid = _draw_arrays(case)
  pm, ac = case["padding_mode"], case["align_corners"]
  kernel = case.get("kernel", "bilinear")

  def compiled(u, g):
    if kernel == "bilinear":
      return native.sample_linear(u, g, pm, ac)
    return native.sample_separable(u, g, kernel, pm, ac)

  def gathered(k):
    return lambda u, g: jax.vmap(lambda u, g: gather.sample_gather(u, g, k, pm, ac))(u, g)

  reference = gathered(kernels.resolve(kernel))

  transposed = case["layout"] == "transposed in jit"
  args = [U, grid, R, dgrid]
  if transposed:
    args[0] = np.ascontiguousarray(np.swapaxes(U, 1, 2))
  elif case["layout"] == "numpy view":
    # Strided views: every other element of arrays twice as large, U's axes reversed twice.
    args = [np.repeat(a, 2, axis=-1)[..., ::2] for a in args]
    args[0] = np.moveaxis(np.moveaxis(args[0], -1, 0).copy(), 0, -1)
  fast = jax.jit(_derivatives(compiled, transposed))
  hlo = fast.lower(*args).as_text()
  targets = {
    "bilinear": ["StnBilinearFwd", "StnBilinearGridJvp", "StnBilinearUGridVjp"],
    "bicubic": ["StnCubicFwd", "StnCubicGridJvp", "StnCubicGridVjp", "StnCubicUVjp"],
    "nearest": ["StnNearestFwd", "StnNearestUVjp"],  # its grid derivatives are 0, no pass
  }[kernel]
  assert sorted(set(re.findall(r"\b(Stn[A-Z]\w+)", hlo))) == targets, (
    "the compiled path did not run its kernels"
  )
  got = fast(*args)
  want = jax.jit(_derivatives(reference, False))(U, grid, R, dgrid)
  bounds = _bounds(
    U,
    grid,
    R,
    dgrid,
    case["spatial"],
    gathered(ABS_KERNELS[kernel]),
    kernel,
    gathered(ONES),
    gathered(ROUNDED_TAPS[kernel]),
  )
  names = ["V", "dU", "dgrid", "jvp in grid"]
  for a, b, bound, name in zip(got, want, bounds, names, strict=True):
    # The grid tangent at a point that reads an infinite pixel: the kernel sums the
    # per-axis derivatives (each +-inf), JAX the per-tap weight tangents times the tap
    # (one inf): NaN or +-inf, the same non-finite point either way.
    # Bicubic's grid gradient there too: the kernel multiplies the (finite) derivative of
    # the weight by the infinite sum (+-inf), JAX's reverse mode the cubic's terms of
    # opposite signs each by it (NaN).
    loose = name == "jvp in grid" or (kernel == "bicubic" and name == "dgrid")
    _assert_within(a, b, bound, f"{name} for {case}", same_non_finite=not loose)
  # Each gradient alone (an STN whose U is its input needs dgrid only) runs its own pass,
  # which must give the fused pass's bits.
  alone = jax.jit(_gradients_alone(compiled, transposed))(*args)
  for a, b, name in zip(alone, got[1:3], ["dU", "dgrid"], strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name} alone")

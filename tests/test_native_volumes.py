"""The compiled trilinear kernels equal the pure-JAX sampler; the Python/C++ contract agrees.

``native.py``'s four primitives run the same C++ passes for images and volumes (templated on
the number of spatial axes). Here the volume path is compared with the gather-based
reference ``gather.sample_gather`` called directly (vmapped over the batch, differentiated
by JAX), so no trace cache or environment switch can make both sides the same code; each
test also checks that the compiled side's HLO holds the custom call and the reference's
does not.

Tolerances come from the arithmetic, not from this machine: a sample is a sum of 8 products
of a tap value and three weights, and each weight carries an absolute rounding error of
about ``eps * (size + 1)`` (the pixel coordinate is ``~size`` before the floor is
subtracted), and the sum rounds too. So the error of a value is at most
``gamma * (sum_t |w_t v_t| + sum_t |v_t|)`` with ``gamma = eps * (2 * sum(size + 1) + 4 * 8)``
(the unweighted sum because a weight near 0 keeps its coordinate's absolute error); the
derivatives get the same ``gamma`` times a bound on the sum of the absolute values of their
terms (computed per test below). In
float64 that is ~1e-14 relative; in float32 a few hundred ulps at most, far below any
wrong tap, weight or padding (errors of order 0.01-1).
"""

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ABS_KERNELS, ONES, ROUNDED_TAPS, TAPS, WEIGHT_ERROR

import stn_jax
from stn_jax._src import gather, kernels, native

PADDINGS = gather.PADDING_MODES
CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "common.h"


def test_kernels_are_built():
  assert native.available(), "stn_jax._bilinear_cpu was not built: see setup.py"


# ---------------------------------------------------------------------------------------
# The contract between gather.py and the C++ side.


def test_padding_codes_agree_with_the_cpp_constants():
  text = CSRC.read_text()
  names = {"zeros": "kZeros", "border": "kBorder", "reflection": "kReflection"}
  for mode, constant in names.items():
    found = re.findall(rf"constexpr int {constant} = (\d+);", text)
    assert len(found) == 1, f"expected one definition of {constant} in {CSRC}; got {found}"
    assert int(found[0]) == gather.PADDING_CODES[mode], (
      f"padding {mode!r}: gather.PADDING_CODES says {gather.PADDING_CODES[mode]}, "
      f"{CSRC.name} says {constant} = {found[0]}; change one to match the other"
    )
  assert sorted(gather.PADDING_CODES) == sorted(gather.PADDING_MODES)


def test_coordinate_limit_has_one_source(monkeypatch):
  # The C++ side holds no clamp of its own: it takes gather.COORD_LIMIT as an attribute.
  # With the limit lowered to 2 pixels, a point 4 pixels out reads as if it were 2 out, on
  # both sides alike; with the real limit it reads 0 (zeros padding).
  assert not re.search(r"16777216|kCoordLimit", CSRC.read_text().split("CheckLimit")[0]), (
    f"{CSRC.name} defines its own coordinate limit; take gather.COORD_LIMIT instead"
  )
  assert gather.COORD_LIMIT <= 2**24, "int32 casts after the clamp need COORD_LIMIT <= 2**24"
  u = jnp.arange(1.0, 1 + 4 * 4 * 4, dtype=jnp.float64).reshape(1, 4, 4, 4, 1)
  # x = 2.5 pixels (g = 0.5): inside; with the limit at 1.25 pixels it reads x = 1.25.
  g = jnp.array([[[[[0.5, 0.0, 0.0]]]]], jnp.float64)
  samples = []
  for limit in (gather.COORD_LIMIT, 1.25):
    monkeypatch.setattr(gather, "COORD_LIMIT", limit)
    # Fresh functions: jit caches by function object, not by gather.COORD_LIMIT.
    fast = jax.jit(lambda u, g: native.sample_linear(u, g, "zeros", False))(u, g)
    ref = _reference_fn("zeros", False)(u, g)
    np.testing.assert_allclose(fast, ref, rtol=1e-14, err_msg=f"COORD_LIMIT = {limit}")
    samples.append(float(fast[0, 0, 0, 0, 0]))
  # u = 1 + x + 4 y + 16 z at (x, y, z) = (2.5, 1.5, 1.5), then every axis clamped to 1.25.
  np.testing.assert_allclose(samples, [1 + 2.5 + 6 + 24, 1 + 1.25 * 21], rtol=1e-14)


# ---------------------------------------------------------------------------------------
# Compiled vs reference.


# Tricubic (Keys' cubic, per-tap padding, 64 taps) and nearest on volumes: the separable
# kernels, compared the same way (the bounds' tables are in helpers.py).
TARGETS = {
  "bilinear": ("StnBilinearFwd", "StnBilinearUGridVjp"),  # both gradients: one fused pass
  "bicubic": ("StnCubicFwd", "StnCubicUVjp", "StnCubicGridVjp"),
  "nearest": ("StnNearestFwd", "StnNearestUVjp"),
}


def _reference_fn(padding_mode, align_corners, kernel="bilinear"):
  """The gather-based sampler, per example, vmapped over the batch: no compiled call."""
  kernel = kernels.resolve(kernel) if isinstance(kernel, str) else kernel

  def one(u, g):
    return gather.sample_gather(u, g, kernel, padding_mode, align_corners)

  return lambda u, g: jax.vmap(one)(u, g)


def _compiled_fn(padding_mode, align_corners, kernel="bilinear"):
  if kernel == "bilinear":
    return lambda u, g: native.sample_linear(u, g, padding_mode, align_corners)
  return lambda u, g: native.sample_separable(u, g, kernel, padding_mode, align_corners)


def _assert_paths(u, g, padding_mode="zeros", align_corners=False):
  fast = jax.jit(_compiled_fn(padding_mode, align_corners)).lower(u, g).as_text()
  ref = jax.jit(_reference_fn(padding_mode, align_corners)).lower(u, g).as_text()
  assert "StnBilinearFwd" in fast, "the compiled path did not lower to the C++ kernel"
  assert "StnBilinear" not in ref, "the reference path lowered to the C++ kernel"


def _gamma(dtype, sizes, kernel="bilinear"):
  eps = float(np.finfo(dtype).eps)
  k = TAPS[kernel]
  if kernel == "bilinear":
    return eps * (2 * sum(s + 1 for s in sizes) + 4 * 2 ** len(sizes))
  # Each cubic weight: its distance off by eps * (size + K), a few eps more from the
  # polynomial; then the sum of K**d terms.
  return eps * (4 * sum(s + k for s in sizes) + 4 * k ** len(sizes))


def _assert_within(actual, expected, bound, what):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
  assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
  finite = np.isfinite(expected)
  np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
  err = np.abs(actual[finite] - expected[finite])
  bound = np.broadcast_to(np.asarray(bound, np.float64), expected.shape)[finite]
  worst = int(np.argmax(err - bound)) if err.size else 0
  assert np.all(err <= bound), (
    f"{what}: |compiled - reference| = {err[worst]:.3g} > bound {bound[worst]:.3g} "
    f"(compiled {actual[finite][worst]!r}, reference {expected[finite][worst]!r})"
  )


def _volume_inputs(rng, shape=(2, 4, 5, 6, 3), out=(3, 4, 5), dtype=np.float64, spill=1.3):
  n = shape[0]
  U = rng.normal(size=shape).astype(dtype)
  grid = rng.uniform(-spill, spill, size=(n, *out, 3)).astype(dtype)
  return jnp.asarray(U), jnp.asarray(grid)


def _first_order(fn, U, grid, R, dU, dgrid):
  V, vjp = jax.vjp(fn, U, grid)
  gU, gg = vjp(R)
  _, tU = jax.jvp(lambda u: fn(u, grid), (U,), (dU,))
  _, tg = jax.jvp(lambda g: fn(U, g), (grid,), (dgrid,))
  return V, gU, gg, tU, tg


def _check_first_order(U, grid, padding_mode, align_corners, rng, kernel="bilinear"):
  dtype = U.dtype
  spatial = U.shape[-4:-1]
  gamma = _gamma(dtype, spatial, kernel)
  R = jnp.asarray(rng.normal(size=grid.shape[:-1] + U.shape[-1:]).astype(dtype))
  dU = jnp.asarray(rng.normal(size=U.shape).astype(dtype))
  dgrid = jnp.asarray(rng.normal(size=grid.shape).astype(dtype))
  fast = jax.jit(lambda *a: _first_order(_compiled_fn(padding_mode, align_corners, kernel), *a))
  ref = jax.jit(lambda *a: _first_order(_reference_fn(padding_mode, align_corners, kernel), *a))
  args = (U, grid, R, dU, dgrid)
  fast_text = fast.lower(*args).as_text()
  for target in TARGETS[kernel]:
    assert target in fast_text, f"{target} missing: the compiled path did not run its kernels"
  assert "Stn" not in ref.lower(*args).as_text()
  got, want = fast(*args), ref(*args)
  ref_abs = _reference_fn(padding_mode, align_corners, ABS_KERNELS[kernel])
  # Sums of |terms|: the sampler with |weights| applied to |U| (values, U-tangent), its
  # scatter of |R| (U-gradient); grid derivatives: slope (<= size / 2 per normalised unit)
  # times sum_t |dw_t| |U_t| (<= 2 max|U| for the tent; < 4 * 2**(d - 1) max|U| for Keys,
  # whose |k'| sum to < 4 and |k| to < 2 over an axis's taps) times the summed |cotangent|
  # or |tangent|.
  slope = (max(spatial) / 2 + 1) * (2 if kernel == "bilinear" else 4 * 2 ** len(spatial))
  max_u = float(jnp.max(jnp.abs(U)))
  # A voxel of dU sums up to K**3 terms per output point of its example (recursive
  # summation of n terms: (n - 1) eps times the sum of their magnitudes).
  taps = TAPS[kernel] ** 3
  gamma_du = gamma + float(np.finfo(dtype).eps) * taps * np.prod(grid.shape[-4:-1])
  delta = float(np.finfo(dtype).eps) * WEIGHT_ERROR * 2 * 3 if kernel == "bicubic" else 0.0
  ones = _reference_fn(padding_mode, align_corners, ONES)
  slope_abs = (max(spatial) / 2 + 1) * taps * delta  # the derivative weights' errors

  def scatter(ref, r):
    return jax.vjp(lambda u: ref(u, grid), U)[1](r)[0]

  # A weight's rounding error is absolute (~eps * size from its coordinate): gamma times
  # the taps' unweighted sum covers a weight near 0 too (ROUNDED_TAPS, in helpers.py).
  support = _reference_fn(padding_mode, align_corners, ROUNDED_TAPS[kernel])
  bounds = [
    gamma * (ref_abs(jnp.abs(U), grid) + support(jnp.abs(U), grid))
    + delta * ones(jnp.abs(U), grid),
    gamma_du * scatter(ref_abs, jnp.abs(R))
    + gamma * scatter(support, jnp.abs(R))
    + delta * scatter(ones, jnp.abs(R)),
    (gamma * slope + slope_abs) * max_u * jnp.sum(jnp.abs(R), -1, keepdims=True),
    gamma * (ref_abs(jnp.abs(dU), grid) + support(jnp.abs(dU), grid))
    + delta * ones(jnp.abs(dU), grid),
    (gamma * slope + slope_abs) * max_u * jnp.sum(jnp.abs(dgrid), -1, keepdims=True),
  ]
  names = ["V", "dL/dU", "dL/dgrid", "jvp in U", "jvp in grid"]
  for a, b, bound, name in zip(got, want, bounds, names, strict=True):
    tiny = np.finfo(dtype).tiny
    what = f"{name} ({kernel}, {padding_mode}, {align_corners})"
    _assert_within(a, b, np.asarray(bound) + tiny, what)
  if kernel == "nearest":  # its samples do not move with the grid
    assert not np.any(np.asarray(got[2])) and not np.any(np.asarray(got[4]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("kernel", ["bicubic", "nearest"])
def test_separable_kernels_equal_the_reference(rng, kernel, padding_mode, align_corners, dtype):
  # Tricubic and nearest on volumes, values and first derivatives; one channel and three, 9
  # points along x (the channel loop's lanes and its scalar rest meet both).
  channels = 3 if align_corners else 1
  U, grid = _volume_inputs(rng, shape=(2, 4, 5, 6, channels), out=(2, 2, 9), dtype=dtype)
  _check_first_order(U, grid, padding_mode, align_corners, rng, kernel)


def _value_and_vjp(f, u, g, r):
  out, vjp = jax.vjp(f, u, g)
  return (out, *vjp(r))


@pytest.mark.parametrize("kernel", ["bicubic", "nearest"])
def test_separable_kernels_pixels_and_many_channels(rng, kernel):
  # pixels=True (fields.warp's entry: the grid in pixels), and 11 channels (one run of 8
  # lanes in float32, 2 runs of 4 in float64, then the rest).
  for dtype in (np.float64, np.float32):
    U = jnp.asarray(rng.normal(size=(2, 3, 4, 5, 11)).astype(dtype))
    grid = jnp.asarray(rng.uniform(-1.5, 5.5, size=(2, 2, 3, 4, 3)).astype(dtype))
    for padding_mode in PADDINGS:

      def fast(u, g, pm=padding_mode):
        return native.sample_separable(u, g, kernel, pm, False, pixels=True)

      def ref(u, g, pm=padding_mode):
        one = functools.partial(
          gather.sample_gather,
          kernel=kernels.resolve(kernel),
          padding_mode=pm,
          align_corners=False,
          pixels=True,
        )
        return jax.vmap(one)(u, g)

      R = jnp.asarray(rng.normal(size=grid.shape[:-1] + (11,)).astype(dtype))
      got = jax.jit(functools.partial(_value_and_vjp, fast))(U, grid, R)
      want = jax.jit(functools.partial(_value_and_vjp, ref))(U, grid, R)
      # Magnitudes of the terms: sum |w| < 2 per value; a voxel of dU takes at most the
      # 24 points of its example; a grid derivative sums 64 taps' |dw| (< 4 * 2**2 in all)
      # times 11 channels' |U R|. In pixels the coordinate is exact: only the weights'
      # polynomial and the sums round, which the gamma of normalised grids covers.
      # Plus the weights' absolute errors (WEIGHT_ERROR) over the 64 taps.
      max_u, max_r = float(jnp.max(jnp.abs(U))), float(jnp.max(jnp.abs(R)))
      scales = [2 * max_u, 2 * 24 * max_r, 16 * 11 * max_u * max_r]
      eps = float(np.finfo(dtype).eps)
      for i, (a, b, scale) in enumerate(zip(got, want, scales, strict=True)):
        tol = (_gamma(dtype, (3, 4, 5), kernel) + 64 * 6 * WEIGHT_ERROR * eps) * scale
        _assert_within(a, b, tol, f"output {i} ({kernel}, {padding_mode}, {dtype.__name__})")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_values_and_first_derivatives_equal_the_reference(rng, padding_mode, align_corners, dtype):
  # One channel (align_corners=False) and three (True), so each padding and dtype meets both
  # kernel paths; 13 points along x: one float32 channel takes the AVX2 gathers 8 at a time,
  # the scalar loop for the other 5.
  channels = 3 if align_corners else 1
  U, grid = _volume_inputs(rng, shape=(2, 4, 5, 6, channels), out=(3, 2, 13), dtype=dtype)
  _check_first_order(U, grid, padding_mode, align_corners, rng)


def test_higher_derivatives_and_jacobians(rng):
  # Second order in the grid reaches the primitives' fallback rules; U-grid mixed second
  # order their own linearity; jacfwd and jacrev every transpose rule. (The fallbacks are
  # the reference itself, so one padding mode covers the wiring.)
  padding_mode = "reflection"
  U, grid = _volume_inputs(rng, shape=(1, 2, 3, 4, 2), out=(2, 1, 3))

  def derivatives(fn):
    def loss(u, g):
      return jnp.sum(jnp.sin(fn(u, g)))

    return [
      *jax.jacfwd(fn, (0, 1))(U, grid),
      *jax.jacrev(fn, (0, 1))(U, grid),
      jax.hessian(loss, 1)(U, grid),
      jax.jacfwd(jax.grad(loss, 0), 1)(U, grid),
      jax.jacrev(jax.grad(loss, 1), 0)(U, grid),
    ]

  fast = derivatives(_compiled_fn(padding_mode, False))
  ref = derivatives(_reference_fn(padding_mode, False))
  # float64: gamma (~1e-14) times term sums of order 10-100 here.
  for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
    _assert_within(a, b, 1e-11 * (1 + np.abs(np.asarray(b))), f"derivative {i} ({padding_mode})")


@pytest.mark.parametrize(
  "in_axes", [(0, 0), (None, 0), (0, None), (1, 2)], ids=["both", "grid", "U", "moved"]
)
def test_vmap_and_batch_dims(rng, in_axes):
  # vmap over a (2,)-batched call, i.e. two batch dims, in every way vmap can batch.
  U = jnp.asarray(rng.normal(size=(3, 2, 4, 3, 5, 2)))
  grid = jnp.asarray(rng.uniform(-1.2, 1.2, size=(3, 2, 2, 3, 2, 3)))
  if in_axes[0] is None:
    U = U[0]
  if in_axes[1] is None:
    grid = grid[0]
  if in_axes == (1, 2):
    U, grid = jnp.moveaxis(U, 0, 1), jnp.moveaxis(grid, 0, 2)

  def run(fn):
    def f(u, g):
      return jax.vmap(fn, in_axes=in_axes)(u, g)

    out, vjp = jax.vjp(f, U, grid)
    return (out, *vjp(jnp.cos(out)), jax.jvp(f, (U, grid), (jnp.sin(U), jnp.cos(grid)))[1])

  def ref(u, g):
    lead = u.shape[:-4]
    flat = _reference_fn("border", True)(u.reshape(-1, *u.shape[-4:]), g.reshape(-1, *g.shape[-4:]))
    return flat.reshape(lead + flat.shape[1:])

  fast = run(_compiled_fn("border", True))
  want = run(ref)
  for i, (a, b) in enumerate(zip(fast, want, strict=True)):
    _assert_within(a, b, 1e-12 * (1 + np.abs(np.asarray(b))), f"output {i} ({in_axes})")


@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("channels", [1, 2])
def test_non_finite_and_huge_coordinates(rng, padding_mode, dtype, channels):
  U, grid = _volume_inputs(rng, shape=(1, 3, 4, 5, channels), out=(2, 3, 9), dtype=dtype)
  special = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1e30, -1e30, 2.0**24, 1.0, -1.0], dtype)
  for axis in range(3):
    grid = grid.at[0, 0, axis, :8, axis].set(special)
    grid = grid.at[0, 1, axis, :8, axis].set(special[::-1])
  grid = grid.at[0, 1, 0, :8, 2].set(special)
  # NaN and inf voxels elsewhere in U must not leak into points whose taps avoid them.
  # (The grid tangent is taken on the finite U: with an inf tap, forward mode's 0 * inf
  # depends on the order of the sums, which the two paths need not share.)
  finite_U = U
  U = U.at[0, 0, 0, 0, 0].set(jnp.inf).at[0, 2, 3, 4, channels - 1].set(jnp.nan)
  _assert_paths(U, grid, padding_mode)

  def run(fn):
    out, vjp = jax.vjp(fn, U, grid)
    # An inf cotangent at the NaN point (which reads nothing) must not reach dU.
    ct = jnp.ones_like(out).at[0, 0, 0, 0].set(jnp.inf)
    tangent = jax.jvp(lambda g: fn(finite_U, g), (grid,), (jnp.ones_like(grid),))[1]
    return (out, *vjp(ct), tangent)

  fast = run(jax.jit(_compiled_fn(padding_mode, False)))
  want = run(jax.jit(_reference_fn(padding_mode, False)))
  gamma = _gamma(dtype, U.shape[-4:-1])
  finite_u = float(jnp.max(jnp.where(jnp.isfinite(U), jnp.abs(U), 0)))
  # Every term is at most max|U| (values) or size/2 * 2 max|U| * C * |ct| (grid), and at
  # most 2 * 3 * 5 * 9 points reach one voxel (dU).
  bounds = [
    gamma * finite_u,
    gamma * 270,
    gamma * 6 * finite_u * channels,
    gamma * 6 * finite_u * 3,
  ]
  for i, (a, b, bound) in enumerate(zip(fast, want, bounds, strict=True)):
    _assert_within(a, b, bound, f"output {i} ({padding_mode}, {np.dtype(dtype).name})")


@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_size_one_axes(rng, padding_mode):
  # Size-1 axes: align_corners=True divides by size - 1 = 0 in the pixel scale, reflection
  # has an empty span.
  U, grid = _volume_inputs(rng, shape=(2, 1, 4, 1, 2), out=(2, 3, 4))
  _check_first_order(U, grid, padding_mode, padding_mode != "border", rng)


@pytest.mark.parametrize("zero_axis", [0, 1, 2, 3])
def test_zero_size_axes(rng, zero_axis):
  # An empty volume samples 0 with zero derivatives (and reads nothing); an empty grid
  # gives an empty output. The kernels handle both themselves, whatever calls them.
  shape = [2, 3, 4, 2]
  out = [3, 2, 4]
  if zero_axis < 3:
    shape[zero_axis] = 0
  else:
    out = [3, 0, 4]
  U, grid = _volume_inputs(rng, shape=(2, *shape), out=tuple(out))
  fn = _compiled_fn("border", False)
  _assert_paths(U, grid, "border")
  V, vjp = jax.vjp(jax.jit(fn), U, grid)
  gU, gg = vjp(jnp.ones_like(V))
  assert V.shape == (2, *out, shape[-1])
  assert not np.any(np.asarray(V)) and not np.any(np.asarray(gg))
  assert gU.shape == U.shape
  if zero_axis == 3:
    assert not np.any(np.asarray(gU))


def test_large_batch_split_across_threads(rng):
  # Enough work for several chunks on the intra-op pool in every pass.
  U, grid = _volume_inputs(rng, shape=(3, 8, 10, 12, 5), out=(9, 10, 11), spill=1.1)
  _check_first_order(U, grid, "reflection", False, rng)


def test_public_sample_runs_the_kernels_on_volumes(rng):
  # stn_jax.sample dispatches float32/float64 trilinear volumes to the kernels, with the
  # reference's values.
  U, grid = _volume_inputs(rng, shape=(2, 4, 5, 6, 3), out=(3, 4, 5), dtype=np.float32)

  def loss(u, g):
    return jnp.sum(stn_jax.sample(u, g) ** 2)

  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(U, grid).compile().as_text()
  for target in ("StnBilinearFwd", "StnBilinearUGridVjp"):
    assert target in hlo, f"{target} missing: stn_jax.sample did not use the kernels"
  assert " gather(" not in hlo and " scatter(" not in hlo
  gamma = _gamma(np.float32, (4, 5, 6))
  want = _reference_fn("zeros", False)(U, grid)
  _assert_within(stn_jax.sample(U, grid), want, gamma * 4 * float(jnp.max(jnp.abs(U))), "V")

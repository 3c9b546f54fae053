"""The compiled kernels (``native.py``) equal the gather-based sampler they replace.

``stn_jax.sample`` runs bilinear, bicubic and nearest float32/float64 through four JAX
primitives lowered to C++ on the CPU (nearest: two, its grid derivatives are 0). The
reference is the same call with ``STN_JAX_NATIVE=0``, i.e. the pure-JAX sampler that
PyTorch parity and the dense oracle also check. Compared here: values and every
derivative (jvp, vjp, jacfwd, jacrev, Hessians, which reach the primitives' fallback
rules), over padding modes, align_corners, one and several channels, points outside the
image and non-finite ones, batches large enough to be split across threads, and each way
``vmap`` can batch the arguments.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOLERANCES

import stn_jax
from stn_jax._src import native

PADDINGS = stn_jax.PADDING_MODES
# Each compiled kernel, and the custom-call target of its forward pass.
FORWARD = {"bilinear": "StnBilinearFwd", "bicubic": "StnCubicFwd", "nearest": "StnNearestFwd"}


def test_kernels_are_built():
  # CI installs with the extension; a silent fallback would leave the kernels untested.
  assert native.available(), "stn_jax._bilinear_cpu was not built: see setup.py"


def test_reference_really_runs_without_the_kernels(pure_jax):
  # The comparisons below are only as good as this: jit caches traces by function object,
  # so a reference run that reused the kernels' trace would compare them with themselves.
  U = jnp.zeros((2, 6, 5, 1), jnp.float32)
  grid = jnp.zeros((2, 3, 4, 2), jnp.float32)

  def lowered():
    return jax.jit(stn_jax.sample).lower(U, grid).as_text()

  assert "StnBilinearFwd" in lowered()
  assert "StnBilinearFwd" not in pure_jax(lowered)
  assert "StnBilinearFwd" in lowered()  # and back on afterwards


def _inputs(rng, shape=(2, 5, 6, 3), out=(3, 4), dtype=np.float64, spill=1.3):
  n = shape[0]
  U = rng.normal(size=shape).astype(dtype)
  grid = rng.uniform(-spill, spill, size=(n, *out, 2)).astype(dtype)
  return jnp.asarray(U), jnp.asarray(grid)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _derivatives(U, grid, padding_mode, align_corners, kernel="bilinear"):
  # One program, so each path compiles once: run op by op, every jacfwd/jacrev/Hessian
  # primitive compiled on its own (13 s of a 3 s test here, and pure_jax clears the
  # caches). Under jit the same primitives lower to the same kernel calls and fallback
  # rules; test_vmap_over_each_argument and others run them op by op.
  def f(u, g):
    return stn_jax.sample(u, g, kernel, padding_mode=padding_mode, align_corners=align_corners)

  def loss(u, g):
    return jnp.sum(jnp.sin(f(u, g)))

  du, dg = jnp.cos(U), jnp.sin(grid)
  return [
    f(U, grid),
    *jax.jvp(f, (U, grid), (du, dg)),
    *jax.grad(loss, (0, 1))(U, grid),
    *jax.jacfwd(f, (0, 1))(U, grid),
    *jax.jacrev(f, (0, 1))(U, grid),
    # Second order: grid-grid (fallback rules), U-grid (the kernels' own linearity).
    jax.hessian(loss, 1)(U, grid),
    jax.jacfwd(jax.grad(loss, 0), 1)(U, grid),
    jax.jacrev(jax.grad(loss, 1), 0)(U, grid),
  ]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("channels", [1, 3])
def test_values_and_derivatives_equal_the_reference(
  rng, pure_jax, padding_mode, align_corners, channels
):
  U, grid = _inputs(rng, shape=(2, 5, 6, channels))
  fast = _derivatives(U, grid, padding_mode, align_corners)
  ref = pure_jax(_derivatives, U, grid, padding_mode, align_corners)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, **TOLERANCES[np.dtype(np.float64)])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("kernel", ["bicubic", "nearest"])
def test_separable_kernels_equal_the_reference(rng, pure_jax, kernel, padding_mode, align_corners):
  # Bicubic (per-tap padding, 16 taps) and nearest, every derivative, against the pure-JAX
  # sampler in float64; one channel with align_corners=False, three with True.
  channels = 3 if align_corners else 1
  U, grid = _inputs(rng, shape=(2, 5, 6, channels))
  lowered = jax.jit(lambda u, g: stn_jax.sample(u, g, kernel)).lower(U, grid).as_text()
  assert FORWARD[kernel] in lowered, f"{kernel} did not lower to its compiled kernel"
  fast = _derivatives(U, grid, padding_mode, align_corners, kernel)
  ref = pure_jax(_derivatives, U, grid, padding_mode, align_corners, kernel)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, **TOLERANCES[np.dtype(np.float64)])


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("channels", [1, 2, 9])
def test_float32_equals_the_reference(rng, pure_jax, kernel, padding_mode, channels):
  # Rows of 13 points: one channel in float32 takes AVX2 gathers 8 points at a time (where
  # the CPU has them) and the scalar loop for the other 5. Nine channels: the separable
  # kernels' channel loop runs 8 lanes at a time, then the rest one by one.
  U, grid = _inputs(rng, shape=(3, 7, 5, channels), out=(6, 13), dtype=np.float32)

  def run(u, g):
    def f(u, g):
      return stn_jax.sample(u, g, kernel, padding_mode=padding_mode)

    out, vjp = jax.vjp(f, u, g)
    return (out, *vjp(jnp.cos(out)))

  fast, ref = run(U, grid), pure_jax(run, U, grid)
  tol = TOLERANCES[np.dtype(np.float32)]
  if kernel == "bicubic":
    # A grid gradient sums 16 taps x C channels of products (about 150 terms here, each off
    # by a few float32 eps, ~1.2e-7) and its cubic weights round absolutely near the edge of
    # the support: 1e-4 of the result's scale, where the tent's 4 taps stay within 1e-5.
    tol = dict(rtol=1e-4, atol=1e-4)
  for a, b in zip(fast, ref, strict=True):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("channels", [1, 2])
def test_non_finite_and_huge_coordinates(rng, pure_jax, kernel, padding_mode, dtype, channels):
  U, grid = _inputs(rng, shape=(1, 4, 5, channels), out=(2, 9), dtype=dtype)
  special = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1e30, -1e30, 2.0**24, 1.0, -1.0], dtype)
  grid = grid.at[0, 0, :8, 0].set(special).at[0, 1, :8, 0].set(special[::-1])
  grid = grid.at[0, 1, :8, 1].set(special)
  # NaN and inf pixels elsewhere in U must not leak into points whose taps avoid them.
  U = U.at[0, 0, 0, 0].set(jnp.inf).at[0, 3, 4, channels - 1].set(jnp.nan)

  def run(u, g):
    def f(u, g):
      return stn_jax.sample(u, g, kernel, padding_mode=padding_mode)

    out, vjp = jax.vjp(f, u, g)
    # An inf cotangent at the NaN point (which reads nothing) must not reach dU.
    return (out, *vjp(jnp.ones_like(out).at[0, 0, 0].set(jnp.inf)))

  fast, ref = run(U, grid), pure_jax(run, U, grid)
  for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
    if kernel == "bicubic" and i == 2:
      # The grid gradient at a point that reads an infinite pixel: the kernel multiplies
      # the (finite) weight derivative by the infinite sum (+-inf); JAX's reverse mode
      # splits the cubic's derivative into terms of opposite signs, each times that
      # infinity (NaN). Non-finite at the same points, either way.
      np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
      finite = np.isfinite(b)
      a, b = np.where(finite, a, 0), np.where(finite, b, 0)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, **TOLERANCES[np.dtype(dtype)])


def test_large_batch_split_across_threads(rng, pure_jax):
  # Enough work for several chunks on the intra-op pool, in every pass.
  U, grid = _inputs(rng, shape=(24, 40, 36, 5), out=(33, 29), spill=1.1)

  def run(u, g):
    out, vjp = jax.vjp(jax.jit(stn_jax.sample), u, g)
    tangent = jax.jvp(lambda g: stn_jax.sample(u, g), (g,), (jnp.cos(g),))[1]
    return (out, tangent, *vjp(jnp.sin(out)))

  fast, ref = run(U, grid), pure_jax(run, U, grid)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, **TOLERANCES[np.dtype(np.float64)])


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(
  "in_axes", [(0, 0), (None, 0), (0, None), (1, 2)], ids=["both", "grid", "U", "moved"]
)
def test_vmap_over_each_argument(rng, pure_jax, in_axes, kernel):
  U, grid = _inputs(rng, shape=(3, 6, 5, 2), out=(4, 3))
  if in_axes[0] is None:
    U = U[0]
  if in_axes[1] is None:
    grid = grid[0]
  if in_axes == (1, 2):
    U, grid = jnp.moveaxis(U, 0, 1), jnp.moveaxis(grid, 0, 2)

  def run(u, g):
    def f(u, g):
      return jax.vmap(lambda u, g: stn_jax.sample(u, g, kernel), in_axes=in_axes)(u, g)

    out, vjp = jax.vjp(f, u, g)
    return (out, *vjp(jnp.cos(out)), jax.jvp(f, (u, g), (jnp.sin(u), jnp.cos(g)))[1])

  fast, ref = run(U, grid), pure_jax(run, U, grid)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, **TOLERANCES[np.dtype(np.float64)])


@pytest.mark.parametrize(
  "kernel, targets",
  [
    ("bilinear", ("StnBilinearFwd", "StnBilinearUVjp", "StnBilinearGridVjp")),
    ("bicubic", ("StnCubicFwd", "StnCubicUVjp", "StnCubicGridVjp")),
    # Nearest's grid gradient is exactly 0: no pass computes it.
    ("nearest", ("StnNearestFwd", "StnNearestUVjp")),
  ],
)
def test_gradient_runs_only_the_kernels(kernel, targets):
  # The point of the kernels: no XLA gather or scatter left in a first-order gradient.
  U = jnp.zeros((4, 8, 8, 3), jnp.float32)
  grid = jnp.zeros((4, 5, 5, 2), jnp.float32)

  def loss(u, g):
    return jnp.sum(stn_jax.sample(u, g, kernel) ** 2)

  # Both gradients: bilinear's fused pass (test_native_fused.py), else the two single passes;
  # one gradient: its single pass.
  both = ("StnBilinearFwd", "StnBilinearUGridVjp") if kernel == "bilinear" else targets
  # Nearest's grid gradient is exactly 0: nothing at all runs for it.
  single = {0: targets[:2], 1: () if kernel == "nearest" else (targets[0], *targets[2:])}
  for argnums, expected in (((0, 1), both), (0, single[0]), (1, single[1])):
    hlo = jax.jit(jax.grad(loss, argnums)).lower(U, grid).compile().as_text()
    found = sorted(set(re.findall(r'custom_call_target="(Stn\w+)"', hlo)))
    assert found == sorted(expected), (argnums, found)
    assert " gather(" not in hlo and " scatter(" not in hlo


def test_other_dtypes_and_kernels_take_the_gather_path():
  U = jnp.zeros((6, 6, 2), jnp.float32)
  grid = jnp.zeros((3, 3, 2), jnp.float32)
  assert native.usable(U, grid)
  assert not native.usable(U.astype(jnp.bfloat16), grid)
  assert not native.usable(U, grid.astype(jnp.float64))
  assert not native.usable(jax.ShapeDtypeStruct((2**16, 2**15, 1), jnp.float32), grid)
  # User-built kernels run the gather sampler, even one equal in form to the compiled
  # bicubic (only the object kernels.resolve("bicubic") returns takes the kernels).
  for kernel in (
    stn_jax.kernels.keys_cubic(-0.5),
    stn_jax.kernels.keys_cubic(),
    stn_jax.kernels.triangle(),
  ):
    hlo = jax.jit(lambda u, g, k=kernel: stn_jax.sample(u, g, k)).lower(U, grid).as_text()
    assert "Stn" not in hlo, kernel
  hlo = jax.jit(lambda u, g: stn_jax.sample(u, g, "bicubic")).lower(U, grid).as_text()
  assert "StnCubicFwd" in hlo
  # Integer images (nearest keeps their dtype) are not the kernels' either.
  hlo = jax.jit(lambda u, g: stn_jax.sample(u, g, "nearest")).lower(U.astype(jnp.int32), grid)
  assert "Stn" not in hlo.as_text()

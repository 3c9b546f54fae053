"""Both gradients in one kernel pass (``native.u_grid_vjp``) equal the two single passes.

When reverse mode needs both ``dU`` and ``dgrid``, ``fwd``'s JVP is one primitive
(``tangent``) whose transpose runs one fused C++ sweep (``StnBilinearUGridVjp``) instead of
the scatter ``u_vjp`` and the grid pass ``grid_vjp``. The fused sweep runs the same
arithmetic per output as the single passes, so it must equal them bitwise (two oracles:
the single passes, switched on with ``native.FUSE_BACKWARD = False``, and the pure-JAX
sampler in float64). Checked over 2-D and 3-D, one and several channels, every padding,
both ``align_corners``, pixel coordinates, hostile coordinates and non-finite pixels; and
that the fused call is in the program exactly when both gradients are taken.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax
from stn_jax._src import gather, native

PADDINGS = stn_jax.PADDING_MODES
SHAPES = {  # (U, grid): a batch of 3 images, of 2 volumes; rows of 13 points (AVX2 + tail)
  "2d": ((3, 7, 6), (5, 13)),
  "3d": ((2, 4, 5, 6), (3, 2, 13)),
}


@pytest.fixture(autouse=True)
def _kernels_on():
  if not native.available():
    pytest.skip("the compiled kernels are not built (or STN_JAX_NATIVE=0)")


def _inputs(rng, case, channels, dtype, pixels=False, hostile=False):
  (n, *spatial), out = SHAPES[case]
  d = len(spatial)
  U = rng.normal(size=(n, *spatial, channels)).astype(dtype)
  grid = rng.uniform(-1.3, 1.3, size=(n, *out, d))
  if pixels:  # pixel coordinates, axis a spanning U's axis a with a pixel beyond each edge
    sizes = np.array(spatial[::-1], np.float64)
    grid = (grid + 1) / 2 * sizes - 0.5
  if hostile:
    special = [np.nan, np.inf, -np.inf, 1e30, -1e30, 2.0**24, 1.0, -1.0]
    flat = grid.reshape(n, -1, d)
    flat[0, :8, 0] = special
    flat[0, 8:16, d - 1] = special[::-1]
    flat[-1, :8, :] = np.array(special)[:, None]
    U.reshape(n, -1, channels)[0, 0, 0] = np.inf
    U.reshape(n, -1, channels)[-1, -1, -1] = np.nan
  return jnp.asarray(U), jnp.asarray(grid.astype(dtype))


def _kernels(padding_mode, align_corners, pixels):
  """The compiled sampler on batched arrays (the primitive ``sample`` binds per call)."""
  return lambda u, g: native.sample_linear(u, g, padding_mode, align_corners, pixels)


def _reference(padding_mode, align_corners, pixels):
  """The pure-JAX sampler (gather.py), one example at a time."""

  def one(u, g):
    return gather.sample_gather(u, g, "bilinear", padding_mode, align_corners, pixels=pixels)

  return jax.vmap(one)


def _grads(f, U, grid, ct):
  """V and the vjp of ``f`` for cotangent ``ct`` (an inf in it at an unreadable point)."""
  out, vjp = jax.vjp(f, U, grid)
  return (out, *vjp(ct))


VARIANTS = ((False, False), (True, False), (False, True))  # (pixels, hostile)


def _variant_inputs(rng, case, channels, dtype):
  """(U, grid, ct) for each of VARIANTS; an inf cotangent at a hostile (NaN) point."""
  arrays = []
  for pixels, hostile in VARIANTS:
    U, grid = _inputs(rng, case, channels, dtype, pixels=pixels, hostile=hostile)
    ct = jnp.asarray(rng.normal(size=grid.shape[:-1] + (channels,)).astype(dtype))
    ct = ct.at[(0,) * (grid.ndim - 1)].set(jnp.inf) if hostile else ct
    arrays.append((U, grid, ct))
  return arrays


def _compiled(fn, *args):
  """``jit(fn)(*args)`` and the lowered program's text (one trace, one compile)."""
  lowered = jax.jit(fn).lower(*args)
  return lowered.compile()(*args), lowered.as_text()


CASES = [
  (case, channels, padding, align)
  for case in SHAPES
  for channels in (1, 3)
  for padding in PADDINGS
  for align in (False, True)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case,channels,padding_mode,align_corners", CASES)
def test_fused_equals_the_single_passes_bitwise(
  rng, case, channels, padding_mode, align_corners, dtype
):
  def run(arrays):
    # FUSE_BACKWARD is read when the JVP is traced: both ways in one program.
    out = []
    try:
      for (U, grid, ct), (pixels, _) in zip(arrays, VARIANTS, strict=True):
        for fused in (True, False):
          native.FUSE_BACKWARD = fused
          out.append(_grads(_kernels(padding_mode, align_corners, pixels), U, grid, ct))
    finally:
      native.FUSE_BACKWARD = True
    return out

  results, text = _compiled(run, _variant_inputs(rng, case, channels, dtype))
  assert "StnBilinearUGridVjp" in text and "StnBilinearUVjp" in text
  for i, variant in enumerate(VARIANTS):
    fused, single = results[2 * i], results[2 * i + 1]
    for what, a, b in zip(("V", "dU", "dgrid"), fused, single, strict=True):
      assert a.dtype == dtype
      np.testing.assert_array_equal(a, b, err_msg=f"{what} (pixels, hostile) = {variant}")


@pytest.mark.parametrize("case,channels,padding_mode,align_corners", CASES)
def test_fused_equals_the_float64_reference(rng, case, channels, padding_mode, align_corners):
  # float64 on both sides, the same formula in another order. An output is a sum of at
  # most k = 2**d * C * P terms (P points per example all reaching one pixel, for dU),
  # each a product of |ct|, a tap value or a difference of two (<= 2 |U|), d weights
  # (<= 1) and a slope (<= max(size / 2, 1) pixels per unit); each term carries at most
  # d + 4 roundings and the sum k more, so |error| <= (k + d + 4) * eps * k * max|term|.
  def run(arrays):
    out = []
    for (U, grid, ct), (pixels, _) in zip(arrays, VARIANTS, strict=True):
      for sampler in (_kernels, _reference):
        out.append(_grads(sampler(padding_mode, align_corners, pixels), U, grid, ct))
    return out

  arrays = _variant_inputs(rng, case, channels, np.float64)
  results, text = _compiled(run, arrays)
  assert "StnBilinearUGridVjp" in text
  for i, (U, grid, ct) in enumerate(arrays):
    fast, ref = results[2 * i], results[2 * i + 1]
    d = grid.shape[-1]
    k = 2**d * channels * grid[0, ..., 0].size
    finite_max = lambda x: np.abs(np.where(np.isfinite(x), x, 0)).max()  # noqa: E731
    term = finite_max(ct) * 2 * finite_max(U) * max(max(U.shape[1:-1]) / 2, 1)
    atol = (k + d + 4) * np.finfo(np.float64).eps * k * term
    for what, a, b in zip(("V", "dU", "dgrid"), fast, ref, strict=True):
      np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=what)
      np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"{what} {VARIANTS[i]}")


def _targets(fn, *args):
  text = jax.jit(fn).lower(*args).compile().as_text()
  return sorted(set(re.findall(r'custom_call_target="(Stn\w+)"', text)))


def _loss(u, g):
  return jnp.sum(stn_jax.sample(u, g) ** 2)


@pytest.mark.parametrize("case", list(SHAPES))
def test_fused_call_only_when_both_gradients_are_taken(rng, case):
  U, grid = _inputs(rng, case, 2, np.float32)
  both = _targets(jax.grad(_loss, (0, 1)), U, grid)
  assert both == ["StnBilinearFwd", "StnBilinearUGridVjp"]
  # The grid alone: the grid pass, and no dU (neither the scatter nor the fused pass).
  assert _targets(jax.grad(_loss, 1), U, grid) == ["StnBilinearFwd", "StnBilinearGridVjp"]
  assert _targets(jax.grad(_loss, 0), U, grid) == ["StnBilinearFwd", "StnBilinearUVjp"]


def test_grid_gradient_alone_never_binds_the_scatter(rng):
  # Beyond the compiled program (where XLA could drop unused work): the jaxpr of the grid
  # gradient holds no U-gradient primitive at all.
  U, grid = _inputs(rng, "2d", 3, np.float32)
  jaxpr = str(jax.make_jaxpr(jax.grad(_loss, 1))(U, grid))
  assert "stn_bilinear_grid_vjp" in jaxpr
  assert "stn_bilinear_u_vjp" not in jaxpr and "stn_bilinear_u_grid_vjp" not in jaxpr


def _derivatives(U, grid):
  def f(u, g):
    return stn_jax.sample(u, g, padding_mode="reflection")

  def loss(u, g):
    return jnp.sum(jnp.sin(f(u, g)))

  return [
    *jax.jvp(f, (U, grid), (jnp.cos(U), jnp.sin(grid))),
    *jax.grad(loss, (0, 1))(U, grid),
    # Second order through the fused pass: its JVP (forward over reverse) and the
    # transposes of that JVP (reverse over reverse).
    *jax.jacfwd(jax.grad(loss, (0, 1)), 1)(U, grid),
    jax.jacrev(lambda u, g: jax.grad(loss, (0, 1))(u, g)[1], 0)(U, grid),
  ]


@pytest.mark.parametrize("case", list(SHAPES))
def test_jvp_and_second_derivatives_equal_the_reference(rng, pure_jax, case):
  (n, *spatial), out = SHAPES[case]
  U, grid = _inputs(rng, case, 2, np.float64)
  U, grid = U[:1, ..., :3, :], grid[:1, ..., :2, :]  # small: the Jacobians are dense
  hlo = jax.jit(jax.grad(lambda u, g: jnp.sum(jnp.sin(stn_jax.sample(u, g))), (0, 1)))
  assert "StnBilinearUGridVjp" in hlo.lower(U, grid).compile().as_text()
  fast, ref = _derivatives(U, grid), pure_jax(_derivatives, U, grid)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
  "in_axes", [(0, 0), (None, 0), (0, None)], ids=["both", "shared_image", "shared_grid"]
)
def test_vmap_of_the_fused_gradient(rng, pure_jax, in_axes):
  # vmap outside grad batches the fused primitive itself (broadcast, or its parts with a
  # shared image, where each example still gets its own dU).
  U, grid = _inputs(rng, "2d", 3, np.float64)
  U = U[0] if in_axes[0] is None else U
  grid = grid[0] if in_axes[1] is None else grid

  def run(u, g):
    return jax.vmap(jax.grad(_loss, (0, 1)), in_axes=in_axes)(u, g)

  fast, ref = jax.jit(run)(U, grid), pure_jax(jax.jit(run), U, grid)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
  jaxpr = str(jax.make_jaxpr(run)(U, grid))
  assert ("stn_bilinear_u_grid_vjp" in jaxpr) == (in_axes[0] is not None)


def test_primitive_matches_its_reference_directly(rng):
  # The primitive bound directly (its lowering elsewhere than the CPU kernels is the
  # reference) against that reference, one example per batch entry.
  U, grid = _inputs(rng, "3d", 2, np.float64)
  ct = jnp.asarray(rng.normal(size=grid.shape[:-1] + (2,)))
  params = dict(padding_mode="border", align_corners=False, pixels=False)
  du, dg = native.u_grid_vjp_p.bind(U, grid, ct, **params)
  ref_du, ref_dg = native._ref_u_grid_vjp(U, grid, ct, **params)
  np.testing.assert_allclose(du, ref_du, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(dg, ref_dg, rtol=1e-12, atol=1e-12)

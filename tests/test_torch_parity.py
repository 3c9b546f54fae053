"""PyTorch parity: stn_jax.make_grid / stn_jax.sample vs torch affine_grid / grid_sample.

Independent oracle tests, written from the API contract only.  Everything is
compared in float64: values, gradients w.r.t. the image U and gradients w.r.t.
the sampling grid, for the full matrix of kernel x padding_mode x
align_corners.  Layout conversion: stn_jax is channels-last (N, H, W, C), torch
is (N, C, H, W); grids share the (N, Ho, Wo, 2) layout with (x, y) last.
"""

import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip(
  "torch",
  reason="PyTorch is the reference oracle for these parity tests; "
  "install torch (CPU is enough) to run them",
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from helpers import assert_close  # noqa: E402

import stn_jax  # noqa: E402

F = torch.nn.functional


KERNELS = ("nearest", "bilinear", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
ALIGNS = (False, True)


@pytest.fixture(autouse=True, scope="module")
def _x64():
  # The project's conftest enables x64; these tests are meaningless without it.
  assert jax.config.jax_enable_x64, "float64 must be enabled (jax_enable_x64) for parity tests"
  yield


# --- helpers


def torch_affine_grid(theta, size, align_corners):
  """torch affine_grid on float64 numpy theta; silences torch's unit-size-grid notice."""
  with warnings.catch_warnings():
    warnings.filterwarnings(
      "ignore", message=".*affine_grid behavior has changed.*", category=UserWarning
    )
    return F.affine_grid(
      torch.tensor(theta, dtype=torch.float64), size, align_corners=align_corners
    ).numpy()


def to_nchw(a):
  return np.ascontiguousarray(np.moveaxis(a, -1, -3))


def to_nhwc(a):
  return np.ascontiguousarray(np.moveaxis(a, -3, -1))


def torch_sample(U, grid, mode, padding_mode, align_corners, R=None):
  """torch grid_sample on channels-last float64 numpy arrays.

  Returns V (channels-last), and if a cotangent R is given also (dU, dgrid)
  of loss = sum(V * R).
  """
  Ut = torch.tensor(to_nchw(U), dtype=torch.float64, requires_grad=R is not None)
  gt = torch.tensor(np.asarray(grid), dtype=torch.float64, requires_grad=R is not None)
  V = F.grid_sample(Ut, gt, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
  Vn = to_nhwc(V.detach().numpy())
  if R is None:
    return Vn
  Rt = torch.tensor(to_nchw(R), dtype=torch.float64)
  (V * Rt).sum().backward()
  return Vn, to_nhwc(Ut.grad.numpy()), gt.grad.numpy().copy()


def jax_sample_vjp(U, grid, kernel, padding_mode, align_corners, R):
  def f(u, g):
    return stn_jax.sample(u, g, kernel, padding_mode=padding_mode, align_corners=align_corners)

  V, vjp = jax.vjp(f, jnp.asarray(U), jnp.asarray(grid))
  dU, dg = vjp(jnp.asarray(R, dtype=V.dtype))
  return V, dU, dg


def random_inputs(seed, N=2, H=5, W=7, C=3, Ho=4, Wo=6, lim=1.6):
  rng = np.random.default_rng(seed)
  U = rng.normal(size=(N, H, W, C))
  grid = rng.uniform(-lim, lim, size=(N, Ho, Wo, 2))
  R = rng.normal(size=(N, Ho, Wo, C))
  return U, grid, R


# --- sample: full matrix

MATRIX = list(itertools.product(KERNELS, PADDINGS, ALIGNS))


@pytest.mark.parametrize("kernel,padding_mode,align_corners", MATRIX)
def test_sample_matches_torch_values_and_grads(kernel, padding_mode, align_corners):
  seed = 1000 + MATRIX.index((kernel, padding_mode, align_corners))
  U, grid, R = random_inputs(seed)
  # sanity: the grid really exercises out-of-range coordinates on both sides
  assert (grid < -1).any() and (grid > 1).any() and (np.abs(grid) < 1).any()

  Vt, dUt, dgt = torch_sample(U, grid, kernel, padding_mode, align_corners, R)
  V, dU, dg = jax_sample_vjp(U, grid, kernel, padding_mode, align_corners, R)

  assert V.dtype == jnp.float64, f"output dtype {V.dtype}, expected float64 for float64 inputs"
  assert_close(V, Vt, f"V {kernel}/{padding_mode}/ac={align_corners}")
  assert_close(dU, dUt, f"dV/dU {kernel}/{padding_mode}/ac={align_corners}")
  assert_close(dg, dgt, f"dV/dgrid {kernel}/{padding_mode}/ac={align_corners}")


WIDE = list(itertools.product(KERNELS, ("border", "reflection"), ALIGNS))


@pytest.mark.parametrize("kernel,padding_mode,align_corners", WIDE)
def test_sample_matches_torch_far_out_of_range(kernel, padding_mode, align_corners):
  """Coordinates several image widths outside: multiple reflections / long clamps."""
  seed = 2000 + WIDE.index((kernel, padding_mode, align_corners))
  U, grid, R = random_inputs(seed, lim=4.5)
  Vt, dUt, dgt = torch_sample(U, grid, kernel, padding_mode, align_corners, R)
  V, dU, dg = jax_sample_vjp(U, grid, kernel, padding_mode, align_corners, R)
  assert_close(V, Vt, "V")
  assert_close(dU, dUt, "dV/dU")
  assert_close(dg, dgt, "dV/dgrid")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("align_corners", ALIGNS)
def test_sample_degenerate_image_sizes(kernel, align_corners):
  """Degenerate image sizes (H=1 or W=1) with the three paddings."""
  for k, (H, W) in enumerate([(1, 6), (5, 1), (1, 1)]):
    for p, padding_mode in enumerate(PADDINGS):
      U, grid, R = random_inputs(3000 + 10 * k + p, N=1, H=H, W=W, C=2, Ho=3, Wo=4, lim=1.4)
      Vt, dUt, dgt = torch_sample(U, grid, kernel, padding_mode, align_corners, R)
      V, dU, dg = jax_sample_vjp(U, grid, kernel, padding_mode, align_corners, R)
      tag = f"H={H} W={W} {padding_mode}"
      assert_close(V, Vt, "V " + tag)
      assert_close(dU, dUt, "dV/dU " + tag)
      assert_close(dg, dgt, "dV/dgrid " + tag)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("align_corners", ALIGNS)
def test_sample_float32_close_to_torch(kernel, align_corners):
  """float32 inputs stay float32 and agree with torch to float32 accuracy."""
  U, grid, _ = random_inputs(4000 + KERNELS.index(kernel) + 10 * align_corners)
  U32, g32 = U.astype(np.float32), grid.astype(np.float32)
  V = stn_jax.sample(
    jnp.asarray(U32), jnp.asarray(g32), kernel, padding_mode="border", align_corners=align_corners
  )
  assert V.dtype == jnp.float32
  # reference in float64 from the *rounded* float32 inputs
  Vt = torch_sample(U32.astype(np.float64), g32.astype(np.float64), kernel, "border", align_corners)
  assert_close(V, Vt, "float32 V", rtol=1e-4, atol=1e-4)


# --- NaN grid coordinates


@pytest.mark.parametrize("kernel,padding_mode,align_corners", MATRIX)
def test_nan_grid_samples_zero(kernel, padding_mode, align_corners):
  U, grid, _ = random_inputs(5000 + MATRIX.index((kernel, padding_mode, align_corners)), lim=1.2)
  bad = np.zeros(grid.shape[:-1], dtype=bool)
  grid = grid.copy()
  grid[0, 0, 0, 0] = np.nan  # x NaN
  grid[0, 1, 2, 1] = np.nan  # y NaN
  grid[1, 3, 5, :] = np.nan  # both NaN
  grid[1, 2, 1, 0] = np.nan
  bad[0, 0, 0] = bad[0, 1, 2] = bad[1, 3, 5] = bad[1, 2, 1] = True

  R = np.random.default_rng(5100).normal(size=U.shape[:1] + grid.shape[1:3] + U.shape[-1:])
  V, dU, dg = jax_sample_vjp(U, grid, kernel, padding_mode, align_corners, R)
  V = np.asarray(V)
  assert not np.isnan(V).any(), "NaN grid coordinates must sample 0, not NaN"
  np.testing.assert_array_equal(V[bad], 0.0)

  # finite points are unaffected: compare with torch on a finite-only grid
  clean = np.where(np.isnan(grid), 0.0, grid)
  Vt = torch_sample(U, clean, kernel, padding_mode, align_corners)
  assert_close(V[~bad], Vt[~bad], "finite points next to NaN points")

  # Gradients: a NaN point's output is 0 whatever U is, so it contributes
  # nothing to dV/dU (in particular no NaN); finite points' grid gradients
  # are unaffected.  (torch is only asked about the finite-only grid.)
  R_clean = np.where(bad[..., None], 0.0, R)
  _, dUt, dgt = torch_sample(U, clean, kernel, padding_mode, align_corners, R_clean)
  assert_close(dU, dUt, "dV/dU with NaN grid points")
  assert_close(np.asarray(dg)[~bad], dgt[~bad], "dV/dgrid at finite points next to NaN points")


# --- leading batch dims


@pytest.mark.parametrize(
  "kernel,padding_mode,align_corners",
  [("bilinear", "zeros", False), ("bicubic", "reflection", True)],
)
def test_leading_batch_dims(kernel, padding_mode, align_corners):
  rng = np.random.default_rng(6000)
  H, W, C, Ho, Wo = 5, 7, 3, 4, 6
  U = rng.normal(size=(2, 3, H, W, C))
  grid = rng.uniform(-1.5, 1.5, size=(2, 3, Ho, Wo, 2))
  R = rng.normal(size=(2, 3, Ho, Wo, C))

  V, dU, dg = jax_sample_vjp(U, grid, kernel, padding_mode, align_corners, R)
  assert V.shape == (2, 3, Ho, Wo, C)
  # reference: torch on the flattened batch, equal to per-example results
  Vt, dUt, dgt = torch_sample(
    U.reshape(6, H, W, C),
    grid.reshape(6, Ho, Wo, 2),
    kernel,
    padding_mode,
    align_corners,
    R.reshape(6, Ho, Wo, C),
  )
  assert_close(V, Vt.reshape(V.shape), "V batch (2,3)")
  assert_close(dU, dUt.reshape(U.shape), "dU batch (2,3)")
  assert_close(dg, dgt.reshape(grid.shape), "dgrid batch (2,3)")

  # per-example, each one run through stn_jax on its own
  for a, b in [(0, 0), (1, 2)]:
    Vab = stn_jax.sample(
      jnp.asarray(U[a, b]),
      jnp.asarray(grid[a, b]),
      kernel,
      padding_mode=padding_mode,
      align_corners=align_corners,
    )
    assert Vab.shape == (Ho, Wo, C)
    assert_close(V[a, b], Vab, f"per-example [{a},{b}]")


def test_leading_batch_dims_broadcast():
  rng = np.random.default_rng(6100)
  H, W, C, Ho, Wo = 4, 6, 2, 3, 5
  kw = dict(padding_mode="border", align_corners=False)

  # U (2,1,...) with grid (1,3,...) -> (2,3,...)
  U = rng.normal(size=(2, 1, H, W, C))
  grid = rng.uniform(-1.3, 1.3, size=(1, 3, Ho, Wo, 2))
  V = np.asarray(stn_jax.sample(jnp.asarray(U), jnp.asarray(grid), "bilinear", **kw))
  assert V.shape == (2, 3, Ho, Wo, C)
  Ub = np.broadcast_to(U, (2, 3, H, W, C)).reshape(6, H, W, C)
  gb = np.broadcast_to(grid, (2, 3, Ho, Wo, 2)).reshape(6, Ho, Wo, 2)
  Vt = torch_sample(Ub, gb, "bilinear", kw["padding_mode"], kw["align_corners"])
  assert_close(V, Vt.reshape(V.shape), "broadcast (2,1) x (1,3)")

  # unbatched image shared by a batch of grids
  U1 = rng.normal(size=(H, W, C))
  grids = rng.uniform(-1.3, 1.3, size=(4, Ho, Wo, 2))
  V = np.asarray(stn_jax.sample(jnp.asarray(U1), jnp.asarray(grids), "bicubic", **kw))
  assert V.shape == (4, Ho, Wo, C)
  Vt = torch_sample(
    np.broadcast_to(U1, (4, H, W, C)), grids, "bicubic", kw["padding_mode"], kw["align_corners"]
  )
  assert_close(V, Vt, "unbatched U, batched grid")

  # fully unbatched
  V = np.asarray(stn_jax.sample(jnp.asarray(U1), jnp.asarray(grids[0]), "nearest", **kw))
  assert V.shape == (Ho, Wo, C)
  Vt = torch_sample(U1[None], grids[:1], "nearest", kw["padding_mode"], kw["align_corners"])
  assert_close(V, Vt[0], "unbatched U and grid")


# --- make_grid vs affine_grid

GRID_SHAPES = [(4, 6), (5, 3), (1, 5), (4, 1), (1, 1)]


@pytest.mark.parametrize("align_corners", ALIGNS)
@pytest.mark.parametrize("shape", GRID_SHAPES)
def test_make_grid_affine_matches_affine_grid(shape, align_corners):
  rng = np.random.default_rng(7000 + GRID_SHAPES.index(shape))
  N, C = 3, 2
  theta = rng.normal(size=(N, 2, 3))
  Ho, Wo = shape
  ref = torch_affine_grid(theta, (N, C, Ho, Wo), align_corners)
  g = stn_jax.make_grid(jnp.asarray(theta), (Ho, Wo), "affine", align_corners=align_corners)
  assert g.dtype == jnp.float64
  assert_close(g, ref, f"affine grid {shape} ac={align_corners}")
  # "affine" is the default transform
  g2 = stn_jax.make_grid(jnp.asarray(theta), (Ho, Wo), align_corners=align_corners)
  assert_close(g2, ref, "default transform")


def test_make_grid_affine_default_align_corners_is_false():
  rng = np.random.default_rng(7100)
  theta = rng.normal(size=(2, 2, 3))
  grid = stn_jax.make_grid(jnp.asarray(theta), (3, 4))
  assert_close(grid, torch_affine_grid(theta, (2, 1, 3, 4), False), "default align_corners")
  # ... and not True's grid, which differs for this size: the check can tell them apart.
  assert not np.allclose(grid, torch_affine_grid(theta, (2, 1, 3, 4), True), atol=1e-3)


@pytest.mark.parametrize("align_corners", ALIGNS)
def test_make_grid_affine_grad_wrt_theta(align_corners):
  rng = np.random.default_rng(7200)
  N, Ho, Wo = 2, 3, 5
  theta = rng.normal(size=(N, 2, 3))
  R = rng.normal(size=(N, Ho, Wo, 2))
  tt = torch.tensor(theta, requires_grad=True)
  (
    F.affine_grid(tt, (N, 1, Ho, Wo), align_corners=align_corners) * torch.tensor(R)
  ).sum().backward()
  g = jax.grad(
    lambda t: jnp.sum(
      stn_jax.make_grid(t, (Ho, Wo), "affine", align_corners=align_corners) * jnp.asarray(R)
    )
  )(jnp.asarray(theta))
  assert_close(g, tt.grad.numpy(), "d grid / d theta")


def test_make_grid_affine_leading_dims():
  rng = np.random.default_rng(7300)
  theta = rng.normal(size=(2, 3, 2, 3))
  g = np.asarray(stn_jax.make_grid(jnp.asarray(theta), (4, 5), "affine", align_corners=True))
  assert g.shape == (2, 3, 4, 5, 2)
  ref = torch_affine_grid(theta.reshape(6, 2, 3), (6, 1, 4, 5), True)
  assert_close(g, ref.reshape(g.shape), "theta (2,3,2,3)")
  # unbatched theta
  g1 = stn_jax.make_grid(jnp.asarray(theta[1, 2]), (4, 5), "affine", align_corners=True)
  assert g1.shape == (4, 5, 2)
  assert_close(g1, ref[5], "unbatched theta")


@pytest.mark.parametrize("align_corners", ALIGNS)
@pytest.mark.parametrize("shape", [(4, 6), (1, 3)])
def test_make_grid_attention_matches_affine_grid(shape, align_corners):
  rng = np.random.default_rng(7400)
  N = 4
  s = rng.uniform(0.3, 1.5, size=N)
  tx, ty = rng.uniform(-0.5, 0.5, size=(2, N))
  theta_att = np.stack([s, tx, ty], -1)
  A = np.zeros((N, 2, 3))
  A[:, 0, 0] = s
  A[:, 1, 1] = s
  A[:, 0, 2] = tx
  A[:, 1, 2] = ty
  ref = torch_affine_grid(A, (N, 1) + shape, align_corners)
  g = stn_jax.make_grid(jnp.asarray(theta_att), shape, "attention", align_corners=align_corners)
  assert_close(g, ref, "attention grid")


# --- end to end


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
@pytest.mark.parametrize("align_corners", ALIGNS)
def test_affine_stn_end_to_end_grads(kernel, align_corners):
  """sample(U, make_grid(theta)) vs grid_sample(U, affine_grid(theta)), grads w.r.t. theta and U."""
  rng = np.random.default_rng(8000 + KERNELS.index(kernel) + 10 * align_corners)
  N, H, W, C, Ho, Wo = 2, 6, 5, 2, 4, 3
  U = rng.normal(size=(N, H, W, C))
  theta = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (N, 1, 1)) + 0.3 * rng.normal(
    size=(N, 2, 3)
  )
  R = rng.normal(size=(N, Ho, Wo, C))
  padding_mode = "reflection"

  Ut = torch.tensor(to_nchw(U), requires_grad=True)
  tt = torch.tensor(theta, requires_grad=True)
  gt = F.affine_grid(tt, (N, C, Ho, Wo), align_corners=align_corners)
  Vt = F.grid_sample(Ut, gt, mode=kernel, padding_mode=padding_mode, align_corners=align_corners)
  (Vt * torch.tensor(to_nchw(R))).sum().backward()

  def f(u, t):
    g = stn_jax.make_grid(t, (Ho, Wo), "affine", align_corners=align_corners)
    return stn_jax.sample(u, g, kernel, padding_mode=padding_mode, align_corners=align_corners)

  V, vjp = jax.vjp(f, jnp.asarray(U), jnp.asarray(theta))
  dU, dtheta = vjp(jnp.asarray(R))
  assert_close(V, to_nhwc(Vt.detach().numpy()), "V")
  assert_close(dU, to_nhwc(Ut.grad.numpy()), "dU")
  assert_close(dtheta, tt.grad.numpy(), "dtheta")


def test_sample_default_kernel_and_modes_match_torch_defaults():
  """Defaults: kernel='bilinear', padding_mode='zeros', align_corners=False (torch's defaults)."""
  U, grid, _ = random_inputs(9000)
  V = stn_jax.sample(jnp.asarray(U), jnp.asarray(grid))
  Vt = torch_sample(U, grid, "bilinear", "zeros", False)
  assert_close(V, Vt, "defaults")


def test_sample_is_jittable_and_matches_torch():
  U, grid, _ = random_inputs(9100)
  f = jax.jit(
    lambda u, g: stn_jax.sample(u, g, "bicubic", padding_mode="reflection", align_corners=False)
  )
  assert_close(
    f(jnp.asarray(U), jnp.asarray(grid)),
    torch_sample(U, grid, "bicubic", "reflection", False),
    "jit bicubic reflection",
  )

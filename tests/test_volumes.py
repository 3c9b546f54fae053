"""Volumes: the 3-D grids and sampler against independent oracles.

PyTorch's 5-D ``affine_grid`` / ``grid_sample`` (values and both gradients, float64) for
nearest and trilinear; a dense triple sum in NumPy for tricubic and user kernels; closed
forms for the attention, projective and TPS grids; exact voxel permutations for the
cube's symmetries; and the hostile-input rules of the 2-D sampler, checked on volumes.
Volumes are tiny (at most 5x6x7) so that the file runs in seconds.
"""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOLERANCES, assert_close
from jax.test_util import check_grads

import stn_jax
from stn_jax import kernels

PADDINGS = stn_jax.PADDING_MODES
ALIGNS = (False, True)
TOL = TOLERANCES[np.dtype(np.float64)]


def _volume(rng, shape=(2, 4, 5, 6, 3)):
  return rng.normal(size=shape)


def _grid(rng, shape=(2, 3, 4, 2), spill=1.3):
  return rng.uniform(-spill, spill, size=shape + (3,))


# --- PyTorch 5-D parity

try:
  import torch
except ImportError:  # pragma: no cover - the parity tests skip below
  torch = None

needs_torch = pytest.mark.skipif(
  torch is None, reason="PyTorch is the reference oracle for the 5-D parity tests"
)


def _torch_sample(U, grid, mode, padding_mode, align_corners, R):
  """5-D grid_sample on channels-last float64 arrays: V and the gradients of sum(V * R)."""
  Ut = torch.tensor(np.moveaxis(U, -1, 1).copy(), requires_grad=True)
  gt = torch.tensor(grid, requires_grad=True)
  V = torch.nn.functional.grid_sample(
    Ut, gt, mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )
  Rt = torch.tensor(np.moveaxis(R, -1, 1).copy())
  (V * Rt).sum().backward()
  return (
    np.moveaxis(V.detach().numpy(), 1, -1),
    np.moveaxis(Ut.grad.numpy(), 1, -1),
    gt.grad.numpy(),
  )


@needs_torch
@pytest.mark.parametrize("align_corners", ALIGNS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 2, 3), (2, 1, 1)])
def test_affine_grid_equals_torch_5d(rng, shape, align_corners):
  theta = rng.normal(size=(2, 3, 4))
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*affine_grid behavior has changed.*")
    expected = torch.nn.functional.affine_grid(
      torch.tensor(theta), (2, 1, *shape), align_corners=align_corners
    ).numpy()
  grid = stn_jax.make_grid(theta, shape, align_corners=align_corners)
  assert grid.dtype == jnp.float64
  assert_close(grid, expected, "affine grid")


@needs_torch
@pytest.mark.parametrize("align_corners", ALIGNS)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("kernel", ["nearest", "bilinear"])
def test_sample_equals_torch_5d_values_and_gradients(rng, kernel, padding_mode, align_corners):
  U = _volume(rng)
  grid = _grid(rng)
  R = rng.normal(size=grid.shape[:-1] + U.shape[-1:])
  V_ref, dU_ref, dgrid_ref = _torch_sample(U, grid, kernel, padding_mode, align_corners, R)

  def loss(u, g):
    V = stn_jax.sample(u, g, kernel, padding_mode=padding_mode, align_corners=align_corners)
    return jnp.sum(V * R), V

  (_, V), (dU, dgrid) = jax.value_and_grad(loss, (0, 1), has_aux=True)(U, grid)
  assert_close(V, V_ref, "V")
  assert_close(dU, dU_ref, "dU")
  assert_close(dgrid, dgrid_ref, "dgrid")


@needs_torch
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_warp_of_a_rotation_equals_torch(rng, padding_mode):
  U = _volume(rng, (1, 5, 6, 7, 2))
  c, s = np.cos(0.3), np.sin(0.3)
  theta = np.array([[[c, 0, s, 0.1], [0, 1, 0, -0.05], [-s, 0, c, 0.2]]])
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*affine_grid behavior has changed.*")
    grid = torch.nn.functional.affine_grid(torch.tensor(theta), (1, 2, 4, 5, 6), False).numpy()
  R = np.ones(grid.shape[:-1] + (2,))
  V_ref, _, _ = _torch_sample(U, grid, "bilinear", padding_mode, False, R)
  V = stn_jax.warp(U, theta, shape=(4, 5, 6), padding_mode=padding_mode)
  assert_close(V, V_ref, "V")


# --- dense triple-sum oracle (tricubic, user kernels)


def _unnormalize(g, size, align_corners):
  if align_corners:
    return (g + 1) / 2 * (size - 1)
  return ((g + 1) * size - 1) / 2


def dense_triple_sum(U, grid, fn, radius, align_corners):
  """``V = sum_lnm U[l, n, m] k(z - l) k(y - n) k(x - m)`` over the whole volume (zeros)."""
  d, h, w, _ = U.shape
  x = _unnormalize(grid[..., 0], w, align_corners)
  y = _unnormalize(grid[..., 1], h, align_corners)
  z = _unnormalize(grid[..., 2], d, align_corners)

  def k(dist):
    return np.where(np.abs(dist) < radius, fn(dist), 0.0)

  kx = k(x[..., None] - np.arange(w))
  ky = k(y[..., None] - np.arange(h))
  kz = k(z[..., None] - np.arange(d))
  return np.einsum("...l,...n,...m,lnmc->...c", kz, ky, kx, U)


def _keys(d, a=-0.75):
  t = np.abs(d)
  return np.where(
    t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  )


@pytest.mark.parametrize("align_corners", ALIGNS)
def test_tricubic_equals_the_dense_triple_sum(rng, align_corners):
  U = _volume(rng, (4, 5, 6, 2))
  grid = _grid(rng, (3, 2, 4))
  V = stn_jax.sample(U, grid, "bicubic", align_corners=align_corners)
  assert_close(V, dense_triple_sum(U, grid, _keys, 2, align_corners), "tricubic")


@pytest.mark.parametrize("radius", [0.5, 1.5, 2.7])
def test_user_kernel_equals_the_dense_triple_sum(rng, radius):
  U = _volume(rng, (4, 5, 6, 2))
  grid = _grid(rng, (2, 3, 2))

  def fn(d):  # asymmetric on purpose, so a flipped axis would show
    return np.exp(-((d / 0.9) ** 2)) * (1 + 0.3 * d)

  kernel = stn_jax.Kernel(lambda d: jnp.exp(-((d / 0.9) ** 2)) * (1 + 0.3 * d), radius)
  V = stn_jax.sample(U, grid, kernel)
  assert_close(V, dense_triple_sum(U, grid, fn, radius, False), "user kernel")


@pytest.mark.parametrize("padding_mode", ["border", "reflection"])
@pytest.mark.parametrize("kernel", ["bicubic", "lanczos2"])
def test_per_tap_padding_of_a_depth_constant_volume_equals_the_2d_sampler(
  rng, kernel, padding_mode
):
  # Every z tap of a volume constant along z reads the same slice, and with border or
  # reflection padding every tap reads inside, so the z weights (a partition of unity for
  # these kernels) drop out: the 3-D sampler must equal the 2-D one, whose bicubic is
  # pinned to PyTorch's. This checks per-tap padding along x and y in 3-D.
  k = {"bicubic": "bicubic", "lanczos2": kernels.lanczos(2)}[kernel]
  A = rng.normal(size=(5, 6, 2))
  U = np.broadcast_to(A, (4, 5, 6, 2))
  grid = _grid(rng, (3, 4, 5))
  V = stn_jax.sample(U, grid, k, padding_mode=padding_mode)
  V2 = stn_jax.sample(A, grid[..., :2], k, padding_mode=padding_mode)
  if kernel == "lanczos2":  # not a partition of unity: compare with the z weights' sum
    z = _unnormalize(grid[..., 2], 4, False)
    taps = np.floor(z)[..., None] + np.arange(-1, 3)
    fn = lambda d: np.sinc(d) * np.sinc(d / 2)  # noqa: E731
    V2 = (
      V2 * np.where(np.abs(z[..., None] - taps) < 2, fn(z[..., None] - taps), 0).sum(-1)[..., None]
    )
  assert_close(V, V2, "depth-constant volume", rtol=1e-9, atol=1e-9)


# --- grids: closed forms


def _identity_grid(shape, align_corners=False):
  def centres(n):
    if n == 1:
      return np.zeros(1)
    if align_corners:
      return np.linspace(-1, 1, n)
    return (2 * np.arange(n) + 1) / n - 1

  z, y, x = np.meshgrid(*(centres(n) for n in shape), indexing="ij")
  return np.stack([x, y, z], -1)


@pytest.mark.parametrize("align_corners", ALIGNS)
def test_identity_and_translation_in_every_transform(align_corners):
  shape = (3, 4, 5)
  base = _identity_grid(shape, align_corners)
  t = np.array([0.1, -0.2, 0.3])
  affine = np.concatenate([np.eye(3), t[:, None]], 1)
  projective = np.eye(4)
  projective[:3, 3] = t
  cases = {
    "affine": affine,
    "attention": np.array([1.0, *t]),
    "projective": 2.5 * projective,  # homogeneous: any scale is the same map
    "tps": stn_jax.default_control_points(3) + t,
  }
  for transform, theta in cases.items():
    grid = stn_jax.make_grid(theta, shape, transform, align_corners=align_corners)
    assert grid.shape == shape + (3,)
    assert_close(grid, base + t, transform, rtol=1e-12, atol=1e-12)
    identity = stn_jax.identity_theta(transform, ndim=3, dtype=jnp.float64)
    grid = stn_jax.make_grid(identity, shape, transform, align_corners=align_corners)
    assert_close(grid, base, f"{transform} identity", rtol=1e-12, atol=1e-12)


def test_attention_is_scale_and_translation():
  s, t = 0.5, np.array([0.1, -0.2, 0.3])
  grid = stn_jax.make_grid(np.array([s, *t]), (2, 3, 4), "attention")
  assert_close(grid, s * _identity_grid((2, 3, 4)) + t, "attention")
  expected = np.array([[s, 0, 0, t[0]], [0, s, 0, t[1]], [0, 0, s, t[2]]])
  assert_close(stn_jax.attention_to_affine(np.array([s, *t])), expected, "attention_to_affine")


def test_projective_formula_and_horizon():
  rng = np.random.default_rng(3)
  h = np.eye(4) + 0.1 * rng.normal(size=(4, 4))
  base = _identity_grid((2, 3, 4))
  hom = np.concatenate([base, np.ones(base.shape[:-1] + (1,))], -1) @ h.T
  expected = hom[..., :3] / hom[..., 3:]
  assert_close(stn_jax.make_grid(h, (2, 3, 4), "projective"), expected, "projective")
  # A horizon through the centre voxel (x, y, z) = (0, 0, 0): denominator h44 = 0 there.
  horizon = np.eye(4)
  horizon[3] = [1.0, 0.0, 0.0, 0.0]
  grid = stn_jax.make_grid(horizon, (3, 3, 3), "projective")
  assert np.all(np.isnan(grid[1, 1, 1])) and np.all(np.isfinite(grid[0, 0, 0]))

  def loss(theta):
    g = stn_jax.make_grid(theta, (3, 3, 3), "projective")
    return jnp.sum(stn_jax.sample(np.ones((3, 3, 3, 1)), g))

  assert float(stn_jax.sample(np.ones((3, 3, 3, 1)), grid)[1, 1, 1, 0]) == 0.0
  assert np.all(np.isfinite(jax.grad(loss)(horizon)))


def test_tps_interpolates_its_targets_and_reproduces_affine_maps(rng):
  sources = stn_jax.default_control_points(3)
  # align_corners=True on a 4x4x4 output puts voxel centres on the control points.
  targets = sources + 0.1 * rng.normal(size=sources.shape)
  grid = stn_jax.make_grid(targets, (4, 4, 4), "tps", align_corners=True)
  assert_close(grid.reshape(64, 3), targets, "TPS at its control points", rtol=1e-9, atol=1e-9)
  # An affine map of the sources is reproduced everywhere (phi(r) = r has no affine part).
  a = np.eye(3) + 0.1 * rng.normal(size=(3, 3))
  b = 0.1 * rng.normal(size=3)
  grid = stn_jax.make_grid(sources @ a.T + b, (3, 4, 5), "tps")
  assert_close(grid, _identity_grid((3, 4, 5)) @ a.T + b, "TPS affine", rtol=1e-9, atol=1e-9)


def test_tps_matches_the_biharmonic_spline_solved_independently():
  rng = np.random.default_rng(5)
  sources = rng.uniform(-1, 1, size=(9, 3))
  targets = sources + 0.2 * rng.normal(size=(9, 3))
  # Solve [[Phi, P], [P^T, 0]] [w; a] = [targets; 0] with phi(r) = r, then evaluate.
  phi = np.linalg.norm(sources[:, None] - sources[None], axis=-1)
  P = np.concatenate([np.ones((9, 1)), sources], 1)
  system = np.block([[phi, P], [P.T, np.zeros((4, 4))]])
  coef = np.linalg.solve(system, np.concatenate([targets, np.zeros((4, 3))]))
  points = _identity_grid((2, 3, 2)).reshape(-1, 3)
  r = np.linalg.norm(points[:, None] - sources[None], axis=-1)
  expected = np.concatenate([r, np.ones((len(points), 1)), points], 1) @ coef
  grid = stn_jax.make_grid(targets, (2, 3, 2), "tps", control_points=sources)
  assert_close(grid.reshape(-1, 3), expected, "TPS", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
  "points, message",
  [
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], "distinct"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, 3, 0]], "coplanar"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], "K >= 4"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, np.inf]], "finite"),
  ],
)
def test_tps_rejects_degenerate_control_points_in_3d(points, message):
  with pytest.raises(ValueError, match=message):
    stn_jax.make_grid(np.zeros((len(points), 3)), (2, 2, 2), "tps", control_points=points)


def test_default_control_points():
  side = np.linspace(-1, 1, 4)
  expected = np.array([[x, y, z] for z in side for y in side for x in side])
  np.testing.assert_array_equal(stn_jax.default_control_points(3), expected)
  expected2 = np.array([[x, y] for y in side for x in side])
  np.testing.assert_array_equal(stn_jax.default_control_points(), expected2)
  with pytest.raises(ValueError, match="ndim must be 2"):
    stn_jax.default_control_points(4)


# --- exact voxel permutations


def _cube_symmetries():
  """The 48 signed permutation matrices: axis flips and 90-degree rotations of a cube."""
  for perm in itertools.permutations(range(3)):
    for signs in itertools.product((1.0, -1.0), repeat=3):
      m = np.zeros((3, 3))
      m[np.arange(3), perm] = signs
      yield m


@pytest.mark.parametrize("n", [1, 4, 5])
def test_cube_symmetries_and_lattice_shifts_move_voxels_bit_for_bit(rng, n):
  U = rng.normal(size=(n, n, n, 2)).astype(np.float32)
  centres = (2 * np.arange(n) + 1) / n - 1
  z, y, x = np.meshgrid(centres, centres, centres, indexing="ij")
  points = np.stack([x, y, z], -1)
  step = 2 / n
  for m in _cube_symmetries():
    shift = rng.integers(-1, 2, size=3) * step
    theta = np.concatenate([m, shift[:, None]], 1)
    src = points @ m.T + shift  # the oracle: which voxel centre each output voxel reads
    idx = np.rint(((src + 1) * n - 1) / 2).astype(int)  # (x, y, z) voxel indices
    inside = np.all((idx >= 0) & (idx < n), -1)
    c = idx.clip(0, n - 1)
    expected = np.where(inside[..., None], U[c[..., 2], c[..., 1], c[..., 0]], 0)
    V = stn_jax.warp(U, theta.astype(np.float32), kernel="nearest")
    np.testing.assert_array_equal(V, expected)


def test_axis_flips_are_numpy_flips(rng):
  U = rng.normal(size=(3, 4, 5, 1))
  for axis, component in ((2, 0), (1, 1), (0, 2)):  # x flips W, y flips H, z flips D
    theta = np.eye(3, 4)
    theta[component, component] = -1
    V = stn_jax.warp(U, theta, kernel="bilinear")
    assert_close(V, np.flip(U, axis), f"flip of axis {axis}", rtol=1e-12, atol=1e-12)


# --- helpers


def test_compose_invert_and_pixel_conversions(rng):
  a = np.concatenate([np.eye(3) + 0.2 * rng.normal(size=(3, 3)), rng.normal(size=(3, 1))], 1)
  identity = np.eye(3, 4)
  assert stn_jax.invert(a).shape == (3, 4)
  assert_close(stn_jax.compose(a, stn_jax.invert(a)), identity, "a a^-1", rtol=1e-9, atol=1e-9)
  h = np.eye(4) + 0.1 * rng.normal(size=(4, 4))
  assert stn_jax.compose(a, h).shape == (4, 4)
  assert_close(stn_jax.compose(h, stn_jax.invert(h)), np.eye(4), "h h^-1", rtol=1e-9, atol=1e-9)
  # Warping by compose(first, second) reads the original at first(second(p)).
  b = np.concatenate([np.eye(3) + 0.2 * rng.normal(size=(3, 3)), rng.normal(size=(3, 1))], 1)
  p = rng.normal(size=3)
  composed = stn_jax.compose(a, b)
  assert_close(
    composed[:, :3] @ p + composed[:, 3], a[:, :3] @ (b[:, :3] @ p + b[:, 3]) + a[:, 3], "compose"
  )
  with pytest.raises(ValueError, match="both be 2-D or both be 3-D"):
    stn_jax.compose(np.eye(2, 3), a)
  for align_corners in ALIGNS:
    xyz = rng.uniform(-1, 1, size=(5, 3))
    pix = stn_jax.normalized_to_pixel(xyz, (3, 4, 5), align_corners=align_corners)
    expected = np.stack(
      [_unnormalize(xyz[:, k], n, align_corners) for k, n in enumerate((5, 4, 3))], -1
    )
    assert_close(pix, expected, "normalized_to_pixel")
    back = stn_jax.pixel_to_normalized(pix, (3, 4, 5), align_corners=align_corners)
    assert_close(back, xyz, "pixel_to_normalized")
  with pytest.raises(ValueError, match=r"\(\.\.\., 3\).*got \(5, 2\)"):
    stn_jax.normalized_to_pixel(np.zeros((5, 2)), (3, 4, 5))


def test_identity_theta_shapes():
  shapes = {"affine": (3, 4), "attention": (4,), "projective": (4, 4), "tps": (64, 3)}
  for transform, shape in shapes.items():
    assert stn_jax.identity_theta(transform, ndim=3).shape == shape
  cp = stn_jax.default_control_points(3)[::7]
  assert stn_jax.identity_theta("tps", control_points=cp).shape == (10, 3)
  assert stn_jax.identity_theta("affine").shape == (2, 3)
  with pytest.raises(ValueError, match="ndim must be 2"):
    stn_jax.identity_theta(ndim=1)


# --- derivatives and batching


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
def test_jacfwd_equals_jacrev_for_theta(rng, kernel):
  U = rng.normal(size=(4, 5, 3, 2))
  theta = np.eye(3, 4) + 0.05 * rng.normal(size=(3, 4))
  f = lambda t: stn_jax.warp(U, t, kernel=kernel, shape=(2, 3, 2))  # noqa: E731
  assert_close(jax.jacfwd(f)(theta), jax.jacrev(f)(theta), "jacfwd vs jacrev", 1e-11, 1e-11)


def _off_lattice(rng, shape, size_dhw):
  """Normalised points at least 0.05 voxel from the integer lattice (away from the kinks)."""
  size_xyz = np.array(size_dhw[::-1])
  pix = np.floor(rng.uniform(-1.5, size_xyz + 0.5, size=shape + (3,)))
  pix += rng.uniform(0.05, 0.95, size=pix.shape)
  return np.asarray(stn_jax.pixel_to_normalized(pix, size_dhw))


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
def test_check_grads_at_off_lattice_points(rng, kernel):
  U = rng.normal(size=(3, 4, 5, 2))
  grid = _off_lattice(rng, (2, 1, 1), U.shape[:3])
  f = lambda u, g: stn_jax.sample(u, g, kernel)  # noqa: E731
  # First order: a second-order check of the 64-tap tricubic compiles for minutes.
  check_grads(f, (U, grid), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_vmap_and_jit_equal_a_loop(rng):
  U = rng.normal(size=(3, 4, 5, 6, 2))
  theta = np.eye(3, 4) + 0.1 * rng.normal(size=(3, 3, 4))
  f = lambda u, t: stn_jax.warp(u, t, kernel="bilinear", shape=(2, 3, 4))  # noqa: E731
  loop = np.stack([f(U[i], theta[i]) for i in range(3)])
  assert_close(jax.vmap(f)(U, theta), loop, "vmap")
  assert_close(jax.jit(f)(U, theta), loop, "batched jit")


def test_tricubic_backward_holds_no_tap_stack(rng):
  # The gradient's jaxpr must not hold any (..., taps, C) stack of the 64 taps: each tap
  # is gathered (and scattered back) on its own.
  U = jnp.asarray(rng.normal(size=(4, 5, 6, 3)))
  grid = jnp.asarray(_grid(rng, (3, 3, 3)))
  loss = lambda u, g: jnp.sum(stn_jax.sample(u, g, "bicubic") ** 2)  # noqa: E731
  jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(U, grid)
  largest = max(
    (np.prod(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars),
    default=0,
  )
  assert largest <= 4 * max(U.size, 27 * 3 * 4)  # a few volumes or outputs, never 64 x


# --- hostile inputs


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_nan_inf_and_huge_coordinates(rng, kernel, padding_mode):
  U = rng.normal(size=(3, 4, 5, 2))
  grid = np.array(
    [
      [np.nan, 0.0, 0.0],
      [0.0, 0.0, np.nan],
      [np.inf, 0.0, 0.0],
      [0.0, 0.0, -np.inf],
      [1e30, 0.0, 0.0],
      [0.0, -1e30, 0.0],
      [0.1, 0.2, 0.3],
    ]
  )[None, None]
  f = lambda u, g: stn_jax.sample(u, g, kernel, padding_mode=padding_mode)  # noqa: E731
  V = np.asarray(f(U, grid))[0, 0]
  assert np.all(np.isfinite(V))
  np.testing.assert_array_equal(V[:2], 0)  # NaN reads 0 in every mode
  if padding_mode != "border":
    np.testing.assert_array_equal(V[2:4], 0)  # inf: no position (zeros: outside)
  if padding_mode == "zeros":
    np.testing.assert_array_equal(V[4:6], 0)
  if padding_mode == "border" and kernel != "bicubic":
    # +inf in x: the x = W - 1 edge at the y, z centre; -inf in z: the z = 0 slice.
    expected = stn_jax.sample(
      U,
      np.array([[[[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]]]),
      kernel,
      padding_mode="border",
      align_corners=True,
    )
    assert_close(V[2:4], np.asarray(expected)[0, 0], "border at inf")
  dU, dgrid = jax.grad(lambda u, g: jnp.sum(f(u, g) ** 2), (0, 1))(U, grid)
  assert np.all(np.isfinite(dU)) and np.all(np.isfinite(dgrid))
  dgrid = np.asarray(dgrid)[0, 0]
  np.testing.assert_array_equal(dgrid[:2], 0)  # NaN: no gradient at all
  # The non-finite or clamped component itself gets none (the others may, under "border").
  np.testing.assert_array_equal(dgrid[[2, 3, 4, 5], [0, 2, 0, 1]], 0)


def test_zero_size_axes_and_empty_grids(rng):
  for spatial in [(0, 3, 4), (2, 0, 4), (2, 3, 0)]:
    U = np.ones(spatial + (2,))
    for kernel in ("nearest", "bilinear", "bicubic"):
      V = stn_jax.sample(U, np.zeros((2, 3, 1, 3)), kernel)
      assert V.shape == (2, 3, 1, 2)
      np.testing.assert_array_equal(V, 0)
  U = rng.normal(size=(2, 3, 4, 5))
  assert stn_jax.sample(U, np.zeros((0, 3, 2, 3))).shape == (0, 3, 2, 5)
  assert stn_jax.sample(U[..., :0], np.zeros((1, 3, 2, 3))).shape == (1, 3, 2, 0)
  assert stn_jax.warp(np.zeros((0, 2, 3, 4, 1)), np.zeros((0, 3, 4))).shape == (0, 2, 3, 4, 1)


def test_dtypes(rng):
  grid = _grid(rng, (2, 2, 2)).astype(np.float32)
  U = rng.integers(0, 9, size=(3, 4, 5, 1)).astype(np.int32)
  V = stn_jax.sample(U, grid, "nearest")
  assert V.dtype == jnp.int32
  with pytest.raises(TypeError, match="Cast it"):
    stn_jax.sample(U, grid, "bilinear")
  U = rng.normal(size=(3, 4, 5, 1)).astype(np.float32)
  for dt in (jnp.bfloat16, jnp.float16):
    V = stn_jax.sample(U.astype(dt), grid)
    assert V.dtype == dt
    expected = stn_jax.sample(U.astype(dt).astype(np.float32), grid)
    np.testing.assert_allclose(V.astype(np.float32), expected.astype(dt).astype(np.float32))
  assert stn_jax.make_grid(np.eye(3, 4, dtype=np.float32), (2, 2, 2)).dtype == jnp.float32
  assert stn_jax.make_grid(np.eye(3, 4, dtype=np.int32), (2, 2, 2)).dtype == jnp.float32


def test_mismatched_dimensions_raise_clear_errors():
  with pytest.raises(ValueError, match=r"U must have shape \(\.\.\., D, H, W, C\).*\(4, 5, 1\)"):
    stn_jax.sample(np.ones((4, 5, 1)), np.zeros((2, 2, 2, 3)))
  with pytest.raises(ValueError, match=r"\(\.\.\., Do, Ho, Wo, 3\).*got \(2, 2, 3\)"):
    stn_jax.sample(np.ones((3, 4, 5, 1)), np.zeros((2, 2, 3)))
  with pytest.raises(
    ValueError, match=r"\(\.\.\., 3, 4\); got \(2, 3\).*2-D shape.*image \(H, W\)"
  ):
    stn_jax.make_grid(np.eye(2, 3), (2, 3, 4))
  with pytest.raises(ValueError, match=r"\(\.\.\., 2, 3\); got \(3, 4\).*volume \(D, H, W\)"):
    stn_jax.make_grid(np.eye(3, 4), (3, 4))
  with pytest.raises(ValueError, match=r"pair of non-negative ints.*triple"):
    stn_jax.make_grid(np.eye(3, 4), (2, 3, 4, 5))
  with pytest.raises(ValueError, match=r"\(K, 3\)"):
    stn_jax.make_grid(np.zeros((16, 3)), (2, 3, 4), "tps", control_points=np.zeros((16, 2)))

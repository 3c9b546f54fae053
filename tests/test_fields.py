"""stn_jax.fields: closed forms, oracles (NumPy, SciPy, MONAI), gradients, batching, errors."""

import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from helpers import assert_close
from jax.test_util import check_grads

import stn_jax
from stn_jax import fields

# Jitted once per shape: op-by-op dispatch would dominate these small tests' run time.
_STATIC = ("kernel", "padding_mode", "align_corners", "steps", "iterations", "shape")


def _jit(fn):
  params = inspect.signature(fn).parameters
  return jax.jit(fn, static_argnames=[n for n in _STATIC if n in params])


J = types.SimpleNamespace(**{name: _jit(getattr(fields, name)) for name in fields.__all__})

SHAPES_2D = [(9, 12), (16, 16)]


def identity_pixels(shape):
  """``(*S, d)`` pixel coordinates ``(x, y[, z])``: an independent NumPy spelling."""
  mesh = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
  return np.stack(mesh[::-1], axis=-1)


def smooth_field(rng, shape, amplitude, channels=None):
  """A smooth random field: a few low-frequency sines, ``amplitude`` pixels at most."""
  d = len(shape)
  channels = d if channels is None else channels
  p = identity_pixels(shape)
  out = np.zeros(tuple(shape) + (channels,))
  for c in range(channels):
    for _ in range(3):
      k = rng.uniform(-1.0, 1.0, size=d) * 2 * np.pi / max(shape)
      phase = rng.uniform(0, 2 * np.pi)
      out[..., c] += np.sin(p @ k + phase) / 3
  return amplitude * out


def affine_field(M, t, shape):
  """``u(p) = M p + t`` in pixels, ``(x, y)`` frame."""
  return identity_pixels(shape) @ np.asarray(M).T + np.asarray(t)


def bilinear_oracle(U, disp):
  """SciPy's order-1 spline with edge extension: bilinear with border padding."""
  d = disp.shape[-1]
  coords = identity_pixels(disp.shape[:-1]) + disp  # (x, y[, z])
  out = []
  for c in range(U.shape[-1]):
    out.append(
      scipy.ndimage.map_coordinates(
        U[..., c], [coords[..., d - 1 - i] for i in range(d)], order=1, mode="nearest"
      )
    )
  return np.stack(out, -1)


# --- grids and units ---------------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", SHAPES_2D + [(1, 5)])
def test_zero_displacement_is_make_grid_identity_and_round_trips(shape, align_corners, rng):
  zero = np.zeros(shape + (2,))
  grid = J.displacement_to_grid(zero, align_corners=align_corners)
  identity = stn_jax.make_grid(np.eye(2, 3), shape, align_corners=align_corners)
  assert_close(grid, identity, "zero field vs make_grid identity", atol=1e-15)

  disp = rng.normal(size=shape + (2,))
  grid = J.displacement_to_grid(disp, align_corners=align_corners)
  # Oracle: the library's own pixel -> normalised map, applied to p + disp.
  expected = stn_jax.pixel_to_normalized(
    identity_pixels(shape) + disp, shape, align_corners=align_corners
  )
  assert_close(grid, expected, "displacement_to_grid vs pixel_to_normalized", atol=1e-14)
  back = J.grid_to_displacement(grid, align_corners=align_corners)
  if align_corners and 1 in shape:
    disp = disp * np.array([shape[1] > 1, shape[0] > 1])  # a size-1 axis keeps only pixel 0
  assert_close(back, disp, "grid_to_displacement round trip", atol=1e-13)


@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_matches_scipy_bilinear_border(align_corners, rng):
  U = rng.normal(size=(10, 13, 3))
  disp = rng.normal(scale=3.0, size=(10, 13, 2))  # reaches outside: border padding matters
  out = J.warp(U, disp, align_corners=align_corners)
  assert out.dtype == jnp.float64
  assert_close(out, bilinear_oracle(U, disp), "warp vs scipy map_coordinates", atol=1e-12)
  grid = J.displacement_to_grid(disp, align_corners=align_corners)
  same = stn_jax.sample(U, grid, padding_mode="border", align_corners=align_corners)
  # warp reads p + disp(p) in pixels; sample the normalised grid: equal to round-off.
  assert_close(out, same, "warp vs sample(displacement_to_grid)", atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
def test_warp_reads_pixels_as_sample_reads_the_grid(kernel, align_corners, padding_mode, rng):
  # The pixel-coordinate entry (no normalisation) against sample on the normalised grid,
  # float64, for every padding (reflection's mirrors depend on align_corners) and kernel,
  # with the gradients w.r.t. the image and the field. Points reach well outside.
  U = rng.normal(size=(2, 7, 9, 2))
  disp = rng.normal(scale=4.0, size=(2, 7, 9, 2))
  kw = dict(padding_mode=padding_mode, align_corners=align_corners)

  def via_warp(U, disp):
    return jnp.sum(J.warp(U, disp, kernel, **kw) ** 2)

  def via_grid(U, disp):
    grid = J.displacement_to_grid(disp, align_corners=align_corners)
    return jnp.sum(stn_jax.sample(U, grid, kernel, **kw) ** 2)

  assert_close(
    J.warp(U, disp, kernel, **kw),
    stn_jax.sample(U, J.displacement_to_grid(disp, align_corners=align_corners), kernel, **kw),
    "warp vs sample",
    atol=1e-12,
  )
  if kernel != "nearest":
    got = jax.grad(via_warp, argnums=(0, 1))(U, disp)
    want = jax.grad(via_grid, argnums=(0, 1))(U, disp)
    assert_close(got[0], want[0], "dU", atol=1e-10)
    assert_close(got[1], want[1], "ddisp", atol=1e-9)


@pytest.mark.parametrize("path", ["default", "pure_jax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(8, 16), (32, 32), (9, 12), (28, 30)])
def test_integer_shift_moves_pixels(shape, kernel, dtype, path, rng, pure_jax):
  # Bit for bit, whatever the image size: warp hands the sampler p + disp(p) in pixels,
  # which is an integer here, so every interpolating kernel's weights are exactly 1 and 0.
  # "default" runs the compiled kernels for bilinear float32/float64 where they are built.
  U = rng.normal(size=shape + (2,)).astype(dtype)
  shift = np.array([2.0, -3.0], dtype)  # 2 pixels along x, -3 along y
  disp = np.broadcast_to(shift, shape + (2,))
  for align_corners in (False, True):

    def run(U=U, disp=disp, align_corners=align_corners):
      return J.warp(U, disp, kernel, padding_mode="zeros", align_corners=align_corners)

    out = np.asarray(run() if path == "default" else pure_jax(run))
    assert out.dtype == dtype
    expected = np.zeros_like(U)
    expected[3:, : shape[1] - 2] = U[: shape[0] - 3, 2:]
    np.testing.assert_array_equal(out, expected)


# --- compose, integrate, invert ------------------------------------------------------------


def test_affine_fields_compose_exactly():
  shape = (20, 24)
  centre = np.array([11.5, 9.5])
  Ma = np.array([[0.05, -0.1], [0.08, -0.04]])
  Mb = np.array([[-0.1, 0.03], [0.02, 0.12]])
  a = affine_field(Ma, -Ma @ centre + [0.3, -0.2], shape)
  b = affine_field(Mb, -Mb @ centre + [-0.4, 0.25], shape)
  c = J.compose(a, b)
  # p -> p + b(p) -> (p + b) + a(p + b): affine, A_c = (I + Ma)(I + Mb) - I.
  I2 = np.eye(2)
  Mc = (I2 + Ma) @ (I2 + Mb) - I2
  tc = (I2 + Ma) @ (-Mb @ centre + [-0.4, 0.25]) + (-Ma @ centre + [0.3, -0.2])
  expected = affine_field(Mc, tc, shape)
  # Exact where p + b(p) stays inside the image (bilinear reproduces affine functions).
  target = identity_pixels(shape) + b
  inside = np.all((target >= 0) & (target <= np.array(shape[::-1]) - 1), axis=-1)
  assert inside.mean() > 0.6
  assert_close(np.asarray(c)[inside], expected[inside], "composed affine fields", atol=1e-12)


def test_compose_matches_warping_twice(rng):
  shape = (32, 32)
  U = scipy.ndimage.gaussian_filter(rng.normal(size=shape + (1,)), (2, 2, 0))
  a = smooth_field(rng, shape, 1.5)
  b = smooth_field(rng, shape, 1.5)
  once = J.warp(U, J.compose(a, b))
  twice = J.warp(J.warp(U, a), b)
  # Two interpolations vs one: equal up to the bilinear error, second order in the spacing.
  interior = (slice(4, -4), slice(4, -4))
  err = np.abs(np.asarray(once - twice))[interior]
  assert err.max() < 0.05 * np.abs(U).max()


@pytest.mark.parametrize("steps", [0, 1, 7])
def test_constant_velocity_integrates_to_itself(steps):
  v = np.broadcast_to(np.array([1.25, -0.6]), (11, 13, 2))
  assert_close(J.integrate(v, steps), v, "integrate(constant)", atol=1e-14)


def test_linear_velocity_integrates_to_expm():
  shape, steps = (64, 64), 7
  centre = np.array([31.5, 31.5])
  L = np.array([[0.06, -0.08], [0.05, 0.03]])
  p = identity_pixels(shape) - centre
  u = np.asarray(J.integrate(p @ L.T, steps))
  # Bilinear interpolation of a linear field is exact, so scaling and squaring computes
  # (I + L / 2^N)^(2^N) - I exactly, except where a step reads outside the image (border
  # padding clamps there). Errors enter at the border and move inwards by at most one cell
  # plus max|u_k| per step: 7 + 2 * 6 < 24 pixels, so the central 16x16 is exact.
  interior = (slice(24, 40), slice(24, 40))
  power = np.linalg.matrix_power(np.eye(2) + L / 2**steps, 2**steps) - np.eye(2)
  assert_close(u[interior], (p @ power.T)[interior], "integrate vs matrix power", atol=1e-11)
  # (I + L/n)^n vs expm(L): the difference is bounded by |L|^2 e^|L| / (2 n) (n = 2^N).
  norm = np.linalg.norm(L, 2)
  bound = norm**2 * np.exp(norm) / (2 * 2**steps) * np.abs(p[interior]).max() * np.sqrt(2)
  expm = scipy.linalg.expm(L) - np.eye(2)
  err = np.abs(u[interior] - (p @ expm.T)[interior]).max()
  assert err <= bound
  assert err > 0.1 * bound  # the bound is tight enough that the test means something


def test_integrated_smooth_velocity_is_invertible_and_its_inverse_is_minus_v(rng):
  shape = (32, 32)
  v = smooth_field(rng, shape, 2.0)
  forward = J.integrate(v)
  backward = J.integrate(-v)
  assert float(J.folding_fraction(forward)) == 0.0
  residual = np.abs(np.asarray(J.compose(forward, backward)))[4:-4, 4:-4]
  assert residual.max() < 0.05


@pytest.mark.parametrize("amplitude", [1.0, 2.0])
def test_invert_residuals_on_smooth_fields(amplitude, rng):
  shape = (32, 32)
  u = smooth_field(rng, shape, amplitude)
  assert float(J.folding_fraction(u)) == 0.0
  w = J.invert(u, iterations=30)
  interior = (slice(4, -4), slice(4, -4))
  r1 = np.abs(np.asarray(J.compose(u, w)))[interior].max()
  r2 = np.abs(np.asarray(J.compose(w, u)))[interior].max()
  # compose(u, w) = 0 is the fixed point itself: only round-off and the contraction's
  # leftover remain. The other order carries the interpolation error of w.
  assert r1 < 1e-6, r1
  assert r2 < 0.02 * amplitude, r2
  assert r1 < 1e-3 * np.abs(u).max()


# --- Jacobians and regularisers ------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES_2D + [(2, 3)])
def test_jacobian_determinant_of_affine_field_is_det_everywhere(shape, rng):
  M = rng.normal(scale=0.3, size=(2, 2))
  u = affine_field(M, rng.normal(size=2), shape)
  det = J.jacobian_determinant(u)
  assert det.shape == shape
  assert_close(det, np.full(shape, np.linalg.det(np.eye(2) + M)), "det of affine", atol=1e-12)


def test_jacobian_determinant_matches_numpy_gradient(rng):
  u = rng.normal(size=(7, 9, 2))
  # numpy.gradient along array axes (y, x); components (x, y).
  gx_y, gx_x = np.gradient(u[..., 0])
  gy_y, gy_x = np.gradient(u[..., 1])
  expected = (1 + gx_x) * (1 + gy_y) - gx_y * gy_x
  assert_close(J.jacobian_determinant(u), expected, "det vs numpy.gradient", atol=1e-12)


def test_folding_fraction_counts_non_positive_determinants():
  shape = (8, 10)
  flip = affine_field([[-2.0, 0.0], [0.0, 0.0]], [9.0, 0.0], shape)  # x -> 9 - x: reflection
  assert float(J.jacobian_determinant(flip)[3, 3]) == -1.0
  assert float(J.folding_fraction(flip)) == 1.0
  mixed = np.stack([np.zeros(shape + (2,)), flip])
  np.testing.assert_array_equal(J.folding_fraction(mixed), [0.0, 1.0])


def test_regularisers_match_numpy_oracles(rng):
  u = rng.normal(size=(2, 6, 7, 2))

  def grads(f):  # (..., H, W) -> list over (x, y) of d/dx_l, numpy.gradient
    gy, gx = np.gradient(f, axis=(-2, -1))
    return [gx, gy]

  first = [g for k in range(2) for g in grads(u[..., k])]
  diff = sum(g**2 for g in first).mean(axis=(-2, -1))
  bend = sum(h**2 for g in first for h in grads(g)).mean(axis=(-2, -1))
  assert_close(J.diffusion(u), diff, "diffusion vs numpy", atol=1e-12)
  assert_close(J.bending_energy(u), bend, "bending energy vs numpy", atol=1e-12)

  M = np.array([[0.2, -0.1], [0.3, 0.05]])
  affine = affine_field(M, [1.0, 2.0], (6, 7))
  assert_close(J.diffusion(affine), np.sum(M**2), "diffusion of affine", atol=1e-13)
  assert_close(J.bending_energy(affine), 0.0, "bending of affine", atol=1e-13)


# --- affine fields and resizing -------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_to_displacement_matches_make_grid_and_warp(align_corners, rng):
  theta = np.array([[0.9, -0.2, 0.1], [0.15, 1.1, -0.05]])
  shape = (10, 14)
  disp = J.affine_to_displacement(theta, shape, align_corners=align_corners)
  grid = stn_jax.make_grid(theta, shape, align_corners=align_corners)
  assert_close(J.displacement_to_grid(disp, align_corners=align_corners), grid, "grid", atol=1e-14)
  U = rng.normal(size=shape + (2,))
  expected = stn_jax.warp(U, theta, padding_mode="border", align_corners=align_corners)
  assert_close(J.warp(U, disp, align_corners=align_corners), expected, "warp", atol=1e-12)
  batched = J.affine_to_displacement(np.stack([theta, np.eye(2, 3)]), shape)
  assert batched.shape == (2,) + shape + (2,)
  assert_close(batched[1], np.zeros(shape + (2,)), "identity theta", atol=1e-14)


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_displacement_keeps_the_map(align_corners):
  # An affine map in normalised coordinates is the same map at every resolution.
  theta = np.array([[1.1, 0.1, 0.05], [-0.05, 0.95, 0.1]])
  coarse = J.affine_to_displacement(theta, (8, 10), align_corners=align_corners)
  fine = J.resize_displacement(coarse, (16, 20), align_corners=align_corners)
  expected = J.affine_to_displacement(theta, (16, 20), align_corners=align_corners)
  # Bilinear reproduces the affine field wherever the fine centres lie between coarse ones.
  inner = (slice(1, -1), slice(1, -1))
  assert_close(np.asarray(fine)[inner], np.asarray(expected)[inner], "resized", atol=1e-12)


# --- autodiff, batching, jit ------------------------------------------------------------------


def test_gradients_warp_compose_integrate(rng):
  shape = (4, 5)
  U = rng.normal(size=shape + (2,))
  # Non-integer coordinates everywhere, away from the bilinear kinks and the border clamp.
  disp = 0.3 + 0.2 * rng.uniform(size=shape + (2,))
  disp = np.where(identity_pixels(shape) + disp > np.array(shape[::-1]) - 1.2, -disp, disp)
  check_grads(J.warp, (U, disp), order=2, modes=("fwd", "rev"))
  small = 0.1 * disp
  check_grads(J.compose, (small, disp), order=1, modes=("fwd", "rev"), eps=1e-4)
  integrate3 = jax.jit(lambda v: fields.integrate(v, 3))
  check_grads(integrate3, (disp,), order=1, modes=("fwd", "rev"), eps=1e-4)


def test_batch_dims_vmap_and_jit_equal_eager(rng):
  shape = (8, 9)
  U = rng.normal(size=(3,) + shape + (1,))
  v = np.stack([smooth_field(rng, shape, 1.0) for _ in range(3)])
  batched = J.integrate(v)
  looped = np.stack([J.integrate(x) for x in v])
  assert_close(batched, looped, "integrate batch vs loop", atol=1e-13)
  assert_close(fields.integrate(v, 2), J.integrate(v, 2), "integrate eager vs jit", atol=1e-13)
  # One field for all images: leading dims broadcast.
  shared = J.warp(U, v[0])
  assert_close(shared, J.warp(U, np.broadcast_to(v[0], v.shape)), "broadcast", atol=0)
  for name in ("jacobian_determinant", "bending_energy", "diffusion"):
    fn = getattr(J, name)
    assert_close(fn(v), np.stack([fn(x) for x in v]), name, atol=1e-13)
  assert_close(fields.diffusion(v), J.diffusion(v), "diffusion eager vs jit", atol=1e-13)
  # compose broadcasts: three first fields, one second field.
  c = J.compose(v, v[0])
  assert_close(c, np.stack([J.compose(x, v[0]) for x in v]), "compose broadcast", atol=1e-13)
  w = J.invert(v[None], iterations=5)
  assert w.shape == (1,) + v.shape
  assert_close(fields.invert(v, iterations=5), w[0], "invert eager vs jit", atol=1e-13)


def test_float32_in_float32_out(rng):
  v = rng.normal(size=(6, 7, 2)).astype(np.float32)
  for fn in (J.integrate, J.invert, J.to_voxelmorph):
    assert fn(v).dtype == jnp.float32
  assert J.jacobian_determinant(v).dtype == jnp.float32


# --- volumes (3-D) ------------------------------------------------------------------------------


def test_volume_warp_matches_scipy_and_integer_shift(rng):
  shape = (5, 6, 7)
  U = rng.normal(size=shape + (2,))
  disp = rng.normal(scale=2.0, size=shape + (3,))
  assert_close(J.warp(U, disp), bilinear_oracle(U, disp), "3-D warp vs scipy", atol=1e-12)
  # An integer shift is bit for bit (warp reads pixel coordinates), at any size.
  shape = (5, 7, 9)
  U = rng.normal(size=shape + (1,)).astype(np.float32)
  disp = np.broadcast_to(np.array([3.0, -2.0, 1.0], np.float32), shape + (3,))  # x, y, z
  expected = np.zeros_like(U)
  expected[:-1, 2:, :-3] = U[1:, :-2, 3:]
  for kernel in ("nearest", "bilinear"):
    out = np.asarray(J.warp(U, disp, kernel, padding_mode="zeros"))
    np.testing.assert_array_equal(out, expected)


def test_volume_affine_fields_det_compose_and_make_grid(rng):
  shape = (8, 9, 10)
  centre = (np.array(shape[::-1]) - 1) / 2
  Ma = rng.normal(scale=0.05, size=(3, 3))
  Mb = rng.normal(scale=0.05, size=(3, 3))
  a = affine_field(Ma, -Ma @ centre, shape)
  b = affine_field(Mb, -Mb @ centre, shape)
  det = J.jacobian_determinant(a)
  assert_close(det, np.full(shape, np.linalg.det(np.eye(3) + Ma)), "3-D det", atol=1e-12)
  c = np.asarray(J.compose(a, b))
  I3 = np.eye(3)
  Mc = (I3 + Ma) @ (I3 + Mb) - I3
  expected = affine_field(Mc, -Mc @ centre, shape)
  target = identity_pixels(shape) + b
  inside = np.all((target >= 0) & (target <= np.array(shape[::-1]) - 1), axis=-1)
  assert inside.mean() > 0.5
  assert_close(c[inside], expected[inside], "3-D composed affine fields", atol=1e-12)
  theta = np.eye(3, 4) + rng.normal(scale=0.1, size=(3, 4))
  for align_corners in (False, True):
    disp = J.affine_to_displacement(theta, shape, align_corners=align_corners)
    grid = stn_jax.make_grid(theta, shape, align_corners=align_corners)
    got = J.displacement_to_grid(disp, align_corners=align_corners)
    assert_close(got, grid, "3-D affine_to_displacement vs make_grid", atol=1e-14)


def test_volume_jacobian_matches_numpy_and_linear_velocity_integrates(rng):
  u = rng.normal(size=(4, 5, 6, 3))
  grads = [np.gradient(u[..., k], axis=(2, 1, 0)) for k in range(3)]  # d/dx, d/dy, d/dz
  jac = np.eye(3) + np.stack([np.stack(g, -1) for g in grads], -2)
  assert_close(J.jacobian_determinant(u), np.linalg.det(jac), "3-D det vs numpy", atol=1e-12)

  shape, steps = (24, 24, 24), 7
  centre = np.full(3, 11.5)
  L = np.array([[0.03, -0.04, 0.01], [0.02, 0.01, -0.03], [-0.01, 0.03, 0.02]])
  p = identity_pixels(shape) - centre
  v = np.asarray(J.integrate(p @ L.T, steps))
  # As in 2-D: exact away from the border (7 steps + 2 max|u| < 9 pixels of margin).
  interior = (slice(9, 15),) * 3
  power = np.linalg.matrix_power(np.eye(3) + L / 2**steps, 2**steps) - np.eye(3)
  assert_close(v[interior], (p @ power.T)[interior], "3-D integrate", atol=1e-11)


def test_volume_gradients(rng):
  shape = (3, 4, 4)
  U = rng.normal(size=shape + (1,))
  disp = 0.3 + 0.2 * rng.uniform(size=shape + (3,))
  disp = np.where(identity_pixels(shape) + disp > np.array(shape[::-1]) - 1.2, -disp, disp)
  check_grads(J.warp, (U, disp), order=1, modes=("fwd", "rev"))


# --- conventions of other libraries -----------------------------------------------------------


def test_voxelmorph_and_monai_round_trips(rng):
  u = rng.normal(size=(2, 5, 7, 2))
  vxm = J.to_voxelmorph(u)
  # VoxelMorph: flow[..., 0] moves along axis 0 (rows, our y).
  np.testing.assert_array_equal(vxm[..., 0], u[..., 1])
  np.testing.assert_array_equal(J.from_voxelmorph(vxm), u)
  monai = J.to_monai(u)
  assert monai.shape == (2, 2, 5, 7)
  np.testing.assert_array_equal(monai[:, 0], u[..., 1])
  np.testing.assert_array_equal(fields.from_monai(monai), u)
  np.testing.assert_array_equal(fields.from_monai(monai[0]), u[0])
  with pytest.raises(ValueError, match="spatial_dims"):
    fields.from_monai(np.zeros((3, 2, 5, 5)))
  np.testing.assert_array_equal(
    fields.from_monai(np.zeros((3, 2, 5, 5)), spatial_dims=2), np.zeros((3, 5, 5, 2))
  )


def _monai():
  pytest.importorskip("torch")
  return pytest.importorskip("monai.networks.blocks")


@pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp. Using PyTorch native")
@pytest.mark.parametrize("dims", [2, 3])
def test_warp_matches_monai_warp(dims, rng):
  blocks = _monai()
  import torch

  U = rng.normal(size=(2, 12, 15, 3))
  disp = rng.normal(scale=2.0, size=(2, 12, 15, 2))
  if dims == 3:
    U = rng.normal(size=(2, 6, 7, 8, 2))
    disp = rng.normal(scale=2.0, size=(2, 6, 7, 8, 3))
  warp_layer = blocks.Warp(mode="bilinear", padding_mode="border")
  image = torch.from_numpy(np.moveaxis(U, -1, 1).copy())
  ddf = torch.from_numpy(np.array(J.to_monai(disp)))
  expected = np.moveaxis(warp_layer(image, ddf).numpy(), 1, -1)
  assert_close(J.warp(U, disp), expected, "warp vs MONAI Warp", atol=1e-12)


@pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp. Using PyTorch native")
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("shape", [(16, 20), (8, 9, 10)])
def test_integrate_matches_monai_dvf2ddf(shape, padding_mode, rng):
  blocks = _monai()
  import torch

  v = np.stack([smooth_field(rng, shape, 3.0) for _ in range(2)])
  layer = blocks.DVF2DDF(num_steps=7, mode="bilinear", padding_mode=padding_mode)
  expected = layer(torch.from_numpy(np.array(J.to_monai(v)))).numpy()
  actual = J.integrate(v, 7, padding_mode=padding_mode)
  assert_close(fields.from_monai(expected), actual, "integrate vs MONAI DVF2DDF", atol=1e-12)


# --- errors ------------------------------------------------------------------------------------


def test_errors_say_what_was_expected():
  with pytest.raises(ValueError, match=r"\(\.\.\., \*S, d\).*got \(4, 4, 5\)"):
    fields.integrate(np.zeros((4, 4, 5)))
  with pytest.raises(ValueError, match="spatial shape S = \\(4, 4\\)"):
    fields.warp(np.zeros((5, 4, 1)), np.zeros((4, 4, 2)))
  with pytest.raises(ValueError, match="non-negative Python int"):
    fields.integrate(np.zeros((4, 4, 2)), steps=-1)
  with pytest.raises(ValueError, match="at least 2 pixels"):
    fields.jacobian_determinant(np.zeros((1, 4, 2)))
  with pytest.raises(ValueError, match=r"\(\.\.\., 2, 3\)"):
    fields.affine_to_displacement(np.zeros((3, 4)), (4, 4))
  with pytest.raises(ValueError, match="same spatial shape"):
    fields.compose(np.zeros((4, 4, 2)), np.zeros((4, 5, 2)))

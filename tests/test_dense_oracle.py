"""Dense numpy oracles for stn_jax.

* Generic separable kernels: with ``padding_mode="zeros"`` the output is the
  dense double sum  V_i^c = sum_n sum_m U[n, m, c] k(x_i - m) k(y_i - n)  over
  the whole image, where k(d) = fn(d) for |d| < radius and 0 otherwise.
* Projective grids: x_s = (h11 x + h12 y + h13) / (h31 x + h32 y + h33), ...
* Thin-plate-spline grids: interpolate the control-point targets exactly.

All oracles are written from the contract, in float64, independently of the
implementation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import stn_jax
from stn_jax import kernels as K


@pytest.fixture(autouse=True, scope="module")
def _x64():
  assert jax.config.jax_enable_x64, "float64 must be enabled (jax_enable_x64) for oracle tests"
  yield


# --- oracles


def unnormalize(g, size, align_corners):
  if align_corners:
    return (g + 1.0) / 2.0 * (size - 1)
  return ((g + 1.0) * size - 1.0) / 2.0


def base_coords(n, align_corners):
  """Normalised output pixel-centre coordinates along one axis (torch affine_grid convention)."""
  if n == 1:
    return np.zeros(1)
  if align_corners:
    return np.linspace(-1.0, 1.0, n)
  return (2.0 * np.arange(n) + 1.0) / n - 1.0


def base_grid(Ho, Wo, align_corners):
  """(Ho, Wo, 2) identity grid, last axis (x, y)."""
  x = base_coords(Wo, align_corners)
  y = base_coords(Ho, align_corners)
  X, Y = np.meshgrid(x, y)
  return np.stack([X, Y], -1)


def kernel_np(fn, radius, d):
  """k(d) = fn(d) for |d| < radius else 0, evaluated in float64 numpy."""
  d = np.asarray(d, dtype=np.float64)
  v = np.asarray(fn(jnp.asarray(d)), dtype=np.float64)
  v = np.broadcast_to(v, d.shape)
  return np.where(np.abs(d) < radius, v, 0.0)


def dense_sample_np(U, grid, fn, radius, align_corners):
  """Explicit-loop dense double sum. U (N,H,W,C), grid (N,Ho,Wo,2) -> (N,Ho,Wo,C)."""
  N, H, W, C = U.shape
  _, Ho, Wo, _ = grid.shape
  V = np.zeros((N, Ho, Wo, C))
  ms = np.arange(W, dtype=np.float64)
  ns = np.arange(H, dtype=np.float64)
  for b in range(N):
    for i in range(Ho):
      for j in range(Wo):
        x = unnormalize(grid[b, i, j, 0], W, align_corners)
        y = unnormalize(grid[b, i, j, 1], H, align_corners)
        if np.isnan(x) or np.isnan(y):
          continue
        kx = kernel_np(fn, radius, x - ms)  # (W,)
        ky = kernel_np(fn, radius, y - ns)  # (H,)
        V[b, i, j] = np.einsum("n,m,nmc->c", ky, kx, U[b])
  return V


def dense_sample_jnp(U, grid, fn, radius, align_corners):
  """Same dense sum written in jnp (differentiable), for gradient oracles."""
  N, H, W, C = U.shape
  x = unnormalize(grid[..., 0], W, align_corners)[..., None]  # (N,Ho,Wo,1)
  y = unnormalize(grid[..., 1], H, align_corners)[..., None]
  dx = x - jnp.arange(W, dtype=U.dtype).reshape(1, 1, 1, W)
  dy = y - jnp.arange(H, dtype=U.dtype).reshape(1, 1, 1, H)
  kx = jnp.where(jnp.abs(dx) < radius, fn(dx), 0.0)
  ky = jnp.where(jnp.abs(dy) < radius, fn(dy), 0.0)
  return jnp.einsum("bijn,bijm,bnmc->bijc", ky, kx, U)


def kernel_fn_radius(kern):
  assert hasattr(kern, "fn") and hasattr(kern, "radius"), (
    "stn_jax.Kernel(fn, radius) is expected to expose .fn and .radius"
  )
  return kern.fn, float(kern.radius)


def random_inputs(seed, N=2, H=5, W=6, C=2, Ho=3, Wo=4, lim=1.3):
  rng = np.random.default_rng(seed)
  U = rng.normal(size=(N, H, W, C))
  grid = rng.uniform(-lim, lim, size=(N, Ho, Wo, 2))
  R = rng.normal(size=(N, Ho, Wo, C))
  return U, grid, R


def tri(d):
  return jnp.maximum(0.0, 1.0 - jnp.abs(d))


KERNEL_CASES = {
  "gaussian_s0.7_r2.2": lambda: K.gaussian(0.7, radius=2.2),
  "gaussian_s1.1_default_radius": lambda: K.gaussian(1.1),
  "gaussian_wide_r10": lambda: K.gaussian(2.5, radius=10.0),  # support larger than the image
  "lanczos2": lambda: K.lanczos(2),
  "lanczos3": lambda: K.lanczos(3),
  "lanczos_default": lambda: K.lanczos(),
  "custom_triangle": lambda: stn_jax.Kernel(tri, 1),
  "custom_nonvanishing_at_radius": lambda: stn_jax.Kernel(lambda d: 1.0 - 0.1 * d**2, 1.5),
  "keys_cubic": lambda: K.keys_cubic(),
  "keys_cubic_a-0.5": lambda: K.keys_cubic(-0.5),
  "triangle": lambda: K.triangle(),
}


# --- generic kernels vs dense sum


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_generic_kernel_matches_dense_sum(case, align_corners):
  kern = KERNEL_CASES[case]()
  fn, radius = kernel_fn_radius(kern)
  seed = sorted(KERNEL_CASES).index(case) + 100 * align_corners
  U, grid, _ = random_inputs(seed)
  V = stn_jax.sample(
    jnp.asarray(U), jnp.asarray(grid), kern, padding_mode="zeros", align_corners=align_corners
  )
  assert V.dtype == jnp.float64
  Vo = dense_sample_np(U, grid, fn, radius, align_corners)
  assert np.abs(Vo).max() > 1e-3  # non-trivial comparison
  assert_close(V, Vo, f"{case} ac={align_corners}")


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
  "case", ["gaussian_s0.7_r2.2", "lanczos3", "custom_triangle", "custom_nonvanishing_at_radius"]
)
def test_generic_kernel_grads_match_dense_sum(case, align_corners):
  kern = KERNEL_CASES[case]()
  fn, radius = kernel_fn_radius(kern)
  U, grid, R = random_inputs(200 + sorted(KERNEL_CASES).index(case) + 100 * align_corners)
  args = (jnp.asarray(U), jnp.asarray(grid))

  V, vjp = jax.vjp(
    lambda u, g: stn_jax.sample(u, g, kern, padding_mode="zeros", align_corners=align_corners),
    *args,
  )
  Vo, vjpo = jax.vjp(lambda u, g: dense_sample_jnp(u, g, fn, radius, align_corners), *args)
  # the jnp oracle itself agrees with the explicit-loop numpy oracle
  assert_close(
    Vo, dense_sample_np(U, grid, fn, radius, align_corners), "jnp oracle vs numpy oracle"
  )
  assert_close(V, Vo, "V")
  dU, dg = vjp(jnp.asarray(R))
  dUo, dgo = vjpo(jnp.asarray(R))
  assert_close(dU, dUo, "dV/dU", rtol=1e-9, atol=1e-9)
  assert_close(dg, dgo, "dV/dgrid", rtol=1e-9, atol=1e-9)


def test_generic_kernel_leading_batch_dims():
  kern = K.gaussian(0.8, radius=2.0)
  fn, radius = kernel_fn_radius(kern)
  rng = np.random.default_rng(300)
  U = rng.normal(size=(2, 3, 4, 5, 2))
  grid = rng.uniform(-1.2, 1.2, size=(2, 3, 3, 3, 2))
  V = np.asarray(stn_jax.sample(jnp.asarray(U), jnp.asarray(grid), kern, padding_mode="zeros"))
  assert V.shape == (2, 3, 3, 3, 2)
  Vo = dense_sample_np(U.reshape(6, 4, 5, 2), grid.reshape(6, 3, 3, 2), fn, radius, False)
  assert_close(V, Vo.reshape(V.shape), "batch dims (2,3)")


@pytest.mark.parametrize("align_corners", [False, True])
def test_generic_kernel_nan_grid_samples_zero(align_corners):
  kern = K.lanczos(3)
  fn, radius = kernel_fn_radius(kern)
  U, grid, _ = random_inputs(400, lim=1.1)
  grid[0, 0, 0, 0] = np.nan
  grid[1, 2, 3, :] = np.nan
  grid[1, 1, 1, 1] = np.nan
  V = np.asarray(
    stn_jax.sample(
      jnp.asarray(U), jnp.asarray(grid), kern, padding_mode="zeros", align_corners=align_corners
    )
  )
  assert not np.isnan(V).any()
  assert_close(V, dense_sample_np(U, grid, fn, radius, align_corners), "NaN points sample 0")


# --- kernel definitions


def test_kernel_stores_fn_and_radius():
  kern = stn_jax.Kernel(tri, 1)
  assert kern.fn is tri
  assert float(kern.radius) == 1.0


def test_builtin_kernel_definitions():
  d = np.linspace(-3.7, 3.7, 149)  # avoids 0 and integers exactly except by rounding
  d = np.concatenate([d, [0.0, 0.5, -1.0, 1.0, 2.0]])

  # gaussian: proportional to exp(-d^2 / (2 sigma^2)), with the requested radius
  sigma = 0.9
  fn, r = kernel_fn_radius(K.gaussian(sigma, radius=2.7))
  assert r == 2.7
  g = np.asarray(fn(jnp.asarray(d)))
  g0 = float(np.asarray(fn(jnp.asarray(0.0))))
  assert g0 > 0
  np.testing.assert_allclose(g / g0, np.exp(-(d**2) / (2 * sigma**2)), rtol=1e-12, atol=1e-14)
  # default radius covers at least 2 sigma (otherwise "gaussian" is a box)
  _, r_def = kernel_fn_radius(K.gaussian(sigma))
  assert r_def >= 2 * sigma

  # lanczos(a): sinc(d) sinc(d/a), support |d| < a
  for a in (2, 3):
    fn, r = kernel_fn_radius(K.lanczos(a))
    assert r == a
    inside = np.abs(d) < a
    np.testing.assert_allclose(
      np.asarray(fn(jnp.asarray(d)))[inside],
      (np.sinc(d) * np.sinc(d / a))[inside],
      rtol=1e-12,
      atol=1e-14,
    )
  assert kernel_fn_radius(K.lanczos())[1] == 3

  # keys cubic(a), support |d| < 2
  for a in (-0.75, -0.5):
    fn, r = kernel_fn_radius(K.keys_cubic(a))
    assert r == 2
    t = np.abs(d)
    ref = np.where(
      t <= 1,
      (a + 2) * t**3 - (a + 3) * t**2 + 1,
      np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
    )
    inside = t < 2
    np.testing.assert_allclose(
      np.asarray(fn(jnp.asarray(d)))[inside], ref[inside], rtol=1e-12, atol=1e-14
    )

  # triangle: 1 - |d| on |d| < 1
  fn, r = kernel_fn_radius(K.triangle())
  assert r == 1
  inside = np.abs(d) < 1
  np.testing.assert_allclose(
    np.asarray(fn(jnp.asarray(d)))[inside], (1 - np.abs(d))[inside], rtol=1e-12, atol=1e-14
  )


# --- generic kernels vs built-in modes


def _value_and_grads(U, grid, R, kernel, align_corners):
  V, vjp = jax.vjp(
    lambda u, g: stn_jax.sample(u, g, kernel, padding_mode="zeros", align_corners=align_corners),
    jnp.asarray(U),
    jnp.asarray(grid),
  )
  dU, dg = vjp(jnp.asarray(R))
  return V, dU, dg


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
  "generic,builtin",
  [
    ("custom_triangle", "bilinear"),
    ("triangle", "bilinear"),
    ("keys_cubic", "bicubic"),
  ],
)
def test_generic_kernel_equals_builtin_mode_zeros_padding(generic, builtin, align_corners):
  U, grid, R = random_inputs(500 + 100 * align_corners, N=2, H=5, W=7, C=3, Ho=4, Wo=6, lim=1.5)
  a = _value_and_grads(U, grid, R, KERNEL_CASES[generic](), align_corners)
  b = _value_and_grads(U, grid, R, builtin, align_corners)
  for x, y, what in zip(a, b, ("V", "dV/dU", "dV/dgrid"), strict=True):
    assert_close(x, y, f"{generic} vs {builtin}: {what}", rtol=1e-9, atol=1e-9)


# --- differentiating kernel parameters


@pytest.mark.parametrize("align_corners", [False, True])
def test_grad_wrt_gaussian_sigma_matches_finite_difference(align_corners):
  U, grid, R = random_inputs(600 + align_corners)
  U, grid, R = jnp.asarray(U), jnp.asarray(grid), jnp.asarray(R)

  def loss(sigma):
    V = stn_jax.sample(
      U, grid, K.gaussian(sigma, radius=2.5), padding_mode="zeros", align_corners=align_corners
    )
    return jnp.sum(V * R)

  s0, h = 0.8, 1e-5
  g = float(jax.grad(loss)(jnp.asarray(s0)))
  fd = (float(loss(s0 + h)) - float(loss(s0 - h))) / (2 * h)
  assert abs(fd) > 1e-3
  np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)

  # and the same derivative from the differentiable dense oracle built on the kernel's own fn
  def loss_oracle(sigma):
    fn, radius = kernel_fn_radius(K.gaussian(sigma, radius=2.5))
    return jnp.sum(dense_sample_jnp(U, grid, fn, radius, align_corners) * R)

  np.testing.assert_allclose(float(loss(s0)), float(loss_oracle(s0)), rtol=1e-10)
  np.testing.assert_allclose(g, float(jax.grad(loss_oracle)(jnp.asarray(s0))), rtol=1e-9)


def test_grad_wrt_custom_kernel_parameter_matches_finite_difference():
  U, grid, R = random_inputs(610)
  U, grid, R = jnp.asarray(U), jnp.asarray(grid), jnp.asarray(R)

  def loss(p):
    kern = stn_jax.Kernel(lambda d: jnp.exp(-((d / p) ** 2)) * (1.0 + p * d), 2.0)
    return jnp.sum(stn_jax.sample(U, grid, kern, padding_mode="zeros", align_corners=True) * R)

  p0, h = 0.9, 1e-5
  g = float(jax.grad(loss)(jnp.asarray(p0)))
  fd = (float(loss(p0 + h)) - float(loss(p0 - h))) / (2 * h)
  assert abs(fd) > 1e-3
  np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
  # and jit-compatible
  np.testing.assert_allclose(float(jax.jit(jax.grad(loss))(jnp.asarray(p0))), g, rtol=1e-12)


# --- projective grids


def projective_np(Hm, Ho, Wo, align_corners):
  """Hm (N,3,3) -> (N,Ho,Wo,2)."""
  b = base_grid(Ho, Wo, align_corners)
  x, y = b[..., 0], b[..., 1]
  out = []
  for h in Hm:
    den = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    xs = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / den
    ys = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / den
    out.append(np.stack([xs, ys], -1))
  return np.stack(out)


def random_homographies(rng, N):
  Hm = np.eye(3) + 0.25 * rng.normal(size=(N, 3, 3))
  Hm[:, 2, 2] = 1.0 + 0.2 * rng.uniform(size=N)
  Hm[:, 2, :2] = rng.uniform(-0.2, 0.2, size=(N, 2))  # keep the denominator away from 0 on [-1,1]^2
  return Hm


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [(4, 6), (5, 3), (1, 4)])
def test_projective_grid_matches_numpy(shape, align_corners):
  rng = np.random.default_rng(700)
  Hm = random_homographies(rng, 3)
  g = stn_jax.make_grid(jnp.asarray(Hm), shape, "projective", align_corners=align_corners)
  assert g.shape == (3,) + shape + (2,)
  assert_close(g, projective_np(Hm, *shape, align_corners), "projective grid")


def test_projective_grid_scale_invariant_and_leading_dims():
  rng = np.random.default_rng(710)
  Hm = random_homographies(rng, 6).reshape(2, 3, 3, 3)
  g = np.asarray(stn_jax.make_grid(jnp.asarray(Hm), (4, 5), "projective", align_corners=False))
  assert g.shape == (2, 3, 4, 5, 2)
  assert_close(g, projective_np(Hm.reshape(6, 3, 3), 4, 5, False).reshape(g.shape), "leading dims")
  g2 = stn_jax.make_grid(jnp.asarray(-2.5 * Hm), (4, 5), "projective", align_corners=False)
  assert_close(g2, g, "homography defined up to scale", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_with_affine_homography_equals_affine(align_corners):
  rng = np.random.default_rng(720)
  A = rng.normal(size=(3, 2, 3))
  Hm = np.concatenate([A, np.tile(np.array([[[0.0, 0.0, 1.0]]]), (3, 1, 1))], axis=1)
  gp = stn_jax.make_grid(jnp.asarray(Hm), (4, 6), "projective", align_corners=align_corners)
  ga = stn_jax.make_grid(jnp.asarray(A), (4, 6), "affine", align_corners=align_corners)
  assert_close(gp, ga, "projective with last row (0,0,1) == affine")


def test_projective_grid_grad_matches_numpy_jacobian():
  rng = np.random.default_rng(730)
  Hm = random_homographies(rng, 2)
  R = rng.normal(size=(2, 3, 4, 2))
  g = jax.grad(
    lambda h: jnp.sum(stn_jax.make_grid(h, (3, 4), "projective", align_corners=True) * R)
  )(jnp.asarray(Hm))
  # central differences of the numpy oracle (smooth rational function)
  fd = np.zeros_like(Hm)
  eps = 1e-6
  for idx in np.ndindex(Hm.shape):
    e = np.zeros_like(Hm)
    e[idx] = eps
    fd[idx] = (
      np.sum(projective_np(Hm + e, 3, 4, True) * R) - np.sum(projective_np(Hm - e, 3, 4, True) * R)
    ) / (2 * eps)
  assert_close(g, fd, "d grid / d H", rtol=1e-6, atol=1e-7)


# --- thin-plate splines


def default_control_points():
  return np.stack(np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 4)), -1).reshape(16, 2)


def tps_np(cp, targets, pts):
  """Exact thin-plate-spline interpolant cp -> targets evaluated at pts (M,2).

  The radial basis is r^2 log r^2; for an interpolating (smoothing=0) TPS the
  result is the same for r^2 log r (the weights just rescale).
  """
  Kp = cp.shape[0]

  def phi(r2):
    safe = np.where(r2 > 0, r2, 1.0)
    return np.where(r2 > 0, r2 * np.log(safe), 0.0)

  D2 = ((cp[:, None, :] - cp[None, :, :]) ** 2).sum(-1)
  P = np.hstack([np.ones((Kp, 1)), cp])
  A = np.zeros((Kp + 3, Kp + 3))
  A[:Kp, :Kp] = phi(D2)
  A[:Kp, Kp:] = P
  A[Kp:, :Kp] = P.T
  rhs = np.zeros((Kp + 3, 2))
  rhs[:Kp] = targets
  sol = np.linalg.solve(A, rhs)
  w, a = sol[:Kp], sol[Kp:]
  d2 = ((pts[:, None, :] - cp[None, :, :]) ** 2).sum(-1)
  return phi(d2) @ w + np.hstack([np.ones((len(pts), 1)), pts]) @ a


def test_tps_default_control_points_interpolate_targets():
  rng = np.random.default_rng(800)
  cp = default_control_points()
  N = 3
  targets = cp[None] + 0.2 * rng.normal(size=(N, 16, 2))
  # (4,4) output with align_corners=True: base grid == linspace(-1,1,4) == control points
  g = np.asarray(stn_jax.make_grid(jnp.asarray(targets), (4, 4), "tps", align_corners=True))
  assert g.shape == (N, 4, 4, 2)
  assert_close(
    base_grid(4, 4, True).reshape(16, 2),
    cp,
    "test set-up: base grid is the control lattice",
    rtol=0,
    atol=1e-15,
  )
  assert_close(
    g.reshape(N, 16, 2), targets, "TPS interpolates default control points", rtol=1e-9, atol=1e-9
  )


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_default_control_points_full_grid_matches_numpy(align_corners):
  rng = np.random.default_rng(810)
  cp = default_control_points()
  targets = cp[None] + 0.2 * rng.normal(size=(2, 16, 2))
  Ho, Wo = 5, 7
  g = np.asarray(
    stn_jax.make_grid(jnp.asarray(targets), (Ho, Wo), "tps", align_corners=align_corners)
  )
  pts = base_grid(Ho, Wo, align_corners).reshape(-1, 2)
  ref = np.stack([tps_np(cp, t, pts).reshape(Ho, Wo, 2) for t in targets])
  assert_close(g, ref, "TPS full grid", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_custom_control_points_interpolate_targets(align_corners):
  rng = np.random.default_rng(820 + align_corners)
  Ho, Wo = 5, 6
  base = base_grid(Ho, Wo, align_corners)
  Kp = 7
  flat = rng.choice(Ho * Wo, size=Kp, replace=False)
  ii, jj = np.unravel_index(flat, (Ho, Wo))
  cp = base[ii, jj]  # exact pixel-centre locations of the output grid
  N = 3
  targets = rng.uniform(-1.2, 1.2, size=(N, Kp, 2))
  g = np.asarray(
    stn_jax.make_grid(
      jnp.asarray(targets),
      (Ho, Wo),
      "tps",
      align_corners=align_corners,
      control_points=jnp.asarray(cp),
    )
  )
  assert g.shape == (N, Ho, Wo, 2)
  assert_close(
    g[:, ii, jj], targets, "TPS interpolates custom control points", rtol=1e-9, atol=1e-9
  )
  # whole grid vs numpy TPS
  ref = np.stack([tps_np(cp, t, base.reshape(-1, 2)).reshape(Ho, Wo, 2) for t in targets])
  assert_close(g, ref, "TPS full grid, custom control points", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_tps_reproduces_affine_maps(smoothing):
  rng = np.random.default_rng(830)
  cp = default_control_points()
  A = rng.normal(size=(2, 2, 3))
  targets = np.einsum("nij,kj->nki", A[:, :, :2], cp) + A[:, None, :, 2]
  g = stn_jax.make_grid(
    jnp.asarray(targets), (4, 5), "tps", align_corners=False, smoothing=smoothing
  )
  ga = stn_jax.make_grid(jnp.asarray(A), (4, 5), "affine", align_corners=False)
  assert_close(
    g,
    ga,
    f"TPS with affine targets (smoothing={smoothing}) is that affine map",
    rtol=1e-9,
    atol=1e-9,
  )


def test_tps_identity_targets_give_identity_grid():
  cp = default_control_points()
  g = stn_jax.make_grid(jnp.asarray(cp), (3, 5), "tps", align_corners=True)
  assert g.shape == (3, 5, 2)
  assert_close(g, base_grid(3, 5, True), "identity TPS", rtol=1e-9, atol=1e-9)


def test_tps_grad_wrt_targets_matches_numpy_linear_map():
  rng = np.random.default_rng(840)
  cp = default_control_points()
  targets = cp + 0.1 * rng.normal(size=(16, 2))
  Ho, Wo = 3, 4
  R = rng.normal(size=(Ho, Wo, 2))
  pts = base_grid(Ho, Wo, False).reshape(-1, 2)
  # TPS is linear in the targets, per coordinate: grid = M @ targets
  M = np.stack(
    [tps_np(cp, np.repeat(np.eye(16)[k][:, None], 2, 1), pts)[:, 0] for k in range(16)], -1
  )
  g = jax.grad(lambda t: jnp.sum(stn_jax.make_grid(t, (Ho, Wo), "tps", align_corners=False) * R))(
    jnp.asarray(targets)
  )
  assert_close(g, M.T @ R.reshape(-1, 2), "d grid / d targets", rtol=1e-9, atol=1e-9)

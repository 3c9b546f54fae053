"""sample: exact geometry, derivatives in every mode, non-finite input, dtypes and errors.

PyTorch parity and the dense double-sum oracle live in test_torch_parity.py and
test_dense_oracle.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOLERANCES
from jax.test_util import check_grads

import stn_jax
from stn_jax import kernels

TOL = TOLERANCES[np.dtype(np.float64)]
INTERPOLATING = ["nearest", "bilinear", "bicubic", kernels.lanczos(2), kernels.lanczos(3)]
ALL_KERNELS = INTERPOLATING + [kernels.gaussian(0.8), kernels.triangle()]


def kernel_id(k):
  return k if isinstance(k, str) else f"Kernel(r={k.radius})"


def identity_grid(shape, align_corners=False, dtype=jnp.float64):
  return stn_jax.make_grid(jnp.eye(2, 3, dtype=dtype), shape, align_corners=align_corners)


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("kernel", INTERPOLATING, ids=kernel_id)
def test_identity_returns_input(rng, kernel, align_corners, padding_mode):
  U = rng.normal(size=(2, 5, 7, 3))
  V = stn_jax.sample(
    U,
    identity_grid((5, 7), align_corners),
    kernel,
    padding_mode=padding_mode,
    align_corners=align_corners,
  )
  np.testing.assert_allclose(V, U, atol=1e-12)


def test_nearest_exact_geometry_bit_for_bit(rng):
  U = jnp.asarray(rng.normal(size=(6, 8, 2)))
  cases = {
    "flip_x": (np.array([[-1.0, 0, 0], [0, 1, 0]]), U[:, ::-1]),
    "flip_y": (np.array([[1.0, 0, 0], [0, -1, 0]]), U[::-1]),
    # +2 pixels in x: output column j reads input column j + 2, zeros past the edge.
    "shift": (
      np.array([[1.0, 0, 4 / 8], [0, 1, 0]]),
      jnp.concatenate([U[:, 2:], jnp.zeros((6, 2, 2))], axis=1),
    ),
  }
  for name, (theta, expected) in cases.items():
    V = stn_jax.warp(U, theta, kernel="nearest")
    np.testing.assert_array_equal(V, expected, err_msg=name)


@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
def test_rotation_by_90_degrees_is_a_transpose_flip(rng, kernel):
  # On a square image the centres map onto centres; x_s = -y_t, y_s = x_t.
  U = jnp.asarray(rng.normal(size=(5, 5, 3)))
  theta = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
  V = stn_jax.warp(U, theta, kernel=kernel)
  expected = jnp.transpose(U[:, ::-1], (1, 0, 2))  # V[i, j] = U[j, W - 1 - i]
  np.testing.assert_allclose(V, expected, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_integer_pixel_translation_with_border_padding(rng, align_corners):
  U = jnp.asarray(rng.normal(size=(4, 6, 1)))
  step = 2 / (6 - 1) if align_corners else 2 / 6
  theta = np.array([[1.0, 0, -step], [0, 1, 0]])  # read one pixel to the left
  V = stn_jax.warp(U, theta, padding_mode="border", align_corners=align_corners)
  expected = jnp.concatenate([U[:, :1], U[:, :-1]], axis=1)
  np.testing.assert_allclose(V, expected, atol=1e-12)


def test_warp_of_linear_ramp_has_closed_form_theta_gradient():
  # U(x, y) = x (pixel column) is reproduced exactly by bilinear sampling inside the image,
  # so V_i = x_s(i) = ((theta_00 x_t + theta_01 y_t + theta_02 + 1) W - 1) / 2.
  h, w = 6, 8
  U = jnp.broadcast_to(jnp.arange(w, dtype=jnp.float64)[None, :, None], (h, w, 1))
  theta = jnp.array([[0.6, 0.1, 0.05], [-0.1, 0.7, 0.02]])
  loss = lambda t: jnp.sum(stn_jax.warp(U, t, kernel="bilinear"))  # noqa: E731
  xt, yt = np.meshgrid((2 * np.arange(w) + 1) / w - 1, (2 * np.arange(h) + 1) / h - 1)
  expected = np.zeros((2, 3))
  expected[0] = [xt.sum() * w / 2, yt.sum() * w / 2, xt.size * w / 2]
  np.testing.assert_allclose(jax.grad(loss)(theta), expected, **TOL)
  np.testing.assert_allclose(loss(theta), np.sum(((0.6 * xt + 0.1 * yt + 1.05) * w - 1) / 2))


def test_bilinear_and_nearest_stay_within_input_range(rng):
  U = rng.uniform(2.0, 5.0, size=(6, 6, 2))
  grid = rng.uniform(-1.5, 1.5, size=(7, 7, 2))
  for kernel in ("nearest", "bilinear"):
    V = stn_jax.sample(U, grid, kernel, padding_mode="border")
    assert V.min() >= U.min() - 1e-12 and V.max() <= U.max() + 1e-12


@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=kernel_id)
def test_jit_equals_eager_and_vmap_equals_loop(rng, kernel):
  U = rng.normal(size=(3, 5, 6, 2))
  grid = rng.uniform(-1.2, 1.2, size=(3, 4, 4, 2))
  f = lambda u, g: stn_jax.sample(u, g, kernel, padding_mode="reflection")  # noqa: E731
  batched = f(U, grid)
  np.testing.assert_allclose(jax.jit(f)(U, grid), batched, **TOL)
  np.testing.assert_allclose(jax.vmap(f)(U, grid), batched, **TOL)
  for i in range(3):
    np.testing.assert_allclose(f(U[i], grid[i]), batched[i], **TOL)


def test_leading_dims_broadcast(rng):
  U = rng.normal(size=(5, 6, 2))
  grids = rng.uniform(-1, 1, size=(4, 3, 3, 2))
  V = stn_jax.sample(U, grids)
  assert V.shape == (4, 3, 3, 2)
  for i in range(4):
    np.testing.assert_allclose(V[i], stn_jax.sample(U, grids[i]), **TOL)
  many = rng.normal(size=(2, 1, 5, 6, 2))
  V = stn_jax.sample(many, rng.uniform(-1, 1, size=(3, 4, 4, 2)))
  assert V.shape == (2, 3, 4, 4, 2)


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", kernels.gaussian(0.7)], ids=kernel_id)
def test_forward_mode_equals_reverse_mode(rng, kernel, padding_mode):
  U = rng.normal(size=(4, 5, 2))
  grid = rng.uniform(-1.3, 1.3, size=(3, 2, 2))
  f = lambda u, g: stn_jax.sample(u, g, kernel, padding_mode=padding_mode)  # noqa: E731
  for argnum in (0, 1):
    np.testing.assert_allclose(
      jax.jacfwd(f, argnum)(U, grid), jax.jacrev(f, argnum)(U, grid), **TOL
    )


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("kernel", ["bicubic", kernels.lanczos(2)], ids=kernel_id)
def test_check_grads_order_two_for_smooth_kernels(rng, kernel, padding_mode):
  U = rng.normal(size=(4, 5, 2))
  # Off the integer lattice (where bicubic's second derivative jumps), inside and outside.
  grid = rng.uniform(-1.2, 1.2, size=(2, 3, 2))
  f = lambda u, g: stn_jax.sample(u, g, kernel, padding_mode=padding_mode)  # noqa: E731
  check_grads(f, (U, grid), order=2, modes=("fwd", "rev"), eps=1e-5)


def test_check_grads_bilinear_first_order(rng):
  U = rng.normal(size=(4, 5, 2))
  grid = rng.uniform(-0.9, 0.9, size=(3, 3, 2))
  check_grads(lambda u, g: stn_jax.sample(u, g), (U, grid), order=1, modes=("fwd", "rev"))


def test_hessian_wrt_theta_through_bicubic(rng):
  U = jnp.asarray(rng.normal(size=(6, 6, 1)))
  theta = jnp.array([[0.9, 0.1, 0.03], [-0.05, 0.8, 0.02]])
  loss = lambda t: jnp.sum(stn_jax.warp(U, t, kernel="bicubic") ** 2)  # noqa: E731
  hess_fwd_rev = jax.jacfwd(jax.jacrev(loss))(theta)
  hess_rev_rev = jax.jacrev(jax.jacrev(loss))(theta)
  assert hess_fwd_rev.shape == (2, 3, 2, 3)
  np.testing.assert_allclose(hess_fwd_rev, hess_rev_rev, **TOL)
  np.testing.assert_allclose(hess_fwd_rev.reshape(6, 6), hess_fwd_rev.reshape(6, 6).T, **TOL)


def test_gradient_wrt_kernel_parameter_matches_finite_difference(rng):
  U = rng.normal(size=(5, 6, 1))
  grid = rng.uniform(-1, 1, size=(4, 4, 2))
  weights = rng.normal(size=(4, 4, 1))

  def loss(a):
    return jnp.sum(stn_jax.sample(U, grid, kernels.keys_cubic(a)) * weights)

  a, eps = -0.6, 1e-6
  numeric = (loss(a + eps) - loss(a - eps)) / (2 * eps)
  np.testing.assert_allclose(jax.grad(loss)(a), numeric, rtol=1e-7)


def test_nan_coordinates_read_zero_in_every_mode_with_zero_gradient(rng):
  U = jnp.asarray(rng.uniform(1, 2, size=(4, 4, 1)))
  grid = jnp.array([[[jnp.nan, 0.0], [0.1, jnp.nan], [0.2, -0.3]]])
  for kernel in ("nearest", "bilinear", "bicubic"):
    for padding_mode in stn_jax.PADDING_MODES:
      f = lambda u, g: stn_jax.sample(u, g, kernel, padding_mode=padding_mode)  # noqa: B023, E731
      V = f(U, grid)
      assert np.all(V[0, :2] == 0) and np.all(V[0, 2] > 0), (kernel, padding_mode)
      gu, gg = jax.grad(lambda u, g: jnp.sum(f(u, g)), (0, 1))(U, grid)  # noqa: B023
      assert np.all(np.isfinite(gu)) and np.all(np.isfinite(gg))
      assert np.all(gg[0, :2] == 0)


@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
def test_infinite_and_huge_coordinates(rng, kernel):
  U = jnp.asarray(rng.uniform(1, 2, size=(3, 4, 1)))
  far = [jnp.inf, -jnp.inf, 1e30, -1e30, 1e10]
  grid = jnp.array([[[v, 0.0] for v in far]])
  zeros = stn_jax.sample(U, grid, kernel, padding_mode="zeros")
  np.testing.assert_array_equal(zeros, 0.0)
  border = stn_jax.sample(U, grid, kernel, padding_mode="border")
  # Row y = 0 is between rows 1 and 0.5 of a 3-row image: row 1 exactly (centre).
  right, left = U[1, -1], U[1, 0]
  np.testing.assert_allclose(border[0], jnp.stack([right, left, right, left, right]), atol=1e-12)
  reflection = stn_jax.sample(U, grid, kernel, padding_mode="reflection")
  np.testing.assert_array_equal(reflection[0, :2], 0.0)  # no reflected position for inf
  assert np.all(np.isfinite(reflection))
  for padding_mode in stn_jax.PADDING_MODES:
    grad = jax.grad(lambda g: jnp.sum(stn_jax.sample(U, g, kernel, padding_mode=padding_mode)))  # noqa: B023
    assert np.all(np.isfinite(grad(grid)))


def test_empty_image_and_empty_grid():
  assert np.all(stn_jax.sample(jnp.ones((0, 4, 2)), jnp.zeros((3, 3, 2))) == 0)
  assert stn_jax.sample(jnp.ones((0, 4, 2)), jnp.zeros((3, 3, 2))).shape == (3, 3, 2)
  assert stn_jax.sample(jnp.ones((4, 4, 2)), jnp.zeros((0, 3, 2))).shape == (0, 3, 2)


@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_interpolates_in_float32(rng, native_off, dtype, kernel):
  # Exactly the float32 result rounded once to the dtype: interpolating in the low
  # precision (rounding each product and partial sum) would differ in many of these points.
  # The float32 reference runs the same gather-based sampler (the compiled kernels, which
  # take float32 but not low precision, sum in another order).
  U = jnp.asarray(rng.uniform(0, 1, size=(5, 5, 2)), dtype)
  grid = jnp.asarray(rng.uniform(-1.2, 1.2, size=(6, 7, 2)), jnp.float32)
  V = stn_jax.sample(U, grid, kernel)
  assert V.dtype == dtype
  reference = stn_jax.sample(U.astype(jnp.float32), grid, kernel).astype(dtype)
  np.testing.assert_array_equal(np.asarray(V, np.float32), np.asarray(reference, np.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_output_has_input_dtype_and_its_precision(rng, dtype):
  # Against the float64 bilinear formula, written out here: float32 loses only its own
  # round-off (a few ulps of values in [0, 1]), float64 its own.
  U = rng.uniform(0, 1, size=(5, 5, 1))
  grid = rng.uniform(-0.75, 0.75, size=(3, 3, 2)).astype(dtype)  # all four taps inside
  V = stn_jax.sample(jnp.asarray(U, dtype), jnp.asarray(grid))
  assert V.dtype == dtype
  x = ((grid[..., 0].astype(np.float64) + 1) * 5 - 1) / 2
  y = ((grid[..., 1].astype(np.float64) + 1) * 5 - 1) / 2
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = x - x0, y - y0
  u = U[..., 0].astype(dtype).astype(np.float64)
  expected = (
    u[y0, x0] * (1 - fx) * (1 - fy)
    + u[y0, x0 + 1] * fx * (1 - fy)
    + u[y0 + 1, x0] * (1 - fx) * fy
    + u[y0 + 1, x0 + 1] * fx * fy
  )
  eps = np.finfo(dtype).eps
  np.testing.assert_allclose(V[..., 0], expected, rtol=0, atol=16 * eps)


def test_float64_grid_keeps_float64_precision(rng):
  U = rng.normal(size=(4, 4, 1))
  grid = rng.uniform(-1, 1, size=(2, 2, 2))
  assert stn_jax.sample(U, grid).dtype == jnp.float64
  assert stn_jax.sample(U.astype(np.float32), grid).dtype == jnp.float32


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.bool_])
def test_integer_images_nearest_keeps_dtype_interpolation_raises(dtype):
  U = (np.arange(12).reshape(3, 4, 1) % 7).astype(dtype)
  V = stn_jax.sample(U, identity_grid((3, 4)), "nearest")
  assert V.dtype == dtype
  np.testing.assert_array_equal(V, U)
  with pytest.raises(TypeError, match="Cast it"):
    stn_jax.sample(U, identity_grid((3, 4)), "bilinear")


def test_bad_inputs_raise_clear_errors():
  U, grid = jnp.ones((4, 4, 1)), jnp.zeros((2, 2, 2))
  with pytest.raises(ValueError, match="unknown kernel 'cubic'.*bicubic"):
    stn_jax.sample(U, grid, "cubic")
  with pytest.raises(TypeError, match="Kernel"):
    stn_jax.sample(U, grid, 3)
  with pytest.raises(ValueError, match="unknown padding_mode 'wrap'.*reflection"):
    stn_jax.sample(U, grid, padding_mode="wrap")
  with pytest.raises(ValueError, match=r"grid must have shape \(\.\.\., Ho, Wo, 2\).*\(2, 2, 3\)"):
    stn_jax.sample(U, jnp.zeros((2, 2, 3)))
  with pytest.raises(ValueError, match=r"channels-last.*\(4, 4\)"):
    stn_jax.sample(jnp.ones((4, 4)), grid)
  with pytest.raises(ValueError, match=r"leading \(batch\) dimensions.*\(3,\).*\(2,\)"):
    stn_jax.sample(jnp.ones((3, 4, 4, 1)), jnp.zeros((2, 2, 2, 2)))
  with pytest.raises(TypeError, match="real number array"):
    stn_jax.sample(U.astype(jnp.complex64), grid)
  with pytest.raises(TypeError, match="real number array"):
    stn_jax.sample(U, grid.astype(bool))


def test_python_lists_and_numpy_inputs_are_accepted():
  U = [[[1.0], [2.0]], [[3.0], [4.0]]]
  grid = [[[0.0, 0.0]]]
  np.testing.assert_allclose(stn_jax.sample(U, grid), [[[2.5]]])
  np.testing.assert_allclose(stn_jax.sample(np.asarray(U), np.asarray(grid)), [[[2.5]]])


def test_kernel_validation():
  with pytest.raises(ValueError, match="radius"):
    stn_jax.Kernel(lambda d: d, 0)
  with pytest.raises(ValueError, match="radius"):
    stn_jax.Kernel(lambda d: d, float("inf"))
  with pytest.raises(TypeError, match="callable"):
    stn_jax.Kernel(3.0, 1)
  with pytest.raises(TypeError, match="radius"):
    jax.jit(lambda r: stn_jax.Kernel(lambda d: d, r))(1.0)
  with pytest.raises(TypeError, match="explicit static radius"):
    jax.jit(lambda s: kernels.gaussian(s))(1.0)
  with pytest.raises(ValueError, match="positive integer"):
    kernels.lanczos(2.5)


def test_kernel_support_is_strict():
  k = stn_jax.Kernel(lambda d: jnp.ones_like(d), 1.0)
  np.testing.assert_array_equal(k(jnp.array([-1.0, -0.999, 0.0, 0.999, 1.0])), [0, 1, 1, 1, 0])
  # A box of radius 1 at an integer coordinate reads exactly one tap (|d| = 1 excluded).
  U = jnp.arange(5.0).reshape(1, 5, 1)
  grid = stn_jax.pixel_to_normalized(jnp.array([[[2.0, 0.0]]]), (1, 5))
  np.testing.assert_allclose(stn_jax.sample(U, grid, k), [[[2.0]]])


def test_jitted_sample_does_not_retrace():
  traces = []

  @jax.jit
  def f(u, g):
    traces.append(1)
    return stn_jax.sample(u, g, "bicubic")

  for seed in range(3):
    r = np.random.default_rng(seed)
    f(r.normal(size=(4, 4, 1)), r.uniform(-1, 1, size=(2, 2, 2))).block_until_ready()
  assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_lanczos_derivatives_are_exact_near_pixel_centres(dtype):
  # k(d) = sinc(d) sinc(d / a): k'(d) ~ -(pi^2 / 3)(1 + 1 / a^2) d and k''(0) = that slope.
  a = 3
  slope = -(np.pi**2 / 3) * (1 + 1 / a**2)
  k = kernels.lanczos(a)
  for d in (1e-9, 1e-7, 1e-5, 1e-3):
    x = jnp.asarray(d, dtype)
    np.testing.assert_allclose(jax.grad(k)(x), slope * d, rtol=1e-4)
    np.testing.assert_allclose(jax.grad(jax.grad(k))(x), slope, rtol=1e-4)


@pytest.mark.parametrize(
  "kernel", ["bicubic", kernels.lanczos(3), kernels.gaussian(0.8)], ids=kernel_id
)
def test_second_derivative_on_the_lattice_equals_its_right_hand_limit(rng, kernel):
  # theta = identity puts every point on a pixel centre, so Hessians there matter.
  U = jnp.asarray(rng.normal(size=(1, 8, 1)))

  def value(x):
    g = stn_jax.pixel_to_normalized(jnp.stack([x, jnp.zeros_like(x)])[None, None], (1, 8))
    return stn_jax.sample(U, g, kernel)[0, 0, 0]

  second = jax.grad(jax.grad(value))
  np.testing.assert_allclose(second(jnp.float64(4.0)), second(jnp.float64(4.0 + 1e-9)), rtol=1e-6)

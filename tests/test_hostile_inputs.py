"""Hostile inputs not covered elsewhere; docs/reliability.md lists every row and its test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, -1e30])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_non_finite_and_huge_theta_never_crash_or_leak_nan(bad, padding_mode):
  U = jnp.ones((4, 5, 2))
  theta = np.array([[bad, 0.0, 0.0], [0.0, 1.0, 0.0]])
  V = stn_jax.warp(U, theta, padding_mode=padding_mode)
  assert V.shape == (4, 5, 2) and np.all(np.isfinite(V))
  # Every value is either 0 or the image's (constant) value: nothing invented.
  assert np.all((V == 0) | (V == 1))
  grad = jax.grad(lambda t: jnp.sum(stn_jax.warp(U, t, padding_mode=padding_mode)))(theta)
  assert grad.shape == (2, 3)
  if np.isfinite(bad):
    assert np.all(np.isfinite(grad))


def test_coordinates_beyond_int32_do_not_wrap_around():
  # 2**31 pixels would wrap an int32 index to a negative (then valid-looking) pixel.
  U = jnp.arange(1.0, 13.0).reshape(3, 4, 1)
  for x in (2.0**31, 2.0**32 + 1, -(2.0**31), 3e9):
    grid = stn_jax.pixel_to_normalized(jnp.array([[[x, 1.0]]]), (3, 4))
    assert float(stn_jax.sample(U, grid)[0, 0, 0]) == 0.0
    edge = U[1, -1, 0] if x > 0 else U[1, 0, 0]
    assert float(stn_jax.sample(U, grid, padding_mode="border")[0, 0, 0]) == float(edge)


def test_zero_channels_and_zero_batch():
  assert stn_jax.sample(jnp.ones((4, 4, 0)), jnp.zeros((2, 3, 2))).shape == (2, 3, 0)
  assert stn_jax.sample(jnp.ones((0, 4, 4, 1)), jnp.zeros((0, 2, 3, 2))).shape == (0, 2, 3, 1)
  assert stn_jax.make_grid(np.zeros((0, 2, 3)), (2, 3)).shape == (0, 2, 3, 2)


def test_integer_grid_and_theta_are_promoted_to_float32():
  U = jnp.arange(4.0, dtype=jnp.float32).reshape(2, 2, 1)
  grid = np.zeros((1, 1, 2), dtype=np.int32)
  assert stn_jax.sample(U, grid).dtype == jnp.float32
  np.testing.assert_allclose(stn_jax.sample(U, grid), [[[1.5]]])
  assert stn_jax.make_grid(np.eye(2, 3, dtype=np.int64), (2, 2)).dtype == jnp.float32


def test_nan_in_the_image_reaches_only_outputs_that_read_it():
  U = np.zeros((6, 6, 1))
  U[0, 0] = np.nan
  grid = stn_jax.make_grid(np.eye(2, 3), (6, 6))
  V = np.asarray(stn_jax.sample(U, grid, "bilinear"))
  assert np.isnan(V[0, 0, 0])
  assert np.all(np.isfinite(V.reshape(-1)[1:]))
  # Far from the NaN, out-of-bounds taps are masked by value, so no 0 * NaN appears.
  U[:] = 0.0
  U[:, 0] = np.inf
  far_left = jnp.full((1, 1, 2), -3.0)
  assert float(stn_jax.sample(U, far_left)[0, 0, 0]) == 0.0


@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_no_intermediate_nan_for_finite_input_under_debug_nans(kernel, padding_mode):
  # jax_debug_nans re-runs any primitive that produced a NaN and raises: finite inputs,
  # even far outside the image, must not create one anywhere inside the sampler.
  rng = np.random.default_rng(0)
  U = rng.normal(size=(4, 5, 2))
  grid = np.concatenate([rng.uniform(-1.5, 1.5, size=(2, 3, 2)), np.full((1, 3, 2), 1e30)])
  with jax.debug_nans(True):
    V = stn_jax.sample(U, grid, kernel, padding_mode=padding_mode)
    grads = jax.grad(
      lambda u, g: jnp.sum(stn_jax.sample(u, g, kernel, padding_mode=padding_mode)), (0, 1)
    )(U, grid)
  assert np.all(np.isfinite(V)) and all(np.all(np.isfinite(g)) for g in grads)


def test_numpy_and_list_theta_and_grid_work_under_jit_and_vmap():
  theta = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
  grid = jax.jit(stn_jax.make_grid, static_argnums=(1, 2))(np.asarray(theta), (3, 3), "affine")
  U = np.ones((3, 3, 1))
  np.testing.assert_allclose(jax.vmap(stn_jax.sample)(U[None], grid[None])[0], U)

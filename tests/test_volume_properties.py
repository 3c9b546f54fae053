"""The hypothesis properties of ``test_properties.py``, extended to volumes.

Examples are few and volumes tiny: each new shape compiles afresh.
"""

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import stn_jax

SETTINGS = settings(
  max_examples=6,
  deadline=None,
  suppress_health_check=[HealthCheck.too_slow],
  derandomize=True,
  phases=[Phase.explicit, Phase.generate],
)
TOL = {np.float32: 2e-5, np.float64: 1e-11}

sizes = st.integers(min_value=1, max_value=4)
dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def volumes(draw):
  shape = (draw(sizes), draw(sizes), draw(sizes), draw(st.integers(1, 2)))
  seed = draw(st.integers(0, 2**16))
  return np.random.default_rng(seed).normal(size=shape).astype(draw(dtypes))


@SETTINGS
@given(
  U=volumes(),
  transform=st.sampled_from(stn_jax.TRANSFORMS),
  kernel=st.sampled_from(["nearest", "bilinear", "bicubic"]),
  padding_mode=st.sampled_from(stn_jax.PADDING_MODES),
  align_corners=st.booleans(),
)
def test_identity_transform_returns_the_volume(U, transform, kernel, padding_mode, align_corners):
  theta = stn_jax.identity_theta(transform, ndim=3, dtype=U.dtype)
  V = stn_jax.warp(
    U, theta, transform, kernel=kernel, padding_mode=padding_mode, align_corners=align_corners
  )
  assert V.dtype == U.dtype and V.shape == U.shape
  np.testing.assert_allclose(V, U, atol=TOL[U.dtype.type] * 10, rtol=0)


@SETTINGS
@given(
  U=volumes(),
  kernel=st.sampled_from(["nearest", "bilinear"]),
  padding_mode=st.sampled_from(stn_jax.PADDING_MODES),
  seed=st.integers(0, 2**16),
)
def test_nearest_and_trilinear_stay_within_the_input_range(U, kernel, padding_mode, seed):
  grid = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(2, 3, 2, 3)).astype(U.dtype)
  V = np.asarray(stn_jax.sample(U, grid, kernel, padding_mode=padding_mode))
  low, high = U.min(), U.max()
  if padding_mode == "zeros":  # zero-padded taps join the convex combination
    low, high = min(low, 0), max(high, 0)
  eps = TOL[U.dtype.type] * max(1.0, abs(low), abs(high))
  assert V.min() >= low - eps and V.max() <= high + eps


@SETTINGS
@given(
  U=volumes(),
  scale=st.floats(0.3, 2.0),
  shift=st.tuples(*[st.floats(-0.5, 0.5)] * 3),
  align_corners=st.booleans(),
)
def test_attention_equals_its_affine_form(U, scale, shift, align_corners):
  attention = np.array([scale, *shift], U.dtype)
  a = stn_jax.warp(U, attention, "attention", align_corners=align_corners)
  b = stn_jax.warp(U, stn_jax.attention_to_affine(attention), align_corners=align_corners)
  np.testing.assert_array_equal(a, b)
  assert jnp.asarray(a).dtype == U.dtype

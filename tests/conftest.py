"""Strict settings for the whole suite: float64 available, no implicit rank promotion."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Tolerances by dtype, one table for the suite.
TOLERANCES = {
  np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
  np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
}


def assert_close(actual, expected, what, rtol=1e-10, atol=1e-10):
  """Same shape and allclose (float64 round-off by default), naming what was compared."""
  actual = np.asarray(actual)
  expected = np.asarray(expected)
  assert actual.shape == expected.shape, (
    f"{what}: shape {actual.shape} != expected {expected.shape}"
  )
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


@pytest.fixture
def rng():
  return np.random.default_rng(0)

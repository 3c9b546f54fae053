"""Helpers shared by the test modules (imported as ``helpers``; fixtures live in conftest)."""

import numpy as np

# Tolerances by dtype, one table for the suite: float64 results are compared to float64
# oracles at round-off; float32 results at a few float32 ulps of values of order 1.
TOLERANCES = {
  np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
  np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
}


def assert_close(actual, expected, what, rtol=None, atol=None):
  """Same shape and allclose, naming what was compared.

  The tolerance defaults to the :data:`TOLERANCES` entry for ``actual``'s dtype (float64's
  for anything else); ``rtol``/``atol`` override it.
  """
  actual = np.asarray(actual)
  expected = np.asarray(expected)
  assert actual.shape == expected.shape, (
    f"{what}: shape {actual.shape} != expected {expected.shape}"
  )
  tol = dict(TOLERANCES.get(actual.dtype, TOLERANCES[np.dtype(np.float64)]))
  if rtol is not None:
    tol["rtol"] = rtol
  if atol is not None:
    tol["atol"] = atol
  np.testing.assert_allclose(actual, expected, err_msg=what, **tol)

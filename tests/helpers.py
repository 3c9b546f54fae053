"""Helpers shared by the test modules (imported as ``helpers``; fixtures live in conftest)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
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


def run_on_cpu_devices(script, args, devices, arrays_file, unset=("JAX_ENABLE_X64",)):
  """Runs ``python -c script *args`` with ``devices`` simulated CPU devices (a fresh process:
  the device count is fixed when JAX starts) and the variables in ``unset`` removed.

  The script prints one line ``RESULT <json>`` and saves arrays to ``arrays_file``;
  returns ``(that json, {name: array})``.
  """
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  for name in unset:
    env.pop(name, None)
  proc = subprocess.run(
    [sys.executable, "-c", script, *map(str, args)],
    capture_output=True,
    text=True,
    timeout=900,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
  arrays = np.load(arrays_file)
  return json.loads(line.removeprefix("RESULT ")), {k: arrays[k] for k in arrays.files}


def _abs_cubic():
  from stn_jax._src import kernels

  return kernels.Kernel(lambda d: jnp.abs(kernels.resolve("bicubic").fn(d)), 2)


def _constant(value):
  from stn_jax._src import kernels

  return kernels.Kernel(lambda d: jnp.full_like(d, value), 2)


# Error bounds of the compiled kernels against the reference (test_native_fuzz,
# test_native_volumes). TAPS: taps per axis. ABS_KERNELS: each kernel with |weights|, whose
# samples of |U| are the sums of the magnitudes of the terms. A cubic weight near the edge
# of the support is a small difference of terms up to ~36 (Keys' far polynomial at
# |d| = 2): its rounding error is absolute, up to WEIGHT_ERROR eps (Horner's bound,
# ~6 * 36), so the bounds add that times the unweighted sum of the taps' magnitudes (ONES:
# weights 1 on the cubic's support), d such errors per product weight.
# Any weight, tent or cubic, also inherits the absolute rounding error of its pixel
# coordinate (about eps * size): relative to a weight near 0 (a coordinate a hair from a
# pixel) that is no small error, so the bounds add gamma times the unweighted sum of the
# taps around the point (ROUNDED_TAPS: ONES, whose support also holds a tap at distance
# exactly 1, which one side may read with a weight of an ulp; 0 for nearest, whose weights
# are exact).
TAPS = {"bilinear": 2, "bicubic": 4, "nearest": 1}
ABS_KERNELS = {"bilinear": "bilinear", "nearest": "nearest", "bicubic": _abs_cubic()}
WEIGHT_ERROR = 256
ONES = _constant(1.0)
ROUNDED_TAPS = {"bilinear": ONES, "bicubic": ONES, "nearest": _constant(0.0)}

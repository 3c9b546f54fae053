"""``stn_jax.native_status()`` says which path ``sample`` takes, and it is the path taken.

The path is read off the lowered program (the kernels are custom calls named
``StnBilinear*``), so a status that disagreed with what runs would fail here. The reasons
for a fallback are produced by the real loading code (on a missing and on a broken
library) or by the checks that follow it, with one input changed at a time.
"""

import jax
import jax.numpy as jnp
import pytest

import stn_jax
from stn_jax._src import native


def _runs_kernels(U, grid, kernel="bilinear", antialias=False) -> bool:
  def f(u, g):
    return stn_jax.sample(u, g, kernel, antialias=antialias)

  return "StnBilinearFwd" in jax.jit(f).lower(U, grid).as_text()


def test_status_is_on_with_the_kernels_built_and_used():
  status = stn_jax.native_status()
  assert status == (True, status.reason) and stn_jax.native_available() is True
  assert "are loaded" in status.reason and "_bilinear_cpu" in status.reason
  assert _runs_kernels(jnp.zeros((2, 5, 5, 1), jnp.float32), jnp.zeros((2, 3, 3, 2), jnp.float32))


def test_switch_turns_status_and_path_off(native_off):
  status = stn_jax.native_status()
  assert status.available is False and stn_jax.native_available() is False
  assert "STN_JAX_NATIVE=0" in status.reason
  assert not _runs_kernels(jnp.zeros((5, 5, 1), jnp.float32), jnp.zeros((3, 3, 2), jnp.float32))


# The per-call rule in native_status's docstring, case by case: (U dtype, grid dtype,
# kernel, antialias, U shape) -> kernels or not.
F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
CASES = [
  (F32, F32, "bilinear", False, (5, 5, 1), True),
  (F64, F64, "bilinear", False, (5, 5, 3), True),
  (F64, F32, "bilinear", False, (5, 5, 1), True),  # narrower grid: computed in U's float64
  (F32, F64, "bilinear", False, (5, 5, 1), False),  # wider grid: float64 compute, float32 U
  (BF16, F32, "bilinear", False, (5, 5, 1), False),
  (F32, F32, "nearest", False, (5, 5, 1), False),
  (F32, F32, "bicubic", False, (5, 5, 1), False),
  (F32, F32, "bilinear", True, (5, 5, 1), True),  # antialias reads through the kernels
  (F32, F32, "bilinear", False, (0, 5, 1), False),  # an empty spatial axis
  (F32, F32, "bilinear", False, (4, 5, 5, 1), True),  # volume: trilinear
]


@pytest.mark.parametrize("u_dtype, g_dtype, kernel, antialias, shape, expected", CASES)
def test_per_call_rule(u_dtype, g_dtype, kernel, antialias, shape, expected):
  ndim = len(shape) - 1
  U = jnp.zeros(shape, u_dtype)
  grid = jnp.zeros((3,) * ndim + (ndim,), g_dtype)
  assert _runs_kernels(U, grid, kernel, antialias) is expected


def test_missing_library_reason(monkeypatch):
  # The uncached loader on a module name that does not exist.
  monkeypatch.setattr(native, "_LIBRARY", "stn_jax._no_such_extension")
  loaded, reason = native._load_result.__wrapped__()
  assert loaded is False
  assert "stn_jax._no_such_extension is not built" in reason and "compiler" in reason


def test_broken_library_reason_and_warning(monkeypatch):
  # A module that exists but is no shared library: dlopen fails, the package falls back
  # and warns once, and the status carries the loader's error.
  monkeypatch.setattr(native, "_LIBRARY", "stn_jax._src.gather")
  with pytest.warns(RuntimeWarning, match="pure-JAX sampler: the compiled extension"):
    loaded, reason = native._load_result.__wrapped__()
  assert loaded is False
  assert "gather.py is built but cannot be loaded (OSError" in reason
  monkeypatch.setattr(native, "_load_result", lambda: (loaded, reason))
  assert stn_jax.native_status() == (False, reason)


def test_other_backend_reason(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  status = stn_jax.native_status()
  assert status.available is False
  assert "default backend is 'gpu'" in status.reason and "pure-JAX" in status.reason


def test_several_cpu_devices_still_run_the_kernels(monkeypatch):
  # Several CPU devices partition a batch-sharded call over the kernels (partitioning.py),
  # so the status must not send such users to the pure-JAX path.
  monkeypatch.setattr(native, "_single_cpu_device", lambda: False)
  assert stn_jax.native_status() == (True, native._load_result()[1])

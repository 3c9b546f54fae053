"""Strict settings for the whole suite: float64 available, no implicit rank promotion.

``STN_JAX_TEST_X64=0`` runs with JAX's default precision instead (x64 off, float32
compute), as users run it; ``tests/test_default_precision.py`` runs the ``x32/`` slice
that way in a subprocess, and the main run does not collect ``x32/``.
"""

import os

import jax
import numpy as np
import pytest

X64 = os.environ.get("STN_JAX_TEST_X64", "1") != "0"
jax.config.update("jax_enable_x64", X64)
jax.config.update("jax_numpy_rank_promotion", "raise")

collect_ignore = ["x32"] if X64 else []


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def native_off(monkeypatch):
  """Switches the compiled kernels off for the rest of the test (``STN_JAX_NATIVE=0``).

  The switch is read when a function is traced, and ``jax.jit`` caches traces by function
  and shapes, not by environment: without clearing the caches, a function traced earlier
  with the kernels would keep them. Cleared again afterwards for the same reason.
  """
  jax.clear_caches()
  monkeypatch.setenv("STN_JAX_NATIVE", "0")
  yield
  monkeypatch.delenv("STN_JAX_NATIVE")
  jax.clear_caches()


@pytest.fixture
def pure_jax(monkeypatch):
  """Runs ``fn(*args)`` with the compiled kernels off, on fresh traces (see ``native_off``)."""

  def run(fn, *args):
    jax.clear_caches()
    try:
      with monkeypatch.context() as m:
        m.setenv("STN_JAX_NATIVE", "0")
        return fn(*args)
    finally:
      jax.clear_caches()

  return run

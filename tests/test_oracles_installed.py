"""The strongest oracles must not be lost silently to a missing install.

The PyTorch parity tests skip without torch (a user may run the suite without it), which
would let a test run pass with the parity matrix never checked. This test fails instead,
unless the run says on purpose that it goes without: ``STN_JAX_ALLOW_NO_TORCH=1``.
"""

import importlib.util
import os

import pytest


def test_pytorch_is_installed_for_the_parity_tests():
  if os.environ.get("STN_JAX_ALLOW_NO_TORCH") == "1":
    pytest.skip("STN_JAX_ALLOW_NO_TORCH=1: the PyTorch parity tests are skipped on purpose")
  assert importlib.util.find_spec("torch") is not None, (
    "PyTorch is not installed, so the ~90 PyTorch parity tests were skipped. Install the "
    'CPU build with the test extra (pip install -e ".[test]" torch==2.13.0), or set '
    "STN_JAX_ALLOW_NO_TORCH=1 to run without them on purpose."
  )

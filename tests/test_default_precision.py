"""Runs ``tests/x32/`` and the package's doctests at JAX's default precision (x64 off).

The rest of the suite enables float64 (``conftest.py``) for tight oracles; users do not. A
subprocess, because x64 is a process-wide setting that must not change under other tests.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_core_and_doctests_pass_with_x64_off():
  env = dict(os.environ, STN_JAX_TEST_X64="0")
  env.pop("JAX_ENABLE_X64", None)
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:nbmake", "-p", "no:cacheprovider"]
  cmd += ["--override-ini=addopts=--doctest-modules", "tests/x32", "stn_jax"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
  assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]

"""The compiled kernels under AddressSanitizer and UBSan (opt-in: ``STN_JAX_SANITIZE=1``).

``scripts/sanitize.sh`` builds ``csrc/`` with ``-fsanitize=address,undefined`` into a
directory of its own and runs the native, hostile-input and fuzz tests against that build;
it takes several minutes, so the default run skips it. Run it directly, or as
``STN_JAX_SANITIZE=1 pytest tests/test_sanitizers.py -n 0``.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from stn_jax._src import native

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
  os.environ.get("STN_JAX_SANITIZE") != "1", reason="opt-in: STN_JAX_SANITIZE=1 (minutes)"
)
def test_sanitizer_script_finds_no_report_and_no_mismatch(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, SANITIZE_DIR=str(tmp_path))
  env.pop("STN_JAX_SANITIZE")  # the script's own test run must not start it again
  run = subprocess.run(
    ["bash", str(ROOT / "scripts" / "sanitize.sh")],
    env=env,
    capture_output=True,
    text=True,
    timeout=3600,
  )
  output = run.stdout + run.stderr
  assert run.returncode == 0, f"scripts/sanitize.sh exited {run.returncode}:\n{output[-20000:]}"
  assert "OK: no sanitizer report" in output


@pytest.mark.skipif(
  not os.environ.get("STN_JAX_NATIVE_LIBRARY"), reason="runs under scripts/sanitize.sh"
)
def test_the_library_named_by_the_environment_is_the_one_loaded():
  # Without this, a script whose override silently failed would test the release build.
  path = os.path.realpath(os.environ["STN_JAX_NATIVE_LIBRARY"])
  assert native.available()
  maps = pathlib.Path("/proc/self/maps").read_text()
  assert path in maps, f"{path} is not mapped into this process"
  installed = [line for line in maps.splitlines() if "_bilinear_cpu." in line and path not in line]
  assert not installed, f"the installed library is loaded too: {installed[:1]}"

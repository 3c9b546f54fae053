"""The stn-jax console script, driven through subprocess on tiny settings."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(sys.executable), "stn-jax")
TINY = [
  "--task", "r", "--model", "st-cnn", "--steps", "6", "--batch-size", "8",
  "--checkpoint-every", "3", "--log-every", "2", "--test-copies", "1", "--no-progress",
]  # fmt: skip


def _run(*args, check=True):
  proc = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("full")
  _run("train", *TINY, "--out", str(out))
  return out


def test_train_writes_metrics_figure_and_checkpoints(full_run):
  metrics = json.loads((full_run / "metrics.json").read_text())
  assert metrics["config"]["steps"] == 6
  assert [h["step"] for h in metrics["history"]] == [2, 4, 6]
  assert 0.0 <= metrics["test_error"] <= 1.0 and metrics["num_test_images"] == 300
  assert (full_run / "transformer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(full_run / "checkpoints")) == ["3", "6"]


def test_evaluate_matches_training_metrics(full_run):
  proc = _run("evaluate", "--out", str(full_run))
  metrics = json.loads((full_run / "metrics.json").read_text())
  result = json.loads((full_run / "eval.json").read_text())
  assert result["test_error"] == metrics["test_error"]
  assert f"{100 * metrics['test_error']:.2f}%" in proc.stdout


def test_resume_matches_an_uninterrupted_run(full_run, tmp_path):
  out = str(tmp_path / "resumed")
  # Interrupted after step 4: the last checkpoint is step 3, so step 4 is redone.
  first = _run("train", *TINY, "--out", out, "--stop-after", "4")
  assert "continue with --resume" in first.stdout
  assert not os.path.exists(os.path.join(out, "metrics.json"))
  _run("train", *TINY, "--out", out, "--resume")
  resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
  full = json.loads((full_run / "metrics.json").read_text())
  assert resumed["resumed_from"] == 3
  assert resumed["history"] == full["history"]
  # The test loss is a function of every final parameter.
  assert resumed["test_loss"] == full["test_loss"]
  assert resumed["test_error"] == full["test_error"]


def _bad_cases(tmp):
  blocker = tmp / "a-file"
  blocker.write_text("")
  empty = tmp / "empty"
  empty.mkdir()
  return {
    "unknown task": (["train", "--task", "xyz"], "invalid choice: 'xyz'"),
    "unknown model": (["train", "--model", "mlp"], "invalid choice: 'mlp'"),
    "zero steps": (["train", "--steps", "0"], "expected a positive integer; got '0'"),
    "unwritable out": (
      ["train", *TINY, "--out", str(blocker / "run")],
      "cannot write to output folder",
    ),
    "missing data dir": (
      ["train", *TINY, "--out", str(tmp / "o1"), "--data-dir", str(tmp / "nope")],
      "does not exist",
    ),
    "data dir without files": (
      ["train", *TINY, "--out", str(tmp / "o2"), "--data-dir", str(empty)],
      "train-images-idx3-ubyte",
    ),
    "evaluate missing run": (["evaluate", "--out", str(tmp / "nope")], "does not exist"),
    "evaluate empty folder": (["evaluate", "--out", str(empty)], "no run in"),
    "no subcommand": ([], "required"),
  }


def test_bad_arguments_exit_2_with_one_line(tmp_path, full_run):
  cases = _bad_cases(tmp_path)
  cases["existing run without --resume"] = (
    ["train", *TINY, "--out", str(full_run)],
    "already holds a run",
  )
  # In parallel: each process pays the interpreter and JAX start-up.
  procs = {
    name: subprocess.Popen(
      [SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for name, (args, _) in cases.items()
  }
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (name, err)
    assert "Traceback" not in err, name
    assert len(err.strip().splitlines()) == 1, (name, err)
    assert cases[name][1] in err, (name, err)


def test_antialias_and_st_output_reach_the_config():
  from stn_jax.digits import cli

  config = cli._config(cli.build_parser().parse_args(["train", "--antialias", "--st-output", "14"]))
  assert config.antialias and config.st_output == 14
  default = cli._config(cli.build_parser().parse_args(["train"]))
  assert not default.antialias and default.st_output == 28


def test_python_dash_m():
  proc = subprocess.run(
    [sys.executable, "-m", "stn_jax", "--help"], capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0 and "demo" in proc.stdout


@pytest.mark.parametrize("missing", ["sklearn", "orbax.checkpoint"])
def test_a_missing_optional_dependency_names_its_extra(tmp_path, missing):
  # As after `pip install -e .` without extras: the module cannot be imported.
  code = (
    "import sys; sys.modules[sys.argv[1]] = None\n"
    "from stn_jax.digits.cli import main\n"
    "sys.exit(main(['demo', '--out', sys.argv[2], '--no-progress']))"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code, missing, str(tmp_path / "demo")],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  distribution = {"sklearn": "scikit-learn", "orbax.checkpoint": "orbax-checkpoint"}[missing]
  assert f"needs {distribution}" in lines[0] and "pip install 'stn_jax[demo]'" in lines[0]
  assert not (tmp_path / "demo").exists()  # nothing started


# Frees and re-allocates a 96 MiB block 8 times and prints the minor page faults of the
# last 7 rounds: glibc's default returns the block to the OS on free (an mmap'd chunk), so
# each round faults its ~24,600 pages in again; after keep_freed_memory() it reuses them.
_FAULTS = """
import ctypes, resource, sys
from stn_jax.digits import cli
print("took", cli.keep_freed_memory() if sys.argv[1] == "1" else None)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 96 << 20
for i in range(8):
  if i == 1:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_large_blocks():
  def faults(keep: bool) -> int:
    out = subprocess.run(
      [sys.executable, "-c", _FAULTS, "1" if keep else "0"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.split()
    if keep:
      assert out[1] == "True", out  # glibc took every setting
    return int(out[-1])

  pages = 7 * (96 << 20) // 4096
  assert faults(keep=False) > 0.9 * pages  # the default: every round faults the block in
  assert faults(keep=True) < 0.05 * pages  # kept: the block's pages are reused

"""Faults in the training job: SIGKILL part-way, a full disk, a broken checkpoint, reruns.

The CLI runs are real subprocesses sharing a persistent compilation cache, so only the
first pays for XLA compilation.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from stn_jax.digits import train

SCRIPT = os.path.join(os.path.dirname(sys.executable), "stn-jax")
ARGS = [
  "--task", "r", "--model", "st-cnn", "--steps", "12", "--batch-size", "16",
  "--checkpoint-every", "3", "--log-every", "2", "--test-copies", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  env.pop("JAX_ENABLE_X64", None)
  return env


def _train(env, *args):
  proc = subprocess.run(
    [SCRIPT, "train", *ARGS, *args], capture_output=True, text=True, timeout=300, env=env
  )
  assert proc.returncode == 0, proc.stderr
  return proc


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
  out = tmp_path_factory.mktemp("uninterrupted")
  _train(env, "--out", str(out))
  return out


def _steps(checkpoints):
  # Orbax renames a checkpoint's temporary folder to the bare step number once it is whole.
  if not checkpoints.exists():
    return []
  return sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())


def _params(checkpoint):
  import orbax.checkpoint as ocp

  path = os.fspath(checkpoint / "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = ckptr.restore(path, restore_args=as_numpy)
  return jax.tree.leaves(state["params"])


def _metrics(out):
  return json.loads((out / "metrics.json").read_text())


def test_sigkill_then_resume_equals_an_uninterrupted_run(env, reference, tmp_path):
  out = tmp_path / "killed"
  checkpoints = out / "checkpoints"
  proc = subprocess.Popen(
    [SCRIPT, "train", *ARGS, "--out", str(out)], env=env, stdout=subprocess.DEVNULL
  )
  deadline = time.monotonic() + 240
  while not _steps(checkpoints):
    assert proc.poll() is None, "the run ended before its first checkpoint"
    assert time.monotonic() < deadline
    time.sleep(0.005)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  at_kill = _steps(checkpoints)
  assert at_kill and at_kill[-1] < 12 and not (out / "metrics.json").exists()

  # What a kill in the middle of the next save leaves behind: orbax's temporary folder.
  partial = checkpoints / f"{at_kill[-1] + 3}.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True, exist_ok=True)
  (partial / "state" / "garbage").write_bytes(b"\0" * 10)

  _train(env, "--out", str(out), "--resume")
  resumed, full = _metrics(out), _metrics(reference)
  assert resumed["resumed_from"] == at_kill[-1]
  assert resumed["history"] == full["history"]
  assert resumed["test_loss"] == full["test_loss"]
  assert resumed["test_error"] == full["test_error"]
  final = _params(reference / "checkpoints" / "12")
  for a, b in zip(_params(checkpoints / "12"), final, strict=True):
    np.testing.assert_array_equal(a, b)
  assert not partial.exists()


def _fails_in_one_line(proc):
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  (line,) = proc.stderr.strip().splitlines()
  return line


def test_broken_checkpoint_fails_resume_in_one_line(env, reference, tmp_path):
  out = tmp_path / "broken"
  shutil.copytree(reference, out)
  # A finalized-looking checkpoint whose arrays are gone (a disk fault, a bad copy).
  shutil.rmtree(out / "checkpoints" / "12" / "state")
  proc = subprocess.run(
    [SCRIPT, "train", *ARGS, "--out", str(out), "--resume"],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  line = _fails_in_one_line(proc)
  assert line.startswith("stn-jax train: error: cannot read checkpoint")
  assert "checkpoints/12" in line and "delete that folder" in line


# The CLI with orbax's JSON write failing as a full disk does, from the second save on.
FULL_DISK = r"""
import errno, os, sys
from orbax.checkpoint import handlers
from stn_jax.digits import cli

save_fn = handlers.JsonCheckpointHandler._save_fn
calls = []

async def disk_full_on_second_save(self, x, directory):
  calls.append(directory)
  if len(calls) > 1:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
  return await save_fn(self, x, directory)

handlers.JsonCheckpointHandler._save_fn = disk_full_on_second_save
sys.exit(cli.main())  # argv from sys.argv, as the console script
"""


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(env, reference, tmp_path):
  out = tmp_path / "full"
  proc = subprocess.run(
    [sys.executable, "-c", FULL_DISK, "train", *ARGS, "--out", str(out)],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  line = _fails_in_one_line(proc)
  assert line.startswith("stn-jax train: error: cannot write checkpoint 6")
  assert "No space left on device" in line and "checkpoint 3 is intact" in line
  assert _steps(out / "checkpoints") == [3]
  # The earlier checkpoint still restores.
  params = _params(out / "checkpoints" / "3")
  assert len(params) == len(_params(reference / "checkpoints" / "12"))
  assert all(np.isfinite(p).all() for p in params)


def test_same_seed_same_results(tmp_path):
  config = train.Config(
    task="r", model="st-cnn", steps=6, batch_size=8, checkpoint_every=2, log_every=1
  )
  runs = [
    train.train_and_evaluate(config, str(tmp_path / name), stop_after=4, progress=False)
    for name in ("a", "b")
  ]
  assert runs[0]["history"] == runs[1]["history"] and len(runs[0]["history"]) == 4
  a, b = (_params(tmp_path / name / "checkpoints" / "4") for name in ("a", "b"))
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)

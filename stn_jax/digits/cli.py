"""The ``stn-jax`` command line: ``train``, ``evaluate`` and ``demo``.

A thin layer over :mod:`stn_jax.digits.train`. Mistakes a person can fix (a bad option, an
unwritable output folder, missing data, a missing optional dependency) end with one line on
stderr and exit code 2.
"""

import argparse
import ctypes
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from stn_jax._src import validation
from stn_jax._src.validation import DATA_PARALLEL, TRANSFORMS
from stn_jax.digits import datasets
from stn_jax.digits.models import MODELS

DEFAULT_OUT = os.path.join(".", "stn_out")

# The demo: RTS, both models at batch 128, about 2 and 3 minutes of training on a quiet 2-core
# CPU (the ST-CNN's CNN sees 28x28 views, so it runs ~1.4x more steps per second): 6.0 minutes
# in all, about 9 for the README command with its install.
DEMO_STEPS = {"cnn": 1200, "st-cnn": 2500}


# The optional dependencies each command imports, as (module, distribution, extra).
_DEMO_EXTRA = (
  ("orbax.checkpoint", "orbax-checkpoint", "demo"),
  ("tqdm", "tqdm", "demo"),
  ("matplotlib", "matplotlib", "demo"),
  ("sklearn", "scikit-learn", "demo"),
)
REQUIREMENTS = {"train": _DEMO_EXTRA, "evaluate": _DEMO_EXTRA, "demo": _DEMO_EXTRA}


class UsageError(Exception):
  """A mistake in the command line or its environment, reported in one line (exit 2)."""

  # Set when a checkpoint write failed part-way: see main().
  exit_at_once = False


class MissingDependencyError(UsageError):
  """An optional dependency of a command is not installed; the message names its extra."""

  def __init__(self, distribution: str, extra: str):
    super().__init__(
      f"this command needs {distribution}, which is not installed; install the "
      f"{extra!r} extra: pip install 'stn_jax[{extra}]' (from a checkout: pip install -e "
      f"'.[{extra}]')."
    )


def check_requirements(command: str) -> None:
  """Raises :class:`MissingDependencyError` for the first missing dependency of ``command``."""
  for module, distribution, extra in REQUIREMENTS.get(command, ()):
    try:
      found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
      found = False
    if not found:
      raise MissingDependencyError(distribution, extra)


def _missing_dependency(e: ModuleNotFoundError) -> MissingDependencyError | None:
  top = (e.name or "").partition(".")[0]
  for module, distribution, extra in _DEMO_EXTRA:
    if module.partition(".")[0] == top:
      return MissingDependencyError(distribution, extra)
  return None


class _Parser(argparse.ArgumentParser):
  # argparse prints the usage block too; one line is easier to act on in scripts and logs.
  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
  return value


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
    prog="stn-jax", description="Spatial Transformer Networks on distorted digits (JAX/Flax)."
  )
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  train = sub.add_parser("train", help="train one model; writes metrics, a figure, checkpoints")
  train.add_argument(
    "--task", choices=datasets.TASKS, default="rts", help="distortion (default rts)"
  )
  train.add_argument("--model", choices=MODELS, default="st-cnn", help="default st-cnn")
  train.add_argument("--transform", choices=TRANSFORMS, default="affine", help="default affine")
  train.add_argument(
    "--st-output", type=_positive, default=28, help="side of the transformer's view (default 28)"
  )
  train.add_argument(
    "--antialias",
    action="store_true",
    help="the transformer samples with antialias=True (st- models; matters when it zooms out)",
  )
  train.add_argument("--steps", type=_positive, default=2000, help="default 2000")
  train.add_argument("--batch-size", type=_positive, default=128, help="default 128")
  train.add_argument(
    "--lr", type=_positive_float, default=None, help="peak learning rate (default: tuned per model)"
  )
  train.add_argument(
    "--loc-lr-scale", type=_positive_float, default=0.3, help="transformer LR / LR (default 0.3)"
  )
  train.add_argument("--seed", type=int, default=0, help="init and batch order (default 0)")
  train.add_argument("--data-seed", type=int, default=0, help="test-set distortions (default 0)")
  train.add_argument("--test-copies", type=_positive, default=10, help="distortions per test digit")
  train.add_argument("--checkpoint-every", type=_positive, default=500, help="default 500")
  train.add_argument("--log-every", type=_positive, default=50, help="default 50")
  train.add_argument(
    "--out", default=None, help=f"output folder (default {DEFAULT_OUT}/TASK-MODEL)"
  )
  train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
  train.add_argument(
    "--data-dir", default=None, help="local MNIST IDX files instead of bundled digits"
  )
  train.add_argument("--no-progress", action="store_true", help="no progress bar")
  train.add_argument(
    "--data-parallel",
    choices=DATA_PARALLEL,
    default="auto",
    help="split each batch over all devices with jax.sharding (auto: when there are several)",
  )
  # Simulates an interruption after N steps (for testing --resume).
  train.add_argument("--stop-after", type=_positive, default=None, help=argparse.SUPPRESS)

  evaluate = sub.add_parser("evaluate", help="score the last checkpoint of a run on its test set")
  evaluate.add_argument("--out", required=True, help="the run's output folder")

  demo = sub.add_parser("demo", help="CNN vs ST-CNN on RTS in a few minutes")
  demo.add_argument("--out", default=os.path.join(DEFAULT_OUT, "demo"), help="output folder")
  demo.add_argument("--seed", type=int, default=0, help="default 0")
  demo.add_argument("--cnn-steps", type=_positive, default=DEMO_STEPS["cnn"])
  demo.add_argument("--st-steps", type=_positive, default=DEMO_STEPS["st-cnn"])
  demo.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser


def _writable_dir(path: str) -> str:
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"cannot write to output folder {path!r}: {e.strerror or e}") from None
  return path


def _check_data_dir(path: str | None) -> None:
  if path is None:
    return
  try:
    datasets.find_mnist_files(path)
  except FileNotFoundError as e:
    raise UsageError(str(e)) from None


def _config(args: argparse.Namespace):
  from stn_jax.digits import train

  try:
    return train.Config(
      task=args.task,
      model=args.model,
      transform=args.transform,
      st_output=args.st_output,
      antialias=args.antialias,
      steps=args.steps,
      batch_size=args.batch_size,
      lr=args.lr,
      loc_lr_scale=args.loc_lr_scale,
      seed=args.seed,
      data_seed=args.data_seed,
      test_copies=args.test_copies,
      checkpoint_every=args.checkpoint_every,
      log_every=args.log_every,
      data_dir=None if args.data_dir is None else os.path.abspath(args.data_dir),
    )
  except ValueError as e:
    raise UsageError(str(e)) from None


def _mesh_check(mode: str, batch_size: int) -> None:
  from stn_jax.digits import train

  devices = train.mesh_devices(mode)
  if devices is not None:
    try:
      validation.check_batch_divides(batch_size, devices, switch_off="--data-parallel off")
    except ValueError as e:
      raise UsageError(str(e)) from None


def _run(
  config,
  out: str,
  *,
  resume: bool,
  progress: bool,
  stop_after=None,
  data=None,
  data_parallel: str = "auto",
) -> dict:
  from stn_jax.digits import train

  try:
    return train.train_and_evaluate(
      config,
      out,
      resume=resume,
      stop_after=stop_after,
      progress=progress,
      data=data,
      data_parallel=data_parallel,
    )
  except FileExistsError as e:
    raise UsageError(str(e)) from None
  except train.CheckpointError as e:
    error = UsageError(str(e))
    error.exit_at_once = isinstance(e, train.CheckpointWriteError)
    raise error from None
  except OSError as e:
    # A full disk or a folder that became unwritable while writing results.
    where = f" {e.filename!r}" if e.filename else ""
    raise UsageError(f"cannot write{where}: {e.strerror or e}") from None


def _print_result(out: str, metrics: dict) -> None:
  print(
    f"{metrics['config']['model']} on {metrics['config']['task']}: test error "
    f"{100 * metrics['test_error']:.2f}% ({metrics['test_wrong']}/{metrics['num_test_images']})"
    f" ; results in {out}"
  )


def cmd_train(args: argparse.Namespace) -> int:
  out = args.out or os.path.join(DEFAULT_OUT, f"{args.task}-{args.model}")
  config = _config(args)
  _mesh_check(args.data_parallel, config.batch_size)
  _writable_dir(out)
  _check_data_dir(config.data_dir)
  metrics = _run(
    config,
    out,
    resume=args.resume,
    progress=not args.no_progress,
    stop_after=args.stop_after,
    data_parallel=args.data_parallel,
  )
  if "stopped_at" in metrics:
    print(f"stopped after step {metrics['stopped_at']}; continue with --resume ({out})")
  else:
    _print_result(out, metrics)
  return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
  from stn_jax.digits import train

  if not os.path.isdir(args.out):
    raise UsageError(f"output folder {args.out!r} does not exist.")
  try:
    config = train.read_config(args.out)
    _check_data_dir(config.data_dir)
    result = train.evaluate_workdir(args.out)
  except (FileNotFoundError, train.CheckpointError) as e:
    raise UsageError(str(e)) from None
  print(
    f"step {result['step']}/{result['steps']}: test error {100 * result['test_error']:.2f}% "
    f"({result['test_wrong']}/{result['num_test_images']}), test loss {result['test_loss']:.4f}"
  )
  return 0


def cmd_demo(args: argparse.Namespace) -> int:
  from stn_jax.digits import train

  out = _writable_dir(args.out)
  start = time.perf_counter()
  results = {}
  data = None
  for model, steps in (("cnn", args.cnn_steps), ("st-cnn", args.st_steps)):
    config = train.Config(task="rts", model=model, steps=steps, seed=args.seed)
    if data is None:
      print("generating the RTS test set (held-out digits, 10 distortions each) ...", flush=True)
      data = train.load_data(config)
    # Resuming makes a rerun of the demo continue (or just re-score) earlier runs.
    metrics = _run(
      config, os.path.join(out, model), resume=True, progress=not args.no_progress, data=data
    )
    results[model] = {
      "test_error": metrics["test_error"],
      "test_wrong": metrics["test_wrong"],
      "num_test_images": metrics["num_test_images"],
      "steps": steps,
      "lr": config.peak_lr,
      "steps_per_second": metrics["steps_per_second"],
    }
  wall = time.perf_counter() - start
  summary = {"task": "rts", "seed": args.seed, "results": results, "wall_seconds": wall}
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)

  print(f"\nRTS (42x42 canvas), held-out digits, {results['cnn']['num_test_images']} test images")
  print(f"{'model':8} {'steps':>6} {'steps/s':>8} {'test error':>11}")
  for model, r in results.items():
    sps = "-" if r["steps_per_second"] is None else f"{r['steps_per_second']:.1f}"
    print(f"{model:8} {r['steps']:>6} {sps:>8} {100 * r['test_error']:>10.2f}%")
  better = results["st-cnn"]["test_error"] < results["cnn"]["test_error"]
  print(
    f"ST-CNN {'beats' if better else 'does not beat'} the CNN; wall time {wall:.0f} s; "
    f"figures, metrics and checkpoints in {out}"
  )
  return 0


def keep_freed_memory() -> bool:
  """Asks glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

  A training step allocates and frees the same large buffers every time (the convolutions'
  patch matrices reach 130 MB at batch 128). glibc serves such blocks with fresh ``mmap``
  calls: above its mmap threshold (at most 32 MiB by default) and, for XLA's worker
  threads, above the 64 MiB heaps of their per-thread arenas. It returns them on free, so
  every step page-faults its buffers in again: 17.5 million minor faults and 40% of the
  CPU time in the kernel over 900 demo steps, measured. One arena, a 1 GiB threshold and
  no trimming below 1 GiB cut that to 0.4 million faults; the CNN then trains 1.7x and the
  ST-CNN 1.5x faster, with the same results, for about 0.5 GB more resident memory. Only
  the CLI calls this (the process is ours): a library must not change its host's allocator.
  Returns whether glibc took every setting (``False`` elsewhere: no ``mallopt``).
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # glibc's malloc.h: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3, M_ARENA_MAX -8.
  settings = ((-8, 1), (-3, 1 << 30), (-1, 1 << 30), (-2, 64 << 20))
  return all(mallopt(option, value) == 1 for option, value in settings)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``stn-jax`` console script; returns the exit code."""
  args = build_parser().parse_args(argv)
  keep_freed_memory()
  # Orbax logs a failed save's traceback through absl at ERROR level; the CLI reports the
  # failure itself, in one line.
  logging.getLogger("absl").setLevel(logging.CRITICAL)
  command = {"train": cmd_train, "evaluate": cmd_evaluate, "demo": cmd_demo}[args.command]
  try:
    check_requirements(args.command)
    try:
      return command(args)
    except ModuleNotFoundError as e:
      # A dependency found by check_requirements but broken, or one imported lazily.
      raise _missing_dependency(e) or e from None
  except UsageError as e:
    print(f"stn-jax {args.command}: error: {e}", file=sys.stderr)
    if e.exit_at_once and argv is None:
      # Run as the program: a save that failed part-way leaves orbax's tensorstore writes
      # in flight on a closed event loop, which print tracebacks at interpreter shutdown.
      # Nothing of ours is pending (results are written atomically), so end here.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(2)
    return 2
  except KeyboardInterrupt:
    print(f"stn-jax {args.command}: interrupted", file=sys.stderr)
    return 130

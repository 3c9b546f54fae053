"""Reproduces the STN paper's Table 1 (distorted digits) with stn_jax.digits.train.

A script, not part of the test run. See benchmarks/README.md.

  python benchmarks/paper_table1.py --budget quick     # CNN, ST-CNN Aff/Proj/TPS; R RTS P E
  python benchmarks/paper_table1.py --budget full      # every model, R RTS P E TC, 3 seeds
  python benchmarks/paper_table1.py --budget toy --tasks p --models cnn,st-cnn-affine

Every cell (task, model, seed) is one :func:`stn_jax.digits.train.train_and_evaluate` run in
``OUT/cells/<task>/<model>/seed<k>/``. A cell whose ``metrics.json`` holds a test error is
skipped, and one killed part-way resumes from its last checkpoint, so rerunning the same
command after an interruption redoes nothing that was finished. ``OUT/table1.md`` and
``OUT/table1.json`` are rewritten from every finished cell on disk after each cell, and
``OUT/figure_<task>.png`` once a task's cells are done.
"""

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from machine import cpu_model  # benchmarks/machine.py, beside this script

from stn_jax.digits import cli, datasets, train

# Optimisation steps per model family and budget, batch 128 (train.Config's default).
# Measured on the 2-core CPU (steps/s, 28x28 tasks / RTS): CNN 20-21 / 7.6, ST-CNN 11-18 /
# 11-14 (TPS fastest, projective slowest). With ~10 s per cell for compiling and scoring
# 3000 test images, the quick grid (32 cells) took 45 minutes at 1000 / 1200 steps. The
# full grid (120 cells) runs overnight.
BUDGETS: dict[str, dict[str, Any]] = {
  "toy": {
    "steps": {"cnn": 3, "fcn": 3, "st-cnn": 3, "st-fcn": 3},
    "tasks": ("p",),
    "models": ("cnn", "st-cnn-affine"),
    "seeds": 1,
  },
  "quick": {
    "steps": {"cnn": 1000, "fcn": 1000, "st-cnn": 1200, "st-fcn": 1200},
    "tasks": ("r", "rts", "p", "e"),
    "models": ("cnn", "st-cnn-affine", "st-cnn-projective", "st-cnn-tps"),
    "seeds": 2,
  },
  "full": {
    "steps": {"cnn": 3000, "fcn": 3000, "st-cnn": 4500, "st-fcn": 4500},
    "tasks": ("r", "rts", "p", "e", "tc"),
    "models": (
      "fcn",
      "cnn",
      "st-fcn-affine",
      "st-fcn-projective",
      "st-fcn-tps",
      "st-cnn-affine",
      "st-cnn-projective",
      "st-cnn-tps",
    ),
    "seeds": 3,
  },
}

# The grid's model names in the paper's row order, and the rows' labels.
ROWS = {
  "fcn": "FCN",
  "cnn": "CNN",
  "st-fcn-affine": "ST-FCN Aff",
  "st-fcn-projective": "ST-FCN Proj",
  "st-fcn-tps": "ST-FCN TPS",
  "st-cnn-affine": "ST-CNN Aff",
  "st-cnn-projective": "ST-CNN Proj",
  "st-cnn-tps": "ST-CNN TPS",
}
COLUMNS = {"r": "R", "rts": "RTS", "p": "P", "e": "E", "tc": "TC"}
PAPER_TASKS = ("r", "rts", "p", "e")

# Jaderberg et al. 2015, Table 1: % test error on distorted 28x28 MNIST. For the 60x60
# translated-cluttered task the paper gives CNN 3.5% and ST-CNN 1.7% (shown on the Aff row).
PAPER = {
  "FCN": {"r": 2.1, "rts": 5.2, "p": 3.1, "e": 3.2},
  "CNN": {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 1.4, "tc": 3.5},
  "ST-FCN Aff": {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 2.7},
  "ST-FCN Proj": {"r": 1.3, "rts": 0.9, "p": 1.4, "e": 2.6},
  "ST-FCN TPS": {"r": 1.1, "rts": 0.8, "p": 1.4, "e": 2.4},
  "ST-CNN Aff": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.2, "tc": 1.7},
  "ST-CNN Proj": {"r": 0.8, "rts": 0.6, "p": 0.8, "e": 1.3},
  "ST-CNN TPS": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.1},
}

# Distortions per held-out digit: 300 bundled test digits x 10 = 3000 test images (one
# error = 0.033%); MNIST's 10,000 test digits x 1.
TEST_COPIES = {"bundled": 10, "mnist": 1}

SPREAD = "half the range, (max - min) / 2"
TIMING_FILE = "timing.json"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "paper_table1")


def parse_model(name: str) -> tuple[str, str]:
  """A grid model name to ``(train.Config.model, transform)``.

  >>> parse_model("st-cnn-tps"), parse_model("fcn")
  (('st-cnn', 'tps'), ('fcn', 'affine'))
  """
  if name not in ROWS:
    raise ValueError(f"unknown model {name!r}; expected one of {tuple(ROWS)}.")
  if name.startswith("st-"):
    model, transform = name.rsplit("-", 1)
    return model, transform
  # Plain models have no transformer; Config's default transform is recorded and unused.
  return name, "affine"


def make_config(budget: str, task: str, name: str, seed: int, data_dir: str | None = None):
  """The :class:`stn_jax.digits.train.Config` of one cell."""
  model, transform = parse_model(name)
  return train.Config(
    task=task,
    model=model,
    transform=transform,
    steps=BUDGETS[budget]["steps"][model],
    seed=seed,
    data_seed=0,
    test_copies=TEST_COPIES["bundled" if data_dir is None else "mnist"],
    data_dir=None if data_dir is None else os.path.abspath(data_dir),
  )


def cell_dir(out: str, task: str, name: str, seed: int) -> str:
  return os.path.join(out, "cells", task, name, f"seed{seed}")


def read_finished(workdir: str) -> dict[str, Any] | None:
  """The cell's metrics if it finished (``metrics.json`` with a test error), else ``None``."""
  try:
    with open(os.path.join(workdir, train.METRICS_FILE)) as f:
      metrics = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  return metrics if isinstance(metrics.get("test_error"), int | float) else None


def machine_info() -> dict[str, Any]:
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {
    "platform": platform.platform(),
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "usable_cpus": usable,
    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
  }


def collect(out: str) -> dict[str, dict[str, dict[str, Any]]]:
  """Every finished cell on disk: ``{task: {model: {"seeds": {seed: result}, ...}}}``."""
  results: dict[str, dict[str, dict[str, Any]]] = {}
  root = os.path.join(out, "cells")
  for task in COLUMNS:
    for name in ROWS:
      base = os.path.join(root, task, name)
      if not os.path.isdir(base):
        continue
      seeds = {}
      for entry in sorted(os.listdir(base)):
        if not entry.startswith("seed") or not entry[4:].isdigit():
          continue
        metrics = read_finished(os.path.join(base, entry))
        if metrics is None:
          continue
        timing = {}
        timing_path = os.path.join(base, entry, TIMING_FILE)
        if os.path.isfile(timing_path):
          with open(timing_path) as f:
            timing = json.load(f)
        seeds[int(entry[4:])] = {
          "test_error": metrics["test_error"],
          "test_wrong": metrics["test_wrong"],
          "num_test_images": metrics["num_test_images"],
          "steps": metrics["config"]["steps"],
          "lr": metrics["config"]["lr"] or train.DEFAULT_LR[metrics["config"]["model"]],
          "steps_per_second": metrics["steps_per_second"],
          "wall_seconds": timing.get("wall_seconds"),
          "resumed_from": metrics["resumed_from"],
        }
      if seeds:
        errors = np.array([seeds[s]["test_error"] for s in sorted(seeds)])
        rates = [r["steps_per_second"] for r in seeds.values() if r["steps_per_second"]]
        results.setdefault(task, {})[name] = {
          "row": ROWS[name],
          "seeds": {str(s): seeds[s] for s in sorted(seeds)},
          "mean": float(errors.mean()),
          "spread": float(errors.max() - errors.min()) / 2,
          "std": float(errors.std(ddof=1)) if len(errors) > 1 else 0.0,
          "steps": sorted({r["steps"] for r in seeds.values()}),
          "steps_per_second": float(np.mean(rates)) if rates else None,
        }
  return results


def _percent(cell: dict[str, Any] | None, seeds: int) -> str:
  if cell is None:
    return "-"
  text = f"{100 * cell['mean']:.2f} ± {100 * cell['spread']:.2f}"
  n = len(cell["seeds"])
  return text if n == seeds else f"{text} (n={n})"


def markdown(results: dict[str, Any], seeds: int, budget: str, header: dict[str, Any]) -> str:
  """The table in the paper's layout, then the paper's numbers."""
  tasks = list(PAPER_TASKS) + (["tc"] if "tc" in results else [])
  head = "| model | " + " | ".join(COLUMNS[t] for t in tasks) + " |"
  rule = "|---|" + "---|" * len(tasks)
  ours = [head, rule]
  for name, row in ROWS.items():
    cells = [_percent(results.get(t, {}).get(name), seeds) for t in tasks]
    ours.append(f"| {row} | " + " | ".join(cells) + " |")
  paper = [head, rule]
  for row in ROWS.values():
    values = [PAPER[row].get(t) for t in tasks]
    paper.append(f"| {row} | " + " | ".join("-" if v is None else f"{v}" for v in values) + " |")
  steps = {
    family: sorted({s for t in results.values() for n, c in t.items()
                    if parse_model(n)[0] == family for s in c["steps"]})
    for family in ("fcn", "cnn", "st-fcn", "st-cnn")
  }  # fmt: skip
  steps_text = ", ".join(f"{k.upper()} {'/'.join(map(str, v))}" for k, v in steps.items() if v)
  data = header["data"]
  machine = header["machine"]
  lines = [
    "# STN paper, Table 1: % test error on distorted digits",
    "",
    f"Budget `{budget}`; each cell is the mean ± {SPREAD}, over {seeds} seeds "
    "(`(n=k)` where a different number finished) of the % test error on a fixed test set of "
    f"{data}. Steps (batch 128, AdamW with warmup and cosine decay): {steps_text or '-'}. "
    f"Total training wall time {header['wall_seconds'] / 60:.1f} min on {machine['cpu_model']}"
    f" ({machine['usable_cpus']} usable CPUs, JAX {machine['jax']}, {machine['backend']}).",
    "",
    *ours,
    "",
    "Jaderberg et al. 2015, Table 1 (28x28 MNIST; TC is 60x60 translated-cluttered MNIST, "
    "where the paper gives CNN and ST-CNN only), % test error:",
    "",
    *paper,
    "",
  ]
  return "\n".join(lines)


def _runs(results: dict[str, Any]) -> list[dict[str, Any]]:
  """Every seed's result in :func:`collect`'s output."""
  return [r for t in results.values() for c in t.values() for r in c["seeds"].values()]


def _data_description(results: dict[str, Any], data_dir: str | None) -> str:
  sizes = sorted({r["num_test_images"] for r in _runs(results)})
  n = "/".join(map(str, sizes)) or "?"
  if data_dir is None:
    return (
      f"{n} images per task (scikit-learn's {datasets.NUM_TEST_DIGITS} held-out 8x8 digits "
      "upscaled to 28x28, distorted 10 times each)"
    )
  return f"{n} images per task (MNIST test digits from {data_dir})"


def write_table(
  out: str, *, budget: str, seeds: int, data_dir: str | None, machine: dict[str, Any]
) -> dict[str, Any]:
  """Rewrites ``table1.md`` and ``table1.json`` from every finished cell under ``out``."""
  results = collect(out)
  wall = sum(r["wall_seconds"] or 0.0 for r in _runs(results))
  header = {"data": _data_description(results, data_dir), "machine": machine, "wall_seconds": wall}
  table = {
    row: {t: _percent(results.get(t, {}).get(name), seeds) for t in COLUMNS if t in results}
    for name, row in ROWS.items()
  }
  report = {
    "budget": budget,
    "budget_steps": BUDGETS[budget]["steps"],
    "seeds": seeds,
    "spread": SPREAD,
    "units": "test_error, mean, spread and std are fractions; table holds percent",
    "data": header["data"],
    "data_dir": data_dir,
    "wall_seconds": wall,
    "machine": machine,
    "results": results,
    "table": table,
    "paper": PAPER,
  }
  text = markdown(results, seeds, budget, header)
  for name, content in (("table1.json", json.dumps(report, indent=2)), ("table1.md", text)):
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w") as f:
      f.write(content)
    os.replace(tmp, os.path.join(out, name))
  return report


def figure_inputs(test_images: np.ndarray, test_labels: np.ndarray) -> tuple[np.ndarray, ...]:
  """Fixed figure inputs: the first test image of each class, in class order."""
  index = [int(np.flatnonzero(test_labels == c)[0]) for c in np.unique(test_labels)]
  return test_images[index], test_labels[index]


def write_figure(out: str, task: str, names: Sequence[str], test: dict[str, np.ndarray]) -> str:
  """``OUT/figure_<task>.png``: inputs, then each finished ST model's output (seed 0)."""
  import jax.numpy as jnp
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  images, labels = figure_inputs(test["test_images"], test["test_labels"])
  rows = [("input", images[..., 0], None)]
  for name in names:
    workdir = cell_dir(out, task, name, 0)
    if not name.startswith("st-") or read_finished(workdir) is None:
      continue
    model, _ = train.restore_model(workdir)
    logits, V = model(jnp.asarray(images))
    rows.append((ROWS[name], np.asarray(V[..., 0]), np.asarray(jnp.argmax(logits, axis=-1))))
  cols = len(images)
  fig, axes = plt.subplots(
    len(rows), cols, figsize=(1.1 * cols + 0.8, 1.25 * len(rows)), squeeze=False
  )
  for i, (label, pictures, predictions) in enumerate(rows):
    for j in range(cols):
      ax = axes[i, j]
      ax.imshow(pictures[j], cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if predictions is None:
        ax.set_title(str(labels[j]), fontsize=8)
      else:
        wrong = predictions[j] != labels[j]
        ax.set_title(f"-> {predictions[j]}", fontsize=7, color="red" if wrong else "black")
    axes[i, 0].set_ylabel(label, fontsize=8)
  fig.suptitle(f"{COLUMNS[task]}: test inputs and transformer outputs (seed 0)", fontsize=9)
  fig.tight_layout()
  path = os.path.join(out, f"figure_{task}.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run_grid(
  out: str,
  budget: str = "quick",
  tasks: Sequence[str] | None = None,
  models: Sequence[str] | None = None,
  seeds: int | None = None,
  *,
  data_dir: str | None = None,
  progress: bool = True,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Trains every unfinished cell of the grid into ``out`` and writes the table and figures.

  Args:
    out: output folder; cells go to ``out/cells/<task>/<model>/seed<k>/``.
    budget: a key of :data:`BUDGETS`; it also gives the default tasks, models and seeds.
    tasks: subset of :data:`stn_jax.digits.datasets.TASKS`.
    models: names from :data:`ROWS` (``"cnn"``, ``"st-cnn-affine"``, ...).
    seeds: seeds ``0 .. seeds - 1`` per cell.
    data_dir: MNIST IDX files instead of the bundled digits.
    progress: tqdm bars while training.
    log: receives one line per cell.

  Returns:
    The ``table1.json`` report, plus ``"trained"`` and ``"skipped"``: the
    ``(task, model, seed)`` cells this call trained (or resumed) and found finished.

  Raises:
    ValueError: an unknown budget, task or model, or a finished cell trained with other
      settings (another budget in the same ``out``).
  """
  if budget not in BUDGETS:
    raise ValueError(f"unknown budget {budget!r}; expected one of {tuple(BUDGETS)}.")
  spec = BUDGETS[budget]
  tasks = tuple(spec["tasks"] if tasks is None else tasks)
  models = tuple(spec["models"] if models is None else models)
  seeds = spec["seeds"] if seeds is None else seeds
  for task in tasks:
    if task not in datasets.TASKS:
      raise ValueError(f"unknown task {task!r}; expected one of {datasets.TASKS}.")
  for name in models:
    parse_model(name)
  if seeds < 1:
    raise ValueError(f"seeds must be >= 1; got {seeds}.")
  os.makedirs(out, exist_ok=True)
  machine = machine_info()
  cells = [(t, m, s) for t in tasks for m in models for s in range(seeds)]
  trained, skipped = [], []
  for task in tasks:
    data = None
    for name in models:
      for seed in range(seeds):
        k = len(trained) + len(skipped) + 1
        prefix = f"[{k}/{len(cells)}] {COLUMNS[task]:>3} {name:<17} seed {seed}"
        config = make_config(budget, task, name, seed, data_dir)
        workdir = cell_dir(out, task, name, seed)
        metrics = read_finished(workdir)
        if metrics is not None:
          if metrics["config"] != config.to_json():
            expected = config.to_json()
            changed = [f for f, v in expected.items() if metrics["config"].get(f) != v]
            raise ValueError(
              f"{workdir} finished with other settings ({', '.join(changed)}); expected this "
              "budget's. Use another --out or delete that cell."
            )
          skipped.append((task, name, seed))
          log(f"{prefix}: done before, {100 * metrics['test_error']:.2f}%")
          continue
        if data is None:
          data = train.load_data(config)
        tick = time.perf_counter()
        metrics = train.train_and_evaluate(
          config, workdir, resume=True, data=data, progress=progress, data_parallel="off"
        )
        wall = time.perf_counter() - tick
        with open(os.path.join(workdir, TIMING_FILE), "w") as f:
          json.dump({"wall_seconds": wall, "resumed_from": metrics["resumed_from"]}, f)
        trained.append((task, name, seed))
        sps = metrics["steps_per_second"]
        rate = "-" if sps is None else f"{sps:.1f}"
        log(
          f"{prefix}: {100 * metrics['test_error']:.2f}% "
          f"({metrics['test_wrong']}/{metrics['num_test_images']}), {config.steps} steps "
          f"from {metrics['resumed_from']}, {rate} steps/s, {wall:.0f} s"
        )
        report = write_table(out, budget=budget, seeds=seeds, data_dir=data_dir, machine=machine)
    figure = os.path.join(out, f"figure_{task}.png")
    ran_here = any(t == task for t, _, _ in trained)
    if ran_here or not os.path.isfile(figure):
      if data is None:
        data = train.load_test_data(make_config(budget, task, models[0], 0, data_dir))
      write_figure(out, task, models, data)
  report = write_table(out, budget=budget, seeds=seeds, data_dir=data_dir, machine=machine)
  return {**report, "trained": trained, "skipped": skipped}


def _csv(text: str) -> tuple[str, ...]:
  return tuple(part.strip() for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=None, help="output folder (default benchmarks/results/...)")
  p.add_argument("--budget", choices=tuple(BUDGETS), default="quick", help="default quick")
  p.add_argument("--tasks", type=_csv, default=None, help=f"subset of {','.join(COLUMNS)}")
  p.add_argument("--models", type=_csv, default=None, help=f"subset of {','.join(ROWS)}")
  p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: budget's)")
  p.add_argument("--data-dir", default=None, help="MNIST IDX files instead of bundled digits")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  args = p.parse_args(argv)
  # Orbax's read-only checkpoint manager (restoring a cell for its figure) logs absl
  # warnings about the options it ignores.
  logging.getLogger("absl").setLevel(logging.ERROR)
  # Budgets other than quick default to their own folder: finished cells of one budget
  # are not mixed into another's table (run_grid refuses a cell with other settings).
  suffix = "" if args.budget == "quick" else f"_{args.budget}"
  out = args.out or DEFAULT_OUT + suffix
  try:
    report = run_grid(
      out,
      args.budget,
      args.tasks,
      args.models,
      args.seeds,
      data_dir=args.data_dir,
      progress=not args.no_progress,
    )
  except (ValueError, FileExistsError, train.CheckpointError) as e:
    # A bad option, or a cell left by other settings or with an unreadable checkpoint.
    print(f"paper_table1: error: {e}", file=sys.stderr)
    return 2
  with open(os.path.join(out, "table1.md")) as f:
    print("\n" + f.read())
  print(
    f"trained {len(report['trained'])} cells, {len(report['skipped'])} done before; "
    f"{out}/table1.md, table1.json, figure_<task>.png"
  )
  return 0


if __name__ == "__main__":
  cli.keep_freed_memory()  # as the stn-jax command does: faster steps, same results
  sys.exit(main())

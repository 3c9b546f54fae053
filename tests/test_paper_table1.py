"""benchmarks/paper_table1.py on its toy budget: one task, two models, one seed, 3 steps."""

import importlib.util
import json
import os
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "paper_table1.py")
# The script imports benchmarks/machine.py, which Python finds beside a script it runs.
sys.path.insert(0, os.path.dirname(SCRIPT))
_spec = importlib.util.spec_from_file_location("paper_table1", SCRIPT)
paper_table1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_table1)

MODELS = ("cnn", "st-cnn-affine")
CELLS = [("p", m, 0) for m in MODELS]


def _grid(out, lines=None, **kwargs):
  options = dict(tasks=("p",), models=MODELS, seeds=1, progress=False)
  options.update(kwargs)
  log = (lines if lines is not None else []).append
  return paper_table1.run_grid(str(out), "toy", log=log, **options)


def _metrics(out, task, model, seed):
  path = os.path.join(paper_table1.cell_dir(str(out), task, model, seed), "metrics.json")
  with open(path) as f:
    return json.load(f)


def _mtimes(out):
  return {
    cell: os.stat(os.path.join(paper_table1.cell_dir(str(out), *cell), "metrics.json")).st_mtime_ns
    for cell in CELLS
  }


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  out = tmp_path_factory.mktemp("table1")
  lines = []
  report = _grid(out, lines)
  return out, report, lines


def test_grid_trains_every_cell_and_writes_the_table(grid):
  out, report, lines = grid
  assert report["trained"] == CELLS and report["skipped"] == []
  assert len(lines) == len(CELLS) and lines[0].startswith("[1/2]")
  with open(out / "table1.json") as f:
    saved = json.load(f)
  for task, model, seed in CELLS:
    result = saved["results"][task][model]["seeds"][str(seed)]
    metrics = _metrics(out, task, model, seed)
    assert 0.0 <= result["test_error"] <= 1.0
    assert result["test_error"] == metrics["test_error"]
    assert result["steps"] == 3 and result["num_test_images"] == 3000
  assert {"platform", "cpu_count", "jax"} <= saved["machine"].keys()


def test_markdown_has_the_paper_layout(grid):
  out, report, _ = grid
  text = (out / "table1.md").read_text()
  assert text.count("| model | R | RTS | P | E |") == 2  # ours, then the paper's
  for row in paper_table1.ROWS.values():
    assert text.count(f"| {row} |") == 2
  cell = report["results"]["p"]["st-cnn-affine"]
  ours = f"| ST-CNN Aff | - | - | {100 * cell['mean']:.2f} ± {100 * cell['spread']:.2f} | - |"
  assert ours in text
  assert "| ST-CNN Aff | 0.7 | 0.5 | 0.8 | 1.2 |" in text


def test_figure_per_task(grid):
  out, _, _ = grid
  assert (out / "figure_p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not (out / "figure_r.png").exists()


def test_rerun_skips_finished_cells_and_redoes_only_a_deleted_one(grid):
  out, report, _ = grid
  before = _mtimes(out)
  again = _grid(out)
  assert again["trained"] == [] and again["skipped"] == CELLS
  assert _mtimes(out) == before

  redo = ("p", "st-cnn-affine", 0)
  os.remove(os.path.join(paper_table1.cell_dir(str(out), *redo), "metrics.json"))
  third = _grid(out)
  assert third["trained"] == [redo]
  after = _mtimes(out)
  assert {cell for cell in CELLS if after[cell] != before[cell]} == {redo}
  # Resumed from its final checkpoint: nothing retrained, the same score.
  metrics = _metrics(out, *redo)
  assert metrics["resumed_from"] == 3
  assert (
    metrics["test_error"] == report["results"]["p"]["st-cnn-affine"]["seeds"]["0"]["test_error"]
  )


def test_refuses_cells_finished_under_another_budget(grid):
  out, _, _ = grid
  with pytest.raises(ValueError, match="finished with other settings \\(steps\\)"):
    paper_table1.run_grid(str(out), "quick", ("p",), ("cnn",), 1, progress=False)


def test_mean_and_spread_over_the_finished_seeds(tmp_path):
  # Three finished seeds and one without metrics (killed part-way), written by hand.
  errors = {0: 0.01, 1: 0.04, 2: 0.02}
  for seed in range(4):
    workdir = paper_table1.cell_dir(str(tmp_path), "rts", "st-cnn-tps", seed)
    os.makedirs(workdir)
    if seed in errors:
      metrics = {
        "config": {"model": "st-cnn", "steps": 10, "lr": None},
        "test_error": errors[seed],
        "test_wrong": round(3000 * errors[seed]),
        "num_test_images": 3000,
        "steps_per_second": 2.0,
        "resumed_from": 0,
      }
      with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
  machine = paper_table1.machine_info()
  report = paper_table1.write_table(
    str(tmp_path), budget="quick", seeds=4, data_dir=None, machine=machine
  )
  cell = report["results"]["rts"]["st-cnn-tps"]
  assert sorted(cell["seeds"]) == ["0", "1", "2"]
  assert cell["mean"] == pytest.approx(0.07 / 3) and cell["spread"] == pytest.approx(0.015)
  assert report["table"]["ST-CNN TPS"]["rts"] == "2.33 ± 1.50 (n=3)"
  assert "| ST-CNN TPS | - | 2.33 ± 1.50 (n=3) | - | - |" in (tmp_path / "table1.md").read_text()


@pytest.mark.parametrize("bad", ["mlp", "st-cnn-attention", "st-cnn"])
def test_unknown_model_name(bad):
  with pytest.raises(ValueError, match="unknown model"):
    paper_table1.parse_model(bad)

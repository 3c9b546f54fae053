"""The documentation site builds with warnings as errors, so a broken docstring,
cross-reference or notebook fails the test run. The notebooks are rendered from the outputs
saved in them (never executed here), which keeps the build to tens of seconds.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytest.importorskip("sphinx", reason="needs the docs extra: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  out = tmp_path_factory.mktemp("html")
  proc = subprocess.run(
    [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "PYTHONWARNINGS": ""},
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  return out


def test_pages_and_api_reference_are_built(site):
  for page in ("index", "getting_started", "conventions", "porting", "training",
               "reliability", "benchmarks", "api/core", "api/nnx", "api/equinox"):  # fmt: skip
    assert (site / f"{page}.html").is_file(), page
  core = (site / "api" / "core.html").read_text()
  # autodoc read the docstrings: a signature and a Convention block's words are there.
  assert "make_grid" in core and "align_corners" in core and "Convention" in core


def test_notebooks_are_rendered_with_their_outputs(site):
  for name in ("01_transforms_and_kernels", "02_train_st_cnn",
               "03_learning_kernels_and_higher_order"):  # fmt: skip
    html = (site / "notebooks" / f"{name}.html").read_text()
    assert "<img" in html, f"{name}: no saved figure rendered"

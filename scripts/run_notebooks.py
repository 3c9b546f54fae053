"""Executes the notebooks and saves them with their outputs (what the docs and GitHub show).

    python scripts/run_notebooks.py                 # all of notebooks/*.ipynb
    python scripts/run_notebooks.py notebooks/01_transforms_and_kernels.ipynb

Each notebook runs top to bottom in a fresh kernel from the repository root, as the test
run's nbmake does; execution metadata (timings) is dropped so that a rerun that computes
the same outputs changes nothing in git. Needs the ``test`` extra (nbclient, ipykernel).
"""

import argparse
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(path: pathlib.Path, timeout: int) -> float:
  """Executes ``path`` in place; returns the seconds it took."""
  nb = nbformat.read(path, as_version=4)
  start = time.perf_counter()
  NotebookClient(
    nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
  ).execute()
  for cell in nb.cells:
    cell.metadata.pop("execution", None)
  nb.metadata.pop("widgets", None)
  nbformat.write(nb, path)
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
  parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
  args = parser.parse_args(argv)
  paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
  for path in paths:
    print(f"{path.name}: {run(path, args.timeout):.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""The package's layers: core (``_src``) <- modules (nnx, linen, equinox) <- the experiment.

Read from the source with ``ast`` (no imports run), so a new upward import or an import
cycle fails here whatever happens to be installed.
"""

import ast
import pathlib

import pytest

import stn_jax
from stn_jax._src import grids, sampling, validation

PACKAGE = pathlib.Path(stn_jax.__file__).parent
# What each layer may not import (prefix match on the module's dotted name).
UPWARD = {
  "stn_jax._src": ("stn_jax.nnx", "stn_jax.linen", "stn_jax.equinox", "stn_jax.digits"),
  "stn_jax.nnx": ("stn_jax.linen", "stn_jax.equinox", "stn_jax.digits"),
  "stn_jax.linen": ("stn_jax.nnx", "stn_jax.equinox", "stn_jax.digits"),
  "stn_jax.equinox": ("stn_jax.nnx", "stn_jax.linen", "stn_jax.digits"),
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, name: str) -> set[str]:
  """Every ``stn_jax`` module that ``path`` imports, at any depth of its body."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      # `from stn_jax import nnx` imports the submodule stn_jax.nnx.
      found.update(f"{base}.{alias.name}" for alias in node.names)
      found.add(base)
  modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
  return {m for m in found if m in modules and m != name}


# None left: sampling.py and native.py both import the gather sampler from gather.py.
KNOWN_CYCLES: list[list[str]] = []


@pytest.fixture(scope="module")
def graph():
  return {_module_name(p): _imports(p, _module_name(p)) for p in PACKAGE.rglob("*.py")}


def test_the_graph_sees_known_edges(graph):
  # The checker itself can fail: it finds edges that exist.
  assert "stn_jax._src.grids" in graph["stn_jax"]
  assert "stn_jax.nnx" in graph["stn_jax.digits.models"]
  assert "stn_jax._src.modules" in graph["stn_jax.equinox"]


def test_no_layer_imports_one_above_it(graph):
  bad = [
    f"{module} imports {target}"
    for module, targets in graph.items()
    for layer, forbidden in UPWARD.items()
    if module == layer or module.startswith(layer + ".")
    for target in targets
    if target.startswith(forbidden)
  ]
  assert bad == []


def test_no_import_cycles(graph):
  # Depth-first search; a grey node met again closes a cycle.
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "grey"
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "grey":
        cycles.append(stack[stack.index(nxt) :] + [nxt])
      elif nxt not in state:
        visit(nxt, [*stack, nxt])
    state[node] = "black"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert [c for c in cycles if c not in KNOWN_CYCLES] == []


def test_validation_options_match_the_core():
  assert validation.TRANSFORMS == grids.TRANSFORMS
  assert validation.PADDING_MODES == sampling.PADDING_MODES


def _long_functions(limit: int) -> list[str]:
  """``file:line name (n lines)`` for every function in stn_jax whose body, docstring
  aside, is longer than ``limit`` lines."""
  import ast

  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        continue
      body = node.body
      if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
      ):
        body = body[1:]  # the docstring
      if not body:
        continue
      n = body[-1].end_lineno - body[0].lineno + 1
      if n > limit:
        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n})")
  return found


def test_no_function_body_longer_than_60_lines():
  # The house limit: a function that does not fit on a screen does too much. Split it.
  assert _long_functions(60) == []


def test_the_length_check_sees_long_functions():
  # The counter can fail: at a 5-line limit it finds many of the package's functions.
  assert len(_long_functions(5)) > 20

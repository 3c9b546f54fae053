"""Sphinx configuration: MyST pages, notebooks rendered from their saved outputs, autodoc."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import stn_jax  # noqa: E402

project = "stn_jax"
author = "the stn_jax authors"
copyright = "the stn_jax authors"
release = version = stn_jax.__version__

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  # MathJax copied into the built site, so the maths renders without a network (the
  # default loads it from a CDN, and an offline reader sees raw LaTeX).
  "sphinx-mathjax-offline",
  "sphinx.ext.viewcode",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# Notebooks are shown with the outputs committed in them (scripts/run_notebooks.py
# regenerates those); the docs build never runs them, so it stays fast and needs no kernel.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# The docstrings' Args say what each argument is; jax's ArrayLike spelled out in full
# (Array | ndarray | bool | number | ...) would bury that.
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Convention", "notes_style")]


html_theme = "furo"
html_title = f"stn_jax {release}"
html_static_path = []

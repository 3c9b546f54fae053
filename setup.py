"""Builds the optional compiled CPU kernels (csrc/); everything else is in pyproject.toml.

The kernels are XLA FFI handlers: they need only the header-only XLA FFI API that jaxlib
ships (``jax.ffi.include_dir()``), no Python C API. The extension is ``optional``: where it
cannot be compiled, the package installs without it and ``stn_jax.sample`` runs its
pure-JAX sampler everywhere.
"""

import os

from setuptools import Extension, setup


def _ffi_include_dir() -> str:
  import jaxlib  # a build requirement (pyproject.toml)

  return os.path.join(os.path.dirname(jaxlib.__file__), "include")


setup(
  ext_modules=[
    Extension(
      "stn_jax._bilinear_cpu",
      sources=["csrc/bilinear.cc"],
      depends=["csrc/bilinear_passes.inc", "csrc/separable_passes.inc"],
      include_dirs=[_ffi_include_dir()],
      language="c++",
      # No FP traps or errno: lets GCC vectorise the branch-free coordinate loop. IEEE
      # semantics are otherwise kept (no -ffast-math), so results match the JAX reference.
      extra_compile_args=["-std=c++17", "-O3", "-fno-trapping-math", "-fno-math-errno"],
      optional=True,
    )
  ]
)

"""Builds the optional compiled CPU kernels (csrc/); everything else is in pyproject.toml.

The kernels are XLA FFI handlers: they need only the header-only XLA FFI API that jaxlib
ships (``jax.ffi.include_dir()``), no Python C API. The extension is ``optional``: where it
cannot be compiled, the package installs without it and ``stn_jax.sample`` runs its
pure-JAX sampler everywhere.

The passes are template-heavy (every dtype, padding, dimension and ISA), so compiling them
is most of the install time. They are split into units (csrc/passes.h) that compile in
parallel, one per core.
"""

import os
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The largest units first, so that the small handler unit fills in at the end.
SOURCES = [
  "csrc/bilinear_avx2.cc",
  "csrc/bilinear_avx512.cc",
  "csrc/bilinear_baseline.cc",
  "csrc/separable_avx2.cc",
  "csrc/separable_baseline.cc",
  "csrc/ffi_handlers.cc",
]
HEADERS = [
  "csrc/common.h",
  "csrc/passes.h",
  "csrc/geometry.inc",
  "csrc/bilinear_passes.inc",
  "csrc/separable_passes.inc",
]


def _cores() -> int:
  if hasattr(os, "sched_getaffinity"):  # the cores this process may use (Linux)
    return max(1, len(os.sched_getaffinity(0)))
  return os.cpu_count() or 1


class ParallelBuildExt(build_ext):
  """build_ext that compiles an extension's sources side by side, one compiler per core.

  setuptools compiles them one after another; the compilers are separate processes, so
  threads that each wait on one are enough.
  """

  def build_extensions(self):
    compile_serially = self.compiler.compile

    def compile_in_parallel(sources, *args, **kwargs):
      workers = min(len(sources), _cores())
      with ThreadPoolExecutor(workers) as pool:
        objects = pool.map(lambda source: compile_serially([source], *args, **kwargs), sources)
        return [path for group in objects for path in group]

    self.compiler.compile = compile_in_parallel
    super().build_extensions()


def _ffi_include_dir() -> str:
  import jaxlib  # a build requirement (pyproject.toml)

  return os.path.join(os.path.dirname(jaxlib.__file__), "include")


setup(
  cmdclass={"build_ext": ParallelBuildExt},
  ext_modules=[
    Extension(
      "stn_jax._bilinear_cpu",
      sources=SOURCES,
      depends=HEADERS,
      include_dirs=[_ffi_include_dir()],
      language="c++",
      # No FP traps or errno: lets GCC vectorise the branch-free coordinate loop. IEEE
      # semantics are otherwise kept (no -ffast-math), so results match the JAX reference.
      # -g0: no debug information (Python's default -g makes a 42 MB library of a 7 MB one
      # and adds a minute to the build).
      # -ffp-contract=off: no multiply-add fused where the target has FMA (AVX-512 units,
      # ARM), so every build rounds as the scalar loops and the JAX reference do.
      extra_compile_args=[
        "-std=c++17",
        "-O3",
        "-g0",
        "-fno-trapping-math",
        "-fno-math-errno",
        "-ffp-contract=off",
      ],
      optional=True,
    )
  ],
)

"""Time and planned memory of the pure-JAX sampler's gradient for kernels wider than bilinear.

User kernels (`stn_jax.Kernel`) always run on the gather sampler; every kernel does off the
CPU or with `STN_JAX_NATIVE=0`. This script times `jit(grad(sum(sample(U, grid, k) ** 2)))`
w.r.t. `U` and `grid` (a loss whose backward needs the forward) and reports XLA's planned
temporaries + outputs (`memory_analysis`) in MiB and as a multiple of `U`'s size, with the
kernels off, medians of interleaved rounds.

  python benchmarks/bench_gather_memory.py [--threads N] [--repeats R]
"""

import argparse
import os
import sys
import time


def _parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--threads", type=int, default=None, help="CPU cores to use (default: all)")
  p.add_argument("--repeats", type=int, default=7)
  return p.parse_args(argv)


def _cases(stn_jax):
  feature = (32, 64, 64, 32)
  return {
    "bicubic 2-D (pure JAX) 32x64x64x32": (feature, "bicubic"),
    "keys_cubic(-0.5) 32x64x64x32": (feature, stn_jax.kernels.keys_cubic(-0.5)),
    "lanczos(2) 32x64x64x32": (feature, stn_jax.kernels.lanczos(2)),
    "gaussian(1.0) (36 taps) 32x64x64x32": (feature, stn_jax.kernels.gaussian(1.0)),
    "trilinear (pure JAX) 2x48^3x8": ((2, 48, 48, 48, 8), "bilinear"),
    "tricubic (pure JAX) 1x32^3x4": ((1, 32, 32, 32, 4), "bicubic"),
  }


def _inputs(jax, jnp, stn_jax, shape):
  nd = len(shape) - 2
  n = shape[0]
  eye = jnp.eye(nd, nd + 1)
  theta = jnp.tile(eye, (n, 1, 1)) + 0.05 * jax.random.normal(jax.random.key(1), (n, nd, nd + 1))
  U = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  return U, stn_jax.make_grid(theta.astype(jnp.float32), shape[1:-1])


def main(argv=None) -> int:
  args = _parse_args(argv)
  if args.threads:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
  os.environ["STN_JAX_NATIVE"] = "0"
  import jax
  import jax.numpy as jnp
  import numpy as np

  import stn_jax

  cores = len(os.sched_getaffinity(0))
  print(f"load average {os.getloadavg()}, {cores} cores, jax {jax.__version__}")
  print("| case | fwd+bwd ms | planned MiB | / U |")
  print("|---|---:|---:|---:|")
  for name, (shape, kernel) in _cases(stn_jax).items():
    U, grid = _inputs(jax, jnp, stn_jax, shape)

    def loss(U, grid, kernel=kernel):
      return jnp.sum(stn_jax.sample(U, grid, kernel) ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(U, grid).compile()
    analysis = compiled.memory_analysis()
    planned = analysis.temp_size_in_bytes + analysis.output_size_in_bytes
    jax.block_until_ready(compiled(U, grid))
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(U, grid))
      times.append(time.perf_counter() - start)
    print(
      f"| {name} | {np.median(times) * 1e3:.0f} | {planned / 2**20:.1f} | "
      f"{planned / U.nbytes:.1f} |",
      flush=True,
    )
  print(f"load average at the end {os.getloadavg()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""One image, many grids: memory and time of ``vmap`` over grids with one shared ``U``.

A script, not part of the test run. Compares, side by side in one process, ``vmap`` over
the grids with ``U`` unbatched (``in_axes=(None, 0)``: the kernels' batching rule folds the
grids into the output points) against the same call on ``U`` broadcast to ``B`` copies
(what that rule did before: ``jnp.broadcast_to``), for the forward and for the gradient of
``sum(V ** 2)`` w.r.t. ``U`` and the grids. Memory is XLA's compiled
``memory_analysis()`` (temporaries, i.e. peak beyond the arguments and outputs); time the
median of ``--repeats`` runs.

  python benchmarks/bench_shared_image.py --threads 1
  STN_JAX_NATIVE=0 python benchmarks/bench_shared_image.py    # the pure-JAX sampler
"""

import argparse
import os
import statistics
import time

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("--threads", type=int, default=1, help="CPU threads (affinity mask)")
ARGS.add_argument("--repeats", type=int, default=11)
ARGS.add_argument("--grids", type=int, default=64, help="B, the number of grids")
ARGS = ARGS.parse_args()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU sizes its pool from the schedulable CPUs: set before jax is imported.
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: ARGS.threads])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import stn_jax  # noqa: E402

MiB = 2**20


def _median_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(ARGS.repeats):
    tick = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - tick)
  return statistics.median(times)


def main() -> None:
  rng = np.random.default_rng(0)
  B = ARGS.grids
  U = jnp.asarray(rng.normal(size=(128, 128, 16)), jnp.float32)
  grids = jnp.asarray(rng.uniform(-1.1, 1.1, size=(B, 32, 32, 2)), jnp.float32)
  batched = jax.vmap(stn_jax.sample)

  def shared_fwd(u, g):
    return jax.vmap(stn_jax.sample, in_axes=(None, 0))(u, g)

  def copied_fwd(u, g):
    return batched(jnp.broadcast_to(u, (g.shape[0],) + u.shape), g)

  def grad(fwd):
    return jax.grad(lambda u, g: jnp.sum(fwd(u, g) ** 2), (0, 1))

  print(
    f"stn_jax.native_status(): {stn_jax.native_status()}\n"
    f"U {U.shape} float32 ({U.nbytes / MiB:.1f} MiB), {B} grids {grids.shape[1:]}; "
    f"B copies of U: {B * U.nbytes / MiB:.1f} MiB; threads {ARGS.threads}; "
    f"load {os.getloadavg()[0]:.2f}; JAX {jax.__version__}\n"
  )
  print(f"{'pass':<9}{'U':<10}{'temp MiB':>10}{'median ms':>11}")
  for name, shared, copied in [
    ("forward", shared_fwd, copied_fwd),
    ("gradient", grad(shared_fwd), grad(copied_fwd)),
  ]:
    for label, fn in [("shared", shared), ("copied", copied)]:
      compiled = jax.jit(fn).lower(U, grids).compile()
      temp = compiled.memory_analysis().temp_size_in_bytes / MiB
      ms = 1e3 * _median_seconds(compiled, U, grids)
      print(f"{name:<9}{label:<10}{temp:>10.1f}{ms:>11.2f}")


if __name__ == "__main__":
  main()

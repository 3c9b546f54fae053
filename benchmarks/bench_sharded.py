"""Times a batch-sharded ``sample`` on 4 simulated CPU devices against one device.

A script, not part of the test run. See benchmarks/README.md ("Sharded runs").

  python benchmarks/bench_sharded.py                  # 2 threads, 21 rounds
  python benchmarks/bench_sharded.py --threads 1 --repeats 41

The same total batch, float32, ``zeros`` padding, a near-identity affine grid, in one
process that XLA starts with 4 CPU devices (``--xla_force_host_platform_device_count=4``,
set here before jax is imported):

* ``1 device``: the compiled kernels on one device (unsharded inputs);
* ``4 devices``: the same kernels, the batch sharded over a ``("batch",)`` mesh, each
  device running them on its quarter (``stn_jax/_src/partitioning.py``);
* ``4 devices, pure JAX``: the batch sharded, ``STN_JAX_NATIVE=0`` (what a sharded run
  got before the kernels could be partitioned).

Passes: ``fwd`` (``V = sample(U, grid)``), ``fwd+bwd`` (the gradients of ``sum(V ** 2)``
w.r.t. ``U`` and ``grid``) and ``copy`` (``U + 1``: what one step on these devices costs
at least, launch and synchronisation included). Rounds run every variant once,
round-robin with a rotating start; reported: the median wall time and its ratio to the
single-device kernels.
The 4 simulated devices share the process's cores (``--threads``), so this measures the
partitioning's overhead, not a speed-up.
"""

import argparse
import os
import statistics
import sys
import time

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("--threads", type=int, default=2, help="CPU cores for XLA (at most 2 here)")
ARGS.add_argument("--repeats", type=int, default=21, help="timed rounds")
ARGS.add_argument("--out", default=None, help="markdown file to write (default: print only)")
ARGS = ARGS.parse_args() if __name__ == "__main__" else None
if ARGS is not None:
  # XLA:CPU sizes its pool from the schedulable cores: restrict them before jax starts.
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: ARGS.threads])
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

import stn_jax  # noqa: E402

WORKLOADS = {"mnist": (256, 28, 28, 1), "feature": (32, 64, 64, 32)}
VARIANTS = ("1 device", "4 devices", "4 devices, pure JAX")


def _inputs(shape):
  rng = np.random.default_rng(0)
  n, h, w, _ = shape
  U = rng.normal(size=shape).astype(np.float32)
  theta = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (n, 1, 1))
  theta = theta + 0.05 * rng.normal(size=theta.shape).astype(np.float32)
  grid = np.asarray(stn_jax.make_grid(jnp.asarray(theta), (h, w)))
  return U, grid


def _loss(u, g):
  return jnp.sum(stn_jax.sample(u, g) ** 2)


def _compiled(pass_name, args, native: bool):
  """The pass compiled for these (placed) arguments; the kernels switched by ``native``."""
  os.environ["STN_JAX_NATIVE"] = "1" if native else "0"
  jax.clear_caches()  # traces are cached by function, not by STN_JAX_NATIVE
  f = {
    "fwd": stn_jax.sample,
    "fwd+bwd": jax.grad(_loss, argnums=(0, 1)),
    "copy": lambda u, g: u + 1,  # the runtime's floor for one step on these devices
  }[pass_name]
  compiled = jax.jit(f).lower(*args).compile()
  os.environ.pop("STN_JAX_NATIVE")
  return lambda: jax.block_until_ready(compiled(*args))


def _time(runners, repeats):
  """Median seconds per runner over round-robin rounds (rotating start)."""
  for run in runners.values():
    run(), run()
  times = {k: [] for k in runners}
  names = list(runners)
  for r in range(repeats):
    for k in names[r % len(names) :] + names[: r % len(names)]:
      start = time.perf_counter()
      runners[k]()
      times[k].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


def main(args) -> None:
  assert jax.device_count() == 4, jax.devices()
  mesh = jax.make_mesh((4,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
  batch = NamedSharding(mesh, P("batch"))
  lines = [
    f"jax {jax.__version__}, {cpu_model()}, "
    f"{args.threads} thread(s), {args.repeats} rounds, load average before: "
    f"{os.getloadavg()[0]:.2f}",
    "",
    "| workload | pass | " + " | ".join(f"{v} ms" for v in VARIANTS) + " | 4 dev / 1 dev |",
    "|---|---|" + "---:|" * (len(VARIANTS) + 1),
  ]
  for name, shape in WORKLOADS.items():
    U, grid = _inputs(shape)
    one = (jax.device_put(U, jax.devices()[0]), jax.device_put(grid, jax.devices()[0]))
    four = (jax.device_put(U, batch), jax.device_put(grid, batch))
    for pass_name in ("fwd", "fwd+bwd", "copy"):
      runners = {
        "1 device": _compiled(pass_name, one, native=True),
        "4 devices": _compiled(pass_name, four, native=True),
      }
      if pass_name != "copy":
        runners["4 devices, pure JAX"] = _compiled(pass_name, four, native=False)
      med = _time(runners, args.repeats)
      cells = " | ".join(f"{1e3 * med[v]:.2f}" if v in med else "" for v in VARIANTS)
      ratio = med["4 devices"] / med["1 device"]
      lines.append(f"| {name} {shape} | {pass_name} | {cells} | {ratio:.2f} |")
      print(lines[-1], flush=True)
  lines.append(f"\nload average after: {os.getloadavg()[0]:.2f}")
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  sys.exit(main(ARGS))

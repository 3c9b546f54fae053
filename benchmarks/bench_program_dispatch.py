"""Where a small jitted program's time goes besides the kernels: XLA:CPU's dispatch.

A script, not part of the test run. See benchmarks/README.md ("A program's dispatch").

  python benchmarks/bench_program_dispatch.py --threads 2
  python benchmarks/bench_program_dispatch.py --threads 1 --workload images

PjRt's CPU client runs a program on the calling thread when XLA's cost analysis counts
fewer than 1000 flops in it, else on a worker thread while the caller waits. The compiled
kernels are custom calls, which the analysis counts as no flops: ``jit(sample)`` alone runs
on the caller, while the gradient of ``sum(V ** 2)`` (its ``2 * V`` is an XLA fusion) is
handed to a worker. In one process with ``--threads`` cores, this times, medians of
``--calls`` calls after warm-up:

- ``fwd``: ``jit(sample)`` (the kernel alone);
- ``dgrid, V * R``: the gradient of ``sum(V * R)`` w.r.t. ``grid`` (``R`` an input: the
  program is the grid-cotangent kernel alone);
- ``fwd+dgrid, V ** 2``: the gradient of ``sum(V ** 2)`` w.r.t. ``grid`` (both kernels and a
  ``2 * V`` fusion between them);

and for each, from ``/proc/self/task``: the CPU time per call summed over the process's
threads, the share of it on the calling thread (near 1 when the program ran on the caller)
and the involuntary context switches per 1000 calls over all threads ("preempted": a
runnable thread taken off its core, as happens when more threads want to run than there
are cores).
"""

import argparse
import os
import statistics
import threading
import time


def _thread_stats() -> dict:
  """Per thread id of this process: (CPU seconds, user + system; involuntary switches)."""
  ticks = os.sysconf("SC_CLK_TCK")
  out = {}
  for tid in os.listdir("/proc/self/task"):
    try:
      with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      with open(f"/proc/self/task/{tid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:  # the thread ended
      continue
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    out[int(tid)] = (cpu, int(status["nonvoluntary_ctxt_switches"]))
  return out


def main(args) -> None:
  cpus = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, cpus[: args.threads])  # before jax sizes its pool
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp
  from bench_isolated import WORKLOADS, _inputs  # benchmarks/bench_isolated.py

  import stn_jax

  shape, kernel, out_hw = WORKLOADS[args.workload]
  U, grid = map(jnp.asarray, _inputs(shape, out_hw))
  R = jnp.ones(grid.shape[:-1] + shape[-1:], U.dtype)

  def sample(u, g):
    return stn_jax.sample(u, g, kernel, padding_mode="zeros")

  programs = {
    "fwd": (sample, (U, grid)),
    "dgrid, V * R": (jax.grad(lambda u, g, r: jnp.sum(sample(u, g) * r), 1), (U, grid, R)),
    "fwd+dgrid, V ** 2": (jax.grad(lambda u, g: jnp.sum(sample(u, g) ** 2), 1), (U, grid)),
  }
  caller = threading.get_native_id()  # the thread that calls the programs
  print(f"{args.workload} {shape} -> {out_hw}, {args.threads} thread(s), {args.calls} calls")
  print(f"{'program':20s} {'ms':>8s} {'CPU ms/call':>12s} {'on caller':>10s} {'preempted':>10s}")
  for name, (fn, fn_args) in programs.items():
    compiled = jax.jit(fn).lower(*fn_args).compile()
    for _ in range(5):
      jax.block_until_ready(compiled(*fn_args))
    times = []
    before = _thread_stats()
    for _ in range(args.calls):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*fn_args))
      times.append(time.perf_counter() - t0)
    after = _thread_stats()
    spent = {t: after[t][0] - before.get(t, (0.0, 0))[0] for t in after}
    switches = sum(after[t][1] - before.get(t, (0.0, 0))[1] for t in after)
    total = sum(spent.values())
    share = spent.get(caller, 0.0) / total if total else float("nan")
    ms = 1e3 * statistics.median(times)
    per_call = 1e3 * total / args.calls
    preempted = 1e3 * switches / args.calls
    print(f"{name:20s} {ms:8.3f} {per_call:12.3f} {share:10.2f} {preempted:10.0f}", flush=True)


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--calls", type=int, default=1001)
  p.add_argument("--workload", default="mnist", help="a workload of bench_isolated.py")
  main(p.parse_args())

"""stn_jax vs PyTorch with each library alone in its process, processes alternating.

A script, not part of the test run. See benchmarks/README.md.

  python benchmarks/bench_isolated.py --threads 2   # -> results/isolated_cpu_threads2.md
  python benchmarks/bench_isolated.py --threads 1 --rounds 3 --no-save   # smoke run

``bench_sampler.py`` times both libraries in one process, alternating calls. With two
threads that measures something else too: after each ``grid_sample`` call PyTorch's
OpenMP worker keeps spinning on a core for about a millisecond (libgomp's default wait
policy), so the stn_jax call that follows finds one of its two cores taken. Here every
timed process imports one library only; the rounds alternate the libraries' processes
(order rotated each round) so that both see the same machine load. Each process times
``--calls`` back-to-back calls after two warm-up calls (compilation excluded) and reports
its median; the table gives the median over rounds of those medians, and their ratio.

The ``paired`` column is the median over rounds of each round's own ratio: the two
processes of a round run back to back, so they most likely see the same state of the host.
On a shared host whose speed shifts between states for minutes at a time (this project's
Xeon, see benchmarks/README.md), the ratio of the two medians can pair one library's slow
processes with the other's fast ones; the paired ratio compares like with like.

Passes: the forward, and forward+backward w.r.t. ``U`` and ``grid`` of ``sum(V ** 2)`` (a
loss whose backward needs the forward), written ``V ** 2`` in both libraries; with
``--passes``, also ``fwd+dgrid V^2``, the same loss's gradient w.r.t. ``grid`` alone (an
STN's backward when ``U`` is its input image: PyTorch then skips ``dU`` too). (Tables before
December 2026 used ``V * V``. JAX turns that cotangent into ``V + V``, which XLA:CPU 0.10
compiles as a lone ``add`` fusion on the 4-D array, 4-5x slower than its ``2 * V`` fusion:
0.6 ms of MNIST's 3.6 ms; see benchmarks/README.md.)

Each process also counts its minor page faults per timed call. By default glibc's malloc
returns large freed buffers to the OS, so a call that allocates tens of MB (the
forward+backward of 16 RGB 224x224 images) faults its pages in again every time, in
either library. ``--keep-freed-memory`` starts both libraries' processes with the glibc
settings that the ``stn-jax`` command applies to itself (``keep_freed_memory`` in
``stn_jax/digits/cli.py``, here as environment variables), so the table shows the
passes without that cost (files ``*_keep``).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from machine import cpu_model  # benchmarks/machine.py

# (N, H, W, C), kernel and output (Ho, Wo) of each workload: bench_sampler.py's 2-D rows.
WORKLOADS = {
  "mnist": ((256, 28, 28, 1), "bilinear", (28, 28)),
  "feature": ((32, 64, 64, 32), "bilinear", (64, 64)),
  "images": ((16, 224, 224, 3), "bilinear", (224, 224)),
  "down": ((16, 224, 224, 3), "bilinear", (112, 112)),
  "bicubic": ((32, 64, 64, 32), "bicubic", (64, 64)),
  "nearest": ((32, 64, 64, 32), "nearest", (64, 64)),
}
PASSES = ("fwd", "fwd+bwd V^2", "fwd+dgrid V^2")
DEFAULT_PASSES = "fwd,fwd+bwd V^2"
IMPLS = ("stn_jax", "torch")
HERE = os.path.dirname(os.path.abspath(__file__))
# glibc reads these at start-up: the settings of stn_jax.digits.cli.keep_freed_memory.
KEEP_FREED_MEMORY_ENV = {
  "MALLOC_ARENA_MAX": "1",
  "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
  "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
  "MALLOC_TOP_PAD_": str(64 << 20),
}


def _inputs(shape, out_hw, seed=0):
  import numpy as np

  n = shape[0]
  h, w = out_hw
  rng = np.random.default_rng(seed)
  U = rng.standard_normal(shape, dtype=np.float32)
  theta = np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1))
  theta += 0.05 * rng.standard_normal(theta.shape, dtype=np.float32)
  # The normalised affine grid (align_corners=False) in numpy: x, y of pixel centres.
  xs = (2 * np.arange(w, dtype=np.float32) + 1) / w - 1
  ys = (2 * np.arange(h, dtype=np.float32) + 1) / h - 1
  base = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], np.float32(1)), -1)
  grid = np.einsum("hwk,njk->nhwj", base, theta).astype(np.float32)
  return U, grid


def _child_runner(impl, workload, pass_name):
  """A no-argument function running one call, in this process (one library imported)."""
  shape, kernel, out_hw = WORKLOADS[workload]
  U, grid = _inputs(shape, out_hw)
  square = pass_name != "fwd"
  grid_only = pass_name == "fwd+dgrid V^2"  # U is data (an STN's input): no dU
  if impl == "stn_jax":
    import jax
    import jax.numpy as jnp

    import stn_jax

    def fwd(u, g):
      return stn_jax.sample(u, g, kernel, padding_mode="zeros")

    def loss(u, g):
      v = fwd(u, g)
      return jnp.sum(v**2)

    argnums = 1 if grid_only else (0, 1)
    fn = jax.jit(jax.grad(loss, argnums=argnums) if square else fwd)
    args = (jnp.asarray(U), jnp.asarray(grid))
    compiled = fn.lower(*args).compile()
    return lambda: jax.block_until_ready(compiled(*args))
  import numpy as np
  import torch
  import torch.nn.functional as F

  Ut = torch.from_numpy(np.ascontiguousarray(np.moveaxis(U, -1, 1)))
  gt = torch.from_numpy(grid)
  kw = dict(mode=kernel, padding_mode="zeros", align_corners=False)
  if not square:

    def run():
      with torch.no_grad():
        return F.grid_sample(Ut, gt, **kw)

    return run
  Ut.requires_grad_(not grid_only)
  gt.requires_grad_(True)
  wrt = (gt,) if grid_only else (Ut, gt)

  def run():
    V = F.grid_sample(Ut, gt, **kw)
    return torch.autograd.grad((V**2).sum(), wrt)

  return run


def child(args) -> None:
  cpus = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, cpus[: args.threads])  # before jax / torch size their pools
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.child == "torch":
    import torch

    torch.set_num_threads(args.threads)
  run = _child_runner(args.child, args.workload, args.pass_name)
  for _ in range(2):
    run()
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(args.calls):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  print(json.dumps({"median_s": statistics.median(times), "faults_per_call": faults / args.calls}))


def _one(impl, workload, pass_name, args) -> float:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--workload", workload]
  cmd += ["--pass-name", pass_name, "--threads", str(args.threads), "--calls", str(args.calls)]
  env = dict(os.environ, **KEEP_FREED_MEMORY_ENV) if args.keep_freed_memory else None
  out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(args) -> None:
  workloads = args.workloads.split(",")
  load_start = os.getloadavg()
  rows = []
  for workload in workloads:
    for pass_name in args.passes.split(","):
      samples = {impl: [] for impl in IMPLS}
      faults = {impl: [] for impl in IMPLS}
      for r in range(args.rounds):
        for impl in IMPLS[r % 2 :] + IMPLS[: r % 2]:
          result = _one(impl, workload, pass_name, args)
          samples[impl].append(result["median_s"])
          faults[impl].append(result["faults_per_call"])
      ms = {impl: 1e3 * statistics.median(v) for impl, v in samples.items()}
      pairs = zip(samples["stn_jax"], samples["torch"], strict=True)
      paired = statistics.median(a / b for a, b in pairs)
      faults = {impl: statistics.median(v) for impl, v in faults.items()}
      rows.append(
        {
          "workload": workload,
          "shape": WORKLOADS[workload][0],
          "kernel": WORKLOADS[workload][1],
          "output": WORKLOADS[workload][2],
          "pass": pass_name,
          "stn_jax_ms": ms["stn_jax"],
          "torch_ms": ms["torch"],
          "ratio": ms["stn_jax"] / ms["torch"],
          "paired_ratio": paired,
          "stn_jax_faults_per_call": faults["stn_jax"],
          "torch_faults_per_call": faults["torch"],
          "per_process_ms": {k: [1e3 * s for s in v] for k, v in samples.items()},
        }
      )
      print(
        f"{workload:8} {pass_name:12} stn_jax {ms['stn_jax']:8.3f} ms  torch "
        f"{ms['torch']:8.3f} ms  ratio {rows[-1]['ratio']:.2f}  paired {paired:.2f}",
        flush=True,
      )
  load_end = os.getloadavg()
  info = {
    "machine": cpu_model(),
    "cpu_count": os.cpu_count(),
    "threads": args.threads,
    "rounds": args.rounds,
    "calls": args.calls,
    "keep_freed_memory": args.keep_freed_memory,
    "load_start": load_start,
    "load_end": load_end,
  }
  if args.no_save:
    return
  os.makedirs(args.out, exist_ok=True)
  suffix = "_keep" if args.keep_freed_memory else ""
  stem = os.path.join(args.out, f"isolated_cpu_threads{args.threads}{suffix}")
  with open(stem + ".json", "w") as f:
    json.dump({"info": info, "rows": rows}, f, indent=1)
  lines = [
    f"# stn_jax vs PyTorch, each alone in its process ({args.threads} thread(s))",
    "",
    (
      "glibc malloc settings: the `stn-jax` command's (`--keep-freed-memory`: freed memory "
      "kept for reuse), in both libraries' processes."
      if args.keep_freed_memory
      else "glibc malloc settings: the defaults (large freed buffers go back to the OS)."
    ),
    "",
    f"Machine: {info['machine']}, {info['cpu_count']} cores, {args.threads} thread(s) per "
    "process; median over "
    f"{args.rounds} alternating processes of each process's median of {args.calls} calls. "
    "Load average (1, 5, 15 min) at start "
    + "/".join(f"{x:.1f}" for x in load_start)
    + ", at end "
    + "/".join(f"{x:.1f}" for x in load_end)
    + ". stn/torch: the ratio of the two medians; paired: the median over rounds of each "
    "round's ratio (its two processes ran back to back).",
    "",
    "| workload | pass | stn_jax ms | torch ms | stn/torch | paired | stn_jax faults/call "
    "| torch faults/call |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    shape = "x".join(map(str, r["shape"]))
    if tuple(r["output"]) != tuple(r["shape"][1:3]):
      shape += "->" + "x".join(map(str, r["output"]))
    lines.append(
      f"| {r['workload']} {shape} | {r['pass']} | {r['stn_jax_ms']:.3f} | {r['torch_ms']:.3f} "
      f"| {r['ratio']:.2f} | {r['paired_ratio']:.2f} | {r['stn_jax_faults_per_call']:.0f} "
      f"| {r['torch_faults_per_call']:.0f} |"
    )
  with open(stem + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {stem}.md")


def _parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--threads", type=int, default=2, help="CPU threads per process (default 2)")
  p.add_argument("--rounds", type=int, default=7, help="processes per library (default 7)")
  p.add_argument("--calls", type=int, default=41, help="timed calls per process (default 41)")
  p.add_argument("--workloads", default="mnist,images", help=f"of {','.join(WORKLOADS)}")
  p.add_argument(
    "--passes", default=DEFAULT_PASSES, help=f"of {','.join(PASSES)} (default {DEFAULT_PASSES})"
  )
  p.add_argument("--out", default=os.path.join(HERE, "results"))
  p.add_argument("--no-save", action="store_true", help="print only")
  p.add_argument(
    "--keep-freed-memory",
    action="store_true",
    help="run both libraries with the stn-jax command's glibc malloc settings",
  )
  # Internal: one timed process.
  p.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
  p.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
  p.add_argument("--pass-name", choices=PASSES, help=argparse.SUPPRESS)
  return p.parse_args(argv)


if __name__ == "__main__":
  ARGS = _parse_args()
  if ARGS.child:
    child(ARGS)
  else:
    main(ARGS)

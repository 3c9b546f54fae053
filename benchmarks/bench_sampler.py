"""Benchmarks stn_jax.sample against PyTorch grid_sample, map_coordinates and dm-pix.

A script, not part of the test run. See benchmarks/README.md for what it measures and how.

  python benchmarks/bench_sampler.py                 # full CPU table -> benchmarks/results/
  python benchmarks/bench_sampler.py --quick         # smoke run: small N, few repeats
  python benchmarks/bench_sampler.py --device gpu    # CUDA: jax[cuda12] + torch on cuda
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

# Thread control has to happen before jax and torch start their pools, so the arguments
# are parsed before those imports.


IMPL_NAMES = ("stn_jax", "stn_jax_xla", "torch", "map_coordinates", "dm_pix")


def _parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 21)")
  p.add_argument("--quick", action="store_true", help="smoke run: N / 8, 5 repeats")
  p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
  p.add_argument(
    "--workloads", default=None, help="comma-separated substrings of workload names to keep"
  )
  p.add_argument(
    "--threads",
    type=int,
    default=None,
    help="CPU threads for JAX (CPU affinity) and torch.set_num_threads (default: all usable)",
  )
  p.add_argument(
    "--impls",
    default=None,
    help=f"comma-separated subset of {','.join(IMPL_NAMES)} (copy is always run)",
  )
  p.add_argument(
    "--no-save", action="store_true", help="print the table only, write nothing to --out"
  )
  return p.parse_args(argv)


ARGS = _parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.device == "cpu":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
if ARGS is not None and ARGS.threads is not None:
  # XLA:CPU sizes its thread pool from the schedulable CPUs, so an affinity mask set before
  # jax is imported is the one knob that limits it; torch gets the same number below.
  cpus = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, cpus[: ARGS.threads])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

import stn_jax  # noqa: E402

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional
  torch = None
try:
  import dm_pix
  from dm_pix._src import interpolation as pix_interpolation
except ImportError:  # pragma: no cover - dm-pix is optional
  dm_pix = None


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  n: int
  h: int
  w: int
  c: int
  ho: int
  wo: int
  kernel: str = "bilinear"
  d: int = 0  # > 0: a volume (N, D, H, W, C) sampled on a (Do, Ho, Wo) grid
  do: int = 0

  @property
  def volume(self) -> bool:
    return self.d > 0

  @property
  def image_shape(self) -> tuple[int, ...]:
    return (self.d, self.h, self.w) if self.volume else (self.h, self.w)

  @property
  def out_shape(self) -> tuple[int, ...]:
    return (self.do, self.ho, self.wo) if self.volume else (self.ho, self.wo)


WORKLOADS = (
  Workload("mnist 256x28x28x1", 256, 28, 28, 1, 28, 28),
  Workload("feature 32x64x64x32", 32, 64, 64, 32, 64, 64),
  Workload("images 16x224x224x3", 16, 224, 224, 3, 224, 224),
  Workload("down 16x224x224x3->112", 16, 224, 224, 3, 112, 112),
  Workload("bicubic 32x64x64x32", 32, 64, 64, 32, 64, 64, kernel="bicubic"),
  Workload("nearest 32x64x64x32", 32, 64, 64, 32, 64, 64, kernel="nearest"),
  # Volumes (trilinear; PyTorch's 5-D grid_sample). The first is the configuration PyTorch's
  # issue tracker uses for 3-D sampling speed; the second is registration-like; the third a
  # feature volume; the last tricubic (PyTorch has no 5-D bicubic).
  Workload("volume 1x128^3x1->64^3", 1, 128, 128, 1, 64, 64, d=128, do=64),
  Workload("volume 2x64^3x8", 2, 64, 64, 8, 64, 64, d=64, do=64),
  Workload("volume 4x32^3x32", 4, 32, 32, 32, 32, 32, d=32, do=32),
  Workload("tricubic 2x64^3x8", 2, 64, 64, 8, 64, 64, kernel="bicubic", d=64, do=64),
)

IMPLS = ("stn_jax", "stn_jax_xla", "torch", "map_coordinates", "dm_pix", "copy")


# ----------------------------------------------------------------------------- inputs


def make_inputs(wl: Workload, seed: int = 0):
  """U (N, *S, C), a near-identity affine grid (N, *So, d) and a cotangent R (N, *So, C)."""
  rng = np.random.default_rng(seed)
  k = len(wl.image_shape)
  U = rng.standard_normal((wl.n, *wl.image_shape, wl.c), dtype=np.float32)
  theta = np.tile(np.eye(k, k + 1, dtype=np.float32), (wl.n, 1, 1))
  theta += 0.05 * rng.standard_normal(theta.shape, dtype=np.float32)
  grid = np.asarray(stn_jax.make_grid(jnp.asarray(theta), wl.out_shape), np.float32)
  R = rng.standard_normal((wl.n, *wl.out_shape, wl.c), dtype=np.float32)
  return U, grid, R, theta


def _pixel_coords(grid: jax.Array, shape: tuple[int, ...]) -> list[jax.Array]:
  """Pixel coordinates, slowest axis first (map_coordinates' order), from a grid whose
  last axis is (x, y[, z]). align_corners=False: -1 and 1 are the corner pixels' edges."""
  k = len(shape)
  return [((grid[..., k - 1 - i] + 1) * shape[i] - 1) / 2 for i in range(k)]


# ----------------------------------------------------------------------------- JAX samplers


def stn_fwd(wl: Workload):
  return lambda U, grid: stn_jax.sample(U, grid, wl.kernel, padding_mode="zeros")


def stn_xla_fwd(wl: Workload):
  """stn_jax's pure-XLA sampler: the compiled CPU kernels switched off while tracing."""
  from stn_jax._src import native

  if not native.available():
    return None  # stn_jax is this path already

  def f(U, grid):
    os.environ["STN_JAX_NATIVE"] = "0"
    try:
      return stn_jax.sample(U, grid, wl.kernel, padding_mode="zeros")
    finally:
      del os.environ["STN_JAX_NATIVE"]

  return f


def mapc_fwd(wl: Workload):
  if wl.kernel != "bilinear" and not wl.volume:
    return None  # jax map_coordinates has order <= 1 only
  # (tricubic volumes: order 1 all the same, for scale.)

  def one_channel(u, coords):
    return jax.scipy.ndimage.map_coordinates(u, coords, order=1, mode="constant", cval=0.0)

  per_channel = jax.vmap(one_channel, in_axes=(-1, None), out_axes=-1)
  per_example = jax.vmap(per_channel)

  def f(U, grid):
    return per_example(U, _pixel_coords(grid, wl.image_shape))

  return f


def pix_fwd(wl: Workload):
  if dm_pix is None or wl.kernel != "bilinear" or wl.volume:
    return None

  # pix.affine_transform builds its own same-size grid from a matrix, so it cannot take
  # the downsampling grid; flat_nd_linear_interpolate_constant (what affine_transform
  # calls for order=1, mode="constant") takes any coordinates: here (y, x, c) per output.
  def one(u, y, x):
    c = u.shape[-1]
    ys = jnp.broadcast_to(y[..., None], y.shape + (c,))
    xs = jnp.broadcast_to(x[..., None], x.shape + (c,))
    cs = jnp.broadcast_to(jnp.arange(c, dtype=y.dtype), xs.shape)
    coords = jnp.stack([ys, xs, cs])
    return pix_interpolation.flat_nd_linear_interpolate_constant(u, coords, cval=0.0)

  def f(U, grid):
    y, x = _pixel_coords(grid, wl.image_shape)
    return jax.vmap(one)(U, y, x)

  return f


def with_grad(fwd, square: bool = False):
  """(U, grid, R) -> (dU, dgrid) of sum(fwd(U, grid) * R), or of sum(V ** 2) (a nonlinear
  loss, whose backward needs the forward's V too; R is then unused)."""

  def loss(U, grid, R):
    V = fwd(U, grid)
    return jnp.sum(V**2) if square else jnp.sum(V * R)

  return jax.grad(loss, argnums=(0, 1))


def compile_jax(fn, args):
  """Returns (compiled, lower_s, compile_s, memory dict)."""
  jitted = jax.jit(fn)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = {}
  try:
    ma = compiled.memory_analysis()
    mem = {
      "temp_bytes": int(ma.temp_size_in_bytes),
      "output_bytes": int(ma.output_size_in_bytes),
      "argument_bytes": int(ma.argument_size_in_bytes),
      "peak_extra_bytes": int(ma.temp_size_in_bytes + ma.output_size_in_bytes),
    }
  except Exception:  # noqa: BLE001 - not every backend reports it
    pass
  return compiled, t1 - t0, t2 - t1, mem


def hlo_op_counts(compiled) -> dict:
  """Counts of the ops that matter for a sampler in the optimised HLO."""
  text = compiled.as_text()
  ops = ("gather", "scatter", "fusion", "dot", "sort", "while")
  counts = {}
  for op in ops:
    counts[op] = sum(
      1 for line in text.splitlines() if f" {op}(" in line and "=" in line.split(f" {op}(")[0]
    )
  return counts


# ----------------------------------------------------------------------------- torch


def torch_sync(device: str):
  if device == "gpu":
    torch.cuda.synchronize()


def _channels_first(a):
  return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def make_torch_runner(wl: Workload, U, grid, R, device: str, grad: bool, square: bool = False):
  dev = "cuda" if device == "gpu" else "cpu"
  # NC(D)HW, as a PyTorch user holds it; the permute is not timed.
  Ut = torch.from_numpy(_channels_first(U)).to(dev)
  gt = torch.from_numpy(np.array(grid)).to(dev)  # a writable copy
  Rt = torch.from_numpy(_channels_first(R)).to(dev)
  mode = wl.kernel  # "bilinear", "bicubic" or "nearest": grid_sample's names
  kw = dict(mode=mode, padding_mode="zeros", align_corners=False)
  if not grad:

    def run():
      with torch.no_grad():
        return F.grid_sample(Ut, gt, **kw)

  else:
    Ut.requires_grad_(True)
    gt.requires_grad_(True)

    def run():
      V = F.grid_sample(Ut, gt, **kw)
      return torch.autograd.grad((V**2 if square else V * Rt).sum(), (Ut, gt))

  return run


def torch_peak_bytes(run, device: str) -> int | None:
  """Peak bytes the call allocates above what was live before it."""
  if device == "gpu":
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)
  # CPU: torch has no peak counter, so replay the profiler's allocation/free events in
  # time order and take the running maximum.
  from torch.profiler import ProfilerActivity, profile

  with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    out = run()
    del out
  # Self bytes: each op's allocations minus its frees, excluding its children, plus the
  # "[memory]" events for frees outside any op; their running sum is what is live.
  events = [
    (e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage
  ]
  live = peak = 0
  for _, b in sorted(events, key=lambda t: t[0]):
    live += b
    peak = max(peak, live)
  return int(peak)


# ----------------------------------------------------------------------------- timing


def jax_runner(compiled, args):
  def run():
    return jax.block_until_ready(compiled(*args))

  return run


def time_round_robin(runners: dict, repeats: int, device: str, warmup: int = 2) -> dict:
  """Median seconds per runner; one run of each per round, order rotated each round."""
  for run in runners.values():
    for _ in range(warmup):
      run()
      if device == "gpu" and torch is not None:
        torch_sync(device)
  names = list(runners)
  samples = {k: [] for k in names}
  for r in range(repeats):
    order = names[r % len(names) :] + names[: r % len(names)]
    for k in order:
      t0 = time.perf_counter()
      out = runners[k]()
      if k == "torch":
        torch_sync(device)
      samples[k].append(time.perf_counter() - t0)
      del out
  return {
    k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
    for k, v in samples.items()
  }


# ----------------------------------------------------------------------------- main


def machine_info(device: str, threads: int) -> dict:
  info = {
    "device": device,
    "jax_backend": jax.default_backend(),
    "jax_devices": [str(d) + " " + getattr(d, "device_kind", "") for d in jax.devices()],
    "cpu_model": cpu_model(),
    "os_cpu_count": os.cpu_count(),
    "threads": threads,
    "python": sys.version.split()[0],
    "platform": platform.platform(),
    "jax": jax.__version__,
    "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
    "numpy": np.__version__,
    "torch": torch.__version__ if torch is not None else None,
    "dm_pix": getattr(dm_pix, "__version__", None) if dm_pix is not None else None,
    "stn_jax": stn_jax.__version__,
    # Other processes' load distorts CPU timings (torch's OpenMP threads most of all).
    "loadavg_start": os.getloadavg(),
  }
  if device == "gpu" and torch is not None and torch.cuda.is_available():
    info["torch_cuda_device"] = torch.cuda.get_device_name(0)
    info["torch_cuda"] = torch.version.cuda
  return info


def _jaxlib_version():
  try:
    import jaxlib

    return jaxlib.__version__
  except Exception:  # noqa: BLE001
    return None


def bench_workload(wl: Workload, args, device: str) -> list[dict]:
  impls = IMPL_NAMES if not args.impls else tuple(args.impls.split(","))
  U, grid, R, _ = make_inputs(wl)
  Uj, gj, Rj = (jax.device_put(a) for a in (U, grid, R))
  rows = []
  # fwd+bwd: the linear loss sum(V * R), whose backward needs no V; V^2: sum(V ** 2), a
  # nonlinear loss whose backward needs the forward's V too (a training step's shape).
  passes = ("fwd", "fwd+bwd", "fwd+bwd V^2")
  for pass_name in passes:
    grad = pass_name != "fwd"
    square = pass_name == "fwd+bwd V^2"
    builders = {
      "stn_jax": stn_fwd,
      "stn_jax_xla": stn_xla_fwd,
      "map_coordinates": mapc_fwd,
      "dm_pix": pix_fwd,
    }
    runners, compile_info, memory, agree, hlo = {}, {}, {}, {}, {}
    ref_out = None
    for name, build in builders.items():
      fwd = build(wl) if name in impls else None
      if fwd is None:
        continue
      fn = with_grad(fwd, square) if grad else fwd
      jargs = (Uj, gj, Rj) if grad else (Uj, gj)
      compiled, lower_s, compile_s, mem = compile_jax(fn, jargs)
      compile_info[name] = {"lower_s": lower_s, "compile_s": compile_s}
      memory[name] = mem
      if name == "stn_jax":
        hlo = hlo_op_counts(compiled)
      out = compiled(*jargs)
      out = [np.asarray(o) for o in (out if grad else (out,))]
      if name == "stn_jax":
        ref_out = out
      elif ref_out is not None:
        agree[name] = [float(np.max(np.abs(a - b))) for a, b in zip(out, ref_out, strict=True)]
      runners[name] = jax_runner(compiled, jargs)

    torch_ok = not (wl.volume and wl.kernel == "bicubic")  # 5-D bicubic: PyTorch refuses
    if torch is not None and "torch" in impls and torch_ok:
      run = make_torch_runner(wl, U, grid, R, device, grad, square)
      out = run()
      torch_sync(device)
      if grad:
        out = [
          np.moveaxis(out[0].detach().cpu().numpy(), 1, -1),
          out[1].detach().cpu().numpy(),
        ]
      else:
        out = [np.moveaxis(out.cpu().numpy(), 1, -1)]
      if ref_out is not None:
        agree["torch"] = [float(np.max(np.abs(a - b))) for a, b in zip(out, ref_out, strict=True)]
      memory["torch"] = {"peak_extra_bytes": torch_peak_bytes(run, device)}
      runners["torch"] = run

    # Bandwidth reference: a copy moving as many bytes as the pass must at least move.
    # fwd reads U and grid and writes V; fwd+bwd reads U, grid and R and writes dU and
    # dgrid. A copy of B bytes reads B and writes B, so B is half that traffic.
    itemsize = 4
    n_u, n_g, n_v = U.size, grid.size, R.size
    traffic = (n_u + n_g + n_v) if not grad else (2 * n_u + 2 * n_g + n_v)
    traffic *= itemsize
    x = jax.device_put(np.ones(traffic // (2 * itemsize), np.float32))
    # + 1 so that XLA cannot alias the output to the input.
    copy_compiled, *_ = compile_jax(lambda a: a + 1.0, (x,))
    runners["copy"] = jax_runner(copy_compiled, (x,))

    times = time_round_robin(runners, args.repeats, device)
    row = {
      "workload": wl.name,
      "shape": dataclasses.asdict(wl),
      "pass": pass_name,
      "times": times,
      "compile": compile_info,
      "memory_bytes": memory,
      "max_abs_diff_vs_stn_jax": agree,
      "copy_traffic_bytes": int(traffic),
      "stn_jax_hlo_op_counts": hlo,
    }
    rows.append(row)
    print(_row_line(row), flush=True)
  return rows


def _ms(row, k):
  t = row["times"].get(k)
  return None if t is None else 1e3 * t["median_s"]


def _fmt(v, spec=".3f"):
  return "—" if v is None else format(v, spec)


def _row_line(row) -> str:
  return "  ".join(f"{k}={_fmt(_ms(row, k))}ms" for k in IMPLS if k in row["times"]) + (
    f"  [{row['workload']} {row['pass']}]"
  )


def _load(info, key) -> str:
  v = info.get(key)
  return "n/a" if v is None else "/".join(f"{x:.1f}" for x in v)


def markdown(rows, info, args) -> str:
  dev = "torch ms" if args.device == "cpu" else "torch cuda ms"
  lines = [
    f"# stn_jax.sample benchmark ({args.device})",
    "",
    f"Machine: {info['cpu_model']}, {info['os_cpu_count']} cores, {info['threads']} threads used;"
    f" JAX backend {info['jax_backend']} ({', '.join(info['jax_devices'])}).",
    f"Versions: python {info['python']}, jax {info['jax']}, jaxlib {info['jaxlib']},"
    f" torch {info['torch']}, dm-pix {info['dm_pix']}, numpy {info['numpy']},"
    f" stn_jax {info['stn_jax']}.",
    f"Load average (1, 5, 15 min) at start {_load(info, 'loadavg_start')},"
    f" at end {_load(info, 'loadavg_end')}.",
  ]
  if "torch_cuda_device" in info:
    lines.append(f"GPU: {info['torch_cuda_device']} (CUDA {info['torch_cuda']}).")
  lines += [
    f"Median of {args.repeats} round-robin runs, float32, zeros padding, near-identity affine"
    " grid. Compile = jit lower + compile of the stn_jax function, excluded from the times.",
    "copy = jitted `a + 1` moving the bytes the pass must at least move"
    " (fwd: read U+grid, write V; fwd+bwd: read U+grid+R, write dU+dgrid).",
    "",
    f"| workload | pass | stn_jax ms | {dev} | stn/torch | stn_jax pure-XLA ms | XLA/torch"
    " | map_coordinates ms | dm-pix ms | copy ms | stn/copy | compile s |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in rows:
    s, t, c = _ms(row, "stn_jax"), _ms(row, "torch"), _ms(row, "copy")
    x = _ms(row, "stn_jax_xla")
    comp = row["compile"].get("stn_jax")
    comp_s = None if comp is None else comp["lower_s"] + comp["compile_s"]
    lines.append(
      f"| {row['workload']} | {row['pass']} | {_fmt(s)} | {_fmt(t)} "
      f"| {_fmt(s / t if s and t else None, '.2f')} "
      f"| {_fmt(x)} | {_fmt(x / t if x and t else None, '.2f')} "
      f"| {_fmt(_ms(row, 'map_coordinates'))} | {_fmt(_ms(row, 'dm_pix'))} | {_fmt(c)} "
      f"| {_fmt(s / c if s and c else None, '.1f')} | {_fmt(comp_s, '.2f')} |"
    )
  lines += [
    "",
    "Peak extra memory per call, MiB (JAX: `compiled.memory_analysis()` temp + output bytes;"
    " torch CPU: running maximum of the profiler's allocation events during one call;"
    " torch CUDA: `max_memory_allocated` above the baseline):",
    "",
    "| workload | pass | stn_jax | torch | map_coordinates | dm-pix |",
    "|---|---|---:|---:|---:|---:|",
  ]
  for row in rows:
    cells = []
    for k in ("stn_jax", "torch", "map_coordinates", "dm_pix"):
      b = row["memory_bytes"].get(k, {}).get("peak_extra_bytes")
      cells.append(_fmt(None if b is None else b / 2**20, ".1f"))
    lines.append(f"| {row['workload']} | {row['pass']} | " + " | ".join(cells) + " |")
  extra = info.get("warp_grad_compile")
  if extra:
    lines += [
      "",
      f"jit(grad(warp loss)) on {extra['workload']} (loss = sum(warp(U, theta) * R), grad"
      f" w.r.t. theta): trace+lower {extra['lower_s']:.2f} s, compile {extra['compile_s']:.2f}"
      f" s, first call end to end {extra['first_call_s']:.2f} s.",
    ]
  return "\n".join(lines) + "\n"


def warp_grad_compile(wl: Workload) -> dict:
  U, _, R, theta = make_inputs(wl)
  args = tuple(jax.device_put(a) for a in (U, theta, R))

  def loss(theta, U, R):
    return jnp.sum(stn_jax.warp(U, theta) * R)

  fn = jax.grad(loss)
  _, lower_s, compile_s, _ = compile_jax(lambda U, th, R: fn(th, U, R), args)

  # A fresh function object so that nothing is cached: the first call as a user sees it.
  def loss2(theta, U, R):
    return jnp.sum(stn_jax.warp(U, theta) * R)

  f2 = jax.jit(jax.grad(loss2))
  t0 = time.perf_counter()
  jax.block_until_ready(f2(args[1], args[0], args[2]))
  first = time.perf_counter() - t0
  return {
    "workload": wl.name,
    "lower_s": lower_s,
    "compile_s": compile_s,
    "first_call_s": first,
  }


def main(args) -> None:
  if args.repeats is None:
    args.repeats = 5 if args.quick else 21
  threads = args.threads or len(os.sched_getaffinity(0))
  if torch is not None:
    torch.set_num_threads(threads)
    if args.device == "gpu" and not torch.cuda.is_available():
      sys.exit("--device gpu: torch.cuda is not available")
  if args.device == "gpu" and jax.default_backend() != "gpu":
    sys.exit(f"--device gpu: JAX's default backend is {jax.default_backend()!r}, not 'gpu'")
  workloads = WORKLOADS
  if args.workloads:
    keep = [s.strip() for s in args.workloads.split(",") if s.strip()]
    workloads = tuple(wl for wl in workloads if any(k in wl.name for k in keep))
  if args.quick:
    workloads = tuple(dataclasses.replace(wl, n=max(2, wl.n // 8)) for wl in workloads)

  info = machine_info(args.device, threads)
  print(json.dumps(info, indent=1), flush=True)
  if torch is None:
    print("torch not installed: skipping PyTorch grid_sample", flush=True)
  if dm_pix is None:
    print("dm-pix not installed: skipping it (pip install dm-pix)", flush=True)

  t_start = time.perf_counter()
  rows = []
  for wl in workloads:
    rows.extend(bench_workload(wl, args, args.device))
  mnist = next((wl for wl in workloads if wl.name.startswith("mnist")), None)
  if mnist is not None:
    info["warp_grad_compile"] = warp_grad_compile(mnist)
  info["total_wall_s"] = time.perf_counter() - t_start
  info["loadavg_end"] = os.getloadavg()

  md = markdown(rows, info, args)
  print("\n" + md)
  if not args.no_save:
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    suffix = f"_threads{args.threads}" if args.threads and args.device == "cpu" else ""
    stem = os.path.join(out, f"sampler_{args.device}{suffix}")
    with open(stem + ".md", "w") as f:
      f.write(md)
    with open(stem + ".json", "w") as f:
      json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)
    print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
  main(ARGS)

"""Antialiased sampling against a supersampled, box-filtered reference: accuracy and cost.

A script, not part of the test run. See benchmarks/README.md ("Antialiased sampling").

  python benchmarks/bench_antialias.py              # accuracy, cost, figure -> benchmarks/results/
  python benchmarks/bench_antialias.py --quick      # smoke run: 128x128 signals, few repeats
  python benchmarks/bench_antialias.py --sweep      # also the level-bias / probe-count sweep
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import stn_jax  # noqa: E402
from stn_jax._src import antialias, sampling  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the reference's mean is taken in float64

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# --- signals: (N, N, C) float32 in [0, 1] -------------------------------------------------


def zone_plate(n: int, fmax: float = 0.45) -> np.ndarray:
  """cos of r^2: local frequency fmax * r / r_corner cycles/px, so fmax in the corners."""
  c = (n - 1) / 2
  y, x = np.mgrid[:n, :n] - c
  r_corner = math.hypot(c, c)
  phase = np.pi * fmax * (x * x + y * y) / r_corner
  return (0.5 + 0.5 * np.cos(phase))[..., None].astype(np.float32)


def chirp(n: int, fmax: float = 0.45) -> np.ndarray:
  """A horizontal chirp: frequency rising linearly from 0 to fmax cycles/px along x."""
  x = np.arange(n, dtype=np.float64)
  phase = np.pi * fmax * x * x / (n - 1)
  row = 0.5 + 0.5 * np.cos(phase)
  return np.broadcast_to(row[None, :, None], (n, n, 1)).astype(np.float32)


def natural(n: int) -> np.ndarray:
  """scikit-learn's bundled china.jpg (427x640 RGB, no download), centre crop, n x n."""
  from sklearn.datasets import load_sample_image

  img = load_sample_image("china.jpg").astype(np.float32) / 255.0
  h, w, _ = img.shape
  side = min(h, w)
  img = img[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
  # Box-average to n x n when that is an integer factor, else a plain crop.
  f = side // n
  img = img[: f * n, : f * n].reshape(n, f, n, f, 3).mean((1, 3)) if f > 1 else img[:n, :n]
  return np.ascontiguousarray(img)


SIGNALS = {"zone plate": zone_plate, "natural (china.jpg)": natural, "chirp": chirp}


# --- warps: (theta, transform, output shape as a fraction of n) ----------------------------


def warps(n: int) -> dict:
  def affine(a, b, c, d, e=0.0, f=0.0):
    return np.array([[a, b, e], [c, d, f]])

  rot = math.radians(30)
  out = {}
  for s in (2, 2.5, 4, 8):
    m = round(n / s)
    out[f"scale 1/{s}"] = (affine(1, 0, 0, 1), "affine", (m, m), True)
  m = round(n / 3)
  out["rotate 30, 1/3"] = (
    affine(math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)),
    "affine",
    (m, m),
    False,
  )
  out["aniso 1/4 x 1"] = (affine(1, 0, 0, 1), "affine", (n, n // 4), True)
  proj = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.4, 1.0]])
  out["projective"] = (proj, "projective", (n // 4, n // 4), False)
  out["identity"] = (affine(1, 0, 0, 1), "affine", (n, n), False)
  out["zoom in 2x"] = (affine(0.5, 0, 0, 0.5), "affine", (n, n), False)
  return out


def make_grid(theta, transform, shape, sub=1):
  return stn_jax.make_grid(
    jnp.asarray(theta, jnp.float64), (shape[0] * sub, shape[1] * sub), transform
  )


def reference(U, theta, transform, shape, sub=16):
  """Mean of sub x sub bilinear samples spread over each output pixel's mapped square."""
  ho, wo = shape
  rows = []
  grid = make_grid(theta, transform, shape, sub)
  u = jnp.asarray(U, jnp.float64)
  step = max(1, 4096 // (wo * sub))  # output rows per chunk: bounded memory
  for i in range(0, ho, step):
    g = grid[i * sub : (i + step) * sub]
    v = stn_jax.sample(u, g)
    r = v.shape[0] // sub
    rows.append(v.reshape(r, sub, wo, sub, -1).mean((1, 3)))
  return np.asarray(jnp.concatenate(rows))


# --- methods ----------------------------------------------------------------------------


def methods(sweep: bool) -> dict:
  def plain(kernel):
    return jax.jit(lambda u, g: stn_jax.sample(u, g, kernel))

  def aa(k=antialias.MAX_ANISOTROPY):
    return jax.jit(
      lambda u, g: sampling.sample_with_options(u, g, antialias=True, max_anisotropy=k)
    )

  out = {"bilinear": plain("bilinear"), "bicubic": plain("bicubic"), "antialiased": aa()}
  if sweep:
    out["antialiased N=1"] = aa(1)
    out["antialiased N=2"] = aa(2)
  return out


def split_low_high(U, jac):
  """U = low + high: low keeps input frequencies f with max |J^T f| <= 1/2 (output Nyquist)."""
  n = U.shape[0]
  f = np.fft.fftfreq(n)
  fy, fx = np.meshgrid(f, f, indexing="ij")
  # jac[d, a]: input pixels (d = x, y) per output pixel along a (x, y).
  fo_x = jac[0, 0] * fx + jac[1, 0] * fy
  fo_y = jac[0, 1] * fx + jac[1, 1] * fy
  keep = (np.abs(fo_x) <= 0.5) & (np.abs(fo_y) <= 0.5)
  spec = np.fft.fft2(U, axes=(0, 1))
  low = np.real(np.fft.ifft2(spec * keep[..., None], axes=(0, 1)))
  return low.astype(np.float32), (U - low).astype(np.float32)


def centre_jacobian(theta, transform, shape, n):
  g = np.asarray(make_grid(theta, transform, shape))
  pix = (g + 1) * n / 2 - 0.5
  i, j = shape[0] // 2, shape[1] // 2
  dx = (pix[i, j + 1] - pix[i, j - 1]) / 2
  dy = (pix[i + 1, j] - pix[i - 1, j]) / 2
  return np.stack([dx, dy], -1)  # [component (x, y), output axis (x, y)]


def rmse(a, b):
  return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def accuracy(n: int, sweep: bool) -> list[dict]:
  rows = []
  fns = methods(sweep)
  for sname, make_signal in SIGNALS.items():
    U = make_signal(n)
    for wname, (theta, transform, shape, is_resize) in warps(n).items():
      grid = make_grid(theta, transform, shape).astype(jnp.float32)
      if wname in ("identity", "zoom in 2x"):
        plain = np.asarray(fns["bilinear"](U, grid))
        got = np.asarray(fns["antialiased"](U, grid))
        rows.append(
          dict(
            signal=sname,
            warp=wname,
            method="antialiased",
            max_abs_vs_bilinear=float(np.max(np.abs(got - plain))),
          )
        )
        continue
      jac = centre_jacobian(theta, transform, shape, n)
      low, high = split_low_high(U, jac)
      refs = [reference(x, theta, transform, shape) for x in (U, low, high)]
      cands = dict(fns)
      if is_resize:
        cands["jax.image.resize(antialias)"] = lambda u, g, shape=shape: jax.image.resize(
          u, shape + (u.shape[-1],), "linear", antialias=True
        )
      for mname, fn in cands.items():
        outs = [np.asarray(fn(x, grid)) for x in (U, low, high)]
        e = [rmse(o, r) for o, r in zip(outs, refs, strict=True)]
        rows.append(
          dict(
            signal=sname,
            warp=wname,
            method=mname,
            rmse=e[0],
            psnr=20 * math.log10(1.0 / e[0]) if e[0] > 0 else float("inf"),
            rmse_below_nyquist=e[1],
            rmse_above_nyquist=e[2],
          )
        )
      print(
        f"{sname:20s} {wname:16s} "
        + " ".join(
          f"{r['method']}={r['rmse']:.4f}"
          for r in rows
          if r["signal"] == sname and r["warp"] == wname
        ),
        flush=True,
      )
  return rows


# --- cost -------------------------------------------------------------------------------


def cost(repeats: int) -> list[dict]:
  rng = np.random.default_rng(0)
  cases = {
    "256x256x3 -> 64x64 (4x)": ((256, 256, 3), (64, 64)),
    "256x256x3 -> 128x128 (2x)": ((256, 256, 3), (128, 128)),
    "batch 32 of 64x64x1 -> 16x16 (4x)": ((32, 64, 64, 1), (16, 16)),
  }
  rows = []
  for cname, (ushape, oshape) in cases.items():
    U = jnp.asarray(rng.random(ushape), jnp.float32)
    batch = ushape[:-3]
    theta = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), batch + (1, 1))
    theta = theta + 0.02 * rng.standard_normal(theta.shape)
    grid = stn_jax.make_grid(jnp.asarray(theta, jnp.float32), oshape)

    def loss_of(f):
      return lambda u, g: jnp.sum(f(u, g) ** 2)

    impls = {
      "bilinear": lambda u, g: stn_jax.sample(u, g),
      "antialiased": lambda u, g: stn_jax.sample(u, g, antialias=True),
      "antialiased N=1": lambda u, g: sampling.sample_with_options(
        u, g, antialias=True, max_anisotropy=1
      ),
      "jax.image.resize(antialias)": lambda u, g, o=oshape: jax.image.resize(
        u, u.shape[:-3] + o + (u.shape[-1],), "linear", antialias=True
      ),
    }
    fns = {}
    for name, f in impls.items():
      fwd = jax.jit(f)
      argnums = (0,) if name.startswith("jax.image") else (0, 1)
      bwd = jax.jit(jax.grad(loss_of(f), argnums=argnums))
      for tag, fn in (("fwd", fwd), ("fwd+bwd", bwd)):
        compiled = fn.lower(U, grid).compile()
        mem = compiled.memory_analysis()
        peak = None if mem is None else int(mem.temp_size_in_bytes + mem.output_size_in_bytes)
        jax.block_until_ready(fn(U, grid))
        fns[(name, tag)] = (fn, peak)
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved: every implementation once per round
      for k, (fn, _) in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(U, grid))
        times[k].append(time.perf_counter() - t)
    for (name, tag), (_, peak) in fns.items():
      med = statistics.median(times[(name, tag)])
      base = statistics.median(times[("bilinear", tag)])
      rows.append(
        dict(
          case=cname,
          impl=name,
          pass_=tag,
          median_ms=1e3 * med,
          ratio_vs_bilinear=med / base,
          temp_plus_out_bytes=peak,
        )
      )
      print(
        f"{cname:34s} {name:28s} {tag:8s} {1e3 * med:8.2f} ms  x{med / base:5.2f}  {peak} B",
        flush=True,
      )
  return rows


# --- figure -----------------------------------------------------------------------------


def figure(n: int, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  U = zone_plate(n)
  theta, transform, shape, _ = warps(n)["scale 1/4"]
  grid = make_grid(theta, transform, shape).astype(jnp.float32)
  panels = {
    "input (256x256)": U,
    "reference (16x16 box)": reference(U, theta, transform, shape),
    "bilinear": stn_jax.sample(U, grid),
    "antialiased": stn_jax.sample(U, grid, antialias=True),
  }
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
  for ax, (title, img) in zip(axes, panels.items(), strict=True):
    ax.imshow(np.asarray(img)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
  fig.suptitle("Zone plate (to 0.45 cycles/px) downsampled 4x to 64x64")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  print("wrote", path)


def to_markdown(result: dict) -> str:
  """The accuracy and cost tables of a result dict, as markdown."""
  lines = [
    f"n = {result['n']}, jax {result['jax']}",
    f"load before: `{result['uptime_before']}`",
    f"load after: `{result.get('uptime_after', '')}`",
    "",
  ]
  acc = result.get("accuracy", [])
  if acc:
    lines += [
      "| signal | warp | method | RMSE | PSNR dB | RMSE below Nyquist (blur) | above (moire) |",
      "|---|---|---|---|---|---|---|",
    ]
    for r in acc:
      if "rmse" in r:
        lines.append(
          f"| {r['signal']} | {r['warp']} | {r['method']} | {r['rmse']:.4f} | {r['psnr']:.1f} | "
          f"{r['rmse_below_nyquist']:.4f} | {r['rmse_above_nyquist']:.4f} |"
        )
      else:
        lines.append(
          f"| {r['signal']} | {r['warp']} | {r['method']} | max abs diff to bilinear: "
          f"{r['max_abs_vs_bilinear']:.1e} | | | |"
        )
    lines.append("")
  if result.get("cost"):
    lines += [
      "| case | implementation | pass | median ms | x bilinear | XLA temp+out MB |",
      "|---|---|---|---|---|---|",
    ]
    for r in result["cost"]:
      mb = "" if r["temp_plus_out_bytes"] is None else f"{r['temp_plus_out_bytes'] / 2**20:.1f}"
      lines.append(
        f"| {r['case']} | {r['impl']} | {r['pass_']} | {r['median_ms']:.2f} | "
        f"{r['ratio_vs_bilinear']:.2f} | {mb} |"
      )
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--sweep", action="store_true", help="also N=1, N=2 and LEVEL_BIAS -0.5")
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--skip-cost", action="store_true")
  p.add_argument("--skip-accuracy", action="store_true")
  p.add_argument("--out", default=RESULTS)
  a = p.parse_args()
  n = 128 if a.quick else 256
  os.makedirs(a.out, exist_ok=True)
  load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(load)
  result = dict(n=n, uptime_before=load, jax=jax.__version__)
  if not a.skip_accuracy:
    result["accuracy"] = accuracy(n, a.sweep)
    if a.sweep:
      default = antialias.LEVEL_BIAS
      antialias.LEVEL_BIAS = -0.5
      rows = accuracy(n, False)
      result["accuracy_bias_-0.5"] = [r for r in rows if r["method"] == "antialiased"]
      antialias.LEVEL_BIAS = default
    figure(n, os.path.join(a.out, "antialias_zone_plate.png"))
  if not a.skip_cost:
    result["cost"] = cost(5 if a.quick else a.repeats)
  result["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(result["uptime_after"])
  suffix = "_quick" if a.quick else ""
  with open(os.path.join(a.out, f"antialias_cpu{suffix}.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(a.out, f"antialias_cpu{suffix}.md"), "w") as f:
    f.write(to_markdown(result))


if __name__ == "__main__":
  main()

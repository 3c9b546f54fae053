"""Benchmarks stn_jax.fields.integrate + warp against PyTorch and MONAI (scaling and squaring).

A script, not part of the test run. See benchmarks/README.md ("Deformation fields").

  python benchmarks/bench_fields.py            # 2-D (8, 256, 256, 2) and 3-D (1, 96, 96, 96, 3)
  python benchmarks/bench_fields.py --quick    # smoke run: small fields, few repeats

Every implementation runs the same algorithm: u = v / 2^7, then 7 times u += warp(u, u)
(bilinear, border padding), then the image is warped by u. "fwd" times that; "fwd+bwd"
times the gradient w.r.t. v of sum(V**2) (the loss needs the forward). float32, channels
as each library wants them (the layout change is outside the timed region), compile and
warm-up excluded, jax results block_until_ready, implementations interleaved per repeat,
medians reported.
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stn_jax import fields  # noqa: E402

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional
  torch = None
try:
  from monai.networks.blocks import DVF2DDF, Warp
except ImportError:  # pragma: no cover - monai is optional
  DVF2DDF = Warp = None

STEPS = 7


def _jax_fns():
  def forward(U, v):
    return fields.warp(U, fields.integrate(v, STEPS))

  def loss(v, U):
    return jnp.sum(forward(U, v) ** 2)

  return jax.jit(forward), jax.jit(jax.grad(loss))


def _torch_warp(image, ddf):
  """grid_sample with a pixel displacement (channels-first, (x, y[, z]) channels)."""
  d = ddf.shape[1]
  shape = ddf.shape[2:]
  axes = [torch.arange(s, dtype=ddf.dtype) for s in shape]
  mesh = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], 0)  # (d, *S): x first
  scale = torch.tensor([2.0 / s for s in shape[::-1]], dtype=ddf.dtype).reshape((d,) + (1,) * d)
  grid = (mesh + ddf + 0.5) * scale - 1.0  # align_corners=False pixel centres
  grid = grid.movedim(1, -1)
  return F.grid_sample(image, grid, "bilinear", "border", align_corners=False)


def _torch_fns():
  def forward(U, v):
    u = v / 2**STEPS
    for _ in range(STEPS):
      u = u + _torch_warp(u, u)
    return _torch_warp(U, u)

  def backward(U, v):
    v = v.detach().requires_grad_(True)
    (forward(U, v) ** 2).sum().backward()
    return v.grad

  return forward, backward


def _monai_fns(d):
  integrate = DVF2DDF(num_steps=STEPS, mode="bilinear", padding_mode="border")
  warp = Warp(mode="bilinear", padding_mode="border")

  def forward(U, v):
    return warp(U, integrate(v))

  def backward(U, v):
    v = v.detach().requires_grad_(True)
    (forward(U, v) ** 2).sum().backward()
    return v.grad

  return forward, backward


def _time(fn, repeats):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run(shape, repeats):
  d = len(shape) - 2
  rng = np.random.default_rng(0)
  n, spatial = shape[0], shape[1:-1]
  U = rng.normal(size=(n, *spatial, 1)).astype(np.float32)
  v = (rng.normal(size=shape) * 2.0).astype(np.float32)
  cases = {}
  fwd, bwd = _jax_fns()
  Uj, vj = jnp.asarray(U), jnp.asarray(v)
  cases["stn_jax"] = (
    lambda: fwd(Uj, vj).block_until_ready(),
    lambda: bwd(vj, Uj).block_until_ready(),
  )
  if torch is not None:
    Ut = torch.from_numpy(np.moveaxis(U, -1, 1).copy())
    vt = torch.from_numpy(np.moveaxis(v, -1, 1).copy())  # (x, y[, z]) channels
    tf, tb = _torch_fns()
    cases["torch"] = (
      lambda: torch.no_grad()(tf)(Ut, vt),
      lambda: tb(Ut, vt),
    )
    if DVF2DDF is not None:
      vm = torch.from_numpy(np.asarray(fields.to_monai(v)).copy())  # array-axis channels
      mf, mb = _monai_fns(d)
      cases["monai"] = (lambda: torch.no_grad()(mf)(Ut, vm), lambda: mb(Ut, vm))
  if torch is not None:  # sanity: the implementations compute the same thing
    ref = np.asarray(fwd(Uj, vj))
    with torch.no_grad():
      got = {"torch": tf(Ut, vt)}
      if DVF2DDF is not None:
        got["monai"] = mf(Ut, vm)
    for name, out in got.items():
      diff = np.abs(np.moveaxis(out.numpy(), 1, -1) - ref).max()
      print(f"# {shape} max |{name} - stn_jax| = {diff:.1e}")
  times = {(name, mode): [] for name in cases for mode in ("fwd", "fwd+bwd")}
  for fns in cases.values():  # compile and warm up
    fns[0]()
    fns[1]()
  for _ in range(repeats):
    for name, fns in cases.items():
      times[(name, "fwd")].append(_time(fns[0], 1))
      times[(name, "fwd+bwd")].append(_time(fns[1], 1))
  return {k: statistics.median(t) * 1e3 for k, t in times.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--no-3d", action="store_true", help="skip the 3-D field")
  args = p.parse_args()
  repeats = args.repeats or (3 if args.quick else 11)
  shapes = [(2, 64, 64, 2)] if args.quick else [(8, 256, 256, 2)]
  if not args.no_3d:
    shapes.append((1, 24, 24, 24, 3) if args.quick else (1, 96, 96, 96, 3))
  if torch is not None:
    torch.set_num_threads(os.cpu_count() or 1)
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
  print(f"# jax {jax.__version__}", f"torch {torch.__version__}" if torch else "no torch")
  print(f"# load average {os.getloadavg()}")
  print("| field | impl | fwd ms | fwd+bwd ms | vs torch (fwd / fwd+bwd) |")
  print("|---|---|---:|---:|---:|")
  for shape in shapes:
    try:
      res = run(shape, repeats)
    except (ValueError, TypeError) as e:  # sample without 3-D support
      print(f"| {shape} | skipped: {str(e).splitlines()[0][:80]} | | | |")
      continue
    names = sorted({k[0] for k in res}, key=["stn_jax", "torch", "monai"].index)
    for name in names:
      f, b = res[(name, "fwd")], res[(name, "fwd+bwd")]
      ratio = ""
      if ("torch", "fwd") in res:
        ratio = f"{f / res[('torch', 'fwd')]:.2f}x / {b / res[('torch', 'fwd+bwd')]:.2f}x"
      print(f"| {shape} | {name} | {f:.1f} | {b:.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
  main()

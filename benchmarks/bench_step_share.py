"""The transformer's share of an ST-CNN training step: stn_jax vs an equivalent PyTorch model.

A script, not part of the test run. See benchmarks/README.md.

  python benchmarks/bench_step_share.py           # -> results/step_share_cpu_threads<N>.{md,json}
  taskset -c 0 python benchmarks/bench_step_share.py     # one thread for both frameworks
  python benchmarks/bench_step_share.py --repeats 5 --no-save   # smoke run

The model is the demo's (``stn_jax.digits.models.Classifier``, RTS): a localisation net
(5x5/2 conv 16, 3x3/2 conv 32, 4x4 adaptive average pool, dense 32, affine head) on the
42x42 input, ``affine_grid`` + bilinear ``grid_sample`` to 28x28, then the classifier CNN
(3x3 conv 16, 3x3/2 conv 32, 3x3/2 conv 64, 3x3/2 conv 64, dense 128, dense 10). The
PyTorch twin has the same layers and shapes (NCHW). Each framework times two training
steps (forward, cross entropy, backward, AdamW update) on a fixed batch of 128:

* ``st``: the whole ST-CNN on the 42x42 images;
* ``cls``: the classifier CNN alone on the 28x28 views.

The transformer's share of the step is ``1 - cls / st``. Medians over ``--repeats`` runs,
taken round-robin so that both frameworks see the same machine load; compilation excluded.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stn_jax.digits import models

BATCH = 128
SHAPE = (42, 42)
VIEW = models.ST_OUTPUT_SHAPE
LR = 1e-3


def jax_steps(x: np.ndarray, views: np.ndarray, y: np.ndarray) -> dict:
  """Jitted ``st`` and ``cls`` training steps, each a closure over its own state."""

  def make(model: nnx.Module, images: np.ndarray, takes_tuple: bool):
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(LR)
    state = {"params": params, "opt": tx.init(params)}
    images, labels = jnp.asarray(images), jnp.asarray(y)

    @jax.jit
    def step(params, opt_state, images, labels):
      def loss_fn(p):
        out = nnx.merge(graphdef, p)(images)
        logits = out[0] if takes_tuple else out
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    def run():
      state["params"], state["opt"], loss = step(state["params"], state["opt"], images, labels)
      return jax.block_until_ready(loss)

    return run

  rngs = nnx.Rngs(0)
  return {
    "st": make(models.Classifier(SHAPE, model="st-cnn", rngs=rngs), x, True),
    "cls": make(models.CNN(VIEW, rngs=rngs), views, False),
  }


def torch_steps(x: np.ndarray, views: np.ndarray, y: np.ndarray, torch) -> dict:
  nn, F = torch.nn, torch.nn.functional

  class CNN(nn.Module):
    def __init__(self, side: int):
      super().__init__()
      channels = (16, 32, 64, 64)
      inputs = (1, *channels[:-1])
      self.convs = nn.ModuleList(
        nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1)
        for i, (c_in, c_out) in enumerate(zip(inputs, channels, strict=True))
      )
      for _ in channels[1:]:
        side = -(-side // 2)
      self.dense = nn.Linear(channels[-1] * side * side, 128)
      self.logits = nn.Linear(128, 10)

    def forward(self, v):
      for conv in self.convs:
        v = F.relu(conv(v))
      return self.logits(F.relu(self.dense(v.flatten(1))))

  class STCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(1, 16, 5, stride=2, padding=2)
      self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
      self.pool = nn.AdaptiveAvgPool2d(4)
      self.dense = nn.Linear(32 * 16, 32)
      self.head = nn.Linear(32, 6)
      nn.init.zeros_(self.head.weight)
      with torch.no_grad():
        self.head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
      self.cnn = CNN(VIEW[0])

    def forward(self, u):
      h = F.relu(self.conv2(F.relu(self.conv1(u))))
      h = F.relu(self.dense(self.pool(h).flatten(1)))
      theta = self.head(h).view(-1, 2, 3)
      grid = F.affine_grid(theta, (u.shape[0], 1) + VIEW, align_corners=False)
      v = F.grid_sample(u, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
      return self.cnn(v)

  torch.manual_seed(0)
  labels = torch.from_numpy(np.asarray(y, np.int64))

  def make(model, images):
    images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 1)))
    opt = torch.optim.AdamW(model.parameters(), lr=LR)

    def run():
      opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(model(images), labels)
      loss.backward()
      opt.step()
      return loss.item()

    return run

  return {"st": make(STCNN(), x), "cls": make(CNN(VIEW[0]), views)}


def time_round_robin(runners: dict, repeats: int, warmup: int = 3) -> dict:
  for run in runners.values():
    for _ in range(warmup):
      run()
  names = list(runners)
  samples = {k: [] for k in names}
  for r in range(repeats):
    for k in names[r % len(names) :] + names[: r % len(names)]:
      t0 = time.perf_counter()
      runners[k]()
      samples[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args(argv)

  import torch

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(BATCH, *SHAPE, 1)).astype(np.float32)
  views = rng.uniform(size=(BATCH, *VIEW, 1)).astype(np.float32)
  y = rng.integers(0, 10, BATCH).astype(np.int32)
  runners = {f"jax_{k}": v for k, v in jax_steps(x, views, y).items()}
  runners.update({f"torch_{k}": v for k, v in torch_steps(x, views, y, torch).items()})
  t = time_round_robin(runners, args.repeats)
  rows = {}
  for fw in ("jax", "torch"):
    st, cls = t[f"{fw}_st"], t[f"{fw}_cls"]
    rows[fw] = {"st_ms": 1e3 * st, "cls_ms": 1e3 * cls, "transformer_share": 1 - cls / st}
  cpu = next(
    (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
    platform.processor(),
  )
  machine = {
    "cpu_model": cpu,
    "threads": threads,
    "jax": jax.__version__,
    "torch": torch.__version__,
    "python": sys.version.split()[0],
    "loadavg": os.getloadavg(),
  }
  lines = [
    "# The transformer's share of an ST-CNN training step (demo model, batch 128)",
    "",
    f"{cpu}, {threads} threads for both; JAX {jax.__version__}, PyTorch {torch.__version__}; "
    f"median of {args.repeats}, round-robin. `share` = 1 - classifier step / ST-CNN step.",
    "",
    "| | ST-CNN step (ms) | classifier alone (ms) | transformer's share |",
    "|---|---|---|---|",
  ]
  for fw, name in (("jax", "stn_jax + Flax NNX"), ("torch", "PyTorch")):
    r = rows[fw]
    lines.append(
      f"| {name} | {r['st_ms']:.1f} | {r['cls_ms']:.1f} | {100 * r['transformer_share']:.0f}% |"
    )
  ratio = rows["jax"]["st_ms"] / rows["torch"]["st_ms"]
  lines += ["", f"Whole ST-CNN step, stn_jax / PyTorch: {ratio:.2f}x.", ""]
  text = "\n".join(lines)
  print(text)
  if not args.no_save:
    os.makedirs(args.out, exist_ok=True)
    name = os.path.join(args.out, f"step_share_cpu_threads{threads}")
    with open(name + ".md", "w") as f:
      f.write(text)
    with open(name + ".json", "w") as f:
      json.dump({"machine": machine, "repeats": args.repeats, "results": rows}, f, indent=2)
  return rows


if __name__ == "__main__":
  main()

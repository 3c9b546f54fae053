"""Where the time of ``stn-jax demo`` goes: the train step split into parts, and the rest.

A script, not part of the test run. See benchmarks/README.md.

  python benchmarks/bench_demo_time.py                 # -> results/demo_time_cpu.{md,json}
  python benchmarks/bench_demo_time.py --repeats 5 --no-save   # smoke run

Step parts, each a jitted function timed with ``block_until_ready`` (compilation excluded),
medians over ``--repeats`` rounds taken round-robin (every part once per round, the order
rotated), so that all parts see the same machine load and their ratios hold on a busy box:

* ``step``: the demo's whole train step (``train.jit_train_step``: batch, forward,
  backward, AdamW update);
* ``batch``: drawing and distorting the batch (``train.batch_for_step``);
* ``grad``: forward + backward of the whole model on a fixed batch;
* ``optimizer``: the AdamW update from fixed gradients;
* ST-CNN only: ``classifier`` (forward + backward of its CNN on fixed 28x28 views),
  ``localisation`` (localisation net + head to ``theta``, forward + backward) and
  ``sampler`` (``theta`` -> grid -> bilinear sample, forward + backward w.r.t. ``theta``).

The non-step time is timed once each: generating the test set, compiling the step, one
checkpoint save and the evaluation on the test set.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from stn_jax._src import modules
from stn_jax.digits import checkpoints, train
from stn_jax.digits.cli import DEMO_STEPS


def _ready(fn, *args):
  def run():
    return jax.block_until_ready(fn(*args))

  return run


def _on_lax_conv(state: train.TrainState) -> train.TrainState:
  """``state`` with the CNN's convolutions on XLA's (``nnx.Conv``'s default): the "before"."""
  model = state.model()
  for conv in model.cnn.convs:
    conv.conv_general_dilated = jax.lax.conv_general_dilated
  graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  return state.replace(graphdef=graphdef)


def model_parts(config: train.Config, data: dict) -> dict:
  """Runners of the step parts of one demo model, keyed ``<model>/<part>``."""
  state = train.create_train_state(config)
  digits, labels = jnp.asarray(data["digits"]), jnp.asarray(data["labels"])
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  images, targets = train.batch_for_step(
    config.task, key, jnp.int32(7), digits, labels, config.batch_size
  )
  graphdef, rest = state.graphdef, state.rest

  def loss(params, x):
    logits, _ = nnx.merge(graphdef, params, rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  grad = jax.jit(jax.grad(loss))
  grads = grad(state.params, images)

  @jax.jit
  def update(params, opt_state, grads):
    updates, opt_state = state.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batch = jax.jit(train.batch_for_step, static_argnums=(0, 5))
  parts = {
    "step": _ready(train.jit_train_step(config), state, digits, labels, key),
    "step, nnx.Conv's XLA convolutions": _ready(
      train.jit_train_step(config), _on_lax_conv(state), digits, labels, key
    ),
    "batch": _ready(batch, config.task, key, jnp.int32(7), digits, labels, config.batch_size),
    "grad": _ready(grad, state.params, images),
    "optimizer": _ready(update, state.params, state.opt_state, grads),
  }
  if config.model == "st-cnn":
    parts.update(_transformer_parts(state.model(), images, targets))
  return {f"{config.model}/{k}": v for k, v in parts.items()}


def _transformer_parts(model: train.Classifier, images: jax.Array, targets: jax.Array) -> dict:
  """The ST-CNN's classifier, localisation net and sampler, each forward + backward."""
  stn = model.stn
  views, theta = stn(images)
  cnn_def, cnn_params = nnx.split(model.cnn, nnx.Param)
  loc_def, loc_params = nnx.split(stn, nnx.Param)
  r_theta = jax.random.normal(jax.random.key(1), theta.shape)
  r_views = jax.random.normal(jax.random.key(2), views.shape)

  def cls_loss(p):
    logits = nnx.merge(cnn_def, p)(views)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def loc_loss(p):
    net = nnx.merge(loc_def, p)
    return jnp.sum(net.head(net.localisation(images)) * r_theta.reshape(len(images), -1))

  def sampler_loss(t):
    out, _ = modules.warp_from_head(t.reshape(len(images), -1), images, stn.options)
    return jnp.sum(out * r_views)

  return {
    "classifier": _ready(jax.jit(jax.grad(cls_loss)), cnn_params),
    "localisation": _ready(jax.jit(jax.grad(loc_loss)), loc_params),
    "sampler": _ready(jax.jit(jax.grad(sampler_loss)), theta),
  }


def time_round_robin(runners: dict, repeats: int, warmup: int = 3) -> dict:
  """Median seconds of each runner over ``repeats`` rotated rounds."""
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


def non_step_times(config: train.Config) -> dict:
  """Seconds of the demo's work outside the train steps, for ``config``'s model."""
  out = {}
  t0 = time.perf_counter()
  data = train.load_data(config)
  out["data (train digits + test set)"] = time.perf_counter() - t0
  state = train.create_train_state(config)
  digits, labels = jnp.asarray(data["digits"]), jnp.asarray(data["labels"])
  key = jax.random.key(0)
  t0 = time.perf_counter()
  train.jit_train_step(config).lower(state, digits, labels, key).compile()
  out["compile step"] = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as tmp:
    mngr = checkpoints.manager(tmp)
    t0 = time.perf_counter()
    train._save_state(mngr, state.replace(step=jnp.int32(1)), train.TrainLog(), config)
    out["one checkpoint"] = time.perf_counter() - t0
    mngr.close()
  args = (state.graphdef, state.params, state.rest, data["test_images"], data["test_labels"])
  t0 = time.perf_counter()
  train.evaluate(*args)
  out["evaluate (first, compiles)"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  train.evaluate(*args)
  out["evaluate (again)"] = time.perf_counter() - t0
  return out


def report(times: dict, other: dict, load: list, repeats: int) -> str:
  """A Markdown table of the parts (ms, and share of the model's step) and the rest (s)."""
  lines = [
    "# Where `stn-jax demo`'s time goes (CPU)",
    "",
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, JAX "
    f"{jax.__version__}; median of {repeats} round-robin rounds; load average before / "
    f"after: {load[0]} / {load[1]}.",
    "",
    "| part | ms | share of the model's step |",
    "|---|---:|---:|",
  ]
  for name, t in times.items():
    step = times[name.split("/")[0] + "/step"]
    lines.append(f"| {name} | {1e3 * t:.1f} | {t / step:.0%} |")
  lines += ["", "| outside the steps | s |", "|---|---:|"]
  lines += [f"| {k} | {v:.2f} |" for k, v in other.items()]
  steps = " + ".join(f"{n} x {times[m + '/step'] * 1e3:.1f} ms" for m, n in DEMO_STEPS.items())
  total = sum(n * times[m + "/step"] for m, n in DEMO_STEPS.items())
  lines += ["", f"Demo steps at these medians: {steps} = {total:.0f} s."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--no-save", action="store_true")
  parser.add_argument("--steps-only", action="store_true", help="skip the non-step times")
  args = parser.parse_args(argv)
  load = [os.getloadavg()]
  configs = [train.Config(task="rts", model=m, steps=n) for m, n in DEMO_STEPS.items()]
  other = {} if args.steps_only else non_step_times(configs[0])
  data = train.load_data(configs[0], test=False)
  runners = {}
  for config in configs:
    runners.update(model_parts(config, data))
  times = time_round_robin(runners, args.repeats)
  load.append(os.getloadavg())
  text = report(times, other, [", ".join(f"{x:.2f}" for x in la) for la in load], args.repeats)
  print(text)
  if not args.no_save:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "demo_time_cpu.md"), "w") as f:
      f.write(text)
    with open(os.path.join(args.out, "demo_time_cpu.json"), "w") as f:
      json.dump({"ms": {k: 1e3 * v for k, v in times.items()}, "other_s": other}, f, indent=2)


if __name__ == "__main__":
  sys.exit(main())

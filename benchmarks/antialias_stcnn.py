"""Does antialiasing help a zooming-out transformer learn? CNN vs ST-CNN vs ST-CNN + antialias.

A script, not part of the test run. See benchmarks/README.md.

  python benchmarks/antialias_stcnn.py --out /tmp/aa-stcnn            # 3 models x 2 seeds
  python benchmarks/antialias_stcnn.py --out /tmp/aa-stcnn --steps 3 --seeds 1 --batches 2

The task is RTS (42x42 input, the digit rotated, scaled 0.7-1.2 and translated) and the
transformer samples a 14x14 view (``--st-output 14``), so to frame a ~28-pixel digit it
zooms out about 2x, and 3x at initialisation (the identity maps the whole 42x42 input onto
14x14): plain bilinear reads 4 of the ~9 input pixels under each output pixel. The CNN
baseline classifies the 42x42 input itself. Every run uses one thread.

Gradient noise of theta: at a fixed set of parameters, the gradient of the mean
cross-entropy w.r.t. the localisation head's parameters (its kernel and bias, which output
theta) is taken on ``--batches`` independent training minibatches of 128 (the same
minibatches for every model). Reported: ``|E g|``, the norm of the mean gradient;
``std g``, the square root of the summed per-parameter variance across minibatches; and
their ratio (noise to signal; above 1 means the minibatch gradient is mostly noise). It is
measured at initialisation (the same parameters for ST-CNN with and without antialias: the
option changes only the sampler) and at the end of training (each run's own parameters).

Writes ``OUT/antialias_stcnn.json`` and ``OUT/antialias_stcnn.md``; each run trains in
``OUT/runs/<model>/seed<k>/`` (a finished run is skipped on a rerun); ``--report`` only
tabulates the finished runs.
"""

import os

# One thread per run (the machine is shared); set before jax is imported.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
  " intra_op_parallelism_threads=1"
).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from stn_jax.digits import train  # noqa: E402

MODELS = {
  "cnn": dict(model="cnn"),
  "st-cnn": dict(model="st-cnn"),
  "st-cnn-antialias": dict(model="st-cnn", antialias=True),
}


def head_gradients(model, config: train.Config, data: dict, n_batches: int) -> np.ndarray:
  """``(n_batches, P)`` gradients of the minibatch loss w.r.t. the theta head's parameters."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  digits, labels = jnp.asarray(data["digits"]), jnp.asarray(data["labels"])
  key = jax.random.key(12345)  # not the training key: minibatches no run trained on

  @jax.jit
  def grad_on(step):
    images, targets = train.batch_for_step(
      config.task, key, step, digits, labels, config.batch_size
    )

    def loss(p):
      logits, _ = nnx.merge(graphdef, p, rest)(images)
      return train._loss(logits, targets)[0]

    g = jax.grad(loss)(params)
    head = g["stn"]["head"]
    return jnp.concatenate([head["kernel"].value.ravel(), head["bias"].value.ravel()])

  return np.stack([np.asarray(grad_on(jnp.int32(i))) for i in range(n_batches)])


def noise_stats(g: np.ndarray) -> dict:
  g = g.astype(np.float64)
  mean_norm = float(np.linalg.norm(g.mean(0)))
  std = float(np.sqrt(g.var(0, ddof=1).sum()))
  return {"mean_norm": mean_norm, "std": std, "ratio": std / mean_norm if mean_norm else None}


def run_one(name: str, seed: int, args, data: dict) -> dict:
  workdir = os.path.join(args.out, "runs", name, f"seed{seed}")
  done = os.path.join(workdir, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  config = train.Config(
    task="rts",
    st_output=args.st_output,
    steps=args.steps,
    seed=seed,
    checkpoint_every=args.steps,
    log_every=max(1, args.steps // 10),
    **MODELS[name],
  )
  result = {"model": name, "seed": seed}
  if config.model.startswith("st-"):
    init_model = train.create_model(config)
    result["noise_init"] = noise_stats(head_gradients(init_model, config, data, args.batches))
  tick = time.perf_counter()
  # resume: a run interrupted part-way continues from its last checkpoint.
  metrics = train.train_and_evaluate(config, workdir, resume=True, progress=False, data=data)
  result["train_seconds"] = time.perf_counter() - tick
  result["steps_per_second"] = metrics["steps_per_second"]
  result["test_error"] = metrics["test_error"]
  if config.model.startswith("st-"):
    model, _ = train.restore_model(workdir)
    result["noise_final"] = noise_stats(head_gradients(model, config, data, args.batches))
  with open(done, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result), flush=True)
  return result


def table(results: list[dict], args) -> str:
  lines = [
    f"RTS (42x42 in), transformer view {args.st_output}x{args.st_output}, {args.steps} steps, "
    f"batch 128, 1 thread, {platform.processor() or platform.machine()}. Test error over 3000 "
    f"images; gradient noise of the theta head over {args.batches} minibatches "
    "(std g / norm of E g, with both; lower is cleaner). steps/s: wall clock.",
    "",
    "| model | seed | test error | steps/s | noise at init | noise at end |",
    "|---|---|---|---|---|---|",
  ]

  def fmt(r, key):
    s = r.get(key)
    return "-" if s is None else f"{s['ratio']:.2f} (std {s['std']:.3g}, mean {s['mean_norm']:.3g})"

  for r in results:
    lines.append(
      f"| {r['model']} | {r['seed']} | {100 * r['test_error']:.2f}% | "
      f"{r['steps_per_second']:.1f} | {fmt(r, 'noise_init')} | {fmt(r, 'noise_final')} |"
    )
  lines += ["", "| model | mean test error | mean noise at init | mean noise at end |"]
  lines.append("|---|---|---|---|")
  for name in MODELS:
    rs = [r for r in results if r["model"] == name]
    if not rs:
      continue
    err = np.mean([r["test_error"] for r in rs])
    ni = [r["noise_init"]["ratio"] for r in rs if "noise_init" in r]
    nf = [r["noise_final"]["ratio"] for r in rs if "noise_final" in r]
    ni_s = f"{np.mean(ni):.2f}" if ni else "-"
    nf_s = f"{np.mean(nf):.2f}" if nf else "-"
    lines.append(f"| {name} | {100 * err:.2f}% | {ni_s} | {nf_s} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--batches", type=int, default=32)
  parser.add_argument("--st-output", type=int, default=14)
  parser.add_argument(
    "--only",
    default=None,
    help="comma-separated model:seed runs to do (e.g. st-cnn:1), to split the grid over "
    "processes; the table then holds the runs finished in OUT",
  )
  parser.add_argument(
    "--report", action="store_true", help="only tabulate the runs already finished in OUT"
  )
  args = parser.parse_args()
  only = None if args.only is None else set(args.only.split(","))
  os.makedirs(args.out, exist_ok=True)
  results = []
  if args.report:
    for seed in range(args.seeds):
      for name in MODELS:
        path = os.path.join(args.out, "runs", name, f"seed{seed}", "result.json")
        if os.path.exists(path):
          with open(path) as f:
            results.append(json.load(f))
  else:
    data = train.load_data(train.Config(task="rts"), test=True)
    for seed in range(args.seeds):
      for name in MODELS:
        if only is None or f"{name}:{seed}" in only:
          results.append(run_one(name, seed, args, data))
  with open(os.path.join(args.out, "antialias_stcnn.json"), "w") as f:
    json.dump({"args": vars(args), "results": results}, f, indent=2)
  with open(os.path.join(args.out, "antialias_stcnn.md"), "w") as f:
    f.write(table(results, args))
  print(table(results, args))


if __name__ == "__main__":
  main()

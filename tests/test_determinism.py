"""Bitwise determinism: outputs and both gradients repeat exactly, on 1 thread and on 2.

Each run is a fresh process (XLA:CPU sizes its thread pool from the CPU affinity mask at
start-up, as ``benchmarks/bench_sampler.py`` sets it) that samples 2-D and 3-D inputs,
one and several channels, float32 and float64, large enough that every pass is split
across threads, and prints a hash of the bytes of ``V``, ``dU`` and ``dgrid`` (the
gradients of ``sum(V ** 2)``) for two calls. The kernels' U-gradient is a scatter (many
points add into one pixel), the one place where threads could reorder a sum: it splits
the work by example, each example's points added by one thread in point order, so the
order does not depend on the thread count. Both gradients come from one fused pass, or,
with fewer examples than threads, from the two single passes: the same arithmetic, so the
same bits. The pure-JAX path on the CPU is checked too.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CPUS = sorted(os.sched_getaffinity(0))


def _hashes(threads: int, native: bool) -> dict:
  env = {**os.environ, "STN_JAX_NATIVE": "1" if native else "0", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device: several would switch the kernels off
  proc = subprocess.run(
    [sys.executable, __file__, str(threads)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("native", [True, False], ids=["kernels", "pure_jax"])
def test_bitwise_identical_across_calls_and_thread_counts(native):
  if len(CPUS) < 2:
    pytest.skip("needs 2 schedulable CPUs to compare 1 thread with 2")
  one, two = _hashes(1, native), _hashes(2, native)
  assert one["native"] is native and two["native"] is native
  assert one["threads"] == 1 and two["threads"] == 2
  for case, (first, second) in one["cases"].items():
    assert first == second, f"{case}: two calls on 1 thread differ"
    assert two["cases"][case][0] == two["cases"][case][1], f"{case}: two calls on 2 threads"
    assert first == two["cases"][case][0], f"{case}: 1 thread and 2 threads differ"


# The probe, run as a script in the subprocess: python tests/test_determinism.py THREADS.

CASES = {
  # name: (U shape, grid shape, kernel); the batch of 6 lets the scatter split over examples.
  "image_1ch": ((6, 48, 40, 1), (6, 37, 33, 2), "bilinear"),
  "image_3ch": ((6, 48, 40, 3), (6, 37, 33, 2), "bilinear"),
  "volume_2ch": ((4, 10, 14, 12, 2), (4, 9, 11, 13, 3), "bilinear"),
  # One example: on 2 threads the fused backward pass hands over to the two single passes
  # (more parallel with fewer examples than threads), on 1 it runs fused: the same bits.
  "one_image_3ch": ((1, 48, 40, 3), (1, 37, 33, 2), "bilinear"),
  "image_3ch_bicubic": ((6, 48, 40, 3), (6, 37, 33, 2), "bicubic"),
  "volume_2ch_tricubic": ((4, 6, 7, 8, 2), (4, 5, 6, 7, 3), "bicubic"),
  "image_9ch_nearest": ((6, 48, 40, 9), (6, 37, 33, 2), "nearest"),
}


def _probe(threads: int) -> dict:
  os.sched_setaffinity(0, CPUS[:threads])
  import jax
  import jax.numpy as jnp
  import numpy as np

  import stn_jax

  jax.config.update("jax_enable_x64", True)

  def run(u, g, kernel):
    def loss(u, g):
      v = stn_jax.sample(u, g, kernel, padding_mode="reflection")
      return jnp.sum(v**2), v

    (_, v), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(u, g)
    return v, *grads

  step = jax.jit(run, static_argnums=2)
  cases = {}
  for name, (u_shape, g_shape, kernel) in CASES.items():
    for dtype in (np.float32, np.float64):
      rng = np.random.default_rng(0)
      u = jnp.asarray(rng.normal(size=u_shape).astype(dtype))
      g = jnp.asarray(rng.uniform(-1.3, 1.3, size=g_shape).astype(dtype))
      calls = []
      for _ in range(2):
        digest = hashlib.sha256()
        for x in step(u, g, kernel):
          digest.update(np.asarray(x).tobytes())
        calls.append(digest.hexdigest())
      cases[f"{name}_{np.dtype(dtype).name}"] = calls
  native = stn_jax.native_available()
  return {"threads": len(os.sched_getaffinity(0)), "native": native, "cases": cases}


if __name__ == "__main__":
  print(json.dumps(_probe(int(sys.argv[1]))))

"""Data parallelism on 4 simulated CPU devices (a subprocess: XLA reads the flag at start-up).

The step over a ``("batch",)`` mesh equals the single-device step to float32 round-off,
and the library's sampler and grids keep a batch-sharded input sharded.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
import stn_jax
from stn_jax.digits import cli, datasets, train

assert jax.device_count() == 4, jax.devices()
out = {}
(x, y), _ = datasets.load_digits()
digits, labels = jnp.asarray(x[:256]), jnp.asarray(y[:256])
config = train.Config(task="r", model="st-cnn", steps=3, batch_size=16, warmup_steps=0)
key = jax.random.key(0)

def run(mesh):
  graphdef, params, rest = nnx.split(train.create_model(config), nnx.Param, ...)
  tx = train.create_optimizer(config, params)
  opt_state = tx.init(params)
  step = train.make_train_step(graphdef, rest, tx, config, mesh=mesh)
  losses = []
  for i in range(config.steps):
    params, opt_state, loss, _ = step(params, opt_state, digits, labels, key, i)
    losses.append(float(loss))
  return params, losses

mesh = train.make_mesh("auto", config.batch_size)
out["mesh"] = dict(mesh.shape)
p1, l1 = run(None)
p4, l4 = run(mesh)
out["losses"] = [l1, l4]
leaves0 = jax.tree.leaves(nnx.split(train.create_model(config), nnx.Param, ...)[1])
leaves1, leaves4 = jax.tree.leaves(p1), jax.tree.leaves(p4)
out["max_abs_diff"] = max(
  float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(leaves1, leaves4)
)
out["max_update"] = max(
  float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(leaves1, leaves0)
)
out["allclose"] = all(
  np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(leaves1, leaves4, strict=True)
)
replicated = NamedSharding(mesh, P())
out["params_replicated"] = all(
  leaf.sharding.is_equivalent_to(replicated, leaf.ndim) for leaf in leaves4
)

# The library's functions keep the batch where it is.
batch = NamedSharding(mesh, P("batch"))
U = jax.device_put(jnp.ones((8, 12, 10, 3), jnp.float32), batch)
theta = jax.device_put(
  jnp.tile(jnp.array([[0.9, 0.1, 0.05], [-0.1, 0.8, 0.0]], jnp.float32), (8, 1, 1)), batch
)
grid = jax.jit(lambda t: stn_jax.make_grid(t, (6, 5)))(theta)
V = jax.jit(stn_jax.sample)(U, grid)
V3 = jax.jit(lambda u, g: stn_jax.sample(u, g, "bicubic"))(U, grid)
out["grid_sharded"] = grid.sharding.is_equivalent_to(batch, grid.ndim)
out["sample_sharded"] = V.sharding.is_equivalent_to(batch, V.ndim)
out["bicubic_sharded"] = V3.sharding.is_equivalent_to(batch, V3.ndim)
out["sample_shards"] = sorted(s.data.shape[0] for s in V.addressable_shards)

try:
  train.make_mesh("on", 10)
except ValueError as e:
  out["indivisible"] = str(e)
out["cli_indivisible"] = cli.main(
  ["train", "--batch-size", "10", "--data-parallel", "on", "--out", sys.argv[1]]
)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  env.pop("JAX_ENABLE_X64", None)
  out = tmp_path_factory.mktemp("dp") / "run"
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, str(out)],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
  return json.loads(line.removeprefix("RESULT ")) | {"stderr": proc.stderr}


def test_data_parallel_step_equals_single_device(result):
  assert result["mesh"] == {"batch": 4}
  single, parallel = result["losses"]
  np.testing.assert_allclose(parallel, single, rtol=1e-5)
  # Adam divides by sqrt(v), so gradient entries near zero pass their summation-order
  # round-off on at up to the learning rate's scale; 1e-5 is still 200x below it.
  assert result["allclose"] and result["max_abs_diff"] < 1e-5, result
  # ... and the parameters did move, by far more than that.
  assert result["max_update"] > 1e-3, result
  assert result["params_replicated"]


def test_sample_and_make_grid_keep_the_batch_sharding(result):
  assert result["grid_sharded"]
  assert result["sample_sharded"] and result["bicubic_sharded"]
  # Each of the 4 devices holds 2 of the 8 examples: nothing gathered to one device.
  assert result["sample_shards"] == [2, 2, 2, 2]


def test_indivisible_batch_is_a_clear_error(result):
  assert "batch size must be divisible by the 4 devices" in result["indivisible"]
  assert result["indivisible"].endswith("got 10.")
  assert result["cli_indivisible"] == 2
  (line,) = result["stderr"].strip().splitlines()[-1:]
  assert line.startswith("stn-jax train: error: batch size must be divisible")
  assert "--data-parallel off" in line

"""Data parallelism on 4 simulated CPU devices (a subprocess: XLA reads the flag at start-up).

The step over a ``("batch",)`` mesh equals the single-device step to float32 round-off,
and the library's sampler and grids keep a batch-sharded input sharded.
"""

import numpy as np
import pytest
from helpers import run_on_cpu_devices

SCRIPT = r"""
import contextlib, io, json, sys
import jax
out_dir, precision = sys.argv[1], sys.argv[2]
# "f32": the users' default (x64 off), on 1 and on 4 devices. "f64": the float64
# reference of the same steps on one device, in a process of its own (x64 on).
jax.config.update("jax_enable_x64", precision == "f64")
jax.config.update("jax_numpy_rank_promotion", "raise")
import jax.numpy as jnp
import numpy as np
import optax
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
dtype = jnp.float64 if precision == "f64" else jnp.float32

def create_model():
  # Start the transformer just off the identity: at the identity every grid point sits on a
  # pixel centre, where bilinear sampling has a kink, and which side float round-off puts a
  # point on decides its grid gradient. The two float32 runs compute the same coordinates
  # and agree; float64 would pick other sides and not be a reference for them.
  model = train.create_model(config)
  bias = model.stn.head.bias
  bias[...] = bias[...] + jnp.array([0.013, -0.007, 0.011, 0.009, 0.012, -0.017], bias.dtype)
  return model

def run(mesh, optimizer):
  graphdef, params, rest = nnx.split(create_model(), nnx.Param, ...)
  params = jax.tree.map(lambda p: p.astype(dtype), params)
  # AdamW is the demo's optimiser; SGD's step is the gradient itself, so it shows a
  # gradient of the wrong scale that Adam's normalisation would hide.
  tx = train.create_optimizer(config, params) if optimizer == "adamw" else optax.sgd(0.05)
  opt_state = tx.init(params)
  step = train.make_train_step(graphdef, rest, tx, config, mesh=mesh)
  losses = []
  for i in range(config.steps):
    params, opt_state, loss, _ = step(params, opt_state, digits, labels, key, i)
    losses.append(float(loss))
  leaves = jax.tree.leaves(params)
  assert all(leaf.dtype == dtype for leaf in leaves)
  return [np.asarray(leaf) for leaf in leaves], losses

arrays = {}
meshes = {"1": None} if precision == "f64" else {"1": None, "4": train.make_mesh("auto", 16)}
for optimizer in ("adamw", "sgd"):
  for n, mesh in meshes.items():
    leaves, losses = run(mesh, optimizer)
    out[f"losses_{precision}_{optimizer}_{n}"] = losses
    arrays.update({f"{optimizer}_{n}_{i}": leaf for i, leaf in enumerate(leaves)})
leaves0 = jax.tree.leaves(nnx.split(create_model(), nnx.Param, ...)[1])
arrays.update({f"init_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves0)})
np.savez(f"{out_dir}/params_{precision}.npz", **arrays)
if precision == "f64":
  print("RESULT " + json.dumps(out))
  sys.exit()

mesh = meshes["4"]
out["mesh"] = dict(mesh.shape)
graphdef, params, rest = nnx.split(train.create_model(config), nnx.Param, ...)
tx = train.create_optimizer(config, params)
step = train.make_train_step(graphdef, rest, tx, config, mesh=mesh)
params, *_ = step(params, tx.init(params), digits, labels, key, 0)
replicated = NamedSharding(mesh, P())
out["params_replicated"] = all(
  leaf.sharding.is_equivalent_to(replicated, leaf.ndim) for leaf in jax.tree.leaves(params)
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
cli_stderr = io.StringIO()
with contextlib.redirect_stderr(cli_stderr):
  out["cli_indivisible"] = cli.main(
    ["train", "--batch-size", "10", "--data-parallel", "on", "--out", out_dir + "/run"]
  )
out["cli_stderr"] = cli_stderr.getvalue()
print("RESULT " + json.dumps(out))
"""


def _run(out, precision):
  return run_on_cpu_devices(SCRIPT, [out, precision], 4, out / f"params_{precision}.npz")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  out = tmp_path_factory.mktemp("dp")
  result, arrays = _run(out, "f32")
  reference, arrays64 = _run(out, "f64")
  return result | reference | {"arrays": arrays, "arrays64": arrays64}


def _leaves(arrays, prefix):
  keys = [k for k in arrays if k.rsplit("_", 1)[0] == prefix]
  keys = sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1]))
  return [np.asarray(arrays[k], np.float64) for k in keys]


def _distance(a, b):
  """Global L2 distance and largest entry difference between two lists of arrays."""
  diff = np.concatenate([(x - y).ravel() for x, y in zip(a, b, strict=True)])
  return float(np.sqrt(np.sum(diff**2))), float(np.max(np.abs(diff)))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_data_parallel_step_equals_single_device(result, optimizer):
  # Both float32 runs compute the same maths and round differently (the 4-device gradient
  # is summed in another order); neither is "the" answer. The float64 run of the same
  # steps is: the 4-device parameters must be no further from it than the single-device
  # ones are, up to a factor 3 for the spread of round-off between two summation orders.
  # Round-off moves the global L2 distance by a ratio near 1; a missing all-reduce or a
  # gradient over the wrong count moves parameters by the gradient's own scale (checked:
  # see the test's history), far beyond that.
  assert result["mesh"] == {"batch": 4}
  single = _leaves(result["arrays"], f"{optimizer}_1")
  parallel = _leaves(result["arrays"], f"{optimizer}_4")
  exact = _leaves(result["arrays64"], f"{optimizer}_1")
  init = _leaves(result["arrays"], "init")
  l2_single, max_single = _distance(single, exact)
  l2_parallel, max_parallel = _distance(parallel, exact)
  l2_update, _ = _distance(exact, init)
  report = dict(single=(l2_single, max_single), parallel=(l2_parallel, max_parallel))
  report["update"] = l2_update
  # The float32 run is round-off away from float64 (the reference is the same maths), by
  # far less than the parameters moved. SGD passes round-off on as it is; Adam's first steps
  # are -lr * g / |g| per entry, so an entry whose gradient is round-off-sized (background
  # pixels' weights) takes a step of up to lr in either precision, a few % of the update.
  assert l2_single < (0.1 if optimizer == "adamw" else 1e-3) * l2_update, report
  assert l2_parallel <= 3 * l2_single, report
  assert max_parallel <= 3 * max_single + 1e-7 * l2_update, report
  # The losses likewise, with a floor of a few float32 ulps where the single-device loss
  # happens to round to the float64 one.
  runs = [("f32", 1), ("f32", 4), ("f64", 1)]
  single_loss, parallel_loss, exact_loss = (
    np.asarray(result[f"losses_{p}_{optimizer}_{n}"]) for p, n in runs
  )
  floor = 8 * np.finfo(np.float32).eps * np.abs(exact_loss)
  assert np.all(np.abs(parallel_loss - exact_loss) <= 3 * np.abs(single_loss - exact_loss) + floor)
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
  (line,) = result["cli_stderr"].strip().splitlines()  # one line, nothing else
  assert line.startswith("stn-jax train: error: batch size must be divisible")
  assert "--data-parallel off" in line

"""Batch-sharded ``sample`` runs the compiled kernels on each shard (``partitioning.py``).

Two subprocesses (XLA reads the device-count flag at start-up): 4 simulated CPU devices
running ``sample`` (bilinear, bicubic and nearest) and its gradients on a batch sharded
over a ``("batch",)`` mesh, and one device running the same calls unsharded, plus the
float64 pure-JAX sampler (``STN_JAX_NATIVE=0``) as the independent reference.

Sharded and single-device results must be bitwise equal, not just close: every kernel
pass computes each output entry from that example's own inputs alone (the forward and
the grid passes per output point, the U-gradient scatter per example into its own
image), so splitting the batch changes which device computes an entry, never how.
"""

import numpy as np
import pytest
from helpers import assert_close, run_on_cpu_devices

SCRIPT = r"""
import functools, json, os, re, sys
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import stn_jax

out_dir, devices = sys.argv[1], int(sys.argv[2])
assert jax.device_count() == devices, jax.devices()
rng = np.random.default_rng(0)
CASES = {  # (U, grid) shapes and the kernel: a batch of 8 images, of 4 volumes
  "2d": ((8, 12, 10, 3), (8, 6, 5, 2), "bilinear"),
  "3d": ((4, 8, 6, 7, 2), (4, 3, 4, 5, 3), "bilinear"),
  "2d_bicubic": ((8, 12, 10, 3), (8, 6, 5, 2), "bicubic"),
  "3d_tricubic": ((4, 8, 6, 7, 2), (4, 3, 4, 5, 3), "bicubic"),
  "2d_nearest": ((8, 12, 10, 3), (8, 6, 5, 2), "nearest"),
}
inputs = {
  k: (rng.normal(size=u), rng.uniform(-1.2, 1.2, size=g), kernel)
  for k, (u, g, kernel) in CASES.items()
}
sample = stn_jax.sample  # the case's kernel, set in the loop below


def loss(u, g):  # needs the forward too, so XLA cannot drop it
  return jnp.sum(sample(u, g) ** 2)


def calls():
  # Fresh traces: jit caches them by function, not by STN_JAX_NATIVE, which the reference
  # below switches, nor by the global `sample`.
  jax.clear_caches()
  return jax.jit(sample), jax.jit(jax.grad(loss, argnums=(0, 1)))


def kernels_and_collectives(f, *args):
  text = f.lower(*args).compile().as_text()
  targets = sorted(set(re.findall(r'custom_call_target="(Stn\w+)"', text)))
  collectives = sorted(set(re.findall(r"\b(all-gather|all-to-all|all-reduce)\b", text)))
  return targets, collectives


def parallel_calls(f, *args):
  # The kernels' `parallel_calls` attributes: how many calls share the cores at once.
  text = f.lower(*args).compile().as_text()
  return sorted({int(n) for n in re.findall(r"parallel_calls = (\d+)", text)})


arrays, out = {}, {}
for case, (U, g, kernel) in inputs.items():
  sample = functools.partial(stn_jax.sample, kernel=kernel)
  for dtype in ("float32", "float64"):
    key = f"{case}_{dtype}"
    u, grid = U.astype(dtype), g.astype(dtype)
    if devices == 1:
      fwd, grad = calls()
      arrays[f"{key}_single"] = [fwd(u, grid), *grad(u, grid)]
      for argnums in (0, 1):
        arrays[f"{key}_grad{argnums}_single"] = [jax.jit(jax.grad(loss, argnums))(u, grid)]
      assert kernels_and_collectives(grad, u, grid)[0], "the single-device run missed the kernels"
      os.environ["STN_JAX_NATIVE"] = "0"
      fwd, grad = calls()
      u64, g64 = u.astype(np.float64), grid.astype(np.float64)  # the same (rounded) inputs
      arrays[f"{key}_reference"] = [fwd(u64, g64), *grad(u64, g64)]  # float64, pure JAX
      del os.environ["STN_JAX_NATIVE"]
      continue
    mesh = jax.make_mesh((4,), ("batch",), axis_types=(AxisType.Auto,))
    batch = NamedSharding(mesh, P("batch"))
    us, gs = jax.device_put(u, batch), jax.device_put(grid, batch)
    fwd, grad = calls()
    results = [fwd(us, gs), *grad(us, gs)]
    arrays[f"{key}_sharded"] = results
    out[f"{key}_sharded"] = [r.sharding.is_equivalent_to(batch, r.ndim) for r in results]
    out[f"{key}_shards"] = [sorted(s.data.shape[0] for s in r.addressable_shards) for r in results]
    out[f"{key}_hlo_fwd"] = kernels_and_collectives(fwd, us, gs)
    out[f"{key}_hlo_grad"] = kernels_and_collectives(grad, us, gs)
    on_one = [jax.device_put(x, jax.devices()[0]) for x in (u, grid)]
    out[f"{key}_calls"] = {
      "sharded": parallel_calls(grad, us, gs),
      "one device": parallel_calls(grad, *on_one),
    }
    # One gradient: its single pass, also split over the batch (both: the fused pass).
    for argnums in (0, 1):
      one = jax.jit(jax.grad(loss, argnums))
      arrays[f"{key}_grad{argnums}_sharded"] = [one(us, gs)]
      out[f"{key}_hlo_grad{argnums}"] = kernels_and_collectives(one, us, gs)

    # The training step's pattern: replicated in and out, the batch constrained inside.
    replicated = NamedSharding(mesh, P())

    def step(u, g):
      u, g = (jax.lax.with_sharding_constraint(x, batch) for x in (u, g))
      return sample(u, g), *jax.grad(loss, argnums=(0, 1))(u, g)

    step = jax.jit(step, in_shardings=replicated, out_shardings=replicated)
    arrays[f"{key}_step"] = step(u, grid)
    out[f"{key}_hlo_step"] = kernels_and_collectives(step, u, grid)

    # Other layouts fall back sensibly: replicated, spatially sharded (gathered first).
    for name, spec in (("replicated", P()), ("spatial", P(None, "batch"))):
      ua = jax.device_put(u, NamedSharding(mesh, spec))
      ga = jax.device_put(grid, replicated)
      fwd, grad = calls()
      arrays[f"{key}_{name}"] = [fwd(ua, ga), *grad(ua, ga)]
      out[f"{key}_hlo_{name}"] = kernels_and_collectives(grad, ua, ga)

    # Explicit sharding (the batch spec is known at trace time) and a shard_map body.
    explicit = jax.make_mesh((4,), ("batch",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(explicit):
      ue, ge = jax.device_put(u, P("batch")), jax.device_put(grid, P("batch"))
      fwd, grad = calls()
      results = [fwd(ue, ge), *grad(ue, ge)]
      arrays[f"{key}_explicit"] = results
      out[f"{key}_explicit_spec"] = [list(r.sharding.spec)[:1] for r in results]
    specs = (P("batch"), P("batch"))
    body = jax.shard_map(
      lambda u, g: (sample(u, g), *jax.grad(loss, argnums=(0, 1))(u, g)),
      mesh=mesh, in_specs=specs, out_specs=(P("batch"),) * 3,
    )
    arrays[f"{key}_shard_map"] = jax.jit(body)(u, grid)
    out[f"{key}_hlo_shard_map"] = kernels_and_collectives(jax.jit(body), u, grid)
    out[f"{key}_calls"]["shard_map"] = parallel_calls(jax.jit(body), u, grid)

    # A batch the devices do not divide (3 of 4 examples): XLA pads the shards, and the
    # kernels' padded rows must not reach the real ones. Compared with one device here.
    def both(u, g):
      return sample(u, g), *jax.grad(loss, argnums=(0, 1))(u, g)

    def constrained(u, g):
      return both(*(jax.lax.with_sharding_constraint(x, batch) for x in (u, g)))

    padded = jax.jit(constrained)(u[:3], grid[:3])
    single = jax.jit(both)(u[:3], grid[:3])
    out[f"{key}_padded_equal"] = [bool(np.array_equal(a, b)) for a, b in zip(padded, single)]
    out[f"{key}_hlo_padded"] = kernels_and_collectives(jax.jit(constrained), u[:3], grid[:3])

    # One image, a batch of grids: the batching folds the grids' batch into the points'
    # first axis, and the pointwise passes keep that axis sharded (dU sums over all the
    # points, so its inputs are gathered). Compared with one device here.
    gs = jax.device_put(grid, batch)
    shared = [jax.jit(both)(u[0], gs), jax.jit(both)(u[0], grid)]
    out[f"{key}_shared_equal"] = [bool(np.array_equal(a, b)) for a, b in zip(*shared)]
    out[f"{key}_shared_sharded"] = shared[0][0].sharding.is_equivalent_to(batch, grid.ndim)
    out[f"{key}_hlo_shared"] = kernels_and_collectives(jax.jit(sample), u[0], gs)

flat = {f"{k}_{i}": np.asarray(a) for k, v in arrays.items() for i, a in enumerate(v)}
np.savez(f"{out_dir}/sharded_{devices}.npz", **flat)
print("RESULT " + json.dumps(out))
"""

KINDS = ("2d", "3d", "2d_bicubic", "3d_tricubic", "2d_nearest")  # SCRIPT's CASES
CASES = [f"{case}_{dtype}" for case in KINDS for dtype in ("float32", "float64")]
WHAT = ("V", "dU", "dgrid")
SIZES = {"2d": (12, 10), "3d": (8, 6, 7)}  # U's spatial shape in SCRIPT
# The passes a gradient of sum(V ** 2) runs, and the forward's, per kernel. Nearest has no
# grid pass: its grid gradient is exactly 0.
GRAD_KERNELS = {
  "bilinear": ["StnBilinearFwd", "StnBilinearUGridVjp"],  # both gradients: the fused pass
  "cubic": ["StnCubicFwd", "StnCubicGridVjp", "StnCubicUVjp"],
  "nearest": ["StnNearestFwd", "StnNearestUVjp"],
}


def _kind(case):
  """The kernel family of a case name: bilinear, cubic or nearest."""
  return "cubic" if "cubic" in case else "nearest" if "nearest" in case else "bilinear"


def _dtype(case):
  return case.rsplit("_", 1)[1]


def _run(out, devices):
  unset = ("JAX_ENABLE_X64", "STN_JAX_NATIVE")
  return run_on_cpu_devices(SCRIPT, [out, devices], devices, out / f"sharded_{devices}.npz", unset)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  from stn_jax._src import native

  if not native.available():
    pytest.skip("the compiled kernels are not built (or STN_JAX_NATIVE=0)")
  out = tmp_path_factory.mktemp("sharded")
  info, arrays = _run(out, 4)
  _, single = _run(out, 1)
  return info, arrays | single


def _three(arrays, key):
  return [arrays[f"{key}_{i}"] for i in range(3)]


@pytest.mark.parametrize("case", CASES)
def test_single_device_kernels_match_the_float64_reference(result, case):
  # The oracle: pure JAX in float64. Keeps the bitwise comparisons below honest (two
  # runs of a wrong kernel would agree with each other).
  # Same (rounded) inputs, so only the arithmetic differs. A coordinate of up to ``size``
  # pixels carries round-off of a few ``eps * size`` pixels, which moves each output by at
  # most its slope times that: a few ``eps * size`` of the output's scale.
  _, arrays = result
  # Cubic: its second derivative (|k''| <= 4.5 against the tent's 0 inside a cell) moves
  # the grid gradient too, and 16 or 64 taps sum; a factor 16 covers both.
  single, reference = _three(arrays, f"{case}_single"), _three(arrays, f"{case}_reference")
  size = max(SIZES[case.split("_")[0]])
  factor = 16 if _kind(case) == "cubic" else 1
  for what, a, b in zip(WHAT, single, reference, strict=True):
    assert a.dtype == np.dtype(_dtype(case))
    atol = 4 * factor * np.finfo(a.dtype).eps * size * np.abs(b).max()
    assert_close(a, b, f"{case} {what}", rtol=0, atol=atol)


@pytest.mark.parametrize(
  "layout", ["sharded", "step", "replicated", "spatial", "explicit", "shard_map"]
)
@pytest.mark.parametrize("case", CASES)
def test_sharded_values_equal_one_device_bitwise(result, case, layout):
  _, arrays = result
  single = _three(arrays, f"{case}_single")
  for what, a, b in zip(WHAT, _three(arrays, f"{case}_{layout}"), single, strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, a.shape, b.shape)
    assert np.array_equal(a, b), f"{case} {layout} {what}: max |diff| {np.abs(a - b).max()}"


@pytest.mark.parametrize("argnums", [0, 1])
@pytest.mark.parametrize("case", CASES)
def test_one_gradient_sharded_equals_the_fused_gradient_bitwise(result, case, argnums):
  # The single passes (one gradient taken) and the fused pass (both) give the same bits.
  _, arrays = result
  both = _three(arrays, f"{case}_single")[1 + argnums]
  for layout in ("sharded", "single"):
    one = arrays[f"{case}_grad{argnums}_{layout}_0"]
    assert np.array_equal(one, both), f"{case} {layout} grad {argnums}"


@pytest.mark.parametrize("case", CASES)
def test_outputs_stay_batch_sharded(result, case):
  info, arrays = result
  per_device = 2 if case.startswith("2d") else 1  # 8 images, 4 volumes over 4 devices
  if _kind(case) == "nearest":
    # Nearest's grid gradient is the constant 0 (no pass computes it), which XLA may lay
    # out as it likes; V and dU stay sharded.
    assert not np.any(_three(arrays, f"{case}_sharded")[2])
    assert info[f"{case}_sharded"][:2] == [True, True]
    assert info[f"{case}_shards"][:2] == [[per_device] * 4] * 2
    assert info[f"{case}_explicit_spec"][:2] == [["batch"]] * 2
    return
  assert info[f"{case}_sharded"] == [True, True, True]
  assert info[f"{case}_shards"] == [[per_device] * 4] * 3
  assert info[f"{case}_explicit_spec"] == [["batch"]] * 3


@pytest.mark.parametrize("case", CASES)
def test_compiled_program_runs_the_kernels_with_no_gather(result, case):
  info, _ = result
  kernels = GRAD_KERNELS[_kind(case)]
  assert info[f"{case}_hlo_fwd"] == [kernels[:1], []]
  # Forward and both gradients on each shard; the only collective is none at all: the
  # loss's sum is not returned, and nothing is gathered.
  assert info[f"{case}_hlo_grad"] == [kernels, []]
  assert info[f"{case}_hlo_shard_map"] == [kernels, []]
  # One gradient: its single pass (nearest's grid gradient is 0 and needs no pass at all).
  prefix = kernels[0].removesuffix("Fwd")
  assert info[f"{case}_hlo_grad0"] == [[kernels[0], f"{prefix}UVjp"], []]
  expected_grad1 = [] if _kind(case) == "nearest" else [kernels[0], f"{prefix}GridVjp"]
  assert set(info[f"{case}_hlo_grad1"][0]) - {kernels[0]} == set(expected_grad1[1:])
  assert info[f"{case}_hlo_grad1"][1] == []
  # Replicated in and out: the outputs are gathered at the end, but the kernels run.
  assert info[f"{case}_hlo_step"][0] == kernels
  assert info[f"{case}_hlo_replicated"] == [kernels, []]
  # U sharded along H: gathered before the kernels, which still run.
  assert info[f"{case}_hlo_spatial"] == [kernels, ["all-gather"]]


@pytest.mark.parametrize("case", CASES)
def test_indivisible_batch_runs_the_kernels_on_padded_shards(result, case):
  info, _ = result
  assert info[f"{case}_padded_equal"] == [True, True, True]
  assert info[f"{case}_hlo_padded"][0] == GRAD_KERNELS[_kind(case)]


@pytest.mark.parametrize("case", CASES)
def test_one_image_with_sharded_grids_keeps_the_points_sharded(result, case):
  info, _ = result
  assert info[f"{case}_shared_equal"] == [True, True, True]
  assert info[f"{case}_shared_sharded"]
  assert info[f"{case}_hlo_shared"] == [GRAD_KERNELS[_kind(case)][:1], []]


@pytest.mark.parametrize("case", CASES)
def test_each_shard_splits_its_work_among_its_share_of_the_cores(result, case):
  # The 4 devices' calls run at once on the process's cores, so each is told there are 4
  # (and splits among cores / 4 threads); an unsharded call on one of them, 1.
  info, _ = result
  assert info[f"{case}_calls"] == {"sharded": [4], "one device": [1], "shard_map": [4]}

"""Batch-sharded runs of the compiled kernels: a partitioning rule for their FFI calls.

XLA's SPMD partitioner cannot split an opaque FFI call, so without a rule a batch-sharded
``sample`` would gather ``U`` and the grid onto every device. Here each kernel call is
wrapped in :func:`jax.experimental.custom_partitioning` with a Shardy sharding rule: the
leading (batch) dimensions that every operand and the result share are one factor each and
may stay sharded, and so may the output points' axes in the passes that are pointwise in
them (all but the ``U``-gradient, which sums over the points); the image's spatial axes,
channels and coordinates need replication. The
partition callback then runs the same FFI call on each device's slice of the batch, so a
data-parallel step runs the kernels on each shard with no all-gather, in the forward and in
both gradients (each kernel pass maps a batch slice to the same batch slice).

Why ``custom_partitioning`` rather than ``shard_map``: it is decided at partition time, from
the shardings XLA settles on, so it works inside ``jit`` under a mesh of ``Auto`` axes (the
training step's pattern: a ``with_sharding_constraint`` on the batch), where a tracer carries
no sharding that a trace-time ``shard_map`` could read. On one device, and in a fully
manual ``shard_map`` body, the wrapper lowers straight to the FFI call.

The devices of one process run their shards' calls at once on the process's cores, so
each call carries their number (the FFI attribute ``parallel_calls``: the mesh's devices in
this process, or the size of a ``shard_map`` body's manual axes) and splits its work among
its share of the cores, never among more threads than it has cores.

Spatial or channel sharding is gathered (the rule asks for it replicated) and the kernels
then run on the whole of those axes; only the leading dimensions are split. Shardings that
name no mesh (a bare ``GSPMDSharding``) cannot be read back into a batch spec: the call
then runs replicated, after a gather (correct, not fast).
"""

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Each array of the four passes is one of: an image ``U`` (input spatial axes, channels),
# a grid (output spatial axes, coordinates) or a sample ``V`` (output spatial axes,
# channels). The leading dimensions are shared by all of them. The fused backward pass has
# two results, ``dU`` (like the image) and ``dgrid`` (like the grid).
ROLES = {
  "fwd": (("image", "grid"), "samples"),
  "u_vjp": (("samples", "grid"), "image"),
  "grid_jvp": (("image", "grid", "grid"), "samples"),
  "grid_vjp": (("image", "grid", "samples"), "grid"),
  "u_grid_vjp": (("image", "grid", "samples"), ("image", "grid")),
}


@dataclasses.dataclass(frozen=True)
class KernelCall:
  """One FFI call, static: what partitioning and the per-shard call need to know.

  ``tail`` is the result's shape after the ``lead`` leading dimensions (a tuple of such
  shapes for a pass with several results); ``attributes`` the FFI attributes as sorted
  ``(name, value)`` pairs.
  """

  target: str
  roles: tuple[tuple[str, ...], str | tuple[str, ...]]
  ndim: int
  lead: int
  tail: tuple
  dtype: str
  attributes: tuple[tuple[str, object], ...]


def _results(call: KernelCall) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """The (role, tail) of each result: one, or several for the fused backward pass."""
  role = call.roles[1]
  return ((role, call.tail),) if isinstance(role, str) else tuple(zip(role, call.tail, strict=True))


def _factors(role: str, call: KernelCall) -> list[str]:
  lead = [f"b{i}" for i in range(call.lead)]
  spatial = {"image": "s", "grid": "o", "samples": "o"}[role]
  last = "k" if role == "grid" else "c"
  return lead + [f"{spatial}{i}" for i in range(call.ndim)] + [last]


def sharding_rule(call: KernelCall, mesh, value_types, result_types):
  """Shardy's rule: ``b0 .. s0 s1 c, b0 .. o0 o1 k -> b0 .. o0 o1 c`` for ``fwd`` in 2-D;
  every factor but the free ones (:func:`_free`) needs replication.

  >>> call = KernelCall("StnBilinearFwd", ROLES["fwd"], 2, 1, (6, 5, 3), "float32", ())
  >>> rule, special = sharding_rule(call, None, None, None)
  >>> rule, special["need_replication_factors"]
  ('b0 s0 s1 c, b0 o0 o1 k -> b0 o0 o1 c', ('s0', 's1', 'c', 'k'))
  """
  del mesh, value_types, result_types
  operands = call.roles[0]
  results = [r for r, _ in _results(call)]
  ins = ", ".join(" ".join(_factors(r, call)) for r in operands)
  outs = ", ".join(" ".join(_factors(r, call)) for r in results)
  rule = f"{ins} -> {outs}"
  # In order of first appearance: Shardy wants the special factors' indices sorted.
  every = dict.fromkeys(f for r in (*operands, *results) for f in _factors(r, call))
  replicated = tuple(f for f in every if not _free(f, call))
  return rule, {"need_replication_factors": replicated}


def _free(factor: str, call: KernelCall) -> bool:
  """Whether a factor may stay sharded: the leading dims always; the output points' axes
  where the pass is pointwise in them (all but the ``U``-gradient, ``u_vjp`` or the fused
  ``u_grid_vjp``, which sums over the points).
  Points sharded along an axis are what ``vmap`` over many grids of one shared image
  gives (its batching folds the grid batch into the points' first axis)."""
  pointwise = all(role != "image" for role, _ in _results(call))
  return factor.startswith("b") or (factor.startswith("o") and pointwise)


def result_aval(avals: Sequence, shape: tuple[int, ...], dtype) -> jax.core.ShapedArray:
  """A kernel pass's result type, typed like its operands (``avals``, the grid second).

  The result's leading dims take the operands' sharding (explicit-sharding meshes say it
  at trace time; the grid's, else the first operand's that is sharded) and the rest none;
  inside ``shard_map`` it varies over the manual axes its operands vary over.
  """
  ndim = avals[1].shape[-1]
  lead = avals[1].ndim - ndim - 1
  ordered = [avals[1], *avals[:1], *avals[2:]]
  specs = [_batch_spec(a.sharding, lead) for a in ordered]
  spec = next((s for s in specs if any(x is not None for x in s)), (None,) * lead)
  base = max(ordered, key=lambda a: len(a.manual_axis_type.varying))
  sharding = NamedSharding(base.sharding.mesh, P(*spec, *(None,) * (len(shape) - lead)))
  return base.update(shape=tuple(shape), dtype=dtype, weak_type=False, sharding=sharding)


def _ffi(call: KernelCall, *arrays: jax.Array):
  """The FFI call on (local) arrays: each result's leading dims are the operands', and its
  point axes (where it has them) the grid's."""
  shapes = []
  for role, tail in _results(call):
    shape = arrays[-1].shape[: call.lead] + tail
    if role != "image":  # the result is per point: (lead, points..., last)
      shape = arrays[1].shape[:-1] + tail[-1:]
    shapes.append(jax.ShapeDtypeStruct(shape, call.dtype))
  result = shapes[0] if isinstance(call.roles[1], str) else tuple(shapes)
  return jax.ffi.ffi_call(call.target, result)(*arrays, **dict(call.attributes))


def _batch_spec(sharding, lead: int) -> tuple:
  """The partition spec of a sharding's leading ``lead`` dims (``None``: replicated)."""
  if not isinstance(sharding, NamedSharding):
    return (None,) * lead
  spec = tuple(sharding.spec) + (None,) * lead
  return spec[:lead]


def partition(call: KernelCall, mesh, arg_shapes: Sequence, result_shape):
  """Every operand and the result split like the result along its free factors (see
  :func:`_free`), whole along the rest."""
  del arg_shapes
  operands = call.roles[0]
  results = [r for r, _ in _results(call)]
  names = _factors(results[0], call)
  first = result_shape if len(results) == 1 else result_shape[0]
  spec = _batch_spec(first.sharding, len(names))
  axes = {f: a for f, a in zip(names, spec, strict=True) if _free(f, call)}

  def sharding(role: str) -> NamedSharding:
    return NamedSharding(mesh, P(*(axes.get(f) for f in _factors(role, call))))

  # Every device of the mesh runs this call on its shard at once: those of this process
  # share its cores, and each call splits its work among its share of them.
  local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  lower = functools.partial(_ffi, _with_parallel_calls(call, max(1, local)))
  out = sharding(results[0]) if len(results) == 1 else tuple(map(sharding, results))
  return mesh, lower, out, tuple(sharding(r) for r in operands)


def _with_parallel_calls(call: KernelCall, count: int) -> KernelCall:
  """``call`` with its ``parallel_calls`` attribute (how many calls of the kernels run at
  once on this process's cores) set to ``count``."""
  attributes = dict(call.attributes, parallel_calls=count)
  return dataclasses.replace(call, attributes=tuple(sorted(attributes.items())))


def manual_shards() -> int:
  """How many devices of this process run the traced code at once: the size of the mesh
  axes a ``shard_map`` body is manual over (at most the process's devices); 1 outside one.

  >>> manual_shards()
  1
  """
  mesh = jax.sharding.get_abstract_mesh()
  manual = [
    size
    for size, kind in zip(mesh.axis_sizes, mesh.axis_types, strict=True)
    if kind == jax.sharding.AxisType.Manual
  ]
  return max(1, min(math.prod(manual), jax.local_device_count("cpu")))


@functools.partial(custom_partitioning, static_argnums=(0,))
def _kernel(call: KernelCall, *arrays: jax.Array) -> jax.Array:
  return _ffi(call, *arrays)


_kernel.def_partition(partition=partition, sharding_rule=sharding_rule)


def kernel_call(target: str, name: str, arrays: Sequence[jax.Array], result, **attributes):
  """The FFI call ``target`` (kernel pass ``name``) on ``arrays``, partitionable over their
  leading dims. The grid is ``arrays[1]``; its last axis gives the number of spatial axes.
  ``result``: a ``jax.ShapeDtypeStruct``, or a tuple of them for a pass with several.
  ``parallel_calls`` is set here (a ``shard_map`` body's shards) and again by
  :func:`partition` for the calls it splits."""
  attributes = dict(attributes, parallel_calls=manual_shards())
  ndim = arrays[1].shape[-1]
  lead = arrays[1].ndim - ndim - 1
  several = isinstance(result, tuple)
  tail = tuple(r.shape[lead:] for r in result) if several else tuple(result.shape[lead:])
  dtype = result[0].dtype if several else result.dtype
  call = KernelCall(
    target=target,
    roles=ROLES[name],
    ndim=ndim,
    lead=lead,
    tail=tail,
    dtype=str(dtype),
    attributes=tuple(sorted(attributes.items())),
  )
  return _kernel(call, *arrays)

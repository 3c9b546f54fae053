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
both gradients (each of the four kernel passes maps a batch slice to the same batch slice).

Why ``custom_partitioning`` rather than ``shard_map``: it is decided at partition time, from
the shardings XLA settles on, so it works inside ``jit`` under a mesh of ``Auto`` axes (the
training step's pattern: a ``with_sharding_constraint`` on the batch), where a tracer carries
no sharding that a trace-time ``shard_map`` could read. On one device, and in a fully
manual ``shard_map`` body, the wrapper lowers straight to the FFI call.

Spatial or channel sharding is gathered (the rule asks for it replicated) and the kernels
then run on the whole of those axes; only the leading dimensions are split. Shardings that
name no mesh (a bare ``GSPMDSharding``) cannot be read back into a batch spec: the call
then runs replicated, after a gather (correct, not fast).
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Each array of the four passes is one of: an image ``U`` (input spatial axes, channels),
# a grid (output spatial axes, coordinates) or a sample ``V`` (output spatial axes,
# channels). The leading dimensions are shared by all of them.
ROLES = {
  "fwd": (("image", "grid"), "samples"),
  "u_vjp": (("samples", "grid"), "image"),
  "grid_jvp": (("image", "grid", "grid"), "samples"),
  "grid_vjp": (("image", "grid", "samples"), "grid"),
}


@dataclasses.dataclass(frozen=True)
class KernelCall:
  """One FFI call, static: what partitioning and the per-shard call need to know.

  ``tail`` is the result's shape after the ``lead`` leading dimensions; ``attributes``
  the FFI attributes as sorted ``(name, value)`` pairs.
  """

  target: str
  roles: tuple[tuple[str, ...], str]
  ndim: int
  lead: int
  tail: tuple[int, ...]
  dtype: str
  attributes: tuple[tuple[str, object], ...]


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
  operands, result = call.roles
  ins = ", ".join(" ".join(_factors(r, call)) for r in operands)
  rule = f"{ins} -> {' '.join(_factors(result, call))}"
  # In order of first appearance: Shardy wants the special factors' indices sorted.
  every = dict.fromkeys(f for r in (*operands, result) for f in _factors(r, call))
  replicated = tuple(f for f in every if not _free(f, call))
  return rule, {"need_replication_factors": replicated}


def _free(factor: str, call: KernelCall) -> bool:
  """Whether a factor may stay sharded: the leading dims always; the output points' axes
  where the pass is pointwise in them (all but ``u_vjp``, which sums over the points).
  Points sharded along an axis are what ``vmap`` over many grids of one shared image
  gives (its batching folds the grid batch into the points' first axis)."""
  return factor.startswith("b") or (factor.startswith("o") and call.roles[1] != "image")


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


def _ffi(call: KernelCall, *arrays: jax.Array) -> jax.Array:
  """The FFI call on (local) arrays: the result's leading dims are the operands', and its
  point axes (where it has them) the grid's."""
  shape = arrays[-1].shape[: call.lead] + call.tail
  if call.roles[1] != "image":  # the result is per point: (lead, points..., last)
    shape = arrays[1].shape[:-1] + call.tail[-1:]
  result = jax.ShapeDtypeStruct(shape, call.dtype)
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
  operands, result = call.roles
  names = _factors(result, call)
  spec = _batch_spec(result_shape.sharding, len(names))
  axes = {f: a for f, a in zip(names, spec, strict=True) if _free(f, call)}

  def sharding(role: str) -> NamedSharding:
    return NamedSharding(mesh, P(*(axes.get(f) for f in _factors(role, call))))

  lower = functools.partial(_ffi, call)
  return mesh, lower, sharding(result), tuple(sharding(r) for r in operands)


@functools.partial(custom_partitioning, static_argnums=(0,))
def _kernel(call: KernelCall, *arrays: jax.Array) -> jax.Array:
  return _ffi(call, *arrays)


_kernel.def_partition(partition=partition, sharding_rule=sharding_rule)


def kernel_call(
  target: str, name: str, arrays: Sequence[jax.Array], result: jax.ShapeDtypeStruct, **attributes
) -> jax.Array:
  """The FFI call ``target`` (kernel pass ``name``) on ``arrays``, partitionable over their
  leading dims. The grid is ``arrays[1]``; its last axis gives the number of spatial axes."""
  ndim = arrays[1].shape[-1]
  lead = arrays[1].ndim - ndim - 1
  call = KernelCall(
    target=target,
    roles=ROLES[name],
    ndim=ndim,
    lead=lead,
    tail=tuple(result.shape[lead:]),
    dtype=str(result.dtype),
    attributes=tuple(sorted(attributes.items())),
  )
  return _kernel(call, *arrays)

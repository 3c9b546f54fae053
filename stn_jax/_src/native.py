"""The bilinear sampler as JAX primitives with a compiled CPU kernel (``csrc/bilinear.cc``).

Four primitives, each linear in its first or last array argument:

* ``fwd(U, grid)``: the samples ``V``; linear in ``U``.
* ``u_vjp(ct, grid)``: the scatter ``dU``, the transpose of ``fwd`` in ``U``.
* ``grid_jvp(U, grid, dgrid)``: ``dV`` for a grid tangent; linear in ``dgrid`` (and ``U``).
* ``grid_vjp(U, grid, ct)``: ``dgrid``, the transpose of ``grid_jvp`` in ``dgrid``.

``fwd``'s JVP is ``fwd(dU, grid) + grid_jvp(U, grid, dgrid)``, and each transposes to
another of the four, so first derivatives in either mode run only compiled kernels: the
U-gradient is one scatter pass, the grid gradient one pass, with no per-tap temporaries.
Derivatives the kernels do not cover (w.r.t. the grid of ``u_vjp``, ``grid_jvp`` and
``grid_vjp``, i.e. second derivatives in the grid) fall back to JAX's autodiff of the
gather-based sampler in ``gather.py``, which is also each primitive's reference and its
lowering on every platform but the CPU. So every order of ``jvp``/``vjp``/``vmap`` works,
and the tests compare each path with that reference.

The compiled library is optional: without it (or with ``STN_JAX_NATIVE=0`` in the
environment, read at each trace) :func:`available` is False and ``sample`` uses the
gather-based sampler everywhere.
"""

import ctypes
import functools
import importlib.util
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import dispatch
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from stn_jax._src import gather

_LIBRARY = "stn_jax._bilinear_cpu"
_TARGETS = {
  "fwd": "StnBilinearFwd",
  "u_vjp": "StnBilinearUVjp",
  "grid_jvp": "StnBilinearGridJvp",
  "grid_vjp": "StnBilinearGridVjp",
}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@functools.cache
def _load() -> bool:
  """Loads the compiled kernels and registers them with XLA; False if not built."""
  spec = importlib.util.find_spec(_LIBRARY)
  if spec is None or spec.origin is None:
    return False
  library = ctypes.CDLL(spec.origin)
  for symbol in _TARGETS.values():
    jax.ffi.register_ffi_target(symbol, jax.ffi.pycapsule(getattr(library, symbol)), "cpu")
  return True


def available() -> bool:
  """Whether ``sample`` uses the compiled bilinear kernels on the CPU."""
  if os.environ.get("STN_JAX_NATIVE", "1") == "0":
    return False
  return _load()


def usable(u: jax.Array, g: jax.Array) -> bool:
  """Whether the kernels take these per-example arrays: one float32/float64 dtype, an image
  of fewer than 2**31 elements (the kernels index it with int32), and a single CPU device.

  With several CPU devices (``--xla_force_host_platform_device_count``, multi-process CPU
  runs) the pure-JAX sampler is used: XLA's partitioner cannot split an FFI call, so a
  batch-sharded ``sample`` would be gathered onto every device.
  """
  small = math.prod(u.shape[-3:]) < 2**31
  return (
    u.dtype == g.dtype and u.dtype in _DTYPES and small and available() and _single_cpu_device()
  )


@functools.cache
def _single_cpu_device() -> bool:
  return len(jax.devices("cpu")) == 1


def sample_bilinear(u, g, padding_mode: str, align_corners: bool) -> jax.Array:
  """``V`` for ``u`` ``(..., H, W, C)`` and ``g`` ``(..., Ho, Wo, 2)`` of one dtype."""
  return fwd_p.bind(u, g, padding_mode=padding_mode, align_corners=align_corners)


# ---------------------------------------------------------------------------------------
# References: the gather-based sampler and JAX's own derivatives of it.


def _leading(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """Lifts a per-example function over the leading dims that all its arrays share."""

  def lifted(*args, **params):
    lead = args[0].shape[:-3]
    flat = [a.reshape((-1,) + a.shape[-3:]) for a in args]
    out = jax.vmap(functools.partial(fn, **params))(*flat)
    return out.reshape(lead + out.shape[1:])

  return lifted


@_leading
def _ref_fwd(u, g, *, padding_mode, align_corners):
  return gather.sample_gather(u, g, "bilinear", padding_mode, align_corners)


def _ref_u_vjp(ct, g, *, padding_mode, align_corners, size):
  u = jnp.zeros(ct.shape[:-3] + tuple(size) + ct.shape[-1:], ct.dtype)
  fwd = functools.partial(_ref_fwd, padding_mode=padding_mode, align_corners=align_corners)
  return jax.vjp(lambda x: fwd(x, g), u)[1](ct)[0]


def _ref_grid_jvp(u, g, dg, *, padding_mode, align_corners):
  fwd = functools.partial(_ref_fwd, padding_mode=padding_mode, align_corners=align_corners)
  return jax.jvp(lambda x: fwd(u, x), (g,), (dg,))[1]


def _ref_grid_vjp(u, g, ct, *, padding_mode, align_corners):
  fwd = functools.partial(_ref_fwd, padding_mode=padding_mode, align_corners=align_corners)
  return jax.vjp(lambda x: fwd(u, x), g)[1](ct)[0]


# ---------------------------------------------------------------------------------------
# The primitives.


def _shape_fwd(u, g, **_):
  return jax.core.ShapedArray(g.shape[:-1] + u.shape[-1:], u.dtype)


def _shape_u_vjp(ct, g, *, size, **_):
  return jax.core.ShapedArray(ct.shape[:-3] + tuple(size) + ct.shape[-1:], ct.dtype)


def _shape_grid_jvp(u, g, dg, **_):
  return jax.core.ShapedArray(g.shape[:-1] + u.shape[-1:], u.dtype)


def _shape_grid_vjp(u, g, ct, **_):
  return jax.core.ShapedArray(g.shape, g.dtype)


def _define(name: str, shape_rule, reference, linear: tuple[int, ...]) -> Primitive:
  """A primitive lowered to the CPU kernel ``name`` and elsewhere to ``reference``."""
  p = Primitive(f"stn_bilinear_{name}")
  p.def_impl(functools.partial(dispatch.apply_primitive, p))
  p.def_abstract_eval(shape_rule)
  target = jax.ffi.ffi_lowering(_TARGETS[name])

  def cpu_lowering(ctx, *args, padding_mode, align_corners, **_):
    padding = np.int32(gather.PADDING_CODES[padding_mode])
    return target(ctx, *args, padding=padding, align_corners=bool(align_corners))

  mlir.register_lowering(p, cpu_lowering, platform="cpu")
  mlir.register_lowering(p, mlir.lower_fun(reference, multiple_results=False))
  batching.primitive_batchers[p] = functools.partial(_batch, p)
  p.reference = reference
  p.linear = linear
  return p


def _batch(p: Primitive, args, dims, **params):
  """vmap: every argument gets the batch axis in front (unbatched ones broadcast)."""
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
  moved = [
    jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
    for a, d in zip(args, dims, strict=True)
  ]
  return p.bind(*moved, **params), 0


fwd_p = _define("fwd", _shape_fwd, _ref_fwd, linear=(0,))
u_vjp_p = _define("u_vjp", _shape_u_vjp, _ref_u_vjp, linear=(0,))
grid_jvp_p = _define("grid_jvp", _shape_grid_jvp, _ref_grid_jvp, linear=(0, 2))
grid_vjp_p = _define("grid_vjp", _shape_grid_vjp, _ref_grid_vjp, linear=(0, 2))


def _add(a, b):
  return b if a is None else a + b


def _jvp(p: Primitive, primals, tangents, **params):
  """Linear arguments: ``p`` itself. ``fwd``'s grid: ``grid_jvp``. Other grids: JAX's jvp
  of the reference (second derivatives in the grid)."""
  out = p.bind(*primals, **params)
  tangent = None
  for i, t in enumerate(tangents):
    if type(t) is ad.Zero:
      continue
    if i in p.linear:
      args = list(primals)
      args[i] = t
      term = p.bind(*args, **params)
    elif p is fwd_p:
      term = grid_jvp_p.bind(primals[0], primals[1], t, **params)
    else:

      def along(x, i=i):
        args = list(primals)
        args[i] = x
        return p.reference(*args, **params)

      term = jax.jvp(along, (primals[i],), (t,))[1]
    tangent = _add(tangent, term)
  return out, jnp.zeros_like(out) if tangent is None else tangent


for _p in (fwd_p, u_vjp_p, grid_jvp_p, grid_vjp_p):
  ad.primitive_jvps[_p] = functools.partial(_jvp, _p)


def _zeros(x):
  aval = x.aval
  return jnp.zeros(aval.shape, aval.dtype)


def _transpose(p: Primitive, ct, *args, **params):
  """Transposes in the one argument that is linear here (an ``UndefinedPrimal``)."""
  undefined = [i for i, a in enumerate(args) if ad.is_undefined_primal(a)]
  if len(undefined) != 1 or undefined[0] not in p.linear:
    raise NotImplementedError(f"{p.name} is not linear in arguments {undefined}")
  (i,) = undefined
  result: list = [None] * len(args)
  if type(ct) is ad.Zero:
    result[i] = ad.Zero(args[i].aval)
    return result
  fast = {
    (fwd_p, 0): lambda: u_vjp_p.bind(ct, args[1], size=args[0].aval.shape[-3:-1], **params),
    (u_vjp_p, 0): lambda: fwd_p.bind(ct, args[1], **_sampling_params(params)),
    (grid_jvp_p, 2): lambda: grid_vjp_p.bind(args[0], args[1], ct, **params),
    (grid_vjp_p, 2): lambda: grid_jvp_p.bind(args[0], args[1], ct, **params),
  }.get((p, i))
  if fast is not None:
    result[i] = fast()
    return result

  def along(x):
    full = list(args)
    full[i] = x
    return p.reference(*full, **params)

  result[i] = jax.vjp(along, _zeros(args[i]))[1](ct)[0]
  return result


def _sampling_params(params):
  return {k: v for k, v in params.items() if k != "size"}


for _p in (fwd_p, u_vjp_p, grid_jvp_p, grid_vjp_p):
  ad.primitive_transposes[_p] = functools.partial(_transpose, _p)

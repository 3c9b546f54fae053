"""The sampler as JAX primitives with compiled CPU kernels (``csrc/``).

Bilinear on images, trilinear on volumes (PyTorch's ``"bilinear"`` on 5-D input): the same
primitives and the same C++ passes, templated on the number of spatial axes, which the
grid's last dimension (2 or 3) gives. Four primitives, each linear in its first or last
array argument:

* ``fwd(U, grid)``: the samples ``V``; linear in ``U``.
* ``u_vjp(ct, grid)``: the scatter ``dU``, the transpose of ``fwd`` in ``U``.
* ``grid_jvp(U, grid, dgrid)``: ``dV`` for a grid tangent; linear in ``dgrid`` (and ``U``).
* ``grid_vjp(U, grid, ct)``: ``dgrid``, the transpose of ``grid_jvp`` in ``dgrid``.

``fwd``'s JVP is ``fwd(dU, grid) + grid_jvp(U, grid, dgrid)``, and each transposes to
another of the four, so first derivatives in either mode run only compiled kernels: the
U-gradient is one scatter pass, the grid gradient one pass, with no per-tap temporaries.
When reverse mode needs both, they come from one pass: with both tangents non-zero the
JVP is one primitive, ``tangent(U, grid, dU, dgrid)`` (linear in ``(dU, dgrid)``), whose
transpose is ``u_grid_vjp(U, grid, ct) -> (dU, dgrid)``, one C++ sweep that computes each
point's taps once for both cotangents (``FUSE_BACKWARD`` switches this off, for
comparisons). A symbolic-zero tangent keeps the single pass, so the grid gradient alone
never computes ``dU``. Forward mode, ``vmap`` and higher derivatives of these two go
through their decomposition into the four primitives.
Derivatives the kernels do not cover (w.r.t. the grid of ``u_vjp``, ``grid_jvp`` and
``grid_vjp``, i.e. second derivatives in the grid) fall back to JAX's autodiff of the
gather-based sampler in ``gather.py``, which is also each primitive's reference and its
lowering on every platform but the CPU. So every order of ``jvp``/``vjp``/``vmap`` works,
and the tests compare each path with that reference.

The Python/C++ contract has one source, ``gather.py``: the padding mode is passed as its
code in ``gather.PADDING_CODES`` (the C++ constants are checked against it by
``tests/test_native_volumes.py``) and the coordinate clamp as the attribute
``coord_limit = gather.COORD_LIMIT``.

The compiled library is optional: without it (or with ``STN_JAX_NATIVE=0`` in the
environment, read at each trace) :func:`available` is False and ``sample`` uses the
gather-based sampler everywhere. :func:`native_status` (public as
``stn_jax.native_status``) says which path runs and why. ``STN_JAX_NATIVE_LIBRARY=/path/to/lib.so``
loads another build of ``csrc/`` instead of the installed one (``scripts/sanitize.sh``).
The passes are built twice, for the baseline ISA and for AVX2, and the AVX2 build runs
where the CPU has it; on CPUs with AVX-512 the float32 bilinear forward and backward (both
cotangents in one pass) of one- and three-channel images have 16-lane passes of their own.
``STN_JAX_NATIVE_ISA`` (read once, at the first load) caps the choice: ``baseline`` runs
the baseline build, ``avx2`` the AVX2 build without the AVX-512 passes, which is how the
tests check the builds other CPUs get (bit for bit the same). The AVX-512 passes read one
channel's taps as pairs of neighbours on AMD cores, where gathers are slow, and by gathers
elsewhere; ``STN_JAX_NATIVE_TAPS=pairs`` or ``gathers`` (read once) picks either, the same
bits.

Bicubic (tricubic on volumes: Keys' cubic, ``a = -0.75``, per-tap padding) and nearest run
through the same four primitives with a ``kernel`` parameter (``"bicubic"``, ``"nearest"``;
absent for bilinear), which picks the passes of ``csrc/separable_passes.inc`` and the
reference (``gather.sample_gather`` with that kernel). Nearest has only ``fwd`` and
``u_vjp`` passes: its grid derivatives are exactly 0, so its ``fwd`` JVP in the grid is a
zero and ``grid_jvp``/``grid_vjp`` are never bound for it (bound directly, they lower to
the reference).

``vmap`` with an unbatched image and batched grids folds the grids' batch into the
points (:func:`_batch_shared_image`), so one image is never copied per grid.
"""

import ctypes
import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import dispatch
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from stn_jax._src import gather, partitioning
from stn_jax._src import kernels as kernels_lib

_LIBRARY = "stn_jax._bilinear_cpu"
_TARGETS = {
  "fwd": "StnBilinearFwd",
  "u_vjp": "StnBilinearUVjp",
  "grid_jvp": "StnBilinearGridJvp",
  "grid_vjp": "StnBilinearGridVjp",
  "u_grid_vjp": "StnBilinearUGridVjp",
}
# The separable kernels' passes (csrc/separable_passes.inc), by the primitives' ``kernel``
# parameter (absent: bilinear, ``_TARGETS``). Nearest has no grid passes: its samples do not
# move with the grid, so its grid derivatives are exactly 0 without a kernel call.
_SEPARABLE_TARGETS = {
  "bicubic": {
    "fwd": "StnCubicFwd",
    "u_vjp": "StnCubicUVjp",
    "grid_jvp": "StnCubicGridJvp",
    "grid_vjp": "StnCubicGridVjp",
  },
  "nearest": {"fwd": "StnNearestFwd", "u_vjp": "StnNearestUVjp"},
}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Whether reverse mode computes dU and dgrid in one pass (``u_grid_vjp``) when it needs
# both; read at trace time. Benchmarks and tests switch it off to compare with two passes.
FUSE_BACKWARD = True


@functools.cache
def _load_result() -> tuple[bool, str]:
  """Loads the compiled kernels and registers them with XLA: whether that worked, and how.

  ``STN_JAX_NATIVE_LIBRARY``, a path to another build of ``csrc/`` (read once, at the first
  load), replaces the installed one: ``scripts/sanitize.sh`` loads its AddressSanitizer
  build this way without touching the package's own.
  """
  path = os.environ.get("STN_JAX_NATIVE_LIBRARY")
  spec = importlib.util.find_spec(_LIBRARY)
  if not path and (spec is None or spec.origin is None):
    return False, (
      f"the compiled extension {_LIBRARY} is not built (installed without a C++ compiler, "
      "or a source checkout without `python setup.py build_ext --inplace`); reinstall with "
      "a C++17 compiler to build it"
    )
  path = path or spec.origin
  try:
    library = ctypes.CDLL(path)
    symbols = [*_TARGETS.values(), *(t for k in _SEPARABLE_TARGETS.values() for t in k.values())]
    for symbol in symbols:
      jax.ffi.register_ffi_target(symbol, jax.ffi.pycapsule(getattr(library, symbol)), "cpu")
    library.StnPassesIsa.restype = ctypes.c_char_p
    isa = library.StnPassesIsa().decode()
    library.StnOneChannelTaps.restype = ctypes.c_char_p
    taps = library.StnOneChannelTaps().decode()
  except Exception as error:  # a broken build or a jaxlib it does not fit: fall back, say so
    reason = (
      f"the compiled extension {path} is built but cannot be loaded "
      f"({type(error).__name__}: {error}); rebuild it against this jax/jaxlib"
    )
    warnings.warn(f"stn_jax uses the pure-JAX sampler: {reason}.", RuntimeWarning, stacklevel=2)
    return False, reason
  if isa == "avx512":
    return True, (
      f"the compiled kernels {path} are loaded, with the AVX2 build of their passes and "
      "the AVX-512 passes of the float32 bilinear forward and backward of one- and "
      "three-channel images (one channel's taps read "
      + ("as pairs of neighbours" if taps == "pairs" else "by gathers")
      + f", STN_JAX_NATIVE_TAPS={taps})"
    )
  if isa == "avx2":
    return True, f"the compiled kernels {path} are loaded, with the AVX2 build of their passes"
  return True, (
    f"the compiled kernels {path} are loaded, with the baseline build of their passes (no "
    "AVX2 on this CPU, or STN_JAX_NATIVE_ISA=baseline)"
  )


def _load() -> bool:
  """Loads the compiled kernels and registers them with XLA; False if not built/loadable."""
  return _load_result()[0]


def available() -> bool:
  """Whether ``sample`` uses the compiled kernels (bilinear, bicubic, nearest) on the CPU."""
  if os.environ.get("STN_JAX_NATIVE", "1") == "0":
    return False
  return _load()


class NativeStatus(NamedTuple):
  """Whether the compiled CPU kernels run here (``available``), and why (``reason``)."""

  available: bool
  reason: str


def native_status() -> NativeStatus:
  """Whether :func:`stn_jax.sample` runs the compiled CPU kernels here, and if not, why.

  ``available`` is True when the compiled extension is built and loads, ``STN_JAX_NATIVE``
  is not ``0`` and the default JAX backend is the CPU (one device, or several: a
  batch-sharded call runs the kernels on each shard, a spatially sharded one is gathered
  first). Then ``sample`` runs the kernels for every call they cover: ``kernel="bilinear"``,
  ``"bicubic"`` and ``"nearest"`` (trilinear, tricubic and nearest on volumes; with
  ``antialias=True`` too, for its reads; a user-built :class:`stn_jax.Kernel`, even Keys'
  cubic rebuilt by ``stn_jax.kernels.keys_cubic``, runs the pure-JAX sampler), ``U`` of
  dtype float32 or float64 with a grid of the same or a narrower float dtype (so the
  compute dtype is ``U``'s), no empty spatial axis, and fewer than ``2**31`` elements in
  one example of ``U``. Every other call, and every call when ``available`` is False,
  runs the pure-JAX sampler: the same values and derivatives (to float round-off), slower
  on the CPU. The environment variable is read each time a function is traced; the rest
  once per process.

  Returns:
    A :class:`stn_jax.NativeStatus` ``(available, reason)``: a bool and a sentence
    saying why.

  >>> import stn_jax
  >>> status = stn_jax.native_status()
  >>> status.available == stn_jax.native_available()
  True
  >>> isinstance(status.reason, str)
  True
  """
  if os.environ.get("STN_JAX_NATIVE", "1") == "0":
    return NativeStatus(False, "switched off: STN_JAX_NATIVE=0 is set in the environment")
  loaded, reason = _load_result()
  if not loaded:
    return NativeStatus(False, reason)
  backend = jax.default_backend()
  if backend != "cpu":
    return NativeStatus(
      False,
      f"the default backend is {backend!r}: the kernels are CPU code, so sample runs the "
      "pure-JAX sampler there (only computations placed on the CPU use the kernels)",
    )
  return NativeStatus(True, reason)


def native_available() -> bool:
  """Whether :func:`stn_jax.sample` runs the compiled CPU kernels here.

  ``native_status().available``; :func:`stn_jax.native_status` says why not, and which
  calls the kernels cover.

  >>> import stn_jax
  >>> isinstance(stn_jax.native_available(), bool)
  True
  """
  return native_status().available


def usable(u: jax.Array, g: jax.Array) -> bool:
  """Whether the kernels take these per-example arrays: one float32/float64 dtype, an image
  ``(H, W, C)`` with a grid ``(..., 2)`` or a volume ``(D, H, W, C)`` with a grid ``(..., 3)``
  of fewer than 2**31 elements (the kernels index it with int32).

  With several CPU devices (``--xla_force_host_platform_device_count``, multi-process CPU
  runs) the kernels run too: :mod:`partitioning` splits a batch-sharded call over its
  leading dims, so each device runs the kernel on its shard (spatial sharding is gathered).
  """
  d = g.shape[-1] if g.ndim else 0
  if d not in gather.SPATIAL_NDIMS or u.ndim < d + 1 or g.ndim < d + 1:
    return False
  small = math.prod(u.shape[-(d + 1) :]) < 2**31
  return u.dtype == g.dtype and u.dtype in _DTYPES and small and available()


@functools.cache
def _single_cpu_device() -> bool:
  return len(jax.devices("cpu")) == 1


@functools.cache
def _partitionable_ready() -> bool:
  """With several CPU devices, marks the primitives as needing the device assignment when
  lowered (``custom_partitioning`` does), so that :func:`_partitionable` can split them.
  Done on first use, not at import, so one-device programs keep lowering without devices."""
  if not _single_cpu_device():
    dispatch.prim_requires_devices_during_lowering.update(_PRIMITIVES)
  return True


def sample_linear(u, g, padding_mode: str, align_corners: bool, pixels: bool = False):
  """``V`` for ``u`` ``(..., H, W, C)`` and ``g`` ``(..., Ho, Wo, 2)`` (bilinear), or ``u``
  ``(..., D, H, W, C)`` and ``g`` ``(..., Do, Ho, Wo, 3)`` (trilinear), of one dtype.
  ``pixels``: ``g`` holds pixel coordinates, not normalised ones (see ``gather``)."""
  _partitionable_ready()
  return fwd_p.bind(
    u, g, padding_mode=padding_mode, align_corners=align_corners, pixels=bool(pixels)
  )


sample_bilinear = sample_linear  # the name sampling.py has called since the 2-D kernels


def sample_one(u, g, kernel, padding_mode: str, align_corners: bool, pixels: bool = False):
  """One example: ``u`` is ``(*S, C)``, ``g`` is ``(*So, d)`` in the compute dtype
  (normalised, or in pixels with ``pixels=True``).

  Bilinear, bicubic and nearest float32/float64 images and volumes run the compiled
  kernels where they are built (the same values and derivatives); everything else the
  gather sampler.
  """
  compiled = _compiled_kernel(kernel)
  if compiled is not None and 0 not in u.shape[:-1] and usable(u, g):
    if compiled == "bilinear":
      return sample_linear(u, g, padding_mode, align_corners, pixels)
    return sample_separable(u, g, compiled, padding_mode, align_corners, pixels)
  return gather.sample_gather(u, g, kernel, padding_mode, align_corners, pixels=pixels)


def _compiled_kernel(kernel) -> str | None:
  """The compiled kernel that runs a resolved ``kernel``: ``"bilinear"``, ``"nearest"``,
  ``"bicubic"`` (only the object ``kernels.resolve("bicubic")`` returns: Keys' cubic with
  ``a = -0.75``; a user-built :class:`stn_jax.Kernel` runs the gather sampler) or None."""
  if isinstance(kernel, str):
    return kernel if kernel in ("bilinear", "nearest") else None
  return "bicubic" if kernel is kernels_lib.resolve("bicubic") else None


def sample_separable(u, g, kernel: str, padding_mode: str, align_corners: bool, pixels=False):
  """``V`` by the compiled ``kernel`` (``"bicubic"``: bicubic on images, tricubic on volumes;
  or ``"nearest"``), shapes as in :func:`sample_linear`: the same primitives with a
  ``kernel`` parameter, which picks the passes of ``csrc/separable_passes.inc``."""
  _partitionable_ready()
  return fwd_p.bind(
    u, g, padding_mode=padding_mode, align_corners=align_corners, pixels=bool(pixels), kernel=kernel
  )


def _ndim(g) -> int:
  """Spatial axes of a grid (array or aval): its last dimension."""
  return g.shape[-1]


# ---------------------------------------------------------------------------------------
# References: the gather-based sampler and JAX's own derivatives of it.


def _leading(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """Lifts a per-example function over the leading dims that all its arrays share (the
  grid is the second argument; it says how many trailing dims one example has)."""

  def lifted(*args, **params):
    k = _ndim(args[1]) + 1
    lead = args[0].shape[:-k]
    flat = [a.reshape((-1,) + a.shape[-k:]) for a in args]
    out = jax.vmap(functools.partial(fn, **params))(*flat)
    return out.reshape(lead + out.shape[1:])

  return lifted


@_leading
def _ref_fwd(u, g, *, padding_mode, align_corners, pixels, kernel="bilinear"):
  kernel = kernels_lib.resolve(kernel)  # "bicubic": Keys' cubic, as sample resolves it
  return gather.sample_gather(u, g, kernel, padding_mode, align_corners, pixels=pixels)


def _ref_u_vjp(ct, g, *, size, **params):
  u = jnp.zeros(ct.shape[: -(_ndim(g) + 1)] + tuple(size) + ct.shape[-1:], ct.dtype)
  return jax.vjp(lambda x: _ref_fwd(x, g, **params), u)[1](ct)[0]


def _ref_grid_jvp(u, g, dg, **params):
  return jax.jvp(lambda x: _ref_fwd(u, x, **params), (g,), (dg,))[1]


def _ref_grid_vjp(u, g, ct, **params):
  return jax.vjp(lambda x: _ref_fwd(u, x, **params), g)[1](ct)[0]


# ---------------------------------------------------------------------------------------
# The primitives.


# ``partitioning.result_aval`` types each result like its operands (sharding of the leading
# dims in explicit-sharding mode, varying manual axes inside ``shard_map``).


def _shape_fwd(u, g, **_):
  return partitioning.result_aval((u, g), g.shape[:-1] + u.shape[-1:], u.dtype)


def _shape_u_vjp(ct, g, *, size, **_):
  lead = ct.shape[: -(_ndim(g) + 1)]
  return partitioning.result_aval((ct, g), lead + tuple(size) + ct.shape[-1:], ct.dtype)


def _shape_grid_jvp(u, g, dg, **_):
  return partitioning.result_aval((u, g, dg), g.shape[:-1] + u.shape[-1:], u.dtype)


def _shape_grid_vjp(u, g, ct, **_):
  return partitioning.result_aval((u, g, ct), g.shape, g.dtype)


def _define(
  name: str, shape_rule, reference, linear: tuple[int, ...], multiple_results: bool = False
) -> Primitive:
  """A primitive lowered to the CPU kernel ``name`` and elsewhere to ``reference``."""
  p = Primitive(f"stn_bilinear_{name}")
  p.multiple_results = multiple_results
  p.def_impl(functools.partial(dispatch.apply_primitive, p))
  p.def_abstract_eval(shape_rule)
  fallback = mlir.lower_fun(reference, multiple_results=multiple_results)

  def cpu_lowering(ctx, *args, padding_mode, align_corners, **params):
    symbol = _target(name, params.get("kernel", "bilinear"))
    # Bound directly (not through ``sample``) without the library built, or a pass the
    # kernel has no compiled code for (nearest's grid passes).
    if not _load() or symbol is None:
      return fallback(ctx, *args, padding_mode=padding_mode, align_corners=align_corners, **params)
    padding = np.int32(gather.PADDING_CODES[padding_mode])
    limit = np.float64(gather.COORD_LIMIT)
    attributes = dict(
      padding=padding,
      align_corners=bool(align_corners),
      pixels=bool(params.get("pixels", False)),
      coord_limit=limit,
      # How many calls share the cores at once: 1 here; a sharded run's partitioning sets
      # its local shards (partitioning.py), and each call splits among its share.
      parallel_calls=np.int64(1),
    )
    if not _single_cpu_device():
      return _partitionable(name, symbol, ctx, args, attributes)
    return jax.ffi.ffi_lowering(symbol)(ctx, *args, **attributes)

  mlir.register_lowering(p, cpu_lowering, platform="cpu")
  mlir.register_lowering(p, fallback)
  batching.primitive_batchers[p] = functools.partial(_batch, p)
  p.reference = reference
  p.linear = linear
  return p


def _target(name: str, kernel: str) -> str | None:
  """The FFI target of pass ``name`` for ``kernel``; None where it has none."""
  return _TARGETS[name] if kernel == "bilinear" else _SEPARABLE_TARGETS[kernel].get(name)


def _partitionable(name: str, symbol: str, ctx, args, attributes):
  """The kernel call on several CPU devices: split over the leading (batch) dims by
  :mod:`partitioning`'s rule, so a batch-sharded call runs the kernel on each shard."""
  shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in ctx.avals_out)
  several = len(shapes) > 1

  def call(*arrays):
    result = shapes if several else shapes[0]
    return partitioning.kernel_call(symbol, name, arrays, result, **attributes)

  return mlir.lower_fun(call, multiple_results=several)(ctx, *args)


def _batch(p: Primitive, args, dims, **params):
  """vmap: every argument gets the batch axis in front (unbatched ones broadcast), except
  an unbatched image ``U``, which is never copied: see :func:`_batch_shared_image`."""
  if p is not u_vjp_p and dims[0] is None:
    return _batch_shared_image(p, args, dims, **params)
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
  moved = [
    jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
    for a, d in zip(args, dims, strict=True)
  ]
  return p.bind(*moved, **params), 0


def _batch_shared_image(p: Primitive, args, dims, **params):
  """vmap with one image ``U`` (the first argument of ``fwd``, ``grid_jvp``, ``grid_vjp``)
  and batched per-point arrays (grid, its tangent, the output's cotangent): the batch is
  folded into the first spatial axis of the points, ``(B, N..., So_1, ...)`` ->
  ``(N..., B * So_1, ...)``, so that one call reads the one ``U`` at all ``B`` grids'
  points, and the output is unfolded. Broadcasting ``U`` instead would copy it ``B`` times
  (``vmap`` over many grids of one image). ``U``'s cotangent needs nothing here: the
  transpose of the folded ``fwd`` is one ``u_vjp`` over all the points, which sums the
  ``B`` grids' contributions into the one ``dU``.
  """
  u, points = args[0], args[1:]
  size = next(a.shape[d] for a, d in zip(points, dims[1:], strict=True) if d is not None)
  moved = [
    jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
    for a, d in zip(points, dims[1:], strict=True)
  ]
  k = u.ndim - _ndim(moved[0]) - 1  # leading dims that U and the points share
  first = moved[0].shape[k + 1]  # the points' first spatial axis, So_1

  def fold(a):
    a = jnp.moveaxis(a, 0, k)  # (N..., B, So_1, ..., last): free when k == 0
    return a.reshape(a.shape[:k] + (size * first,) + a.shape[k + 2 :])

  out = p.bind(u, *map(fold, moved), **params)
  return out.reshape(out.shape[:k] + (size, first) + out.shape[k + 1 :]), k


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
  fusable = p is fwd_p and params.get("kernel", "bilinear") == "bilinear"
  if fusable and FUSE_BACKWARD and not any(type(t) is ad.Zero for t in tangents):
    # Both tangents: one primitive, so that reverse mode gets both cotangents in one pass
    # (bilinear only: the separable kernels have no fused pass; theirs are two).
    return out, tangent_p.bind(*primals, *tangents, **params)
  tangent = None
  for i, t in enumerate(tangents):
    if type(t) is ad.Zero:
      continue
    if p is fwd_p and i == 1 and params.get("kernel") == "nearest":
      continue  # nearest's samples do not move with the grid: the tangent is exactly 0
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
    (fwd_p, 0): lambda: u_vjp_p.bind(ct, args[1], size=_spatial_size(args), **params),
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


def _spatial_size(args) -> tuple[int, ...]:
  """``U``'s spatial shape, from the avals of ``fwd``'s arguments ``(U, grid)``."""
  d = _ndim(args[1])  # the grid: a primal here, never an UndefinedPrimal
  return tuple(args[0].aval.shape[-(d + 1) : -1])


def _sampling_params(params):
  return {k: v for k, v in params.items() if k != "size"}


for _p in (fwd_p, u_vjp_p, grid_jvp_p, grid_vjp_p):
  ad.primitive_transposes[_p] = functools.partial(_transpose, _p)


# ---------------------------------------------------------------------------------------
# Both gradients in one pass. ``fwd``'s JVP with both tangents non-zero is one primitive,
# ``tangent(U, grid, dU, dgrid) = fwd(dU, grid) + grid_jvp(U, grid, dgrid)``, linear in
# ``(dU, dgrid)`` jointly, so that its transpose can ask for both cotangents at once:
# ``u_grid_vjp(U, grid, ct) -> (dU, dgrid)``, one kernel sweep that prepares each point's
# taps once for both (PyTorch's backward does the same). With one tangent a symbolic zero,
# the JVP stays the single pass it was, so a grid-only gradient never computes ``dU``.
# Everything else about the two (forward mode, vmap, higher derivatives) is their
# decomposition into the four primitives above.


def _tangent_parts(u, g, du, dg, **params):
  return fwd_p.bind(du, g, **params) + grid_jvp_p.bind(u, g, dg, **params)


def _u_grid_vjp_parts(u, g, ct, **params):
  size = tuple(np.shape(u)[-(_ndim(g) + 1) : -1])
  return u_vjp_p.bind(ct, g, size=size, **params), grid_vjp_p.bind(u, g, ct, **params)


def _ref_u_grid_vjp(u, g, ct, **params):
  size = tuple(np.shape(u)[-(_ndim(g) + 1) : -1])
  return _ref_u_vjp(ct, g, size=size, **params), _ref_grid_vjp(u, g, ct, **params)


def _shape_u_grid_vjp(u, g, ct, **_):
  avals = (u, g, ct)
  return (
    partitioning.result_aval(avals, u.shape, u.dtype),
    partitioning.result_aval(avals, g.shape, g.dtype),
  )


tangent_p = Primitive("stn_bilinear_tangent")
tangent_p.def_impl(_tangent_parts)
tangent_p.def_abstract_eval(lambda u, g, du, dg, **_: _shape_fwd(u, g))
mlir.register_lowering(tangent_p, mlir.lower_fun(_tangent_parts, multiple_results=False))
u_grid_vjp_p = _define(
  "u_grid_vjp", _shape_u_grid_vjp, _ref_u_grid_vjp, linear=(2,), multiple_results=True
)
_PRIMITIVES = (fwd_p, u_vjp_p, grid_jvp_p, grid_vjp_p, tangent_p, u_grid_vjp_p)


def _jvp_by_parts(p: Primitive, parts, primals, tangents, **params):
  """``p``'s JVP: ``p`` itself for the primal, JAX's JVP of its decomposition ``parts``
  into the single-pass primitives for the tangent (forward mode, higher derivatives)."""
  out = p.bind(*primals, **params)
  tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
  _, tangent = jax.jvp(functools.partial(parts, **params), tuple(primals), tangents)
  return out, (list(tangent) if p.multiple_results else tangent)


def _batch_tangent(args, dims, **params):
  """vmap of ``tangent``: its parts' rules (the shared-image fold among them)."""
  return jax.vmap(functools.partial(_tangent_parts, **params), in_axes=tuple(dims))(*args), 0


def _batch_u_grid_vjp(args, dims, **params):
  """vmap of ``u_grid_vjp``: one fused call on broadcast arguments when ``U`` is batched;
  with one shared ``U``, each example still gets its own ``dU``, so the parts' rules run
  (``grid_vjp`` folds the grids' batch into the points, ``u_vjp`` scatters per example)."""
  if dims[0] is None:
    parts = functools.partial(_u_grid_vjp_parts, **params)
    return list(jax.vmap(parts, in_axes=tuple(dims))(*args)), [0, 0]
  size = args[0].shape[dims[0]]
  moved = [
    jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
    for a, d in zip(args, dims, strict=True)
  ]
  return u_grid_vjp_p.bind(*moved, **params), [0, 0]


def _transpose_tangent(ct, u, g, du, dg, **params):
  """Both ``dU`` and ``dgrid`` wanted: the fused pass; one of them: its single pass."""
  if ad.is_undefined_primal(u) or ad.is_undefined_primal(g):
    raise NotImplementedError("stn_bilinear_tangent is linear in (dU, dgrid) only")
  want_u, want_g = ad.is_undefined_primal(du), ad.is_undefined_primal(dg)
  if type(ct) is ad.Zero:
    return [None, None, ad.Zero(du.aval) if want_u else None, ad.Zero(dg.aval) if want_g else None]
  if want_u and want_g:
    return [None, None, *u_grid_vjp_p.bind(u, g, ct, **params)]
  d_u = d_g = None
  if want_u:
    d_u = u_vjp_p.bind(ct, g, size=tuple(np.shape(u)[-(_ndim(g) + 1) : -1]), **params)
  if want_g:
    d_g = grid_vjp_p.bind(u, g, ct, **params)
  return [None, None, d_u, d_g]


ad.primitive_jvps[tangent_p] = functools.partial(_jvp_by_parts, tangent_p, _tangent_parts)
ad.primitive_jvps[u_grid_vjp_p] = functools.partial(_jvp_by_parts, u_grid_vjp_p, _u_grid_vjp_parts)
batching.primitive_batchers[tangent_p] = _batch_tangent
batching.primitive_batchers[u_grid_vjp_p] = _batch_u_grid_vjp
ad.primitive_transposes[tangent_p] = _transpose_tangent

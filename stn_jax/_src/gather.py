"""The gather-based reference sampler, for images and volumes alike.

Both :mod:`stn_jax._src.sampling` (the public sampler) and :mod:`stn_jax._src.native` (the
compiled kernels, whose reference and non-CPU lowering this is) import this module; it
imports neither, so there is no cycle. It also holds the contract with the C++ side: the
padding codes and the coordinate clamp.

Per-axis work (un-normalising a coordinate, padding it, kernel weights, in-bounds masks) is
written once and applied to each spatial axis; the taps of all axes are then combined as one
flattened gather per tap of the product. An image ``(H, W, C)`` has two axes, a volume
``(D, H, W, C)`` three; nothing else differs.
"""

import functools
import itertools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from stn_jax._src import dtypes, grids, validation
from stn_jax._src import kernels as kernels_lib

PADDING_MODES = validation.PADDING_MODES

# The integer each padding mode is passed to the compiled kernels as (csrc/): one table for
# both sides of the FFI boundary.
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}

# Coordinates are clamped to +-2**24 pixels before any integer cast: far beyond any image,
# so the clamp never changes a result that means anything, and int32 indices cannot
# overflow whatever the input (1e30, inf). The compiled kernels use the same bound.
COORD_LIMIT = float(2**24)

# Spatial dimensions the sampler handles: images (2) and volumes (3).
SPATIAL_NDIMS = (2, 3)

# Up to this many taps in the product (bilinear, trilinear, bicubic on images) the taps are
# unrolled; wider products (tricubic's 64) run as a scan over the taps, whose body is
# rematerialised: unrolled, jit of a tricubic gradient compiled for minutes, and a scan keeps
# one tap's temporaries alive at a time in the backward as in the forward.
_UNROLL_LIMIT = 16

# Tangents (and so gradients) of products of up to this many taps (bilinear) stack them;
# wider ones scan over them (:func:`_scanned_tangent` says why), unrolled or not forward.
_STACK_LIMIT = 4


def sample_gather(
  u: jax.Array,
  g: jax.Array,
  kernel: "str | kernels_lib.Kernel",
  padding_mode: str,
  align_corners: bool,
  *,
  pixels: bool = False,
) -> jax.Array:
  """The reference sampler for one example, in pure JAX.

  Convention:
    ``u`` is ``(*S, C)`` with ``S`` = ``(H, W)`` or ``(D, H, W)``; ``g`` is ``(*So, d)``
    with ``d == len(S)`` holding ``(x, y)`` or ``(x, y, z)`` normalised as in
    :func:`stn_jax.sample` (x along ``W``, y along ``H``, z along ``D``), already in the
    compute dtype. ``kernel`` is resolved (``"nearest"``, ``"bilinear"`` or a
    :class:`stn_jax.Kernel`).

  Args:
    u: the image or volume, channels-last.
    g: the sampling points.
    kernel: ``"nearest"``, ``"bilinear"`` or a :class:`stn_jax.Kernel`.
    padding_mode: one of :data:`PADDING_MODES`.
    align_corners: PyTorch's meaning.
    pixels: ``g`` is already in pixels (pixel ``m``'s centre at ``m``), as
      ``stn_jax.fields.warp`` computes it, so no normalisation rounds it (an integer
      shift reads whole pixels exactly); ``align_corners`` then only places reflection's
      mirrors.

  Returns:
    ``(*So, C)`` in ``u``'s dtype.

  >>> u = jnp.arange(8.0, dtype=jnp.float32).reshape(2, 2, 2, 1)  # a 2x2x2 volume
  >>> g = jnp.zeros((1, 1, 1, 3), jnp.float32)  # its centre
  >>> sample_gather(u, g, "bilinear", "zeros", False)[0, 0, 0]
  Array([3.5], dtype=float32)
  """
  ndim = g.shape[-1]
  if ndim not in SPATIAL_NDIMS or u.ndim != ndim + 1:
    raise ValueError(
      f"sample_gather needs u (*S, C) and g (*So, d) with d == len(S) in {SPATIAL_NDIMS}; "
      f"got u {u.shape} and g {g.shape}."
    )
  spatial, c = u.shape[:-1], u.shape[-1]
  out_shape = g.shape[:-1]
  if 0 in spatial:
    return jnp.zeros(out_shape + (c,), u.dtype)
  flat_u = u.reshape(math.prod(spatial), c)
  weights, index, valid = _taps(spatial, g, kernel, padding_mode, align_corners, pixels)
  if weights is None:
    return _masked_gather(flat_u, index, valid)
  return _combine_taps(flat_u, weights, index, valid, spatial)


def _taps(
  spatial: tuple[int, ...],
  g: jax.Array,
  kernel: "str | kernels_lib.Kernel",
  padding_mode: str,
  align_corners: bool,
  pixels: bool = False,
) -> tuple:
  """Per-axis tap weights, indices and masks.

  Returns ``(weights, index, valid)``. Nearest: ``weights`` is None, ``index`` the flat row
  into the ``(prod(S), C)`` array and ``valid`` whether it is read, each ``So``-shaped.
  Otherwise ``weights[j][t]``, ``index[j][t]`` are tap ``t``'s weight and integer position
  along spatial axis ``j`` (outermost first: ``z, y, x`` or ``y, x``) and ``valid`` is
  ``(in_bounds, readable)`` with ``in_bounds[j][t]`` the per-axis mask and ``readable``
  False at NaN points; :func:`_product_taps` combines them per tap of the product.
  """
  ndim = len(spatial)
  # Spatial axis j is read by grid component ndim - 1 - j: x (component 0) runs along the
  # last spatial axis, as in PyTorch.
  coords = [
    g[..., ndim - 1 - j] if pixels else grids.unnormalize(g[..., ndim - 1 - j], size, align_corners)
    for j, size in enumerate(spatial)
  ]
  unreadable = functools.reduce(operator.or_, [jnp.isnan(v) for v in coords])
  if padding_mode == "reflection":
    unreadable = functools.reduce(operator.or_, [jnp.isinf(v) for v in coords], unreadable)
  coords = [
    _clamp(jnp.where(unreadable, jnp.zeros_like(v), v), -COORD_LIMIT, COORD_LIMIT) for v in coords
  ]
  readable = ~unreadable

  if kernel == "nearest" or kernel == "bilinear":
    # PyTorch pads the coordinate, then interpolates with zero-padded taps.
    coords = [
      _pad(v, size, padding_mode, align_corners) for v, size in zip(coords, spatial, strict=True)
    ]
    if kernel == "nearest":
      # Round half to even: PyTorch's std::nearbyint.
      hits = [_in_bounds(jnp.round(v), size) for v, size in zip(coords, spatial, strict=True)]
      index = _flat_index([i for i, _ in hits], spatial)
      valid = functools.reduce(operator.and_, [ok for _, ok in hits]) & readable
      return None, index, valid
    starts = [jnp.floor(v) for v in coords]
    positions = [[v0, v0 + 1] for v0 in starts]
    weights = [[v0 + 1 - v, v - v0] for v, v0 in zip(coords, starts, strict=True)]
  else:
    # Per-tap padding: taps floor(v) + o cover every m with |v - m| < radius.
    r = kernel.taps // 2
    offsets = np.arange(1 - r, r + 1)
    starts = [jnp.floor(v) for v in coords]
    weights, positions = [], []
    for v, v0, size in zip(coords, starts, spatial, strict=True):
      steps = offsets.reshape((1,) * v.ndim + (-1,)).astype(v.dtype)
      w_all = kernel(v[..., None] - (v0[..., None] + steps))
      weights.append([w_all[..., t] for t in range(kernel.taps)])
      positions.append([_pad(v0 + int(o), size, padding_mode, align_corners) for o in offsets])

  hits = [
    [_in_bounds(p, size) for p in axis] for axis, size in zip(positions, spatial, strict=True)
  ]
  index = [[i for i, _ in axis] for axis in hits]
  valid = [[ok for _, ok in axis] for axis in hits]
  return weights, index, (valid, readable)


def _flat_index(per_axis: list[jax.Array], spatial: tuple[int, ...]) -> jax.Array:
  """Row of ``(prod(S), C)`` holding the voxel at per-axis indices (row-major, Horner)."""
  flat = per_axis[0]
  for i, size in zip(per_axis[1:], spatial[1:], strict=True):
    flat = flat * size + i
  return flat


def _product_taps(index: list, valid: tuple, spatial: tuple[int, ...]):
  """Yields ``(taps, flat_index, valid)`` for each tap of the product, row-major.

  ``taps`` is the tuple of per-axis tap numbers. Computed per tap, as the loops need them,
  so that no ``T ** d`` stack of index arrays exists at once.
  """
  valid_axes, readable = valid
  for taps in itertools.product(*(range(len(axis)) for axis in index)):
    flat = _flat_index([index[j][t] for j, t in enumerate(taps)], spatial)
    ok = functools.reduce(operator.and_, [valid_axes[j][t] for j, t in enumerate(taps)])
    yield taps, flat, ok & readable


def _masked_gather(flat_u: jax.Array, index: jax.Array, valid: jax.Array) -> jax.Array:
  """Whole channel vectors ``flat_u[index]``, 0 where not ``valid`` (never 0 * inf)."""
  values = flat_u.at[index].get(mode="promise_in_bounds")
  return jnp.where(valid[..., None], values, jnp.zeros((), values.dtype))


def _accumulate(total, term):
  return term if total is None else total + term


def _product(factors: list[jax.Array]) -> jax.Array:
  return functools.reduce(operator.mul, factors)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _combine_taps(
  flat_u: jax.Array,
  weights: list[list[jax.Array]],
  index: list[list[jax.Array]],
  valid: tuple,
  spatial: tuple[int, ...],
) -> jax.Array:
  """``V = sum_t prod_j weights[j][t_j] flat_u[row(t)]`` over the valid taps, in U's dtype.

  One gather of whole channel vectors per tap, combined axis by axis as it goes (innermost
  axis first, as a separable filter): a stacked ``(*So, T ** d, C)`` gather would
  materialise ``T ** d`` times the output and runs several times slower on XLA:CPU
  (benchmarks/bench_sampler.py). At most ``d`` partial sums are alive at once.
  """
  cdt = weights[0][0].dtype
  ndim = len(weights)
  if math.prod(len(axis) for axis in weights) > _UNROLL_LIMIT:
    return _scan_taps(flat_u, weights, None, index, valid, spatial).astype(flat_u.dtype)
  # partial[j] accumulates the sum over the axes after j for the current taps before j.
  partial: list = [None] * ndim
  for taps, flat, ok in _product_taps(index, valid, spatial):
    term = _masked_gather(flat_u, flat, ok).astype(cdt) * weights[-1][taps[-1]][..., None]
    partial[-1] = _accumulate(partial[-1], term)
    # Close every axis whose last tap this was, innermost first.
    for j in range(ndim - 1, 0, -1):
      if taps[j] != len(weights[j]) - 1:
        break
      term = partial[j] * weights[j - 1][taps[j - 1]][..., None]
      partial[j - 1] = _accumulate(partial[j - 1], term)
      partial[j] = None
  return partial[0].astype(flat_u.dtype)


def _weight_tangent(weights, dweights, taps):
  """d(prod_j w_j[t_j]): the product rule, innermost axis first; None if all zero."""
  dw = None
  for k in range(len(weights) - 1, -1, -1):
    if isinstance(dweights[k][taps[k]], SymbolicZero):
      continue
    factors = [dweights[j][t] if j == k else weights[j][t] for j, t in enumerate(taps)]
    dw = _accumulate(dw, _product(factors))
  return dw


@functools.partial(_combine_taps.defjvp, symbolic_zeros=True)
def _combine_taps_jvp(spatial, primals, tangents):
  # A tangent linear in (du, dweights), so JAX transposes it for reverse mode. Symbolic
  # zeros skip the weight part under grad w.r.t. U alone, and the U-part under grad
  # w.r.t. the grid alone.
  flat_u, weights, index, valid = primals
  du, dweights, _, _ = tangents
  out = _combine_taps(flat_u, weights, index, valid, spatial)
  taps_list = list(itertools.product(*(range(len(axis)) for axis in weights)))
  if len(taps_list) > _STACK_LIMIT:
    tangent = _scanned_tangent(flat_u, weights, du, dweights, index, valid, spatial)
  else:
    tangent = _stacked_tangent(flat_u, weights, du, dweights, index, valid, spatial, taps_list)
  if tangent is None:
    return out, jnp.zeros_like(out)
  return out, tangent.astype(out.dtype)


def _scanned_tangent(flat_u, weights, du, dweights, index, valid, spatial):
  """The tangent of a product of more than :data:`_STACK_LIMIT` taps, one tap per scan step.

  Both terms are scans, never the unrolled taps: transposed, an unrolled term is one
  scatter into its own image-sized buffer per tap (bicubic's 16 on a 16 MiB feature map
  needed 954 MiB), while the scan's transpose adds every tap into one carried buffer
  (67 MiB, and 3.9x faster; trilinear 222 -> 40 MiB, 2.1x faster:
  ``benchmarks/bench_sampler.py --workloads bicubic`` with ``STN_JAX_NATIVE=0``).
  """
  tangent = None
  if any(not isinstance(d, SymbolicZero) for axis in dweights for d in axis):
    tangent = _scan_taps(flat_u, weights, _instantiate(dweights, weights), index, valid, spatial)
  if not isinstance(du, SymbolicZero):
    tangent = _accumulate(tangent, _scan_taps(du, weights, None, index, valid, spatial))
  return tangent


def _stacked_tangent(flat_u, weights, du, dweights, index, valid, spatial, taps_list):
  """The tangent of a product of at most :data:`_STACK_LIMIT` taps (bilinear), stacked.

  One ``(..., T, C)`` gather per tangent term. In reverse mode that is one gather feeding
  one contraction with the cotangent for the weights (10-20% faster than four gather+reduce
  pairs on images/down) and, for C > 1, one scatter-add of ``(..., T, C)`` rows into one
  zero buffer for dU instead of four scatters, four buffers and their sums (feature -29%,
  images -17%, down -59%; with C = 1 the per-tap scatters are 20% faster).
  """
  cdt = weights[0][0].dtype
  dws = [_weight_tangent(weights, dweights, taps) for taps in taps_list]
  flat_taps = list(_product_taps(index, valid, spatial))
  idx = jnp.stack([flat for _, flat, _ in flat_taps], -1)
  ok = jnp.stack([v for _, _, v in flat_taps], -1)
  tangent = None
  if any(dw is not None for dw in dws):
    dw = jnp.stack([jnp.zeros_like(weights[0][0]) if d is None else d for d in dws], -1)
    gathered = _masked_gather(flat_u, idx, ok).astype(cdt)
    tangent = jnp.einsum("...t,...tc->...c", dw, gathered, precision=dtypes.MATMUL_PRECISION)
  if not isinstance(du, SymbolicZero):
    if flat_u.shape[-1] > 1:
      w = jnp.stack(
        [_product([weights[j][t] for j, t in enumerate(taps)]) for taps in taps_list], -1
      )
      gathered = _masked_gather(du, idx, ok).astype(cdt)
      term = jnp.einsum("...t,...tc->...c", w, gathered, precision=dtypes.MATMUL_PRECISION)
    else:
      term = _combine_taps(du, weights, index, valid, spatial).astype(cdt)
    tangent = _accumulate(tangent, term)
  return tangent


def _instantiate(dweights: list, weights: list) -> list:
  """Per-axis weight tangents for the scan: None for an axis whose taps are all symbolic
  zeros, else every tap's tangent (zeros filled in)."""
  out = []
  for d_axis, w_axis in zip(dweights, weights, strict=True):
    if all(isinstance(d, SymbolicZero) for d in d_axis):
      out.append(None)
    else:
      out.append(
        [
          jnp.zeros_like(w) if isinstance(d, SymbolicZero) else d
          for d, w in zip(d_axis, w_axis, strict=True)
        ]
      )
  return out


def _scan_taps(
  flat_u: jax.Array,
  weights: list[list[jax.Array]],
  dweights: list | None,
  index: list[list[jax.Array]],
  valid: tuple,
  spatial: tuple[int, ...],
) -> jax.Array:
  """``sum_t flat_u[row(t)] * w_t`` over the taps of the product, one tap per scan step.

  ``w_t = prod_j weights[j][t_j]``, or with ``dweights`` its derivative by the product rule
  (axes whose entry is None contribute nothing). The body is rematerialised, so
  differentiating the scan saves only its per-axis inputs, never a per-tap stack.
  """
  ndim = len(weights)
  stacks = [jnp.stack(axis) for axis in weights]
  d_stacks = None if dweights is None else [None if d is None else jnp.stack(d) for d in dweights]
  index_stacks = [jnp.stack(axis) for axis in index]
  valid_stacks = [jnp.stack(axis) for axis in valid[0]]
  readable = valid[1]
  table = np.array(list(itertools.product(*(range(len(axis)) for axis in weights))), np.int32)
  cdt = stacks[0].dtype

  @jax.checkpoint
  def step(total, taps):
    w = [stacks[j][taps[j]] for j in range(ndim)]
    if d_stacks is None:
      weight = _product(w)
    else:
      weight = None
      for k in range(ndim - 1, -1, -1):
        if d_stacks[k] is not None:
          factors = [d_stacks[k][taps[k]] if j == k else w[j] for j in range(ndim)]
          weight = _accumulate(weight, _product(factors))
    flat = _flat_index([index_stacks[j][taps[j]] for j in range(ndim)], spatial)
    ok = functools.reduce(operator.and_, [valid_stacks[j][taps[j]] for j in range(ndim)])
    values = _masked_gather(flat_u, flat, ok & readable).astype(cdt)
    return total + values * weight[..., None], None

  total = jnp.zeros(readable.shape + flat_u.shape[-1:], cdt)
  return jax.lax.scan(step, total, table)[0]


def _clamp(v: jax.Array, low: float, high: float) -> jax.Array:
  """Clamp whose gradient is 0 at and beyond the bounds (PyTorch's clip_coordinates)."""
  return jnp.where(v <= low, jnp.full_like(v, low), jnp.where(v >= high, jnp.full_like(v, high), v))


def _reflect(v: jax.Array, twice_low: int, twice_high: int) -> jax.Array:
  """Reflects ``v`` into ``[twice_low / 2, twice_high / 2]`` (PyTorch's reflect_coordinates)."""
  if twice_low == twice_high:
    return jnp.zeros_like(v)
  low = twice_low / 2
  span = (twice_high - twice_low) / 2
  v = jnp.abs(v - low)
  extra = jnp.fmod(v, span)
  flips = jnp.floor(v / span)
  return jnp.where(jnp.fmod(flips, 2) == 0, extra + low, span - extra + low)


def _pad(v: jax.Array, size: int, padding_mode: str, align_corners: bool) -> jax.Array:
  """Maps a pixel coordinate into the image per ``padding_mode`` (PyTorch's rules)."""
  if padding_mode == "border":
    return _clamp(v, 0, size - 1)
  if padding_mode == "reflection":
    if align_corners:
      v = _reflect(v, 0, 2 * (size - 1))
    else:
      v = _reflect(v, -1, 2 * size - 1)
    return _clamp(v, 0, size - 1)
  return v


def _in_bounds(positions: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Integer tap indices, clipped into ``[0, size)``, and whether they were inside."""
  valid = (positions >= 0) & (positions <= size - 1)
  index = jnp.clip(positions, 0, size - 1).astype(np.int32)
  return index, valid

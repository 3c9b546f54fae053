"""The differentiable sampler: reads ``U`` at the points of a grid with a kernel."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from stn_jax._src import batching, dtypes, grids, native
from stn_jax._src import kernels as kernels_lib

PADDING_MODES = ("zeros", "border", "reflection")

# Coordinates are clamped to +-2**24 pixels before any integer cast: far beyond any image,
# so the clamp never changes a result that means anything, and int32 indices cannot
# overflow whatever the input (1e30, inf).
_COORD_LIMIT = float(2**24)


def sample(
  U: ArrayLike,
  grid: ArrayLike,
  kernel: "str | kernels_lib.Kernel" = "bilinear",
  *,
  padding_mode: str = "zeros",
  align_corners: bool = False,
) -> jax.Array:
  r"""Samples ``U`` at the points of ``grid``, like ``torch.nn.functional.grid_sample``.

  .. math::

    V_i^c = \sum_n \sum_m U_{nm}^c \, k(x_i - m) \, k(y_i - n)

  with ``(x_i, y_i)`` the ``i``-th grid point in input pixels.

  Kernels:

  * ``"nearest"``: the pixel at ``round(x), round(y)`` (round half to even, as PyTorch).
  * ``"bilinear"``: ``k(d) = max(0, 1 - |d|)``.
  * ``"bicubic"``: Keys' cubic convolution with ``a = -0.75`` (PyTorch's).
  * a :class:`stn_jax.Kernel`: any separable kernel, e.g. from :mod:`stn_jax.kernels`.

  For the first three, values and gradients (w.r.t. ``U`` and ``grid``) equal PyTorch's
  ``grid_sample`` with the same ``mode``, ``padding_mode`` and ``align_corners``.

  Padding (PyTorch's rules): ``"zeros"`` reads 0 outside the image; ``"border"`` clamps;
  ``"reflection"`` reflects about the image's edges (its pixel centres with
  ``align_corners=True``, its outer edges with False). ``"nearest"`` and ``"bilinear"``
  pad the coordinate and then interpolate; ``"bicubic"`` and :class:`stn_jax.Kernel` pad
  each tap.

  Non-finite and huge coordinates (where this departs from PyTorch, which returns NaN):
  a NaN coordinate reads 0 in every padding mode; ``+-inf`` reads 0 under ``"zeros"`` and
  ``"reflection"`` (no reflected position exists) and the edge under ``"border"``;
  coordinates are clamped to ``+-2**24`` pixels before any integer cast, so nothing
  overflows or reads out of bounds. Gradients at such points are 0; for finite coordinates
  outputs and gradients are finite.

  Dtypes: coordinates and weights are computed in the promoted float dtype of ``U`` and
  ``grid``, at least float32 (float64 stays float64 with x64 on; bfloat16/float16 data is
  interpolated in float32). The output has ``U``'s dtype. Integer and bool images work with
  ``"nearest"`` only (it copies values, so the dtype is kept); the interpolating kernels
  raise a ``TypeError`` saying to cast. An image with ``H == 0`` or ``W == 0`` samples 0.

  Convention:
    ``U`` is ``(..., H, W, C)`` (channels-last). ``grid[..., 0]`` is x (along ``W``),
    ``grid[..., 1]`` is y (along ``H``), normalised so that ``[-1, 1]`` spans ``U``
    (``align_corners=False``: -1 and 1 are the outer edges of the corner pixels; True:
    their centres). Pull sampling: ``V[..., i, j, :]`` reads ``U`` at ``grid[..., i, j]``.
    Leading dims of ``U`` and ``grid`` broadcast. PyTorch equivalent:
    ``grid_sample(U.permute(0, 3, 1, 2), grid, ...).permute(0, 2, 3, 1)``.

  Args:
    U: ``(..., H, W, C)`` feature map.
    grid: ``(..., Ho, Wo, 2)`` normalised sampling points, e.g. from
      :func:`stn_jax.make_grid`.
    kernel: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or a :class:`stn_jax.Kernel`.
    padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
    align_corners: PyTorch's meaning; use the same value as for the grid.

  Returns:
    ``(..., Ho, Wo, C)`` array of ``U``'s dtype.

  >>> U = jnp.arange(1, 7, dtype=jnp.float32).reshape(2, 3, 1)  # [[1, 2, 3], [4, 5, 6]]
  >>> grid = jnp.array([[[0.0, 0.0], [-1.0, -1.0]]], jnp.float32)  # centre; top-left corner
  >>> sample(U, grid)[..., 0]
  Array([[3.5 , 0.25]], dtype=float32)
  >>> sample(U, grid, padding_mode="border")[..., 0]
  Array([[3.5, 1. ]], dtype=float32)
  """
  if padding_mode not in PADDING_MODES:
    raise ValueError(f"unknown padding_mode {padding_mode!r}; expected one of {PADDING_MODES}.")
  kernel = kernels_lib.resolve(kernel)
  U = jnp.asarray(U)
  grid = jnp.asarray(grid)
  if U.ndim < 3:
    raise ValueError(f"U must have shape (..., H, W, C) (channels-last); got {U.shape}.")
  if grid.ndim < 3 or grid.shape[-1] != 2:
    raise ValueError(f"grid must have shape (..., Ho, Wo, 2) holding (x, y); got {grid.shape}.")

  if jnp.issubdtype(U.dtype, jnp.complexfloating):
    dtypes.float_dtype(U.dtype, name="U")  # raises, saying what to do
  image_is_float = jnp.issubdtype(U.dtype, jnp.floating)
  if not image_is_float and kernel != "nearest":
    name = kernel if isinstance(kernel, str) else "a Kernel"
    raise TypeError(
      f"kernel {name!r} interpolates, so U must be a float array; got dtype {U.dtype}. "
      "Cast it first (U.astype(jnp.float32)) or use kernel='nearest', which keeps the dtype."
    )
  if image_is_float:
    compute = dtypes.float_dtype(U.dtype, grid.dtype, name="U and grid")
  else:
    compute = dtypes.float_dtype(grid.dtype, name="grid")

  def core(u: jax.Array, g: jax.Array) -> jax.Array:
    return _sample_one(u, g.astype(compute), kernel, padding_mode, align_corners)

  return batching.vmap_leading(core, [U, grid], [3, 3], ["U", "grid"])


def warp(
  U: ArrayLike,
  theta: ArrayLike,
  transform: str = "affine",
  *,
  shape: Sequence[int] | None = None,
  kernel: "str | kernels_lib.Kernel" = "bilinear",
  padding_mode: str = "zeros",
  align_corners: bool = False,
  control_points: ArrayLike | None = None,
) -> jax.Array:
  """Warps ``U`` by ``theta``: :func:`make_grid` then :func:`sample`.

  Convention:
    As in :func:`stn_jax.make_grid` and :func:`stn_jax.sample`; ``shape`` defaults to
    ``U``'s ``(H, W)``.

  Args:
    U: ``(..., H, W, C)`` feature map.
    theta: transformation parameters, leading dims matching ``U``'s.
    transform: ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    shape: the output's ``(Ho, Wo)``.
    kernel: as in :func:`stn_jax.sample`.
    padding_mode: as in :func:`stn_jax.sample`.
    align_corners: used for both the grid and the sampling.
    control_points: TPS sources, as in :func:`stn_jax.make_grid`.

  Returns:
    ``(..., Ho, Wo, C)``.

  >>> U = jnp.arange(16, dtype=jnp.float32).reshape(4, 4, 1)
  >>> flip_x = jnp.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32)
  >>> warp(U, flip_x)[0, :, 0]
  Array([3., 2., 1., 0.], dtype=float32)
  """
  U = jnp.asarray(U)
  if shape is None:
    if U.ndim < 3:
      raise ValueError(f"U must have shape (..., H, W, C) (channels-last); got {U.shape}.")
    shape = U.shape[-3:-1]
  grid = grids.make_grid(
    theta, shape, transform, align_corners=align_corners, control_points=control_points
  )
  return sample(U, grid, kernel, padding_mode=padding_mode, align_corners=align_corners)


def _sample_one(
  u: jax.Array,
  g: jax.Array,
  kernel: "str | kernels_lib.Kernel",
  padding_mode: str,
  align_corners: bool,
) -> jax.Array:
  """One example: ``u`` is ``(H, W, C)``, ``g`` is ``(Ho, Wo, 2)`` in the compute dtype.

  Bilinear float32/float64 runs the compiled kernels of ``native.py`` where they are built
  (the same values and derivatives); everything else the gather-based sampler below.
  """
  if kernel == "bilinear" and u.shape[0] and u.shape[1] and native.usable(u, g):
    return native.sample_bilinear(u, g, padding_mode, align_corners)
  return _sample_gather(u, g, kernel, padding_mode, align_corners)


def _sample_gather(
  u: jax.Array,
  g: jax.Array,
  kernel: "str | kernels_lib.Kernel",
  padding_mode: str,
  align_corners: bool,
) -> jax.Array:
  """The reference sampler: one gather of channel vectors per tap, in pure JAX."""
  h, w, c = u.shape
  ho, wo, _ = g.shape
  if h == 0 or w == 0:
    return jnp.zeros((ho, wo, c), u.dtype)
  flat_u = u.reshape(h * w, c)
  wx, wy, index, valid = _taps(h, w, g, kernel, padding_mode, align_corners)
  if wx is None:
    return _masked_gather(flat_u, index[0][0], valid[0][0])
  return _combine_taps(flat_u, wx, wy, index, valid)


def _taps(
  h: int,
  w: int,
  g: jax.Array,
  kernel: "str | kernels_lib.Kernel",
  padding_mode: str,
  align_corners: bool,
) -> tuple:
  """Per-axis tap weights ``wx``, ``wy`` (None for nearest) and per-tap flat row indices
  into the ``(H * W, C)`` image with their validity, each ``(Ho, Wo)``."""
  x = grids.unnormalize(g[..., 0], w, align_corners)
  y = grids.unnormalize(g[..., 1], h, align_corners)
  unreadable = jnp.isnan(x) | jnp.isnan(y)
  if padding_mode == "reflection":
    unreadable |= jnp.isinf(x) | jnp.isinf(y)
  x = _clamp(jnp.where(unreadable, jnp.zeros_like(x), x), -_COORD_LIMIT, _COORD_LIMIT)
  y = _clamp(jnp.where(unreadable, jnp.zeros_like(y), y), -_COORD_LIMIT, _COORD_LIMIT)

  readable = ~unreadable
  if kernel == "nearest" or kernel == "bilinear":
    # PyTorch pads the coordinate, then interpolates with zero-padded taps.
    x = _pad(x, w, padding_mode, align_corners)
    y = _pad(y, h, padding_mode, align_corners)
    if kernel == "nearest":
      # Round half to even: PyTorch's std::nearbyint.
      ix, valid_x = _in_bounds(jnp.round(x), w)
      iy, valid_y = _in_bounds(jnp.round(y), h)
      return None, None, [[iy * w + ix]], [[valid_y & valid_x & readable]]
    x0, y0 = jnp.floor(x), jnp.floor(y)
    xs, ys = [x0, x0 + 1], [y0, y0 + 1]
    wx = [x0 + 1 - x, x - x0]
    wy = [y0 + 1 - y, y - y0]
  else:
    # Per-tap padding: taps floor(x) + j cover every m with |x - m| < radius.
    r = kernel.taps // 2
    offsets = np.arange(1 - r, r + 1)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    taps = offsets.reshape((1,) * x.ndim + (-1,)).astype(x.dtype)
    wx_all = kernel(x[..., None] - (x0[..., None] + taps))
    wy_all = kernel(y[..., None] - (y0[..., None] + taps))
    wx = [wx_all[..., j] for j in range(kernel.taps)]
    wy = [wy_all[..., j] for j in range(kernel.taps)]
    xs = [_pad(x0 + int(o), w, padding_mode, align_corners) for o in offsets]
    ys = [_pad(y0 + int(o), h, padding_mode, align_corners) for o in offsets]

  ix, valid_x = zip(*(_in_bounds(p, w) for p in xs), strict=True)
  iy, valid_y = zip(*(_in_bounds(p, h) for p in ys), strict=True)
  # Flat row indices into flat_u, computed once per tap.
  index = [[iy[a] * w + ix[b] for b in range(len(ix))] for a in range(len(iy))]
  valid = [[valid_y[a] & valid_x[b] & readable for b in range(len(ix))] for a in range(len(iy))]
  return list(wx), list(wy), index, valid


def _masked_gather(flat_u: jax.Array, index: jax.Array, valid: jax.Array) -> jax.Array:
  """Whole channel vectors ``flat_u[index]``, 0 where not ``valid`` (never 0 * inf)."""
  values = flat_u.at[index].get(mode="promise_in_bounds")
  return jnp.where(valid[..., None], values, jnp.zeros((), values.dtype))


@jax.custom_jvp
def _combine_taps(
  flat_u: jax.Array,
  wx: list[jax.Array],
  wy: list[jax.Array],
  index: list[list[jax.Array]],
  valid: list[list[jax.Array]],
) -> jax.Array:
  """``V = sum_ab wy[a] wx[b] flat_u[index[a][b]]`` over the valid taps, in U's dtype.

  One gather of whole channel vectors per tap, combined as it goes: a stacked
  ``(Ho, Wo, T, T, C)`` gather would materialise ``T * T`` times the output and runs several
  times slower on XLA:CPU (benchmarks/bench_sampler.py).
  """
  cdt = wx[0].dtype
  out = None
  for a, row_index in enumerate(index):
    row = None
    for b, idx in enumerate(row_index):
      term = _masked_gather(flat_u, idx, valid[a][b]).astype(cdt) * wx[b][..., None]
      row = term if row is None else row + term
    term = row * wy[a][..., None]
    out = term if out is None else out + term
  return out.astype(flat_u.dtype)


@functools.partial(_combine_taps.defjvp, symbolic_zeros=True)
def _combine_taps_jvp(primals, tangents):
  # A tangent linear in (du, dwx, dwy), so JAX transposes it for reverse mode. Symbolic
  # zeros skip the weight part under grad w.r.t. U alone, and the U-part under grad
  # w.r.t. the grid alone.
  flat_u, wx, wy, index, valid = primals
  du, dwx, dwy, _, _ = tangents
  out = _combine_taps(flat_u, wx, wy, index, valid)
  cdt = wx[0].dtype
  pairs = [(a, b) for a in range(len(wy)) for b in range(len(wx))]
  dws = []
  for a, b in pairs:
    dw = None
    if not isinstance(dwx[b], SymbolicZero):
      dw = wy[a] * dwx[b]
    if not isinstance(dwy[a], SymbolicZero):
      term = dwy[a] * wx[b]
      dw = term if dw is None else dw + term
    dws.append(dw)
  has_dw = any(dw is not None for dw in dws)
  has_du = not isinstance(du, SymbolicZero)
  # Bilinear (4 taps) stacks its taps into one (..., 4, C) gather per tangent term. In
  # reverse mode that is one gather feeding one contraction with the cotangent for the
  # weights (10-20% faster than four gather+reduce pairs on images/down) and, for C > 1,
  # one scatter-add of (..., 4, C) rows into one zero buffer for dU instead of four
  # scatters, four buffers and their sums (feature -29%, images -17%, down -59%; with
  # C = 1 the per-tap scatters are 20% faster). Wider kernels stay per tap: a stacked
  # gather would hold T * T times the output.
  if len(pairs) <= 4:
    idx = jnp.stack([index[a][b] for a, b in pairs], -1)
    ok = jnp.stack([valid[a][b] for a, b in pairs], -1)
  tangent = None
  if has_dw and len(pairs) <= 4:
    dw = jnp.stack([jnp.zeros_like(wx[0]) if d is None else d for d in dws], -1)
    tangent = jnp.einsum("...t,...tc->...c", dw, _masked_gather(flat_u, idx, ok).astype(cdt))
  elif has_dw:
    for dw, (a, b) in zip(dws, pairs, strict=True):
      if dw is not None:
        values = _masked_gather(flat_u, index[a][b], valid[a][b]).astype(cdt)
        term = values * dw[..., None]
        tangent = term if tangent is None else tangent + term
  if has_du:
    if len(pairs) <= 4 and flat_u.shape[-1] > 1:
      w = jnp.stack([wy[a] * wx[b] for a, b in pairs], -1)
      term = jnp.einsum("...t,...tc->...c", w, _masked_gather(du, idx, ok).astype(cdt))
    else:
      term = _combine_taps(du, wx, wy, index, valid).astype(cdt)
    tangent = term if tangent is None else tangent + term
  if tangent is None:
    return out, jnp.zeros_like(out)
  return out, tangent.astype(out.dtype)


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

r"""Antialiased sampling: a mip pyramid read trilinearly, with probes along long footprints.

:func:`stn_jax.sample` reads a fixed, small neighbourhood of each point, so where the grid
zooms out (neighbouring output points more than one input pixel apart) the detail between
the points folds into moire. With ``antialias=True`` each output point's footprint in the
input is estimated from the grid itself, and the image is filtered to match it before being
read, as graphics hardware filters textures. The same code serves images and volumes
(``nd`` = 2 or 3 spatial axes):

1. The Jacobian ``J[:, a]``, in input pixels per output pixel along output axis ``a``, is
   the central finite difference of neighbouring grid points (one-sided at the edges; 0
   along an axis of size 1 and where a neighbour is not finite).
2. A mip pyramid of ``U`` (level ``l + 1`` is the mean of the 2x2 (volumes: 2x2x2) blocks of
   level ``l``) is built once per image and packed into one atlas.
3. With ``rho_1 >= rho_2 >= ...`` the lengths ``|J[:, a]|`` sorted, the ``N`` probes
   (``N = max_anisotropy``) cut the footprint into ``n1 x n2`` cells along its two longest
   axes (``N x 1`` or, for round footprints, ``sqrt(N) x sqrt(N)``, whichever is finer),
   each filtered at the cell's width ``w = max(rho_1 / n1, rho_2 / n2, rho_3, 1)``. Each
   probe is read with the kernel at the two pyramid levels around ``log2(w)``, blended
   linearly in the level (trilinear filtering), and the probes are averaged.

.. math::

  V_i = \frac{1}{N} \sum_{p=1}^{N} \big[(1 - t_i) \, U^{(l_i)}(x_{ip})
    + t_i \, U^{(l_i + 1)}(x_{ip})\big], \qquad l_i + t_i = \log_2 w_i

Where the footprint is no larger than one input pixel (``rho_1 <= 1``, with ``1e-4`` of
slack for round-off: the identity, a translation, a rotation, any zoom-in) the result is
exactly :func:`stn_jax.sample`'s, value and derivatives. Derivatives flow to ``U`` and to
the grid (through the probes' positions and the level blend), in forward and reverse mode,
and are finite for degenerate grids (all points equal) and where the grid holds NaN or inf
(such points read as in :func:`stn_jax.sample`; their neighbours take the difference as 0).

Level 0 is read as :func:`stn_jax.sample` reads ``U``. The coarser levels pad the coordinate
per ``padding_mode`` at their own resolution (``"reflection"`` about their outer edges,
whatever ``align_corners``), and pad by whole texels, so near the edge of an image whose
size is not a multiple of ``2**l`` the padding is approximate.

Convention:
  As :func:`stn_jax.sample`. Level-``l`` texel ``k`` covers level-0 pixels
  ``[k 2^l, (k + 1) 2^l)`` along each axis, so its centre is at level-0 pixel coordinate
  ``(k + 1/2) 2^l - 1/2`` whatever ``align_corners`` says (the grid's normalisation is
  undone first). The footprint uses the grid's own neighbours, so a grid that is not a
  regular lattice of output pixels gets the footprint of its spacing.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax._src import grids, native

# Probes along the major axis of an anisotropic footprint (EXT_texture_filter_anisotropic's
# maxAnisotropy): a footprint up to this many times longer than wide is filtered at its width.
# benchmarks/bench_antialias.py measures 1, 2 and 4.
MAX_ANISOTROPY = 4

# Added to log2(footprint) when choosing the level. A level-l texel read bilinearly blurs
# with a box of 2**l texels convolved with a tent of the same width, about twice the
# variance of the ideal box of the footprint; a finer level trades that blur against
# leftover aliasing. benchmarks/bench_antialias.py measures the trade-off.
LEVEL_BIAS = 0.0

# Squared footprint length up to which a point is read exactly as stn_jax.sample reads it:
# one pixel, plus room for the round-off of finite differences of an identity grid (its
# spacing is 1 +- a few ulp). Just above it the probes spread by < 1e-4 px: continuous.
_ONE_PIXEL2 = 1.0 + 1e-4


def check_max_anisotropy(max_anisotropy) -> int:
  """The probe count as a Python int; it fixes the number of reads, so it must be static."""
  if isinstance(max_anisotropy, bool) or not (
    isinstance(max_anisotropy, int | np.integer) and max_anisotropy >= 1
  ):
    raise ValueError(
      f"max_anisotropy must be a positive Python int (it fixes the number of probes); "
      f"got {max_anisotropy!r}."
    )
  return int(max_anisotropy)


def sample_one(u, g, kernel, padding_mode, align_corners, n_probes=MAX_ANISOTROPY):
  """One example of ``sample(..., antialias=True)``: ``u`` is ``(*spatial, C)``, ``g`` is
  ``(*out, nd)`` (x first) in the compute dtype; the method is the module docstring's."""
  nd = g.shape[-1]
  spatial = u.shape[:nd]
  plain = native.sample_one(u, g, kernel, padding_mode, align_corners)
  if any(n == 0 for n in spatial) or g.size == 0:
    return plain
  cdt = g.dtype
  # Pixel coordinates in spatial-axis order (row first), whatever the grid's (x, y) order.
  pix = jnp.stack(
    [grids.unnormalize(g[..., nd - 1 - a], spatial[a], align_corners) for a in range(nd)], -1
  )
  jac = _jacobian(pix)  # (*out, nd input axes, nd output axes)
  rho2 = jnp.sum(jac * jac, axis=-2)  # squared footprint length along each output axis
  # Output axes longest first (ties: the last axis first).
  order = jnp.flip(jnp.argsort(rho2, axis=-1), axis=-1)
  rho2_sorted = jnp.take_along_axis(rho2, order, axis=-1)
  columns = jnp.take_along_axis(jac, order[..., None, :], axis=-1)
  w2, offsets = _footprint_probes(rho2_sorted, columns, n_probes)
  n_levels = max(math.ceil(math.log2(max(spatial))), 0) if max(spatial) > 1 else 0
  lam = jnp.clip(0.5 * jnp.log2(w2) + LEVEL_BIAS, 0.0, float(n_levels))
  lo = jnp.clip(jnp.floor(lam), 0, n_levels).astype(jnp.int32)
  frac = lam - lo.astype(cdt)
  hi = jnp.minimum(lo + 1, n_levels)
  probes = [pix + o for o in offsets]

  radius = 1 if isinstance(kernel, str) else math.ceil(float(kernel.radius))
  atlas, layout = _atlas(u.astype(cdt), n_levels, padding_mode, 2 * radius)
  reads = []
  for level in (lo, hi):
    for x in probes:
      reads.append(_atlas_coords(x, level, layout, padding_mode, align_corners, radius))
  out_shape = g.shape[:-1]
  coords = jnp.stack(reads).reshape((-1,) + out_shape[1:] + (nd,))
  values = native.sample_one(atlas, coords, kernel, "zeros", False)
  values = values.reshape((2, n_probes) + out_shape + (u.shape[-1],)).astype(cdt)
  v_lo, v_hi = jnp.mean(values[0], axis=0), jnp.mean(values[1], axis=0)
  filtered = v_lo + frac[..., None] * (v_hi - v_lo)
  exact = (rho2_sorted[..., 0] <= _ONE_PIXEL2)[..., None]
  return jnp.where(exact, plain.astype(cdt), filtered).astype(u.dtype)


def _footprint_probes(rho2_sorted, columns, n_probes):
  """The filter width (squared) and the probes' offsets (input pixels) of each point.

  Each candidate pattern cuts the footprint into ``n1 x n2`` cells along its two longest
  axes, one probe per cell, each filtered at the cell's width ``w``; shorter axes (volumes)
  are not cut. The pattern with the smallest ``w`` (least blur) wins: ``N x 1`` for long
  footprints, ``sqrt(N) x sqrt(N)`` for round ones. Widths stay squared: no sqrt or log
  of 0 where the grid is degenerate.
  """
  rho2_max, rho2_minor = rho2_sorted[..., 0], rho2_sorted[..., 1]
  major_vec, minor_vec = columns[..., 0], columns[..., 1]
  # Elementwise maxima, not jnp.max(..., initial=1): that reduction's forward-mode rule
  # divides by the count of maximal entries, 0 where the initial value wins (NaN tangents).
  rest = jnp.ones_like(rho2_max)
  for k in range(2, rho2_sorted.shape[-1]):
    rest = jnp.maximum(rest, rho2_sorted[..., k])
  best = None
  for n1, n2 in _patterns(n_probes):
    w2 = jnp.maximum(jnp.maximum(rho2_max / n1**2, rho2_minor / n2**2), rest)
    offsets = _probe_offsets(n1, n2, n_probes, w2, rho2_max, rho2_minor, major_vec, minor_vec)
    if best is None:
      best = (w2, offsets)
    else:
      take = w2 < best[0]
      best = (
        jnp.where(take, w2, best[0]),
        [jnp.where(take[..., None], o, b) for o, b in zip(offsets, best[1], strict=True)],
      )
  return best


def _patterns(n_probes: int) -> list[tuple[int, int]]:
  """Probe layouts ``(along the major axis, along the minor axis)`` with ``n_probes`` cells."""
  out = [(n_probes, 1)]
  m = math.isqrt(n_probes)
  if m > 1 and m * m == n_probes:
    out.append((m, m))
  return out


def _probe_offsets(n1, n2, n_probes, w2, rho2_max, rho2_minor, major_vec, minor_vec):
  """Offsets (input pixels) of the ``n1 x n2`` probes: width-``w`` boxes tiling each length.

  Along an axis of length ``rho`` the ``n`` centres run from ``-(rho - w) / 2`` to
  ``(rho - w) / 2``, so they coincide where ``rho <= w``: as a footprint shrinks to one pixel
  the probes merge continuously into a single read.
  """
  w = jnp.sqrt(w2)  # w2 >= 1

  def spread(rho2, n):
    if n == 1:
      return jnp.zeros_like(w)
    long = rho2 > w2
    rho = jnp.sqrt(jnp.where(long, rho2, jnp.ones_like(rho2)))
    return jnp.where(long, 1.0 - w / rho, jnp.zeros_like(rho)) / (n - 1)

  s1, s2 = spread(rho2_max, n1), spread(rho2_minor, n2)
  offsets = []
  for i in range(n1):
    for j in range(n2):
      a, b = i - (n1 - 1) / 2, j - (n2 - 1) / 2
      offsets.append((a * s1)[..., None] * major_vec + (b * s2)[..., None] * minor_vec)
  assert len(offsets) == n_probes
  return offsets


def _jacobian(pix: jax.Array) -> jax.Array:
  """``J[..., d, a] = d pix[..., d] / d out_a`` by central differences, 0 where not finite."""
  cols = []
  for a in range(pix.ndim - 1):
    n = pix.shape[a]
    if n == 1:
      cols.append(jnp.zeros_like(pix))
      continue
    ahead = jnp.concatenate([_take(pix, a, 1, n), _take(pix, a, n - 1, n)], axis=a)
    behind = jnp.concatenate([_take(pix, a, 0, 1), _take(pix, a, 0, n - 1)], axis=a)
    span = np.full(n, 2.0)
    span[0] = span[-1] = 1.0
    shape = [1] * pix.ndim
    shape[a] = n
    diff = (ahead - behind) / span.reshape(shape).astype(pix.dtype)
    cols.append(jnp.where(jnp.isfinite(diff), diff, jnp.zeros_like(diff)))
  return jnp.stack(cols, -1)


def _take(x: jax.Array, axis: int, start: int, stop: int) -> jax.Array:
  return jax.lax.slice_in_dim(x, start, stop, axis=axis)


def _pad_mode(padding_mode: str) -> dict:
  """``jnp.pad`` arguments that extend a level as ``padding_mode`` reads beyond its edges."""
  if padding_mode == "border":
    return dict(mode="edge")
  if padding_mode == "reflection":
    return dict(mode="symmetric")  # about the outer edges: levels >= 1 use that convention
  return dict(mode="constant")


def _pyramid(u: jax.Array, n_levels: int, padding_mode: str) -> list[jax.Array]:
  """Levels 0..n_levels; each the mean of 2-blocks of the previous along every spatial axis."""
  nd = u.ndim - 1
  levels = [u]
  for _ in range(n_levels):
    x = levels[-1]
    for a in range(nd):
      n = x.shape[a]
      if n % 2:
        widths = [(0, 0)] * x.ndim
        widths[a] = (0, 1)
        x = jnp.pad(x, widths, **_pad_mode(padding_mode))
      n = x.shape[a]
      x = x.reshape(x.shape[:a] + (n // 2, 2) + x.shape[a + 1 :])
      x = (jax.lax.index_in_dim(x, 0, a + 1, False) + jax.lax.index_in_dim(x, 1, a + 1, False)) / 2
    levels.append(x)
  return levels


def _atlas(u: jax.Array, n_levels: int, padding_mode: str, gutter: int):
  """All levels in one array, side by side along the last spatial axis, each with a gutter.

  Returns the atlas and a layout: per level, its spatial sizes and its offset along the last
  axis (of its first texel, gutter included).
  """
  nd = u.ndim - 1
  levels = _pyramid(u, n_levels, padding_mode)
  full = [n + 2 * gutter for n in u.shape[:nd]]
  blocks, sizes, offsets, offset = [], [], [], 0
  for x in levels:
    sizes.append(x.shape[:nd])
    offsets.append(offset + gutter)
    x = jnp.pad(x, [(gutter, gutter)] * nd + [(0, 0)], **_pad_mode(padding_mode))
    # Fill the rest of the strip (non-last axes) with zeros; nothing reads there.
    rest = [(0, full[a] - x.shape[a]) for a in range(nd - 1)] + [(0, 0), (0, 0)]
    blocks.append(jnp.pad(x, rest))
    offset += x.shape[nd - 1]
  atlas = jnp.concatenate(blocks, axis=nd - 1)
  return atlas, (np.asarray(sizes), np.asarray(offsets), gutter, atlas.shape[:nd])


def _atlas_coords(x, level, layout, padding_mode, align_corners, radius):
  """Normalised atlas coordinates (x first) of level-0 pixel positions ``x`` at ``level``."""
  sizes, offsets, gutter, atlas_shape = layout
  nd = x.shape[-1]
  cdt = x.dtype
  scale = jnp.exp2(level.astype(cdt))
  xl = (x + 0.5) / scale[..., None] - 0.5
  size = jnp.asarray(sizes, cdt)[level]  # (*out, nd)
  # Level 0 keeps the image's convention; coarser levels reflect about their outer edges.
  centres = jnp.asarray(align_corners) & (level == 0)
  out = []
  for a in range(nd):
    n = size[..., a]
    v = _pad_coordinate(xl[..., a], n, padding_mode, centres, radius)
    v = v + gutter
    if a == nd - 1:
      v = v + (jnp.asarray(offsets, cdt)[level] - gutter)
    out.append((2 * v + 1) / atlas_shape[a] - 1)
  return jnp.stack(out[::-1], -1)


def _pad_coordinate(v, n, padding_mode, centres, radius):
  """Maps a level pixel coordinate into what the atlas holds for ``padding_mode``.

  ``"zeros"`` keeps it within ``radius`` of the level, where the gutter reads 0.
  """
  if padding_mode == "zeros":
    return _clamp(v, -radius, n - 1 + radius)
  if padding_mode == "reflection":
    low = jnp.where(centres, 0.0, -0.5).astype(v.dtype)
    high = jnp.where(centres, n - 1, n - 0.5).astype(v.dtype)
    span = jnp.maximum(high - low, 1e-30)
    d = jnp.abs(v - low)
    extra = jnp.fmod(d, span)
    flips = jnp.floor(d / span)
    v = jnp.where(jnp.fmod(flips, 2) == 0, extra + low, span - extra + low)
    v = jnp.where(high > low, v, jnp.zeros_like(v))
  return _clamp(v, 0.0, n - 1)


def _clamp(v, low, high):
  """Clamp with zero gradient at and beyond the bounds (PyTorch's clip_coordinates)."""
  low = jnp.broadcast_to(jnp.asarray(low, v.dtype), v.shape)
  high = jnp.broadcast_to(jnp.asarray(high, v.dtype), v.shape)
  return jnp.where(v <= low, low, jnp.where(v >= high, high, v))

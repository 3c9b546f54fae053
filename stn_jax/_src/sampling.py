"""The differentiable sampler: reads ``U`` at the points of a grid with a kernel."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stn_jax._src import antialias as antialias_lib
from stn_jax._src import batching, dtypes, gather, grids, native, validation
from stn_jax._src import kernels as kernels_lib

PADDING_MODES = gather.PADDING_MODES


def sample(
  U: ArrayLike,
  grid: ArrayLike,
  kernel: "str | kernels_lib.Kernel" = "bilinear",
  *,
  padding_mode: str = "zeros",
  align_corners: bool = False,
  antialias: bool = False,
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

  Volumes: ``U`` ``(..., D, H, W, C)`` with a grid ``(..., Do, Ho, Wo, 3)`` of ``(x, y, z)``
  points gives ``(..., Do, Ho, Wo, C)``, with the same kernels applied along three axes:
  ``"bilinear"`` is trilinear (PyTorch's 5-D ``grid_sample`` names it so, and equals it, as
  ``"nearest"`` does), ``"bicubic"`` is tricubic (Keys, per-tap padding; PyTorch has no 5-D
  bicubic) and a :class:`stn_jax.Kernel` is applied separably. The grid's last axis
  decides whether ``U`` is read as an image (2) or a volume (3); every rule below holds
  for both.

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
  raise a ``TypeError`` saying to cast. An image with ``H == 0`` or ``W == 0`` (a volume
  with any spatial size 0) samples 0.

  Which path runs: bilinear (trilinear) sampling of a float32/float64 ``U`` (with a grid
  of no wider dtype) runs compiled C++ kernels on the CPU where they are built; every
  other call, and every call on a GPU/TPU, the pure-JAX sampler, with the same values and
  derivatives. :func:`stn_jax.native_status` says whether the kernels run here, and why not.

  Convention:
    ``U`` is ``(..., H, W, C)`` (channels-last). ``grid[..., 0]`` is x (along ``W``),
    ``grid[..., 1]`` is y (along ``H``), normalised so that ``[-1, 1]`` spans ``U``
    (``align_corners=False``: -1 and 1 are the outer edges of the corner pixels; True:
    their centres). Pull sampling: ``V[..., i, j, :]`` reads ``U`` at ``grid[..., i, j]``.
    Leading dims of ``U`` and ``grid`` broadcast. PyTorch equivalent:
    ``grid_sample(U.permute(0, 3, 1, 2), grid, ...).permute(0, 2, 3, 1)``. Volumes:
    ``U`` is ``(..., D, H, W, C)`` and ``grid[..., 2]`` is z (along ``D``); PyTorch:
    ``grid_sample(U.permute(0, 4, 1, 2, 3), grid, ...).permute(0, 2, 3, 4, 1)``.

  Args:
    U: ``(..., H, W, C)`` feature map, or a ``(..., D, H, W, C)`` volume.
    grid: ``(..., Ho, Wo, 2)`` normalised sampling points, e.g. from
      :func:`stn_jax.make_grid`; ``(..., Do, Ho, Wo, 3)`` for a volume.
    kernel: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or a :class:`stn_jax.Kernel`.
    padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
    align_corners: PyTorch's meaning; use the same value as for the grid.
    antialias: low-pass filter ``U`` to each output point's footprint before reading it,
      so that a zooming-out grid does not alias (images and volumes; ``U`` must be
      float). The footprint comes from the grid's own finite differences; the point is
      read from a mip pyramid of ``U`` (2x2, or 2x2x2, box levels) at up to 4 probes over
      the footprint, each level read with ``kernel``. Where the footprint is at most one
      input pixel (identity, rotation, zoom-in) the result is exactly that of
      ``antialias=False``. Differentiable w.r.t. ``U`` and ``grid`` (and so ``theta``),
      forward and reverse. The method: :mod:`stn_jax._src.antialias`.

  Returns:
    ``(..., Ho, Wo, C)`` (volumes: ``(..., Do, Ho, Wo, C)``) array of ``U``'s dtype.

  >>> U = jnp.arange(1, 7, dtype=jnp.float32).reshape(2, 3, 1)  # [[1, 2, 3], [4, 5, 6]]
  >>> grid = jnp.array([[[0.0, 0.0], [-1.0, -1.0]]], jnp.float32)  # centre; top-left corner
  >>> sample(U, grid)[..., 0]
  Array([[3.5 , 0.25]], dtype=float32)
  >>> sample(U, grid, padding_mode="border")[..., 0]
  Array([[3.5, 1. ]], dtype=float32)
  >>> stripes = jnp.tile(jnp.array([0.0, 1.0], jnp.float32), 4).reshape(1, 8, 1)  # 0 1 0 1 ..
  >>> two = jnp.array([[[-0.375, 0.0], [0.625, 0.0]]], jnp.float32)  # pixels 2 and 6
  >>> sample(stripes, two)[..., 0]  # plain sampling aliases: it sees only the 0s
  Array([[0., 0.]], dtype=float32)
  >>> sample(stripes, two, antialias=True)[..., 0]  # the mean over each 4-pixel footprint
  Array([[0.5, 0.5]], dtype=float32)
  >>> volume = jnp.arange(8, dtype=jnp.float32).reshape(2, 2, 2, 1)  # (D, H, W, C)
  >>> points = jnp.array([[[[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]]], jnp.float32)  # (1, 1, 2, 3)
  >>> sample(volume, points)[..., 0]  # the centre; the centre of the back slice (z = 1)
  Array([[[3.5, 5.5]]], dtype=float32)
  """
  return sample_with_options(
    U, grid, kernel, padding_mode=padding_mode, align_corners=align_corners, antialias=antialias
  )


def sample_with_options(
  U: ArrayLike,
  grid: ArrayLike,
  kernel: "str | kernels_lib.Kernel" = "bilinear",
  *,
  padding_mode: str = "zeros",
  align_corners: bool = False,
  antialias: bool = False,
  max_anisotropy: int = antialias_lib.MAX_ANISOTROPY,
) -> jax.Array:
  """:func:`sample`, plus the antialiasing's probe count (benchmarks sweep it).

  ``max_anisotropy``: probes per point over an anisotropic footprint, a positive Python
  int; 1 gives plain trilinear mip-mapping (cheapest; blurs long footprints across).
  """
  validation.check_padding_mode(padding_mode)
  kernel = kernels_lib.resolve(kernel)
  n_probes = antialias_lib.check_max_anisotropy(max_anisotropy)
  U = jnp.asarray(U)
  grid = jnp.asarray(grid)
  ndim = _check_layout(U, grid)
  if jnp.issubdtype(U.dtype, jnp.complexfloating):
    dtypes.float_dtype(U.dtype, name="U")  # raises, saying what to do
  image_is_float = jnp.issubdtype(U.dtype, jnp.floating)
  if not image_is_float and (kernel != "nearest" or antialias):
    name = kernel if isinstance(kernel, str) else "a Kernel"
    what = "antialias=True averages pixels" if antialias else f"kernel {name!r} interpolates"
    raise TypeError(
      f"{what}, so U must be a float array; got dtype {U.dtype}. Cast it first "
      "(U.astype(jnp.float32)) or use kernel='nearest' without antialias, which keeps the "
      "dtype."
    )
  if image_is_float:
    compute = dtypes.float_dtype(U.dtype, grid.dtype, name="U and grid")
  else:
    compute = dtypes.float_dtype(grid.dtype, name="grid")

  def core(u: jax.Array, g: jax.Array) -> jax.Array:
    g = g.astype(compute)
    if antialias:
      return antialias_lib.sample_one(u, g, kernel, padding_mode, align_corners, n_probes)
    return native.sample_one(u, g, kernel, padding_mode, align_corners)

  return batching.vmap_leading(core, [U, grid], [ndim + 1, ndim + 1], ["U", "grid"])


def _check_layout(U: jax.Array, grid: jax.Array) -> int:
  """The number of spatial dims (2 or 3), read off the grid's last axis, checked against U."""
  ndim = grid.shape[-1] if grid.ndim else 0
  if ndim not in gather.SPATIAL_NDIMS or grid.ndim < ndim + 1:
    raise ValueError(
      "grid must have shape (..., Ho, Wo, 2) holding (x, y) for an image or "
      f"(..., Do, Ho, Wo, 3) holding (x, y, z) for a volume; got {grid.shape}."
    )
  if U.ndim < ndim + 1:
    layout, kind = {2: ("(..., H, W, C)", "an image"), 3: ("(..., D, H, W, C)", "a volume")}[ndim]
    raise ValueError(
      f"a grid whose last axis is {ndim} samples {kind}, so U must have shape {layout} "
      f"(channels-last); got U {U.shape} with grid {grid.shape}. Add the channel axis "
      "(U[..., None]) if it is missing, or pass a grid of the other dimension."
    )
  return ndim


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
  antialias: bool = False,
) -> jax.Array:
  """Warps ``U`` by ``theta``: :func:`make_grid` then :func:`sample`.

  Volumes: a 3-D ``theta`` (``(..., 3, 4)`` affine, ``(..., 4)`` attention, ``(..., 4, 4)``
  projective, ``(..., K, 3)`` TPS) warps ``U`` ``(..., D, H, W, C)``. The dimension is
  ``len(shape)`` when ``shape`` is given, else read off ``theta``'s trailing shape (or the
  TPS ``control_points``).

  Convention:
    As in :func:`stn_jax.make_grid` and :func:`stn_jax.sample`; ``shape`` defaults to
    ``U``'s ``(H, W)`` (volumes: ``(D, H, W)``).

  Args:
    U: ``(..., H, W, C)`` feature map (or ``(..., D, H, W, C)`` volume).
    theta: transformation parameters, leading dims matching ``U``'s.
    transform: ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    shape: the output's ``(Ho, Wo)`` (or ``(Do, Ho, Wo)``).
    kernel: as in :func:`stn_jax.sample`.
    padding_mode: as in :func:`stn_jax.sample`.
    align_corners: used for both the grid and the sampling.
    control_points: TPS sources, as in :func:`stn_jax.make_grid`.
    antialias: as in :func:`stn_jax.sample`.

  Returns:
    ``(..., Ho, Wo, C)`` (or ``(..., Do, Ho, Wo, C)``).

  >>> U = jnp.arange(16, dtype=jnp.float32).reshape(4, 4, 1)
  >>> flip_x = jnp.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32)
  >>> warp(U, flip_x)[0, :, 0]
  Array([3., 2., 1., 0.], dtype=float32)
  >>> volume = jnp.arange(8, dtype=jnp.float32).reshape(2, 2, 2, 1)  # (D, H, W, C)
  >>> flip_z = jnp.diag(jnp.array([1.0, 1.0, -1.0, 1.0], jnp.float32))[:3]
  >>> warp(volume, flip_z)[:, 0, 0, 0]  # the two slices swap
  Array([4., 0.], dtype=float32)
  """
  U = jnp.asarray(U)
  if shape is None:
    ndim = grids.spatial_ndim(theta, transform, control_points)
    if U.ndim < ndim + 1:
      layout = "(..., H, W, C)" if ndim == 2 else "(..., D, H, W, C) for a 3-D theta"
      raise ValueError(f"U must have shape {layout} (channels-last); got {U.shape}.")
    shape = U.shape[-ndim - 1 : -1]
  grid = grids.make_grid(
    theta, shape, transform, align_corners=align_corners, control_points=control_points
  )
  return sample(
    U, grid, kernel, padding_mode=padding_mode, align_corners=align_corners, antialias=antialias
  )

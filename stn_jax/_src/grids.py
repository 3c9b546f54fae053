"""Grid generators: transformation parameters ``theta`` to normalised sampling grids."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stn_jax._src import batching, dtypes, validation

TRANSFORMS = validation.TRANSFORMS

# Trailing theta shape of each transform for images (2) and volumes (3); TPS: (K, ndim).
_THETA_TRAILING = {
  2: {"affine": (2, 3), "attention": (3,), "projective": (3, 3)},
  3: {"affine": (3, 4), "attention": (4,), "projective": (4, 4)},
}
_SPATIAL_NDIMS = (2, 3)


def default_control_points(ndim: int = 2) -> np.ndarray:
  """The default TPS control points: a lattice of 4 per axis over ``[-1, 1]^ndim``.

  Convention:
    Normalised coordinates of the *output* grid (``[-1, 1]`` spans it), ``(x, y)`` or
    ``(x, y, z)`` per row, x along the width (y along the height, z along the depth);
    row-major, so x varies fastest: ``ndim=2`` is
    ``np.stack(np.meshgrid(side, side), -1).reshape(16, 2)``.

  Args:
    ndim: 2 for images (16 points on a 4x4 lattice), 3 for volumes (64 on 4x4x4).

  Returns:
    ``(4 ** ndim, ndim)`` float64 array of coordinate rows: x varies fastest.

  >>> default_control_points()[:5]
  array([[-1.        , -1.        ],
         [-0.33333333, -1.        ],
         [ 0.33333333, -1.        ],
         [ 1.        , -1.        ],
         [-1.        , -0.33333333]])
  >>> default_control_points(3)[[0, 1, 4, 16]]
  array([[-1.        , -1.        , -1.        ],
         [-0.33333333, -1.        , -1.        ],
         [-1.        , -0.33333333, -1.        ],
         [-1.        , -1.        , -0.33333333]])
  """
  if ndim not in _SPATIAL_NDIMS:
    raise ValueError(f"ndim must be 2 (images) or 3 (volumes); got {ndim!r}.")
  side = np.linspace(-1.0, 1.0, 4)
  if ndim == 2:
    return np.stack(np.meshgrid(side, side), -1).reshape(16, 2)
  z, y, x = np.meshgrid(side, side, side, indexing="ij")
  return np.stack([x, y, z], -1).reshape(64, 3)


def unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
  """Normalised coordinate along one axis of length ``size`` to pixel units.

  Convention:
    With ``align_corners`` a one-pixel axis has scale ``(size - 1) / 2 == 0``: every finite
    coordinate is that pixel's, 0, and an infinite one stays infinite (never
    ``(inf + 1) * 0``, a NaN, which the sampler reads as "no point"), so the padding rules
    for infinite coordinates apply: ``"zeros"`` reads 0, ``"border"`` the pixel (the limit
    of every finite coordinate), ``"reflection"`` 0. The compiled kernels'
    ``PixelCoordinate`` does the same.

    Without ``align_corners`` it is ``((coord + 1) * size - 1) / 2`` rounded step by step in
    the coordinate's dtype, as PyTorch and the compiled kernels compute it. For a one-pixel
    axis that is ``((coord + 1) - 1) / 2``, which XLA would simplify to ``coord / 2`` under
    ``jit``: near the pixel's edge (``coord`` = 1.0000001 in float32) nearest sampling then
    rounded to the next pixel, outside, and read 0 where PyTorch reads the pixel. An
    optimisation barrier keeps the rounding of ``coord + 1``.
  """
  if align_corners and size == 1:
    return jnp.where(jnp.isfinite(coord), jnp.zeros_like(coord), coord)
  if align_corners:
    return (coord + 1) * ((size - 1) / 2)
  if size == 1:
    return (jax.lax.optimization_barrier(coord + 1) - 1) / 2
  return ((coord + 1) * size - 1) / 2


def _pixel_centres(size: int, align_corners: bool) -> np.ndarray:
  # PyTorch's affine_grid: a single pixel sits at 0 whatever align_corners says.
  if size <= 1:
    return np.zeros((size,))
  if align_corners:
    return np.linspace(-1.0, 1.0, size)
  return (2.0 * np.arange(size) + 1.0) / size - 1.0


def base_grid(shape: tuple[int, ...], align_corners: bool) -> np.ndarray:
  """Normalised ``(x, y[, z])`` of every output pixel centre, ``(*shape, len(shape))`` float64."""
  axes = np.meshgrid(*(_pixel_centres(n, align_corners) for n in shape), indexing="ij")
  # Spatial axes run (z,) y, x; the coordinate's components run x, y (, z).
  return np.stack(axes[::-1], axis=-1)


def normalized_to_pixel(
  xy: ArrayLike, shape: Sequence[int], *, align_corners: bool = False
) -> jax.Array:
  """Converts normalised ``(x, y)`` in ``[-1, 1]`` to pixel coordinates of an image.

  Volumes work the same way: ``shape`` ``(D, H, W)`` and ``(x, y, z)`` points; the length
  of ``shape`` decides, and the points' last axis must match it.

  Convention:
    ``xy[..., 0]`` is x (along the width ``W``), ``xy[..., 1]`` is y (along ``H``), and
    for volumes ``xy[..., 2]`` is z (along ``D``).
    ``align_corners=False``: -1 and 1 are the outer edges of the corner pixels, so pixel
    ``m`` spans ``[m - 0.5, m + 0.5]``; ``True``: -1 and 1 are the corner pixels' centres.
    Pixel ``m`` has its centre at coordinate ``m`` (PyTorch's ``grid_sample``).

  Args:
    xy: ``(..., 2)`` (or ``(..., 3)``) normalised coordinates.
    shape: the image's ``(H, W)`` (or the volume's ``(D, H, W)``).
    align_corners: PyTorch's meaning.

  Returns:
    ``(..., 2)`` pixel coordinates ``(column, row)`` (or ``(..., 3)``: column, row, slice).

  >>> normalized_to_pixel(jnp.array([[-1.0, 1.0]], jnp.float32), (4, 8))
  Array([[-0.5,  3.5]], dtype=float32)
  >>> normalized_to_pixel(jnp.array([1.0, -1.0, 0.0], jnp.float32), (3, 4, 8))
  Array([ 7.5, -0.5,  1. ], dtype=float32)
  """
  sizes = _check_shape(shape, "shape")[::-1]  # (W, H[, D]): the order of xy's components
  xy = _as_float_points(xy, "xy", len(sizes))
  return jnp.stack(
    [unnormalize(xy[..., k], n, align_corners) for k, n in enumerate(sizes)], axis=-1
  )


def pixel_to_normalized(
  xy: ArrayLike, shape: Sequence[int], *, align_corners: bool = False
) -> jax.Array:
  """Converts pixel coordinates ``(column, row)`` to normalised ``(x, y)``.

  The inverse of :func:`normalized_to_pixel` (a size-1 axis with ``align_corners=True``
  maps every pixel coordinate to 0).

  Convention:
    As in :func:`normalized_to_pixel`.

  Args:
    xy: ``(..., 2)`` pixel coordinates (or ``(..., 3)`` for a volume).
    shape: the image's ``(H, W)`` (or the volume's ``(D, H, W)``).
    align_corners: PyTorch's meaning.

  Returns:
    ``(..., 2)`` (or ``(..., 3)``) normalised coordinates.

  >>> pixel_to_normalized(jnp.array([[-0.5, 3.5]], jnp.float32), (4, 8))
  Array([[-1.,  1.]], dtype=float32)
  >>> pixel_to_normalized(jnp.array([7.5, -0.5, 1.0], jnp.float32), (3, 4, 8))
  Array([ 1., -1.,  0.], dtype=float32)
  """
  sizes = _check_shape(shape, "shape")[::-1]
  xy = _as_float_points(xy, "xy", len(sizes))

  def norm(p: jax.Array, size: int) -> jax.Array:
    if align_corners:
      return p * (2 / (size - 1)) - 1 if size > 1 else jnp.zeros_like(p)
    return (2 * p + 1) / size - 1

  return jnp.stack([norm(xy[..., k], n) for k, n in enumerate(sizes)], axis=-1)


def identity_theta(
  transform: str = "affine",
  *,
  ndim: int | None = None,
  control_points: ArrayLike | None = None,
  dtype=jnp.float32,
) -> jax.Array:
  """The ``theta`` for which :func:`make_grid` gives the identity grid.

  Use it as the bias of a localisation network's last layer (with a zero kernel), so that a
  spatial transformer starts as the identity.

  Convention:
    ``theta`` as :func:`make_grid` reads it: affine ``[[1, 0, 0], [0, 1, 0]]``, attention
    ``(s, tx, ty) = (1, 0, 0)``, projective the 3x3 identity, TPS targets equal to the
    sources. For volumes (``ndim=3``): affine ``eye(3, 4)``, attention
    ``(s, tx, ty, tz) = (1, 0, 0, 0)``, projective ``eye(4)``.

  Args:
    transform: one of ``"affine"``, ``"attention"``, ``"projective"``, ``"tps"``.
    ndim: 2 for images, 3 for volumes. Default: the dimension of ``control_points`` if
      given, else 2.
    control_points: the TPS sources (default :func:`default_control_points` of ``ndim``).
    dtype: dtype of the result.

  Returns:
    ``(2, 3)``, ``(3,)``, ``(3, 3)`` or ``(K, 2)``; for volumes ``(3, 4)``, ``(4,)``,
    ``(4, 4)`` or ``(K, 3)``.

  >>> identity_theta("attention")
  Array([1., 0., 0.], dtype=float32)
  >>> identity_theta("affine", ndim=3)
  Array([[1., 0., 0., 0.],
         [0., 1., 0., 0.],
         [0., 0., 1., 0.]], dtype=float32)
  """
  _check_transform(transform)
  if ndim is None:
    ndim = 2 if control_points is None else spatial_ndim((), "tps", control_points)
  if ndim not in _SPATIAL_NDIMS:
    raise ValueError(f"ndim must be 2 (images) or 3 (volumes); got {ndim!r}.")
  if transform == "affine":
    theta = np.eye(ndim, ndim + 1)
  elif transform == "attention":
    theta = np.eye(1, ndim + 1)[0]
  elif transform == "projective":
    theta = np.eye(ndim + 1)
  else:
    theta = _static_control_points(control_points, ndim)
  return jnp.asarray(theta, dtype=dtype)


def attention_to_affine(theta: ArrayLike) -> jax.Array:
  """Expands attention parameters ``(s, tx, ty)`` to ``[[s, 0, tx], [0, s, ty]]``.

  Volumes: ``(s, tx, ty, tz)`` to ``[[s, 0, 0, tx], [0, s, 0, ty], [0, 0, s, tz]]``; the
  length of ``theta``'s last axis decides.

  Convention:
    Pull map in normalised coordinates: output point ``(x, y)`` reads the input at
    ``(s x + tx, s y + ty)``, so ``s < 1`` zooms in and ``tx > 0`` looks to the right.

  Args:
    theta: ``(..., 3)`` (or ``(..., 4)`` for volumes).

  Returns:
    ``(..., 2, 3)`` (or ``(..., 3, 4)``) affine parameters.

  >>> attention_to_affine(jnp.array([0.5, 0.1, -0.2], jnp.float32))
  Array([[ 0.5,  0. ,  0.1],
         [ 0. ,  0.5, -0.2]], dtype=float32)
  """
  theta = jnp.asarray(theta)
  ndim = 3 if theta.ndim and theta.shape[-1] == 4 else 2
  theta = _as_theta(theta, "attention", ndim=ndim)
  s, t = theta[..., 0], theta[..., 1:]
  zero = jnp.zeros_like(s)
  rows = [
    jnp.stack([s if j == i else zero for j in range(ndim)] + [t[..., i]], -1) for i in range(ndim)
  ]
  return jnp.stack(rows, -2)


def _to_matrix(theta: ArrayLike, name: str) -> tuple[jax.Array, bool]:
  """Affine ``(..., d, d + 1)`` or projective ``(..., d + 1, d + 1)`` to the homogeneous
  ``(..., d + 1, d + 1)`` matrix (``d`` = 2 or 3); also whether it was affine."""
  theta = jnp.asarray(theta)
  trailing = theta.shape[-2:]
  for ndim in _SPATIAL_NDIMS:
    if trailing == (ndim, ndim + 1):
      bottom = jnp.broadcast_to(
        jnp.asarray(np.eye(1, ndim + 1, ndim), theta.dtype), theta.shape[:-2] + (1, ndim + 1)
      )
      return jnp.concatenate([theta, bottom], axis=-2), True
    if trailing == (ndim + 1, ndim + 1):
      return theta, False
  raise ValueError(
    f"{name} must be an affine (..., 2, 3) or projective (..., 3, 3) theta (volumes: "
    f"(..., 3, 4) or (..., 4, 4)); got shape {theta.shape}. Convert attention parameters "
    "with attention_to_affine first."
  )


def compose(first: ArrayLike, second: ArrayLike) -> jax.Array:
  """The single transform equal to warping by ``first`` and then by ``second``.

  Grids pull: the output pixel at ``p`` reads the input at ``theta(p)``. Warping the result
  of ``first`` by ``second`` therefore reads the original at ``first(second(p))``, so the
  composition is the matrix product ``first @ second`` (in homogeneous form).

  Convention:
    ``sample(sample(U, grid(first)), grid(second)) == sample(U, grid(compose(first,
    second)))`` wherever both sides read inside the image (up to interpolation).

  Volumes: ``(..., 3, 4)`` affine and ``(..., 4, 4)`` projective; the shapes decide, and
  both must be of the same dimension.

  Args:
    first: ``(..., 2, 3)`` affine or ``(..., 3, 3)`` projective.
    second: likewise; leading dims broadcast.

  Returns:
    ``(..., 2, 3)`` if both are affine, else ``(..., 3, 3)`` (volumes: ``(..., 3, 4)``,
    ``(..., 4, 4)``).

  >>> shift = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], jnp.float32)
  >>> compose(shift, shift)
  Array([[1., 0., 1.],
         [0., 1., 0.]], dtype=float32)
  """
  a, a_affine = _to_matrix(first, "first")
  b, b_affine = _to_matrix(second, "second")
  if a.shape[-1] != b.shape[-1]:
    raise ValueError(
      f"first and second must both be 2-D or both be 3-D transforms; got shapes "
      f"{jnp.shape(first)} and {jnp.shape(second)}."
    )
  out = jnp.matmul(a, b, precision=dtypes.MATMUL_PRECISION)
  return out[..., :-1, :] if a_affine and b_affine else out


def invert(theta: ArrayLike) -> jax.Array:
  """The inverse of an affine ``(..., 2, 3)`` or projective ``(..., 3, 3)`` transform.

  Volumes' ``(..., 3, 4)`` and ``(..., 4, 4)`` work the same way (the shape decides).

  ``compose(theta, invert(theta))`` is the identity; a singular ``theta`` gives inf/NaN
  entries, as ``jnp.linalg.inv`` does.

  Convention:
    ``theta`` maps normalised output coordinates to input coordinates (pull), so warping by
    ``invert(theta)`` undoes a warp by ``theta`` where both read inside the image.

  Args:
    theta: ``(..., 2, 3)`` or ``(..., 3, 3)`` (volumes: ``(..., 3, 4)`` or ``(..., 4, 4)``).

  Returns:
    An array of the same shape.

  >>> invert(jnp.array([[2.0, 0.0, 1.0], [0.0, 4.0, 0.0]], jnp.float32))
  Array([[ 0.5 ,  0.  , -0.5 ],
         [ 0.  ,  0.25,  0.  ]], dtype=float32)
  """
  m, affine = _to_matrix(theta, "theta")
  if affine:
    d = m.shape[-1] - 1
    a_inv = jnp.linalg.inv(m[..., :d, :d])
    t = 0.0 - jnp.matmul(a_inv, m[..., :d, d:])  # 0.0 - x: no negative zeros
    return jnp.concatenate([a_inv, t], axis=-1)
  return jnp.linalg.inv(m)


def make_grid(
  theta: ArrayLike,
  shape: Sequence[int],
  transform: str = "affine",
  *,
  align_corners: bool = False,
  control_points: ArrayLike | None = None,
  smoothing: float = 0.0,
) -> jax.Array:
  r"""Builds the normalised sampling grid of a transform, like ``torch.nn.functional.affine_grid``.

  For every output pixel centre ``(x_t, y_t)`` (normalised), the grid holds the source
  point ``T_theta(x_t, y_t)`` that :func:`stn_jax.sample` reads.

  .. math::

    \begin{pmatrix} x_s \\ y_s \end{pmatrix} = \theta
    \begin{pmatrix} x_t \\ y_t \\ 1 \end{pmatrix} \quad \text{(affine)}

  Transforms and the trailing shape of ``theta``:

  * ``"affine"``: ``(2, 3)``, the formula above.
  * ``"attention"``: ``(3,)`` = ``(s, tx, ty)``, i.e. ``[[s, 0, tx], [0, s, ty]]``.
  * ``"projective"``: ``(3, 3)`` homography ``H``; ``x_s = (h11 x + h12 y + h13) / d``,
    ``y_s = (h21 x + h22 y + h23) / d`` with ``d = h31 x + h32 y + h33``. Where
    ``|d| <= eps`` (the float's machine epsilon) the point lies on the horizon line, which
    maps to infinity: its grid entry is NaN, :func:`stn_jax.sample` reads 0 there in every
    padding mode, and the gradient there is 0.
  * ``"tps"``: ``(K, 2)`` target positions of ``K`` control points (default: the 16 of
    :func:`default_control_points`). The thin plate spline
    ``f(p) = a_0 + a_x x + a_y y + sum_k w_k phi(|p - c_k|)``, ``phi(r) = r^2 log r^2``,
    maps each control point ``c_k`` to its target ``t_k`` exactly (``smoothing=0``);
    targets equal to the sources give the identity grid. The spline is solved once per
    (control points, shape, smoothing) in float64 NumPy and cached, so the grid is one
    matmul of the targets.

  Volumes: a ``shape`` of length 3, ``(Do, Ho, Wo)``, makes a volume grid
  ``(..., Do, Ho, Wo, 3)`` of source points ``(x, y, z)``. The transforms carry over with
  one more coordinate: ``"affine"`` ``(3, 4)`` (exactly
  ``torch.nn.functional.affine_grid(theta, (N, C, D, H, W))``), ``"attention"`` ``(4,)`` =
  ``(s, tx, ty, tz)``, ``"projective"`` ``(4, 4)`` on homogeneous ``(x, y, z, 1)`` with the
  same horizon rule, and ``"tps"`` ``(K, 3)`` with the 3-D biharmonic radial basis
  ``phi(r) = r`` (default: the 64 points of ``default_control_points(3)``).

  Convention:
    ``grid[..., i, j, :] = (x, y)``, x along the width, normalised so that ``[-1, 1]``
    spans the input; output pixel centres as in PyTorch's ``affine_grid`` for
    ``align_corners`` (False: -1 and 1 are the outer edges of the corner pixels; True:
    their centres). Volumes: ``grid[..., k, i, j, :] = (x, y, z)`` with x along ``W``, y
    along ``H`` and z along ``D`` (PyTorch's order).

  Args:
    theta: transformation parameters with any leading batch dims.
    shape: the output's ``(Ho, Wo)``, or ``(Do, Ho, Wo)`` for a volume.
    transform: ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    align_corners: PyTorch's meaning; use the same value in :func:`stn_jax.sample`.
    control_points: ``(K, 2)`` TPS sources ``(x, y)`` (volumes: ``(K, 3)``), concrete (not
      traced); ``K >= 3`` (volumes: ``K >= 4``), distinct and not all collinear (volumes:
      not all coplanar).
    smoothing: TPS regularisation weight ``lambda >= 0`` added to the kernel matrix's
      diagonal; 0 interpolates, larger values give a smoother, approximating warp.

  Returns:
    ``(..., Ho, Wo, 2)`` (or ``(..., Do, Ho, Wo, 3)``) grid in the promoted float dtype of
    ``theta`` (at least float32).

  >>> grid = make_grid(jnp.eye(2, 3, dtype=jnp.float32), (2, 3))
  >>> grid[..., 0]
  Array([[-0.6666667,  0.       ,  0.6666667],
         [-0.6666667,  0.       ,  0.6666667]], dtype=float32)
  >>> volume_grid = make_grid(jnp.eye(3, 4, dtype=jnp.float32), (2, 1, 1))
  >>> volume_grid[:, 0, 0]  # (x, y, z) of the two output voxels
  Array([[ 0. ,  0. , -0.5],
         [ 0. ,  0. ,  0.5]], dtype=float32)
  """
  _check_transform(transform)
  out_shape = _check_shape(shape, "shape")
  ndim = len(out_shape)
  if control_points is not None and transform != "tps":
    validation.check_control_points_rule(transform, control_points)
  theta = _as_theta(theta, transform, control_points, ndim=ndim)
  base = base_grid(out_shape, align_corners)

  if transform == "tps":
    smoothing = _check_smoothing(smoothing)
    sources = _static_control_points(control_points, ndim)
    weights = jnp.asarray(
      _tps_weights(sources.tobytes(), sources.shape, out_shape, align_corners, smoothing),
      theta.dtype,
    )

    def core(t: jax.Array) -> jax.Array:
      return jnp.matmul(weights, t, precision=dtypes.MATMUL_PRECISION).reshape(out_shape + (ndim,))
  else:
    points = jnp.asarray(base, theta.dtype)
    if transform == "attention":
      theta = attention_to_affine(theta)
    project = _projective_core if transform == "projective" else _affine_core
    core = functools.partial(project, points)

  return batching.vmap_leading(core, [theta], [2], ["theta"])


def _affine_core(points: jax.Array, theta: jax.Array) -> jax.Array:
  d = points.shape[-1]
  return (
    jnp.matmul(points, theta[:, :d].T, precision=dtypes.MATMUL_PRECISION) + theta[:, d][(None,) * d]
  )


def _projective_core(points: jax.Array, h: jax.Array) -> jax.Array:
  d = points.shape[-1]
  homogeneous = (
    jnp.matmul(points, h[:, :d].T, precision=dtypes.MATMUL_PRECISION) + h[:, d][(None,) * d]
  )
  num, den = homogeneous[..., :d], homogeneous[..., d:]
  finite = jnp.abs(den) > jnp.finfo(den.dtype).eps
  # Double where: the masked branch divides by 1, so its gradient stays finite.
  xy = num / jnp.where(finite, den, jnp.ones_like(den))
  return jnp.where(finite, xy, jnp.full_like(xy, jnp.nan))


def _check_transform(transform: str) -> None:
  validation.check_transform(transform)


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
  """``(H, W)`` for an image or ``(D, H, W)`` for a volume, as Python ints."""
  message = (
    f"{name} must be a pair of non-negative ints (H, W), or a triple (D, H, W) for a "
    f"volume; got {shape!r}."
  )
  try:
    sizes = tuple(int(_as_int(s)) for s in shape)
  except (TypeError, ValueError):
    raise ValueError(message) from None
  if len(sizes) not in _SPATIAL_NDIMS or any(n < 0 for n in sizes):
    raise ValueError(message)
  return sizes


def _as_int(s) -> int:
  """``int(s)`` for Python/NumPy integers and concrete integer arrays, else TypeError."""
  if isinstance(s, jax.core.Tracer):
    raise TypeError("traced size")
  arr = np.asarray(s)
  if arr.shape != () or not np.issubdtype(arr.dtype, np.integer):
    raise TypeError("not an integer")
  return int(arr)


def _check_smoothing(smoothing: float) -> float:
  if isinstance(smoothing, jax.core.Tracer):
    raise TypeError("smoothing must be a concrete Python number, not a traced value.")
  value = float(np.asarray(smoothing))
  if not (np.isfinite(value) and value >= 0):
    raise ValueError(f"smoothing must be a finite number >= 0; got {smoothing!r}.")
  return value


def _as_float_points(xy: ArrayLike, name: str, ndim: int = 2) -> jax.Array:
  xy = jnp.asarray(xy)
  xy = xy.astype(dtypes.float_dtype(xy.dtype, name=name))
  if xy.ndim < 1 or xy.shape[-1] != ndim:
    holding = "(x, y)" if ndim == 2 else "(x, y, z), for a shape (D, H, W)"
    raise ValueError(f"{name} must have shape (..., {ndim}) holding {holding}; got {xy.shape}.")
  return xy


def _trailing(transform: str, ndim: int, control_points: ArrayLike | None) -> tuple[int, ...]:
  if transform == "tps":
    return (_static_control_points(control_points, ndim).shape[0], ndim)
  return _THETA_TRAILING[ndim][transform]


def _as_theta(
  theta: ArrayLike, transform: str, control_points: ArrayLike | None = None, *, ndim: int = 2
) -> jax.Array:
  theta = jnp.asarray(theta)
  theta = theta.astype(dtypes.float_dtype(theta.dtype, name="theta"))
  trailing = _trailing(transform, ndim, control_points)
  if theta.ndim < len(trailing) or theta.shape[theta.ndim - len(trailing) :] != trailing:
    expected = "(..., " + ", ".join(str(n) for n in trailing) + ")"
    message = f"theta for transform={transform!r} must have shape {expected}; got {theta.shape}."
    other = 5 - ndim
    if theta.shape[theta.ndim - len(trailing) :] == _THETA_TRAILING[other].get(transform):
      kind = "a volume (D, H, W)" if other == 3 else "an image (H, W)"
      message += f" That is the {other}-D shape: pass the output shape of {kind}."
    raise ValueError(message)
  return theta


def spatial_ndim(theta: ArrayLike, transform: str, control_points: ArrayLike | None) -> int:
  """Whether ``theta`` of ``transform`` is for images (2) or volumes (3), from its shape.

  TPS with ``control_points`` takes their dimension; otherwise the trailing shape decides:
  ``(3, 4)``, ``(4,)``, ``(4, 4)``, ``(K, 3)`` are volumes, anything else is read as an
  image (and checked as one by :func:`make_grid`).
  """
  shape = np.shape(theta)
  if transform == "tps":
    if control_points is not None:
      return 3 if np.shape(control_points)[-1:] == (3,) else 2
    return 3 if shape[-1:] == (3,) else 2
  trailing = _THETA_TRAILING[3].get(transform)
  return 3 if trailing is not None and shape[len(shape) - len(trailing) :] == trailing else 2


def _static_control_points(control_points: ArrayLike | None, ndim: int = 2) -> np.ndarray:
  if control_points is None:
    return default_control_points(ndim)
  if isinstance(control_points, jax.core.Tracer):
    raise TypeError(
      "control_points must be concrete (a NumPy array or list), not traced: the TPS "
      "system is solved once per set of sources. Learn the targets (theta) instead."
    )
  points = np.asarray(control_points, dtype=np.float64)
  names = "(x, y)" if ndim == 2 else "(x, y, z) for a volume"
  if points.ndim != 2 or points.shape[1] != ndim:
    raise ValueError(f"control_points must have shape (K, {ndim}) of {names}; got {points.shape}.")
  if points.shape[0] < ndim + 1:
    raise ValueError(
      f"control_points needs K >= {ndim + 1} points for a {ndim}-D TPS; got K={points.shape[0]}."
    )
  if not np.all(np.isfinite(points)):
    raise ValueError("control_points must be finite; got NaN or inf entries.")
  dist = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
  np.fill_diagonal(dist, np.inf)
  scale = max(float(np.ptp(points, axis=0).max()), 1.0)
  if dist.min() <= 1e-9 * scale:
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    raise ValueError(
      f"control_points must be distinct; points {i} and {j} coincide at {points[i]}."
    )
  centred = points - points.mean(axis=0)
  if np.linalg.matrix_rank(centred, tol=1e-9 * scale) < ndim:
    if ndim == 2:
      raise ValueError(
        "control_points are all collinear, so the TPS's affine part is undetermined; "
        "use points that span the plane (e.g. the default 4x4 lattice)."
      )
    raise ValueError(
      "control_points are all coplanar, so the TPS's affine part is undetermined; "
      "use points that span the volume (e.g. the default 4x4x4 lattice)."
    )
  return points


def _tps_phi(r2: np.ndarray, ndim: int) -> np.ndarray:
  """The radial basis at squared distances: ``r^2 log r^2`` in 2-D, ``r`` in 3-D.

  Both are the fundamental solutions of the biharmonic equation in their dimension, so the
  spline minimises the bending energy there.
  """
  if ndim == 3:
    return np.sqrt(r2)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(r2 > 0, r2 * np.log(np.where(r2 > 0, r2, 1.0)), 0.0)


@functools.lru_cache(maxsize=64)
def _tps_weights(
  sources_bytes: bytes,
  sources_shape: tuple[int, int],
  shape: tuple[int, ...],
  align_corners: bool,
  smoothing: float,
) -> np.ndarray:
  """``(prod(shape), K)`` matrix ``M`` with ``grid = M @ targets`` (float64, cached)."""
  k, ndim = sources_shape
  sources = np.frombuffer(sources_bytes, dtype=np.float64).reshape(k, ndim)
  poly = np.concatenate([np.ones((k, 1)), sources], axis=1)
  r2 = np.sum((sources[:, None, :] - sources[None, :, :]) ** 2, axis=-1)
  m = k + ndim + 1
  system = np.zeros((m, m))
  system[:k, :k] = _tps_phi(r2, ndim) + smoothing * np.eye(k)
  system[:k, k:] = poly
  system[k:, :k] = poly.T
  # Columns of the inverse that multiply the targets (the rest multiply zeros).
  rhs = np.zeros((m, k))
  rhs[:k] = np.eye(k)
  coefficients = np.linalg.solve(system, rhs)  # (K + ndim + 1, K)
  points = base_grid(shape, align_corners).reshape(-1, ndim)
  r2_points = np.sum((points[:, None, :] - sources[None, :, :]) ** 2, axis=-1)
  basis = np.concatenate([_tps_phi(r2_points, ndim), np.ones((len(points), 1)), points], axis=1)
  weights = basis @ coefficients
  weights.setflags(write=False)
  return weights

"""Grid generators: transformation parameters ``theta`` to normalised sampling grids."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stn_jax._src import batching, dtypes

TRANSFORMS = ("affine", "attention", "projective", "tps")

# Trailing theta shape for each transform; "K" is the number of TPS control points.
_THETA_SHAPES = {"affine": "(..., 2, 3)", "attention": "(..., 3)", "projective": "(..., 3, 3)"}


def default_control_points() -> np.ndarray:
  """The 16 default TPS control points: a 4x4 lattice over ``[-1, 1]^2``, row-major.

  Convention:
    Normalised coordinates of the *output* grid (``[-1, 1]`` spans it), ``(x, y)`` per row,
    x along the width; row-major: ``np.stack(np.meshgrid(side, side), -1).reshape(16, 2)``.

  Returns:
    ``(16, 2)`` float64 array of ``(x, y)`` rows: x varies fastest.

  >>> default_control_points()[:5]
  array([[-1.        , -1.        ],
         [-0.33333333, -1.        ],
         [ 0.33333333, -1.        ],
         [ 1.        , -1.        ],
         [-1.        , -0.33333333]])
  """
  side = np.linspace(-1.0, 1.0, 4)
  return np.stack(np.meshgrid(side, side), -1).reshape(16, 2)


def unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
  """Normalised coordinate along one axis of length ``size`` to pixel units."""
  if align_corners:
    return (coord + 1) * ((size - 1) / 2)
  return ((coord + 1) * size - 1) / 2


def _pixel_centres(size: int, align_corners: bool) -> np.ndarray:
  # PyTorch's affine_grid: a single pixel sits at 0 whatever align_corners says.
  if size <= 1:
    return np.zeros((size,))
  if align_corners:
    return np.linspace(-1.0, 1.0, size)
  return (2.0 * np.arange(size) + 1.0) / size - 1.0


def base_grid(shape: tuple[int, int], align_corners: bool) -> np.ndarray:
  """Normalised ``(x, y)`` of every output pixel centre, ``(Ho, Wo, 2)`` float64."""
  ys = _pixel_centres(shape[0], align_corners)
  xs = _pixel_centres(shape[1], align_corners)
  gx, gy = np.meshgrid(xs, ys)
  return np.stack([gx, gy], axis=-1)


def normalized_to_pixel(
  xy: ArrayLike, shape: Sequence[int], *, align_corners: bool = False
) -> jax.Array:
  """Converts normalised ``(x, y)`` in ``[-1, 1]`` to pixel coordinates of an image.

  Convention:
    ``xy[..., 0]`` is x (along the width ``W``), ``xy[..., 1]`` is y (along ``H``).
    ``align_corners=False``: -1 and 1 are the outer edges of the corner pixels, so pixel
    ``m`` spans ``[m - 0.5, m + 0.5]``; ``True``: -1 and 1 are the corner pixels' centres.
    Pixel ``m`` has its centre at coordinate ``m`` (PyTorch's ``grid_sample``).

  Args:
    xy: ``(..., 2)`` normalised coordinates.
    shape: the image's ``(H, W)``.
    align_corners: PyTorch's meaning.

  Returns:
    ``(..., 2)`` pixel coordinates ``(column, row)``.

  >>> normalized_to_pixel(jnp.array([[-1.0, 1.0]], jnp.float32), (4, 8))
  Array([[-0.5,  3.5]], dtype=float32)
  """
  xy = _as_float_points(xy, "xy")
  h, w = _check_shape(shape, "shape")
  return jnp.stack(
    [unnormalize(xy[..., 0], w, align_corners), unnormalize(xy[..., 1], h, align_corners)],
    axis=-1,
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
    xy: ``(..., 2)`` pixel coordinates.
    shape: the image's ``(H, W)``.
    align_corners: PyTorch's meaning.

  Returns:
    ``(..., 2)`` normalised coordinates.

  >>> pixel_to_normalized(jnp.array([[-0.5, 3.5]], jnp.float32), (4, 8))
  Array([[-1.,  1.]], dtype=float32)
  """
  xy = _as_float_points(xy, "xy")
  h, w = _check_shape(shape, "shape")

  def norm(p: jax.Array, size: int) -> jax.Array:
    if align_corners:
      return p * (2 / (size - 1)) - 1 if size > 1 else jnp.zeros_like(p)
    return (2 * p + 1) / size - 1

  return jnp.stack([norm(xy[..., 0], w), norm(xy[..., 1], h)], axis=-1)


def identity_theta(
  transform: str = "affine", *, control_points: ArrayLike | None = None, dtype=jnp.float32
) -> jax.Array:
  """The ``theta`` for which :func:`make_grid` gives the identity grid.

  Use it as the bias of a localisation network's last layer (with a zero kernel), so that a
  spatial transformer starts as the identity.

  Convention:
    ``theta`` as :func:`make_grid` reads it: affine ``[[1, 0, 0], [0, 1, 0]]``, attention
    ``(s, tx, ty) = (1, 0, 0)``, projective the 3x3 identity, TPS targets equal to the
    sources.

  Args:
    transform: one of ``"affine"``, ``"attention"``, ``"projective"``, ``"tps"``.
    control_points: the TPS sources (default :func:`default_control_points`).
    dtype: dtype of the result.

  Returns:
    ``(2, 3)``, ``(3,)``, ``(3, 3)`` or ``(K, 2)``.

  >>> identity_theta("attention")
  Array([1., 0., 0.], dtype=float32)
  """
  _check_transform(transform)
  if transform == "affine":
    theta = np.eye(2, 3)
  elif transform == "attention":
    theta = np.array([1.0, 0.0, 0.0])
  elif transform == "projective":
    theta = np.eye(3)
  else:
    theta = _static_control_points(control_points)
  return jnp.asarray(theta, dtype=dtype)


def attention_to_affine(theta: ArrayLike) -> jax.Array:
  """Expands attention parameters ``(s, tx, ty)`` to ``[[s, 0, tx], [0, s, ty]]``.

  Convention:
    Pull map in normalised coordinates: output point ``(x, y)`` reads the input at
    ``(s x + tx, s y + ty)``, so ``s < 1`` zooms in and ``tx > 0`` looks to the right.

  Args:
    theta: ``(..., 3)``.

  Returns:
    ``(..., 2, 3)`` affine parameters.

  >>> attention_to_affine(jnp.array([0.5, 0.1, -0.2], jnp.float32))
  Array([[ 0.5,  0. ,  0.1],
         [ 0. ,  0.5, -0.2]], dtype=float32)
  """
  theta = _as_theta(theta, "attention")
  s, tx, ty = theta[..., 0], theta[..., 1], theta[..., 2]
  zero = jnp.zeros_like(s)
  return jnp.stack([jnp.stack([s, zero, tx], -1), jnp.stack([zero, s, ty], -1)], -2)


def _to_matrix(theta: ArrayLike, name: str) -> tuple[jax.Array, bool]:
  """``(..., 2, 3)`` or ``(..., 3, 3)`` to ``(..., 3, 3)``; also whether it was affine."""
  theta = jnp.asarray(theta)
  if theta.shape[-2:] == (2, 3):
    bottom = jnp.broadcast_to(jnp.array([0, 0, 1], theta.dtype), theta.shape[:-2] + (1, 3))
    return jnp.concatenate([theta, bottom], axis=-2), True
  if theta.shape[-2:] == (3, 3):
    return theta, False
  raise ValueError(
    f"{name} must be an affine (..., 2, 3) or projective (..., 3, 3) theta; got shape "
    f"{theta.shape}. Convert attention parameters with attention_to_affine first."
  )


def compose(first: ArrayLike, second: ArrayLike) -> jax.Array:
  """The single transform equal to warping by ``first`` and then by ``second``.

  Grids pull: the output pixel at ``p`` reads the input at ``theta(p)``. Warping the result
  of ``first`` by ``second`` therefore reads the original at ``first(second(p))``, so the
  composition is the matrix product ``first @ second`` (in homogeneous form).

  Convention:
    ``sample(sample(U, grid(first)), grid(second)) == sample(U, grid(compose(first,
    second)))`` wherever both sides read inside the image (up to interpolation).

  Args:
    first: ``(..., 2, 3)`` affine or ``(..., 3, 3)`` projective.
    second: likewise; leading dims broadcast.

  Returns:
    ``(..., 2, 3)`` if both are affine, else ``(..., 3, 3)``.

  >>> shift = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], jnp.float32)
  >>> compose(shift, shift)
  Array([[1., 0., 1.],
         [0., 1., 0.]], dtype=float32)
  """
  a, a_affine = _to_matrix(first, "first")
  b, b_affine = _to_matrix(second, "second")
  out = jnp.matmul(a, b)
  return out[..., :2, :] if a_affine and b_affine else out


def invert(theta: ArrayLike) -> jax.Array:
  """The inverse of an affine ``(..., 2, 3)`` or projective ``(..., 3, 3)`` transform.

  ``compose(theta, invert(theta))`` is the identity; a singular ``theta`` gives inf/NaN
  entries, as ``jnp.linalg.inv`` does.

  Convention:
    ``theta`` maps normalised output coordinates to input coordinates (pull), so warping by
    ``invert(theta)`` undoes a warp by ``theta`` where both read inside the image.

  Args:
    theta: ``(..., 2, 3)`` or ``(..., 3, 3)``.

  Returns:
    An array of the same shape.

  >>> invert(jnp.array([[2.0, 0.0, 1.0], [0.0, 4.0, 0.0]], jnp.float32))
  Array([[ 0.5 ,  0.  , -0.5 ],
         [ 0.  ,  0.25,  0.  ]], dtype=float32)
  """
  m, affine = _to_matrix(theta, "theta")
  if affine:
    a_inv = jnp.linalg.inv(m[..., :2, :2])
    t = 0.0 - jnp.matmul(a_inv, m[..., :2, 2:])  # 0.0 - x: no negative zeros
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

  Convention:
    ``grid[..., i, j, :] = (x, y)``, x along the width, normalised so that ``[-1, 1]``
    spans the input; output pixel centres as in PyTorch's ``affine_grid`` for
    ``align_corners`` (False: -1 and 1 are the outer edges of the corner pixels; True:
    their centres).

  Args:
    theta: transformation parameters with any leading batch dims.
    shape: the output's ``(Ho, Wo)``.
    transform: ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    align_corners: PyTorch's meaning; use the same value in :func:`stn_jax.sample`.
    control_points: ``(K, 2)`` TPS sources ``(x, y)``, concrete (not traced); ``K >= 3``,
      distinct and not all collinear.
    smoothing: TPS regularisation weight ``lambda >= 0`` added to the kernel matrix's
      diagonal; 0 interpolates, larger values give a smoother, approximating warp.

  Returns:
    ``(..., Ho, Wo, 2)`` grid in the promoted float dtype of ``theta`` (at least float32).

  >>> grid = make_grid(jnp.eye(2, 3, dtype=jnp.float32), (2, 3))
  >>> grid[..., 0]
  Array([[-0.6666667,  0.       ,  0.6666667],
         [-0.6666667,  0.       ,  0.6666667]], dtype=float32)
  """
  _check_transform(transform)
  out_shape = _check_shape(shape, "shape")
  if control_points is not None and transform != "tps":
    raise ValueError(f"control_points only applies to transform='tps'; got {transform!r}.")
  theta = _as_theta(theta, transform, control_points)
  base = base_grid(out_shape, align_corners)

  if transform == "tps":
    smoothing = _check_smoothing(smoothing)
    sources = _static_control_points(control_points)
    weights = jnp.asarray(
      _tps_weights(sources.tobytes(), sources.shape[0], out_shape, align_corners, smoothing),
      theta.dtype,
    )

    def core(t: jax.Array) -> jax.Array:
      return jnp.matmul(weights, t).reshape(out_shape + (2,))
  else:
    points = jnp.asarray(base, theta.dtype)
    if transform == "attention":
      theta = attention_to_affine(theta)
    project = _projective_core if transform == "projective" else _affine_core
    core = functools.partial(project, points)

  return batching.vmap_leading(core, [theta], [2], ["theta"])


def _affine_core(points: jax.Array, theta: jax.Array) -> jax.Array:
  return jnp.matmul(points, theta[:, :2].T) + theta[:, 2][None, None, :]


def _projective_core(points: jax.Array, h: jax.Array) -> jax.Array:
  homogeneous = jnp.matmul(points, h[:, :2].T) + h[:, 2][None, None, :]
  num, den = homogeneous[..., :2], homogeneous[..., 2:]
  finite = jnp.abs(den) > jnp.finfo(den.dtype).eps
  # Double where: the masked branch divides by 1, so its gradient stays finite.
  xy = num / jnp.where(finite, den, jnp.ones_like(den))
  return jnp.where(finite, xy, jnp.full_like(xy, jnp.nan))


def _check_transform(transform: str) -> None:
  if transform not in TRANSFORMS:
    raise ValueError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}.")


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, int]:
  try:
    h, w = (int(_as_int(s)) for s in shape)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair of non-negative ints (H, W); got {shape!r}.") from None
  if h < 0 or w < 0:
    raise ValueError(f"{name} must be a pair of non-negative ints (H, W); got {shape!r}.")
  return h, w


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


def _as_float_points(xy: ArrayLike, name: str) -> jax.Array:
  xy = jnp.asarray(xy)
  xy = xy.astype(dtypes.float_dtype(xy.dtype, name=name))
  if xy.ndim < 1 or xy.shape[-1] != 2:
    raise ValueError(f"{name} must have shape (..., 2) holding (x, y); got {xy.shape}.")
  return xy


def _as_theta(
  theta: ArrayLike, transform: str, control_points: ArrayLike | None = None
) -> jax.Array:
  theta = jnp.asarray(theta)
  theta = theta.astype(dtypes.float_dtype(theta.dtype, name="theta"))
  if transform == "tps":
    k = _static_control_points(control_points).shape[0]
    expected, ok = f"(..., {k}, 2)", theta.shape[-2:] == (k, 2)
  else:
    expected = _THETA_SHAPES[transform]
    trailing = {"affine": (2, 3), "attention": (3,), "projective": (3, 3)}[transform]
    ok = theta.shape[theta.ndim - len(trailing) :] == trailing and theta.ndim >= len(trailing)
  if not ok:
    raise ValueError(
      f"theta for transform={transform!r} must have shape {expected}; got {theta.shape}."
    )
  return theta


def _static_control_points(control_points: ArrayLike | None) -> np.ndarray:
  if control_points is None:
    return default_control_points()
  if isinstance(control_points, jax.core.Tracer):
    raise TypeError(
      "control_points must be concrete (a NumPy array or list), not traced: the TPS "
      "system is solved once per set of sources. Learn the targets (theta) instead."
    )
  points = np.asarray(control_points, dtype=np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"control_points must have shape (K, 2) of (x, y); got {points.shape}.")
  if points.shape[0] < 3:
    raise ValueError(f"control_points needs K >= 3 points for a TPS; got K={points.shape[0]}.")
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
  if np.linalg.matrix_rank(centred, tol=1e-9 * scale) < 2:
    raise ValueError(
      "control_points are all collinear, so the TPS's affine part is undetermined; "
      "use points that span the plane (e.g. the default 4x4 lattice)."
    )
  return points


def _tps_phi(r2: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(r2 > 0, r2 * np.log(np.where(r2 > 0, r2, 1.0)), 0.0)


@functools.lru_cache(maxsize=64)
def _tps_weights(
  sources_bytes: bytes, k: int, shape: tuple[int, int], align_corners: bool, smoothing: float
) -> np.ndarray:
  """``(Ho * Wo, K)`` matrix ``M`` with ``grid = M @ targets`` (float64, cached)."""
  sources = np.frombuffer(sources_bytes, dtype=np.float64).reshape(k, 2)
  poly = np.concatenate([np.ones((k, 1)), sources], axis=1)
  r2 = np.sum((sources[:, None, :] - sources[None, :, :]) ** 2, axis=-1)
  system = np.zeros((k + 3, k + 3))
  system[:k, :k] = _tps_phi(r2) + smoothing * np.eye(k)
  system[:k, k:] = poly
  system[k:, :k] = poly.T
  # Columns of the inverse that multiply the targets (the rest multiply zeros).
  rhs = np.zeros((k + 3, k))
  rhs[:k] = np.eye(k)
  coefficients = np.linalg.solve(system, rhs)  # (K + 3, K)
  points = base_grid(shape, align_corners).reshape(-1, 2)
  r2_points = np.sum((points[:, None, :] - sources[None, :, :]) ** 2, axis=-1)
  basis = np.concatenate([_tps_phi(r2_points), np.ones((len(points), 1)), points], axis=1)
  weights = basis @ coefficients
  weights.setflags(write=False)
  return weights

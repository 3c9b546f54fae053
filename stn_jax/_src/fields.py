"""Dense deformation fields: displacements, velocities, composition, inverses, Jacobians."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stn_jax._src import dtypes, sampling
from stn_jax._src import kernels as kernels_lib

# Component k of a field, (x, y[, z])[k], runs along array axis d - 1 - k of the spatial
# shape S: x along the last (width) axis, as in the grids of make_grid.


def _as_field(disp: ArrayLike, name: str) -> jax.Array:
  """``disp`` as a float array of shape ``(..., *S, d)`` with ``d = len(S)`` in (2, 3)."""
  disp = jnp.asarray(disp)
  disp = disp.astype(dtypes.float_dtype(disp.dtype, name=name))
  d = disp.shape[-1] if disp.ndim else 0
  if d not in (2, 3) or disp.ndim < d + 1:
    raise ValueError(
      f"{name} must have shape (..., *S, d) with d = len(S) in (2, 3), channels-last "
      f"holding (x, y[, z]) in pixels, e.g. (N, H, W, 2) or (N, D, H, W, 3); got "
      f"{disp.shape}. Move a channels-first field's channel axis last (or use from_monai)."
    )
  return disp


def _spatial_shape(field: jax.Array) -> tuple[int, ...]:
  d = field.shape[-1]
  return tuple(field.shape[-d - 1 : -1])


def _pixel_scale(size: int, align_corners: bool) -> float:
  """Normalised units per pixel along an axis of ``size`` (PyTorch's conventions)."""
  if align_corners:
    return 2.0 / (size - 1) if size > 1 else 0.0
  return 2.0 / size


def _centres(size: int, align_corners: bool) -> np.ndarray:
  """Normalised coordinates of the pixel centres ``0 .. size - 1`` (float64)."""
  if size <= 1:
    return np.zeros((size,))  # PyTorch: a single pixel sits at 0 whatever align_corners says
  offset = 1.0 if align_corners else 1.0 - 1.0 / size
  return np.arange(size) * _pixel_scale(size, align_corners) - offset


def _identity(shape: Sequence[int], align_corners: bool | None) -> np.ndarray:
  """``(*S, d)`` float64 coordinates ``(x, y[, z])`` of every pixel centre: in pixels
  (``align_corners=None``) or normalised."""
  d = len(shape)
  axes = [
    np.arange(s, dtype=np.float64) if align_corners is None else _centres(s, align_corners)
    for s in shape
  ]
  mesh = np.meshgrid(*axes, indexing="ij")
  return np.stack(mesh[::-1], axis=-1).reshape(tuple(shape) + (d,))


def _lift(x: ArrayLike, like: jax.Array) -> jax.Array:
  """``x`` as an array of ``like``'s dtype and rank (leading 1s): explicit broadcasting."""
  x = jnp.asarray(x, like.dtype)
  return x.reshape((1,) * (like.ndim - x.ndim) + x.shape)


def _scales(shape: Sequence[int], align_corners: bool) -> np.ndarray:
  """``(d,)`` normalised units per pixel for components ``(x, y[, z])``."""
  return np.array([_pixel_scale(s, align_corners) for s in shape[::-1]])


def displacement_to_grid(disp: ArrayLike, *, align_corners: bool = False) -> jax.Array:
  r"""Turns a displacement field in pixels into the normalised grid that ``sample`` reads.

  .. math::

    \mathrm{grid}(p) = \mathrm{normalise}(p + \mathrm{disp}(p))

  Convention:
    ``disp`` is channels-last ``(..., *S, d)`` with ``d = len(S)``: ``(..., H, W, 2)`` or
    ``(..., D, H, W, 3)``; ``disp[..., 0]`` is x (along ``W``), then y (along ``H``), then z
    (along ``D``), in pixels. Pull: output pixel ``p`` reads the input at ``p + disp(p)``,
    so ``disp = 0`` is the identity grid of :func:`stn_jax.make_grid`. Pixel ``m``'s centre
    is at pixel coordinate ``m`` whatever ``align_corners`` says; ``align_corners`` only
    fixes the normalisation (one pixel is ``2 / size`` normalised units with False,
    ``2 / (size - 1)`` with True), so use the same value here and in ``sample``.

  Args:
    disp: ``(..., *S, d)`` displacement in pixels.
    align_corners: PyTorch's meaning.

  Returns:
    ``(..., *S, d)`` normalised grid, in ``disp``'s float dtype (at least float32).

  >>> displacement_to_grid(jnp.zeros((1, 4, 2), jnp.float32))[0]
  Array([[-0.75,  0.  ],
         [-0.25,  0.  ],
         [ 0.25,  0.  ],
         [ 0.75,  0.  ]], dtype=float32)
  """
  disp = _as_field(disp, "disp")
  shape = _spatial_shape(disp)
  base = _lift(_identity(shape, align_corners), disp)
  return base + disp * _lift(_scales(shape, align_corners), disp)


def grid_to_displacement(grid: ArrayLike, *, align_corners: bool = False) -> jax.Array:
  """The displacement in pixels of a normalised sampling grid; inverts :func:`displacement_to_grid`.

  Use it to turn a :func:`stn_jax.make_grid` grid into a field. Along an axis of size 1
  with ``align_corners=True`` every normalised coordinate means pixel 0 (PyTorch's rule), so
  the displacement there is 0.

  Convention:
    As in :func:`displacement_to_grid`: ``grid`` is ``(..., *S, d)`` holding ``(x, y[, z])``
    normalised so that ``[-1, 1]`` spans the image.

  Args:
    grid: ``(..., *S, d)`` normalised grid.
    align_corners: PyTorch's meaning.

  Returns:
    ``(..., *S, d)`` displacement in pixels.

  >>> grid = jnp.array([[[-0.25, 0.0], [0.75, 0.0]]], jnp.float32)  # x moved by 1/4 pixel
  >>> grid_to_displacement(grid)
  Array([[[0.25, 0.  ],
          [0.25, 0.  ]]], dtype=float32)
  """
  grid = _as_field(grid, "grid")
  shape = _spatial_shape(grid)
  base = _identity(shape, align_corners)
  scale = _scales(shape, align_corners)
  inverse = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0)
  return (grid - _lift(base, grid)) * _lift(inverse, grid)


def warp(
  U: ArrayLike,
  disp: ArrayLike,
  kernel: "str | kernels_lib.Kernel" = "bilinear",
  *,
  padding_mode: str = "border",
  align_corners: bool = False,
  antialias: bool = False,
) -> jax.Array:
  """Warps ``U`` by a displacement field: ``sample(U, displacement_to_grid(disp), ...)``.

  The same maths, computed without the round trip through normalised coordinates: the
  sampler reads ``p + disp(p)`` in pixels as it is, so an integer displacement moves whole
  pixels bit for bit (through ``displacement_to_grid`` and back a coordinate can be off by
  a few ulps of the image size, which leaks a trace of the neighbours in), and the result
  equals ``sample(U, displacement_to_grid(disp), ...)`` to float round-off. It does not
  depend on ``align_corners`` except under ``padding_mode="reflection"`` (which reflects
  about the centres or the edges of the border pixels): pixel ``m`` sits at pixel
  coordinate ``m`` in both. With ``antialias=True`` it reads the normalised grid.

  Convention:
    ``U`` is channels-last ``(..., *S, C)`` with the same spatial shape ``S`` as ``disp``
    ``(..., *S, d)``; ``V(p) = U(p + disp(p))`` (pull), components ``(x, y[, z])`` in pixels
    as in :func:`displacement_to_grid`. Leading dims of ``U`` and ``disp`` broadcast.

  Args:
    U: ``(..., *S, C)`` image or feature map.
    disp: ``(..., *S, d)`` displacement in pixels.
    kernel: as in :func:`stn_jax.sample`.
    padding_mode: as in :func:`stn_jax.sample`; default ``"border"``, the registration
      habit (MONAI's ``Warp``), so that pixels pulled from just outside repeat the edge.
    align_corners: PyTorch's meaning.
    antialias: as in :func:`stn_jax.sample`: where the field compresses the image (the
      pulled points of neighbouring pixels more than one pixel apart) read it low-pass
      filtered to that footprint; elsewhere the result equals ``antialias=False``'s.

  Returns:
    ``(..., *S, C)``, ``U``'s dtype.

  >>> U = jnp.arange(4.0, dtype=jnp.float32).reshape(1, 4, 1)
  >>> shift = jnp.zeros((1, 4, 2), jnp.float32).at[..., 0].set(1.0)  # one pixel along x
  >>> warp(U, shift)[0, :, 0]
  Array([1., 2., 3., 3.], dtype=float32)
  """
  U = jnp.asarray(U)
  disp = _as_field(disp, "disp")
  shape = _spatial_shape(disp)
  d = len(shape)
  if U.ndim < d + 1 or tuple(U.shape[-d - 1 : -1]) != shape:
    raise ValueError(
      f"U must be channels-last (..., *S, C) with the field's spatial shape S = {shape}; "
      f"got U {U.shape} and disp {disp.shape}. Resize the field with resize_displacement "
      "(which rescales its pixel values) or the image first."
    )
  if antialias:
    grid = displacement_to_grid(disp, align_corners=align_corners)
    return sampling.sample(
      U, grid, kernel, padding_mode=padding_mode, align_corners=align_corners, antialias=True
    )
  points = _lift(_identity(shape, None), disp) + disp  # p + disp(p), in pixels
  return sampling.sample_with_options(
    U, points, kernel, padding_mode=padding_mode, align_corners=align_corners, pixels=True
  )


def compose(a: ArrayLike, b: ArrayLike, *, align_corners: bool = False) -> jax.Array:
  r"""The displacement that does ``a`` then ``b``.

  .. math::

    c(p) = b(p) + a(p + b(p))

  with ``a`` interpolated bilinearly (border padding), so ``warp(U, compose(a, b))`` equals
  ``warp(warp(U, a), b)`` up to interpolation. Affine fields compose exactly wherever
  ``p + b(p)`` stays inside the image (bilinear interpolation reproduces affine functions).

  Convention:
    Both are ``(..., *S, d)`` pull displacements in pixels (see
    :func:`displacement_to_grid`); leading dims broadcast.

  Args:
    a: the first field.
    b: the second field.
    align_corners: PyTorch's meaning (changes only float rounding, see :func:`warp`).

  Returns:
    ``(..., *S, d)``.

  >>> a = jnp.full((3, 3, 2), 0.5, jnp.float32)
  >>> compose(a, a)[1, 1]
  Array([1., 1.], dtype=float32)
  """
  a = _as_field(a, "a")
  b = _as_field(b, "b")
  if a.shape[-1] != b.shape[-1] or _spatial_shape(a) != _spatial_shape(b):
    raise ValueError(
      f"a and b must have the same spatial shape and components (..., *S, d); got a "
      f"{a.shape} and b {b.shape}."
    )
  a_at_b = warp(a, b, "bilinear", padding_mode="border", align_corners=align_corners)
  return _lift(b, a_at_b) + a_at_b


def _check_count(value: int, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
    raise ValueError(f"{name} must be a non-negative Python int; got {value!r}.")
  return int(value)


def integrate(
  velocity: ArrayLike,
  steps: int = 7,
  *,
  padding_mode: str = "border",
  align_corners: bool = False,
) -> jax.Array:
  r"""Scaling and squaring: the displacement of ``exp(velocity)`` for a stationary velocity.

  .. math::

    u_0 = v / 2^N, \qquad u_{k+1} = u_k \circ u_k = u_k + u_k(p + u_k(p)), \qquad
    \exp(v) \approx \mathrm{id} + u_N

  For smooth enough ``v`` (``|grad v| / 2^N`` well below 1) the result is a diffeomorphism.
  A constant velocity integrates to itself exactly; a linear one ``v(p) = L p`` to
  ``((I + L / 2^N)^{2^N} - I) p`` inside the image, which is ``(expm(L) - I) p`` up to
  ``O(|L|^2 / 2^N)``.

  Convention:
    ``velocity`` is ``(..., *S, d)`` in pixels per unit time, as displacements are (see
    :func:`displacement_to_grid`); the result is a pull displacement in pixels.

  Args:
    velocity: ``(..., *S, d)`` stationary velocity field.
    steps: ``N``, the number of squarings (VoxelMorph's and MONAI's default 7); 0 returns
      ``velocity`` itself.
    padding_mode: how ``u_k`` is read outside the image: ``"border"`` (default, as
      :func:`compose`) or MONAI ``DVF2DDF``'s default ``"zeros"``.
    align_corners: PyTorch's meaning (float rounding only, see :func:`warp`).

  Returns:
    ``(..., *S, d)`` displacement in pixels.

  >>> v = jnp.full((4, 4, 2), 0.25, jnp.float32)
  >>> integrate(v)[0, 0]
  Array([0.25, 0.25], dtype=float32)
  """
  velocity = _as_field(velocity, "velocity")
  steps = _check_count(steps, "steps")

  def square(_, u):
    return u + warp(u, u, "bilinear", padding_mode=padding_mode, align_corners=align_corners)

  # A loop, not 7 unrolled copies: one body to compile (3-D gathers compile slowly).
  return jax.lax.fori_loop(0, steps, square, velocity * (0.5**steps))


def invert(
  disp: ArrayLike, *, iterations: int = 40, relaxation: float = 0.5, align_corners: bool = False
) -> jax.Array:
  r"""An approximate inverse of a displacement field by damped fixed-point iteration.

  .. math::

    w_0 = -u, \qquad w_{n+1} = w_n - \alpha \left(w_n + u(p + w_n(p))\right)

  The fixed point solves ``compose(disp, w) = 0``; then ``compose(w, disp)`` is near 0 too,
  up to the bilinear interpolation error of ``w`` (second order in the pixel spacing, so
  largest where the field changes fast).

  Accuracy and failure: near the solution the error is multiplied per step by
  ``(1 - alpha) I - alpha grad u``. With ``alpha = relaxation = 0.5`` that contracts for
  every real eigenvalue ``lambda`` of ``grad u`` in ``(-1, 3)``, i.e. wherever the map
  neither folds (``lambda <= -1``, :func:`jacobian_determinant` ``<= 0``) nor stretches by
  4x or more, at rate ``max |1 - lambda| / 2``; ``alpha = 1`` is the plain iteration
  ``w = -u(p + w)``, faster for small fields but divergent (it oscillates) as soon as
  ``|lambda| >= 1``, which bilinear fields reach between pixels well before the central
  differences of :func:`jacobian_determinant` show it. Where the field folds no inverse
  exists and the result is meaningless there: check :func:`folding_fraction` first, or for
  a velocity ``v`` use ``integrate(-v)``, the inverse of ``integrate(v)`` by construction.
  Points whose inverse lies outside the image read the border of ``u``.

  Convention:
    ``disp`` and the result are ``(..., *S, d)`` pull displacements in pixels (see
    :func:`displacement_to_grid`).

  Args:
    disp: ``(..., *S, d)``.
    iterations: number of steps.
    relaxation: ``alpha`` in ``(0, 1]``.
    align_corners: PyTorch's meaning (float rounding only).

  Returns:
    ``(..., *S, d)``.

  >>> u = jnp.full((4, 4, 2), 0.5, jnp.float32)
  >>> invert(u)[1, 1]
  Array([-0.5, -0.5], dtype=float32)
  """
  u = _as_field(disp, "disp")
  iterations = _check_count(iterations, "iterations")
  if isinstance(relaxation, jax.core.Tracer) or not 0 < float(relaxation) <= 1:
    raise ValueError(f"relaxation must be a number in (0, 1]; got {relaxation!r}.")
  alpha = float(relaxation)

  def body(_, w):
    residual = w + warp(u, w, "bilinear", padding_mode="border", align_corners=align_corners)
    return w - alpha * residual

  return jax.lax.fori_loop(0, iterations, body, -u)


def _axis_gradient(f: jax.Array, axis: int) -> jax.Array:
  """``numpy.gradient`` along ``axis`` with unit spacing (edge order 1), size >= 2."""
  n = f.shape[axis]
  take = lambda start, stop: jax.lax.slice_in_dim(f, start, stop, axis=axis)  # noqa: E731
  first = take(1, 2) - take(0, 1)
  last = take(n - 1, n) - take(n - 2, n - 1)
  if n == 2:
    return jnp.concatenate([first, last], axis=axis)
  inner = (take(2, n) - take(0, n - 2)) * 0.5
  return jnp.concatenate([first, inner, last], axis=axis)


def _check_sizes(shape: tuple[int, ...], name: str) -> None:
  if min(shape) < 2:
    raise ValueError(
      f"{name} needs at least 2 pixels along every spatial axis to take differences; got "
      f"spatial shape {shape}."
    )


def _spatial_gradient(field: jax.Array, d: int) -> jax.Array:
  """``(..., *S, c, d)``: ``d/dx_l`` of channel ``k`` at ``[..., k, l]``, ``(x, y[, z])``
  order, with ``field`` ``(..., *S, c)``."""
  # Component l = x, y, z differentiates along array axis d - 1 - l of S.
  parts = [_axis_gradient(field, field.ndim - 2 - l) for l in range(d)]
  return jnp.stack(parts, axis=-1)


def jacobian_determinant(disp: ArrayLike) -> jax.Array:
  r"""``det(I + grad disp)`` at every pixel: the local volume change of ``p -> p + disp(p)``.

  Derivatives are ``numpy.gradient``'s: central differences inside, one-sided at the edges,
  unit pixel spacing; exact for affine fields, where the result is ``det(A)`` everywhere.
  A determinant ``<= 0`` marks folding (the map is not invertible there).

  .. math::

    J(p) = \det\left(I + \frac{\partial u}{\partial (x, y[, z])}(p)\right)

  Convention:
    ``disp`` is ``(..., *S, d)`` in pixels, components ``(x, y[, z])`` (see
    :func:`displacement_to_grid`); the Jacobian is taken in the same ``(x, y[, z])`` frame,
    so a reflection has a negative determinant whatever the axis order.

  Args:
    disp: ``(..., *S, d)``, at least 2 pixels along every spatial axis.

  Returns:
    ``(..., *S)``.

  >>> ramp = 0.5 * jnp.arange(4, dtype=jnp.float32)
  >>> stretch = jnp.zeros((3, 4, 2), jnp.float32).at[..., 0].set(ramp)
  >>> jacobian_determinant(stretch)[1]
  Array([1.5, 1.5, 1.5, 1.5], dtype=float32)
  """
  disp = _as_field(disp, "disp")
  shape = _spatial_shape(disp)
  d = len(shape)
  _check_sizes(shape, "jacobian_determinant")
  grad = _spatial_gradient(disp, d)
  J = grad + _lift(np.eye(d), grad)
  if d == 2:
    return J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]
  return (
    J[..., 0, 0] * (J[..., 1, 1] * J[..., 2, 2] - J[..., 1, 2] * J[..., 2, 1])
    - J[..., 0, 1] * (J[..., 1, 0] * J[..., 2, 2] - J[..., 1, 2] * J[..., 2, 0])
    + J[..., 0, 2] * (J[..., 1, 0] * J[..., 2, 1] - J[..., 1, 1] * J[..., 2, 0])
  )


def folding_fraction(disp: ArrayLike) -> jax.Array:
  """The share of pixels whose :func:`jacobian_determinant` is ``<= 0`` (folding).

  Convention:
    As in :func:`jacobian_determinant`.

  Args:
    disp: ``(..., *S, d)``.

  Returns:
    ``(...)`` fraction in ``[0, 1]`` (no gradient: it counts).

  >>> folding_fraction(jnp.zeros((2, 5, 5, 2), jnp.float32))
  Array([0., 0.], dtype=float32)
  """
  det = jacobian_determinant(disp)
  d = jnp.asarray(disp).shape[-1]
  axes = tuple(range(det.ndim - d, det.ndim))
  return jnp.mean((det <= 0).astype(det.dtype), axis=axes)


def diffusion(disp: ArrayLike) -> jax.Array:
  r"""The diffusion regulariser: the mean over pixels of ``|grad disp|^2``.

  .. math::

    R(u) = \frac{1}{|S|} \sum_p \sum_{k, l} \left(\frac{\partial u_k}{\partial x_l}(p)\right)^2

  Derivatives as in :func:`jacobian_determinant` (``numpy.gradient``), so an affine field
  ``u(p) = M p + t`` gives exactly ``sum(M**2)``.

  Convention:
    ``disp`` is ``(..., *S, d)`` in pixels; the result is in pixels^2 per pixel^2.

  Args:
    disp: ``(..., *S, d)``, at least 2 pixels along every spatial axis.

  Returns:
    ``(...)``.

  >>> ramp = 0.1 * jnp.arange(4, dtype=jnp.float32)
  >>> diffusion(jnp.zeros((1, 4, 4, 2), jnp.float32).at[..., 0].set(ramp))
  Array([0.01], dtype=float32)
  """
  disp = _as_field(disp, "disp")
  shape = _spatial_shape(disp)
  d = len(shape)
  _check_sizes(shape, "diffusion")
  g = _spatial_gradient(disp, d)
  return jnp.mean(jnp.sum(g**2, axis=(-2, -1)), axis=tuple(range(g.ndim - 2 - d, g.ndim - 2)))


def bending_energy(disp: ArrayLike) -> jax.Array:
  r"""The bending energy: the mean over pixels of the squared second derivatives.

  .. math::

    R(u) = \frac{1}{|S|} \sum_p \sum_k \sum_{l, m}
      \left(\frac{\partial^2 u_k}{\partial x_l \partial x_m}(p)\right)^2

  (mixed derivatives count twice, as ``l, m`` and ``m, l``). Second derivatives are
  ``numpy.gradient`` applied twice, so every affine field has energy exactly 0 and the
  energy penalises curvature only, not stretching.

  Convention:
    ``disp`` is ``(..., *S, d)`` in pixels (see :func:`displacement_to_grid`).

  Args:
    disp: ``(..., *S, d)``, at least 2 pixels along every spatial axis.

  Returns:
    ``(...)``.

  >>> x = jnp.arange(5, dtype=jnp.float32)
  >>> bending_energy(jnp.zeros((5, 5, 2), jnp.float32).at[..., 0].set(3.0 + 2.0 * x))
  Array(0., dtype=float32)
  """
  disp = _as_field(disp, "disp")
  shape = _spatial_shape(disp)
  d = len(shape)
  _check_sizes(shape, "bending_energy")
  g = _spatial_gradient(disp, d)  # (..., *S, d, d)
  flat = g.reshape(g.shape[:-2] + (d * d,))
  h = _spatial_gradient(flat, d)  # (..., *S, d * d, d)
  return jnp.mean(jnp.sum(h**2, axis=(-2, -1)), axis=tuple(range(h.ndim - 2 - d, h.ndim - 2)))


def affine_to_displacement(
  theta: ArrayLike, shape: Sequence[int], *, align_corners: bool = False
) -> jax.Array:
  """The displacement field, in pixels, of an affine ``theta``.

  ``warp(U, affine_to_displacement(theta, S))`` equals ``stn_jax.warp(U, theta)`` (up to
  float rounding): the field is ``grid_to_displacement`` of the grid of
  :func:`stn_jax.make_grid`.

  Convention:
    ``theta`` is ``(..., d, d + 1)`` and maps normalised output coordinates ``(x, y[, z])``
    to the input point read there, as :func:`stn_jax.make_grid` (PyTorch's
    ``affine_grid``) reads it; ``shape`` is the spatial shape ``S`` in array order
    (``(H, W)`` or ``(D, H, W)``).

  Args:
    theta: ``(..., 2, 3)`` or ``(..., 3, 4)``.
    shape: ``S``, with ``len(S)`` equal to theta's ``d``.
    align_corners: PyTorch's meaning, as for ``make_grid``.

  Returns:
    ``(..., *S, d)`` displacement in pixels.

  >>> theta = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], jnp.float32)
  >>> affine_to_displacement(theta, (2, 4))[1, 3]
  Array([1., 0.], dtype=float32)
  """
  theta = jnp.asarray(theta)
  theta = theta.astype(dtypes.float_dtype(theta.dtype, name="theta"))
  shape = tuple(int(s) for s in shape)
  d = len(shape)
  if d not in (2, 3) or theta.ndim < 2 or theta.shape[-2:] != (d, d + 1):
    raise ValueError(
      f"theta must have shape (..., d, d + 1) with d = len(shape) in (2, 3): (..., 2, 3) "
      f"for shape (H, W), (..., 3, 4) for (D, H, W); got theta {theta.shape} and shape "
      f"{shape}."
    )
  base = jnp.asarray(_identity(shape, align_corners), theta.dtype)
  batch = theta.shape[:-2]
  lead = (1,) * d
  A = theta[..., :d].reshape(batch + lead + (d, d))
  t = theta[..., d].reshape(batch + lead + (d,))
  grid = (
    jnp.einsum("...kl,...l->...k", A, _lift(base, A[..., 0]), precision=dtypes.MATMUL_PRECISION) + t
  )
  return grid_to_displacement(grid, align_corners=align_corners)


def resize_displacement(
  disp: ArrayLike, shape: Sequence[int], *, align_corners: bool = False
) -> jax.Array:
  """Resamples a displacement field onto another spatial shape, rescaling its pixel values.

  The field is interpolated bilinearly (border padding) at the new pixel centres and each
  component is multiplied by its axis's size ratio, so the map it describes stays the same
  in normalised coordinates: a coarse field predicted at half resolution moves the
  full-resolution image by the same physical amount.

  Convention:
    ``disp`` is ``(..., *S, d)`` in pixels of ``S``; the result ``(..., *shape, d)`` is in
    pixels of ``shape``. Ratios are ``new / old`` with ``align_corners=False`` (edges
    aligned) and ``(new - 1) / (old - 1)`` with True (corner centres aligned).

  Args:
    disp: ``(..., *S, d)``.
    shape: the new spatial shape, ``len(shape) == d``.
    align_corners: PyTorch's meaning.

  Returns:
    ``(..., *shape, d)``.

  >>> coarse = jnp.ones((2, 2, 2), jnp.float32)
  >>> resize_displacement(coarse, (4, 4))[0, 0]
  Array([2., 2.], dtype=float32)
  """
  disp = _as_field(disp, "disp")
  old = _spatial_shape(disp)
  new = tuple(int(s) for s in shape)
  if len(new) != len(old):
    raise ValueError(f"shape must have {len(old)} sizes, like the field's {old}; got {shape!r}.")
  if new == old:
    return disp
  grid = jnp.asarray(_identity(new, align_corners), disp.dtype)
  resized = sampling.sample(
    disp, grid, "bilinear", padding_mode="border", align_corners=align_corners
  )
  ratio = _scales(old, align_corners) / np.where(
    _scales(new, align_corners) > 0, _scales(new, align_corners), 1.0
  )
  return resized * _lift(ratio, resized)


def _check_spatial_dims(spatial_dims: int | None, shape: tuple[int, ...], axis: str) -> int:
  """The number of spatial dims of a field whose component axis sits at ``axis``."""
  if spatial_dims is not None:
    if spatial_dims not in (2, 3):
      raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
    candidates = [spatial_dims]
  else:
    candidates = [2, 3]
  fits = []
  for d in candidates:
    position = -d - 1 if axis == "first" else -1
    if len(shape) >= d + 1 and shape[position] == d:
      fits.append(d)
  if len(fits) == 1:
    return fits[0]
  layout = "(..., d, *S)" if axis == "first" else "(..., *S, d)"
  if not fits:
    raise ValueError(
      f"expected a field of shape {layout} with d = len(S) in (2, 3); got {shape}"
      + (f" for spatial_dims={spatial_dims}." if spatial_dims else ".")
    )
  raise ValueError(
    f"shape {shape} fits both a 2-D and a 3-D field {layout}; pass spatial_dims=2 or 3."
  )


def to_monai(disp: ArrayLike) -> jax.Array:
  """Converts a field to MONAI's ``Warp``/``DVF2DDF`` convention: channels-first, array-axis order.

  Conventions of dense displacement fields, all pull and all in pixels (voxels):

  ==============  ====================  ==========================  ====================
  library         layout                component order             sampler
  ==============  ====================  ==========================  ====================
  stn_jax         ``(N, *S, d)``        ``(x, y[, z])`` (grid's)    either align_corners
  MONAI           ``(N, d, *S)``        array axes ``(i, j[, k])``  align_corners=True
  VoxelMorph      ``(N, *S, d)``        array axes ``(i, j[, k])``  align_corners=True
  ==============  ====================  ==========================  ====================

  With ``S = (H, W)`` (or ``(D, H, W)``), stn_jax's x runs along ``W`` (MONAI's last
  channel), y along ``H``. Pixel units need no rescaling: every library places pixel ``m``
  at coordinate ``m``, so ``align_corners`` only changes reflection padding (see
  :func:`warp`).

  Convention:
    ``disp`` ``(..., *S, d)`` as in :func:`displacement_to_grid`; the result
    ``(..., d, *S)`` with channel ``i`` displacing along spatial axis ``i``.

  Args:
    disp: ``(..., *S, d)``.

  Returns:
    ``(..., d, *S)``, the same values reordered.

  >>> to_monai(jnp.zeros((1, 8, 6, 2), jnp.float32)).shape
  (1, 2, 8, 6)
  """
  disp = _as_field(disp, "disp")
  d = disp.shape[-1]
  return jnp.moveaxis(disp[..., ::-1], -1, disp.ndim - d - 1)


def from_monai(ddf: ArrayLike, *, spatial_dims: int | None = None) -> jax.Array:
  """Converts a MONAI field ``(..., d, *S)`` (array-axis order) to stn_jax's ``(..., *S, d)``.

  Inverts :func:`to_monai` (see its conventions table). Accepts NumPy arrays and anything
  ``jnp.asarray`` takes (convert torch tensors with ``.numpy()`` first).

  Convention:
    ``ddf[..., i, *S]`` displaces along spatial axis ``i`` in voxels (MONAI's ``DVF2DDF``
    output and ``Warp`` input); the result holds ``(x, y[, z])``.

  Args:
    ddf: ``(..., d, *S)``.
    spatial_dims: 2 or 3; needed only where the shape fits both (e.g. ``(3, 2, 5, 5)``).

  Returns:
    ``(..., *S, d)``.

  >>> from_monai(jnp.zeros((1, 2, 8, 6), jnp.float32)).shape
  (1, 8, 6, 2)
  """
  ddf = jnp.asarray(ddf)
  d = _check_spatial_dims(spatial_dims, tuple(ddf.shape), "first")
  return jnp.moveaxis(ddf, ddf.ndim - d - 1, -1)[..., ::-1]


def to_voxelmorph(disp: ArrayLike) -> jax.Array:
  """Converts a field to VoxelMorph's convention: channels-last, array-axis order, voxels.

  See the conventions table of :func:`to_monai`. VoxelMorph's ``SpatialTransformer`` and
  ``VecInt`` read ``flow[..., i]`` as the displacement along spatial axis ``i``.

  Convention:
    ``disp`` ``(..., *S, d)`` holds ``(x, y[, z])``; the result holds ``(i, j[, k])``,
    i.e. the components reversed.

  Args:
    disp: ``(..., *S, d)``.

  Returns:
    ``(..., *S, d)``.

  >>> to_voxelmorph(jnp.array([[[1.0, 2.0]]], jnp.float32))
  Array([[[2., 1.]]], dtype=float32)
  """
  disp = _as_field(disp, "disp")
  return disp[..., ::-1]


def from_voxelmorph(flow: ArrayLike) -> jax.Array:
  """Converts a VoxelMorph flow ``(..., *S, d)`` in array-axis order to stn_jax's.

  Inverts :func:`to_voxelmorph` (see the table of :func:`to_monai`).

  Convention:
    ``flow[..., i]`` displaces along spatial axis ``i`` in voxels; the result holds
    ``(x, y[, z])``.

  Args:
    flow: ``(..., *S, d)``.

  Returns:
    ``(..., *S, d)``.

  >>> from_voxelmorph(jnp.array([[[2.0, 1.0]]], jnp.float32))
  Array([[[1., 2.]]], dtype=float32)
  """
  flow = _as_field(flow, "flow")
  return flow[..., ::-1]

"""Separable sampling kernels: the ``k`` in ``V = sum_nm U_nm k(x - m) k(y - n)``."""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class Kernel:
  r"""A separable 1-D sampling kernel ``k(d)`` with support ``|d| < radius``.

  :func:`stn_jax.sample` evaluates

  .. math::

    V_i^c = \sum_n \sum_m U_{nm}^c \, k(x_i - m) \, k(y_i - n)

  over the taps ``m`` (columns) and ``n`` (rows) with ``|x_i - m| < radius`` and
  ``|y_i - n| < radius``. ``fn`` is only called with ``|d| <= radius`` and must be finite
  there; at ``d == -radius`` only its derivatives are used, so that derivatives at
  integer coordinates equal their right-hand limits.

  Convention:
    ``d`` is a distance in input pixels, after ``grid`` has been un-normalised as in
    :func:`stn_jax.normalized_to_pixel`. The support is strict: a tap at exactly
    ``|d| == radius`` has weight 0. Taps outside the image are padded per tap (the tap's
    integer position is clamped or reflected; under ``"zeros"`` it contributes 0).

  Args:
    fn: elementwise function of a float array of distances, returning weights of the same
      shape. Arrays it closes over (a learnable width, say) are differentiated through.
    radius: half-width of the support, a positive Python number (it fixes the number of
      taps, ``2 * ceil(radius)`` per axis, so it must be static).

  >>> import jax.numpy as jnp
  >>> tent = Kernel(lambda d: 1.0 - jnp.abs(d), radius=1)
  >>> tent
  Kernel(fn=<function <lambda> at ...>, radius=1)
  """

  fn: Callable[[jax.Array], jax.Array]
  radius: float

  def __post_init__(self):
    if not callable(self.fn):
      raise TypeError(f"Kernel fn must be callable; got {type(self.fn).__name__}.")
    if isinstance(self.radius, jax.core.Tracer):
      raise TypeError(
        "Kernel radius must be a concrete Python number (it fixes the number of taps); "
        "got a traced value. Make learnable parameters part of fn, not of radius."
      )
    radius = float(np.asarray(self.radius))
    if not (math.isfinite(radius) and radius > 0):
      raise ValueError(f"Kernel radius must be finite and > 0; got {self.radius!r}.")

  @property
  def taps(self) -> int:
    """Taps per axis: ``floor(x) + j`` for ``j`` in ``[1 - ceil(radius), ceil(radius)]``."""
    return 2 * math.ceil(float(self.radius))

  def __call__(self, d: ArrayLike) -> jax.Array:
    """Weights at distances ``d``, 0 outside the strict support ``|d| < radius``."""
    d = jnp.asarray(d)
    inside = jnp.abs(d) < self.radius
    # At d == -radius the weight is 0 (strict support), but that tap carries the kernel's
    # derivatives from the right. floor(x) is right-continuous, so keeping its derivatives
    # (not its value) makes derivatives of every order on the integer lattice (e.g. at the
    # identity transform) equal their right-hand limits instead of matching neither side.
    edge = d == -self.radius
    # Evaluate fn only on the closed support so that neither values nor gradients from
    # outside (a NaN, say) leak through the masks.
    w = self.fn(jnp.where(inside | edge, d, jnp.zeros_like(d)))
    zero = jnp.zeros_like(w)
    return jnp.where(inside, w, zero) + jnp.where(edge, w - jax.lax.stop_gradient(w), zero)


def keys_cubic(a: float = -0.75) -> Kernel:
  r"""Keys' cubic convolution kernel; ``a = -0.75`` is PyTorch's and OpenCV's bicubic.

  .. math::

    k(d) = \begin{cases}
      (a + 2)|d|^3 - (a + 3)|d|^2 + 1 & |d| \le 1 \\
      a|d|^3 - 5a|d|^2 + 8a|d| - 4a & 1 < |d| < 2
    \end{cases}

  Convention:
    ``d`` is a distance in input pixels, as for :class:`Kernel`.

  Args:
    a: the free parameter (a traced value is differentiable).

  Returns:
    A :class:`Kernel` with radius 2.

  >>> k = keys_cubic()
  >>> [round(float(k(d)), 6) for d in (0.0, 0.5, 1.0, 1.5)]
  [1.0, 0.59375, 0.0, -0.09375]
  """

  def fn(d: jax.Array) -> jax.Array:
    t = jnp.abs(d)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return jnp.where(t <= 1, near, far)

  return Kernel(fn, 2)


def triangle() -> Kernel:
  """The tent ``max(0, 1 - |d|)``: bilinear interpolation with per-tap padding.

  Under ``padding_mode="zeros"`` it equals ``kernel="bilinear"``; under the other modes
  ``"bilinear"`` pads the coordinate (PyTorch's rule) while this pads each tap.

  Convention:
    ``d`` is a distance in input pixels, as for :class:`Kernel`.

  >>> float(triangle()(0.25))
  0.75
  """
  return Kernel(lambda d: 1 - jnp.abs(d), 1)


def lanczos(a: int = 3) -> Kernel:
  r"""The Lanczos windowed sinc, ``sinc(d) sinc(d / a)`` for ``|d| < a``.

  Convention:
    ``d`` is a distance in input pixels, as for :class:`Kernel`.

  Args:
    a: lobes on each side, a positive integer; 2 and 3 are common.

  Returns:
    A :class:`Kernel` with radius ``a``.

  >>> k = lanczos(3)
  >>> [abs(round(float(k(d)), 6)) for d in (0.0, 1.0, 2.0)]
  [1.0, 0.0, 0.0]
  """
  if not (isinstance(a, int | np.integer) and a > 0):
    raise ValueError(f"lanczos lobes a must be a positive integer; got {a!r}.")
  return Kernel(lambda d: _sinc(d) * _sinc(d / a), a)


def _sinc(x: jax.Array) -> jax.Array:
  """``sin(pi x) / (pi x)`` with exact derivatives of every order near 0.

  ``jnp.sinc``'s derivatives lose all precision within about 1e-5 of 0 (in float32), which
  is where a sampling point a rounding error from a pixel centre puts the centre tap.
  """
  small = jnp.abs(x) < 1e-2
  px = jnp.pi * jnp.where(small, jnp.ones_like(x), x)
  p2 = (jnp.pi * jnp.where(small, x, jnp.zeros_like(x))) ** 2
  # Taylor series to (pi x)^6: the next term is below 1e-17 for |x| < 1e-2.
  series = 1 - p2 / 6 * (1 - p2 / 20 * (1 - p2 / 42))
  return jnp.where(small, series, jnp.sin(px) / px)


def gaussian(sigma: ArrayLike, radius: float | None = None) -> Kernel:
  r"""A normalised Gaussian, ``exp(-d^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)``.

  Normalised so that its taps sum to about 1 for ``sigma >~ 0.5`` (a blur that keeps
  brightness). ``sigma`` may be a traced, learnable array.

  Convention:
    ``d`` is a distance in input pixels, as for :class:`Kernel`.

  Args:
    sigma: standard deviation in input pixels, > 0.
    radius: support; defaults to ``3 * sigma`` rounded up, which needs a concrete
      ``sigma``. Pass it explicitly when ``sigma`` is traced (learned).

  Returns:
    A :class:`Kernel`.

  >>> k = gaussian(1.0)
  >>> k.radius, round(float(k(0.0)), 6)
  (3, 0.398942)
  """
  if radius is None:
    if isinstance(sigma, jax.core.Tracer):
      raise TypeError(
        "gaussian(sigma) with a traced sigma needs an explicit static radius, e.g. "
        "gaussian(sigma, radius=4)."
      )
    s = float(np.asarray(sigma))
    if not (math.isfinite(s) and s > 0):
      raise ValueError(f"gaussian sigma must be finite and > 0; got {sigma!r}.")
    radius = math.ceil(3 * s)

  def fn(d: jax.Array) -> jax.Array:
    s = jnp.asarray(sigma, dtype=d.dtype)
    return jnp.exp(-0.5 * (d / s) ** 2) / (math.sqrt(2 * math.pi) * s)

  return Kernel(fn, radius)


# The three names PyTorch's grid_sample knows. "nearest" and "bilinear" pad the coordinate
# (PyTorch's rule) and have dedicated code; "bicubic" pads per tap, which is exactly what
# the generic path does with Keys' kernel.
INTERPOLATION_MODES = ("nearest", "bilinear", "bicubic")


def resolve(kernel: "str | Kernel") -> "str | Kernel":
  """Maps a kernel argument to ``"nearest"``, ``"bilinear"`` or a :class:`Kernel`."""
  if isinstance(kernel, Kernel):
    return kernel
  if isinstance(kernel, str):
    if kernel == "bicubic":
      return _BICUBIC
    if kernel in ("nearest", "bilinear"):
      return kernel
    raise ValueError(
      f"unknown kernel {kernel!r}; expected one of {INTERPOLATION_MODES} or a "
      "stn_jax.Kernel(fn, radius)."
    )
  raise TypeError(
    f"kernel must be one of {INTERPOLATION_MODES} or a stn_jax.Kernel; got {type(kernel).__name__}."
  )


_BICUBIC = keys_cubic(-0.75)

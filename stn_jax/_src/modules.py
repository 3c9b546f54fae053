"""Plumbing shared by the NNX and Linen modules: option checks, the identity head, the warp.

Both front ends call these so that they cannot drift apart; all geometry is delegated to
:mod:`stn_jax._src.grids` and :mod:`stn_jax._src.sampling`.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stn_jax._src import dtypes, grids, sampling, validation
from stn_jax._src import kernels as kernels_lib

# Architecture of the ready-made localisation network, shared so NNX and Linen agree.
CONV_KERNEL_SIZES = ((5, 5), (3, 3))
CONV_STRIDES = 2


def conv_kernel_sizes(ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The localisation net's two kernel sizes for images (2) or volumes (3): 5 then 3 per axis."""
  return tuple((k[0],) * ndim for k in CONV_KERNEL_SIZES)


@dataclasses.dataclass(frozen=True)
class Options:
  """Checked, hashable transformer options (hashable: NNX keeps them in its static graph)."""

  transform: str
  output_shape: tuple[int, ...] | None
  kernel: "str | kernels_lib.Kernel"
  padding_mode: str
  align_corners: bool
  control_points: tuple[tuple[float, ...], ...] | None
  antialias: bool = False

  @property
  def ndim(self) -> int:
    """Spatial dims: ``len(output_shape)``, else the control points', else 2 (images)."""
    if self.output_shape is not None:
      return len(self.output_shape)
    if self.control_points is not None:
      return len(self.control_points[0])
    return 2

  @property
  def theta_shape(self) -> tuple[int, ...]:
    return tuple(identity_theta(self).shape)

  @property
  def theta_size(self) -> int:
    return math.prod(self.theta_shape)

  def control_points_array(self) -> np.ndarray | None:
    return None if self.control_points is None else np.asarray(self.control_points, np.float64)


def check_options(
  transform: str,
  output_shape: Sequence[int] | None,
  kernel: "str | kernels_lib.Kernel",
  padding_mode: str,
  align_corners: bool,
  control_points: ArrayLike | None,
  antialias: bool = False,
) -> Options:
  """Validates the module options once, at construction, and normalises them."""
  validation.check_transform(transform)
  if output_shape is not None:
    try:
      sizes = tuple(int(s) for s in output_shape)
      whole = all(n == s for n, s in zip(sizes, output_shape, strict=True))
      ok = len(sizes) in (2, 3) and whole and min(sizes) > 0
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ValueError(
        "output_shape must be None, a pair of positive ints (Ho, Wo) or, for volumes, a "
        f"triple (Do, Ho, Wo); got {output_shape!r}."
      )
    output_shape = sizes
  kernels_lib.resolve(kernel)  # raises on unknown kernels
  validation.check_padding_mode(padding_mode)
  align_corners = validation.check_align_corners(align_corners)
  antialias = validation.check_flag(antialias, "antialias")
  validation.check_control_points_rule(transform, control_points)
  if control_points is not None:
    # identity_theta runs the core's checks (shape, distinct, not collinear).
    ndim = None if output_shape is None else len(output_shape)
    grids.identity_theta("tps", ndim=ndim, control_points=control_points)
    control_points = tuple(
      tuple(float(v) for v in point) for point in np.asarray(control_points, np.float64).tolist()
    )
  return Options(
    transform, output_shape, kernel, padding_mode, bool(align_corners), control_points, antialias
  )


def identity_theta(options: Options, dtype=jnp.float32) -> jax.Array:
  return grids.identity_theta(
    options.transform,
    ndim=options.ndim,
    control_points=options.control_points_array(),
    dtype=dtype,
  )


def identity_bias_init(options: Options) -> Callable[..., jax.Array]:
  """A Flax initializer giving the flattened identity ``theta`` (the head's bias)."""

  def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    del key
    bias = identity_theta(options, dtype).reshape(-1)
    if tuple(shape) != bias.shape:
      raise ValueError(f"identity bias has shape {bias.shape}; the head asked for {tuple(shape)}.")
    return bias

  return init


def check_features(features: jax.Array, expected: int | None) -> None:
  if features.ndim < 1 or (expected is not None and features.shape[-1] != expected):
    want = "(..., features)" if expected is None else f"(..., {expected})"
    raise ValueError(f"localisation must return features of shape {want}; got {features.shape}.")


def warp_from_head(
  head_output: jax.Array, source: ArrayLike, options: Options
) -> tuple[jax.Array, jax.Array]:
  """Reshapes the head's flat output to ``theta`` and warps ``source`` by it."""
  source = jnp.asarray(source)
  batch = head_output.shape[:-1]
  theta = head_output.reshape(batch + options.theta_shape)
  core = ("H", "W", "C") if options.ndim == 2 else ("D", "H", "W", "C")
  if source.ndim < len(core):
    raise ValueError(
      f"the sampled input must have shape (..., {', '.join(core)}) (channels-last); got "
      f"{source.shape}."
    )
  if source.shape[: source.ndim - len(core)] != batch:
    raise ValueError(
      f"sample_from must have the same leading (batch) dims as the localised input: "
      f"expected {batch + core}; got {source.shape}."
    )
  out = sampling.warp(
    source,
    theta,
    options.transform,
    shape=options.output_shape,
    kernel=options.kernel,
    padding_mode=options.padding_mode,
    align_corners=options.align_corners,
    control_points=options.control_points_array(),
    antialias=options.antialias,
  )
  return out, theta


def check_pool_size(pool_size: Sequence[int] | None, ndim: int = 2) -> tuple[int, ...]:
  """``pool_size`` as ints, one per spatial axis; None means 4 per axis."""
  if pool_size is None:
    return (4,) * ndim
  try:
    sizes = tuple(int(s) for s in pool_size)
  except (TypeError, ValueError):
    sizes = ()
  if len(sizes) != ndim or any(n <= 0 for n in sizes):
    what = "a pair of positive ints" if ndim == 2 else "a triple of positive ints (volumes)"
    raise ValueError(f"pool_size must be {what}; got {pool_size!r}.")
  return sizes


def _pool_matrix(size: int, bins: int) -> np.ndarray:
  # PyTorch's AdaptiveAvgPool bins: [floor(i * size / bins), ceil((i + 1) * size / bins)).
  m = np.zeros((bins, size))
  for i in range(bins):
    start, stop = (i * size) // bins, -((-(i + 1) * size) // bins)
    m[i, start:stop] = 1.0 / (stop - start)
  return m


def adaptive_avg_pool(x: jax.Array, pool_size: tuple[int, ...]) -> jax.Array:
  """Averages ``(..., H, W, C)`` over a ``pool_size`` grid of bins: ``(..., ph, pw, C)``.

  A coarse grid, not a global average, because a global average is translation invariant
  and so cannot tell the head where the object is; the grid keeps that while accepting any
  input size (PyTorch's ``AdaptiveAvgPool2d``). A ``pool_size`` of length 3 pools a volume
  ``(..., D, H, W, C)`` to ``(..., pd, ph, pw, C)`` (``AdaptiveAvgPool3d``).
  """
  ndim = len(pool_size)
  spatial = x.shape[x.ndim - ndim - 1 : -1]
  if x.ndim < ndim + 1 or 0 in spatial:
    layout = "(..., H, W, C)" if ndim == 2 else "(..., D, H, W, C)"
    raise ValueError(f"expected a non-empty feature map {layout}; got {x.shape}.")
  # One averaging matrix per axis, contracted in one einsum: "ih,...hwc,jw->...ijc" in 2-D.
  ins, outs = "dhw"[-ndim:], "aij"[-ndim:]
  mats = [jnp.asarray(_pool_matrix(n, p), x.dtype) for n, p in zip(spatial, pool_size, strict=True)]
  specs = [outs[j] + ins[j] for j in range(ndim)]
  spec = f"{specs[0]},...{ins}c,{','.join(specs[1:])}->...{outs}c"
  return jnp.einsum(spec, mats[0], x, *mats[1:], precision=dtypes.MATMUL_PRECISION)

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

from stn_jax._src import grids, sampling
from stn_jax._src import kernels as kernels_lib

# Architecture of the ready-made localisation network, shared so NNX and Linen agree.
CONV_KERNEL_SIZES = ((5, 5), (3, 3))
CONV_STRIDES = 2


@dataclasses.dataclass(frozen=True)
class Options:
  """Checked, hashable transformer options (hashable: NNX keeps them in its static graph)."""

  transform: str
  output_shape: tuple[int, int] | None
  kernel: "str | kernels_lib.Kernel"
  padding_mode: str
  align_corners: bool
  control_points: tuple[tuple[float, float], ...] | None

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
) -> Options:
  """Validates the module options once, at construction, and normalises them."""
  if transform not in grids.TRANSFORMS:
    raise ValueError(f"unknown transform {transform!r}; expected one of {grids.TRANSFORMS}.")
  if output_shape is not None:
    try:
      ho, wo = (int(s) for s in output_shape)
      ok = ho > 0 and wo > 0 and all(int(s) == s for s in output_shape)
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ValueError(
        f"output_shape must be None or a pair of positive ints (Ho, Wo); got {output_shape!r}."
      )
    output_shape = (ho, wo)
  kernels_lib.resolve(kernel)  # raises on unknown kernels
  if padding_mode not in sampling.PADDING_MODES:
    raise ValueError(
      f"unknown padding_mode {padding_mode!r}; expected one of {sampling.PADDING_MODES}."
    )
  if not isinstance(align_corners, bool | np.bool_):
    raise TypeError(f"align_corners must be a bool; got {type(align_corners).__name__}.")
  if control_points is not None:
    if transform != "tps":
      raise ValueError(f"control_points only applies to transform='tps'; got {transform!r}.")
    # identity_theta runs the core's checks (shape, distinct, not collinear).
    grids.identity_theta("tps", control_points=control_points)
    control_points = tuple(
      (float(x), float(y)) for x, y in np.asarray(control_points, np.float64).tolist()
    )
  return Options(transform, output_shape, kernel, padding_mode, bool(align_corners), control_points)


def identity_theta(options: Options, dtype=jnp.float32) -> jax.Array:
  return grids.identity_theta(
    options.transform, control_points=options.control_points_array(), dtype=dtype
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
  if source.ndim < 3:
    raise ValueError(
      f"the sampled input must have shape (..., H, W, C) (channels-last); got {source.shape}."
    )
  if source.shape[:-3] != batch:
    raise ValueError(
      f"sample_from must have the same leading (batch) dims as the localised input: "
      f"expected {batch + ('H', 'W', 'C')}; got {source.shape}."
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
  )
  return out, theta


def check_pool_size(pool_size: Sequence[int]) -> tuple[int, int]:
  try:
    ph, pw = (int(s) for s in pool_size)
  except (TypeError, ValueError):
    ph = pw = 0
  if ph <= 0 or pw <= 0:
    raise ValueError(f"pool_size must be a pair of positive ints; got {pool_size!r}.")
  return ph, pw


def _pool_matrix(size: int, bins: int) -> np.ndarray:
  # PyTorch's AdaptiveAvgPool bins: [floor(i * size / bins), ceil((i + 1) * size / bins)).
  m = np.zeros((bins, size))
  for i in range(bins):
    start, stop = (i * size) // bins, -((-(i + 1) * size) // bins)
    m[i, start:stop] = 1.0 / (stop - start)
  return m


def adaptive_avg_pool(x: jax.Array, pool_size: tuple[int, int]) -> jax.Array:
  """Averages ``(..., H, W, C)`` over a ``pool_size`` grid of bins: ``(..., ph, pw, C)``.

  A coarse grid, not a global average, because a global average is translation invariant
  and so cannot tell the head where the object is; the grid keeps that while accepting any
  input size (PyTorch's ``AdaptiveAvgPool2d``).
  """
  if x.ndim < 3 or x.shape[-3] == 0 or x.shape[-2] == 0:
    raise ValueError(f"expected a non-empty feature map (..., H, W, C); got {x.shape}.")
  rows = jnp.asarray(_pool_matrix(x.shape[-3], pool_size[0]), x.dtype)
  cols = jnp.asarray(_pool_matrix(x.shape[-2], pool_size[1]), x.dtype)
  return jnp.einsum("ih,...hwc,jw->...ijc", rows, x, cols)

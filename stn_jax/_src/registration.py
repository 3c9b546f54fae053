"""Plumbing shared by the NNX and Linen registration modules: option checks and the field.

Both front ends call these so that they cannot drift apart; the geometry is
:mod:`stn_jax._src.fields`.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stn_jax._src import fields, validation
from stn_jax._src import kernels as kernels_lib

# The ready-made field network: 3x3 convolutions, the second one strided, so the field is
# predicted at half resolution (integrated there, then resized: VoxelMorph's habit).
FIELD_NET_KERNEL = 3
FIELD_NET_STRIDES = (1, 2, 1)
HEAD_KERNEL = 3


@dataclasses.dataclass(frozen=True)
class Options:
  """Checked, hashable registration options."""

  spatial_dims: int
  steps: int
  kernel: "str | kernels_lib.Kernel"
  padding_mode: str
  align_corners: bool
  antialias: bool = False


def check_options(
  spatial_dims: int,
  steps: int,
  kernel: "str | kernels_lib.Kernel",
  padding_mode: str,
  align_corners: bool,
  antialias: bool = False,
) -> Options:
  if spatial_dims not in (2, 3):
    raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise ValueError(
      f"steps must be a non-negative int (0: the head predicts a displacement; N > 0: a "
      f"velocity integrated with N squarings); got {steps!r}."
    )
  validation.check_padding_mode(padding_mode)
  return Options(
    spatial_dims,
    steps,
    kernels_lib.resolve(kernel),
    padding_mode,
    bool(align_corners),
    validation.check_flag(antialias, "antialias"),
  )


def check_pair(moving: ArrayLike, fixed: ArrayLike, spatial_dims: int) -> tuple[jax.Array, ...]:
  moving, fixed = jnp.asarray(moving), jnp.asarray(fixed)
  d = spatial_dims
  if moving.ndim < d + 1 or moving.shape[:-1] != fixed.shape[:-1]:
    raise ValueError(
      f"moving and fixed must be channels-last (..., *S, C) with the same leading and "
      f"spatial dims ({d} spatial dims); got moving {moving.shape} and fixed {fixed.shape}."
    )
  return moving, fixed


def field_and_warp(
  head_output: jax.Array, moving: jax.Array, options: Options
) -> tuple[jax.Array, jax.Array]:
  """Integrates the head's field (if ``steps``), resizes it to ``moving`` and warps."""
  d = options.spatial_dims
  if head_output.shape[-1] != d or head_output.ndim < d + 1:
    raise ValueError(f"the head must return (..., *s, {d}); got {head_output.shape}.")
  field = head_output
  if options.steps:
    field = fields.integrate(
      field, options.steps, padding_mode="border", align_corners=options.align_corners
    )
  shape = tuple(moving.shape[-d - 1 : -1])
  disp = fields.resize_displacement(field, shape, align_corners=options.align_corners)
  warped = fields.warp(
    moving,
    disp,
    options.kernel,
    padding_mode=options.padding_mode,
    align_corners=options.align_corners,
    antialias=options.antialias,
  )
  return warped, disp

"""Spatial transformer modules for Flax NNX.

Thin wrappers over the functional core: a localisation network predicts ``theta`` and
:func:`stn_jax.warp` samples the input with it. For Linen codebases see
:mod:`stn_jax.linen`, which has the same architecture and parameter names.
"""

import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.typing import ArrayLike

from stn_jax._src import kernels as kernels_lib
from stn_jax._src import modules

__all__ = ("LocalisationNet", "SpatialTransformer")


class LocalisationNet(nnx.Module):
  """A small ready-made localisation network: two strided convs, pooling, a dense layer.

  ``conv1`` (5x5, stride 2) -> ReLU -> ``conv2`` (3x3, stride 2) -> ReLU -> average pooling
  onto a ``pool_size`` grid -> flatten -> ``dense`` -> ReLU. Strided convolutions rather
  than max-pooling keep the backward pass cheap; the adaptive pooling grid makes the net
  accept any input size while keeping the coarse *where* that a global average would lose.

  ``ndim=3`` is the volumetric form for ``(N, D, H, W, C)`` input: 5x5x5 and 3x3x3 strided
  3-D convolutions and a ``(pd, ph, pw)`` pooling grid.

  Args:
    in_features: channels ``C`` of the input.
    features: width of the output (the feature vector the regression head reads).
    channels: output channels of the two convolutions.
    pool_size: ``(ph, pw)`` grid of the adaptive average pooling (``(pd, ph, pw)`` for
      volumes); ``(1, 1)`` is global average pooling. Default: 4 per axis.
    ndim: 2 for images, 3 for volumes.
    rngs: NNX random streams for the initialisers.

  Attributes:
    features: width of the output, to pass on to :class:`SpatialTransformer`.

  >>> import jax.numpy as jnp
  >>> net = LocalisationNet(1, features=8, rngs=nnx.Rngs(0))
  >>> net(jnp.ones((2, 28, 28, 1), jnp.float32)).shape
  (2, 8)
  >>> volumes = LocalisationNet(1, features=8, ndim=3, rngs=nnx.Rngs(0))
  >>> volumes(jnp.ones((2, 9, 10, 11, 1), jnp.float32)).shape
  (2, 8)
  """

  def __init__(
    self,
    in_features: int,
    *,
    features: int = 32,
    channels: Sequence[int] = (16, 32),
    pool_size: Sequence[int] | None = None,
    ndim: int = 2,
    rngs: nnx.Rngs,
  ):
    c1, c2 = channels
    self.features = features
    self.pool_size = modules.check_pool_size(pool_size, ndim)
    (k1, k2), s = modules.conv_kernel_sizes(ndim), modules.CONV_STRIDES
    self.conv1 = nnx.Conv(in_features, c1, k1, strides=s, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, k2, strides=s, rngs=rngs)
    self.dense = nnx.Linear(c2 * math.prod(self.pool_size), features, rngs=rngs)

  def __call__(self, x: ArrayLike) -> jax.Array:
    """Features of ``x``.

    Args:
      x: ``(N, H, W, C)`` channels-last images (or one ``(H, W, C)`` image); volumes
        ``(N, D, H, W, C)``.

    Returns:
      ``(N, features)`` (or ``(features,)``).
    """
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = modules.adaptive_avg_pool(x, self.pool_size)
    return nnx.relu(self.dense(x.reshape(x.shape[: x.ndim - len(self.pool_size) - 1] + (-1,))))


class SpatialTransformer(nnx.Module):
  """A spatial transformer (Jaderberg et al. 2015): localise, then warp.

  ``localisation`` maps the input to features, a linear regression head ``head`` maps
  those to ``theta`` and :func:`stn_jax.warp` samples the input on ``theta``'s grid. The
  head starts at the identity transform (zero kernel, bias = flattened
  :func:`stn_jax.identity_theta`), so at initialisation the module passes its input
  through unchanged and training starts from "do nothing".

  Volumes: a 3-D ``output_shape`` ``(Do, Ho, Wo)`` (or 3-D TPS ``control_points``) makes
  a volumetric transformer for ``(N, D, H, W, C)`` input, with the 3-D ``theta`` of
  :func:`stn_jax.make_grid` (e.g. ``(N, 3, 4)`` for affine). The dimension must be known at
  construction (it fixes the head's width), so volumes need ``output_shape``.

  Convention:
    Channels-last images ``(N, H, W, C)``. ``theta`` is the core's: it maps normalised
    output coordinates ``(x, y)`` in ``[-1, 1]`` (x along the width) to the input point
    read there, as in :func:`stn_jax.make_grid`. Volumes: ``(N, D, H, W, C)`` and
    ``(x, y, z)`` with z along the depth.

  Args:
    localisation: any module mapping ``(N, H, W, C)`` to ``(N, features)`` (volumes:
      ``(N, D, H, W, C)``, e.g. ``LocalisationNet(..., ndim=3)``).
    features: width of the localisation output.
    transform: ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    output_shape: ``(Ho, Wo)`` of the output; default: the sampled input's ``(H, W)``.
      Smaller than the input gives the paper's downsampling transformer. ``(Do, Ho, Wo)``
      for volumes.
    kernel: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or a :class:`stn_jax.Kernel`.
    padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
    align_corners: PyTorch's meaning, used for both the grid and the sampling.
    control_points: ``(K, 2)`` TPS sources (default: the 4x4 lattice); concrete.
    rngs: NNX random streams (the head's initialisers use none, but NNX convention keeps
      the argument so the signature matches other layers).

  >>> import jax.numpy as jnp
  >>> rngs = nnx.Rngs(0)
  >>> stn = SpatialTransformer(LocalisationNet(1, features=8, rngs=rngs), 8, rngs=rngs)
  >>> V, theta = stn(jnp.ones((2, 28, 28, 1), jnp.float32))
  >>> V.shape, theta.shape
  ((2, 28, 28, 1), (2, 2, 3))
  >>> theta[0]
  Array([[1., 0., 0.],
         [0., 1., 0.]], dtype=float32)
  >>> volumetric = SpatialTransformer(
  ...     LocalisationNet(1, features=8, ndim=3, rngs=rngs), 8, output_shape=(4, 5, 6),
  ...     rngs=rngs)
  >>> V, theta = volumetric(jnp.ones((2, 8, 10, 12, 1), jnp.float32))
  >>> V.shape, theta.shape
  ((2, 4, 5, 6, 1), (2, 3, 4))
  """

  def __init__(
    self,
    localisation: nnx.Module,
    features: int,
    *,
    transform: str = "affine",
    output_shape: Sequence[int] | None = None,
    kernel: "str | kernels_lib.Kernel" = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    control_points: ArrayLike | None = None,
    rngs: nnx.Rngs,
  ):
    options = modules.check_options(
      transform, output_shape, kernel, padding_mode, align_corners, control_points
    )
    self.options = options
    self.features = features
    self.localisation = localisation
    self.head = nnx.Linear(
      features,
      options.theta_size,
      kernel_init=nnx.initializers.zeros_init(),
      bias_init=modules.identity_bias_init(options),
      rngs=rngs,
    )

  @classmethod
  def with_localisation_net(
    cls,
    in_features: int,
    *,
    features: int = 32,
    transform: str = "affine",
    output_shape: Sequence[int] | None = None,
    kernel: "str | kernels_lib.Kernel" = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    control_points: ArrayLike | None = None,
    rngs: nnx.Rngs,
  ) -> "SpatialTransformer":
    """A transformer whose localisation is a default :class:`LocalisationNet`.

    Args:
      in_features: channels ``C`` of the input.
      features: width of the :class:`LocalisationNet` output.
      transform: as in :class:`SpatialTransformer`.
      output_shape: as in :class:`SpatialTransformer`.
      kernel: as in :class:`SpatialTransformer`.
      padding_mode: as in :class:`SpatialTransformer`.
      align_corners: as in :class:`SpatialTransformer`.
      control_points: as in :class:`SpatialTransformer`.
      rngs: NNX random streams.

    Returns:
      A :class:`SpatialTransformer` at the identity transform; volumetric (with
      ``LocalisationNet(..., ndim=3)``) when ``output_shape`` has three entries.

    >>> import jax.numpy as jnp
    >>> stn = SpatialTransformer.with_localisation_net(
    ...     3, transform="attention", output_shape=(16, 16), rngs=nnx.Rngs(0))
    >>> V, theta = stn(jnp.ones((4, 60, 60, 3), jnp.float32))
    >>> V.shape, theta.shape
    ((4, 16, 16, 3), (4, 3))
    """
    options = modules.check_options(
      transform, output_shape, kernel, padding_mode, align_corners, control_points
    )
    localisation = LocalisationNet(in_features, features=features, ndim=options.ndim, rngs=rngs)
    return cls(
      localisation,
      features,
      transform=transform,
      output_shape=output_shape,
      kernel=kernel,
      padding_mode=padding_mode,
      align_corners=align_corners,
      control_points=control_points,
      rngs=rngs,
    )

  @property
  def transform(self) -> str:
    """The transform family, e.g. ``"affine"``."""
    return self.options.transform

  @property
  def theta_shape(self) -> tuple[int, ...]:
    """Trailing shape of ``theta``: ``(2, 3)``, ``(3,)``, ``(3, 3)`` or ``(K, 2)``
    (volumes: ``(3, 4)``, ``(4,)``, ``(4, 4)`` or ``(K, 3)``)."""
    return self.options.theta_shape

  def __call__(
    self, x: ArrayLike, *, sample_from: ArrayLike | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Localises on ``x`` and warps ``sample_from`` (default ``x``).

    Args:
      x: ``(N, H, W, C)`` input of the localisation network (volumes: ``(N, D, H, W, C)``).
      sample_from: ``(N, H', W', C')`` image to warp, e.g. the full-resolution original
        when ``x`` is a downscaled view of it; the normalised coordinates make ``theta``
        resolution independent.

    Returns:
      ``(V, theta)``: ``V`` is ``(N, Ho, Wo, C')`` with ``(Ho, Wo)`` = ``output_shape`` or
      the sampled image's ``(H', W')`` (volumes: ``(N, Do, Ho, Wo, C')``); ``theta`` is
      ``(N,) + theta_shape``.
    """
    features = self.localisation(x)
    modules.check_features(features, self.features)
    source = x if sample_from is None else sample_from
    return modules.warp_from_head(self.head(features), source, self.options)

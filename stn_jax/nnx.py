"""Spatial transformer modules for Flax NNX.

Thin wrappers over the functional core: a localisation network predicts ``theta`` and
:func:`stn_jax.warp` samples the input with it. For Linen codebases see
:mod:`stn_jax.linen`, which has the same architecture and parameter names.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from stn_jax._src import kernels as kernels_lib
from stn_jax._src import modules, registration

__all__ = ("FieldNet", "LocalisationNet", "Registration", "SpatialTransformer")


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
    antialias: low-pass filter the input to each output pixel's footprint before reading
      it (:func:`stn_jax.sample`'s ``antialias``), so that a zooming-out transformer does
      not alias; where it zooms in the output equals ``antialias=False``'s.
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
    antialias: bool = False,
    rngs: nnx.Rngs,
  ):
    options = modules.check_options(
      transform, output_shape, kernel, padding_mode, align_corners, control_points, antialias
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
    antialias: bool = False,
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
      antialias: as in :class:`SpatialTransformer`.
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
      transform, output_shape, kernel, padding_mode, align_corners, control_points, antialias
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
      antialias=antialias,
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


class FieldNet(nnx.Module):
  """A small ready-made registration backbone: three 3x3 convolutions, the second strided.

  ``conv1`` -> ReLU -> ``conv2`` (stride 2) -> ReLU -> ``conv3`` -> ReLU: features at half
  the input's resolution, so :class:`Registration` predicts (and integrates) a coarse field
  and resizes it. Works for images (``spatial_dims=2``) and volumes (3).

  Args:
    in_features: channels of its input (``2 C`` for a moving/fixed pair of ``C`` channels).
    channels: output channels of the three convolutions; the last is ``features``.
    spatial_dims: 2 or 3.
    rngs: NNX random streams.

  Attributes:
    features: channels of the output, to pass on to :class:`Registration`.

  >>> import jax.numpy as jnp
  >>> net = FieldNet(2, rngs=nnx.Rngs(0))
  >>> net(jnp.ones((1, 28, 28, 2), jnp.float32)).shape
  (1, 14, 14, 32)
  """

  def __init__(
    self,
    in_features: int,
    *,
    channels: Sequence[int] = (16, 32, 32),
    spatial_dims: int = 2,
    rngs: nnx.Rngs,
  ):
    c1, c2, c3 = channels
    self.features = c3
    k = (registration.FIELD_NET_KERNEL,) * spatial_dims
    s1, s2, s3 = registration.FIELD_NET_STRIDES
    self.conv1 = nnx.Conv(in_features, c1, k, strides=s1, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, k, strides=s2, rngs=rngs)
    self.conv3 = nnx.Conv(c2, c3, k, strides=s3, rngs=rngs)

  def __call__(self, x: ArrayLike) -> jax.Array:
    """Features ``(N, *S / 2, features)`` of ``x`` ``(N, *S, in_features)``."""
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    return nnx.relu(self.conv3(x))


class Registration(nnx.Module):
  """Learned deformable registration: features of a (moving, fixed) pair to a dense field.

  ``backbone`` maps the channel-concatenated pair to a feature map, the convolutional head
  ``head`` maps that to a ``d``-channel field (a velocity, integrated with ``steps``
  squarings by :func:`stn_jax.fields.integrate`, or with ``steps=0`` a displacement), the
  field is resized to the moving image's size if the feature map is coarser
  (:func:`stn_jax.fields.resize_displacement`, which rescales its pixel values) and
  :func:`stn_jax.fields.warp` pulls the moving image onto the fixed one. The head's kernel
  and bias start at zero, so the module starts at the identity.

  Convention:
    Channels-last ``(N, *S, C)`` images; the field is the library's
    (:func:`stn_jax.fields.displacement_to_grid`): ``(N, *S, d)``, components ``(x, y[, z])``
    in pixels of the moving image, pull.

  Args:
    backbone: any module mapping ``(N, *S, 2 C)`` to ``(N, *s, features)``, ``s`` equal
      to ``S`` or coarser.
    features: channels of the backbone's output.
    spatial_dims: 2 or 3.
    steps: squarings of the velocity; 0 makes the head predict a displacement directly.
    kernel: how the moving image is sampled, as in :func:`stn_jax.sample`.
    padding_mode: as in :func:`stn_jax.sample`; default ``"border"``.
    align_corners: PyTorch's meaning.
    antialias: read the moving image low-pass filtered where the field compresses it
      (:func:`stn_jax.fields.warp`'s ``antialias``).
    rngs: NNX random streams.

  >>> import jax.numpy as jnp
  >>> rngs = nnx.Rngs(0)
  >>> reg = Registration(FieldNet(2, rngs=rngs), 32, rngs=rngs)
  >>> x = jnp.ones((3, 28, 28, 1), jnp.float32)
  >>> warped, field = reg(x, x)
  >>> warped.shape, field.shape, float(abs(field).max())
  ((3, 28, 28, 1), (3, 28, 28, 2), 0.0)
  """

  def __init__(
    self,
    backbone: nnx.Module,
    features: int,
    *,
    spatial_dims: int = 2,
    steps: int = 7,
    kernel: "str | kernels_lib.Kernel" = "bilinear",
    padding_mode: str = "border",
    align_corners: bool = False,
    antialias: bool = False,
    rngs: nnx.Rngs,
  ):
    self.options = registration.check_options(
      spatial_dims, steps, kernel, padding_mode, align_corners, antialias
    )
    self.backbone = backbone
    self.head = nnx.Conv(
      features,
      spatial_dims,
      (registration.HEAD_KERNEL,) * spatial_dims,
      kernel_init=nnx.initializers.zeros_init(),
      bias_init=nnx.initializers.zeros_init(),
      rngs=rngs,
    )

  @classmethod
  def with_field_net(
    cls,
    in_features: int,
    *,
    channels: Sequence[int] = (16, 32, 32),
    spatial_dims: int = 2,
    steps: int = 7,
    kernel: "str | kernels_lib.Kernel" = "bilinear",
    padding_mode: str = "border",
    align_corners: bool = False,
    antialias: bool = False,
    rngs: nnx.Rngs,
  ) -> "Registration":
    """A registration module whose backbone is a default :class:`FieldNet`.

    Args:
      in_features: channels ``C`` of each image (the backbone reads ``2 C``).
      channels: as in :class:`FieldNet`.
      spatial_dims: as in :class:`Registration`.
      steps: as in :class:`Registration`.
      kernel: as in :class:`Registration`.
      padding_mode: as in :class:`Registration`.
      align_corners: as in :class:`Registration`.
      antialias: as in :class:`Registration`.
      rngs: NNX random streams.

    Returns:
      A :class:`Registration` at the identity.
    """
    # Check the options before building (and initialising) the backbone.
    registration.check_options(spatial_dims, steps, kernel, padding_mode, align_corners, antialias)
    backbone = FieldNet(2 * in_features, channels=channels, spatial_dims=spatial_dims, rngs=rngs)
    return cls(
      backbone,
      backbone.features,
      spatial_dims=spatial_dims,
      steps=steps,
      kernel=kernel,
      padding_mode=padding_mode,
      align_corners=align_corners,
      antialias=antialias,
      rngs=rngs,
    )

  def __call__(self, moving: ArrayLike, fixed: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Registers ``moving`` to ``fixed``.

    Args:
      moving: ``(N, *S, C)`` image to warp.
      fixed: ``(N, *S, C)`` target.

    Returns:
      ``(warped, disp)``: ``warped`` ``(N, *S, C)`` is ``moving`` pulled by ``disp``
      ``(N, *S, d)`` (pixels, after integration and resizing).
    """
    moving, fixed = registration.check_pair(moving, fixed, self.options.spatial_dims)
    features = self.backbone(jnp.concatenate([moving, fixed], axis=-1))
    return registration.field_and_warp(self.head(features), moving, self.options)

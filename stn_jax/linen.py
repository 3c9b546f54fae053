"""Spatial transformer modules for Flax Linen.

The same modules as :mod:`stn_jax.nnx`, with the same architecture and parameter names
(``localisation/conv1``, ``localisation/conv2``, ``localisation/dense``, ``head``), so
weights carry over between the two front ends.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.typing import ArrayLike

from stn_jax._src import kernels as kernels_lib
from stn_jax._src import modules, registration

__all__ = ("FieldNet", "LocalisationNet", "Registration", "SpatialTransformer")


class LocalisationNet(nn.Module):
  """A small ready-made localisation network: two strided convs, pooling, a dense layer.

  ``conv1`` (5x5, stride 2) -> ReLU -> ``conv2`` (3x3, stride 2) -> ReLU -> average pooling
  onto a ``pool_size`` grid -> flatten -> ``dense`` -> ReLU, as
  :class:`stn_jax.nnx.LocalisationNet`. Input channels and size are inferred. ``ndim=3``
  is the volumetric form for ``(N, D, H, W, C)`` input (3-D convolutions and pooling).

  Attributes:
    features: width of the output.
    channels: output channels of the two convolutions.
    pool_size: ``(ph, pw)`` grid of the adaptive average pooling (``(pd, ph, pw)`` for
      volumes); ``(1, 1)`` is global average pooling (translation invariant, so a poor
      localiser). Default: 4 per axis.
    ndim: 2 for images, 3 for volumes.

  >>> import jax, jax.numpy as jnp
  >>> net = LocalisationNet(features=8)
  >>> x = jnp.ones((2, 42, 42, 1), jnp.float32)
  >>> params = net.init(jax.random.key(0), x)
  >>> net.apply(params, x).shape
  (2, 8)
  >>> volumes = LocalisationNet(features=8, ndim=3)
  >>> x = jnp.ones((2, 9, 10, 11, 1), jnp.float32)
  >>> volumes.apply(volumes.init(jax.random.key(0), x), x).shape
  (2, 8)
  """

  features: int = 32
  channels: Sequence[int] = (16, 32)
  pool_size: Sequence[int] | None = None
  ndim: int = 2

  @nn.compact
  def __call__(self, x: ArrayLike) -> jax.Array:
    """Features of ``x``.

    Args:
      x: ``(N, H, W, C)`` channels-last images (or one ``(H, W, C)`` image); volumes
        ``(N, D, H, W, C)``.

    Returns:
      ``(N, features)`` (or ``(features,)``).
    """
    c1, c2 = self.channels
    pool_size = modules.check_pool_size(self.pool_size, self.ndim)
    (k1, k2), s = modules.conv_kernel_sizes(self.ndim), modules.CONV_STRIDES
    x = nn.relu(nn.Conv(c1, k1, strides=s, name="conv1")(x))
    x = nn.relu(nn.Conv(c2, k2, strides=s, name="conv2")(x))
    x = modules.adaptive_avg_pool(x, pool_size)
    flat = x.reshape(x.shape[: x.ndim - len(pool_size) - 1] + (-1,))
    return nn.relu(nn.Dense(self.features, name="dense")(flat))


class SpatialTransformer(nn.Module):
  """A spatial transformer (Jaderberg et al. 2015): localise, then warp.

  ``localisation`` maps the input to features, a dense regression head ``head`` maps
  those to ``theta`` and :func:`stn_jax.warp` samples the input on ``theta``'s grid. The
  head starts at the identity transform (zero kernel, bias = flattened
  :func:`stn_jax.identity_theta`). Same behaviour as :class:`stn_jax.nnx.SpatialTransformer`.

  Volumes: a 3-D ``output_shape`` ``(Do, Ho, Wo)`` (or 3-D TPS ``control_points``) makes a
  volumetric transformer for ``(N, D, H, W, C)`` input with the 3-D ``theta``.

  Convention:
    Channels-last images ``(N, H, W, C)``. ``theta`` is the core's: it maps normalised
    output coordinates ``(x, y)`` in ``[-1, 1]`` (x along the width) to the input point
    read there, as in :func:`stn_jax.make_grid`. Volumes: ``(N, D, H, W, C)`` and
    ``(x, y, z)`` with z along the depth.

  Attributes:
    localisation: any module mapping ``(N, H, W, C)`` to ``(N, features)`` (volumes:
      ``(N, D, H, W, C)``, e.g. ``LocalisationNet(ndim=3)``).
    transform: ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    output_shape: ``(Ho, Wo)`` of the output; default: the sampled input's ``(H, W)``.
      ``(Do, Ho, Wo)`` for volumes (required for them: it fixes ``theta``'s shape).
    kernel: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or a :class:`stn_jax.Kernel`.
    padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
    align_corners: PyTorch's meaning, used for both the grid and the sampling.
    control_points: ``(K, 2)`` TPS sources (default: the 4x4 lattice); concrete.
    antialias: low-pass filter the input to each output pixel's footprint before reading
      it (:func:`stn_jax.sample`'s ``antialias``), so that a zooming-out transformer does
      not alias; where it zooms in the output equals ``antialias=False``'s.

  >>> import jax, jax.numpy as jnp
  >>> stn = SpatialTransformer(LocalisationNet(features=8), transform="attention")
  >>> x = jnp.ones((2, 28, 28, 1), jnp.float32)
  >>> params = stn.init(jax.random.key(0), x)
  >>> V, theta = stn.apply(params, x)
  >>> V.shape, theta
  ((2, 28, 28, 1), Array([[1., 0., 0.],
                          [1., 0., 0.]], dtype=float32))
  >>> volumetric = SpatialTransformer(LocalisationNet(features=8, ndim=3), output_shape=(4, 5, 6))
  >>> x = jnp.ones((2, 8, 10, 12, 1), jnp.float32)
  >>> V, theta = volumetric.apply(volumetric.init(jax.random.key(0), x), x)
  >>> V.shape, theta.shape
  ((2, 4, 5, 6, 1), (2, 3, 4))
  """

  localisation: nn.Module
  transform: str = "affine"
  output_shape: Sequence[int] | None = None
  kernel: "str | kernels_lib.Kernel" = "bilinear"
  padding_mode: str = "zeros"
  align_corners: bool = False
  control_points: Any = None
  antialias: bool = False

  def __post_init__(self):
    # Fail at construction, as the NNX module does, not at the first call; the call uses
    # the options checked here (checking them again at every trace would repeat the work).
    object.__setattr__(self, "_options", self._checked_options())
    super().__post_init__()

  def _checked_options(self) -> modules.Options:
    return modules.check_options(
      self.transform,
      self.output_shape,
      self.kernel,
      self.padding_mode,
      self.align_corners,
      self.control_points,
      self.antialias,
    )

  @nn.compact
  def __call__(
    self, x: ArrayLike, *, sample_from: ArrayLike | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Localises on ``x`` and warps ``sample_from`` (default ``x``).

    Args:
      x: ``(N, H, W, C)`` input of the localisation network (volumes: ``(N, D, H, W, C)``).
      sample_from: ``(N, H', W', C')`` image to warp, e.g. the full-resolution original
        when ``x`` is a downscaled view of it.

    Returns:
      ``(V, theta)``: ``V`` is ``(N, Ho, Wo, C')`` with ``(Ho, Wo)`` = ``output_shape`` or
      the sampled image's ``(H', W')`` (volumes: ``(N, Do, Ho, Wo, C')``); ``theta`` is
      ``(N,)`` plus the transform's shape.
    """
    options = self._options
    features = self.localisation(x)
    modules.check_features(features, None)
    head = nn.Dense(
      options.theta_size,
      kernel_init=nn.initializers.zeros_init(),
      bias_init=modules.identity_bias_init(options),
      name="head",
    )
    source = x if sample_from is None else sample_from
    return modules.warp_from_head(head(features), source, options)


class FieldNet(nn.Module):
  """A small ready-made registration backbone, as :class:`stn_jax.nnx.FieldNet`.

  ``conv1`` -> ReLU -> ``conv2`` (stride 2) -> ReLU -> ``conv3`` -> ReLU; input channels
  and the number of spatial dims are inferred (``x.ndim - 2``).

  Attributes:
    channels: output channels of the three convolutions.

  >>> import jax, jax.numpy as jnp
  >>> x = jnp.ones((1, 28, 28, 2), jnp.float32)
  >>> params = FieldNet().init(jax.random.key(0), x)
  >>> FieldNet().apply(params, x).shape
  (1, 14, 14, 32)
  """

  channels: Sequence[int] = (16, 32, 32)

  @nn.compact
  def __call__(self, x: ArrayLike) -> jax.Array:
    """Features ``(N, *S / 2, channels[-1])`` of ``x`` ``(N, *S, C)``."""
    x = jnp.asarray(x)
    k = (registration.FIELD_NET_KERNEL,) * (x.ndim - 2)
    for i, (c, s) in enumerate(zip(self.channels, registration.FIELD_NET_STRIDES, strict=True)):
      x = nn.relu(nn.Conv(c, k, strides=s, name=f"conv{i + 1}")(x))
    return x


class Registration(nn.Module):
  """Learned deformable registration, as :class:`stn_jax.nnx.Registration`.

  ``backbone`` maps the channel-concatenated (moving, fixed) pair to features, the zero-
  initialised convolutional ``head`` maps them to a velocity (integrated with ``steps``
  squarings) or, with ``steps=0``, a displacement; the field is resized to the moving
  image's size (values rescaled) and warps the moving image. Starts at the identity.

  Convention:
    Channels-last ``(N, *S, C)`` images; the field ``(N, *S, d)`` holds ``(x, y[, z])`` in
    pixels of the moving image, pull (:func:`stn_jax.fields.displacement_to_grid`).

  Attributes:
    backbone: any module mapping ``(N, *S, 2 C)`` to ``(N, *s, features)``.
    spatial_dims: 2 or 3.
    steps: squarings of the velocity; 0: the head predicts a displacement.
    kernel: how the moving image is sampled, as in :func:`stn_jax.sample`.
    padding_mode: as in :func:`stn_jax.sample`; default ``"border"``.
    align_corners: PyTorch's meaning.
    antialias: read the moving image low-pass filtered where the field compresses it
      (:func:`stn_jax.fields.warp`'s ``antialias``).

  >>> import jax, jax.numpy as jnp
  >>> reg = Registration(FieldNet())
  >>> x = jnp.ones((3, 28, 28, 1), jnp.float32)
  >>> params = reg.init(jax.random.key(0), x, x)
  >>> warped, field = reg.apply(params, x, x)
  >>> warped.shape, field.shape, float(abs(field).max())
  ((3, 28, 28, 1), (3, 28, 28, 2), 0.0)
  """

  backbone: nn.Module
  spatial_dims: int = 2
  steps: int = 7
  kernel: "str | kernels_lib.Kernel" = "bilinear"
  padding_mode: str = "border"
  align_corners: bool = False
  antialias: bool = False

  def __post_init__(self):
    # Fail at construction, as the NNX module does; the call uses the checked options.
    object.__setattr__(self, "_options", self._checked_options())
    super().__post_init__()

  def _checked_options(self) -> registration.Options:
    return registration.check_options(
      self.spatial_dims,
      self.steps,
      self.kernel,
      self.padding_mode,
      self.align_corners,
      self.antialias,
    )

  @nn.compact
  def __call__(self, moving: ArrayLike, fixed: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Registers ``moving`` to ``fixed``.

    Args:
      moving: ``(N, *S, C)`` image to warp.
      fixed: ``(N, *S, C)`` target.

    Returns:
      ``(warped, disp)`` as in :class:`stn_jax.nnx.Registration`.
    """
    options = self._options
    moving, fixed = registration.check_pair(moving, fixed, options.spatial_dims)
    features = self.backbone(jnp.concatenate([moving, fixed], axis=-1))
    head = nn.Conv(
      options.spatial_dims,
      (registration.HEAD_KERNEL,) * options.spatial_dims,
      kernel_init=nn.initializers.zeros_init(),
      bias_init=nn.initializers.zeros_init(),
      name="head",
    )
    return registration.field_and_warp(head(features), moving, options)

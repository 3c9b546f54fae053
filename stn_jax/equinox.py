"""Spatial transformer modules for Equinox.

The same transformer as :mod:`stn_jax.nnx` and :mod:`stn_jax.linen` (the same options,
the same localisation net, the head at the identity transform) as ``eqx.Module`` pytrees:
differentiate with ``eqx.filter_grad``, jit with ``eqx.filter_jit`` or ``jax.jit``, batch
with ``jax.vmap``. As Equinox's own layers, the modules compute one example
``(H, W, C)`` at a time; called on ``(N, H, W, C)`` (any leading dims) they vmap
themselves, so ``st(images)`` and ``jax.vmap(st)(images)`` agree.

Needs the ``equinox`` extra: ``pip install "stn_jax[equinox]"``.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stn_jax._src import kernels as kernels_lib
from stn_jax._src import modules, validation

__all__ = ("LocalisationNet", "SpatialTransformer")


def _over_leading_dims(fn: Callable[..., Any], n: int) -> Callable[..., Any]:
  for _ in range(n):
    fn = jax.vmap(fn)
  return fn


class LocalisationNet(eqx.Module):
  """A small ready-made localisation network: two strided convs, pooling, a dense layer.

  ``conv1`` (5x5, stride 2) -> ReLU -> ``conv2`` (3x3, stride 2) -> ReLU -> average pooling
  onto a ``pool_size`` grid -> flatten -> ``dense`` -> ReLU, as
  :class:`stn_jax.nnx.LocalisationNet` (``"SAME"`` padding; the pooled map is flattened
  in ``(ph, pw, C)`` order, as there).

  Args:
    in_features: channels ``C`` of the input.
    features: width of the output (the feature vector the regression head reads).
    channels: output channels of the two convolutions.
    pool_size: ``(ph, pw)`` grid of the adaptive average pooling; ``(1, 1)`` is global
      average pooling.
    key: a ``jax.random`` key for the initialisers.

  Attributes:
    features: width of the output, to pass on to :class:`SpatialTransformer`.

  >>> import jax, jax.numpy as jnp
  >>> net = LocalisationNet(1, features=8, key=jax.random.key(0))
  >>> net(jnp.ones((28, 28, 1))).shape, net(jnp.ones((2, 28, 28, 1))).shape
  ((8,), (2, 8))
  """

  conv1: eqx.nn.Conv2d
  conv2: eqx.nn.Conv2d
  dense: eqx.nn.Linear
  features: int = eqx.field(static=True)
  pool_size: tuple[int, int] = eqx.field(static=True)

  def __init__(
    self,
    in_features: int,
    *,
    features: int = 32,
    channels: Sequence[int] = (16, 32),
    pool_size: Sequence[int] = (4, 4),
    key: jax.Array,
  ):
    c1, c2 = channels
    self.features = features
    self.pool_size = validation.check_pool_size(pool_size)
    (k1, k2), s = modules.CONV_KERNEL_SIZES, modules.CONV_STRIDES
    key1, key2, key3 = jax.random.split(key, 3)
    # float32 parameters whatever jax_enable_x64 says, as the Flax modules'.
    f32 = jnp.float32
    self.conv1 = eqx.nn.Conv2d(in_features, c1, k1, s, padding="SAME", dtype=f32, key=key1)
    self.conv2 = eqx.nn.Conv2d(c1, c2, k2, s, padding="SAME", dtype=f32, key=key2)
    pooled = c2 * self.pool_size[0] * self.pool_size[1]
    self.dense = eqx.nn.Linear(pooled, features, dtype=f32, key=key3)

  def __call__(self, x: ArrayLike, *, key: jax.Array | None = None) -> jax.Array:
    """Features of ``x``.

    Args:
      x: one ``(H, W, C)`` channels-last image, or ``(..., H, W, C)``.
      key: unused (Equinox's layer signature).

    Returns:
      ``(features,)``, or ``(..., features)``.
    """
    del key
    x = jnp.asarray(x)
    if x.ndim < 3:
      raise ValueError(f"expected channels-last images (..., H, W, C); got shape {x.shape}.")
    return _over_leading_dims(self._one, x.ndim - 3)(x)

  def _one(self, x: jax.Array) -> jax.Array:
    # Equinox convolutions are channels-first and need the input in their weights' dtype.
    h = jnp.moveaxis(x, -1, 0).astype(self.conv1.weight.dtype)
    h = jax.nn.relu(self.conv1(h))
    h = jax.nn.relu(self.conv2(h))
    h = modules.adaptive_avg_pool(jnp.moveaxis(h, 0, -1), self.pool_size)
    return jax.nn.relu(self.dense(h.reshape(-1)))


class SpatialTransformer(eqx.Module):
  """A spatial transformer (Jaderberg et al. 2015): localise, then warp.

  ``localisation`` maps the input to features, a linear regression head ``head`` maps
  those to ``theta`` and :func:`stn_jax.warp` samples the input on ``theta``'s grid. The
  head starts at the identity transform (zero weight, bias = flattened
  :func:`stn_jax.identity_theta`), so at initialisation the module passes its input
  through unchanged. Same behaviour as :class:`stn_jax.nnx.SpatialTransformer`.

  Convention:
    Channels-last images ``(H, W, C)``, or ``(..., H, W, C)``. ``theta`` is the core's:
    it maps normalised output coordinates ``(x, y)`` in ``[-1, 1]`` (x along the width)
    to the input point read there, as in :func:`stn_jax.make_grid`.

  Args:
    localisation: a callable (usually an ``eqx.Module``) mapping one ``(H, W, C)`` image
      to ``(features,)``; the transformer vmaps it over leading dims.
    features: width of the localisation output.
    transform: ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    output_shape: ``(Ho, Wo)`` of the output; default: the sampled input's ``(H, W)``.
      Smaller than the input gives the paper's downsampling transformer.
    kernel: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or a :class:`stn_jax.Kernel`.
    padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
    align_corners: PyTorch's meaning, used for both the grid and the sampling.
    control_points: ``(K, 2)`` TPS sources (default: the 4x4 lattice); concrete.
    antialias: low-pass filter the input to each output pixel's footprint before reading
      it (:func:`stn_jax.sample`'s ``antialias``), so that a zooming-out transformer does
      not alias; where it zooms in the output equals ``antialias=False``'s.
    key: a ``jax.random`` key (the identity head draws nothing from it; Equinox layers
      take one).

  >>> import jax, jax.numpy as jnp
  >>> key = jax.random.key(0)
  >>> st = SpatialTransformer(LocalisationNet(1, features=8, key=key), 8, key=key)
  >>> V, theta = st(jnp.ones((2, 28, 28, 1)))
  >>> V.shape, theta.shape
  ((2, 28, 28, 1), (2, 2, 3))
  >>> theta[0]
  Array([[1., 0., 0.],
         [0., 1., 0.]], dtype=float32)
  """

  localisation: Callable[..., jax.Array]
  head: eqx.nn.Linear
  features: int = eqx.field(static=True)
  options: modules.Options = eqx.field(static=True)

  def __init__(
    self,
    localisation: Callable[..., jax.Array],
    features: int,
    *,
    transform: str = "affine",
    output_shape: Sequence[int] | None = None,
    kernel: "str | kernels_lib.Kernel" = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    control_points: ArrayLike | None = None,
    antialias: bool = False,
    key: jax.Array,
  ):
    self.options = modules.check_options(
      transform, output_shape, kernel, padding_mode, align_corners, control_points, antialias
    )
    self.features = features
    self.localisation = localisation
    head = eqx.nn.Linear(features, self.options.theta_size, dtype=jnp.float32, key=key)
    identity = modules.identity_theta(self.options, head.bias.dtype).reshape(-1)
    self.head = eqx.tree_at(
      lambda h: (h.weight, h.bias), head, (jnp.zeros_like(head.weight), identity)
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
    key: jax.Array,
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
      key: a ``jax.random`` key.

    Returns:
      A :class:`SpatialTransformer` at the identity transform.

    >>> import jax, jax.numpy as jnp
    >>> st = SpatialTransformer.with_localisation_net(
    ...     3, transform="attention", output_shape=(16, 16), key=jax.random.key(0))
    >>> V, theta = st(jnp.ones((4, 60, 60, 3)))
    >>> V.shape, theta.shape
    ((4, 16, 16, 3), (4, 3))
    """
    loc_key, head_key = jax.random.split(key)
    return cls(
      LocalisationNet(in_features, features=features, key=loc_key),
      features,
      transform=transform,
      output_shape=output_shape,
      kernel=kernel,
      padding_mode=padding_mode,
      align_corners=align_corners,
      control_points=control_points,
      antialias=antialias,
      key=head_key,
    )

  @property
  def transform(self) -> str:
    """The transform family, e.g. ``"affine"``."""
    return self.options.transform

  @property
  def theta_shape(self) -> tuple[int, ...]:
    """Trailing shape of ``theta``: ``(2, 3)``, ``(3,)``, ``(3, 3)`` or ``(K, 2)``."""
    return self.options.theta_shape

  def __call__(
    self,
    x: ArrayLike,
    *,
    sample_from: ArrayLike | None = None,
    key: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """Localises on ``x`` and warps ``sample_from`` (default ``x``).

    Args:
      x: ``(H, W, C)`` input of the localisation network, or ``(..., H, W, C)``.
      sample_from: ``(H', W', C')`` image to warp (with ``x``'s leading dims), e.g. the
        full-resolution original when ``x`` is a downscaled view of it.
      key: unused (Equinox's layer signature).

    Returns:
      ``(V, theta)``: ``V`` is ``(..., Ho, Wo, C')`` with ``(Ho, Wo)`` = ``output_shape``
      or the sampled image's ``(H', W')``; ``theta`` is ``(...,) + theta_shape``.
    """
    del key
    x = jnp.asarray(x)
    source = x if sample_from is None else jnp.asarray(sample_from)
    if x.ndim < 3:
      raise ValueError(f"expected channels-last images (..., H, W, C); got shape {x.shape}.")
    lead = x.shape[:-3]
    if source.ndim < 3 or source.shape[:-3] != lead:
      raise ValueError(
        f"sample_from must have the same leading (batch) dims as the localised input: "
        f"expected {lead + ('H', 'W', 'C')}; got {source.shape}."
      )
    return _over_leading_dims(self._one, len(lead))(x, source)

  def _one(self, x: jax.Array, source: jax.Array) -> tuple[jax.Array, jax.Array]:
    features = self.localisation(x)
    modules.check_features(features, self.features)
    return modules.warp_from_head(self.head(features), source, self.options)

"""The classifiers of the training example: a CNN or an FCN, alone or behind a transformer."""

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import ArrayLike

from stn_jax import nnx as stn_nnx

MODELS = ("cnn", "st-cnn", "fcn", "st-fcn")

# The transformer's output: the paper's ST-CNN classifies a 28x28 view whatever the input.
ST_OUTPUT_SHAPE = (28, 28)


def conv_as_matmul(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: lax.ConvDimensionNumbers | None = None,
  feature_group_count: int = 1,
  precision: lax.PrecisionLike = None,
  preferred_element_type: jnp.dtype | None = None,
  **_,
) -> jax.Array:
  """``lax.conv_general_dilated`` for channels-last input as strided slices and one matmul.

  A drop-in for :class:`flax.nnx.Conv`'s ``conv_general_dilated`` argument: the same
  parameters and the same function, computed as im2col. Each kernel tap is a strided slice
  of the padded input; the taps are concatenated along the channels and multiplied by the
  kernel reshaped to ``(taps * C_in, C_out)``. XLA:CPU runs that one large matmul (and its
  transposes in the backward pass) faster than its small convolutions: the demo CNN's
  forward + backward on 128 42x42 digits took 0.67-0.71x the time of ``nnx.Conv``'s, its
  whole train step 0.71x; the ST-CNN's step (its CNN on 28x28 views) 0.99x
  (``benchmarks/bench_demo_time.py``). ``lax.conv_general_dilated_patches`` is not used:
  it extracts the patches with a convolution of its own, 5-7x slower here.

  Args:
    lhs: ``(N, *spatial, C_in)`` input.
    rhs: ``(*kernel, C_in, C_out)`` kernel.
    window_strides: stride per spatial axis.
    padding: ``"SAME"``, ``"VALID"`` or ``(low, high)`` per spatial axis.
    lhs_dilation: must be ``None`` or all ones.
    rhs_dilation: must be ``None`` or all ones.
    dimension_numbers: must be channels-last (``NHWC``, ``HWIO``, ``NHWC`` and their
      1-D / 3-D forms), as :class:`flax.nnx.Conv` passes.
    feature_group_count: must be 1.
    precision: of the matmul.
    preferred_element_type: of the matmul's output.

  Returns:
    ``(N, *out_spatial, C_out)``, equal to ``lax.conv_general_dilated``'s to round-off.

  Raises:
    ValueError: dilation, feature groups or a layout other than channels-last.

  >>> x, k = jnp.ones((2, 5, 5, 3), jnp.float32), jnp.ones((3, 3, 3, 4), jnp.float32)
  >>> conv_as_matmul(x, k, (2, 2), "SAME")[0, :, :, 0]
  Array([[12., 18., 12.],
         [18., 27., 18.],
         [12., 18., 12.]], dtype=float32)
  """
  ones = (1,) * (lhs.ndim - 2)
  if (tuple(lhs_dilation or ones), tuple(rhs_dilation or ones), feature_group_count) != (
    ones,
    ones,
    1,
  ):
    raise ValueError("conv_as_matmul supports no dilation and no feature groups.")
  # nnx.Conv passes channels-last numbers; spatial dims are then in order for all three.
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  last = lhs.ndim - 1
  if dimension_numbers is not None and (
    dims.lhs_spec[:2] != (0, last)
    or dims.rhs_spec[:2] != (last, last - 1)
    or dims.out_spec != dims.lhs_spec
  ):
    raise ValueError(f"conv_as_matmul needs channels-last layouts; got {dimension_numbers}.")
  spatial, window = lhs.shape[1:-1], rhs.shape[:-2]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(spatial, window, window_strides, padding)
  x = jnp.pad(lhs, [(0, 0), *padding, (0, 0)])
  n, c = x.shape[0], x.shape[-1]
  out = [(m - k) // s + 1 for m, k, s in zip(x.shape[1:-1], window, window_strides, strict=True)]
  span = [(m - 1) * s + 1 for m, s in zip(out, window_strides, strict=True)]
  taps = [
    lax.slice(
      x, (0, *offset, 0), (n, *map(sum, zip(offset, span, strict=True)), c), (1, *window_strides, 1)
    )
    for offset in itertools.product(*map(range, window))
  ]
  # Tap-major, channel-minor: the order of the kernel's (*window, C_in) axes flattened.
  patches = jnp.concatenate(taps, axis=-1)
  return lax.dot_general(
    patches,
    rhs.reshape(-1, rhs.shape[-1]),
    (((patches.ndim - 1,), (0,)), ((), ())),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


class CNN(nnx.Module):
  """3x3 convolutions (all but the first strided by 2), a hidden dense layer and the logits.

  Strided convolutions rather than max-pooling: max-pool's backward pass is several times
  slower on CPU and buys nothing here. The convolutions are :class:`flax.nnx.Conv` layers
  (same parameters, same function) computed by :func:`conv_as_matmul`, faster on CPU.
  The default four convolutions (three stride-2
  stages) cut the RTS test error of three from 2.70% to 1.73% (same learning rate and
  weight decay, 1200 steps) at about 10% more time per step: the dense layer then reads a
  coarser map, so it has less position-specific weighting to learn.

  Args:
    input_shape: ``(H, W)`` of the images (the dense layer's width depends on it).
    in_features: channels of the images.
    num_classes: number of logits.
    channels: output channels of each convolution (at least one).
    hidden: width of the hidden dense layer.
    rngs: NNX random streams.

  >>> import jax.numpy as jnp
  >>> CNN((28, 28), rngs=nnx.Rngs(0))(jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
  >>> CNN((42, 42), channels=(16, 32, 32), rngs=nnx.Rngs(0)).dense.in_features  # 11 * 11 * 32
  3872
  """

  def __init__(
    self,
    input_shape: Sequence[int],
    *,
    in_features: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32, 64, 64),
    hidden: int = 128,
    rngs: nnx.Rngs,
  ):
    if not channels:
      raise ValueError("channels must name at least one convolution; got ().")
    h, w = input_shape
    inputs = (in_features, *channels[:-1])
    self.convs = nnx.List(
      [
        nnx.Conv(
          c_in,
          c_out,
          (3, 3),
          strides=1 if i == 0 else 2,
          conv_general_dilated=conv_as_matmul,
          rngs=rngs,
        )
        for i, (c_in, c_out) in enumerate(zip(inputs, channels, strict=True))
      ]
    )
    # Each stride-2 "SAME" convolution maps a side n to ceil(n / 2).
    for _ in channels[1:]:
      h, w = math.ceil(h / 2), math.ceil(w / 2)
    self.dense = nnx.Linear(h * w * channels[-1], hidden, rngs=rngs)
    self.logits = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: ArrayLike) -> jax.Array:
    """``(N, H, W, C)`` images to ``(N, num_classes)`` logits."""
    for conv in self.convs:
      x = nnx.relu(conv(x))
    x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
    return self.logits(x)


class FCN(nnx.Module):
  """The paper's fully connected baseline: two hidden dense layers and the logits, ReLU.

  The default widths keep the parameter count near the :class:`CNN`'s on the same input,
  as the paper's baselines are matched: FCN / CNN parameters are 176,714 / 192,714 on
  28x28, 364,874 / 356,554 on 42x42 and 717,386 / 585,930 on 60x60 (the FCN grows by 192
  weights per input pixel, the CNN's dense layer by 128). An ``"st-"`` model adds its
  transformer's 21,670 (affine) to 22,528 (TPS) to the 28x28 classifier, whatever the
  input size.

  Args:
    input_shape: ``(H, W)`` of the images (the first layer's width depends on it).
    in_features: channels of the images.
    num_classes: number of logits.
    hidden: widths of the two hidden layers.
    rngs: NNX random streams.

  >>> import jax.numpy as jnp
  >>> FCN((28, 28), rngs=nnx.Rngs(0))(jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
  """

  def __init__(
    self,
    input_shape: Sequence[int],
    *,
    in_features: int = 1,
    num_classes: int = 10,
    hidden: Sequence[int] = (192, 128),
    rngs: nnx.Rngs,
  ):
    h1, h2 = hidden
    h, w = input_shape
    self.dense1 = nnx.Linear(h * w * in_features, h1, rngs=rngs)
    self.dense2 = nnx.Linear(h1, h2, rngs=rngs)
    self.logits = nnx.Linear(h2, num_classes, rngs=rngs)

  def __call__(self, x: ArrayLike) -> jax.Array:
    """``(N, H, W, C)`` images to ``(N, num_classes)`` logits."""
    x = nnx.relu(self.dense1(x.reshape(x.shape[0], -1)))
    x = nnx.relu(self.dense2(x))
    return self.logits(x)


class Classifier(nnx.Module):
  """A :class:`CNN` or :class:`FCN` on the input, or (``"st-"``) behind a spatial transformer.

  ``"cnn"`` and ``"fcn"`` classify the input. ``"st-cnn"`` and ``"st-fcn"`` localise on the
  full input and sample a :data:`ST_OUTPUT_SHAPE` view, the paper's downsampling
  transformer (42x42 in, 28x28 out for RTS), so their classifier is the one a 28x28 input
  gets; both use the same transformer.

  Args:
    input_shape: ``(H, W)`` of the images.
    model: one of :data:`MODELS`.
    transform: the transformer's family (``"st-"`` models only).
    st_output_shape: ``(Ho, Wo)`` the transformer samples (``"st-"`` models only); smaller
      than the digit's extent in the input makes it zoom out.
    antialias: the transformer samples with ``antialias=True`` (``"st-"`` models only).
    rngs: NNX random streams.

  Attributes:
    stn: the :class:`stn_jax.nnx.SpatialTransformer` (``"st-"`` models), else ``None``.
    cnn: the :class:`CNN` (``"cnn"``, ``"st-cnn"``), else ``None``.
    fcn: the :class:`FCN` (``"fcn"``, ``"st-fcn"``), else ``None``.

  >>> import jax.numpy as jnp
  >>> net = Classifier((42, 42), model="st-cnn", rngs=nnx.Rngs(0))
  >>> logits, V = net(jnp.zeros((2, 42, 42, 1)))
  >>> logits.shape, V.shape
  ((2, 10), (2, 28, 28, 1))
  >>> Classifier((42, 42), model="st-fcn", rngs=nnx.Rngs(0)).fcn.dense1.in_features
  784
  """

  def __init__(
    self,
    input_shape: Sequence[int],
    *,
    model: str = "cnn",
    transform: str = "affine",
    st_output_shape: Sequence[int] = ST_OUTPUT_SHAPE,
    antialias: bool = False,
    rngs: nnx.Rngs,
  ):
    if model not in MODELS:
      raise ValueError(f"unknown model {model!r}; expected one of {MODELS}.")
    if antialias and not model.startswith("st-"):
      raise ValueError(f"antialias applies to the transformer of an 'st-' model; got {model!r}.")
    if model.startswith("st-"):
      localisation = stn_nnx.LocalisationNet(1, features=32, rngs=rngs)
      shape = tuple(st_output_shape)
      self.stn = stn_nnx.SpatialTransformer(
        localisation,
        32,
        transform=transform,
        output_shape=shape,
        antialias=antialias,
        rngs=rngs,
      )
    else:
      self.stn = None
      shape = tuple(input_shape)
    # Separate attributes (not one "classifier"), so that a parameter's path names its
    # family: ``cnn/...`` or ``fcn/...``.
    is_cnn = model.removeprefix("st-") == "cnn"
    self.cnn = CNN(shape, rngs=rngs) if is_cnn else None
    self.fcn = None if is_cnn else FCN(shape, rngs=rngs)

  def __call__(self, x: ArrayLike) -> tuple[jax.Array, jax.Array | None]:
    """``(N, H, W, 1)`` images to ``(logits, V)``; ``V`` is the transformer's output or None."""
    net = self.cnn if self.fcn is None else self.fcn
    if self.stn is None:
      return net(x), None
    V, _ = self.stn(x)
    return net(V), V

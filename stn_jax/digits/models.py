"""The classifiers of the training example: a CNN or an FCN, alone or behind a transformer."""

import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.typing import ArrayLike

from stn_jax import nnx as stn_nnx

MODELS = ("cnn", "st-cnn", "fcn", "st-fcn")

# The transformer's output: the paper's ST-CNN classifies a 28x28 view whatever the input.
ST_OUTPUT_SHAPE = (28, 28)


class CNN(nnx.Module):
  """3x3 convolutions (all but the first strided by 2), a hidden dense layer and the logits.

  Strided convolutions rather than max-pooling: max-pool's backward pass is several times
  slower on CPU and buys nothing here. The default four convolutions (three stride-2
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
        nnx.Conv(c_in, c_out, (3, 3), strides=1 if i == 0 else 2, rngs=rngs)
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

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
  """Three 3x3 convolutions (the last two strided), a hidden dense layer and the logits.

  Strided convolutions rather than max-pooling: max-pool's backward pass is several times
  slower on CPU and buys nothing here.

  Args:
    input_shape: ``(H, W)`` of the images (the dense layer's width depends on it).
    in_features: channels of the images.
    num_classes: number of logits.
    channels: output channels of the three convolutions.
    hidden: width of the hidden dense layer.
    rngs: NNX random streams.

  >>> import jax.numpy as jnp
  >>> CNN((28, 28), rngs=nnx.Rngs(0))(jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
  """

  def __init__(
    self,
    input_shape: Sequence[int],
    *,
    in_features: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32, 32),
    hidden: int = 128,
    rngs: nnx.Rngs,
  ):
    c1, c2, c3 = channels
    h, w = input_shape
    self.conv1 = nnx.Conv(in_features, c1, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), strides=2, rngs=rngs)
    self.conv3 = nnx.Conv(c2, c3, (3, 3), strides=2, rngs=rngs)
    # Two stride-2 "SAME" convolutions: ceil(ceil(h / 2) / 2) == ceil(h / 4).
    side_h, side_w = math.ceil(h / 4), math.ceil(w / 4)
    self.dense = nnx.Linear(side_h * side_w * c3, hidden, rngs=rngs)
    self.logits = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: ArrayLike) -> jax.Array:
    """``(N, H, W, C)`` images to ``(N, num_classes)`` logits."""
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.conv3(x))
    x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
    return self.logits(x)


class FCN(nnx.Module):
  """The paper's fully connected baseline: two hidden dense layers and the logits, ReLU.

  Three weight layers, as the paper's classifiers have. The default widths match the
  :class:`CNN`'s parameter count on the same input, because both grow by about 256
  weights per input pixel (the CNN's dense layer reads ``H/4 * W/4 * 32`` features into
  128 units): FCN / CNN parameters are 235,146 / 216,170 on 28x28, 486,026 / 511,082 on
  42x42 and 956,042 / 937,066 on 60x60. An ``"st-"`` model adds its transformer's
  21,670 (affine) to 22,528 (TPS) to the 28x28 classifier, whatever the input size.

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
    hidden: Sequence[int] = (256, 128),
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
    rngs: nnx.Rngs,
  ):
    if model not in MODELS:
      raise ValueError(f"unknown model {model!r}; expected one of {MODELS}.")
    if model.startswith("st-"):
      localisation = stn_nnx.LocalisationNet(1, features=32, rngs=rngs)
      self.stn = stn_nnx.SpatialTransformer(
        localisation, 32, transform=transform, output_shape=ST_OUTPUT_SHAPE, rngs=rngs
      )
      shape = ST_OUTPUT_SHAPE
    else:
      self.stn = None
      shape = tuple(input_shape)
    # Separate attributes (not one "classifier") keep the CNN's parameter paths, and so
    # its checkpoints, as they were before the FCN existed.
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

"""The classifiers of the training example: a plain CNN and the same CNN behind a transformer."""

import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.typing import ArrayLike

from stn_jax import nnx as stn_nnx

MODELS = ("cnn", "st-cnn")

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


class Classifier(nnx.Module):
  """``"cnn"``: the CNN on the input; ``"st-cnn"``: a spatial transformer, then the CNN.

  The ST-CNN localises on the full input and samples a :data:`ST_OUTPUT_SHAPE` view, the
  paper's downsampling transformer (42x42 in, 28x28 out for RTS), so its CNN is the one
  a 28x28 input gets.

  Args:
    input_shape: ``(H, W)`` of the images.
    model: ``"cnn"`` or ``"st-cnn"``.
    transform: the transformer's family (``"st-cnn"`` only).
    rngs: NNX random streams.

  Attributes:
    stn: the :class:`stn_jax.nnx.SpatialTransformer` (``"st-cnn"``), else ``None``.
    cnn: the :class:`CNN`.

  >>> import jax.numpy as jnp
  >>> net = Classifier((42, 42), model="st-cnn", rngs=nnx.Rngs(0))
  >>> logits, V = net(jnp.zeros((2, 42, 42, 1)))
  >>> logits.shape, V.shape
  ((2, 10), (2, 28, 28, 1))
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
    if model == "st-cnn":
      localisation = stn_nnx.LocalisationNet(1, features=32, rngs=rngs)
      self.stn = stn_nnx.SpatialTransformer(
        localisation, 32, transform=transform, output_shape=ST_OUTPUT_SHAPE, rngs=rngs
      )
      self.cnn = CNN(ST_OUTPUT_SHAPE, rngs=rngs)
    else:
      self.stn = None
      self.cnn = CNN(tuple(input_shape), rngs=rngs)

  def __call__(self, x: ArrayLike) -> tuple[jax.Array, jax.Array | None]:
    """``(N, H, W, 1)`` images to ``(logits, V)``; ``V`` is the transformer's output or None."""
    if self.stn is None:
      return self.cnn(x), None
    V, _ = self.stn(x)
    return self.cnn(V), V

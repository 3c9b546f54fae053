"""Distorted-digit datasets from the STN paper, generated with stn_jax itself.

The digits that ship are scikit-learn's 1797 bundled 8x8 digits (no download), upscaled
with :func:`stn_jax.sample`'s bicubic kernel to a 20x20 digit centred in a 28x28 frame,
as MNIST digits are. Real MNIST loads from local IDX files with :func:`load_mnist_idx`.

Distortions (Jaderberg et al. 2015, section 4.1), each drawn per example from a
``jax.random`` key, so a dataset is a pure function of its seed:

* ``"r"``: rotation by U(-90, 90) degrees; 28x28.
* ``"rts"``: rotation U(-45, 45) degrees, scale U(0.7, 1.2) and a random translation that
  keeps the digit inside a 42x42 canvas.
* ``"p"``: projective: scale U(0.75, 1.0), then the four corners moved by Gaussian noise;
  28x28.
* ``"e"``: elastic: scale U(0.75, 1.0), then the 16 control-point targets of a thin plate
  spline jittered by Gaussian noise; 28x28.
* ``"tc"``: the 28x28 digit at a random integer offset in a 60x60 canvas, plus six 6x6
  pieces of clutter cropped from random digits of the same pool.

>>> (train_x, train_y), (test_x, test_y) = load_digits()
>>> train_x.shape, test_x.shape
((1497, 28, 28, 1), (300, 28, 28, 1))
>>> images, labels = make_dataset("rts", "test", seed=0, copies=2)
>>> images.shape, images.dtype, labels.shape
((600, 42, 42, 1), dtype('float32'), (600,))
"""

import functools
import gzip
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stn_jax import default_control_points, make_grid, sample, warp

TASKS = ("r", "rts", "p", "e", "tc")
SPLITS = ("train", "test")

# The (H, W) of each task's images.
IMAGE_SHAPES = {"r": (28, 28), "rts": (42, 42), "p": (28, 28), "e": (28, 28), "tc": (60, 60)}

# 300 of the 1797 bundled digits (30 per class) are held out for testing, drawn once from
# a fixed seed. Not the last 300 by index: the bundled digits appear to be grouped by
# writer, and the tail reads unlike the rest (an RBF SVM on the clean 8x8 digits errs 5.3%
# there against 1.0% on a random 300), so the test error would measure a few writers'
# hands rather than the distortions.
NUM_TEST_DIGITS = 300
_SPLIT_SEED = 0

_DIGIT = 28  # side of a base digit image
_CLUTTER_PIECES = 6
_CLUTTER_SIZE = 6

MNIST_FILES = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}.")


@functools.cache
def _upscaled_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits as sk_load_digits

  bunch = sk_load_digits()
  small = jnp.asarray(bunch.images[..., None] / 16.0, jnp.float32)
  # Read the 8x8 digit so that it fills the central 20x20 of a 28x28 frame (MNIST's layout).
  theta = jnp.array([1.4, 0.0, 0.0], jnp.float32)
  grid = make_grid(theta, (_DIGIT, _DIGIT), "attention")
  # Jitted: op-by-op dispatch of the vmapped sampler over 1797 digits takes seconds.
  big = jnp.clip(jax.jit(lambda u, g: sample(u, g, "bicubic"))(small, grid), 0.0, 1.0)
  return np.asarray(big, np.float32), np.asarray(bunch.target, np.int32)


def load_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """scikit-learn's bundled digits, upscaled to 28x28 and split into train and test.

  The test split is :data:`NUM_TEST_DIGITS` digits (the same number of each class) drawn
  once from a fixed seed; no test digit (nor any distortion of one) is seen in training.
  Both splits keep the bundled order.

  Returns:
    ``((train_images, train_labels), (test_images, test_labels))``: images ``(N, 28, 28,
    1)`` float32 in ``[0, 1]``, labels ``(N,)`` int32.
  """
  images, labels = _upscaled_sklearn_digits()
  test = _test_indices(labels)
  train = np.setdiff1d(np.arange(len(labels)), test)
  return (images[train], labels[train]), (images[test], labels[test])


def _test_indices(labels: np.ndarray) -> np.ndarray:
  """Sorted indices of the test digits: ``NUM_TEST_DIGITS / 10`` of each class."""
  rng = np.random.default_rng(_SPLIT_SEED)
  per_class = NUM_TEST_DIGITS // 10
  picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]
  return np.sort(np.concatenate(picks))


def _read_idx(path: str, expected_magic: int, expected_rank: int) -> np.ndarray:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4:
    raise ValueError(f"{path} is not an IDX file: expected a 4-byte header; got {len(data)} bytes.")
  magic = struct.unpack(">I", data[:4])[0]
  if magic != expected_magic:
    raise ValueError(
      f"{path} is not an IDX{expected_rank} uint8 file: expected magic {expected_magic}; "
      f"got {magic}."
    )
  dims = struct.unpack(f">{expected_rank}I", data[4 : 4 + 4 * expected_rank])
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * expected_rank)
  if body.size != math.prod(dims):
    raise ValueError(
      f"{path}: header says shape {dims} ({math.prod(dims)} values); got {body.size} values."
    )
  return body.reshape(dims)


def _find_idx(data_dir: str, name: str) -> str:
  # Both the official names and the dotted variant some mirrors use, optionally gzipped.
  dotted = name[::-1].replace("-", ".", 1)[::-1]
  for base in (name, dotted):
    for candidate in (base, base + ".gz"):
      path = os.path.join(data_dir, candidate)
      if os.path.isfile(path):
        return path
  raise FileNotFoundError(
    f"MNIST file {name} (or {name}.gz) not found in {data_dir!r}; expected the four IDX "
    f"files {', '.join(MNIST_FILES.values())}."
  )


def find_mnist_files(data_dir: str) -> dict[str, str]:
  """The paths of the four MNIST IDX files in ``data_dir``, keyed as :data:`MNIST_FILES`.

  Each may be named as the official files (``train-images-idx3-ubyte``) or with a dot
  (``train-images.idx3-ubyte``), optionally gzipped.

  Raises:
    FileNotFoundError: ``data_dir`` does not exist or lacks one of the files.
  """
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"MNIST data directory {data_dir!r} does not exist.")
  return {key: _find_idx(data_dir, name) for key, name in MNIST_FILES.items()}


def load_mnist_idx(
  data_dir: str,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Loads MNIST from the four local IDX files (optionally ``.gz``) in ``data_dir``.

  Args:
    data_dir: folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``.

  Returns:
    ``((train_images, train_labels), (test_images, test_labels))``: images ``(N, H, W, 1)``
    float32 in ``[0, 1]``, labels ``(N,)`` int32.

  Raises:
    FileNotFoundError: ``data_dir`` or one of the files is missing.
    ValueError: a file is not a well-formed IDX file, or images and labels disagree.
  """
  paths = find_mnist_files(data_dir)
  out = []
  for split in ("train", "test"):
    images = _read_idx(paths[f"{split}_images"], 2051, 3)
    labels = _read_idx(paths[f"{split}_labels"], 2049, 1)
    if len(images) != len(labels):
      raise ValueError(
        f"MNIST {split} split: expected as many labels as images; got {len(labels)} labels "
        f"for {len(images)} images."
      )
    out.append(
      ((images[..., None] / np.float32(255.0)).astype(np.float32), labels.astype(np.int32))
    )
  return out[0], out[1]


def _rotation(angle: jax.Array) -> jax.Array:
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])


def _shift_theta(d: jax.Array, in_size: int, out_size: int) -> jax.Array:
  """Affine theta reading input pixel ``i + d`` at output pixel ``i`` (``d = (dx, dy)``).

  Convention: pixel ``i`` of a side of ``n`` pixels sits at normalised ``(2i + 1) / n - 1``
  (``align_corners=False``), so ``q = (n_out / n_in) p + n_out / n_in - 1 + 2 d / n_in``.
  """
  k = out_size / in_size
  offset = (k - 1.0) + 2.0 * d / in_size
  eye = jnp.eye(2, dtype=jnp.float32) * k
  return jnp.concatenate([eye, offset[:, None]], axis=1)


def _homography(src: jax.Array, dst: jax.Array) -> jax.Array:
  """The 3x3 ``H`` (``h33 = 1``) mapping 4 points ``src`` onto ``dst``, both ``(4, 2)``."""
  x, y = src[:, 0], src[:, 1]
  u, v = dst[:, 0], dst[:, 1]
  zero, one = jnp.zeros_like(x), jnp.ones_like(x)
  rows_u = jnp.stack([x, y, one, zero, zero, zero, -x * u, -y * u], axis=1)
  rows_v = jnp.stack([zero, zero, zero, x, y, one, -x * v, -y * v], axis=1)
  a = jnp.concatenate([rows_u, rows_v], axis=0)
  b = jnp.concatenate([u, v], axis=0)
  h = jnp.linalg.solve(a, b)
  return jnp.concatenate([h, jnp.ones((1,), h.dtype)]).reshape(3, 3)


def _distort_one(task: str, key: jax.Array, digit: jax.Array, pool: jax.Array) -> jax.Array:
  """One ``(28, 28, 1)`` digit to one distorted image of ``IMAGE_SHAPES[task]``."""
  f32 = jnp.float32
  if task == "r":
    angle = jax.random.uniform(key, (), f32, -0.5 * jnp.pi, 0.5 * jnp.pi)
    theta = jnp.concatenate([_rotation(angle), jnp.zeros((2, 1), f32)], axis=1)
    return warp(digit, theta)
  if task == "rts":
    k_angle, k_scale, k_shift = jax.random.split(key, 3)
    angle = jax.random.uniform(k_angle, (), f32, -0.25 * jnp.pi, 0.25 * jnp.pi)
    scale = jax.random.uniform(k_scale, (), f32, 0.7, 1.2)
    out = IMAGE_SHAPES["rts"][0]
    # The digit's ink spans about 20 px, so a radius of 12 * scale keeps it in the canvas.
    reach = out / 2 - 12.0 * scale
    shift = jax.random.uniform(k_shift, (2,), f32, -1.0, 1.0) * reach * (2.0 / out)
    # Pull: output point p reads input q = (out / in) / scale * R(-angle) (p - shift).
    a = (out / _DIGIT) / scale * _rotation(-angle)
    theta = jnp.concatenate([a, -jnp.matmul(a, shift[:, None])], axis=1)
    return warp(digit, theta, shape=(out, out))
  if task == "p":
    k_scale, k_noise = jax.random.split(key)
    scale = jax.random.uniform(k_scale, (), f32, 0.75, 1.0)
    corners = jnp.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], f32)
    noise = jnp.clip(0.2 * jax.random.normal(k_noise, (4, 2), f32), -0.4, 0.4)
    return warp(digit, _homography(corners, corners / scale + noise), "projective")
  if task == "e":
    k_scale, k_noise = jax.random.split(key)
    scale = jax.random.uniform(k_scale, (), f32, 0.75, 1.0)
    sources = jnp.asarray(default_control_points(), f32)
    noise = jnp.clip(0.12 * jax.random.normal(k_noise, (16, 2), f32), -0.3, 0.3)
    return warp(digit, sources / scale + noise, "tps")
  # "tc": integer offsets so that the bilinear sampler copies pixels exactly.
  out = IMAGE_SHAPES["tc"][0]
  k_place, k_which, k_crop, k_where = jax.random.split(key, 4)
  place = jax.random.randint(k_place, (2,), 0, out - _DIGIT + 1, jnp.int32).astype(f32)
  canvas = warp(digit, _shift_theta(-place, _DIGIT, out), shape=(out, out))
  which = jax.random.randint(k_which, (_CLUTTER_PIECES,), 0, pool.shape[0], jnp.int32)
  # Crops from the digit's central 20x20, where the ink is.
  crop = jax.random.randint(k_crop, (_CLUTTER_PIECES, 2), 4, 24 - _CLUTTER_SIZE + 1, jnp.int32)
  where = jax.random.randint(k_where, (_CLUTTER_PIECES, 2), 0, out - _CLUTTER_SIZE + 1, jnp.int32)
  ramp = jnp.arange(_DIGIT)

  def piece(index: jax.Array, c: jax.Array, w: jax.Array) -> jax.Array:
    rows = (ramp >= c[1]) & (ramp < c[1] + _CLUTTER_SIZE)
    cols = (ramp >= c[0]) & (ramp < c[0] + _CLUTTER_SIZE)
    box = (rows[:, None] & cols[None, :]).astype(f32)[:, :, None]
    theta = _shift_theta((c - w).astype(f32), _DIGIT, out)
    return warp(pool[index] * box, theta, shape=(out, out))

  clutter = jax.vmap(piece)(which, crop, where)
  return jnp.maximum(canvas, jnp.max(clutter, axis=0))


@functools.partial(jax.jit, static_argnames="task")
def distort(
  task: str, key: jax.Array, digits: ArrayLike, *, pool: ArrayLike | None = None
) -> jax.Array:
  """Distorts a batch of 28x28 digits for ``task``, one random draw per digit.

  Convention:
    As :func:`stn_jax.warp`: channels-last, normalised coordinates with
    ``align_corners=False``; the distortion's ``theta`` pulls (each output pixel reads
    the digit at ``theta(p)``).

  Args:
    task: one of :data:`TASKS`.
    key: a ``jax.random`` key; the output is a pure function of it and the digits.
    digits: ``(N, 28, 28, 1)`` images in ``[0, 1]``.
    pool: ``(M, 28, 28, 1)`` digits that ``"tc"`` crops its clutter from (default
      ``digits``); ignored by the other tasks.

  Returns:
    ``(N, H, W, 1)`` float32 in ``[0, 1]`` with ``(H, W) = IMAGE_SHAPES[task]``.

  >>> digits = jnp.zeros((3, 28, 28, 1))
  >>> distort("tc", jax.random.key(0), digits).shape
  (3, 60, 60, 1)
  """
  _check_task(task)
  digits = jnp.asarray(digits, jnp.float32)
  if digits.ndim != 4 or digits.shape[1:] != (_DIGIT, _DIGIT, 1):
    raise ValueError(f"digits must have shape (N, 28, 28, 1); got {digits.shape}.")
  pool = digits if pool is None else jnp.asarray(pool, jnp.float32)
  keys = jax.random.split(key, digits.shape[0])
  images = jax.vmap(lambda k, d: _distort_one(task, k, d, pool))(keys, digits)
  return jnp.clip(images, 0.0, 1.0)


def make_dataset(
  task: str,
  split: str,
  *,
  seed: int = 0,
  copies: int = 1,
  data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """A fixed distorted dataset: every digit of ``split``, ``copies`` distortions each.

  Args:
    task: one of :data:`TASKS`.
    split: ``"train"`` or ``"test"``; test digits are held out from training (see
      :func:`load_digits`).
    seed: the dataset is a pure function of ``(task, split, seed, copies, data_dir)``.
    copies: distortions per digit; several keep the test error from being coarse.
    data_dir: local MNIST IDX files (:func:`load_mnist_idx`) instead of the bundled digits.

  Returns:
    ``(images, labels)``: ``(N * copies, H, W, 1)`` float32, ``(N * copies,)`` int32.
  """
  _check_task(task)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
  if copies < 1:
    raise ValueError(f"copies must be >= 1; got {copies}.")
  train, test = load_digits() if data_dir is None else load_mnist_idx(data_dir)
  digits, labels = train if split == "train" else test
  key = jax.random.fold_in(jax.random.key(seed), SPLITS.index(split))
  chunks = []
  # In chunks so that memory stays bounded for MNIST-sized inputs.
  for c in range(copies):
    for start in range(0, len(digits), 4096):
      chunk_key = jax.random.fold_in(jax.random.fold_in(key, c), start)
      part = digits[start : start + 4096]
      chunks.append(np.asarray(distort(task, chunk_key, part, pool=digits)))
  return np.concatenate(chunks), np.tile(labels, copies)

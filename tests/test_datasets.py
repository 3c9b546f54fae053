"""Distorted-digit datasets: shapes, ranges, determinism, held-out split, the IDX loader."""

import gzip
import struct

import jax
import numpy as np
import pytest

from stn_jax.digits import datasets


@pytest.fixture(scope="module")
def digits():
  (train_x, train_y), (test_x, test_y) = datasets.load_digits()
  return train_x, train_y, test_x, test_y


def test_load_digits_split_and_range(digits):
  train_x, train_y, test_x, test_y = digits
  assert train_x.shape == (1497, 28, 28, 1) and test_x.shape == (300, 28, 28, 1)
  assert train_x.dtype == np.float32 and train_y.dtype == np.int32
  assert train_x.min() >= 0.0 and train_x.max() <= 1.0
  assert set(np.unique(test_y)) == set(range(10))
  # Held out: 30 of each class; the two splits partition the 1797 bundled digits.
  from sklearn.datasets import load_digits

  assert np.array_equal(np.bincount(test_y), np.full(10, 30))
  test_index = datasets._test_indices(load_digits().target)
  assert len(np.unique(test_index)) == 300
  full, full_labels = datasets._upscaled_sklearn_digits()
  assert np.array_equal(test_x, full[test_index])
  assert np.array_equal(test_y, full_labels[test_index])
  assert np.array_equal(train_x, np.delete(full, test_index, axis=0))
  # Not the tail by index (ordered by writer): the split reaches across the whole set.
  assert test_index.min() < 100 and test_index.max() > 1697
  # The upscaled digit stays inside MNIST's central 20x20 box (bicubic leaves a faint halo).
  assert train_x[:, :3].max() < 0.05 and train_x[:, :, -3:].max() < 0.05


@pytest.mark.parametrize("task", datasets.TASKS)
def test_distort_shapes_ranges_determinism(digits, task):
  batch = digits[0][:6]
  a = datasets.distort(task, jax.random.key(1), batch)
  b = datasets.distort(task, jax.random.key(1), batch)
  c = datasets.distort(task, jax.random.key(2), batch)
  assert a.shape == (6, *datasets.IMAGE_SHAPES[task], 1) and a.dtype == np.float32
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  assert np.array_equal(a, b)
  assert not np.allclose(a, c)
  # Every distortion keeps most of the digit's ink visible.
  assert np.all(np.asarray(a).sum(axis=(1, 2, 3)) > 0.3 * batch.sum(axis=(1, 2, 3)))


def test_tc_places_the_digit_exactly(digits):
  # Integer offsets: with blank clutter the canvas holds an exact copy of the digit.
  batch = digits[0][:4]
  out = np.asarray(datasets.distort("tc", jax.random.key(0), batch, pool=np.zeros_like(batch)))
  np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), batch.sum(axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(np.sort(out.ravel())[-50:], np.sort(batch.ravel())[-50:], atol=1e-5)


def test_make_dataset_deterministic_per_seed():
  a, la = datasets.make_dataset("r", "test", seed=3, copies=2)
  b, lb = datasets.make_dataset("r", "test", seed=3, copies=2)
  c, _ = datasets.make_dataset("r", "test", seed=4, copies=2)
  assert a.shape == (600, 28, 28, 1) and la.shape == (600,)
  assert np.array_equal(a, b) and np.array_equal(la, lb)
  assert not np.allclose(a, c)
  # The copies are different distortions of the same digits.
  assert np.array_equal(la[:300], la[300:]) and not np.allclose(a[:300], a[300:])


@pytest.mark.parametrize(
  ("call", "message"),
  [
    (lambda: datasets.make_dataset("xyz", "test"), "unknown task 'xyz'; expected one of"),
    (lambda: datasets.make_dataset("r", "val"), "unknown split 'val'"),
    (lambda: datasets.make_dataset("r", "test", copies=0), "copies must be >= 1; got 0"),
    (lambda: datasets.distort("r", jax.random.key(0), np.zeros((2, 8, 8, 1))), r"\(N, 28, 28, 1\)"),
  ],
)
def test_bad_arguments(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def _write_idx(path, array, gz=False):
  header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if gz else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx(tmp_path, rng, gz):
  suffix = ".gz" if gz else ""
  train = rng.integers(0, 256, (5, 28, 28))
  test = rng.integers(0, 256, (3, 28, 28))
  _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train, gz)
  _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(5), gz)
  _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test, gz)
  _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(3), gz)
  (tx, ty), (sx, sy) = datasets.load_mnist_idx(str(tmp_path))
  assert tx.shape == (5, 28, 28, 1) and sx.shape == (3, 28, 28, 1)
  assert tx.dtype == np.float32 and ty.dtype == np.int32
  np.testing.assert_allclose(tx[..., 0], train / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(sy, np.arange(3))


def test_load_mnist_idx_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    datasets.load_mnist_idx(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    datasets.load_mnist_idx(str(tmp_path))
  _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4)))
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">I", 2051))
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 4, 4)))
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2))
  with pytest.raises(ValueError, match="expected magic 2049; got 2051"):
    datasets.load_mnist_idx(str(tmp_path))

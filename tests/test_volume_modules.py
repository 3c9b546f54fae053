"""Volumetric spatial transformers: NNX and Linen on ``(N, D, H, W, C)`` input.

Identity at initialisation for every transform, gradients that reach the localisation net,
jit and vmap, the volumetric localisation net on any input size, and clear errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import stn_jax
from stn_jax import linen as stn_linen
from stn_jax import nnx as stn_nnx
from stn_jax._src import modules

THETA_SHAPES = {"affine": (3, 4), "attention": (4,), "projective": (4, 4), "tps": (64, 3)}
# float32 identity warps round the grid's voxel centres at ~1e-7 relative; the TPS grid is a
# 64-term matmul, so it rounds more.
IDENTITY_ATOL = {"affine": 1e-6, "attention": 1e-6, "projective": 1e-6, "tps": 5e-5}


def volumes(n=2, shape=(5, 6, 7), channels=2, seed=0):
  x = np.random.default_rng(seed).uniform(size=(n, *shape, channels))
  return jnp.asarray(x, jnp.float32)


@pytest.fixture(scope="module")
def loc():
  return stn_nnx.LocalisationNet(2, features=8, channels=(4, 8), ndim=3, rngs=nnx.Rngs(0))


@nnx.jit
def call(model, x):
  return model(x)


@pytest.mark.parametrize("transform", ["affine", "attention", "projective", "tps"])
def test_nnx_identity_at_init(loc, transform):
  x = volumes()
  stn = stn_nnx.SpatialTransformer(
    loc, 8, transform=transform, output_shape=(5, 6, 7), rngs=nnx.Rngs(0)
  )
  V, theta = call(stn, x)
  assert stn.theta_shape == THETA_SHAPES[transform]
  assert theta.shape == (2,) + THETA_SHAPES[transform]
  identity = stn_jax.identity_theta(transform, ndim=3)
  np.testing.assert_array_equal(theta, jnp.broadcast_to(identity, theta.shape))
  assert V.shape == x.shape and V.dtype == jnp.float32
  np.testing.assert_allclose(V, x, rtol=0, atol=IDENTITY_ATOL[transform])


def test_nnx_downsampling_and_gradients_reach_the_localisation_net(loc):
  x = volumes(seed=1)
  stn = stn_nnx.SpatialTransformer(loc, 8, output_shape=(3, 4, 4), rngs=nnx.Rngs(0))
  kernel = stn.head.kernel
  noise = np.random.default_rng(0).normal(scale=0.05, size=kernel.shape)
  kernel[...] = jnp.asarray(noise, jnp.float32)
  V, theta = call(stn, x)
  assert V.shape == (2, 3, 4, 4, 2)
  np.testing.assert_allclose(V, stn_jax.warp(x, theta, shape=(3, 4, 4)), rtol=0, atol=1e-6)

  def loss(model):
    V, _ = model(x)
    return jnp.sum(V**2)

  grads = nnx.grad(loss)(stn)
  for name in ("conv1", "conv2", "dense"):
    g = getattr(grads.localisation, name).kernel[...]
    assert float(jnp.abs(g).max()) > 0, name


def test_nnx_vmap_over_examples_equals_the_batch(loc):
  x = volumes(n=3, seed=2)
  stn = stn_nnx.SpatialTransformer(loc, 8, output_shape=(4, 4, 4), rngs=nnx.Rngs(0))
  kernel = stn.head.kernel
  noise = np.random.default_rng(1).normal(scale=0.05, size=kernel.shape)
  kernel[...] = jnp.asarray(noise, jnp.float32)
  V, theta = call(stn, x)
  Vs, thetas = nnx.vmap(lambda m, v: m(v[None]), in_axes=(None, 0))(stn, x)
  np.testing.assert_allclose(Vs[:, 0], V, rtol=0, atol=1e-5)
  np.testing.assert_allclose(thetas[:, 0], theta, rtol=0, atol=1e-6)


def test_with_localisation_net_builds_a_volumetric_net():
  stn = stn_nnx.SpatialTransformer.with_localisation_net(
    1, features=8, transform="attention", output_shape=(2, 3, 4), rngs=nnx.Rngs(0)
  )
  assert stn.localisation.conv1.kernel.shape == (5, 5, 5, 1, 16)
  V, theta = call(stn, volumes(channels=1, shape=(9, 8, 7)))
  assert V.shape == (2, 2, 3, 4, 1) and theta.shape == (2, 4)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 4), (9, 10, 11)])
def test_volumetric_localisation_net_takes_any_size(loc, shape):
  assert loc(volumes(shape=shape)).shape == (2, 8)


def test_adaptive_pooling_of_a_volume_equals_block_means():
  x = np.random.default_rng(0).normal(size=(1, 4, 6, 8, 2))
  pooled = modules.adaptive_avg_pool(jnp.asarray(x), (2, 3, 4))
  expected = x.reshape(1, 2, 2, 3, 2, 4, 2, 2).mean(axis=(2, 4, 6))
  np.testing.assert_allclose(pooled, expected, rtol=1e-12, atol=1e-12)


def test_linen_identity_at_init_and_gradients():
  x = volumes()
  stn = stn_linen.SpatialTransformer(
    stn_linen.LocalisationNet(features=8, channels=(4, 8), ndim=3), output_shape=(5, 6, 7)
  )
  params = stn.init(jax.random.key(0), x)
  V, theta = jax.jit(stn.apply)(params, x)
  assert theta.shape == (2, 3, 4)
  np.testing.assert_array_equal(theta, jnp.broadcast_to(jnp.eye(3, 4), theta.shape))
  np.testing.assert_allclose(V, x, rtol=0, atol=1e-6)
  head = params["params"]["head"]
  head["kernel"] = 0.05 * jax.random.normal(jax.random.key(1), head["kernel"].shape, jnp.float32)

  def loss(p):
    V, _ = stn.apply(p, x)
    return jnp.sum(V**2)

  grads = jax.grad(loss)(params)["params"]["localisation"]
  for name in ("conv1", "conv2", "dense"):
    assert float(jnp.abs(grads[name]["kernel"]).max()) > 0, name


def test_nnx_and_linen_agree_on_the_same_weights():
  x = volumes(seed=3)
  linen_stn = stn_linen.SpatialTransformer(
    stn_linen.LocalisationNet(features=8, channels=(4, 8), ndim=3),
    transform="attention",
    output_shape=(3, 3, 3),
  )
  params = linen_stn.init(jax.random.key(0), x)
  params["params"]["head"]["kernel"] = 0.05 * jax.random.normal(
    jax.random.key(1), params["params"]["head"]["kernel"].shape, jnp.float32
  )
  nnx_stn = stn_nnx.SpatialTransformer(
    stn_nnx.LocalisationNet(2, features=8, channels=(4, 8), ndim=3, rngs=nnx.Rngs(0)),
    8,
    transform="attention",
    output_shape=(3, 3, 3),
    rngs=nnx.Rngs(0),
  )
  p = params["params"]
  for name in ("conv1", "conv2", "dense"):
    layer = getattr(nnx_stn.localisation, name)
    layer.kernel[...] = p["localisation"][name]["kernel"]
    layer.bias[...] = p["localisation"][name]["bias"]
  nnx_stn.head.kernel[...] = p["head"]["kernel"]
  nnx_stn.head.bias[...] = p["head"]["bias"]
  V1, t1 = linen_stn.apply(params, x)
  V2, t2 = call(nnx_stn, x)
  np.testing.assert_allclose(t1, t2, rtol=0, atol=1e-6)
  np.testing.assert_allclose(V1, V2, rtol=0, atol=1e-5)


def test_errors_name_what_was_expected(loc):
  with pytest.raises(ValueError, match=r"output_shape must be .*triple.*got \(2, 3, 4, 5\)"):
    stn_nnx.SpatialTransformer(loc, 8, output_shape=(2, 3, 4, 5), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"pool_size must be a triple"):
    stn_nnx.LocalisationNet(1, pool_size=(4, 4), ndim=3, rngs=nnx.Rngs(0))
  stn = stn_nnx.SpatialTransformer(loc, 8, output_shape=(2, 3, 4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\(\.\.\., D, H, W, C\)"):
    stn(volumes(), sample_from=jnp.ones((2, 5, 6)))
  with pytest.raises(ValueError, match=r"pool_size must be a triple"):
    module = stn_linen.LocalisationNet(features=8, pool_size=(2, 2), ndim=3)
    module.init(jax.random.key(0), volumes())
  assert isinstance(stn_linen.LocalisationNet(ndim=3), nn.Module)

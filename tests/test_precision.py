"""Every contraction asks for full float32 products (``Precision.HIGHEST``).

Under JAX's default precision a GPU may compute a float32 dot in TF32 (a 10-bit mantissa).
On an H200 that put an identity grid's points ~1e-3 off, enough for ``antialias=True`` to
stop seeing an identity warp (``test_antialias.test_float32_identity_is_bitwise`` failed
there). CPUs ignore the precision setting, so on this machine the values cannot show it;
what can be checked anywhere is that every ``dot_general`` in the traced program asks for
HIGHEST, which these tests do on the jaxprs of the public functions that contract.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import stn_jax
from stn_jax import fields
from stn_jax._src import modules


def _dot_precisions(jaxpr) -> list:
  """The ``precision`` of every dot_general in ``jaxpr`` and its sub-jaxprs."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn.params["precision"])
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found.extend(_dot_precisions(sub))
  return found


def _assert_highest(fn, *args):
  precisions = _dot_precisions(jax.make_jaxpr(fn)(*args).jaxpr)
  assert precisions, "the checker found no dot_general: it would pass vacuously"
  highest = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
  assert all(p == highest for p in precisions), precisions


def test_the_checker_can_fail():
  a = jnp.ones((3, 3), jnp.float32)
  with pytest.raises(AssertionError):
    _assert_highest(lambda x: x @ x, a)
  _assert_highest(lambda x: jnp.matmul(x, x, precision="highest"), a)


THETA = jnp.asarray([[1.0, 0.1, 0.0], [-0.1, 0.9, 0.2]], jnp.float32)


@pytest.mark.parametrize("transform", ["affine", "attention", "projective", "tps"])
def test_grids(transform):
  theta = {
    "affine": THETA,
    "attention": jnp.asarray([0.8, 0.1, -0.2], jnp.float32),
    "projective": jnp.concatenate([THETA, jnp.asarray([[0.01, 0.0, 1.0]])]),
    "tps": 0.1 * jnp.ones((16, 2), jnp.float32),  # the default 4x4 control points
  }[transform]
  kw = {}
  _assert_highest(lambda t: stn_jax.make_grid(t, (5, 6), transform=transform, **kw), theta)


def test_compose_and_affine_fields():
  _assert_highest(stn_jax.compose, THETA, THETA)
  _assert_highest(lambda t: fields.affine_to_displacement(t, (5, 6)), THETA)


def test_sampler_tangent(pure_jax):
  # The pure-JAX sampler's tangent for up to 4 taps contracts them with the weights'
  # tangents and, with several channels, with dU (wider kernels scan over the taps).
  u = jnp.asarray(np.random.default_rng(0).random((1, 6, 7, 3)), jnp.float32)
  g = stn_jax.make_grid(THETA[None], (4, 5))

  def loss(u, g):
    return jnp.sum(stn_jax.sample(u, g, "bilinear") ** 2)

  pure_jax(_assert_highest, jax.grad(loss, argnums=(0, 1)), u, g)


def test_adaptive_pool():
  x = jnp.ones((2, 7, 9, 3), jnp.float32)
  _assert_highest(lambda x: modules.adaptive_avg_pool(x, (3, 4)), x)

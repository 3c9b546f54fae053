"""The sampler's custom derivative rule equals plain autodiff of the same sum of taps.

``stn_jax.sample`` combines its taps in ``_combine_taps``, a ``jax.custom_jvp`` whose rule
gathers per tap and skips symbolic-zero tangents. Here the rule is swapped for the
undecorated function (JAX differentiates the gathers itself) and every derivative is
compared: values, jacfwd/jacrev w.r.t. ``U`` and ``grid`` together and apart, a second
derivative, and a traced kernel parameter that the weights close over. These tests run the
gather-based sampler; the compiled bilinear kernels are checked in ``test_native.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOLERANCES

import stn_jax
from stn_jax import kernels
from stn_jax._src import gather

TOL = TOLERANCES[np.dtype(np.float64)]


def _reference(monkeypatch):
  monkeypatch.setattr(gather, "_combine_taps", gather._combine_taps.fun)
  # Traces made with the custom rule must not be reused (jit caches by function object).
  jax.clear_caches()


def _inputs(rng):
  U = jnp.asarray(rng.normal(size=(2, 5, 6, 3)))
  # Spills past the edges so that padded taps are exercised; off the integer lattice.
  grid = jnp.asarray(rng.uniform(-1.3, 1.3, size=(2, 3, 4, 2)))
  return U, grid


def _derivatives(U, grid, kernel, padding_mode):
  def f(u, g):
    return stn_jax.sample(u, g, kernel, padding_mode=padding_mode)

  def loss(g):
    return jnp.sum(jnp.sin(f(U, g)))

  return [
    f(U, grid),
    *jax.jacfwd(f, (0, 1))(U, grid),
    *jax.jacrev(f, (0, 1))(U, grid),
    jax.jacrev(f, 0)(U, grid),
    jax.jacrev(f, 1)(U, grid),
    jax.grad(lambda u: jnp.sum(f(u, grid) ** 2))(U),
    jax.hessian(loss)(grid),
  ]


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
def test_rule_equals_autodiff(rng, monkeypatch, native_off, kernel, padding_mode):
  # Bilinear float32/float64 would otherwise run the compiled kernels (test_native.py).
  U, grid = _inputs(rng)
  fast = _derivatives(U, grid, kernel, padding_mode)
  _reference(monkeypatch)
  ref = _derivatives(U, grid, kernel, padding_mode)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_rule_equals_autodiff_on_volumes(rng, monkeypatch, native_off, padding_mode):
  # Trilinear's 8 taps take the scanned tangent (bilinear's 4 the stacked one).
  U = jnp.asarray(rng.normal(size=(1, 3, 4, 5, 2)))
  grid = jnp.asarray(rng.uniform(-1.3, 1.3, size=(1, 2, 2, 3, 3)))
  fast = _derivatives(U, grid, "bilinear", padding_mode)
  _reference(monkeypatch)
  ref = _derivatives(U, grid, "bilinear", padding_mode)
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, **TOL)


def test_traced_kernel_parameter_gradient_equals_autodiff(rng, monkeypatch, native_off):
  U, grid = _inputs(rng)

  def loss(sigma, g):
    k = kernels.gaussian(sigma, radius=2)
    return jnp.sum(stn_jax.sample(U, g, k) ** 2)

  fast = jax.grad(loss, (0, 1))(0.8, grid)
  _reference(monkeypatch)
  ref = jax.grad(loss, (0, 1))(0.8, grid)
  assert float(jnp.abs(fast[0])) > 0
  for a, b in zip(fast, ref, strict=True):
    np.testing.assert_allclose(a, b, **TOL)


def test_float32_and_bfloat16_tangents_keep_dtypes(rng):
  U, grid = _inputs(rng)
  for dt in (jnp.float32, jnp.bfloat16):
    u, g = U.astype(dt), grid.astype(jnp.float32)
    out, tan = jax.jvp(lambda a, b: stn_jax.sample(a, b), (u, g), (u, g))
    assert out.dtype == tan.dtype == dt


def test_jitted_grad_does_not_retrace(rng):
  traces = []

  @jax.jit
  def f(u, g):
    traces.append(1)
    return jax.grad(lambda a, b: jnp.sum(stn_jax.sample(a, b) ** 2), (0, 1))(u, g)

  for seed in range(3):
    U, grid = _inputs(np.random.default_rng(seed))
    jax.block_until_ready(f(U, grid))
  assert len(traces) == 1

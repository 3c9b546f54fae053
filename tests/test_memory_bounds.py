"""The pure-JAX sampler's gradient needs memory bounded independently of the tap count.

Kernels wider than bilinear run on the gather sampler (user kernels everywhere; every kernel
off the CPU or with ``STN_JAX_NATIVE=0``). Their gradient w.r.t. ``U`` is a scatter of each
tap's contribution; done tap by tap into separate buffers it materialises one image-sized
array per tap (bicubic's 16 on a 16 MiB feature map planned 954 MiB). The bound checked here
is what XLA's buffer assignment plans (``memory_analysis``: exact for the compiled program,
no timing): at most 8 image-sized buffers (``V``, its cotangent, ``dU``, the scan's carry
and per-point weights and indices) whatever the tap count, which per-tap copies exceed
for every case here (8 to 36 taps); and the same plan within 25% for 16 and 36 taps.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax

_CASES = {
  # name: (U shape, kernel, taps in the product)
  "keys(-0.5) 2-D": ((2, 32, 32, 16), stn_jax.kernels.keys_cubic(-0.5), 16),
  "lanczos(2) 2-D": ((2, 32, 32, 16), stn_jax.kernels.lanczos(2), 16),
  "gaussian(1, radius 2) 2-D": ((2, 32, 32, 16), stn_jax.kernels.gaussian(1.0, radius=2), 16),
  "gaussian(1, radius 3) 2-D": ((2, 32, 32, 16), stn_jax.kernels.gaussian(1.0, radius=3), 36),
  "bicubic 2-D, pure JAX": ((2, 32, 32, 16), "bicubic", 16),
  "trilinear, pure JAX": ((1, 16, 16, 16, 8), "bilinear", 8),
}


def _planned_gradient_bytes(shape, kernel) -> int:
  nd = len(shape) - 2
  U = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  theta = np.tile(np.eye(nd, nd + 1), (shape[0], 1, 1)) * 0.9
  grid = stn_jax.make_grid(jnp.asarray(theta, jnp.float32), shape[1:-1])

  def loss(U, grid):  # nonlinear: the backward needs the forward's V too
    return jnp.sum(stn_jax.sample(U, grid, kernel) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(U, grid).compile()
  analysis = compiled.memory_analysis()
  return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


@pytest.mark.parametrize("name", list(_CASES))
def test_gradient_memory_is_a_few_images_whatever_the_taps(name, native_off):
  shape, kernel, taps = _CASES[name]
  images = _planned_gradient_bytes(shape, kernel) / (math.prod(shape) * 4)
  assert images <= 8, f"{name}: the gradient plans {images:.1f} image-sized buffers ({taps} taps)"


def test_gradient_memory_does_not_grow_from_16_to_36_taps(native_off):
  narrow, wide = (_CASES[f"gaussian(1, radius {r}) 2-D"] for r in (2, 3))
  ratio = _planned_gradient_bytes(*wide[:2]) / _planned_gradient_bytes(*narrow[:2])
  assert ratio < 1.25, f"36 taps plan {ratio:.2f}x the memory of 16"

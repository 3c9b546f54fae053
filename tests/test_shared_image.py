"""One image, many grids: ``vmap`` over grids with one unbatched ``U`` never copies ``U``.

The kernels' batching rule folds the grids' batch into the output points instead of
broadcasting ``U`` (``native._batch_shared_image``). Checked here: values and every
derivative equal a Python loop over the grids (``U``'s gradient sums over them), in 2-D
and 3-D, with leading dims and a moved batch axis; and the compiled program holds no
array of ``B`` copies of ``U``, in the forward and in the gradient.
"""

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_close

import stn_jax
from stn_jax._src import native

B = 5


def _inputs(rng, ndim, spatial=(6, 5, 4), out=(4, 3, 3), channels=2):
  U = rng.normal(size=spatial[:ndim] + (channels,))
  grids = rng.uniform(-1.2, 1.2, size=(B,) + out[:ndim] + (ndim,))
  return jnp.asarray(U), jnp.asarray(grids)


def _loss(V):
  return jnp.sum(V**2)  # nonlinear: the gradient needs the forward


@pytest.mark.parametrize("ndim", [2, 3])
def test_vmap_over_grids_equals_the_loop(rng, ndim):
  U, grids = _inputs(rng, ndim)
  batched = jax.vmap(stn_jax.sample, in_axes=(None, 0))
  loop = [stn_jax.sample(U, g) for g in grids]
  assert_close(batched(U, grids), jnp.stack(loop), "forward")
  # Reverse mode through the vmap: U's gradient sums over the grids.
  du, dg = jax.grad(lambda u, g: _loss(batched(u, g)), (0, 1))(U, grids)
  per_grid = [jax.grad(lambda u, g: _loss(stn_jax.sample(u, g)), (0, 1))(U, g) for g in grids]
  assert_close(du, sum(d for d, _ in per_grid), "dU summed over the grids")
  assert_close(dg, jnp.stack([d for _, d in per_grid]), "dgrid")
  # Forward mode, tangents in both arguments.
  tu, tg = jnp.sin(U), jnp.cos(grids)
  dv = jax.jvp(batched, (U, grids), (tu, tg))[1]
  expected = [jax.jvp(stn_jax.sample, (U, g), (tu, t))[1] for g, t in zip(grids, tg, strict=True)]
  assert_close(dv, jnp.stack(expected), "jvp")
  # Gradients per grid (vmap outside grad): dU is one per grid, not summed.
  per_grid_grad = jax.grad(lambda u, g: _loss(stn_jax.sample(u, g)), (0, 1))
  du_each, dg_each = jax.vmap(per_grid_grad, (None, 0))(U, grids)
  assert_close(du_each, jnp.stack([d for d, _ in per_grid]), "dU per grid")
  assert_close(dg_each, jnp.stack([d for _, d in per_grid]), "dgrid per grid")


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobians_in_the_grid_equal_the_pure_jax_sampler(rng, pure_jax, ndim):
  # jacfwd batches the grid tangent alone (U and grid unbatched), jacrev the cotangent:
  # both reach the folding rule with the grid broadcast.
  U, grids = _inputs(rng, ndim, out=(2, 3, 2))
  grid = grids[0]

  def run(u, g):
    f = stn_jax.sample
    return jax.jacfwd(f, (0, 1))(u, g), jax.jacrev(f, (0, 1))(u, g)

  fast, ref = run(U, grid), pure_jax(run, U, grid)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref), strict=True):
    assert_close(a, b, "jacobian")


def test_leading_dims_and_a_moved_batch_axis(rng):
  # The primitive directly, U (N, H, W, C) shared, the grids' batch on axis 2.
  U = jnp.asarray(rng.normal(size=(3, 6, 5, 2)))
  grids = jnp.asarray(rng.uniform(-1.2, 1.2, size=(3, 4, B, 2, 2)))

  def f(u, g):
    return native.sample_linear(u, g, "border", True)

  batched = jax.vmap(f, in_axes=(None, 2))
  assert_close(batched(U, grids), jnp.stack([f(U, grids[:, :, b]) for b in range(B)]), "forward")
  du, dg = jax.grad(lambda u, g: _loss(batched(u, g)), (0, 1))(U, grids)
  per_grid = [jax.grad(lambda u, g: _loss(f(u, g)), (0, 1))(U, grids[:, :, b]) for b in range(B)]
  assert_close(du, sum(d for d, _ in per_grid), "dU")
  assert_close(dg, jnp.stack([d for _, d in per_grid], axis=2), "dgrid")


@pytest.mark.parametrize("path", ["kernels", "pure_jax"])
def test_no_copy_of_the_image_per_grid(path, pure_jax):
  # An image much larger than the outputs, so B copies of it would dominate the memory.
  U = jnp.zeros((40, 36, 5), jnp.float32)
  grids = jnp.zeros((7, 4, 3, 2), jnp.float32)
  copies = "tensor<7x40x36x5xf32>"
  batched = jax.vmap(stn_jax.sample, in_axes=(None, 0))
  grad = jax.grad(lambda u, g: _loss(batched(u, g)), (0, 1))

  def compiled(fn):
    lowered = jax.jit(fn).lower(U, grids)
    return lowered.as_text(), lowered.compile().memory_analysis().temp_size_in_bytes

  # The forward on both paths; the gradient on the kernels' (the pure-JAX backward's
  # per-tap scatters are larger than U for other reasons).
  fns = [batched, grad] if path == "kernels" else [batched]
  run = compiled if path == "kernels" else lambda fn: pure_jax(compiled, fn)
  for fn in fns:
    text, temp = run(fn)
    assert ("StnBilinearFwd" in text) == (path == "kernels")
    assert copies not in text
    assert temp < U.nbytes, f"{temp} bytes of temporaries; U is {U.nbytes}"

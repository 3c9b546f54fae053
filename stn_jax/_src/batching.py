"""Lifting per-example functions to arrays with leading batch dimensions."""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def vmap_leading(
  fn: Callable[..., jax.Array],
  args: Sequence[jax.Array],
  core_ndims: Sequence[int],
  names: Sequence[str],
) -> jax.Array:
  """Applies per-example ``fn`` to ``args`` whose leading dimensions broadcast.

  ``args[i]`` ends in ``core_ndims[i]`` dimensions that ``fn`` consumes; the dimensions
  before them are batch dimensions that broadcast as in NumPy. A missing or size-1 batch
  dimension is shared through ``vmap(in_axes=None)``, never copied. ``fn`` never sees a
  batch axis.
  """
  batch_shapes = [tuple(a.shape[: a.ndim - n]) for a, n in zip(args, core_ndims, strict=True)]
  try:
    batch = jnp.broadcast_shapes(*batch_shapes)
  except ValueError:
    got = ", ".join(f"{n} {s}" for n, s in zip(names, batch_shapes, strict=True))
    raise ValueError(
      f"leading (batch) dimensions must be equal or broadcast; got {got}. "
      "Give the inputs the same leading dimensions, or leave them off one of them."
    ) from None
  padded = [
    a.reshape((1,) * (len(batch) - len(s)) + a.shape)
    for a, s in zip(args, batch_shapes, strict=True)
  ]
  return _apply(fn, padded, len(batch))


def _apply(fn: Callable[..., jax.Array], args: list[jax.Array], depth: int) -> jax.Array:
  if depth == 0:
    return fn(*args)
  in_axes = tuple(0 if a.shape[0] != 1 else None for a in args)
  if all(ax is None for ax in in_axes):
    # A batch of one: vmapped all the same, not squeezed and re-expanded. Re-expanding
    # the result of a custom call (the compiled kernels) costs XLA:CPU a copy of it.
    in_axes = (0,) * len(args)

  def one(*xs: jax.Array) -> jax.Array:
    return _apply(
      fn, [x if ax == 0 else x[0] for x, ax in zip(xs, in_axes, strict=True)], depth - 1
    )

  return jax.vmap(one, in_axes=in_axes)(*args)

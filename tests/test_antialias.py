"""Antialiased sampling: exact where nothing is minified, box-filter accurate where it is."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import stn_jax
from stn_jax._src import sampling

PADDINGS = ("zeros", "border", "reflection")

sample_aa = functools.partial(stn_jax.sample, antialias=True)
# Compiled once per option set: eager dispatch of the many small ops is what costs time.
aa = jax.jit(sample_aa, static_argnames=("kernel", "padding_mode", "align_corners"))


def affine(a, b, c, d, e=0.0, f=0.0):
  return np.array([[a, b, e], [c, d, f]])


def rotation(degrees, scale=1.0):
  r = math.radians(degrees)
  return affine(scale * math.cos(r), -scale * math.sin(r), scale * math.sin(r), scale * math.cos(r))


def grid_of(theta, shape, align_corners=False, dtype=jnp.float64):
  return stn_jax.make_grid(jnp.asarray(theta, dtype), shape, align_corners=align_corners)


def zone_plate(n, fmax=0.45):
  c = (n - 1) / 2
  y, x = np.mgrid[:n, :n] - c
  return (0.5 + 0.5 * np.cos(np.pi * fmax * (x * x + y * y) / math.hypot(c, c)))[..., None]


def numpy_bilinear(u, px, py):
  """Zero-padded bilinear interpolation of (H, W, C) ``u`` at pixel coordinates."""
  h, w, _ = u.shape
  x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
  out = 0.0
  for dy in (0, 1):
    for dx in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      wgt = (1 - np.abs(px - xi)) * (1 - np.abs(py - yi))
      ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      out = (
        out + np.where(ok, wgt, 0.0)[..., None] * u[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
      )
  return out


def box_reference(u, theta, shape, sub=16):
  """Each output pixel: the mean of sub x sub bilinear samples over its square, mapped by the
  affine ``theta`` (align_corners=False), in numpy: the ideal box-filtered warp."""
  h, w, _ = u.shape
  ho, wo = shape
  # Sub-sample centres in normalised output coordinates.
  ys = (2 * (np.arange(ho * sub) + 0.5) / (ho * sub)) - 1
  xs = (2 * (np.arange(wo * sub) + 0.5) / (wo * sub)) - 1
  gx, gy = np.meshgrid(xs, ys)
  nx = theta[0, 0] * gx + theta[0, 1] * gy + theta[0, 2]
  ny = theta[1, 0] * gx + theta[1, 1] * gy + theta[1, 2]
  v = numpy_bilinear(u, ((nx + 1) * w - 1) / 2, ((ny + 1) * h - 1) / 2)
  return v.reshape(ho, sub, wo, sub, -1).mean((1, 3))


@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_identity_and_zoom_in_equal_plain_sample(rng, padding_mode):
  u = jnp.asarray(rng.random((9, 12, 3)))
  # Identity, a zoom-in with shear and translation, a rotation with zoom-in, as one batch of
  # grids: no footprint exceeds one input pixel (|J columns| <= 0.6 * 12 / 9 < 1).
  thetas = np.stack([affine(1, 0, 0, 1), affine(0.5, 0.1, -0.1, 0.6, 0.2, -0.3), rotation(30, 0.6)])

  def loss(f, u, g, align_corners):
    return jnp.sum(f(u, g, padding_mode=padding_mode, align_corners=align_corners) ** 2)

  @jax.jit
  def run(u):
    out = []
    for align_corners in (False, True):
      g = grid_of(thetas, (9, 12), align_corners)
      kw = dict(padding_mode=padding_mode, align_corners=align_corners)
      for f in (sample_aa, stn_jax.sample):
        values = [f(u, g, kernel, **kw) for kernel in ("bilinear", "bicubic", "nearest")]
        grads = jax.grad(loss, argnums=(1, 2))(f, u, g, align_corners)
        out.append((values, grads))
    return out

  out = run(u)
  for (v_aa, d_aa), (v_plain, d_plain) in zip(out[::2], out[1::2], strict=True):
    for a, b in zip(v_aa, v_plain, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Derivatives too: the same function where nothing is minified.
    for a, b in zip(d_aa, d_plain, strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_float32_identity_is_bitwise(rng):
  u = jnp.asarray(rng.random((32, 20, 2)), jnp.float32)
  g = grid_of(affine(1, 0, 0, 1), (32, 20), dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(aa(u, g)), np.asarray(stn_jax.sample(u, g)))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("factor", [4, 8])  # (2 reads level 0 only: plain bilinear)
def test_integer_downsampling_of_a_constant_is_exact(align_corners, factor):
  u = jnp.full((32, 48, 2), 0.7)
  g = grid_of(affine(1, 0, 0, 1), (32 // factor, 48 // factor), align_corners)
  got = np.asarray(aa(u, g, padding_mode="border", align_corners=align_corners))
  np.testing.assert_allclose(got, 0.7, rtol=1e-14)
  if factor == 4:
    # Interior points (footprint inside the image) are exact under every padding.
    for padding_mode in ("zeros", "reflection"):
      got = np.asarray(aa(u, g, padding_mode=padding_mode, align_corners=align_corners))
      np.testing.assert_allclose(got[1:-1, 1:-1], 0.7, rtol=1e-14, err_msg=padding_mode)


@pytest.mark.parametrize("factor", [2, 4])
def test_dyadic_downsampling_is_the_block_mean(rng, factor):
  # Output pixel i covers input pixels [f i, f (i + 1)): its centre is a level-log2(f) texel
  # centre, so the result is the f x f block mean exactly (pins the levels' alignment).
  u = rng.random((16, 24, 3))
  g = grid_of(affine(1, 0, 0, 1), (16 // factor, 24 // factor))
  want = u.reshape(16 // factor, factor, 24 // factor, factor, 3).mean((1, 3))
  np.testing.assert_allclose(np.asarray(aa(jnp.asarray(u), g)), want, rtol=1e-12)


@pytest.mark.parametrize(
  "name, theta, shape, target",
  [
    ("4x isotropic", affine(1, 0, 0, 1), (16, 16), 0.3),
    ("4x by 1x anisotropic", affine(1, 0, 0, 1), (64, 16), 0.5),
    ("rotate 30, 3x", rotation(30), (21, 21), 0.5),
  ],
)
def test_zone_plate_error_against_box_reference(name, theta, shape, target):
  # The targets: RMSE against the supersampled box filter at most `target` times
  # plain bilinear's.
  u = zone_plate(64)
  ref = box_reference(u, theta, shape)
  g = grid_of(theta, shape)
  plain = np.asarray(stn_jax.sample(jnp.asarray(u), g))
  filtered = np.asarray(aa(jnp.asarray(u), g))
  e_plain = np.sqrt(np.mean((plain - ref) ** 2))
  e_aa = np.sqrt(np.mean((filtered - ref) ** 2))
  assert e_aa <= target * e_plain, f"{name}: antialiased {e_aa:.4f} vs bilinear {e_plain:.4f}"


GRADIENT_GRIDS = {
  "isotropic 2.6x": (affine(1.02, 0.03, -0.02, 0.98, 0.01, 0.02), (5, 5)),
  "anisotropic": (affine(0.97, 0.05, 0.02, 0.3, 0.013, 0.021), (9, 4)),
  "rotated 3x": (rotation(31, 0.99), (4, 4)),
}


@pytest.mark.parametrize("name", list(GRADIENT_GRIDS))
def test_check_grads(rng, name):
  theta, shape = GRADIENT_GRIDS[name]
  u = jnp.asarray(rng.random((13, 11, 2)))
  g = grid_of(theta, shape)

  @jax.jit
  def f(u, g):
    return sample_aa(u, g, padding_mode="border")

  check_grads(f, (u, g), order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-5, rtol=1e-5)


def test_theta_gradient_flows_through_the_level(rng):
  # A uniform scale changes nothing but the footprint on a constant-free image's mean
  # level: the theta-gradient is nonzero and matches finite differences.
  u = jnp.asarray(rng.random((16, 16, 1)))

  @jax.jit
  def f(s):
    theta = jnp.array([[1.0, 0.0, 0.01], [0.0, 1.0, 0.02]]) * jnp.array([[s], [s]])
    return jnp.sum(sample_aa(u, stn_jax.make_grid(theta, (5, 5))) ** 2)

  check_grads(f, (jnp.asarray(0.93),), order=1, modes=("fwd", "rev"), eps=1e-6)
  assert abs(float(jax.grad(f)(0.93))) > 0


@pytest.mark.parametrize(
  ("kind", "padding_mode"),
  [
    ("isotropic exact tie", "zeros"),
    ("anisotropic", "reflection"),
    ("degenerate", "zeros"),
    ("nan", "reflection"),
    ("inf", "zeros"),
    ("inf", "reflection"),  # reflection has no position for inf: its own masking
  ],
)
def test_gradients_are_finite(rng, kind, padding_mode):
  u = jnp.asarray(rng.random((12, 12, 2)))
  if kind == "isotropic exact tie":
    g = grid_of(affine(1, 0, 0, 1), (3, 3))
  elif kind == "anisotropic":
    g = grid_of(affine(1, 0, 0, 0.1), (6, 3))
  elif kind == "degenerate":
    g = jnp.full((4, 5, 2), 0.3)
  else:
    g = grid_of(rotation(10), (4, 4))
    g = g.at[1, 2, 0].set(jnp.nan if kind == "nan" else jnp.inf)
    g = g.at[3, 0, 1].set(jnp.nan if kind == "nan" else -jnp.inf)

  def loss(u, g):
    return jnp.sum(sample_aa(u, g, padding_mode=padding_mode) ** 2)

  @jax.jit
  def both(u, g, tu, tg):
    # Reverse mode, and forward mode along a random tangent of every input at once.
    return jax.value_and_grad(loss, argnums=(0, 1))(u, g), jax.jvp(loss, (u, g), (tu, tg))[1]

  tu = jnp.asarray(rng.standard_normal(u.shape))
  tg = jnp.asarray(rng.standard_normal(g.shape))
  (value, (du, dg)), tangent = both(u, g, tu, tg)
  assert np.isfinite(float(value)) and np.isfinite(float(tangent))
  assert np.all(np.isfinite(np.asarray(du))) and np.all(np.isfinite(np.asarray(dg)))


def test_nan_points_read_as_in_sample(rng):
  u = jnp.asarray(rng.random((16, 16, 1)))
  g = grid_of(affine(1, 0, 0, 1), (4, 4)).at[2, 1].set(jnp.nan)
  v = np.asarray(aa(u, g))
  assert v[2, 1, 0] == 0 and np.all(np.isfinite(v))


def test_jit_vmap_and_batch_dims(rng):
  u = jnp.asarray(rng.random((3, 16, 16, 2)))
  thetas = jnp.asarray(np.stack([rotation(10 * i, 1 + 0.2 * i) for i in range(3)]))
  g = stn_jax.make_grid(thetas, (5, 6))
  eager = sample_aa(u, g)
  assert eager.shape == (3, 5, 6, 2) and eager.dtype == u.dtype
  np.testing.assert_allclose(
    np.asarray(jax.jit(sample_aa)(u, g)), np.asarray(eager), rtol=1e-12, atol=1e-12
  )
  loop = np.stack([np.asarray(aa(u[i], g[i])) for i in range(3)])
  np.testing.assert_allclose(
    np.asarray(jax.jit(jax.vmap(sample_aa))(u, g)), loop, rtol=1e-12, atol=1e-12
  )
  np.testing.assert_allclose(np.asarray(eager), loop, rtol=1e-12, atol=1e-12)
  # One grid shared by a batch of images, and (2, 3) leading dims.
  shared = aa(u, g[0])
  np.testing.assert_allclose(
    np.asarray(shared[1]), np.asarray(aa(u[1], g[0])), rtol=1e-12, atol=1e-12
  )
  u23 = jnp.stack([u, u[::-1]])
  assert jax.eval_shape(sample_aa, u23, g).shape == (2, 3, 5, 6, 2)


def test_float32_in_float32_out(rng):
  u = jnp.asarray(rng.random((16, 16, 1)), jnp.float32)
  g = grid_of(affine(1, 0, 0, 1), (4, 4), dtype=jnp.float32)
  assert jax.eval_shape(sample_aa, u, g).dtype == jnp.float32
  assert jax.eval_shape(sample_aa, u.astype(jnp.bfloat16), g).dtype == jnp.bfloat16


def test_bad_input_raises():
  u = jnp.zeros((8, 8, 1))
  g = jnp.zeros((2, 2, 2))
  with pytest.raises(ValueError, match="padding_mode"):
    sample_aa(u, g, padding_mode="wrap")
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match="max_anisotropy"):
      sampling.sample_with_options(u, g, antialias=True, max_anisotropy=bad)
  with pytest.raises(TypeError, match="float"):
    sample_aa(jnp.zeros((8, 8, 1), jnp.int32), g, "nearest")
  with pytest.raises(ValueError, match=r"\(\.\.\., Ho, Wo, 2\)"):
    sample_aa(u, jnp.zeros((2, 2, 3)))
  with pytest.raises(ValueError, match="channels-last"):
    sample_aa(jnp.zeros((8, 8)), g)


# Volumes: the same code with three spatial axes.


def affine3(scale=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0), mix=0.0):
  """A 3-D affine theta ``(3, 4)``: a diagonal scale, a shear ``mix`` between x and y."""
  theta = np.zeros((3, 4))
  theta[:, :3] = np.diag(scale)
  theta[0, 1], theta[1, 0] = mix, -mix
  theta[:, 3] = shift
  return theta


def zone_volume(n, fmax=0.45):
  c = (n - 1) / 2
  z, y, x = np.mgrid[:n, :n, :n] - c
  r2 = x * x + y * y + z * z
  return (0.5 + 0.5 * np.cos(np.pi * fmax * r2 / (math.sqrt(3) * c)))[..., None]


def box_reference_3d(u, theta, shape, sub=6):
  """Each output voxel: the mean of sub**3 trilinear samples (stn_jax.sample, plain) over its
  cube mapped by the affine ``theta``: the ideal box-filtered warp."""
  fine = stn_jax.make_grid(jnp.asarray(theta), tuple(s * sub for s in shape))
  v = np.asarray(stn_jax.sample(jnp.asarray(u), fine))
  d, h, w = shape
  return v.reshape(d, sub, h, sub, w, sub, -1).mean((1, 3, 5))


def test_volume_identity_and_zoom_in_equal_plain_sample(rng):
  u = jnp.asarray(rng.random((6, 7, 8, 2)))
  thetas = jnp.asarray(np.stack([affine3(), affine3((0.6, 0.5, 0.7), (0.1, -0.2, 0.05), 0.1)]))

  def loss(f, u, g):
    return jnp.sum(f(u, g, padding_mode="reflection") ** 2)

  @jax.jit
  def run(u):
    g = stn_jax.make_grid(thetas, (6, 7, 8))
    out = []
    for f in (sample_aa, stn_jax.sample):
      values = [f(u, g, kernel, padding_mode="border") for kernel in ("bilinear", "nearest")]
      out.append((values, jax.grad(loss, argnums=(1, 2))(f, u, g)))
    return out

  (v_aa, d_aa), (v_plain, d_plain) = run(u)
  for a, b in zip(v_aa, v_plain, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(d_aa, d_plain, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_volume_downsampling_of_a_constant_is_exact():
  u = jnp.full((8, 12, 16, 2), 0.7)
  for factor in (2, 4):
    g = stn_jax.make_grid(jnp.asarray(affine3()), (8 // factor, 12 // factor, 16 // factor))
    got = np.asarray(aa(u, g, padding_mode="border"))
    np.testing.assert_allclose(got, 0.7, rtol=1e-14, err_msg=f"factor {factor}")


@pytest.mark.parametrize("factor", [2, 4])
def test_volume_dyadic_downsampling_is_the_block_mean(rng, factor):
  # A 2x2x2 (4x4x4) footprint reads level 1 (2) at its texel centres: the block mean.
  u = rng.random((8, 8, 12, 2))
  shape = (8 // factor, 8 // factor, 12 // factor)
  g = stn_jax.make_grid(jnp.asarray(affine3()), shape)
  want = u.reshape(shape[0], factor, shape[1], factor, shape[2], factor, 2).mean((1, 3, 5))
  np.testing.assert_allclose(np.asarray(aa(jnp.asarray(u), g)), want, rtol=1e-12)


@pytest.mark.parametrize(
  "name, theta, shape, target",
  [
    ("4x isotropic", affine3(), (8, 8, 8), 0.3),
    ("4x by 4x by 1x", affine3(), (8, 8, 32), 0.5),
    (
      "3x, sheared and shifted",
      affine3((1.0, 0.9, 1.0), (0.05, -0.03, 0.02), 0.3),
      (10, 10, 10),
      0.5,
    ),
  ],
)
def test_volume_zone_plate_error_against_box_reference(name, theta, shape, target):
  u = zone_volume(32)
  ref = box_reference_3d(u, theta, shape)
  g = stn_jax.make_grid(jnp.asarray(theta), shape)
  plain = np.asarray(stn_jax.sample(jnp.asarray(u), g))
  filtered = np.asarray(aa(jnp.asarray(u), g))
  e_plain = np.sqrt(np.mean((plain - ref) ** 2))
  e_aa = np.sqrt(np.mean((filtered - ref) ** 2))
  assert e_aa <= target * e_plain, f"{name}: antialiased {e_aa:.4f} vs trilinear {e_plain:.4f}"


def test_volume_check_grads(rng):
  u = jnp.asarray(rng.random((9, 10, 11, 1)))
  g = stn_jax.make_grid(
    jnp.asarray(affine3((1.02, 0.98, 1.01), (0.01, 0.02, -0.013), 0.03)), (4, 4, 4)
  )

  @jax.jit
  def f(u, g):
    return sample_aa(u, g, padding_mode="border")

  check_grads(f, (u, g), order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["degenerate", "nan", "long in depth only"])
def test_volume_gradients_are_finite(rng, kind):
  u = jnp.asarray(rng.random((8, 8, 8, 1)))
  if kind == "degenerate":
    g = jnp.full((3, 3, 3, 3), 0.2)
  elif kind == "long in depth only":
    # 4x along depth, zoom-in across it: the shortest axis does not bound the width.
    g = stn_jax.make_grid(
      jnp.asarray(affine3((0.9, 0.8, 1.0), (0.01, 0.02, 0.0), 0.1)), (2, 16, 16)
    )
  else:
    g = stn_jax.make_grid(jnp.asarray(affine3()), (3, 3, 3)).at[1, 1, 2, 0].set(jnp.nan)

  @jax.jit
  def both(u, g, tg):
    def loss(u, g):
      return jnp.sum(sample_aa(u, g) ** 2)

    return jax.grad(loss, argnums=(0, 1))(u, g), jax.jvp(loss, (u, g), (u, tg))[1]

  (du, dg), tangent = both(u, g, jnp.asarray(rng.standard_normal(g.shape)))
  assert np.isfinite(float(tangent))
  assert np.all(np.isfinite(np.asarray(du))) and np.all(np.isfinite(np.asarray(dg)))


def test_volume_jit_vmap_and_batch_dims(rng):
  u = jnp.asarray(rng.random((2, 8, 8, 8, 1)))
  thetas = jnp.asarray(np.stack([affine3(), affine3((0.9, 1.0, 0.8), (0.1, 0.0, 0.0), 0.2)]))
  g = stn_jax.make_grid(thetas, (3, 4, 2))
  eager = sample_aa(u, g)
  assert eager.shape == (2, 3, 4, 2, 1) and eager.dtype == u.dtype
  loop = np.stack([np.asarray(aa(u[i], g[i])) for i in range(2)])
  np.testing.assert_allclose(np.asarray(jax.jit(sample_aa)(u, g)), loop, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(
    np.asarray(jax.jit(jax.vmap(sample_aa))(u, g)), loop, rtol=1e-12, atol=1e-12
  )
  np.testing.assert_allclose(np.asarray(eager), loop, rtol=1e-12, atol=1e-12)

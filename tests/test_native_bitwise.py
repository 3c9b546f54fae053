"""The float32 2-D forward kernel equals a numpy emulation of its scalar loop bit for bit.

The kernels are compiled twice, for the baseline ISA and for AVX2, and the AVX2 build
takes vector paths (coordinates, weights and masks of eight points in registers, gathers)
where the baseline runs the scalar loop; on CPUs with AVX-512 the one- and three-channel
forward runs sixteen points per step (csrc/bilinear_avx512.cc). All must give the same
bits, whichever build a machine loads. The oracle here is that scalar loop written again in
numpy float32: every operation in the same order, each rounded to float32 as C++ rounds it
(no FMA), so any vector path that reorders, fuses or drops an operation shows up as a
bitwise difference.
"""

import numpy as np
import pytest

import stn_jax
from stn_jax._src import gather, native

F = np.float32


@pytest.fixture(autouse=True)
def _kernels_on():
  if not native.available():
    pytest.skip("the compiled kernels are not built (or STN_JAX_NATIVE=0)")


def _clamp(pos, low, high):
  return np.where(pos <= low, F(low), np.where(pos >= high, F(high), pos))


def _reflect(pos, twice_low, twice_high):
  if twice_low == twice_high:
    return np.zeros_like(pos)
  low, span = F(twice_low / 2), F((twice_high - twice_low) / 2)
  v = np.abs(pos - low)
  extra = np.fmod(v, span)
  even = np.fmod(np.floor(v / span), F(2)) == 0
  return np.where(even, extra + low, span - extra + low)


def _pixel(g, size, padding, align, pixels):
  """PixelCoordinate: normalised (or pixel) coordinate -> padded pixel coordinate."""
  if pixels:
    pos = g
  elif align:
    infinite = (size == 1) & (np.abs(g) == np.inf)
    pos = np.where(infinite, g, (g + F(1)) * F((size - 1) / 2))
  else:
    pos = ((g + F(1)) * F(size) - F(1)) * F(0.5)
  limit = F(gather.COORD_LIMIT)
  pos = _clamp(pos, -limit, limit)
  if padding == "border":
    pos = _clamp(pos, 0, size - 1)
  elif padding == "reflection":
    pos = _reflect(pos, 0, 2 * (size - 1)) if align else _reflect(pos, -1, 2 * size - 1)
    pos = _clamp(pos, 0, size - 1)
  return pos


def _emulate(u, g, padding, align, pixels):
  """One example: ``u`` (H, W, C), ``g`` (Ho, Wo, 2) float32 -> V (Ho, Wo, C)."""
  unreadable = np.isnan(g).any(-1)
  if padding == "reflection":
    unreadable |= np.isinf(g).any(-1)
  g = np.where(unreadable[..., None], F(0), g)
  taps = []
  for axis, size in enumerate((u.shape[1], u.shape[0])):  # x along W, y along H
    pos = _pixel(g[..., axis], size, padding, align, pixels)
    t = np.trunc(pos)
    f = np.where(t > pos, t - F(1), t)
    i = f.astype(np.int32)
    taps.append([(i + s, (i + s >= 0) & (i + s <= size - 1)) for s in (0, 1)])
    taps[-1] = (taps[-1], (f + F(1)) - pos, pos - f)
  (xs, w0x, w1x), (ys, w0y, w1y) = taps

  def value(sy, sx):
    (iy, my), (ix, mx) = ys[sy], xs[sx]
    keep = (my & mx & ~unreadable)[..., None]
    read = u[np.clip(iy, 0, u.shape[0] - 1), np.clip(ix, 0, u.shape[1] - 1)]
    return np.where(keep, read, F(0))

  x0 = value(0, 0) * w0x[..., None] + value(0, 1) * w1x[..., None]
  x1 = value(1, 0) * w0x[..., None] + value(1, 1) * w1x[..., None]
  return x0 * w0y[..., None] + x1 * w1y[..., None]


@pytest.mark.parametrize("pixels", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_equals_the_scalar_loop_bitwise(rng, channels, padding_mode, align_corners, pixels):
  # Rows of 29 points: three groups of eight (the vector paths) and a tail of five.
  u = rng.normal(size=(3, 9, 11, channels)).astype(F)
  g = rng.uniform(-1.4, 1.4, size=(3, 6, 29, 2))
  if pixels:
    g = (g + 1) / 2 * np.array([11, 9]) - 0.5
  g = g.astype(F)
  special = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 2.0**24, 1, -1, 0.5, -0.5], F)
  g[0, 0, :10, 0], g[0, 1, :10, 1], g[0, 2, :10] = special, special, special[:, None]
  u_one = np.ones((1, 1, 1, channels), F)  # one pixel: align_corners' scale is 0
  for uu, gg in ((u, g), (u_one, g[:1])):
    got = np.asarray(native.sample_linear(uu, gg, padding_mode, align_corners, pixels))
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0, as the kernel computes
      want = [
        _emulate(a, b, padding_mode, align_corners, pixels) for a, b in zip(uu, gg, strict=True)
      ]
    want = np.stack(want)
    assert got.dtype == F
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("width", [2, 3, 8])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_row_ends_bitwise(rng, channels, width, padding_mode, align_corners):
  # The one-channel AVX2 forward reads a row's two taps as one pair of floats starting at
  # the first tap clamped to [0, W - 2]: at x0 = W - 1 the kept tap is the pair's high
  # float, at x0 = -1 the low one. The AVX-512 passes read one channel's taps the same way
  # (sixteen points at a time) and mask three channels' gathers at the ends instead. Points swept across each row end and past it, with NaN
  # and inf pixels beside the ends, so a wrong pick or an unmasked neighbour shows.
  u = rng.normal(size=(2, 4, width, channels)).astype(F)
  u[0, 1, 0, 0], u[0, 2, width - 1, -1], u[1, 0, 1, 0] = np.nan, np.inf, -np.inf
  x = np.linspace(-1.6, 1.6, 8 * 13, dtype=np.float64)
  y = np.linspace(-1.3, 1.3, 5, dtype=np.float64)
  g = np.stack(np.broadcast_arrays(x[None, :], y[:, None]), -1)
  g = np.broadcast_to(g, (2, *g.shape)).astype(F)
  got = np.asarray(native.sample_linear(u, g, padding_mode, align_corners, False))
  with np.errstate(invalid="ignore", over="ignore"):
    want = np.stack(
      [_emulate(a, b, padding_mode, align_corners, False) for a, b in zip(u, g, strict=True)]
    )
  np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))

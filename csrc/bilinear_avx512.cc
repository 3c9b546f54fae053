// The float32 bilinear forward and backward passes (dgrid, dU, or both in one sweep) of
// one- and three-channel images for CPUs with AVX-512: sixteen points per step. One
// channel's taps are read as pairs of neighbours in a row (PairTaps16), three channels'
// by masked gathers, so a tap outside the image is never loaded and needs no clipped
// offset. Batches of small images (MNIST-sized, one channel) and RGB images are
// bound by this per-point work, and PyTorch runs its 16-lane build on these CPUs. The
// grid's forward derivative (grid_jvp), and the cases these leave (reflection padding,
// align_corners with a one-pixel axis, float64, other channel counts, volumes), are the
// AVX2 build's (bilinear_passes.inc).
//
// Every operation is the scalar loop's, in the same order, without FMA: the same
// coordinates, floors, weights, masks and sums, so the results are bitwise the baseline
// and AVX2 builds' (tests/test_native_isa.py).
#include "passes.h"

#ifdef STN_HAVE_AVX2
#pragma GCC target("avx2,avx512f")
// GCC 12's AVX-512 headers leave the pass-through operand of some conversions undefined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace stn_native::avx512 {
namespace {

#include "geometry.inc"

// gather._clamp on sixteen lanes (Clamp: the bound at and beyond it), as max then min:
// `pos` is never NaN here, and where it equals a bound either gives the bound. Adds the
// lanes where it holds (a zero derivative there) to `held`; a forward, which never reads
// `held`, leaves the compares out.
inline __m512 Clamp16(__m512 pos, float low, float high, __mmask16& held) {
  const __m512 lo = _mm512_set1_ps(low), hi = _mm512_set1_ps(high);
  held |= _mm512_cmp_ps_mask(pos, lo, _CMP_LE_OQ) | _mm512_cmp_ps_mask(pos, hi, _CMP_GE_OQ);
  return _mm512_min_ps(_mm512_max_ps(pos, lo), hi);
}

// One axis of sixteen points: PixelCoordinate without reflection, then the lower tap's
// index `i`, the weights of the lower and upper tap (Inside16 says which lie inside), and
// the derivative of the pixel coordinate: `slope` (PixelCoordinate's, never 0 in the cases
// this build covers) in the lanes of `moving`, 0 where a clamp holds.
struct Axis16 {
  __m512i i;
  __m512 w0, w1;
  float slope;
  __mmask16 moving;
};

template <int Padding, bool Align>
inline Axis16 AxisTaps16(__m512 g, int64_t size, bool pixels, float limit) {
  const __m512 one = _mm512_set1_ps(1.0f);
  Axis16 a;
  __m512 pos;
  if (pixels) {
    pos = g;
    a.slope = 1.0f;
  } else if (Align) {  // size >= 2 here (Applies)
    const float scale = static_cast<float>(static_cast<double>(size - 1) / 2);
    pos = _mm512_mul_ps(_mm512_add_ps(g, one), _mm512_set1_ps(scale));
    a.slope = scale;
  } else {
    const __m512 s = _mm512_set1_ps(static_cast<float>(size));
    pos = _mm512_mul_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(g, one), s), one),
                        _mm512_set1_ps(0.5f));
    a.slope = static_cast<float>(size) / 2;
  }
  __mmask16 held = 0;
  pos = Clamp16(pos, -limit, limit, held);
  if (Padding == kBorder) pos = Clamp16(pos, 0.0f, static_cast<float>(size - 1), held);
  a.moving = static_cast<__mmask16>(~held);
  // FloorSmall in one rounding (exact for |pos| <= 2**24, the coordinate limit), then its
  // + 0: floor(-0) is +0 (a pixel coordinate of -0 reaches here), as in every build.
  const __m512 f = _mm512_add_ps(
      _mm512_roundscale_ps(pos, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
      _mm512_setzero_ps());
  a.w0 = _mm512_sub_ps(_mm512_add_ps(f, one), pos);
  a.w1 = _mm512_sub_ps(pos, f);
  a.i = _mm512_cvttps_epi32(f);
  return a;
}

// a + b and a * b with `a` as the first source operand. Where both are NaN, x86 returns
// the first source's NaN, so its sign and payload follow the operand order; GCC takes
// these operations as commutative and may swap the operands of _mm512_add_ps, as its
// register allocation suits. The scalar loops put the left term first; so do these, where
// both terms can be NaN (a tap value or a cotangent; the weights never are).
inline __m512 AddInOrder(__m512 a, __m512 b) {
  __m512 r;
  asm("vaddps %2, %1, %0" : "=v"(r) : "v"(a), "v"(b));
  return r;
}

inline __m512 MulInOrder(__m512 a, __m512 b) {
  __m512 r;
  asm("vmulps %2, %1, %0" : "=v"(r) : "v"(a), "v"(b));
  return r;
}

// The lanes of `among` whose tap index `i` lies in [0, last], in one unsigned compare. A
// tap index is within 2**24 + 1 of 0 (the coordinate limit), so the upper tap's `i + 1`
// never wraps.
inline __mmask16 Inside16(__mmask16 among, __m512i i, __m512i last) {
  return _mm512_mask_cmple_epu32_mask(among, i, last);
}

// The first `n` of sixteen lanes (n may be out of [0, 16]: clipped).
inline __mmask16 FirstLanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Interleave3's permutations: output vector q, lane l holds float m = 16 q + l of the
// points' pixels, channel m % 3 of point m / 3. `first` takes channels 0 and 1 from two
// vectors (channel 2's lanes: any), `second` then channel 2 from the third.
struct alignas(64) Interleave3Indices {
  int32_t first[3][16], second[3][16];
};

constexpr Interleave3Indices MakeInterleave3Indices() {
  Interleave3Indices t{};
  for (int q = 0; q < 3; ++q) {
    for (int l = 0; l < 16; ++l) {
      const int m = 16 * q + l, point = m / 3, channel = m % 3;
      t.first[q][l] = channel == 1 ? 16 + point : point;
      t.second[q][l] = channel == 2 ? 16 + point : l;
    }
  }
  return t;
}

constexpr Interleave3Indices kInterleave3 = MakeInterleave3Indices();

// Three channels' values of sixteen points -> the 48 floats of their pixels in memory
// order, in three vectors.
inline void Interleave3(const __m512* v, __m512* out) {
  for (int q = 0; q < 3; ++q) {
    const __m512 t = _mm512_permutex2var_ps(v[0], _mm512_load_si512(kInterleave3.first[q]), v[1]);
    out[q] = _mm512_permutex2var_ps(t, _mm512_load_si512(kInterleave3.second[q]), v[2]);
  }
}

// Deinterleave3's permutations, Interleave3's inverse: lane l of channel k's vector is
// float m = 3 l + k of the 48, taken from the first two vectors (`first`, m < 32), then
// from the third (`second`, m >= 32).
constexpr Interleave3Indices MakeDeinterleave3Indices() {
  Interleave3Indices t{};
  for (int k = 0; k < 3; ++k) {
    for (int l = 0; l < 16; ++l) {
      const int m = 3 * l + k;
      t.first[k][l] = m < 32 ? m : 0;
      t.second[k][l] = m < 32 ? l : 16 + (m - 32);
    }
  }
  return t;
}

constexpr Interleave3Indices kDeinterleave3 = MakeDeinterleave3Indices();

// The 48 floats of sixteen three-channel pixels, in three vectors -> each channel's
// values of the sixteen points.
inline void Deinterleave3(const __m512* in, __m512* v) {
  for (int k = 0; k < 3; ++k) {
    const __m512 t =
        _mm512_permutex2var_ps(in[0], _mm512_load_si512(kDeinterleave3.first[k]), in[1]);
    v[k] = _mm512_permutex2var_ps(t, _mm512_load_si512(kDeinterleave3.second[k]), in[2]);
  }
}

// Sixteen consecutive points of a run, from their grid coordinates: each axis's taps,
// the offsets of the (y0, x0) and (y1, x0) taps (not clipped) and which of the four taps
// (y0, x0), (y0, x1), (y1, x0), (y1, x1) are read. Lanes at and past `rest` are masked
// off (the last step's missing points). `row` and `next`: the y and x strides.
struct Points16 {
  __mmask16 points, readable;
  Axis16 x, y;
  __m512i top, bottom;
  __mmask16 keep[4];
};

template <int Padding, bool Align>
inline Points16 LoadPoints16(const float* grid, int64_t rest, const Geometry<2>& geo,
                             float limit, __m512i row, __m512i next, bool one_channel) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                         28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  Points16 p;
  p.points = FirstLanes(rest);
  const __m512 a = _mm512_maskz_loadu_ps(FirstLanes(2 * rest), grid);
  const __m512 b = _mm512_maskz_loadu_ps(FirstLanes(2 * rest - 16), grid + 16);
  __m512 gx = _mm512_permutex2var_ps(a, even, b);
  __m512 gy = _mm512_permutex2var_ps(a, odd, b);
  // A NaN coordinate makes the point unreadable: it reads 0, from the coordinate 0.
  p.readable = _mm512_cmp_ps_mask(gx, gy, _CMP_ORD_Q) & p.points;
  gx = _mm512_maskz_mov_ps(p.readable, gx);
  gy = _mm512_maskz_mov_ps(p.readable, gy);
  p.x = AxisTaps16<Padding, Align>(gx, geo.size[0], geo.pixels, limit);
  p.y = AxisTaps16<Padding, Align>(gy, geo.size[1], geo.pixels, limit);
  const __m512i column = one_channel ? p.x.i : _mm512_mullo_epi32(p.x.i, next);
  p.top = _mm512_add_epi32(_mm512_mullo_epi32(p.y.i, row), column);
  p.bottom = _mm512_add_epi32(p.top, row);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i last_x = _mm512_set1_epi32(static_cast<int32_t>(geo.size[0] - 1));
  const __m512i last_y = _mm512_set1_epi32(static_cast<int32_t>(geo.size[1] - 1));
  const __m512i x1 = _mm512_add_epi32(p.x.i, one);
  const __mmask16 rows[2] = {Inside16(p.readable, p.y.i, last_y),
                             Inside16(p.readable, _mm512_add_epi32(p.y.i, one), last_y)};
  for (int r = 0; r < 2; ++r) {
    p.keep[2 * r] = Inside16(rows[r], p.x.i, last_x);
    p.keep[2 * r + 1] = Inside16(rows[r], x1, last_x);
  }
  return p;
}

// The four taps of sixteen points in channel k (0 where not read).
inline void GatherTaps16(const float* image, const Points16& p, __m512i next, int k,
                         __m512* v) {
  const float* base = image + k;
  const __m512 zero = _mm512_setzero_ps();
  v[0] = _mm512_mask_i32gather_ps(zero, p.keep[0], p.top, base, 4);
  v[1] = _mm512_mask_i32gather_ps(zero, p.keep[1], _mm512_add_epi32(p.top, next), base, 4);
  v[2] = _mm512_mask_i32gather_ps(zero, p.keep[2], p.bottom, base, 4);
  v[3] = _mm512_mask_i32gather_ps(zero, p.keep[3], _mm512_add_epi32(p.bottom, next), base, 4);
}

// GatherTaps16 for one channel, each row's two taps read as one 8-byte pair: 32 scalar
// loads per sixteen points instead of four gathers, which are slow on AMD cores (the
// AVX2 build's FwdRow8 does the same for eight points). A pair starts at the first tap's
// x clamped to [0, W - 2] and its row clamped into the image, so both floats are in the
// image; at the row ends a kept tap is then the pair's other float (the first tap at
// x = W - 1 is the high one, the second at x0 = -1 the low one), and the taps not kept
// are zeroed, as the gathers' masks zero them: the same values, the same bits. Needs
// W >= 2.
inline void PairTaps16(const float* image, const Points16& p, const Geometry<2>& geo,
                       __m512i row, __m512* v) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i last_x = _mm512_set1_epi32(static_cast<int32_t>(geo.size[0] - 1));
  const __m512i last_y = _mm512_set1_epi32(static_cast<int32_t>(geo.size[1] - 1));
  const __m512i x = _mm512_min_epi32(_mm512_max_epi32(p.x.i, zero), last_x);
  const __mmask16 first_high = _mm512_cmpeq_epi32_mask(x, last_x);
  const __mmask16 second_low = _mm512_cmplt_epi32_mask(p.x.i, zero);
  const __m512i start_x = _mm512_mask_sub_epi32(x, first_high, x, one);
  const __m512i y0 = _mm512_min_epi32(_mm512_max_epi32(p.y.i, zero), last_y);
  const __m512i y1 =
      _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(p.y.i, one), zero), last_y);
  alignas(64) int32_t start[2][16];
  _mm512_store_si512(start[0], _mm512_add_epi32(_mm512_mullo_epi32(y0, row), start_x));
  _mm512_store_si512(start[1], _mm512_add_epi32(_mm512_mullo_epi32(y1, row), start_x));
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                         28, 30);
  const __m512i odd = _mm512_add_epi32(even, one);
  for (int s = 0; s < 2; ++s) {
    const int32_t* q = start[s];
    __m512 half[2];  // the pairs of points 0-7, then 8-15
    for (int h = 0; h < 2; ++h) {
      const int32_t* r = q + 8 * h;
      const __m256 low = _mm256_set_m128(LoadPairs(image + r[2], image + r[3]),
                                         LoadPairs(image + r[0], image + r[1]));
      const __m256 high = _mm256_set_m128(LoadPairs(image + r[6], image + r[7]),
                                          LoadPairs(image + r[4], image + r[5]));
      half[h] = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(low)),
                                                       _mm256_castps_pd(high), 1));
    }
    const __m512 a = _mm512_permutex2var_ps(half[0], even, half[1]);
    const __m512 b = _mm512_permutex2var_ps(half[0], odd, half[1]);
    v[2 * s] = _mm512_maskz_mov_ps(p.keep[2 * s], _mm512_mask_blend_ps(first_high, a, b));
    v[2 * s + 1] =
        _mm512_maskz_mov_ps(p.keep[2 * s + 1], _mm512_mask_blend_ps(second_low, b, a));
  }
}

}  // namespace

// Whether one channel's taps are read as pairs (PairTaps16) rather than gathered: on AMD
// cores, where the pairs took 0.50 ms against the gathers' 0.63 for MNIST's forward (one
// Zen 4 thread, medians of 6 processes); Intel's AVX-512 cores gather fast
// (benchmarks/README.md). STN_JAX_NATIVE_TAPS=pairs or gathers (read once) overrides the
// choice, so that the tests run both on any CPU.
bool PairTaps() {
  static const bool pairs = [] {
    const char* taps = std::getenv("STN_JAX_NATIVE_TAPS");
    if (taps != nullptr && std::strcmp(taps, "pairs") == 0) return true;
    if (taps != nullptr && std::strcmp(taps, "gathers") == 0) return false;
    return __builtin_cpu_is("amd") != 0;
  }();
  return pairs;
}

namespace {

// The four taps of sixteen points in channel k of K (0 where not read): as pairs for one
// channel where `pairs` (PairTaps() and rows of two pixels or more), else gathered.
template <int K>
inline void ReadTaps16(const float* image, const Points16& p, const Geometry<2>& geo,
                       __m512i row, __m512i next, bool pairs, int k, __m512* v) {
  if (K == 1 && pairs) {
    PairTaps16(image, p, geo, row, v);
  } else {
    GatherTaps16(image, p, next, k, v);
  }
}

// V of points [0, count) of one example's image of K channels (1 or 3). `geo` comes by
// value here and in VjpRun: a copy no store can alias, so the compiler keeps its
// per-axis constants out of the loop rather than reloading them for every sixteen points.
template <int Padding, bool Align, int K>
void FwdRun(const float* image, const float* grid, int64_t count, Geometry<2> geo,
            float limit, float* out) {
  static_assert(K == 1 || K == 3);
  const __m512i row = _mm512_set1_epi32(geo.stride[1]);
  const __m512i next = _mm512_set1_epi32(geo.stride[0]);  // K
  const bool pairs = K == 1 && geo.size[0] >= 2 && PairTaps();
  for (int64_t j = 0; j < count; j += 16) {
    const int64_t rest = std::min<int64_t>(16, count - j);
    const Points16 p = LoadPoints16<Padding, Align>(grid + 2 * j, rest, geo, limit, row, next,
                                                    K == 1);
    __m512 v[K];
    for (int k = 0; k < K; ++k) {
      __m512 t[4];
      ReadTaps16<K>(image, p, geo, row, next, pairs, k, t);
      // Interpolate: along x, then y.
      const __m512 h0 = AddInOrder(_mm512_mul_ps(t[0], p.x.w0), _mm512_mul_ps(t[1], p.x.w1));
      const __m512 h1 = AddInOrder(_mm512_mul_ps(t[2], p.x.w0), _mm512_mul_ps(t[3], p.x.w1));
      v[k] = AddInOrder(_mm512_mul_ps(h0, p.y.w0), _mm512_mul_ps(h1, p.y.w1));
    }
    if constexpr (K == 1) {
      _mm512_mask_storeu_ps(out + j, p.points, v[0]);
    } else {
      __m512 pixels[3];
      Interleave3(v, pixels);
      for (int q = 0; q < 3; ++q) {
        _mm512_mask_storeu_ps(out + 3 * j + 16 * q, FirstLanes(3 * rest - 16 * q), pixels[q]);
      }
    }
  }
}

// dgrid of sixteen points of K channels (their cotangents `g`), stored at `out`: per lane
// the channels' ct * AxisSlope summed in channel order from 0, times the slope where it is
// not 0, as GridVjpBlock does.
template <int K>
inline void GridVjp16(const float* image, const Points16& p, const Geometry<2>& geo,
                      __m512i row, __m512i next, bool pairs, const __m512* g, int64_t rest,
                      float* out) {
  // (x, y) pairs of sixteen points: lanes 0-7 of both vectors, then lanes 8-15.
  const __m512i pairs_low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6,
                                              22, 7, 23);
  const __m512i pairs_high = _mm512_add_epi32(pairs_low, _mm512_set1_epi32(8));
  __m512 sx = _mm512_setzero_ps(), sy = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    __m512 v[4];
    ReadTaps16<K>(image, p, geo, row, next, pairs, k, v);
    // AxisSlope along x (differences along x, then the y weights) and along y.
    const __m512 ax = AddInOrder(_mm512_mul_ps(_mm512_sub_ps(v[1], v[0]), p.y.w0),
                                 _mm512_mul_ps(_mm512_sub_ps(v[3], v[2]), p.y.w1));
    const __m512 ay = AddInOrder(_mm512_mul_ps(_mm512_sub_ps(v[2], v[0]), p.x.w0),
                                 _mm512_mul_ps(_mm512_sub_ps(v[3], v[1]), p.x.w1));
    sx = AddInOrder(sx, MulInOrder(g[k], ax));
    sy = AddInOrder(sy, MulInOrder(g[k], ay));
  }
  const __m512 dx = _mm512_maskz_mul_ps(p.readable & p.x.moving, sx, _mm512_set1_ps(p.x.slope));
  const __m512 dy = _mm512_maskz_mul_ps(p.readable & p.y.moving, sy, _mm512_set1_ps(p.y.slope));
  _mm512_mask_storeu_ps(out, FirstLanes(2 * rest), _mm512_permutex2var_ps(dx, pairs_low, dy));
  _mm512_mask_storeu_ps(out + 16, FirstLanes(2 * rest - 16),
                        _mm512_permutex2var_ps(dx, pairs_high, dy));
}

// Adds sixteen points' contributions to their example's dU image: TapWeight (the y weight
// times the x weight) times ct, 0 for a tap not read, at its clipped offset (adding 0
// leaves any dU value as it is, since a sum that starts at +0 is never -0), in point
// order, tap by tap, channel by channel, as UVjpBlock does, so dU has its bits.
template <int K>
inline void Scatter16(const Points16& p, const Geometry<2>& geo, __m512i row, __m512i next,
                      const __m512* g, int64_t rest, float* du) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i last_x = _mm512_set1_epi32(static_cast<int32_t>(geo.size[0] - 1));
  const __m512i last_y = _mm512_set1_epi32(static_cast<int32_t>(geo.size[1] - 1));
  const __m512i x0 = _mm512_min_epi32(_mm512_max_epi32(p.x.i, zero), last_x);
  const __m512i x1 =
      _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(p.x.i, one), zero), last_x);
  const __m512i y0 = _mm512_min_epi32(_mm512_max_epi32(p.y.i, zero), last_y);
  const __m512i y1 =
      _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(p.y.i, one), zero), last_y);
  const __m512i top = _mm512_mullo_epi32(y0, row), bottom = _mm512_mullo_epi32(y1, row);
  const __m512i left = _mm512_mullo_epi32(x0, next), right = _mm512_mullo_epi32(x1, next);
  const __m512i offsets[4] = {_mm512_add_epi32(top, left), _mm512_add_epi32(top, right),
                              _mm512_add_epi32(bottom, left), _mm512_add_epi32(bottom, right)};
  const __m512 weights[4] = {_mm512_mul_ps(p.y.w0, p.x.w0), _mm512_mul_ps(p.y.w0, p.x.w1),
                             _mm512_mul_ps(p.y.w1, p.x.w0), _mm512_mul_ps(p.y.w1, p.x.w1)};
  alignas(64) int32_t at[4][16];
  alignas(64) float add[4][K][16];
  for (int t = 0; t < 4; ++t) {
    _mm512_store_si512(at[t], offsets[t]);
    for (int k = 0; k < K; ++k) {
      _mm512_store_ps(add[t][k], _mm512_maskz_mul_ps(p.keep[t], weights[t], g[k]));
    }
  }
  for (int64_t l = 0; l < rest; ++l) {
    for (int t = 0; t < 4; ++t) {
      float* pixel = du + at[t][l];
      for (int k = 0; k < K; ++k) pixel[k] += add[t][k][l];
    }
  }
}

// The cotangents of Fwd for K channels (1 or 3), points [0, count) of one example, from
// sixteen points in registers with no TapBlock between the grid and the taps: into its dU
// image `du` (zeroed) where Du, into dgrid where Dgrid (`image` is read only then). The
// fused backward runs both; an STN whose U is its input needs dgrid alone.
template <int Padding, bool Align, int K, bool Du, bool Dgrid>
void VjpRun(const float* image, const float* grid, const float* ct, int64_t count,
            Geometry<2> geo, float limit, float* du, float* dgrid) {
  static_assert(K == 1 || K == 3);
  static_assert(Du || Dgrid);
  const __m512i row = _mm512_set1_epi32(geo.stride[1]);
  const __m512i next = _mm512_set1_epi32(geo.stride[0]);  // K
  const bool pairs = K == 1 && geo.size[0] >= 2 && PairTaps();
  for (int64_t j = 0; j < count; j += 16) {
    const int64_t rest = std::min<int64_t>(16, count - j);
    const Points16 p = LoadPoints16<Padding, Align>(grid + 2 * j, rest, geo, limit, row, next,
                                                    K == 1);
    __m512 g[K];
    if constexpr (K == 1) {
      g[0] = _mm512_maskz_loadu_ps(p.points, ct + j);
    } else {
      __m512 pixels[3];
      for (int q = 0; q < 3; ++q) {
        pixels[q] = _mm512_maskz_loadu_ps(FirstLanes(3 * rest - 16 * q), ct + 3 * j + 16 * q);
      }
      Deinterleave3(pixels, g);
    }
    if constexpr (Dgrid) GridVjp16<K>(image, p, geo, row, next, pairs, g, rest, dgrid + 2 * j);
    if constexpr (Du) Scatter16<K>(p, geo, row, next, g, rest, du);
  }
}

// The cases this build covers; the AVX2 build runs the others.
bool Applies(const Pass& pass) {
  const Shape& us = pass.image;
  return pass.dtype == ffi::DataType::F32 && pass.grid.dims == 2 &&
         (us.last == 1 || us.last == 3) &&
         pass.padding != kReflection &&
         !(pass.align_corners && !us.pixels && (us.spatial[0] == 1 || us.spatial[1] == 1));
}

// Calls run(example, first point, count) over the grid's rows, split among the pass's
// threads: each call one example's contiguous run of rows (grid points and outputs).
// `cost`: the estimated work per point.
template <typename F>
void ForRowRuns(const Pass& pass, int64_t cost, const F& run) {
  const Rows rows = GridRows(pass.grid);
  ParallelFor(pass.workers, rows.count, rows.length * cost, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end;) {
      const int64_t example = r / rows.per_example;
      const int64_t stop = std::min(end, (example + 1) * rows.per_example);
      run(example, r * rows.length, (stop - r) * rows.length);
      r = stop;
    }
  });
}

template <int Padding, bool Align, int K>
void FwdPoints(const Pass& pass, const float* u, const float* grid, float* out) {
  const Geometry<2> geo = ImageGeometry<2>(pass.image);
  const float limit = static_cast<float>(pass.coord_limit);
  constexpr int64_t kCostPerPoint = 16 + 4 * K;  // FwdImpl's estimate: 8 * Dims + taps
  ForRowRuns(pass, kCostPerPoint, [&](int64_t example, int64_t p, int64_t count) {
    FwdRun<Padding, Align, K>(u + example * geo.elements, grid + 2 * p, count, geo, limit,
                              out + K * p);
  });
}

// dgrid alone, split by rows as the forward is (nothing is scattered).
template <int Padding, bool Align, int K>
void GridVjpPoints(const Pass& pass, const float* u, const float* grid, const float* ct,
                   float* dgrid) {
  const Geometry<2> geo = ImageGeometry<2>(pass.image);
  const float limit = static_cast<float>(pass.coord_limit);
  constexpr int64_t kCostPerPoint = 16 + 6 * K;  // GridVjpImpl's estimate
  ForRowRuns(pass, kCostPerPoint, [&](int64_t example, int64_t p, int64_t count) {
    VjpRun<Padding, Align, K, false, true>(u + example * geo.elements, grid + 2 * p,
                                           ct + K * p, count, geo, limit, nullptr,
                                           dgrid + 2 * p);
  });
}

// dU, with dgrid where Dgrid: one example per unit, as UVjpImpl and UGridVjpImpl split
// them (each thread scatters into its own examples' images only). `u` is read only for
// dgrid.
template <int Padding, bool Align, int K, bool Dgrid>
void VjpExamples(const Pass& pass, const float* u, const float* grid, const float* ct,
                 float* du, float* dgrid) {
  const Geometry<2> geo = ImageGeometry<2>(pass.image);
  const Rows rows = GridRows(pass.grid);
  const int64_t points = rows.per_example * rows.length;  // per example
  const float limit = static_cast<float>(pass.coord_limit);
  // UGridVjpImpl's and UVjpImpl's estimates
  constexpr int64_t kCostPerPoint = Dgrid ? 16 + 14 * K : 16 + 8 * K;
  ParallelFor(pass.workers, pass.grid.batch, points * kCostPerPoint, [&](int64_t begin,
                                                                         int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* image_du = du + n * geo.elements;
      std::fill(image_du, image_du + geo.elements, 0.0f);
      VjpRun<Padding, Align, K, true, Dgrid>(Dgrid ? u + n * geo.elements : nullptr,
                                             grid + 2 * n * points, ct + K * n * points,
                                             points, geo, limit, image_du,
                                             Dgrid ? dgrid + 2 * n * points : nullptr);
    }
  });
}

// Runs body(padding, align, channels) for a pass Applies covers, with all three as
// compile-time constants (zeros or border; 1 or 3 channels).
template <typename F>
void WithModes(const Pass& pass, const F& body) {
  auto with_channels = [&](auto padding, auto align) {
    if (pass.image.last == 1) {
      body(padding, align, std::integral_constant<int, 1>{});
    } else {
      body(padding, align, std::integral_constant<int, 3>{});
    }
  };
  auto with_align = [&](auto padding) {
    if (pass.align_corners) {
      with_channels(padding, std::true_type{});
    } else {
      with_channels(padding, std::false_type{});
    }
  };
  if (pass.padding == kZeros) {
    with_align(std::integral_constant<int, kZeros>{});
  } else {
    with_align(std::integral_constant<int, kBorder>{});
  }
}

void Fwd(const Pass& pass, const void* u, const void* grid, void* out) {
  if (!Applies(pass)) {
    avx2::kBilinear.fwd(pass, u, grid, out);
    return;
  }
  WithModes(pass, [&](auto padding, auto align, auto k) {
    FwdPoints<padding, align, k>(pass, In<float>(u), In<float>(grid), Out<float>(out));
  });
}

void GridVjp(const Pass& pass, const void* u, const void* grid, const void* ct, void* dgrid) {
  if (!Applies(pass)) {
    avx2::kBilinear.grid_vjp(pass, u, grid, ct, dgrid);
    return;
  }
  WithModes(pass, [&](auto padding, auto align, auto k) {
    GridVjpPoints<padding, align, k>(pass, In<float>(u), In<float>(grid), In<float>(ct),
                                     Out<float>(dgrid));
  });
}

void UVjp(const Pass& pass, const void* ct, const void* grid, void* du) {
  if (!Applies(pass)) {
    avx2::kBilinear.u_vjp(pass, ct, grid, du);
    return;
  }
  WithModes(pass, [&](auto padding, auto align, auto k) {
    VjpExamples<padding, align, k, false>(pass, nullptr, In<float>(grid), In<float>(ct),
                                          Out<float>(du), nullptr);
  });
}

void UGridVjp(const Pass& pass, const void* u, const void* grid, const void* ct, void* du,
              void* dgrid) {
  if (!Applies(pass)) {
    avx2::kBilinear.u_grid_vjp(pass, u, grid, ct, du, dgrid);
    return;
  }
  WithModes(pass, [&](auto padding, auto align, auto k) {
    VjpExamples<padding, align, k, true>(pass, In<float>(u), In<float>(grid), In<float>(ct),
                                         Out<float>(du), Out<float>(dgrid));
  });
}

// The grid's forward derivative: the AVX2 build's, looked up at the call (no cross-unit
// initialisation).
void GridJvp(const Pass& pass, const void* u, const void* grid, const void* dgrid, void* out) {
  avx2::kBilinear.grid_jvp(pass, u, grid, dgrid, out);
}

}  // namespace

const BilinearPasses kBilinear = {Fwd, GridJvp, GridVjp, UVjp, UGridVjp};

}  // namespace stn_native::avx512
#endif

// The float32 bilinear forward of one- and three-channel images for CPUs with AVX-512:
// sixteen points per step, the taps read by masked gathers, so a tap outside the image is
// never loaded and needs no clipped offset. Batches of small images (MNIST-sized, one
// channel) and RGB images are bound by this per-point work, and PyTorch runs its 16-lane
// build on these CPUs. Every other pass, and the cases this one leaves (reflection
// padding, align_corners with a one-pixel axis, float64, other channel counts, volumes),
// are the AVX2 build's (bilinear_passes.inc).
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

// gather._clamp on sixteen lanes (Clamp: the bound at and beyond it).
inline __m512 Clamp16(__m512 pos, float low, float high) {
  const __mmask16 below = _mm512_cmp_ps_mask(pos, _mm512_set1_ps(low), _CMP_LE_OQ);
  const __mmask16 above = _mm512_cmp_ps_mask(pos, _mm512_set1_ps(high), _CMP_GE_OQ);
  pos = _mm512_mask_blend_ps(above, pos, _mm512_set1_ps(high));
  return _mm512_mask_blend_ps(below, pos, _mm512_set1_ps(low));
}

// One axis of sixteen points: PixelCoordinate without reflection, then the lower tap's
// index `i`, the weights of the lower and upper tap, and which of the two lie inside.
struct Axis16 {
  __m512i i;
  __m512 w0, w1;
  __mmask16 inside0, inside1;
};

template <int Padding, bool Align>
inline Axis16 AxisTaps16(__m512 g, int64_t size, bool pixels, float limit) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 pos;
  if (pixels) {
    pos = g;
  } else if (Align) {  // size >= 2 here (Applies)
    const float scale = static_cast<float>(static_cast<double>(size - 1) / 2);
    pos = _mm512_mul_ps(_mm512_add_ps(g, one), _mm512_set1_ps(scale));
  } else {
    const __m512 s = _mm512_set1_ps(static_cast<float>(size));
    pos = _mm512_mul_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(g, one), s), one),
                        _mm512_set1_ps(0.5f));
  }
  pos = Clamp16(pos, -limit, limit);
  if (Padding == kBorder) pos = Clamp16(pos, 0.0f, static_cast<float>(size - 1));
  // FloorSmall: truncate, then one less where truncation went up.
  const __m512 truncated = _mm512_cvtepi32_ps(_mm512_cvttps_epi32(pos));
  const __mmask16 up = _mm512_cmp_ps_mask(truncated, pos, _CMP_GT_OQ);
  const __m512 f = _mm512_mask_sub_ps(truncated, up, truncated, one);
  Axis16 a;
  a.w0 = _mm512_sub_ps(_mm512_add_ps(f, one), pos);
  a.w1 = _mm512_sub_ps(pos, f);
  a.i = _mm512_cvttps_epi32(f);
  const __m512i last = _mm512_set1_epi32(static_cast<int32_t>(size - 1));
  a.inside0 = _mm512_cmpge_epi32_mask(a.i, _mm512_setzero_si512()) &
              _mm512_cmple_epi32_mask(a.i, last);
  a.inside1 = _mm512_cmpge_epi32_mask(a.i, _mm512_set1_epi32(-1)) &
              _mm512_cmplt_epi32_mask(a.i, last);
  return a;
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

// V of points [0, count) of one example's image of K channels (1 or 3).
template <int Padding, bool Align, int K>
void FwdRun(const float* image, const float* grid, int64_t count, const Geometry<2>& geo,
            float limit, float* out) {
  static_assert(K == 1 || K == 3);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                         28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i row = _mm512_set1_epi32(geo.stride[1]);
  const __m512i next = _mm512_set1_epi32(geo.stride[0]);  // K
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t j = 0; j < count; j += 16) {
    // The last step's missing points: masked off in the loads, the gathers and the store.
    const int64_t rest = std::min<int64_t>(16, count - j);
    const __mmask16 points = FirstLanes(rest);
    const __m512 a = _mm512_maskz_loadu_ps(FirstLanes(2 * rest), grid + 2 * j);
    const __m512 b = _mm512_maskz_loadu_ps(FirstLanes(2 * rest - 16), grid + 2 * j + 16);
    __m512 gx = _mm512_permutex2var_ps(a, even, b);
    __m512 gy = _mm512_permutex2var_ps(a, odd, b);
    // A NaN coordinate makes the point unreadable: it reads 0, from the coordinate 0.
    const __mmask16 readable = _mm512_cmp_ps_mask(gx, gy, _CMP_ORD_Q) & points;
    gx = _mm512_maskz_mov_ps(readable, gx);
    gy = _mm512_maskz_mov_ps(readable, gy);
    const Axis16 x = AxisTaps16<Padding, Align>(gx, geo.size[0], geo.pixels, limit);
    const Axis16 y = AxisTaps16<Padding, Align>(gy, geo.size[1], geo.pixels, limit);
    const __m512i column = K == 1 ? x.i : _mm512_mullo_epi32(x.i, next);
    const __m512i top = _mm512_add_epi32(_mm512_mullo_epi32(y.i, row), column);
    const __m512i bottom = _mm512_add_epi32(top, row);
    const __mmask16 keep00 = readable & y.inside0 & x.inside0;
    const __mmask16 keep01 = readable & y.inside0 & x.inside1;
    const __mmask16 keep10 = readable & y.inside1 & x.inside0;
    const __mmask16 keep11 = readable & y.inside1 & x.inside1;
    __m512 v[K];
    for (int k = 0; k < K; ++k) {
      const float* base = image + k;
      const __m512 v00 = _mm512_mask_i32gather_ps(zero, keep00, top, base, 4);
      const __m512 v01 =
          _mm512_mask_i32gather_ps(zero, keep01, _mm512_add_epi32(top, next), base, 4);
      const __m512 v10 = _mm512_mask_i32gather_ps(zero, keep10, bottom, base, 4);
      const __m512 v11 =
          _mm512_mask_i32gather_ps(zero, keep11, _mm512_add_epi32(bottom, next), base, 4);
      // Interpolate: along x, then y.
      const __m512 h0 = _mm512_add_ps(_mm512_mul_ps(v00, x.w0), _mm512_mul_ps(v01, x.w1));
      const __m512 h1 = _mm512_add_ps(_mm512_mul_ps(v10, x.w0), _mm512_mul_ps(v11, x.w1));
      v[k] = _mm512_add_ps(_mm512_mul_ps(h0, y.w0), _mm512_mul_ps(h1, y.w1));
    }
    if constexpr (K == 1) {
      _mm512_mask_storeu_ps(out + j, points, v[0]);
    } else {
      __m512 pixels[3];
      Interleave3(v, pixels);
      for (int q = 0; q < 3; ++q) {
        _mm512_mask_storeu_ps(out + 3 * j + 16 * q, FirstLanes(3 * rest - 16 * q), pixels[q]);
      }
    }
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

template <int Padding, bool Align, int K>
void FwdPoints(const Pass& pass, const float* u, const float* grid, float* out) {
  const Geometry<2> geo = ImageGeometry<2>(pass.image);
  const Rows rows = GridRows(pass.grid);
  const float limit = static_cast<float>(pass.coord_limit);
  constexpr int64_t kCostPerPoint = 16 + 4 * K;  // FwdImpl's estimate: 8 * Dims + taps
  ParallelFor(*pass.pool, rows.count, rows.length * kCostPerPoint, [&](int64_t begin,
                                                                        int64_t end) {
    // The rows of one example are one contiguous run of grid points and outputs.
    for (int64_t r = begin; r < end;) {
      const int64_t example = r / rows.per_example;
      const int64_t stop = std::min(end, (example + 1) * rows.per_example);
      const int64_t p = r * rows.length;
      FwdRun<Padding, Align, K>(u + example * geo.elements, grid + 2 * p,
                                (stop - r) * rows.length, geo, limit, out + K * p);
      r = stop;
    }
  });
}

void Fwd(const Pass& pass, const void* u, const void* grid, void* out) {
  if (!Applies(pass)) {
    avx2::kBilinear.fwd(pass, u, grid, out);
    return;
  }
  const auto* uf = static_cast<const float*>(u);
  const auto* gf = static_cast<const float*>(grid);
  auto* of = static_cast<float*>(out);
  auto run = [&](auto padding, auto align) {
    if (pass.image.last == 1) {
      FwdPoints<padding, align, 1>(pass, uf, gf, of);
    } else {
      FwdPoints<padding, align, 3>(pass, uf, gf, of);
    }
  };
  auto with_align = [&](auto padding) {
    if (pass.align_corners) {
      run(padding, std::true_type{});
    } else {
      run(padding, std::false_type{});
    }
  };
  if (pass.padding == kZeros) {
    with_align(std::integral_constant<int, kZeros>{});
  } else {
    with_align(std::integral_constant<int, kBorder>{});
  }
}

// The other passes: the AVX2 build's, looked up at the call (no cross-unit initialisation).
void GridJvp(const Pass& pass, const void* u, const void* grid, const void* dgrid, void* out) {
  avx2::kBilinear.grid_jvp(pass, u, grid, dgrid, out);
}

void GridVjp(const Pass& pass, const void* u, const void* grid, const void* ct, void* dgrid) {
  avx2::kBilinear.grid_vjp(pass, u, grid, ct, dgrid);
}

void UVjp(const Pass& pass, const void* ct, const void* grid, void* du) {
  avx2::kBilinear.u_vjp(pass, ct, grid, du);
}

void UGridVjp(const Pass& pass, const void* u, const void* grid, const void* ct, void* du,
              void* dgrid) {
  avx2::kBilinear.u_grid_vjp(pass, u, grid, ct, du, dgrid);
}

}  // namespace

const BilinearPasses kBilinear = {Fwd, GridJvp, GridVjp, UVjp, UGridVjp};

}  // namespace stn_native::avx512
#endif

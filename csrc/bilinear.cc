// Bilinear (2-D) and trilinear (3-D) sampling on the CPU: the four passes stn_jax's
// derivative rules need, one code for both dimensions.
//
// Layout: channels-last. U is (N..., H, W, C) or (N..., D, H, W, C), the grid
// (N..., Ho, Wo, 2) holding (x, y) or (N..., Do, Ho, Wo, 3) holding (x, y, z), normalised to
// [-1, 1], and every array shares the leading dimensions N..., flattened here to one batch
// axis. The grid's last dimension says how many spatial axes there are. The semantics are
// exactly those of the pure-JAX sampler in stn_jax/_src/gather.py (PyTorch's grid_sample,
// plus the documented handling of NaN, inf and huge coordinates), which is the reference
// these kernels are tested against.
//
//   Fwd      V[p, c]  = sum_t w_t(p) U[tap_t(p), c]
//   GridJvp  dV[p, c] = sum_a dV/dx_a[p, c] dx_a[p]                 (linear in dgrid)
//   GridVjp  dg[p, a] = sum_c ct[p, c] dV/dx_a[p, c]                (transpose of GridJvp)
//   UVjp     dU[q, c] = sum_{p, t: tap_t(p) = q} w_t(p) ct[p, c]    (transpose of Fwd in U)
//
// Coordinates and the 2**d weights are computed once per output point and reused across
// channels. Work is split over the batch (UVjp: each example scatters into its own image,
// so no two threads write the same pixel) or over output rows (the others) on XLA's
// intra-op thread pool.
//
// The Python side (stn_jax/_src/native.py) passes the padding as its code in
// gather.PADDING_CODES (the constants below; tests/test_native_volumes.py checks that the
// two agree) and the coordinate clamp gather.COORD_LIMIT as an attribute, so that limit
// has one source.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>  // AVX2 gathers in the AVX2 build of the passes
#endif

namespace ffi = xla::ffi;

namespace {

// Padding codes: gather.PADDING_CODES.
constexpr int kZeros = 0;
constexpr int kBorder = 1;
constexpr int kReflection = 2;

// ---------------------------------------------------------------------------------------
// Work splitting on XLA's intra-op pool. Chunks are claimed from an atomic counter by the
// calling thread and by helper tasks; the caller waits only for chunks already claimed, so
// it never waits on a task the pool has not started (no deadlock when the caller is itself
// a pool thread). Late tasks find no chunk left and exit without touching the work.

struct ChunkState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;
};

template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t cost_per_item, const F& body) {
  if (n <= 0) return;
  constexpr int64_t kMinCostPerChunk = 1 << 15;  // about 10 us: below that, threads lose
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t max_chunks = std::max<int64_t>(1, n * cost_per_item / kMinCostPerChunk);
  int64_t chunks = std::min<int64_t>({n, 4 * threads, max_chunks});
  if (threads == 1 || chunks == 1) {
    body(0, n);
    return;
  }
  auto state = std::make_shared<ChunkState>();
  const F* work = &body;
  auto run = [state, work, n, chunks]() {
    for (int64_t k; (k = state->next.fetch_add(1)) < chunks;) {
      (*work)(n* k / chunks, n * (k + 1) / chunks);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->all_done.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < std::min(threads, chunks); ++t) pool.Schedule(decltype(run)(run));
  run();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done.load() == chunks; });
}

// ---------------------------------------------------------------------------------------
// Shapes. Every array is (N..., S_1, ..., S_d, K) with d spatial axes (slowest first); the
// leading dims must agree across arrays.

struct Shape {
  int64_t batch = 1;
  int dims = 0;
  int64_t spatial[3] = {0, 0, 0};
  int64_t last = 0;
  // U's shape only: the grid holds pixel coordinates (attribute `pixels`), not normalised
  // ones. Carried here so that every pass's geometry sees it without another parameter.
  bool pixels = false;

  int64_t Points() const {
    int64_t n = 1;
    for (int i = 0; i < dims; ++i) n *= spatial[i];
    return n;
  }
};

// The number of spatial axes: the grid's last dimension, 2 or 3.
ffi::Error GridDims(const ffi::AnyBuffer& grid, int& dims) {
  auto shape = grid.dimensions();
  if (shape.size() == 0 || (shape[shape.size() - 1] != 2 && shape[shape.size() - 1] != 3)) {
    return ffi::Error::InvalidArgument("the grid's last dimension must be 2 or 3");
  }
  dims = static_cast<int>(shape[shape.size() - 1]);
  return ffi::Error::Success();
}

ffi::Error ReadShape(const ffi::AnyBuffer& buffer, int dims, const char* name, Shape& shape) {
  auto shape_dims = buffer.dimensions();
  const size_t r = shape_dims.size();
  if (r < static_cast<size_t>(dims) + 1) {
    return ffi::Error::InvalidArgument(std::string(name) + " must have rank >= " +
                                       std::to_string(dims + 1) + " (..., spatial, last)");
  }
  shape.batch = 1;
  for (size_t i = 0; i + dims + 1 < r; ++i) shape.batch *= shape_dims[i];
  shape.dims = dims;
  for (int i = 0; i < dims; ++i) shape.spatial[i] = shape_dims[r - 1 - dims + i];
  shape.last = shape_dims[r - 1];
  return ffi::Error::Success();
}

#define STN_RETURN_IF_ERROR(expr)        \
  do {                                   \
    ffi::Error _error = (expr);          \
    if (_error.failure()) return _error; \
  } while (0)

ffi::Error CheckCommon(const Shape& image, const Shape& grid, const Shape& other,
                       int64_t other_last) {
  if (image.batch != grid.batch || other.batch != grid.batch) {
    return ffi::Error::InvalidArgument("leading (batch) dimensions must agree");
  }
  for (int i = 0; i < grid.dims; ++i) {
    if (other.spatial[i] != grid.spatial[i]) {
      return ffi::Error::InvalidArgument("per-point array does not match the grid's shape");
    }
  }
  if (other.last != other_last) {
    return ffi::Error::InvalidArgument("per-point array has the wrong last dimension");
  }
  // Offsets into one example's image are int32 (native.py checks this too).
  const int64_t elements = image.Points() * image.last;
  if (elements >= (int64_t{1} << 31)) {
    return ffi::Error::InvalidArgument("one example's U must have fewer than 2**31 elements");
  }
  return ffi::Error::Success();
}

ffi::Error CheckPadding(int32_t padding) {
  if (padding < kZeros || padding > kReflection) {
    return ffi::Error::InvalidArgument("padding must be 0 (zeros), 1 (border) or 2 (reflection)");
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------
// The passes, compiled twice: for the baseline x86-64 ISA and for AVX2 (8-wide vectors for
// the per-block coordinate loop, and gathers). `Dispatch` picks at run time.

namespace portable {
#include "bilinear_passes.inc"
#include "separable_passes.inc"
}  // namespace portable

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define STN_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2")
#define STN_AVX2_PASS 1
namespace avx2 {
#include "bilinear_passes.inc"
#include "separable_passes.inc"
}  // namespace avx2
#undef STN_AVX2_PASS
#pragma GCC pop_options
#else
namespace avx2 = portable;
#endif

inline bool UseAvx2() {
#ifdef STN_HAVE_AVX2
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2;
#else
  return false;
#endif
}

// The AVX2 build of a pass where the CPU has AVX2, else the baseline one.
template <typename Fn>
Fn* Pick(Fn* wide, Fn* baseline) {
  return UseAvx2() ? wide : baseline;
}

// Calls body(Padding, Align, OneChannel) with each as a std::integral_constant.
template <typename F>
void WithMode(int32_t padding, bool align, bool one_channel, const F& body) {
  auto with_channels = [&](auto p, auto a) {
    if (one_channel) {
      body(p, a, std::true_type{});
    } else {
      body(p, a, std::false_type{});
    }
  };
  auto with_align = [&](auto p) {
    if (align) {
      with_channels(p, std::true_type{});
    } else {
      with_channels(p, std::false_type{});
    }
  };
  if (padding == kZeros) {
    with_align(std::integral_constant<int, kZeros>{});
  } else if (padding == kBorder) {
    with_align(std::integral_constant<int, kBorder>{});
  } else {
    with_align(std::integral_constant<int, kReflection>{});
  }
}

// Calls body(T{}, Dims, Padding, Align, OneChannel) for T = float or double and Dims = 2
// or 3 (a std::integral_constant), the others as in WithMode.
template <typename F>
void Dispatch(ffi::DataType dtype, int dims, int32_t padding, bool align, bool one_channel,
              const F& body) {
  WithMode(padding, align, one_channel, [&](auto p, auto a, auto one) {
    auto with_dims = [&](auto zero) {
      if (dims == 2) {
        body(zero, std::integral_constant<int, 2>{}, p, a, one);
      } else {
        body(zero, std::integral_constant<int, 3>{}, p, a, one);
      }
    };
    if (dtype == ffi::DataType::F32) {
      with_dims(float{});
    } else {
      with_dims(double{});
    }
  });
}

// ---------------------------------------------------------------------------------------
// FFI entry points: check shapes and dtype, then dispatch on float32 / float64 and on the
// number of spatial axes.

ffi::Error CheckFloat(ffi::DataType dtype, ffi::DataType other) {
  if (dtype != other) return ffi::Error::InvalidArgument("all arrays must share one dtype");
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument("only float32 and float64 are supported");
  }
  return ffi::Error::Success();
}

ffi::Error CheckLimit(double coord_limit) {
  // Finite and small enough for the int32 casts after the clamp.
  if (!(coord_limit > 0 && coord_limit <= 16777216.0)) {
    return ffi::Error::InvalidArgument("coord_limit must be in (0, 2**24]");
  }
  return ffi::Error::Success();
}

// An image with an empty spatial axis has no taps to read: its samples and their
// derivatives are 0 (never a read through a clipped offset of -1).
bool EmptyImage(const Shape& us) {
  for (int i = 0; i < us.dims; ++i) {
    if (us.spatial[i] == 0) return true;
  }
  return false;
}

void FillZero(ffi::AnyBuffer buffer) {
  std::memset(buffer.untyped_data(), 0, buffer.size_bytes());
}

ffi::Error Fwd(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
               ffi::Result<ffi::AnyBuffer> out, int32_t padding, bool align_corners,
               bool pixels, double coord_limit) {
  int dims;
  Shape us, gs, os;
  STN_RETURN_IF_ERROR(CheckPadding(padding));
  STN_RETURN_IF_ERROR(CheckLimit(coord_limit));
  STN_RETURN_IF_ERROR(GridDims(grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(u, dims, "U", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(*out, dims, "output", os));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, os, us.last));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), grid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), out->element_type()));
  if (EmptyImage(us)) {
    FillZero(*out);
    return ffi::Error::Success();
  }
  Dispatch(u.element_type(), dims, padding, align_corners, us.last == 1,
           [&](auto zero, auto d, auto p, auto a, auto one) {
             using T = decltype(zero);
             Pick(&avx2::FwdImpl<T, d, p, a, one>, &portable::FwdImpl<T, d, p, a, one>)(
                 pool, u.typed_data<T>(), grid.typed_data<T>(), out->typed_data<T>(), us, gs,
                 static_cast<T>(coord_limit));
           });
  return ffi::Error::Success();
}

ffi::Error GridJvp(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
                   ffi::AnyBuffer dgrid, ffi::Result<ffi::AnyBuffer> out, int32_t padding,
                   bool align_corners, bool pixels, double coord_limit) {
  int dims;
  Shape us, gs, ds, os;
  STN_RETURN_IF_ERROR(CheckPadding(padding));
  STN_RETURN_IF_ERROR(CheckLimit(coord_limit));
  STN_RETURN_IF_ERROR(GridDims(grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(u, dims, "U", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(dgrid, dims, "grid tangent", ds));
  STN_RETURN_IF_ERROR(ReadShape(*out, dims, "output", os));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, ds, dims));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, os, us.last));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), grid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), dgrid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), out->element_type()));
  if (EmptyImage(us)) {
    FillZero(*out);
    return ffi::Error::Success();
  }
  Dispatch(u.element_type(), dims, padding, align_corners, us.last == 1,
           [&](auto zero, auto d, auto p, auto a, auto one) {
             using T = decltype(zero);
             Pick(&avx2::GridJvpImpl<T, d, p, a, one>, &portable::GridJvpImpl<T, d, p, a, one>)(
                 pool, u.typed_data<T>(), grid.typed_data<T>(), dgrid.typed_data<T>(),
                 out->typed_data<T>(), us, gs, static_cast<T>(coord_limit));
           });
  return ffi::Error::Success();
}

ffi::Error GridVjp(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid, ffi::AnyBuffer ct,
                   ffi::Result<ffi::AnyBuffer> dgrid, int32_t padding, bool align_corners,
                   bool pixels, double coord_limit) {
  int dims;
  Shape us, gs, cs, ds;
  STN_RETURN_IF_ERROR(CheckPadding(padding));
  STN_RETURN_IF_ERROR(CheckLimit(coord_limit));
  STN_RETURN_IF_ERROR(GridDims(grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(u, dims, "U", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(ct, dims, "cotangent", cs));
  STN_RETURN_IF_ERROR(ReadShape(*dgrid, dims, "grid cotangent", ds));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, cs, us.last));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, ds, dims));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), grid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), ct.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), dgrid->element_type()));
  if (EmptyImage(us)) {
    FillZero(*dgrid);
    return ffi::Error::Success();
  }
  Dispatch(u.element_type(), dims, padding, align_corners, us.last == 1,
           [&](auto zero, auto d, auto p, auto a, auto one) {
             using T = decltype(zero);
             Pick(&avx2::GridVjpImpl<T, d, p, a, one>, &portable::GridVjpImpl<T, d, p, a, one>)(
                 pool, u.typed_data<T>(), grid.typed_data<T>(), ct.typed_data<T>(),
                 dgrid->typed_data<T>(), us, gs, static_cast<T>(coord_limit));
           });
  return ffi::Error::Success();
}

ffi::Error UVjp(ffi::ThreadPool pool, ffi::AnyBuffer ct, ffi::AnyBuffer grid,
                ffi::Result<ffi::AnyBuffer> du, int32_t padding, bool align_corners,
                bool pixels, double coord_limit) {
  int dims;
  Shape cs, gs, us;
  STN_RETURN_IF_ERROR(CheckPadding(padding));
  STN_RETURN_IF_ERROR(CheckLimit(coord_limit));
  STN_RETURN_IF_ERROR(GridDims(grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(ct, dims, "cotangent", cs));
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(*du, dims, "U cotangent", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, cs, us.last));
  STN_RETURN_IF_ERROR(CheckFloat(ct.element_type(), grid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(ct.element_type(), du->element_type()));
  if (EmptyImage(us)) return ffi::Error::Success();  // dU has no elements
  Dispatch(ct.element_type(), dims, padding, align_corners, us.last == 1,
           [&](auto zero, auto d, auto p, auto a, auto one) {
             using T = decltype(zero);
             Pick(&avx2::UVjpImpl<T, d, p, a, one>, &portable::UVjpImpl<T, d, p, a, one>)(
                 pool, ct.typed_data<T>(), grid.typed_data<T>(), du->typed_data<T>(), us, gs,
                 static_cast<T>(coord_limit));
           });
  return ffi::Error::Success();
}

// dU and dgrid of Fwd for one cotangent: the transpose of Fwd's JVP in (U, grid) jointly.
// One fused sweep over the batch (the taps prepared once, not once per pass); with fewer
// examples than threads, the separate passes instead (UVjp by example, GridVjp by rows),
// which keep more threads busy. Either way the same arithmetic per output: the same bits.
ffi::Error UGridVjp(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
                    ffi::AnyBuffer ct, ffi::Result<ffi::AnyBuffer> du,
                    ffi::Result<ffi::AnyBuffer> dgrid, int32_t padding, bool align_corners,
                    bool pixels, double coord_limit) {
  int dims;
  Shape us, gs, cs, dus, ds;
  STN_RETURN_IF_ERROR(CheckPadding(padding));
  STN_RETURN_IF_ERROR(CheckLimit(coord_limit));
  STN_RETURN_IF_ERROR(GridDims(grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(u, dims, "U", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(ct, dims, "cotangent", cs));
  STN_RETURN_IF_ERROR(ReadShape(*du, dims, "U cotangent", dus));
  STN_RETURN_IF_ERROR(ReadShape(*dgrid, dims, "grid cotangent", ds));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, cs, us.last));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, ds, dims));
  if (dus.batch != us.batch || dus.last != us.last || dus.Points() != us.Points()) {
    return ffi::Error::InvalidArgument("the U cotangent must have U's shape");
  }
  for (ffi::DataType other : {grid.element_type(), ct.element_type(), du->element_type(),
                              dgrid->element_type()}) {
    STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), other));
  }
  if (EmptyImage(us)) {
    FillZero(*dgrid);
    return ffi::Error::Success();  // dU has no elements
  }
  const bool fused = pool.num_threads() <= 1 || gs.batch >= pool.num_threads();
  Dispatch(u.element_type(), dims, padding, align_corners, us.last == 1,
           [&](auto zero, auto d, auto p, auto a, auto one) {
             using T = decltype(zero);
             const T* uu = u.typed_data<T>();
             const T* g = grid.typed_data<T>();
             const T* c = ct.typed_data<T>();
             T* dui = du->typed_data<T>();
             T* dg = dgrid->typed_data<T>();
             const T limit = static_cast<T>(coord_limit);
             if (fused) {
               Pick(&avx2::UGridVjpImpl<T, d, p, a, one>,
                    &portable::UGridVjpImpl<T, d, p, a, one>)(pool, uu, g, c, dui, dg, us, gs,
                                                               limit);
               return;
             }
             Pick(&avx2::GridVjpImpl<T, d, p, a, one>, &portable::GridVjpImpl<T, d, p, a, one>)(
                 pool, uu, g, c, dg, us, gs, limit);
             Pick(&avx2::UVjpImpl<T, d, p, a, one>, &portable::UVjpImpl<T, d, p, a, one>)(
                 pool, c, g, dui, us, gs, limit);
           });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("pixels")
                                  .Attr<double>("coord_limit"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearGridJvp, GridJvp,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("pixels")
                                  .Attr<double>("coord_limit"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearGridVjp, GridVjp,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("pixels")
                                  .Attr<double>("coord_limit"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearUVjp, UVjp,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("pixels")
                                  .Attr<double>("coord_limit"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearUGridVjp, UGridVjp,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("pixels")
                                  .Attr<double>("coord_limit"));
// ---------------------------------------------------------------------------------------
// Bicubic / tricubic (Keys, a = -0.75, per-tap padding) and nearest: the passes of
// separable_passes.inc behind the same checks and dispatch as the bilinear handlers above.
// Nearest's grid derivative is 0, so it has only the forward and the U-gradient.

namespace {

// Taps per axis of the separable passes' kernels.
constexpr int kCubic = 4;
constexpr int kNearest = 1;

// The checks every handler starts with: attributes, and the number of spatial axes.
ffi::Error CheckAttributes(int32_t padding, double coord_limit, const ffi::AnyBuffer& grid,
                           int& dims) {
  STN_RETURN_IF_ERROR(CheckPadding(padding));
  STN_RETURN_IF_ERROR(CheckLimit(coord_limit));
  return GridDims(grid, dims);
}

template <int K>
ffi::Error SeparableFwd(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
                        ffi::Result<ffi::AnyBuffer> out, int32_t padding, bool align_corners,
                        bool pixels, double coord_limit) {
  int dims;
  Shape us, gs, os;
  STN_RETURN_IF_ERROR(CheckAttributes(padding, coord_limit, grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(u, dims, "U", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(*out, dims, "output", os));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, os, us.last));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), grid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), out->element_type()));
  if (EmptyImage(us)) {
    FillZero(*out);
    return ffi::Error::Success();
  }
  Dispatch(u.element_type(), dims, padding, align_corners, false,
           [&](auto zero, auto d, auto p, auto a, auto) {
             using T = decltype(zero);
             Pick(&avx2::SeparableFwdImpl<K, T, d, p, a>,
                  &portable::SeparableFwdImpl<K, T, d, p, a>)(
                 pool, u.typed_data<T>(), grid.typed_data<T>(), out->typed_data<T>(), us, gs,
                 static_cast<T>(coord_limit));
           });
  return ffi::Error::Success();
}

template <int K>
ffi::Error SeparableUVjp(ffi::ThreadPool pool, ffi::AnyBuffer ct, ffi::AnyBuffer grid,
                         ffi::Result<ffi::AnyBuffer> du, int32_t padding, bool align_corners,
                         bool pixels, double coord_limit) {
  int dims;
  Shape cs, gs, us;
  STN_RETURN_IF_ERROR(CheckAttributes(padding, coord_limit, grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(ct, dims, "cotangent", cs));
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(*du, dims, "U cotangent", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, cs, us.last));
  STN_RETURN_IF_ERROR(CheckFloat(ct.element_type(), grid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(ct.element_type(), du->element_type()));
  if (EmptyImage(us)) return ffi::Error::Success();  // dU has no elements
  Dispatch(ct.element_type(), dims, padding, align_corners, false,
           [&](auto zero, auto d, auto p, auto a, auto) {
             using T = decltype(zero);
             Pick(&avx2::SeparableUVjpImpl<K, T, d, p, a>,
                  &portable::SeparableUVjpImpl<K, T, d, p, a>)(
                 pool, ct.typed_data<T>(), grid.typed_data<T>(), du->typed_data<T>(), us, gs,
                 static_cast<T>(coord_limit));
           });
  return ffi::Error::Success();
}

// The grid passes (cubic only): `third` is the grid tangent (GridJvp, result per point
// with U's channels) or the output's cotangent (GridVjp, result shaped like the grid).
template <bool Jvp>
ffi::Error CubicGridPass(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
                         ffi::AnyBuffer third, ffi::Result<ffi::AnyBuffer> out, int32_t padding,
                         bool align_corners, bool pixels, double coord_limit) {
  int dims;
  Shape us, gs, ts, os;
  STN_RETURN_IF_ERROR(CheckAttributes(padding, coord_limit, grid, dims));
  STN_RETURN_IF_ERROR(ReadShape(u, dims, "U", us));
  us.pixels = pixels;
  STN_RETURN_IF_ERROR(ReadShape(grid, dims, "grid", gs));
  STN_RETURN_IF_ERROR(ReadShape(third, dims, Jvp ? "grid tangent" : "cotangent", ts));
  STN_RETURN_IF_ERROR(ReadShape(*out, dims, "output", os));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, ts, Jvp ? dims : us.last));
  STN_RETURN_IF_ERROR(CheckCommon(us, gs, os, Jvp ? us.last : dims));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), grid.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), third.element_type()));
  STN_RETURN_IF_ERROR(CheckFloat(u.element_type(), out->element_type()));
  if (EmptyImage(us)) {
    FillZero(*out);
    return ffi::Error::Success();
  }
  Dispatch(u.element_type(), dims, padding, align_corners, false,
           [&](auto zero, auto d, auto p, auto a, auto) {
             using T = decltype(zero);
             auto pass = Jvp ? Pick(&avx2::SeparableGridJvpImpl<kCubic, T, d, p, a>,
                                    &portable::SeparableGridJvpImpl<kCubic, T, d, p, a>)
                             : Pick(&avx2::SeparableGridVjpImpl<kCubic, T, d, p, a>,
                                    &portable::SeparableGridVjpImpl<kCubic, T, d, p, a>);
             pass(pool, u.typed_data<T>(), grid.typed_data<T>(), third.typed_data<T>(),
                  out->typed_data<T>(), us, gs, static_cast<T>(coord_limit));
           });
  return ffi::Error::Success();
}

}  // namespace

#define STN_SEPARABLE_HANDLER(name, fn, arrays)                                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn,                                                  \
                                ffi::Ffi::Bind()                                           \
                                    .Ctx<ffi::ThreadPool>() arrays                         \
                                    .Ret<ffi::AnyBuffer>()                                 \
                                    .Attr<int32_t>("padding")                              \
                                    .Attr<bool>("align_corners")                           \
                                    .Attr<bool>("pixels")                                  \
                                    .Attr<double>("coord_limit"))
#define STN_TWO_ARRAYS .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
#define STN_THREE_ARRAYS .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()

STN_SEPARABLE_HANDLER(StnCubicFwd, SeparableFwd<kCubic>, STN_TWO_ARRAYS);
STN_SEPARABLE_HANDLER(StnCubicUVjp, SeparableUVjp<kCubic>, STN_TWO_ARRAYS);
STN_SEPARABLE_HANDLER(StnCubicGridJvp, CubicGridPass<true>, STN_THREE_ARRAYS);
STN_SEPARABLE_HANDLER(StnCubicGridVjp, CubicGridPass<false>, STN_THREE_ARRAYS);
STN_SEPARABLE_HANDLER(StnNearestFwd, SeparableFwd<kNearest>, STN_TWO_ARRAYS);
STN_SEPARABLE_HANDLER(StnNearestUVjp, SeparableUVjp<kNearest>, STN_TWO_ARRAYS);

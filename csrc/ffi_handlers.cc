// The XLA FFI handlers of stn_jax's compiled CPU kernels: check the arrays' shapes, dtypes
// and attributes, then run the pass of the kernel's table (passes.h) for this CPU. The
// semantics are exactly those of the pure-JAX sampler in stn_jax/_src/gather.py (PyTorch's
// grid_sample, plus the documented handling of NaN, inf and huge coordinates), which is the
// reference these kernels are tested against.
//
// Coordinates and the taps' weights are computed once per output point and reused across
// channels. Work is split over the batch (the U-gradient: each example scatters into its
// own image, so no two threads write the same pixel) or over output rows (the others) on
// XLA's intra-op thread pool.
//
// The Python side (stn_jax/_src/native.py) passes the padding as its code in
// gather.PADDING_CODES (common.h's constants) and the coordinate clamp gather.COORD_LIMIT
// as an attribute, so that limit has one source; and `parallel_calls`, how many calls of
// the kernels this process runs at once (a sharded run's local shards; 1 otherwise), which
// caps the threads each call splits its work among (MakeWorkers).

#include "passes.h"

namespace stn_native {
namespace {

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
// The passes of this CPU: the widest build it runs (AVX-512 for the bilinear forward and
// fused backward of one- and three-channel images, AVX2 for the rest, else the baseline
// builds). STN_JAX_NATIVE_ISA (read once) caps the choice: `baseline` runs the baseline
// builds, `avx2` the AVX2 ones, on a CPU that has more; the tests run them that way, since
// other CPUs get them.

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa PassesIsa() {
#ifdef STN_HAVE_AVX2
  static const Isa isa = [] {
    const char* cap = std::getenv("STN_JAX_NATIVE_ISA");
    if (cap != nullptr && std::strcmp(cap, "baseline") == 0) return Isa::kBaseline;
    if (__builtin_cpu_supports("avx2") == 0) return Isa::kBaseline;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0) return Isa::kAvx2;
    return __builtin_cpu_supports("avx512f") != 0 ? Isa::kAvx512 : Isa::kAvx2;
  }();
  return isa;
#else
  return Isa::kBaseline;
#endif
}

bool UseAvx2() { return PassesIsa() != Isa::kBaseline; }

const BilinearPasses& Bilinear() {
#ifdef STN_HAVE_AVX2
  if (PassesIsa() == Isa::kAvx512) return avx512::kBilinear;
  if (UseAvx2()) return avx2::kBilinear;
#endif
  return baseline::kBilinear;
}

// K taps per axis: kCubicTaps or kNearestTaps.
template <int K>
const SeparablePasses& Separable() {
  static_assert(K == kCubicTaps || K == kNearestTaps);
#ifdef STN_HAVE_AVX2
  if (UseAvx2()) return K == kCubicTaps ? avx2::kCubic : avx2::kNearest;
#endif
  return K == kCubicTaps ? baseline::kCubic : baseline::kNearest;
}

// ---------------------------------------------------------------------------------------
// FFI entry points: check shapes and dtype, then run the pass.

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

Pass MakePass(ffi::ThreadPool& pool, ffi::DataType dtype, int32_t padding, bool align_corners,
              const Shape& image, const Shape& grid, double coord_limit,
              int64_t parallel_calls) {
  return Pass{MakeWorkers(pool, parallel_calls), dtype, padding, align_corners, image, grid,
              coord_limit};
}

ffi::Error Fwd(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
               ffi::Result<ffi::AnyBuffer> out, int32_t padding, bool align_corners,
               bool pixels, double coord_limit, int64_t parallel_calls) {
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
  Bilinear().fwd(MakePass(pool, u.element_type(), padding, align_corners, us, gs, coord_limit,
                          parallel_calls),
                 u.untyped_data(), grid.untyped_data(), out->untyped_data());
  return ffi::Error::Success();
}

ffi::Error GridJvp(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
                   ffi::AnyBuffer dgrid, ffi::Result<ffi::AnyBuffer> out, int32_t padding,
                   bool align_corners, bool pixels, double coord_limit, int64_t parallel_calls) {
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
  Bilinear().grid_jvp(
      MakePass(pool, u.element_type(), padding, align_corners, us, gs, coord_limit,
               parallel_calls),
      u.untyped_data(), grid.untyped_data(), dgrid.untyped_data(), out->untyped_data());
  return ffi::Error::Success();
}

ffi::Error GridVjp(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid, ffi::AnyBuffer ct,
                   ffi::Result<ffi::AnyBuffer> dgrid, int32_t padding, bool align_corners,
                   bool pixels, double coord_limit, int64_t parallel_calls) {
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
  Bilinear().grid_vjp(
      MakePass(pool, u.element_type(), padding, align_corners, us, gs, coord_limit,
               parallel_calls),
      u.untyped_data(), grid.untyped_data(), ct.untyped_data(), dgrid->untyped_data());
  return ffi::Error::Success();
}

ffi::Error UVjp(ffi::ThreadPool pool, ffi::AnyBuffer ct, ffi::AnyBuffer grid,
                ffi::Result<ffi::AnyBuffer> du, int32_t padding, bool align_corners,
                bool pixels, double coord_limit, int64_t parallel_calls) {
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
  Bilinear().u_vjp(MakePass(pool, ct.element_type(), padding, align_corners, us, gs,
                            coord_limit, parallel_calls),
                   ct.untyped_data(), grid.untyped_data(), du->untyped_data());
  return ffi::Error::Success();
}

// dU and dgrid of Fwd for one cotangent: the transpose of Fwd's JVP in (U, grid) jointly.
// One fused sweep over the batch (the taps prepared once, not once per pass); with fewer
// examples than threads, the separate passes instead (UVjp by example, GridVjp by rows),
// which keep more threads busy. Either way the same arithmetic per output: the same bits.
ffi::Error UGridVjp(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
                    ffi::AnyBuffer ct, ffi::Result<ffi::AnyBuffer> du,
                    ffi::Result<ffi::AnyBuffer> dgrid, int32_t padding, bool align_corners,
                    bool pixels, double coord_limit, int64_t parallel_calls) {
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
  const Pass pass = MakePass(pool, u.element_type(), padding, align_corners, us, gs,
                             coord_limit, parallel_calls);
  const BilinearPasses& passes = Bilinear();
  if (pass.workers.threads <= 1 || gs.batch >= pass.workers.threads) {
    passes.u_grid_vjp(pass, u.untyped_data(), grid.untyped_data(), ct.untyped_data(),
                      du->untyped_data(), dgrid->untyped_data());
  } else {
    passes.grid_vjp(pass, u.untyped_data(), grid.untyped_data(), ct.untyped_data(),
                    dgrid->untyped_data());
    passes.u_vjp(pass, ct.untyped_data(), grid.untyped_data(), du->untyped_data());
  }
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
                                  .Attr<double>("coord_limit")
                                  .Attr<int64_t>("parallel_calls"));

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
                                  .Attr<double>("coord_limit")
                                  .Attr<int64_t>("parallel_calls"));

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
                                  .Attr<double>("coord_limit")
                                  .Attr<int64_t>("parallel_calls"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearUVjp, UVjp,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("pixels")
                                  .Attr<double>("coord_limit")
                                  .Attr<int64_t>("parallel_calls"));

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
                                  .Attr<double>("coord_limit")
                                  .Attr<int64_t>("parallel_calls"));

// ---------------------------------------------------------------------------------------
// Bicubic / tricubic (Keys, a = -0.75, per-tap padding) and nearest: the passes of
// separable_passes.inc behind the same checks and dispatch as the bilinear handlers above.
// Nearest's grid derivative is 0, so it has only the forward and the U-gradient.

namespace {

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
                        bool pixels, double coord_limit, int64_t parallel_calls) {
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
  Separable<K>().fwd(
      MakePass(pool, u.element_type(), padding, align_corners, us, gs, coord_limit,
               parallel_calls),
      u.untyped_data(), grid.untyped_data(), out->untyped_data());
  return ffi::Error::Success();
}

template <int K>
ffi::Error SeparableUVjp(ffi::ThreadPool pool, ffi::AnyBuffer ct, ffi::AnyBuffer grid,
                         ffi::Result<ffi::AnyBuffer> du, int32_t padding, bool align_corners,
                         bool pixels, double coord_limit, int64_t parallel_calls) {
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
  Separable<K>().u_vjp(
      MakePass(pool, ct.element_type(), padding, align_corners, us, gs, coord_limit,
               parallel_calls),
      ct.untyped_data(), grid.untyped_data(), du->untyped_data());
  return ffi::Error::Success();
}

// The grid passes (cubic only): `third` is the grid tangent (GridJvp, result per point
// with U's channels) or the output's cotangent (GridVjp, result shaped like the grid).
template <bool Jvp>
ffi::Error CubicGridPass(ffi::ThreadPool pool, ffi::AnyBuffer u, ffi::AnyBuffer grid,
                         ffi::AnyBuffer third, ffi::Result<ffi::AnyBuffer> out, int32_t padding,
                         bool align_corners, bool pixels, double coord_limit,
                         int64_t parallel_calls) {
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
  const SeparablePasses& passes = Separable<kCubicTaps>();
  (Jvp ? passes.grid_jvp : passes.grid_vjp)(
      MakePass(pool, u.element_type(), padding, align_corners, us, gs, coord_limit,
               parallel_calls),
      u.untyped_data(), grid.untyped_data(), third.untyped_data(), out->untyped_data());
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
                                    .Attr<double>("coord_limit")                           \
                                    .Attr<int64_t>("parallel_calls"))
#define STN_TWO_ARRAYS .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
#define STN_THREE_ARRAYS .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()

STN_SEPARABLE_HANDLER(StnCubicFwd, SeparableFwd<kCubicTaps>, STN_TWO_ARRAYS);
STN_SEPARABLE_HANDLER(StnCubicUVjp, SeparableUVjp<kCubicTaps>, STN_TWO_ARRAYS);
STN_SEPARABLE_HANDLER(StnCubicGridJvp, CubicGridPass<true>, STN_THREE_ARRAYS);
STN_SEPARABLE_HANDLER(StnCubicGridVjp, CubicGridPass<false>, STN_THREE_ARRAYS);
STN_SEPARABLE_HANDLER(StnNearestFwd, SeparableFwd<kNearestTaps>, STN_TWO_ARRAYS);
STN_SEPARABLE_HANDLER(StnNearestUVjp, SeparableUVjp<kNearestTaps>, STN_TWO_ARRAYS);

// Which build of the passes runs: "avx512", "avx2" or "baseline" (native_status says).
extern "C" const char* StnPassesIsa() {
  switch (PassesIsa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

// How the AVX-512 passes read one channel's taps: "pairs" or "gathers" (native_status
// says, where those passes run).
extern "C" const char* StnOneChannelTaps() {
#ifdef STN_HAVE_AVX2
  return avx512::PairTaps() ? "pairs" : "gathers";
#else
  return "gathers";
#endif
}

}  // namespace stn_native

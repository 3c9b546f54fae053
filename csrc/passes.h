// The passes as tables of entry points, one table per kernel and per build. Each kernel's
// passes are compiled in their own units, for the baseline ISA (`baseline`, every CPU) and
// for AVX2 (`avx2`, x86 only); the FFI handlers (ffi_handlers.cc) pick the AVX2 table where
// the CPU has AVX2, and the AVX-512 bilinear table (two passes of its own) where it has that.
// Separate units compile in parallel (setup.py), which is most of the install time.
//
//   fwd       V[p, c]  = sum_t w_t(p) U[tap_t(p), c]
//   grid_jvp  dV[p, c] = sum_a dV/dx_a[p, c] dx_a[p]                 (linear in dgrid)
//   grid_vjp  dg[p, a] = sum_c ct[p, c] dV/dx_a[p, c]                (transpose of grid_jvp)
//   u_vjp     dU[q, c] = sum_{p, t: tap_t(p) = q} w_t(p) ct[p, c]    (transpose of fwd in U)
//   u_grid_vjp         u_vjp and grid_vjp of one cotangent in one sweep (bilinear only)
//
// Every array has the dtype `pass.dtype` and the shape its name says (common.h).

#ifndef STN_JAX_CSRC_PASSES_H_
#define STN_JAX_CSRC_PASSES_H_

#include "common.h"

namespace stn_native {

// Bilinear (2-D) and trilinear (3-D): bilinear_passes.inc.
struct BilinearPasses {
  void (*fwd)(const Pass& pass, const void* u, const void* grid, void* out);
  void (*grid_jvp)(const Pass& pass, const void* u, const void* grid, const void* dgrid,
                   void* out);
  void (*grid_vjp)(const Pass& pass, const void* u, const void* grid, const void* ct,
                   void* dgrid);
  void (*u_vjp)(const Pass& pass, const void* ct, const void* grid, void* du);
  void (*u_grid_vjp)(const Pass& pass, const void* u, const void* grid, const void* ct,
                     void* du, void* dgrid);
};

// Bicubic / tricubic and nearest: separable_passes.inc. Nearest's grid derivative is 0, so
// its grid passes are null.
struct SeparablePasses {
  void (*fwd)(const Pass& pass, const void* u, const void* grid, void* out);
  void (*u_vjp)(const Pass& pass, const void* ct, const void* grid, void* du);
  void (*grid_jvp)(const Pass& pass, const void* u, const void* grid, const void* dgrid,
                   void* out);
  void (*grid_vjp)(const Pass& pass, const void* u, const void* grid, const void* ct,
                   void* dgrid);
};

namespace baseline {
extern const BilinearPasses kBilinear;  // bilinear_baseline.cc
extern const SeparablePasses kCubic;    // separable_baseline.cc
extern const SeparablePasses kNearest;
}  // namespace baseline

#ifdef STN_HAVE_AVX2
namespace avx2 {
extern const BilinearPasses kBilinear;  // bilinear_avx2.cc
extern const SeparablePasses kCubic;    // separable_avx2.cc
extern const SeparablePasses kNearest;
}  // namespace avx2

// AVX-512: the float32 2-D bilinear forward and backward passes (grid_vjp, u_vjp,
// u_grid_vjp) of one- and three-channel images; grid_jvp and the other cases are the AVX2
// build's (bilinear_avx512.cc).
namespace avx512 {
extern const BilinearPasses kBilinear;
// Whether their one-channel taps are read as pairs of neighbours in a row (else gathered).
bool PairTaps();
}  // namespace avx512
#endif

}  // namespace stn_native

#endif  // STN_JAX_CSRC_PASSES_H_

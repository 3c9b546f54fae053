// The bilinear and trilinear passes (bilinear_passes.inc), built for AVX2: 8-wide vectors
// for the per-block coordinate loops, and gathers. The handlers pick them where the CPU has
// AVX2.
#include "passes.h"

#ifdef STN_HAVE_AVX2
#pragma GCC target("avx2")
#define STN_AVX2_PASS 1
namespace stn_native::avx2 {
#include "bilinear_passes.inc"
}  // namespace stn_native::avx2
#endif

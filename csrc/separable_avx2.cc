// The bicubic and nearest passes (separable_passes.inc), built for AVX2: their channel
// loops in 32-byte registers. The handlers pick them where the CPU has AVX2.
#include "passes.h"

#ifdef STN_HAVE_AVX2
#pragma GCC target("avx2")
#define STN_AVX2_PASS 1
namespace stn_native::avx2 {
#include "separable_passes.inc"
}  // namespace stn_native::avx2
#endif

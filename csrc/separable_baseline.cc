// The bicubic and nearest passes (separable_passes.inc), built for the baseline ISA: every
// CPU runs them.
#include "passes.h"

namespace stn_native::baseline {
#include "separable_passes.inc"
}  // namespace stn_native::baseline

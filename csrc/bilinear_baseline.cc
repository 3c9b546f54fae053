// The bilinear and trilinear passes (bilinear_passes.inc), built for the baseline ISA:
// every CPU runs them.
#include "passes.h"

namespace stn_native::baseline {
#include "bilinear_passes.inc"
}  // namespace stn_native::baseline

// The preprocessing block kernel compiled for baseline; see cpu_kernel.h. All includes come before
// the target pragma so that no shared (inline) code is compiled for this instruction set.
#include <cstdint>
#include <cstring>

#include "preprocess/cpu_params.h"

namespace ecgkt {
namespace preprocess_cpu {
namespace isa_baseline {
#include "preprocess/cpu_kernel.h"
}  // namespace isa_baseline

BlockFn block_fn_baseline(bool dbl) {
  return dbl ? &isa_baseline::run_block<double, 2> : &isa_baseline::run_block<float, 4>;
}

}  // namespace preprocess_cpu
}  // namespace ecgkt

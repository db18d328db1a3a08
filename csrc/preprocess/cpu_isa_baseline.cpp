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

Kernel kernel_baseline(bool dbl) {
  if (dbl) return Kernel{&isa_baseline::run_block<double, 2, 2>, 4};
  return Kernel{&isa_baseline::run_block<float, 4, 2>, 8};
}

}  // namespace preprocess_cpu
}  // namespace ecgkt

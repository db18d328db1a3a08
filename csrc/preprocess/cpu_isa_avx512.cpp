// The preprocessing block kernel compiled for avx512; see cpu_kernel.h. All includes come before
// the target pragma so that no shared (inline) code is compiled for this instruction set.
#include <cstdint>
#include <cstring>

#include "preprocess/cpu_params.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl,avx2,fma")

namespace ecgkt {
namespace preprocess_cpu {
namespace isa_avx512 {
#include "preprocess/cpu_kernel.h"
}  // namespace isa_avx512

Kernel kernel_avx512(bool dbl) {
  if (dbl) return Kernel{&isa_avx512::run_block<double, 8, 2>, 16};
  return Kernel{&isa_avx512::run_block<float, 16, 2>, 32};
}

}  // namespace preprocess_cpu
}  // namespace ecgkt
#endif

// Shared between the CPU entry point (cpu.cpp) and the per-ISA kernels (cpu_isa_*.cpp).
// Plain C++ only: the ISA translation units include it before their `#pragma GCC target`.
#pragma once
#include <cstdint>

#include "preprocess/spec.h"

namespace ecgkt {
namespace preprocess_cpu {

enum InputType : int { kHalf = 0, kBFloat16 = 1, kFloat = 2, kDouble = 3, kInt16 = 4 };

// One call of ecgkt::preprocess, as raw pointers. Rows are contiguous, T samples each.
struct Problem {
  const void* x = nullptr;
  int input_type = kFloat;
  int64_t n_rows = 0, T = 0;
  const float* gain = nullptr;      // [n_rows]
  const float* baseline = nullptr;  // [n_rows]
  const double* sos = nullptr;      // [S, 6]
  const double* zi = nullptr;       // [S, 2]
  int S = 0;
  int64_t pad = 0;                  // odd-extension length, already min(padlen, T - 1)
  const double* fir = nullptr;      // [K]
  int64_t K = 0, up = 1, down = 1, T_out = 0;
  bool zscore = false;              // z-score inside the kernel (robust is finished in cpu.cpp)
  void* out = nullptr;              // [n_rows, T_out] float (double for double input)
  int32_t* flags = nullptr;         // [n_rows]
};

// Scratch bytes one block of `rows` rows needs (64-byte aligned by the caller).
inline int64_t scratch_bytes(const Problem& p, bool dbl, int64_t rows) {
  const int64_t elem = dbl ? 8 : 4;
  const int64_t resampled = (p.up != 1 || p.down != 1) ? p.T_out : 0;
  return ((p.T + 2 * p.pad) + resampled) * rows * elem + 64;
}

// Processes rows [row0, min(row0 + rows, n_rows)).
using BlockFn = void (*)(const Problem&, int64_t row0, void* scratch);

// A block kernel and its block size: one row per SIMD lane, several vectors per block so that
// independent recursions hide the FMA latency.
struct Kernel {
  BlockFn fn;
  int64_t rows;
};

Kernel kernel_baseline(bool dbl);
#if defined(__x86_64__) || defined(_M_X64)
Kernel kernel_avx2(bool dbl);
Kernel kernel_avx512(bool dbl);
#endif

}  // namespace preprocess_cpu
}  // namespace ecgkt

// CPU kernel of ecgkt::preprocess (schema in csrc/registry.cpp, semantics in ecgkt/ops/preprocess/).
// Checks the arguments, picks the widest instruction set this CPU has (AVX-512, AVX2+FMA or the x86-64
// baseline; ECGKT_CPU_ISA=baseline|avx2|avx512 caps it), and runs the block kernel of cpu_kernel.h over
// blocks of 16-32 rows (one row per SIMD lane) in parallel with torch::stable::parallel_for. The robust normalisation's
// medians are finished here, per block, right after the block kernel (nth_element in the baseline ISA).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "preprocess/cpu_params.h"
#include "stable_api.h"

namespace ecgkt {
namespace preprocess_cpu {
namespace {

Kernel choose_kernel(bool dbl) {
  const char* cap_env = std::getenv("ECGKT_CPU_ISA");
  const std::string cap = cap_env ? cap_env : "";
  ECGKT_CHECK(cap.empty() || cap == "baseline" || cap == "avx2" || cap == "avx512",
              "ECGKT_CPU_ISA must be baseline, avx2 or avx512, got '", cap, "'");
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx512 && (cap.empty() || cap == "avx512")) return kernel_avx512(dbl);
  if (avx2 && cap != "baseline") return kernel_avx2(dbl);
#endif
  return kernel_baseline(dbl);
}

double median_inplace(double* v, int64_t n) {
  const int64_t mid = n / 2;
  std::nth_element(v, v + mid, v + n);
  const double upper = v[mid];
  if (n % 2) return upper;
  return 0.5 * (upper + *std::max_element(v, v + mid));
}

// Robust normalisation of finished rows: (y - median) / (1.4826 MAD); z-score when the MAD is ~0.
template <typename T>
void robust_rows(T* out, int32_t* flags, int64_t row0, int64_t row1, int64_t n, std::vector<double>& tmp) {
  tmp.resize(n);
  for (int64_t row = row0; row < row1; ++row) {
    if (flags[row] & 2) continue;  // already zeros
    T* y = out + row * n;
    for (int64_t i = 0; i < n; ++i) tmp[i] = double(y[i]);
    const double med = median_inplace(tmp.data(), n);
    for (int64_t i = 0; i < n; ++i) tmp[i] = std::abs(double(y[i]) - med);
    const double mad = median_inplace(tmp.data(), n);
    double shift = med, scale;
    if (mad > spec::kZeroScale) {
      scale = 1.0 / (spec::kMadToSigma * mad);
    } else {
      double sum = 0, ss = 0;
      for (int64_t i = 0; i < n; ++i) sum += double(y[i]);
      shift = sum / double(n);
      for (int64_t i = 0; i < n; ++i) ss += (double(y[i]) - shift) * (double(y[i]) - shift);
      const double sd = std::sqrt(ss / double(n));
      if (sd <= spec::kZeroScale) {
        std::fill(y, y + n, T(0));
        flags[row] |= 2;
        continue;
      }
      scale = 1.0 / sd;
    }
    for (int64_t i = 0; i < n; ++i) y[i] = T((double(y[i]) - shift) * scale);
  }
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Per-thread block scratch kept between calls (about 1 MB for 12-lead 10 s records): fresh pages would be
// faulted in and zeroed on every call. Very long signals get a one-off buffer instead.
void* thread_scratch(size_t bytes, std::unique_ptr<void, FreeDeleter>& one_off) {
  constexpr size_t kKeep = size_t(16) << 20;
  thread_local std::unique_ptr<void, FreeDeleter> kept;
  thread_local size_t kept_bytes = 0;
  if (bytes > kKeep) {
    one_off.reset(std::aligned_alloc(64, bytes));
    return one_off.get();
  }
  if (kept_bytes < bytes) {
    kept.reset(std::aligned_alloc(64, bytes));
    kept_bytes = kept ? bytes : 0;
  }
  return kept.get();
}

std::tuple<Tensor, Tensor> preprocess_cpu(Tensor signal, Tensor gain, Tensor baseline, Tensor sos, Tensor zi,
                                          int64_t padlen, Tensor fir, int64_t up, int64_t down, int64_t normalize) {
  ECGKT_CHECK(signal.dim() == 2, "ecgkt::preprocess: signal must be [N, T], got ", shape(signal));
  const int64_t N = signal.size(0), T = signal.size(1);
  ECGKT_CHECK(T >= 1, "ecgkt::preprocess: signal needs at least one sample");
  int input_type;
  switch (signal.scalar_type()) {
    case ScalarType::Half: input_type = kHalf; break;
    case ScalarType::BFloat16: input_type = kBFloat16; break;
    case ScalarType::Float: input_type = kFloat; break;
    case ScalarType::Double: input_type = kDouble; break;
    case ScalarType::Short: input_type = kInt16; break;
    default: ECGKT_CHECK(false, "ecgkt::preprocess: signal dtype must be float16/bfloat16/float32/float64/int16, got ",
                         dtype_name(signal.scalar_type()));
  }
  ECGKT_CHECK(gain.scalar_type() == ScalarType::Float && gain.dim() == 1 && gain.size(0) == N,
              "ecgkt::preprocess: gain must be float32 [N]");
  ECGKT_CHECK(baseline.scalar_type() == ScalarType::Float && baseline.dim() == 1 && baseline.size(0) == N,
              "ecgkt::preprocess: baseline must be float32 [N]");
  ECGKT_CHECK(sos.scalar_type() == ScalarType::Double && sos.dim() == 2 && sos.size(1) == 6,
              "ecgkt::preprocess: sos must be float64 [S, 6]");
  ECGKT_CHECK(zi.scalar_type() == ScalarType::Double && zi.dim() == 2 && zi.size(0) == sos.size(0) && zi.size(1) == 2,
              "ecgkt::preprocess: zi must be float64 [S, 2]");
  ECGKT_CHECK(fir.scalar_type() == ScalarType::Double && fir.dim() == 1, "ecgkt::preprocess: fir must be float64 [K]");
  ECGKT_CHECK(up >= 1 && down >= 1, "ecgkt::preprocess: up and down must be >= 1");
  const bool resample = up != 1 || down != 1;
  ECGKT_CHECK(!resample || fir.size(0) % 2 == 1, "ecgkt::preprocess: fir must have an odd number of taps");
  ECGKT_CHECK(padlen >= 0, "ecgkt::preprocess: padlen must be >= 0");
  ECGKT_CHECK(normalize >= 0 && normalize <= 2, "ecgkt::preprocess: normalize must be 0, 1 or 2");
  for (const Tensor* t : {&signal, &gain, &baseline, &sos, &zi, &fir})
    ECGKT_CHECK(t->is_cpu(), "ecgkt::preprocess (CPU kernel): all tensors must be on the CPU");

  const bool dbl = signal.scalar_type() == ScalarType::Double;
  const int64_t T_out = resample ? (T * up + down - 1) / down : T;
  using torch::stable::contiguous;
  const Tensor x = contiguous(signal);
  const Tensor g = contiguous(gain), b = contiguous(baseline);
  const Tensor sos_c = contiguous(sos), zi_c = contiguous(zi), fir_c = contiguous(fir);
  Tensor out = torch::stable::empty({N, T_out}, dbl ? ScalarType::Double : ScalarType::Float);
  Tensor flags = torch::stable::empty({N}, ScalarType::Int);
  if (N == 0) return {out, flags};

  Problem p;
  p.x = x.const_data_ptr();
  p.input_type = input_type;
  p.n_rows = N;
  p.T = T;
  p.gain = g.const_data_ptr<float>();
  p.baseline = b.const_data_ptr<float>();
  p.sos = sos_c.const_data_ptr<double>();
  p.zi = zi_c.const_data_ptr<double>();
  p.S = int(sos.size(0));
  p.pad = p.S > 0 ? std::min<int64_t>(padlen, T - 1) : 0;
  p.fir = fir_c.const_data_ptr<double>();
  p.K = fir.size(0);
  p.up = up;
  p.down = down;
  p.T_out = T_out;
  p.zscore = normalize == 1;
  p.out = out.mutable_data_ptr();
  p.flags = flags.mutable_data_ptr<int32_t>();

  const Kernel kernel = choose_kernel(dbl);
  const int64_t rows = kernel.rows;
  const int64_t n_blocks = (N + rows - 1) / rows;
  const size_t bytes = size_t((scratch_bytes(p, dbl, rows) + 63) / 64 * 64);
  torch::stable::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    std::unique_ptr<void, FreeDeleter> one_off;
    void* scratch = thread_scratch(bytes, one_off);
    ECGKT_CHECK(scratch, "ecgkt::preprocess: out of memory for a ", bytes, "-byte scratch buffer");
    std::vector<double> tmp;
    for (int64_t blk = b0; blk < b1; ++blk) {
      kernel.fn(p, blk * rows, scratch);
      if (normalize == 2) {
        const int64_t r0 = blk * rows, r1 = std::min(N, r0 + rows);
        if (dbl) robust_rows(static_cast<double*>(p.out), p.flags, r0, r1, T_out, tmp);
        else robust_rows(static_cast<float*>(p.out), p.flags, r0, r1, T_out, tmp);
      }
    }
  });
  return {out, flags};
}

}  // namespace
}  // namespace preprocess_cpu
}  // namespace ecgkt

STABLE_TORCH_LIBRARY_IMPL(ecgkt, CPU, m) { m.impl("preprocess", TORCH_BOX(&ecgkt::preprocess_cpu::preprocess_cpu)); }

// CUDA kernel of ecgkt::preprocess (the exact function is in ecgkt/ops/preprocess/ and
// docs: convert -> repair -> flat check -> sosfiltfilt (odd extension) -> resample_poly -> normalise).
//
// Design (one fused pass over memory: each input sample is read once, each output written once):
//  * One thread block per lead (row). The padded row (`off` copies of its first extended sample, then the
//    odd extension: Lp = off + T + 2P samples, a whole number of chunks) is staged in shared memory when it
//    fits, otherwise in a global workspace row (L2-resident), with the identical code path. The cascade
//    starts in its steady state for the first extended sample, so the `off` copies leave it there.
//  * The IIR cascade is a linear time-invariant recurrence, so it parallelises over time as a chunked
//    scan. Each thread owns L consecutive samples (chunk<acc_t>(): 63 for float32) of a tile (blockDim * L
//    samples) in registers, and the cascade is applied section by section (state dimension 2):
//      pass:       run the section over the chunk from a zero state, in place -> the chunk's end state g_i;
//      scan:       true end states h_i = sum_{j<=i} A^{(i-j)L} g_j by a Kogge-Stone scan of 2-vectors with
//                  the transfer matrices A^{kL} (warp shuffles, then one warp over the warp totals);
//      correction: add the zero-input response to the true start state h_{i-1}: y_k += C A^k h, two
//                  multiply-adds a sample instead of a second run of the section.
//    Sections with poles near z = 1 (the high-pass) run in a delta form that keeps float32 accurate
//    (delta_step). Rows longer than a tile carry each section's state from tile to tile. The backward
//    (reverse-time) pass is the same scan in reverse thread order. The tables (transfer matrices and
//    zero-input responses in the compute type, coefficients) are computed once per call by tables_kernel.
//    Instructions per sample, counted in the SASS: benches/bench_preprocess_sass.py.
//  * Invalid-sample repair (rare) uses block max/min scans of the nearest valid index; flat/all-invalid
//    rows exit early with zeros. Polyphase resampling reads the filtered row from shared memory, and the
//    z-score uses two block reductions (mean, then centred sum of squares) before the single store.
//  * Robust normalisation computes its two medians with ATen's kthvalue (through the stable dispatcher)
//    on row chunks of the unnormalised kernel output (allowed by the spec); two element-wise kernels here
//    take the absolute deviations and apply the result. Everything else is fused.
// Stable ABI only (csrc/stable_api.h): the library loads into any torch from the version it targets.
// Compute type: float32 for every input dtype except float64 (float64 throughout).
#ifdef ECGKT_CUDA_EMULATION  // plain C++ on the CPU, for tests without a GPU (see cuda_emulation.h)
#include "cuda_emulation.h"
#else
#ifndef USE_CUDA
#define USE_CUDA 1  // declares the CUDA parts of the C shims (the current stream)
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>

#include "stable_api.h"
#define ECGKT_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "spec.h"

namespace ecgkt {
namespace {

// Samples per thread per tile (odd: conflict-free strided shared-memory access) and threads per block at most
// (the register budget, 65536 / threads: 128 registers for float32, 255 for float64, no spills). Long chunks
// amortise the scan of each section's states over more samples.
template <typename acc_t>
__host__ __device__ constexpr int chunk() { return sizeof(acc_t) == 8 ? 31 : 63; }
template <typename acc_t>
__host__ __device__ constexpr int max_threads() { return 256; }
constexpr int kPowers = 32 + 5;      // R_k = A^{kL} for k = 1..32, then Q_d = A^{32L 2^d} for d = 0..4
// Per section, computed once per call (tables_kernel): kDTable doubles, the step's five coefficients, the
// start state per unit of input (two) and the section's form; and atable<acc_t>() values of the compute type:
// the transfer matrices, then the zero-input response C A^k for k = 0..L-1 (the correction that replaces a
// second run of the section).
constexpr int kDTable = 8;
constexpr int kForm = 7;  // index of the form in the doubles
// Transposed direct form II, as scipy's sosfilt: (b0 b1 b2 a1 a2, zi0 zi1). Delta form, for sections with
// poles near z = 1 in float32 (see delta_step): (e d2 cs cv cu, u0 0); kDeltaHighPass when cv = cu = 0.
enum SectionForm : int { kTransposed = 0, kDelta = 1, kDeltaHighPass = 2 };
template <typename acc_t>
__host__ __device__ constexpr int atable() { return kPowers * 4 + 2 * chunk<acc_t>(); }
constexpr double kFlatPtp = spec::kFlatPtp;  // csrc/preprocess/spec.h
constexpr double kZeroScale = spec::kZeroScale;
constexpr double kMadToSigma = spec::kMadToSigma;

template <typename acc_t>
struct Params {
  const void* x;
  const float* gain;
  const float* baseline;
  const double* dtab;  // tables_kernel's output
  const acc_t* atab;
  const acc_t* fir;
  acc_t* out;
  int32_t* flags;
  acc_t* work;  // [N, Lp] global staging when the row does not fit in shared memory, else nullptr
  int S, K, up, down, half, normalize;
  int T, P, off, Lp, T_out;  // Lp = off + T + 2P: the padded row, a multiple of the chunk when S > 0
};

// ------------------------------------------------------------------------------------------------
// input conversion
// ------------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
#ifndef ECGKT_CUDA_EMULATION
// torch's CUDA flags (__CUDA_NO_HALF_CONVERSIONS__ ...) disable the implicit conversions: explicit intrinsics
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
#endif

template <typename in_t>
struct Input {
  template <typename acc_t>
  static __device__ __forceinline__ acc_t load(const in_t* x, int i, acc_t inv_gain, acc_t shift, bool& bad) {
    acc_t v = fma(static_cast<acc_t>(to_float(x[i])), inv_gain, shift);
    bad = !isfinite(v);
    return v;
  }
};
template <>
struct Input<double> {
  template <typename acc_t>
  static __device__ __forceinline__ acc_t load(const double* x, int i, acc_t inv_gain, acc_t shift, bool& bad) {
    acc_t v = fma(static_cast<acc_t>(x[i]), inv_gain, shift);
    bad = !isfinite(v);
    return v;
  }
};
template <>
struct Input<int16_t> {
  template <typename acc_t>
  static __device__ __forceinline__ acc_t load(const int16_t* x, int i, acc_t inv_gain, acc_t shift, bool& bad) {
    int16_t raw = x[i];
    bad = raw == INT16_MIN;  // WFDB format-16 "no sample"
    return fma(static_cast<acc_t>(raw), inv_gain, shift);
  }
};

// ------------------------------------------------------------------------------------------------
// block-wide helpers (blockDim.x is a multiple of 32)
// ------------------------------------------------------------------------------------------------
struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a < b ? a : b; }
};

// All-reduce over the block; every thread gets the result. `scratch` holds 32 values.
template <typename T, typename Op>
__device__ T block_all_reduce(T v, Op op, T identity, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : identity;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Rank of this thread in scan order: ascending thread index forward, descending backward.
__device__ __forceinline__ int scan_rank(bool backward) {
  return backward ? static_cast<int>(blockDim.x) - 1 - static_cast<int>(threadIdx.x) : threadIdx.x;
}
// Value held by the thread `o` ranks earlier in scan order, within the warp.
template <typename T>
__device__ __forceinline__ T shfl_prev(T v, int o, bool backward) {
  return backward ? __shfl_down_sync(0xffffffffu, v, o) : __shfl_up_sync(0xffffffffu, v, o);
}

// Exclusive scan of ints in scan order (identity for rank 0). `scratch` holds 32 ints.
template <typename Op>
__device__ int block_exclusive_scan(int v, Op op, int identity, bool backward, int* scratch) {
  const int rank = scan_rank(backward), lane = rank & 31, warp = rank >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int other = shfl_prev(v, o, backward);
    if (lane >= o) v = op(v, other);
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = v;
  __syncthreads();
  int before = identity;
  for (int w = 0; w < warp; ++w) before = op(before, scratch[w]);
  int inclusive = op(before, v);
  int prev = shfl_prev(inclusive, 1, backward);
  return lane == 0 ? before : prev;
}

// ------------------------------------------------------------------------------------------------
// the chunked scan of one second-order section
// ------------------------------------------------------------------------------------------------
struct Mat2 {
  double a, b, c, d;
};
__device__ Mat2 mat_mul(const Mat2& x, const Mat2& y) {
  return {x.a * y.a + x.b * y.c, x.a * y.b + x.b * y.d, x.c * y.a + x.d * y.c, x.c * y.b + x.d * y.d};
}
__device__ Mat2 mat_power(Mat2 base, long long e) {
  Mat2 result{1, 0, 0, 1};
  while (e > 0) {
    if (e & 1) result = mat_mul(result, base);
    base = mat_mul(base, base);
    e >>= 1;
  }
  return result;
}

template <typename m_t, typename c_t>
__device__ __forceinline__ void mat_vec_add(const m_t* m, c_t x0, c_t x1, c_t& y0, c_t& y1) {
  y0 += static_cast<c_t>(m[0]) * x0 + static_cast<c_t>(m[1]) * x1;
  y1 += static_cast<c_t>(m[2]) * x0 + static_cast<c_t>(m[3]) * x1;
}

// Inclusive scan h_i = sum_{j<=i} A^{(i-j)L} g_j over the block in scan order. Returns the inclusive
// state in (h0, h1) and the previous rank's inclusive state (this chunk's true start) in (e0, e1).
// `powers`: the section's transfer matrices in c_t, the section's compute type; `scratch` holds 128 c_t.
template <bool kBackward, typename c_t>
__device__ __forceinline__ void scan_section_states(const c_t* powers, c_t& h0, c_t& h1, c_t& e0, c_t& e1,
                                                    c_t* scratch) {
  const int rank = scan_rank(kBackward), lane = rank & 31, warp = rank >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int d = 0; d < 5; ++d) {
    const int o = 1 << d;
    c_t p0 = shfl_prev(h0, o, kBackward), p1 = shfl_prev(h1, o, kBackward);
    if (lane >= o) mat_vec_add(powers + (o - 1) * 4, p0, p1, h0, h1);  // R_o = A^{oL}
  }
  __syncthreads();  // scratch reuse
  if (lane == 31) {
    scratch[2 * warp] = h0;
    scratch[2 * warp + 1] = h1;
  }
  __syncthreads();
  if (threadIdx.x < 32) {  // one warp scans the warp totals (lane = warp rank)
    const int w = threadIdx.x;
    c_t t0 = w < nwarps ? scratch[2 * w] : c_t(0);
    c_t t1 = w < nwarps ? scratch[2 * w + 1] : c_t(0);
#pragma unroll
    for (int d = 0; d < 5; ++d) {
      const int o = 1 << d;
      c_t p0 = __shfl_up_sync(0xffffffffu, t0, o), p1 = __shfl_up_sync(0xffffffffu, t1, o);
      if (w >= o) mat_vec_add(powers + (32 + d) * 4, p0, p1, t0, t1);  // Q_d = A^{32L 2^d}
    }
    if (w < nwarps) {
      scratch[64 + 2 * w] = t0;
      scratch[64 + 2 * w + 1] = t1;
    }
  }
  __syncthreads();
  c_t w0 = 0, w1 = 0;  // true state at the end of the previous warp's last chunk
  if (warp > 0) {
    w0 = scratch[64 + 2 * (warp - 1)];
    w1 = scratch[64 + 2 * (warp - 1) + 1];
  }
  mat_vec_add(powers + lane * 4, w0, w1, h0, h1);  // R_{lane+1}: lane+1 chunks from there to here
  c_t p0 = shfl_prev(h0, 1, kBackward), p1 = shfl_prev(h1, 1, kBackward);
  e0 = lane == 0 ? w0 : p0;
  e1 = lane == 0 ? w1 : p1;
}

// One transposed direct-form II step: five multiply-adds (written as fma: the compiler would otherwise
// round b1 x - a1 y separately).
template <typename c_t>
__device__ __forceinline__ c_t biquad_step(c_t x, c_t& z0, c_t& z1, c_t b0, c_t b1, c_t b2, c_t a1, c_t a2) {
  const c_t y = fma(b0, x, z0);
  z0 = fma(b1, x, fma(-a1, y, z1));
  z1 = fma(b2, x, -a2 * y);
  return y;
}

// One delta-form step: direct form II with the state kept as u = e w (e = A(1) = 1 + a1 + a2) and
// dv = w[n] - w[n-1]. For poles near z = 1 (the 0.5 Hz high-pass) the transposed form's float32 round-off
// grows like 1/(1 - |p|)^1.5 (3e-3 of the peak at 1000 Hz); this one stays at ~1e-6, in five operations for
// a high-pass (cv = cu = 0). d is w's second difference; y = b0 w[n] + b1 w[n-1] + b2 w[n-2].
template <bool kHighPass, typename c_t>
__device__ __forceinline__ c_t delta_step(c_t x, c_t& u, c_t& dv, c_t e, c_t d2, c_t cs, c_t cv, c_t cu) {
  const c_t d = fma(-d2, dv, x - u);
  dv += d;
  u = fma(e, dv, u);
  return kHighPass ? cs * d : fma(cs, d, fma(cv, dv, cu * u));
}

// One section over one tile, in place. The section is linear, so its output from the true start state e is
// the output from a zero state plus the zero-input response to e: one run from a zero state (the origin
// starts from the true initial state), the scan of the chunk end states, then r[k] += C_k . e with
// C_k = C A^k, two multiply-adds a sample. Samples are processed in scan order: ascending forward,
// descending backward.
template <int kSectionForm, bool kBackward, typename acc_t, int L>
__device__ __forceinline__ void filter_section(acc_t (&r)[L], bool is_origin, bool last_rank, const double* coefs,
                                               const acc_t* powers, const acc_t* response, double* carry,
                                               acc_t* scratch) {
  const acc_t c0 = static_cast<acc_t>(coefs[0]), c1 = static_cast<acc_t>(coefs[1]);
  const acc_t c2 = static_cast<acc_t>(coefs[2]), c3 = static_cast<acc_t>(coefs[3]);
  const acc_t c4 = static_cast<acc_t>(coefs[4]);
  acc_t z0 = 0, z1 = 0;
  if (is_origin) {
    z0 = static_cast<acc_t>(carry[0]);
    z1 = static_cast<acc_t>(carry[1]);
  }
#pragma unroll
  for (int j = 0; j < L; ++j) {
    const int k = kBackward ? L - 1 - j : j;
    if constexpr (kSectionForm == kTransposed)
      r[k] = biquad_step(r[k], z0, z1, c0, c1, c2, c3, c4);
    else
      r[k] = delta_step<kSectionForm == kDeltaHighPass>(r[k], z0, z1, c0, c1, c2, c3, c4);
  }
  acc_t e0, e1;
  scan_section_states<kBackward>(powers, z0, z1, e0, e1, scratch);
  if (last_rank) {  // the origin read its carry before the scan's barriers
    carry[0] = z0;
    carry[1] = z1;
  }
  // the origin's e is 0: it is rank 0, or the ranks before it hold zeros (beyond the row's end)
#pragma unroll
  for (int j = 0; j < L; ++j) {
    const int k = kBackward ? L - 1 - j : j;
    r[k] = fma(response[2 * j], e0, fma(response[2 * j + 1], e1, r[k]));
  }
}

// Filters one tile (held in registers, r[k] = buf[base + k]) through the whole cascade in one direction.
// `carry` holds each section's state entering this tile (the steady state for the first input, for the
// first tile) and is updated to the state leaving it. Every chunk is whole (the row is padded to a
// multiple of L). Sections near z = 1 run in delta form in float32 (float64 data: sosfilt's form throughout).
template <bool kBackward, typename acc_t, int L>
__device__ __forceinline__ void filter_tile(acc_t (&r)[L], int origin, int S, const double* dtab, const acc_t* atab,
                                            double* carry, acc_t* scratch) {
  const bool is_origin = static_cast<int>(threadIdx.x) == origin;
  const bool last_rank = scan_rank(kBackward) == static_cast<int>(blockDim.x) - 1;
  __syncthreads();  // the previous tile's carry writes (with one section there is no barrier in between)
  for (int s = 0; s < S; ++s) {
    const double* coefs = dtab + s * kDTable;
    const acc_t* powers = atab + s * atable<acc_t>();
    const acc_t* response = powers + kPowers * 4;
    double* c = carry + 2 * s;
    const int form = static_cast<int>(coefs[kForm]);
    if (sizeof(acc_t) == 8 || form == kTransposed)
      filter_section<kTransposed, kBackward>(r, is_origin, last_rank, coefs, powers, response, c, scratch);
    else if (form == kDeltaHighPass)
      filter_section<kDeltaHighPass, kBackward>(r, is_origin, last_rank, coefs, powers, response, c, scratch);
    else
      filter_section<kDelta, kBackward>(r, is_origin, last_rank, coefs, powers, response, c, scratch);
  }
}

// A chunk is wholly inside the padded row (a whole number of chunks) or wholly past its end (zeros).
template <typename acc_t, int L>
__device__ __forceinline__ void load_chunk(acc_t (&r)[L], const acc_t* buf, int base, int limit) {
  if (base < limit) {
#pragma unroll
    for (int k = 0; k < L; ++k) r[k] = buf[base + k];
  } else {
#pragma unroll
    for (int k = 0; k < L; ++k) r[k] = 0;
  }
}
template <typename acc_t, int L>
__device__ __forceinline__ void store_chunk(const acc_t (&r)[L], acc_t* buf, int base, int limit) {
  if (base < limit) {
#pragma unroll
    for (int k = 0; k < L; ++k) buf[base + k] = r[k];
  }
}

// Sets each section's carry to its steady state for a constant input x0.
__device__ void init_carry(const double* dtab, int S, double x0, double* carry) {
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    const double* c = dtab + s * kDTable;
    carry[2 * s] = c[5] * x0;
    carry[2 * s + 1] = c[6] * x0;
  }
}

// The tables of each section, once per call (one block per section): the transfer matrices over 1..32 chunks
// and 32 * 2^d chunks, the zero-input response over one chunk, the step's coefficients and the start state.
// State and output row of the zero-input update (x = 0): transposed form (z0, z1) <- (z1 - a1 z0, -a2 z0),
// y = z0; delta form (u, dv) <- ((1 - e) u + e a2 dv, a2 dv - u), y = (cu (1 - e) - cs - cv) u +
// (cu e a2 + cv a2 - cs d2) dv.
template <typename acc_t>
__global__ void tables_kernel(const double* sos, const double* zi, double* dtab, acc_t* atab) {
  constexpr int L = chunk<acc_t>();
  const int s = blockIdx.x;
  const double* sec = sos + 6 * s;
  const double b0 = sec[0] / sec[3], b1 = sec[1] / sec[3], b2 = sec[2] / sec[3];
  const double a1 = sec[4] / sec[3], a2 = sec[5] / sec[3], e = 1.0 + a1 + a2;
  const bool delta = sizeof(acc_t) == 4 && e < spec::kNearZ1;
  const double cs = b2, cv = -(b1 + 2.0 * b2), cu = (b0 + b1 + b2) / e, d2 = 1.0 - a2;
  const Mat2 A = delta ? Mat2{1.0 - e, e * a2, -1.0, a2} : Mat2{-a1, 1.0, -a2, 0.0};
  const double C0 = delta ? cu * (1.0 - e) - cs - cv : 1.0, C1 = delta ? cu * e * a2 + cv * a2 - cs * d2 : 0.0;
  acc_t* a = atab + s * atable<acc_t>();
  for (int j = threadIdx.x; j < kPowers + L; j += blockDim.x) {
    if (j < kPowers) {
      const long long n = j < 32 ? static_cast<long long>(j + 1) * L : (32LL * L) << (j - 32);
      const Mat2 m = mat_power(A, n);
      a[4 * j] = static_cast<acc_t>(m.a);
      a[4 * j + 1] = static_cast<acc_t>(m.b);
      a[4 * j + 2] = static_cast<acc_t>(m.c);
      a[4 * j + 3] = static_cast<acc_t>(m.d);
    } else {
      const int k = j - kPowers;
      const Mat2 m = mat_power(A, k);  // y_k = C A^k z for a start state z and zero input
      a[kPowers * 4 + 2 * k] = static_cast<acc_t>(C0 * m.a + C1 * m.c);
      a[kPowers * 4 + 2 * k + 1] = static_cast<acc_t>(C0 * m.b + C1 * m.d);
    }
  }
  if (threadIdx.x == 0) {
    double* c = dtab + s * kDTable;
    if (delta) {
      double dc_in = 1.0;  // the steady input per unit of the cascade's input: the earlier sections' DC gain
      for (int q = 0; q < s; ++q) {
        const double* o = sos + 6 * q;
        dc_in *= (o[0] + o[1] + o[2]) / (o[3] + o[4] + o[5]);
      }
      const double v[kDTable] = {e, d2, cs, cv, cu, dc_in, 0.0,
                                 cv == 0.0 && cu == 0.0 ? double(kDeltaHighPass) : double(kDelta)};
      for (int q = 0; q < kDTable; ++q) c[q] = v[q];
    } else {
      const double v[kDTable] = {b0, b1, b2, a1, a2, zi[2 * s], zi[2 * s + 1], double(kTransposed)};
      for (int q = 0; q < kDTable; ++q) c[q] = v[q];
    }
  }
}

// The per-sample loops outside the filter (benches/bench_preprocess_sass.py counts their bodies).
// f(i) for i = threadIdx.x, + blockDim.x, ... < n; four at a time without bounds checks in between, so the
// loop's own instructions are spread over four samples.
template <typename F>
__device__ __forceinline__ void block_strided(int n, F f) {
  const int step = blockDim.x;
  int i = threadIdx.x;
  for (; i + 3 * step < n; i += 4 * step) {
    f(i);
    f(i + step);
    f(i + 2 * step);
    f(i + 3 * step);
  }
  for (; i < n; i += step) f(i);
}
// Converts a row into y as x * inv_gain + shift; invalid samples become NaN, counted; lo/hi: the range of the
// valid ones (fmin/fmax ignore the NaNs).
template <typename in_t, typename acc_t>
__device__ __forceinline__ void convert_row(const in_t* x, int T, acc_t inv_gain, acc_t shift, acc_t* y, int& n_bad,
                                            acc_t& lo, acc_t& hi) {
  block_strided(T, [&](int t) {
    bool bad;
    const acc_t v = Input<in_t>::load(x, t, inv_gain, shift, bad);
    n_bad += bad;
    const acc_t w = bad ? acc_t(NAN) : v;
    lo = fmin(lo, w);
    hi = fmax(hi, w);
    y[t] = w;
  });
}
template <typename acc_t>
__device__ __forceinline__ acc_t row_sum(const acc_t* y, int n) {
  acc_t sum = 0;
  block_strided(n, [&](int i) { sum += y[i]; });
  return sum;
}
template <typename acc_t>
__device__ __forceinline__ acc_t row_centred_squares(const acc_t* y, int n, acc_t mean) {
  acc_t ss = 0;
  block_strided(n, [&](int i) {
    const acc_t d = y[i] - mean;
    ss = fma(d, d, ss);
  });
  return ss;
}
// out = y * scale + shift (shift = -mean * scale)
template <typename acc_t>
__device__ __forceinline__ void store_normalised(const acc_t* y, int n, acc_t scale, acc_t shift, acc_t* out) {
  block_strided(n, [&](int i) { out[i] = fma(y[i], scale, shift); });
}

// ------------------------------------------------------------------------------------------------
// the kernel: one block per row
// ------------------------------------------------------------------------------------------------
template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(max_threads<acc_t>()) preprocess_kernel(Params<acc_t> p) {
  constexpr int L = chunk<acc_t>();
  ECGKT_DYNAMIC_SHARED(smem_raw);
  const int S = p.S;
  double* dtab = reinterpret_cast<double*>(smem_raw);     // S * kDTable
  double* carry = dtab + S * kDTable;                     // 2S
  double* scan_scratch = carry + 2 * S;                   // 128
  acc_t* atab = reinterpret_cast<acc_t*>(scan_scratch + 128);  // S * atable
  acc_t* red = atab + S * atable<acc_t>();                // 32
  acc_t* bcast = red + 32;                                // 8
  int* ired = reinterpret_cast<int*>(bcast + 8);          // 32
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int T = p.T, P = p.P, Lp = p.Lp, T_out = p.T_out;
  acc_t* buf;   // the padded row: `off` copies of its first extended sample, then the odd extension; Lp samples
  acc_t* obuf;  // the resampled row, T_out samples
  if (p.work == nullptr) {
    buf = reinterpret_cast<acc_t*>(ired + 32);
    obuf = buf + Lp;
  } else {
    buf = p.work + row * Lp;
    obuf = p.out + row * T_out;
  }
  acc_t* y = buf + p.off + P;  // the row itself, T samples
  acc_t* out = p.out + row * T_out;

  // the tables of tables_kernel, into shared memory
  for (int i = tid; i < S * kDTable; i += nthreads) dtab[i] = p.dtab[i];
  for (int i = tid; i < S * atable<acc_t>(); i += nthreads) atab[i] = p.atab[i];

  // 1. convert into y[t]; invalid samples become NaN; count them and the range of valid values
  const in_t* x = static_cast<const in_t*>(p.x) + row * T;
  const acc_t inv_gain = acc_t(1) / static_cast<acc_t>(p.gain[row]);
  const acc_t shift = -static_cast<acc_t>(p.baseline[row]) * inv_gain;  // (x - baseline) / gain
  int n_bad = 0;
  acc_t lo = INFINITY, hi = -INFINITY;
  convert_row<in_t>(x, T, inv_gain, shift, y, n_bad, lo, hi);
  n_bad = block_all_reduce(n_bad, Sum(), 0, ired);
  lo = block_all_reduce(lo, Min(), acc_t(INFINITY), red);
  hi = block_all_reduce(hi, Max(), acc_t(-INFINITY), red);
  int flags = n_bad > 0 ? 1 : 0;
  if (n_bad == T || hi - lo <= static_cast<acc_t>(kFlatPtp)) {  // all invalid or flat: zeros
    for (int n = tid; n < T_out; n += nthreads) out[n] = 0;
    if (tid == 0) p.flags[row] = flags | 2;
    return;
  }

  // 2. repair: linear interpolation between the nearest valid samples (edges hold the end value)
  if (n_bad > 0) {
    const int seg = (T + nthreads - 1) / nthreads, t0 = min(T, tid * seg), t1 = min(T, t0 + seg);
    int last_valid = -1, first_valid = T;
    for (int t = t0; t < t1; ++t)
      if (!isnan(y[t])) {
        last_valid = t;
        if (first_valid == T) first_valid = t;
      }
    int prev = block_exclusive_scan(last_valid, Max(), -1, false, ired);
    int after = block_exclusive_scan(first_valid, Min(), T, true, ired);
    int next = -1;  // next valid index for the current invalid run
    for (int t = t0; t < t1; ++t) {
      acc_t v = y[t];
      if (!isnan(v)) {
        prev = t;
        continue;
      }
      if (next <= t) {
        next = t + 1;
        while (next < t1 && isnan(y[next])) ++next;
        if (next == t1) next = after;
      }
      acc_t filled;
      if (prev < 0) {
        filled = y[next];
      } else if (next >= T) {
        filled = y[prev];
      } else {
        acc_t vp = y[prev], vn = y[next];
        filled = vp + (vn - vp) * static_cast<acc_t>(t - prev) / static_cast<acc_t>(next - prev);
      }
      y[t] = filled;  // only invalid samples are written: no other thread reads them
    }
  }
  __syncthreads();

  // 3. zero-phase filter: odd extension, forward cascade, backward cascade. The `off` samples before the
  // extension repeat its first value: the cascade starts in its steady state for that value and stays there,
  // and the padded row is a whole number of chunks, so the filter needs no bounds checks.
  if (S > 0) {
    const acc_t v0 = y[0], vl = y[T - 1];
    for (int j = tid; j < P; j += nthreads) {
      y[-1 - j] = 2 * v0 - y[1 + j];
      y[T + j] = 2 * vl - y[T - 2 - j];
    }
    const acc_t first = P > 0 ? 2 * v0 - y[P] : v0;
    for (int j = tid; j < p.off; j += nthreads) buf[j] = first;
    init_carry(dtab, S, first, carry);
    __syncthreads();
    const int tile = nthreads * L, n_tiles = (Lp + tile - 1) / tile, base = tid * L;
    acc_t r[L];
    for (int i = 0; i < n_tiles; ++i) {
      load_chunk(r, buf, i * tile + base, Lp);
      filter_tile<false>(r, 0, S, dtab, atab, carry, reinterpret_cast<acc_t*>(scan_scratch));
      if (n_tiles > 1) store_chunk(r, buf, i * tile + base, Lp);
    }
    // the backward pass starts from zi * (last forward output)
    if (n_tiles == 1) {
      if (base + L == Lp) bcast[0] = r[L - 1];
      // threads past the row's end: zeros, so that they add nothing to the backward scan
      if (base >= Lp) {
#pragma unroll
        for (int k = 0; k < L; ++k) r[k] = 0;
      }
    }
    __syncthreads();
    if (n_tiles > 1 && tid == 0) bcast[0] = buf[Lp - 1];
    __syncthreads();
    init_carry(dtab, S, bcast[0], carry);
    for (int i = n_tiles - 1; i >= 0; --i) {
      const int start = i * tile, origin = (min(start + tile, Lp) - start) / L - 1;
      if (n_tiles > 1) load_chunk(r, buf, start + base, Lp);
      filter_tile<true>(r, origin, S, dtab, atab, carry, reinterpret_cast<acc_t*>(scan_scratch));
      store_chunk(r, buf, start + base, Lp);
    }
    __syncthreads();
  }

  // 4. resample (polyphase, zero outside the row) into obuf; sum for the mean
  const bool resample = p.up != 1 || p.down != 1;
  acc_t sum = 0;
  if (resample) {
    const int up = p.up, K = p.K;
    for (int n = tid; n < T_out; n += nthreads) {
      const long long r = static_cast<long long>(n) * p.down + p.half;
      const int k0 = static_cast<int>(r % up);
      const long long m0 = (r - k0) / up;  // y index of tap k0
      const long long j_lo = m0 - (T - 1) > 0 ? m0 - (T - 1) : 0;
      const long long j_hi = min(static_cast<long long>((K - 1 - k0) / up), m0);
      acc_t acc = 0;
      for (long long j = j_lo; j <= j_hi; ++j) acc += p.fir[k0 + j * up] * y[m0 - j];
      obuf[n] = acc;
      sum += acc;
    }
  } else {
    sum = row_sum(y, T_out);
  }
  const acc_t* res = resample ? obuf : y;

  // 5. normalise and store
  acc_t mean = 0, scale = 1;
  if (p.normalize == 1) {
    mean = block_all_reduce(sum, Sum(), acc_t(0), red) / static_cast<acc_t>(T_out);
    const acc_t ss = row_centred_squares(res, T_out, mean);
    const acc_t stdev = sqrt(block_all_reduce(ss, Sum(), acc_t(0), red) / static_cast<acc_t>(T_out));
    if (!(stdev > static_cast<acc_t>(kZeroScale))) {
      for (int n = tid; n < T_out; n += nthreads) out[n] = 0;
      if (tid == 0) p.flags[row] = flags | 2;
      return;
    }
    scale = acc_t(1) / stdev;
  }
  store_normalised(res, T_out, scale, -mean * scale, out);
  if (tid == 0) p.flags[row] = flags;
}

#ifdef ECGKT_SASS_PROBES
// Pieces of preprocess_kernel<int16_t, float> on their own, for benches/bench_preprocess_sass.py to count in
// the compiled SASS (built only there, with -DECGKT_SASS_PROBES), the row in shared memory as in the kernel.
// sass_probe_tile<kPiece, kBackward>: one chunk per thread, loaded and stored as the kernel does (kPiece 0),
// with one transposed-form section (1) or one delta-form high-pass section (2) in between; the other probes
// hold one loop.
template <int kPiece, bool kBackward>
__global__ void __launch_bounds__(max_threads<float>()) sass_probe_tile(int Lp, int origin) {
  constexpr int L = chunk<float>();
  ECGKT_DYNAMIC_SHARED(smem_raw);
  double* dtab = reinterpret_cast<double*>(smem_raw);
  double* carry = dtab + kDTable;
  float* scratch = reinterpret_cast<float*>(carry + 2);
  float* atab = scratch + 256;
  float* buf = atab + atable<float>();
  const bool is_origin = static_cast<int>(threadIdx.x) == origin;
  const bool last_rank = scan_rank(kBackward) == static_cast<int>(blockDim.x) - 1;
  float r[L];
  const int base = threadIdx.x * L;
  load_chunk(r, buf, base, Lp);
  if constexpr (kPiece == 1)
    filter_section<kTransposed, kBackward>(r, is_origin, last_rank, dtab, atab, atab + kPowers * 4, carry, scratch);
  if constexpr (kPiece == 2)
    filter_section<kDeltaHighPass, kBackward>(r, is_origin, last_rank, dtab, atab, atab + kPowers * 4, carry,
                                              scratch);
  store_chunk(r, buf, base, Lp);
}
__global__ void sass_probe_convert(const int16_t* x, int T, float inv_gain, float shift, int* counts, float* range) {
  ECGKT_DYNAMIC_SHARED(smem_raw);
  int n_bad = 0;
  float lo = INFINITY, hi = -INFINITY;
  convert_row<int16_t>(x, T, inv_gain, shift, reinterpret_cast<float*>(smem_raw), n_bad, lo, hi);
  counts[threadIdx.x] = n_bad;
  range[threadIdx.x] = hi - lo;
}
__global__ void sass_probe_sum(int n, float* out) {
  ECGKT_DYNAMIC_SHARED(smem_raw);
  out[threadIdx.x] = row_sum(reinterpret_cast<const float*>(smem_raw), n);
}
__global__ void sass_probe_squares(int n, float mean, float* out) {
  ECGKT_DYNAMIC_SHARED(smem_raw);
  out[threadIdx.x] = row_centred_squares(reinterpret_cast<const float*>(smem_raw), n, mean);
}
__global__ void sass_probe_store(int n, float scale, float shift, float* out) {
  ECGKT_DYNAMIC_SHARED(smem_raw);
  store_normalised(reinterpret_cast<const float*>(smem_raw), n, scale, shift, out);
}
template __global__ void sass_probe_tile<0, false>(int, int);
template __global__ void sass_probe_tile<1, false>(int, int);
template __global__ void sass_probe_tile<1, true>(int, int);
template __global__ void sass_probe_tile<2, false>(int, int);
template __global__ void sass_probe_tile<2, true>(int, int);
#endif  // ECGKT_SASS_PROBES

// ------------------------------------------------------------------------------------------------
// host side
// ------------------------------------------------------------------------------------------------
struct LaunchConfig {
  int threads;
  size_t smem;          // dynamic shared memory bytes
  bool global_staging;  // the row lives in a global workspace instead of shared memory
};

// The padded row of one launch: P samples of odd extension on each side, then `off` more at the start so
// that Lp = off + T + 2P is a whole number of chunks (no padding without a filter).
struct RowLayout {
  int P, off, Lp, T_out;
};
template <typename acc_t>
RowLayout row_layout(int S, int T, int padlen, int up, int down) {
  const int P = S > 0 ? std::min(padlen, T - 1) : 0, T_ext = T + 2 * P, L = chunk<acc_t>();
  const int off = S > 0 ? (L - T_ext % L) % L : 0;
  return {P, off, T_ext + off, static_cast<int>((static_cast<long long>(T) * up + down - 1) / down)};
}

// Enough threads for one tile to cover the padded row (tile = threads * chunk), at most thread_cap
// (a multiple of 32); the row and the resampled row in shared memory when they fit in smem_limit.
template <typename acc_t>
LaunchConfig launch_config(int S, const RowLayout& row, bool resample, long long smem_limit, int thread_cap) {
  const int needed = (row.Lp + chunk<acc_t>() - 1) / chunk<acc_t>();
  const int threads = std::min(thread_cap, std::max(32, (needed + 31) / 32 * 32));
  const size_t fixed = sizeof(double) * (S * kDTable + 2 * S + 128) +
                       sizeof(acc_t) * (S * atable<acc_t>() + 32 + 8) + sizeof(int) * 32;
  const size_t rows = sizeof(acc_t) * (static_cast<size_t>(row.Lp) + (resample ? row.T_out : 0));
  if (static_cast<long long>(fixed + rows) <= smem_limit) return {threads, fixed + rows, false};
  return {threads, fixed, true};
}

template <typename acc_t>
Params<acc_t> make_params(const void* x, const float* gain, const float* baseline, const double* dtab,
                          const acc_t* atab, int S, const acc_t* fir, int K, int up, int down, int normalize,
                          int T, const RowLayout& row, acc_t* out, int32_t* flags, acc_t* work) {
  const bool resample = up != 1 || down != 1;
  Params<acc_t> p;
  p.x = x;
  p.gain = gain;
  p.baseline = baseline;
  p.dtab = dtab;
  p.atab = atab;
  p.fir = resample ? fir : nullptr;
  p.out = out;
  p.flags = flags;
  p.work = work;
  p.S = S;
  p.K = resample ? K : 0;
  p.up = up;
  p.down = down;
  p.half = resample ? (K - 1) / 2 : 0;
  p.normalize = normalize;
  p.T = T;
  p.P = row.P;
  p.off = row.off;
  p.Lp = row.Lp;
  p.T_out = row.T_out;
  return p;
}

// Doubles of the tables workspace: S * kDTable, then the acc_t tables (rounded up to whole doubles).
template <typename acc_t>
size_t table_doubles(int S) {
  return static_cast<size_t>(S) * kDTable + (static_cast<size_t>(S) * atable<acc_t>() * sizeof(acc_t) + 7) / 8;
}

constexpr int kElementwiseThreads = 256;

// Robust normalisation's element-wise steps over a chunk of rows (n samples each), after the order
// statistics: lo/hi are the (n+1)/2-th and (n/2+1)-th smallest values of a row (equal for odd n), the
// median their mean. One thread per sample.
template <typename acc_t>
__device__ __forceinline__ acc_t median_of(const acc_t* lo, const acc_t* hi, int64_t row) {
  return (lo[row] + hi[row]) * acc_t(0.5);
}

template <typename acc_t>
__global__ void abs_deviation_kernel(acc_t* dev, const acc_t* out, const acc_t* lo, const acc_t* hi, int64_t n,
                                     int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) dev[i] = fabs(out[i] - median_of(lo, hi, i / n));
}

// (y - median) / (1.4826 MAD); the z-score where the MAD is ~0; zeros and flag bit 1 where the std is ~0 too.
template <typename acc_t>
__global__ void robust_apply_kernel(acc_t* out, int32_t* flags, const acc_t* lo, const acc_t* hi,
                                    const acc_t* mad_lo, const acc_t* mad_hi, const acc_t* mean, const acc_t* var,
                                    int64_t n, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t row = i / n;
  const acc_t mad = acc_t(kMadToSigma) * median_of(mad_lo, mad_hi, row), sd = sqrt(var[row]);
  const bool robust_ok = mad > acc_t(kMadToSigma * kZeroScale), std_ok = sd > acc_t(kZeroScale);
  const acc_t center = robust_ok ? median_of(lo, hi, row) : mean[row];
  const acc_t spread = robust_ok ? mad : sd;
  out[i] = (robust_ok || std_ok) ? (out[i] - center) / spread : acc_t(0);
  if (i % n == 0 && !(robust_ok || std_ok)) flags[row] |= 2;
}

#ifndef ECGKT_CUDA_EMULATION

#define ECGKT_CUDA_CHECK(expr)                                                                  \
  do {                                                                                          \
    const cudaError_t err_ = (expr);                                                            \
    ECGKT_CHECK(err_ == cudaSuccess, "ecgkt::preprocess: CUDA error: ", cudaGetErrorString(err_)); \
  } while (0)

cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

template <typename acc_t>
acc_t* data(const Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<acc_t>() : nullptr;
}

template <typename in_t, typename acc_t>
void launch(const Tensor& x, const Tensor& gain, const Tensor& baseline, const Tensor& sos, const Tensor& zi,
            const Tensor& fir, Tensor& out, Tensor& flags, int P, int up, int down, int normalize) {
  const int64_t N = x.size(0);
  const int T = static_cast<int>(x.size(1)), S = static_cast<int>(sos.size(0));
  const RowLayout row = row_layout<acc_t>(S, T, P, up, down);
  const bool resample = up != 1 || down != 1;
  int smem_optin = 0;
  ECGKT_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, x.get_device_index()));
  const long long smem_limit = smem_optin;
  const LaunchConfig cfg = launch_config<acc_t>(S, row, resample, smem_limit, max_threads<acc_t>());
  ECGKT_CHECK(static_cast<long long>(cfg.smem) <= smem_limit, "ecgkt::preprocess: too many filter sections (", S,
              ")");
  const cudaStream_t stream = current_stream(x);
  // the section tables, once for the call
  Tensor tables = torch::stable::empty({static_cast<int64_t>(std::max<size_t>(1, table_doubles<acc_t>(S)))},
                                       ScalarType::Double, std::nullopt, x.device());
  double* dtab = tables.mutable_data_ptr<double>();
  acc_t* atab = reinterpret_cast<acc_t*>(dtab + static_cast<size_t>(S) * kDTable);
  if (S > 0) {
    tables_kernel<acc_t><<<static_cast<unsigned>(S), 64, 0, stream>>>(sos.const_data_ptr<double>(),
                                                                       zi.const_data_ptr<double>(), dtab, atab);
    ECGKT_CUDA_CHECK(cudaGetLastError());
  }
  Tensor work;  // long rows: staged in global memory (L2)
  if (cfg.global_staging) work = torch::stable::new_empty(out, {N, row.Lp});
  const Params<acc_t> p = make_params<acc_t>(
      x.const_data_ptr(), gain.const_data_ptr<float>(), baseline.const_data_ptr<float>(), dtab, atab, S,
      resample ? fir.const_data_ptr<acc_t>() : nullptr, resample ? static_cast<int>(fir.size(0)) : 0, up, down,
      normalize, T, row, out.mutable_data_ptr<acc_t>(), flags.mutable_data_ptr<int32_t>(), data<acc_t>(work));
  auto kernel = preprocess_kernel<in_t, acc_t>;
  ECGKT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cfg.smem)));
  kernel<<<static_cast<unsigned>(N), cfg.threads, cfg.smem, stream>>>(p);
  ECGKT_CUDA_CHECK(cudaGetLastError());
}

// Bounded memory (the same function as robust_normalize in kernels/preprocess.py): chunks of rows of about
// kRobustChunkElements samples, medians as order statistics (kthvalue), not a sort of the whole output.
constexpr int64_t kRobustChunkElements = int64_t(1) << 24;

// The k-th smallest value of each row of `v` [rows, n], as [rows, 1].
Tensor kth_smallest(const Tensor& v, int64_t k) {
  auto stack = call_aten<2>("aten::kthvalue", "", v, k, int64_t(1), true);
  torch::stable::detail::to<Tensor>(stack[1]);  // the indices, released
  return torch::stable::detail::to<Tensor>(stack[0]);
}

template <typename acc_t>
void robust_normalize(Tensor& out, Tensor& flags) {
  const int64_t N = out.size(0), n = out.size(1);
  const int64_t step = std::max<int64_t>(1, kRobustChunkElements / std::max<int64_t>(n, 1));
  const cudaStream_t stream = current_stream(out);
  for (int64_t r0 = 0; r0 < N; r0 += step) {
    const int64_t rows = std::min(step, N - r0), total = rows * n;
    const unsigned blocks = static_cast<unsigned>((total + kElementwiseThreads - 1) / kElementwiseThreads);
    Tensor o = torch::stable::narrow(out, 0, r0, rows);
    Tensor f = torch::stable::narrow(flags, 0, r0, rows);
    const Tensor lo = kth_smallest(o, (n + 1) / 2), hi = kth_smallest(o, n / 2 + 1);
    Tensor dev = torch::stable::new_empty(o, {rows, n});
    abs_deviation_kernel<acc_t><<<blocks, kElementwiseThreads, 0, stream>>>(
        data<acc_t>(dev), data<acc_t>(o), data<acc_t>(lo), data<acc_t>(hi), n, total);
    ECGKT_CUDA_CHECK(cudaGetLastError());
    const Tensor mad_lo = kth_smallest(dev, (n + 1) / 2), mad_hi = kth_smallest(dev, n / 2 + 1);
    const std::optional<std::vector<int64_t>> dims(std::vector<int64_t>{1});
    const Tensor mean = torch::stable::detail::to<Tensor>(
        call_aten("aten::mean", "dim", o, dims, true, std::optional<ScalarType>())[0]);
    const Tensor var = torch::stable::detail::to<Tensor>(call_aten("aten::var", "dim", o, dims, false, true)[0]);
    robust_apply_kernel<acc_t><<<blocks, kElementwiseThreads, 0, stream>>>(
        data<acc_t>(o), data<int32_t>(f), data<acc_t>(lo), data<acc_t>(hi), data<acc_t>(mad_lo), data<acc_t>(mad_hi),
        data<acc_t>(mean), data<acc_t>(var), n, total);
    ECGKT_CUDA_CHECK(cudaGetLastError());
  }
}

std::tuple<Tensor, Tensor> preprocess_cuda(Tensor signal, Tensor gain, Tensor baseline, Tensor sos, Tensor zi,
                                           int64_t padlen, Tensor fir, int64_t up, int64_t down, int64_t normalize) {
  ECGKT_CHECK(signal.is_cuda(), "ecgkt::preprocess (CUDA): signal must be a CUDA tensor");
  ECGKT_CHECK(signal.dim() == 2, "ecgkt::preprocess: signal must be [N, T], got ", shape(signal));
  const int64_t N = signal.size(0), T = signal.size(1);
  ECGKT_CHECK(T >= 1, "ecgkt::preprocess: signal needs at least one sample");
  ECGKT_CHECK(gain.numel() == N && baseline.numel() == N, "ecgkt::preprocess: gain and baseline must be [N] (N=", N,
              ")");
  ECGKT_CHECK(sos.dim() == 2 && (sos.size(0) == 0 || sos.size(1) == 6), "ecgkt::preprocess: sos must be [S, 6]");
  ECGKT_CHECK(zi.numel() == sos.size(0) * 2, "ecgkt::preprocess: zi must be [S, 2]");
  ECGKT_CHECK(up >= 1 && down >= 1, "ecgkt::preprocess: up and down must be >= 1");
  ECGKT_CHECK(normalize >= 0 && normalize <= 2, "ecgkt::preprocess: normalize must be 0, 1 or 2");
  ECGKT_CHECK(padlen >= 0, "ecgkt::preprocess: padlen must be >= 0");
  const bool resample = up != 1 || down != 1;
  ECGKT_CHECK(!resample || (fir.dim() == 1 && fir.numel() % 2 == 1),
              "ecgkt::preprocess: fir must be a 1-D filter of odd length when resampling");
  const ScalarType dtype = signal.scalar_type();
  ECGKT_CHECK(dtype == ScalarType::Half || dtype == ScalarType::BFloat16 || dtype == ScalarType::Float ||
                  dtype == ScalarType::Double || dtype == ScalarType::Short,
              "ecgkt::preprocess: signal dtype must be float16/bfloat16/float32/float64/int16, got ",
              dtype_name(dtype));
  const int64_t S = sos.size(0);
  const int64_t P = S > 0 ? std::min<int64_t>(padlen, T - 1) : 0;
  const int64_t T_out = (T * up + down - 1) / down;
  ECGKT_CHECK(T + 2 * P < (int64_t(1) << 31) && T_out < (int64_t(1) << 31),
              "ecgkt::preprocess: rows longer than 2^31 samples are not supported");
  torch::stable::accelerator::DeviceGuard guard(signal.get_device_index());
  const ScalarType acc = dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  const auto dev = signal.device();
  auto on_device = [&](const Tensor& t, ScalarType type) {
    return torch::stable::contiguous(torch::stable::to(t, type, std::nullopt, dev));
  };
  const Tensor x = torch::stable::contiguous(signal);
  const Tensor g = on_device(gain, ScalarType::Float), b = on_device(baseline, ScalarType::Float);
  const Tensor s = on_device(sos, ScalarType::Double), z = on_device(zi, ScalarType::Double);
  const Tensor f = resample ? on_device(fir, acc) : fir;
  Tensor out = torch::stable::empty({N, T_out}, acc, std::nullopt, dev);
  Tensor flags = torch::stable::empty({N}, ScalarType::Int, std::nullopt, dev);
  if (N > 0) {
    const int norm_in_kernel = normalize == 1 ? 1 : 0;
    const int p_ = static_cast<int>(P), u = static_cast<int>(up), d = static_cast<int>(down);
    switch (dtype) {
      case ScalarType::Half: launch<__half, float>(x, g, b, s, z, f, out, flags, p_, u, d, norm_in_kernel); break;
      case ScalarType::BFloat16:
        launch<__nv_bfloat16, float>(x, g, b, s, z, f, out, flags, p_, u, d, norm_in_kernel);
        break;
      case ScalarType::Float: launch<float, float>(x, g, b, s, z, f, out, flags, p_, u, d, norm_in_kernel); break;
      case ScalarType::Double: launch<double, double>(x, g, b, s, z, f, out, flags, p_, u, d, norm_in_kernel); break;
      default: launch<int16_t, float>(x, g, b, s, z, f, out, flags, p_, u, d, norm_in_kernel); break;
    }
    if (normalize == 2) {
      if (acc == ScalarType::Double) robust_normalize<double>(out, flags);
      else robust_normalize<float>(out, flags);
    }
  }
  return {out, flags};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ecgkt, CUDA, m) { m.impl("preprocess", TORCH_BOX(&preprocess_cuda)); }

}  // namespace ecgkt

#else  // ECGKT_CUDA_EMULATION

template <typename in_t, typename acc_t>
void emulate(const void* x, const float* gain, const float* baseline, const double* sos, const double* zi, int S,
             int N, int T, int padlen, const double* fir, int K, int up, int down, int normalize, void* out,
             int32_t* flags, int thread_cap, long long smem_limit) {
  const RowLayout row = row_layout<acc_t>(S, T, padlen, up, down);
  const bool resample = up != 1 || down != 1;
  const LaunchConfig cfg = launch_config<acc_t>(S, row, resample, smem_limit,
                                                std::min(thread_cap, max_threads<acc_t>()));
  std::vector<double> tables(std::max<size_t>(1, table_doubles<acc_t>(S)));
  double* dtab = tables.data();
  acc_t* atab = reinterpret_cast<acc_t*>(dtab + static_cast<size_t>(S) * kDTable);
  if (S > 0) emu_launch(tables_kernel<acc_t>, S, 64, 0, sos, zi, dtab, atab);
  std::vector<acc_t> fir_acc(fir, fir + (resample ? K : 0));
  std::vector<acc_t> work(cfg.global_staging ? static_cast<size_t>(N) * row.Lp : 0);
  const Params<acc_t> p = make_params<acc_t>(x, gain, baseline, dtab, atab, S, fir_acc.data(), K, up, down, normalize,
                                             T, row, static_cast<acc_t*>(out), flags,
                                             cfg.global_staging ? work.data() : nullptr);
  emu_launch(preprocess_kernel<in_t, acc_t>, N, cfg.threads, cfg.smem, p);
}

}  // namespace
}  // namespace ecgkt

// The robust normalisation's two element-wise kernels, for the test to drive (it computes the order statistics,
// mean and variance with torch, as the GPU path does through the dispatcher). dtype: 0 float32, 1 float64.
inline unsigned elementwise_grid(long long total) {
  return static_cast<unsigned>((total + ecgkt::kElementwiseThreads - 1) / ecgkt::kElementwiseThreads);
}

extern "C" int ecgkt_emulated_abs_deviation(int dtype, void* dev, const void* out, const void* lo, const void* hi,
                                            long long n, long long total) {
  using namespace ecgkt;
  if (dtype == 0)
    emu_launch(abs_deviation_kernel<float>, elementwise_grid(total), kElementwiseThreads, 0,
               static_cast<float*>(dev), static_cast<const float*>(out), static_cast<const float*>(lo),
               static_cast<const float*>(hi), int64_t(n), int64_t(total));
  else
    emu_launch(abs_deviation_kernel<double>, elementwise_grid(total), kElementwiseThreads, 0,
               static_cast<double*>(dev), static_cast<const double*>(out), static_cast<const double*>(lo),
               static_cast<const double*>(hi), int64_t(n), int64_t(total));
  return 0;
}

extern "C" int ecgkt_emulated_robust_apply(int dtype, void* out, int32_t* flags, const void* lo, const void* hi,
                                           const void* mad_lo, const void* mad_hi, const void* mean,
                                           const void* var, long long n, long long total) {
  using namespace ecgkt;
  auto run = [&](auto zero) {
    using T = decltype(zero);
    emu_launch(robust_apply_kernel<T>, elementwise_grid(total), kElementwiseThreads, 0, static_cast<T*>(out),
               flags, static_cast<const T*>(lo), static_cast<const T*>(hi), static_cast<const T*>(mad_lo),
               static_cast<const T*>(mad_hi), static_cast<const T*>(mean), static_cast<const T*>(var), int64_t(n),
               int64_t(total));
  };
  if (dtype == 0) run(float(0));
  else run(double(0));
  return 0;
}

// dtype: 0 float32, 1 float64, 2 int16. normalize: 0 or 1 (robust: the two kernels above, driven by the caller).
// Returns the number of threads per block used.
extern "C" int ecgkt_emulated_preprocess(int dtype, const void* x, const float* gain, const float* baseline,
                                         const double* sos, const double* zi, int S, int N, int T, int padlen,
                                         const double* fir, int K, int up, int down, int normalize, void* out,
                                         int32_t* flags, int thread_cap, long long smem_limit) {
  using namespace ecgkt;
  if (dtype == 0)
    emulate<float, float>(x, gain, baseline, sos, zi, S, N, T, padlen, fir, K, up, down, normalize, out, flags,
                          thread_cap, smem_limit);
  else if (dtype == 1)
    emulate<double, double>(x, gain, baseline, sos, zi, S, N, T, padlen, fir, K, up, down, normalize, out, flags,
                            thread_cap, smem_limit);
  else
    emulate<int16_t, float>(x, gain, baseline, sos, zi, S, N, T, padlen, fir, K, up, down, normalize, out, flags,
                            thread_cap, smem_limit);
  return 0;
}

#endif  // ECGKT_CUDA_EMULATION

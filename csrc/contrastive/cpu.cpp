// CPU kernels of the contrastive-loss block primitives (schemas in csrc/registry.cpp, meaning in
// ecgkt/ops/contrastive/). For a row block a [Ba, D] and a column block b [Bb, D], the logits
// L = scale * a @ b^T are produced one tile (kTileRows x kTileCols) at a time by a BLAS GEMM (torch's
// addmm through the AOTI C shim) and reduced at once, so memory beyond inputs and outputs is
// O(Ba + Bb + threads * tile), plus one gradient-of-b accumulator per thread in the backward.
// Stable ABI only (csrc/stable_api.h): element-wise passes are plain loops over the tile, the
// transcendental ones (exp, log1p, sigmoid) ATen's vectorised in-place ops through the dispatcher.
//
// Determinism: no atomics; every reduction runs in a fixed order (row blocks are independent,
// column accumulators belong to fixed groups or slots of row blocks and are merged in order), so
// repeated runs agree bit for bit. Across thread counts the last bits may differ (the BLAS picks
// its GEMM kernels per context, and the backward has one slot per thread).
#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cpu.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "stable_api.h"

namespace ecgkt {
namespace losses {
namespace {

constexpr int64_t kTileRows = 256;
constexpr int64_t kTileCols = 512;
// Column accumulators of the CLIP forward: one per group of row blocks (fixed count, so the
// result is the same whatever the number of threads).
constexpr int64_t kColumnGroups = 16;
// The backward's gradient-of-b accumulators (one per slot) are capped at this many bytes in all.
constexpr int64_t kMaxSlotBytes = int64_t(1) << 30;
// softplus(x) = x above this (ATen's default threshold: log1p(exp(x)) == x in float32 there)
constexpr double kSoftplusThreshold = 20;

// A tile whose logits span at most this range (max - min) is reduced with one exp pass, every value
// taken relative to the tile's maximum: exp(-range) and exp(range) stay normal numbers (float32 ~ e^+-87),
// so nothing underflows that matters or overflows. Wider tiles (large logit scales) take two passes,
// relative to their row and column maxima. Chosen per tile from the data: still deterministic.
template <typename T>
constexpr T kOneExpRange = sizeof(T) == 8 ? T(700) : T(80);

int64_t num_blocks(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }

// (min, max) of n values. Sixteen independent lanes: GCC leaves `omp simd` min/max reductions scalar
// (a 4-cycle dependency chain per value, 11 % of the CLIP forward + backward at B = 8192); these
// fixed-width loops become packed min/max. `x < y ? x : y` ignores NaN like std::min; a NaN logit still
// reaches the exp pass and the finiteness check of the result.
template <typename T>
std::pair<T, T> min_max(const T* p, int64_t n) {
  constexpr int kLanes = 16;
  T lo[kLanes], hi[kLanes];
  for (int l = 0; l < kLanes; ++l) lo[l] = std::numeric_limits<T>::infinity(), hi[l] = -lo[l];
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const T x = p[k + l];
      lo[l] = x < lo[l] ? x : lo[l];
      hi[l] = x > hi[l] ? x : hi[l];
    }
  for (; k < n; ++k) {
    lo[0] = p[k] < lo[0] ? p[k] : lo[0];
    hi[0] = p[k] > hi[0] ? p[k] : hi[0];
  }
  for (int l = 1; l < kLanes; ++l) lo[0] = std::min(lo[0], lo[l]), hi[0] = std::max(hi[0], hi[l]);
  return {lo[0], hi[0]};
}

// Bounds of the logits of each tile without reading it: |L_ij| <= |scale| |a_i| |b_j| (Cauchy-Schwarz),
// so U = |scale| * (largest row norm of the row block) * (largest of the column block). When 2U fits the
// one-exp range, U serves as the tile's reference and the min/max pass is skipped (normalised embeddings
// with |scale| up to ~40, e.g. CLIP's initial 1/0.07); otherwise tile_range() measures the tile.
template <typename T>
struct TileBounds {
  std::vector<double> row_norm, col_norm;
  double scale;

  static std::vector<double> block_max_norms(const T* x, int64_t rows, int64_t dim, int64_t tile) {
    std::vector<double> out(num_blocks(rows, tile), 0.0);
    for (int64_t i = 0; i < rows; ++i) {
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t k = 0; k < dim; ++k) ss += double(x[i * dim + k]) * double(x[i * dim + k]);
      out[i / tile] = std::max(out[i / tile], std::sqrt(ss));  // NaN norms: std::max keeps the old value...
      if (!std::isfinite(ss)) out[i / tile] = std::numeric_limits<double>::infinity();  // ...so mark it here
    }
    return out;
  }
  TileBounds(const Tensor& a, const Tensor& b, double s)
      : row_norm(block_max_norms(a.const_data_ptr<T>(), a.size(0), a.size(1), kTileRows)),
        col_norm(block_max_norms(b.const_data_ptr<T>(), b.size(0), b.size(1), kTileCols)),
        scale(std::abs(s)) {}

  // (lo, hi) for the tile at rows i0.., columns j0..: (-U, U) when that is narrow enough, else measured
  std::pair<T, T> tile_range(const T* L, int64_t i0, int64_t j0, int64_t count) const {
    const double u = scale * row_norm[i0 / kTileRows] * col_norm[j0 / kTileCols];
    if (2 * u <= double(kOneExpRange<T>) - 1) return {T(-u), T(u)};  // 1: room for the GEMM's rounding
    return min_max(L, count);
  }
};

// W = exp(L - ref), element-wise over n values (ATen's vectorised exp)
template <typename T>
void exp_minus(const Tensor& scratch, const T* L, T ref, int64_t n) {
  T* W = scratch.mutable_data_ptr<T>();
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) W[k] = L[k] - ref;
  inplace("aten::exp_", scratch);
}

// Adds `add` (a sum of exp(x - ref)) into the running state (state_max, state_sum) of one row or column.
template <typename T>
void accumulate(T& state_max, T& state_sum, T ref, T add) {
  if (state_max >= ref) {
    state_sum += add * std::exp(ref - state_max);
  } else {
    state_sum = state_sum * std::exp(state_max - ref) + add;
    state_max = ref;
  }
}

Tensor rows_of(const Tensor& t, int64_t start, int64_t n) {
  Tensor self = t;
  return torch::stable::narrow(self, 0, start, n);
}

// out = beta * out + alpha * (m1 @ m2), by the BLAS.
void addmm(const Tensor& out, const Tensor& m1, const Tensor& m2, double beta, double alpha) {
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_addmm_out(out.get(), out.get(), m1.get(), m2.get(), beta, alpha));
}

template <typename T>
bool all_finite(const T* p, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(p[i]);
  return ok;
}

void check_inputs(const char* op, const Tensor& a, const Tensor& b, const Tensor& scale, const Tensor* bias) {
  ECGKT_CHECK(a.dim() == 2 && b.dim() == 2, op, ": a and b must be [rows, dim], got ", shape(a), " and ", shape(b));
  ECGKT_CHECK(a.size(1) == b.size(1), op, ": a ", shape(a), " and b ", shape(b), " have different embedding sizes");
  ECGKT_CHECK(a.size(0) > 0 && b.size(0) > 0 && a.size(1) > 0, op, ": empty input ", shape(a), " / ", shape(b));
  ECGKT_CHECK(a.scalar_type() == b.scalar_type(), op, ": a is ", dtype_name(a.scalar_type()), " but b is ",
              dtype_name(b.scalar_type()));
  const auto t = a.scalar_type();
  ECGKT_CHECK(t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16 || t == ScalarType::Double,
              op, ": unsupported dtype ", dtype_name(t), " (float32, float16, bfloat16, float64)");
  ECGKT_CHECK(a.is_cpu() && b.is_cpu() && scale.is_cpu(), op, ": CPU kernel called with tensors not on the CPU");
  ECGKT_CHECK(scale.numel() == 1, op, ": scale must hold one value, got shape ", shape(scale));
  if (bias != nullptr) ECGKT_CHECK(bias->numel() == 1, op, ": bias must hold one value, got shape ", shape(*bias));
}

void check_vector(const char* op, const char* name, const Tensor& v, int64_t n) {
  ECGKT_CHECK(v.dim() == 1 && v.size(0) == n, op, ": ", name, " must have shape [", n, "], got ", shape(v));
}

void check_finite(const char* op, const Tensor& t) {
  const bool ok = t.scalar_type() == ScalarType::Double ? all_finite(t.const_data_ptr<double>(), t.numel())
                                                        : all_finite(t.const_data_ptr<float>(), t.numel());
  ECGKT_CHECK(ok, op, ": non-finite result; a, b, scale or bias contains NaN/inf (or scale is too large)");
}

ScalarType acc_type(const Tensor& a) {
  return a.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// A contiguous copy (or view) in the accumulation dtype that does not require grad.
Tensor to_acc(const Tensor& x, ScalarType acc) {
  return detached(torch::stable::contiguous(torch::stable::to(x, acc)));
}

double value_of(const Tensor& one) {
  return torch::stable::contiguous(torch::stable::to(one, ScalarType::Double)).const_data_ptr<double>()[0];
}

// A tensor shaped and typed like `like` (a one-value parameter) holding `value`.
Tensor scalar_like(double value, const Tensor& like) {
  return torch::stable::full(like.sizes(), value, like.scalar_type());
}

// Per-thread tile buffers and the GEMM that fills them.
struct TileBuffers {
  Tensor logits, work;
  explicit TileBuffers(ScalarType acc)
      : logits(torch::stable::empty({kTileRows * kTileCols}, acc)),
        work(torch::stable::empty({kTileRows * kTileCols}, acc)) {}

  // scale * a[i0:i0+m] @ b[j0:j0+n]^T as a contiguous [m, n] tensor
  Tensor tile(const Tensor& a, const Tensor& b, int64_t i0, int64_t m, int64_t j0, int64_t n, double scale) {
    Tensor out = torch::stable::view(rows_of(logits, 0, m * n), {m, n});
    addmm(out, rows_of(a, i0, m), torch::stable::transpose(rows_of(b, j0, n), 0, 1), /*beta=*/0, /*alpha=*/scale);
    return out;
  }
  Tensor scratch(int64_t m, int64_t n) { return torch::stable::view(rows_of(work, 0, m * n), {m, n}); }
};

// Online log-sum-exp of an [m, n] tile into running (max, sum) states, along rows (max/sum [m]) and
// along columns ([n]): sum <- sum * exp(max - new_max) + sum(exp(tile - new_max)), max <- new_max.
template <typename T>
void online_lse(const Tensor& tile, const Tensor& scratch, int64_t m, int64_t n, std::pair<T, T> range, T* rmax,
                T* rsum, T* cmax, T* csum) {
  const T* L = tile.const_data_ptr<T>();
  T* W = scratch.mutable_data_ptr<T>();
  const auto [lo, hi] = range;
  if (hi - lo <= kOneExpRange<T>) {  // one exp pass, relative to the tile maximum (or its bound)
    exp_minus(scratch, L, hi, m * n);
    std::vector<T> col(W, W + n);
    for (int64_t i = 0; i < m; ++i) {
      const T* w = W + i * n;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) s += w[j];
      if (i > 0) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) col[j] += w[j];
      }
      accumulate(rmax[i], rsum[i], hi, s);
    }
    for (int64_t j = 0; j < n; ++j) accumulate(cmax[j], csum[j], hi, col[j]);
    return;
  }
  std::vector<T> new_cmax(cmax, cmax + n);  // two passes, relative to the row and the column maxima
  T* ncm = new_cmax.data();
  for (int64_t i = 0; i < m; ++i) {  // row maxima, column maxima, W = L - row max
    const T* row = L + i * n;
    T* w = W + i * n;
    T mx = rmax[i];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      w[j] = row[j] - mx;
      ncm[j] = std::max(ncm[j], row[j]);
    }
    rsum[i] *= std::exp(rmax[i] - mx);
    rmax[i] = mx;
  }
  inplace("aten::exp_", scratch);
  for (int64_t i = 0; i < m; ++i) {  // row sums, then W = L - column max
    const T* row = L + i * n;
    T* w = W + i * n;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) {
      s += w[j];
      w[j] = row[j] - ncm[j];
    }
    rsum[i] += s;
  }
  inplace("aten::exp_", scratch);
  for (int64_t j = 0; j < n; ++j) {
    csum[j] *= std::exp(cmax[j] - new_cmax[j]);
    cmax[j] = new_cmax[j];
  }
  for (int64_t i = 0; i < m; ++i) {
    const T* w = W + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) csum[j] += w[j];
  }
}

// ------------------------------------------------------------------------------------------------
// CLIP: per-row and per-column log-sum-exp
// ------------------------------------------------------------------------------------------------
template <typename T>
std::tuple<Tensor, Tensor> clip_lse(const Tensor& a, const Tensor& b, double scale) {
  const ScalarType acc = a.scalar_type();
  const int64_t rows = a.size(0), cols = b.size(0);
  const int64_t row_blocks = num_blocks(rows, kTileRows), col_blocks = num_blocks(cols, kTileCols);
  const int64_t groups = std::min(row_blocks, kColumnGroups);
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();

  Tensor row_lse = torch::stable::empty({rows}, acc);
  std::vector<T> col_max(groups * cols, kNegInf), col_sum(groups * cols, T(0));
  T* row_out = row_lse.mutable_data_ptr<T>();
  const TileBounds<T> bounds(a, b, scale);

  torch::stable::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    TileBuffers buf(acc);
    std::vector<T> rmax(kTileRows), rsum(kTileRows);
    for (int64_t g = g0; g < g1; ++g) {
      T* gmax = col_max.data() + g * cols;
      T* gsum = col_sum.data() + g * cols;
      for (int64_t ib = g * row_blocks / groups; ib < (g + 1) * row_blocks / groups; ++ib) {
        const int64_t i0 = ib * kTileRows, m = std::min(kTileRows, rows - i0);
        std::fill(rmax.begin(), rmax.end(), kNegInf);
        std::fill(rsum.begin(), rsum.end(), T(0));
        for (int64_t jb = 0; jb < col_blocks; ++jb) {
          const int64_t j0 = jb * kTileCols, n = std::min(kTileCols, cols - j0);
          Tensor logits = buf.tile(a, b, i0, m, j0, n, scale);
          const auto range = bounds.tile_range(logits.const_data_ptr<T>(), i0, j0, m * n);
          online_lse<T>(logits, buf.scratch(m, n), m, n, range, rmax.data(), rsum.data(), gmax + j0, gsum + j0);
        }
        for (int64_t i = 0; i < m; ++i) row_out[i0 + i] = rmax[i] + std::log(rsum[i]);
      }
    }
  });
  // merge the groups' column states, in group order
  Tensor col_lse = torch::stable::empty({cols}, acc);
  T* col_out = col_lse.mutable_data_ptr<T>();
  for (int64_t j = 0; j < cols; ++j) {
    T mx = kNegInf;
    for (int64_t g = 0; g < groups; ++g) mx = std::max(mx, col_max[g * cols + j] + std::log(col_sum[g * cols + j]));
    T s = 0;
    for (int64_t g = 0; g < groups; ++g) s += std::exp(col_max[g * cols + j] + std::log(col_sum[g * cols + j]) - mx);
    col_out[j] = mx + std::log(s);
  }
  return {row_lse, col_lse};
}

std::tuple<Tensor, Tensor> clip_block_lse_cpu(Tensor a_in, Tensor b_in, Tensor scale_in) {
  const char* op = "ecgkt::clip_block_lse";
  check_inputs(op, a_in, b_in, scale_in, nullptr);
  const ScalarType acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const double scale = value_of(scale_in);
  auto [row_lse, col_lse] = acc == ScalarType::Double ? clip_lse<double>(a, b, scale) : clip_lse<float>(a, b, scale);
  check_finite(op, row_lse);
  check_finite(op, col_lse);
  return {row_lse, col_lse};
}

// Gradient tiles dL/dlogits; `fill(logits, scratch, i0, m, j0, n)` overwrites the logits tile
// (rows i0.., columns j0..) with them. One pass over the tiles, row blocks split into slots (one
// per thread, fewer when memory is short), each with its own accumulator for the gradient of b:
//   grad_a = scale * dL @ b,  grad_b = scale * dL^T @ a,  grad_scale = sum(a * (dL @ b)).
// Returns (grad_a, grad_b, grad_scale) in the accumulation dtype.
template <typename T, typename Fill>
std::tuple<Tensor, Tensor, double> backward_tiles(const Tensor& a, const Tensor& b, double scale, const Fill& fill) {
  const ScalarType acc = a.scalar_type();
  const int64_t rows = a.size(0), cols = b.size(0), dim = a.size(1);
  const int64_t row_blocks = num_blocks(rows, kTileRows), col_blocks = num_blocks(cols, kTileCols);
  const int64_t slot_bytes = b.numel() * static_cast<int64_t>(sizeof(T));
  const int64_t slots = std::max<int64_t>(
      1, std::min({static_cast<int64_t>(torch::stable::get_num_threads()), row_blocks, kMaxSlotBytes / slot_bytes}));
  Tensor grad_a = torch::stable::new_zeros(a, {rows, dim});
  Tensor grad_b_slots = torch::stable::new_zeros(a, {slots, cols, dim});
  std::vector<double> scale_parts(row_blocks, 0.0);

  torch::stable::parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
    TileBuffers buf(acc);
    for (int64_t slot = s0; slot < s1; ++slot) {
      const Tensor grad_b = torch::stable::select(grad_b_slots, 0, slot);  // dL^T @ a over this slot's rows
      for (int64_t ib = slot * row_blocks / slots; ib < (slot + 1) * row_blocks / slots; ++ib) {
        const int64_t i0 = ib * kTileRows, m = std::min(kTileRows, rows - i0);
        const Tensor a_blk = rows_of(a, i0, m);
        const Tensor g = rows_of(grad_a, i0, m);  // dL @ b, scaled below
        for (int64_t jb = 0; jb < col_blocks; ++jb) {
          const int64_t j0 = jb * kTileCols, n = std::min(kTileCols, cols - j0);
          Tensor dlogits = buf.tile(a, b, i0, m, j0, n, scale);
          fill(dlogits, buf.scratch(m, n), i0, m, j0, n);
          addmm(g, dlogits, rows_of(b, j0, n), 1, 1);
          addmm(rows_of(grad_b, j0, n), torch::stable::transpose(dlogits, 0, 1), a_blk, 1, 1);
        }
        const T* ap = a_blk.const_data_ptr<T>();
        T* gp = g.mutable_data_ptr<T>();
        double part = 0;
#pragma omp simd reduction(+ : part)
        for (int64_t k = 0; k < m * dim; ++k) part += double(ap[k]) * double(gp[k]);
        scale_parts[ib] = part;
        for (int64_t k = 0; k < m * dim; ++k) gp[k] *= T(scale);
      }
    }
  });
  // merge the slots in order, then scale
  Tensor grad_b = torch::stable::select(grad_b_slots, 0, 0);
  T* gb = grad_b.mutable_data_ptr<T>();
  const T* all = grad_b_slots.const_data_ptr<T>();
  const int64_t count = cols * dim;
  for (int64_t s = 1; s < slots; ++s)
    for (int64_t k = 0; k < count; ++k) gb[k] += all[s * count + k];
  for (int64_t k = 0; k < count; ++k) gb[k] *= T(scale);
  double grad_scale = 0;
  for (double part : scale_parts) grad_scale += part;
  return {grad_a, grad_b, grad_scale};
}

std::tuple<Tensor, Tensor, Tensor> clip_block_lse_backward_cpu(Tensor a_in, Tensor b_in, Tensor scale_in,
                                                               Tensor row_lse_in, Tensor col_lse_in,
                                                               Tensor grad_row_in, Tensor grad_col_in) {
  const char* op = "ecgkt::clip_block_lse_backward";
  check_inputs(op, a_in, b_in, scale_in, nullptr);
  check_vector(op, "row_lse", row_lse_in, a_in.size(0));
  check_vector(op, "grad_row", grad_row_in, a_in.size(0));
  check_vector(op, "col_lse", col_lse_in, b_in.size(0));
  check_vector(op, "grad_col", grad_col_in, b_in.size(0));
  const ScalarType acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const Tensor row_lse = to_acc(row_lse_in, acc), col_lse = to_acc(col_lse_in, acc);
  const Tensor grad_row = to_acc(grad_row_in, acc), grad_col = to_acc(grad_col_in, acc);

  auto run = [&](auto zero) {
    using T = decltype(zero);
    const T *rl = row_lse.const_data_ptr<T>(), *cl = col_lse.const_data_ptr<T>();
    const T *gr = grad_row.const_data_ptr<T>(), *gc = grad_col.const_data_ptr<T>();
    const TileBounds<T> bounds(a, b, value_of(scale_in));
    // dL = grad_row_i * softmax_row(L)_ij + grad_col_j * softmax_col(L)_ij
    auto fill = [&](const Tensor& logits, const Tensor& scratch, int64_t i0, int64_t m, int64_t j0, int64_t n) {
      T* L = logits.mutable_data_ptr<T>();
      T* W = scratch.mutable_data_ptr<T>();
      const auto [lo, hi] = bounds.tile_range(L, i0, j0, m * n);
      if (hi - lo <= kOneExpRange<T>) {
        // one exp pass: dL = exp(L - hi) * (u_i + v_j), u_i = grad_row_i exp(hi - row_lse_i), v_j likewise;
        // hi - row_lse_i <= hi - lo (a row's lse is at least its smallest logit in this tile), so no overflow
        std::vector<T> u(m), v(n);
        for (int64_t i = 0; i < m; ++i) u[i] = gr[i0 + i] * std::exp(hi - rl[i0 + i]);
        for (int64_t j = 0; j < n; ++j) v[j] = gc[j0 + j] * std::exp(hi - cl[j0 + j]);
        exp_minus(scratch, L, hi, m * n);
        for (int64_t i = 0; i < m; ++i) {
          const T ui = u[i];
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) L[i * n + j] = W[i * n + j] * (ui + v[j]);
        }
        return;
      }
      for (int64_t i = 0; i < m; ++i)
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          W[i * n + j] = L[i * n + j] - rl[i0 + i];
          L[i * n + j] -= cl[j0 + j];
        }
      inplace("aten::exp_", scratch);
      inplace("aten::exp_", logits);
      for (int64_t i = 0; i < m; ++i)
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) L[i * n + j] = L[i * n + j] * gc[j0 + j] + W[i * n + j] * gr[i0 + i];
    };
    return backward_tiles<T>(a, b, value_of(scale_in), fill);
  };
  auto [grad_a, grad_b, grad_scale] = acc == ScalarType::Double ? run(double(0)) : run(float(0));
  return {torch::stable::to(grad_a, a_in.scalar_type()), torch::stable::to(grad_b, b_in.scalar_type()),
          scalar_like(grad_scale, scale_in)};
}

// ------------------------------------------------------------------------------------------------
// SigLIP: per-row sums of softplus(L + bias)
// ------------------------------------------------------------------------------------------------
template <typename T>
Tensor siglip_rows(const Tensor& a, const Tensor& b, double scale, double bias) {
  const ScalarType acc = a.scalar_type();
  const int64_t rows = a.size(0), cols = b.size(0);
  const int64_t row_blocks = num_blocks(rows, kTileRows), col_blocks = num_blocks(cols, kTileCols);
  Tensor row_sum = torch::stable::new_zeros(a, {rows});
  T* out = row_sum.mutable_data_ptr<T>();

  torch::stable::parallel_for(0, row_blocks, 1, [&](int64_t b0, int64_t b1) {
    TileBuffers buf(acc);
    for (int64_t ib = b0; ib < b1; ++ib) {
      const int64_t i0 = ib * kTileRows, m = std::min(kTileRows, rows - i0);
      for (int64_t jb = 0; jb < col_blocks; ++jb) {
        const int64_t j0 = jb * kTileCols, n = std::min(kTileCols, cols - j0);
        Tensor logits = buf.tile(a, b, i0, m, j0, n, scale);
        Tensor scratch = buf.scratch(m, n);
        T* L = logits.mutable_data_ptr<T>();
        T* W = scratch.mutable_data_ptr<T>();
        for (int64_t k = 0; k < m * n; ++k) W[k] = L[k] += T(bias);
        inplace("aten::exp_", scratch);
        inplace("aten::log1p_", scratch);
        for (int64_t i = 0; i < m; ++i) {
          T s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < n; ++j) {
            const T x = L[i * n + j];
            s += x > T(kSoftplusThreshold) ? x : W[i * n + j];
          }
          out[i0 + i] += s;
        }
      }
    }
  });
  return row_sum;
}

Tensor siglip_block_cpu(Tensor a_in, Tensor b_in, Tensor scale_in, Tensor bias_in) {
  const char* op = "ecgkt::siglip_block";
  check_inputs(op, a_in, b_in, scale_in, &bias_in);
  const ScalarType acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const double scale = value_of(scale_in), bias = value_of(bias_in);
  Tensor row_sum = acc == ScalarType::Double ? siglip_rows<double>(a, b, scale, bias)
                                             : siglip_rows<float>(a, b, scale, bias);
  check_finite(op, row_sum);
  return row_sum;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> siglip_block_backward_cpu(Tensor a_in, Tensor b_in, Tensor scale_in,
                                                                     Tensor bias_in, Tensor grad_row_in) {
  const char* op = "ecgkt::siglip_block_backward";
  check_inputs(op, a_in, b_in, scale_in, &bias_in);
  check_vector(op, "grad_row", grad_row_in, a_in.size(0));
  const ScalarType acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const Tensor grad_row = to_acc(grad_row_in, acc);
  const double bias = value_of(bias_in);
  const int64_t row_blocks = num_blocks(a.size(0), kTileRows);
  const int64_t col_blocks = num_blocks(b.size(0), kTileCols);
  // grad_bias = sum(dL): one partial per tile, summed in tile order.
  std::vector<double> bias_parts(row_blocks * col_blocks, 0.0);

  auto run = [&](auto zero) {
    using T = decltype(zero);
    const T* gr = grad_row.const_data_ptr<T>();
    // dL = grad_row_i * sigmoid(L + bias)
    auto fill = [&](const Tensor& logits, const Tensor&, int64_t i0, int64_t m, int64_t j0, int64_t n) {
      T* L = logits.mutable_data_ptr<T>();
      for (int64_t k = 0; k < m * n; ++k) L[k] += T(bias);
      inplace("aten::sigmoid_", logits);
      double part = 0;
      for (int64_t i = 0; i < m; ++i)
#pragma omp simd reduction(+ : part)
        for (int64_t j = 0; j < n; ++j) {
          L[i * n + j] *= gr[i0 + i];
          part += L[i * n + j];
        }
      bias_parts[(i0 / kTileRows) * col_blocks + j0 / kTileCols] = part;
    };
    return backward_tiles<T>(a, b, value_of(scale_in), fill);
  };
  auto [grad_a, grad_b, grad_scale] = acc == ScalarType::Double ? run(double(0)) : run(float(0));
  double grad_bias = 0;
  for (double part : bias_parts) grad_bias += part;
  return {torch::stable::to(grad_a, a_in.scalar_type()), torch::stable::to(grad_b, b_in.scalar_type()),
          scalar_like(grad_scale, scale_in), scalar_like(grad_bias, bias_in)};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ecgkt, CPU, m) {
  m.impl("clip_block_lse", TORCH_BOX(&clip_block_lse_cpu));
  m.impl("clip_block_lse_backward", TORCH_BOX(&clip_block_lse_backward_cpu));
  m.impl("siglip_block", TORCH_BOX(&siglip_block_cpu));
  m.impl("siglip_block_backward", TORCH_BOX(&siglip_block_backward_cpu));
}

}  // namespace losses
}  // namespace ecgkt

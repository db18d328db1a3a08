// CPU kernels of the contrastive-loss block primitives (schemas in csrc/registry.cpp, meaning in
// ecgkt/ops/contrastive.py). For a row block a [Ba, D] and a column block b [Bb, D], the logits
// L = scale * a @ b^T are produced one tile (kTileRows x kTileCols) at a time by a BLAS GEMM and
// reduced at once, so memory beyond inputs and outputs is O(Ba + Bb + threads * tile), plus one
// gradient-of-b accumulator per thread in the backward.
//
// Determinism: no atomics; every reduction runs in a fixed order (row blocks are independent,
// column accumulators belong to fixed groups or slots of row blocks and are merged in order), so
// repeated runs agree bit for bit. Across thread counts the last bits may differ (the BLAS picks
// its GEMM kernels per context, and the backward has one slot per thread).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace ecgkt {
namespace losses {
namespace {

using at::Tensor;

constexpr int64_t kTileRows = 256;
constexpr int64_t kTileCols = 512;
// Column accumulators of the CLIP forward: one per group of row blocks (fixed count, so the
// result is the same whatever the number of threads).
constexpr int64_t kColumnGroups = 16;

int64_t num_blocks(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }

void check_inputs(const char* op, const Tensor& a, const Tensor& b, const Tensor& scale,
                  const Tensor* bias) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, op, ": a and b must be [rows, dim], got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.size(1) == b.size(1), op, ": a ", a.sizes(), " and b ", b.sizes(),
              " have different embedding sizes");
  TORCH_CHECK(a.size(0) > 0 && b.size(0) > 0 && a.size(1) > 0, op, ": empty input ", a.sizes(), " / ",
              b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": a is ", a.scalar_type(), " but b is ",
              b.scalar_type());
  const auto t = a.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble, op,
              ": unsupported dtype ", t, " (float32, float16, bfloat16, float64)");
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && scale.device().is_cpu(), op,
              ": CPU kernel called with tensors on ", a.device());
  TORCH_CHECK(scale.numel() == 1, op, ": scale must hold one value, got shape ", scale.sizes());
  if (bias != nullptr) {
    TORCH_CHECK(bias->numel() == 1, op, ": bias must hold one value, got shape ", bias->sizes());
  }
}

void check_vector(const char* op, const char* name, const Tensor& v, int64_t n) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, op, ": ", name, " must have shape [", n, "], got ",
              v.sizes());
}

at::ScalarType acc_type(const Tensor& a) {
  return a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Tensor to_acc(const Tensor& x, at::ScalarType acc) { return x.detach().to(acc).contiguous(); }

// Per-thread tile buffers and the GEMM that fills them.
struct TileBuffers {
  Tensor logits, work;
  TileBuffers(at::ScalarType acc)
      : logits(at::empty({kTileRows * kTileCols}, at::TensorOptions().dtype(acc))),
        work(at::empty({kTileRows * kTileCols}, at::TensorOptions().dtype(acc))) {}

  // scale * a[i0:i0+m] @ b[j0:j0+n]^T as a contiguous [m, n] tensor
  Tensor tile(const Tensor& a, const Tensor& b, int64_t i0, int64_t m, int64_t j0, int64_t n,
              double scale) {
    Tensor out = logits.narrow(0, 0, m * n).view({m, n});
    at::addmm_out(out, out, a.narrow(0, i0, m), b.narrow(0, j0, n).t(), /*beta=*/0, /*alpha=*/scale);
    return out;
  }
  Tensor scratch(int64_t m, int64_t n) { return work.narrow(0, 0, m * n).view({m, n}); }
};

// Online log-sum-exp along `dim` of a tile into the running (max, sum) state:
// sum <- sum * exp(max - new_max) + sum(exp(tile - new_max)), max <- new_max.
void online_lse(const Tensor& tile, int64_t dim, Tensor& max, Tensor& sum, Tensor& scratch) {
  Tensor new_max = at::maximum(max, at::amax(tile, {dim}));
  at::sub_out(scratch, tile, new_max.unsqueeze(dim));
  scratch.exp_();
  sum.mul_(at::exp(max - new_max)).add_(scratch.sum({dim}));
  max.copy_(new_max);
}

void check_finite(const char* op, const Tensor& out) {
  TORCH_CHECK(at::isfinite(out).all().item<bool>(), op,
              ": non-finite result; a, b, scale or bias contains NaN/inf (or scale is too large)");
}

// ------------------------------------------------------------------------------------------------
// CLIP: per-row and per-column log-sum-exp
// ------------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor> clip_block_lse_cpu(const Tensor& a_in, const Tensor& b_in,
                                              const Tensor& scale_in) {
  const char* op = "ecgkt::clip_block_lse";
  at::AutoDispatchBelowADInplaceOrView no_autograd;  // the ATen calls below are internal
  check_inputs(op, a_in, b_in, scale_in, nullptr);
  const auto acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const double scale = scale_in.item<double>();
  const int64_t rows = a.size(0), cols = b.size(0);
  const int64_t row_blocks = num_blocks(rows, kTileRows), col_blocks = num_blocks(cols, kTileCols);
  const int64_t groups = std::min(row_blocks, kColumnGroups);
  const auto opts = a.options();

  Tensor row_lse = at::empty({rows}, opts);
  Tensor col_max = at::full({groups, cols}, -std::numeric_limits<double>::infinity(), opts);
  Tensor col_sum = at::zeros({groups, cols}, opts);

  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    at::AutoDispatchBelowADInplaceOrView no_autograd;  // worker threads do not inherit it
    TileBuffers buf(acc);
    for (int64_t g = g0; g < g1; ++g) {
      Tensor gmax = col_max[g], gsum = col_sum[g];
      for (int64_t ib = g * row_blocks / groups; ib < (g + 1) * row_blocks / groups; ++ib) {
        const int64_t i0 = ib * kTileRows, m = std::min(kTileRows, rows - i0);
        Tensor rmax = at::full({m}, -std::numeric_limits<double>::infinity(), opts);
        Tensor rsum = at::zeros({m}, opts);
        for (int64_t jb = 0; jb < col_blocks; ++jb) {
          const int64_t j0 = jb * kTileCols, n = std::min(kTileCols, cols - j0);
          Tensor logits = buf.tile(a, b, i0, m, j0, n, scale);
          Tensor scratch = buf.scratch(m, n);
          online_lse(logits, 1, rmax, rsum, scratch);
          Tensor cmax = gmax.narrow(0, j0, n), csum = gsum.narrow(0, j0, n);
          online_lse(logits, 0, cmax, csum, scratch);
        }
        row_lse.narrow(0, i0, m).copy_(rmax + rsum.log());
      }
    }
  });
  Tensor col_lse = at::logsumexp(col_max + col_sum.log(), {0});
  check_finite(op, row_lse);
  check_finite(op, col_lse);
  return {row_lse, col_lse};
}

// Gradient tiles dL/dlogits; `fill(logits, scratch, i0, m, j0, n)` overwrites the logits tile
// (rows i0.., columns j0..) with them. One pass over the tiles, row blocks split into slots (one
// per thread, fewer when memory is short), each with its own accumulator for the gradient of b:
//   grad_a = scale * dL @ b,  grad_b = scale * dL^T @ a,  grad_scale = sum(a * (dL @ b)).
// Returns (grad_a, grad_b, grad_scale) in the accumulation dtype.
constexpr int64_t kMaxSlotBytes = int64_t(1) << 30;

template <typename Fill>
std::tuple<Tensor, Tensor, Tensor> backward_tiles(const Tensor& a, const Tensor& b, double scale,
                                                  const Fill& fill) {
  const auto acc = a.scalar_type();
  const int64_t rows = a.size(0), cols = b.size(0);
  const int64_t row_blocks = num_blocks(rows, kTileRows), col_blocks = num_blocks(cols, kTileCols);
  const int64_t slot_bytes = b.numel() * static_cast<int64_t>(b.element_size());
  const int64_t slots = std::max<int64_t>(
      1, std::min({static_cast<int64_t>(at::get_num_threads()), row_blocks, kMaxSlotBytes / slot_bytes}));
  Tensor grad_a = at::zeros_like(a);
  Tensor grad_b_slots = at::zeros({slots, cols, b.size(1)}, b.options());
  Tensor scale_parts = at::zeros({row_blocks}, a.options());

  at::parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
    at::AutoDispatchBelowADInplaceOrView no_autograd;  // worker threads do not inherit it
    TileBuffers buf(acc);
    for (int64_t slot = s0; slot < s1; ++slot) {
      Tensor grad_b = grad_b_slots[slot];  // dL^T @ a over this slot's rows, scaled below
      for (int64_t ib = slot * row_blocks / slots; ib < (slot + 1) * row_blocks / slots; ++ib) {
        const int64_t i0 = ib * kTileRows, m = std::min(kTileRows, rows - i0);
        const Tensor a_blk = a.narrow(0, i0, m);
        Tensor g = grad_a.narrow(0, i0, m);  // dL @ b, scaled below
        for (int64_t jb = 0; jb < col_blocks; ++jb) {
          const int64_t j0 = jb * kTileCols, n = std::min(kTileCols, cols - j0);
          Tensor dlogits = buf.tile(a, b, i0, m, j0, n, scale);
          fill(dlogits, buf.scratch(m, n), i0, m, j0, n);
          g.addmm_(dlogits, b.narrow(0, j0, n));
          grad_b.narrow(0, j0, n).addmm_(dlogits.t(), a_blk);
        }
        scale_parts[ib] = (a_blk * g).sum();
        g.mul_(scale);
      }
    }
  });
  Tensor grad_b = slots == 1 ? grad_b_slots[0] : grad_b_slots.sum(0);
  return {grad_a, grad_b.mul_(scale), scale_parts.sum()};
}

Tensor grad_like(const Tensor& grad, const Tensor& like) {
  return grad.to(like.scalar_type()).reshape(like.sizes());
}

std::tuple<Tensor, Tensor, Tensor> clip_block_lse_backward_cpu(
    const Tensor& a_in, const Tensor& b_in, const Tensor& scale_in, const Tensor& row_lse_in,
    const Tensor& col_lse_in, const Tensor& grad_row_in, const Tensor& grad_col_in) {
  const char* op = "ecgkt::clip_block_lse_backward";
  at::AutoDispatchBelowADInplaceOrView no_autograd;  // the ATen calls below are internal
  check_inputs(op, a_in, b_in, scale_in, nullptr);
  check_vector(op, "row_lse", row_lse_in, a_in.size(0));
  check_vector(op, "grad_row", grad_row_in, a_in.size(0));
  check_vector(op, "col_lse", col_lse_in, b_in.size(0));
  check_vector(op, "grad_col", grad_col_in, b_in.size(0));
  const auto acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const Tensor row_lse = to_acc(row_lse_in, acc), col_lse = to_acc(col_lse_in, acc);
  const Tensor grad_row = to_acc(grad_row_in, acc), grad_col = to_acc(grad_col_in, acc);

  // dL = grad_row_i * softmax_row(L)_ij + grad_col_j * softmax_col(L)_ij
  auto fill = [&](Tensor& logits, Tensor scratch, int64_t i0, int64_t m, int64_t j0, int64_t n) {
    at::sub_out(scratch, logits, row_lse.narrow(0, i0, m).unsqueeze(1));
    scratch.exp_().mul_(grad_row.narrow(0, i0, m).unsqueeze(1));
    logits.sub_(col_lse.narrow(0, j0, n).unsqueeze(0)).exp_().mul_(grad_col.narrow(0, j0, n).unsqueeze(0));
    logits.add_(scratch);
  };
  auto [grad_a, grad_b, grad_scale] = backward_tiles(a, b, scale_in.item<double>(), fill);
  return {grad_a.to(a_in.scalar_type()), grad_b.to(b_in.scalar_type()), grad_like(grad_scale, scale_in)};
}

// ------------------------------------------------------------------------------------------------
// SigLIP: per-row sums of softplus(L + bias)
// ------------------------------------------------------------------------------------------------
Tensor siglip_block_cpu(const Tensor& a_in, const Tensor& b_in, const Tensor& scale_in,
                        const Tensor& bias_in) {
  const char* op = "ecgkt::siglip_block";
  at::AutoDispatchBelowADInplaceOrView no_autograd;  // the ATen calls below are internal
  check_inputs(op, a_in, b_in, scale_in, &bias_in);
  const auto acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const double scale = scale_in.item<double>(), bias = bias_in.item<double>();
  const int64_t rows = a.size(0), cols = b.size(0);
  const int64_t row_blocks = num_blocks(rows, kTileRows), col_blocks = num_blocks(cols, kTileCols);
  Tensor row_sum = at::zeros({rows}, a.options());

  at::parallel_for(0, row_blocks, 1, [&](int64_t b0, int64_t b1) {
    at::AutoDispatchBelowADInplaceOrView no_autograd;  // worker threads do not inherit it
    TileBuffers buf(acc);
    for (int64_t ib = b0; ib < b1; ++ib) {
      const int64_t i0 = ib * kTileRows, m = std::min(kTileRows, rows - i0);
      Tensor out = row_sum.narrow(0, i0, m);
      for (int64_t jb = 0; jb < col_blocks; ++jb) {
        const int64_t j0 = jb * kTileCols, n = std::min(kTileCols, cols - j0);
        Tensor logits = buf.tile(a, b, i0, m, j0, n, scale);
        Tensor scratch = buf.scratch(m, n);
        at::softplus_out(scratch, logits.add_(bias), /*beta=*/1, /*threshold=*/20);
        out.add_(scratch.sum({1}));
      }
    }
  });
  check_finite(op, row_sum);
  return row_sum;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> siglip_block_backward_cpu(
    const Tensor& a_in, const Tensor& b_in, const Tensor& scale_in, const Tensor& bias_in,
    const Tensor& grad_row_in) {
  const char* op = "ecgkt::siglip_block_backward";
  at::AutoDispatchBelowADInplaceOrView no_autograd;  // the ATen calls below are internal
  check_inputs(op, a_in, b_in, scale_in, &bias_in);
  check_vector(op, "grad_row", grad_row_in, a_in.size(0));
  const auto acc = acc_type(a_in);
  const Tensor a = to_acc(a_in, acc), b = to_acc(b_in, acc);
  const Tensor grad_row = to_acc(grad_row_in, acc);
  const double bias = bias_in.item<double>();
  const int64_t row_blocks = num_blocks(a.size(0), kTileRows);
  const int64_t col_blocks = num_blocks(b.size(0), kTileCols);
  // grad_bias = sum(dL): one partial per tile, summed in tile order.
  Tensor bias_parts = at::zeros({row_blocks, col_blocks}, a.options());

  // dL = grad_row_i * sigmoid(L + bias)
  auto fill = [&](Tensor& logits, Tensor, int64_t i0, int64_t m, int64_t j0, int64_t) {
    at::sigmoid_out(logits, logits.add_(bias));
    logits.mul_(grad_row.narrow(0, i0, m).unsqueeze(1));
    bias_parts[i0 / kTileRows][j0 / kTileCols] = logits.sum();
  };
  auto [grad_a, grad_b, grad_scale] = backward_tiles(a, b, scale_in.item<double>(), fill);
  return {grad_a.to(a_in.scalar_type()), grad_b.to(b_in.scalar_type()), grad_like(grad_scale, scale_in),
          grad_like(bias_parts.sum(), bias_in)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ecgkt, CPU, m) {
  m.impl("clip_block_lse", &clip_block_lse_cpu);
  m.impl("clip_block_lse_backward", &clip_block_lse_backward_cpu);
  m.impl("siglip_block", &siglip_block_cpu);
  m.impl("siglip_block_backward", &siglip_block_backward_cpu);
}

}  // namespace losses
}  // namespace ecgkt

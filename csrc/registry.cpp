// Every ecgkt op schema, in one place. Kernels register per dispatch key with
// STABLE_TORCH_LIBRARY_IMPL in csrc/<op>/{cpu.cpp,cuda.cu}; fake (meta) kernels are in
// ecgkt/ops/<op>.py (torch.library.register_fake).
#include "stable_api.h"

STABLE_TORCH_LIBRARY(ecgkt, m) {
  // Fused ECG preprocessing; see ecgkt/ops/preprocess/ for the meaning of each argument.
  //   signal   [N, T] float16/bfloat16/float32/float64 (mV) or int16 (ADC units)
  //   gain     [N] float32, adu/mV (1 for float input); baseline [N] float32, adu
  //   sos      [S, 6] float64 second-order sections (b0 b1 b2 1 a1 a2), applied forward then backward
  //   zi       [S, 2] float64 steady-state of the cascade for a unit step (scaled by the edge value)
  //   padlen   odd-extension length at each end before filtering
  //   fir      [K] float64 polyphase anti-aliasing filter (empty when up == down == 1)
  //   normalize 0 none, 1 z-score, 2 robust (median / 1.4826·MAD)
  // returns (out [N, T_out] float32 (float64 for float64 input), flags [N] int32:
  //          bit 0 = invalid samples repaired, bit 1 = flat or all-invalid lead set to zero)
  m.def(
      "preprocess(Tensor signal, Tensor gain, Tensor baseline, Tensor sos, Tensor zi, "
      "int padlen, Tensor fir, int up, int down, int normalize) -> (Tensor, Tensor)");

  // Contrastive-loss block primitives (kernels in csrc/contrastive/, Python face and float64 reference
  // in ecgkt/ops/contrastive/). a [Ba, D], b [Bb, D] float32/float16/bfloat16/float64 rows
  // (L2-normalised by the caller), scale/bias one-value tensors, logits L = scale * a @ b^T.
  //   clip_block_lse        -> (row_lse [Ba], col_lse [Bb]) log-sum-exp of L along rows / columns
  //   siglip_block          -> row_sum [Ba] = sum_j softplus(L_ij + bias)
  // The *_backward ops take the gradients of those outputs and recompute L tile by tile;
  // they return the gradients of (a, b, scale[, bias]) in the inputs' dtypes.
  m.def("clip_block_lse(Tensor a, Tensor b, Tensor scale) -> (Tensor, Tensor)");
  m.def(
      "clip_block_lse_backward(Tensor a, Tensor b, Tensor scale, Tensor row_lse, Tensor col_lse, "
      "Tensor grad_row, Tensor grad_col) -> (Tensor, Tensor, Tensor)");
  m.def("siglip_block(Tensor a, Tensor b, Tensor scale, Tensor bias) -> Tensor");
  m.def(
      "siglip_block_backward(Tensor a, Tensor b, Tensor scale, Tensor bias, Tensor grad_row) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

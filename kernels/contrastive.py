"""Triton kernels of the contrastive-loss block primitives (the CUDA implementation of
``torch.ops.ecgkt.{clip_block_lse, siglip_block}[_backward]``; see ecgkt/ops/contrastive.py).

One program owns BLOCK_M rows of ``x`` and walks the rows of ``y`` BLOCK_N at a time, forming the
logits tile ``scale * x_blk @ y_blk.T`` in registers (never in memory):

  _rows_reduce_kernel   per-row log-sum-exp (online max/sum) or per-row sum of softplus(L + bias)
  _rows_grad_kernel     recomputes each tile, forms dL/dlogits and accumulates dL @ y_blk, plus
                        the per-row partials of the scale and bias gradients

Column statistics and the gradient of ``y`` are the same kernels with the roles of x and y
swapped (the formulas are symmetric), so no atomics are needed and results are deterministic.
Accumulation is float32; float16/bfloat16 tiles go through the tensor cores, float32 tiles use
IEEE float32 products (TF32 would cost ~1e-3 relative error in the logits). Under
TRITON_INTERPRET=1 the kernels run on CPU tensors (bfloat16 tiles are upcast there, since the
interpreter's bfloat16 dot is wrong).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"
MAX_DIM = 1024  # the whole embedding of a tile is held in registers / shared memory

REDUCE_LSE, REDUCE_SOFTPLUS = 0, 1
GRAD_CLIP, GRAD_SIGMOID_ROWS, GRAD_SIGMOID_COLS = 0, 1, 2


@triton.jit
def _load_rows(ptr, rows, n_rows, dim, stride, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (d[None, :] < dim)
    tile = tl.load(ptr + rows[:, None] * stride + d[None, :], mask=mask, other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _rows_reduce_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, out_ptr, n_x, n_y, dim, stride_x, stride_y,
                        MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    x = _load_rows(x_ptr, rows, n_x, dim, stride_x, BLOCK_D, UPCAST)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, n_y, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        y = _load_rows(y_ptr, cols, n_y, dim, stride_y, BLOCK_D, UPCAST)
        logits = tl.dot(x, tl.trans(y), input_precision=PRECISION) * scale
        valid = cols[None, :] < n_y
        if MODE == 0:  # REDUCE_LSE: online log-sum-exp
            logits = tl.where(valid, logits, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(logits, 1))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), 1)
            run_max = new_max
        else:  # REDUCE_SOFTPLUS: softplus(z) = max(z, 0) + log(1 + exp(-|z|))
            z = logits + bias
            softplus = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
            run_sum += tl.sum(tl.where(valid, softplus, 0.0), 1)
    if MODE == 0:
        run_sum = run_max + tl.log(run_sum)
    tl.store(out_ptr + rows, run_sum, mask=rows < n_x)


@triton.jit
def _rows_grad_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, lse_x_ptr, lse_y_ptr, g_x_ptr, g_y_ptr,
                      grad_ptr, scale_part_ptr, bias_part_ptr, n_x, n_y, dim, stride_x, stride_y,
                      MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_x
    x = _load_rows(x_ptr, rows, n_x, dim, stride_x, BLOCK_D, UPCAST)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    if MODE != 2:  # GRAD_SIGMOID_COLS has no per-row gradient
        g_x = tl.load(g_x_ptr + rows, mask=row_ok, other=0.0)
    if MODE == 0:  # GRAD_CLIP
        lse_x = tl.load(lse_x_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # dL @ y
    bias_part = tl.zeros([BLOCK_M], tl.float32)  # row sums of dL
    for j0 in range(0, n_y, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_y
        y = _load_rows(y_ptr, cols, n_y, dim, stride_y, BLOCK_D, UPCAST)
        logits = tl.dot(x, tl.trans(y), input_precision=PRECISION) * scale
        if MODE == 0:  # GRAD_CLIP: g_x softmax_row + g_y softmax_col
            lse_y = tl.load(lse_y_ptr + cols, mask=col_ok, other=0.0)
            g_y = tl.load(g_y_ptr + cols, mask=col_ok, other=0.0)
            dlogits = g_x[:, None] * tl.exp(logits - lse_x[:, None]) + g_y[None, :] * tl.exp(logits - lse_y[None, :])
        elif MODE == 1:  # GRAD_SIGMOID_ROWS
            dlogits = g_x[:, None] * tl.sigmoid(logits + bias)
        else:
            g_y = tl.load(g_y_ptr + cols, mask=col_ok, other=0.0)
            dlogits = g_y[None, :] * tl.sigmoid(logits + bias)
        dlogits = tl.where(col_ok[None, :] & row_ok[:, None], dlogits, 0.0)
        bias_part += tl.sum(dlogits, 1)
        acc += tl.dot(dlogits.to(y.dtype), y, input_precision=PRECISION)
    d = tl.arange(0, BLOCK_D)
    tl.store(grad_ptr + rows[:, None] * dim + d[None, :], acc * scale, mask=row_ok[:, None] & (d[None, :] < dim))
    # d(loss)/d(scale) = sum_ij dL_ij (x_i . y_j) = sum_i x_i . (dL @ y)_i
    tl.store(scale_part_ptr + rows, tl.sum(x.to(tl.float32) * acc, 1), mask=row_ok)
    tl.store(bias_part_ptr + rows, bias_part, mask=row_ok)


def _config(x: torch.Tensor):
    block_d = max(16, triton.next_power_of_2(x.shape[1]))
    if INTERPRET:
        block_m, block_n = 32, 32
    else:
        block_m, block_n = (64, 64) if block_d <= 256 else (32, 32)
    upcast = INTERPRET and x.dtype == torch.bfloat16
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # "tf32" is ignored for 16-bit tiles
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=upcast, PRECISION=precision)


def supports(a: torch.Tensor) -> bool:
    """Whether these kernels handle ``a``'s dtype and embedding size."""
    return a.dtype in (torch.float32, torch.float16, torch.bfloat16) and a.shape[1] <= MAX_DIM


def _check(a, b):
    if not supports(a):
        raise ValueError(f"ecgkt Triton contrastive kernels: dtype {a.dtype} / dim {a.shape[1]} unsupported "
                         f"(float32/float16/bfloat16, dim <= {MAX_DIM})")
    if a.dtype != b.dtype or a.shape[1] != b.shape[1]:
        raise ValueError(f"ecgkt Triton contrastive kernels: a {a.dtype}{tuple(a.shape)} and b "
                         f"{b.dtype}{tuple(b.shape)} do not match")


def _reduce_rows(x, y, scale, bias, mode):
    x, y = x.contiguous(), y.contiguous()
    cfg = _config(x)
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(x.shape[0], cfg["BLOCK_M"]),)
    _rows_reduce_kernel[grid](x, y, scale, bias, out, x.shape[0], y.shape[0], x.shape[1], x.stride(0),
                              y.stride(0), MODE=mode, **cfg)
    return out


def _grad_rows(x, y, scale, bias, lse_x, lse_y, g_x, g_y, mode):
    x, y = x.contiguous(), y.contiguous()
    cfg = _config(x)
    n = x.shape[0]
    grad = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    scale_part = torch.empty(n, dtype=torch.float32, device=x.device)
    bias_part = torch.empty(n, dtype=torch.float32, device=x.device)
    f32 = [None if t is None else t.float().contiguous() for t in (lse_x, lse_y, g_x, g_y)]
    f32 = [scale_part if t is None else t for t in f32]  # placeholder pointers, never read
    grid = (triton.cdiv(n, cfg["BLOCK_M"]),)
    _rows_grad_kernel[grid](x, y, scale, bias, *f32, grad, scale_part, bias_part, n, y.shape[0], x.shape[1],
                            x.stride(0), y.stride(0), MODE=mode, **cfg)
    return grad, scale_part, bias_part


def clip_block_lse(a, b, scale):
    _check(a, b)
    return _reduce_rows(a, b, scale, scale, REDUCE_LSE), _reduce_rows(b, a, scale, scale, REDUCE_LSE)


def clip_block_lse_backward(a, b, scale, row_lse, col_lse, grad_row, grad_col):
    _check(a, b)
    grad_a, scale_part, _ = _grad_rows(a, b, scale, scale, row_lse, col_lse, grad_row, grad_col, GRAD_CLIP)
    grad_b, _, _ = _grad_rows(b, a, scale, scale, col_lse, row_lse, grad_col, grad_row, GRAD_CLIP)
    return grad_a.to(a.dtype), grad_b.to(b.dtype), scale_part.sum().to(scale.dtype).reshape(scale.shape)


def siglip_block(a, b, scale, bias):
    _check(a, b)
    return _reduce_rows(a, b, scale, bias, REDUCE_SOFTPLUS)


def siglip_block_backward(a, b, scale, bias, grad_row):
    _check(a, b)
    grad_a, scale_part, bias_part = _grad_rows(a, b, scale, bias, None, None, grad_row, None, GRAD_SIGMOID_ROWS)
    grad_b, _, _ = _grad_rows(b, a, scale, bias, None, None, None, grad_row, GRAD_SIGMOID_COLS)
    return (grad_a.to(a.dtype), grad_b.to(b.dtype), scale_part.sum().to(scale.dtype).reshape(scale.shape),
            bias_part.sum().to(bias.dtype).reshape(bias.shape))

"""Triton kernels of the contrastive-loss block primitives (the CUDA implementation of
``torch.ops.ecgkt.{clip_block_lse, siglip_block}[_backward]``; see ecgkt/ops/contrastive/).

One program owns BLOCK_M rows of ``x`` and walks the rows of ``y`` BLOCK_N at a time, forming the
logits tile ``scale * x_blk @ y_blk.T`` on chip (never in memory). The embedding dimension is
tiled: each logits tile is a loop over BLOCK_K-wide slices of D (a pipelined GEMM main loop), so
on-chip memory does not grow with D:

  _lse_fused_kernel     row and column log-sum-exp of CLIP in one pass over the logits (column
                        partials per program, merged in a fixed order: no atomics)
  _rows_softplus_kernel per-row sum of softplus(L + bias) (SigLIP's forward)
  _grad_fused_kernel    the backward in one pass: program (r, c) owns row group r x column group c,
                        recomputes each of its tiles once, forms dL/dlogits and adds dL @ y_J and
                        dL^T @ x_I into its own rows of [column groups, B, D] and [row groups, B, D]
                        float32 partials, summed afterwards in a fixed order (no atomics)
  _rows_grad_kernel     the two-pass backward, for when those partials exceed their memory budget
                        (FUSED_GRAD_MEMORY_SHARE of the device): recomputes each tile, accumulates
                        dL @ y_blk for one BLOCK_DO-wide slice of D (grid axis 1) plus the per-row
                        partials of the scale and bias gradients; the gradient of ``y`` is the same
                        kernel with the roles of x and y swapped

Work per training step, in GEMM-equivalents (B x B x D multiply-adds), CLIP or SigLIP: forward 1,
one-pass backward 3 (logits recomputed once, two products), so 4 at any D against the 3-GEMM floor
(a forward that kept the logits would need O(B^2) memory). The two-pass backward recomputes the
logits once per gradient and per BLOCK_DO-wide output slice, 2 x (ceil(D / BLOCK_DO) + 1): a step
costs 5 at D <= BLOCK_DO, 7 for 16-bit and 11 for float32 at D = 256. Partial buffers of the one-pass backward, with about
2 programs per SM (g x g groups, g = 17 on a 132-SM H100): 2 g B D x 4 bytes, 2.3 GB at B = 65,536
and D = 256, 9 GB at B = 262,144.

Precision: accumulation is float32; float16/bfloat16 tiles go through the tensor cores, float32
tiles through 3xTF32 (``input_precision="tf32x3"``: tensor cores at about float32 accuracy; plain
TF32 would cost ~1e-3 relative error in the logits). float16 gradients: dL/dlogits is about
1/(2B^2) and underflows float16 for B >= ~4k, so before the cast dL is multiplied by powers of two
that bring its upper bound (softmax and sigmoid are <= 1) to 2^14: per row for dL @ y (bound
|g_row_i| + max|g_col|), per column for dL^T @ x (|g_col_j| + max|g_row|), and each product is
divided by them afterwards (exact: powers of two).

Resources: every (dtype, D bucket) configuration of ``config()`` is compiled for sm_80 and sm_90 by
tests/test_contrastive_triton.py, which asserts shared memory <= 164 KB (A100) and no register
spills. Under TRITON_INTERPRET=1 the kernels run on CPU tensors (bfloat16 tiles are upcast there,
since the interpreter's bfloat16 dot is wrong).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from . import on_device

INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHARED_MEMORY_LIMIT = 164 * 1024  # bytes per block on an A100 (sm_80); H100/H200 allow 227 KB

GRAD_CLIP, GRAD_SIGMOID_ROWS, GRAD_SIGMOID_COLS = 0, 1, 2
FP16_GRAD_SCALING = True  # float16 backward: scale dL/dlogits rows before the cast (tests turn it off)


@triton.jit
def _load_tile(ptr, rows, n_rows, cols, dim, stride, UPCAST: tl.constexpr):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < dim)
    tile = tl.load(ptr + rows[:, None].to(tl.int64) * stride + cols[None, :], mask=mask, other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _logits_tile(x_ptr, y_ptr, rows, cols, n_x, n_y, dim, stride_x, stride_y, scale,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr):
    """scale * x[rows] @ y[cols].T, the reduction over D in BLOCK_K slices."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.range(0, dim, BLOCK_K, num_stages=NUM_STAGES):
        k = k0 + tl.arange(0, BLOCK_K)
        x = _load_tile(x_ptr, rows, n_x, k, dim, stride_x, UPCAST)
        y = _load_tile(y_ptr, cols, n_y, k, dim, stride_y, UPCAST)
        acc = tl.dot(x, tl.trans(y), acc, input_precision=PRECISION)
    return acc * scale


@triton.jit
def _rows_softplus_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, out_ptr, n_x, n_y, dim, stride_x, stride_y,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          UPCAST: tl.constexpr, PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Per row: sum_j softplus(L_ij + bias), softplus(z) = max(z, 0) + log(1 + exp(-|z|))."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, n_y, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        logits = _logits_tile(x_ptr, y_ptr, rows, cols, n_x, n_y, dim, stride_x, stride_y, scale,
                              BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION, NUM_STAGES)
        z = logits + bias
        softplus = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
        run_sum += tl.sum(tl.where(cols[None, :] < n_y, softplus, 0.0), 1)
    tl.store(out_ptr + rows, run_sum, mask=rows < n_x)


@triton.jit
def _lse_fused_kernel(x_ptr, y_ptr, scale_ptr, row_out_ptr, col_max_ptr, col_sum_ptr, n_x, n_y, dim, stride_x,
                      stride_y, n_programs, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      UPCAST: tl.constexpr, PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Row and column log-sum-exp from one pass over the logits. Program p owns row blocks p, p + P, ...
    and keeps, for every column, the online (max, sum) over its own rows in row p of the [P, n_y] partial
    buffers (nobody else writes there: no atomics); the caller merges the P partials in a fixed order."""
    pid = tl.program_id(0)
    scale = tl.load(scale_ptr).to(tl.float32)
    part = pid.to(tl.int64) * n_y
    for blk in range(pid, tl.cdiv(n_x, BLOCK_M), n_programs):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_x
        run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        run_sum = tl.zeros([BLOCK_M], tl.float32)
        for j0 in range(0, n_y, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N)
            col_ok = cols < n_y
            logits = _logits_tile(x_ptr, y_ptr, rows, cols, n_x, n_y, dim, stride_x, stride_y, scale,
                                  BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION, NUM_STAGES)
            logits = tl.where(row_ok[:, None] & col_ok[None, :], logits, float("-inf"))
            # rows: online log-sum-exp (padding rows stay finite, unused)
            new_max = tl.maximum(run_max, tl.max(logits, 1))
            safe = tl.where(new_max == float("-inf"), 0.0, new_max)
            run_sum = run_sum * tl.exp(run_max - safe) + tl.sum(tl.exp(logits - safe[:, None]), 1)
            run_max = new_max
            # columns: fold this tile into the program's partials
            c_max = tl.load(col_max_ptr + part + cols, mask=col_ok, other=float("-inf"))
            c_sum = tl.load(col_sum_ptr + part + cols, mask=col_ok, other=0.0)
            m = tl.maximum(c_max, tl.max(logits, 0))
            safe_c = tl.where(m == float("-inf"), 0.0, m)
            c_sum = c_sum * tl.exp(c_max - safe_c) + tl.sum(tl.exp(logits - safe_c[None, :]), 0)
            tl.store(col_max_ptr + part + cols, m, mask=col_ok)
            tl.store(col_sum_ptr + part + cols, c_sum, mask=col_ok)
        tl.store(row_out_ptr + rows, run_max + tl.log(tl.where(row_ok, run_sum, 1.0)), mask=row_ok)


@triton.jit
def _rows_grad_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, lse_x_ptr, lse_y_ptr, g_x_ptr, g_y_ptr, g_y_max_ptr,
                      grad_ptr, scale_part_ptr, bias_part_ptr, n_x, n_y, dim, stride_x, stride_y,
                      MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_DO: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr, SCALE_GRAD: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    slice_id = tl.program_id(1)
    d_out = slice_id * BLOCK_DO + tl.arange(0, BLOCK_DO)
    row_ok = rows < n_x
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    g_x = tl.zeros([BLOCK_M], tl.float32)
    if MODE != 2:  # GRAD_SIGMOID_COLS has no per-row gradient
        g_x = tl.load(g_x_ptr + rows, mask=row_ok, other=0.0)
    if MODE == 0:  # GRAD_CLIP
        lse_x = tl.load(lse_x_ptr + rows, mask=row_ok, other=0.0)
    # float16: per-row power-of-two scaling of dL so that it does not underflow at the cast
    row_scale = tl.full([BLOCK_M], 1.0, tl.float32)
    if SCALE_GRAD:
        bound = tl.abs(g_x)
        if MODE != 1:
            bound += tl.load(g_y_max_ptr)
        bound = tl.maximum(bound, 1e-30)
        row_scale = tl.exp2(tl.minimum(tl.floor(tl.log2(16384.0 / bound)), 100.0))
    acc = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)  # (row_scale * dL) @ y[:, d_out]
    bias_part = tl.zeros([BLOCK_M], tl.float32)  # row sums of dL
    for j0 in range(0, n_y, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_y
        logits = _logits_tile(x_ptr, y_ptr, rows, cols, n_x, n_y, dim, stride_x, stride_y, scale,
                              BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION, NUM_STAGES)
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
        y_out = _load_tile(y_ptr, cols, n_y, d_out, dim, stride_y, UPCAST)
        if SCALE_GRAD:
            dlogits = dlogits * row_scale[:, None]
        acc = tl.dot(dlogits.to(y_out.dtype), y_out, acc, input_precision=PRECISION)
    acc = acc / row_scale[:, None]
    out_ok = row_ok[:, None] & (d_out[None, :] < dim)
    tl.store(grad_ptr + rows[:, None].to(tl.int64) * dim + d_out[None, :], acc * scale, mask=out_ok)
    # d(loss)/d(scale) = sum_ij dL_ij (x_i . y_j) = sum_i x_i . (dL @ y)_i, this slice's share
    x_out = _load_tile(x_ptr, rows, n_x, d_out, dim, stride_x, True)
    tl.store(scale_part_ptr + slice_id * n_x + rows, tl.sum(x_out * acc, 1), mask=row_ok)
    tl.store(bias_part_ptr + rows, bias_part, mask=row_ok & (rows * 0 + slice_id == 0))


@triton.jit
def _grad_fused_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, lse_x_ptr, lse_y_ptr, g_x_ptr, g_y_ptr, g_x_max_ptr,
                       g_y_max_ptr, gx_part_ptr, gy_part_ptr, bias_part_ptr, n_x, n_y, dim, stride_x, stride_y,
                       row_blocks_per_group, col_blocks_per_group,
                       MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_DO: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr, SCALE_GRAD: tl.constexpr):
    """Both gradients from one pass over the logits. Program (r, c) owns row group r x column group c:
    each tile is recomputed once, and dL @ y_J and dL^T @ x_I are added into the program's own rows of
    the partial buffers gx_part[c] and gy_part[r] (nobody else writes there: no atomics); the caller
    sums the partials in a fixed order. Partials are unscaled (the caller multiplies by the scale)."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    rb_start = r * row_blocks_per_group
    rb_stop = tl.minimum(rb_start + row_blocks_per_group, tl.cdiv(n_x, BLOCK_M))
    cb_start = c * col_blocks_per_group
    cb_stop = tl.minimum(cb_start + col_blocks_per_group, tl.cdiv(n_y, BLOCK_N))
    gx_base = gx_part_ptr + c.to(tl.int64) * n_x * dim
    gy_base = gy_part_ptr + r.to(tl.int64) * n_y * dim
    if SCALE_GRAD:  # bounds of dL over the other axis: softmax and sigmoid are <= 1
        g_x_max = tl.load(g_x_max_ptr)
        g_y_max = tl.load(g_y_max_ptr)  # 0 for SigLIP (no column term)
    for rb in range(rb_start, rb_stop):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_x
        g_x = tl.load(g_x_ptr + rows, mask=row_ok, other=0.0)
        if MODE == 0:  # GRAD_CLIP
            lse_x = tl.load(lse_x_ptr + rows, mask=row_ok, other=0.0)
        # float16: power-of-two scaling of dL (per row for dL @ y, per column for dL^T @ x) before the cast
        row_scale = tl.full([BLOCK_M], 1.0, tl.float32)
        if SCALE_GRAD:
            bound = tl.maximum(tl.abs(g_x) + g_y_max, 1e-30)
            row_scale = tl.exp2(tl.minimum(tl.floor(tl.log2(16384.0 / bound)), 100.0))
        bias_part = tl.zeros([BLOCK_M], tl.float32)  # row sums of dL
        for cb in range(cb_start, cb_stop):
            cols = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < n_y
            logits = _logits_tile(x_ptr, y_ptr, rows, cols, n_x, n_y, dim, stride_x, stride_y, scale,
                                  BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION, NUM_STAGES)
            if MODE == 0:  # g_x softmax_row + g_y softmax_col
                lse_y = tl.load(lse_y_ptr + cols, mask=col_ok, other=0.0)
                g_y = tl.load(g_y_ptr + cols, mask=col_ok, other=0.0)
                dlogits = (g_x[:, None] * tl.exp(logits - lse_x[:, None])
                           + g_y[None, :] * tl.exp(logits - lse_y[None, :]))
            else:  # GRAD_SIGMOID_ROWS
                dlogits = g_x[:, None] * tl.sigmoid(logits + bias)
            dlogits = tl.where(col_ok[None, :] & row_ok[:, None], dlogits, 0.0)
            bias_part += tl.sum(dlogits, 1)
            col_scale = tl.full([BLOCK_N], 1.0, tl.float32)
            if SCALE_GRAD:
                if MODE == 0:
                    col_bound = tl.maximum(tl.abs(g_y) + g_x_max, 1e-30)
                else:
                    col_bound = tl.maximum(tl.zeros([BLOCK_N], tl.float32) + g_x_max, 1e-30)
                col_scale = tl.exp2(tl.minimum(tl.floor(tl.log2(16384.0 / col_bound)), 100.0))
            for d0 in range(0, dim, BLOCK_DO):
                d_out = d0 + tl.arange(0, BLOCK_DO)
                d_ok = d_out < dim
                y_out = _load_tile(y_ptr, cols, n_y, d_out, dim, stride_y, UPCAST)
                x_out = _load_tile(x_ptr, rows, n_x, d_out, dim, stride_x, UPCAST)
                gx_ptrs = gx_base + rows[:, None].to(tl.int64) * dim + d_out[None, :]
                gx_ok = row_ok[:, None] & d_ok[None, :]
                gx = tl.load(gx_ptrs, mask=gx_ok & (rows[:, None] * 0 + cb > cb_start), other=0.0)  # first visit: 0
                gx += tl.dot((dlogits * row_scale[:, None]).to(y_out.dtype), y_out,
                             input_precision=PRECISION) / row_scale[:, None]
                tl.store(gx_ptrs, gx, mask=gx_ok)
                gy_ptrs = gy_base + cols[:, None].to(tl.int64) * dim + d_out[None, :]
                gy_ok = col_ok[:, None] & d_ok[None, :]
                gy = tl.load(gy_ptrs, mask=gy_ok & (cols[:, None] * 0 + rb > rb_start), other=0.0)
                gy += tl.dot(tl.trans((dlogits * col_scale[None, :]).to(x_out.dtype)), x_out,
                             input_precision=PRECISION) / col_scale[:, None]
                tl.store(gy_ptrs, gy, mask=gy_ok)
        tl.store(bias_part_ptr + c.to(tl.int64) * n_x + rows, bias_part, mask=row_ok)


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------
def dim_bucket(dim: int) -> int:
    """The D bucket a dimension compiles to: 16, 32, 64, 128 or 256 (256 covers every D > 128)."""
    return min(max(16, triton.next_power_of_2(dim)), 256)


DIM_BUCKETS = (16, 32, 64, 128, 256)


def config(dtype: torch.dtype, dim: int, interpret: bool = INTERPRET) -> dict:
    """Block sizes, pipeline stages and precision for one (dtype, D bucket); see the module docstring."""
    bucket = dim_bucket(dim)
    wide = dtype == torch.float32
    block_k = min(bucket, 32 if wide else 64)
    # 3xTF32 holds three operand splits in registers: 64 x 64 float32 tiles spill, 32 x 32 do not
    block = 32 if wide else 64
    cfg = dict(BLOCK_M=block, BLOCK_N=block, BLOCK_K=block_k, BLOCK_DO=min(bucket, 64 if wide else 128),
               NUM_STAGES=2 if wide else 3, num_warps=4 if wide else 8,
               # float32 softplus at 4 warps keeps a 16-byte stack frame on sm_80 (D bucket 16); 8 warps none
               softplus_warps=8,
               # the one-pass backward holds dL, both products and their partials: narrower output
               # slices and 8 warps keep it free of spills on sm_80 and sm_90 (16-bit at D bucket 16:
               # 8 warps leave bfloat16 an 8-byte stack frame on sm_80, 4 none)
               grad_fused_block_do=min(bucket, 32 if wide else 16),
               grad_fused_warps=4 if not wide and bucket == 16 else 8,
               PRECISION="tf32x3" if wide else "tf32")  # "tf32" is ignored for 16-bit tiles
    if interpret:  # smaller tiles are faster in numpy; the interpreter's bfloat16 dot is wrong
        cfg.update(BLOCK_M=32, BLOCK_N=32, UPCAST=dtype == torch.bfloat16, PRECISION="ieee")
    else:
        cfg.update(UPCAST=False)
    return cfg


def supports(a: torch.Tensor) -> bool:
    """Whether these kernels handle ``a``: float32/float16/bfloat16 on a CUDA device (any CPU tensor
    under TRITON_INTERPRET=1), any D."""
    return a.dtype in DTYPES and (a.is_cuda or INTERPRET)


def _check(a, b):
    if not supports(a):
        raise ValueError(f"ecgkt Triton contrastive kernels: dtype {a.dtype} on {a.device} unsupported "
                         "(float32/float16/bfloat16 on CUDA)")
    if a.dtype != b.dtype or a.shape[1] != b.shape[1] or a.device != b.device:
        raise ValueError(f"ecgkt Triton contrastive kernels: a {a.dtype}{tuple(a.shape)} on {a.device} and b "
                         f"{b.dtype}{tuple(b.shape)} on {b.device} do not match")


def _launch_args(cfg, kernel: str = ""):
    """Compile-time arguments and warps of one kernel ("softplus" and "grad_fused" have their own)."""
    meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "softplus_warps", "grad_fused_warps",
                                                       "grad_fused_block_do")}
    if kernel == "grad_fused":
        meta["BLOCK_DO"] = cfg["grad_fused_block_do"]
    return meta, cfg.get(kernel + "_warps", cfg["num_warps"])


def _softplus_rows(x, y, scale, bias):
    x, y = x.contiguous(), y.contiguous()
    cfg = config(x.dtype, x.shape[1])
    meta, warps = _launch_args(cfg, "softplus")
    meta.pop("BLOCK_DO")
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(x.shape[0], cfg["BLOCK_M"]),)
    with on_device(x):
        _rows_softplus_kernel[grid](x, y, scale, bias, out, x.shape[0], y.shape[0], x.shape[1], x.stride(0),
                                    y.stride(0), num_warps=warps, **meta)
    return out


def fused_programs(x: torch.Tensor, n_blocks: int) -> int:
    """Programs of the fused log-sum-exp: enough to fill the GPU (4 per SM), never more than row blocks.
    The partial buffers hold 2 x programs x B floats (about 2 x 528 x 4 B per column on an H100)."""
    if x.is_cuda:
        cap = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
    else:  # the interpreter: a few programs, so that tests cover several row blocks per program
        cap = 3
    return max(1, min(n_blocks, cap))


def _lse_fused(x, y, scale, programs=None):
    x, y = x.contiguous(), y.contiguous()
    cfg = config(x.dtype, x.shape[1])
    meta, warps = _launch_args(cfg)
    meta.pop("BLOCK_DO")
    n_x, n_y = x.shape[0], y.shape[0]
    p = programs or fused_programs(x, triton.cdiv(n_x, cfg["BLOCK_M"]))
    row = torch.empty(n_x, dtype=torch.float32, device=x.device)
    col_max = torch.full((p, n_y), float("-inf"), dtype=torch.float32, device=x.device)
    col_sum = torch.zeros((p, n_y), dtype=torch.float32, device=x.device)
    with on_device(x):
        _lse_fused_kernel[(p,)](x, y, scale, row, col_max, col_sum, n_x, n_y, x.shape[1], x.stride(0), y.stride(0),
                                p, num_warps=warps, **meta)
    top = col_max.max(0).values
    col = top + torch.log((col_sum * torch.exp(col_max - top)).sum(0))  # a fixed-order merge: deterministic
    return row, col


def _grad_rows(x, y, scale, bias, lse_x, lse_y, g_x, g_y, mode):
    x, y = x.contiguous(), y.contiguous()
    cfg = config(x.dtype, x.shape[1])
    meta, warps = _launch_args(cfg)
    n, dim = x.shape
    slices = triton.cdiv(dim, cfg["BLOCK_DO"])
    grad = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    scale_part = torch.empty((slices, n), dtype=torch.float32, device=x.device)
    bias_part = torch.empty(n, dtype=torch.float32, device=x.device)
    f32 = [None if t is None else t.float().contiguous() for t in (lse_x, lse_y, g_x, g_y)]
    g_y_max = f32[3].abs().max().reshape(1) if f32[3] is not None and f32[3].numel() else bias_part
    f32 = [bias_part if t is None else t for t in f32]  # placeholder pointers, never read
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), slices)
    with on_device(x):
        _rows_grad_kernel[grid](x, y, scale, bias, *f32, g_y_max, grad, scale_part, bias_part, n, y.shape[0], dim,
                                x.stride(0), y.stride(0), MODE=mode, SCALE_GRAD=FP16_GRAD_SCALING and x.dtype == torch.float16,
                                num_warps=warps, **meta)
    return grad, scale_part.sum(0), bias_part


# One-pass backward: partial buffers of (row groups + column groups) x B x D float32 are allowed up to
# this share of the device's memory; above it the two-pass kernel runs (no buffer, 5 GEMM-equivalents)
FUSED_GRAD_MEMORY_SHARE = 1 / 8
FUSED_GRAD_BUDGET_BYTES = None  # None: the share above on CUDA, unbounded under the interpreter (tests set it)


def grad_groups(x: torch.Tensor, y: torch.Tensor):
    """(row groups, column groups) of the one-pass backward, or None when its partial buffers would
    exceed the budget. Groups are chosen to give about 2 programs per SM (a few under the interpreter,
    so that tests cover several tiles per program)."""
    cfg = config(x.dtype, x.shape[1])
    n_rb, n_cb = triton.cdiv(x.shape[0], cfg["BLOCK_M"]), triton.cdiv(y.shape[0], cfg["BLOCK_N"])
    if n_rb == 0 or n_cb == 0:
        return None
    if x.is_cuda:
        props = torch.cuda.get_device_properties(x.device)
        side, budget = math.isqrt(2 * props.multi_processor_count - 1) + 1, props.total_memory * FUSED_GRAD_MEMORY_SHARE
    else:
        side, budget = 2, float("inf")
    if FUSED_GRAD_BUDGET_BYTES is not None:
        budget = FUSED_GRAD_BUDGET_BYTES
    # equal-sized groups, none empty
    g_r = triton.cdiv(n_rb, triton.cdiv(n_rb, min(side, n_rb)))
    g_c = triton.cdiv(n_cb, triton.cdiv(n_cb, min(side, n_cb)))
    if (g_c * x.shape[0] + g_r * y.shape[0]) * x.shape[1] * 4 > budget:
        return None
    return g_r, g_c


def _grad_fused(x, y, scale, bias, lse_x, lse_y, g_x, g_y, mode):
    """Gradients of x, y, scale and bias from one pass over the logits (``_grad_fused_kernel``)."""
    x, y = x.contiguous(), y.contiguous()
    cfg = config(x.dtype, x.shape[1])
    meta, warps = _launch_args(cfg, "grad_fused")
    (n_x, dim), n_y = x.shape, y.shape[0]
    g_r, g_c = grad_groups(x, y)
    n_rb, n_cb = triton.cdiv(n_x, cfg["BLOCK_M"]), triton.cdiv(n_y, cfg["BLOCK_N"])
    gx_part = torch.empty((g_c, n_x, dim), dtype=torch.float32, device=x.device)
    gy_part = torch.empty((g_r, n_y, dim), dtype=torch.float32, device=x.device)
    bias_part = torch.empty((g_c, n_x), dtype=torch.float32, device=x.device)
    zero = torch.zeros(1, dtype=torch.float32, device=x.device)
    lse_x, lse_y, g_x, g_y = [zero if t is None else t.float().contiguous() for t in (lse_x, lse_y, g_x, g_y)]
    g_x_max = g_x.abs().max().reshape(1) if g_x.numel() else zero
    g_y_max = g_y.abs().max().reshape(1) if mode == GRAD_CLIP and g_y.numel() else zero
    with on_device(x):
        _grad_fused_kernel[(g_r, g_c)](x, y, scale, bias, lse_x, lse_y, g_x, g_y, g_x_max, g_y_max, gx_part,
                                       gy_part, bias_part, n_x, n_y, dim, x.stride(0), y.stride(0),
                                       triton.cdiv(n_rb, g_r), triton.cdiv(n_cb, g_c), MODE=mode,
                                       SCALE_GRAD=FP16_GRAD_SCALING and x.dtype == torch.float16,
                                       num_warps=warps, **meta)
    s = scale.float()
    gx, gy = gx_part.sum(0), gy_part.sum(0)  # fixed-order merges: deterministic
    grad_s = (x.float() * gx).sum()  # d/ds sum_ij dL_ij s x_i.y_j = sum_i x_i . (dL @ y)_i
    return gx * s, gy * s, grad_s, bias_part.sum()


def clip_block_lse(a, b, scale, programs=None):
    _check(a, b)
    return _lse_fused(a, b, scale, programs)


def clip_block_lse_backward(a, b, scale, row_lse, col_lse, grad_row, grad_col):
    _check(a, b)
    if grad_groups(a, b) is not None:
        grad_a, grad_b, grad_s, _ = _grad_fused(a, b, scale, scale, row_lse, col_lse, grad_row, grad_col, GRAD_CLIP)
        return grad_a.to(a.dtype), grad_b.to(b.dtype), grad_s.to(scale.dtype).reshape(scale.shape)
    grad_a, scale_part, _ = _grad_rows(a, b, scale, scale, row_lse, col_lse, grad_row, grad_col, GRAD_CLIP)
    grad_b, _, _ = _grad_rows(b, a, scale, scale, col_lse, row_lse, grad_col, grad_row, GRAD_CLIP)
    return grad_a.to(a.dtype), grad_b.to(b.dtype), scale_part.sum().to(scale.dtype).reshape(scale.shape)


def siglip_block(a, b, scale, bias):
    _check(a, b)
    return _softplus_rows(a, b, scale, bias)


def siglip_block_backward(a, b, scale, bias, grad_row):
    _check(a, b)
    if grad_groups(a, b) is not None:
        grad_a, grad_b, grad_s, grad_t = _grad_fused(a, b, scale, bias, None, None, grad_row, None,
                                                     GRAD_SIGMOID_ROWS)
    else:
        grad_a, grad_s, grad_t = _grad_rows(a, b, scale, bias, None, None, grad_row, None, GRAD_SIGMOID_ROWS)
        grad_b, _, _ = _grad_rows(b, a, scale, bias, None, None, None, grad_row, GRAD_SIGMOID_COLS)
        grad_s, grad_t = grad_s.sum(), grad_t.sum()
    return (grad_a.to(a.dtype), grad_b.to(b.dtype), grad_s.to(scale.dtype).reshape(scale.shape),
            grad_t.to(bias.dtype).reshape(bias.shape))

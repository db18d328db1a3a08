"""Block primitives of the contrastive losses: the Python face of ``torch.ops.ecgkt.*``.

Every loss mode (single process, all-gather, ring) is assembled from two differentiable
primitives on one (row block ``a`` [Ba, D], column block ``b`` [Bb, D]) pair, with
``L = s * a @ b.T`` never materialised by the compiled kernels (tiles, O(Ba + Bb) state):

  clip_block_lse(a, b, s)        -> (row_lse [Ba], col_lse [Bb])
        row_lse[i] = logsumexp_j L[i, j],  col_lse[j] = logsumexp_i L[i, j]
  siglip_block(a, b, s, t)       -> row_sum [Ba]
        row_sum[i] = sum_j softplus(L[i, j] + t)

The positives (the diagonal of the global batch) are added by the caller with autograd, so
the primitives need not know where the diagonal lies: for CLIP the loss is
``mean(row_lse)/2 + mean(col_lse)/2 - mean(L_ii)`` and for SigLIP, since
``-log sigmoid(x) = softplus(x) - x`` for the positives and ``softplus(x)`` for the negatives,
``(sum(row_sum) - sum(L_ii + t)) / B``.

Kernels: CPU in C++ (csrc/contrastive/cpu.cpp), CUDA in Triton (kernels/contrastive.py, registered
here), and a materialised pure-torch reference (``reference.py``, used in tests, in float64, and as the
fallback when the compiled extension is missing). Outputs are float32 (float64 for float64
inputs); gradients come back in the inputs' dtypes.
"""
from __future__ import annotations

import warnings

import torch

from ... import _extension
from .. import schemas
from .reference import _acc_dtype, run_reference

_OPS = ("clip_block_lse", "clip_block_lse_backward", "siglip_block", "siglip_block_backward")


# ----------------------------------------------------------------------------------------------
# Registered ops: fake kernels, autograd, CUDA (Triton) kernels
# ----------------------------------------------------------------------------------------------
# True when every op has a compiled CPU kernel (ecgkt._C); without them the references are the kernels
HAS_OPS = all(_extension.has_kernel(op, "CPU") for op in _OPS)


def _fake_rows(a):
    return a.new_empty((a.shape[0],), dtype=_acc_dtype(a))


def _clip_setup(ctx, inputs, output):
    a, b, scale = inputs
    ctx.save_for_backward(a, b, scale, *output)


def _clip_backward(ctx, grad_row, grad_col):
    a, b, scale, row_lse, col_lse = ctx.saved_tensors
    grad_row = row_lse.new_zeros(row_lse.shape) if grad_row is None else grad_row
    grad_col = col_lse.new_zeros(col_lse.shape) if grad_col is None else grad_col
    return run_op("clip_block_lse_backward", a, b, scale, row_lse, col_lse, grad_row, grad_col)


def _siglip_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _siglip_backward(ctx, grad_row):
    return run_op("siglip_block_backward", *ctx.saved_tensors, grad_row)


def _triton_kernels():
    """The Triton module, imported on first CUDA use (importing triton is slow); None without it."""
    try:
        from ...kernels import contrastive as triton_kernels
    except ImportError:
        return None
    return triton_kernels


def cuda_kernel(op: str):
    """The CUDA kernel of ``op``: Triton where it supports the inputs, else the materialised reference
    with a warning (O(B^2) memory: no triton, or float64)."""

    def run(a, *args):
        triton_kernels = _triton_kernels()
        if triton_kernels is not None and triton_kernels.supports(a):
            return getattr(triton_kernels, op)(a, *args)
        why = "triton is not installed" if triton_kernels is None else f"{a.dtype} input"
        warnings.warn(f"ecgkt::{op} on CUDA runs the materialised O(B^2) reference ({why}): "
                      f"{a.shape[0]} x {args[0].shape[0]} logits in memory", RuntimeWarning, stacklevel=2)
        return run_reference(op, a, *args)

    return run


def cpu_fallback_kernel(op: str):
    """The CPU kernel of ``op`` when ecgkt._C has none: the reference, with the one-time fallback warning."""

    def run(*args):
        _extension.warn_fallback(op)
        return run_reference(op, *args)

    return run


def _register() -> None:
    for op in _OPS:
        if not schemas.has_kernel(op, "CPU"):
            torch.library.register_kernel(f"ecgkt::{op}", "cpu", cpu_fallback_kernel(op))
        if not schemas.has_kernel(op, "CUDA"):  # a compiled CUDA kernel would win
            torch.library.register_kernel(f"ecgkt::{op}", "cuda", cuda_kernel(op))
            schemas.TRITON_ON_CUDA.add(op)

    @torch.library.register_fake("ecgkt::clip_block_lse")
    def _(a, b, scale):
        return _fake_rows(a), _fake_rows(b)

    @torch.library.register_fake("ecgkt::clip_block_lse_backward")
    def _(a, b, scale, row_lse, col_lse, grad_row, grad_col):
        return torch.empty_like(a), torch.empty_like(b), torch.empty_like(scale)

    @torch.library.register_fake("ecgkt::siglip_block")
    def _(a, b, scale, bias):
        return _fake_rows(a)

    @torch.library.register_fake("ecgkt::siglip_block_backward")
    def _(a, b, scale, bias, grad_row):
        return torch.empty_like(a), torch.empty_like(b), torch.empty_like(scale), torch.empty_like(bias)

    torch.library.register_autograd("ecgkt::clip_block_lse", _clip_backward, setup_context=_clip_setup)
    torch.library.register_autograd("ecgkt::siglip_block", _siglip_backward, setup_context=_siglip_setup)


_register()


def run_op(op: str, *args):
    """Runs one registered op (its kernel for the inputs' device: compiled, Triton or the reference)."""
    return getattr(torch.ops.ecgkt, op)(*args)


# ----------------------------------------------------------------------------------------------
# Public primitives (differentiable in every argument)
# ----------------------------------------------------------------------------------------------
def clip_block_lse(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor):
    """Per-row and per-column log-sum-exp of ``scale * a @ b.T`` (see the module docstring)."""
    return torch.ops.ecgkt.clip_block_lse(a, b, scale)


def siglip_block(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """Per-row sums of ``softplus(scale * a @ b.T + bias)`` (see the module docstring)."""
    return torch.ops.ecgkt.siglip_block(a, b, scale, bias)


def clip_block_lse_backward(a, b, scale, row_lse, col_lse, grad_row, grad_col):
    """Gradients (a, b, scale) of ``<grad_row, row_lse> + <grad_col, col_lse>``, tiles recomputed."""
    return run_op("clip_block_lse_backward", a, b, scale, row_lse, col_lse, grad_row, grad_col)


def siglip_block_backward(a, b, scale, bias, grad_row):
    """Gradients (a, b, scale, bias) of ``<grad_row, row_sum>``, tiles recomputed."""
    return run_op("siglip_block_backward", a, b, scale, bias, grad_row)

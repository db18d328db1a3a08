"""The materialised pure-torch reference of the contrastive block primitives (exact in float64): every
kernel is tested against it, and it is the CPU kernel when ecgkt._C is missing."""
from __future__ import annotations

import torch


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _logits(a, b, scale):
    acc = _acc_dtype(a)
    return scale.to(acc) * (a.to(acc) @ b.to(acc).T), acc


def clip_block_lse_reference(a, b, scale):
    logits, _ = _logits(a, b, scale)
    return torch.logsumexp(logits, 1), torch.logsumexp(logits, 0)


def clip_block_lse_backward_reference(a, b, scale, row_lse, col_lse, grad_row, grad_col):
    logits, acc = _logits(a, b, scale)
    dlogits = grad_row.to(acc)[:, None] * torch.exp(logits - row_lse.to(acc)[:, None])
    dlogits = dlogits + grad_col.to(acc)[None, :] * torch.exp(logits - col_lse.to(acc)[None, :])
    return _grads_from_dlogits(a, b, scale, dlogits)


def siglip_block_reference(a, b, scale, bias):
    logits, acc = _logits(a, b, scale)
    return torch.nn.functional.softplus(logits + bias.to(acc)).sum(1)


def siglip_block_backward_reference(a, b, scale, bias, grad_row):
    logits, acc = _logits(a, b, scale)
    dlogits = grad_row.to(acc)[:, None] * torch.sigmoid(logits + bias.to(acc))
    grad_a, grad_b, grad_scale = _grads_from_dlogits(a, b, scale, dlogits)
    return grad_a, grad_b, grad_scale, dlogits.sum().to(bias.dtype).reshape(bias.shape)


def _grads_from_dlogits(a, b, scale, dlogits):
    acc = dlogits.dtype
    a_, b_, s = a.to(acc), b.to(acc), scale.to(acc)
    grad_a = s * (dlogits @ b_)
    grad_b = s * (dlogits.T @ a_)
    grad_scale = (dlogits * (a_ @ b_.T)).sum()
    return grad_a.to(a.dtype), grad_b.to(b.dtype), grad_scale.to(scale.dtype).reshape(scale.shape)


_REFERENCE = {
    "clip_block_lse": clip_block_lse_reference,
    "clip_block_lse_backward": clip_block_lse_backward_reference,
    "siglip_block": siglip_block_reference,
    "siglip_block_backward": siglip_block_backward_reference,
}


def run_reference(op: str, *args):
    """Runs the reference of ``op`` outside autocast (it computes in the accumulation dtype on
    purpose: under autocast its matmuls would silently drop to float16/bfloat16)."""
    with torch.autocast(args[0].device.type, enabled=False):
        return _REFERENCE[op](*args)

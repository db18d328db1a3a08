"""Joint-embedding (contrastive) losses between ECG and clinical-tabular embeddings.

  clip_loss(ecg, clin, logit_scale)                symmetric InfoNCE
  siglip_loss(ecg, clin, logit_scale, logit_bias)  pairwise sigmoid loss
  ClipLoss / SigLipLoss                            nn.Modules holding the distributed mode; the logit
                                                   scale and bias belong to the model (ContrastiveModel)

Both losses L2-normalise the rows of ``ecg`` and ``clin`` ([B, D]) and never materialise the
B x B similarity matrix: the compiled kernels (ecgkt.ops.contrastive) walk it tile by tile and
keep O(B) state. Inputs may be float32, float16 or bfloat16 (float64 is exact); the loss is
float32 (float64 for float64 inputs).

Distributed (``distributed=`` "gather" or "ring", torch.distributed initialised, the same local
batch size on every rank; rank r holds rows r*B_local .. (r+1)*B_local - 1 of the global batch):

* "gather": all-gather both towers with autograd and compute the local rows' loss against the
  global batch (open_clip's gather_with_grad + local_loss); O(B_global * D) memory per rank.
* "ring": keep the towers where they are and pass the clinical block (and the accumulators that
  belong to it) round a ring of ranks, merging log-sum-exps; O(B_local * D) memory per rank.

In both modes every rank returns the loss of the global batch, and the gradients follow the
data-parallel convention (the same as open_clip's): each rank's backward gives its local
embeddings ``world_size * dL/dx_local`` and the scale/bias a per-rank share, so that averaging
gradients across ranks (what DistributedDataParallel does) yields exactly the gradient of the
global-batch loss. All ranks must call forward and backward together.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import ECGKTError
from .ops import contrastive as ops

__all__ = ["clip_loss", "siglip_loss", "ClipLoss", "SigLipLoss", "naive_clip_loss", "naive_siglip_loss"]

DISTRIBUTED_MODES = (None, "gather", "ring")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def clip_loss(ecg, clin, logit_scale, *, distributed: str | None = None, group=None) -> torch.Tensor:
    """Symmetric InfoNCE: ½·(mean_i CE(s·â_i·b̂ᵀ, i) + mean_i CE(s·b̂_i·âᵀ, i)).

    ``logit_scale`` is the multiplier s on the cosine similarities (a tensor or float; pass
    ``log_scale.exp()`` for a learnable log-scale). See the module docstring for ``distributed``.
    """
    a, b, scale, _ = _prepare("clip_loss", ecg, clin, logit_scale, None)
    size = _world_size("clip_loss", distributed, group, a)
    if size == 1:
        row_lse, col_lse = ops.clip_block_lse(a, b, scale)
    elif distributed == "gather":
        row_lse = ops.clip_block_lse(a, _gather(b, group), scale)[0]
        col_lse = ops.clip_block_lse(b, _gather(a, group), scale)[0]  # columns of the local clin rows
    else:
        row_lse, col_lse = _RingClip.apply(a, b, scale, group)
    positives = _positive_logits(a, b, scale, None)
    loss = 0.5 * (row_lse.mean() + col_lse.mean()) - positives.mean()
    return _global_value(loss, size, group)


def siglip_loss(
    ecg, clin, logit_scale, logit_bias, *, distributed: str | None = None, group=None
) -> torch.Tensor:
    """Sigmoid loss: −(1/B)·Σ_i Σ_j log σ(z_ij·(s·â_i·b̂_j + t)), z_ij = +1 if i = j else −1.

    ``logit_scale`` s and ``logit_bias`` t are tensors or floats. See the module docstring for
    ``distributed``.
    """
    a, b, scale, bias = _prepare("siglip_loss", ecg, clin, logit_scale, logit_bias)
    size = _world_size("siglip_loss", distributed, group, a)
    if size == 1:
        row_sum = ops.siglip_block(a, b, scale, bias)
    elif distributed == "gather":
        row_sum = ops.siglip_block(a, _gather(b, group), scale, bias)
    else:
        row_sum = _RingSiglip.apply(a, b, scale, bias, group)
    # -log σ(x) = softplus(x) - x on the diagonal, softplus(x) off it (-log σ(-x)).
    positives = _positive_logits(a, b, scale, bias)
    loss = (row_sum.sum() - positives.sum()) / a.shape[0]
    return _global_value(loss, size, group)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------
class ClipLoss(nn.Module):
    """CLIP loss as a module. It holds the distributed mode only: the logit scale is the model's
    (``ContrastiveModel.logit_scale``, the open_clip split), passed to ``forward``.

    ``distributed``: None (this process's batch), "gather" or "ring" (see the module docstring).
    """

    def __init__(self, distributed: str | None = None, group=None):
        super().__init__()
        _check_mode(type(self).__name__, distributed)
        self.distributed = distributed
        self.group = group

    def forward(self, ecg: torch.Tensor, clin: torch.Tensor, logit_scale) -> torch.Tensor:
        return clip_loss(ecg, clin, logit_scale, distributed=self.distributed, group=self.group)

    def extra_repr(self) -> str:
        return f"distributed={self.distributed!r}"


class SigLipLoss(ClipLoss):
    """SigLIP loss as a module; the logit scale and bias are the model's, passed to ``forward``."""

    def forward(self, ecg: torch.Tensor, clin: torch.Tensor, logit_scale, logit_bias) -> torch.Tensor:
        return siglip_loss(ecg, clin, logit_scale, logit_bias, distributed=self.distributed, group=self.group)


# ----------------------------------------------------------------------------------------------
# Naive references (materialised B x B logits); used by the tests and the benchmark
# ----------------------------------------------------------------------------------------------
def naive_clip_loss(ecg, clin, logit_scale):
    """Textbook CLIP loss with the full logits matrix (what open_clip computes)."""
    a, b = F.normalize(ecg, dim=-1), F.normalize(clin, dim=-1)
    logits = logit_scale * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def naive_siglip_loss(ecg, clin, logit_scale, logit_bias):
    """Textbook SigLIP loss with the full logits matrix (what open_clip computes)."""
    a, b = F.normalize(ecg, dim=-1), F.normalize(clin, dim=-1)
    logits = logit_scale * a @ b.T + logit_bias
    signs = 2 * torch.eye(a.shape[0], device=a.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / a.shape[0]


# ----------------------------------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------------------------------
def _acc_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare(fn, ecg, clin, logit_scale, logit_bias):
    for name, x in (("ecg", ecg), ("clin", clin)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ECGKTError(f"{fn}: {name} must be a [batch, dim] tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dtype not in _DTYPES:
            raise ECGKTError(f"{fn}: {name} has dtype {x.dtype}; use float32, float16 or bfloat16")
    if ecg.shape != clin.shape:
        raise ECGKTError(f"{fn}: ecg {tuple(ecg.shape)} and clin {tuple(clin.shape)} must have the same shape")
    if ecg.shape[0] == 0 or ecg.shape[1] == 0:
        raise ECGKTError(f"{fn}: empty batch {tuple(ecg.shape)}")
    if ecg.device != clin.device:
        raise ECGKTError(f"{fn}: ecg is on {ecg.device} but clin is on {clin.device}")
    scale = _scalar(fn, "logit_scale", logit_scale, ecg)
    bias = None if logit_bias is None else _scalar(fn, "logit_bias", logit_bias, ecg)
    named = [("ecg", ecg), ("clin", clin), ("logit_scale", scale)] + ([] if bias is None else [("logit_bias", bias)])
    _check_finite(fn, named)
    acc = _acc_dtype(ecg)
    dtype = ecg.dtype if clin.dtype == ecg.dtype else acc
    # Normalise in the accumulation dtype; the kernels read the input precision.
    a = F.normalize(ecg.to(acc), dim=-1).to(dtype)
    b = F.normalize(clin.to(acc), dim=-1).to(dtype)
    return a, b, scale, bias


def _scalar(fn, name, value, like):
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), device=like.device)
    if value.numel() != 1:
        raise ECGKTError(f"{fn}: {name} must be a scalar, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        value = value.float()
    return value.reshape(())


def _check_finite(fn, named):
    """NaN/inf inputs make the loss undefined. On CPU: one fused check, naming the offending input. On
    a GPU the check is queued on the stream (torch._assert_async), so the hot path never waits on the
    host: a non-finite input fails the step at the next synchronisation instead."""
    ok = torch.stack([torch.isfinite(x.detach()).all() for _, x in named]).all()
    if ok.device.type != "cpu":
        torch._assert_async(ok, f"{fn}: an input (ecg, clin, logit scale or bias) contains NaN/inf")
        return
    if bool(ok):
        return
    for name, x in named:
        bad = int((~torch.isfinite(x.detach())).sum())
        if bad:
            raise ECGKTError(f"{fn}: {name} contains {bad} NaN/inf value(s); the loss is undefined")


def _positive_logits(a, b, scale, bias):
    acc = _acc_dtype(a)
    logits = scale.to(acc) * (a.to(acc) * b.to(acc)).sum(-1)
    return logits if bias is None else logits + bias.to(acc)


def _check_mode(fn, mode):
    if mode not in DISTRIBUTED_MODES:
        raise ECGKTError(f"{fn}: distributed={mode!r}; choose None, 'gather' or 'ring'")


def _world_size(fn, mode, group, a) -> int:
    _check_mode(fn, mode)
    if mode is None:
        return 1
    if not (dist.is_available() and dist.is_initialized()):
        raise ECGKTError(f"{fn}: distributed={mode!r} needs torch.distributed initialised "
                         "(torch.distributed.init_process_group) first")
    size = dist.get_world_size(group)
    if size > 1:
        sizes = torch.tensor([a.shape[0], -a.shape[0]], device=a.device)
        dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
        if int(sizes[0]) != -int(sizes[1]):
            raise ECGKTError(f"{fn}: distributed={mode!r} needs the same local batch size on every rank, "
                             f"got sizes between {-int(sizes[1])} and {int(sizes[0])}")
    return size


# torch 2.13 renamed the tensor collectives (the old names warn); older torch has only the old ones
_ALL_GATHER = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or getattr(dist, "reduce_scatter_tensor", None)


class _GatherRows(torch.autograd.Function):
    """All-gather of the rows of ``x`` with autograd: the backward sums every rank's gradient of the
    local rows (a reduce-scatter), as open_clip's gather_with_grad does.

    Written here rather than torch.distributed.nn.functional.all_gather: that one is deprecated (a
    FutureWarning every step), and the process group it keeps in its autograd context made gloo
    processes abort at exit ("terminate called without an active exception") in about a third of
    2-rank runs. ``group`` stays None for the default group, so nothing here outlives it."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        size = dist.get_world_size(group)
        out = x.new_empty((size * x.shape[0], *x.shape[1:]))
        _ALL_GATHER(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad, group = grad.contiguous(), ctx.group
        n = grad.shape[0] // dist.get_world_size(group)
        if dist.get_backend(group) in (dist.Backend.NCCL, getattr(dist.Backend, "XCCL", "xccl")):
            local = grad.new_empty((n, *grad.shape[1:]))
            _REDUCE_SCATTER(local, grad, group=group)
        else:  # gloo has no reduce-scatter: sum the whole gradient, keep the local rows
            total = grad.clone()
            dist.all_reduce(total, group=group)
            rank = dist.get_rank(group)
            local = total[rank * n:(rank + 1) * n]
        return local, None


def _gather(x, group):
    """All-gather with autograd (the backward sums every rank's gradient into the local rows)."""
    return _GatherRows.apply(x, group)


def _global_value(loss_local, size, group):
    """Value: the mean over ranks (= the global-batch loss); gradient: that of the local share."""
    if size == 1:
        return loss_local
    total = loss_local.detach().clone()
    dist.all_reduce(total, group=group)
    return loss_local + (total / size - loss_local.detach())


class _Ring:
    """Neighbours on the ring of ``group`` and a send-to-next / receive-from-previous exchange."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        rank = dist.get_rank(group)
        world = group or dist.group.WORLD
        self.next = dist.get_global_rank(world, (rank + 1) % self.size)
        self.prev = dist.get_global_rank(world, (rank - 1) % self.size)

    def start(self, tensors):
        """Starts sending ``tensors`` to the next rank; returns (buffers being received, requests)."""
        tensors = [t.contiguous() for t in tensors]
        received = [torch.empty_like(t) for t in tensors]
        ops_ = [dist.P2POp(dist.isend, t, self.next, self.group) for t in tensors]
        ops_ += [dist.P2POp(dist.irecv, r, self.prev, self.group) for r in received]
        return received, dist.batch_isend_irecv(ops_)

    def shift(self, tensors):
        received, requests = self.start(tensors)
        _wait(requests)
        return received


def _wait(requests):
    for r in requests:
        r.wait()


def _ring_walk(ring, travelling, visit):
    """The one ring driver: ``travelling`` (a list of tensors) makes a full turn of the ring, one hop
    per step; ``visit(travelling)`` runs on each block while the next one is in flight."""
    for step in range(ring.size):
        last = step == ring.size - 1
        if not last:
            next_travelling, requests = ring.start(travelling)
        visit(travelling)
        if not last:
            _wait(requests)
            travelling = next_travelling


def _ring_backward(ring, op, a, travelling, args_for, n_scalars):
    """Gradients of a ring forward: ``op`` (a *_backward primitive) on each visiting block; the local
    rows' gradient and the scalar gradients accumulate here, the block's gradient travels with it and
    comes home complete after the last step. Returns (grad_a, grad_b, [scalar grads]) in the
    accumulation dtype."""
    acc = _acc_dtype(a)
    grad_a = torch.zeros(a.shape, dtype=acc, device=a.device)
    scalars = [torch.zeros((), dtype=acc, device=a.device) for _ in range(n_scalars)]
    grad_b = None

    def visit(block):
        nonlocal grad_a, grad_b
        ga, gb, *gs = ops.run_op(op, *args_for(block))
        grad_a += ga
        for total, g in zip(scalars, gs):
            total += g.reshape(())
        gb = gb.to(acc) if grad_b is None else grad_b + gb
        (grad_b,) = ring.shift([gb])

    _ring_walk(ring, travelling, visit)
    return grad_a, grad_b, scalars


class _RingClip(torch.autograd.Function):
    """Global row/column log-sum-exps of the local rows/columns; the clin block travels."""

    @staticmethod
    def forward(ctx, a, b, scale, group):
        ring = _Ring(group)
        row_lse, col_lse = None, None  # col_lse: accumulator of the travelling block

        def visit(block):
            nonlocal row_lse, col_lse
            r, c = ops.run_op("clip_block_lse", a, block[0], scale)
            row_lse = r if row_lse is None else torch.logaddexp(row_lse, r)
            c = c if col_lse is None else torch.logaddexp(col_lse, c)
            (col_lse,) = ring.shift([c])  # after the last step it comes home complete

        _ring_walk(ring, [b], visit)
        ctx.ring = ring
        ctx.save_for_backward(a, b, scale, row_lse, col_lse)
        return row_lse, col_lse

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        a, b, scale, row_lse, col_lse = ctx.saved_tensors
        grad_row = torch.zeros_like(row_lse) if grad_row is None else grad_row.contiguous()
        grad_col = torch.zeros_like(col_lse) if grad_col is None else grad_col.contiguous()
        grad_a, grad_b, (grad_scale,) = _ring_backward(
            ctx.ring, "clip_block_lse_backward", a, [b, col_lse, grad_col],
            lambda blk: (a, blk[0], scale, row_lse, blk[1], grad_row, blk[2]), 1)
        return grad_a.to(a.dtype), grad_b.to(b.dtype), grad_scale.to(scale.dtype).reshape(scale.shape), None


class _RingSiglip(torch.autograd.Function):
    """Per-row softplus sums of the local rows against the global batch; the clin block travels."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, group):
        ring = _Ring(group)
        row_sum = None

        def visit(block):
            nonlocal row_sum
            r = ops.run_op("siglip_block", a, block[0], scale, bias)
            row_sum = r if row_sum is None else row_sum + r

        _ring_walk(ring, [b], visit)
        ctx.ring = ring
        ctx.save_for_backward(a, b, scale, bias)
        return row_sum

    @staticmethod
    def backward(ctx, grad_row):
        a, b, scale, bias = ctx.saved_tensors
        grad_row = grad_row.contiguous()
        grad_a, grad_b, (grad_scale, grad_bias) = _ring_backward(
            ctx.ring, "siglip_block_backward", a, [b], lambda blk: (a, blk[0], scale, bias, grad_row), 2)
        return (grad_a.to(a.dtype), grad_b.to(b.dtype), grad_scale.to(scale.dtype).reshape(scale.shape),
                grad_bias.to(bias.dtype).reshape(bias.shape), None)

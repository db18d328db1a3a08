"""Distributed contrastive losses: 2 and 3 processes, gloo on CPU. Every rank's loss must equal the
single-process loss of the global batch, and the gradients the data-parallel share of its
gradient (what DistributedDataParallel averages back into the full-batch gradient)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LOCAL = 37  # odd local batch
DIM = 48


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_inputs(world, dtype):
    g = torch.Generator().manual_seed(7)
    ecg = torch.randn(world * LOCAL, DIM, generator=g, dtype=torch.float64)
    clin = ecg + torch.randn(world * LOCAL, DIM, generator=g, dtype=torch.float64)
    return ecg.to(dtype), clin.to(dtype), torch.tensor(12.5), torch.tensor(-6.0)


def _reference(kind, ecg, clin, s, t):
    from ecgkt import losses

    args = [x.double().requires_grad_() for x in (ecg, clin, s, t)]
    args = args if kind == "siglip" else args[:3]
    loss = losses.naive_siglip_loss(*args) if kind == "siglip" else losses.naive_clip_loss(*args)
    return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, args)]


def _check(name, got, ref, rel):
    err = float((got.detach().double() - ref).abs().max())
    bound = rel * (float(ref.abs().max()) + 1e-2)
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


def _worker(rank, world, port, dtypes):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        from ecgkt import losses

        for dtype in dtypes:
            _compare_modes(rank, world, losses, dtype, {torch.float32: 2e-5, torch.bfloat16: 3e-2}[dtype])
        # unequal local batches are refused with a clear error on every rank
        ecg, clin, s, _ = _global_inputs(world, torch.float32)
        n = LOCAL + rank
        with pytest.raises(Exception, match="same local batch size"):
            losses.clip_loss(ecg[:n], clin[:n], s, distributed="ring")
    finally:
        dist.destroy_process_group()


def _compare_modes(rank, world, losses, dtype, rel):
    ecg, clin, s, t = _global_inputs(world, dtype)
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    for kind in ("clip", "siglip"):
        ref_loss, ref_grads = _reference(kind, ecg, clin, s, t)
        for mode in ("gather", "ring"):
            inputs = [ecg[rows].clone().requires_grad_(), clin[rows].clone().requires_grad_(),
                      s.clone().requires_grad_(), t.clone().requires_grad_()]
            inputs = inputs if kind == "siglip" else inputs[:3]
            fn = losses.siglip_loss if kind == "siglip" else losses.clip_loss
            loss = fn(*inputs, distributed=mode)
            loss.backward()
            what = f"rank {rank} {kind} {mode}"
            _check(f"{what} loss", loss, ref_loss, rel)
            # local rows: world_size x the full-batch gradient (DDP divides by world_size)
            _check(f"{what} grad ecg", inputs[0].grad, world * ref_grads[0][rows], rel)
            _check(f"{what} grad clin", inputs[1].grad, world * ref_grads[1][rows], rel)
            # replicated scalars: the mean over ranks is the full-batch gradient
            for i, name in ((2, "logit_scale"), (3, "logit_bias"))[: len(inputs) - 2]:
                mean = inputs[i].grad.detach().clone()
                dist.all_reduce(mean)
                _check(f"{what} grad {name}", mean / world, ref_grads[i], rel)


def test_gather_and_ring_equal_the_full_batch_loss():
    """2 ranks: float32 and bfloat16, CLIP and SigLIP, gather and ring."""
    mp.spawn(_worker, args=(2, _free_port(), (torch.float32, torch.bfloat16)), nprocs=2, join=True)


def test_three_rank_ring_equals_the_full_batch_loss():
    """3 ranks: the next and previous ranks differ, and blocks make 3 hops."""
    mp.spawn(_worker, args=(3, _free_port(), (torch.float32,)), nprocs=3, join=True)

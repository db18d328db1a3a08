"""Contrastive losses, forward + backward: ecgkt.losses (never materialises the B x B logits) against
open_clip's ClipLoss / SigLipLoss (what a user would otherwise run; they take L2-normalised features, so
the peer's step includes F.normalize) and the matmul floor (the three B x B x D products any exact
implementation computes: the logits and the two gradient products), against the batch size B; D = 256.

Peak memory: one forward + backward in a fresh process per case; peak extra memory = peak RSS during the
step (VmHWM, reset just before it) - RSS just before it (inputs, libraries and a small warm-up resident).
The materialising peer is skipped, saying so, where its estimated peak exceeds this mode's limit. On a CPU
the curve stops where one step's time (O(B^2)) outgrows the run's time budget, not where memory runs out."""
import pytest
import torch
import torch.nn.functional as F

from _bench import LOSS_DIM, cuda_or_skip, measure, open_clip_losses, peak_rss_child, record

PEER_BYTES_PER_LOGIT = 24  # measured peak of the materialising CLIP loss (~21 B per logit at B = 16384)
KINDS = ["clip", "siglip"]
PROVIDERS = ["ecgkt", "open_clip", "matmul-floor"]


def inputs(batch: int, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ecg = torch.randn(batch, LOSS_DIM, generator=g)
    clin = ecg + torch.randn(batch, LOSS_DIM, generator=g)
    return (ecg.to(device).requires_grad_(), clin.to(device).requires_grad_(),
            torch.tensor(1 / 0.07, device=device, requires_grad=True),
            torch.tensor(-10.0, device=device, requires_grad=True))


def loss_step(kind: str, provider: str):
    """fn(ecg, clin, scale, bias) -> loss value after backward."""
    if provider.startswith("ecgkt"):
        from ecgkt import losses

        if kind == "clip":
            return lambda e, c, s, b: _backward(losses.clip_loss(e, c, s))
        return lambda e, c, s, b: _backward(losses.siglip_loss(e, c, s, b))
    clip_cls, siglip_cls = open_clip_losses()
    peer = clip_cls() if kind == "clip" else siglip_cls()
    if kind == "clip":
        return lambda e, c, s, b: _backward(peer(F.normalize(e, dim=-1), F.normalize(c, dim=-1), s))
    return lambda e, c, s, b: _backward(peer(F.normalize(e, dim=-1), F.normalize(c, dim=-1), s, b))


def _backward(loss):
    loss.backward()
    return float(loss)


def matmul_floor(e, c):
    a, b = e.detach(), c.detach()
    g = a @ b.T          # the logits
    return (g @ b, g.T @ a)  # the two gradient products


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", KINDS)
def test_loss_time(benchmark, sizes, kind, loss_batch, provider):
    batch = loss_batch
    args = inputs(batch)
    if provider == "matmul-floor":
        fn = lambda: matmul_floor(args[0], args[1])  # noqa: E731
    else:
        step = loss_step(kind, provider)
        if provider == "open_clip":  # the same value as ecgkt's: the peer computes the same loss
            ours = loss_step(kind, "ecgkt")(*inputs(256))
            theirs = step(*inputs(256))
            assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(ours)), (ours, theirs)

        def fn():
            for t in args:
                t.grad = None
            return step(*args)
    measure(benchmark, fn, kernel=f"{kind}_loss", provider=provider, x=batch, x_name="B", items=1, unit="s",
            rounds=sizes.rounds, budget_s=4 if sizes.quick else 12, note="forward + backward")


_MEMORY_CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
import bench_contrastive as b
kind, provider, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
step = b.loss_step(kind, provider)
step(*b.inputs(min(batch, 512)))  # warm-up: libraries, kernels, allocator
args = b.inputs(batch)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: earlier peaks (imports, warm-up) do not count
before = status("VmRSS")
t = time.perf_counter()
step(*args)
seconds = time.perf_counter() - t
print(json.dumps(dict(peak_extra=max(0, status("VmHWM") - before), seconds=seconds)))
"""


@pytest.mark.parametrize("provider", ["ecgkt", "open_clip"])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_memory(sizes, kind, memory_batch, provider):
    batch = memory_batch
    if provider == "open_clip":
        open_clip_losses()  # skips when the peer is missing
        estimate = PEER_BYTES_PER_LOGIT * batch * batch
        if estimate > sizes.loss_peer_max_gb * 1e9:
            pytest.skip(f"open_clip at B={batch}: estimated peak {estimate / 1e9:.1f} GB > this mode's limit "
                        f"{sizes.loss_peer_max_gb:g} GB (the B x B logits and their gradient)")
    if kind == "siglip" and (sizes.quick or batch > 4096):
        pytest.skip("SigLIP memory: full mode, up to B = 4096 (the same O(B) state as CLIP; saves run time)")
    r = peak_rss_child(_MEMORY_CHILD, kind, provider, str(batch), str(torch.get_num_threads()))
    record(f"{kind}_loss", provider, "MB", batch, [r["peak_extra"] / 2**20], x_name="B",
           note="peak extra RSS of one forward + backward, in a fresh process")


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["ecgkt-cuda", "open_clip-cuda"])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_gpu(benchmark, sizes, kind, provider):
    device = cuda_or_skip()
    batch = 16384
    args = inputs(batch, device)
    step = loss_step(kind, provider.replace("-cuda", ""))

    def fn():
        for t in args:
            t.grad = None
        step(*args)
        torch.cuda.synchronize()

    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    measure(benchmark, fn, kernel=f"{kind}_loss", provider=provider, x=batch, x_name="B", items=1, unit="s",
            rounds=sizes.rounds * 3, note="forward + backward")
    record(f"{kind}_loss", provider, "MB", batch, [(torch.cuda.max_memory_allocated() - base) / 2**20], x_name="B",
           note="peak extra CUDA memory")

"""The epoch loop every stage shares: per-rank sharded loading, preprocessing on the batch's device,
bf16 autocast on GPUs, DDP, warmup + cosine schedule, per-epoch atomic checkpoints and exact resume.

Resume is exact because every source of randomness is re-derived from (seed, epoch): the sampler's
shuffle (DistributedSampler.set_epoch) and torch's generator (dropout) are re-seeded at each epoch start."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..errors import ECGKTError
from . import checkpoint
from .distributed import DistEnv, mean_across


class InjectedFailure(RuntimeError):
    """Raised by `runtime.fail_after` (a testing aid for kill-and-resume)."""


class Preprocessed:
    """Runs ``ecgkt.preprocess`` (the model's settings) on the batch's device. Preprocessing is
    deterministic, so results may be cached in memory by study id and reused across epochs and stages."""

    def __init__(self, preprocessor: nn.Module, fs: float, cache: bool = True, crop_seconds: float | None = None):
        self.preprocessor, self.fs, self.cache = preprocessor, fs, cache
        out_fs = preprocessor.settings.get("target_fs") or fs
        self.crop = int(round(crop_seconds * out_fs)) if crop_seconds else None
        self._store: dict[int, torch.Tensor] = {}

    def train_view(self, batch: dict, device: torch.device) -> torch.Tensor:
        """Training input: a random window of `crop_seconds` per ECG (augmentation, and cheaper steps).
        The offset is a hash of (study id, the epoch's seed), so it does not depend on how the batch is split
        across ranks (DDP gives the same result as one process) and a resumed epoch repeats exactly."""
        x = self(batch, device)
        if self.crop is None or self.crop >= x.shape[-1]:
            return x
        h = (batch["study_id"].long() * 0x9E3779B1 + (torch.initial_seed() % 2**31) * 0x85EBCA77) & 0x7FFFFFFF
        h = h ^ (h >> 15)
        h = ((h * 0x2C1B3C6D) & 0x7FFFFFFF) ^ (h >> 12)
        starts = h % (x.shape[-1] - self.crop + 1)
        idx = (starts[:, None] + torch.arange(self.crop)[None]).to(x.device)
        return torch.gather(x, 2, idx[:, None, :].expand(-1, x.shape[1], -1))

    def __call__(self, batch: dict, device: torch.device) -> torch.Tensor:
        keys = [int(k) for k in batch["study_id"]]
        if self.cache and all(k in self._store for k in keys):
            return torch.stack([self._store[k] for k in keys]).to(device, non_blocking=True)
        x = self.preprocessor(batch["signal"].to(device), self.fs, gain=batch["gain"].to(device),
                              baseline=batch["baseline"].to(device)).float()
        if self.cache:
            for k, row in zip(keys, x.detach().cpu()):
                self._store[k] = row
        return x


def make_loader(dataset, batch_size: int, env: DistEnv, *, seed: int, shuffle: bool, num_workers: int = 0):
    """Training loaders shard by rank (DistributedSampler; the global batch is split evenly across ranks,
    so N ranks x batch/N sees exactly the samples one process with the whole batch would see).
    Evaluation loaders (shuffle=False) are not sharded: every rank sees the whole split."""
    if shuffle:
        if batch_size % env.world_size:
            raise ECGKTError(f"batch size {batch_size} is not divisible by the world size {env.world_size}")
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=seed, drop_last=True)
        per_rank = batch_size // env.world_size
        if len(dataset) < batch_size:
            raise ECGKTError(f"the training split has {len(dataset)} records, fewer than one batch ({batch_size})")
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True, num_workers=num_workers,
                          persistent_workers=num_workers > 0, pin_memory=env.device.type == "cuda")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=env.device.type == "cuda")


def param_groups(modules_lrs, weight_decay: float):
    """[(module, lr), ...] -> AdamW groups; no weight decay on biases and norm parameters."""
    groups = []
    for module, lr in modules_lrs:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [dict(params=decay, lr=lr, weight_decay=weight_decay),
                   dict(params=no_decay, lr=lr, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def autocast(env: DistEnv, amp: str):
    enabled = amp == "bf16" or (amp == "auto" and env.device.type == "cuda")
    return torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=enabled)


def fit(*, name: str, stage_dir, env: DistEnv, model: nn.Module, groups, loss_fn: Callable, loader,
        epochs: int, warmup_epochs: float, seed: int, amp: str = "auto", validate: Callable | None = None,
        select: str | None = None, minimize: bool = False, fail_after: str | None = None, log_every: int = 20,
        progress: bool = True, set_train_mode: Callable | None = None, ddp: bool = True) -> list[dict]:
    """Trains `model` for `epochs` epochs, resuming from `stage_dir/checkpoint.pt` when present.

    loss_fn(net, batch) -> scalar loss, where net is `model` (wrapped in DDP when distributed).
    validate(model) -> dict of metrics (every rank computes it on the whole validation split).
    select: metric name to maximise (minimise with minimize=True); the best epoch's weights are restored at
    the end.
    ddp=False: every rank trains the same replica on the same (unsharded) data, e.g. a head on precomputed
    embeddings, where splitting the work is not worth a collective per step.
    Returns the per-epoch history."""
    stage_dir = Path(stage_dir)
    ckpt_path = stage_dir / "checkpoint.pt"
    net = model
    if env.distributed and ddp:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optim = torch.optim.AdamW(groups)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ECGKTError(f"{name}: the training split is smaller than one batch")
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, warmup_cosine(epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)))
    history, best, start = [], None, 0
    if ckpt_path.is_file():
        state = checkpoint.load(ckpt_path)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        history, best, start = state["history"], state["best"], state["epoch"]
    for epoch in range(start, epochs):
        torch.manual_seed(seed * 100_003 + epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        model.train()
        if set_train_mode is not None:
            set_train_mode(model)
        t0, total, count = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"{name} {epoch + 1}/{epochs}", leave=False, disable=None if (progress and env.is_main) else True,
                   dynamic_ncols=True)
        for step, batch in enumerate(bar):
            with autocast(env, amp):
                loss = loss_fn(net, batch)
            if not torch.isfinite(loss):
                raise ECGKTError(f"{name}: the loss became {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                                 f"lower the learning rate")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            total += float(loss.detach())
            count += 1
            if step % max(1, log_every) == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
        record = dict(epoch=epoch + 1, train_loss=mean_across(env, total / count), seconds=time.time() - t0,
                      samples=count * loader.batch_size * env.world_size, lr=sched.get_last_lr()[0])
        if validate is not None:
            model.eval()
            record.update(validate(model))
        history.append(record)
        score = -record[select] if (select is not None and minimize) else record.get(select)
        if select is not None and (best is None or score > best["score"]):
            best = dict(score=score, epoch=epoch + 1,
                        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        if env.is_main:
            checkpoint.save(dict(model=model.state_dict(), optim=optim.state_dict(), sched=sched.state_dict(),
                                 epoch=epoch + 1, history=history, best=best), ckpt_path)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            tqdm.write(f"[{name}] " + " ".join(f"{k}={v}" for k, v in shown.items()))
        if env.distributed:
            torch.distributed.barrier()
        if fail_after == f"{name}@{epoch + 1}":
            raise InjectedFailure(f"injected failure after {name} epoch {epoch + 1} (runtime.fail_after)")
    if best is not None:
        model.load_state_dict(best["state"])
        for record in history:
            record["selected"] = record["epoch"] == best["epoch"]
    return history

"""The epoch loop every stage shares: per-rank sharded loading, preprocessing on the batch's device,
bf16 autocast on GPUs, DDP, warmup + cosine schedule, per-epoch atomic checkpoints and exact resume.

Resume is exact because every source of randomness is re-derived from (seed, epoch): the sampler's
shuffle (DistributedSampler.set_epoch) and torch's generator (dropout) are re-seeded at each epoch start."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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

    def train_view(self, batch: dict, device: torch.device, view: int = 0) -> torch.Tensor:
        """Training input: a random window of `crop_seconds` per ECG (augmentation, and cheaper steps).
        The offset is a hash of (study id, the epoch's seed), so it does not depend on how the batch is split
        across ranks (DDP gives the same result as one process) and a resumed epoch repeats exactly.
        `view` selects another independent window of the same ECG (two views for self-supervised training)."""
        x = self(batch, device)
        if self.crop is None or self.crop >= x.shape[-1]:
            return x
        h = (batch["study_id"].long() * 0x9E3779B1 + (torch.initial_seed() % 2**31) * 0x85EBCA77
             + view * 0x27D4EB2F) & 0x7FFFFFFF
        h = h ^ (h >> 15)
        h = ((h * 0x2C1B3C6D) & 0x7FFFFFFF) ^ (h >> 12)
        starts = h % (x.shape[-1] - self.crop + 1)
        idx = (starts[:, None] + torch.arange(self.crop)[None]).to(x.device)
        return torch.gather(x, 2, idx[:, None, :].expand(-1, x.shape[1], -1))

    def __call__(self, batch: dict, device: torch.device) -> torch.Tensor:
        if "preprocessed" in batch:  # done ahead by preprocess_ahead
            return batch["preprocessed"]
        keys = [int(k) for k in batch["study_id"]]
        if self.cache and all(k in self._store for k in keys):
            return torch.stack([self._store[k] for k in keys]).to(device, non_blocking=True)
        x = self.preprocessor(batch["signal"].to(device), self.fs, gain=batch["gain"].to(device),
                              baseline=batch["baseline"].to(device)).float()
        if self.cache:
            for k, row in zip(keys, x.detach().cpu()):
                self._store[k] = row
        return x


def preprocess_ahead(loader, prep: Preprocessed, device: torch.device):
    """Iterates `loader` with each batch's preprocessing (batch["preprocessed"], which `prep` then returns as
    is) done one batch ahead in a background thread. On the CPU the kernel runs without the GIL on the core
    that the training step (one torch thread by default) leaves idle. The order of batches, their contents
    and the draws from torch's generators are those of iterating `loader` directly."""
    if device.type != "cpu":  # GPU kernels are asynchronous already
        yield from loader
        return
    batches = iter(loader)  # here, not in the thread: creating the iterator draws from the global generator

    def load():
        batch = next(batches, None)
        if batch is not None:
            batch["preprocessed"] = prep(batch, device)
        return batch

    # the thread's own OpenMP thread count is the default (all cores): give it the training step's
    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
        pending = pool.submit(load)
        while (batch := pending.result()) is not None:
            pending = pool.submit(load)
            yield batch


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


class FixedStepSampler(torch.utils.data.Sampler):
    """`steps` batches per epoch from a dataset of any size (smaller than a batch too): the global index
    stream of epoch e is a chain of seeded permutations of the dataset; rank r takes its slice of every
    global batch, so N ranks see exactly what one process with the whole batch sees."""

    def __init__(self, n: int, steps: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.steps, self.batch, self.seed = int(n), int(steps), int(batch_size), int(seed)
        self.rank, self.world = rank, world_size
        self.per_rank = self.batch // self.world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps * self.per_rank

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        need = self.steps * self.batch
        stream = torch.cat([torch.randperm(self.n, generator=g) for _ in range(-(-need // self.n))])[:need]
        mine = stream.view(self.steps, self.world, self.per_rank)[:, self.rank].reshape(-1)
        return iter(mine.tolist())


def fixed_step_loader(dataset, batch_size: int, env: DistEnv, *, seed: int, steps: int, num_workers: int = 0):
    """A training loader of exactly `steps` global batches per epoch (the fine-tuning step budget)."""
    if batch_size % env.world_size:
        raise ECGKTError(f"batch size {batch_size} is not divisible by the world size {env.world_size}")
    if len(dataset) == 0:
        raise ECGKTError("the labelled training subset is empty")
    sampler = FixedStepSampler(len(dataset), steps, batch_size, seed, env.rank, env.world_size)
    return DataLoader(dataset, batch_size=batch_size // env.world_size, sampler=sampler, drop_last=True,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
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


@dataclasses.dataclass
class Task:
    """What one training stage optimises: the model, its parameter groups, the loss of a batch and the
    validation that picks the kept epoch.

    loss(net, batch) -> scalar, where net is `model` (wrapped in DDP when distributed);
    validate(model) -> dict of metrics (every rank computes it on the whole validation split);
    select: the metric to maximise (minimise with minimize=True); the best epoch's weights are restored;
    train_mode(model): called after model.train() each epoch (e.g. keep a frozen encoder in eval mode);
    ddp=False: every rank trains the same replica on the same data (a head on precomputed embeddings);
    prep: the Preprocessed that `loss` applies to every batch, run one batch ahead (preprocess_ahead)."""

    name: str
    model: nn.Module
    groups: list
    loss: Callable
    validate: Callable | None = None
    select: str | None = None
    minimize: bool = False
    train_mode: Callable | None = None
    ddp: bool = True
    prep: Preprocessed | None = None


@dataclasses.dataclass
class Schedule:
    """Where and how long a task trains: its checkpoint folder, epochs, warm-up, seed and run settings."""

    stage_dir: Path
    env: DistEnv
    epochs: int
    warmup_epochs: float = 0.0
    seed: int = 0
    amp: str = "auto"
    fail_after: str | None = None
    log_every: int = 20
    progress: bool = True


def _show_progress(progress: bool, env: DistEnv) -> bool:
    return bool(progress and env.is_main and sys.stderr.isatty())


def fit(task: Task, loader, sch: Schedule) -> list[dict]:
    """Trains `task.model` for `sch.epochs` epochs, resuming from `stage_dir/checkpoint.pt` when present.
    Returns the per-epoch history (the selected epoch marked)."""
    stage_dir = Path(sch.stage_dir)
    ckpt_path = stage_dir / "checkpoint.pt"
    model, env, name = task.model, sch.env, task.name
    net = model
    if env.distributed and task.ddp:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optim = torch.optim.AdamW(task.groups)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ECGKTError(f"{name}: the training split is smaller than one batch")
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, warmup_cosine(sch.epochs * steps_per_epoch, int(sch.warmup_epochs * steps_per_epoch)))
    history, best, start = [], None, 0
    if ckpt_path.is_file():
        state = checkpoint.load(ckpt_path)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        history, best, start = state["history"], state["best"], state["epoch"]
    for epoch in range(start, sch.epochs):
        torch.manual_seed(sch.seed * 100_003 + epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        if task.train_mode is not None:
            task.train_mode(model)
        t0, count = time.time(), 0
        total = torch.zeros((), dtype=torch.float64, device=env.device)  # on device: no sync per step
        batches = loader if task.prep is None else preprocess_ahead(loader, task.prep, env.device)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"{name} {epoch + 1}/{sch.epochs}", leave=False,
                   disable=not _show_progress(sch.progress, env), dynamic_ncols=True)
        for step, batch in enumerate(bar):
            with autocast(env, sch.amp):
                loss = task.loss(net, batch)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            total += loss.detach().double()
            count += 1
            if step % max(1, sch.log_every) == 0:  # the finiteness check syncs: only every log_every steps
                _check_finite(total, name, epoch, step)
                bar.set_postfix(loss=f"{float(total) / count:.4f}")
        _check_finite(total, name, epoch, count - 1)
        record = dict(epoch=epoch + 1, train_loss=mean_across(env, float(total) / count), seconds=time.time() - t0,
                      samples=count * loader.batch_size * env.world_size, lr=sched.get_last_lr()[0])
        if task.validate is not None:
            model.eval()
            record.update(task.validate(model))
        history.append(record)
        score = -record[task.select] if (task.select is not None and task.minimize) else record.get(task.select)
        if task.select is not None and (best is None or score > best["score"]):
            best = dict(score=score, epoch=epoch + 1,
                        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        if env.is_main:
            checkpoint.save(dict(model=model.state_dict(), optim=optim.state_dict(), sched=sched.state_dict(),
                                 epoch=epoch + 1, history=history, best=best), ckpt_path)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            tqdm.write(f"[{name}] " + " ".join(f"{k}={v}" for k, v in shown.items()))
        if env.distributed:
            torch.distributed.barrier()
        _inject_failure(sch, f"{name}@{epoch + 1}")
    if best is not None:
        model.load_state_dict(best["state"])
        for record in history:
            record["selected"] = record["epoch"] == best["epoch"]
    return history


def _inject_failure(sch: Schedule, where: str) -> None:
    """``runtime.fail_after``: "NAME@EPOCH" raises InjectedFailure after that epoch's checkpoint;
    "NAME@EPOCH:kill" SIGKILLs the last rank there (the others go on into the next collective and hang
    until torchrun tears them down: a worker lost in the middle of a distributed run)."""
    if sch.fail_after == where:
        raise InjectedFailure(f"injected failure after {where.replace('@', ' epoch ')} (runtime.fail_after)")
    if sch.fail_after == f"{where}:kill" and sch.env.rank == sch.env.world_size - 1:
        import signal

        print(f"ecgkt: runtime.fail_after={sch.fail_after}: killing rank {sch.env.rank}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def _check_finite(total, name, epoch, step):
    if not torch.isfinite(total):
        raise ECGKTError(f"{name}: the loss became {float(total)} by epoch {epoch + 1} step {step + 1}; "
                         f"lower the learning rate")

"""DistributedDataParallel plumbing for torchrun: process group, device, sharding, rank-0 helpers.

Launch any stage with `torchrun --nproc_per_node=N -m ecgkt.cli pipeline ...` (or `ecgkt pretrain ...`);
without torchrun everything runs as a single process."""
from __future__ import annotations

import dataclasses
import os
import sys

import torch
import torch.distributed as dist


@dataclasses.dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if pref == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(pref)


def init(device_pref: str = "auto") -> DistEnv:
    """Joins the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        _init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def _init_process_group(backend: str) -> None:
    """init_process_group from torchrun's environment, safe across torchrun --max-restarts restarts.

    By default the workers of every restart attempt share one TCPStore (the rendezvous agent's), so a new
    attempt can meet the previous attempt's keys; gloo then dials the dead ranks' addresses and waits out its
    timeout (30 min) in connectFullMesh (4 of 8 one-node restarts here, 3 of 4 two-node ones). On one node a
    key prefix per attempt keeps them apart: one agent starts every rank with the same restart count. On
    several nodes the agents count restarts separately (a healthy node restarts without counting), so only
    torch's opt-out, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment, gives each attempt a
    fresh store; without it rank 0 says so once."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        if (attempt is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and os.environ.get("RANK") == "0"):
            print("ecgkt: note: torchrun --max-restarts on several nodes can hang after a restart unless "
                  "torchrun runs with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/training.md)", file=sys.stderr,
                  flush=True)
        dist.init_process_group(backend)
        return
    store, rank, world = next(dist.rendezvous("env://"))
    dist.init_process_group(backend, store=dist.PrefixStore(f"ecgkt/attempt_{attempt}", store), rank=rank,
                            world_size=world)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean_across(env: DistEnv, value: float) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / env.world_size)

"""Triton kernels, shipped inside the wheel as ``ecgkt.kernels`` (one module per op). triton is optional."""
import contextlib

import torch


def on_device(t: torch.Tensor):
    """Context for a Triton launch on ``t``: its GPU, not the current one (a no-op for CPU tensors,
    which only the interpreter runs)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()

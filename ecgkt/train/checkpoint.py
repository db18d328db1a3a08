"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename over the target,
so a killed run leaves either the previous checkpoint or the new one, never a torn file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def atomic_write_bytes(path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(obj, path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def load(path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=False)


def save_json(obj, path) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2, default=_jsonable).encode()))


def load_json(path):
    return json.loads(Path(path).read_text())


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

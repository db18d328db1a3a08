"""Checkpoints of training runs: written atomically (``ecgkt.io``: a killed run leaves the previous file or the
new one, never a torn one) and read with ``torch.load(weights_only=True)``, which rebuilds tensors, dicts,
lists, tuples, numbers and strings only and refuses anything else, so a planted file in a run folder cannot
run code. ``save`` turns NumPy values into those plain types first, so everything saved can be read back."""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..errors import ECGKTError
from ..io import atomic_write, atomic_write_json, read_json


def plain(obj):
    """``obj`` as the types weights_only loading accepts: NumPy scalars -> Python numbers, arrays -> tensors,
    paths -> strings; containers kept."""
    if isinstance(obj, OrderedDict):  # state_dict()s
        return OrderedDict((k, plain(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(plain(obj), f))


def load(path, map_location="cpu"):
    """A checkpoint written by ``save``; anything else (a damaged file, a pickle that would run code) is an
    ECGKTError naming the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ECGKTError(f"{path}: checkpoint is missing") from None
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL (\S+)|[Uu]nsupported global: (\S+)", str(e))
        if code:
            raise ECGKTError(f"{path}: refused to load: the file asks to run code ({code.group(1) or code.group(2)}), "
                             f"which an ecgkt checkpoint never does; delete it to retrain this stage") from None
        raise ECGKTError(f"{path}: damaged checkpoint (not a torch checkpoint of plain values); delete it to "
                         f"retrain this stage") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        first = " ".join(str(e).split())[:160] or type(e).__name__
        raise ECGKTError(f"{path}: damaged checkpoint ({first}); delete it to retrain this stage") from None


def save_json(obj, path) -> None:
    """Strict JSON (NaN -> null), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, indent=2)


def load_json(path):
    return read_json(path)

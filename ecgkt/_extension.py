"""Loads the compiled extension ``ecgkt._C`` and explains why when it cannot.

``import ecgkt`` never needs a compiler: when the extension is missing, or was built
against another torch, ecgkt warns once and the ops fall back to their pure-torch
reference implementations (slower, same results).
"""
from __future__ import annotations

import json
import os
import warnings

import torch

REBUILD_HINT = "rebuild with: pip install --no-build-isolation --force-reinstall --no-deps <ecgkt source>"

available = False  # True when torch.ops.ecgkt.* have compiled kernels
reason = ""  # why the extension is not in use (empty when it is)
build_info: dict = {}


def _load() -> None:
    global available, reason, build_info
    if os.environ.get("ECGKT_DISABLE_EXTENSION", "") == "1":
        reason = "disabled by ECGKT_DISABLE_EXTENSION=1"
        return
    info_path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    try:
        with open(info_path) as f:
            build_info = json.load(f)
    except OSError:
        build_info = {}
    reason = mismatch(build_info, torch.__version__, torch.version.cuda)
    if reason:
        return
    try:
        from . import _C  # noqa: F401  (registers torch.ops.ecgkt.*)
    except ImportError as e:
        if "No module named" in str(e):
            reason = f"the compiled extension ecgkt._C is not installed; {REBUILD_HINT}"
        else:
            reason = f"ecgkt._C failed to load ({e}); it was probably built for another torch; {REBUILD_HINT}"
        return
    available = True
    reason = ""


def mismatch(info: dict, torch_version: str, cuda_version: str | None) -> str:
    """Why an extension built as ``info`` (ecgkt/_build_info.json) cannot load here ('' when it can)."""
    built = info.get("torch")
    if built is None or built == torch_version:
        return ""
    return (
        f"ecgkt._C was built for torch {built} (CUDA {info.get('cuda')}) but torch {torch_version} "
        f"(CUDA {cuda_version}) is running; {REBUILD_HINT}"
    )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``ecgkt::<op>`` has a compiled kernel for ``dispatch_key`` ("CPU", "CUDA")."""
    if not available:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"ecgkt::{op}", dispatch_key)
    except RuntimeError:  # no schema for that op in this build
        return False


_warned = False


def warn_fallback(op: str) -> None:
    """Warn once per process that ``op`` runs on the pure-torch reference."""
    global _warned
    if not _warned:
        warnings.warn(f"ecgkt: using the pure-torch reference for {op}: {reason}", RuntimeWarning, stacklevel=3)
        _warned = True


_load()
# whatever the compiled library lacks is defined from Python; the ops' modules register the references
from .ops import schemas as _schemas  # noqa: E402

_schemas.define_missing()

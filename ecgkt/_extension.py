"""Loads the compiled extension ``ecgkt._C`` and explains why when it cannot.

``import ecgkt`` never needs a compiler: when the extension is missing, or cannot serve the
running torch (older than the stable-ABI version it was built for, or another CUDA major
version), ecgkt warns once and the ops fall back to their pure-torch reference
implementations (slower, same results).
"""
from __future__ import annotations

import json
import os
import warnings

import torch
from torch.torch_version import TorchVersion

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
    """Why an extension built as ``info`` (ecgkt/_build_info.json) cannot load here ('' when it can).

    A stable-ABI build (``min_torch`` in ``info``) loads into every torch from ``min_torch`` on; a CUDA
    build also needs a CUDA build of torch with the same CUDA major version (for libcudart)."""
    built = info.get("torch")
    if built is None:
        return ""
    minimum = info.get("min_torch")
    if minimum is None:  # a build from before the stable ABI: only the exact torch it was built against
        if built == torch_version:
            return ""
        return (
            f"ecgkt._C was built for torch {built} (CUDA {info.get('cuda')}) but torch {torch_version} "
            f"(CUDA {cuda_version}) is running; {REBUILD_HINT}"
        )
    if TorchVersion(torch_version) < minimum:
        return (
            f"ecgkt._C needs torch >= {minimum} (it uses that version of the stable ABI) but torch "
            f"{torch_version} is running; upgrade torch, or {REBUILD_HINT}"
        )
    built_cuda = info.get("cuda")
    if info.get("with_cuda") and built_cuda and (cuda_version or "").split(".")[0] != built_cuda.split(".")[0]:
        return (
            f"ecgkt._C was built with CUDA {built_cuda} kernels but torch {torch_version} has CUDA "
            f"{cuda_version}; install a torch built for CUDA {built_cuda.split('.')[0]}, or {REBUILD_HINT}"
        )
    return ""


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

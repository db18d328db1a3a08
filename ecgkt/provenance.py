"""Where a result came from: package versions, git commit, hardware, Python, date and command.

``provenance()`` is stored in a saved model's config (``ECGKTModel.save_pretrained``) and in a run's
results.json, so a number can be traced to the code and machine that produced it. Everything is
JSON-ready; what cannot be found (no git checkout, no GPU) is null.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("ecgkt", "torch", "numpy", "scipy", "pandas", "pyarrow", "wfdb", "scikit-learn", "safetensors",
            "matplotlib", "triton", "simple-icd-10-cm")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path=None) -> dict | None:
    """{"commit": sha, "dirty": bool} of the checkout holding ecgkt, or None outside a git checkout."""
    root = Path(path or Path(__file__).resolve().parent.parent)
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def hardware() -> dict:
    """CPU, core count, memory and the GPUs torch sees (when torch is already imported or importable)."""
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpus = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {"machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(), "memory_gib": mem_gib,
            "gpus": gpus}


def provenance(command=None) -> dict:
    """Package versions, git commit, hardware, Python, torch build, date (UTC) and ``command`` (default:
    this process's command line)."""
    if command is None:
        command = [Path(sys.argv[0]).name] + sys.argv[1:] if sys.argv and sys.argv[0] else None
    torch_build = None
    try:
        import torch

        torch_build = {"version": torch.__version__, "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    except ImportError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command if isinstance(command, (str, type(None))) else " ".join(map(str, command)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": torch_build,
        "git": git_commit(),
        "hardware": hardware(),
    }

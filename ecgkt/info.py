"""``ecgkt info`` (also ``python -m ecgkt.info``): versions, what ``ecgkt._C`` was compiled with, and which
backend each op runs on this machine: the first thing to look at when something is slow.

Only the standard library is imported at module level (``ecgkt --help`` must answer at once); torch and
the ops are loaded by :func:`collect`. Triton is looked up, not imported (importing it takes seconds).
"""
from __future__ import annotations

import os
import sys

OPS = ("preprocess", "clip_block_lse", "clip_block_lse_backward", "siglip_block", "siglip_block_backward")
ENV_VARS = ("ECGKT_DISABLE_EXTENSION", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def _triton() -> dict:
    import importlib.util

    from .provenance import _version

    found = importlib.util.find_spec("triton") is not None
    return {"installed": found, "version": _version("triton") if found else None}


def _extension_file() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("ecgkt._C")
    return spec.origin if spec is not None else None


def _cpu_backend(op: str, ext) -> str:
    if ext.has_kernel(op, "CPU"):
        return "compiled C++ (ecgkt._C)"
    return f"pure-torch reference ({ext.reason or 'ecgkt._C has no CPU kernel for it'})"


def _cuda_backend(op: str, ext, triton: dict, gpus: list) -> str:
    from .ops import schemas

    compiled = ext.has_kernel(op, "CUDA") and op not in schemas.TRITON_ON_CUDA
    if compiled:
        what = "compiled CUDA (ecgkt._C)"
    elif triton["installed"]:
        what = "Triton (ecgkt.kernels." + ("preprocess" if op == "preprocess" else "contrastive") + ")"
        if op != "preprocess":
            what += "; float64 inputs use the materialised O(B^2) reference"
    elif op == "preprocess":
        what = "none: CUDA tensors need ecgkt._C built with CUDA or the triton package"
    else:
        what = "materialised O(B^2) reference (triton is not installed)"
    return what if gpus else f"{what} [no CUDA device here]"


def collect() -> dict:
    """Everything ``ecgkt info`` shows, JSON-ready."""
    from . import load

    load()
    import torch

    from . import _extension as ext
    from .provenance import PACKAGES, _version, git_commit, hardware

    triton = _triton()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"sm_{p.major}{p.minor}",
                         "memory_gib": round(p.total_memory / 2 ** 30, 1)})
    hw = hardware()
    hw.pop("gpus", None)
    return {
        "ecgkt": _version("ecgkt"),
        "python": f"{sys.version.split()[0]} ({sys.executable})",
        "git": git_commit(),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available()},
        "packages": {name: _version(name) for name in PACKAGES if name not in ("ecgkt", "torch", "triton")},
        "extension": {
            "loaded": ext.available,
            "file": _extension_file(),
            "built_against": ext.build_info or None,
            "reason_not_loaded": ext.reason or None,
        },
        "triton": triton,
        "hardware": {**hw, "gpus": gpus},
        "backends": {op: {"cpu": _cpu_backend(op, ext), "cuda": _cuda_backend(op, ext, triton, gpus)}
                     for op in OPS},
        "environment": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }


def format_text(info: dict) -> str:
    ext = info["extension"]
    built = ext["built_against"] or {}
    lines = [
        f"ecgkt {info['ecgkt']}" + (f"  (git {info['git']['commit'][:10]}{', modified' if info['git']['dirty'] else ''})"
                                    if info["git"] else ""),
        f"python {info['python']}",
        f"torch {info['torch']['version']}  CUDA build: {info['torch']['cuda'] or 'none'}  "
        f"threads: {info['torch']['threads']}",
        f"triton {info['triton']['version'] or 'not installed'}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v),
        "",
        "compiled extension ecgkt._C: " + ("loaded" if ext["loaded"] else "NOT in use"),
    ]
    if ext["file"]:
        lines.append(f"  file: {ext['file']}")
    if built:
        lines.append(f"  built against torch {built.get('torch')}, CUDA kernels: "
                     f"{'yes (CUDA ' + str(built.get('cuda')) + ')' if built.get('with_cuda') else 'no'}")
        if built.get("min_torch"):
            lines.append(f"  stable ABI: loads into torch >= {built['min_torch']} "
                         f"(this torch: {info['torch']['version']})")
    if ext["reason_not_loaded"]:
        lines.append(f"  why not: {ext['reason_not_loaded']}")
    hw = info["hardware"]
    lines += ["", f"machine: {hw.get('cpu')}, {hw.get('cpu_count')} cores, {hw.get('memory_gib')} GiB"]
    for g in hw["gpus"]:
        lines.append(f"  GPU {g['index']}: {g['name']} ({g['capability']}, {g['memory_gib']} GiB)")
    if not hw["gpus"]:
        lines.append("  no CUDA device")
    lines += ["", "backend of each op (torch.ops.ecgkt.*):"]
    width = max(map(len, info["backends"]))
    for op, where in info["backends"].items():
        lines.append(f"  {op:<{width}}  CPU:  {where['cpu']}")
        lines.append(f"  {'':<{width}}  CUDA: {where['cuda']}")
    if info["environment"]:
        lines += ["", "environment: " + ", ".join(f"{k}={v}" for k, v in info["environment"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    from ecgkt.cli import main

    sys.exit(main(["info", *sys.argv[1:]]))

"""``ecgkt info``: what ecgkt.info collects, as text or strict JSON."""
from __future__ import annotations

import json


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="versions, the compiled extension and the backend of each op on this machine",
        description=("Print the versions of ecgkt, Python, torch, triton and the other packages; whether the "
                     "compiled extension ecgkt._C is in use (and why not); the machine and its GPUs; and which "
                     "backend each torch.ops.ecgkt op runs on CPU and CUDA tensors. The first thing to run "
                     "when something is slow or a warning mentions the pure-torch reference."),
    )
    p.add_argument("--json", action="store_true", help="print strict JSON instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..info import collect, format_text

    info = collect()
    print(json.dumps(info, indent=1, allow_nan=False) if args.json else format_text(info))
    return 0

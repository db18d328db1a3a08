"""The ``ecgkt`` command line: this package, one module per command group (listed in COMMANDS), each
registering its subcommands through ``add_cli(subparsers)``.

``--help`` must answer at once: this module and every module in COMMANDS import only the standard
library (and ecgkt.errors) at import time; torch, numpy and pandas are imported by the command that
runs, after the arguments are parsed (``ecgkt.load()``)."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import ECGKTError

# one module per command group, each with add_cli(subparsers) setting `func` on its parsers
COMMANDS = ["synth", "prepare", "train", "predict", "preprocess", "info"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecgkt",
        description=(
            "ecgkt: move knowledge from clinical data (labs, vitals, biometrics) into an ECG-only model.\n"
            "Typical run: `ecgkt pipeline --out runs/demo` generates the built-in synthetic dataset,\n"
            "trains the three stages, both baselines and the control, and prints the results table."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ecgkt {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_cli(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of a command (expected conditions: a dropped lab test, the reference-kernel fallback) as
    one line each, without the source line Python shows by default."""
    text = str(message)
    text = text[len("ecgkt: "):] if text.startswith("ecgkt: ") else text
    print(f"ecgkt: warning: {text}", file=file or sys.stderr, flush=True)


def _check_package() -> None:
    """Python started in the folder that holds a checkout named ``ecgkt`` imports that folder as an empty
    namespace package (with a finder-based editable install); say so instead of failing obscurely later."""
    package = sys.modules.get(__name__.rpartition(".")[0] or "ecgkt")
    if package is not None and getattr(package, "__file__", None) is None:
        where = ", ".join(getattr(package, "__path__", []) or ["?"])
        raise SystemExit(f"ecgkt: error: `import ecgkt` found the folder {where}, not the package: Python was "
                         f"started in the folder that holds a checkout named ecgkt; run it from another folder")


def main(argv: list[str] | None = None) -> int:
    _check_package()
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from .. import load

    load()  # torch and the ops: deferred until a command runs, so that --help answers at once
    try:
        rc = args.func(args)
    except ECGKTError as e:
        print(f"ecgkt: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file system problem (disk full, permissions, a file where a folder belongs)
        from ..io import describe_os_error

        print(f"ecgkt: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecgkt: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)

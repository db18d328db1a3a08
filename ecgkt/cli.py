"""The ``ecgkt`` command line. Each subcommand lives beside the code it drives and
registers itself through an ``add_cli(subparsers)`` function listed in COMMANDS."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ECGKTError

# module providing add_cli(subparsers); each add_cli sets `func` on its parser.
COMMANDS = [
    "ecgkt.data.synth.cli",
    "ecgkt.data.prepare_cli",
    "ecgkt.train.cli",
    "ecgkt.predict.cli",
    "ecgkt.ops.preprocess_cli",
]


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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # that part of ecgkt is not built yet
            raise
        module.add_cli(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except ECGKTError as e:
        print(f"ecgkt: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file system problem (disk full, permissions, a file where a folder belongs)
        from .io import describe_os_error

        print(f"ecgkt: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecgkt: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

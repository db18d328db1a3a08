"""ecgkt: transferring clinical knowledge into ECG representations.

Public API:
  ecgkt.preprocess(signal, fs, ...)   fused ECG preprocessing (C++/CUDA/Triton kernels)
  ecgkt.losses                        fused contrastive losses (CLIP / SigLIP), distributed modes
  ecgkt.data                          MIMIC-IV(-ECG) loaders, WFDB/DICOM readers, signal store, synthetic data
  ecgkt.models                        ECG and tabular encoders, heads, ECGKTModel

``import ecgkt`` loads torch and registers the ``torch.ops.ecgkt.*`` ops (needed to load exported models).
The ``ecgkt`` command line defers that until a command runs, so ``ecgkt --help`` answers at once.
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"
__all__ = ["__version__"]

_API = {"preprocess": ".ops.preprocess", "PreprocessResult": ".ops.preprocess", "ECGKTModel": ".models"}
_SUBMODULES = ("losses", "data", "models", "ops", "_extension")


def load():
    """Import torch, register the ops and bind the public API (what ``import ecgkt`` does outside the CLI)."""
    import importlib

    from . import _extension  # noqa: F401  (torch.ops.ecgkt.*: compiled, or the reference fallbacks)

    for name, module in _API.items():
        globals()[name] = getattr(importlib.import_module(module, __name__), name)
    from . import data, losses  # noqa: F401


def __getattr__(name):
    if name in _API:
        load()
        return globals()[name]
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'ecgkt' has no attribute {name!r}")


def _started_as_cli() -> bool:
    """True in the `ecgkt` console script and `python -m ecgkt.cli` (torchrun included)."""
    argv = list(getattr(_sys, "orig_argv", None) or [])
    script = _os.path.basename(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    return script == "ecgkt" or any(a == "-m" and b == "ecgkt.cli" for a, b in zip(argv, argv[1:]))


if not _started_as_cli():
    load()

"""Export the ECG-only model for deployment: TorchScript, ``torch.export`` or ONNX.

Two shapes of exported model:
- **with preprocessing** (TorchScript ``.pt`` and ``torch.export`` ``.pt2``): the input is the raw ECG as a
  recorder gives it, ``signal`` [B, 12, T] int16 ADC units in the model's lead order, with ``gain``
  [B, 12] (adu/mV) and ``baseline`` [B, 12] (adu), at the sampling rate chosen at export (``fs``);
  the graph runs the model's own preprocessing module at that rate (``ECGPreprocessor.at_rate``:
  ``torch.ops.ecgkt.preprocess`` with the filter and resampling coefficients as buffers) and then the
  network. Loading it needs the
  ecgkt op library registered: ``import ecgkt`` in Python, or ``torch::dynamic_library`` /
  ``dlopen`` of ``libecgkt_ops.so`` (the CMake build) in C++.
- **network only** (ONNX ``.onnx``, or ``--network-only``): the input is the preprocessed ECG
  [B, 12, T_model] float32 at the model's rate; run ``ecgkt.preprocess`` (or an equivalent) before it.
  ONNX has no operator for the fused preprocessing, so ONNX files are always network-only.

Every export returns probabilities (sigmoid applied): ``(diagnoses [B, D], labs [B, L])``, and writes a
sidecar ``<file>.json`` with the label names, lead order, input rate and length, and preprocessing.
The batch dimension is dynamic; the window length is fixed at export (``seconds`` x ``fs``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .. import _extension
from ..errors import ECGKTError
from ..io import atomic_write_json

FORMATS = ("torchscript", "export", "onnx")
SUFFIX_FORMAT = {".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".pt2": "export",
                 ".onnx": "onnx"}


class NetworkProbabilities(nn.Module):
    """The network of an ECGKTModel on preprocessed input: [B, leads, T] -> (dx probs, lab probs)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder
        self.dx_head = model.dx_head
        self.lab_head = model.lab_head

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        return torch.sigmoid(self.dx_head(h)), torch.sigmoid(self.lab_head(h))


class PreprocessedModel(nn.Module):
    """Raw int16 ECG windows at ``fs`` -> the model's preprocessing (the fused op) -> probabilities."""

    def __init__(self, model, fs: float):
        super().__init__()
        self.preprocess = model.preprocessor.at_rate(fs)  # the model's own preprocessing, at the input rate
        self.network = NetworkProbabilities(model)

    def forward(self, signal: torch.Tensor, gain: torch.Tensor, baseline: torch.Tensor):
        out, _ = self.preprocess(signal, gain, baseline)
        return self.network(out)


def format_for(path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise ECGKTError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_FORMAT:
        raise ECGKTError(f"--out {path}: cannot tell the format from {suffix or 'no suffix'!r}; use .pt "
                         "(TorchScript), .pt2 (torch.export), .onnx, or pass --format")
    return SUFFIX_FORMAT[suffix]


def example_inputs(model, fs: float, seconds: float, batch: int = 2, network_only: bool = False, seed: int = 0):
    """Inputs of the exported model's shape: realistic-scale random ECG (int16 at 200 adu/mV)."""
    gen = torch.Generator().manual_seed(seed)
    leads = len(model.leads)
    if network_only:
        t = int(round(seconds * model.preprocessor.settings["target_fs"]))
        return (torch.randn(batch, leads, t, generator=gen),)
    t = int(round(seconds * fs))
    signal = (torch.randn(batch, leads, t, generator=gen) * 150).round().to(torch.int16)
    gain = torch.full((batch, leads), 200.0)
    baseline = torch.zeros(batch, leads)
    return signal, gain, baseline


def exportable(model, fs: float, network_only: bool) -> nn.Module:
    if network_only:
        return NetworkProbabilities(model).eval()
    if not _extension.has_kernel("preprocess", "CPU"):
        raise ECGKTError("exporting with preprocessing needs the compiled ecgkt preprocess kernel "
                         f"({_extension.reason or 'not built in this install'}); rebuild ecgkt "
                         "(pip install --no-build-isolation -e .) or export with --network-only")
    return PreprocessedModel(model, fs).eval()


def export_model(model, out, fmt: str | None = None, fs: float | None = None, seconds: float = 10.0,
                 network_only: bool = False) -> Path:
    """Export ``model`` to ``out``; returns the path. See the module docstring for the formats."""
    out = Path(out)
    fmt = format_for(out, fmt)
    network_only = network_only or fmt == "onnx"
    settings = model.preprocessor.settings
    fs = float(fs or settings["target_fs"])
    if seconds <= 0 or fs <= 0:
        raise ECGKTError(f"--seconds and --fs must be positive (got {seconds}, {fs})")
    model = model.cpu().eval()
    module = exportable(model, fs, network_only)
    inputs = example_inputs(model, fs, seconds, network_only=network_only)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # same suffix: torch.export.save wants .pt2
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                torch.jit.save(torch.jit.script(module), str(tmp))
            elif fmt == "export":
                batch = torch.export.Dim("batch", min=1, max=65536)
                shapes = tuple({0: batch} for _ in inputs)
                program = torch.export.export(module, inputs, dynamic_shapes=shapes)
                torch.export.save(program, str(tmp))
            else:
                _export_onnx(module, inputs, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # a failed export leaves no partial file behind
    meta = dict(
        format=fmt, with_preprocessing=not network_only, leads=list(model.leads),
        inputs=(["signal [B, leads, T] float32, preprocessed"] if network_only else
                ["signal [B, leads, T] int16 ADC", "gain [B, leads] adu/mV", "baseline [B, leads] adu"]),
        input_fs=float(settings["target_fs"]) if network_only else fs,
        input_samples=int(inputs[0].shape[-1]),
        outputs=["diagnosis probabilities [B, D]", "lab-abnormality probabilities [B, L]"],
        dx_names=list(model.dx_names), lab_label_names=list(model.lab_label_names), preprocessing=dict(settings),
    )
    atomic_write_json(Path(str(out) + ".json"), meta)
    return out


def _export_onnx(module, inputs, path: Path) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ECGKTError("ONNX export needs the onnx package: pip install onnx (and onnxruntime to run the file)") from None
    torch.onnx.export(module, inputs, str(path), input_names=["signal"], output_names=["diagnoses", "labs"],
                      dynamic_axes={"signal": {0: "batch"}, "diagnoses": {0: "batch"}, "labs": {0: "batch"}},
                      dynamo=False)


def load_exported(path):
    """Load an exported model as a callable (ONNX files through onnxruntime, returning numpy arrays)."""
    path = Path(path)
    fmt = format_for(path)
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    if fmt == "export":
        return torch.export.load(str(path)).module()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"signal": x.numpy() if torch.is_tensor(x) else x})

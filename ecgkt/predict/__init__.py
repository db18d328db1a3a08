"""Inference with explanations: `ecgkt predict`, per-record reports, export (see docs/predict.md).

  Predictor(model, device, batch_size)   batched, windowed scoring of records -> RecordResult
  expand_inputs([...])                   files / folders / record lists / MIMIC roots -> Sources
  explain(output, probability)           a lab output's ECG association from lab_associations.csv
  export_model(model, path)              TorchScript / torch.export / ONNX
Reports (ecgkt.predict.report) import matplotlib, so they are not imported here.
"""
import importlib

# Imported on first use, so that `ecgkt predict --help` does not load torch.
_LAZY = {
    **dict.fromkeys(("LabFinding", "explain", "explain_all"), ".explanations"),
    **dict.fromkeys(("export_model", "load_exported"), ".export"),
    **dict.fromkeys(("Predictor", "RecordResult"), ".inference"),
    **dict.fromkeys(("Failure", "Source", "expand_inputs"), ".inputs"),
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ecgkt.predict' has no attribute {name!r}")


__all__ = ["Predictor", "RecordResult", "expand_inputs", "Source", "Failure", "explain", "explain_all",
           "LabFinding", "export_model", "load_exported"]

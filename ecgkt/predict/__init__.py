"""Inference with explanations: `ecgkt predict`, per-record reports, export (see docs/predict.md).

  Predictor(model, device, batch_size)   batched, windowed scoring of records -> RecordResult
  expand_inputs([...])                   files / folders / record lists / MIMIC roots -> Sources
  explain(output, probability)           a lab output's ECG association from lab_associations.csv
  export_model(model, path)              TorchScript / torch.export / ONNX
Reports (ecgkt.predict.report) import matplotlib, so they are not imported here.
"""
from .explanations import LabFinding, explain, explain_all
from .export import export_model, load_exported
from .inference import Predictor, RecordResult
from .inputs import Failure, Source, expand_inputs

__all__ = ["Predictor", "RecordResult", "expand_inputs", "Source", "Failure", "explain", "explain_all",
           "LabFinding", "export_model", "load_exported"]

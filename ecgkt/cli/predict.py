"""`ecgkt predict` and `ecgkt export`."""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from ..errors import ECGKTError
from ..io import describe_os_error, dumps_json, temp_path
from ..predict.display import Display

PREDICT_HELP = """\
Score ECG records with a saved ECG-only model: diagnosis probabilities by name ("I48.9 Unspecified
atrial fibrillation and atrial flutter"), and the predicted lab abnormalities that explain them ("High
potassium predicted (probability 0.81, validation AUROC 0.93). Expected on the ECG: peaked, narrow T
waves"). A lab explains only when its ECG association is documented and the model predicted it well on
its own validation set (the AUROC threshold saved with the model).

INPUT may be WFDB records (name.hea, name.dat, name.mat or the bare record path; any sampling rate,
gain, format 16/212/.mat, lead order and name case, extra signals ignored), 12-lead DICOM waveform
files, .npy arrays in mV (with --fs and --leads), folders (searched recursively; .npy files in them only
with --fs and --leads), MIMIC-IV-ECG roots
(read through record_list.csv) and record lists (.txt: one path per line; .csv: a 'path' column).

The model's saved preprocessing is applied: leads are mapped by name, samples converted with each
lead's gain, resampled to the model's rate and filtered; records longer than the model's window are
cut into windows whose probabilities are averaged.

A record that cannot be used (fewer than the 12 standard leads, truncated signal file, malformed
header, unreadable file) is reported in one line naming the file; the other records are still
predicted and the failures are listed at the end. JSON output is strict (null, never NaN). Exit status: 0 all
predicted, 1 some failed, 2 none predicted or a bad argument, model or output path (one line naming
the file and the problem, on standard error).
"""

EXPORT_HELP = """\
Export a saved ECG-only model for deployment. The format follows --out's suffix (or --format):
  .pt   TorchScript, raw int16 ECG + gain + baseline in, preprocessing inside the graph
  .pt2  torch.export program, same inputs as .pt
  .onnx ONNX, network only: preprocessed float32 ECG at the model's rate in
Outputs are (diagnosis probabilities, lab-abnormality probabilities); a sidecar <out>.json lists the
label names, lead order, input rate and length. Loading a model with preprocessing needs the ecgkt op
library (import ecgkt, or libecgkt_ops.so from the CMake build in C++).
"""


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("predict", help="diagnoses + lab-abnormality explanations for ECG files",
                              description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model folder (config.json + model.safetensors), or the run "
                                                  "folder of `ecgkt pipeline` (its model/ is used)")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="records, DICOM/.npy files, folders or record lists")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="output format on stdout (default: table)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the output to FILE instead of stdout")
    p.add_argument("--report", metavar="DIR", help="also write a PNG and an HTML report per record into DIR")
    p.add_argument("--fs", type=float, help="sampling rate in Hz of .npy inputs")
    p.add_argument("--leads", help="lead names of .npy inputs, comma-separated (or 'standard' for "
                                   "I,II,III,aVR,aVL,aVF,V1-V6)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per model call (default: 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--top", type=int, default=5, help="diagnoses shown per record in the table (default: 5)")
    p.add_argument("--lab-threshold", type=float, default=0.5,
                   help="probability at which a lab abnormality enters the explanation (default: 0.5)")
    p.add_argument("--workers", type=int, help="threads reading files (default: the cores that --threads "
                                               "leaves free, 1 to 4)")
    p.add_argument("--threads", type=int, help="CPU threads for preprocessing and the model (default: torch's; "
                                               "1 is fastest when other jobs share the cores)")
    p.set_defaults(func=run_predict)

    e = subparsers.add_parser("export", help="export the ECG-only model (TorchScript, torch.export, ONNX)",
                              description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", metavar="MODEL", help="model folder (config.json + model.safetensors)")
    e.add_argument("--out", required=True, metavar="FILE", help="output file (.pt, .pt2 or .onnx)")
    e.add_argument("--format", choices=("torchscript", "export", "onnx"), help="override the suffix's format")
    e.add_argument("--fs", type=float, help="sampling rate of the raw input (default: the model's rate)")
    e.add_argument("--seconds", type=float, default=10.0, help="input window length in seconds (default: 10)")
    e.add_argument("--network-only", action="store_true",
                   help="export the network alone, taking preprocessed input (always so for ONNX)")
    e.set_defaults(func=run_export)


def _load_model(path: str):
    from ..models import ECGKTModel

    folder = Path(path)
    if not folder.exists():
        raise ECGKTError(f"{path}: no such model folder")
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"  # a pipeline run folder: its final model lives in RUN/model
    return ECGKTModel.from_pretrained(folder)


def _table_block(result, top: int, display: Display) -> str:
    lines = [f"{result.record}  ({result.duration_s:.1f} s at {result.fs:g} Hz"
             + (f", {result.n_windows} windows)" if result.n_windows > 1 else ")")]
    for k, (name, p) in enumerate(display.top(result, top)):
        lines.append(("  diagnoses    " if k == 0 else "               ") + f"{p:.2f}  {name}")
    sentences = display.sentences(result)
    if not display.gate.available:
        lines.append("  explanation  none shown: the model carries no validation AUROCs for its lab outputs")
    elif not sentences:
        lines.append(f"  explanation  no lab abnormality with a documented ECG association predicted at or above "
                     f"{result.lab_threshold:.2f} by a lab output with validation AUROC >= {display.gate.min_auroc:.2f}")
    for k, text in enumerate(sentences):
        lines.append(("  explanation  " if k == 0 else "               ") + text)
    for w in result.warnings:
        lines.append(f"  warning      {w}")
    return "\n".join(lines)


def _csv_header(model) -> list[str]:
    return (["record", "fs", "duration_s", "windows", "top_diagnoses"] + [f"dx:{n}" for n in model.dx_names]
            + [f"lab:{n}" for n in model.lab_label_names]
            + ["explanation", "repaired_leads", "flat_leads", "warnings", "error"])


def _csv_row(model, result, display: Display) -> list:
    dx = dict(result.diagnoses)
    labs = {f.output: f.probability for f in result.labs}
    return ([result.record, result.fs, round(result.duration_s, 3), result.n_windows,
             "; ".join(f"{name} {p:.2f}" for name, p in display.top(result, 5))]
            + [round(dx[n], 6) for n in model.dx_names] + [round(labs[n], 6) for n in model.lab_label_names]
            + [" ".join(display.sentences(result)), " ".join(result.repaired_leads),
               " ".join(result.flat_leads), "; ".join(result.warnings), ""])


def run_predict(args) -> int:
    from tqdm import tqdm

    from ..predict.inference import Predictor
    from ..predict.inputs import expand_inputs, parse_leads

    leads = parse_leads(args.leads)
    if args.fs is not None and args.fs <= 0:
        raise ECGKTError(f"--fs must be positive, got {args.fs}")
    if args.threads is not None:
        if args.threads < 1:
            raise ECGKTError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    _check_output_paths(args)
    model = _load_model(args.model)
    predictor = Predictor(model, device=args.device, batch_size=args.batch_size, lab_threshold=args.lab_threshold,
                          read_workers=args.workers)
    sources, failures = expand_inputs(args.inputs, folder_npy=args.fs is not None and leads is not None)
    display = Display(model)

    # a file output is written beside its target and renamed at the end: never a torn file
    out = open(temp_path(args.output), "w", newline="") if args.output else sys.stdout
    done = False
    writer = csv.writer(out) if args.format == "csv" else None
    if writer:
        writer.writerow(_csv_header(model))
    results = []
    report_names: set = set()
    n_ok = 0
    try:
        with tqdm(total=len(sources), unit="rec", desc="predict", file=sys.stderr, disable=None,
                  leave=False) as bar:
            for source, record, result in predictor.run(sources, fs=args.fs, leads=leads, progress=bar):
                if record is None:
                    failures.append(result)
                    continue
                n_ok += 1
                # once, when there is a result it applies to; JSON output carries it as `explanation_note`
                if n_ok == 1 and display.gate.note and args.format != "json":
                    print(f"ecgkt: {display.gate.note}", file=sys.stderr)
                if args.report:
                    _write_report(result, record, model, args.report, report_names, display)
                if args.format == "table":
                    print(_table_block(result, args.top, display) + "\n", file=out, flush=True)
                elif writer:
                    writer.writerow(_csv_row(model, result, display))
                else:
                    results.append(display.to_dict(result))
        if args.format == "json":
            out.write(dumps_json({"model": str(args.model), "explanation_note": display.gate.note, "results": results,
                                  "failures": [{"record": f.name, "error": f.problem} for f in failures]}) + "\n")
        elif writer:
            width = len(_csv_header(model))
            for f in failures:
                writer.writerow([f.name] + [""] * (width - 2) + [f.problem])
        if out is not sys.stdout:
            out.flush()
            os.fsync(out.fileno())
        done = True
    except OSError as e:
        raise ECGKTError(f"cannot write {describe_os_error(e, args.output or e.filename or 'standard output')}") \
            from None
    finally:
        if out is not sys.stdout:
            out.close()
            if done:
                os.replace(temp_path(args.output), args.output)
            else:
                Path(temp_path(args.output)).unlink(missing_ok=True)
    return _finish(n_ok, failures)


def _check_output_paths(args) -> None:
    """Output paths that cannot work are one-line errors before any record is read."""
    if args.output:
        out = Path(args.output)
        if out.is_dir():
            raise ECGKTError(f"--output {out}: is a folder; give a file name")
        if not out.parent.is_dir():
            raise ECGKTError(f"--output {out}: folder {out.parent} does not exist")
        if not os.access(out.parent, os.W_OK):
            raise ECGKTError(f"--output {out}: folder {out.parent} is not writable")
    if args.report:
        report = Path(args.report)
        if report.exists() and not report.is_dir():
            raise ECGKTError(f"--report {report}: is a file; give a folder for the reports")
        try:
            report.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ECGKTError(f"--report {describe_os_error(e, report)}") from None


def _write_report(result, record, model, out_dir, taken, display=None) -> None:
    from ..predict.report import display_signal, report_stem, write_report

    signal = display_signal(record, model.preprocessor.settings)
    write_report(result, signal, record.fs, record.leads, out_dir, report_stem(result.record, taken),
                 display=display or Display(model), record=record)


def _finish(n_ok: int, failures) -> int:
    if not failures:
        return 0
    if n_ok == 0 and len(failures) == 1:
        raise ECGKTError(failures[0].line())
    head = (f"none of the {len(failures)} inputs could be predicted" if n_ok == 0
            else f"{len(failures)} of {n_ok + len(failures)} inputs could not be predicted")
    print(f"ecgkt: {head}:", file=sys.stderr)
    for f in failures:
        print(f"  {f.line()}", file=sys.stderr)
    return 2 if n_ok == 0 else 1


def run_export(args) -> int:
    from ..predict.export import export_model

    if Path(args.out).is_dir():
        raise ECGKTError(f"--out {args.out}: is a folder; give a file name (.pt, .pt2 or .onnx)")
    model = _load_model(args.model)
    path = export_model(model, args.out, fmt=args.format, fs=args.fs, seconds=args.seconds,
                        network_only=args.network_only)
    print(f"exported {args.model} -> {path} (+ {path.name}.json)")
    return 0

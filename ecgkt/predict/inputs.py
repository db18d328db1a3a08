"""What `ecgkt predict` can read, and how INPUT arguments expand into records.

An INPUT may be:
- a WFDB record: ``rec.hea``, ``rec.dat``, ``rec.mat`` or the bare record path ``rec`` (MIMIC, CinC/PhysioNet
  ``.mat``, PTB with 15 signals and lower-case names...: whatever ``ecgkt.data.wfdb_io`` reads);
- a 12-lead DICOM waveform file (``.dcm``, or any file with the DICOM preamble);
- a NumPy array ``.npy`` in millivolts, shaped [leads, samples] or [samples, leads], with ``--fs`` and
  ``--leads`` telling its sampling rate and lead names;
- a folder: every record, DICOM and ``.npy`` file under it (recursively; ``.npy`` only when the caller says
  how to read them), in sorted order; a MIMIC-IV-ECG
  root (a folder holding ``record_list.csv``, or ``mimic-iv-ecg/record_list.csv``) is read through its
  record list instead;
- a record list: a ``.txt``/``.lst`` file with one path per line, or a ``.csv`` with a ``path`` column;
  relative paths are taken from the list's folder.

Problems found while expanding (a path that does not exist, a list naming nothing) are returned as
failures, not raised, so the other inputs of a batch are still predicted.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.wfdb_io import (INVALID, MAX_ABS_MV, STANDARD_LEADS, ECGRecord, check_fs, map_leads, read_record,
                            validate_record)
from ..errors import ECGKTError, RecordError

WFDB_SIGNAL_SUFFIXES = (".dat", ".mat")
LIST_SUFFIXES = (".txt", ".lst", ".csv", ".tsv")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class Source:
    """One record to predict: ``path`` is the file (for WFDB, the record path without extension)."""

    path: Path
    kind: str  # "wfdb", "dicom" or "npy"

    @property
    def name(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Failure:
    """An input that could not be predicted, with the reason in one line."""

    name: str
    problem: str

    def line(self) -> str:
        return f"{self.name}: {self.problem}"


def parse_leads(text: str | None) -> list[str] | None:
    """``--leads`` value: comma-separated names, or "standard" for the 12 leads in standard order."""
    if text is None:
        return None
    if text.strip().lower() == "standard":
        return list(STANDARD_LEADS)
    names = [t for t in (s.strip() for s in text.split(",")) if t]
    if not names:
        raise ECGKTError("--leads: give comma-separated lead names, e.g. I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6")
    return names


# ---------------------------------------------------------------------------------------------- expansion


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _mimic_record_list(root: Path) -> Path | None:
    for candidate in (root / "record_list.csv", root / "mimic-iv-ecg" / "record_list.csv"):
        if candidate.is_file():
            return candidate
    return None


def _classify_file(path: Path) -> Source | None:
    """The Source a single existing file stands for, or None when it is no record."""
    suffix = path.suffix.lower()
    if suffix == ".hea":
        return Source(path.with_suffix(""), "wfdb")
    if suffix in WFDB_SIGNAL_SUFFIXES and path.with_suffix(".hea").is_file():
        return Source(path.with_suffix(""), "wfdb")
    if suffix == ".npy":
        return Source(path, "npy")
    if _is_dicom(path):
        return Source(path, "dicom")
    return None


def _from_folder(folder: Path, folder_npy: bool) -> tuple[list[Source], list[Failure]]:
    record_list = _mimic_record_list(folder)
    if record_list is not None:
        return _from_list(record_list, folder_npy)
    found: list[Source] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            suffix = path.suffix.lower()
            if suffix == ".hea" or (suffix == ".npy" and folder_npy) or suffix in DICOM_SUFFIXES:
                src = _classify_file(path)
                if src is not None:
                    found.append(src)
    if not found:
        what = "WFDB record (.hea), DICOM (.dcm) or .npy file" if folder_npy else \
            "WFDB record (.hea) or DICOM (.dcm) file (.npy files count only with --fs and --leads)"
        return [], [Failure(str(folder), f"folder holds no {what}")]
    return found, []


def _list_entries(list_file: Path) -> list[str]:
    text = list_file.read_text(errors="replace")
    if list_file.suffix.lower() in (".csv", ".tsv"):
        dialect = "excel-tab" if list_file.suffix.lower() == ".tsv" else "excel"
        rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
        columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
        column = columns.get("path") or columns.get("file") or columns.get("record")
        if column is None:
            raise RecordError(list_file, "record list (.csv) needs a 'path' column")
        return [r[column].strip() for r in rows if r.get(column) and r[column].strip()]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _from_list(list_file: Path, folder_npy: bool) -> tuple[list[Source], list[Failure]]:
    try:
        entries = _list_entries(list_file)
    except RecordError as e:
        return [], [Failure(e.path, e.problem)]
    except OSError as e:
        return [], [Failure(str(list_file), f"cannot read record list ({e.strerror or e})")]
    except (csv.Error, ValueError) as e:  # a malformed .csv list
        return [], [Failure(str(list_file), f"malformed record list ({' '.join(str(e).split())})")]
    if not entries:
        return [], [Failure(str(list_file), "record list is empty")]
    sources, failures = [], []
    for entry in entries:
        path = Path(entry)
        if not path.is_absolute():
            path = list_file.parent / path
        s, f = _expand_one(path, folder_npy, allow_lists=False)
        sources += s
        failures += f
    return sources, failures


def _expand_one(path: Path, folder_npy: bool, allow_lists: bool = True) -> tuple[list[Source], list[Failure]]:
    if path.is_dir():
        return _from_folder(path, folder_npy)
    if path.is_file():
        src = _classify_file(path)
        if src is not None:
            return [src], []
        if allow_lists and path.suffix.lower() in LIST_SUFFIXES:
            return _from_list(path, folder_npy)
        if path.suffix.lower() in WFDB_SIGNAL_SUFFIXES:
            return [], [Failure(str(path), f"WFDB signal file without its header {path.with_suffix('.hea').name}")]
        return [], [Failure(str(path), "not a WFDB record, DICOM file, .npy array, folder or record list")]
    # a bare WFDB record path, as MIMIC's record_list.csv writes them ("files/p1000/.../40689238")
    if path.with_name(path.name + ".hea").is_file():
        return [Source(path, "wfdb")], []
    return [], [Failure(str(path), "no such file or folder")]


def expand_inputs(inputs, folder_npy: bool = True) -> tuple[list[Source], list[Failure]]:
    """Expand INPUT arguments into records (in the order given, duplicates removed) and failures.

    ``folder_npy=False`` leaves .npy files out of folder walks (the CLI does so unless --fs and --leads are
    given: other .npy files, such as a signal store's arrays, are not ECGs); named .npy files always count."""
    sources: list[Source] = []
    failures: list[Failure] = []
    seen = set()
    for item in inputs:
        s, f = _expand_one(Path(item), folder_npy)
        failures += f
        for src in s:
            if src.path not in seen:
                seen.add(src.path)
                sources.append(src)
    return sources, failures


# ------------------------------------------------------------------------------------------------ reading


NPY_GAIN = 1000.0  # adu per mV used to store a float .npy array as int16 (1 uV steps)


def read_npy(path: Path, fs: float | None, leads: list[str] | None) -> ECGRecord:
    """A .npy array in millivolts; ``fs`` and ``leads`` are required (they are not in the file).

    The array is stored as int16 at 1000 adu/mV (1 uV steps; a lower gain when a lead exceeds
    +-32 mV), NaN samples marked invalid, leads mapped by name like any other record."""
    if fs is None or leads is None:
        raise RecordError(path, ".npy input needs --fs (sampling rate in Hz) and --leads (lead names)")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many types for damaged files
        raise RecordError(path, f"cannot read .npy array ({' '.join(str(e).split()) or type(e).__name__})") from None
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise RecordError(path, "not a .npy array (an .npz archive?)")
    return ecg_record_from_array(arr, fs, leads, str(path))


def ecg_record_from_array(arr, fs: float, leads, name: str, gain=None, baseline=None) -> ECGRecord:
    """An ECGRecord from an array [leads, samples] or [samples, leads]: float millivolts (NaN = missing
    sample), or integer ADC units with ``gain`` (adu/mV, scalar or per lead) and optional ``baseline``."""
    arr = np.asarray(arr)
    leads = list(leads)
    numeric = np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
    if arr.ndim != 2 or not numeric or min(arr.shape) == 0:
        raise RecordError(name, f"expected a 2-D numeric array [leads, samples], got shape {arr.shape} {arr.dtype}")
    if arr.shape[0] != len(leads) and arr.shape[1] == len(leads):
        arr = arr.T
    if arr.shape[0] != len(leads):
        raise RecordError(name, f"array shape {arr.shape} does not match the {len(leads)} lead names given")
    fs = check_fs(fs, name)
    order = map_leads(leads, name)
    if gain is not None:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < -32768 or arr.max() > 32767:
            raise RecordError(name, "with a gain the signal must be integer ADC units within the int16 range")
        g = np.broadcast_to(np.asarray(gain, np.float32), (len(leads),))[order]
        b = np.broadcast_to(np.asarray(0 if baseline is None else baseline, np.float32), (len(leads),))[order]
        return validate_record(ECGRecord(np.ascontiguousarray(arr[order].astype(np.int16)), g.copy(), b.copy(),
                                         float(fs), name))
    mv = np.asarray(arr, dtype=np.float64)[order]
    if np.isinf(mv).any():
        raise RecordError(name, "the array holds infinite values (mark missing samples with NaN)")
    finite = np.isfinite(mv)
    peak = np.abs(np.where(finite, mv, 0.0)).max(axis=1)
    if peak.max() > MAX_ABS_MV:
        worst = int(np.argmax(peak))
        raise RecordError(name, f"lead {STANDARD_LEADS[worst]} reaches {peak[worst]:.3g} mV: not a plausible ECG "
                                f"in millivolts (convert the array to mV)")
    g = np.minimum(NPY_GAIN, 32000.0 / np.maximum(peak, 1e-9))
    signal = np.round(np.where(finite, mv, 0.0) * g[:, None]).astype(np.int16)
    signal[~finite] = INVALID
    return validate_record(ECGRecord(signal, g.astype(np.float32), np.zeros(12, np.float32), float(fs), name))


def read_dicom(path: Path) -> ECGRecord:
    from ..data import dicom_io

    return dicom_io.read_dicom(path)


def read_source(source: Source, fs: float | None = None, leads: list[str] | None = None) -> ECGRecord:
    """Read one record as a 12-lead :class:`ECGRecord` (standard lead order, int16 + gain)."""
    if source.kind == "wfdb":
        return read_record(source.path)
    if source.kind == "dicom":
        return read_dicom(source.path)
    if source.kind == "npy":
        return read_npy(source.path, fs, leads)
    raise ECGKTError(f"{source.path}: unknown input kind {source.kind!r}")

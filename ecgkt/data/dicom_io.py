"""12-lead ECGs from DICOM waveform files (needs ``pydicom``, an optional dependency)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import ECGKTError, RecordError
from .wfdb_io import ECGRecord, _to_int16, lead_index, map_leads, validate_record

# SCP-ECG (5.6.3-9-n) and MDC (2:n) lead codes share the trailing number.
_LEAD_CODE = {1: "I", 2: "II", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
              3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6"}
_UNIT_TO_MV = {"uv": 1e-3, "mv": 1.0, "v": 1e3}


def _lead_name(channel) -> str:
    source = channel.ChannelSourceSequence[0]
    meaning = str(source.get("CodeMeaning", ""))
    name = re.sub(r"\(.*?\)", "", meaning).strip()
    name = re.sub(r"^lead\s+", "", name, flags=re.I).strip()
    if lead_index(name) is not None:
        return name
    m = re.search(r"(\d+)$", str(source.get("CodeValue", "")))
    if m and int(m.group(1)) in _LEAD_CODE:
        return _LEAD_CODE[int(m.group(1))]
    return meaning or "?"


def read_dicom(path) -> ECGRecord:
    """The 12-lead rhythm waveform of a DICOM ECG as an :class:`ECGRecord` (int16, standard order)."""
    try:
        import pydicom
        from pydicom.waveforms.numpy_handler import multiplex_array
    except ImportError:
        raise ECGKTError("reading DICOM ECGs needs pydicom: pip install pydicom") from None
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise RecordError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    groups = list(ds.get("WaveformSequence", []))
    if not groups:
        raise RecordError(path, "no waveform in this DICOM file")
    # prefer the rhythm group (full-length leads) over median beats, then the longest
    def rank(item):
        k, g = item
        label = str(g.get("MultiplexGroupLabel", "")).upper()
        return ("MEDIAN" not in label, "RHYTHM" in label, int(g.NumberOfWaveformSamples))

    try:
        k, group = max(enumerate(groups), key=rank)
        channels = list(group.ChannelDefinitionSequence)
        names = [_lead_name(c) for c in channels]
        fs = float(group.SamplingFrequency)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise RecordError(path, f"malformed DICOM waveform ({type(e).__name__}: {e})") from None
    order = map_leads(names, path)
    try:
        raw = np.asarray(multiplex_array(ds, k, as_raw=True))  # [samples, channels], integers
    except Exception as e:
        raise RecordError(path, f"cannot decode waveform data ({type(e).__name__}: {e})") from None
    if raw.ndim != 2 or raw.shape[1] != len(channels) or not np.issubdtype(raw.dtype, np.integer):
        raise RecordError(path, f"waveform data of shape {raw.shape} {raw.dtype} does not match its "
                                f"{len(channels)} channels")
    gain = np.empty(12)
    baseline = np.empty(12)
    for j, c in enumerate(order):
        ch = channels[c]
        try:
            sens = _number(ch.get("ChannelSensitivity", 1.0)) * _number(ch.get("ChannelSensitivityCorrectionFactor", 1.0))
            units = "uv"
            if "ChannelSensitivityUnitsSequence" in ch:
                units = str(ch.ChannelSensitivityUnitsSequence[0].CodeValue).lower()
            offset = _number(ch.get("ChannelBaseline", 0.0), default=0.0)
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise RecordError(path, f"lead {names[c]}: malformed channel calibration ({e})") from None
        if not (math.isfinite(sens) and sens > 0):
            raise RecordError(path, f"lead {names[c]}: channel sensitivity {sens:g} is not a positive number")
        if units not in _UNIT_TO_MV:
            raise RecordError(path, f"lead {names[c]}: sensitivity units {units!r} are not a voltage")
        mv_per_adu = sens * _UNIT_TO_MV[units]
        gain[j] = 1.0 / mv_per_adu
        baseline[j] = 0.0 - offset / sens  # physical offset -> adu
    signal = raw[:, order].T
    fmts = ["16" if raw.dtype.itemsize <= 2 else "32"] * 12
    with np.errstate(all="ignore"):
        signal, gain, baseline = _to_int16(signal.astype(np.int64), gain, np.round(baseline), fmts)
    return validate_record(ECGRecord(signal, gain.astype(np.float32), baseline.astype(np.float32), fs, str(path)))


def _number(value, default: float = 1.0) -> float:
    """A DICOM numeric attribute; absent/empty means the standard's default (not 0, which is an error)."""
    if value is None or value == "":
        return default
    return float(value)

"""Reading 12-lead ECGs from WFDB records (MIMIC-IV-ECG, PTB-XL, CinC ``.mat``, ...).

Every reader returns an :class:`ECGRecord`: the digital samples as int16 in the standard lead
order I, II, III, aVR, aVL, aVF, V1-V6, with per-lead gain (adu/mV) and baseline (adu). Invalid
samples are stored as ``INVALID`` (-32768), whatever the source format used for them.

Headers are parsed with ``wfdb`` except for the plain single-file format-16 headers written by
MIMIC-IV-ECG, which a small parser here reads about 30x faster; in both cases the signal file's
size is checked against the header before any sample is read, so a truncated file is reported
as such instead of surfacing as a reshape error or garbage samples.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import RecordError

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
INVALID = np.int16(-32768)  # the int16 sentinel for a missing sample (MIMIC's own convention)

_LEAD_KEYS = {name.lower(): i for i, name in enumerate(STANDARD_LEADS)}
# other spellings in use: Brazilian/European DI-DIII, "lead I"
_LEAD_KEYS.update({"di": 0, "dii": 1, "diii": 2, "d1": 0, "d2": 1, "d3": 2})
# Digital value each WFDB format uses for "no sample".
_FORMAT_INVALID = {"8": -128, "80": -128, "16": -32768, "61": -32768, "160": -32768, "212": -2048,
                   "310": -512, "311": -512, "24": -(2 ** 23), "32": -(2 ** 31)}
# Bytes taken by one sample in each format (212/310/311 pack several samples per word).
_FORMAT_BYTES = {"8": 1.0, "80": 1.0, "16": 2.0, "61": 2.0, "160": 2.0, "212": 1.5,
                 "310": 4.0 / 3.0, "311": 4.0 / 3.0, "24": 3.0, "32": 4.0}
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}

# What a usable record looks like (checked by validate_record, for every reader alike).
MIN_FS, MAX_FS = 50.0, 20_000.0  # Hz: below, no ECG content survives; above, not an ECG recorder
MAX_ABS_MV = 1e5  # an ECG sample beyond this many millivolts means a wrong gain or unit
MIN_VALID_FRACTION = 0.5  # a lead with fewer valid samples than this carries no usable signal


@dataclasses.dataclass
class ECGRecord:
    """One 12-lead ECG in standard lead order, kept as digital int16 samples."""

    signal: np.ndarray  # int16 [12, T]; INVALID marks missing samples
    gain: np.ndarray  # float32 [12], adu per mV
    baseline: np.ndarray  # float32 [12], adu
    fs: float
    path: str = ""
    leads: tuple = STANDARD_LEADS

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def invalid(self) -> np.ndarray:
        """bool [12, T]: True where the sample is missing."""
        return self.signal == INVALID

    def physical(self) -> np.ndarray:
        """float32 [12, T] in mV, NaN where the sample is missing."""
        out = (self.signal.astype(np.float32) - self.baseline[:, None]) / self.gain[:, None]
        out[self.invalid] = np.nan
        return out

    def window(self, start: int, length: int) -> "ECGRecord":
        """Samples [start, start + length) of this record (a view, no copy)."""
        if start < 0 or length <= 0 or start + length > self.n_samples:
            raise RecordError(self.path, f"window [{start}, {start + length}) outside the record's "
                                         f"{self.n_samples} samples")
        return dataclasses.replace(self, signal=self.signal[:, start:start + length])


# ---------------------------------------------------------------------------------------------
# validation: one set of rules for every reader (WFDB, DICOM, .npy, arrays), in the precision of use

def check_fs(fs, where) -> float:
    """The sampling rate as a float, or a RecordError: it must be finite and within MIN_FS..MAX_FS."""
    try:
        value = float(fs)
    except (TypeError, ValueError):
        raise RecordError(where, f"sampling rate {fs!r} is not a number") from None
    if not math.isfinite(value) or not MIN_FS <= value <= MAX_FS:
        raise RecordError(where, f"sampling rate {value:g} Hz is outside the usable range "
                                 f"{MIN_FS:g}-{MAX_FS:g} Hz")
    return value


def check_calibration(gain, baseline, names, where) -> None:
    """Gains and baselines as they will be used (float32, dividing int16 samples): each gain finite and
    positive with a finite reciprocal, each baseline finite, (sample - baseline) / gain finite."""
    g = np.asarray(gain, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if (g.ndim == 1 and g.shape == b.shape and all(1e-3 <= x <= 1e12 for x in g.tolist())
            and all(-1e9 <= x <= 1e9 for x in b.tolist())):
        return  # every check below passes within these bounds (the usual case): no dozen numpy calls
    with np.errstate(all="ignore"):
        g32, b32 = g.astype(np.float32), b.astype(np.float32)
        span = (np.float32(32768) + np.abs(b32)) / g32
        bad_gain = ~(np.isfinite(g) & (g > 0) & np.isfinite(g32) & (g32 > 0) & np.isfinite(np.float32(1) / g32))
        bad_base = ~(np.isfinite(b) & np.isfinite(b32))
        bad_span = ~np.isfinite(span)
    for k in range(len(g)):
        name = names[k] if k < len(names) else str(k)
        if bad_gain[k]:
            what = "is not a positive number" if not (math.isfinite(g[k]) and g[k] > 0) else                 "becomes 0 or infinite in float32"
            raise RecordError(where, f"lead {name}: gain {g[k]:g} adu/mV {what}; cannot convert to mV")
        if bad_base[k]:
            raise RecordError(where, f"lead {name}: baseline {b[k]:g} adu is not finite in float32")
        if bad_span[k]:
            raise RecordError(where, f"lead {name}: gain {g[k]:g} with baseline {b[k]:g} gives "
                                     f"infinite millivolts in float32")


def usable_leads(record: "ECGRecord") -> np.ndarray:
    """bool [leads]: leads with signal, i.e. at least MIN_VALID_FRACTION valid samples, not all equal."""
    sig = record.signal
    valid = sig != INVALID
    enough = valid.mean(axis=1) >= MIN_VALID_FRACTION
    big = np.iinfo(np.int16).max
    hi = np.where(valid, sig, np.int16(-big)).max(axis=1)
    lo = np.where(valid, sig, np.int16(big)).min(axis=1)
    return enough & (hi > lo)


def validate_record(record: "ECGRecord") -> "ECGRecord":
    """Check a record the way it will be used; returns it, or raises a RecordError naming its file.

    Shape int16 [leads, T] with T > 0; the sampling rate (check_fs); gains and baselines in float32
    (check_calibration); no sample beyond MAX_ABS_MV; at least one lead with usable signal."""
    where = record.path or "signal"
    sig = record.signal
    n = len(record.leads)
    if not isinstance(sig, np.ndarray) or sig.dtype != np.int16 or sig.ndim != 2 or sig.shape[0] != n or n == 0:
        raise RecordError(where, f"expected int16 samples [{n} leads, T], got {getattr(sig, 'dtype', type(sig))} "
                                 f"{getattr(sig, 'shape', '')}")
    if sig.shape[1] == 0:
        raise RecordError(where, "the record holds no samples")
    check_fs(record.fs, where)
    gain = np.asarray(record.gain)
    base = np.asarray(record.baseline)
    if gain.shape != (n,) or base.shape != (n,):
        raise RecordError(where, f"expected {n} gains and baselines, got {gain.shape} and {base.shape}")
    check_calibration(gain, base, record.leads, where)
    lo, hi = sig.min(axis=1), sig.max(axis=1)
    with np.errstate(all="ignore"):
        if (lo != INVALID).all():
            # No sample missing (INVALID is the int16 minimum), the common case: |sample - baseline| is
            # monotone on each side of the baseline, so each lead's min and max give the same peak as all
            # its samples, and usable_leads reduces to max > min. Two reductions instead of masked passes.
            usable = hi > lo
            peak = np.abs(np.stack([lo, hi], axis=1).astype(np.float32) - base[:, None]).max(axis=1) / gain
        else:
            valid, usable = sig != INVALID, None
            if not valid.any():
                raise RecordError(where, "no usable signal: every sample is missing (-32768)")
            peak = np.abs(np.where(valid, sig.astype(np.float32), base[:, None]) - base[:, None]).max(axis=1) / gain
    worst = int(np.argmax(peak))
    if not peak[worst] <= MAX_ABS_MV:
        raise RecordError(where, f"lead {record.leads[worst]} reaches {peak[worst]:.3g} mV: not a plausible ECG "
                                 f"(gain {float(gain[worst]):g} adu/mV; check the gain and units)")
    if not (usable_leads(record) if usable is None else usable).any():
        raise RecordError(where, "no usable signal: every lead is flat or mostly missing")
    return record


def lead_index(name: str) -> int | None:
    """Standard-order index of a lead name (case-insensitive: ``i``, ``AVR``, ``v1``, ``DII``,
    ``Lead V1``), or None."""
    key = name.strip().lower()
    return _LEAD_KEYS.get(key.removeprefix("lead").strip()) if key.startswith("lead") else _LEAD_KEYS.get(key)


def map_leads(names, path) -> np.ndarray:
    """For each standard lead, the position of that lead among ``names`` (a read-only array).

    Extra signals (a 15-lead PTB record's Frank leads, a rhythm strip) are ignored; a missing
    standard lead is an error naming the record.
    """
    names = tuple(map(str, names))
    order, missing = _lead_positions(names)
    if missing:
        raise RecordError(path, f"missing standard lead(s) {', '.join(missing)} "
                                f"(signals in the record: {', '.join(names) or 'none'})")
    return order


@functools.lru_cache(maxsize=256)  # a dataset uses a handful of lead layouts: one lookup per record
def _lead_positions(names: tuple) -> tuple:
    """(positions of the standard leads among ``names``, names of the standard leads missing)."""
    where = {}
    for pos, name in enumerate(names):
        idx = lead_index(name)
        if idx is not None and idx not in where:
            where[idx] = pos
    missing = tuple(STANDARD_LEADS[i] for i in range(12) if i not in where)
    if missing:
        return None, missing
    order = np.array([where[i] for i in range(12)], dtype=np.int64)
    order.flags.writeable = False  # shared by every record with these names
    return order, ()


@dataclasses.dataclass
class _Header:
    """The parts of a WFDB header this module uses."""

    fs: float
    sig_len: int
    sig_name: list
    fmt: list
    file_name: list
    byte_offset: list
    gain: list  # adu per mV
    baseline: list
    simple: bool  # one format-16 file, no skew, one sample per frame: read with numpy directly
    samps_per_frame: list = None  # samples per frame of each signal (None: one each)


# ---------------------------------------------------------------------------------------------
# headers

_SIGNAL_LINE = re.compile(
    r"^(?P<file>\S+)\s+16(?:x1)?(?:\+(?P<offset>\d+))?\s+(?P<gain>[-+0-9.eE]+)(?:\((?P<base>-?\d+)\))?"
    r"(?:/(?P<units>\S+))?(?:\s+(?P<rest>.*))?$")


def _fast_header(text: str, path: Path) -> _Header | None:
    """Parse a plain format-16 header (MIMIC's shape); None when anything is unusual."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return None
    rec = lines[0].split()
    if len(rec) < 4 or "/" in rec[0] or not rec[1].isdigit():
        return None
    try:
        n_sig, fs, sig_len = int(rec[1]), float(rec[2]), int(rec[3])
    except ValueError:
        return None
    if len(lines) != 1 + n_sig or n_sig == 0:
        return None
    names, files, offsets, gains, bases = [], [], [], [], []
    for line in lines[1:]:
        m = _SIGNAL_LINE.match(line)
        if m is None:
            return None
        file, offset, gain, base, units, rest = m.groups()
        rest = rest.split() if rest else []
        # adcres adczero initval checksum blocksize description (description may contain spaces)
        if len(rest) < 6:
            return None
        scale = _UNIT_TO_MV.get(units.lower() if units else "mv")
        if scale is None:
            return None
        gain = float(gain)
        files.append(file)
        offsets.append(int(offset or 0))
        gains.append(gain / scale if gain > 0 else gain)
        bases.append(int(base) if base is not None else int(rest[1]))
        names.append(" ".join(rest[5:]))
    if len(set(files)) != 1 or len(set(offsets)) != 1:
        return None
    return _Header(fs, sig_len, names, ["16"] * n_sig, files, offsets, gains, bases, simple=True)


def _wfdb_header(path: Path) -> _Header:
    import wfdb

    try:
        h = wfdb.rdheader(str(path))
    except Exception as e:  # wfdb raises many types for bad headers
        raise RecordError(f"{path}.hea", f"malformed header ({type(e).__name__}: {e})") from None
    if getattr(h, "n_seg", None):
        raise RecordError(f"{path}.hea", "multi-segment records are not supported")
    if not h.n_sig or not h.fs or not h.sig_len:
        raise RecordError(f"{path}.hea", "malformed header: no number of signals, sampling rate or length")
    described = len(h.sig_name or [])
    if described != h.n_sig or any(len(getattr(h, f) or []) != h.n_sig for f in ("fmt", "file_name", "adc_gain")):
        raise RecordError(f"{path}.hea", f"malformed header: declares {h.n_sig} signals, describes {described}")
    try:
        gains = []
        for g, u in zip(h.adc_gain, h.units or ["mV"] * h.n_sig):
            scale = _UNIT_TO_MV.get(str(u or "mV").lower())
            if scale is None:
                raise RecordError(f"{path}.hea", f"signal units {u!r} are not a voltage")
            gains.append(float(g) / scale)
        skew = [s or 0 for s in (h.skew or [0] * h.n_sig)]
        spf = [int(s or 1) for s in (h.samps_per_frame or [1] * h.n_sig)]
        offsets = [int(o or 0) for o in (h.byte_offset or [0] * h.n_sig)]
        simple = (all(f == "16" for f in h.fmt) and len(set(h.file_name)) == 1 and len(set(offsets)) == 1
                  and not any(skew) and all(s == 1 for s in spf))
        return _Header(float(h.fs), int(h.sig_len), list(h.sig_name), list(h.fmt), list(h.file_name),
                       offsets, gains, [int(b) for b in (h.baseline or [0] * h.n_sig)], simple, spf)
    except (TypeError, ValueError, OverflowError) as e:
        raise RecordError(f"{path}.hea", f"malformed header ({type(e).__name__}: {e})") from None


def read_header(path) -> _Header:
    """Parse ``<path>.hea`` (``path`` given with or without the extension)."""
    return _read_header(_record_base(path))


def _read_header(path: Path) -> _Header:
    hea = f"{path}.hea"
    try:
        with open(hea, errors="replace") as f:  # what Path.read_text does, less its wrapper (a third of the time)
            text = f.read()
    except OSError as e:
        raise RecordError(hea, f"cannot read header ({e.strerror or e})") from None
    header = _fast_header(text, path)
    if header is None:
        header = _wfdb_header(path)
    header.fs = check_fs(header.fs, hea)
    if not header.sig_len > 0:
        raise RecordError(hea, f"the header gives no samples (length {header.sig_len})")
    check_calibration(header.gain, header.baseline, header.sig_name, hea)
    return header


def _record_base(path) -> Path:
    path = path if isinstance(path, Path) else Path(path)
    if path.suffix in (".hea", ".dat", ".mat"):
        path = path.with_suffix("")
    return path


# ---------------------------------------------------------------------------------------------
# samples

def _check_sizes(path: Path, h: _Header) -> None:
    """Every signal file must hold at least the samples the header promises."""
    per_file: dict = {}
    spf = h.samps_per_frame or [1] * len(h.fmt)
    for f, fmt, off, k in zip(h.file_name, h.fmt, h.byte_offset, spf):
        if fmt not in _FORMAT_BYTES:
            raise RecordError(f"{path}.hea", f"unsupported WFDB format {fmt}")
        n, b, _ = per_file.get(f, (0, 0.0, off))
        per_file[f] = (n + 1, b + _FORMAT_BYTES[fmt] * k, off)
    for f, (n, bytes_per_frame, off) in per_file.items():
        file_path = path.parent / f
        try:
            size = os.path.getsize(file_path)
        except OSError:
            raise RecordError(file_path, "signal file is missing") from None
        need = off + math.ceil(bytes_per_frame * h.sig_len)
        if size < need:
            raise RecordError(file_path, f"truncated: {size} bytes, the header needs {need} "
                                         f"({n} signals x {h.sig_len} samples)")


def read_record(path, start: int = 0, stop: int | None = None, leads: str = "standard") -> ECGRecord:
    """Read samples [start, stop) of a WFDB record as a 12-lead :class:`ECGRecord`.

    ``path`` names the record (``.../40689238`` or ``.../40689238.hea``). Leads are mapped by name
    to the standard order; other signals are dropped. ``leads="all"`` keeps every signal of the
    record in its own order instead (for plotting any record). Either way the record passes
    :func:`validate_record`.
    """
    path = _record_base(path)
    h = _read_header(path)
    if leads == "all":
        order = np.arange(len(h.sig_name), dtype=np.int64)
    else:
        order = map_leads(h.sig_name, f"{path}.hea")
    _check_sizes(path, h)
    stop = h.sig_len if stop is None else stop
    if not 0 <= start < stop <= h.sig_len:
        raise RecordError(f"{path}.hea", f"requested samples [{start}, {stop}) outside 0..{h.sig_len}")
    n_sig = len(h.sig_name)
    gain = np.asarray(h.gain, dtype=np.float64)[order]
    baseline = np.asarray(h.baseline, dtype=np.float64)[order]
    if h.simple:
        # a plain read of the frames wanted: for a file this small, faster than a memmap (no mmap set-up
        # and page faults)
        count = (stop - start) * n_sig
        frames = np.fromfile(path.parent / h.file_name[0], dtype="<i2", count=count,
                             offset=h.byte_offset[0] + 2 * start * n_sig)
        if frames.size != count:  # the file shrank since _check_sizes
            raise RecordError(path.parent / h.file_name[0], f"truncated: fewer than the {count} samples expected")
        signal = frames.reshape(stop - start, n_sig).T[order]  # one gather: standard lead order, C-contiguous
    else:
        signal, gain, baseline = _to_int16(_read_with_wfdb(path, h, order, start, stop), gain, baseline,
                                           [h.fmt[i] for i in order])
    names = tuple(h.sig_name) if leads == "all" else STANDARD_LEADS
    return validate_record(ECGRecord(signal, gain.astype(np.float32), baseline.astype(np.float32), h.fs,
                                     str(path), names))


def _read_with_wfdb(path: Path, h: _Header, order, start, stop) -> np.ndarray:
    import wfdb

    try:
        rec = wfdb.rdrecord(str(path), sampfrom=start, sampto=stop, physical=False, return_res=32,
                            channels=[int(i) for i in order], smooth_frames=True)
    except Exception as e:
        raise RecordError(path, f"cannot read samples ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(rec.d_signal.T)  # int32 [12, T], already in standard order


def _to_int16(signal, gain, baseline, fmts):
    """Store any WFDB format as int16: map the format's invalid value to INVALID, and rescale
    formats wider than 16 bits (gain and baseline scaled alike, so mV values are unchanged)."""
    signal = np.asarray(signal)
    if signal.dtype == np.int16:
        return signal, gain, baseline
    signal = signal.astype(np.int64)
    invalid = np.zeros(signal.shape, dtype=bool)
    for i, fmt in enumerate(fmts):
        invalid[i] = signal[i] == _FORMAT_INVALID.get(fmt, -(2 ** 63))
    valid = signal[~invalid]
    peak = int(np.abs(valid).max()) if valid.size else 0
    peak = max(peak, int(np.abs(baseline).max()) if baseline.size else 0)
    shift = 0
    while (peak >> shift) > 32767:
        shift += 1
    if shift:
        signal = signal >> shift
        gain = gain / (1 << shift)
        baseline = baseline / (1 << shift)  # kept fractional: the baseline is stored as float32
    out = signal.astype(np.int16)
    out[invalid] = INVALID
    return out, gain, baseline


def iter_windows(record: ECGRecord, length: int, hop: int | None = None) -> Iterator[ECGRecord]:
    """Consecutive windows of ``length`` samples (every ``hop`` samples, default non-overlapping)
    over a long record; a tail shorter than ``length`` is dropped."""
    hop = length if hop is None else hop
    if length <= 0 or hop <= 0:
        raise ValueError("window length and hop must be positive")
    for start in range(0, record.n_samples - length + 1, hop):
        yield record.window(start, length)

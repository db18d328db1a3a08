"""The cohort table: one row per MIMIC-IV-ECG study, joined with MIMIC-IV clinical data.

Each row carries the record path, demographics, the paired labs (value closest to the ECG time
within a window) with low/high labels against the median reference range, ED vitals, ``omr``
biometrics, diagnosis labels (ICD-10 codes and machine-report statements) and a subject-level
fold. Everything is joined on ``subject_id`` / ``study_id`` and times, never on row position.

The clinical root is optional: without it the table holds the ECG-side columns only (record,
machine measurements, report statements, folds).
"""
from __future__ import annotations

import csv
import dataclasses
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ECGKTError
from .labevents import numeric_values, read_labevents

# test name -> MIMIC-IV labevents item ids (mimic.md); several ids are pooled into one test.
DEFAULT_LAB_TESTS = {
    "potassium": (50971, 50822), "sodium": (50983,), "calcium": (50893,), "free_calcium": (50808,),
    "magnesium": (50960,), "phosphate": (50970,), "chloride": (50902,), "bicarbonate": (50882,),
    "anion_gap": (50868,), "glucose": (50931,), "creatinine": (50912,), "urea_nitrogen": (51006,),
    "hemoglobin": (51222,), "hematocrit": (51221,), "platelets": (51265,), "wbc": (51301,),
    "rdw": (51277,), "troponin_t": (51003,), "ck_mb": (50911,), "ck": (50910,), "nt_probnp": (50963,),
    "crp": (50889,), "alt": (50861,), "ast": (50878,), "alp": (50863,), "albumin": (50862,),
    "lactate": (50813,), "ph": (50820,),
}

VITALS = ("temperature", "heartrate", "resprate", "o2sat", "sbp", "dbp")
# Plausible ranges (after conversion to °F); values outside are dropped as charting errors.
VITAL_RANGES = {"temperature": (50.0, 150.0), "heartrate": (10.0, 300.0), "resprate": (1.0, 80.0),
                "o2sat": (0.0, 100.0), "sbp": (30.0, 300.0), "dbp": (10.0, 250.0)}
BIOMETRICS = ("bmi", "weight", "height", "sbp", "dbp")
BIOMETRIC_RANGES = {"bmi": (10.0, 100.0), "weight": (20.0, 350.0), "height": (100.0, 250.0),
                    "sbp": (50.0, 300.0), "dbp": (20.0, 200.0)}

# Machine-report statement labels: a name and a case-insensitive pattern over all report_k texts.
REPORT_STATEMENTS = {
    "sinus_rhythm": r"\bsinus rhythm\b",
    "sinus_tachycardia": r"\bsinus tachycardia\b",
    "sinus_bradycardia": r"\bsinus bradycardia\b",
    "atrial_fibrillation": r"\batrial fibrillation\b",
    "atrial_flutter": r"\batrial flutter\b",
    "av_block_1st": r"\b(1st|first) degree a-?v block\b",
    "rbbb": r"\bright bundle branch block\b|\brbbb\b",
    "lbbb": r"\bleft bundle branch block\b|\blbbb\b",
    "pvc": r"\bpvcs?\b|\bventricular premature|\bpremature ventricular",
    "infarction": r"\binfarct",
    "lvh": r"\bleft ventricular hypertrophy\b|\blvh\b",
    "low_voltage": r"\blow (qrs )?voltage",
    "long_qt": r"\bprolonged qt\b|\blong qt\b",
    "st_elevation": r"\bst elevation\b|\bst-elevation\b",
    "st_depression": r"\bst depression\b|\bst-depression\b",
    "t_wave_abnormality": r"\bt wave (abnormalit|inversion|changes)",
    "pacemaker": r"\bpace(d|maker)\b",
    "poor_data_quality": r"\bpoor data quality\b|\bartifact\b",
}

MEASUREMENT_MISSING = 29999  # machine_measurements' sentinel


@dataclasses.dataclass
class CohortConfig:
    """Every pairing window and label rule of the cohort, in one place."""

    lab_window_min: float = 60.0  # labs: closest value within ± this many minutes of ecg_time
    vitals_window_min: float = 30.0  # ED vitals
    omr_window_days: float = 30.0  # omr biometrics
    lab_tests: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_LAB_TESTS))
    min_lab_count: int = 200  # tests with fewer paired values are dropped (features and labels)
    min_label_count: int = 10  # a lab label is "selected" with >= this many positives and negatives
    #                           in each of the validation and test folds (kept either way, see meta)
    icd_max_length: int = 4  # ICD-10 codes truncated to this many characters ...
    icd_min_length: int = 3  # ... and propagated to every parent down to this length
    dx_min_count: int = 50  # diagnosis labels with fewer positive studies are dropped
    dx_margin_min: float = 0.0  # an ECG belongs to a stay from (admit - margin) to discharge
    report_statements: dict = dataclasses.field(default_factory=lambda: dict(REPORT_STATEMENTS))
    n_folds: int = 20
    val_fold: int = 18
    test_fold: int = 19


@dataclasses.dataclass
class Cohort:
    """The cohort table and the names of its column groups."""

    table: pd.DataFrame
    tab_names: list  # raw clinical features (NaN = missing)
    lab_tests: list
    lab_label_names: list  # <test>_low, <test>_high for each test; NaN = unknown
    dx_names: list  # icd:<code> and report:<statement>, 0/1
    lab_reference: dict  # test -> [median lower, median upper]
    lab_label_selected: list  # bool per lab label (enough positives/negatives in val and test)

    def meta(self) -> dict:
        return {"tab_names": self.tab_names, "lab_tests": self.lab_tests,
                "lab_label_names": self.lab_label_names, "dx_names": self.dx_names,
                "lab_reference": self.lab_reference, "lab_label_selected": self.lab_label_selected}


# ---------------------------------------------------------------------------------------------
# locating the roots

def find_roots(data_dir) -> tuple[Path, Path | None]:
    """(ECG root, clinical root) under one folder: the folders holding ``record_list.csv`` and
    ``hosp/patients.csv.gz``, found at any depth up to 5 (zip and wget layouts differ)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ECGKTError(f"{data_dir}: data folder not found")
    ecg = _find(data_dir, "record_list.csv")
    if ecg is None:
        raise ECGKTError(f"{data_dir}: no MIMIC-IV-ECG root (record_list.csv) found below this folder")
    clinical = _find(data_dir, "hosp/patients.csv.gz") or _find(data_dir, "hosp/patients.csv")
    if clinical is None:
        partial = next((hit for rel in CLINICAL_MARKERS for hit in [_find(data_dir, rel)] if hit is not None), None)
        if partial is not None:
            raise ECGKTError(f"{partial / 'hosp' / 'patients.csv.gz'}: missing; the MIMIC-IV tables beside it "
                             f"cannot be joined without it (or give --ecg-root alone for an ECG-only store)")
        warnings.warn(f"{data_dir}: no MIMIC-IV clinical tables (hosp/patients.csv.gz) below this folder; the store "
                      f"holds the ECG-side columns only (no clinical features, labs or ICD labels)", stacklevel=2)
    return ecg, clinical


def _find(root: Path, rel: str, depth: int = 5) -> Path | None:
    if (root / rel).exists():
        return root
    if depth == 0:
        return None
    # never walk the waveform tree (files/p1000/p10000032/...): hundreds of thousands of folders
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not re.fullmatch(r"p\d+", p.name)):
        hit = _find(child, rel, depth - 1)
        if hit is not None:
            return hit
    return None


# Tables (other than hosp/patients) whose presence shows a MIMIC-IV root.
CLINICAL_MARKERS = ("hosp/labevents.csv.gz", "hosp/labevents.csv", "hosp/admissions.csv.gz",
                    "hosp/admissions.csv", "hosp/omr.csv.gz", "hosp/omr.csv")
# The columns ecgkt reads from each table; a table without one is an error naming the file.
TABLE_COLUMNS = {
    "record_list.csv": ("subject_id", "study_id", "ecg_time", "path"),
    "machine_measurements.csv": ("study_id",),
    "hosp/patients.csv.gz": ("subject_id", "gender", "anchor_age", "anchor_year"),
    "hosp/admissions.csv.gz": ("subject_id", "hadm_id", "admittime", "dischtime"),
    "hosp/diagnoses_icd.csv.gz": ("hadm_id", "icd_code", "icd_version"),
    "hosp/omr.csv.gz": ("subject_id", "chartdate", "result_name", "result_value"),
    "ed/edstays.csv.gz": ("subject_id", "stay_id", "intime", "outtime"),
    "ed/vitalsign.csv.gz": ("subject_id", "charttime"),
    "ed/triage.csv.gz": ("subject_id", "stay_id"),
    "ed/diagnosis.csv.gz": ("stay_id", "icd_code", "icd_version"),
}
# Key columns: every value must be an integer (a row that cannot be joined is a broken table, not a skip).
ID_COLUMNS = ("subject_id", "study_id")
# Numeric columns: empty is allowed (missing), text is not.
NUMERIC_COLUMNS = ("hadm_id", "stay_id", "icd_version", "anchor_age", "anchor_year")


def _table(root: Path, rel: str, required: bool = True, **kw) -> pd.DataFrame | None:
    """A MIMIC table (``.csv.gz`` or plain ``.csv``), checked: every problem (unreadable or truncated file,
    malformed rows, a missing column, a key that is not an integer) is one ECGKTError naming the file."""
    for name in (rel, rel.removesuffix(".gz")):
        path = root / name
        if path.is_file():
            try:
                df = pd.read_csv(path, **kw)
            except (ValueError, pd.errors.ParserError, EOFError, OSError, zlib.error, csv.Error) as e:
                message = " ".join(str(e).split()) or type(e).__name__
                raise ECGKTError(f"{path}: cannot read table ({message})") from None
            _require(df, TABLE_COLUMNS.get(rel, ()), path)
            if rel == "record_list.csv" and len(df) == 0:
                raise ECGKTError(f"{path}: lists no records")
            return _check_keys(df, path)
    if required:
        raise ECGKTError(f"{root / rel}: required MIMIC table not found")
    return None


def _check_keys(df: pd.DataFrame, path) -> pd.DataFrame:
    for col in ID_COLUMNS + NUMERIC_COLUMNS:
        if col not in df.columns or pd.api.types.is_integer_dtype(df[col]):
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna()
        if col in ID_COLUMNS:
            bad |= df[col].isna()
        if not bad.any():
            bad = (num % 1 != 0) & num.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = df[col].iat[row]
            what = "is empty" if pd.isna(value) else f"{str(value)!r} is not an integer id"
            raise ECGKTError(f"{path}: row {row + 2}: {col} {what}")
        df[col] = num.astype(np.int64) if col in ID_COLUMNS else num
    return df


# ---------------------------------------------------------------------------------------------
# small pure helpers (tested on hand-built tables)

def subject_folds(subject_id, n_folds: int = 20) -> np.ndarray:
    """Fold 0..n_folds-1 of each subject from a fixed integer hash (splitmix64): the same subject
    always lands in the same fold, on every machine and for every cohort it appears in."""
    x = np.asarray(subject_id, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(n_folds)).astype(np.int64)


def pair_closest(ecgs: pd.DataFrame, events: pd.DataFrame, time_col: str, value_cols, window) -> pd.DataFrame:
    """For each ECG row (columns subject_id, ecg_time), the event of the same subject closest in
    time within ± ``window`` (a Timedelta), taken independently for each value column (an event
    with that value missing is not a candidate). Returns a frame aligned with ``ecgs``'s index.

    Ties follow pandas.merge_asof(direction="nearest"), which this replaces (its per-call overhead was
    most of the cohort's time): equally far before and after, the earlier event wins; of several events
    at the same time, the last listed before the ECG and the first listed after it."""
    subject = ecgs["subject_id"].to_numpy(dtype=np.int64)
    when = ecgs["ecg_time"].to_numpy(dtype="datetime64[ns]")
    timed = np.flatnonzero(~np.isnat(when))
    tolerance = pd.Timedelta(window).as_unit("ns").value
    ev_time = events[time_col].to_numpy(dtype="datetime64[ns]")
    out = {}
    for col in value_cols:
        ev_value = events[col].to_numpy(dtype=np.float64, na_value=np.nan)
        keep = ~np.isnan(ev_value) & ~np.isnat(ev_time)
        values = np.full(len(ecgs), np.nan)
        if keep.any() and len(timed):
            values[timed] = _nearest_values(subject[timed], when[timed].view(np.int64),
                                            events["subject_id"][keep].astype(np.int64).to_numpy(),
                                            ev_time[keep].view(np.int64), ev_value[keep], tolerance)
        out[col] = values
    return pd.DataFrame(out, index=ecgs.index)


def _nearest_values(subject, time, ev_subject, ev_time, ev_value, tolerance: int) -> np.ndarray:
    """pair_closest for one column, in int64 nanoseconds: one sorted key per (subject, time) pair (subject rank,
    then time rank), so that both neighbours of every ECG are two binary searches."""
    n = len(subject)
    _, s_code = np.unique(np.concatenate([subject, ev_subject]), return_inverse=True)
    times, t_code = np.unique(np.concatenate([time, ev_time]), return_inverse=True)
    key = s_code.astype(np.int64) * len(times) + t_code
    order = np.argsort(key[n:], kind="stable")  # events at the same time keep their listed order
    ev_key, ev_code, ev_time, ev_value = key[n:][order], s_code[n:][order], ev_time[order], ev_value[order]
    m = len(ev_key)
    before = np.searchsorted(ev_key, key[:n], side="right") - 1
    after = np.searchsorted(ev_key, key[:n], side="left")
    b, a = np.clip(before, 0, m - 1), np.clip(after, 0, m - 1)
    gap_before, gap_after = time - ev_time[b], ev_time[a] - time
    ok_before = (before >= 0) & (ev_code[b] == s_code[:n]) & (gap_before <= tolerance)
    ok_after = (after < m) & (ev_code[a] == s_code[:n]) & (gap_after <= tolerance)
    use_before = ok_before & ~(ok_after & (gap_after < gap_before))
    return np.where(use_before, ev_value[b], np.where(ok_after, ev_value[a], np.nan))


def reference_medians(rows: pd.DataFrame) -> tuple[float, float]:
    """Median ``ref_range_lower`` / ``ref_range_upper`` of a test, ignoring empty and 0/0 ranges."""
    lo = rows["ref_range_lower"].to_numpy(dtype=np.float64)
    hi = rows["ref_range_upper"].to_numpy(dtype=np.float64)
    blank = (lo == 0) & (hi == 0)
    lo, hi = lo[~blank], hi[~blank]
    lo, hi = lo[np.isfinite(lo)], hi[np.isfinite(hi)]
    return (float(np.median(lo)) if lo.size else float("nan"),
            float(np.median(hi)) if hi.size else float("nan"))


def abnormality_labels(values: np.ndarray, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) as float with NaN where unknown: low = value < lower, high = value > upper.
    A label is unknown when the value is missing or that side of the reference range is."""
    values = np.asarray(values, dtype=np.float64)
    low = np.where(values < lower, 1.0, 0.0)
    high = np.where(values > upper, 1.0, 0.0)
    low[np.isnan(values) | (not np.isfinite(lower))] = np.nan
    high[np.isnan(values) | (not np.isfinite(upper))] = np.nan
    return low, high


def icd_prefix_pairs(rows, codes, min_length: int = 3, max_length: int = 4) -> pd.DataFrame:
    """(row, ``icd:<prefix>``) pairs, unique: each ICD-10 code truncated to ``max_length`` characters
    and propagated to all its parents down to ``min_length`` (vectorised: MIMIC has millions)."""
    code = pd.Series(np.asarray(codes, dtype=object)).astype(str).str.strip().str.upper()
    code = code.str.replace(".", "", regex=False).str.slice(0, max_length)
    rows = np.asarray(rows)
    parts = [pd.DataFrame({"row": rows, "name": "icd:" + code.str.slice(0, n)})[code.str.len().to_numpy() >= n]
             for n in range(min_length, max_length + 1)]
    return pd.concat(parts, ignore_index=True).drop_duplicates().reset_index(drop=True)


def icd_prefixes(code: str, min_length: int = 3, max_length: int = 4) -> list[str]:
    """The labels one code gives: ``I48.91`` -> ``[I48, I489]``."""
    pairs = icd_prefix_pairs([0], [code], min_length, max_length)
    return [n.removeprefix("icd:") for n in pairs["name"]]


def parse_blood_pressure(text) -> tuple[float, float]:
    """``"120/80"`` -> (120.0, 80.0); anything else -> (nan, nan)."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$", str(text))
    return (float(m.group(1)), float(m.group(2))) if m else (float("nan"), float("nan"))


def fahrenheit(temperature: np.ndarray) -> np.ndarray:
    """ED temperatures are mostly °F with some °C: values between 25 and 45 are read as °C."""
    t = np.asarray(temperature, dtype=np.float64).copy()
    celsius = (t >= 25.0) & (t <= 45.0)
    t[celsius] = t[celsius] * 9.0 / 5.0 + 32.0
    return t


def drop_implausible(df: pd.DataFrame, ranges: dict) -> pd.DataFrame:
    df = df.copy()
    for col, (lo, hi) in ranges.items():
        if col in df:
            v = pd.to_numeric(df[col], errors="coerce")
            df[col] = v.where((v >= lo) & (v <= hi))
    return df


# ---------------------------------------------------------------------------------------------
# the cohort

def read_record_list(ecg_root) -> pd.DataFrame:
    """``record_list.csv``: one row per study (its first listing), in study_id order (the cohort's rows), with
    ``record``, the path of each record under ``ecg_root``."""
    ecg_root = Path(ecg_root)
    records = _table(ecg_root, "record_list.csv")
    _require(records, ("subject_id", "study_id", "ecg_time", "path"), ecg_root / "record_list.csv")
    records = records.drop_duplicates("study_id").sort_values("study_id", kind="stable").reset_index(drop=True)
    records["record"] = [str(ecg_root / p) for p in records["path"].astype(str)]
    return records


def build_cohort(ecg_root, clinical_root=None, config: CohortConfig | None = None,
                 progress: bool = False, records: pd.DataFrame | None = None) -> Cohort:
    """Join the MIMIC-IV-ECG root (and, when given, the MIMIC-IV root) into the cohort table. ``records``:
    :func:`read_record_list` of ``ecg_root``, when the caller has read it already."""
    cfg = config or CohortConfig()
    ecg_root = Path(ecg_root)
    if records is None:
        records = read_record_list(ecg_root)
    table = pd.DataFrame({
        "subject_id": records["subject_id"].astype(np.int64),
        "study_id": records["study_id"].astype(np.int64),
        "ecg_time": pd.to_datetime(records["ecg_time"], errors="coerce"),
        "record": records["record"].tolist(),
    })
    table["fold"] = subject_folds(table["subject_id"].to_numpy(), cfg.n_folds)

    measurements = _table(ecg_root, "machine_measurements.csv", required=False, low_memory=False)
    statements = pd.DataFrame(index=table.index)
    if measurements is not None:
        table, statements = _add_measurements(table, measurements, cfg)

    tab_names, lab_tests, lab_labels, dx_icd = [], [], [], pd.DataFrame(index=table.index)
    lab_reference: dict = {}
    if clinical_root is not None:
        clinical_root = Path(clinical_root)
        table = _add_demographics(table, clinical_root)
        tab_names += ["age", "sex"]
        table, lab_tests, lab_reference = _add_labs(table, clinical_root, cfg, progress)
        tab_names += [f"lab_{t}" for t in lab_tests]
        lab_labels = [f"{t}_{side}" for t in lab_tests for side in ("low", "high")]
        table = _add_vitals(table, clinical_root, cfg)
        tab_names += [f"vital_{v}" for v in VITALS]
        table = _add_biometrics(table, clinical_root, cfg)
        tab_names += [f"omr_{b}" for b in BIOMETRICS]
        dx_icd, linked, ed_linked = _icd_labels(table, clinical_root, cfg)
        table["dx_linked"] = linked  # inside a hospital admission or an ED stay: diagnosis labels exist
        table["dx_ed_linked"] = ed_linked  # inside an ED stay (the MDS-ED-like headline subset)

    dx = pd.concat([dx_icd, statements], axis=1)
    counts = dx.sum(axis=0)
    dx = dx.loc[:, counts >= cfg.dx_min_count].astype(np.float32)
    table = pd.concat([table, dx], axis=1)
    selected = _select_labels(table, lab_labels, cfg)
    return Cohort(table, tab_names, lab_tests, lab_labels, list(dx.columns), lab_reference, selected)


def _require(df, cols, where):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ECGKTError(f"{where}: missing column(s) {', '.join(missing)}")


def _add_measurements(table, mm, cfg):
    _require(mm, ("study_id",), "machine_measurements.csv")
    mm = mm.drop_duplicates("study_id").set_index("study_id")
    mm = mm.reindex(table["study_id"].to_numpy())

    def col(name):
        if name not in mm:
            return np.full(len(table), np.nan)
        v = pd.to_numeric(mm[name], errors="coerce").to_numpy(dtype=np.float64)
        return np.where(v == MEASUREMENT_MISSING, np.nan, v)

    table = table.copy()
    table["mm_rr"] = col("rr_interval")
    table["mm_pr"] = col("qrs_onset") - col("p_onset")
    table["mm_qrs"] = col("qrs_end") - col("qrs_onset")
    table["mm_qt"] = col("t_end") - col("qrs_onset")
    for axis in ("p_axis", "qrs_axis", "t_axis"):
        table[f"mm_{axis}"] = col(axis)
    report_cols = [c for c in mm.columns if re.fullmatch(r"report_\d+", str(c))]
    if report_cols:
        parts = mm[report_cols].astype("string").fillna("")
        text = parts[report_cols[0]]
        for c in report_cols[1:]:  # column by column: a row-wise " | ".join took most of this function's time
            text = text + " | " + parts[c]
        text = text.astype("str").str.lower()
    else:
        text = pd.Series("", index=mm.index)
    table["report"] = text.to_numpy()
    statements = pd.DataFrame(index=table.index)
    for name, pattern in cfg.report_statements.items():
        pattern = re.sub(r"\((?!\?)", "(?:", pattern)  # groups only group here
        statements[f"report:{name}"] = text.str.contains(pattern, regex=True).to_numpy().astype(np.float32)
    return table, statements


def _add_demographics(table, root):
    patients = _table(root, "hosp/patients.csv.gz")
    _require(patients, ("subject_id", "gender", "anchor_age", "anchor_year"), root / "hosp/patients.csv.gz")
    p = patients.drop_duplicates("subject_id").set_index("subject_id").reindex(table["subject_id"].to_numpy())
    year = table["ecg_time"].dt.year.to_numpy(dtype=np.float64)
    age = p["anchor_age"].to_numpy(dtype=np.float64) + (year - p["anchor_year"].to_numpy(dtype=np.float64))
    table = table.copy()
    table["age"] = np.clip(age, 0, 91)  # MIMIC caps ages at 91
    sex = p["gender"].astype("string").str.upper()
    table["sex"] = np.where(sex == "M", 1.0, np.where(sex == "F", 0.0, np.nan))  # 1 = male
    return table


def _add_labs(table, root, cfg, progress):
    item_to_test = {int(i): t for t, ids in cfg.lab_tests.items() for i in ids}
    lab_path = next((root / n for n in ("hosp/labevents.csv.gz", "hosp/labevents.csv") if (root / n).is_file()),
                    root / "hosp/labevents.csv.gz")
    labs = read_labevents(lab_path, item_to_test, progress=progress)
    labs["num"] = numeric_values(labs)
    window = pd.Timedelta(minutes=cfg.lab_window_min)
    itemid = labs["itemid"].to_numpy()
    columns, kept, reference, dropped = {}, [], {}, []
    for test in cfg.lab_tests:
        rows = labs[np.isin(itemid, cfg.lab_tests[test])]
        paired = pair_closest(table, rows, "charttime", ["num"], window)["num"].to_numpy()
        n = int(np.isfinite(paired).sum())
        if n < cfg.min_lab_count:
            dropped.append(f"{test} ({n})")
            continue
        lo, hi = reference_medians(rows)
        low, high = abnormality_labels(paired, lo, hi)
        columns[f"lab_{test}"], columns[f"{test}_low"], columns[f"{test}_high"] = paired, low, high
        kept.append(test)
        reference[test] = [lo, hi]
    if dropped:
        warnings.warn(f"lab tests with fewer than {cfg.min_lab_count} paired values dropped: "
                      f"{', '.join(dropped)}", stacklevel=3)
    # one concat, not three column inserts per test (each insert rebuilds the column index)
    return pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1), kept, reference


def _add_vitals(table, root, cfg):
    stays = _table(root, "ed/edstays.csv.gz", required=False)
    table = table.copy()
    if stays is None:
        for v in VITALS:
            table[f"vital_{v}"] = np.nan
        return table
    frames = []
    vs = _table(root, "ed/vitalsign.csv.gz", required=False)
    if vs is not None:
        frames.append(vs.assign(time=pd.to_datetime(vs["charttime"], errors="coerce")))
    triage = _table(root, "ed/triage.csv.gz", required=False)
    if triage is not None:
        intime = stays.set_index("stay_id")["intime"]
        triage = triage.assign(time=pd.to_datetime(triage["stay_id"].map(intime), errors="coerce"))
        frames.append(triage)
    events = pd.concat([f[["subject_id", "time", *[v for v in VITALS if v in f]]] for f in frames],
                       ignore_index=True) if frames else pd.DataFrame(columns=["subject_id", "time", *VITALS])
    for v in VITALS:
        if v not in events:
            events[v] = np.nan
        events[v] = pd.to_numeric(events[v], errors="coerce")
    events["temperature"] = fahrenheit(events["temperature"].to_numpy())
    events = drop_implausible(events, VITAL_RANGES)
    paired = pair_closest(table, events, "time", VITALS, pd.Timedelta(minutes=cfg.vitals_window_min))
    for v in VITALS:
        table[f"vital_{v}"] = paired[v].to_numpy()
    return table


def _add_biometrics(table, root, cfg):
    omr = _table(root, "hosp/omr.csv.gz", required=False)
    table = table.copy()
    if omr is None:
        for b in BIOMETRICS:
            table[f"omr_{b}"] = np.nan
        return table
    name = omr["result_name"].astype(str).str.lower()
    value = omr["result_value"].astype(str)
    num = pd.to_numeric(value, errors="coerce")
    events = pd.DataFrame({"subject_id": omr["subject_id"].astype(np.int64),
                           "time": pd.to_datetime(omr["chartdate"], errors="coerce")})
    for b in BIOMETRICS:
        events[b] = np.nan
    events.loc[name.str.startswith("bmi"), "bmi"] = num
    kg = name.str.startswith("weight") & name.str.contains("kg")
    lbs = name.str.startswith("weight") & ~kg
    events.loc[lbs, "weight"] = num[lbs] * 0.45359237
    events.loc[kg, "weight"] = num[kg]
    cm = name.str.startswith("height") & name.str.contains("cm")
    inches = name.str.startswith("height") & ~cm
    events.loc[inches, "height"] = num[inches] * 2.54
    events.loc[cm, "height"] = num[cm]
    bp = name.str.startswith("blood pressure")
    if bp.any():
        parsed = np.array([parse_blood_pressure(t) for t in value[bp]], dtype=np.float64).reshape(-1, 2)
        events.loc[bp, "sbp"] = parsed[:, 0]
        events.loc[bp, "dbp"] = parsed[:, 1]
    events = drop_implausible(events, BIOMETRIC_RANGES)
    events.loc[events["dbp"] >= events["sbp"], ["sbp", "dbp"]] = np.nan
    paired = pair_closest(table, events, "time", BIOMETRICS, pd.Timedelta(days=cfg.omr_window_days))
    for b in BIOMETRICS:
        table[f"omr_{b}"] = paired[b].to_numpy()
    return table


def _icd_labels(table, root, cfg):
    """ICD-10 labels of the hospital admission and ED stay each ECG falls in; also whether the ECG lies in any
    stay, and in an ED stay."""
    margin = pd.Timedelta(minutes=cfg.dx_margin_min)
    ecgs = table[["subject_id", "ecg_time"]].assign(_row=np.arange(len(table)))
    linked_codes = []
    linked = np.zeros(len(table), dtype=bool)
    ed_linked = np.zeros(len(table), dtype=bool)
    sources = [("hosp/admissions.csv.gz", "hosp/diagnoses_icd.csv.gz", "hadm_id", "admittime", "dischtime"),
               ("ed/edstays.csv.gz", "ed/diagnosis.csv.gz", "stay_id", "intime", "outtime")]
    for stays_rel, dx_rel, key, start, end in sources:
        stays = _table(root, stays_rel, required=False)
        dx = _table(root, dx_rel, required=False, dtype={"icd_code": str})
        if stays is None or dx is None:
            continue
        stays = stays[["subject_id", key, start, end]].dropna(subset=[key])
        stays[start] = pd.to_datetime(stays[start], errors="coerce")
        stays[end] = pd.to_datetime(stays[end], errors="coerce")
        hit = ecgs.merge(stays, on="subject_id")
        hit = hit[(hit["ecg_time"] >= hit[start] - margin) & (hit["ecg_time"] <= hit[end])]
        linked[hit["_row"].to_numpy()] = True
        if key == "stay_id":
            ed_linked[hit["_row"].to_numpy()] = True
        dx = dx[dx["icd_version"] == 10][[key, "icd_code"]]
        codes = hit[["_row", key]].merge(dx, on=key)[["_row", "icd_code"]]
        linked_codes.append(codes)
    labels = pd.DataFrame(index=table.index)
    if not linked_codes:
        return labels, linked, ed_linked
    codes = pd.concat(linked_codes, ignore_index=True)
    long = icd_prefix_pairs(codes["_row"], codes["icd_code"], cfg.icd_min_length, cfg.icd_max_length)
    counts = long["name"].value_counts()
    names = sorted(counts.index[counts >= cfg.dx_min_count])  # thresholded before densifying
    if not names:
        return labels, linked, ed_linked
    long = long[long["name"].isin(names)]
    dense = np.zeros((len(table), len(names)), dtype=np.float32)
    dense[long["row"].to_numpy(), pd.Index(names).get_indexer(long["name"])] = 1.0
    return pd.DataFrame(dense, index=table.index, columns=names), linked, ed_linked


def _select_labels(table, names, cfg):
    """A lab label is 'selected' when it has >= min_label_count positives and negatives in both
    the validation and the test fold (the lineage's rule); unselected labels stay in the table."""
    fold = table["fold"].to_numpy()
    in_fold = [fold == f for f in (cfg.val_fold, cfg.test_fold)]
    selected = []
    for name in names:
        ok = True
        values = table[name].to_numpy(dtype=np.float64)
        for rows in in_fold:
            y = values[rows]
            y = y[np.isfinite(y)]
            ok &= bool((y == 1).sum() >= cfg.min_label_count and (y == 0).sum() >= cfg.min_label_count)
        selected.append(ok)
    return selected

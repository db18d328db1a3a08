"""A hand-built, MIMIC-shaped dataset with known answers, for the data-layer tests.

Every table has MIMIC's file name and columns; the values are chosen so that each pairing window
and label rule has one right answer (listed in EXPECTED).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]

A, B, C = 10000032, 10000084, 10000117
ECGS = [  # study_id, subject_id, ecg_time
    (40000001, A, "2180-07-23 10:00:00"),
    (40000002, A, "2180-07-25 08:00:00"),
    (40000003, B, "2160-01-01 12:00:00"),
    (40000004, C, "2170-05-05 00:30:00"),
]


def record_rel_path(subject_id: int, study_id: int) -> str:
    return f"files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/{study_id}"


def write_mimic_record(ecg_root: Path, subject_id: int, study_id: int, frames: np.ndarray,
                       lead_names=MIMIC_LEADS, fs: int = 500) -> Path:
    """A format-16 record laid out exactly like MIMIC-IV-ECG's; ``frames`` is int16 [T, n_sig]."""
    base = ecg_root / record_rel_path(subject_id, study_id)
    base.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype="<i2")
    frames.tofile(f"{base}.dat")
    lines = [f"{study_id} {frames.shape[1]} {fs} {frames.shape[0]} 10:00:00 23/07/2180"]
    for k, name in enumerate(lead_names):
        checksum = int(frames[:, k].sum(dtype=np.int64)) & 0xFFFF  # 16-bit signed, as WFDB writes it
        checksum -= 65536 if checksum > 32767 else 0
        lines.append(f"{study_id}.dat 16 200.0(0)/mV 16 0 {int(frames[0, k])} {checksum} 0 {name}")
    lines.append(f"# {subject_id}: N")
    Path(f"{base}.hea").write_text("\n".join(lines) + "\n")
    return base


def random_frames(seed: int, n: int = 5000, n_sig: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.integers(-3000, 3000, size=(n, n_sig)).astype(np.int16)
    frames[:, :] += (np.arange(n_sig) * 100).astype(np.int16)  # each lead recognisable by its offset
    return frames


def write_tiny(root: Path, corrupt: bool = True, n_samples: int = 5000) -> dict:
    """Write the dataset under ``root`` (``mimic-iv-ecg/`` and ``mimic-iv/``); returns the frames
    written per study (MIMIC lead order)."""
    ecg = root / "mimic-iv-ecg"
    hosp = root / "mimic-iv" / "hosp"
    ed = root / "mimic-iv" / "ed"
    for d in (ecg, hosp, ed):
        d.mkdir(parents=True, exist_ok=True)
    frames = {}
    rows = []
    for k, (study, subject, t) in enumerate(ECGS):
        frames[study] = random_frames(k, n_samples)
        frames[study][100:150, 3] = -32768  # a run of missing samples in aVR
        if k == 1:
            frames[study][:, 7] = 12  # a flat V2: useless but valid, stored as recorded
        write_mimic_record(ecg, subject, study, frames[study])
        rows.append((subject, study, f"{study}", t, record_rel_path(subject, study)))
    if corrupt:
        # a truncated record and one whose files are missing: both must be skipped, with reasons
        base = write_mimic_record(ecg, C, 40000005, random_frames(9, n_samples))
        with open(f"{base}.dat", "r+b") as f:
            f.truncate(1000)
        rows.append((C, 40000005, "40000005", "2170-05-06 00:00:00", record_rel_path(C, 40000005)))
        rows.append((C, 40000006, "40000006", "2170-05-07 00:00:00", record_rel_path(C, 40000006)))
    pd.DataFrame(rows, columns=["subject_id", "study_id", "file_name", "ecg_time", "path"]).to_csv(
        ecg / "record_list.csv", index=False)

    mm = pd.DataFrame({"subject_id": [r[0] for r in rows], "study_id": [r[1] for r in rows],
                       "cart_id": 6848296, "ecg_time": [r[3] for r in rows]})
    for i in range(18):
        mm[f"report_{i}"] = None
    mm.loc[0, "report_0"], mm.loc[0, "report_1"] = "Sinus rhythm", "Left bundle branch block"
    mm.loc[1, "report_0"], mm.loc[1, "report_2"] = "Atrial fibrillation", "Abnormal ECG"
    mm.loc[2, "report_0"] = "Sinus tachycardia"
    mm["bandwidth"], mm["filtering"] = "0.005-150 Hz", "60 Hz notch Baseline filter"
    mm["rr_interval"], mm["p_onset"], mm["p_end"] = 857, 40, 150
    mm["qrs_onset"], mm["qrs_end"], mm["t_end"] = 200, 290, 600
    mm["p_axis"], mm["qrs_axis"], mm["t_axis"] = 60, 30, 45
    mm.loc[0, "p_onset"] = 29999  # missing P: PR unknown
    mm.to_csv(ecg / "machine_measurements.csv", index=False)

    pd.DataFrame({"subject_id": [A, B, C], "gender": ["M", "F", "F"], "anchor_age": [50, 70, 30],
                  "anchor_year": [2180, 2150, 2170], "anchor_year_group": "2011 - 2013", "dod": None}
                 ).to_csv(hosp / "patients.csv.gz", index=False)

    lab_cols = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
                "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag",
                "priority", "comments"]
    labs = [  # subject, itemid, charttime, value, valuenum, lower, upper
        (A, 50971, "2180-07-23 09:20:00", "3.0", 3.0, 3.5, 5.0),  # 40 min before s1: the pair (low)
        (A, 50971, "2180-07-23 10:50:00", "5.8", 5.8, 3.5, 5.1),  # 50 min after: farther
        (A, 50971, "2180-07-23 10:05:00", "___", None, None, None),  # closest, but no value
        (A, 50971, "2180-07-25 09:30:00", "6.0", 6.0, 3.3, 5.1),  # 90 min after s2: outside ±60
        (B, 50971, "2160-01-01 12:59:00", "6.1", 6.1, 0, 0),  # s3: high; 0/0 range ignored
        (B, 50822, "2160-01-01 10:55:00", "4.0", 4.0, None, None),  # whole-blood K, 65 min: outside
        (A, 51003, "2180-07-23 10:10:00", "<0.01", None, None, 0.01),  # troponin text: 0.01, not high
        (B, 51003, "2160-01-01 12:30:00", "0.35", 0.35, None, 0.01),  # high
        (C, 50983, "2170-05-05 00:00:00", "140", 140.0, 133, 145),  # sodium, normal
        (A, 50983, "2180-07-23 10:00:00", "125", 125.0, 133, 145),  # low
    ]
    lab = pd.DataFrame([(i + 1, s, None, i, item, None, t, t, v, vn, "mEq/L", lo, hi, None, "ROUTINE", None)
                        for i, (s, item, t, v, vn, lo, hi) in enumerate(labs)], columns=lab_cols)
    lab.loc[0, "comments"] = "Hemolysis, \"slight\".\nRepeat advised, 2nd line"  # quoted, multi-line
    # rows of an item not in use: must be filtered out
    lab.loc[len(lab)] = [99, A, None, 99, 99999, None, "2180-07-23 10:00:00", None, "1", 1.0, "", None, None,
                         None, None, None]
    lab.to_csv(hosp / "labevents.csv.gz", index=False)
    pd.DataFrame({"itemid": [50971, 50822, 51003, 50983], "label": ["Potassium", "Potassium, Whole Blood",
                                                                     "Troponin T", "Sodium"],
                  "fluid": "Blood", "category": "Chemistry"}).to_csv(hosp / "d_labitems.csv.gz", index=False)

    omr = pd.DataFrame([
        (A, "2180-07-01", 1, "BMI (kg/m2)", "31.2"),
        (A, "2180-07-01", 1, "Weight (Lbs)", "200"),
        (A, "2180-07-01", 1, "Blood Pressure", "130/85"),
        (A, "2180-05-01", 1, "Height (Inches)", "70"),  # 83 days before s1: outside ±30 days
        (B, "2160-01-10", 1, "Blood Pressure Sitting", "80/120"),  # diastolic above systolic: dropped
        (B, "2160-01-10", 1, "Height (Inches)", "64"),
        (B, "2160-01-11", 1, "eGFR", ">60"),
    ], columns=["subject_id", "chartdate", "seq_num", "result_name", "result_value"])
    omr.to_csv(hosp / "omr.csv.gz", index=False)

    pd.DataFrame({"subject_id": [A, A], "hadm_id": [20000001, 20000002],
                  "admittime": ["2180-07-23 08:00:00", "2190-01-01 00:00:00"],
                  "dischtime": ["2180-07-24 12:00:00", "2190-01-02 00:00:00"], "deathtime": None,
                  "admission_type": "EW EMER.", "admission_location": "EMERGENCY ROOM"}
                 ).to_csv(hosp / "admissions.csv.gz", index=False)
    pd.DataFrame({"subject_id": [A, A, A], "hadm_id": [20000001, 20000001, 20000002], "seq_num": [1, 2, 1],
                  "icd_code": ["I4891", "4019", "E875"], "icd_version": [10, 9, 10]}
                 ).to_csv(hosp / "diagnoses_icd.csv.gz", index=False)
    pd.DataFrame({"icd_code": ["I4891", "4019", "E875"], "icd_version": [10, 9, 10],
                  "long_title": ["Unspecified atrial fibrillation", "Hypertension", "Hyperkalemia"]}
                 ).to_csv(hosp / "d_icd_diagnoses.csv.gz", index=False)

    pd.DataFrame({"subject_id": [A, B], "hadm_id": [20000001, None], "stay_id": [30000001, 30000002],
                  "intime": ["2180-07-23 09:00:00", "2160-01-01 11:00:00"],
                  "outtime": ["2180-07-23 14:00:00", "2160-01-01 11:50:00"], "gender": ["M", "F"],
                  "race": "WHITE", "arrival_transport": "WALK IN", "disposition": "ADMITTED"}
                 ).to_csv(ed / "edstays.csv.gz", index=False)
    pd.DataFrame([
        (A, 30000001, "2180-07-23 09:45:00", 37.0, 80, 16, 98, 120, 70, None, 0),  # °C: 98.6 °F
        (A, 30000001, "2180-07-23 10:20:00", 101.0, 400, 18, 105, 125, 75, None, 0),  # HR, o2sat implausible
        (B, 30000002, "2160-01-01 11:40:00", 98.0, 110, 20, 95, 100, 60, None, 0),  # 20 min before s3
    ], columns=["subject_id", "stay_id", "charttime", "temperature", "heartrate", "resprate", "o2sat", "sbp",
                "dbp", "rhythm", "pain"]).to_csv(ed / "vitalsign.csv.gz", index=False)
    pd.DataFrame({"subject_id": [A, B], "stay_id": [30000001, 30000002], "temperature": [99.0, 97.0],
                  "heartrate": [90, 100], "resprate": [18, 18], "o2sat": [97, 96], "sbp": [140, 90],
                  "dbp": [90, 50], "pain": [0, 2], "acuity": [2, 3], "chiefcomplaint": ["Chest pain", "Fall"]}
                 ).to_csv(ed / "triage.csv.gz", index=False)
    pd.DataFrame({"subject_id": [A, B], "stay_id": [30000001, 30000002], "seq_num": [1, 1],
                  "icd_code": ["R079", "W19XXXA"], "icd_version": [10, 10],
                  "icd_title": ["Chest pain, unspecified", "Fall"]}).to_csv(ed / "diagnosis.csv.gz", index=False)
    return frames

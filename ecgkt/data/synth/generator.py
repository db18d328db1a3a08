"""``generate``: simulate, render, write every table, and the ground truth beside them."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import ECGKTError
from . import coding, mimic_clinical, mimic_ecg
from .common import write_csv
from .config import SynthConfig
from .population import Simulation, simulate

VECTOR_WAVES = ("p", "q", "r", "s", "rp", "st", "t", "u", "j", "pvc", "pvc_t")  # dipoles (n, 3) of the beat model


def _truth(sim: Simulation, rr: np.ndarray, codes, hadm: np.ndarray, stay: np.ndarray) -> pd.DataFrame:
    """Ground truth per study (not part of MIMIC): the latent state and true lab values, the true
    conditions and the codes written, and every beat-model parameter of the rendered ECG. Where a
    latent subject flag and the rendered ECG parameter share a name (rbbb, lbbb, avb1), the ECG
    parameter keeps the name and the latent flag becomes ``latent_<name>``."""
    e = sim.ecgs
    true = coding.conditions(sim.enc, sim.ecg)
    names = [c for c, _, _ in coding.ICD10]
    cols = {"subject_id": e["subject_id"], "study_id": e["study_id"], "kind": e["kind"],
            "encounter_study_id": e["study_id"].to_numpy()[e["encounter"].to_numpy()],
            "nan_run": e["nan_run"], "flat_lead": e["flat_lead"], "noisy": e["noisy"], "measured_rr": rr,
            "hadm_id": pd.array(hadm, dtype="Int64"), "stay_id": pd.array(stay, dtype="Int64"),
            "icd_codes": [" ".join(c) for c in codes],
            "icd_true": [" ".join(names[j] for j in np.flatnonzero(row)) for row in true]}
    for k, v in sim.ecg.items():
        v = np.asarray(v)
        if v.ndim == 1 and k not in cols:
            cols[k] = v
    for k, v in sim.enc.items():
        v = np.asarray(v)
        if v.ndim == 1:
            cols[f"latent_{k}" if k in cols else k] = v
    for k in VECTOR_WAVES:
        for a, name in enumerate("xyz"):
            cols[f"{k}_vec_{name}"] = sim.ecg[f"{k}_vec"][:, a]
    df = pd.DataFrame(cols)
    df.loc[df["hadm_id"] == 0, "hadm_id"] = pd.NA
    df.loc[df["stay_id"] == 0, "stay_id"] = pd.NA
    return df


# ------------------------------------------------------------------------------------------------
def generate(out_dir, patients: int = 1000, seed: int = 0, config: SynthConfig | None = None,
             progress: bool = True, overwrite: bool = False, jobs: int | None = None) -> dict:
    """Write the synthetic MIMIC-IV-ECG and MIMIC-IV roots under ``out_dir``; returns a summary.

    ``jobs`` processes render the waveforms (default: up to 2, the CPUs available); the output
    does not depend on it.
    """
    if jobs is None:
        jobs = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    cfg = config or SynthConfig()
    out = Path(out_dir)
    ecg_root, clin_root = out / "mimic-iv-ecg", out / "mimic-iv"
    for root in (ecg_root, clin_root):
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise ECGKTError(f"{root} already exists and is not empty (pass --overwrite to replace it)")
            shutil.rmtree(root)
    t0 = time.perf_counter()
    sim = simulate(patients, seed, cfg)
    t_sim = time.perf_counter() - t0
    if cfg.waveforms:  # a record's mean RR and premature beats follow from the draws of its beats alone
        stats = mimic_ecg.beat_stats(sim)
        rr, sim.ecg["pvc_count"] = stats[:, 0], stats[:, 1].astype(int)
    else:  # no records: the expected values
        rr = sim.ecg["rr"].copy()
        sim.ecg["pvc_count"] = np.rint(sim.ecg["pvc_rate"] * 10000 / rr).astype(int)
    tables = {}

    def write_tables():  # needs no record: written while the records render
        codes = coding.diagnoses(np.random.default_rng([seed, 37, 1]), sim.enc, sim.ecg, cfg)
        enc_tables, hadm, stay, intime, outtime, _ = mimic_clinical.encounter_tables(sim, codes)
        tables.update(enc_tables)
        tables["hosp/labevents"] = mimic_clinical.labevents(sim, hadm)
        tables["hosp/d_labitems"] = mimic_clinical.d_labitems()
        tables["hosp/omr"] = mimic_clinical.omr(sim)
        tables["hosp/patients"] = mimic_clinical.patients(sim)
        tables["ed/vitalsign"], tables["ed/triage"] = mimic_clinical.ed_vitals(sim, stay, intime, outtime)
        for name, df in tables.items():
            write_csv(df, clin_root / f"{name}.csv.gz", gz=True)
        mimic_ecg.write_ecg_tables(sim, rr, ecg_root)
        write_csv(_truth(sim, rr, codes, hadm, stay), out / "synth_truth.csv.gz", gz=True)

    if cfg.waveforms:
        mimic_ecg.write_waveforms(sim, ecg_root, progress=progress, jobs=jobs, meanwhile=write_tables)
    else:
        write_tables()
    t_wave = time.perf_counter() - t0 - t_sim
    elapsed = time.perf_counter() - t0
    summary = {
        "out_dir": str(out), "seed": seed, "patients": patients, "records": len(sim.ecgs),
        "labevents": len(tables["hosp/labevents"]), "ed_stays": len(tables["ed/edstays"]),
        "admissions": len(tables["hosp/admissions"]), "seconds": round(elapsed, 2),
        "waveform_seconds": round(t_wave, 2),  # records, and the tables written meanwhile
        "records_per_s": round(len(sim.ecgs) / elapsed, 1), "jobs": jobs,
        "rules": cfg.rules,
    }
    timing = ("out_dir", "seconds", "waveform_seconds", "records_per_s", "jobs")
    stable = {k: v for k, v in summary.items() if k not in timing}
    (out / "synth_summary.json").write_text(json.dumps(stable, indent=1, sort_keys=True) + "\n")
    return summary



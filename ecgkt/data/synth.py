"""Synthetic MIMIC-shaped dataset: ``ecgkt synth --out DIR --patients N --seed S``.

Writes ``DIR/mimic-iv-ecg/`` (record_list.csv, machine_measurements.csv, WFDB records under
files/pNNNN/pNNNNNNNN/sNNNNNNNN/) and ``DIR/mimic-iv/`` (hosp/ and ed/ csv.gz tables) with the
names, columns, formats and quirks of the real releases (see ``shared/docs/mimic.md``), so the
loaders read it exactly as they would read MIMIC. A latent patient state drives every table and
the waveforms through the rules in :mod:`ecgkt.data.physiology`. ``DIR/synth_truth.csv.gz``
(outside both roots) keeps the true state and beat-model parameters of every study for checks.

Deterministic: the same seed and config give the same files, byte for byte.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ECGKTError
from . import ecg_synth, physiology

MISSING = 29999  # machine_measurements sentinel
N_REPORTS = 18


@dataclasses.dataclass
class SynthConfig:
    """Knobs of the generator; the defaults give MIMIC-like proportions."""

    rules: dict = dataclasses.field(default_factory=dict)  # physiology rule -> scale (0 = off)
    ecgs_per_patient_p: float = 0.45  # ECGs per patient ~ 1 + Geometric(p) - 1, capped
    max_ecgs_per_patient: int = 8
    p_ed: float = 0.65  # share of ECGs taken in the ED (others: inpatient 0.15, outpatient rest)
    p_inpatient: float = 0.15
    lab_near_prob: float = 0.8  # a drawn panel falls within +-55 min of the ECG, else hours away
    p_bad_clock_cart: float = 0.05  # carts whose clock is an hour off (pairing window misses)
    p_omr: float = 0.6  # subjects with any omr biometrics
    code_sensitivity: float = 0.85  # P(true condition coded)
    code_false_rate: float = 0.01  # P(code present without the condition)
    statement_miss_rate: float = 0.05
    statement_false_rate: float = 0.3  # among missed rhythm statements, share misread as AF
    noise_scale: float = 1.0
    p_mains: float = 0.1
    p_nan_run: float = 0.01
    p_flat_lead: float = 0.01
    p_deid_value: float = 0.004  # lab value '___'
    p_empty_range: float = 0.02
    p_flag_disagree: float = 0.02
    p_celsius: float = 0.03  # ED temperatures charted in degC
    p_icd9: float = 0.03  # admissions coded in ICD-9
    p_serial_ecg: float = 0.12  # ED encounters with a second ECG 15-150 min after the first
    chunk_records: int = 200  # records rendered together (fixed: part of the random stream)
    waveforms: bool = True

    def __post_init__(self):
        self.rules = physiology.check_rules(self.rules)


# itemid, encounter key, label, fluid, category, unit, decimals, noise sd, relative noise?,
# reference range, alternative range (other rows of the same test), panel
LAB_ITEMS = [
    (50971, "k", "Potassium", "Blood", "Chemistry", "mEq/L", 1, 0.08, False, (3.3, 5.1), (3.5, 5.3), "bmp"),
    (50983, "na", "Sodium", "Blood", "Chemistry", "mEq/L", 0, 1.0, False, (133, 145), (135, 145), "bmp"),
    (50902, "cl", "Chloride", "Blood", "Chemistry", "mEq/L", 0, 1.0, False, (96, 108), (98, 107), "bmp"),
    (50882, "bicarb", "Bicarbonate", "Blood", "Chemistry", "mEq/L", 0, 1.0, False, (22, 32), (21, 31), "bmp"),
    (50868, "ag", "Anion Gap", "Blood", "Chemistry", "mEq/L", 0, 1.0, False, (8, 20), (10, 18), "bmp"),
    (50931, "glucose", "Glucose", "Blood", "Chemistry", "mg/dL", 0, 0.03, True, (70, 100), (70, 105), "bmp"),
    (50912, "creat", "Creatinine", "Blood", "Chemistry", "mg/dL", 1, 0.04, True, (0.5, 1.2), (0.4, 1.1), "bmp"),
    (51006, "bun", "Urea Nitrogen", "Blood", "Chemistry", "mg/dL", 0, 0.05, True, (6, 20), (8, 23), "bmp"),
    (50893, "ca", "Calcium, Total", "Blood", "Chemistry", "mg/dL", 1, 0.1, False, (8.4, 10.3), (8.5, 10.5), "bmp"),
    (51222, "hb", "Hemoglobin", "Blood", "Hematology", "g/dL", 1, 0.15, False, (13.7, 17.5), (11.2, 15.7), "cbc"),
    (51221, "hct", "Hematocrit", "Blood", "Hematology", "%", 1, 0.5, False, (40.0, 51.0), (34.0, 45.0), "cbc"),
    (51265, "plt", "Platelet Count", "Blood", "Hematology", "K/uL", 0, 0.05, True, (150, 400), (150, 440), "cbc"),
    (51301, "wbc", "White Blood Cells", "Blood", "Hematology", "K/uL", 1, 0.04, True, (4.0, 10.0), (4.0, 11.0), "cbc"),
    (51277, "rdw", "RDW", "Blood", "Hematology", "%", 1, 0.2, False, (10.5, 15.5), (11.5, 14.5), "cbc"),
    (50960, "mg", "Magnesium", "Blood", "Chemistry", "mg/dL", 1, 0.05, False, (1.6, 2.6), (1.7, 2.4), "mgphos"),
    (50970, "phos", "Phosphate", "Blood", "Chemistry", "mg/dL", 1, 0.1, False, (2.7, 4.5), (2.5, 4.5), "mgphos"),
    (51003, "tnt", "Troponin T", "Blood", "Chemistry", "ng/mL", 2, 0.08, True, (0.0, 0.01), (0.0, 0.01), "cardiac"),
    (50911, "ckmb", "Creatine Kinase, MB Isoenzyme", "Blood", "Chemistry", "ng/mL", 0, 0.08, True, (0, 10), (0, 6),
     "cardiac"),
    (50910, "ck", "Creatine Kinase (CK)", "Blood", "Chemistry", "IU/L", 0, 0.05, True, (51, 294), (39, 308), "cardiac"),
    (50963, "bnp", "NTproBNP", "Blood", "Chemistry", "pg/mL", 0, 0.05, True, (0, 353), (0, 900), "bnp"),
    (50889, "crp", "C-Reactive Protein", "Blood", "Chemistry", "mg/L", 1, 0.05, True, (0.0, 5.0), (0.0, 5.0), "crp"),
    (50861, "alt", "Alanine Aminotransferase (ALT)", "Blood", "Chemistry", "IU/L", 0, 0.05, True, (0, 40), (0, 35),
     "lft"),
    (50878, "ast", "Asparate Aminotransferase (AST)", "Blood", "Chemistry", "IU/L", 0, 0.05, True, (0, 40), (0, 32),
     "lft"),
    (50863, "alp", "Alkaline Phosphatase", "Blood", "Chemistry", "IU/L", 0, 0.05, True, (35, 105), (40, 130), "lft"),
    (50862, "albumin", "Albumin", "Blood", "Chemistry", "g/dL", 1, 0.1, False, (3.5, 5.2), (3.4, 5.4), "lft"),
    (50820, "ph", "pH", "Blood", "Blood Gas", "units", 2, 0.01, False, (7.35, 7.45), (7.35, 7.45), "gas"),
    (50813, "lactate", "Lactate", "Blood", "Blood Gas", "mmol/L", 1, 0.05, True, (0.5, 2.0), (0.5, 2.2), "gas"),
    (50808, "free_ca", "Free Calcium", "Blood", "Blood Gas", "mmol/L", 2, 0.02, False, (1.12, 1.32), (1.1, 1.3),
     "gas"),
    (50822, "k", "Potassium, Whole Blood", "Blood", "Blood Gas", "mEq/L", 1, 0.1, False, (3.5, 5.3), (3.3, 5.1), "gas"),
]
PANELS = ("bmp", "cbc", "mgphos", "cardiac", "bnp", "crp", "lft", "gas")
LAB_NORMAL = {"k": 4.2, "na": 140, "cl": 102, "bicarb": 24, "glucose": 100, "creat": 0.9, "bun": 14, "ca": 9.4,
              "hb": 13.5, "hct": 40.5, "plt": 245, "wbc": 7.6, "rdw": 13.4, "mg": 2.0, "phos": 3.5, "tnt": 0.004,
              "ckmb": 2.0, "ck": 120, "bnp": 90, "crp": 3.0, "alt": 24, "ast": 25, "alp": 80, "albumin": 4.1,
              "ph": 7.4, "lactate": 1.2, "free_ca": 1.18, "ag": 13}

CHIEF_COMPLAINTS = ["Chest pain", "Dyspnea", "Abd pain", "Weakness", "Fever", "Palpitations", "Syncope", "Fall",
                    "Dizziness", "Altered mental status", "N/V", "Transfer"]
RACES = ["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER", "UNKNOWN"]
YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]


# ------------------------------------------------------------------------------------------------
def _unique_ids(rng, lo: int, hi: int, n: int) -> np.ndarray:
    """``n`` distinct random integers in [lo, hi), in random order."""
    ids = np.unique(rng.integers(lo, hi, int(n * 1.1) + 10))
    while len(ids) < n:
        ids = np.unique(np.r_[ids, rng.integers(lo, hi, n)])
    return rng.permutation(ids)[:n]


def _times(t_s: np.ndarray) -> np.ndarray:
    """Seconds since the epoch -> 'YYYY-MM-DD HH:MM:SS' strings (empty where NaN)."""
    t = np.asarray(t_s, dtype=float)
    ok = np.isfinite(t)
    out = np.full(t.shape, "", dtype=object)
    if ok.any():
        s = np.datetime_as_string(t[ok].astype("int64").astype("datetime64[s]"), unit="s")
        out[ok] = np.char.replace(s, "T", " ")
    return out


def _dates(t_s: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(np.asarray(t_s, dtype="int64").astype("datetime64[s]"), unit="D")


def _year_start(year) -> np.ndarray:
    return (np.asarray(year) - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype("int64")


def _write_csv(df: pd.DataFrame, path: Path, gz: bool) -> None:
    """CSV (optionally gzip with a fixed header mtime, so the bytes depend only on the content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = df.to_csv(index=False, lineterminator="\n").encode()
    if gz:
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                     compresslevel=6) as f:
            f.write(text)
    else:
        path.write_bytes(text)


def _fmt(values: np.ndarray, decimals: int) -> np.ndarray:
    return np.char.mod(f"%.{decimals}f", np.round(values, decimals))


# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Simulation:
    """Everything the generator decided, before any file is written."""

    subjects: pd.DataFrame  # one row per subject
    ecgs: pd.DataFrame  # one row per ECG: ids, times, encounter type, artefact plan
    enc: dict  # latent encounter state (true labs, vitals) per ECG
    ecg: dict  # beat-model parameters per ECG
    config: SynthConfig
    seed: int


def simulate(patients: int, seed: int, config: SynthConfig | None = None) -> Simulation:
    """Draw subjects, ECG encounters, their latent state and ECG parameters (no I/O)."""
    cfg = config or SynthConfig()
    if patients < 1:
        raise ECGKTError(f"--patients must be >= 1, got {patients}")
    ss = np.random.SeedSequence(seed)
    r_subj, r_time, r_enc, r_ecg, r_art = (np.random.default_rng(s) for s in ss.spawn(5))
    n = patients
    subj = physiology.sample_subjects(r_subj, n)
    subject_id = np.sort(_unique_ids(r_subj, 10_000_000, 20_000_000, n))
    n_ecg = np.minimum(r_time.geometric(cfg.ecgs_per_patient_p, n), cfg.max_ecgs_per_patient)
    idx = np.repeat(np.arange(n), n_ecg)
    m = len(idx)
    first = np.r_[0, np.cumsum(n_ecg)[:-1]]
    k_in_subj = np.arange(m) - first[idx]

    # calendar: anchor year in the shifted future; ECGs spread after a first visit
    anchor_year = r_time.integers(2110, 2200, n)
    first_t = _year_start(anchor_year) + r_time.uniform(0, 3 * 365.25 * 86400, n).astype("int64")
    gaps = r_time.exponential(150 * 86400, m) * (k_in_subj > 0) + r_time.uniform(3600, 86400 * 2, m) * (k_in_subj > 0)
    true_t = first_t[idx] + np.cumsum(gaps).astype("int64") - np.cumsum(gaps)[first[idx]].astype("int64")
    true_t = (true_t // 60) * 60  # cart clocks record whole minutes
    anchor_age = np.clip(subj["age"] - r_time.integers(0, 3, n), 18, 91)
    ecg_year = true_t.astype("datetime64[s]").astype("datetime64[Y]").astype(int) + 1970
    age_at = np.minimum(anchor_age[idx] + (ecg_year - anchor_year[idx]), 91)

    # encounter type, carts and their clocks
    u = r_time.random(m)
    kind = np.where(u < cfg.p_ed, "ed", np.where(u < cfg.p_ed + cfg.p_inpatient, "inpatient", "outpatient"))
    n_carts = 60
    cart_ids = np.sort(_unique_ids(r_time, 6000, 7000, n_carts))
    cart_offset = np.round(r_time.normal(0, 90, n_carts)) + 3600 * (r_time.random(n_carts) < cfg.p_bad_clock_cart)
    cart = r_time.integers(0, n_carts, m)
    per_ecg = {k: v[idx] for k, v in subj.items()}
    per_ecg["age"] = age_at
    enc = physiology.sample_encounters(r_enc, per_ecg, cfg)
    ecg = physiology.ecg_parameters(r_ecg, enc, cfg)
    last_t = true_t[first + n_ecg - 1]

    # serial ECGs: some ED encounters get a second ECG 15-150 min after the first, same state
    # and morphology (new beats and noise), same stay; labs and tables belong to the encounter
    serial = (kind == "ed") & (r_time.random(m) < cfg.p_serial_ecg)
    order = np.repeat(np.arange(m), 1 + serial)
    repeat = np.r_[False, order[1:] == order[:-1]]
    encounter = np.flatnonzero(~repeat)[order]  # row of the encounter's first ECG
    idx, true_t, kind, cart = idx[order], true_t[order], kind[order], cart[order]
    true_t = true_t + np.where(repeat, r_time.integers(15, 151, len(order)) * 60, 0)
    enc = {k: v[order] for k, v in enc.items()}
    ecg = {k: v[order] for k, v in ecg.items()}
    m = len(order)
    ecg_t = true_t + cart_offset[cart].astype("int64")
    ecg_t = (ecg_t // 60) * 60
    study_id = _unique_ids(r_time, 40_000_000, 50_000_000, m)

    # artefact plan (decided here so it does not depend on how records are chunked)
    nan_run = r_art.random(m) < cfg.p_nan_run
    flat = r_art.random(m) < cfg.p_flat_lead
    noisy = (r_art.random(m) < 0.03) | nan_run | flat
    ecgs = pd.DataFrame({
        "subject_id": subject_id[idx], "study_id": study_id, "subject_row": idx, "true_time": true_t,
        "ecg_time_s": ecg_t, "kind": kind, "cart_id": cart_ids[cart], "nan_run": nan_run, "flat_lead": flat,
        "noisy": noisy, "noise_boost": np.where(noisy & ~nan_run & ~flat, 3.0, 1.0),
        "encounter": encounter, "first_of_encounter": ~repeat,
    })
    subjects = pd.DataFrame({
        "subject_id": subject_id, "gender": np.where(subj["female"], "F", "M"), "anchor_age": anchor_age,
        "anchor_year": anchor_year, "anchor_year_group": r_subj.choice(YEAR_GROUPS, n),
        "race": r_subj.choice(RACES, n, p=[0.62, 0.16, 0.07, 0.05, 0.06, 0.04]),
        "last_t": last_t, "dies": r_subj.random(n) < 0.04,
    })
    return Simulation(subjects, ecgs, enc, ecg, cfg, seed)


# ------------------------------------------------------------------------------------------------
def _render_chunk(sim: Simulation, c: int, rows: np.ndarray, bank: np.ndarray):
    """int16 records (len(rows), 5000, 12) of one chunk, each record's mean RR in ms and its
    number of ventricular premature beats."""
    rng = np.random.default_rng([sim.seed, 7919, c])
    p = {k: (v[rows] if isinstance(v, np.ndarray) and len(v) == len(sim.ecgs) else v) for k, v in sim.ecg.items()}
    sig8, onsets, n_pvc = ecg_synth.render_clean(rng, p)
    boost = sim.ecgs["noise_boost"].to_numpy()[rows]
    sig8 = ecg_synth.add_noise(rng, sig8, sim.config, boost=boost, bank=bank)
    adu = ecg_synth.quantise(ecg_synth.derive_leads(sig8))
    ecg_synth.add_artifacts(rng, adu, sim.ecgs["nan_run"].to_numpy()[rows], sim.ecgs["flat_lead"].to_numpy()[rows])
    inside = (onsets >= 0) & (onsets < ecg_synth.N_SAMPLES * 1000 / ecg_synth.FS)
    rr = np.array([np.diff(o[m]).mean() if m.sum() > 1 else p["rr"][i] for i, (o, m) in enumerate(zip(onsets, inside))])
    return adu, np.stack([rr, n_pvc], axis=1)


def _write_chunk(sim: Simulation, ecg_root: Path, c: int, bank: np.ndarray) -> tuple[int, np.ndarray]:
    """Render and write chunk ``c``; returns (c, per record: mean RR, premature beats)."""
    size = sim.config.chunk_records
    rows = np.arange(c * size, min((c + 1) * size, len(sim.ecgs)))
    frames, stats = _render_chunk(sim, c, rows, bank)  # (n, T, 12): the .dat sample order
    checksums = frames.sum(axis=1, dtype=np.int64) % 65536
    subj, study = sim.ecgs["subject_id"].to_numpy(), sim.ecgs["study_id"].to_numpy()
    when = pd.to_datetime(sim.ecgs["ecg_time_s"].to_numpy()[rows], unit="s")
    for j, i in enumerate(rows):
        hea = ecg_synth.header_text(study[i], subj[i], when[j], frames[j], checksums[j])
        ecg_synth.write_record(ecg_root, ecg_synth.record_path(subj[i], study[i]), hea, frames[j])
    return c, stats


_WORKER: dict = {}


def _worker_init(sim, ecg_root, bank):
    _WORKER.update(sim=sim, ecg_root=ecg_root, bank=bank)


def _worker_chunk(c):
    return _write_chunk(_WORKER["sim"], _WORKER["ecg_root"], c, _WORKER["bank"])


def write_waveforms(sim: Simulation, ecg_root: Path, progress: bool = True, jobs: int = 1) -> np.ndarray:
    """Render and write every record (``jobs`` processes); returns per ECG (m, 2): the mean RR in
    ms and the number of ventricular premature beats in the record.

    Chunks draw from their own seeded streams, so the files do not depend on ``jobs``.
    """
    from tqdm import tqdm

    m = len(sim.ecgs)
    size = sim.config.chunk_records
    n_chunks = -(-m // size)
    stats = np.empty((m, 2))
    bank = ecg_synth._noise_bank(sim.seed)
    ecg_root.mkdir(parents=True, exist_ok=True)
    with tqdm(total=m, desc="synth ECGs", unit="rec", disable=not progress) as bar:
        def done(c, chunk):
            stats[c * size:c * size + len(chunk)] = chunk
            bar.update(len(chunk))

        if jobs <= 1 or n_chunks < 2:
            for c in range(n_chunks):
                done(*_write_chunk(sim, ecg_root, c, bank))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(min(jobs, n_chunks), mp_context=ctx, initializer=_worker_init,
                                     initargs=(sim, ecg_root, bank)) as pool:
                for c, chunk in pool.map(_worker_chunk, range(n_chunks)):
                    done(c, chunk)
    return stats


# ------------------------------------------------------------------------------------------------
def _machine_measurements(sim: Simulation, rr: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng([sim.seed, 31, 1])
    p, e = sim.ecg, sim.ecgs
    m = len(e)
    qo = rng.integers(180, 232, m)
    jit = lambda: np.rint(rng.normal(0, 1.5, m)).astype(int)  # noqa: E731 - the cart's own error
    p_on = qo - np.rint(p["pr"]).astype(int) + jit()
    p_end = p_on + np.rint(p["p_dur"]).astype(int) + jit()
    qrs_end = qo + np.rint(p["qrs"]).astype(int) + jit()
    t_end = qo + np.rint(p["qt"]).astype(int) + jit()
    p_axis = np.rint(physiology.frontal_axis(p["p_vec"])).astype(int)
    qrs_axis = np.rint(physiology.frontal_axis(physiology.qrs_net_vector(p))).astype(int)
    t_axis = np.rint(physiology.frontal_axis(p["t_vec"])).astype(int)
    af = p["af"]
    p_on, p_end, p_axis = (np.where(af, MISSING, x) for x in (p_on, p_end, p_axis))
    t_end = np.where(rng.random(m) < 0.015, MISSING, t_end)
    for ax in (p_axis, qrs_axis, t_axis):
        ax[rng.random(m) < 0.01] = MISSING
    stmts = physiology.machine_statements(rng, p, e["noisy"].to_numpy(), sim.config)
    reports = np.full((m, N_REPORTS), "", dtype=object)
    gap = rng.random(m) < 0.05
    for i, s in enumerate(stmts):
        if gap[i] and len(s) > 1:  # statements with an empty field between them
            at = int(rng.integers(1, len(s)))
            s = s[:at] + [""] + s[at:]
        reports[i, :len(s[:N_REPORTS])] = s[:N_REPORTS]
    df = pd.DataFrame({"subject_id": e["subject_id"], "study_id": e["study_id"], "cart_id": e["cart_id"],
                       "ecg_time": _times(e["ecg_time_s"].to_numpy())})
    for k in range(N_REPORTS):
        df[f"report_{k}"] = reports[:, k]
    df["bandwidth"] = "0.005-150 Hz"
    df["filtering"] = np.where(rng.random(m) < 0.9, "60 Hz notch Baseline filter", "Baseline filter")
    df["rr_interval"] = np.rint(rr).astype(int)
    df["p_onset"], df["p_end"], df["qrs_onset"], df["qrs_end"], df["t_end"] = p_on, p_end, qo, qrs_end, t_end
    df["p_axis"], df["qrs_axis"], df["t_axis"] = p_axis, qrs_axis, t_axis
    return df


def _ecg_tables(sim: Simulation, rr: np.ndarray, root: Path) -> None:
    e = sim.ecgs
    paths = [ecg_synth.record_path(s, st) for s, st in zip(e["subject_id"], e["study_id"])]
    times = _times(e["ecg_time_s"].to_numpy())
    record_list = pd.DataFrame({"subject_id": e["subject_id"], "study_id": e["study_id"],
                                "file_name": e["study_id"], "ecg_time": times, "path": paths})
    order = np.lexsort((e["ecg_time_s"].to_numpy(), e["subject_id"].to_numpy()))
    _write_csv(record_list.iloc[order], root / "record_list.csv", gz=False)
    _write_csv(_machine_measurements(sim, rr).iloc[order], root / "machine_measurements.csv", gz=False)
    cols = ["subject_id", "study_id", "cart_id", "ecg_time"] + [f"report_{k}" for k in range(N_REPORTS)] + [
        "bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis",
        "qrs_axis", "t_axis"]
    desc = ["Patient identifier", "ECG study identifier", "ECG cart identifier", "Time of the ECG"] + [
        f"Machine-generated report statement {k}" for k in range(N_REPORTS)] + [
        "Bandwidth of the recording", "Filters applied", "RR interval (ms)", "P wave onset (ms)", "P wave end (ms)",
        "QRS onset (ms)", "QRS end (ms)", "T wave end (ms)", "P axis (degrees)", "QRS axis (degrees)",
        "T axis (degrees)"]
    _write_csv(pd.DataFrame({"variable": cols, "description": desc}),
               root / "machine_measurements_data_dictionary.csv", gz=False)
    rng = np.random.default_rng([sim.seed, 31, 2])
    linked = np.flatnonzero(rng.random(len(e)) < 0.4)
    subj = e["subject_id"].to_numpy()[linked]
    seq = pd.Series(subj).groupby(subj).cumcount().to_numpy() + 1  # the subject's k-th ECG note
    links = pd.DataFrame({"subject_id": subj, "study_id": e["study_id"].to_numpy()[linked],
                          "waveform_path": np.array(paths, dtype=object)[linked],
                          "note_id": [f"{s}-EK-{k}" for s, k in zip(subj, seq)], "note_seq": seq,
                          "charttime": times[linked]})
    _write_csv(links, root / "waveform_note_links.csv", gz=False)


# ------------------------------------------------------------------------------------------------
SYMPTOM_CODES = {"R079": "Chest pain, unspecified", "R0602": "Shortness of breath", "R531": "Weakness",
                 "R1084": "Generalized abdominal pain", "R55": "Syncope and collapse", "R42": "Dizziness and giddiness"}


def _encounters(sim: Simulation, codes: list[list[str]]):
    """ED stays, admissions and the ICD tables; returns (tables, hadm per ECG, stay per ECG, intime)."""
    rng = np.random.default_rng([sim.seed, 41, 1])
    e, s, enc = sim.ecgs, sim.subjects.set_index("subject_id"), sim.enc
    m = len(e)
    first_ecg = e["encounter"].to_numpy()
    primary = e["first_of_encounter"].to_numpy()
    t = e["true_time"].to_numpy()
    t_last = t.copy()
    np.maximum.at(t_last, first_ecg, t)  # an encounter lasts past its last ECG
    kind = e["kind"].to_numpy()
    sick = enc["sick"]
    ed = kind == "ed"
    late = rng.random(m) < 0.15  # ECG more than 90 min after ED arrival
    intime = t - np.where(late, rng.uniform(95, 400, m), rng.uniform(2, 85, m)) * 60
    intime = (intime // 60) * 60
    admitted = ed & (rng.random(m) < 0.15 + 0.75 * sick)
    has_hadm = admitted | (kind == "inpatient")
    admittime = np.where(kind == "inpatient", t - rng.uniform(2, 96, m) * 3600, intime + rng.uniform(1.5, 6, m) * 3600)
    admittime = (admittime // 60) * 60
    outtime = np.maximum(intime + rng.uniform(2.5, 12, m) * 3600, t_last + 1800)
    outtime = np.where(admitted, np.maximum(outtime, admittime + rng.uniform(0.2, 1.5, m) * 3600), outtime)
    outtime = (outtime // 60) * 60
    dischtime = np.maximum(admittime + rng.uniform(1, 12, m) * 86400, t_last + 3600)
    dischtime = (dischtime // 60) * 60
    hadm = np.where(has_hadm, _unique_ids(rng, 20_000_000, 30_000_000, m), 0)
    stay = np.where(ed, _unique_ids(rng, 30_000_000, 40_000_000, m), 0)
    # a later ECG of the same encounter shares its stay, admission and times
    intime, admittime, outtime, dischtime, hadm, stay, admitted, has_hadm = (
        x[first_ecg] for x in (intime, admittime, outtime, dischtime, hadm, stay, admitted, has_hadm))
    subj = e["subject_id"].to_numpy()
    gender = s.loc[subj, "gender"].to_numpy()
    race = s.loc[subj, "race"].to_numpy()
    last_of_subject = np.r_[subj[1:] != subj[:-1], True]
    last_encounter = np.zeros(m, bool)
    last_encounter[first_ecg[last_of_subject]] = True
    dies = s.loc[subj, "dies"].to_numpy() & last_encounter & has_hadm & (rng.random(m) < 0.5)

    ei = np.flatnonzero(ed & primary)
    disp = np.where(admitted, "ADMITTED", rng.choice(["HOME", "LEFT WITHOUT BEING SEEN", "TRANSFER", "ELOPED", "OTHER"],
                                                     m, p=[0.85, 0.03, 0.04, 0.02, 0.06]))
    edstays = pd.DataFrame({
        "subject_id": subj[ei], "hadm_id": pd.array(np.where(admitted, hadm, 0)[ei], dtype="Int64"),
        "stay_id": stay[ei], "intime": _times(intime[ei]), "outtime": _times(outtime[ei]), "gender": gender[ei],
        "race": race[ei], "arrival_transport": rng.choice(["WALK IN", "AMBULANCE", "UNKNOWN", "OTHER", "HELICOPTER"],
                                                          len(ei), p=[0.55, 0.38, 0.04, 0.025, 0.005]),
        "disposition": disp[ei]})
    edstays.loc[edstays["hadm_id"] == 0, "hadm_id"] = pd.NA

    hi = np.flatnonzero(has_hadm & primary)
    adm_type = np.where(kind[hi] == "ed", rng.choice(["EW EMER.", "OBSERVATION ADMIT", "URGENT"], len(hi), p=[.75, .15, .1]),
                        rng.choice(["ELECTIVE", "SURGICAL SAME DAY ADMISSION", "URGENT"], len(hi), p=[.5, .3, .2]))
    admissions = pd.DataFrame({
        "subject_id": subj[hi], "hadm_id": hadm[hi], "admittime": _times(admittime[hi]),
        "dischtime": _times(dischtime[hi]), "deathtime": _times(np.where(dies[hi], dischtime[hi], np.nan)),
        "admission_type": adm_type, "admit_provider_id": np.char.mod("P%05d", rng.integers(0, 99999, len(hi))),
        "admission_location": np.where(kind[hi] == "ed", "EMERGENCY ROOM", "PHYSICIAN REFERRAL"),
        "discharge_location": np.where(dies[hi], "DIED", rng.choice(["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY",
                                                                      "REHAB"], len(hi), p=[.5, .3, .15, .05])),
        "insurance": rng.choice(["Medicare", "Medicaid", "Other"], len(hi), p=[.45, .2, .35]),
        "language": np.where(rng.random(len(hi)) < 0.9, "ENGLISH", "?"),
        "marital_status": rng.choice(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", ""], len(hi), p=[.4, .3, .15, .1, .05]),
        "race": race[hi], "edregtime": _times(np.where(kind[hi] == "ed", intime[hi], np.nan)),
        "edouttime": _times(np.where(kind[hi] == "ed", outtime[hi], np.nan)),
        "hospital_expire_flag": dies[hi].astype(int)})

    titles = {c: t_ for c, t_, _ in physiology.ICD10} | SYMPTOM_CODES
    icd9 = rng.random(m) < sim.config.p_icd9
    rows = []
    for i in hi:
        cs = codes[i]
        if icd9[i]:
            cs = list(dict.fromkeys(physiology.ICD10_TO_ICD9[c] for c in cs if c in physiology.ICD10_TO_ICD9))
        for j, c in enumerate(cs):
            rows.append((subj[i], hadm[i], j + 1, c, 9 if icd9[i] else 10))
    diagnoses_icd = pd.DataFrame(rows, columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"])
    rows = []
    symptoms = list(SYMPTOM_CODES)
    for i in ei:
        cs = codes[i][:3] or [symptoms[int(rng.integers(0, len(symptoms)))]]
        for j, c in enumerate(cs):
            rows.append((subj[i], stay[i], j + 1, c, 10, titles[c]))
    ed_diagnosis = pd.DataFrame(rows, columns=["subject_id", "stay_id", "seq_num", "icd_code", "icd_version", "icd_title"])
    d_icd = [(c, 10, t_) for c, t_ in titles.items()] + [(c, 10, t_) for c, t_ in physiology.ICD10_PARENTS.items()]
    d_icd += [(c, 9, t_) for c, t_ in physiology.ICD9.items()]
    d_icd = pd.DataFrame(sorted(set(d_icd)), columns=["icd_code", "icd_version", "long_title"])
    tables = {"hosp/admissions": admissions, "hosp/diagnoses_icd": diagnoses_icd, "hosp/d_icd_diagnoses": d_icd,
              "ed/edstays": edstays, "ed/diagnosis": ed_diagnosis}
    return tables, hadm, stay, intime, outtime, admitted


def _labevents(sim: Simulation, hadm: np.ndarray) -> pd.DataFrame:
    """Lab panels around each ECG: missing not at random, near or hours away, with MIMIC's quirks."""
    cfg = sim.config
    rng = np.random.default_rng([sim.seed, 43, 1])
    e, enc = sim.ecgs, sim.enc
    m = len(e)
    s = enc["sick"]
    out = (e["kind"] == "outpatient").to_numpy()
    prob = {
        "bmp": np.where(out, 0.3, 0.68 + 0.3 * s), "cbc": np.where(out, 0.3, 0.62 + 0.3 * s),
        "mgphos": 0.18 + 0.45 * s + 0.3 * ((enc["k"] < 3.5) | enc["ckd"]),
        "cardiac": 0.3 + 0.45 * (enc["cad"] | enc["mi"]) + 0.2 * s,
        "bnp": 0.1 + 0.5 * enc["hf"] + 0.25 * s, "crp": 0.05 + 0.6 * (enc["sepsis_sev"] > 0),
        "lft": 0.12 + 0.35 * s + 0.4 * enc["liver"], "gas": 0.02 + 0.6 * (enc["sepsis_sev"] > 0) + 0.15 * s,
    }
    ecg_i, panel, offset, repeat = [], [], [], []
    for pi, name in enumerate(PANELS):
        pr = np.clip(prob[name] * np.where(out & (name not in ("bmp", "cbc")), 0.5, 1.0), 0, 1)
        pr = pr * e["first_of_encounter"].to_numpy()  # labs belong to the encounter, timed to its first ECG
        drawn = np.flatnonzero(rng.random(m) < pr)
        near = rng.random(len(drawn)) < cfg.lab_near_prob
        off = np.where(near, np.clip(rng.normal(-5, 18, len(drawn)), -55, 55),
                       rng.choice([-1, 1], len(drawn)) * rng.uniform(75, 900, len(drawn))) * 60
        again = drawn[rng.random(len(drawn)) < 0.5 * s[drawn]]
        ecg_i += [drawn, again]
        panel += [np.full(len(drawn) + len(again), pi)]
        offset += [off, rng.uniform(4, 10, len(again)) * 3600]
        repeat += [np.zeros(len(drawn), bool), np.ones(len(again), bool)]
    ecg_i, panel, offset, repeat = (np.concatenate(x) for x in (ecg_i, panel, offset, repeat))
    charttime = ((e["true_time"].to_numpy()[ecg_i] + offset) // 60) * 60
    specimen = _unique_ids(rng, 10_000_000, 100_000_000, len(ecg_i))
    female = enc["female"]
    ag_true = enc["na"] - enc["cl"] - enc["bicarb"]

    parts = []
    for itemid, key, label, fluid, cat, uom, dec, sd, rel, ref, alt, pname in LAB_ITEMS:
        sel = np.flatnonzero((panel == PANELS.index(pname)) & (rng.random(len(panel)) < 0.97))
        if pname == "gas" and key in ("free_ca", "k"):
            sel = sel[rng.random(len(sel)) < 0.55]
        i = ecg_i[sel]
        true = ag_true[i] if key == "ag" else enc[key][i]
        norm = LAB_NORMAL[key]
        true = np.where(repeat[sel], norm + 0.5 * (true - norm), true)  # treated by the repeat draw
        # hours away from the ECG the value has moved: part of the deviation fades (half-life
        # ~8 h, at least half of it stays) and a random drift grows with the time gap
        gap_h = np.abs(offset[sel]) / 3600 * ~repeat[sel]
        true = norm + (true - norm) * (0.5 + 0.5 * np.exp(-gap_h / 12))
        drift = 2 * sd * np.sqrt(gap_h / 6) * rng.standard_normal(len(i))
        true = true * np.exp(drift) if rel else true + drift
        v = true * np.exp(rng.normal(0, sd, len(i))) if rel else true + rng.normal(0, sd, len(i))
        v = np.round(np.maximum(v, 0.0), dec)
        lo = np.full(len(i), float(ref[0]))
        hi = np.full(len(i), float(ref[1]))
        use_alt = female[i] if key in ("hb", "hct") else rng.random(len(i)) < 0.1
        lo[use_alt], hi[use_alt] = alt
        abnormal = (v < lo) | (v > hi)
        abnormal ^= rng.random(len(i)) < cfg.p_flag_disagree
        value = _fmt(v, dec).astype(object)
        valuenum = v.copy()
        if key == "tnt":  # reported as '<0.01' below the detection limit
            low = v < 0.01
            value[low], valuenum[low], abnormal[low] = "<0.01", np.nan, False
        if key == "ckmb":
            low = v < 1
            value[low], valuenum[low] = "<1", np.nan
        deid = rng.random(len(i)) < cfg.p_deid_value
        value[deid], valuenum[deid], abnormal[deid] = "___", np.nan, False
        empty = rng.random(len(i)) < (0.7 if key == "bnp" else cfg.p_empty_range)
        lo[empty], hi[empty] = np.nan, np.nan
        zero = rng.random(len(i)) < 0.003
        lo[zero], hi[zero] = 0.0, 0.0
        comments = np.where(deid, "___", "").astype(object)
        if key == "k":
            hem = rng.random(len(i)) < 0.01
            comments[hem] = "HEMOLYSIS DETECTED.  RESULT MAY BE FALSELY ELEVATED."
        parts.append(pd.DataFrame({
            "sel": sel, "itemid": itemid, "value": value, "valuenum": valuenum, "valueuom": uom,
            "ref_range_lower": lo, "ref_range_upper": hi, "flag": np.where(abnormal, "abnormal", ""),
            "comments": comments}))
    lab = pd.concat(parts, ignore_index=True)
    sel = lab.pop("sel").to_numpy()
    i = ecg_i[sel]
    kind = e["kind"].to_numpy()[i]
    n = len(lab)
    lab.insert(0, "subject_id", e["subject_id"].to_numpy()[i])
    lab.insert(1, "hadm_id", pd.array(hadm[i], dtype="Int64"))
    lab.insert(2, "specimen_id", specimen[sel])
    # one order per specimen: provider, priority and result time are shared by its rows
    nd = len(ecg_i)
    provider = np.where(rng.random(nd) < 0.3, "", np.char.mod("P%05d", rng.integers(0, 400, nd)))
    stat = rng.random(nd) < 0.7
    blank = rng.random(nd) < 0.05
    delay = (rng.uniform(15, 120, nd) // 1) * 60
    lab.insert(4, "order_provider_id", provider[sel])
    lab.insert(5, "charttime_s", charttime[sel])
    lab.insert(6, "storetime_s", charttime[sel] + delay[sel])
    lab["priority"] = np.where(blank[sel], "", np.where((kind != "outpatient") & stat[sel], "STAT", "ROUTINE"))
    lab.loc[lab["hadm_id"] == 0, "hadm_id"] = pd.NA
    lab = lab.sort_values(["subject_id", "charttime_s", "specimen_id", "itemid"], kind="stable", ignore_index=True)
    lab.insert(0, "labevent_id", np.arange(1, n + 1))
    lab.insert(7, "charttime", _times(lab.pop("charttime_s").to_numpy()))
    lab.insert(8, "storetime", _times(lab.pop("storetime_s").to_numpy()))
    cols = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
            "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority",
            "comments"]
    return lab[cols]


def _ed_vitals(sim: Simulation, stay, intime, outtime):
    """ed/vitalsign (repeated through the stay) and ed/triage (at arrival)."""
    cfg = sim.config
    rng = np.random.default_rng([sim.seed, 47, 1])
    e, enc, ecg = sim.ecgs, sim.enc, sim.ecg
    ei = np.flatnonzero((stay > 0) & e["first_of_encounter"].to_numpy())
    nrow = np.clip(((outtime[ei] - intime[ei]) / 5400).astype(int), 1, 12)
    i = np.repeat(ei, nrow)
    k = np.arange(len(i)) - np.repeat(np.r_[0, np.cumsum(nrow)[:-1]], nrow)
    ct = intime[i] + (rng.uniform(5, 40, len(i)) + k * 90 + rng.uniform(-20, 20, len(i)) * (k > 0)) * 60
    ct = (ct // 60) * 60

    def vitals(idx, size):
        temp_c = enc["temp_c"][idx] + rng.normal(0, 0.2, size)
        celsius = rng.random(size) < cfg.p_celsius
        temp = np.where(celsius, np.round(temp_c, 1), np.round(temp_c * 1.8 + 32, 1))
        hr = np.round(ecg["hr"][idx] + rng.normal(0, 4, size) * np.where(ecg["af"][idx], 3, 1))
        out = {"temperature": temp, "heartrate": hr,
               "resprate": np.round(enc["resp"][idx] + rng.normal(0, 1.5, size)),
               "o2sat": np.round(np.clip(enc["o2sat"][idx] + rng.normal(0, 1, size), 60, 100)),
               "sbp": np.round(enc["sbp"][idx] + rng.normal(0, 8, size)),
               "dbp": np.round(enc["dbp"][idx] + rng.normal(0, 6, size))}
        for name, miss in (("temperature", 0.25), ("heartrate", 0.04), ("resprate", 0.06), ("o2sat", 0.08),
                           ("sbp", 0.05), ("dbp", 0.05)):
            out[name][rng.random(size) < miss] = np.nan
        return out

    v = vitals(i, len(i))
    rhythm = np.where(rng.random(len(i)) < 0.04, np.where(ecg["af"][i], "Atrial Fibrillation", "Sinus Rhythm"), "")
    pain = np.where(rng.random(len(i)) < 0.9, rng.integers(0, 11, len(i)).astype(str),
                    rng.choice(["", "UTA", "Critical", "unable"], len(i)))
    vitalsign = pd.DataFrame({"subject_id": e["subject_id"].to_numpy()[i], "stay_id": stay[i],
                              "charttime": _times(ct), **v, "rhythm": rhythm, "pain": pain})
    tv = vitals(ei, len(ei))
    cc = rng.choice(CHIEF_COMPLAINTS, len(ei))
    cc = np.where(enc["mi"][ei], "Chest pain", np.where(enc["sepsis_sev"][ei] > 0, "Fever", cc))
    cc = np.where(enc["hf_decomp"][ei] & (rng.random(len(ei)) < 0.6), "Dyspnea", cc)
    acuity = np.clip(np.round(4.2 - 3.2 * enc["sick"][ei] + rng.normal(0, 0.5, len(ei))), 1, 5)
    acuity[rng.random(len(ei)) < 0.02] = np.nan
    triage = pd.DataFrame({"subject_id": e["subject_id"].to_numpy()[ei], "stay_id": stay[ei], **tv,
                           "pain": rng.integers(0, 11, len(ei)).astype(str), "acuity": acuity,
                           "chiefcomplaint": cc})
    return vitalsign, triage


def _omr(sim: Simulation) -> pd.DataFrame:
    """Outpatient biometrics for part of the subjects: some within 30 days of an ECG, some not."""
    cfg = sim.config
    rng = np.random.default_rng([sim.seed, 53, 1])
    s, e = sim.subjects, sim.ecgs
    has = rng.random(len(s)) < cfg.p_omr
    near_e = np.flatnonzero(has[e["subject_row"].to_numpy()] & (rng.random(len(e)) < 0.6))
    rows_subj = np.r_[e["subject_row"].to_numpy()[near_e], np.repeat(np.flatnonzero(has), 2)]
    base_t = np.r_[e["true_time"].to_numpy()[near_e] + rng.uniform(-30, 30, len(near_e)) * 86400,
                   np.repeat(s["last_t"].to_numpy()[has], 2) + rng.uniform(-3 * 365, 365, 2 * has.sum()) * 86400]
    enc = sim.enc
    e_idx = np.searchsorted(e["subject_row"].to_numpy(), rows_subj)  # first ECG: carries the chronic state
    bmi = enc["bmi"][e_idx] * np.exp(rng.normal(0, 0.03, len(e_idx)))
    h = enc["height_in"][e_idx]
    w = bmi * h * h / 703
    sbp = 122 + 20 * enc["htn"][e_idx] + 0.25 * (enc["age"][e_idx] - 60) + rng.normal(0, 12, len(e_idx))
    dbp = 0.55 * sbp + 10 + rng.normal(0, 6, len(e_idx))
    date = _dates(base_t)
    sid = s["subject_id"].to_numpy()[rows_subj]
    bp_name = rng.choice(["Blood Pressure", "Blood Pressure Sitting", "Blood Pressure Lying",
                          "Blood Pressure Standing (1 min)"], len(e_idx), p=[0.7, 0.15, 0.1, 0.05])
    frames = [
        pd.DataFrame({"subject_id": sid, "chartdate": date, "result_name": bp_name,
                      "result_value": [f"{a:.0f}/{b:.0f}" for a, b in zip(sbp, dbp)]}),
        pd.DataFrame({"subject_id": sid, "chartdate": date, "result_name": "Weight (Lbs)", "result_value": _fmt(w, 1)}),
        pd.DataFrame({"subject_id": sid, "chartdate": date, "result_name": "BMI (kg/m2)", "result_value": _fmt(bmi, 1)}),
    ]
    hsel = rng.random(len(e_idx)) < 0.5
    frames.append(pd.DataFrame({"subject_id": sid[hsel], "chartdate": date[hsel], "result_name": "Height (Inches)",
                                "result_value": _fmt(h[hsel], 0)}))
    gsel = rng.random(len(e_idx)) < 0.2
    egfr = 100 * enc["creat"][e_idx][gsel] ** -1.1
    frames.append(pd.DataFrame({"subject_id": sid[gsel], "chartdate": date[gsel], "result_name": "eGFR",
                                "result_value": np.where(egfr > 60, ">60", _fmt(egfr, 0))}))
    omr = pd.concat(frames, ignore_index=True).sort_values(["subject_id", "chartdate", "result_name"], kind="stable")
    omr["seq_num"] = omr.groupby(["subject_id", "chartdate", "result_name"]).cumcount() + 1
    return omr[["subject_id", "chartdate", "seq_num", "result_name", "result_value"]]


def _patients(sim: Simulation) -> pd.DataFrame:
    rng = np.random.default_rng([sim.seed, 59, 1])
    s = sim.subjects
    dod = np.where(s["dies"], s["last_t"] + rng.uniform(0, 400, len(s)) * 86400, 0)
    return pd.DataFrame({"subject_id": s["subject_id"], "gender": s["gender"], "anchor_age": s["anchor_age"],
                         "anchor_year": s["anchor_year"], "anchor_year_group": s["anchor_year_group"],
                         "dod": np.where(s["dies"], _dates(dod), "")})


def _d_labitems() -> pd.DataFrame:
    seen = {}
    for itemid, _, label, fluid, cat, *_ in LAB_ITEMS:
        seen[itemid] = (itemid, label, fluid, cat)
    return pd.DataFrame(sorted(seen.values()), columns=["itemid", "label", "fluid", "category"])


def _truth(sim: Simulation, rr: np.ndarray, codes) -> pd.DataFrame:
    """Ground truth per study: latent state, true labs and beat-model parameters (not part of MIMIC)."""
    e = sim.ecgs
    cols = {"subject_id": e["subject_id"], "study_id": e["study_id"], "kind": e["kind"],
            "encounter_study_id": e["study_id"].to_numpy()[e["encounter"].to_numpy()],
            "nan_run": e["nan_run"], "flat_lead": e["flat_lead"], "noisy": e["noisy"], "measured_rr": rr,
            "icd_codes": [" ".join(c) for c in codes]}
    for src in (sim.enc, sim.ecg):
        for k, v in src.items():
            v = np.asarray(v)
            if k in cols or v.ndim != 1:
                continue
            cols[k] = v
    for k in ("p", "q", "r", "s", "rp", "st", "t", "u", "j"):
        for a, name in enumerate("xyz"):
            cols[f"{k}_vec_{name}"] = sim.ecg[f"{k}_vec"][:, a]
    return pd.DataFrame(cols)


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
    if cfg.waveforms:
        stats = write_waveforms(sim, ecg_root, progress=progress, jobs=jobs)
        rr, sim.ecg["pvc_count"] = stats[:, 0], stats[:, 1].astype(int)
    else:  # no records: the expected values
        rr = sim.ecg["rr"].copy()
        sim.ecg["pvc_count"] = np.rint(sim.ecg["pvc_rate"] * 10000 / rr).astype(int)
    t_wave = time.perf_counter() - t0 - t_sim
    codes = physiology.diagnoses(np.random.default_rng([seed, 37, 1]), sim.enc, sim.ecg, cfg)
    _ecg_tables(sim, rr, ecg_root)
    tables, hadm, stay, intime, outtime, _ = _encounters(sim, codes)
    tables["hosp/labevents"] = _labevents(sim, hadm)
    tables["hosp/d_labitems"] = _d_labitems()
    tables["hosp/omr"] = _omr(sim)
    tables["hosp/patients"] = _patients(sim)
    tables["ed/vitalsign"], tables["ed/triage"] = _ed_vitals(sim, stay, intime, outtime)
    for name, df in tables.items():
        _write_csv(df, clin_root / f"{name}.csv.gz", gz=True)
    _write_csv(_truth(sim, rr, codes), out / "synth_truth.csv.gz", gz=True)
    elapsed = time.perf_counter() - t0
    summary = {
        "out_dir": str(out), "seed": seed, "patients": patients, "records": len(sim.ecgs),
        "labevents": len(tables["hosp/labevents"]), "ed_stays": len(tables["ed/edstays"]),
        "admissions": len(tables["hosp/admissions"]), "seconds": round(elapsed, 2),
        "waveform_seconds": round(t_wave, 2),
        "records_per_s": round(len(sim.ecgs) / elapsed, 1), "jobs": jobs,
        "rules": cfg.rules,
    }
    stable = {k: v for k, v in summary.items() if k not in ("out_dir", "seconds", "waveform_seconds", "records_per_s", "jobs")}
    (out / "synth_summary.json").write_text(json.dumps(stable, indent=1, sort_keys=True) + "\n")
    return summary


def _parse_rule(text: str) -> tuple[str, float]:
    name, sep, scale = text.partition("=")
    if not sep:
        raise ECGKTError(f"--rule {text!r}: expected NAME=SCALE, e.g. potassium_t=0")
    try:
        return name.strip(), float(scale)
    except ValueError:
        raise ECGKTError(f"--rule {text!r}: scale {scale!r} is not a number") from None


def _run(args) -> int:
    rules = dict(_parse_rule(r) for r in args.rule or [])
    cfg = SynthConfig(rules=rules, waveforms=not args.no_waveforms)
    summary = generate(args.out, patients=args.patients, seed=args.seed, config=cfg,
                       progress=not args.quiet, overwrite=args.overwrite, jobs=args.jobs)
    print(f"wrote {summary['records']} ECGs of {summary['patients']} patients, {summary['labevents']} lab rows "
          f"to {summary['out_dir']} in {summary['seconds']} s ({summary['records_per_s']} records/s)")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write a synthetic MIMIC-IV-ECG + MIMIC-IV shaped dataset",
        description="Write DIR/mimic-iv-ecg (record_list.csv, machine_measurements.csv, WFDB records) and "
                    "DIR/mimic-iv (hosp/ and ed/ csv.gz tables) with MIMIC's names, columns and quirks. A latent "
                    "patient state drives labs, vitals, biometrics, ECG morphology, machine statements and ICD-10 "
                    "codes through documented rules (see docs/synthetic_data.md). Same seed, same bytes.")
    p.add_argument("--out", required=True, help="output folder (gets mimic-iv-ecg/ and mimic-iv/)")
    p.add_argument("--patients", type=int, default=1000, help="number of subjects (about 2.4 ECGs each; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--rule", action="append", metavar="NAME=SCALE",
                   help="scale one physiology rule (0 switches it off); repeatable. Rules: " + ", ".join(physiology.RULES))
    p.add_argument("--no-waveforms", action="store_true", help="write the tables only (no WFDB records)")
    p.add_argument("--overwrite", action="store_true", help="replace existing mimic-iv-ecg/ and mimic-iv/ folders")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes rendering waveforms (default: up to 2; the output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)

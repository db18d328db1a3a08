"""Subjects, encounters and their latent state: who is ill with what, when, and the true lab and
vital values at each ECG. No file is written here (:func:`simulate` is pure)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ...errors import ECGKTError
from .common import unique_ids, year_start
from .config import SynthConfig
from .physiology import ecg_parameters

RACES = ["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER", "UNKNOWN"]
YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]


def sample_subjects(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Chronic latent state per subject: demographics, biometrics and chronic diseases."""
    age = np.clip(np.round(rng.normal(62, 17, n)), 18, 91).astype(int)
    female = rng.random(n) < 0.5
    old = np.clip((age - 40) / 40, 0, 1.3)
    height_in = np.where(female, rng.normal(64, 2.6, n), rng.normal(69.5, 2.9, n))
    bmi = np.clip(np.exp(rng.normal(np.log(27.5), 0.2, n)), 15, 60)
    htn = rng.random(n) < 0.15 + 0.45 * old
    cad = rng.random(n) < 0.04 + 0.22 * old
    hf = rng.random(n) < 0.02 + 0.12 * old + 0.15 * cad
    ckd = rng.random(n) < 0.03 + 0.12 * old + 0.08 * htn
    diabetes = rng.random(n) < 0.06 + 0.12 * old + 0.1 * (bmi > 30)
    return {
        "age": age,
        "female": female,
        "height_in": height_in,
        "bmi": bmi,
        "htn": htn,
        "cad": cad,
        "hf": hf,
        "hf_sev": np.where(hf, rng.uniform(0.3, 1.0, n), 0.0),
        "ckd": ckd,
        "ckd_sev": np.where(ckd, rng.beta(1.6, 3.0, n), 0.0),
        "diabetes": diabetes,
        "liver": rng.random(n) < 0.05,
        "anemia_chronic": rng.random(n) < 0.06 + 0.05 * female,
        "hyperlipidemia": rng.random(n) < 0.1 + 0.3 * old + 0.3 * cad,
        # ECG-only latent: conduction system disease, no lab marker at all
        "rbbb": rng.random(n) < 0.015 + 0.05 * old,
        "lbbb": rng.random(n) < 0.005 + 0.02 * old + 0.08 * hf,
        "avb1": rng.random(n) < 0.02 + 0.06 * old,
        "base_hr": rng.normal(72, 9, n),
        "base_qtc": rng.normal(410, 13, n),
        "qrs_axis0": rng.normal(50, 22, n),
        "qrs_width0": rng.normal(90, 8, n),
        "pr0": rng.normal(155, 17, n),
        "voltage0": np.exp(rng.normal(0, 0.18, n)),
        # sodium's driver: independent of everything above (the negative control)
        "sodium_set": rng.normal(139.5, 1.6, n),
        "hypona_prone": rng.random(n) < 0.08,
    }


def sample_encounters(rng, s, cfg) -> dict[str, np.ndarray]:
    """Acute latent state and the true lab/vital values at the time of each ECG.

    ``s`` holds the subject state repeated per ECG (with ``age`` at the ECG). Returned values are
    *true* values; the lab table adds measurement noise, rounding, text values and missingness.
    """
    n = len(s["age"])
    r = cfg.rules
    u = lambda: rng.random(n)  # noqa: E731 - one fresh uniform per call
    mi = u() < 0.02 + 0.12 * s["cad"] + 0.02 * s["hf"]
    sepsis_sev = np.where(u() < 0.06 + 0.04 * s["ckd"] + 0.03 * s["diabetes"], rng.uniform(0.3, 1, n), 0.0)
    hf_decomp = s["hf"] & (u() < 0.45)
    hypok = u() < 0.07 + 0.1 * s["hf"]  # diuretics, GI losses
    hyperk_event = u() < 0.035 + 0.15 * s["ckd_sev"]
    hypomag = u() < 0.04 + 0.5 * hypok
    ca_event = rng.choice([-1, 0, 1], n, p=[0.07, 0.87, 0.06])
    bleed = u() < 0.03
    hypoglyc = s["diabetes"] & (u() < 0.05)
    hypothermia = u() < 0.004
    hypona = np.where(s["hypona_prone"] & (u() < 0.6), rng.uniform(6, 18, n), 0.0) + np.where(
        u() < 0.04, rng.uniform(4, 12, n), 0.0
    )
    hyperna = u() < 0.02
    # kidney and acid-base
    base_cr = np.where(s["female"], 0.75, 0.95) * np.exp(rng.normal(0, 0.12, n))
    creat = base_cr + s["ckd_sev"] * rng.uniform(0.6, 4.5, n)
    aki = u() < 0.04 + 0.4 * sepsis_sev + 0.1 * hf_decomp
    creat = creat * np.where(aki, rng.uniform(1.6, 3.5, n), 1.0)
    bun = 14 * creat**0.8 * np.exp(rng.normal(0, 0.2, n)) + 6 * hf_decomp
    ph = 7.40 + rng.normal(0, 0.025, n) - 0.12 * sepsis_sev - 0.04 * s["ckd_sev"] - 0.06 * aki
    lactate = np.exp(rng.normal(np.log(1.2), 0.3, n)) + 4 * sepsis_sev * rng.random(n)
    bicarb = 24 + 60 * (ph - 7.4) + rng.normal(0, 1.5, n)
    # potassium: mediated by kidney function and acidosis (tabular rules)
    k = 4.15 + rng.normal(0, 0.28, n)
    k += r["creatinine_potassium"] * 0.3 * np.clip(creat - 1.2, 0, None)
    k += r["acidosis_potassium"] * 6.0 * np.clip(7.4 - ph, 0, None)
    k -= hypok * rng.uniform(0.7, 1.7, n)
    k += hyperk_event * rng.uniform(0.8, 3.5, n)
    k = np.clip(k, 1.8, 9.5)
    mg = 2.0 + rng.normal(0, 0.17, n) - hypomag * rng.uniform(0.3, 0.8, n) + 0.35 * s["ckd_sev"]
    albumin = 4.1 + rng.normal(0, 0.3, n) - 0.9 * sepsis_sev - 0.8 * s["liver"] * rng.random(n)
    ca = 9.4 + rng.normal(0, 0.3, n) + 0.8 * (albumin - 4.1) + ca_event * rng.uniform(1.0, 2.2, n)
    ca -= 0.5 * s["ckd_sev"]
    free_ca = 1.18 + 0.125 * (ca - 9.4 - 0.8 * (albumin - 4.1)) + rng.normal(0, 0.02, n)
    phos = 3.5 + rng.normal(0, 0.45, n) + 2.2 * s["ckd_sev"]
    na = s["sodium_set"] + rng.normal(0, 1.2, n) - hypona + hyperna * rng.uniform(6, 12, n)
    cl = 102 + 0.75 * (na - 140) + rng.normal(0, 2, n) - 0.3 * (bicarb - 24)
    glucose = np.where(
        s["diabetes"], np.exp(rng.normal(np.log(165), 0.35, n)), np.exp(rng.normal(np.log(102), 0.12, n))
    )
    glucose += 35 * sepsis_sev
    glucose = np.where(hypoglyc, rng.uniform(32, 68, n), glucose)
    # blood count
    hb = np.where(s["female"], 12.9, 14.3) + rng.normal(0, 1.0, n)
    hb -= 2.2 * s["ckd_sev"] + 2.5 * s["anemia_chronic"] + bleed * rng.uniform(2, 6, n) + 1.0 * sepsis_sev
    hb = np.clip(hb, 4.0, 19.0)
    hct = 3.0 * hb + rng.normal(0, 1.2, n)
    wbc = np.exp(rng.normal(np.log(7.6), 0.25, n)) * (1 + 1.8 * sepsis_sev)
    plt = np.exp(rng.normal(np.log(245), 0.28, n)) * (1 - 0.4 * sepsis_sev) * (1 - 0.35 * s["liver"])
    rdw = 13.4 + rng.normal(0, 0.8, n) + 2.0 * s["anemia_chronic"] + 1.2 * s["ckd_sev"]
    crp = np.exp(rng.normal(np.log(3.0), 0.9, n)) + 150 * sepsis_sev * rng.random(n)
    alt = np.exp(rng.normal(np.log(24), 0.35, n)) * np.where(s["liver"], rng.uniform(2, 8, n), 1.0)
    ast = alt * np.exp(rng.normal(0.05, 0.25, n)) * (1 + 0.5 * sepsis_sev)
    alp = np.exp(rng.normal(np.log(80), 0.25, n)) * np.where(s["liver"], 1.8, 1.0)
    # cardiac markers
    age_f = np.exp(0.03 * (s["age"] - 60))
    bnp = np.exp(rng.normal(np.log(90), 0.7, n)) * age_f * (1 + 3 * s["ckd_sev"])
    bnp *= np.where(s["hf"], np.exp(rng.uniform(1.5, 3.5, n) * s["hf_sev"]) * (1 + 3 * hf_decomp), 1.0)
    bnp = np.clip(bnp, 5, 70000)
    tnt = np.exp(rng.normal(np.log(0.004), 0.6, n)) * (1 + 6 * s["ckd_sev"]) * (1 + 2 * hf_decomp)
    tnt = np.where(mi, np.exp(rng.uniform(np.log(0.03), np.log(6.0), n)), tnt)
    mi_age_h = np.where(mi, rng.uniform(1, 96, n), np.nan)  # hours since onset -> Q waves
    ckmb = np.exp(rng.normal(np.log(2.0), 0.4, n)) + mi * 80 * rng.random(n) * (tnt > 0.1)
    ck = np.exp(rng.normal(np.log(120), 0.5, n)) + mi * 900 * rng.random(n) * (tnt > 0.1)
    # vitals (true, degC)
    temp = 36.8 + rng.normal(0, 0.25, n) + sepsis_sev * rng.uniform(0.5, 2.6, n)
    temp = np.where(hypothermia, rng.uniform(29.5, 33.0, n), temp)
    sbp = 122 + 20 * s["htn"] + 0.25 * (s["age"] - 60) + rng.normal(0, 13, n) - 25 * sepsis_sev
    dbp = 0.5 * sbp + 13 + rng.normal(0, 7, n)
    resp = 16 + rng.normal(0, 1.8, n) + 8 * sepsis_sev + 5 * hf_decomp
    o2 = np.clip(97.5 + rng.normal(0, 1.2, n) - 5 * sepsis_sev - 4 * hf_decomp, 70, 100)
    sick = np.clip(
        0.1 + 0.6 * sepsis_sev + 0.5 * mi + 0.3 * hf_decomp + 0.3 * aki + 0.25 * (k > 5.8) + 0.2 * bleed
        + 0.2 * (np.abs(na - 140) > 8) + 0.15 * rng.random(n),
        0,
        1,
    )
    return {
        **s,
        "mi": mi, "mi_age_h": mi_age_h, "sepsis_sev": sepsis_sev, "hf_decomp": hf_decomp, "aki": aki,
        "hypothermia": hypothermia, "bleed": bleed, "sick": sick,
        "k": k, "na": na, "cl": cl, "bicarb": bicarb, "glucose": glucose, "creat": creat, "bun": bun,
        "ca": ca, "free_ca": free_ca, "mg": mg, "phos": phos, "hb": hb, "hct": hct, "plt": plt, "wbc": wbc,
        "rdw": rdw, "tnt": tnt, "ckmb": ckmb, "ck": ck, "bnp": bnp, "crp": crp, "alt": alt, "ast": ast,
        "alp": alp, "albumin": albumin, "lactate": lactate, "ph": ph,
        "temp_c": temp, "sbp": sbp, "dbp": dbp, "resp": resp, "o2sat": o2,
    }



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
    subj = sample_subjects(r_subj, n)
    subject_id = np.sort(unique_ids(r_subj, 10_000_000, 20_000_000, n))
    n_ecg = np.minimum(r_time.geometric(cfg.ecgs_per_patient_p, n), cfg.max_ecgs_per_patient)
    idx = np.repeat(np.arange(n), n_ecg)
    m = len(idx)
    first = np.r_[0, np.cumsum(n_ecg)[:-1]]
    k_in_subj = np.arange(m) - first[idx]

    # calendar: anchor year in the shifted future; ECGs spread after a first visit
    anchor_year = r_time.integers(2110, 2200, n)
    first_t = year_start(anchor_year) + r_time.uniform(0, 3 * 365.25 * 86400, n).astype("int64")
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
    cart_ids = np.sort(unique_ids(r_time, 6000, 7000, n_carts))
    cart_offset = np.round(r_time.normal(0, 90, n_carts)) + 3600 * (r_time.random(n_carts) < cfg.p_bad_clock_cart)
    cart = r_time.integers(0, n_carts, m)
    per_ecg = {k: v[idx] for k, v in subj.items()}
    per_ecg["age"] = age_at
    enc = sample_encounters(r_enc, per_ecg, cfg)
    ecg = ecg_parameters(r_ecg, enc, cfg)
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
    study_id = unique_ids(r_time, 40_000_000, 50_000_000, m)

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



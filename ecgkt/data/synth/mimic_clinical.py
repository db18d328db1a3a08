"""MIMIC-IV clinical tables: hosp/ (patients, admissions, labevents, d_labitems, omr, diagnoses_icd,
d_icd_diagnoses) and ed/ (edstays, vitalsign, triage, diagnosis)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import coding
from .common import dates, fmt, timestamps, unique_ids
from .population import Simulation


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


# ------------------------------------------------------------------------------------------------
def encounter_tables(sim: Simulation, codes: list[list[str]]):
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
    hadm = np.where(has_hadm, unique_ids(rng, 20_000_000, 30_000_000, m), 0)
    stay = np.where(ed, unique_ids(rng, 30_000_000, 40_000_000, m), 0)
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
        "stay_id": stay[ei], "intime": timestamps(intime[ei]), "outtime": timestamps(outtime[ei]), "gender": gender[ei],
        "race": race[ei], "arrival_transport": rng.choice(["WALK IN", "AMBULANCE", "UNKNOWN", "OTHER", "HELICOPTER"],
                                                          len(ei), p=[0.55, 0.38, 0.04, 0.025, 0.005]),
        "disposition": disp[ei]})
    edstays.loc[edstays["hadm_id"] == 0, "hadm_id"] = pd.NA

    hi = np.flatnonzero(has_hadm & primary)
    adm_type = np.where(kind[hi] == "ed", rng.choice(["EW EMER.", "OBSERVATION ADMIT", "URGENT"], len(hi), p=[.75, .15, .1]),
                        rng.choice(["ELECTIVE", "SURGICAL SAME DAY ADMISSION", "URGENT"], len(hi), p=[.5, .3, .2]))
    admissions = pd.DataFrame({
        "subject_id": subj[hi], "hadm_id": hadm[hi], "admittime": timestamps(admittime[hi]),
        "dischtime": timestamps(dischtime[hi]), "deathtime": timestamps(np.where(dies[hi], dischtime[hi], np.nan)),
        "admission_type": adm_type, "admit_provider_id": np.char.mod("P%05d", rng.integers(0, 99999, len(hi))),
        "admission_location": np.where(kind[hi] == "ed", "EMERGENCY ROOM", "PHYSICIAN REFERRAL"),
        "discharge_location": np.where(dies[hi], "DIED", rng.choice(["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY",
                                                                      "REHAB"], len(hi), p=[.5, .3, .15, .05])),
        "insurance": rng.choice(["Medicare", "Medicaid", "Other"], len(hi), p=[.45, .2, .35]),
        "language": np.where(rng.random(len(hi)) < 0.9, "ENGLISH", "?"),
        "marital_status": rng.choice(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", ""], len(hi), p=[.4, .3, .15, .1, .05]),
        "race": race[hi], "edregtime": timestamps(np.where(kind[hi] == "ed", intime[hi], np.nan)),
        "edouttime": timestamps(np.where(kind[hi] == "ed", outtime[hi], np.nan)),
        "hospital_expire_flag": dies[hi].astype(int)})

    titles = {c: t_ for c, t_, _ in coding.ICD10} | coding.SYMPTOM_CODES
    icd9 = rng.random(m) < sim.config.p_icd9
    rows = []
    for i in hi:
        cs = codes[i]
        if icd9[i]:
            cs = list(dict.fromkeys(coding.ICD10_TO_ICD9[c] for c in cs if c in coding.ICD10_TO_ICD9))
        for j, c in enumerate(cs):
            rows.append((subj[i], hadm[i], j + 1, c, 9 if icd9[i] else 10))
    diagnoses_icd = pd.DataFrame(rows, columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"])
    rows = []
    symptoms = list(coding.SYMPTOM_CODES)
    for i in ei:
        # every code of the encounter, in its priority order (as MIMIC-IV-ED lists them by seq_num)
        cs = codes[i] or [symptoms[int(rng.integers(0, len(symptoms)))]]
        for j, c in enumerate(cs):
            rows.append((subj[i], stay[i], j + 1, c, 10, titles[c]))
    ed_diagnosis = pd.DataFrame(rows, columns=["subject_id", "stay_id", "seq_num", "icd_code", "icd_version", "icd_title"])
    d_icd = [(c, 10, t_) for c, t_ in titles.items()] + [(c, 10, t_) for c, t_ in coding.ICD10_PARENTS.items()]
    d_icd += [(c, 9, t_) for c, t_ in coding.ICD9.items()]
    d_icd = pd.DataFrame(sorted(set(d_icd)), columns=["icd_code", "icd_version", "long_title"])
    tables = {"hosp/admissions": admissions, "hosp/diagnoses_icd": diagnoses_icd, "hosp/d_icd_diagnoses": d_icd,
              "ed/edstays": edstays, "ed/diagnosis": ed_diagnosis}
    return tables, hadm, stay, intime, outtime, admitted


def labevents(sim: Simulation, hadm: np.ndarray) -> pd.DataFrame:
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
    specimen = unique_ids(rng, 10_000_000, 100_000_000, len(ecg_i))
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
        value = fmt(v, dec).astype(object)
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
    lab.insert(7, "charttime", timestamps(lab.pop("charttime_s").to_numpy()))
    lab.insert(8, "storetime", timestamps(lab.pop("storetime_s").to_numpy()))
    cols = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
            "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority",
            "comments"]
    return lab[cols]


def ed_vitals(sim: Simulation, stay, intime, outtime):
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
                              "charttime": timestamps(ct), **v, "rhythm": rhythm, "pain": pain})
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


def omr(sim: Simulation) -> pd.DataFrame:
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
    date = dates(base_t)
    sid = s["subject_id"].to_numpy()[rows_subj]
    bp_name = rng.choice(["Blood Pressure", "Blood Pressure Sitting", "Blood Pressure Lying",
                          "Blood Pressure Standing (1 min)"], len(e_idx), p=[0.7, 0.15, 0.1, 0.05])
    frames = [
        pd.DataFrame({"subject_id": sid, "chartdate": date, "result_name": bp_name,
                      "result_value": [f"{a:.0f}/{b:.0f}" for a, b in zip(sbp, dbp)]}),
        pd.DataFrame({"subject_id": sid, "chartdate": date, "result_name": "Weight (Lbs)", "result_value": fmt(w, 1)}),
        pd.DataFrame({"subject_id": sid, "chartdate": date, "result_name": "BMI (kg/m2)", "result_value": fmt(bmi, 1)}),
    ]
    hsel = rng.random(len(e_idx)) < 0.5
    frames.append(pd.DataFrame({"subject_id": sid[hsel], "chartdate": date[hsel], "result_name": "Height (Inches)",
                                "result_value": fmt(h[hsel], 0)}))
    gsel = rng.random(len(e_idx)) < 0.2
    egfr = 100 * enc["creat"][e_idx][gsel] ** -1.1
    frames.append(pd.DataFrame({"subject_id": sid[gsel], "chartdate": date[gsel], "result_name": "eGFR",
                                "result_value": np.where(egfr > 60, ">60", fmt(egfr, 0))}))
    table = pd.concat(frames, ignore_index=True).sort_values(["subject_id", "chartdate", "result_name"], kind="stable")
    table["seq_num"] = table.groupby(["subject_id", "chartdate", "result_name"]).cumcount() + 1
    return table[["subject_id", "chartdate", "seq_num", "result_name", "result_value"]]


def patients(sim: Simulation) -> pd.DataFrame:
    rng = np.random.default_rng([sim.seed, 59, 1])
    s = sim.subjects
    dod = np.where(s["dies"], s["last_t"] + rng.uniform(0, 400, len(s)) * 86400, 0)
    return pd.DataFrame({"subject_id": s["subject_id"], "gender": s["gender"], "anchor_age": s["anchor_age"],
                         "anchor_year": s["anchor_year"], "anchor_year_group": s["anchor_year_group"],
                         "dod": np.where(s["dies"], dates(dod), "")})


def d_labitems() -> pd.DataFrame:
    seen = {}
    for itemid, _, label, fluid, cat, *_ in LAB_ITEMS:
        seen[itemid] = (itemid, label, fluid, cat)
    return pd.DataFrame(sorted(seen.values()), columns=["itemid", "label", "fluid", "category"])



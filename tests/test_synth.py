"""Self-checks of the synthetic MIMIC-shaped dataset (ecgkt synth).

The files must look exactly like MIMIC to the loaders, the beat model must obey lead geometry,
the machine measurements must describe the waveforms, and every physiology rule must be visible
in the written data (and vanish when switched off).
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from scipy.signal import find_peaks
from scipy.stats import spearmanr

from ecgkt import cli
from ecgkt.data import synth
from ecgkt.data.synth import beat_model, coding, rules
from ecgkt.errors import ECGKTError

SEED = 11
# edge cases made more frequent than the defaults so that a small set surely holds each of them
EDGE = dict(p_nan_run=0.06, p_flat_lead=0.06, p_icd9=0.15, p_deid_value=0.02, p_celsius=0.1)


def _generate(root, patients, seed=SEED, **kw):
    cfg = synth.SynthConfig(**{**EDGE, **kw})
    synth.generate(root, patients=patients, seed=seed, config=cfg, progress=False, jobs=2)
    return Path(root)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("synth_small"), 45)


@pytest.fixture(scope="module")
def rules_on(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("synth_on"), 260, seed=5)


@pytest.fixture(scope="module")
def rules_off(tmp_path_factory):
    off = {"potassium_t": 0, "potassium_low": 0, "potassium_conduction": 0, "potassium_qtc": 0, "calcium_qtc": 0}
    return _generate(tmp_path_factory.mktemp("synth_off"), 260, seed=5, rules=off)


def _csv(root, rel):
    return pd.read_csv(Path(root) / rel, keep_default_na=True, low_memory=False)


# --------------------------------------------------------------------------------------------------
# MIMIC shape
# --------------------------------------------------------------------------------------------------
COLUMNS = {
    "mimic-iv-ecg/record_list.csv": ["subject_id", "study_id", "file_name", "ecg_time", "path"],
    "mimic-iv-ecg/machine_measurements.csv": ["subject_id", "study_id", "cart_id", "ecg_time"]
    + [f"report_{k}" for k in range(18)]
    + ["bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis",
       "qrs_axis", "t_axis"],
    "mimic-iv-ecg/waveform_note_links.csv": ["subject_id", "study_id", "waveform_path", "note_id", "note_seq",
                                             "charttime"],
    "mimic-iv/hosp/patients.csv.gz": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
    "mimic-iv/hosp/labevents.csv.gz": ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid",
                                       "order_provider_id", "charttime", "storetime", "value", "valuenum", "valueuom",
                                       "ref_range_lower", "ref_range_upper", "flag", "priority", "comments"],
    "mimic-iv/hosp/d_labitems.csv.gz": ["itemid", "label", "fluid", "category"],
    "mimic-iv/hosp/omr.csv.gz": ["subject_id", "chartdate", "seq_num", "result_name", "result_value"],
    "mimic-iv/hosp/diagnoses_icd.csv.gz": ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
    "mimic-iv/hosp/d_icd_diagnoses.csv.gz": ["icd_code", "icd_version", "long_title"],
    "mimic-iv/ed/edstays.csv.gz": ["subject_id", "hadm_id", "stay_id", "intime", "outtime", "gender", "race",
                                   "arrival_transport", "disposition"],
    "mimic-iv/ed/vitalsign.csv.gz": ["subject_id", "stay_id", "charttime", "temperature", "heartrate", "resprate",
                                     "o2sat", "sbp", "dbp", "rhythm", "pain"],
    "mimic-iv/ed/triage.csv.gz": ["subject_id", "stay_id", "temperature", "heartrate", "resprate", "o2sat", "sbp",
                                  "dbp", "pain", "acuity", "chiefcomplaint"],
    "mimic-iv/ed/diagnosis.csv.gz": ["subject_id", "stay_id", "seq_num", "icd_code", "icd_version", "icd_title"],
}


def test_tables_have_mimic_names_columns_and_dtypes(small):
    for rel, cols in COLUMNS.items():
        df = _csv(small, rel)
        assert list(df.columns) == cols, rel
        assert len(df) > 0, rel
    adm = _csv(small, "mimic-iv/hosp/admissions.csv.gz")
    assert list(adm.columns[:5]) == ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime"]
    rl = _csv(small, "mimic-iv-ecg/record_list.csv")
    assert rl["subject_id"].dtype.kind == "i" and rl["study_id"].dtype.kind == "i"
    assert rl["study_id"].is_unique and (rl["file_name"] == rl["study_id"]).all()
    assert rl["subject_id"].between(10_000_000, 19_999_999).all()
    assert (rl["path"] == [f"files/p{str(s)[:4]}/p{s}/s{t}/{t}" for s, t in zip(rl.subject_id, rl.study_id)]).all()
    pd.to_datetime(rl["ecg_time"], format="%Y-%m-%d %H:%M:%S")
    lab = _csv(small, "mimic-iv/hosp/labevents.csv.gz")
    assert lab["valuenum"].dtype.kind == "f" and lab["itemid"].dtype.kind == "i"
    assert lab["labevent_id"].is_unique
    assert set(lab["flag"].dropna()) == {"abnormal"}
    items = set(_csv(small, "mimic-iv/hosp/d_labitems.csv.gz")["itemid"])
    assert set(lab["itemid"]) <= items and {50971, 50983, 50893, 51003, 50963, 51222, 50931} <= items
    mm = _csv(small, "mimic-iv-ecg/machine_measurements.csv")
    assert set(mm["study_id"]) == set(rl["study_id"])
    for c in ("rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis", "t_axis"):
        assert mm[c].dtype.kind == "i", c
    dx = _csv(small, "mimic-iv/hosp/diagnoses_icd.csv.gz")
    assert not dx["icd_code"].astype(str).str.contains(r"\.").any()  # MIMIC stores codes without the dot
    titles = _csv(small, "mimic-iv/hosp/d_icd_diagnoses.csv.gz")
    known = set(zip(titles.icd_code.astype(str), titles.icd_version))
    assert set(zip(dx.icd_code.astype(str), dx.icd_version)) <= known
    pats = _csv(small, "mimic-iv/hosp/patients.csv.gz")
    assert pats["anchor_age"].between(18, 91).all() and set(pats["gender"]) <= {"F", "M"}
    assert set(rl["subject_id"]) == set(pats["subject_id"])


def test_tables_join_on_ids(small):
    """Every id used in one table exists where it is defined (the loaders join on ids, never rows)."""
    adm = _csv(small, "mimic-iv/hosp/admissions.csv.gz")
    stays = _csv(small, "mimic-iv/ed/edstays.csv.gz")
    assert adm.hadm_id.is_unique and stays.stay_id.is_unique
    hadm = set(adm.hadm_id)
    for rel in ("mimic-iv/hosp/labevents.csv.gz", "mimic-iv/hosp/diagnoses_icd.csv.gz", "mimic-iv/ed/edstays.csv.gz"):
        assert set(_csv(small, rel).hadm_id.dropna().astype(int)) <= hadm, rel
    for rel in ("mimic-iv/ed/vitalsign.csv.gz", "mimic-iv/ed/triage.csv.gz", "mimic-iv/ed/diagnosis.csv.gz"):
        assert set(_csv(small, rel).stay_id) <= set(stays.stay_id), rel
    assert set(_csv(small, "mimic-iv/ed/triage.csv.gz").stay_id) == set(stays.stay_id)
    # ED ECGs fall inside their stay; a stay may hold two ECGs (serial ECGs)
    rl = _csv(small, "mimic-iv-ecg/record_list.csv").set_index("study_id")
    truth = _csv(small, "synth_truth.csv.gz").set_index("study_id")
    serial = truth[truth.index != truth.encounter_study_id]
    assert len(serial) > 0 and (serial.kind == "ed").all()
    gap = pd.to_datetime(rl.loc[serial.index, "ecg_time"]).to_numpy() - pd.to_datetime(
        rl.loc[serial.encounter_study_id, "ecg_time"]).to_numpy()
    assert (gap > pd.Timedelta(minutes=0)).all() and (gap < pd.Timedelta(hours=4)).all()


def test_wfdb_reads_a_record_in_mimic_layout(small):
    rl = _csv(small, "mimic-iv-ecg/record_list.csv")
    row = rl.iloc[0]
    base = small / "mimic-iv-ecg" / row["path"]
    rec = wfdb.rdrecord(str(base))
    assert rec.fs == 500 and rec.sig_len == 5000 and rec.n_sig == 12
    assert rec.sig_name == list(beat_model.MIMIC_LEADS)
    assert rec.sig_name[4:6] == ["aVF", "aVL"]  # MIMIC's order, not the usual aVL, aVF
    assert rec.adc_gain == [200.0] * 12 and rec.baseline == [0] * 12 and rec.fmt == ["16"] * 12
    assert rec.units == ["mV"] * 12
    assert (base.with_suffix(".dat")).stat().st_size == 120_000
    lines = base.with_suffix(".hea").read_text().splitlines()
    when = pd.Timestamp(row["ecg_time"])
    assert lines[0] == f"{row.study_id} 12 500 5000 {when:%H:%M:%S} {when:%d/%m/%Y}"
    assert re.fullmatch(rf"{row.study_id}\.dat 16 200\.0\(0\)/mV 16 0 -?\d+ \d+ 0 I", lines[1])
    assert lines[-1] == f"# <subject_id>: {row.subject_id}"
    raw = np.fromfile(base.with_suffix(".dat"), "<i2").reshape(5000, 12)
    fields = [ln.split() for ln in lines[1:13]]
    assert [int(f[5]) for f in fields] == raw[0].tolist()  # initial values
    assert [int(f[6]) for f in fields] == (raw.astype(np.int64).sum(0) % 65536).tolist()  # checksums
    assert np.nanmax(np.abs(rec.p_signal)) < 10  # mV, plausible


def _raw(root, path):
    return np.fromfile(Path(root) / "mimic-iv-ecg" / (path + ".dat"), "<i2").reshape(5000, 12).T.astype(np.int64)


def test_limb_leads_obey_einthoven_and_goldberger(small):
    rl = _csv(small, "mimic-iv-ecg/record_list.csv")
    truth = _csv(small, "synth_truth.csv.gz").set_index("study_id")
    clean = ~truth.loc[rl["study_id"], ["nan_run", "flat_lead"]].any(axis=1).to_numpy()
    assert clean.sum() > 50
    for path in rl["path"][clean]:
        i, ii, iii, avr, avf, avl = _raw(small, path)[:6]
        assert np.abs(iii - (ii - i)).max() <= 1
        assert np.abs(2 * avr + (i + ii)).max() <= 2  # |aVR + (I + II)/2| <= 1 adu
        assert np.abs(2 * avf - (2 * ii - i)).max() <= 3  # each within 1.25 adu of quantisation
        assert np.abs(2 * avl - (2 * i - ii)).max() <= 3


def test_generation_is_deterministic_by_seed(tmp_path, monkeypatch):
    # small chunks so that two worker processes really share the records, and parts of chunks rendered apart
    from ecgkt.data.synth import mimic_ecg

    with monkeypatch.context() as m:
        m.setattr(mimic_ecg, "PART_RECORDS", 3)
        a = _generate(tmp_path / "a", 12, seed=3, chunk_records=7)
    cfg = synth.SynthConfig(**{**EDGE, "chunk_records": 7})
    synth.generate(tmp_path / "b", patients=12, seed=3, config=cfg, progress=False, jobs=1)
    b = tmp_path / "b"
    c = _generate(tmp_path / "c", 12, seed=4, chunk_records=7)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files_a) > 30
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "mimic-iv-ecg/record_list.csv").read_bytes() != (c / "mimic-iv-ecg/record_list.csv").read_bytes()
    assert gzip.decompress((a / "mimic-iv/hosp/labevents.csv.gz").read_bytes()) != gzip.decompress(
        (c / "mimic-iv/hosp/labevents.csv.gz").read_bytes())


# --------------------------------------------------------------------------------------------------
# The machine measurements describe the waveforms
# --------------------------------------------------------------------------------------------------
def _measure_template(t, x):
    """QRS onset/end (spatial velocity, 8 % threshold, 16 ms quiet) and T end (tangent method on the
    lead with the largest T) of a clean single beat, in ms."""
    dt = t[1] - t[0]
    vel = np.sqrt((np.diff(x, axis=1) ** 2).sum(0)) / dt
    mag = np.sqrt((x ** 2).sum(0))
    win = (t > -60) & (t < 200)
    pk = np.flatnonzero(win)[np.argmax(mag[win])]
    thr = 0.08 * vel[max(pk - 60, 0):pk + 60].max()
    quiet = 8
    on = pk
    while on > quiet and (vel[on - quiet:on] > thr).any():
        on -= 1
    end = pk
    while end < len(vel) - quiet and (vel[end:end + quiet] > thr).any():
        end += 1
    after = np.flatnonzero(t > t[end] + 40)
    lead = np.argmax(np.abs(x[:, after]).max(1))
    y = x[lead] * np.sign(x[lead, after][np.argmax(np.abs(x[lead, after]))])
    tp = after[np.argmax(y[after])]
    slope = np.diff(y) / dt
    k = tp + np.argmin(slope[tp:tp + 200])
    return t[on], t[end], t[k] - y[k] / slope[k]


def test_machine_measurements_match_the_waveforms(small):
    sim = synth.simulate(45, SEED, synth.SynthConfig(**EDGE))  # the same draw that wrote `small`
    mm = _csv(small, "mimic-iv-ecg/machine_measurements.csv").set_index("study_id")
    p = sim.ecg
    rows = []
    for i, sid in enumerate(sim.ecgs["study_id"]):
        on, end, t_end = _measure_template(*beat_model.template(p, i))
        r = mm.loc[sid]
        qt_csv = np.nan if r.t_end == synth.MISSING else r.t_end - r.qrs_onset
        rows.append((end - on, r.qrs_end - r.qrs_onset, t_end - on, qt_csv, p["lbbb"][i], p["af"][i],
                     r.p_onset == synth.MISSING))
    d = pd.DataFrame(rows, columns=["qrs_m", "qrs_csv", "qt_m", "qt_csv", "lbbb", "af", "no_p"])
    assert (d.af == d.no_p).all()  # P onset missing exactly when there is no P wave
    reports = mm.filter(like="report_").astype(object).fillna("").astype(str).agg(" ".join, axis=1)
    truth = _csv(small, "synth_truth.csv.gz").set_index("study_id")
    says_pvc = reports.str.contains("ventricular premature", case=False)
    assert (truth.loc[says_pvc[says_pvc].index, "pvc_count"] > 0).all()  # only where the record has one
    q = d[~d.lbbb]  # in LBBB the discordant ST-T merges with the QRS (no quiet J point)
    qrs_err = q.qrs_m - q.qrs_csv
    assert abs(qrs_err.median()) <= 8 and (qrs_err.abs() <= 15).mean() > 0.9
    assert np.corrcoef(q.qrs_m, q.qrs_csv)[0, 1] > 0.85
    assert (d[d.lbbb].qrs_m >= 120).all()
    qt = d.dropna()
    qt_err = qt.qt_m - qt.qt_csv
    assert abs(qt_err.median()) <= 5 and (qt_err.abs() <= 15).mean() > 0.9
    # the RR interval in the CSV is the one in the file: count beats in lead II of a few records
    rl = _csv(small, "mimic-iv-ecg/record_list.csv").set_index("study_id")
    ok = truth.index[~truth.nan_run & ~truth.flat_lead & ~truth.noisy & ~truth.af][:12]
    for sid in ok:
        x = _raw(small, rl.loc[sid, "path"]).astype(float) / 200
        vel = np.convolve(np.abs(np.diff(x, axis=1)).sum(0), np.ones(8) / 8, "same")
        peaks, _ = find_peaks(vel, distance=int(0.6 * mm.loc[sid, "rr_interval"] / 2), height=0.45 * vel.max())
        assert np.median(np.diff(peaks)) * 2 == pytest.approx(mm.loc[sid, "rr_interval"], rel=0.08)


# --------------------------------------------------------------------------------------------------
# The documented rules are visible in the written data, and vanish when switched off
# --------------------------------------------------------------------------------------------------
def _paired_lab(root, itemid, window_min=60):
    """Lab value closest to each ECG within +-window (what the cohort builder does), by study_id."""
    rl = _csv(root, "mimic-iv-ecg/record_list.csv")
    lab = _csv(root, "mimic-iv/hosp/labevents.csv.gz")
    lab = lab[(lab.itemid == itemid) & lab.valuenum.notna()][["subject_id", "charttime", "valuenum"]]
    rl["t"], lab["t"] = pd.to_datetime(rl.ecg_time), pd.to_datetime(lab.charttime)
    m = pd.merge_asof(rl.sort_values("t"), lab.sort_values("t")[["subject_id", "t", "valuenum"]], on="t",
                      by="subject_id", tolerance=pd.Timedelta(minutes=window_min), direction="nearest")
    return m.set_index("study_id")["valuenum"]


def _t_amplitude(root, path):
    """Largest |T| in V2-V4 of the median beat, 100-380 ms after the steepest QRS point, in mV."""
    x = _raw(root, path).astype(float) / 200
    vel = np.convolve(np.abs(np.diff(x, axis=1)).sum(0), np.ones(10) / 10, "same")
    peaks, _ = find_peaks(vel, distance=150, height=0.5 * np.percentile(vel, 99.5))
    peaks = peaks[(peaks > 60) & (peaks < 5000 - 250)]
    if len(peaks) < 3:
        return np.nan
    med = np.median(np.stack([x[:, p - 60:p + 250] for p in peaks]), axis=0)
    med -= med[:, 20:30].mean(axis=1, keepdims=True)  # PR-segment baseline
    return np.abs(med[7:10, 110:250]).max()


def _ecg_features(root):
    rl = _csv(root, "mimic-iv-ecg/record_list.csv").set_index("study_id")
    mm = _csv(root, "mimic-iv-ecg/machine_measurements.csv").set_index("study_id").loc[rl.index]
    truth = _csv(root, "synth_truth.csv.gz").set_index("study_id").loc[rl.index]
    f = pd.DataFrame(index=rl.index)
    qt = (mm.t_end - mm.qrs_onset).where(mm.t_end != synth.MISSING)
    f["qtc"] = qt / (mm.rr_interval / 1000) ** (1 / 3)
    f["qrs"] = mm.qrs_end - mm.qrs_onset
    f["hr"] = 60000 / mm.rr_interval
    f["tamp"] = [_t_amplitude(root, p) for p in rl.path]
    for name, item in (("K", 50971), ("Ca", 50893), ("Na", 50983)):
        f[name] = _paired_lab(root, item)
    f["usable"] = (f.qrs < 120) & (mm.p_onset != synth.MISSING) & ~truth.nan_run & ~truth.flat_lead
    return f


@pytest.fixture(scope="module")
def features(rules_on, rules_off):
    return _ecg_features(rules_on), _ecg_features(rules_off)


def test_t_amplitude_rises_with_potassium_and_not_when_switched_off(features):
    on, off = features
    keep = on.usable & on.K.notna()
    ratio = (on.tamp / off.tamp)[keep]
    high, normal = on.K[keep] > 5.5, on.K[keep].between(3.8, 4.9)
    assert high.sum() >= 5
    assert ratio[high].median() > 1.2  # same seed: only the rule differs
    assert (ratio[normal] - 1).abs().median() < 0.05
    assert on.tamp[keep][high].median() > on.tamp[keep][normal].median()


def test_qtc_falls_with_calcium_and_not_when_switched_off(features):
    on, off = features
    keep = on.usable & on.Ca.notna() & on.K.notna() & on.qtc.notna()
    assert keep.sum() > 80
    rho = spearmanr(on.Ca[keep], on.qtc[keep])[0]
    assert rho < -0.2
    # the on-off difference is the rule itself: about -22 ms per mg/dL Ca and -10 ms per mEq K
    delta = (on.qtc - off.qtc)[keep]
    design = np.c_[on.Ca[keep] - 9.4, on.K[keep] - 4.2, np.ones(keep.sum())]
    coef = np.linalg.lstsq(design, delta, rcond=None)[0]
    assert -30 < coef[0] < -14 and -16 < coef[1] < -4


def test_sodium_has_no_ecg_signature(features):
    on, _ = features
    keep = on.usable & on.Na.notna()
    for col in ("qtc", "qrs", "hr", "tamp"):
        ok = keep & on[col].notna()
        assert abs(spearmanr(on.Na[ok], on[col][ok])[0]) < 0.25, col
    # and on many encounters (no files needed): the latent sodium is independent of every ECG parameter
    sim = synth.simulate(6000, 2)
    for name, v in sim.ecg.items():
        v = np.asarray(v, dtype=float)
        if v.ndim == 1 and v.std() > 0:
            assert abs(spearmanr(sim.enc["na"], v)[0]) < 0.05, name


def test_every_rule_changes_the_ecg_parameters_and_off_removes_it():
    """Each rule, switched off, changes exactly the records it applies to (same seed)."""
    base = synth.simulate(3000, 9)
    probes = {  # rule -> ECG parameter it must move
        "potassium_t": "t_amp", "potassium_conduction": "qrs", "potassium_low": "u_amp", "potassium_qtc": "qtc",
        "calcium_qtc": "qtc", "magnesium_qtc": "qtc", "troponin_st": "st_elev", "bnp_af": "af", "bnp_lvh": "lvh",
        "bnp_qrs": "qrs", "anemia_hr": "hr", "glucose_hypo": "hr", "temperature_hr": "hr", "sex_qtc": "qtc",
        "age_ecg": "pr", "bmi_voltage": "volt", "conduction_ecg": "qrs", "creatinine_potassium": "t_amp",
        "acidosis_potassium": "qtc", "electrolyte_ectopy": "pvc_rate", "acute_illness_hr": "hr", "ckd_ecg": "qtc",
        "cirrhosis_qtc": "qtc", "diabetes_hr": "hr",
    }
    assert set(probes) == set(rules.RULES)
    for rule, param in probes.items():
        off = synth.simulate(3000, 9, synth.SynthConfig(rules={rule: 0}))
        changed = np.asarray(base.ecg[param], float) != np.asarray(off.ecg[param], float)
        assert changed.any(), rule
    # sodium is not an input of any rule: doubling every rule leaves sodium's draw untouched
    doubled = synth.simulate(3000, 9, synth.SynthConfig(rules={r: 2.0 for r in rules.RULES}))
    assert np.array_equal(base.enc["na"], doubled.enc["na"])


def test_diagnoses_use_tabular_only_and_ecg_only_information(small):
    codes = {c for c, _, _ in coding.ICD10}
    assert {"E871", "E119", "D649", "N179", "A419"} <= codes  # sodium, glucose, Hb, creatinine, sepsis markers
    assert {"I447", "I4510", "I440"} <= codes  # conduction disease: ECG only
    sim = synth.simulate(3000, 4)
    dx = coding.diagnoses(np.random.default_rng(0), sim.enc, sim.ecg, sim.config)
    hypona = np.array(["E871" in d for d in dx])
    assert hypona.mean() > 0.01
    assert np.corrcoef(hypona, sim.enc["na"] < 132)[0, 1] > 0.7


# --------------------------------------------------------------------------------------------------
# MIMIC's edge cases
# --------------------------------------------------------------------------------------------------
def test_edge_cases_are_present(small):
    lab = _csv(small, "mimic-iv/hosp/labevents.csv.gz")
    values = set(lab["value"].astype(str))
    assert "<0.01" in values and "___" in values
    assert lab.loc[lab.value.isin(["<0.01", "___"]), "valuenum"].isna().all()
    assert (lab.ref_range_lower.isna() & lab.ref_range_upper.isna()).any()
    k = lab[(lab.itemid == 50971) & lab.valuenum.notna()]
    assert k.groupby(["ref_range_lower", "ref_range_upper"]).ngroups >= 2  # ranges differ between rows
    has_range = lab.valuenum.notna() & lab.ref_range_lower.notna() & (lab.ref_range_upper > 0)
    outside = (lab.valuenum < lab.ref_range_lower) | (lab.valuenum > lab.ref_range_upper)
    flagged = lab.flag.eq("abnormal")
    assert (has_range & (outside != flagged)).any() and (has_range & (outside == flagged)).mean() > 0.9
    assert lab.hadm_id.isna().any() and lab.hadm_id.notna().any()
    vit = _csv(small, "mimic-iv/ed/vitalsign.csv.gz")
    assert (vit.temperature < 45).any() and (vit.temperature > 90).any()  # degC among degF
    rl = _csv(small, "mimic-iv-ecg/record_list.csv")
    assert rl.subject_id.value_counts().max() > 1  # several ECGs per patient
    k_near = _paired_lab(small, 50971)
    assert 0.1 < k_near.notna().mean() < 0.9  # the window catches many, not all
    truth = _csv(small, "synth_truth.csv.gz").set_index("study_id")
    nan_run = truth.index[truth.nan_run][0]
    rec = wfdb.rdrecord(str(small / "mimic-iv-ecg" / rl.set_index("study_id").loc[nan_run, "path"]))
    assert np.isnan(rec.p_signal).any()  # -32768 reads as NaN
    flat = truth.index[truth.flat_lead][0]
    raw = _raw(small, rl.set_index("study_id").loc[flat, "path"])
    assert (raw.std(axis=1) == 0).any()
    mm = _csv(small, "mimic-iv-ecg/machine_measurements.csv")
    assert (mm[["p_onset", "p_end", "t_end", "p_axis", "qrs_axis", "t_axis"]] == synth.MISSING).any().any()
    assert mm.report_0.notna().all()
    dx = _csv(small, "mimic-iv/hosp/diagnoses_icd.csv.gz")
    assert set(dx.icd_version) == {9, 10}
    omr = _csv(small, "mimic-iv/hosp/omr.csv.gz")
    bp = omr[omr.result_name.str.startswith("Blood Pressure")].result_value
    assert bp.str.fullmatch(r"\d+/\d+").all() and omr.result_name.nunique() >= 5


# --------------------------------------------------------------------------------------------------
# Command line and bad input
# --------------------------------------------------------------------------------------------------
def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["synth", "--out", str(out), "--patients", "3", "--seed", "2", "--quiet"]) == 0
    assert (out / "mimic-iv-ecg" / "record_list.csv").exists()
    assert "records/s" in capsys.readouterr().out
    assert cli.main(["synth", "--out", str(out), "--patients", "3", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["synth", "--out", str(out), "--patients", "3", "--quiet", "--overwrite",
                     "--rule", "potassium_t=0", "--no-waveforms"]) == 0
    assert not (out / "mimic-iv-ecg" / "files").exists()
    assert cli.main(["synth", "--out", str(out), "--overwrite", "--rule", "kalium=1"]) == 2
    assert "unknown physiology rule" in capsys.readouterr().err
    with pytest.raises(ECGKTError, match="patients"):
        synth.generate(tmp_path / "x", patients=0)
    with pytest.raises(ECGKTError, match="scale"):
        synth.SynthConfig(rules={"potassium_t": -1})


def test_cli_module_is_import_light():
    """`ecgkt --help` imports the synth command line: it, the package and the rule table must not pull in
    numpy, pandas or the generator at module level (they load when the command runs)."""
    import ast

    import ecgkt.cli as cli_pkg
    import ecgkt.data.synth as pkg

    root = Path(pkg.__file__).parent
    for path in (root / "__init__.py", root / "rules.py", Path(cli_pkg.__file__).parent / "synth.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; imports inside functions are lazy by design
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in ("numpy", "pandas", "torch", "scipy"), (path, mod)
                assert mod in ("__future__", "math", ".rules", "..errors", "...errors", "..data.synth.rules"), (path, mod)
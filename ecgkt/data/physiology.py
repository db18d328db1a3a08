"""Latent patient state -> labs, vitals, biometrics, ECG morphology, machine statements, ICD-10 codes.

Every arrow the synthetic dataset uses is a named rule below. Each rule has a scale in
``SynthConfig.rules`` (1.0 = as documented, 0.0 = switched off, 2.0 = doubled effect), so an
experiment can remove one link and check that a model loses exactly that information.
Directions follow clinical teaching (``shared/docs/physiology.md``); the numbers are generator
choices, plausible but not clinical facts.

Rules (``K`` potassium mEq/L, ``Ca`` total calcium mg/dL, ``Mg`` mg/dL, ``TnT`` troponin T ng/mL,
``BNP`` NT-proBNP pg/mL, ``Hb`` g/dL, ``T`` temperature degC; "both" = visible in the tabular data
and in the ECG, "tabular" = labs/vitals only, "ECG" = waveform only):

=====================  ==========================================================================  =========
rule                   effect (generator choice)                                                   visible
=====================  ==========================================================================  =========
potassium_t            K > 5: T amplitude x (1 + 0.5 (K - 5)), T narrower (peaked)                  both
potassium_conduction   K > 6.5: PR and QRS +15 ms per mEq, P amplitude x max(0, 1 - 0.4 (K - 6.5))  both
potassium_low          K < 3.5: T x max(0.3, 1 - 0.35 (3.5 - K)); K < 3.3: ST depression up to       both
                       0.1 mV and a U wave up to 0.2 mV ~130 ms after the T peak
potassium_qtc          QTc -10 ms per +1 mEq K (around 4.2)                                         both
calcium_qtc            QTc -22 ms per +1 mg/dL total Ca (around 9.4), ST segment only (T shape kept) both
magnesium_qtc          Mg < 2.0: QTc +12 ms per -0.5 mg/dL, T flattening, larger U (weak target)     both
troponin_st            P(territory injury) = sigmoid(3.5 (log10 TnT + 1)): ST elevation             both
                       0.1-0.3 mV in anterior/inferior/lateral leads with reciprocal depression,
                       T inversion and (older injury) Q waves >= 40 ms
bnp_af                 P(atrial fibrillation) = sigmoid(2 (log10 BNP - 3.8)) (no P, irregular RR)   both
bnp_lvh                P(LVH voltage) = sigmoid(1.6 (log10 BNP - 3.4) + 0.03 (SBP - 140)); LVH      both
                       multiplies QRS voltage by 1.6-2.2 with lateral strain
bnp_qrs                QRS +8 ms per log10 BNP above 2; HR +5 bpm per log10 above 2.5               both
creatinine_potassium   mean K +0.3 mEq/L per mg/dL creatinine above 1.2 (mediated: creat -> K -> T)  tabular
acidosis_potassium     mean K +0.6 mEq/L per -0.1 pH below 7.40                                     tabular
anemia_hr              HR +4 bpm per g/dL Hb below 11; diffuse ST -0.05 mV when Hb < 7              both
glucose_hypo           glucose < 70 mg/dL: HR +10 bpm, QTc up to +30 ms                             both
temperature_hr         HR +9 bpm per degC above 37; T < 32 degC: bradycardia, PR/QRS/QT longer,      both
                       J (Osborn) wave
sex_qtc                women QTc +12 ms                                                              both
age_ecg                above 40 y: PR +0.5 ms/y, QRS voltage -0.4 %/y, QRS axis -0.4 deg/y           both
bmi_voltage            QRS voltage x (1 - 0.015 (BMI - 25)), clipped to [0.55, 1.25]                 both
conduction_ecg         latent conduction disease (RBBB, LBBB, 1st-degree AV block; no lab marker)   ECG
electrolyte_ectopy     P(ventricular premature beats) +0.15 when K < 3.3, +0.1 when Mg < 1.6        both
                       (base 0.02, +0.06 heart failure, +0.04 coronary disease); 6-25 % of beats
=====================  ==========================================================================  =========

Information deliberately kept on one side:

* only tabular: sodium (its latent driver is independent of every ECG-affecting state, so an
  ECG-only model should score near chance on it -- the negative control), glucose above 70,
  white cells, platelets, CRP, liver enzymes, albumin, lactate, most of the blood count.
* only ECG: conduction disease (RBBB, LBBB, 1st-degree AV block) and the rhythm when no BNP is drawn.
* both: potassium, calcium, magnesium (weak), troponin, NT-proBNP, haemoglobin (weak), temperature.

ICD-10 diagnoses come from the latent state (not from the measured values) with coder noise:
each true condition is coded with probability ``code_sensitivity`` and each code appears falsely
with probability ``code_false_rate``. Several depend on tabular-only information (hyponatraemia,
diabetes, anaemia, kidney injury, sepsis, liver disease, obesity), several on ECG-only information
(bundle branch blocks, AV block) -- so a model that sees both can beat an ECG-only one.
"""
from __future__ import annotations

import numpy as np

from ..errors import ECGKTError

RULES: dict[str, str] = {
    "potassium_t": "K > 5: taller, narrower T",
    "potassium_conduction": "K > 6.5: longer PR and QRS, smaller P",
    "potassium_low": "K < 3.5: flat T, ST depression, U wave",
    "potassium_qtc": "QTc -10 ms per +1 mEq K",
    "calcium_qtc": "QTc -22 ms per +1 mg/dL Ca (ST segment only)",
    "magnesium_qtc": "Mg < 2: QTc up, flat T, U wave",
    "troponin_st": "troponin -> territorial ST elevation, T inversion, Q waves",
    "bnp_af": "NT-proBNP -> atrial fibrillation",
    "bnp_lvh": "NT-proBNP and SBP -> LVH voltage and strain",
    "bnp_qrs": "NT-proBNP -> wider QRS, faster HR",
    "creatinine_potassium": "creatinine -> higher K",
    "acidosis_potassium": "low pH -> higher K",
    "anemia_hr": "low Hb -> faster HR, demand ST depression",
    "glucose_hypo": "glucose < 70 -> faster HR, longer QTc",
    "temperature_hr": "fever -> faster HR; hypothermia -> slow, long intervals, J wave",
    "sex_qtc": "women: longer QTc",
    "age_ecg": "age -> longer PR, lower voltage, leftward axis",
    "bmi_voltage": "BMI -> lower QRS voltage",
    "conduction_ecg": "latent conduction disease -> RBBB, LBBB, 1st-degree AV block",
    "electrolyte_ectopy": "low K or Mg -> ventricular premature beats",
}


def check_rules(rules: dict[str, float]) -> dict[str, float]:
    """Full rule-scale dict (defaults 1.0) after checking the names and values given."""
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise ECGKTError(f"unknown physiology rule(s) {unknown}; known rules: {sorted(RULES)}")
    out = {name: 1.0 for name in RULES}
    for name, scale in rules.items():
        scale = float(scale)
        if not np.isfinite(scale) or scale < 0:
            raise ECGKTError(f"rule {name!r}: scale must be a finite number >= 0, got {scale}")
        out[name] = scale
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Subjects (chronic state) and encounters (acute state, one per ECG)
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# ECG morphology
# --------------------------------------------------------------------------------------------
# Heart-vector frame: x = patient's left, y = inferior (feet), z = anterior.
TERRITORIES = ("anterior", "inferior", "lateral")
_TERRITORY_VEC = np.array([[0.25, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, -0.35, 0.25]])


def _frontal(theta_deg, z, mag):
    """Dipoles (n, 3) from a frontal axis angle, an anterior component and a magnitude."""
    th = np.deg2rad(theta_deg)
    v = _unit(np.stack([np.cos(th), np.sin(th), np.broadcast_to(z, th.shape)], axis=-1))
    return v * np.asarray(mag)[:, None]


def ecg_parameters(rng, e, cfg) -> dict[str, np.ndarray]:
    """Beat-model parameters of each ECG from its encounter state ``e`` (rules applied here).

    Times in ms measured from QRS onset; amplitudes as 3-D dipoles in mV (see ``ecg_synth``).
    """
    r = cfg.rules
    n = len(e["k"])
    k, ca, mg, age, female = e["k"], e["ca"], e["mg"], e["age"], e["female"]
    log_bnp = np.log10(e["bnp"])
    over40 = np.clip(age - 40, 0, None)
    hypo_t = e["hypothermia"] * r["temperature_hr"]

    # rhythm
    af = rng.random(n) < r["bnp_af"] * _sigmoid(2.0 * (log_bnp - 3.8))
    hr = e["base_hr"] + rng.normal(0, 4, n)
    hr += r["temperature_hr"] * 9 * np.clip(e["temp_c"] - 37, 0, None)
    hr += r["anemia_hr"] * 4 * np.clip(11 - e["hb"], 0, None)
    hr += r["bnp_qrs"] * 5 * np.clip(log_bnp - 2.5, 0, None)
    hr += r["glucose_hypo"] * 10 * (e["glucose"] < 70)
    hr += 12 * e["sepsis_sev"] + 6 * e["mi"]
    hr = np.where(hypo_t > 0, hr - hypo_t * 25, hr)
    hr = np.where(af, rng.uniform(75, 135, n), hr)
    hr = np.clip(hr, 38, 165)
    rr = 60000.0 / hr

    # conduction (ms)
    k_hi = np.clip(k - 6.5, 0, None)
    cond = r["conduction_ecg"]
    lbbb = (rng.random(n) < cond) & e["lbbb"]
    rbbb = (rng.random(n) < cond) & e["rbbb"] & ~lbbb
    avb1 = (rng.random(n) < cond) & e["avb1"]
    pr = e["pr0"] + r["age_ecg"] * 0.5 * over40 + avb1 * rng.uniform(55, 130, n)
    pr += r["potassium_conduction"] * 15 * k_hi + hypo_t * 40
    pr = np.clip(pr, 100, 380)
    p_dur = np.clip(rng.normal(100, 10, n), 70, 135)
    qrs = e["qrs_width0"] + r["bnp_qrs"] * 8 * np.clip(log_bnp - 2, 0, None)
    qrs += r["potassium_conduction"] * 15 * k_hi + hypo_t * 25
    qrs = np.where(lbbb, rng.uniform(130, 165, n), np.where(rbbb, rng.uniform(122, 150, n), qrs))
    qrs = np.clip(qrs, 66, 220)

    # QTc (Fridericia) with electrolyte rules; QT = QTc * RR^(1/3) + extra QRS width
    qtc = e["base_qtc"] + r["sex_qtc"] * 12 * female
    qtc -= r["potassium_qtc"] * 10 * (k - 4.2)
    qtc -= r["calcium_qtc"] * 22 * (ca - 9.4)
    qtc += r["magnesium_qtc"] * 24 * np.clip(2.0 - mg, 0, None)
    qtc += r["glucose_hypo"] * 30 * np.clip((70 - e["glucose"]) / 30, 0, 1)
    qtc += hypo_t * 60
    qt = qtc * (rr / 1000.0) ** (1 / 3) + np.clip(qrs - 95, 0, None) * 0.8
    qt = np.clip(qt, qrs + 150, 700)

    # voltage and axes
    volt = e["voltage0"] * (1 - r["age_ecg"] * 0.004 * over40)
    volt *= np.clip(1 - r["bmi_voltage"] * 0.015 * (e["bmi"] - 25), 0.55, 1.25)
    lvh_p = _sigmoid(1.6 * (log_bnp - 3.4) + 0.03 * (e["sbp"] - 140))
    lvh = rng.random(n) < r["bnp_lvh"] * lvh_p
    volt = volt * np.where(lvh, rng.uniform(1.6, 2.2, n), 1.0)
    axis = e["qrs_axis0"] - r["age_ecg"] * 0.4 * over40 - 25 * lbbb
    p_amp = np.clip(rng.normal(0.15, 0.03, n), 0.06, 0.3)
    p_amp *= np.clip(1 - r["potassium_conduction"] * 0.4 * k_hi, 0, 1)
    p_amp = np.where(af, 0.0, p_amp)

    # T wave amplitude and shape
    t_amp = np.clip(rng.normal(0.42, 0.09, n), 0.15, 0.8)
    t_sig_scale = np.ones(n)
    k_over5 = np.clip(k - 5, 0, None)
    t_amp *= 1 + r["potassium_t"] * 0.5 * k_over5
    t_sig_scale *= np.clip(1 - r["potassium_t"] * 0.12 * k_over5, 0.55, 1)
    t_amp *= np.clip(1 - r["potassium_low"] * 0.35 * np.clip(3.5 - k, 0, None), 0.3, 1)
    t_amp *= np.clip(1 - r["magnesium_qtc"] * 0.3 * np.clip(1.8 - mg, 0, None), 0.5, 1)
    u_amp = 0.03 + r["potassium_low"] * 0.2 * np.clip((3.3 - k) / 0.9, 0, 1)
    u_amp += r["magnesium_qtc"] * 0.08 * np.clip((1.7 - mg) / 0.6, 0, 1)
    st_mag = -r["potassium_low"] * 0.1 * np.clip((3.3 - k) / 0.8, 0, 1)  # along the T direction
    st_mag -= r["anemia_hr"] * 0.05 * (e["hb"] < 7)

    # injury: territory ST vector, T inversion, Q waves
    p_inj = r["troponin_st"] * _sigmoid(3.5 * (np.log10(e["tnt"]) + 1.0))
    injury = (rng.random(n) < np.clip(p_inj, 0, 1)) & (r["troponin_st"] > 0)
    territory = np.where(injury, rng.integers(0, 3, n), -1)
    terr_vec = _unit(_TERRITORY_VEC)[np.clip(territory, 0, 2)]
    st_elev = np.where(injury, rng.uniform(0.1, 0.3, n), 0.0) * min(1.0, r["troponin_st"])
    old_injury = injury & (np.nan_to_num(e["mi_age_h"], nan=0) > 12)
    pathologic_q = old_injury | ((rng.random(n) < 0.25) & e["cad"] & (r["troponin_st"] > 0))
    q_terr = np.where(territory >= 0, territory, rng.integers(0, 3, n))

    # dipoles (n, 3), mV
    t_axis = axis + rng.normal(-5, 12, n)
    d = {
        "p_vec": _frontal(rng.normal(55, 15, n), 0.15, p_amp),
        "q_vec": _unit(np.tile([-0.55, 0.05, 0.83], (n, 1))) * (0.18 * volt)[:, None],
        "r_vec": _frontal(axis, -0.35, 1.25 * volt),
        "s_vec": _unit(np.array([-0.25, -0.45, -0.85])) * (0.45 * volt)[:, None],
        "rp_vec": np.zeros((n, 3)),
        "t_vec": _frontal(t_axis, 0.35, t_amp),
    }
    # bundle branch blocks reshape the QRS and make T discordant
    rb_vec = _unit(np.array([-0.65, 0.05, 0.75]))
    d["rp_vec"] = np.where(rbbb[:, None], rb_vec * (0.7 * volt)[:, None], d["rp_vec"])
    lb_r = _frontal(axis, -0.6, 1.3 * volt)
    lb_rp = _frontal(axis - 25, -1.2, 1.1 * volt)  # the notch: late forces turn posterior
    d["rp_vec"] = np.where(lbbb[:, None], lb_rp, d["rp_vec"])
    d["r_vec"] = np.where(lbbb[:, None], lb_r, d["r_vec"])
    d["q_vec"] = np.where(lbbb[:, None], 0.0, d["q_vec"])
    d["s_vec"] = np.where(lbbb[:, None], d["s_vec"] * 0.3, d["s_vec"])
    discordant = -_unit(d["r_vec"]) * t_amp[:, None]
    d["t_vec"] = np.where(lbbb[:, None], discordant, d["t_vec"])
    # LVH strain: lateral ST depression and T flattening/inversion
    strain = lvh & (rng.random(n) < 0.6)
    d["t_vec"] = np.where(strain[:, None], 0.3 * discordant, d["t_vec"])
    st_vec = _unit(d["t_vec"] + 1e-9) * st_mag[:, None]
    st_vec += np.where(strain[:, None], -0.08 * _unit(d["r_vec"]), 0.0)
    st_vec += terr_vec * st_elev[:, None]
    # injury T inversion in the territory (older injury), pathologic Q pointing away from it
    t_inv = old_injury[:, None] * (-0.5 * terr_vec * t_amp[:, None])
    d["t_vec"] = d["t_vec"] + t_inv
    q_path = -_unit(_TERRITORY_VEC)[q_terr] * (0.35 * volt)[:, None]
    d["q_vec"] = np.where(pathologic_q[:, None] & ~lbbb[:, None], q_path, d["q_vec"])
    d["st_vec"] = st_vec
    d["u_vec"] = _unit(d["t_vec"] + np.array([0.0, 0.0, 0.6])) * u_amp[:, None]
    d["j_vec"] = _unit(d["r_vec"]) * (hypo_t * 0.3)[:, None]

    # ventricular premature beats: wide QRS of random direction, discordant T, no P
    ectopy = 0.02 + 0.06 * e["hf"] + 0.04 * e["cad"]
    ectopy = ectopy + r["electrolyte_ectopy"] * (0.15 * (k < 3.3) + 0.1 * (mg < 1.6))
    pvc = rng.random(n) < ectopy
    pvc_dir = _unit(rng.normal(0, 1, (n, 3)))
    d["pvc_vec"] = pvc_dir * (1.5 * volt)[:, None]
    d["pvc_t_vec"] = -pvc_dir * rng.uniform(0.3, 0.6, n)[:, None]

    # wave timing (ms after QRS onset) and widths
    D = qrs
    q_w = np.where(pathologic_q, np.maximum(0.3 * D, 42) / 4, 0.07 * D)  # >= 40 ms Q when pathologic
    timing = {
        "q_c": 2 * q_w, "q_s": q_w,
        "r_c": np.where(rbbb, 0.33 * D, np.where(lbbb, 0.36 * D, 0.45 * D)),
        "r_s": np.where(rbbb, 0.08 * D, np.where(lbbb, 0.155 * D, 0.11 * D)),
        "s_c": np.where(rbbb, 0.55 * D, 0.76 * D), "s_s": np.where(rbbb, 0.08 * D, 0.12 * D),
        "rp_c": np.where(rbbb, 0.8 * D, 0.69 * D), "rp_s": np.where(rbbb, 0.1 * D, 0.155 * D),
    }
    t_sd = 0.11 * qt * t_sig_scale
    t_su = t_sd * np.where(t_sig_scale < 1, 1.1 + 0.5 * (t_sig_scale - 0.55) / 0.45, 1.6)
    timing.update(
        t_peak=qt - 2 * t_sd, t_sd=t_sd, t_su=t_su,
        u_c=qt - 2 * t_sd + 130, u_s=np.full(n, 35.0),
        j_c=D + 8, j_s=np.full(n, 12.0),
        p_c=-pr + p_dur / 2, p_s=p_dur / 4,
    )
    return {
        "hr": hr, "rr": rr, "af": af, "pr": pr, "p_dur": p_dur, "qrs": qrs, "qt": qt, "qtc": qtc,
        "lbbb": lbbb, "rbbb": rbbb, "avb1": avb1 & ~af, "lvh": lvh, "strain": strain,
        "injury": injury, "territory": territory, "st_elev": st_elev, "pathologic_q": pathologic_q,
        "pvc_rate": np.where(pvc, rng.uniform(0.06, 0.25, n), 0.0), "pvc_qrs": rng.uniform(130, 170, n),
        "t_amp": t_amp, "u_amp": u_amp, "st_mag": st_mag, "volt": volt, "hypothermia_ecg": hypo_t > 0,
        **d, **timing,
    }


def frontal_axis(vec: np.ndarray) -> np.ndarray:
    """Frontal-plane axis in degrees (0 = lead I, +90 = aVF), the convention of machine reports."""
    return np.rad2deg(np.arctan2(vec[..., 1], vec[..., 0]))


def qrs_net_vector(p) -> np.ndarray:
    """Area-weighted sum of the QRS dipoles (Q, R, S, R'), whose frontal angle is the QRS axis."""
    return sum(p[f"{w}_vec"] * p[f"{w}_s"][:, None] for w in ("q", "r", "s", "rp"))


# --------------------------------------------------------------------------------------------
# Machine statements and ICD-10 codes
# --------------------------------------------------------------------------------------------
def machine_statements(rng, p, noisy: np.ndarray, cfg) -> list[list[str]]:
    """Free-text machine statements per ECG (report_0..), from the ECG itself, with label noise."""
    n = len(p["hr"])
    flip = lambda prob: rng.random(n) < prob  # noqa: E731
    qrs_axis = frontal_axis(qrs_net_vector(p))
    qtc = p["qt"] / (p["rr"] / 1000.0) ** (1 / 3)
    miss = cfg.statement_miss_rate
    stmts: list[list[str]] = []
    fa = flip(cfg.statement_false_rate)
    m = {name: flip(miss) for name in ("rhythm", "avb", "bbb", "lvh", "st", "q", "qt", "axis", "t", "volt")}
    for i in range(n):
        s = []
        if p["af"][i]:
            s.append("Atrial fibrillation" + (" with rapid ventricular response" if p["hr"][i] > 110 else ""))
        elif p["hr"][i] > 100:
            s.append("Sinus tachycardia")
        elif p["hr"][i] < 60:
            s.append("Sinus bradycardia")
        else:
            s.append("Sinus rhythm")
        if m["rhythm"][i] and not p["af"][i] and fa[i]:
            s[0] = "Atrial fibrillation"  # rhythm misread
        if p["avb1"][i] and not m["avb"][i]:
            s.append("1st degree A-V block")
        if p["lbbb"][i] and not m["bbb"][i]:
            s.append("Left bundle branch block")
        if p["rbbb"][i] and not m["bbb"][i]:
            s.append("Right bundle branch block")
        if not (p["lbbb"][i] or p["rbbb"][i]) and p["qrs"][i] >= 110 and not m["bbb"][i]:
            s.append("Nonspecific intraventricular conduction delay")
        if qrs_axis[i] < -30 and not m["axis"][i]:
            s.append("Left axis deviation")
        elif qrs_axis[i] > 100 and not m["axis"][i]:
            s.append("Right axis deviation")
        if p["lvh"][i] and not m["lvh"][i]:
            s.append("Left ventricular hypertrophy" + (" with repolarization abnormality" if p["strain"][i] else ""))
        if p["volt"][i] < 0.6 and not m["volt"][i]:
            s.append("Low QRS voltages in limb leads")
        if p["pathologic_q"][i] and not m["q"][i]:
            s.append(f"{['Anterior', 'Inferior', 'Lateral'][max(p['territory'][i], 0)]} infarct - age undetermined")
        if p["injury"][i] and not m["st"][i]:
            terr = ["anterior", "inferior", "lateral"][p["territory"][i]]
            s.append(f"ST elevation, consider {terr} injury or acute infarct")
            s.append("** ** ACUTE MI / STEMI ** **")
        elif p["st_mag"][i] < -0.04 and not m["st"][i]:
            s.append("ST depression, consider subendocardial injury")
        if p["pvc_count"][i] > 0 and not m["rhythm"][i]:
            s.append("Ventricular premature complex" if p["pvc_count"][i] == 1
                     else "Frequent ventricular premature complexes")
        if p["u_amp"][i] > 0.1 and not m["t"][i]:
            s.append("Prominent U waves")
        if p["t_amp"][i] > 0.75 and not m["t"][i]:
            s.append("Peaked T waves")
        elif p["t_amp"][i] < 0.2 and not m["t"][i]:
            s.append("Nonspecific T wave abnormality")
        if qtc[i] > 480 and not m["qt"][i]:
            s.append("Prolonged QT interval")
        if noisy[i]:
            s.append("Poor data quality, interpretation may be adversely affected")
        if len(s) == 1:
            s.append("Normal ECG")
        elif any(x.startswith(("ST elevation", "Left bundle", "Atrial fib", "Left ventricular")) for x in s):
            s.append("Abnormal ECG")
        else:
            s.append("Borderline ECG")
        stmts.append(s)
    return stmts


# ICD-10 code, title, and the latent condition it codes (a function of the encounter state e and
# the ECG parameters p). Codes are stored without the dot, as in MIMIC.
ICD10: list[tuple[str, str, object]] = [
    ("I214", "Non-ST elevation (NSTEMI) myocardial infarction", lambda e, p: e["mi"] & ~p["injury"]),
    ("I2109", "ST elevation (STEMI) myocardial infarction involving other coronary artery of anterior wall",
     lambda e, p: p["injury"] & (p["territory"] == 0)),
    ("I2119", "ST elevation (STEMI) myocardial infarction involving other coronary artery of inferior wall",
     lambda e, p: p["injury"] & (p["territory"] == 1)),
    ("I2129", "ST elevation (STEMI) myocardial infarction involving other sites",
     lambda e, p: p["injury"] & (p["territory"] == 2)),
    ("I2510", "Atherosclerotic heart disease of native coronary artery without angina pectoris",
     lambda e, p: e["cad"]),
    ("I509", "Heart failure, unspecified", lambda e, p: e["hf"] & ~e["hf_decomp"]),
    ("I5023", "Acute on chronic systolic (congestive) heart failure", lambda e, p: e["hf_decomp"]),
    ("I4891", "Unspecified atrial fibrillation", lambda e, p: p["af"]),
    ("I10", "Essential (primary) hypertension", lambda e, p: e["htn"] & ~e["ckd"]),
    ("I129", "Hypertensive chronic kidney disease with stage 1 through stage 4 chronic kidney disease, "
     "or unspecified chronic kidney disease", lambda e, p: e["htn"] & e["ckd"]),
    ("N179", "Acute kidney failure, unspecified", lambda e, p: e["aki"]),
    ("N183", "Chronic kidney disease, stage 3 (moderate)", lambda e, p: e["ckd"] & (e["ckd_sev"] < 0.5)),
    ("N184", "Chronic kidney disease, stage 4 (severe)", lambda e, p: e["ckd"] & (e["ckd_sev"] >= 0.5)),
    ("E875", "Hyperkalemia", lambda e, p: e["k"] > 5.5),
    ("E876", "Hypokalemia", lambda e, p: e["k"] < 3.3),
    ("E871", "Hypo-osmolality and hyponatremia", lambda e, p: e["na"] < 132),
    ("E870", "Hyperosmolality and hypernatremia", lambda e, p: e["na"] > 147),
    ("E8342", "Hypomagnesemia", lambda e, p: e["mg"] < 1.5),
    ("E8351", "Hypocalcemia", lambda e, p: e["ca"] < 7.9),
    ("E8352", "Hypercalcemia", lambda e, p: e["ca"] > 10.9),
    ("E119", "Type 2 diabetes mellitus without complications", lambda e, p: e["diabetes"] & (e["glucose"] <= 200)),
    ("E1165", "Type 2 diabetes mellitus with hyperglycemia", lambda e, p: e["diabetes"] & (e["glucose"] > 200)),
    ("E162", "Hypoglycemia, unspecified", lambda e, p: e["glucose"] < 65),
    ("D649", "Anemia, unspecified", lambda e, p: e["hb"] < np.where(e["female"], 10.5, 11.5)),
    ("D62", "Acute posthemorrhagic anemia", lambda e, p: e["bleed"] & (e["hb"] < 10)),
    ("A419", "Sepsis, unspecified organism", lambda e, p: e["sepsis_sev"] > 0),
    ("R6520", "Severe sepsis without septic shock", lambda e, p: (e["sepsis_sev"] > 0) & (e["lactate"] > 2.5)),
    ("K7469", "Other cirrhosis of liver", lambda e, p: e["liver"]),
    ("E669", "Obesity, unspecified", lambda e, p: e["bmi"] >= 30),
    ("E785", "Hyperlipidemia, unspecified", lambda e, p: e["hyperlipidemia"]),
    ("I447", "Left bundle-branch block, unspecified", lambda e, p: p["lbbb"]),
    ("I4510", "Unspecified right bundle-branch block", lambda e, p: p["rbbb"]),
    ("I440", "Atrioventricular block, first degree", lambda e, p: p["avb1"]),
    ("T688XXA", "Hypothermia, initial encounter", lambda e, p: e["hypothermia"]),
    ("R509", "Fever, unspecified", lambda e, p: e["temp_c"] > 38.3),
    ("R0789", "Other chest pain", lambda e, p: e["cad"] & ~e["mi"]),
]
# ICD-10 parent (category) titles, so truncated codes can be named; and a few ICD-9 codes that
# old admissions use (they carry icd_version 9 and are an edge case for the cohort builder).
ICD10_PARENTS = {
    "I21": "Acute myocardial infarction", "I25": "Chronic ischemic heart disease", "I50": "Heart failure",
    "I48": "Atrial fibrillation and flutter", "I12": "Hypertensive chronic kidney disease",
    "N17": "Acute kidney failure", "N18": "Chronic kidney disease (CKD)",
    "E87": "Other disorders of fluid, electrolyte and acid-base balance",
    "E83": "Disorders of mineral metabolism", "E11": "Type 2 diabetes mellitus",
    "E16": "Other disorders of pancreatic internal secretion", "D64": "Other anemias",
    "D62": "Acute posthemorrhagic anemia", "A41": "Other sepsis",
    "R65": "Symptoms and signs specifically associated with systemic inflammation and infection",
    "K74": "Fibrosis and cirrhosis of liver", "E66": "Overweight and obesity",
    "E78": "Disorders of lipoprotein metabolism and other lipidemias",
    "I44": "Atrioventricular and left bundle-branch block", "I45": "Other conduction disorders",
    "T68": "Hypothermia", "R50": "Fever of other and unknown origin", "R07": "Pain in throat and chest",
}
ICD9 = {
    "4280": "Congestive heart failure, unspecified", "42731": "Atrial fibrillation",
    "4019": "Unspecified essential hypertension", "25000": "Diabetes mellitus without mention of complication",
    "5849": "Acute kidney failure, unspecified", "41071": "Subendocardial infarction, initial episode of care",
}
ICD10_TO_ICD9 = {"I509": "4280", "I5023": "4280", "I4891": "42731", "I10": "4019", "E119": "25000",
                 "E1165": "25000", "N179": "5849", "I214": "41071"}


def diagnoses(rng, e, p, cfg) -> list[list[str]]:
    """ICD-10 codes per encounter from the latent state, with coder misses and false codes."""
    n = len(e["k"])
    truth = np.stack([np.asarray(f(e, p), dtype=bool) for _, _, f in ICD10], axis=1)
    coded = truth & (rng.random(truth.shape) < cfg.code_sensitivity)
    coded |= rng.random(truth.shape) < cfg.code_false_rate
    codes = [c for c, _, _ in ICD10]
    return [[codes[j] for j in np.flatnonzero(coded[i])] for i in range(n)]

"""What the machine and the coders write down: machine report statements from the ECG itself and
ICD-10 codes from the latent state, each with its own label noise."""
from __future__ import annotations

import numpy as np

from .physiology import frontal_axis, qrs_net_vector

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
# Symptom codes an ED stay gets when none of its conditions is coded (one at random): chapter R of
# ICD-10 ("symptoms, signs and abnormal findings"), no latent condition behind them.
SYMPTOM_CODES = {"R079": "Chest pain, unspecified", "R0602": "Shortness of breath", "R531": "Weakness",
                 "R1084": "Generalized abdominal pain", "R55": "Syncope and collapse", "R42": "Dizziness and giddiness"}
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
    "R06": "Abnormalities of breathing", "R53": "Malaise and fatigue", "R10": "Abdominal and pelvic pain",
    "R55": "Syncope and collapse", "R42": "Dizziness and giddiness",
}
ICD9 = {
    "4280": "Congestive heart failure, unspecified", "42731": "Atrial fibrillation",
    "4019": "Unspecified essential hypertension", "25000": "Diabetes mellitus without mention of complication",
    "5849": "Acute kidney failure, unspecified", "41071": "Subendocardial infarction, initial episode of care",
}
ICD10_TO_ICD9 = {"I509": "4280", "I5023": "4280", "I4891": "42731", "I10": "4019", "E119": "25000",
                 "E1165": "25000", "N179": "5849", "I214": "41071"}


# Clinical priority of each code (lower = listed earlier): acute, life-threatening problems first,
# chronic comorbidities last. The order within an encounter adds per-encounter noise to these
# (PRIORITY_NOISE_SD), as coders list the reason for the visit first and the rest loosely.
CODE_PRIORITY = {
    "I2109": 1, "I2119": 1, "I2129": 1, "I214": 1, "A419": 1.5, "R6520": 2, "E875": 2, "I5023": 2, "T688XXA": 2,
    "N179": 2.5, "E162": 2.5, "I4891": 3, "D62": 3, "E871": 3, "E876": 3, "E870": 3, "E8351": 3.5, "E8352": 3.5,
    "R0789": 4, "E8342": 4, "R509": 4, "I447": 4, "N184": 4, "I129": 4.5, "I509": 4.5, "D649": 4.5, "I4510": 5,
    "I440": 5, "N183": 5, "I2510": 5, "E1165": 5, "K7469": 5, "E119": 6, "I10": 6, "E785": 7, "E669": 7,
}
PRIORITY_NOISE_SD = 1.5


def conditions(e, p) -> np.ndarray:
    """True conditions (n, len(ICD10)) bool, in ICD10 order, from the latent state and the ECG."""
    return np.stack([np.asarray(f(e, p), dtype=bool) for _, _, f in ICD10], axis=1)


def diagnoses(rng, e, p, cfg) -> list[list[str]]:
    """ICD-10 codes per encounter from the latent state, with coder misses and false codes.

    Each true condition is coded with probability ``code_sensitivity``, each code appears falsely
    with probability ``code_false_rate``; an encounter's codes are listed in clinical priority
    order with per-encounter randomness (the ``seq_num`` order of hosp/diagnoses_icd and
    ed/diagnosis), never in the order of this table.
    """
    n = len(e["k"])
    truth = conditions(e, p)
    coded = truth & (rng.random(truth.shape) < cfg.code_sensitivity)
    coded |= rng.random(truth.shape) < cfg.code_false_rate
    codes = [c for c, _, _ in ICD10]
    priority = np.array([CODE_PRIORITY[c] for c in codes])
    order = np.argsort(priority + rng.normal(0, PRIORITY_NOISE_SD, truth.shape), axis=1, kind="stable")
    return [[codes[j] for j in order[i] if coded[i, j]] for i in range(n)]

"""The generator's rule table: every arrow from the latent state to the ECG, by name.

Import-light on purpose (no numpy): the command line lists the rules in ``ecgkt synth --help``.
Each rule has a scale in ``SynthConfig.rules`` (1.0 = as documented in docs/synthetic_data.md,
0.0 = switched off, 2.0 = doubled); the label groups of :mod:`.labels` are derived from the same
table, so switching a rule off moves the conditions and labs it carries.
"""
from __future__ import annotations

import math

from ...errors import ECGKTError

# name -> one-line summary (the full effect sizes and sources are in docs/synthetic_data.md)
RULES = {
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
    "acute_illness_hr": "sepsis and acute MI -> faster HR",
    "ckd_ecg": "chronic kidney disease -> LVH more likely, longer QTc (weak)",
    "cirrhosis_qtc": "cirrhosis -> longer QTc (weak)",
    "diabetes_hr": "diabetes -> faster resting HR (weak)",
}

def check_rules(rules: dict[str, float]) -> dict[str, float]:
    """Full rule-scale dict (defaults 1.0) after checking the names and values given."""
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise ECGKTError(f"unknown physiology rule(s) {unknown}; known rules: {sorted(RULES)}")
    out = {name: 1.0 for name in RULES}
    for name, scale in rules.items():
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise ECGKTError(f"rule {name!r}: scale must be a number, got {scale!r}") from None
        if not math.isfinite(scale) or scale < 0:
            raise ECGKTError(f"rule {name!r}: scale must be a finite number >= 0, got {scale}")
        out[name] = scale
    return out


# --------------------------------------------------------------------------------------------------
# What each rule carries: the label groups of ecgkt.data.synth.labels are derived from these two
# tables and the rule scales, never fitted. A path "a+b" needs every rule on it switched on (e.g.
# creatinine -> K needs creatinine_potassium, and K -> ECG needs a potassium rule).
# Shared causes (age, sex) are not paths: every age-related condition correlates with the age_ecg
# changes; the groups describe what the condition itself does to the ECG.
# --------------------------------------------------------------------------------------------------
_K_HIGH = ("potassium_t", "potassium_conduction", "potassium_qtc")  # what a raised K reaches the ECG through
_BNP_ECG = ("bnp_af", "bnp_lvh", "bnp_qrs")


def _via(first: str, then) -> tuple[str, ...]:
    return tuple(f"{first}+{t}" for t in then)


# ICD-10 code -> (rule that renders the condition in the beat model, or None when the condition is
# a latent/lab state; ECG paths; strength of the signature when on). "strong": a typical case moves
# the parameter it affects by at least one between-subject SD (e.g. cirrhosis QTc +15 ms against
# SD 13 ms); "weak": less (diabetes HR +4 bpm against SD ~10 bpm); "none": no path.
CONDITION_PATHS: dict[str, tuple[str | None, tuple[str, ...], str]] = {
    "I214": (None, ("acute_illness_hr",), "weak"),  # NSTEMI: troponin without the ST injury
    "I2109": ("troponin_st", ("troponin_st",), "strong"),
    "I2119": ("troponin_st", ("troponin_st",), "strong"),
    "I2129": ("troponin_st", ("troponin_st",), "strong"),
    "I2510": (None, ("troponin_st",), "weak"),  # old-infarct Q waves in a quarter of CAD
    "I509": (None, _BNP_ECG + ("conduction_ecg",), "strong"),  # LBBB is more common in HF
    "I5023": (None, _BNP_ECG + ("conduction_ecg",), "strong"),
    "I4891": ("bnp_af", ("bnp_af",), "strong"),
    "I10": (None, ("bnp_lvh",), "weak"),  # SBP -> LVH
    "I129": (None, ("bnp_lvh", "ckd_ecg", "calcium_qtc", "anemia_hr") + _BNP_ECG
             + _via("creatinine_potassium", _K_HIGH), "weak"),
    "N179": (None, _via("creatinine_potassium", _K_HIGH), "weak"),
    "N183": (None, ("ckd_ecg", "calcium_qtc", "anemia_hr") + _BNP_ECG + _via("creatinine_potassium", _K_HIGH),
             "weak"),
    "N184": (None, ("ckd_ecg", "calcium_qtc", "anemia_hr") + _BNP_ECG + _via("creatinine_potassium", _K_HIGH),
             "weak"),
    "E875": (None, ("potassium_t", "potassium_conduction", "potassium_qtc"), "strong"),
    "E876": (None, ("potassium_low", "potassium_qtc", "electrolyte_ectopy"), "strong"),
    "E871": (None, (), "none"),  # sodium: the negative control
    "E870": (None, (), "none"),
    "E8342": (None, ("magnesium_qtc", "electrolyte_ectopy"), "weak"),
    "E8351": (None, ("calcium_qtc",), "strong"),
    "E8352": (None, ("calcium_qtc",), "strong"),
    "E119": (None, ("diabetes_hr",), "weak"),
    "E1165": (None, ("diabetes_hr",), "weak"),
    "E162": (None, ("glucose_hypo",), "strong"),
    "D649": (None, ("anemia_hr",), "weak"),
    "D62": (None, ("anemia_hr",), "weak"),
    "A419": (None, ("acute_illness_hr", "temperature_hr", "anemia_hr") + _via("acidosis_potassium", _K_HIGH),
             "strong"),
    "R6520": (None, ("acute_illness_hr", "temperature_hr", "anemia_hr") + _via("acidosis_potassium", _K_HIGH),
              "strong"),
    "K7469": (None, ("cirrhosis_qtc", "calcium_qtc"), "strong"),  # low albumin carries total Ca down too
    "E669": (None, ("bmi_voltage",), "weak"),
    "E785": (None, (), "none"),
    "I447": ("conduction_ecg", ("conduction_ecg",), "strong"),
    "I4510": ("conduction_ecg", ("conduction_ecg",), "strong"),
    "I440": ("conduction_ecg", ("conduction_ecg",), "strong"),
    "T688XXA": (None, ("temperature_hr",), "strong"),
    "R509": (None, ("temperature_hr",), "strong"),  # fever -> sinus tachycardia
    "R0789": (None, ("troponin_st",), "weak"),  # chest pain without MI: CAD
}

# Lab test (the cohort's test names) -> direction -> (ECG paths, "direct" when the lab value
# itself enters the rule, "mediated" when the lab marks a latent state that does).
LAB_PATHS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "potassium": {"low": (("potassium_low", "potassium_qtc", "electrolyte_ectopy"), "direct"),
                  "high": (("potassium_t", "potassium_conduction", "potassium_qtc"), "direct")},
    "calcium": {"low": (("calcium_qtc",), "direct"), "high": (("calcium_qtc",), "direct")},
    "free_calcium": {"low": (("calcium_qtc",), "mediated"), "high": (("calcium_qtc",), "mediated")},
    "magnesium": {"low": (("magnesium_qtc", "electrolyte_ectopy"), "direct")},
    "troponin_t": {"high": (("troponin_st",), "direct")},
    "ck_mb": {"high": (("troponin_st",), "mediated")},
    "ck": {"high": (("troponin_st",), "mediated")},
    "nt_probnp": {"high": (_BNP_ECG, "direct")},
    "hemoglobin": {"low": (("anemia_hr",), "direct")},
    "hematocrit": {"low": (("anemia_hr",), "mediated")},
    "glucose": {"low": (("glucose_hypo",), "direct"), "high": (("diabetes_hr",), "mediated")},
    "creatinine": {"high": (_via("creatinine_potassium", _K_HIGH) + ("ckd_ecg",), "direct")},
    "urea_nitrogen": {"high": (_via("creatinine_potassium", _K_HIGH) + ("ckd_ecg",), "mediated")},
    "phosphate": {"high": (("ckd_ecg", "calcium_qtc"), "mediated")},
    "ph": {"low": (_via("acidosis_potassium", _K_HIGH), "direct")},
    "bicarbonate": {"low": (_via("acidosis_potassium", _K_HIGH), "mediated")},
    "anion_gap": {"high": (_via("acidosis_potassium", _K_HIGH), "mediated")},
    "lactate": {"high": (("acute_illness_hr", "temperature_hr"), "mediated")},
    "wbc": {"high": (("acute_illness_hr", "temperature_hr"), "mediated")},
    "crp": {"high": (("acute_illness_hr", "temperature_hr"), "mediated")},
    "platelets": {"low": (("acute_illness_hr", "cirrhosis_qtc"), "mediated")},
    "albumin": {"low": (("calcium_qtc", "cirrhosis_qtc"), "mediated")},
    "alt": {"high": (("cirrhosis_qtc",), "mediated")},
    "ast": {"high": (("cirrhosis_qtc",), "mediated")},
    "alp": {"high": (("cirrhosis_qtc",), "mediated")},
    "rdw": {"high": (("anemia_hr",), "mediated")},
    "sodium": {},  # the negative control: no path at all
    "chloride": {},  # follows sodium
}


def active_paths(paths, scales: dict[str, float]) -> list[str]:
    """The paths whose every rule has a scale > 0."""
    return [p for p in paths if all(scales.get(r, 0.0) > 0 for r in p.split("+"))]

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
}

# Rules whose effect is small next to the beat-to-beat and between-subject spread: a condition
# carried only by these has a "weak" ECG signature (label_groups reports it).
WEAK_RULES = frozenset({"anemia_hr", "magnesium_qtc", "glucose_hypo", "bmi_voltage",
                        "creatinine_potassium", "acidosis_potassium"})


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

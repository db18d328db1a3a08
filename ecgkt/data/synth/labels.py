"""What the evaluation needs to know about the generator: which labels an ECG can carry, and the
ECG-oracle features (the true beat-model parameters a perfect ECG reader would see).

Both are derived from the generator's own tables (``rules.CONDITION_PATHS``, ``rules.LAB_PATHS``,
the beat-model parameters in ``synth_truth.csv.gz``) and the rule scales, never fitted on data.
"""
from __future__ import annotations

import numpy as np

from ...errors import ECGKTError
from . import beat_model, coding, rules

GROUPS = ("ecg_visible", "lab_signature", "tabular_only", "report")
_VISIBILITY = {"ecg_visible": 0, "lab_signature": 1, "tabular_only": 2}
_GENERATOR_CODES = {c for c, _, _ in coding.ICD10} | set(coding.SYMPTOM_CODES)


def _condition_group(code: str, scales: dict) -> dict:
    """Group of one full generator code under the rule scales."""
    rendered_by, paths, strength = rules.CONDITION_PATHS.get(code, (None, (), "none"))
    active = rules.active_paths(paths, scales)
    if rendered_by is not None and scales.get(rendered_by, 0.0) > 0:
        group = "ecg_visible"
    elif rendered_by is None and active:
        group = "lab_signature"
    else:  # no path, or a rendered condition whose rule is off (it then never occurs: codes are noise)
        group, strength, active = "tabular_only", "none", []
    return {"group": group, "strength": strength, "paths": active}


def label_groups(label_keys, rule_scales: dict | None = None) -> dict[str, dict]:
    """Label key -> ``{"group", "symptom", "strength", "paths", "codes"}``.

    ``group`` is one of:

    * ``ecg_visible``: a condition the beat model renders itself (STEMI territories, AF, LBBB,
      RBBB, 1st-degree AV block);
    * ``lab_signature``: a latent or lab condition that reaches the ECG through a documented rule
      (hyperkalaemia -> peaked T, hypocalcaemia -> long QTc, heart failure -> AF/LVH, ...);
    * ``tabular_only``: no rule path to the ECG (sodium disorders, hyperlipidaemia, the ED symptom
      codes), or a rendered condition whose rule is switched off;
    * ``report``: a machine statement (``report:*``), read off the ECG itself;
    * ``unknown``: a key the generator never writes (e.g. from a real MIMIC cohort).

    ``symptom`` is True for ICD-10 chapter R codes (symptoms, signs and abnormal findings: chest
    pain, syncope, fever, severe sepsis R65.2 ...). ``strength`` is ``strong``/``weak``/``none`` as
    declared in ``rules.CONDITION_PATHS``; ``paths`` lists the active rule paths. A parent key
    (``icd:I21``) pools its generator codes (``codes``): it takes the most ECG-visible group among
    them and ``mixed`` says whether they disagree. ``rule_scales`` defaults to every rule at 1.0;
    pass ``SynthConfig(rules=...).rules`` (or ``synth_summary.json``'s ``rules``) for another
    dataset.
    """
    scales = rules.check_rules(rule_scales or {})
    out = {}
    for key in label_keys:
        kind, _, code = str(key).partition(":")
        if kind == "report":
            out[key] = {"group": "report", "symptom": False, "strength": "strong", "paths": [], "codes": [],
                        "mixed": False}
            continue
        if kind != "icd" or not code:
            out[key] = {"group": "unknown", "symptom": False, "strength": "none", "paths": [], "codes": [],
                        "mixed": False}
            continue
        children = sorted(c for c in _GENERATOR_CODES if c.startswith(code.upper()))
        if not children:
            out[key] = {"group": "unknown", "symptom": code.upper().startswith("R"), "strength": "none", "paths": [],
                        "codes": [], "mixed": False}
            continue
        per = [_condition_group(c, scales) for c in children]
        best = min(per, key=lambda g: (_VISIBILITY[g["group"]], g["strength"] != "strong"))
        out[key] = {"group": best["group"], "symptom": code.upper().startswith("R"), "strength": best["strength"],
                    "paths": sorted({p for g in per for p in g["paths"]}), "codes": children,
                    "mixed": len({g["group"] for g in per}) > 1}
    return out


def lab_groups(test_names, rule_scales: dict | None = None) -> dict[str, dict]:
    """Lab test (``potassium``) or lab label (``potassium_high``) -> ``{"group", "link", "paths"}``.

    ``group`` is ``ecg_linked`` when an active rule path takes the lab (in that direction, for a
    label) to the ECG, else ``ecg_silent``; sodium and chloride are always silent (the negative
    control). ``link`` is ``direct`` when the lab value itself enters a rule (potassium, calcium,
    magnesium, troponin T, NT-proBNP, haemoglobin, glucose < 70, creatinine, pH), ``mediated`` when
    the lab marks a latent state that does (CK-MB through infarction, liver enzymes through
    cirrhosis, ...), ``none`` when silent. Unknown names are ``ecg_silent`` with ``link`` ``unknown``.
    """
    scales = rules.check_rules(rule_scales or {})
    out = {}
    for name in test_names:
        test, direction = str(name), None
        for d in ("low", "high"):
            if test.endswith(f"_{d}") and test[: -len(d) - 1] in rules.LAB_PATHS:
                test, direction = test[: -len(d) - 1], d
        if test not in rules.LAB_PATHS:
            out[name] = {"group": "ecg_silent", "link": "unknown", "paths": []}
            continue
        links = rules.LAB_PATHS[test]
        chosen = [links[direction]] if direction in links else [] if direction else list(links.values())
        paths, kinds = [], set()
        for ps, link in chosen:
            active = rules.active_paths(ps, scales)
            if active:
                paths += active
                kinds.add(link)
        link = "direct" if "direct" in kinds else "mediated" if kinds else "none"
        out[name] = {"group": "ecg_linked" if paths else "ecg_silent", "link": link, "paths": sorted(set(paths))}
    return out


# --------------------------------------------------------------------------------------------------
# ECG-oracle features
# --------------------------------------------------------------------------------------------------
# Scalar beat-model parameters in synth_truth.csv.gz that shape the rendered waveform: intervals
# (ms), rhythm and conduction flags, amplitudes (mV), wave timings and widths (ms after QRS onset),
# premature beats, record quality. Latent state and lab values are deliberately absent.
ORACLE_SCALARS = (
    "hr", "rr", "measured_rr", "pr", "p_dur", "qrs", "qt", "qtc", "af", "lbbb", "rbbb", "avb1", "lvh", "strain",
    "injury", "st_elev", "pathologic_q", "pvc_rate", "pvc_qrs", "pvc_count", "t_amp", "u_amp", "st_mag", "volt",
    "hypothermia_ecg", "q_c", "q_s", "r_c", "r_s", "s_c", "s_s", "rp_c", "rp_s", "t_peak", "t_sd", "t_su", "u_c",
    "u_s", "j_c", "j_s", "p_c", "p_s", "noisy", "nan_run", "flat_lead",
)
ORACLE_WAVES = ("p", "q", "r", "s", "rp", "st", "t", "u", "j", "pvc", "pvc_t")


def oracle_features(truth_df):
    """``(study_ids, X, names)`` from a ``synth_truth.csv.gz`` table: only what the waveform shows.

    ``X`` (n, F) float64 holds the scalar beat-model parameters (``ORACLE_SCALARS``), the injury
    territory one-hot, and for every wave dipole (``ORACLE_WAVES``) its 3 components, its amplitude
    in each of the 8 rendered leads (I, II, V1-V6: the dipole projected on the lead vector, which is
    what the file holds before noise) and its magnitude. No latent state and no lab value enters.
    """
    df = truth_df
    missing = [c for c in ORACLE_SCALARS if c not in df.columns]
    missing += [f"{w}_vec_{a}" for w in ORACLE_WAVES for a in "xyz" if f"{w}_vec_{a}" not in df.columns]
    if missing:
        raise ECGKTError(f"synth_truth table lacks the oracle columns {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (written by an older ecgkt synth?)")
    cols, names = [], []
    for c in ORACLE_SCALARS:
        cols.append(df[c].to_numpy(dtype=np.float64))
        names.append(c)
    territory = df["territory"].to_numpy()
    for t, label in enumerate(("anterior", "inferior", "lateral")):
        cols.append((territory == t).astype(np.float64))
        names.append(f"territory_{label}")
    leads = beat_model.LEAD_VECTORS  # (8, 3): I, II, V1-V6
    for w in ORACLE_WAVES:
        vec = np.stack([df[f"{w}_vec_{a}"].to_numpy(dtype=np.float64) for a in "xyz"], axis=1)
        for a, axis in enumerate("xyz"):
            cols.append(vec[:, a])
            names.append(f"{w}_vec_{axis}")
        proj = vec @ leads.T
        for j, lead in enumerate(beat_model.INDEPENDENT):
            cols.append(proj[:, j])
            names.append(f"{w}_amp_{lead}")
        cols.append(np.linalg.norm(vec, axis=1))
        names.append(f"{w}_magnitude")
    X = np.stack(cols, axis=1)
    return df["study_id"].to_numpy(), X, names

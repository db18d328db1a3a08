"""Outputs a reader can use: evidence-gated explanations, measured intervals against the generator's truth,
the model card and provenance, strict JSON, header age and sex in the report."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from ecgkt.predict.explanations import NO_GATE_NOTE, ExplanationGate, explain, gate_config
from predict_helpers import LAB_NAMES, make_model, run_cli


def _strict(text):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------------------- explanations
def test_gate_config_is_strict_json_and_checks_its_threshold():
    cfg = gate_config({"potassium_high": 0.91, "calcium_low": float("nan")}, threshold=0.75)
    assert cfg == {"lab_validation_auroc": {"potassium_high": 0.91, "calcium_low": None}, "explanation_min_auroc": 0.75}
    _strict(json.dumps(cfg, allow_nan=False))
    with pytest.raises(ValueError):
        gate_config({}, threshold=1.5)


def test_gate_needs_a_documented_association_and_a_good_validation_auroc():
    gate = ExplanationGate.from_config(gate_config(
        {"potassium_high": 0.91, "calcium_low": 0.62, "sodium_high": 0.99, "glucose_high": 0.95,
         "troponin_high": None}, 0.7))
    findings = [explain(n, p) for n, p in [("potassium_high", 0.8), ("calcium_low", 0.9), ("sodium_high", 0.95),
                                           ("glucose_high", 0.97), ("troponin_high", 0.9), ("magnesium_low", 0.9)]]
    assert [f.output for f in gate.explanation(findings, 0.5)] == ["potassium_high"]
    assert gate.explanation(findings, 0.85) == []  # below the probability threshold
    assert gate.note is None


def test_a_model_without_validation_aurocs_explains_nothing_and_says_so():
    gate = ExplanationGate.from_config({"dx_names": []})
    assert not gate.available and gate.note == NO_GATE_NOTE
    assert gate.explanation([explain("potassium_high", 0.99)]) == []


def test_explanations_read_as_sentences():
    gate = ExplanationGate.from_config(gate_config({n: 0.9 for n in ("potassium_high", "ph_low", "troponin_high")}))
    for name in ("potassium_high", "ph_low", "troponin_high"):
        text = explain(name, 0.81).sentence(gate.auroc(name))
        assert text[0].isupper() and text.endswith(".") and "associated with no" not in text
        assert "(probability 0.81, validation AUROC 0.90). Expected on the ECG: " in text, text
    assert explain("potassium_high", 0.81).sentence(0.9).startswith("High potassium predicted")
    assert explain("ph_low", 0.81).sentence(0.9).startswith("Low pH predicted")


@pytest.fixture(scope="module")
def gated_model_dir(tmp_path_factory):
    model = make_model()
    aurocs = dict.fromkeys(LAB_NAMES, 0.5) | {"potassium_high": 0.93, "troponin_high": 0.88}
    model.config.update(gate_config(aurocs, 0.7))
    model.config["metrics"] = {"test_macro_auroc": 0.8123, "test_macro_auprc": float("nan")}
    return model.save_pretrained(tmp_path_factory.mktemp("gated") / "model")


def test_cli_json_is_strict_with_names_and_gated_explanations(cinc_dir, gated_model_dir):
    r = run_cli("predict", gated_model_dir, cinc_dir / "E07500", "--format", "json", "--lab-threshold", "0")
    assert r.returncode == 0, r.stderr
    assert "lab explanations not shown" not in r.stderr
    doc = _strict(r.stdout)
    res = doc["results"][0]
    assert res["diagnosis_names"]["atrial fibrillation"] == "Atrial fibrillation"
    assert [e["output"] for e in res["explanation"]] == sorted(
        ["potassium_high", "troponin_high"], key=lambda n: -res["labs"][n])
    assert {e["output"]: e["validation_auroc"] for e in res["explanation"]} == {"potassium_high": 0.93,
                                                                               "troponin_high": 0.88}
    assert all(e["text"].endswith(".") for e in res["explanation"])


# ------------------------------------------------------------------------------ model card and provenance
def test_model_card_and_provenance(gated_model_dir):
    card = (gated_model_dir / "README.md").read_text()
    for words in ("Not a clinical device", "synthetic", "## Intended use", "## Limitations", "## Labels",
                  "| test_macro_auroc | 0.8123 |", "| test_macro_auprc | n/a |", "`potassium_high` | 0.930 |",
                  "Atrial fibrillation", "## Provenance"):
        assert words in card, words
    config = _strict((gated_model_dir / "config.json").read_text())
    prov = config["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["numpy"] and prov["python"]
    assert prov["hardware"]["cpu_count"] >= 1 and prov["date"].endswith("Z")
    assert config["metrics"]["test_macro_auprc"] is None or math.isfinite(config["metrics"]["test_macro_auprc"])


def test_provenance_names_the_command_and_commit():
    from ecgkt.provenance import provenance

    p = provenance(["ecgkt", "pipeline", "--out", "runs/x"])
    assert p["command"] == "ecgkt pipeline --out runs/x"
    assert p["git"] is None or len(p["git"]["commit"]) == 40
    json.dumps(p, allow_nan=False)


# ------------------------------------------------------------------------------------ measured intervals
@pytest.fixture(scope="module")
def synth_records(tmp_path_factory):
    from ecgkt.data import synth

    root = tmp_path_factory.mktemp("synth_iv")
    synth.generate(root, patients=24, seed=3, config=synth.SynthConfig(), progress=False, jobs=1)
    return root


def test_intervals_match_the_generators_truth(synth_records):
    from ecgkt.data import read_record
    from ecgkt.predict.intervals import measure_intervals
    from ecgkt.predict.report import display_signal

    rl = pd.read_csv(synth_records / "mimic-iv-ecg/record_list.csv")
    truth = pd.read_csv(synth_records / "synth_truth.csv.gz").set_index("study_id")
    rows = []
    for _, r in rl.iterrows():
        t = truth.loc[r.study_id]
        if t.noisy or t.nan_run or t.flat_lead or t.pvc_count > 0:
            continue
        rec = read_record(synth_records / "mimic-iv-ecg" / r.path)
        m = measure_intervals(display_signal(rec, dict(lowpass=40.0)), rec.fs)
        rr_s = t.measured_rr / 1000.0  # the RR the generator drew the beats at (t.hr is the patient's state)
        rows.append(dict(m, t_hr=60.0 / rr_s, t_pr=t.pr, t_qrs=t.qrs, t_qt=t.qt, af=bool(t.af),
                         t_qtc=t.qt / np.sqrt(rr_s)))
    d = pd.DataFrame(rows)
    assert len(d) >= 20
    assert ((d.hr_bpm - d.t_hr).abs() <= 3).mean() >= 0.9
    qrs_err = d.qrs_ms - d.t_qrs
    assert abs(qrs_err.median()) <= 10 and (qrs_err.abs() <= 20).mean() >= 0.9
    qt_err = (d.qt_ms - d.t_qt).dropna()
    assert len(qt_err) >= 0.9 * len(d) and abs(qt_err.median()) <= 10 and (qt_err.abs() <= 25).mean() >= 0.85
    qtc_err = (d.qtc_ms - d.t_qtc).dropna()
    assert abs(qtc_err.median()) <= 15
    sinus = d[~d.af]
    pr_err = (sinus.pr_ms - sinus.t_pr).dropna()
    assert len(pr_err) >= 0.8 * len(sinus) and abs(pr_err.median()) <= 10 and (pr_err.abs() <= 30).mean() >= 0.85
    assert d[d.af].pr_ms.isna().all()  # no P wave, no PR


def test_intervals_of_a_flat_or_short_signal_are_none():
    from ecgkt.predict.intervals import FIELDS, measure_intervals

    assert measure_intervals(np.zeros((12, 5000)), 500.0) == dict.fromkeys(FIELDS)
    assert measure_intervals(np.ones((12, 100)), 500.0) == dict.fromkeys(FIELDS)


def test_report_shows_intervals_and_header_age_and_sex(cinc_dir, gated_model_dir, tmp_path):
    r = run_cli("predict", gated_model_dir, cinc_dir / "E07500", "--report", tmp_path)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "E07500.html").read_text()
    assert "Male, 78 y" in page  # "# Age: 78", "# Sex: Male" in E07500.hea
    assert "HR\u00a0" in page and "\u00a0bpm" in page and "QRS\u00a0" in page and "QTc\u00a0" in page

"""Label names for people (ecgkt.labels): ICD-10-CM titles, statement names, parents shown once."""
import json

import pytest

from ecgkt.data.mimic import REPORT_STATEMENTS
from ecgkt.labels import REPORT_STATEMENT_NAMES, Labels, config_entries, describe, label_table

cm = pytest.importorskip("simple_icd_10_cm", reason="simple-icd-10-cm (a dependency) gives the ICD titles")


def test_icd_keys_read_as_code_and_title():
    assert describe("icd:E875")["name"] == "E87.5 Hyperkalemia"
    assert describe("icd:I489")["name"] == "I48.9 " + cm.get_description("I48.9")
    assert describe("icd:A41")["name"] == "A41 " + cm.get_description("A41")
    unknown = describe("icd:Z999X")  # not an ICD-10-CM code: the code alone, never a made-up title
    assert unknown["name"] == "ICD-10 Z99.9X" and unknown["title"] == ""


def test_every_report_statement_has_a_name():
    assert set(REPORT_STATEMENTS) <= set(REPORT_STATEMENT_NAMES)
    assert describe("report:pvc")["name"] == "Premature ventricular complexes"
    assert describe("report:av_block_1st")["name"] == "First-degree AV block"


def test_lab_outputs_read_as_names():
    labels = Labels.for_names([], ["potassium_high", "nt-probnp low", "50971_low", "ph high"])
    assert [labels.lab_name(k) for k in labels.lab] == ["Potassium, high", "NT-proBNP, low", "Potassium, low",
                                                        "pH, high"]


def test_parents_from_the_icd_hierarchy():
    table = label_table(["icd:A41", "icd:A419", "icd:I48", "icd:I489", "icd:I10", "report:pvc"])
    parent = {e["key"]: e["parent"] for e in table["dx"]}
    assert parent == {"icd:A41": None, "icd:A419": "icd:A41", "icd:I48": None, "icd:I489": "icd:I48",
                      "icd:I10": None, "report:pvc": None}


def test_a_parent_is_shown_once_when_its_child_is_shown():
    labels = Labels.for_names(["icd:A41", "icd:A419", "icd:I48", "icd:I489", "report:pvc", "icd:E875"])
    ranked = [("icd:A41", 0.9), ("icd:I489", 0.8), ("icd:A419", 0.7), ("report:pvc", 0.6), ("icd:I48", 0.5),
              ("icd:E875", 0.4)]
    top = labels.top(ranked, 3)
    assert [k for k, _, _ in top] == ["icd:I489", "icd:A419", "report:pvc"]  # no A41, no I48 line of their own
    assert top[1][2] == [("icd:A41", 0.9)] and top[0][2] == [("icd:I48", 0.5)]  # folded even below the cut
    assert labels.line(*top[1][::2]) == "A41.9 Sepsis, unspecified organism (A41 0.90)"
    full = labels.top(ranked, 10)
    assert [k for k, _, _ in full] == ["icd:I489", "icd:A419", "report:pvc", "icd:E875"]  # own probabilities
    assert full[0][2] == [("icd:I48", 0.5)]
    shown = [k for k, _, f in full] + [p for _, _, f in full for p, _ in f]
    assert sorted(shown) == sorted(k for k, _ in ranked)  # every label appears exactly once


def test_label_table_is_saved_with_the_model_and_read_back(tmp_path):
    from ecgkt.models import ECGKTModel

    model = ECGKTModel.build(dx_names=["icd:I489", "report:pvc"], lab_label_names=["potassium_high"])
    model.save_pretrained(tmp_path / "m", provenance=False)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["id2label"] == {"0": "I48.9 " + cm.get_description("I48.9"), "1": "Premature ventricular complexes"}
    assert config["label2id"] == {"icd:I489": 0, "report:pvc": 1}
    assert config["labels"] == config_entries(["icd:I489", "report:pvc"], ["potassium_high"])["labels"]
    loaded = ECGKTModel.from_pretrained(tmp_path / "m")
    config["labels"]["dx"][1]["name"] = "from the config"  # the stored table is what a loaded model uses
    loaded.config["labels"] = config["labels"]
    assert Labels.for_model(loaded).name("report:pvc") == "from the config"

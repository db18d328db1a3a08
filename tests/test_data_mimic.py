"""Cohort joiner: pairing windows and label rules on hand-built tables with known answers."""
import gzip
import warnings

import numpy as np
import pandas as pd
import pytest

from data_tiny import A, B, C, write_tiny
from ecgkt.data import CohortConfig, build_cohort, find_roots, read_labevents, subject_folds
from ecgkt.data.labevents import numeric_values
from ecgkt.data.mimic import (abnormality_labels, fahrenheit, icd_prefixes, pair_closest, parse_blood_pressure,
                              reference_medians)
from ecgkt.errors import ECGKTError

LOOSE = CohortConfig(min_lab_count=1, dx_min_count=1, min_label_count=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny(root)
    return root


@pytest.fixture(scope="module")
def cohort(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cohort(tiny / "mimic-iv-ecg", tiny / "mimic-iv", LOOSE)


def row(cohort, study):
    t = cohort.table
    return t[t["study_id"] == study].iloc[0]


def test_find_roots(tiny):
    ecg, clinical = find_roots(tiny)
    assert ecg == tiny / "mimic-iv-ecg" and clinical == tiny / "mimic-iv"
    with pytest.raises(ECGKTError, match="no MIMIC-IV-ECG root"):
        find_roots(tiny / "mimic-iv")


def test_one_row_per_study_with_record_paths(cohort, tiny):
    t = cohort.table
    assert t["study_id"].tolist() == sorted(t["study_id"]) and t["study_id"].is_unique
    assert row(cohort, 40000001)["record"] == str(tiny / "mimic-iv-ecg/files/p1000/p10000032/s40000001/40000001")


def test_demographics(cohort):
    a, b = row(cohort, 40000001), row(cohort, 40000003)
    assert (a["age"], a["sex"]) == (50, 1.0)
    assert (b["age"], b["sex"]) == (80, 0.0)  # anchor_age 70 in 2150, ECG in 2160


def test_lab_pairing_window_and_labels(cohort):
    a1, a2, b = row(cohort, 40000001), row(cohort, 40000002), row(cohort, 40000003)
    # 40 min before beats 50 min after; a closer row without a value is not a candidate
    assert a1["lab_potassium"] == 3.0 and a1["potassium_low"] == 1 and a1["potassium_high"] == 0
    assert np.isnan(a2["lab_potassium"]) and np.isnan(a2["potassium_low"])  # 90 min: outside ±60
    assert b["lab_potassium"] == 6.1 and b["potassium_high"] == 1  # whole-blood K at 65 min ignored
    assert cohort.lab_reference["potassium"] == [3.5, 5.1]  # medians, 0/0 and empty ranges ignored
    # troponin text result "<0.01" -> 0.01, not above the 0.01 limit; no lower limit -> low unknown
    assert a1["lab_troponin_t"] == 0.01 and a1["troponin_t_high"] == 0 and np.isnan(a1["troponin_t_low"])
    assert b["troponin_t_high"] == 1
    assert a1["lab_sodium"] == 125 and a1["sodium_low"] == 1


def test_lab_window_is_a_parameter(tiny):
    cfg = CohortConfig(min_lab_count=1, dx_min_count=1, lab_window_min=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = build_cohort(tiny / "mimic-iv-ecg", tiny / "mimic-iv", cfg)
    assert row(c, 40000002)["lab_potassium"] == 6.0
    assert row(c, 40000003)["lab_potassium"] == 6.1  # 59 min still beats the 65 min whole-blood value


def test_unused_tests_dropped_and_names(cohort):
    assert cohort.lab_tests == ["potassium", "sodium", "troponin_t"]
    assert cohort.lab_label_names == [f"{t}_{s}" for t in cohort.lab_tests for s in ("low", "high")]
    assert cohort.tab_names[:2] == ["age", "sex"] and "lab_potassium" in cohort.tab_names
    assert set(cohort.tab_names) <= set(cohort.table.columns)


def test_min_lab_count_drops_rare_tests(tiny):
    def tests_kept(n):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c = build_cohort(tiny / "mimic-iv-ecg", tiny / "mimic-iv", CohortConfig(min_lab_count=n, dx_min_count=1))
        return c.lab_tests, " ".join(str(w.message) for w in caught)

    assert tests_kept(2)[0] == ["potassium", "sodium", "troponin_t"]  # each has exactly 2 paired values
    kept, message = tests_kept(3)
    assert kept == [] and "potassium (2)" in message and "sodium (2)" in message


def test_vitals(cohort):
    a1, b = row(cohort, 40000001), row(cohort, 40000003)
    assert a1["vital_temperature"] == pytest.approx(98.6)  # 37 °C at 15 min, converted to °F
    assert a1["vital_heartrate"] == 80  # 400 bpm at 20 min dropped as implausible
    assert a1["vital_o2sat"] == 98  # 105 % dropped
    assert b["vital_heartrate"] == 110  # vitalsign 20 min before; triage (intime) 60 min before
    assert np.isnan(row(cohort, 40000002)["vital_heartrate"])


def test_biometrics(cohort):
    a1, a2, b = row(cohort, 40000001), row(cohort, 40000002), row(cohort, 40000003)
    assert a1["omr_bmi"] == 31.2 and a1["omr_weight"] == pytest.approx(90.718474)
    assert (a1["omr_sbp"], a1["omr_dbp"]) == (130, 85)
    assert np.isnan(a1["omr_height"])  # 83 days away
    assert a2["omr_bmi"] == 31.2  # 24 days away
    assert b["omr_height"] == pytest.approx(64 * 2.54) and np.isnan(b["omr_sbp"])  # 80/120 rejected


def test_diagnosis_labels(cohort):
    a1 = row(cohort, 40000001)
    for code in ("icd:I48", "icd:I489", "icd:R07", "icd:R079"):  # hosp + ED, parents propagated
        assert a1[code] == 1
    assert "icd:I4891" not in cohort.dx_names and not any(n.startswith("icd:401") for n in cohort.dx_names)
    assert "icd:E87" not in cohort.dx_names  # admission not containing any ECG
    assert a1["dx_linked"] and not row(cohort, 40000003)["dx_linked"]  # ECG after the ED stay ended
    assert row(cohort, 40000002)["icd:I48"] == 0
    assert a1["report:sinus_rhythm"] == 1 and a1["report:lbbb"] == 1 and a1["report:atrial_fibrillation"] == 0
    assert row(cohort, 40000002)["report:atrial_fibrillation"] == 1
    assert row(cohort, 40000003)["report:sinus_tachycardia"] == 1
    assert row(cohort, 40000003)["report:sinus_rhythm"] == 0  # "sinus tachycardia" is not "sinus rhythm"


def test_dx_min_count(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = build_cohort(tiny / "mimic-iv-ecg", tiny / "mimic-iv", CohortConfig(min_lab_count=1, dx_min_count=2))
    assert c.dx_names == []  # every label occurs once


def test_machine_measurements(cohort):
    a1, a2 = row(cohort, 40000001), row(cohort, 40000002)
    assert np.isnan(a1["mm_pr"]) and a2["mm_pr"] == 160  # 29999 = missing
    assert a2["mm_qrs"] == 90 and a2["mm_qt"] == 400 and a2["mm_rr"] == 857


def test_folds_subject_level_and_stable(cohort):
    t = cohort.table
    assert (t.groupby("subject_id")["fold"].nunique() == 1).all()
    ids = np.arange(10_000_000, 10_020_000)
    folds = subject_folds(ids)
    np.testing.assert_array_equal(folds, subject_folds(ids.copy()))
    assert folds.min() == 0 and folds.max() == 19
    counts = np.bincount(folds, minlength=20)
    assert counts.min() > 850 and counts.max() < 1150  # roughly even
    assert subject_folds([A, B, C]).tolist() == t.drop_duplicates("subject_id")["fold"].tolist()


def test_ecg_only_cohort(tiny):
    c = build_cohort(tiny / "mimic-iv-ecg", None, LOOSE)
    assert c.tab_names == [] and c.lab_tests == [] and "report:lbbb" in c.dx_names


# -------------------------------------------------------------------------------- helpers

def test_pair_closest_per_column_and_subject():
    ecgs = pd.DataFrame({"subject_id": [1, 1, 2], "ecg_time": pd.to_datetime(
        ["2100-01-01 10:00", "2100-01-02 10:00", "2100-01-01 10:00"])})
    events = pd.DataFrame({"subject_id": [1, 1, 2, 3], "t": pd.to_datetime(
        ["2100-01-01 10:10", "2100-01-01 09:55", "2100-01-01 11:30", "2100-01-01 10:00"]),
        "x": [1.0, np.nan, 3.0, 4.0], "y": [5.0, 6.0, np.nan, 7.0]})
    out = pair_closest(ecgs, events, "t", ["x", "y"], pd.Timedelta(minutes=60))
    assert out["x"].tolist()[0] == 1.0 and out["y"].tolist()[0] == 6.0  # each column its own closest
    assert np.isnan(out["x"].tolist()[1]) and np.isnan(out["x"].tolist()[2])  # outside window / subject


def test_small_rules():
    assert reference_medians(pd.DataFrame({"ref_range_lower": [3.5, 0, np.nan, 3.3, 3.6],
                                           "ref_range_upper": [5.0, 0, 5.2, 5.1, 5.3]})) == (3.5, 5.15)
    low, high = abnormality_labels(np.array([3.0, 4.0, 6.0, np.nan]), 3.5, 5.1)
    np.testing.assert_array_equal(low, [1, 0, 0, np.nan])
    np.testing.assert_array_equal(high, [0, 0, 1, np.nan])
    assert icd_prefixes("I48.91") == ["I48", "I489"] and icd_prefixes("R07", 3, 5) == ["R07"]
    assert icd_prefixes("E8770", 3, 5) == ["E87", "E877", "E8770"]
    assert parse_blood_pressure("120/80") == (120, 80) and np.isnan(parse_blood_pressure("n/a")[0])
    np.testing.assert_allclose(fahrenheit(np.array([37.0, 98.6, 20.0])), [98.6, 98.6, 20.0])


def test_labevents_reader_filters_and_parses(tiny, tmp_path):
    df = read_labevents(tiny / "mimic-iv/hosp/labevents.csv.gz", [50971, 51003])
    assert sorted(df["itemid"].unique()) == [50971, 51003] and len(df) == 7
    assert str(df["charttime"].dtype).startswith("datetime64")
    assert df["value"].notna().sum() == 2  # text kept only where valuenum is empty ("___", "<0.01")
    num = numeric_values(df)
    assert np.isnan(num[df["value"].eq("___").fillna(False).to_numpy(bool)]).all()
    assert num[df["value"].eq("<0.01").fillna(False).to_numpy(bool)].tolist() == [0.01]
    # the block size does not change the result
    small = read_labevents(tiny / "mimic-iv/hosp/labevents.csv.gz", [50971, 51003], block_size=300)
    pd.testing.assert_frame_equal(df.reset_index(drop=True), small.reset_index(drop=True))
    with pytest.raises(ECGKTError, match="labevents file not found"):
        read_labevents(tmp_path / "nope.csv.gz", [1])
    bad = tmp_path / "labevents.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("a,b\n1,2\n")
    with pytest.raises(ECGKTError, match="not a MIMIC labevents table"):
        read_labevents(bad, [1])


def test_find_roots_in_mirror_layout(tmp_path):
    ecg = tmp_path / "physionet.org/files/mimic-iv-ecg/1.0"
    clinical = tmp_path / "physionet.org/files/mimiciv/3.1"
    (ecg / "files").mkdir(parents=True)
    (ecg / "record_list.csv").write_text("subject_id,study_id,file_name,ecg_time,path\n")
    (clinical / "hosp").mkdir(parents=True)
    (clinical / "hosp/patients.csv.gz").write_bytes(b"")
    assert find_roots(tmp_path) == (ecg, clinical)


def test_labevents_multiline_comments_across_blocks(tmp_path):
    cols = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
            "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag",
            "priority", "comments"]
    n = 301
    df = pd.DataFrame({c: None for c in cols}, index=range(n))
    df["labevent_id"], df["subject_id"], df["itemid"] = range(n), 10000032, [50971, 50983] * 150 + [50971]
    df["charttime"] = "2180-07-23 09:20:00"
    df["valuenum"] = np.arange(n) / 10
    df["comments"] = [f"line one of {i}\nline two, \"quoted\"\nthree" for i in range(n)]
    path = tmp_path / "labevents.csv.gz"
    df.to_csv(path, index=False)
    got = read_labevents(path, [50971], block_size=256)  # many block boundaries inside quoted comments
    assert len(got) == 151 and got["valuenum"].tolist() == (np.arange(0, n, 2) / 10).tolist()


def test_pair_closest_matches_merge_asof_nearest_with_ties_and_gaps():
    # integer minutes on a small range: many exact ties (same time, equally far before and after)
    rng = np.random.default_rng(3)
    base = pd.Timestamp("2180-01-01")
    ecgs = pd.DataFrame({"subject_id": rng.integers(1, 6, 301),
                         "ecg_time": base + pd.to_timedelta(rng.integers(0, 400, 301), unit="min")})
    ecgs.loc[rng.random(301) < 0.05, "ecg_time"] = pd.NaT
    events = pd.DataFrame({"subject_id": rng.integers(1, 7, 997),
                           "t": base + pd.to_timedelta(rng.integers(-50, 450, 997), unit="min"),
                           "x": rng.normal(size=997)})
    events.loc[rng.random(997) < 0.1, "x"] = np.nan
    events.loc[rng.random(997) < 0.02, "t"] = pd.NaT
    window = pd.Timedelta(minutes=17)
    got = pair_closest(ecgs, events, "t", ["x"], window)["x"].to_numpy()

    left = ecgs.assign(_row=np.arange(len(ecgs))).dropna(subset=["ecg_time"]).sort_values("ecg_time", kind="stable")
    right = events.dropna(subset=["x", "t"]).sort_values("t", kind="stable")
    merged = pd.merge_asof(left, right, left_on="ecg_time", right_on="t", by="subject_id", direction="nearest",
                           tolerance=window)
    want = np.full(len(ecgs), np.nan)
    want[merged["_row"].to_numpy()] = merged["x"].to_numpy()
    assert np.isfinite(want).sum() > 100
    np.testing.assert_array_equal(got, want)

"""Round trip on a generated MIMIC-shaped dataset: synth -> prepare -> store / Dataset, checked
against independent brute-force readings of the generated files."""
import warnings

import numpy as np
import pandas as pd
import pytest
import wfdb
from torch.utils.data import DataLoader

from ecgkt.data import INVALID, STANDARD_LEADS, CohortConfig, ECGDataset, generate, prepare, read_record
from ecgkt.data.mimic import DEFAULT_LAB_TESTS, VITAL_RANGES

CFG = CohortConfig(min_lab_count=1, dx_min_count=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, patients=30, seed=5, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = prepare(root, root / "store", CFG, workers=2, chunk_size=16, progress=False)
    return root, store


def test_every_record_stored_or_explained(synth):
    root, store = synth
    listed = pd.read_csv(root / "mimic-iv-ecg/record_list.csv")
    skipped = store.skipped
    assert len(store) + len(skipped) == len(listed)
    assert sorted(store.cohort["study_id"].tolist() + skipped["study_id"].tolist()) == sorted(listed["study_id"])
    assert skipped["reason"].str.len().min() > 0 if len(skipped) else True
    assert store.cohort["study_id"].is_unique


def test_store_matches_wfdb(synth):
    _, store = synth
    rng = np.random.default_rng(0)
    for i in rng.choice(len(store), size=min(8, len(store)), replace=False):
        path = store.cohort["record"].iat[i]
        np.testing.assert_array_equal(store.signal(i), read_record(path).signal)
        ref = wfdb.rdrecord(path)  # MIMIC order (aVF before aVL) mapped by name
        order = [ref.sig_name.index(n) for n in STANDARD_LEADS]
        np.testing.assert_allclose(store.record(i).physical(), ref.p_signal[:, order].T, atol=1e-6, equal_nan=True)


def test_invalid_runs_survive(synth):
    _, store = synth
    invalid = (store.signals[store.rows] == INVALID).any(axis=(1, 2))
    assert invalid.any(), "the generator writes -32768 runs into some records"
    for i in np.flatnonzero(invalid)[:3]:
        path = store.cohort["record"].iat[i]
        raw = np.fromfile(f"{path}.dat", dtype="<i2").reshape(-1, 12)  # MIMIC file order
        names = [line.split()[-1] for line in open(f"{path}.hea").read().splitlines()[1:13]]
        rec = store.record(i)
        for k, lead in enumerate(STANDARD_LEADS):
            np.testing.assert_array_equal(rec.invalid[k], raw[:, names.index(lead)] == -32768)
        assert np.isnan(rec.physical()[rec.invalid]).all()


def test_potassium_pairing_matches_brute_force(synth):
    root, store = synth
    labs = pd.read_csv(root / "mimic-iv/hosp/labevents.csv.gz", parse_dates=["charttime"])
    labs = labs[labs["itemid"].isin(DEFAULT_LAB_TESTS["potassium"])]
    value = labs["valuenum"].astype(float)
    text = pd.to_numeric(labs["value"].astype(str).str.replace(r"^[<>]=?", "", regex=True), errors="coerce")
    labs = labs.assign(num=value.fillna(text)).dropna(subset=["num"])
    cohort = store.cohort
    checked = 0
    for sid, t, got in zip(cohort["subject_id"], pd.to_datetime(cohort["ecg_time"]), cohort["lab_potassium"]):
        cand = labs[labs["subject_id"] == sid]
        dt = (cand["charttime"] - t).abs()
        cand, dt = cand[dt <= pd.Timedelta(minutes=60)], dt[dt <= pd.Timedelta(minutes=60)]
        if cand.empty:
            assert np.isnan(got)
            continue
        best = dt == dt.min()
        if best.sum() == 1:  # ties may resolve either way
            assert got == pytest.approx(cand.loc[best, "num"].iloc[0])
            checked += 1
    assert checked >= 5
    lo, hi = store.meta["lab_reference"]["potassium"]
    k = cohort["lab_potassium"]
    np.testing.assert_array_equal(cohort["potassium_high"][k.notna()], (k[k.notna()] > hi).astype(float))
    np.testing.assert_array_equal(cohort["potassium_low"][k.notna()], (k[k.notna()] < lo).astype(float))


def test_vitals_plausible_and_folds(synth):
    _, store = synth
    cohort = store.cohort
    for v, (lo, hi) in VITAL_RANGES.items():
        x = cohort[f"vital_{v}"].dropna()
        assert ((x >= lo) & (x <= hi)).all(), v
    assert (cohort.groupby("subject_id")["fold"].nunique() == 1).all()


def test_dataset_over_generated_store(synth):
    _, store = synth
    ds = ECGDataset(store.path)
    assert len(ds) == len(store)
    loader = DataLoader(ds, batch_size=7, num_workers=2)
    n = 0
    for batch in loader:
        assert batch["signal"].shape[1:] == (12, store.n_samples)
        assert batch["tab"].shape[1] == len(ds.tab_names) == len(ds.tab_names)
        assert (batch["tab_mask"] == ~batch["tab"].isnan()).all()
        n += batch["signal"].shape[0]
    assert n == len(ds)
    assert ds.tab_mask.any(axis=0).sum() >= len(ds.tab_names) // 2  # most features observed somewhere


def test_temperature_pairing_and_celsius_matches_brute_force(synth):
    root, store = synth
    ed = root / "mimic-iv/ed"
    stays = pd.read_csv(ed / "edstays.csv.gz", parse_dates=["intime"])
    vs = pd.read_csv(ed / "vitalsign.csv.gz", parse_dates=["charttime"])[["subject_id", "charttime", "temperature"]]
    tri = pd.read_csv(ed / "triage.csv.gz").merge(stays[["stay_id", "intime"]], on="stay_id")
    tri = tri.rename(columns={"intime": "charttime"})[["subject_id", "charttime", "temperature"]]
    ev = pd.concat([vs, tri]).dropna(subset=["temperature", "charttime"])
    ev = ev.assign(f=np.where(ev["temperature"].between(25, 45), ev["temperature"] * 1.8 + 32, ev["temperature"]))
    ev = ev[ev["f"].between(50, 150)]
    checked = 0
    for sid, t, got in zip(store.cohort["subject_id"], pd.to_datetime(store.cohort["ecg_time"]),
                           store.cohort["vital_temperature"]):
        cand = ev[ev["subject_id"] == sid]
        dt = (cand["charttime"] - t).abs()
        cand, dt = cand[dt <= pd.Timedelta(minutes=30)], dt[dt <= pd.Timedelta(minutes=30)]
        if cand.empty:
            assert np.isnan(got)
        elif (dt == dt.min()).sum() == 1:
            best = cand[dt == dt.min()].iloc[0]
            assert got == pytest.approx(best["f"])
            checked += 1
    assert checked >= 5


"""The signal store (`ecgkt prepare`) and the Dataset over it."""
import argparse
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from data_tiny import ECGS, MIMIC_LEADS, write_tiny
from ecgkt.data import ECGDataset, ECGStore, CohortConfig, STANDARD_LEADS, prepare, read_record
from ecgkt.data import store as store_mod
from ecgkt.errors import ECGKTError

LOOSE = CohortConfig(min_lab_count=1, dx_min_count=1, min_label_count=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    frames = write_tiny(root, n_samples=1001)
    return root, frames


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    root, _ = tiny
    out = tmp_path_factory.mktemp("store") / "s"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(root, out, LOOSE, workers=2, chunk_size=2, progress=False)


def test_store_round_trip(built, tiny):
    _, frames = tiny
    store = built
    assert len(store) == len(ECGS) and store.fs == 500 and store.n_samples == 1001
    assert store.signals.shape == (6, 12, 1001) and store.signals.dtype == np.int16  # one row per listed record
    assert store.cohort["row"].tolist() == [0, 1, 2, 3]
    assert store.leads == list(STANDARD_LEADS)
    for i, study in enumerate(store.cohort["study_id"]):
        expected = frames[study][:, [MIMIC_LEADS.index(n) for n in STANDARD_LEADS]].T
        np.testing.assert_array_equal(store.signal(i), expected)
        rec = read_record(store.cohort["record"].iat[i])
        np.testing.assert_array_equal(store.record(i).signal, rec.signal)
        assert np.all(store.gains[i] == 200) and np.all(store.baselines[i] == 0)
    assert (store.signals[:4, STANDARD_LEADS.index("aVR"), 100:150] == -32768).all()  # invalid runs kept
    assert (store.signals[4:] == -32768).all()  # rows of skipped records hold nothing
    assert (store.signal(1)[STANDARD_LEADS.index("V2")] == 12).all()  # the flat lead is kept


def test_corrupt_records_skipped_with_reasons(built, capsys):
    skipped = built.skipped
    assert skipped["study_id"].tolist() == [40000005, 40000006]
    assert "40000005.dat: truncated" in skipped["reason"].iat[0]
    assert "40000006.hea: cannot read header" in skipped["reason"].iat[1]
    summary = json.loads((built.path / "summary.json").read_text())
    assert summary["records_listed"] == 6 and summary["records_stored"] == 4 and summary["records_skipped"] == 2
    assert not (built.path / "work").exists()


def test_prepare_is_idempotent_and_guards_other_settings(built, tiny):
    root, _ = tiny
    again = prepare(root, built.path, LOOSE, workers=2, chunk_size=2, progress=False)
    assert len(again) == len(built)
    with pytest.raises(ECGKTError, match="built with other settings"):
        prepare(root, built.path, CohortConfig(min_lab_count=7), chunk_size=2, progress=False)


def _files(path):
    return {
        "signals": (path / "signals.int16").read_bytes(),
        "gains": np.load(path / "gains.npy"), "baselines": np.load(path / "baselines.npy"),
        "cohort": pd.read_parquet(path / "cohort.parquet"), "skipped": pd.read_csv(path / "skipped.csv"),
        "meta": json.loads((path / "meta.json").read_text()),
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_resumes_after_interruption(built, tiny, tmp_path, monkeypatch, workers):
    root, _ = tiny
    out = tmp_path / "store"

    class Crash(RuntimeError):
        pass

    seen = []

    def crash_after_two(k):
        seen.append(k)
        if len(seen) == 2:
            raise Crash("simulated interruption")

    monkeypatch.setattr(store_mod, "_after_chunk_hook", crash_after_two)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Crash):
            prepare(root, out, LOOSE, workers=workers, chunk_size=2, progress=False)
    assert not (out / "manifest.json").exists()
    done = sorted(p.name for p in (out / "work" / "chunks").glob("chunk_*.npz"))
    assert len(done) >= 2  # (a worker killed mid-write may leave a .tmp marker: not a finished chunk)
    # a chunk cut off before its marker was saved must be redone: make chunk 0 look half-written
    (out / "work" / "chunks" / done[0]).unlink()
    first = int(done.pop(0)[6:12]) * 2
    np.memmap(out / "signals.int16", dtype=np.int16, mode="r+", shape=(6, 12, 1001))[first, :, :5] = 7

    converted = []
    real = store_mod._convert_chunk
    monkeypatch.setattr(store_mod, "_after_chunk_hook", None)
    monkeypatch.setattr(store_mod, "_convert_chunk", lambda a: converted.append(a[0]) or real(a))
    resumed = prepare(root, out, LOOSE, workers=1, chunk_size=2, progress=False)
    assert len(converted) == 3 - len(done)  # 6 records in chunks of 2: only the missing chunks are redone
    a, b = _files(resumed.path), _files(built.path)
    assert a["signals"] == b["signals"]
    for key in ("gains", "baselines"):
        np.testing.assert_array_equal(a[key], b[key])
    pd.testing.assert_frame_equal(a["cohort"], b["cohort"])
    pd.testing.assert_frame_equal(a["skipped"], b["skipped"])
    assert a["meta"] == b["meta"]


def test_dataset_items_follow_the_contract(built):
    ds = ECGDataset(built.path)
    item = ds[0]
    F, L2, C = len(ds.tab_names), len(ds.lab_label_names), len(ds.dx_names)
    assert ds.lab_label_names == [f"{t}_{s}" for t in ds.lab_tests for s in ("low", "high")]
    assert ds.fs == 500.0 and ds.leads == list(STANDARD_LEADS)
    spec = {"signal": (torch.int16, (12, 1001)), "gain": (torch.float32, (12,)), "baseline": (torch.float32, (12,)),
            "tab": (torch.float32, (F,)), "tab_mask": (torch.bool, (F,)), "lab_y": (torch.float32, (L2,)),
            "lab_mask": (torch.bool, (L2,)), "dx_y": (torch.float32, (C,)), "index": (torch.int64, ()),
            "subject_id": (torch.int64, ()), "study_id": (torch.int64, ())}
    assert set(item) == set(spec)
    for key, (dtype, shape) in spec.items():
        assert item[key].dtype == dtype and tuple(item[key].shape) == shape, key
    assert int(item["study_id"]) == 40000001
    tab = dict(zip(ds.tab_names, item["tab"].tolist()))
    mask = dict(zip(ds.tab_names, item["tab_mask"].tolist()))
    assert tab["lab_potassium"] == 3.0 and tab["age"] == 50 and tab["sex"] == 1
    assert np.isnan(tab["omr_height"]) and not mask["omr_height"] and mask["lab_potassium"]
    lab = dict(zip(ds.lab_label_names, zip(item["lab_y"].tolist(), item["lab_mask"].tolist())))
    assert lab["potassium_low"] == (1.0, True) and lab["troponin_t_low"] == (0.0, False)
    dx = dict(zip(ds.dx_names, item["dx_y"].tolist()))
    assert dx["icd:I48"] == 1 and dx["report:lbbb"] == 1 and dx["report:atrial_fibrillation"] == 0
    np.testing.assert_array_equal(item["signal"].numpy(), built.signal(0))


def test_dataset_fold_selection(built):
    folds = built.cohort["fold"].to_numpy()
    first = int(folds[0])
    ds = ECGDataset(built.path, folds=(first,))
    assert len(ds) == int((folds == first).sum()) and set(ds.folds.tolist()) == {first}
    rest = ECGDataset(built.path, folds=[f for f in range(20) if f != first])
    assert len(ds) + len(rest) == len(built)
    assert not set(ds.subject_id.tolist()) & set(rest.subject_id.tolist())
    assert len(ECGDataset(built.path, folds=())) == 0
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_workers_and_distributed_sampler_cover_every_row_once(built, shuffle):
    ds = ECGDataset(built.path)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=shuffle, seed=3)
        loader = DataLoader(ds, batch_size=1, sampler=sampler, num_workers=2)
        for batch in loader:
            assert batch["signal"].shape == (1, 12, 1001)
            i = int(batch["index"])
            np.testing.assert_array_equal(batch["signal"][0].numpy(), built.signal(i))
            seen.append(i)
    assert sorted(seen) == list(range(len(ds)))


def test_store_errors(tmp_path, tiny):
    with pytest.raises(ECGKTError, match="not a finished ecgkt store"):
        ECGStore(tmp_path)
    with pytest.raises(ECGKTError, match="data folder not found"):
        prepare(tmp_path / "missing", tmp_path / "out", progress=False)


def test_prepare_cli(tiny, tmp_path, capsys):
    from ecgkt.cli.prepare import add_cli

    root, _ = tiny
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    out = tmp_path / "cli_store"
    args = parser.parse_args(["prepare", "--data", str(root), "--out", str(out), "--min-lab-count", "1",
                              "--dx-min-count", "1", "--chunk-size", "3", "--no-progress"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert args.func(args) == 0
    assert "store: " in capsys.readouterr().out and len(ECGStore(out)) == 4
    args = parser.parse_args(["prepare", "--ecg-root", str(root / "mimic-iv-ecg"), "--out", str(tmp_path / "e"),
                              "--dx-min-count", "1", "--no-progress"])
    assert args.func(args) == 0
    assert ECGStore(tmp_path / "e").meta["tab_names"] == []  # ECG side only
    with pytest.raises(ECGKTError, match="either --data or"):
        args = parser.parse_args(["prepare", "--data", str(root), "--ecg-root", "x", "--out", str(out)])
        args.func(args)


def test_store_rejects_records_that_do_not_fit(tmp_path):
    from data_tiny import random_frames, record_rel_path, write_mimic_record

    ecg = tmp_path / "ecg"
    rows = []
    cases = {40000011: dict(frames=random_frames(1, 400)),  # fine: sets fs 500 and T 400
             40000012: dict(frames=random_frames(2, 400), fs=250),  # another sampling rate
             40000013: dict(frames=np.full((400, 12), -32768, np.int16)),  # nothing recorded
             40000014: dict(frames=random_frames(4, 300)),  # too short
             40000015: dict(frames=random_frames(5, 600))}  # longer: truncated to 400
    for study, kw in cases.items():
        write_mimic_record(ecg, 10000001, study, **kw)
        rows.append((10000001, study, str(study), "2180-01-01 00:00:00", record_rel_path(10000001, study)))
    pd.DataFrame(rows, columns=["subject_id", "study_id", "file_name", "ecg_time", "path"]).to_csv(
        ecg / "record_list.csv", index=False)
    store = prepare((ecg, None), tmp_path / "store", CohortConfig(dx_min_count=1), workers=1, progress=False)
    assert store.cohort["study_id"].tolist() == [40000011, 40000015] and store.n_samples == 400
    np.testing.assert_array_equal(store.signal(1), read_record(store.cohort["record"].iat[1]).signal[:, :400])
    reasons = dict(zip(store.skipped["study_id"], store.skipped["reason"]))
    assert "sampling rate 250 Hz differs from the store's 500 Hz" in reasons[40000012]
    assert "every sample is missing" in reasons[40000013]
    assert "300 samples, the store holds 400" in reasons[40000014]


def test_dataset_pickles_without_its_memmap(built):
    import pickle

    ds = ECGDataset(built.path, folds=None)
    ds[0]  # opens the memmap
    assert ds.store._signals is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.store._signals is None
    np.testing.assert_array_equal(copy[1]["signal"].numpy(), ds[1]["signal"].numpy())


def test_overwrite_replaces_only_store_files(tiny, tmp_path):
    root, _ = tiny
    out = tmp_path / "shared_folder"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(root, out, LOOSE, workers=1, progress=False)
        store = prepare(root, out, CohortConfig(min_lab_count=1, dx_min_count=2), workers=1, progress=False,
                        overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and len(store) == 4
    assert store.manifest["settings"]["config"]["dx_min_count"] == 2


def test_collate_matches_default_collate(built):
    from torch.utils.data import default_collate

    from ecgkt.data import collate

    ds = ECGDataset(built.path)
    items = [ds[i] for i in range(len(ds))]
    ours, ref = collate(items), default_collate(items)
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
        assert torch.equal(torch.nan_to_num(ours[key]), torch.nan_to_num(ref[key])), key
    batches = list(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate))
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(ds)))


def test_getitems_matches_getitem(built):
    """The DataLoader's batched fetch (__getitems__) gives the items and batches of per-item indexing."""
    from torch.utils.data import default_collate

    from ecgkt.data import collate

    ds = ECGDataset(built.path)
    idx = [len(ds) - 1, 0, -1, 1, 0]
    one, many = [ds[i] for i in idx], ds.__getitems__(idx)
    assert len(many) == len(idx)
    for a, b in zip(one, many):
        assert list(a) == list(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(torch.nan_to_num(a[key]), torch.nan_to_num(b[key])), key
    for ours, ref in ((collate(many), collate(one)), (default_collate(many), default_collate(one))):
        assert list(ours) == list(ref)
        for key in ref:
            assert ours[key].dtype == ref[key].dtype and torch.equal(torch.nan_to_num(ours[key]),
                                                                      torch.nan_to_num(ref[key])), key
    with pytest.raises(IndexError):
        ds.__getitems__([0, len(ds)])

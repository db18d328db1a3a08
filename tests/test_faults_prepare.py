"""Fault injection, `ecgkt prepare`: broken tables, records that would stop training, store geometry, a full
disk, a worker dying, and kill -9 at random points (the resumed store is byte-identical)."""
import gzip
import json
import os
import random
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from data_tiny import random_frames, record_rel_path, write_mimic_record, write_tiny
from ecgkt.data import CohortConfig, prepare
from ecgkt.data.wfdb_io import INVALID
from faults_helpers import assert_one_line, error_lines, kill_group_after, run_cases

LOOSE = ["--min-lab-count", "1", "--dx-min-count", "1"]
STORE_FILES = ("signals.int16", "gains.npy", "baselines.npy", "cohort.parquet", "meta.json", "skipped.csv",
               "summary.json", "manifest.json")


# ------------------------------------------------------------------------------------------ broken tables

def _csv_path(root, rel):
    return root / ("mimic-iv-ecg" if rel in ("record_list.csv", "machine_measurements.csv") else "mimic-iv") / rel


def _drop_column(rel, col):
    def damage(root):
        p = _csv_path(root, rel)
        pd.read_csv(p).drop(columns=[col]).to_csv(p, index=False)
    return damage


def _set_cell(rel, col, value):
    def damage(root):
        p = _csv_path(root, rel)
        df = pd.read_csv(p)
        df[col] = df[col].astype(object)
        df.loc[1, col] = value
        df.to_csv(p, index=False)
    return damage


def _extra_fields(rel):
    def damage(root):
        p = _csv_path(root, rel)
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt") as f:
            lines = f.read().splitlines()
        lines.insert(2, lines[1] + ",1,2,3,4,5")
        with opener(p, "wt") as f:
            f.write("\n".join(lines) + "\n")
    return damage


def _truncate_gzip(rel):
    def damage(root):
        p = _csv_path(root, rel)
        data = p.read_bytes()
        p.write_bytes(data[: max(20, len(data) // 2)])
    return damage


def _garbage(rel, data=b"\x1f\x8b\x08garbage that is not a gzip stream" * 4):
    def damage(root):
        _csv_path(root, rel).write_bytes(data)
    return damage


def _remove(rel):
    def damage(root):
        _csv_path(root, rel).unlink()
    return damage


TABLE_CASES = {
    "record_list: no path column": (_drop_column("record_list.csv", "path"), "record_list.csv"),
    "record_list: no subject_id column": (_drop_column("record_list.csv", "subject_id"), "record_list.csv"),
    "record_list: malformed row": (_extra_fields("record_list.csv"), "record_list.csv"),
    "record_list: text subject_id": (_set_cell("record_list.csv", "subject_id", "abc"), "record_list.csv"),
    "record_list: empty study_id": (_set_cell("record_list.csv", "study_id", None), "record_list.csv"),
    "record_list: empty file": (_garbage("record_list.csv", b""), "record_list.csv"),
    "record_list: binary": (_garbage("record_list.csv", bytes(range(256)) * 8), "record_list.csv"),
    "record_list: header only": (lambda root: _csv_path(root, "record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n"), "record_list.csv"),
    "machine_measurements: no study_id": (_drop_column("machine_measurements.csv", "study_id"),
                                          "machine_measurements.csv"),
    "machine_measurements: malformed row": (_extra_fields("machine_measurements.csv"), "machine_measurements.csv"),
    "patients: truncated gzip": (_truncate_gzip("hosp/patients.csv.gz"), "patients.csv.gz"),
    "patients: not gzip": (_garbage("hosp/patients.csv.gz"), "patients.csv.gz"),
    "patients: no gender column": (_drop_column("hosp/patients.csv.gz", "gender"), "patients.csv.gz"),
    "patients: text anchor_age": (_set_cell("hosp/patients.csv.gz", "anchor_age", "old"), "patients.csv.gz"),
    "patients: missing table": (_remove("hosp/patients.csv.gz"), "patients.csv.gz"),
    "labevents: truncated gzip": (_truncate_gzip("hosp/labevents.csv.gz"), "labevents.csv.gz"),
    "labevents: no itemid column": (_drop_column("hosp/labevents.csv.gz", "itemid"), "labevents.csv.gz"),
    "labevents: malformed row": (_extra_fields("hosp/labevents.csv.gz"), "labevents.csv.gz"),
    "labevents: text charttime": (_set_cell("hosp/labevents.csv.gz", "charttime", "notadate"), "labevents.csv.gz"),
    "labevents: empty subject_id": (_set_cell("hosp/labevents.csv.gz", "subject_id", None), "labevents.csv.gz"),
    "admissions: no dischtime": (_drop_column("hosp/admissions.csv.gz", "dischtime"), "admissions.csv.gz"),
    "admissions: text hadm_id": (_set_cell("hosp/admissions.csv.gz", "hadm_id", "x1"), "admissions.csv.gz"),
    "diagnoses_icd: no icd_version": (_drop_column("hosp/diagnoses_icd.csv.gz", "icd_version"),
                                      "diagnoses_icd.csv.gz"),
    "omr: no result_value": (_drop_column("hosp/omr.csv.gz", "result_value"), "omr.csv.gz"),
    "omr: truncated gzip": (_truncate_gzip("hosp/omr.csv.gz"), "omr.csv.gz"),
    "edstays: no intime": (_drop_column("ed/edstays.csv.gz", "intime"), "edstays.csv.gz"),
    "vitalsign: no charttime": (_drop_column("ed/vitalsign.csv.gz", "charttime"), "vitalsign.csv.gz"),
    "triage: no stay_id": (_drop_column("ed/triage.csv.gz", "stay_id"), "triage.csv.gz"),
    "ed diagnosis: no icd_code": (_drop_column("ed/diagnosis.csv.gz", "icd_code"), "diagnosis.csv.gz"),
}


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tables")
    cases = []
    roots = {}
    for k, (case, (damage, _)) in enumerate(TABLE_CASES.items()):
        root = base / f"r{k}"
        write_tiny(root, n_samples=600)
        damage(root)
        roots[case] = root
        cases.append({"argv": ["prepare", "--data", root, "--out", root / "store", "--no-progress", *LOOSE]})
    return dict(zip(TABLE_CASES, run_cases(cases))), roots


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_broken_table_is_one_line(table_runs, case):
    runs, roots = table_runs
    assert_one_line(runs[case], TABLE_CASES[case][1])
    assert not (roots[case] / "store" / "manifest.json").exists()  # nothing half-built passes for a store


def test_no_clinical_tables_is_a_documented_warning(tmp_path):
    write_tiny(tmp_path / "d", n_samples=600)
    import shutil

    shutil.rmtree(tmp_path / "d" / "mimic-iv")
    with pytest.warns(UserWarning, match="no MIMIC-IV clinical tables"):
        store = prepare(tmp_path / "d", tmp_path / "s", CohortConfig(dx_min_count=1), workers=1, progress=False)
    assert store.meta["tab_names"] == [] and len(store) == 4


# ---------------------------------------------------------------------- records at the door of the store

def _hea_edit(base, line_no, index, value):
    hea = base.with_suffix(".hea")
    lines = hea.read_text().splitlines()
    parts = lines[line_no].split()
    parts[index] = value
    lines[line_no] = " ".join(parts)
    hea.write_text("\n".join(lines) + "\n")


T = 800
DOOR_CASES = {  # study -> (how the record is broken, words of its reason in skipped.csv)
    40000101: ("gain 1e-300: 0 in float32", lambda b: _hea_edit(b, 2, 2, "1e-300(0)/mV"), "float32"),
    40000102: ("gain 1e300: inf in float32", lambda b: _hea_edit(b, 5, 2, "1e300(0)/mV"), "float32"),
    40000103: ("gain nan", lambda b: _hea_edit(b, 1, 2, "nan(0)/mV"), "header"),
    40000104: ("sampling rate nan", lambda b: _hea_edit(b, 0, 2, "nan"), "sampling rate"),
    40000105: ("sampling rate near zero", lambda b: _hea_edit(b, 0, 2, "1e-12"), "sampling rate"),
    40000106: ("another sampling rate", lambda b: _hea_edit(b, 0, 2, "250"), "differs from the store's 500"),
    40000107: ("shorter than the store", lambda b: _hea_edit(b, 0, 3, str(T - 100)), "the store holds 800"),
    40000108: ("no sample recorded", "invalid", "no usable signal"),
    40000109: ("every lead flat", "flat", "no usable signal"),
    40000110: ("baseline inf in float32", lambda b: _hea_edit(b, 3, 2, "200(" + "9" * 45 + ")/mV"), "baseline"),
    40000111: ("signal file missing", lambda b: b.with_suffix(".dat").unlink(), "missing"),
    40000112: ("header missing", lambda b: b.with_suffix(".hea").unlink(), "cannot read header"),
    40000113: ("truncated signal file", lambda b: os.truncate(b.with_suffix(".dat"), 500), "truncated"),
    40000114: ("absurd millivolts", lambda b: _hea_edit(b, 4, 2, "0.0001(0)/mV"), "plausible"),
    40000115: ("the stored part has no signal", "late", "no usable signal"),
}
GOOD = [40000001, 40000002, 40000003, 40000004, 40000005, 40000006]


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    """A cohort whose FIRST record is short and at another rate (it used to set the store's geometry), then
    good records mixed with every kind of record that would stop training later."""
    d = tmp_path_factory.mktemp("door")
    ecg = d / "ecg"
    rows = []
    subject = 10000001
    first = write_mimic_record(ecg, subject, 40000000, random_frames(0, 300), fs=250)
    rows.append((subject, 40000000, first))
    for k, study in enumerate(GOOD):
        n = T + 200 if k == 2 else T  # a longer one: truncated to the store's length, kept
        rows.append((subject, study, write_mimic_record(ecg, subject, study, random_frames(10 + k, n))))
    for study, (_, how, _) in DOOR_CASES.items():
        frames = random_frames(study % 97, T)
        if how == "invalid":
            frames[:] = INVALID
        elif how == "flat":
            frames[:] = 3
        elif how == "late":  # signal only after the store's length
            frames = np.concatenate([np.full((T, 12), INVALID, np.int16), random_frames(1, T)])
        base = write_mimic_record(ecg, subject, study, frames)
        if callable(how):
            how(base)
        rows.append((subject, study, base))
    pd.DataFrame({"subject_id": [r[0] for r in rows], "study_id": [r[1] for r in rows],
                  "ecg_time": "2180-01-01 00:00:00",
                  "path": [record_rel_path(r[0], r[1]) for r in rows]}).to_csv(ecg / "record_list.csv", index=False)
    (r,) = run_cases([{"argv": ["prepare", "--ecg-root", ecg, "--out", d / "store", "--no-progress",
                                "--dx-min-count", "1", "--workers", "2", "--chunk-size", "4"]}])
    return r, d / "store"


def test_prepare_with_bad_records_succeeds_and_lists_them(door):
    from ecgkt.data import ECGStore

    r, path = door
    assert r["rc"] == 0 and "Traceback" not in r["err"], r["err"]
    store = ECGStore(path)
    assert store.fs == 500 and store.n_samples == T  # from every header, not the first one
    assert store.cohort["study_id"].tolist() == GOOD  # no good record lost
    assert set(store.skipped["study_id"]) == {40000000, *DOOR_CASES}
    assert np.isfinite(store.gains).all() and (store.gains[store.rows] > 0).all()
    assert (np.float32(1) / store.gains[store.rows]).max() < np.inf


@pytest.mark.parametrize("study", list(DOOR_CASES))
def test_record_that_would_stop_training_is_rejected_at_the_door(door, study):
    from ecgkt.data import ECGStore

    _, path = door
    store = ECGStore(path)
    reasons = dict(zip(store.skipped["study_id"], store.skipped["reason"]))
    case, _, words = DOOR_CASES[study]
    assert str(study) in reasons[study] and words in reasons[study], (case, reasons[study])
    assert "\n" not in reasons[study]


def test_first_record_no_longer_decides_the_geometry(door):
    from ecgkt.data import ECGStore

    store = ECGStore(door[1])
    reasons = dict(zip(store.skipped["study_id"], store.skipped["reason"]))
    assert "differs from the store's 500 Hz" in reasons[40000000]
    summary = json.loads((door[1] / "summary.json").read_text())
    assert summary["records_stored"] == len(GOOD) and summary["fs"] == 500 and summary["n_samples"] == T


def test_stored_records_train(door):
    """What the store holds goes through preprocessing to finite values (nothing stops training later)."""
    import torch

    from ecgkt import preprocess
    from ecgkt.data import ECGDataset

    ds = ECGDataset(door[1])
    batch = [ds[i] for i in range(len(ds))]
    x = torch.stack([b["signal"] for b in batch])
    y = preprocess(x, 500.0, target_fs=100, gain=torch.stack([b["gain"] for b in batch]),
                   baseline=torch.stack([b["baseline"] for b in batch]))
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------- full disk, a dying worker

ENOSPC_FALLOCATE = (
    "import errno, os\n"
    "_real = os.posix_fallocate\n"
    "def _full(fd, off, n):\n"
    "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
    "os.posix_fallocate = _full\n"
    "def teardown():\n"
    "    os.posix_fallocate = _real\n")
ENOSPC_MARKER = (  # the disk fills up while the workers write their chunk markers
    "import errno, numpy\n"
    "_real = numpy.savez\n"
    "def _full(*a, **k):\n"
    "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
    "numpy.savez = _full\n"
    "def teardown():\n"
    "    numpy.savez = _real\n")
SIGBUS_WORKER = (  # a worker killed by SIGBUS (what a full disk does to a memory-mapped write)
    "import os, signal\n"
    "from ecgkt.data import store\n"
    "_real = store.read_record\n"
    "def _die(*a, **k):\n"
    "    os.kill(os.getpid(), signal.SIGBUS)\n"
    "store.read_record = _die\n"
    "def teardown():\n"
    "    store.read_record = _real\n")


@pytest.fixture(scope="module")
def disk_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("disk")
    write_tiny(d / "data", n_samples=600)
    args = ["prepare", "--data", d / "data", "--no-progress", "--chunk-size", "2", *LOOSE]
    cases = {
        "disk full when the signal file is created": (ENOSPC_FALLOCATE, 2),
        "disk full while writing chunk markers, 2 workers": (ENOSPC_MARKER, 2),
        "disk full while writing chunk markers, 1 worker": (ENOSPC_MARKER, 1),
        "a worker dies of SIGBUS, 2 workers": (SIGBUS_WORKER, 2),
    }
    t0 = time.time()
    results = run_cases([{"argv": args + ["--out", d / f"s{k}", "--workers", w], "setup": setup}
                         for k, (setup, w) in enumerate(cases.values())], timeout=200)
    return dict(zip(cases, results)), d, time.time() - t0


@pytest.mark.parametrize("case", ["disk full when the signal file is created",
                                  "disk full while writing chunk markers, 2 workers",
                                  "disk full while writing chunk markers, 1 worker",
                                  "a worker dies of SIGBUS, 2 workers"])
def test_full_disk_and_dead_worker_are_one_line_and_do_not_hang(disk_runs, case):
    runs, d, seconds = disk_runs
    words = "worker" if "SIGBUS" in case else "space"
    assert_one_line(runs[case], words)
    assert seconds < 240  # no hang (the pool used to wait forever for a dead worker)
    for store in d.glob("s*"):
        assert not (store / "manifest.json").exists()
        torn = [p for p in store.rglob("*") if ".tmp" in p.name]
        assert not torn, torn


def test_prepare_after_a_full_disk_resumes_to_the_same_store(disk_runs, tmp_path):
    runs, d, _ = disk_runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = prepare(d / "data", d / "s2", CohortConfig(min_lab_count=1, dx_min_count=1), workers=1,
                          chunk_size=2, progress=False)
        fresh = prepare(d / "data", tmp_path / "fresh", CohortConfig(min_lab_count=1, dx_min_count=1), workers=1,
                        chunk_size=2, progress=False)
    for name in STORE_FILES:
        assert (resumed.path / name).read_bytes() == (fresh.path / name).read_bytes(), name


# ----------------------------------------------------------------------------- kill -9 at random points

# Runs `ecgkt prepare`, printing a line after each chunk (so the test can kill at a chosen point of the work).
_PREPARE = r'''
import sys, warnings
warnings.simplefilter("ignore")
from ecgkt.cli import main
from ecgkt.data import store
def hook(k):
    print(f"chunk {k}", flush=True)
store._after_chunk_hook = hook
print("start", flush=True)
sys.exit(main(sys.argv[1:]))
'''


def _prepare_cmd(data, out, workers):
    return [sys.executable, "-c", _PREPARE, "prepare", "--data", str(data), "--out", str(out), "--no-progress",
            "--chunk-size", "1", "--workers", str(workers), *LOOSE]


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    write_tiny(d / "data", n_samples=600)
    r = subprocess.run(_prepare_cmd(d / "data", d / "reference", 1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d


# (lines seen before the kill: 1 = "start", 2.. = chunks done; 6 records -> 6 chunks; 7 = the last chunk, so
# the kill lands in the final write/clean-up) and workers; delays drawn from a fixed seed
KILL_POINTS = [(1, 1), (3, 2), (5, 1), (7, 2), (7, 1)]


@pytest.mark.parametrize("lines,workers", KILL_POINTS)
def test_kill_9_anywhere_then_resume_is_byte_identical(reference_store, lines, workers):
    d = reference_store
    out = d / f"killed_{lines}_{workers}"
    delay = random.Random(lines * 10 + workers).uniform(0.0, 0.4)
    kill_group_after(_prepare_cmd(d / "data", out, workers), lines, delay)
    r = subprocess.run(_prepare_cmd(d / "data", out, 2), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    for name in STORE_FILES:
        assert (out / name).read_bytes() == (d / "reference" / name).read_bytes(), name
    assert not (out / "work").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_stale_work_folder_after_a_kill_in_clean_up_is_removed(reference_store):
    """A kill between the manifest and the removal of work/ leaves a finished store plus work/: the next run
    removes it and changes nothing else."""
    import shutil

    d = reference_store
    out = d / "stale"
    shutil.copytree(d / "reference", out)
    (out / "work" / "chunks").mkdir(parents=True)
    (out / "work" / "chunks" / "chunk_000000.npz").write_bytes(b"left over")
    r = subprocess.run(_prepare_cmd(d / "data", out, 1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (out / "work").exists()
    for name in STORE_FILES:
        assert (out / name).read_bytes() == (d / "reference" / name).read_bytes(), name


def test_out_naming_a_file_is_one_line(tmp_path):
    write_tiny(tmp_path / "data", n_samples=600)
    (tmp_path / "file").write_text("x")
    (r,) = run_cases([{"argv": ["prepare", "--data", tmp_path / "data", "--out", tmp_path / "file",
                                "--no-progress"]}])
    assert_one_line(r, "file")
    assert (tmp_path / "file").read_text() == "x"
    assert error_lines(r["err"])


# ------------------------------------------------------------- a real full disk: a small tmpfs
@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs mounted on a folder, resized by the test (mounting needs root: skipped with the reason otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {(r.stderr or r.stdout).strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    yield mnt, resize
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# tmpfs sizes at which the tiny store (about 124 kB) runs out in each phase: the cohort table, creating the
# signal file, the chunk files, the final gains and cohort files (found by trying sizes, 4 kB pages)
FULL_AT = [("8k", "the cohort table", 1), ("96k", "the signal file", 2), ("128k", "the chunk files", 1),
           ("136k", "the chunk files", 2), ("144k", "the final gains", 1), ("152k", "the final cohort", 2)]


@pytest.mark.parametrize("size,phase,workers", FULL_AT)
def test_prepare_on_a_real_full_disk_is_one_line_and_resumes_to_the_same_store(reference_store, small_tmpfs,
                                                                               size, phase, workers):
    """No fault injection: `ecgkt prepare` writes into a tmpfs of `size`. One line naming the file and the lack
    of space, no hang, no traceback; then the disk grows and the same command finishes the identical store."""
    d = reference_store
    mnt, resize = small_tmpfs
    resize(size)
    cmd = _prepare_cmd(d / "data", mnt / "store", workers)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    line = assert_one_line({"rc": r.returncode, "err": r.stderr}, "space", str(mnt / "store"))
    assert not (mnt / "store" / "manifest.json").exists(), line
    resize("64m")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    for name in STORE_FILES:
        assert (mnt / "store" / name).read_bytes() == (d / "reference" / name).read_bytes(), (phase, name)
    assert not [p for p in (mnt / "store").rglob("*") if ".tmp" in p.name]

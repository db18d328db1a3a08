"""The signal store written by ``ecgkt prepare``: every valid record of a cohort in one
memory-mapped int16 array, with the cohort table beside it.

Layout of a store folder::

    manifest.json     format version, shape, fs, leads, the settings used; written last
    signals.int16     raw int16 [R, 12, T], standard lead order, -32768 = missing sample;
                      one row per *listed* record (a skipped record's row stays unused)
    gains.npy         float32 [R, 12] adu/mV      baselines.npy  float32 [R, 12] adu
    cohort.parquet    one row per stored record; its ``row`` column indexes signals/gains/baselines
    meta.json         names of the feature / label column groups (see mimic.Cohort)
    skipped.csv       records left out, with the reason      summary.json  counts

Workers write each record straight into its row of ``signals.int16`` (no second copy on disk,
which matters at MIMIC scale: ~100 GB). A chunk of records counts as done once its small marker
file (gains, baselines, skip reasons) has been renamed into ``work/chunks``; an interrupted run
redoes only the chunks without a marker, and the finished store is identical either way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ECGKTError, RecordError
from .mimic import Cohort, CohortConfig, build_cohort, find_roots
from .wfdb_io import INVALID, STANDARD_LEADS, ECGRecord, read_header, read_record

FORMAT_VERSION = 1

# Called in the main process after each chunk is saved (tests replace it to simulate a crash).
_after_chunk_hook = None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default).encode())


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(type(x))


def _atomic_parquet(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# conversion of one chunk (runs in the worker processes)

def _convert_chunk(args) -> tuple[int, int]:
    """Read the records of one chunk into their rows of the signal file, then save the chunk's
    marker ``chunk_<k>.npz``; returns (k, number skipped)."""
    k, first_row, paths, fs, n_samples, signals_path, n_rows, marker = args
    n = len(paths)
    signals = np.memmap(signals_path, dtype=np.int16, mode="r+", shape=(n_rows, 12, n_samples))
    gains = np.zeros((n, 12), dtype=np.float32)
    baselines = np.zeros((n, 12), dtype=np.float32)
    reasons = [""] * n
    for i, path in enumerate(paths):
        out = signals[first_row + i]
        try:
            rec = read_record(path)
            _validate(rec, fs, n_samples)
        except RecordError as e:
            reasons[i] = str(e)
        except Exception as e:  # a reader bug must not stop the whole run; list it as a skip
            reasons[i] = f"{path}: unreadable ({type(e).__name__}: {e})"
        if reasons[i]:
            out[:] = INVALID
            continue
        out[:] = rec.signal[:, :n_samples]
        gains[i], baselines[i] = rec.gain, rec.baseline
    signals.flush()  # samples on disk before the marker says so
    del signals
    tmp = Path(str(marker) + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, gains=gains, baselines=baselines, reasons=np.array(reasons, dtype=np.str_))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    return k, sum(bool(r) for r in reasons)


def _validate(rec: ECGRecord, fs: float, n_samples: int) -> None:
    if abs(rec.fs - fs) > 1e-6:
        raise RecordError(rec.path, f"sampling rate {rec.fs:g} Hz differs from the store's {fs:g} Hz")
    if rec.n_samples < n_samples:
        raise RecordError(rec.path, f"{rec.n_samples} samples, the store holds {n_samples} per record")
    if (rec.signal[:, :n_samples] == INVALID).all():
        raise RecordError(rec.path, "every sample is missing (-32768)")


# ---------------------------------------------------------------------------------------------
# prepare

def _resolve_roots(roots):
    if isinstance(roots, (tuple, list)):
        if len(roots) != 2:
            raise ECGKTError("roots: give one data folder or (ECG root, clinical root)")
        ecg, clinical = roots
        return Path(ecg), (Path(clinical) if clinical is not None else None)
    return find_roots(roots)


def prepare(roots, out_dir, config: CohortConfig | None = None, *, workers: int = 2, chunk_size: int = 256,
            fs: float | None = None, n_samples: int | None = None, progress: bool = True,
            overwrite: bool = False) -> "ECGStore":
    """Build (or finish building) a signal store from MIMIC-shaped roots.

    ``roots`` is one folder holding ``mimic-iv-ecg/`` and ``mimic-iv/`` (any nesting), or a pair
    (ECG root, clinical root or None). ``fs`` / ``n_samples`` default to the first readable
    record's; records with another rate or fewer samples are skipped, longer ones truncated.
    """
    cfg = config or CohortConfig()
    ecg_root, clinical_root = _resolve_roots(roots)
    out = Path(out_dir)
    settings = {"format_version": FORMAT_VERSION, "ecg_root": str(ecg_root.resolve()),
                "clinical_root": str(clinical_root.resolve()) if clinical_root else None,
                "config": dataclasses.asdict(cfg), "chunk_size": int(chunk_size),
                "fs": fs, "n_samples": n_samples}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    manifest = out / "manifest.json"
    if manifest.exists():
        done = json.loads(manifest.read_text())
        if done.get("fingerprint") == fingerprint and not overwrite:
            return ECGStore(out)
        if not overwrite:
            raise ECGKTError(f"{out}: holds a store built with other settings; use another folder or overwrite")
    if overwrite:
        _remove_store_files(out)
    work = out / "work"
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    if state_path.exists() and json.loads(state_path.read_text()).get("fingerprint") != fingerprint:
        shutil.rmtree(work)  # progress of a run with other settings: start over
        (work / "chunks").mkdir(parents=True)
    if not state_path.exists():
        (out / "signals.int16").unlink(missing_ok=True)  # rows of an abandoned run

    # 1. the cohort table (kept so a resumed run does not rebuild it)
    if not state_path.exists():
        cohort = build_cohort(ecg_root, clinical_root, cfg, progress=progress)
        if len(cohort.table) == 0:
            raise ECGKTError(f"{ecg_root / 'record_list.csv'}: lists no records")
        _atomic_parquet(work / "cohort_all.parquet", cohort.table)
        plan_fs, plan_len = fs, n_samples
        if plan_fs is None or plan_len is None:
            h = _first_header(cohort.table["record"])
            plan_fs = h.fs if plan_fs is None else plan_fs
            plan_len = h.sig_len if plan_len is None else plan_len
        _atomic_json(state_path, {"fingerprint": fingerprint, "meta": cohort.meta(),
                                  "fs": float(plan_fs), "n_samples": int(plan_len)})
    state = json.loads(state_path.read_text())
    table = pd.read_parquet(work / "cohort_all.parquet")
    store_fs, store_len = state["fs"], state["n_samples"]

    # 2. chunks of records -> rows of the signal file + marker files (parallel, resumable)
    paths = table["record"].tolist()
    n_rows = len(paths)
    signals_path = out / "signals.int16"
    if not signals_path.exists():
        tmp = out / "signals.int16.tmp"
        np.memmap(tmp, dtype=np.int16, mode="w+", shape=(n_rows, 12, store_len)).flush()  # sparse file
        os.replace(tmp, signals_path)
    n_chunks = (n_rows + chunk_size - 1) // chunk_size
    markers = [work / "chunks" / f"chunk_{k:06d}.npz" for k in range(n_chunks)]
    todo = [(k, k * chunk_size, paths[k * chunk_size:(k + 1) * chunk_size], store_fs, store_len,
             str(signals_path), n_rows, str(markers[k])) for k in range(n_chunks) if not markers[k].exists()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_rows, initial=n_rows - sum(len(t[2]) for t in todo), desc="prepare", unit=" rec", disable=None)
    sizes = {t[0]: len(t[2]) for t in todo}
    try:
        for k, _ in _run_chunks(todo, workers):
            if bar is not None:
                bar.update(sizes[k])
            if _after_chunk_hook is not None:
                _after_chunk_hook(k)
    finally:
        if bar is not None:
            bar.close()

    # 3. the small files, then the manifest (its presence marks a finished store)
    return _finish(out, work, table, state, markers, fingerprint, settings, progress)


STORE_FILES = ("manifest.json", "signals.int16", "gains.npy", "baselines.npy", "cohort.parquet", "meta.json",
               "skipped.csv", "summary.json")


def _remove_store_files(out: Path) -> None:
    """Only the files a store consists of: --out may point at a folder holding other things."""
    for name in STORE_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "work", ignore_errors=True)


def _first_header(records):
    last = None
    for path in records:
        try:
            return read_header(path)
        except RecordError as e:
            last = e
    raise ECGKTError(f"no readable record header in the cohort (last error: {last})")


def _run_chunks(todo, workers):
    if workers <= 1 or len(todo) <= 1:
        for t in todo:
            yield _convert_chunk(t)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(workers, len(todo))) as pool:
        yield from pool.imap_unordered(_convert_chunk, todo)


def _finish(out, work, table, state, markers, fingerprint, settings, progress) -> "ECGStore":
    gains, baselines, reasons = [], [], []
    for f in markers:
        with np.load(f) as z:
            gains.append(z["gains"])
            baselines.append(z["baselines"])
            reasons.extend(z["reasons"].tolist())
    ok = np.array([not r for r in reasons], dtype=bool)
    n_rows = len(table)
    _atomic_npy(out / "gains.npy", np.concatenate(gains) if gains else np.zeros((0, 12), np.float32))
    _atomic_npy(out / "baselines.npy", np.concatenate(baselines) if baselines else np.zeros((0, 12), np.float32))
    cohort = table.assign(row=np.arange(n_rows, dtype=np.int64))[ok].reset_index(drop=True)
    _atomic_parquet(out / "cohort.parquet", cohort)
    skipped = table.loc[~ok, ["subject_id", "study_id", "record"]].copy()
    skipped["reason"] = [r for r in reasons if r]
    tmp = out / "skipped.csv.tmp"
    skipped.to_csv(tmp, index=False)
    os.replace(tmp, out / "skipped.csv")
    meta = dict(state["meta"], fs=state["fs"], n_samples=state["n_samples"], leads=list(STANDARD_LEADS))
    _atomic_json(out / "meta.json", meta)
    n = int(ok.sum())
    summary = {"records_listed": n_rows, "records_stored": n, "records_skipped": n_rows - n,
               "skip_reasons": _reason_counts(skipped["reason"])}
    _atomic_json(out / "summary.json", summary)
    _atomic_json(out / "manifest.json", {"fingerprint": fingerprint, "format_version": FORMAT_VERSION,
                                         "n_records": n, "n_rows": n_rows, "n_leads": 12,
                                         "n_samples": state["n_samples"], "fs": state["fs"],
                                         "leads": list(STANDARD_LEADS), "settings": settings})
    shutil.rmtree(work, ignore_errors=True)
    if progress or len(skipped):
        print(f"ecgkt prepare: stored {n} of {n_rows} records in {out}", file=sys.stderr)
        for sid, reason in list(zip(skipped["study_id"], skipped["reason"]))[:20]:
            print(f"  skipped study {sid}: {reason}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... {len(skipped) - 20} more in {out / 'skipped.csv'}", file=sys.stderr)
    return ECGStore(out)


def _reason_counts(reasons) -> dict:
    kinds: dict = {}
    for r in reasons:
        key = r.split(":")[0].split("(")[0].strip()[:60]
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


# ---------------------------------------------------------------------------------------------
# reading a store

class ECGStore:
    """Direct access to a finished store.

    ``cohort`` (DataFrame, one row per stored record), ``signals`` (int16 memmap
    [R, 12, T] indexed by ``cohort["row"]``), ``gains`` / ``baselines`` (float32 [R, 12]),
    ``meta``; ``signal(i)`` / ``record(i)`` take a cohort position ``i``."""

    def __init__(self, path):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise ECGKTError(f"{self.path}: not a finished ecgkt store (no manifest.json; run `ecgkt prepare`)")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ECGKTError(f"{self.path}: store format {self.manifest.get('format_version')} is not "
                             f"{FORMAT_VERSION}; prepare it again")
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.fs = float(self.manifest["fs"])
        self.leads = list(self.manifest["leads"])
        self.n_samples = int(self.manifest["n_samples"])
        self._n = int(self.manifest["n_records"])
        self._n_rows = int(self.manifest["n_rows"])
        self.gains = np.load(self.path / "gains.npy")
        self.baselines = np.load(self.path / "baselines.npy")
        self.cohort = pd.read_parquet(self.path / "cohort.parquet")
        self.rows = self.cohort["row"].to_numpy(dtype=np.int64)
        self._signals = None

    def __len__(self) -> int:
        return self._n

    @property
    def signals(self) -> np.ndarray:
        """The int16 [R, 12, T] memmap, opened on first use (so each process opens its own)."""
        if self._signals is None:
            self._signals = np.memmap(self.path / "signals.int16", dtype=np.int16, mode="r",
                                      shape=(self._n_rows, 12, self.n_samples))
        return self._signals

    @property
    def skipped(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "skipped.csv")

    def signal(self, i: int) -> np.ndarray:
        """int16 [12, T] samples of cohort row ``i`` (a copy)."""
        return np.array(self.signals[self.rows[i]])

    def record(self, i: int) -> ECGRecord:
        """Cohort row ``i`` as an :class:`ECGRecord`."""
        r = self.rows[i]
        return ECGRecord(self.signal(i), self.gains[r].copy(), self.baselines[r].copy(), self.fs,
                         str(self.cohort["record"].iat[i]))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_signals"] = None  # memmaps are reopened in the receiving process
        return state

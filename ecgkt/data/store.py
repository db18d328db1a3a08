"""The signal store written by ``ecgkt prepare``: every valid record of a cohort in one
memory-mapped int16 array, with the cohort table beside it.

Layout of a store folder::

    manifest.json     format version, shape, fs, leads, the settings used; written last
    signals.int16     raw int16 [N, 12, T], standard lead order, -32768 = missing sample
    gains.npy         float32 [N, 12] adu/mV      baselines.npy  float32 [N, 12] adu
    cohort.parquet    one row per stored record (row i <-> signals[i])
    meta.json         names of the feature / label column groups (see mimic.Cohort)
    skipped.csv       records left out, with the reason      summary.json  counts

While it runs, ``prepare`` keeps its progress in ``work/``: the cohort table, then one file per
chunk of records, each written to a temporary name and renamed when complete. Interrupted, it
resumes from the chunks already there; the finished store is identical either way.
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
    """Read the records of one chunk and save them as ``chunk_<k>.npz``; returns (k, n_bad)."""
    k, paths, fs, n_samples, out_path = args
    n = len(paths)
    signals = np.full((n, 12, n_samples), INVALID, dtype=np.int16)
    gains = np.zeros((n, 12), dtype=np.float32)
    baselines = np.zeros((n, 12), dtype=np.float32)
    reasons = [""] * n
    for i, path in enumerate(paths):
        try:
            rec = read_record(path)
            _validate(rec, fs, n_samples)
        except RecordError as e:
            reasons[i] = str(e)
            continue
        except Exception as e:  # a reader bug must not stop the whole run; list it as a skip
            reasons[i] = f"unreadable ({type(e).__name__}: {e})"
            continue
        m = min(rec.n_samples, n_samples)
        signals[i, :, :m] = rec.signal[:, :m]
        gains[i], baselines[i] = rec.gain, rec.baseline
    tmp = Path(str(out_path) + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, signals=signals, gains=gains, baselines=baselines, reasons=np.array(reasons, dtype=object))
    os.replace(tmp, out_path)
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
    if overwrite and out.exists():
        shutil.rmtree(out)
    work = out / "work"
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    if state_path.exists() and json.loads(state_path.read_text()).get("fingerprint") != fingerprint:
        shutil.rmtree(work)  # progress of a run with other settings: start over
        (work / "chunks").mkdir(parents=True)

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

    # 2. chunks of records -> chunk files (parallel, resumable)
    paths = table["record"].tolist()
    n_chunks = (len(paths) + chunk_size - 1) // chunk_size
    chunk_file = [work / "chunks" / f"chunk_{k:06d}.npz" for k in range(n_chunks)]
    todo = [(k, paths[k * chunk_size:(k + 1) * chunk_size], store_fs, store_len, str(chunk_file[k]))
            for k in range(n_chunks) if not chunk_file[k].exists()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), initial=len(paths) - sum(len(t[1]) for t in todo), desc="prepare",
                   unit=" rec")
    sizes = {t[0]: len(t[1]) for t in todo}
    try:
        for k, _ in _run_chunks(todo, workers):
            if bar is not None:
                bar.update(sizes[k])
            if _after_chunk_hook is not None:
                _after_chunk_hook(k)
    finally:
        if bar is not None:
            bar.close()

    # 3. assemble the final files, then the manifest (its presence marks a finished store)
    return _assemble(out, work, table, state, chunk_file, fingerprint, settings, progress)


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


def _assemble(out, work, table, state, chunk_file, fingerprint, settings, progress) -> "ECGStore":
    n_samples = state["n_samples"]
    reasons = []
    for f in chunk_file:
        with np.load(f, allow_pickle=True) as z:
            reasons.extend(z["reasons"].tolist())
    ok = np.array([not r for r in reasons], dtype=bool)
    n = int(ok.sum())
    tmp_signals = out / "signals.int16.tmp"
    signals = np.memmap(tmp_signals, dtype=np.int16, mode="w+", shape=(max(n, 1), 12, n_samples))
    gains = np.zeros((n, 12), dtype=np.float32)
    baselines = np.zeros((n, 12), dtype=np.float32)
    row = 0
    for f in chunk_file:
        with np.load(f, allow_pickle=True) as z:
            good = np.array([not r for r in z["reasons"].tolist()], dtype=bool)
            m = int(good.sum())
            if m:
                signals[row:row + m] = z["signals"][good]
                gains[row:row + m] = z["gains"][good]
                baselines[row:row + m] = z["baselines"][good]
            row += m
    signals.flush()
    del signals
    os.replace(tmp_signals, out / "signals.int16")
    _atomic_npy(out / "gains.npy", gains)
    _atomic_npy(out / "baselines.npy", baselines)
    _atomic_parquet(out / "cohort.parquet", table[ok].reset_index(drop=True))
    skipped = table.loc[~ok, ["subject_id", "study_id", "record"]].copy()
    skipped["reason"] = [r for r in reasons if r]
    tmp = out / "skipped.csv.tmp"
    skipped.to_csv(tmp, index=False)
    os.replace(tmp, out / "skipped.csv")
    meta = dict(state["meta"], fs=state["fs"], n_samples=n_samples, leads=list(STANDARD_LEADS))
    _atomic_json(out / "meta.json", meta)
    summary = {"records_listed": len(table), "records_stored": n, "records_skipped": int((~ok).sum()),
               "skip_reasons": _reason_counts(skipped["reason"])}
    _atomic_json(out / "summary.json", summary)
    _atomic_json(out / "manifest.json", {"fingerprint": fingerprint, "format_version": FORMAT_VERSION,
                                         "n_records": n, "n_leads": 12, "n_samples": n_samples,
                                         "fs": state["fs"], "leads": list(STANDARD_LEADS),
                                         "settings": settings})
    shutil.rmtree(work, ignore_errors=True)
    if progress or len(skipped):
        print(f"ecgkt prepare: stored {n} of {len(table)} records in {out}", file=sys.stderr)
        for sid, path, reason in zip(skipped["study_id"], skipped["record"], skipped["reason"]):
            print(f"  skipped study {sid} ({path}): {reason}", file=sys.stderr)
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
    """Direct access to a finished store: ``cohort`` (DataFrame), ``signals`` (memmap
    [N, 12, T] int16), ``gains`` / ``baselines`` (float32 [N, 12]), ``meta``."""

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
        self.gains = np.load(self.path / "gains.npy")
        self.baselines = np.load(self.path / "baselines.npy")
        self._cohort = None
        self._signals = None

    def __len__(self) -> int:
        return self._n

    @property
    def cohort(self) -> pd.DataFrame:
        if self._cohort is None:
            self._cohort = pd.read_parquet(self.path / "cohort.parquet")
        return self._cohort

    @property
    def signals(self) -> np.ndarray:
        """The int16 [N, 12, T] memmap, opened on first use (so each process opens its own)."""
        if self._signals is None:
            self._signals = np.memmap(self.path / "signals.int16", dtype=np.int16, mode="r",
                                      shape=(max(self._n, 1), 12, self.n_samples))[:self._n]
        return self._signals

    @property
    def skipped(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "skipped.csv")

    def record(self, i: int) -> ECGRecord:
        """Row ``i`` as an :class:`ECGRecord` (a copy of the samples)."""
        return ECGRecord(np.array(self.signals[i]), self.gains[i].copy(), self.baselines[i].copy(), self.fs,
                         str(self.cohort["record"].iat[i]))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_signals"] = None  # memmaps are reopened in the receiving process
        return state

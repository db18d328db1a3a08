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
which matters at MIMIC scale: ~100 GB), starting as soon as the headers have fixed the store's
geometry, while the cohort table is built. A chunk of records counts as done once its small marker
file (gains, baselines, skip reasons) has been renamed into ``work/chunks`` and the run's state
(``work/state.json``, saved with the cohort table) exists; an interrupted run redoes only the chunks
without a marker (all of them when it stopped before saving its state), and the finished store is
identical either way.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import errno
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ECGKTError, RecordError
from ..io import atomic_write, atomic_write_json, describe_os_error, format_bytes, read_json, temp_path
from .mimic import Cohort, CohortConfig, build_cohort, find_roots, read_record_list
from .wfdb_io import INVALID, STANDARD_LEADS, ECGRecord, read_header, read_record, validate_record

FORMAT_VERSION = 1

# Called in the main process after each chunk is saved (tests replace it to simulate a crash).
_after_chunk_hook = None


def _atomic_json(path: Path, obj) -> None:
    atomic_write_json(path, obj, indent=1, sort_keys=True)


def _atomic_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda f: df.to_parquet(f, index=False))


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr))


# ---------------------------------------------------------------------------------------------
# conversion of one chunk (runs in the worker processes)

def _convert_chunk(args) -> tuple[int, int]:
    """Read the records of one chunk into their rows of the signal file, then save the chunk's
    marker ``chunk_<k>.npz``; returns (k, number skipped)."""
    k, first_row, paths, fs, n_samples, signals_path, marker = args
    n = len(paths)
    gains = np.zeros((n, 12), dtype=np.float32)
    baselines = np.zeros((n, 12), dtype=np.float32)
    reasons = [""] * n
    missing = np.full((12, n_samples), INVALID, dtype=np.int16)
    # rows written with pwrite, not through a memory map: no page fault per 4 kB of each row (about half the cost)
    fd = os.open(signals_path, os.O_WRONLY)
    try:
        for i, path in enumerate(paths):
            try:
                rec = read_record(path)
                _validate(rec, fs, n_samples)
            except RecordError as e:
                reasons[i] = str(e)
            except Exception as e:  # a reader bug must not stop the whole run; list it as a skip
                reasons[i] = f"{path}: unreadable ({type(e).__name__}: {e})"
            if reasons[i]:
                row = missing
            else:
                row = np.ascontiguousarray(rec.signal[:, :n_samples])
                gains[i], baselines[i] = rec.gain, rec.baseline
            if os.pwrite(fd, row, (first_row + i) * row.nbytes) != row.nbytes:  # short only when the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fdatasync(fd)  # samples on disk before the marker says so
    except OSError as e:
        raise ECGKTError(f"cannot write {describe_os_error(e, signals_path)}") from None
    finally:
        os.close(fd)
    atomic_write(Path(marker), lambda f: np.savez(f, gains=gains, baselines=baselines,
                                                   reasons=np.array(reasons, dtype=np.str_)))
    return k, sum(bool(r) for r in reasons)


def _validate(rec: ECGRecord, fs: float, n_samples: int) -> None:
    """The door of the store: the record passed validate_record when read (rate, float32 gains and
    baselines, amplitude, usable signal); here it must also fit the store's geometry, and the part
    stored must still carry signal."""
    if abs(rec.fs - fs) > 1e-6:
        raise RecordError(rec.path, f"sampling rate {rec.fs:g} Hz differs from the store's {fs:g} Hz")
    if rec.n_samples < n_samples:
        raise RecordError(rec.path, f"{rec.n_samples} samples, the store holds {n_samples} per record")
    if rec.n_samples > n_samples:
        validate_record(rec.window(0, n_samples))


def _scan_headers(paths) -> list:
    """(fs, length) of each record's header, None where the header is unusable (runs in the workers)."""
    out = []
    for path in paths:
        try:
            h = read_header(path)
            out.append((float(h.fs), int(h.sig_len)))
        except RecordError:
            out.append(None)
        except Exception:  # noqa: BLE001 - the record is skipped with its reason when converted
            out.append(None)
    return out


def plan_geometry(headers) -> tuple[float, int]:
    """The store's (fs, samples per record) decided from every record's header, never from one: the most
    common sampling rate, then the most common length at that rate (ties: the shorter, which fits more
    records). Records at other rates, or shorter, are skipped with their reason; longer ones truncated."""
    usable = [h for h in headers if h is not None]
    if not usable:
        raise ECGKTError("no record of the cohort has a readable header; see the reasons with a small --chunk-size "
                         "run, or check the record paths in record_list.csv")
    rates = Counter(fs for fs, _ in usable)
    fs = max(rates, key=lambda r: (rates[r], -r))
    lengths = Counter(n for r, n in usable if r == fs)
    n = max(lengths, key=lambda m: (lengths[m], -m))
    return fs, n


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
    (ECG root, clinical root or None). ``fs`` / ``n_samples`` default to the most common rate and
    length over every record's header (``plan_geometry``); records with another rate or fewer samples
    are skipped with their reason, longer ones truncated. Every record is checked at the door
    (``validate_record``): one that could not be trained on is listed in skipped.csv, never stored.
    """
    cfg = config or CohortConfig()
    ecg_root, clinical_root = _resolve_roots(roots)
    out = Path(out_dir)
    settings = {"format_version": FORMAT_VERSION, "ecg_root": str(ecg_root.resolve()),
                "clinical_root": str(clinical_root.resolve()) if clinical_root else None,
                "config": dataclasses.asdict(cfg), "chunk_size": int(chunk_size),
                "fs": fs, "n_samples": n_samples}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if out.exists() and not out.is_dir():
        raise ECGKTError(f"{out}: is a file; give a folder for the store")
    manifest = out / "manifest.json"
    if manifest.exists():
        done = read_json(manifest, "store manifest")
        if done.get("fingerprint") == fingerprint and not overwrite:
            shutil.rmtree(out / "work", ignore_errors=True)  # a run killed during its final clean-up
            return ECGStore(out)
        if not overwrite:
            raise ECGKTError(f"{out}: holds a store built with other settings; use another folder or overwrite")
    if overwrite:
        _remove_store_files(out)
    work = out / "work"
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    if state_path.exists() and read_json(state_path, "prepare state").get("fingerprint") != fingerprint:
        shutil.rmtree(work)  # progress of a run with other settings: start over
        (work / "chunks").mkdir(parents=True)
    if not state_path.exists():  # a run that died before saving its state: its rows and chunks are not trusted
        (out / "signals.int16").unlink(missing_ok=True)
        shutil.rmtree(work / "chunks")
        (work / "chunks").mkdir()

    with _Workers(workers) as pool:
        if state_path.exists():  # resumed: the geometry saved, the chunks without a marker
            state = read_json(state_path, "prepare state")
            table = pd.read_parquet(work / "cohort_all.parquet")
            markers, todo, started = _start_chunks(pool, table["record"].tolist(), state["fs"], state["n_samples"],
                                                   out, chunk_size)
        else:
            # 1. the geometry from every header, then the workers convert the records while the cohort table is
            # built here (kept so a resumed run does not rebuild it)
            records = read_record_list(ecg_root)
            paths = records["record"].tolist()
            plan_fs, plan_len = fs, n_samples
            if plan_fs is None or plan_len is None:
                pieces = [paths[i:i + chunk_size] for i in range(0, len(paths), chunk_size)]
                headers = [h for part in pool.results(pool.submit(_scan_headers, pieces), ordered=True) for h in part]
                auto_fs, auto_len = plan_geometry(headers)
                plan_fs = auto_fs if plan_fs is None else plan_fs
                plan_len = auto_len if plan_len is None else plan_len
            markers, todo, started = _start_chunks(pool, paths, float(plan_fs), int(plan_len), out, chunk_size)
            cohort = build_cohort(ecg_root, clinical_root, cfg, progress=progress, records=records)
            if len(cohort.table) == 0:
                raise ECGKTError(f"{ecg_root / 'record_list.csv'}: lists no records")
            if cohort.table["record"].tolist() != paths:  # the workers write row i for paths[i]
                raise ECGKTError("prepare: the cohort table's rows are not the record list's (a bug); nothing stored")
            _atomic_parquet(work / "cohort_all.parquet", cohort.table)
            _atomic_json(state_path, {"fingerprint": fingerprint, "meta": cohort.meta(),
                                      "fs": float(plan_fs), "n_samples": int(plan_len)})
            state = read_json(state_path, "prepare state")
            table = pd.read_parquet(work / "cohort_all.parquet")

        # 2. wait for the chunks: rows of the signal file + marker files (parallel, resumable)
        n_rows = len(table)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_rows, initial=n_rows - sum(len(t[2]) for t in todo), desc="prepare", unit=" rec",
                       disable=None)
        sizes = {t[0]: len(t[2]) for t in todo}
        try:
            for k, _ in pool.results(started):
                if bar is not None:
                    bar.update(sizes[k])
                if _after_chunk_hook is not None:
                    _after_chunk_hook(k)
        finally:
            if bar is not None:
                bar.close()

    # 3. the small files, then the manifest (its presence marks a finished store)
    return _finish(out, work, table, state, markers, fingerprint, settings, progress)


def _start_chunks(pool: "_Workers", paths: list, fs: float, n_samples: int, out: Path, chunk_size: int):
    """Allocate the signal file (when missing) and start converting the chunks of ``paths`` that have no marker
    yet; returns (every chunk's marker path, the tasks started, their handles for ``pool.results``)."""
    signals_path = out / "signals.int16"
    if not signals_path.exists():
        _allocate(signals_path, len(paths) * 12 * int(n_samples) * 2)
    n_chunks = (len(paths) + chunk_size - 1) // chunk_size
    markers = [out / "work" / "chunks" / f"chunk_{k:06d}.npz" for k in range(n_chunks)]
    todo = [(k, k * chunk_size, paths[k * chunk_size:(k + 1) * chunk_size], fs, n_samples, str(signals_path),
             str(markers[k])) for k in range(n_chunks) if not markers[k].exists()]
    return markers, todo, pool.submit(_convert_chunk, todo)


STORE_FILES = ("manifest.json", "signals.int16", "gains.npy", "baselines.npy", "cohort.parquet", "meta.json",
               "skipped.csv", "summary.json")


def _remove_store_files(out: Path) -> None:
    """Only the files a store consists of: --out may point at a folder holding other things."""
    for name in STORE_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "work", ignore_errors=True)


def _allocate(path: Path, nbytes: int) -> None:
    """Create the signal file with its disk space reserved up front: a full disk is one clear error now,
    not a worker killed by SIGBUS when a page of the memory map cannot be backed later."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, nbytes)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                if shutil.disk_usage(path.parent).free < nbytes:  # no fallocate here: check instead
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
                f.truncate(nbytes)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise ECGKTError(f"{path}: not enough disk space for the signal store ({format_bytes(nbytes)} "
                             f"needed, {format_bytes(free)} free)") from None
        raise ECGKTError(f"cannot write {describe_os_error(e, path)}") from None


class _Workers:
    """fn(task) in worker processes when workers > 1, one pool for every phase of a run (starting the
    processes costs about 50 ms: once, not per phase). A phase of one task, or workers <= 1, runs in this
    process, each task when its result is asked for. A worker that dies (killed, SIGBUS) stops the run at
    once with one line, never a hang."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    def submit(self, fn, tasks) -> list:
        """Start fn(task) for each task; pass what it returns to :meth:`results`."""
        if self.workers <= 1 or len(tasks) <= 1:
            return [functools.partial(fn, t) for t in tasks]
        if self._pool is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))
        return [self._pool.submit(fn, t) for t in tasks]

    def results(self, started: list, ordered: bool = False):
        """The results of :meth:`submit`'s tasks: as they finish, or in task order with ``ordered``."""
        if started and not isinstance(started[0], cf.Future):  # calls to make here, one by one
            for call in started:
                yield call()
            return
        try:
            for f in (started if ordered else cf.as_completed(started)):
                yield f.result()
        except cf.process.BrokenProcessPool:
            raise ECGKTError("prepare: a worker process died (killed, out of memory, or a bus error writing the "
                             "signal file); rerun the same command to resume") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


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
    atomic_write(out / "skipped.csv", lambda f: f.write(skipped.to_csv(index=False).encode()))
    meta = dict(state["meta"], fs=state["fs"], n_samples=state["n_samples"], leads=list(STANDARD_LEADS))
    _atomic_json(out / "meta.json", meta)
    n = int(ok.sum())
    summary = {"records_listed": n_rows, "records_stored": n, "records_skipped": n_rows - n,
               "skip_reasons": _reason_counts(skipped["reason"]), "fs": state["fs"],
               "n_samples": state["n_samples"]}
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
        self.manifest = read_json(manifest, "store manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ECGKTError(f"{self.path}: store format {self.manifest.get('format_version')} is not "
                             f"{FORMAT_VERSION}; prepare it again")
        self.meta = read_json(self.path / "meta.json", "store metadata")
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

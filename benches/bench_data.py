"""Data-layer benchmarks; each prints its figures and the ratio against its peer, measured in the same run.

  (a) labevents: read a generated N-row labevents.csv.gz filtered to the item ids in use;
      wall time and peak RSS of the reader (run in a child process). Target: peak < 4 GB at 20M rows.
  (b) per-record read: ECGStore row vs wfdb.rdrecord (and ecgkt's own WFDB reader) on the same
      records. Target: store >= 20x faster than wfdb.rdrecord.
  (c) ECGDataset + DataLoader throughput in records/s (num_workers 0 and 2).

Usage:
  python benches/bench_data.py                       # all, 20M lab rows, 300-patient synthetic set
  python benches/bench_data.py --only labevents --lab-rows 2000000
  python benches/bench_data.py --only store,loader --patients 100
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

LAB_HEADER = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
              "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag",
              "priority", "comments"]


def write_labevents(path: Path, rows: int, seed: int = 0, block: int = 2_000_000) -> None:
    """A MIMIC-shaped labevents.csv.gz: ~200 item ids (the 29 in use among them), text results,
    empty fields, written block by block with pyarrow (gzip level 1 for speed)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from ecgkt.data.mimic import DEFAULT_LAB_TESTS

    rng = np.random.default_rng(seed)
    used = np.array(sorted({i for ids in DEFAULT_LAB_TESTS.values() for i in ids}))
    other = np.setdiff1d(np.arange(50800, 51000), used)
    pool = np.concatenate([used, other])
    weights = np.where(np.isin(pool, used), 3.0, 1.0)
    weights /= weights.sum()
    base = np.datetime64("2150-01-01T00:00:00", "s")
    with gzip.open(path, "wb", compresslevel=1) as sink:
        header = True
        for start in range(0, rows, block):
            n = min(block, rows - start)
            item = rng.choice(pool, size=n, p=weights)
            num = np.round(rng.lognormal(1.0, 1.0, size=n), 2)
            text = rng.random(n) < 0.02
            t = pa.array(base + rng.integers(0, 40 * 365 * 86400, size=n).astype("timedelta64[s]"))
            time_text = pc.cast(t, pa.string())  # "YYYY-MM-DD hh:mm:ss", as in MIMIC
            value = pc.if_else(pa.array(text), pa.array(np.where(rng.random(n) < 0.5, "___", "<0.01")),
                               pc.cast(pa.array(num), pa.string()))
            table = pa.table({
                "labevent_id": np.arange(start, start + n), "subject_id": rng.integers(10_000_000, 19_999_999, n),
                "hadm_id": pa.array(rng.integers(20_000_000, 29_999_999, n), mask=rng.random(n) < 0.4),
                "specimen_id": rng.integers(0, 99_999_999, n), "itemid": item,
                "order_provider_id": pa.nulls(n, pa.string()), "charttime": time_text, "storetime": time_text,
                "value": value, "valuenum": pa.array(num, mask=text), "valueuom": pa.repeat("mEq/L", n),
                "ref_range_lower": pa.array(np.full(n, 3.5), mask=rng.random(n) < 0.1),
                "ref_range_upper": pa.array(np.full(n, 5.1), mask=rng.random(n) < 0.1),
                "flag": pc.if_else(pa.array(rng.random(n) < 0.2), "abnormal", pa.scalar(None, pa.string())),
                "priority": pa.repeat("ROUTINE", n), "comments": pa.nulls(n, pa.string()),
            })
            buf = pa.BufferOutputStream()
            pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=header, quoting_style="needed"))
            sink.write(buf.getvalue().to_pybytes())
            header = False


_CHILD = """
import json, sys, time, resource
from ecgkt.data.labevents import read_labevents
from ecgkt.data.mimic import DEFAULT_LAB_TESTS
ids = [i for v in DEFAULT_LAB_TESTS.values() for i in v]
t = time.perf_counter()
df = read_labevents(sys.argv[1], ids)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rows_kept": len(df),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

_CHILD_PANDAS = """
import json, sys, time, resource
import pandas as pd
from ecgkt.data.mimic import DEFAULT_LAB_TESTS
ids = {i for v in DEFAULT_LAB_TESTS.values() for i in v}
t = time.perf_counter()
cols = ["subject_id", "itemid", "charttime", "value", "valuenum", "ref_range_lower", "ref_range_upper"]
parts = [c[c["itemid"].isin(ids)] for c in pd.read_csv(sys.argv[1], usecols=cols, chunksize=1_000_000)]
df = pd.concat(parts)
df["charttime"] = pd.to_datetime(df["charttime"])
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rows_kept": len(df),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def bench_labevents(rows: int, tmp: Path, pandas_peer: bool) -> dict:
    path = tmp / "labevents.csv.gz"
    t = time.perf_counter()
    write_labevents(path, rows)
    gen_s = time.perf_counter() - t
    print(f"[labevents] generated {rows:,} rows ({path.stat().st_size / 2**20:.0f} MiB gz) in {gen_s:.1f} s")
    res = {"rows": rows, "file_mib": path.stat().st_size / 2**20}
    runs = [("ecgkt.read_labevents (pyarrow streaming)", _CHILD)]
    if pandas_peer:
        runs.append(("pandas.read_csv chunks (peer)", _CHILD_PANDAS))
    for name, code in runs:
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res[name] = r
        print(f"[labevents] {name}: {r['seconds']:.1f} s, {r['rows_kept']:,} rows kept, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB, {rows / r['seconds'] / 1e6:.2f} M rows/s")
    if pandas_peer:
        a, b = res[runs[0][0]], res[runs[1][0]]
        print(f"[labevents] speed-up vs pandas chunks: {b['seconds'] / a['seconds']:.1f}x, "
              f"memory ratio {b['peak_rss_gb'] / a['peak_rss_gb']:.1f}x")
    return res


def make_store(patients: int, tmp: Path):
    from ecgkt.data import CohortConfig, generate, prepare

    data = tmp / "synth"
    t = time.perf_counter()
    generate(data, patients=patients, seed=0, progress=False)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = prepare(data, tmp / "store", CohortConfig(min_lab_count=1, dx_min_count=1), workers=2,
                        progress=False)
    prep_s = time.perf_counter() - t
    print(f"[store] synthetic set of {patients} patients in {gen_s:.1f} s; prepare (2 workers): "
          f"{len(store)} records in {prep_s:.1f} s = {len(store) / prep_s:.0f} records/s")
    return store, {"records": len(store), "prepare_records_per_s": len(store) / prep_s}


def bench_store(store, repeats: int = 3) -> dict:
    import wfdb

    from ecgkt.data import read_record

    paths = store.cohort["record"].tolist()
    n = len(paths)

    def per_record(fn):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for i in range(n):
                fn(i)
            best = min(best, (time.perf_counter() - t) / n)
        return best

    # fresh process state for wfdb is not needed: both read the same files, page cache warm for all
    t_wfdb = per_record(lambda i: wfdb.rdrecord(paths[i]))
    t_reader = per_record(lambda i: read_record(paths[i]))
    store._signals = None  # include opening the memmap once
    t_store = per_record(lambda i: store.record(i))
    t_row = per_record(lambda i: np.array(store.signals[i]))
    res = {"records": n, "wfdb_rdrecord_ms": t_wfdb * 1e3, "ecgkt_read_record_ms": t_reader * 1e3,
           "store_record_ms": t_store * 1e3, "store_row_copy_ms": t_row * 1e3,
           "speedup_store_vs_wfdb": t_wfdb / t_store, "speedup_row_vs_wfdb": t_wfdb / t_row}
    print(f"[store] per record over {n} records (best of {repeats}): wfdb.rdrecord {t_wfdb * 1e3:.3f} ms, "
          f"ecgkt.read_record {t_reader * 1e3:.3f} ms, ECGStore.record {t_store * 1e3:.4f} ms, "
          f"signals[i] copy {t_row * 1e3:.4f} ms")
    print(f"[store] speed-up vs wfdb.rdrecord: ECGStore.record {t_wfdb / t_store:.0f}x (target >= 20x), "
          f"row copy {t_wfdb / t_row:.0f}x, ecgkt.read_record {t_wfdb / t_reader:.1f}x")
    return res


def bench_loader(store, batch_size: int = 64, epochs: int = 3) -> dict:
    from torch.utils.data import DataLoader, default_collate

    from ecgkt.data import ECGDataset, collate

    ds = ECGDataset(store.path)
    res = {}
    # the floor: only stacking already-fetched items into a batch (fresh batch memory each time)
    items = [ds[i % len(ds)] for i in range(batch_size)]
    for name, fn in (("default_collate", default_collate), ("ecgkt.data.collate", collate)):
        fn(items)  # warm-up (allocator)
        t = time.perf_counter()
        for _ in range(10):
            fn(items)
        res[f"{name}_only_records_per_s"] = 10 * batch_size / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    res["getitem_records_per_s"] = len(ds) / (time.perf_counter() - t)
    print(f"[loader] ECGDataset.__getitem__ alone: {res['getitem_records_per_s']:,.0f} records/s; batch of "
          f"{batch_size} stacked by default_collate: {res['default_collate_only_records_per_s']:,.0f} records/s, "
          f"by ecgkt.data.collate: {res['ecgkt.data.collate_only_records_per_s']:,.0f} records/s")
    for collate_name, collate_fn in (("default_collate", None), ("ecgkt.data.collate", collate)):
        for workers in (0, 2):
            loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                persistent_workers=workers > 0, collate_fn=collate_fn)
            next(iter(loader))  # start the workers outside the timing
            t = time.perf_counter()
            count = 0
            for _ in range(epochs):
                for batch in loader:
                    count += batch["signal"].shape[0]
            rate = count / (time.perf_counter() - t)
            res[f"{collate_name}_workers_{workers}_records_per_s"] = rate
            print(f"[loader] ECGDataset + DataLoader(batch {batch_size}, shuffle, num_workers={workers}, "
                  f"{collate_name}): {rate:,.0f} records/s")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="labevents,store,loader", help="comma-separated subset")
    p.add_argument("--lab-rows", type=int, default=20_000_000)
    p.add_argument("--pandas-peer", action="store_true", help="also time pandas.read_csv in chunks")
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--json", metavar="FILE", help="write the figures here")
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="ecgkt-bench-") as tmp:
        tmp = Path(tmp)
        if "labevents" in parts:
            results["labevents"] = bench_labevents(args.lab_rows, tmp, args.pandas_peer)
        if parts & {"store", "loader"}:
            store, results["prepare"] = make_store(args.patients, tmp)
            if "store" in parts:
                results["store"] = bench_store(store)
            if "loader" in parts:
                results["loader"] = bench_loader(store)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

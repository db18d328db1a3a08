"""Throughput of `ecgkt predict` from files: records/s including read + preprocessing + model.

Writes N MIMIC-shaped WFDB records (12 leads, 500 Hz, 10 s, format 16, 200 adu/mV) into a temporary
folder, then times on the same machine and in the same run:
  read only            ecgkt.data.wfdb_io.read_record for every record
  ecgkt predict        Predictor.run: threaded reads, batched fused preprocessing, batched model
  naive loop (peer)    wfdb.rdrecord + the model's own one-record predict(), record by record
Target (issue 6): >= 200 records/s on 2 CPU cores with the tiny model.

  python benches/bench_predict.py [--records 1000] [--batch-size 64] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def write_records(folder: Path, n: int) -> list[Path]:
    import wfdb

    from predict_helpers import synthetic_ecg
    from ecgkt.data.wfdb_io import STANDARD_LEADS

    distinct = [np.round(synthetic_ecg(10, 500, seed=k) * 200).astype(np.int32).T for k in range(16)]
    paths = []
    for i in range(n):
        name = f"{40000000 + i}"
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), d_signal=distinct[i % 16],
                    fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        paths.append(folder / name)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core box, 2 OpenMP threads spend "
                         "their time waiting for each other; file reading runs in 2 more threads)")
    ap.add_argument("--peer-records", type=int, default=200, help="records for the slow naive loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    from predict_helpers import make_model
    from ecgkt.data.wfdb_io import read_record
    from ecgkt.predict.inference import Predictor
    from ecgkt.predict.inputs import expand_inputs

    model = make_model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_records(Path(tmp), args.records)
        sources, _ = expand_inputs([tmp])
        # warm-up: filter design cache, op dispatch, allocator
        list(Predictor(model, device=args.device, batch_size=args.batch_size).run(sources[:args.batch_size]))

        t, c = time.perf_counter(), time.process_time()
        for p in paths:
            read_record(p)
        rows.append(("read only (wfdb_io.read_record)", len(paths), time.perf_counter() - t, time.process_time() - c))

        predictor = Predictor(model, device=args.device, batch_size=args.batch_size)
        # the two compute stages alone, on records already in memory
        records = [read_record(p) for p in paths[:args.batch_size * 4]]
        batches = [[r for r in records[i:i + args.batch_size]] for i in range(0, len(records), args.batch_size)]
        pre_s = net_s = pre_c = net_c = 0.0
        with torch.no_grad():
            for batch in batches:
                x = torch.from_numpy(np.stack([r.signal for r in batch])).to(args.device)
                g = torch.from_numpy(np.stack([r.gain for r in batch])).to(args.device)
                z = torch.from_numpy(np.stack([r.baseline for r in batch])).to(args.device)
                t, c = time.perf_counter(), time.process_time()
                y = model.preprocessor(x, 500.0, gain=g, baseline=z)
                t1, c1 = time.perf_counter(), time.process_time()
                predictor.network(y)
                pre_s, net_s = pre_s + t1 - t, net_s + time.perf_counter() - t1
                pre_c, net_c = pre_c + c1 - c, net_c + time.process_time() - c1
        rows.append(("preprocess only (fused op, in memory)", len(records), pre_s, pre_c))
        rows.append(("network only (tiny, conv+BN folded)", len(records), net_s, net_c))

        t, c = time.perf_counter(), time.process_time()
        n_ok = sum(1 for _, rec, _ in predictor.run(sources) if rec is not None)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rows.append((f"ecgkt predict (batch {args.batch_size}, {args.device})", n_ok, time.perf_counter() - t,
                     time.process_time() - c))

        import wfdb

        peer = paths[:args.peer_records]
        model_cpu = model.to(args.device)
        t, c = time.perf_counter(), time.process_time()
        for p in peer:
            r = wfdb.rdrecord(str(p))
            model_cpu.predict(r.p_signal.T.astype(np.float32), r.fs, r.sig_name)
        rows.append(("naive loop (wfdb.rdrecord + model.predict)", len(peer), time.perf_counter() - t,
                     time.process_time() - c))

    print(f"# bench_predict: {platform.node()} {os.cpu_count()} cpus (load average {os.getloadavg()[0]:.1f} "
          f"at the end), torch {torch.__version__}, {args.threads} threads, tiny model, 10 s 500 Hz 12-lead records")
    # records per CPU-second says what the code costs when other jobs share the cores (wall-clock figures
    # on a loaded box understate an idle machine); x2 of it bounds an idle 2-core box from above.
    print(f"{'what':45s} {'records':>8s} {'wall s':>8s} {'records/s':>10s} {'CPU s':>8s} {'rec/CPU-s':>10s}")
    for what, n, s, c in rows:
        print(f"{what:45s} {n:8d} {s:8.2f} {n / s:10.1f} {c:8.2f} {n / max(c, 1e-9):10.1f}")
    ours = rows[3][1] / rows[3][2]
    peer = rows[4][1] / rows[4][2]
    print(f"ecgkt predict vs naive loop: {ours / peer:.1f}x; target >= 200 records/s: "
          f"{'met' if ours >= 200 else 'NOT met'} ({ours:.0f})")
    print(json.dumps({"bench": "predict", "records_per_s": round(ours, 1), "peer_records_per_s": round(peer, 1),
                      "records_per_cpu_s": round(rows[3][1] / rows[3][3], 1), "device": args.device,
                      "threads": args.threads, "loadavg": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()

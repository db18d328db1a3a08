"""Synthetic-dataset generator benchmark: records/s of `ecgkt synth`, and the record writer
against its peer (wfdb.wrsamp) on the same signals, measured in the same run.

  (a) end to end: generate(--patients) with 1 and 2 processes; wall time, records/s, the share of
      time spent on waveforms (and the clinical tables written meanwhile). Target (issue 14):
      >= 1,000 records/s on 2 cores.
  (b) per-record writing: ecgkt's header text + ndarray.tofile vs wfdb.wrsamp (format 16, same
      int16 samples), records/s and the ratio.

The machine's load average is printed beside the figures: the box is shared, so a loaded machine
gives lower numbers than an idle one.

Usage:
  python benches/bench_synth.py                    # ~5,000 records (2,300 patients)
  python benches/bench_synth.py --patients 500 --jobs 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_generate(patients: int, jobs_list, tmp: Path) -> None:
    from ecgkt.data import synth

    for jobs in jobs_list:
        out = tmp / f"gen{jobs}"
        load = os.getloadavg()[0]
        cpu0 = time.process_time()
        s = synth.generate(out, patients=patients, seed=0, progress=False, jobs=jobs, overwrite=True)
        cpu = time.process_time() - cpu0
        print(f"generate  jobs={jobs}: {s['records']} records ({patients} patients, {s['labevents']} lab rows) in "
              f"{s['seconds']:.1f} s = {s['records_per_s']:.0f} records/s; records + clinical tables "
              f"{s['waveform_seconds']:.1f} s; "
              f"main-process CPU {cpu:.1f} s; load average {load:.1f}")
        shutil.rmtree(out)


def bench_writer(n: int, tmp: Path) -> None:
    import wfdb

    from ecgkt.data import synth
    from ecgkt.data.synth import beat_model, mimic_ecg

    sim = synth.simulate(n, 1)
    rows = np.arange(min(n, len(sim.ecgs)))
    frames, _ = mimic_ecg.render_chunk(sim, 0, rows, beat_model._noise_bank(1))
    when = sim.ecgs["ecg_time_s"].to_numpy()
    t0 = time.perf_counter()
    for j in rows:
        hea = mimic_ecg.header_text(40000000 + j, 10000000 + j, np.datetime64(int(when[j]), "s").item(), frames[j])
        mimic_ecg.write_record(tmp / "ours", f"r{j}/{j}", hea, frames[j])
    ours = time.perf_counter() - t0
    (tmp / "wfdb").mkdir()
    t0 = time.perf_counter()
    for j in rows:
        d = tmp / "wfdb" / f"r{j}"
        d.mkdir()
        wfdb.wrsamp(str(40000000 + j), fs=500, units=["mV"] * 12, sig_name=list(beat_model.MIMIC_LEADS),
                    d_signal=frames[j].astype(np.int64), fmt=["16"] * 12, adc_gain=[200.0] * 12,
                    baseline=[0] * 12, write_dir=str(d))
    peer = time.perf_counter() - t0
    print(f"writer    {len(rows)} records: ecgkt {len(rows) / ours:.0f} records/s, wfdb.wrsamp "
          f"{len(rows) / peer:.0f} records/s, ratio {peer / ours:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=2300)
    ap.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--writer-records", type=int, default=200)
    args = ap.parse_args()
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as d:
        tmp = Path(d)
        bench_generate(args.patients, args.jobs, tmp)
        bench_writer(args.writer_records, tmp)


if __name__ == "__main__":
    main()

"""`ecgkt synth` (the synthetic MIMIC-shaped dataset) with 1 and 2 processes, and its record writer against
wfdb.wrsamp on the same int16 frames."""
import shutil

import numpy as np
import pytest

from _bench import ecg_batch, measure, need


@pytest.mark.parametrize("jobs", [1, 2])
def test_synth(benchmark, sizes, workdir, jobs):
    from ecgkt.data import generate

    out = workdir / f"synth-jobs{jobs}"
    measure(benchmark, lambda: generate(out, patients=sizes.synth_patients, seed=0, progress=False, jobs=jobs,
                                        overwrite=True),
            kernel="synth", provider=f"ecgkt-{jobs}-job{'s' if jobs > 1 else ''}", x=sizes.synth_patients,
            x_name="patients", items=lambda summary: summary["records"], unit="records/s",
            rounds=sizes.rounds if sizes.quick else 2, setup=lambda: shutil.rmtree(out, ignore_errors=True))


@pytest.mark.parametrize("provider", ["ecgkt", "wfdb"])
def test_writer(benchmark, sizes, workdir, provider):
    """Writing MIMIC-shaped records (header + format-16 .dat): 60 (quick mode: 30)."""
    import datetime

    from ecgkt.data.synth import beat_model, mimic_ecg

    n = 30 if sizes.quick else 60
    frames = [np.ascontiguousarray(f.numpy().T) for f in ecg_batch(n)]  # (T, 12) int16 each
    out = workdir / f"writer-{provider}"
    when = datetime.datetime(2150, 1, 1, 12, 0, 0)
    if provider == "ecgkt":
        def fn():
            for j, f in enumerate(frames):
                mimic_ecg.write_record(out, f"r{j}/{j}", mimic_ecg.header_text(40000000 + j, 10000000 + j, when, f), f)
    else:
        wfdb = need("wfdb")

        def fn():
            for j, f in enumerate(frames):
                d = out / f"r{j}"
                d.mkdir(parents=True, exist_ok=True)
                wfdb.wrsamp(str(40000000 + j), fs=500, units=["mV"] * 12, sig_name=list(beat_model.MIMIC_LEADS),
                            d_signal=f.astype(np.int64), fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12,
                            write_dir=str(d))
    measure(benchmark, fn, kernel="synth_writer", provider=provider, x=n, x_name="records", items=n,
            unit="records/s", rounds=sizes.rounds, setup=lambda: shutil.rmtree(out, ignore_errors=True))

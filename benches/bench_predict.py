"""`ecgkt predict` from files (tiny model, 10 s 12-lead 500 Hz WFDB records) against the loop a user would
write without it: wfdb.rdrecord per record, leads mapped by name, batches of 64 preprocessed with scipy
(the model's settings: 0.5-45 Hz, 60 Hz notch, resample to 100 Hz, z-score) and run through the same model
in torch.no_grad.

  ecgkt      Predictor.run: what the CLI runs (threaded reads, fused preprocessing, network folded for inference)
  ecgkt-cli  the `ecgkt predict MODEL LIST.txt --format csv --output FILE` command, process start included
"""
import subprocess
import sys

import numpy as np
import pytest
import torch

from _bench import measure, need, scipy_clean

DX_NAMES = ["atrial fibrillation", "left bundle branch block", "sinus tachycardia", "left ventricular hypertrophy"]
LAB_NAMES = ["potassium_low", "potassium_high", "calcium_low", "sodium_high", "troponin_high"]
BATCH = 64


@pytest.fixture(scope="session")
def tiny_model(workdir):
    from ecgkt.models import ECGKTModel

    torch.manual_seed(0)
    model = ECGKTModel.build(size="tiny", dx_names=DX_NAMES, lab_label_names=LAB_NAMES).eval()
    model.save_pretrained(workdir / "tiny-model")
    return model, workdir / "tiny-model"


@pytest.fixture(scope="session")
def record_paths(synthetic_root, sizes):
    paths = sorted(str(p)[:-4] for p in (synthetic_root / "mimic-iv-ecg").rglob("*.hea"))
    return paths[:sizes.predict_records]


def wfdb_scipy_torch_loop(model, paths):
    import wfdb

    out = []
    lower = [name.lower() for name in model.leads]
    with torch.no_grad():
        for b in range(0, len(paths), BATCH):
            signals = []
            for p in paths[b:b + BATCH]:
                r = wfdb.rdrecord(p)
                names = [n.lower() for n in r.sig_name]
                signals.append(r.p_signal.T[[names.index(n) for n in lower]])
            x = scipy_clean(np.stack(signals), 500.0, highpass=0.5, lowpass=45.0, notch=60.0, target_fs=100)
            logits = model(torch.from_numpy(x))
            out.append(torch.sigmoid(logits["dx_logits"]).numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("provider", ["ecgkt", "ecgkt-cli", "wfdb+scipy+torch"])
def test_predict(benchmark, sizes, tiny_model, record_paths, workdir, provider):
    model, model_dir = tiny_model
    n = len(record_paths)
    if provider == "ecgkt":
        from ecgkt.predict.inference import Predictor
        from ecgkt.predict.inputs import expand_inputs

        sources, failures = expand_inputs(record_paths)
        assert not failures
        predictor = Predictor(model, device="cpu", batch_size=BATCH)

        def fn():
            results = [res for _, rec, res in predictor.run(sources) if rec is not None]
            assert len(results) == n
    elif provider == "ecgkt-cli":
        listing = workdir / "predict-records.txt"
        listing.write_text("".join(p + "\n" for p in record_paths))
        cmd = [sys.executable, "-m", "ecgkt.cli", "predict", str(model_dir), str(listing), "--format", "csv",
               "--output", str(workdir / "predict-out.csv"), "--threads", str(torch.get_num_threads())]

        def fn():
            subprocess.run(cmd, check=True, capture_output=True)
    else:
        need("wfdb")
        fn = lambda: wfdb_scipy_torch_loop(model, record_paths)  # noqa: E731
    measure(benchmark, fn, kernel="predict", provider=provider, x=n, x_name="records", items=n, unit="records/s",
            rounds=sizes.rounds if sizes.quick else 3)

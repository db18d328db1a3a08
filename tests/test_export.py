"""Exported models give the eager model's outputs on the same inputs."""
import json

import numpy as np
import pytest
import torch

from ecgkt import _extension
from ecgkt.predict.export import NetworkProbabilities, example_inputs, export_model, load_exported
from predict_helpers import make_model, run_cli

needs_kernel = pytest.mark.skipif(not _extension.has_kernel("preprocess", "CPU"),
                                  reason="the compiled ecgkt preprocess CPU kernel is not built in this install")


@pytest.fixture(scope="module")
def model():
    return make_model(seed=1)


def _eager_network(model, x):
    with torch.no_grad():
        out = model(x)
    return torch.sigmoid(out["dx_logits"]), torch.sigmoid(out["lab_logits"])


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_network_only_parity(tmp_path, model, suffix):
    path = export_model(model, tmp_path / f"net{suffix}", network_only=True, seconds=7.3)
    exported = load_exported(path)
    for batch in (1, 5):  # the batch dimension is dynamic
        (x,) = example_inputs(model, 100, 7.3, batch=batch, network_only=True, seed=batch)
        ref = _eager_network(model, x)
        with torch.no_grad():
            got = exported(x)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / f"net{suffix}.json").read_text())
    assert meta["dx_names"] == model.dx_names and meta["input_samples"] == 730 and not meta["with_preprocessing"]


def test_onnx_parity(tmp_path, model):
    pytest.importorskip("onnx", reason="ONNX export is the optional 'onnx' extra")
    pytest.importorskip("onnxruntime", reason="ONNX export is the optional 'onnx' extra")
    path = export_model(model, tmp_path / "net.onnx")
    run = load_exported(path)
    (x,) = example_inputs(model, 100, 10, batch=3, network_only=True, seed=3)
    ref = _eager_network(model, x)
    for g, r in zip(run(x), ref):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_with_preprocessing_parity(tmp_path, model, suffix):
    """Raw int16 ECG at 500 Hz in, probabilities out: same as the eager preprocessor + network."""
    path = export_model(model, tmp_path / f"full{suffix}", fs=500, seconds=10)
    exported = load_exported(path)
    signal, gain, baseline = example_inputs(model, 500, 10, batch=3, seed=7)
    gain = gain * torch.linspace(0.5, 2.0, 12)  # per-lead gains must be honoured
    with torch.no_grad():
        info = model.preprocessor(signal, 500, gain=gain, baseline=baseline, return_info=True)
        ref = _eager_network(model, info.signal.float())
        got = exported(signal, gain, baseline)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_network_module_matches_model_forward(model):
    (x,) = example_inputs(model, 100, 10, batch=2, network_only=True)
    with torch.no_grad():
        got = NetworkProbabilities(model)(x)
    for g, r in zip(got, _eager_network(model, x)):
        torch.testing.assert_close(g, r)


def test_cli_export(tmp_path, model):
    model_dir = model.save_pretrained(tmp_path / "model")
    r = run_cli("export", model_dir, "--out", tmp_path / "m.pt", "--network-only")
    assert r.returncode == 0, r.stderr
    assert torch.jit.load(str(tmp_path / "m.pt")) is not None
    r = run_cli("export", model_dir, "--out", tmp_path / "m.zip")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "m.zip" in r.stderr


@needs_kernel
@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_export_at_the_cli_defaults_parity(tmp_path, model, suffix):
    """`ecgkt export MODEL --out model.pt2` with no --fs / --seconds: the model's rate, 10 s (at 100 Hz
    there is no resampling filter: its zero-size buffer once broke torch.export.save)."""
    model_dir = model.save_pretrained(tmp_path / "model")
    out = tmp_path / f"model{suffix}"
    r = run_cli("export", model_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", out.name, out.name + ".json"])
    fs = model.preprocessor.settings["target_fs"]
    exported = load_exported(out)
    signal, gain, baseline = example_inputs(model, fs, 10, batch=2, seed=11)
    with torch.no_grad():
        info = model.preprocessor(signal, fs, gain=gain, baseline=baseline, return_info=True)
        ref = _eager_network(model, info.signal.float())
        got = exported(signal, gain, baseline)
    for g, r_ in zip(got, ref):
        torch.testing.assert_close(g, r_, rtol=1e-4, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("fs", [100.0, 360.0, 500.0, 1000.0])
def test_preprocessor_module_scripts_and_exports_with_parity(model, fs):
    """ECGPreprocessor.at_rate(fs): TorchScript and torch.export give the eager ecgkt.preprocess output."""
    pre = model.preprocessor.at_rate(fs).eval()
    signal, gain, baseline = example_inputs(model, fs, 3.1, batch=2, seed=int(fs))
    gain = gain * torch.linspace(0.5, 2.0, 12)
    want = model.preprocessor(signal, fs, gain=gain, baseline=baseline, return_info=True)
    eager = pre(signal, gain, baseline)
    scripted = torch.jit.script(pre)(signal, gain, baseline)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(pre, (signal, gain, baseline), dynamic_shapes=({0: batch},) * 3)
    exported = program.module()(signal, gain, baseline)
    flags = want.repaired.int() | (want.flat.int() * 2)
    for out, fl in (eager, scripted, exported):
        torch.testing.assert_close(out, want.signal, rtol=0, atol=0)
        assert torch.equal(fl, flags)


def test_failed_export_leaves_no_file(tmp_path, model, monkeypatch):
    import ecgkt.predict.export as export

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(export.torch.jit, "save", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_model(model, tmp_path / "m.pt", network_only=True)
    assert list(tmp_path.iterdir()) == []


_LOAD_WITHOUT_EXTENSION = r'''
import sys, warnings
import torch
warnings.simplefilter("ignore")
import ecgkt
from ecgkt import _extension
from ecgkt.predict.export import load_exported
assert not _extension.available
signal, gain, baseline, want_dx, want_lab = torch.load(sys.argv[2])
got = load_exported(sys.argv[1])(signal, gain, baseline)
torch.testing.assert_close(got[0], want_dx, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(got[1], want_lab, rtol=1e-4, atol=1e-5)
print("ok")
'''


@needs_kernel
@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_an_exported_model_runs_where_the_extension_is_missing(tmp_path, model, suffix):
    """Exported with the compiled kernels, loaded where ecgkt._C is missing: torch.ops.ecgkt.preprocess is then
    the Python-defined op with the reference kernel, and the probabilities agree."""
    import os
    import subprocess
    import sys

    path = export_model(model, tmp_path / f"full{suffix}", fs=500, seconds=10)
    signal, gain, baseline = example_inputs(model, 500, 10, batch=2, seed=3)
    with torch.no_grad():
        want = load_exported(path)(signal, gain, baseline)
    torch.save((signal, gain, baseline, want[0], want[1]), tmp_path / "io.pt")
    r = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_EXTENSION, str(path), str(tmp_path / "io.pt")],
                       env=dict(os.environ, ECGKT_DISABLE_EXTENSION="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]

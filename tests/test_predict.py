"""`ecgkt predict`: input expansion, batched windowed inference, explanations, bad input, CLI."""
import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
import wfdb

from ecgkt.data.wfdb_io import STANDARD_LEADS
from ecgkt.errors import RecordError
from ecgkt.predict.explanations import explain, explain_all, load_table, parse_lab_output
from ecgkt.predict.inference import Predictor, RecordResult, window_starts
from ecgkt.predict.inputs import Failure, expand_inputs, read_npy
from predict_helpers import DX_NAMES, LAB_NAMES, make_model, run_cli, synthetic_ecg


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    return model.save_pretrained(tmp_path_factory.mktemp("model"))


def write_wfdb(folder, name, mv, fs, leads, gain=200.0, fmt="16"):
    d = np.round(np.nan_to_num(mv.T) * gain).astype(np.int32)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), d_signal=d, fmt=[fmt] * len(leads),
                adc_gain=[gain] * len(leads), baseline=[0] * len(leads), write_dir=str(folder))
    return folder / name


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """One file per bad-input case, each with the words its error message must contain."""
    d = tmp_path_factory.mktemp("bad")
    holter = write_wfdb(d, "holter", synthetic_ecg(10, 250)[:2], 250, ["MLII", "V5"])
    trunc = write_wfdb(d, "trunc", synthetic_ecg(10, 500), 500, STANDARD_LEADS)
    with open(d / "trunc.dat", "r+b") as f:
        f.truncate(40000)
    (d / "garbled.hea").write_text("garbled header with no numbers\nnot a signal line\n")
    (d / "garbled.dat").write_bytes(b"\0" * 1000)
    (d / "broken.dcm").write_bytes(b"this is not DICOM at all" * 10)
    (d / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    return {
        "two-lead": (holter.with_suffix(".hea"), "holter.hea", "missing standard lead"),
        "truncated": (trunc.with_suffix(".hea"), "trunc.dat", "truncated"),
        "malformed header": (d / "garbled.hea", "garbled.hea", "header"),
        "unreadable DICOM": (d / "broken.dcm", "broken.dcm", "DICOM"),
        "unreadable npy": (d / "broken.npy", "broken.npy", "npy"),
    }


# --------------------------------------------------------------------------------------------- explanations

def test_explanation_table_is_complete_and_parsed():
    table, aliases = load_table()
    assert len(table) >= 30
    for (lab, direction), assoc in table.items():
        assert direction in ("low", "high") and assoc.association and assoc.strength
    assert parse_lab_output("potassium_high") == ("potassium", "high")
    assert parse_lab_output("Potassium (low)") == ("potassium", "low")
    assert parse_lab_output("50971_high") == ("potassium", "high")
    assert parse_lab_output("high troponin T") == ("troponin", "high")
    assert parse_lab_output("BUN high") == ("urea nitrogen", "high")


def test_every_lab_test_of_the_data_layer_is_documented():
    """Each lab test the cohort builder labels (both directions) has a row in the table."""
    from ecgkt.data.mimic import DEFAULT_LAB_TESTS

    for test in DEFAULT_LAB_TESTS:
        for direction in ("low", "high"):
            finding = explain(f"{test}_{direction}", 0.7)
            assert finding.strength != "unknown" and finding.direction == direction, (test, direction)


def test_explanation_text_reads_like_the_issue():
    f = explain("potassium_high", 0.812)
    assert f.text().startswith("potassium high 0.81 \u2014 associated with peaked")
    assert "negative control" in explain("sodium_low", 0.6).text()
    unknown = explain("unobtainium_high", 0.9)
    assert unknown.strength == "unknown" and "no ECG association documented" in unknown.text()
    found = explain_all(["potassium_high", "calcium_low", "sodium_high"], [0.7, 0.2, 0.9], threshold=0.5)
    assert [x.output for x in found] == ["sodium_high", "potassium_high"]


# ------------------------------------------------------------------------------------------------- inputs

def test_expand_inputs_every_kind(tmp_path):
    mv = synthetic_ecg(10, 500)
    (tmp_path / "wf").mkdir()
    write_wfdb(tmp_path / "wf", "a", mv, 500, STANDARD_LEADS)
    np.save(tmp_path / "b.npy", mv)
    (tmp_path / "notes.md").write_text("not a record")
    # a MIMIC-style root: record_list.csv with bare record paths
    rec = tmp_path / "mimic" / "files" / "p1000" / "p10000032" / "s40689238"
    rec.mkdir(parents=True)
    write_wfdb(rec, "40689238", mv, 500, STANDARD_LEADS)
    (tmp_path / "mimic" / "record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n"
        "10000032,40689238,40689238,2180-07-23 08:44:00,files/p1000/p10000032/s40689238/40689238\n")
    (tmp_path / "list.txt").write_text(f"# records\n{tmp_path}/wf/a\nb.npy\nmissing_record\n")

    s, f = expand_inputs([tmp_path / "wf"])
    assert [(x.path.name, x.kind) for x in s] == [("a", "wfdb")] and not f
    s, f = expand_inputs([tmp_path / "wf" / "a.dat", tmp_path / "wf" / "a.hea", tmp_path / "wf" / "a"])
    assert len(s) == 1 and not f  # three spellings of one record, once
    s, f = expand_inputs([tmp_path / "mimic"])
    assert [x.path for x in s] == [rec / "40689238"] and not f
    s, f = expand_inputs([tmp_path / "list.txt"])
    assert [x.kind for x in s] == ["wfdb", "npy"]
    assert [x.problem for x in f] == ["no such file or folder"] and f[0].name.endswith("missing_record")
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "gains.npy", np.ones(12))
    s, f = expand_inputs([tmp_path / "arrays"], folder_npy=False)  # a store's arrays are no ECGs
    assert not s and "--fs and --leads" in f[0].problem
    s, f = expand_inputs([tmp_path / "notes.md", tmp_path / "nowhere"])
    assert not s and "not a WFDB record" in f[0].problem and f[1].problem == "no such file or folder"


def test_dicom_detected_by_content(tmp_path, pydicom_ecg_path):
    copy = tmp_path / "ecg_without_suffix"
    shutil.copy(pydicom_ecg_path, copy)
    s, f = expand_inputs([copy])
    assert [x.kind for x in s] == ["dicom"] and not f


def test_npy_needs_fs_and_leads(tmp_path):
    np.save(tmp_path / "x.npy", synthetic_ecg(5, 250).T)  # [samples, leads] is accepted too
    with pytest.raises(RecordError, match="--fs"):
        read_npy(tmp_path / "x.npy", None, list(STANDARD_LEADS))
    rec = read_npy(tmp_path / "x.npy", 250, [n.lower() for n in STANDARD_LEADS])
    assert rec.signal.shape == (12, 1250) and rec.fs == 250
    np.testing.assert_allclose(rec.physical(), synthetic_ecg(5, 250), atol=1e-3)


# ---------------------------------------------------------------------------------------------- inference

def test_window_starts_cover_the_record():
    assert window_starts(5000, 5000) == [0]
    assert window_starts(7400, 5000) == [0]  # up to 1.5 windows: scored whole
    starts = window_starts(17500, 5000)
    assert starts[0] == 0 and starts[-1] == 12500 and len(starts) == 4


def test_cinc_records_predict(cinc_dir, model):
    predictor = Predictor(model, batch_size=4)  # 10 records over 3 batches
    sources, failures = expand_inputs([cinc_dir])
    out = list(predictor.run(sources))
    assert len(out) == 10 and not failures
    for source, record, result in out:
        assert isinstance(result, RecordResult), result
        assert result.fs == 500 and result.n_windows == 1 and abs(result.duration_s - 10) < 1e-9
        assert [n for n, _ in sorted(result.diagnoses)] == sorted(DX_NAMES)
        assert all(0 <= p <= 1 for _, p in result.diagnoses)
        assert sorted(f.output for f in result.labs) == sorted(LAB_NAMES)
        # the unfused model, run eagerly on the same record (predict_proba), gives the same numbers
        dx, lab, _ = model.eval().predict_proba(record.signal, record.fs, STANDARD_LEADS, gain=record.gain,
                                                baseline=record.baseline)
        eager_dx, eager_lab = dict(zip(model.dx_names, dx[0].tolist())), dict(zip(model.lab_label_names, lab[0].tolist()))
        for name, p in result.diagnoses:
            assert p == pytest.approx(eager_dx[name], abs=1e-5)
        for f in result.labs:
            assert f.probability == pytest.approx(eager_lab[f.output], abs=1e-5)
    # records differ, so do their predictions
    assert len({round(r.diagnoses[0][1], 6) for _, _, r in out}) > 1


def test_pydicom_ecg_predicts(pydicom_ecg_path, model):
    (source, record, result), = Predictor(model).run(expand_inputs([pydicom_ecg_path])[0])
    assert isinstance(result, RecordResult), result
    assert result.fs == 1000 and result.duration_s == pytest.approx(10.0)
    assert all(0 <= p <= 1 for _, p in result.diagnoses)


def test_lead_order_case_gain_extra_signals_and_rate_do_not_change_the_answer(tmp_path, model):
    mv = synthetic_ecg(10, 500, seed=3)
    base = write_wfdb(tmp_path, "base", mv, 500, STANDARD_LEADS, gain=1000)
    # PTB-like: lower-case names, shuffled, three extra Frank leads (same quantisation: same answer)
    perm = np.random.default_rng(0).permutation(12)
    extra = np.vstack([mv[perm], 0.1 * mv[:3]])
    names = [STANDARD_LEADS[i].lower() for i in perm] + ["vx", "vy", "vz"]
    ptb = write_wfdb(tmp_path, "ptb", extra, 500, names, gain=1000)
    coarse = write_wfdb(tmp_path, "coarse", mv, 500, STANDARD_LEADS, gain=200)  # MIMIC's 5 uV steps
    # the same signal at 1000 Hz in format 212
    from scipy.signal import resample_poly

    fast = write_wfdb(tmp_path, "fast", resample_poly(mv, 2, 1, axis=1), 1000, STANDARD_LEADS, gain=200, fmt="212")
    results = [r for _, _, r in Predictor(model).run(expand_inputs([base, ptb, coarse, fast])[0])]
    assert all(isinstance(r, RecordResult) for r in results), results
    ref = dict(results[0].diagnoses)
    for other, tol in ((results[1], 1e-5), (results[2], 1e-2), (results[3], 2e-2)):
        for name, p in other.diagnoses:
            assert p == pytest.approx(ref[name], abs=tol)
    assert results[3].fs == 1000


def test_long_record_windows_are_averaged(tmp_path, model):
    mv = synthetic_ecg(35, 250, seed=5)
    np.save(tmp_path / "long.npy", mv)
    predictor = Predictor(model)
    (_, record, result), = predictor.run(expand_inputs([tmp_path / "long.npy"])[0], fs=250, leads=STANDARD_LEADS)
    assert result.n_windows == 4
    per_window = [predictor.predict(record.physical()[:, s:s + 2500], 250) for s in window_starts(8750, 2500)]
    for k, (name, p) in enumerate(result.diagnoses):
        assert p == pytest.approx(np.mean([dict(w.diagnoses)[name] for w in per_window]), abs=1e-4)


def test_invalid_samples_and_flat_leads_are_reported(model):
    mv = synthetic_ecg(10, 500, seed=7)
    mv[3, 1000:1100] = np.nan  # a gap in aVR: interpolated
    mv[8, :] = 0.0  # V3 flat
    result = Predictor(model).predict(mv, 500)
    assert result.repaired_leads == ["aVR"] and result.flat_leads == ["V3"]
    assert any("V3" in w for w in result.warnings) and any("aVR" in w for w in result.warnings)


def test_bad_inputs_fail_alone_with_the_file_named(bad_inputs, model, tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, synthetic_ecg(10, 500))
    paths = [good] + [p for p, _, _ in bad_inputs.values()]
    out = list(Predictor(model).run(expand_inputs(paths)[0], fs=500, leads=STANDARD_LEADS))
    assert isinstance(out[0][2], RecordResult)
    for (case, (_, filename, words)), (_, record, failure) in zip(bad_inputs.items(), out[1:]):
        assert record is None and isinstance(failure, Failure), case
        assert filename in failure.name and words.lower() in failure.problem.lower(), (case, failure)
        assert "\n" not in failure.line()


def test_too_short_record_is_a_failure(model):
    with pytest.raises(RecordError, match="at least 1 s"):
        Predictor(model).predict(synthetic_ecg(0.5, 500), 500)


# ---------------------------------------------------------------------------------------------------- CLI

def test_cli_bad_inputs_one_line_each(bad_inputs, model_dir, tmp_path):
    # each bad file alone: `ecgkt predict` in one fresh process per case would cost a torch import each, so one
    # subprocess runs the real entry point (ecgkt.cli.main) once per case and reports exit code and stderr
    driver = (
        "import contextlib, io, json, sys\n"
        "from ecgkt.cli import main\n"
        "out = {}\n"
        "for path in sys.argv[2:]:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        rc = main(['predict', sys.argv[1], path, '--fs', '500', '--leads', 'standard'])\n"
        "    out[path] = [rc, err.getvalue()]\n"
        "print(json.dumps(out))\n")
    import subprocess
    import sys

    paths = [str(p) for p, _, _ in bad_inputs.values()]
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", driver, str(model_dir), *paths], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    answers = json.loads(r.stdout.strip().splitlines()[-1])
    for case, (path, filename, words) in bad_inputs.items():
        rc, err = answers[str(path)]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1, (case, err)
        assert lines[0].startswith("ecgkt: error: ") and filename in lines[0] and words.lower() in lines[0].lower()
    # all of them in one batch with a good record: the good one is predicted, the failures listed at the end
    good = tmp_path / "good.npy"
    np.save(good, synthetic_ecg(10, 500))
    r = run_cli("predict", model_dir, good, *[p for p, _, _ in bad_inputs.values()], "--fs", "500",
                "--leads", "standard", "--format", "json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert [x["record"] for x in doc["results"]] == [str(good)]
    assert len(doc["failures"]) == len(bad_inputs)
    tail = r.stderr.strip().splitlines()[-len(bad_inputs):]
    for line, (_, filename, _) in zip(tail, bad_inputs.values()):
        assert filename in line


def test_cli_table_and_csv(cinc_dir, model_dir, tmp_path):
    r = run_cli("predict", model_dir, cinc_dir / "E07500.hea", cinc_dir / "E07501", "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["record"].rsplit("/", 1)[-1] for row in rows] == ["E07500", "E07501"]
    assert all(0 <= float(row[f"dx:{n}"]) <= 1 for row in rows for n in DX_NAMES)
    r = run_cli("predict", model_dir, cinc_dir / "E07502.hea", "--lab-threshold", "0")
    assert r.returncode == 0 and "diagnoses" in r.stdout and "explanation  none shown" in r.stdout, r.stderr
    assert "lab explanations not shown" in r.stderr  # a model saved without validation AUROCs (tests/test_outputs.py)


def test_cli_missing_model_is_one_line(tmp_path):
    r = run_cli("predict", tmp_path / "no_model", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no_model" in r.stderr


def test_synthetic_mimic_root_predicts(tmp_path, model):
    """`ecgkt synth`'s MIMIC-shaped root (aVF before aVL, 200 adu/mV, -32768 runs) through record_list.csv."""
    import pandas as pd

    from ecgkt.data.synth import generate

    generate(tmp_path, patients=4, seed=3, progress=False, jobs=1)
    listed = pd.read_csv(tmp_path / "mimic-iv-ecg" / "record_list.csv")
    sources, failures = expand_inputs([tmp_path])
    assert len(sources) == len(listed) > 0 and not failures
    out = list(Predictor(model, batch_size=3).run(sources))
    assert all(isinstance(r, RecordResult) and r.fs == 500 for _, _, r in out), out
    assert [s.path.name for s, _, _ in out] == [str(x) for x in listed["study_id"]]


def test_low_rate_record_warns_and_bad_options_are_user_errors(model):
    from ecgkt.errors import ECGKTError
    from ecgkt.predict.inference import resolve_device

    result = Predictor(model).predict(synthetic_ecg(10, 80, seed=2), 80)  # below the model's 100 Hz
    assert any("below the model's 100 Hz" in w for w in result.warnings)
    with pytest.raises(ECGKTError, match="batch-size"):
        Predictor(model, batch_size=0)
    with pytest.raises(ECGKTError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ECGKTError, match="CUDA is not available"):
            resolve_device("cuda")


def test_a_rate_the_preprocessing_cannot_handle_fails_alone(model):
    from ecgkt.predict.inputs import ecg_record_from_array

    records = [ecg_record_from_array(synthetic_ecg(10, fs), fs, STANDARD_LEADS, f"rec{k}")
               for k, fs in enumerate((500.0, 333.3333, 250.0))]
    out = Predictor(model).predict_records(records)
    assert isinstance(out[0], RecordResult) and isinstance(out[2], RecordResult)
    assert isinstance(out[1], Failure) and out[1].name == "rec1" and "333.3333" in out[1].problem


def _with_running_stats(model, seed=0):
    """A copy of ``model`` whose batch norms hold non-trivial running statistics (as after training)."""
    import copy

    model = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("length", [1000, 999, 250, 37])  # odd lengths reach the pools' ceil_mode windows
def test_inference_network_folds_batch_norms_and_shortcut_pools_without_changing_outputs(model, length):
    from ecgkt.predict.inference import PooledPointwise, fuse_for_inference

    reference = _with_running_stats(model)
    fused = fuse_for_inference(reference)
    kinds = {type(m) for m in fused.modules()}
    assert torch.nn.BatchNorm1d not in kinds and torch.nn.AvgPool1d not in kinds and PooledPointwise in kinds
    x = torch.randn(5, 12, length, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        want, got = reference(x), fused(x)
    for key in ("embedding", "dx_logits", "lab_logits"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_then_pointwise_conv_is_one_strided_convolution(ceil_mode):
    from ecgkt.predict.inference import PooledPointwise, fuse_for_inference

    torch.manual_seed(1)
    seq = torch.nn.Sequential(torch.nn.AvgPool1d(2, 2, ceil_mode=ceil_mode), torch.nn.Conv1d(7, 5, 1))
    fused = fuse_for_inference(seq)
    assert isinstance(fused[1], PooledPointwise) and isinstance(fused[0], torch.nn.Identity)
    for length in (10, 11):
        x = torch.randn(3, 7, length)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), seq(x), rtol=1e-5, atol=1e-6)
    # other pools and convolutions are left alone
    for other in (torch.nn.Sequential(torch.nn.AvgPool1d(3, 2), torch.nn.Conv1d(7, 5, 1)),
                  torch.nn.Sequential(torch.nn.AvgPool1d(2, 2), torch.nn.Conv1d(7, 5, 3))):
        assert [type(m) for m in fuse_for_inference(other)] == [type(m) for m in other]


def test_default_reader_threads_leave_the_model_its_cores(monkeypatch):
    from ecgkt.predict import inference

    monkeypatch.setattr(inference.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(inference.torch, "get_num_threads", lambda: 1)
    assert inference.default_read_workers() == 1
    monkeypatch.setattr(inference.torch, "get_num_threads", lambda: 2)
    assert inference.default_read_workers() == 1
    monkeypatch.setattr(inference.os, "cpu_count", lambda: 64)
    assert inference.default_read_workers() == 4

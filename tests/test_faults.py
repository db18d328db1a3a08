"""Fault injection, `ecgkt predict`: a generated corpus of bad records (WFDB headers and signals, .npy arrays,
DICOM files), damaged model folders and unusable output paths.

Every bad record is predicted in one batch with two good records of the same rate and length (the batch-mates
that used to fail with it): exit status 1, both good records predicted, exactly one failure naming the bad file
with its problem, strict JSON, no traceback. Every damaged model folder or output path: exit status 2, one line
naming the file, no traceback."""
import json
import shutil

import numpy as np
import pytest
import torch

from data_tiny import random_frames, write_mimic_record
from ecgkt.data.wfdb_io import INVALID, STANDARD_LEADS, ECGRecord
from ecgkt.predict.inference import Predictor, RecordResult
from ecgkt.predict.inputs import Failure, ecg_record_from_array
from faults_helpers import assert_one_line, error_lines, run_cases, strict_json
from predict_helpers import make_model, synthetic_ecg

FS, SECONDS = 500, 10
N = FS * SECONDS
STUDY = 40000001


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "m")


# ------------------------------------------------------------------------------------------- record corpus

def _wfdb(d, name, frames=None, edit=None):
    """A MIMIC-format record (12 leads, 500 Hz, 10 s, 200 adu/mV) in its own folder, header edited by
    ``edit(lines) -> lines``; returns the .hea path."""
    folder = d / name
    base = write_mimic_record(folder, 10000001, STUDY, random_frames(3, N) if frames is None else frames)
    hea = base.with_suffix(".hea")
    if edit is not None:
        lines = hea.read_text().splitlines()
        hea.write_text("\n".join(edit(lines)) + "\n")
    return hea


def _field(line_no, index, value):
    """Edit: set whitespace field ``index`` of header line ``line_no``."""
    def edit(lines):
        parts = lines[line_no].split()
        parts[index] = value
        lines[line_no] = " ".join(parts)
        return lines
    return edit


def _gain(value):  # lead II (line 2): "<file> 16 <gain>(<base>)/mV ..."
    return _field(2, 2, value)


def _frames(fill):
    f = random_frames(5, N)
    fill(f)
    return f


def _npy(d, name, arr):
    path = d / f"{name}.npy"
    np.save(path, arr, allow_pickle=True)
    return path


def _mostly_missing(f):
    f[: int(0.6 * N)] = INVALID


WFDB_CASES = {
    # header calibration, checked in the precision it is used in (float32)
    "gain nan": (lambda d: _wfdb(d, "gnan", edit=_gain("nan(0)/mV")), ("gain", "header")),
    "gain 0 in float32": (lambda d: _wfdb(d, "g0f32", edit=_gain("1e-300(0)/mV")), ("float32",)),
    "gain inf in float32": (lambda d: _wfdb(d, "ginf32", edit=_gain("1e300(0)/mV")), ("float32",)),
    "gain 0 (uncalibrated)": (lambda d: _wfdb(d, "g0", edit=_gain("0(0)/mV")), ("gain",)),
    "gain negative": (lambda d: _wfdb(d, "gneg", edit=_gain("-200(0)/mV")), ("gain",)),
    "gain absurd (mV out of range)": (lambda d: _wfdb(d, "gtiny", edit=_gain("0.001(0)/mV")), ("plausible",)),
    "baseline inf in float32": (lambda d: _wfdb(d, "bhuge", edit=_gain("200(" + "9" * 45 + ")/mV")),
                                ("baseline",)),
    "fs nan": (lambda d: _wfdb(d, "fsnan", edit=_field(0, 2, "nan")), ("sampling rate",)),
    "fs near zero": (lambda d: _wfdb(d, "fstiny", edit=_field(0, 2, "1e-9")), ("sampling rate",)),
    "fs zero": (lambda d: _wfdb(d, "fs0", edit=_field(0, 2, "0")), ("sampling rate", "header")),
    "fs inf": (lambda d: _wfdb(d, "fsinf", edit=_field(0, 2, "inf")), ("sampling rate",)),
    "fs absurdly high": (lambda d: _wfdb(d, "fshigh", edit=_field(0, 2, "10000000")), ("sampling rate",)),
    "length zero": (lambda d: _wfdb(d, "len0", edit=_field(0, 3, "0")), ("samples", "header")),
    "length beyond the file": (lambda d: _wfdb(d, "lenlong", edit=_field(0, 3, "50000")), ("truncated",)),
    "signal count wrong": (lambda d: _wfdb(d, "nsig", edit=_field(0, 1, "13")), ("header", "signal")),
    "units not a voltage": (lambda d: _wfdb(d, "units", edit=_gain("200(0)/degC")), ("voltage",)),
    "unsupported format": (lambda d: _wfdb(d, "fmt", edit=_field(2, 1, "999")), ("format", "header")),
    "two leads named II": (lambda d: _wfdb(d, "dup", edit=_field(3, 8, "II")), ("missing standard lead",)),
    "empty header": (lambda d: _write(d / "empty.hea", b""), ("header",)),
    "binary header": (lambda d: _write(d / "binary.hea", bytes(range(256)) * 4), ("header",)),
    "signal file missing": (lambda d: _unlink_dat(_wfdb(d, "nodat")), ("missing",)),
    # signals
    "every sample missing": (lambda d: _wfdb(d, "allinv", frames=np.full((N, 12), INVALID, np.int16)),
                             ("no usable signal",)),
    "every lead flat": (lambda d: _wfdb(d, "flat", frames=np.full((N, 12), 7, np.int16)), ("no usable signal",)),
    "every lead mostly missing": (lambda d: _wfdb(d, "mostly", frames=_frames(_mostly_missing)),
                                  ("no usable signal",)),
}

NPY_CASES = {
    "npy value 1e300": (lambda d: _npy(d, "huge", _with(synthetic_ecg(SECONDS, FS), (4, 100), 1e300)),
                        ("plausible",)),
    "npy infinity": (lambda d: _npy(d, "inf", _with(synthetic_ecg(SECONDS, FS), (2, 10), np.inf)), ("infinite",)),
    "npy all NaN": (lambda d: _npy(d, "nan", np.full((12, N), np.nan, np.float32)), ("no usable signal",)),
    "npy all zero": (lambda d: _npy(d, "zero", np.zeros((12, N), np.float32)), ("no usable signal",)),
    "npy 3-D": (lambda d: _npy(d, "cube", np.zeros((2, 12, N), np.float32)), ("2-d",)),
    "npy pickled objects": (lambda d: _npy(d, "objects", np.array([{"a": 1}, None], dtype=object)),
                            ("cannot read",)),
    "npy complex": (lambda d: _npy(d, "complex", synthetic_ecg(SECONDS, FS).astype(np.complex64)), ("numeric",)),
    "npy strings": (lambda d: _npy(d, "strings", np.array([["a"] * 10] * 12)), ("numeric",)),
    "npy truncated": (lambda d: _truncate(_npy(d, "trunc", synthetic_ecg(SECONDS, FS)), 2000), ("cannot read",)),
    "npy wrong lead count": (lambda d: _npy(d, "eleven", synthetic_ecg(SECONDS, FS)[:11]), ("lead names",)),
    "npy too short": (lambda d: _npy(d, "short", synthetic_ecg(0.5, FS)), ("at least 1 s",)),
    "npz named .npy": (lambda d: _npz_as_npy(d / "archive.npy"), ("npz",)),
    "npy empty": (lambda d: _npy(d, "empty", np.zeros((12, 0), np.float32)), ("2-d",)),
}


def _with(arr, where, value):
    arr = arr.astype(np.float64)
    arr[where] = value
    return arr


def _write(path, data):
    path.write_bytes(data)
    return path


def _unlink_dat(hea):
    hea.with_suffix(".dat").unlink()
    return hea


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def _npz_as_npy(path):
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros((12, N)))
    return path


def _dicom_cases():
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        return {}
    src = get_testdata_file("waveform_ecg.dcm")
    if src is None:
        return {}

    def variant(name, change):
        def build(d):
            ds = pydicom.dcmread(src)
            change(ds)
            path = d / f"{name}.dcm"
            ds.save_as(path)
            return path
        return build

    def zero_sensitivity(ds):
        ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivity = "0"

    def no_rate(ds):
        del ds.WaveformSequence[0].SamplingFrequency

    def zero_rate(ds):
        for g in ds.WaveformSequence:
            g.SamplingFrequency = "0"

    def no_waveform(ds):
        del ds.WaveformSequence

    def truncated(d):
        path = d / "truncated.dcm"
        path.write_bytes(open(src, "rb").read()[:1500])
        return path

    return {
        "dicom zero sensitivity": (variant("zsens", zero_sensitivity), ("sensitivity",)),
        "dicom no sampling rate": (variant("norate", no_rate), ("dicom", "sampling")),
        "dicom zero sampling rate": (variant("zrate", zero_rate), ("sampling rate",)),
        "dicom without waveform": (variant("nowave", no_waveform), ("waveform",)),
        "dicom truncated": (truncated, ("dicom", "waveform", "decode")),
    }


RECORD_CASES = {**WFDB_CASES, **NPY_CASES, **_dicom_cases()}


@pytest.fixture(scope="module")
def record_runs(tmp_path_factory, model_dir):
    """Every bad record in a batch with two good records of the same rate and length, through the CLI."""
    d = tmp_path_factory.mktemp("records")
    good_npy = d / "good.npy"
    np.save(good_npy, synthetic_ecg(SECONDS, FS, seed=1))
    good_wfdb = _wfdb(d, "good")
    paths = {case: build(d) for case, (build, _) in RECORD_CASES.items()}
    cases = [{"argv": ["predict", model_dir, good_npy, paths[c], good_wfdb, "--fs", FS, "--leads", "standard",
                       "--format", "json"]} for c in RECORD_CASES]
    # the good records alone, for the probabilities their batch-mates must not change
    cases.append({"argv": ["predict", model_dir, good_npy, good_wfdb, "--fs", FS, "--leads", "standard",
                           "--format", "json"]})
    results = run_cases(cases)
    return dict(zip(RECORD_CASES, results[:-1])), paths, results[-1], (good_npy, good_wfdb)


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_bad_record_fails_alone(record_runs, case):
    runs, paths, alone, goods = record_runs
    r = runs[case]
    words = RECORD_CASES[case][1]
    assert "Traceback" not in r["err"], r["err"]
    assert r["rc"] == 1, (r["rc"], r["err"])
    doc = strict_json(r["out"])
    assert [x["record"] for x in doc["results"]] == [str(goods[0]), str(goods[1].with_suffix(""))]
    assert doc["results"] == strict_json(alone["out"])["results"]  # batch-mates unaffected
    assert len(doc["failures"]) == 1
    failure = doc["failures"][0]
    name = paths[case].name.removesuffix(".hea")
    assert name in failure["record"] + failure["error"], failure
    assert any(w in failure["error"].lower() for w in words), failure
    line = [ln for ln in error_lines(r["err"]) if name in ln]
    assert len(line) == 1 and "\n" not in failure["error"]


# ---------------------------------------------------------------------------- isolation inside a batch

def test_a_record_breaking_its_batch_fails_alone(model):
    """Records that bypass the readers' checks (a gain of 0, one whose millivolts overflow float32) in the
    middle of a batch: the batch is retried one record at a time, and only they fail."""
    good = [ecg_record_from_array(synthetic_ecg(SECONDS, FS, seed=s), FS, STANDARD_LEADS, f"good{s}") for s in range(3)]
    zero = ECGRecord(good[0].signal.copy(), np.zeros(12, np.float32), good[0].baseline.copy(), FS, "zero_gain")
    tiny = ECGRecord(good[1].signal.copy(), np.full(12, 1e-40, np.float32), good[1].baseline.copy(), FS, "tiny_gain")
    records = [good[0], zero, good[1], tiny, good[2]]
    out = Predictor(model, batch_size=8).predict_records(records)
    alone = Predictor(model, batch_size=1).predict_records(good)
    assert isinstance(out[1], Failure) and out[1].name == "zero_gain" and "gain" in out[1].problem
    assert isinstance(out[3], Failure) and out[3].name == "tiny_gain", out[3]
    for got, want in zip([out[0], out[2], out[4]], alone):
        assert isinstance(got, RecordResult)
        np.testing.assert_allclose([p for _, p in got.diagnoses], [p for _, p in want.diagnoses], rtol=1e-4,
                                   atol=1e-6)


def test_an_exception_in_a_batch_is_pinned_on_its_record(model, monkeypatch):
    good = [ecg_record_from_array(synthetic_ecg(SECONDS, FS, seed=s), FS, STANDARD_LEADS, f"r{s}") for s in range(4)]
    poison = good[2].signal[0, :5].copy()
    p = Predictor(model, batch_size=16)
    real = p._score

    def score(sig, *a):
        if any((w[p.lead_order.index(0) if 0 in p.lead_order else 0, :5] == poison).all() for w in sig):
            raise RuntimeError("kernel failed on this window")
        return real(sig, *a)

    monkeypatch.setattr(p, "_score", score)
    out = p.predict_records(good)
    assert [type(x).__name__ for x in out] == ["RecordResult", "RecordResult", "Failure", "RecordResult"]
    assert "kernel failed" in out[2].problem and out[2].name == "r2"


def test_results_are_strict_json_and_finite(model):
    result = Predictor(model).predict(synthetic_ecg(SECONDS, FS), FS)
    doc = strict_json(json.dumps(result.to_dict(), allow_nan=False))
    assert all(0 <= p <= 1 for p in doc["diagnoses"].values())


# ------------------------------------------------------------------------------------ damaged model folders

def _config_edit(change):
    def damage(m):
        cfg = json.loads((m / "config.json").read_text())
        change(cfg)
        (m / "config.json").write_text(json.dumps(cfg))
    return damage


def _weights_edit(change):
    def damage(m):
        from safetensors.torch import load_file, save_file

        state = load_file(str(m / "model.safetensors"))
        change(state)
        save_file(state, str(m / "model.safetensors"))
    return damage


def _set(key, value):
    def change(cfg):
        cfg[key] = value
    return change


def _arch(key, value):
    def change(cfg):
        cfg["architecture"][key] = value
    return change


def _first_float(value):
    def change(state):
        k = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[k] = state[k].clone()
        state[k].view(-1)[0] = value
    return change


def _drop_tensor(state):  # a real weight (a missing BatchNorm step counter is tolerated by torch, rightly)
    state.pop(next(k for k, v in state.items() if v.is_floating_point()))


MODEL_CASES = {
    "config.json missing": (lambda m: (m / "config.json").unlink(), "config.json"),
    "weights missing": (lambda m: (m / "model.safetensors").unlink(), "model.safetensors"),
    "config.json malformed": (lambda m: (m / "config.json").write_text("{not json"), "config.json"),
    "config.json empty": (lambda m: (m / "config.json").write_text(""), "config.json"),
    "config.json binary": (lambda m: (m / "config.json").write_bytes(b"\xff\xfe\x00\x81" * 50), "config.json"),
    "config.json a list": (lambda m: (m / "config.json").write_text("[1, 2]"), "config.json"),
    "config without architecture": (_config_edit(lambda c: c.pop("architecture")), "config.json"),
    "config without dx_names": (_config_edit(lambda c: c.pop("dx_names")), "config.json"),
    "config model_type wrong": (_config_edit(_set("model_type", "bert")), "config.json"),
    "config format_version text": (_config_edit(_set("format_version", "one")), "config.json"),
    "config format_version newer": (_config_edit(_set("format_version", 99)), "config.json"),
    "config unknown size": (_config_edit(_arch("size", "huge")), "config.json"),
    "config unknown preprocessing key": (_config_edit(lambda c: c["preprocessing"].update(bogus=1)), "config.json"),
    "config more diagnoses than weights": (_config_edit(lambda c: c["dx_names"].append("extra")), "model.safetensors"),
    "config other architecture": (_config_edit(_arch("size", "small")), "model.safetensors"),
    "weights truncated": (lambda m: _truncate(m / "model.safetensors", 300), "model.safetensors"),
    "weights garbage": (lambda m: (m / "model.safetensors").write_bytes(b"\x00garbage" * 100), "model.safetensors"),
    "weights empty": (lambda m: (m / "model.safetensors").write_bytes(b""), "model.safetensors"),
    "weights hold NaN": (_weights_edit(_first_float(float("nan"))), "model.safetensors"),
    "weights hold inf": (_weights_edit(_first_float(float("inf"))), "model.safetensors"),
    "weights lack a tensor": (_weights_edit(_drop_tensor), "model.safetensors"),
    "model path is a file": (None, "model_file"),
    "model path missing": (None, "no_such_model"),
}


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory, model_dir):
    d = tmp_path_factory.mktemp("models")
    rec = d / "rec.npy"
    np.save(rec, synthetic_ecg(SECONDS, FS))
    cases = []
    for k, (case, (damage, _)) in enumerate(MODEL_CASES.items()):
        if case == "model path is a file":
            target = d / "model_file"
            target.write_text("not a folder")
        elif case == "model path missing":
            target = d / "no_such_model"
        else:
            target = d / f"m{k}"
            shutil.copytree(model_dir, target)
            damage(target)
        cases.append({"argv": ["predict", target, rec, "--fs", FS, "--leads", "standard"]})
    return dict(zip(MODEL_CASES, run_cases(cases)))


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_damaged_model_folder_is_one_line(model_runs, case):
    assert_one_line(model_runs[case], MODEL_CASES[case][1])


def test_nan_weights_never_load_silently(model_dir, tmp_path):
    from ecgkt.errors import ECGKTError
    from ecgkt.models import ECGKTModel

    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    _weights_edit(_first_float(float("nan")))(m)
    with pytest.raises(ECGKTError, match="model.safetensors: weights hold NaN"):
        ECGKTModel.from_pretrained(m)
    model = ECGKTModel.from_pretrained(model_dir)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ECGKTError, match="non-finite weights"):
        model.save_pretrained(tmp_path / "nan_model")


# ------------------------------------------------------------------------------------------- output paths

OUTPUT_SETUP_ENOSPC = (
    "import errno, os\n"
    "_real = os.fsync\n"
    "def _full(fd):\n"
    "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
    "os.fsync = _full\n"
    "def teardown():\n"
    "    os.fsync = _real\n")


@pytest.fixture(scope="module")
def output_runs(tmp_path_factory, model_dir):
    d = tmp_path_factory.mktemp("outputs")
    rec = d / "rec.npy"
    np.save(rec, synthetic_ecg(SECONDS, FS))
    (d / "a_file").write_text("keep")
    (d / "a_folder").mkdir()
    (d / "previous.json").write_text("previous contents")
    base = ["predict", model_dir, rec, "--fs", FS, "--leads", "standard"]
    cases = {
        "-o into a missing folder": ({"argv": base + ["-o", d / "missing" / "out.json"]}, "missing"),
        "-o naming a folder": ({"argv": base + ["-o", d / "a_folder"]}, "a_folder"),
        "--report naming a file": ({"argv": base + ["--report", d / "a_file"]}, "a_file"),
        "--report below a file": ({"argv": base + ["--report", d / "a_file" / "reports"]}, "a_file"),
        "-o on a full disk": ({"argv": base + ["-o", d / "previous.json", "--format", "json"],
                               "setup": OUTPUT_SETUP_ENOSPC}, "no space left"),
        "export --out naming a folder": ({"argv": ["export", model_dir, "--out", d / "a_folder"]}, "a_folder"),
    }
    results = run_cases([c for c, _ in cases.values()])
    return {k: (r, cases[k][1]) for k, r in zip(cases, results)}, d


@pytest.mark.parametrize("case", ["-o into a missing folder", "-o naming a folder", "--report naming a file",
                                  "--report below a file", "-o on a full disk", "export --out naming a folder"])
def test_output_path_errors_are_one_line(output_runs, case):
    runs, d = output_runs
    r, words = runs[case]
    assert_one_line(r, words)
    assert (d / "a_file").read_text() == "keep"
    assert (d / "previous.json").read_text() == "previous contents"  # a failed write leaves the old file
    assert not [p for p in d.iterdir() if ".tmp" in p.name]  # and no temporary behind


def test_json_output_file_is_strict_and_complete(model_dir, tmp_path):
    rec = tmp_path / "rec.npy"
    np.save(rec, synthetic_ecg(SECONDS, FS))
    out = tmp_path / "out.json"
    (r,) = run_cases([{"argv": ["predict", model_dir, rec, "--fs", FS, "--leads", "standard", "--format", "json",
                                "-o", out]}])
    assert r["rc"] == 0 and "Traceback" not in r["err"], r["err"]
    doc = strict_json(out.read_text())
    assert len(doc["results"]) == 1 and doc["failures"] == []
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

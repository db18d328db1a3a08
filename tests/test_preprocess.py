"""ecgkt.preprocess: the float64 reference against scipy, every backend against the reference, the
repair/flat rules, the measured magnitude response, R peaks on real ECGs, opcheck, errors, fallback."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import signal as sps

import ecgkt
from ecgkt import _extension
from ecgkt.errors import ECGKTError
from ecgkt.ops.preprocess import (
    _design_tensors,
    filter_design,
    measure_response,
    preprocess_reference,
    response_requirements,
)

HAS_CPU_KERNEL = _extension.has_kernel("preprocess", "CPU")
needs_cpu_kernel = pytest.mark.skipif(
    not HAS_CPU_KERNEL, reason=f"the compiled CPU kernel is not available: {_extension.reason or 'not built'}"
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# max |kernel - float64 reference| relative to max |reference|: float32 compute for non-float64 inputs
# (measured <= 5.5e-6; the high-pass section runs in delta form, see cpu_kernel.h), float64 for float64 input
ATOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4, torch.int16: 1e-4}


def assert_matches(got, want, dtype):
    scale = max(float(want.abs().max()), 1e-12)
    torch.testing.assert_close(got.double(), want.double(), atol=ATOL[dtype] * scale, rtol=0)


RATIOS = [(500, None), (1000, 500), (360, 500), (500, 100), (500, 250)]


def ecg_like(b, l, t, fs=500.0, seed=0):
    """Random odd-sized test signal in mV: noise + 1.2 Hz 'beats' + baseline wander + DC; never zero."""
    g = torch.Generator().manual_seed(seed)
    tt = torch.arange(t, dtype=torch.float64) / fs
    x = 0.2 * torch.randn(b, l, t, generator=g, dtype=torch.float64)
    x += torch.sin(2 * torch.pi * 1.2 * tt) ** 15 + 0.5 * torch.sin(2 * torch.pi * 0.2 * tt + 1.0)
    x += 0.3 + 0.1 * torch.rand(b, l, 1, generator=g, dtype=torch.float64)
    return x


def as_input(x64, dtype):
    """The test signal in `dtype`; int16 as ADC units with gain 200 adu/mV and baseline 12 adu."""
    if dtype == torch.int16:
        return (x64 * 200 + 12).round().clamp(-32767, 32767).to(torch.int16), 200.0, 12.0
    return x64.to(dtype), None, None


# ---------------------------------------------------------------------------------------------------------
# the reference is the spec: it must match scipy
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs,target", RATIOS)
def test_reference_matches_scipy(fs, target):
    x = ecg_like(2, 3, 1237, fs)
    d = filter_design(float(fs), 0.5, 100.0, 60.0, None if target is None else float(target))
    y = ecgkt.preprocess(x, fs, target_fs=target, backend="reference", normalize=None).numpy()
    want = sps.sosfiltfilt(d.sos, x.numpy(), axis=-1, padtype="odd", padlen=d.padlen)
    if target is not None:
        want = sps.resample_poly(want, d.up, d.down, axis=-1)  # its own default Kaiser window
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, atol=1e-10, rtol=0)
    z = ecgkt.preprocess(x, fs, target_fs=target, backend="reference").numpy()
    np.testing.assert_allclose(z, (want - want.mean(-1, keepdims=True)) / want.std(-1, keepdims=True), atol=1e-9)
    r = ecgkt.preprocess(x, fs, target_fs=target, backend="reference", normalize="robust").numpy()
    med = np.median(want, -1, keepdims=True)
    mad = np.median(np.abs(want - med), -1, keepdims=True)
    np.testing.assert_allclose(r, (want - med) / (1.4826 * mad), atol=1e-9)


def test_reference_short_signal_pads_to_length():
    x = ecg_like(1, 2, 41)  # shorter than padlen: P = T - 1
    d = filter_design(500.0)
    y = ecgkt.preprocess(x, 500, backend="reference", normalize=None).numpy()
    np.testing.assert_allclose(y, sps.sosfiltfilt(d.sos, x.numpy(), axis=-1, padlen=40), atol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# the CPU kernel against the reference
# ---------------------------------------------------------------------------------------------------------
@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int16])
@pytest.mark.parametrize("fs,target", RATIOS)
def test_cpu_matches_reference(dtype, fs, target):
    x, gain, base = as_input(ecg_like(3, 5, 1237, fs, seed=fs), dtype)
    for normalize in ("zscore", "robust", None):
        kw = dict(target_fs=target, normalize=normalize, gain=gain, baseline=base)
        got = ecgkt.preprocess(x, fs, backend="cpu", **kw)
        want = ecgkt.preprocess(x, fs, backend="reference", **kw)
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert got.shape == want.shape == (3, 5, -(-1237 * (target or fs) // fs))
        assert_matches(got, want, dtype)


@needs_cpu_kernel
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_instruction_set_matches_reference(isa, monkeypatch):
    monkeypatch.setenv("ECGKT_CPU_ISA", isa)  # caps the run-time dispatch (read per call)
    x = ecg_like(2, 19, 777)  # 38 rows: a partial last block
    for dtype in (torch.float32, torch.float64):
        got = ecgkt.preprocess(x.to(dtype), 500, target_fs=360)
        want = ecgkt.preprocess(x.to(dtype), 500, target_fs=360, backend="reference")
        assert_matches(got, want, dtype)


@needs_cpu_kernel
@pytest.mark.parametrize("t", [1, 2, 3, 17, 40])
def test_tiny_signals(t):
    x = ecg_like(2, 17, t, seed=t)  # shorter than a SIMD tile and than padlen
    for target in (None, 360):
        got = ecgkt.preprocess(x.float(), 500, target_fs=target, return_info=True)
        want = ecgkt.preprocess(x.float(), 500, target_fs=target, backend="reference", return_info=True)
        assert got.flat.equal(want.flat) and torch.isfinite(got.signal).all()
        assert_matches(got.signal, want.signal, torch.float32)


@needs_cpu_kernel
def test_single_record_equals_batch_row():
    x = ecg_like(4, 3, 1001)
    batch = ecgkt.preprocess(x, 500)
    for i in range(4):
        torch.testing.assert_close(ecgkt.preprocess(x[i], 500), batch[i], atol=0, rtol=0)


@needs_cpu_kernel
def test_gain_and_baseline_broadcast():
    x = ecg_like(2, 3, 501)
    adc = (x * 100 + 7).round().to(torch.int16)
    per_lead = ecgkt.preprocess(adc, 500, gain=torch.full((3,), 100.0), baseline=torch.full((3,), 7.0),
                                normalize=None)
    per_record = ecgkt.preprocess(adc, 500, gain=torch.full((2, 3), 100.0), baseline=7, normalize=None)
    torch.testing.assert_close(per_lead, per_record, atol=0, rtol=0)
    ref = ecgkt.preprocess(x, 500, normalize=None, backend="reference")
    torch.testing.assert_close(per_lead.double(), ref, atol=0.02, rtol=0)  # ADC quantisation 0.01 mV


# ---------------------------------------------------------------------------------------------------------
# repair and flat leads
# ---------------------------------------------------------------------------------------------------------
BACKENDS = ["reference"] + (["cpu"] if HAS_CPU_KERNEL else [])
NO_FILTER = dict(highpass=None, lowpass=None, notch=None, normalize=None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repair_rules_exact(backend):
    nan = float("nan")
    x = torch.tensor([
        [1.0, nan, nan, 4.0, 5.0, 6.0, 7.0],  # interior run: linear interpolation
        [nan, nan, 3.0, 4.0, 2.0, 6.0, 7.0],  # leading run: first valid value
        [1.0, 2.0, 3.0, 4.0, 5.0, nan, float("inf")],  # trailing run: last valid value
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5],  # nothing to repair
    ])
    res = ecgkt.preprocess(x, 500, backend=backend, return_info=True, **NO_FILTER)
    want = torch.tensor([
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        [3.0, 3.0, 3.0, 4.0, 2.0, 6.0, 7.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5],
    ])
    torch.testing.assert_close(res.signal, want, atol=1e-6, rtol=0)
    assert res.repaired.tolist() == [True, True, True, False]
    assert not res.flat.any()


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int16])
def test_invalid_runs_match_reference(dtype):
    x, gain, base = as_input(ecg_like(2, 4, 1001, seed=3), dtype)
    bad = -32768 if dtype == torch.int16 else float("nan")
    x[0, 0, 100:137] = bad  # interior
    x[0, 1, :55] = bad  # leading
    x[0, 2, -70:] = bad  # trailing
    x[1, 3, 1::3] = bad  # many short runs
    x[1, 0, 500] = bad  # single sample
    kw = dict(gain=gain, baseline=base, return_info=True)
    got = ecgkt.preprocess(x, 500, backend="cpu", **kw)
    want = ecgkt.preprocess(x, 500, backend="reference", **kw)
    assert_matches(got.signal, want.signal, dtype)
    expected = torch.zeros(2, 4, dtype=torch.bool)
    expected[0, :3] = True
    expected[1, 3] = expected[1, 0] = True
    assert got.repaired.equal(expected) and want.repaired.equal(expected)
    assert torch.isfinite(got.signal).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["zscore", "robust", None])
def test_flat_and_all_invalid_leads_are_zero(backend, normalize):
    x = ecg_like(2, 4, 301)
    x[0, 1] = 0.7  # flat
    x[1, 2] = float("nan")  # all invalid
    x[1, 3, ::2] = float("nan")
    x[1, 3, 1::2] = -0.25  # flat after repair
    res = ecgkt.preprocess(x, 500, target_fs=250, normalize=normalize, backend=backend, return_info=True)
    assert torch.isfinite(res.signal).all()
    flat = torch.zeros(2, 4, dtype=torch.bool)
    flat[0, 1] = flat[1, 2] = flat[1, 3] = True
    assert res.flat.equal(flat)
    assert res.repaired.tolist() == [[False] * 4, [False, False, True, True]]
    assert (res.signal[flat] == 0).all() and (res.signal[~flat].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_int16_all_invalid_and_flat(backend):
    x = torch.full((3, 257), 40, dtype=torch.int16)
    x[1] = -32768
    x[2, ::2] = 41
    res = ecgkt.preprocess(x, 500, gain=200, backend=backend, return_info=True)
    assert res.flat.tolist() == [True, True, False]
    assert res.repaired.tolist() == [False, True, False]
    assert (res.signal[:2] == 0).all() and torch.isfinite(res.signal).all()


# ---------------------------------------------------------------------------------------------------------
# the measured magnitude response meets every clause of the spec
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs,notch,lowpass", [(500, 60, 100), (250, 60, 100), (360, 50, 100), (1000, 60, 150)])
def test_magnitude_response_meets_spec(fs, notch, lowpass):
    reqs = response_requirements(fs, 0.5, lowpass, notch)
    freqs = [f for f, _, _ in reqs]
    db = measure_response(fs, freqs, notch=notch, lowpass=lowpass)
    for (f, lo, hi), got in zip(reqs, db):
        assert lo <= got <= hi, f"{f:.2f} Hz at fs={fs}: {got:.2f} dB, required [{lo}, {hi}]"
    # the clauses are not vacuous: passband, high-pass stopband, notch, low-pass stopband are all checked
    kinds = {("pass" if np.isfinite(lo) else "stop") for _, lo, _ in reqs}
    assert kinds == {"pass", "stop"} and any(abs(f - notch) < 0.2 for f in freqs)


def test_design_is_minimal_and_cached():
    d = filter_design(500.0)
    assert (d.highpass_order, d.lowpass_order) == (2, 3) and d.notch_q == pytest.approx(40.0)
    assert filter_design(500.0) is d
    assert filter_design(500.0, notch=None).notch_q == 0.0
    # low-pass at or above 0.45*fs is skipped, notch at or above Nyquist is skipped
    d100 = filter_design(100.0)
    assert d100.lowpass_order == 0 and d100.notch_q == 0.0 and len(d100.sos) == 1


# ---------------------------------------------------------------------------------------------------------
# real ECGs: R peaks do not move
# ---------------------------------------------------------------------------------------------------------
def clean_r_peaks(lead, fs):
    """Unambiguous R peaks of a raw lead: baseline removed by a median filter, a centred 3-sample mean
    against sample noise (both zero-phase), peaks of the dominant sign at least 1.5x anything else within
    100 ms, away from the edges. Returns (peaks, sign)."""
    from scipy.ndimage import median_filter, uniform_filter1d

    v = uniform_filter1d(lead - median_filter(lead, size=int(0.6 * fs) | 1, mode="nearest"), 3)
    sign = 1
    if -v.min() > v.max():
        v, sign = -v, -1
    peaks, _ = sps.find_peaks(v, distance=int(0.3 * fs), height=0.6 * np.percentile(v, 99.9))
    w = int(0.1 * fs)
    keep = [p for p in peaks if fs <= p < len(v) - fs
            and v[p] >= 1.5 * np.concatenate([v[p - w:p - 5], v[p + 6:p + w + 1]]).max()]
    return np.array(keep, dtype=np.int64), sign


def peak_moves(raw, out, fs, out_fs=None):
    """How far (in output samples) each clean R peak of `raw` [leads, T] lies from the maximum of `out`."""
    out_fs = out_fs or fs
    w = int(0.03 * out_fs)
    moves = []
    for lead in range(raw.shape[0]):
        peaks, sign = clean_r_peaks(raw[lead].astype(np.float64), fs)
        for p in np.round(peaks * out_fs / fs).astype(np.int64):
            moves.append(int(np.argmax(sign * out[lead, p - w:p + w + 1])) - w)
    return np.array(moves)


def assert_zero_phase(moves, min_peaks=20):
    # Zero-phase: R peaks stay put (+-1 sample; real noise moves a rare flat-topped peak a little more).
    # A causal (forward-only) run of the same cascade gives ~50% within +-1 and a mean shift of ~1.4.
    assert len(moves) >= min_peaks, "too few unambiguous R peaks to test"
    assert np.mean(np.abs(moves) <= 1) >= 0.97, np.unique(moves, return_counts=True)
    assert abs(np.mean(moves)) <= 0.25 and np.median(moves) == 0


def test_r_peaks_unchanged_cinc(cinc_dir):
    wfdb = pytest.importorskip("wfdb")
    moves = []
    for name in sorted(p.stem for p in cinc_dir.glob("*.hea"))[:5]:
        rec = wfdb.rdrecord(str(cinc_dir / name), physical=False)
        adc = torch.from_numpy(rec.d_signal.T.astype(np.int16))
        out = ecgkt.preprocess(adc, rec.fs, gain=torch.tensor(rec.adc_gain, dtype=torch.float32),
                               baseline=torch.tensor(rec.baseline, dtype=torch.float32)).numpy()
        moves.append(peak_moves(rec.d_signal.T, out, rec.fs))
    assert_zero_phase(np.concatenate(moves))


def test_r_peaks_unchanged_pydicom_ecg(pydicom_ecg_path):
    import pydicom

    ds = pydicom.dcmread(pydicom_ecg_path)
    fs = float(ds.WaveformSequence[0].SamplingFrequency)
    x = ds.waveform_array(0).T.astype(np.float32)  # [leads, T]
    assert fs == 1000 and x.shape[0] == 12
    assert_zero_phase(peak_moves(x, ecgkt.preprocess(torch.from_numpy(x), fs).numpy(), fs), min_peaks=6)
    half = ecgkt.preprocess(torch.from_numpy(x), fs, target_fs=500).numpy()  # 1000 -> 500 Hz
    assert_zero_phase(peak_moves(x, half, fs, out_fs=500), min_peaks=6)


# ---------------------------------------------------------------------------------------------------------
# the registered op
# ---------------------------------------------------------------------------------------------------------
def op_args(x, gain, baseline, fs, target=None, normalize=1):
    d = filter_design(float(fs), 0.5, 100.0, 60.0, None if target is None else float(target))
    sos, zi, fir = _design_tensors((float(fs), 0.5, 100.0, 60.0, None if target is None else float(target)), "cpu")
    n = x.shape[0]
    return (x, torch.full((n,), float(gain)), torch.full((n,), float(baseline)), sos, zi, d.padlen, fir, d.up,
            d.down, normalize)


@needs_cpu_kernel
@pytest.mark.parametrize("case", ["float32", "int16-resample", "float64-robust"])
def test_opcheck(case):
    x = ecg_like(1, 7, 403)[0]
    if case == "float32":
        args = op_args(x.float(), 1, 0, 500)
    elif case == "int16-resample":
        args = op_args((x * 200).round().to(torch.int16), 200, 0, 500, target=360)
    else:
        args = op_args(x, 1, 0, 500, normalize=2)
    torch.library.opcheck(torch.ops.ecgkt.preprocess, args)
    out, flags = torch.ops.ecgkt.preprocess(*args)
    ref_out, ref_flags = preprocess_reference(*args)
    assert_matches(out, ref_out, args[0].dtype)
    assert flags.equal(ref_flags)


@needs_cpu_kernel
def test_not_differentiable():
    x = ecg_like(1, 3, 301)[0].float().requires_grad_()
    assert not ecgkt.preprocess(x, 500).requires_grad
    out, flags = torch.ops.ecgkt.preprocess(*op_args(x, 1, 0, 500))
    assert not out.requires_grad and not flags.requires_grad


def test_triton_backend_matches_reference():
    pytest.importorskip("triton", reason="triton is an optional dependency")
    try:
        import ecgkt.kernels.preprocess  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the Triton preprocess kernel is not available: {e}")
    x = ecg_like(1, 3, 257)[0].float()
    got = ecgkt.preprocess(x, 500, backend="triton", target_fs=250)
    want = ecgkt.preprocess(x, 500, backend="reference", target_fs=250)
    # plain float32 recursions (no double high-pass section): ~1e-3 of the peak; the kernel's own tests
    # in tests/test_preprocess_triton.py hold it to its tolerance
    torch.testing.assert_close(got.double(), want.double(), atol=5e-3 * float(want.abs().max()), rtol=0)


# ---------------------------------------------------------------------------------------------------------
# bad arguments give one clear line
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda: ecgkt.preprocess(torch.zeros(3, 100, dtype=torch.int16), 500), "gain is required for int16"),
    (lambda: ecgkt.preprocess(torch.randn(100), 500), r"expected \[B, leads, T\]"),
    (lambda: ecgkt.preprocess(torch.randn(1, 2, 3, 100), 500), r"expected \[B, leads, T\]"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, normalize="minmax"), "normalize='minmax'"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 0), "fs must be a positive"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), -500), "fs must be a positive"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, notch=-60), "notch must be a positive"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, highpass=300), "Nyquist"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, lowpass=0.3), "must be above highpass"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, target_fs=0), "target_fs must be a positive"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, gain=torch.ones(3)), "gain has shape"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, gain=0.0), "gain has zeros"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100).int(), 500), "dtype"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, backend="gpu"), "backend='gpu'"),
    (lambda: ecgkt.preprocess(torch.randn(2, 100), 500, backend="cuda"), "needs a CUDA tensor"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ECGKTError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------
# without the extension: same numbers from the reference, with a warning
# ---------------------------------------------------------------------------------------------------------
def test_fallback_without_extension(tmp_path):
    x = ecg_like(2, 3, 777, seed=5).float()
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import json, sys, warnings, numpy as np, torch\n"
        "warnings.simplefilter('always')\n"
        "import ecgkt\n"
        "from ecgkt import _extension\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    y = ecgkt.preprocess(x, 500, target_fs=250)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y.numpy())\n"
        "print(json.dumps({'available': _extension.available, 'warnings': [str(m.message) for m in w]}))\n"
    )
    env = dict(os.environ, ECGKT_DISABLE_EXTENSION="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["available"] is False
    assert any("pure-torch reference" in m and "ECGKT_DISABLE_EXTENSION" in m for m in info["warnings"])
    fallback = torch.from_numpy(np.load(tmp_path / "y.npy"))
    here = ecgkt.preprocess(x, 500, target_fs=250)
    assert_matches(fallback, here, torch.float32)


# ---------------------------------------------------------------------------------------------------------
# ecgkt preprocess RECORD --out PNG
# ---------------------------------------------------------------------------------------------------------
def test_cli_plots_a_wfdb_record(tmp_path, capsys):
    wfdb = pytest.importorskip("wfdb")
    from ecgkt.cli import main

    x = ecg_like(1, 3, 2501)[0].numpy().T  # [T, leads] in mV
    x[100:120, 1] = np.nan  # stored as the format-16 invalid value
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 3, sig_name=["I", "II", "V1"], p_signal=x, fmt=["16"] * 3,
                adc_gain=[200.0] * 3, baseline=[0] * 3, write_dir=str(tmp_path))
    out = tmp_path / "plot.png"
    assert main(["preprocess", str(tmp_path / "rec"), "--out", str(out), "--target-fs", "250"]) == 0
    assert out.stat().st_size > 10_000
    assert "repaired 1, flat 0" in capsys.readouterr().out
    assert main(["preprocess", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing.hea: no such WFDB header" in capsys.readouterr().err

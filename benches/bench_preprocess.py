"""ecgkt.preprocess against scipy, neurokit2's ecg_clean and plain torch FFT filtering, with the copy of
the same bytes as the floor, against the batch size (records per call).

Every contender gets the same 10 s, 12-lead, 500 Hz int16 records (200 adu/mV) and returns float32
z-scored leads: 0.5-100 Hz band, 60 Hz notch (neurokit2: its own 0.5 Hz high-pass + powerline filter).
The peers convert to mV first, as a user would; ecgkt takes the int16 samples and the gain."""
import numpy as np
import pytest
import torch
from scipy import signal as sps

import ecgkt
from _bench import FS, GAIN, cuda_or_skip, ecg_batch, measure, need, neurokit2_clean, scipy_clean

CPU_PROVIDERS = ["ecgkt", "ecgkt-float32", "torch-fft", "scipy", "neurokit2", "copy"]
GPU_PROVIDERS = ["ecgkt-cuda", "ecgkt-triton", "torch-fft-cuda", "copy-cuda"]


class TorchFFTClean:
    """Zero-phase filtering in plain torch: odd extension, rfft, times |H|^2 of the same Butterworth band-pass
    and notch, irfft, z-score (float32; the best plain-torch composition for this job)."""

    def __init__(self, t: int, fs: float, device="cpu"):
        self.pad = min(int(2 * fs), t - 1)  # 2 s: the 0.5 Hz corner's start-up transient
        self.nfft = int(2 ** np.ceil(np.log2(t + 2 * self.pad + 2560)))
        freqs = np.fft.rfftfreq(self.nfft, 1 / fs)
        sos = sps.butter(5, [0.5, 100.0], btype="bandpass", fs=fs, output="sos")
        b, a = sps.iirnotch(60.0, 30.0, fs=fs)
        freqz_sos = getattr(sps, "freqz_sos", None) or sps.sosfreqz
        _, h1 = freqz_sos(sos, worN=freqs, fs=fs)
        _, h2 = sps.freqz(b, a, worN=freqs, fs=fs)
        self.h2 = torch.from_numpy(np.abs(h1 * h2) ** 2).float().to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p, t = self.pad, x.shape[-1]
        left = 2 * x[..., :1] - x[..., 1:p + 1].flip(-1)
        right = 2 * x[..., -1:] - x[..., -p - 1:-1].flip(-1)
        ext = torch.cat([left, x, right], -1)
        y = torch.fft.irfft(torch.fft.rfft(ext, n=self.nfft) * self.h2, n=self.nfft)[..., p:p + t]
        d = y - y.mean(-1, keepdim=True)
        return d.div_(d.square().mean(-1, keepdim=True).sqrt_().clamp_min_(1e-8))


def _contender(provider: str, adc: torch.Tensor):
    if provider == "ecgkt":
        return lambda: ecgkt.preprocess(adc, FS, gain=GAIN)
    if provider == "ecgkt-float32":
        mv = adc.float() / GAIN
        return lambda: ecgkt.preprocess(mv, FS)
    if provider == "torch-fft":
        clean = TorchFFTClean(adc.shape[-1], FS)
        return lambda: clean(adc.float() / GAIN)
    if provider == "scipy":
        a = adc.numpy()
        return lambda: scipy_clean(a.astype(np.float32) / GAIN, FS)
    if provider == "neurokit2":
        need("neurokit2")
        a = adc.numpy()
        return lambda: neurokit2_clean(a.astype(np.float32) / GAIN, FS)
    if provider == "copy":
        out = torch.empty(adc.shape, dtype=torch.float32)
        return lambda: out.copy_(adc)  # reads the int16 batch, writes the float32 result: the same bytes
    raise ValueError(provider)


@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_preprocess_cpu(benchmark, sizes, preprocess_batch, provider):
    batch = preprocess_batch
    adc = ecg_batch(batch)
    measure(benchmark, _contender(provider, adc), kernel="preprocess", provider=provider, x=batch,
            x_name="batch", items=batch, unit="records/s", rounds=sizes.rounds, budget_s=3 if sizes.quick else 6)


@pytest.mark.parametrize("provider", ["ecgkt", "copy"])
def test_preprocess_two_threads(benchmark, sizes, provider):
    """Kernel layer v2's CPU target as it is worded: wall time with 2 threads on 64 x 12 x 5000 float32 records
    (in mV), against a float32 copy of the same bytes with the same 2 threads."""
    x = ecg_batch(64).float() / GAIN
    if provider == "ecgkt":
        fn = lambda: ecgkt.preprocess(x, FS)  # noqa: E731
    else:
        out = torch.empty_like(x)
        fn = lambda: out.copy_(x)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        measure(benchmark, fn, kernel="preprocess_2_threads", provider=provider, x=64, x_name="batch", items=64,
                unit="records/s", rounds=sizes.rounds * 3, budget_s=3 if sizes.quick else 6)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", GPU_PROVIDERS)
def test_preprocess_gpu(benchmark, sizes, provider):
    device = cuda_or_skip()
    batch = 256
    adc = ecg_batch(batch).to(device)
    if provider == "ecgkt-cuda":
        run = lambda: ecgkt.preprocess(adc, FS, gain=GAIN, backend="cuda")  # noqa: E731
    elif provider == "ecgkt-triton":
        need("triton")
        run = lambda: ecgkt.preprocess(adc, FS, gain=GAIN, backend="triton")  # noqa: E731
    elif provider == "torch-fft-cuda":
        clean = TorchFFTClean(adc.shape[-1], FS, device)
        run = lambda: clean(adc.float() / GAIN)  # noqa: E731
    else:
        out = torch.empty(adc.shape, dtype=torch.float32, device=device)
        run = lambda: out.copy_(adc)  # noqa: E731

    def synced():
        run()
        torch.cuda.synchronize()

    measure(benchmark, synced, kernel="preprocess", provider=provider, x=batch, x_name="batch", items=batch,
            unit="records/s", rounds=sizes.rounds * 3)


def test_preprocess_response():
    """The measured zero-phase magnitude response of the default pipeline (unit sinusoids through the
    kernel): recorded with the timings so that BENCHMARKS.md shows the filter the figures are for."""
    from ecgkt.ops.preprocess import measure_response

    from _bench import record

    freqs = [0.05, 0.1, 0.5, 1.0, 2.0, 10.0, 40.0, 57.0, 59.9, 60.0, 60.1, 63.0, 70.0, 100.0, 150.0, 200.0]
    for f, db in zip(freqs, measure_response(FS, freqs)):
        record("preprocess_response", "ecgkt", "dB", f, [float(db)], x_name="Hz",
               note="gain at 500 Hz: 0.5-100 Hz band, 60 Hz notch")

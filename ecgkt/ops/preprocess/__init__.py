"""Fused ECG preprocessing: ``ecgkt.preprocess`` wrapping ``torch.ops.ecgkt.preprocess``.

One pass per lead does, in order:

1. conversion to mV: float16/bfloat16/float32/float64 input is taken as mV; int16 input is ADC units,
   converted as ``(x - baseline) / gain`` (WFDB format 16; -32768 marks an invalid sample);
2. repair: runs of invalid samples (NaN/inf, or -32768 for int16) are linearly interpolated between the
   nearest valid samples (a leading/trailing run holds the first/last valid value); ``repaired`` reports it.
   An all-invalid or flat lead (peak-to-peak <= 1e-6 mV) comes out as zeros and is reported as ``flat``;
3. zero-phase filtering (forward-backward, odd extension, steady-state initial conditions, exactly
   ``scipy.signal.sosfiltfilt``) with one cascade of second-order sections: a Butterworth high-pass at
   ``highpass`` Hz (baseline wander), a Butterworth low-pass at ``lowpass`` Hz and an ``iirnotch`` at
   ``notch`` Hz. The orders are the smallest that meet the required response (see ``filter_design``);
4. optional polyphase resampling to ``target_fs`` (exactly ``scipy.signal.resample_poly``);
5. per-lead normalisation: ``"zscore"`` (mean 0, population std 1), ``"robust"`` (median 0, 1.4826*MAD 1,
   falling back to z-score when the MAD is 0) or ``None``.

Required zero-phase magnitude response, measured with sinusoids in tests/test_preprocess.py: within
+-1 dB from 1 Hz to 0.7*lowpass (except within +-3 Hz of the notch); >= 20 dB attenuation at and below
highpass/5; >= 30 dB at notch +- 0.1 Hz; >= 20 dB at and above 1.5*lowpass (below Nyquist). The measured
table is in docs/preprocess.md.

Backends compute the same function: the C++ CPU kernel (csrc/preprocess/cpu*.cpp, vectorised over leads),
the CUDA kernel (csrc/preprocess/cuda.cu), the Triton kernel (ecgkt.kernels.preprocess) and a float64
numpy/scipy reference. The op is not differentiable: its outputs never require grad.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from fractions import Fraction
from typing import NamedTuple, Optional

import numpy as np
import torch
from scipy import signal as sps
from torch import nn

from .. import _extension
from ..errors import ECGKTError
from . import schemas

__all__ = ["preprocess", "PreprocessResult", "filter_design", "FilterDesign", "response_requirements",
           "measure_response"]

NORMALIZE_CODES = {None: 0, "none": 0, "zscore": 1, "robust": 2}
BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int16)
# The spec's constants, once for Python (the C++/CUDA kernels' copy: csrc/preprocess/spec.h)
INVALID_INT16 = -32768
FLAT_PTP = 1e-6  # mV: a lead whose peak-to-peak is at most this is flat
ZERO_SCALE = 1e-8  # a std or MAD at most this is treated as zero
MAD_TO_SIGMA = 1.4826  # robust scale = MAD_TO_SIGMA * MAD
NOTCH_BANDWIDTH_HZ = 1.5  # -3 dB width of the notch (one-way); Q = notch / width
MAX_ORDER = 8


class PreprocessResult(NamedTuple):
    """``signal``: [B, L, T_out] (or [L, T_out]); ``repaired``/``flat``: [B, L] (or [L]) bool."""

    signal: torch.Tensor
    repaired: torch.Tensor
    flat: torch.Tensor


class FilterDesign(NamedTuple):
    """Coefficients for one (fs, highpass, lowpass, notch, target_fs) setting (float64 numpy)."""

    sos: np.ndarray  # [S, 6]
    zi: np.ndarray  # [S, 2], scipy.signal.sosfilt_zi(sos)
    padlen: int  # odd-extension length (capped at T - 1 per signal)
    fir: np.ndarray  # [K] polyphase filter, empty when up == down == 1
    up: int
    down: int
    highpass_order: int  # 0 when there is no high-pass
    lowpass_order: int  # 0 when the low-pass is skipped
    notch_q: float  # 0 when there is no notch


# ---------------------------------------------------------------------------------------------------------
# Filter design
# ---------------------------------------------------------------------------------------------------------
def _check_rate(name: str, value, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ECGKTError(f"{name} must be a number in Hz, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ECGKTError(f"{name} must be a positive frequency in Hz, got {value!r}")
    return v


def _active_parts(fs: float, highpass, lowpass, notch):
    """Which filter parts apply at this rate (the rules of the spec)."""
    hp = highpass if highpass is not None else None
    if hp is not None and hp >= fs / 2:
        raise ECGKTError(f"highpass={hp} Hz must be below the Nyquist frequency {fs / 2} Hz (fs={fs})")
    lp = lowpass if (lowpass is not None and lowpass < 0.45 * fs) else None
    if hp is not None and lowpass is not None and lowpass <= hp:
        raise ECGKTError(f"lowpass={lowpass} Hz must be above highpass={hp} Hz")
    nt = notch if (notch is not None and notch < fs / 2) else None
    return hp, lp, nt


def response_requirements(fs: float, highpass=0.5, lowpass=100.0, notch=60.0):
    """The required zero-phase magnitude response at ``fs`` as a list of
    ``(frequency_hz, min_gain_db, max_gain_db)`` points (what the tests measure with sinusoids)."""
    hp, lp, nt = _active_parts(fs, highpass, lowpass, notch)
    nyq = fs / 2
    reqs = []
    top = 0.7 * lowpass if lowpass is not None else 0.45 * fs
    top = min(top, 0.45 * fs)
    lo = 1.0 if hp is None else max(1.0, hp * 1.5)
    for f in np.linspace(lo, top, 60):
        if nt is not None and abs(f - nt) <= 3.0:
            continue
        reqs.append((float(f), -1.0, 1.0))
    if hp is not None:
        for f in (hp / 5, hp / 10):
            reqs.append((f, -math.inf, -20.0))
    if nt is not None:
        for f in (nt - 0.1, nt, nt + 0.1):
            reqs.append((f, -math.inf, -30.0))
    if lowpass is not None and 1.5 * lowpass < nyq:
        for f in np.linspace(1.5 * lowpass, 0.98 * nyq, 8):
            reqs.append((float(f), -math.inf, -20.0))
    return reqs


def _zero_phase_db(sos: np.ndarray, freqs, fs: float) -> np.ndarray:
    """|H(f)|^2 of the forward-backward cascade, in dB."""
    if len(sos) == 0:
        return np.zeros(len(freqs))
    freqz = getattr(sps, "freqz_sos", None) or sps.sosfreqz
    _, h = freqz(sos, worN=np.asarray(freqs, dtype=np.float64), fs=fs)
    return 20 * np.log10(np.maximum(np.abs(h) ** 2, 1e-300))


def _cascade(fs, hp, hp_order, lp, lp_order, nt, q) -> np.ndarray:
    parts = []
    if hp is not None:
        parts.append(sps.butter(hp_order, hp, btype="highpass", fs=fs, output="sos"))
    if lp is not None:
        parts.append(sps.butter(lp_order, lp, btype="lowpass", fs=fs, output="sos"))
    if nt is not None:
        b, a = sps.iirnotch(nt, q, fs=fs)
        parts.append(sps.tf2sos(b, a))
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 6))


@functools.lru_cache(maxsize=64)
def filter_design(fs: float, highpass=0.5, lowpass=100.0, notch=60.0, target_fs=None) -> FilterDesign:
    """Design (and cache) the SOS cascade and the resampling filter for one setting.

    Butterworth orders: the smallest (high-pass order + low-pass order) whose zero-phase response meets
    ``response_requirements`` with a 0.1 dB / 2 dB design margin. Notch: ``scipy.signal.iirnotch`` with a
    fixed 1.5 Hz bandwidth (Q = notch / 1.5: 40 at 60 Hz). ``padlen`` = three time constants of the
    high-pass corner, 3 * fs / (2 pi highpass) (478 samples at 500 Hz), so its start-up transient decays
    inside the odd extension. Resampling: the reduced ratio up/down = target_fs/fs and resample_poly's
    own Kaiser (beta 5) FIR of 20*max(up, down)+1 taps, scaled by ``up``.
    """
    fs = _check_rate("fs", fs, allow_none=False)
    hp = _check_rate("highpass", highpass, allow_none=True)
    lowp = _check_rate("lowpass", lowpass, allow_none=True)
    nt0 = _check_rate("notch", notch, allow_none=True)
    hp, lp, nt = _active_parts(fs, hp, lowp, nt0)
    q = nt / NOTCH_BANDWIDTH_HZ if nt is not None else 0.0

    reqs = response_requirements(fs, hp, lowp, nt0)
    freqs = np.array([r[0] for r in reqs])
    lo_db = np.array([r[1] for r in reqs]) + 0.1
    hi_db = np.array([r[2] for r in reqs])
    hi_db = np.where(np.isfinite(lo_db), hi_db - 0.1, hi_db - 2.0)
    best = None
    for total in range(0, 2 * MAX_ORDER + 1):
        for hp_order in range(1 if hp is not None else 0, (MAX_ORDER if hp is not None else 0) + 1):
            lp_order = total - hp_order
            if lp is None and lp_order != 0 or lp is not None and not 1 <= lp_order <= MAX_ORDER:
                continue
            sos = _cascade(fs, hp, hp_order, lp, lp_order, nt, q)
            db = _zero_phase_db(sos, freqs, fs)
            if np.all(db >= lo_db) and np.all(db <= hi_db):
                best = (sos, hp_order, lp_order)
                break
        if best is not None:
            break
    if best is None:
        raise ECGKTError(
            f"no Butterworth order up to {MAX_ORDER} meets the response required for fs={fs}, "
            f"highpass={highpass}, lowpass={lowpass}, notch={notch}; widen the band"
        )
    sos, hp_order, lp_order = best
    sos = np.ascontiguousarray(sos, dtype=np.float64)
    zi = np.ascontiguousarray(sps.sosfilt_zi(sos), dtype=np.float64) if len(sos) else np.zeros((0, 2))
    if hp is not None:
        padlen = int(math.ceil(3 * fs / (2 * math.pi * hp)))
    else:
        padlen = 3 * (2 * len(sos) + 1)

    up = down = 1
    fir = np.zeros(0)
    if target_fs is not None:
        tfs = _check_rate("target_fs", target_fs, allow_none=False)
        ratio = Fraction(tfs / fs).limit_denominator(1000)
        if abs(float(ratio) - tfs / fs) > 1e-9 * tfs / fs:
            raise ECGKTError(f"target_fs={target_fs} / fs={fs} is not a ratio of integers up to 1000")
        up, down = ratio.numerator, ratio.denominator
        if (up, down) != (1, 1):
            half = 10 * max(up, down)
            fir = sps.firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", 5.0)) * up
    return FilterDesign(sos, zi, padlen, np.ascontiguousarray(fir, dtype=np.float64), up, down,
                        hp_order, lp_order, q)


@functools.lru_cache(maxsize=64)
def _design_tensors(design_key: tuple, device: str):
    d = filter_design(*design_key)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(device)  # noqa: E731
    return as_t(d.sos.reshape(-1, 6)), as_t(d.zi.reshape(-1, 2)), as_t(d.fir)


# ---------------------------------------------------------------------------------------------------------
# float64 reference (numpy/scipy), the spec written out step by step
# ---------------------------------------------------------------------------------------------------------
def _repair(v: np.ndarray, invalid: np.ndarray):
    """Interpolate invalid runs in place; returns (repaired, all_invalid) per row."""
    repaired = invalid.any(axis=1)
    all_invalid = invalid.all(axis=1)
    t = np.arange(v.shape[1])
    for i in np.flatnonzero(repaired & ~all_invalid):
        ok = ~invalid[i]
        # np.interp holds the first/last valid value outside the valid range: the spec's edge rule
        v[i, ~ok] = np.interp(t[~ok], t[ok], v[i, ok])
    v[all_invalid] = 0.0
    return repaired, all_invalid


def _zero_phase(sos: np.ndarray, zi: np.ndarray, v: np.ndarray, padlen: int) -> np.ndarray:
    if len(sos) == 0:
        return v
    n, t = v.shape
    p = min(padlen, t - 1)
    if p > 0:
        left = 2 * v[:, :1] - v[:, p:0:-1]
        right = 2 * v[:, -1:] - v[:, -2:-p - 2:-1]
        ext = np.concatenate([left, v, right], axis=1)
    else:
        ext = v
    y, _ = sps.sosfilt(sos, ext, axis=1, zi=zi[:, None, :] * ext[None, :, :1])
    y = y[:, ::-1]
    y, _ = sps.sosfilt(sos, y, axis=1, zi=zi[:, None, :] * y[None, :, :1])
    return np.array(y[:, ::-1][:, p:p + t], order="C")


def _resample(y: np.ndarray, fir: np.ndarray, up: int, down: int) -> np.ndarray:
    """out[n] = sum_k fir[k] u[n*down + half - k] (u = y zero-stuffed by up), n < ceil(T*up/down)."""
    if up == 1 and down == 1:
        return y
    t = y.shape[1]
    t_out = -(-t * up // down)
    half = (len(fir) - 1) // 2
    pre = (-half) % down  # shift the filter so that the first kept output lands on a multiple of down
    h = np.concatenate([np.zeros(pre), fir])
    full = sps.upfirdn(h, y, up, down, axis=1)
    first = (half + pre) // down
    return full[:, first:first + t_out]


def _normalize(y: np.ndarray, mode: int, dead: np.ndarray) -> np.ndarray:
    if mode == 0:
        return y
    mean = y.mean(axis=1, keepdims=True)
    std = y.std(axis=1, keepdims=True)
    zs = (y - mean) / np.where(std > ZERO_SCALE, std, 1.0)
    if mode == 1:
        dead |= std[:, 0] <= ZERO_SCALE
        return zs
    med = np.median(y, axis=1, keepdims=True)
    mad = MAD_TO_SIGMA * np.median(np.abs(y - med), axis=1, keepdims=True)
    robust_ok = mad[:, 0] > MAD_TO_SIGMA * ZERO_SCALE
    dead |= ~robust_ok & (std[:, 0] <= ZERO_SCALE)
    return np.where(robust_ok[:, None], (y - med) / np.where(robust_ok[:, None], mad, 1.0), zs)


def preprocess_reference(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize):
    """float64 numpy/scipy implementation of ``torch.ops.ecgkt.preprocess`` (same arguments)."""
    x = signal.detach().cpu()
    is_int16 = x.dtype == torch.int16
    xn = x.numpy() if x.dtype not in (torch.float16, torch.bfloat16) else x.float().numpy()
    g = gain.detach().cpu().double().numpy()[:, None]
    b = baseline.detach().cpu().double().numpy()[:, None]
    v = (xn.astype(np.float64) - b) / g
    invalid = (xn == INVALID_INT16) if is_int16 else ~np.isfinite(v)
    repaired, dead = _repair(v, invalid)
    flat = np.ptp(v, axis=1) <= FLAT_PTP if v.shape[1] else np.ones(len(v), bool)
    dead |= flat
    v[dead] = 0.0
    sos_n = sos.detach().cpu().double().numpy().reshape(-1, 6)
    zi_n = zi.detach().cpu().double().numpy().reshape(-1, 2)
    y = _zero_phase(sos_n, zi_n, v, int(padlen))
    y = _resample(y, fir.detach().cpu().double().numpy(), int(up), int(down))
    y = _normalize(y, int(normalize), dead)
    y[dead] = 0.0
    flags = repaired.astype(np.int32) | (dead.astype(np.int32) << 1)
    out_dtype = torch.float64 if signal.dtype == torch.float64 else torch.float32
    out = torch.from_numpy(np.array(y, order="C")).to(device=signal.device, dtype=out_dtype)  # a copy: no negative strides
    return out, torch.from_numpy(flags).to(signal.device)


# ---------------------------------------------------------------------------------------------------------
# The registered op: fake kernel and non-differentiability
# ---------------------------------------------------------------------------------------------------------
def _output_length(t: int, up: int, down: int) -> int:
    return -(-t * up // down)


def _cpu_fallback_kernel(*args):
    """The CPU kernel of ecgkt::preprocess when ecgkt._C has none: the float64 reference, warning once."""
    _extension.warn_fallback("preprocess")
    return preprocess_reference(*args)


def _cuda_triton_kernel(*args):
    """The CUDA kernel of ecgkt::preprocess when ecgkt._C was built without CUDA: the Triton kernels."""
    return _run_triton(*args)


def _register() -> None:
    if not schemas.has_kernel("preprocess", "CPU"):
        torch.library.register_kernel("ecgkt::preprocess", "cpu", _cpu_fallback_kernel)
    if not schemas.has_kernel("preprocess", "CUDA"):
        torch.library.register_kernel("ecgkt::preprocess", "cuda", _cuda_triton_kernel)
        schemas.TRITON_ON_CUDA.add("preprocess")

    @torch.library.register_fake("ecgkt::preprocess")
    def _preprocess_fake(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize):
        torch._check(signal.dim() == 2, lambda: "ecgkt::preprocess: signal must be [N, T]")
        n, t = signal.shape
        out_dtype = torch.float64 if signal.dtype == torch.float64 else torch.float32
        out = signal.new_empty((n, _output_length(t, up, down)), dtype=out_dtype)
        return out, signal.new_empty((n,), dtype=torch.int32)

    def _setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output)

    def _backward(ctx, grad_out, grad_flags):
        raise RuntimeError("ecgkt::preprocess is not differentiable")

    torch.library.register_autograd("ecgkt::preprocess", _backward, setup_context=_setup_context)


_register()


def measure_response(fs: float, freqs, *, dtype=torch.float32, backend="auto", **settings) -> np.ndarray:
    """Zero-phase magnitude response of ``preprocess`` in dB, measured with sinusoids.

    One lead per frequency: a unit sinusoid long enough for 8 periods of the lowest frequency (at least
    20 s) goes through ``preprocess(..., normalize=None)``; the output's amplitude at that frequency is
    a least-squares sine/cosine fit over the middle half (away from the edges)."""
    freqs = np.asarray(freqs, dtype=np.float64)
    seconds = max(20.0, 8.0 / max(float(freqs.min()), 0.01))
    n = int(seconds * fs) | 1
    t = np.arange(n) / fs
    x = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + 0.3)
    y = preprocess(torch.from_numpy(x).to(dtype), fs, normalize=None, backend=backend, **settings)
    y = y.double().numpy()
    mid = slice(n // 4, 3 * n // 4)
    out = np.empty(len(freqs))
    for i, f in enumerate(freqs):
        basis = np.stack([np.sin(2 * np.pi * f * t[mid]), np.cos(2 * np.pi * f * t[mid]), np.ones(len(t[mid]))], 1)
        coef, *_ = np.linalg.lstsq(basis, y[i, mid], rcond=None)
        out[i] = 20 * np.log10(max(np.hypot(coef[0], coef[1]), 1e-12))
    return out


# ---------------------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------------------
def _per_lead(name: str, value, b: int, l: int, batched: bool, required: bool, default: float):
    """Broadcast a scalar, [L] or [B, L] gain/baseline to a flat float32 [B*L] tensor."""
    if value is None:
        if required:
            raise ECGKTError(f"{name} is required for int16 (ADC) input: pass the per-lead {name} "
                             "(adu/mV for gain, adu for baseline), e.g. from the WFDB header")
        return torch.full((b * l,), default, dtype=torch.float32)
    t = torch.as_tensor(value).detach().to("cpu", torch.float32)
    shape = tuple(t.shape)
    if t.dim() == 0:
        t = t.expand(b, l)
    elif shape == (l,):
        t = t.unsqueeze(0).expand(b, l)
    elif batched and shape == (b, l):
        pass
    else:
        want = f"a scalar, [{l}]" + (f" or [{b}, {l}]" if batched else "")
        raise ECGKTError(f"{name} has shape {list(shape)}; expected {want} (one value per lead)")
    if not torch.isfinite(t).all():
        raise ECGKTError(f"{name} has non-finite values")
    if name == "gain" and (t == 0).any():
        raise ECGKTError("gain has zeros; a gain is adu per mV and must be non-zero")
    return t.reshape(-1).contiguous()


def _run_triton(*args):
    try:
        from ..kernels.preprocess import preprocess_triton
    except ImportError as e:
        raise ECGKTError(f"backend='triton' needs the triton package ({e}); pip install 'ecgkt[triton]'") from None
    return preprocess_triton(*args)


def preprocess(signal, fs, *, highpass=0.5, lowpass=100.0, notch=60.0, target_fs=None, normalize="zscore",
               gain=None, baseline=None, backend="auto", return_info=False):
    """Preprocess ECGs in one fused pass (see the module docstring for the exact steps).

    Args:
      signal: [B, L, T] batch or [L, T] record; float16/bfloat16/float32/float64 in mV, or int16 ADC units.
      fs: sampling rate in Hz.
      highpass: high-pass (baseline wander) corner in Hz, or None.
      lowpass: low-pass corner in Hz, or None (skipped when >= 0.45*fs).
      notch: mains notch in Hz (50 or 60), or None (skipped when >= fs/2).
      target_fs: resample to this rate (polyphase, as scipy.signal.resample_poly), or None.
      normalize: "zscore", "robust" (median / 1.4826 MAD) or None.
      gain, baseline: adu/mV and adu, scalar, [L] or [B, L]; gain is required for int16 input.
      backend: "auto" (the compiled kernel for the tensor's device), "cpu", "cuda", "triton"
        (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) or "reference" (float64 numpy/scipy).
      return_info: also return which leads were repaired and which were flat/all-invalid.

    Returns:
      float32 (float64 for float64 input) [B, L, T_out] / [L, T_out], T_out = ceil(T*target_fs/fs); or a
      PreprocessResult(signal, repaired, flat) when return_info. The output never requires grad.
    """
    if isinstance(signal, np.ndarray):
        signal = torch.from_numpy(signal)
    if not isinstance(signal, torch.Tensor):
        raise ECGKTError(f"signal must be a torch.Tensor or numpy array, got {type(signal).__name__}")
    if signal.dim() not in (2, 3):
        raise ECGKTError(f"signal has shape {list(signal.shape)}; expected [B, leads, T] or [leads, T]")
    if signal.dtype not in INPUT_DTYPES:
        raise ECGKTError(f"signal has dtype {signal.dtype}; expected float16/bfloat16/float32/float64 (mV) "
                         "or int16 (ADC units with gain and baseline)")
    if signal.shape[-1] < 1 or signal.shape[-2] < 1:
        raise ECGKTError(f"signal has shape {list(signal.shape)}; it needs at least one lead and one sample")
    if normalize not in NORMALIZE_CODES:
        raise ECGKTError(f"normalize={normalize!r}; expected 'zscore', 'robust' or None")
    if backend not in BACKENDS:
        raise ECGKTError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    key = (
        _check_rate("fs", fs, allow_none=False),
        _check_rate("highpass", highpass, allow_none=True),
        _check_rate("lowpass", lowpass, allow_none=True),
        _check_rate("notch", notch, allow_none=True),
        _check_rate("target_fs", target_fs, allow_none=True),
    )
    design = filter_design(*key)

    batched = signal.dim() == 3
    b, l, t = signal.shape if batched else (1, *signal.shape)
    is_int16 = signal.dtype == torch.int16
    g = _per_lead("gain", gain, b, l, batched, is_int16, 1.0)
    z = _per_lead("baseline", baseline, b, l, batched, False, 0.0)
    x = signal.detach().reshape(b * l, t).contiguous()
    device = x.device

    if backend == "auto":  # the dispatcher picks the kernel: compiled, else Triton (CUDA) or the reference (CPU)
        backend = "dispatch"
    if backend == "cuda" and device.type != "cuda":
        raise ECGKTError(f"backend='cuda' needs a CUDA tensor; signal is on {device}")
    if backend == "cpu" and device.type != "cpu":
        raise ECGKTError(f"backend='cpu' needs a CPU tensor; signal is on {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ECGKTError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
    if backend in ("cpu", "cuda") and not _extension.has_kernel("preprocess", backend.upper()):
        if _extension.available:  # loaded, but built without this device's kernel
            warnings.warn(f"ecgkt: ecgkt._C has no {backend.upper()} kernel for preprocess (built with "
                          f"CUDA={_extension.build_info.get('with_cuda')}); using the float64 reference",
                          RuntimeWarning, stacklevel=2)
            backend = "reference"
        else:
            backend = "dispatch"  # the registered fallback kernel (it warns once)

    sos, zi, fir = _design_tensors(key, str(device))
    args = (x, g.to(device), z.to(device), sos, zi, design.padlen, fir, design.up, design.down,
            NORMALIZE_CODES[normalize])
    if backend == "reference":
        out, flags = preprocess_reference(*args)
    elif backend == "triton":
        out, flags = _run_triton(*args)
    else:
        out, flags = torch.ops.ecgkt.preprocess(*args)

    shape = (b, l) if batched else (l,)
    out = out.reshape(*shape, out.shape[-1])
    if not return_info:
        return out
    flags = flags.reshape(shape)
    return PreprocessResult(out, (flags & 1).bool(), (flags & 2).bool())


class Preprocess(nn.Module):
    """``torch.ops.ecgkt.preprocess`` at one input rate ``fs``, as an nn.Module: the settings and the
    filter and resampling coefficients are fixed at construction (buffers), so it scripts
    (``torch.jit.script``) and exports (``torch.export``) into a graph with the model after it.

    ``forward(signal, gain=None, baseline=None)``: signal [..., T] int16 ADC units or float mV at ``fs``;
    gain (adu/mV, default 1) and baseline (adu, default 0) of the leads' shape [...]. Returns
    ``(out [..., T_out] float32 (float64 for float64 input), flags [...] int32)``, flags as in the op
    (bit 0 repaired, bit 1 flat or all-invalid). ``ecgkt.preprocess`` is the validating, any-rate face.
    """

    def __init__(self, fs: float, highpass=0.5, lowpass=100.0, notch=60.0, target_fs=None, normalize="zscore"):
        super().__init__()
        if normalize not in NORMALIZE_CODES:
            raise ECGKTError(f"normalize={normalize!r}; expected 'zscore', 'robust' or None")
        d = filter_design(fs, highpass, lowpass, notch, target_fs)
        sos, zi, fir = d.sos.reshape(-1, 6), d.zi.reshape(-1, 2), np.asarray(d.fir, dtype=np.float64)
        self.n_sections, self.n_taps = int(sos.shape[0]), int(fir.shape[0])
        # zero-size buffers break torch.export.save (its weight packing fails with "numel: integer
        # multiplication overflow"): keep at least one row and slice to the real size in forward
        self.register_buffer("sos", _padded(sos, (max(1, self.n_sections), 6)))
        self.register_buffer("zi", _padded(zi, (max(1, self.n_sections), 2)))
        self.register_buffer("fir", _padded(fir, (max(1, self.n_taps),)))
        self.padlen, self.up, self.down = int(d.padlen), int(d.up), int(d.down)
        self.normalize = int(NORMALIZE_CODES[normalize])
        self.fs = float(fs)

    def forward(self, signal: torch.Tensor, gain: Optional[torch.Tensor] = None,
                baseline: Optional[torch.Tensor] = None):
        lead_shape = signal.shape[:-1]
        x = signal.reshape(-1, signal.shape[-1])
        ones = torch.ones(x.shape[0], dtype=torch.float32, device=x.device)
        g = ones if gain is None else gain.reshape(-1).float()
        b = ones * 0 if baseline is None else baseline.reshape(-1).float()
        out, flags = torch.ops.ecgkt.preprocess(x, g, b, self.sos[: self.n_sections], self.zi[: self.n_sections],
                                                self.padlen, self.fir[: self.n_taps], self.up, self.down,
                                                self.normalize)
        return out.reshape(list(lead_shape) + [out.shape[-1]]), flags.reshape(lead_shape)

    def extra_repr(self) -> str:
        return f"fs={self.fs}, sections={self.n_sections}, up={self.up}, down={self.down}, normalize={self.normalize}"


def _padded(values: np.ndarray, shape) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float64)
    if values.size:
        out[tuple(slice(0, n) for n in values.shape)] = torch.from_numpy(np.ascontiguousarray(values, np.float64))
    return out


"""Filter design for ``ecgkt.preprocess``: the cascade of second-order sections, its steady state, the
odd-extension length and the polyphase resampling filter for one (fs, highpass, lowpass, notch, target_fs),
and the response the spec requires of it."""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch
from scipy import signal as sps

from ...errors import ECGKTError
from .spec import MAX_ORDER, NOTCH_BANDWIDTH_HZ


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

"""Vectorised beat model: ECG parameters -> 12-lead int16 records in MIMIC-IV-ECG layout.

Each wave (P, Q, R, S, R', ST plateau, T, U, J) is a Gaussian in time (the T wave has a slower
rise than fall) times a 3-D dipole in mV; lead ``l`` sees ``dot(LEAD_VECTORS[l], dipole)``.
Only the 8 independent leads (I, II, V1-V6) are rendered; III, aVR, aVF, aVL are derived exactly
(Einthoven/Goldberger) before quantisation, so they hold in the files to within one ADC unit.

All records of a chunk are rendered at once: for every sample we find the beat whose QRS onset
precedes it, and evaluate P of the next beat, QRS of the nearer beat, ST/T/U/J of the current beat.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FS = 500
N_SAMPLES = 5000
GAIN = 200.0  # adu per mV
INVALID = -32768
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
INDEPENDENT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _precordial(angle_deg: float, gain: float = 1.3) -> list[float]:
    a = np.deg2rad(angle_deg)
    return [gain * np.cos(a), gain * 0.2, gain * np.sin(a)]


# Lead vectors in the heart frame (x left, y inferior, z anterior); precordial leads sit closer.
LEAD_VECTORS = np.array(
    [[1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]]
    + [_precordial(a) for a in (120, 100, 80, 60, 30, 0)]
)

WAVES = ("p", "q", "r", "s", "rp", "st", "t", "u", "j")


def derive_leads(indep: np.ndarray) -> np.ndarray:
    """(..., 8 independent leads, T) -> (..., 12 leads in MIMIC order, T)."""
    i, ii = indep[..., 0, :], indep[..., 1, :]
    limb = np.stack([i, ii, ii - i, -(i + ii) / 2, ii - i / 2, i - ii / 2], axis=-2)
    return np.concatenate([limb, indep[..., 2:, :]], axis=-2)


def _beat_onsets(rng, p, duration_ms):
    """QRS onset times (n, K) in ms; beat 0 lies fully before the record starts."""
    rr = p["rr"]
    n = len(rr)
    k = int(np.ceil(duration_ms / rr.min())) + 4
    jitter = np.where(p["af"], 0.18, rng.uniform(0.02, 0.045, n))
    rrs = rr[:, None] * (1 + jitter[:, None] * rng.standard_normal((n, k)))
    rrs = np.maximum(rrs, np.minimum(rr[:, None], 280.0) * 0.75)
    start = -rrs[:, 0] - rng.uniform(0, 1, n) * rrs[:, 1]
    return start[:, None] + np.concatenate([np.zeros((n, 1)), np.cumsum(rrs[:, :-1], axis=1)], axis=1)


def _gauss(d, c, s):
    z = (d - c[:, None]) / s[:, None]
    return np.exp(-0.5 * z * z)


def render_clean(rng, p, n_samples=N_SAMPLES, fs=FS, onsets=None):
    """Noise-free independent leads (n, 8, T) in mV, and the QRS onset times used (ms)."""
    f32 = np.float32
    p = {k: (v.astype(f32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in p.items()}
    n = len(p["rr"])
    t = (np.arange(n_samples, dtype=f32) * (1000.0 / fs))[None, :]
    if onsets is None:
        onsets = _beat_onsets(rng, p, n_samples * 1000.0 / fs)
    onsets = onsets.astype(np.float64)
    k = onsets.shape[1]
    # per row: index of the last onset <= t (rows offset so one flat searchsorted does all rows)
    big = 1e7
    flat = (onsets + big * np.arange(n)[:, None]).ravel()
    j = np.searchsorted(flat, (t + big * np.arange(n)[:, None]).ravel(), side="right").reshape(n, -1) - 1
    j -= (k * np.arange(n))[:, None]
    j = np.clip(j, 0, k - 2)
    cur = np.take_along_axis(onsets, j, 1)
    nxt = np.take_along_axis(onsets, j + 1, 1)
    dq = (t - cur).astype(f32)  # since current beat's QRS onset (>= 0)
    dn = (t - nxt).astype(f32)  # relative to next beat's QRS onset (< 0)
    dqrs = np.where(dn > -60, dn, dq)

    basis = np.empty((n, len(WAVES), n_samples), f32)
    basis[:, 0] = _gauss(dn, p["p_c"], p["p_s"])
    for w, name in enumerate(("q", "r", "s", "rp"), start=1):
        basis[:, w] = _gauss(dqrs, p[f"{name}_c"], p[f"{name}_s"])
    # ST plateau: from the J point (QRS end) to the T peak, smooth edges
    j_pt, tpk = p["qrs"][:, None], p["t_peak"][:, None]
    rise = np.clip((dq - j_pt) / 4, -30, 30)
    fall = np.clip((tpk - dq) / (0.5 * p["t_su"][:, None]), -30, 30)
    basis[:, 5] = 1 / ((1 + np.exp(-rise)) * (1 + np.exp(-fall)))
    sig = np.where(dq < tpk, p["t_su"][:, None], p["t_sd"][:, None])
    z = (dq - tpk) / sig
    basis[:, 6] = np.exp(-0.5 * z * z)
    basis[:, 7] = _gauss(dq, p["u_c"], p["u_s"])
    basis[:, 8] = _gauss(dq, p["j_c"], p["j_s"])

    dip = np.stack([p[f"{w}_vec"] for w in WAVES], axis=1).astype(f32)  # (n, W, 3)
    amp = np.einsum("nwk,lk->nlw", dip, LEAD_VECTORS.astype(f32))  # (n, 8, W)
    sig8 = np.matmul(amp, basis)  # (n, 8, T)
    af = np.flatnonzero(p["af"])
    if len(af):  # fibrillatory waves (5-7 Hz, 0.03-0.08 mV) on the atrial vector
        f = rng.uniform(5, 7, len(af))[:, None]
        ph = np.cumsum(rng.normal(0, 0.15, (len(af), n_samples)), axis=1)
        fw = (rng.uniform(0.03, 0.08, len(af))[:, None] * np.sin(2 * np.pi * f * t / 1000 + ph)).astype(f32)
        avec = LEAD_VECTORS @ np.array([0.3, 0.6, 0.75])
        sig8[af] += avec[None, :, None].astype(f32) * fw[:, None, :]
    return sig8, onsets


_NOISE_BANK_SIZE = 1 << 20


def _noise_bank(seed: int) -> np.ndarray:
    """A fixed stretch of unit white noise; records take random windows of it (much cheaper than
    drawing 40,000 fresh normals per record, and just as white)."""
    return np.random.default_rng([seed, 104729]).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)


def add_noise(rng, sig8, cfg, boost=None, fs=FS, bank=None):
    """Baseline wander, EMG/white noise, respiration amplitude modulation and occasional mains hum.

    ``boost`` (n,) multiplies the noise of individual records (poor-quality recordings).
    """
    f32 = np.float32
    n, nl, T = sig8.shape
    t = (np.arange(T, dtype=f32) / f32(fs))[None, None, :]
    s = cfg.noise_scale * (np.ones((n, 1, 1)) if boost is None else np.asarray(boost, float)[:, None, None])
    two_pi = f32(2 * np.pi)

    def r32(lo, hi, shape):
        return rng.uniform(lo, hi, shape).astype(f32)

    out = sig8 * (1 + f32(0.05) * np.sin(two_pi * r32(0.2, 0.33, (n, 1, 1)) * t + r32(0, 6.3, (n, 1, 1))))
    for _ in range(2):  # baseline wander 0.1-0.5 Hz, 0.05-0.2 mV in total
        a = (rng.uniform(0.025, 0.1, (n, nl, 1)) * s).astype(f32)
        out += a * np.sin(two_pi * r32(0.1, 0.5, (n, nl, 1)) * t + r32(0, 6.3, (n, nl, 1)))
    if bank is None:
        bank = _noise_bank(0)
    windows = np.lib.stride_tricks.sliding_window_view(bank, T)
    starts = rng.integers(0, len(bank) - T, (n, nl))
    out += (rng.uniform(0.010, 0.030, (n, 1, 1)) * s).astype(f32) * windows[starts]  # EMG/white 10-30 uV
    hum = np.flatnonzero(rng.random(n) < cfg.p_mains)
    if len(hum):
        a = (rng.uniform(0.01, 0.05, (len(hum), nl, 1)) * s[hum]).astype(f32)
        out[hum] += a * np.sin(two_pi * f32(60) * t + r32(0, 6.3, (len(hum), nl, 1)))
    return out


def quantise(sig12: np.ndarray) -> np.ndarray:
    """mV -> int16 adu at 200 adu/mV; -32768 is reserved for invalid samples."""
    return np.clip(np.rint(sig12 * GAIN), -32767, 32767).astype(np.int16)


def add_artifacts(rng, adu, nan_run, flat):
    """Invalid (-32768) runs and flat (constant) leads in the records flagged, in place."""
    n, nl, T = adu.shape
    for i in np.flatnonzero(nan_run):
        length = int(rng.integers(25, 1500))
        start = int(rng.integers(0, T - length))
        leads = slice(None) if rng.random() < 0.5 else [int(rng.integers(0, nl))]
        adu[i, leads, start:start + length] = INVALID
    for i in np.flatnonzero(flat):
        lead = int(rng.integers(0, nl))
        adu[i, lead, :] = adu[i, lead, 0] if rng.random() < 0.5 else 0


def header_text(study_id: int, subject_id: int, when, adu: np.ndarray) -> str:
    """WFDB header in MIMIC-IV-ECG layout for one record; ``adu`` is (12, T) int16."""
    T = adu.shape[1]
    sums = adu.astype(np.int64).sum(axis=1) % 65536
    lines = [f"{study_id} 12 {FS} {T} {when:%H:%M:%S} {when:%d/%m/%Y}"]
    for lead, first, chk in zip(MIMIC_LEADS, adu[:, 0], sums):
        lines.append(f"{study_id}.dat 16 200.0(0)/mV 16 0 {int(first)} {int(chk)} 0 {lead}")
    lines.append(f"# <subject_id>: {subject_id}")
    return "\n".join(lines) + "\n"


def record_path(subject_id: int, study_id: int) -> str:
    """MIMIC path of a record, without extension, relative to the mimic-iv-ecg root."""
    return f"files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/{study_id}"


def write_record(root: Path, rel: str, header: str, adu: np.ndarray) -> None:
    """Write ``rel``.hea and ``rel``.dat (format 16: little-endian int16, samples interleaved)."""
    base = root / rel
    os.makedirs(base.parent, exist_ok=True)
    np.ascontiguousarray(adu.T).astype("<i2", copy=False).tofile(str(base) + ".dat")
    with open(str(base) + ".hea", "w", newline="\n") as f:
        f.write(header)


def template(p: dict, i: int, fs: int = FS, pre_ms: float = 400.0, post_ms: float = 900.0):
    """Noise-free single beat of record ``i``: (time ms from QRS onset, 12-lead signal (12, T) mV).

    Used to check that the machine measurements match the waveform (no neighbouring beats).
    """
    one = {k: (v[i:i + 1] if isinstance(v, np.ndarray) and v.shape[:1] == p["rr"].shape else v) for k, v in p.items()}
    one["rr"] = np.array([5000.0])
    one["af"] = np.zeros(1, bool)
    n = int((pre_ms + post_ms) * fs / 1000)
    onsets = np.array([[-10000.0, pre_ms, 20000.0, 30000.0]])
    sig8, _ = render_clean(np.random.default_rng(0), one, n_samples=n, fs=fs, onsets=onsets)
    t = np.arange(n) * 1000.0 / fs - pre_ms
    return t, derive_leads(sig8[0].astype(np.float64))

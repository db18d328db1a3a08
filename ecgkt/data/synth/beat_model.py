"""Vectorised beat model: beat-model parameters -> 12-lead int16 signals (written by ``mimic_ecg``).

Each wave (P, Q, R, S, R', ST plateau, T, U, J) is a Gaussian in time (the T wave has a slower
rise than fall) times a 3-D dipole in mV; lead ``l`` sees ``dot(LEAD_VECTORS[l], dipole)``.
Only the 8 independent leads (I, II, V1-V6) are rendered; III, aVR, aVF, aVL are derived exactly
(Einthoven/Goldberger) before quantisation, so they hold in the files to within one ADC unit.

All records of a chunk are rendered at once: for every sample we find the beat whose QRS onset
precedes it, and evaluate P of the next beat, QRS of the nearer beat, ST/T/U/J of the current beat.
"""
from __future__ import annotations

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


# 12 leads (MIMIC order) from the 8 independent ones (I, II, V1-V6): Einthoven and Goldberger.
DERIVE = np.zeros((8, 12))
DERIVE[0, 0] = DERIVE[1, 1] = 1  # I, II
DERIVE[:2, 2] = (-1, 1)  # III = II - I
DERIVE[:2, 3] = (-0.5, -0.5)  # aVR = -(I + II) / 2
DERIVE[:2, 4] = (-0.5, 1)  # aVF = II - I/2
DERIVE[:2, 5] = (1, -0.5)  # aVL = I - II/2
DERIVE[2:, 6:] = np.eye(6)  # V1-V6


def derive_leads(indep: np.ndarray) -> np.ndarray:
    """(..., 8 independent leads) -> (..., 12 leads in MIMIC order): leads on the last axis."""
    return indep @ DERIVE.astype(indep.dtype)


def _beat_onsets(rng, p, duration_ms):
    """QRS onset times (n, K) in ms (beat 0 lies fully before the record starts) and which beats
    are ventricular premature beats: early (55-70 % of the RR) with a compensatory pause."""
    rr = p["rr"]
    n = len(rr)
    k = int(np.ceil(duration_ms / rr.min())) + 4
    jitter = np.where(p["af"], 0.18, rng.uniform(0.02, 0.045, n))
    rrs = rr[:, None] * (1 + jitter[:, None] * rng.standard_normal((n, k)))
    rrs = np.maximum(rrs, np.minimum(rr[:, None], 280.0) * 0.75)
    start = -rrs[:, 0] - rng.uniform(0, 1, n) * rrs[:, 1]
    on = start[:, None] + np.concatenate([np.zeros((n, 1)), np.cumsum(rrs[:, :-1], axis=1)], axis=1)
    pvc = rng.random((n, k)) < np.asarray(p["pvc_rate"], float)[:, None]
    pvc[:, :2] = False
    pvc[:, 1:] &= ~pvc[:, :-1]  # never two in a row: the beat before a PVC is a normal one
    early = on[:, :-1] + rng.uniform(0.55, 0.7, (n, k - 1)) * (on[:, 1:] - on[:, :-1])
    on[:, 1:] = np.where(pvc[:, 1:], early, on[:, 1:])
    return on, pvc


def _gauss(d, c, s):
    z = (d - c[:, None]) / s[:, None]
    return np.exp(-0.5 * z * z)


# One beat is rendered once per record on the sample grid, in two parts that are then placed at
# every beat by indexing: AFTER covers [0, 1.2 s) from a QRS onset (QRS, ST, T, U, J waves) and
# BEFORE covers [-0.5 s, 0) (P wave and the first QRS tail). A sample sees AFTER of the beat that
# started last and BEFORE of the next one.
AFTER_MS, BEFORE_MS = 1200.0, 500.0


def _beat_parts(p, fs):
    """Per-record beat templates (n, 8, samples): the part after and the part before QRS onset."""
    f32 = np.float32
    dt = 1000.0 / fs
    da = (np.arange(int(AFTER_MS / dt), dtype=f32) * f32(dt))[None, :]
    db = (np.arange(-int(BEFORE_MS / dt), 0, dtype=f32) * f32(dt))[None, :]
    n = len(p["rr"])
    dip = np.stack([p[f"{w}_vec"] for w in WAVES], axis=1).astype(f32)  # (n, W, 3)
    amp = np.einsum("nwk,lk->nlw", dip, LEAD_VECTORS.astype(f32))  # (n, 8, W)
    after = np.zeros((n, len(WAVES) + 2, da.shape[1]), f32)
    before = np.zeros((n, len(WAVES), db.shape[1]), f32)
    before[:, 0] = _gauss(db, p["p_c"], p["p_s"])
    for w, name in enumerate(("q", "r", "s", "rp"), start=1):
        after[:, w] = _gauss(da, p[f"{name}_c"], p[f"{name}_s"])
        before[:, w] = _gauss(db, p[f"{name}_c"], p[f"{name}_s"])
    # ST plateau: from the J point (QRS end) to the T peak, smooth edges
    j_pt, tpk = p["qrs"][:, None], p["t_peak"][:, None]
    rise = np.clip((da - j_pt) / 4, -30, 30)
    fall = np.clip((tpk - da) / (0.5 * p["t_su"][:, None]), -30, 30)
    after[:, 5] = 1 / ((1 + np.exp(-rise)) * (1 + np.exp(-fall)))
    z = (da - tpk) / np.where(da < tpk, p["t_su"][:, None], p["t_sd"][:, None])
    after[:, 6] = np.exp(-0.5 * z * z)
    after[:, 7] = _gauss(da, p["u_c"], p["u_s"])
    after[:, 8] = _gauss(da, p["j_c"], p["j_s"])
    # ventricular premature beat: one broad QRS wave and a discordant T
    wide = p["pvc_qrs"]
    after[:, 9] = _gauss(da, 0.5 * wide, 0.25 * wide)
    z = (da - (wide + 190)[:, None]) / np.where(da < (wide + 190)[:, None], f32(75), f32(50))
    after[:, 10] = np.exp(-0.5 * z * z)
    normal = np.matmul(amp, after[:, :len(WAVES)])
    pvc_amp = np.einsum("nwk,lk->nlw", np.stack([p["pvc_vec"], p["pvc_t_vec"]], 1).astype(f32),
                        LEAD_VECTORS.astype(f32))
    return normal, np.matmul(pvc_amp, after[:, len(WAVES):]), np.matmul(amp, before[:, :len(WAVES)])


def render_clean(rng, p, n_samples=N_SAMPLES, fs=FS, onsets=None):
    """Noise-free independent leads (n, T, 8) in mV, the QRS onset times used (ms) and the number
    of ventricular premature beats starting inside each record.

    Beat onsets fall on the sample grid (ms values rounded to the sample period). Given
    ``onsets``, every beat is a normal one.
    """
    f32 = np.float32
    dt = 1000.0 / fs
    p = {k: (v.astype(f32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in p.items()}
    n = len(p["rr"])
    if onsets is None:
        onsets, pvc = _beat_onsets(rng, p, n_samples * dt)
    else:
        pvc = np.zeros(np.shape(onsets), bool)
    on = np.rint(np.asarray(onsets, np.float64) / dt).astype(np.int64)  # in samples
    onsets = on * dt
    k = on.shape[1]
    # count, per row and sample, the onsets at or before it: index of the current beat
    counts = np.zeros((n, n_samples + 1), np.int32)
    rows = np.repeat(np.arange(n), k)
    np.add.at(counts, (rows, np.clip(on.ravel(), 0, n_samples)), 1)
    j = np.clip(np.cumsum(counts[:, :n_samples], axis=1) - 1, 0, k - 2)
    t = np.arange(n_samples)[None, :]
    normal, ectopic, before = _beat_parts(p, fs)
    na, nb = normal.shape[2], before.shape[2]
    ia = t - np.take_along_axis(on, j, 1)  # samples since the current beat's onset (>= 0)
    ib = t - np.take_along_axis(on, j + 1, 1) + nb  # index into BEFORE of the next beat
    # templates as rows of 8 leads, a zero row after each record's template for out-of-window indices
    # (record, normal/ectopic) blocks of na + 1 rows; a P-less BEFORE for beats that are ectopic
    zero = np.zeros((n, 8, 1), f32)
    after = np.stack([np.concatenate([normal, zero], 2), np.concatenate([ectopic, zero], 2)], 1)
    after = after.transpose(0, 1, 3, 2).reshape(-1, 8)
    before = np.concatenate([before, zero], axis=2).transpose(0, 2, 1).reshape(-1, 8)
    kind = np.take_along_axis(pvc, j, 1).astype(np.int64)
    ia = np.where((ia >= 0) & (ia < na), ia, na) + (na + 1) * (2 * np.arange(n)[:, None] + kind)
    ib = np.where((ib >= 0) & (ib < nb) & ~np.take_along_axis(pvc, j + 1, 1), ib, nb)
    ib += (nb + 1) * np.arange(n)[:, None]
    sig8 = np.take(after, ia, axis=0)  # (n, T, 8)
    sig8 += np.take(before, ib, axis=0)
    af = np.flatnonzero(p["af"])
    if len(af):  # fibrillatory waves (5-7 Hz, 0.03-0.08 mV) on the atrial vector
        tt = (np.arange(n_samples) * dt)[None, :]
        f = rng.uniform(5, 7, len(af))[:, None]
        ph = np.cumsum(rng.normal(0, 0.15, (len(af), n_samples)), axis=1)
        fw = (rng.uniform(0.03, 0.08, len(af))[:, None] * np.sin(2 * np.pi * f * tt / 1000 + ph)).astype(f32)
        avec = LEAD_VECTORS @ np.array([0.3, 0.6, 0.75])
        sig8[af] += avec[None, None, :].astype(f32) * fw[:, :, None]
    n_pvc = (pvc & (on >= 0) & (on < n_samples)).sum(axis=1)
    return sig8, onsets, n_pvc


_NOISE_BANK_SIZE = 1 << 20


def _noise_bank(seed: int) -> np.ndarray:
    """A fixed stretch of unit white noise; records take random windows of it (much cheaper than
    drawing 40,000 fresh normals per record, and just as white)."""
    return np.random.default_rng([seed, 104729]).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)


def _sinusoid_draw(rng, n, nl, f_lo, f_hi, fs):
    """Frequencies (rad per sample) and phases (n, 1, 1, nl) of random-phase sinusoids, frequency
    uniform in [f_lo, f_hi] Hz."""
    f32 = np.float32
    w = (2 * np.pi * rng.uniform(f_lo, f_hi, (n, 1, 1, nl)) / fs).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, nl)).astype(f32)
    return w, phase


def _sinusoid_values(w, phase, amp, T, block=100):
    """The sinusoids (n, T, nl) of ``_sinusoid_draw``, amplitude ``amp`` (n, 1, nl). Computed per
    block of samples with sin(a + b) = sin a cos b + cos a sin b: a few multiplications per sample
    instead of a sine. Every value depends on its own record only, so any subset of records can be
    computed alone."""
    f32 = np.float32
    n, nl = w.shape[0], w.shape[3]
    nb = -(-T // block)
    a = w * (np.arange(nb, dtype=f32) * block)[None, :, None, None] + phase  # block starts
    b = w * np.arange(block, dtype=f32)[None, None, :, None]  # within a block
    amp = amp.astype(f32)[:, :, None, :]
    out = np.multiply(amp * np.sin(a), np.cos(b))
    out += np.multiply(amp * np.cos(a), np.sin(b))  # in place: one temporary less, same rounding
    return out.reshape(n, nb * block, nl)[:, :T]


NOISE_BLOCK = 8  # records whose noise is summed together: the temporaries stay in cache


def add_noise(rng, sig8, cfg, boost=None, fs=FS, bank=None):
    """Baseline wander, EMG/white noise, respiration amplitude modulation and occasional mains hum
    on (n, T, 8) signals. ``boost`` (n,) multiplies the noise of individual records (poor quality).

    Every random number is drawn first, for all records, in a fixed order; the sums are then formed
    a few records at a time (each sample sees the same operations in the same order either way).
    """
    f32 = np.float32
    n, T, nl = sig8.shape
    s = cfg.noise_scale * (np.ones((n, 1, 1)) if boost is None else np.asarray(boost, float)[:, None, None])
    resp = (*_sinusoid_draw(rng, n, 1, 0.2, 0.33, fs), np.full((n, 1, 1), 0.05))  # respiration
    wander = []
    for _ in range(2):  # baseline wander 0.1-0.5 Hz, 0.05-0.2 mV in total
        amp = rng.uniform(0.025, 0.1, (n, 1, nl)) * s
        wander.append((*_sinusoid_draw(rng, n, nl, 0.1, 0.5, fs), amp))
    if bank is None:
        bank = _noise_bank(0)
    rows = bank[: len(bank) // nl * nl].reshape(-1, nl)
    starts = rng.integers(0, len(rows) - T, (n, 1))
    level = (rng.uniform(0.010, 0.030, (n, 1, 1)) * s).astype(f32)  # EMG/white 10-30 uV
    hum = np.flatnonzero(rng.random(n) < cfg.p_mains)
    if len(hum):  # 60 Hz mains
        amp = rng.uniform(0.01, 0.05, (len(hum), 1, nl)) * s[hum]
        mains = (*_sinusoid_draw(rng, len(hum), nl, 60, 60, fs), amp)
    hum_at = np.full(n, -1)
    hum_at[hum] = np.arange(len(hum))
    out = np.empty(sig8.shape, f32)
    for i0 in range(0, n, NOISE_BLOCK):
        sl = slice(i0, min(i0 + NOISE_BLOCK, n))
        o = sig8[sl] * (1 + _sinusoid_values(*(x[sl] for x in resp), T))
        for part in wander:
            o += _sinusoid_values(*(x[sl] for x in part), T)
        for i in range(sl.start, sl.stop):  # a window of the bank per record: a view, no gather
            o[i - i0] += level[i] * rows[starts[i, 0]:starts[i, 0] + T]
        local = np.flatnonzero(hum_at[sl] >= 0)
        if len(local):
            o[local] += _sinusoid_values(*(x[hum_at[sl][local]] for x in mains), T)
        out[sl] = o
    return out


def quantise(sig12: np.ndarray) -> np.ndarray:
    """mV -> int16 adu at 200 adu/mV (in place on the float input); -32768 stays reserved for
    invalid samples."""
    np.multiply(sig12, GAIN, out=sig12)
    np.rint(sig12, out=sig12)
    np.clip(sig12, -32767, 32767, out=sig12)
    return sig12.astype(np.int16)


def add_artifacts(rng, adu, nan_run, flat):
    """Invalid (-32768) runs and flat (constant) leads in the flagged records of (n, T, 12), in place."""
    n, T, nl = adu.shape
    for i in np.flatnonzero(nan_run):
        length = int(rng.integers(25, 1500))
        start = int(rng.integers(0, T - length))
        leads = slice(None) if rng.random() < 0.5 else int(rng.integers(0, nl))
        adu[i, start:start + length, leads] = INVALID
    for i in np.flatnonzero(flat):
        lead = int(rng.integers(0, nl))
        adu[i, :, lead] = adu[i, 0, lead] if rng.random() < 0.5 else 0



def template(p: dict, i: int, fs: int = FS, pre_ms: float = 400.0, post_ms: float = 900.0):
    """Noise-free single beat of record ``i``: (time ms from QRS onset, 12-lead signal (12, T) mV).

    Used to check that the machine measurements match the waveform (no neighbouring beats).
    """
    one = {k: (v[i:i + 1] if isinstance(v, np.ndarray) and v.shape[:1] == p["rr"].shape else v) for k, v in p.items()}
    one["rr"] = np.array([5000.0])
    one["af"] = np.zeros(1, bool)
    n = int((pre_ms + post_ms) * fs / 1000)
    onsets = np.array([[-10000.0, pre_ms, 20000.0, 30000.0]])
    sig8, _, _ = render_clean(np.random.default_rng(0), one, n_samples=n, fs=fs, onsets=onsets)
    t = np.arange(n) * 1000.0 / fs - pre_ms
    return t, derive_leads(sig8[0].astype(np.float64)).T

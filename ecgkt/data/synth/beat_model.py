"""Vectorised beat model: beat-model parameters -> 12-lead int16 signals (written by ``mimic_ecg``).

Each wave (P, Q, R, S, R', ST plateau, T, U, J) is a Gaussian in time (the T wave has a slower
rise than fall) times a 3-D dipole in mV; lead ``l`` sees ``dot(LEAD_VECTORS[l], dipole)``.
Only the 8 independent leads (I, II, V1-V6) are rendered; III, aVR, aVF, aVL are derived exactly
(Einthoven/Goldberger) before quantisation, so they hold in the files to within one ADC unit.

Every random number of a chunk of records is drawn first; the records are then rendered a few at a
time (the temporaries stay in cache): each record's beat templates are copied at its beat onsets,
then noise is added and the leads derived and quantised.
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


# One beat is rendered once per record on the sample grid, in two parts that are then copied at
# every beat: AFTER covers [0, 1.2 s) from a QRS onset (QRS, ST, T, U, J waves) and
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


def _float32(p: dict) -> dict:
    """The parameters as the beat model computes with them: every float array in float32."""
    return {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in p.items()}


def beat_times(rng, p, n_samples=N_SAMPLES, fs=FS):
    """QRS onsets (n, K) on the sample grid (ms values rounded to the sample period) and which beats
    are ventricular premature beats. These are the first draws of a chunk's stream, so the beat
    statistics of a chunk are known without rendering it."""
    dt = 1000.0 / fs
    onsets, pvc = _beat_onsets(rng, _float32(p), n_samples * dt)
    return np.rint(onsets / dt).astype(np.int64), pvc


def _place_beats(parts, on, pvc, n_samples):
    """Noise-free independent leads (n, 8, n_samples) in mV from the beat templates ``parts`` of
    ``_beat_parts``: a sample sees AFTER (normal or ectopic) of the beat that started last, but at
    most of beat K - 2, plus BEFORE of the next beat unless that one is ectopic (no P wave). The
    templates are copied per beat, as slices."""
    normal, ectopic, before = parts
    na, nb = normal.shape[2], before.shape[2]
    k = on.shape[1]
    out = np.zeros((len(on), 8, n_samples), np.float32)
    for dst, after, pvc_after, pre, o, v in zip(out, normal, ectopic, before, on.tolist(), pvc.tolist()):
        j = 0
        while j < k - 2 and o[j + 1] <= 0:  # beats that end before the record starts
            j += 1
        for j in range(j, k - 1):
            s0 = max(o[j], 0)
            if s0 >= n_samples:
                break
            s1 = n_samples if j == k - 2 else min(o[j + 1], n_samples)
            end = min(s1, o[j] + na)
            if end > s0:
                dst[:, s0:end] = (pvc_after if v[j] else after)[:, s0 - o[j]:end - o[j]]
            start, end = max(s0, o[j + 1] - nb), min(s1, o[j + 1])
            if end > start and not v[j + 1]:
                dst[:, start:end] += pre[:, start - o[j + 1] + nb:end - o[j + 1] + nb]
    return out


def _fibrillation(rng, n, rows, n_samples, fs):
    """Fibrillatory waves (5-7 Hz, 0.03-0.08 mV) of n AF records, float32 (len(rows), n_samples):
    the values of ``rows`` only, the random numbers of all n."""
    tt = (np.arange(n_samples) * (1000.0 / fs))[None, :]
    f = rng.uniform(5, 7, n)[rows, None]
    steps = rng.normal(0, 0.15, (n, n_samples))[rows]
    amp = rng.uniform(0.03, 0.08, n)[rows, None]
    return (amp * np.sin(2 * np.pi * f * tt / 1000 + np.cumsum(steps, axis=1))).astype(np.float32)


ATRIAL_LEADS = (LEAD_VECTORS @ np.array([0.3, 0.6, 0.75])).astype(np.float32)  # the fibrillatory vector


_NOISE_BANK_SIZE = 1 << 20


def _noise_bank(seed: int) -> np.ndarray:
    """A fixed stretch of unit white noise as 8 lead rows (sample t of lead l is value 8 t + l);
    records take random windows of it (much cheaper than drawing 40,000 fresh normals per record,
    and just as white)."""
    bank = np.random.default_rng([seed, 104729]).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    return np.ascontiguousarray(bank.reshape(-1, 8).T)


def _sinusoid_draw(rng, n, nl, f_lo, f_hi, fs):
    """Frequencies (rad per sample) and phases (n, nl) of random-phase sinusoids, frequency
    uniform in [f_lo, f_hi] Hz."""
    f32 = np.float32
    w = (2 * np.pi * rng.uniform(f_lo, f_hi, (n, nl)) / fs).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, (n, nl)).astype(f32)
    return w, phase


def _sinusoid_factors(w, phase, amp, T, block=100):
    """The sinusoids of ``_sinusoid_draw`` with amplitude ``amp`` (n, nl), per block of samples:
    sample i * block + j is amp sin(a_i + b_j) = (amp sin a_i) cos b_j + (amp cos a_i) sin b_j,
    a few multiplications per sample instead of a sine. Returns those four factors; every value
    depends on its own record only, so any subset of records can be computed alone."""
    f32 = np.float32
    nb = -(-T // block)
    w = w[:, :, None, None]
    a = w * (np.arange(nb, dtype=f32) * block)[:, None] + phase[:, :, None, None]  # block starts
    b = w * np.arange(block, dtype=f32)  # within a block
    amp = amp.astype(f32)[:, :, None, None]
    return amp * np.sin(a), np.cos(b), amp * np.cos(a), np.sin(b)


def _sinusoid_values(factors, T):
    """The sinusoids (n, nl, T) from the factors of ``_sinusoid_factors``."""
    sin_a, cos_b, cos_a, sin_b = factors
    out = np.multiply(sin_a, cos_b)
    out += np.multiply(cos_a, sin_b)  # in place: one temporary less, same rounding
    n, nl, nb, block = out.shape
    return out.reshape(n, nl, nb * block)[:, :, :T]


def _noise_draws(rng, n, cfg, boost, T, fs, nl=8):
    """Every random number of the noise of n records, in a fixed order: respiration, baseline
    wander, white-noise windows and levels, mains hum."""
    s = cfg.noise_scale * (np.ones((n, 1)) if boost is None else np.asarray(boost, float)[:, None])
    d = {"resp": (*_sinusoid_draw(rng, n, 1, 0.2, 0.33, fs), np.full((n, 1), 0.05)), "wander": []}
    for _ in range(2):  # baseline wander 0.1-0.5 Hz, 0.05-0.2 mV in total
        amp = rng.uniform(0.025, 0.1, (n, nl)) * s
        d["wander"].append((*_sinusoid_draw(rng, n, nl, 0.1, 0.5, fs), amp))
    d["starts"] = rng.integers(0, _NOISE_BANK_SIZE // nl - T, n)
    d["level"] = (rng.uniform(0.010, 0.030, n) * s[:, 0]).astype(np.float32)  # EMG/white 10-30 uV
    d["hum"] = np.flatnonzero(rng.random(n) < cfg.p_mains)
    if len(d["hum"]):  # 60 Hz mains
        amp = rng.uniform(0.01, 0.05, (len(d["hum"]), nl)) * s[d["hum"]]
        d["mains"] = (*_sinusoid_draw(rng, len(d["hum"]), nl, 60, 60, fs), amp)
    return d


def _noise_part(d, part, T):
    """The noise of the records ``part`` (a slice of those of ``_noise_draws``), indexed from its
    first record: the sinusoid factors computed once for the part, not per block."""
    hum = np.flatnonzero((d["hum"] >= part.start) & (d["hum"] < part.stop))
    return {"resp": _sinusoid_factors(*(v[part] for v in d["resp"]), T),
            "wander": [_sinusoid_factors(*(v[part] for v in w), T) for w in d["wander"]],
            "starts": d["starts"][part], "level": d["level"][part],
            "mains": {int(d["hum"][h]) - part.start: _sinusoid_factors(*(v[h:h + 1] for v in d["mains"]), T)
                      for h in hum}}


def _add_noise(x, d, sl, bank):
    """Respiration amplitude modulation, baseline wander, EMG/white noise and mains hum (``d`` of
    ``_noise_part``) of the records ``sl`` on their leads ``x`` (b, 8, T), in place."""
    T = x.shape[2]
    x *= 1 + _sinusoid_values([f[sl] for f in d["resp"]], T)
    for factors in d["wander"]:
        x += _sinusoid_values([f[sl] for f in factors], T)
    for r, (start, level) in enumerate(zip(d["starts"][sl], d["level"][sl])):
        x[r] += level * bank[:, start:start + T]  # a window of the bank: a view, no gather
    for r in range(len(x)):
        if sl.start + r in d["mains"]:
            x[r] += _sinusoid_values(d["mains"][sl.start + r], T)[0]


def quantise(sig12: np.ndarray) -> np.ndarray:
    """mV -> int16 adu at 200 adu/mV (in place on the float input); -32768 stays reserved for
    invalid samples."""
    np.multiply(sig12, GAIN, out=sig12)
    np.rint(sig12, out=sig12)
    np.clip(sig12, -32767, 32767, out=sig12)
    return sig12.astype(np.int16)


def _artifact_draws(rng, nan_run, flat, T, first=0, nl=12):
    """Invalid (-32768) runs {record: (start, length, leads)} and flat leads {record: (lead, keep the
    first value, else 0)} of the flagged records, counted from record ``first``."""
    runs, flats = {}, {}
    for i in np.flatnonzero(nan_run).tolist():
        length = int(rng.integers(25, 1500))
        start = int(rng.integers(0, T - length))
        runs[i - first] = (start, length, slice(None) if rng.random() < 0.5 else int(rng.integers(0, nl)))
    for i in np.flatnonzero(flat).tolist():
        flats[i - first] = (int(rng.integers(0, nl)), rng.random() < 0.5)
    return runs, flats


RENDER_BLOCK = 2  # records whose samples are computed together: the temporaries stay in the L2 cache


def render(rng, p, cfg, boost, nan_run, flat, bank, part: slice):
    """Records ``part`` of a chunk whose beat-model parameters are ``p``: yields, per block of up to
    RENDER_BLOCK records, (index of its first record, int16 frames (b, T, 12) in the .dat sample
    order, per-lead checksums (b, 12)). ``boost`` (n,) multiplies the noise of individual records
    (poor quality); ``nan_run`` and ``flat`` (n,) flag the records with invalid runs or a flat lead.

    Every random number of the chunk is drawn first, in a fixed order (beats, fibrillatory waves,
    noise, artefacts), and every value depends on its own record only, so the bytes of a record do
    not depend on which part of its chunk is rendered with it.
    """
    T, fs = N_SAMPLES, FS
    n = len(p["rr"])
    on, pvc = beat_times(rng, p, T, fs)
    p = _float32(p)
    # the draws are for the whole chunk; from here on, rows count from the first record of the part
    af = np.flatnonzero(p["af"])
    mine = (af >= part.start) & (af < part.stop)
    fib = dict(zip((af[mine] - part.start).tolist(), _fibrillation(rng, len(af), mine, T, fs))) if len(af) else {}
    noise = _noise_part(_noise_draws(rng, n, cfg, boost, T, fs), part, T)
    runs, flats = _artifact_draws(rng, nan_run, flat, T, first=part.start)
    on, pvc = on[part], pvc[part]
    parts = _beat_parts({k: (v[part] if isinstance(v, np.ndarray) and len(v) == n else v) for k, v in p.items()}, fs)
    for i0 in range(0, len(on), RENDER_BLOCK):
        sl = slice(i0, min(i0 + RENDER_BLOCK, len(on)))
        x = _place_beats([t[sl] for t in parts], on[sl], pvc[sl], T)
        for r in range(len(x)):
            if i0 + r in fib:
                x[r] += ATRIAL_LEADS[:, None] * fib[i0 + r]
        _add_noise(x, noise, sl, bank)
        # the matrix product reads the leads transposed and writes frames (b, T, 12), the .dat sample
        # order; each derived lead is a sum of two exact products, so the layout cannot change a bit
        frames = quantise(derive_leads(x.transpose(0, 2, 1)))
        for r in range(len(frames)):
            if i0 + r in runs:
                start, length, leads = runs[i0 + r]
                frames[r, start:start + length, leads] = INVALID
            if i0 + r in flats:
                lead, keep = flats[i0 + r]
                frames[r, :, lead] = frames[r, 0, lead] if keep else 0
        # per-lead sums: int32 is exact (|sum| <= 5000 * 32768 < 2**31) and einsum reduces it fastest
        checksums = np.einsum("ntl->nl", frames.astype(np.int32)) % 65536
        yield part.start + i0, frames, checksums


def template(p: dict, i: int, fs: int = FS, pre_ms: float = 400.0, post_ms: float = 900.0):
    """Noise-free single beat of record ``i``: (time ms from QRS onset, 12-lead signal (12, T) mV).

    Used to check that the machine measurements match the waveform (no neighbouring beats).
    """
    one = {k: (v[i:i + 1] if isinstance(v, np.ndarray) and v.shape[:1] == p["rr"].shape else v) for k, v in p.items()}
    one["rr"] = np.array([5000.0])
    one["af"] = np.zeros(1, bool)
    n = int((pre_ms + post_ms) * fs / 1000)
    on = np.rint(np.array([[-10000.0, pre_ms, 20000.0, 30000.0]]) / (1000.0 / fs)).astype(np.int64)
    sig8 = _place_beats(_beat_parts(_float32(one), fs), on, np.zeros(on.shape, bool), n)
    t = np.arange(n) * 1000.0 / fs - pre_ms
    return t, derive_leads(sig8[0].T.astype(np.float64)).T

"""Measured intervals for the report: heart rate, PR, QRS, QT and QTc (Bazett) from a 12-lead ECG.

A small delineator of ecgkt's own, on the median beat as ECG carts measure:
1. beats: peaks of the QRS-band (8-25 Hz) velocity summed over leads, 40 ms smoothing, at least 250 ms
   apart and at least 40 % of the median peak;
2. the median beat of every lead, aligned on those peaks (-400 ms .. +700 ms, at most 0.9 RR after);
3. QRS onset and end: where the spatial velocity of the median beat stays below 12 % of its QRS peak for
   16 ms; T end: the tangent at the T wave's steepest descent crossing the baseline, on the lead with the
   largest T (all relative to the PR segment); P onset: where the spatial magnitude before the QRS falls
   to 10 % of the P wave's height above the TP segment.
No P wave (atrial fibrillation, flutter or an irregular rhythm with RR coefficient of variation over
0.15) gives no PR. A value that cannot be measured is None. Times in ms, HR in beats per minute.
"""
from __future__ import annotations

import numpy as np

QRS_THRESHOLD = 0.12  # of the QRS peak velocity; 0.12 offsets the widening by the report's 40 Hz low-pass
FIELDS = ("hr_bpm", "rr_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms")


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    n = max(1, int(n))
    return np.convolve(x, np.ones(n) / n, mode="same")


def beat_positions(signal_mv: np.ndarray, fs: float) -> np.ndarray:
    """Sample positions of the beats of ``signal_mv`` [leads, samples] (or one lead [samples])."""
    from scipy.signal import butter, find_peaks, sosfiltfilt

    x = np.nan_to_num(np.atleast_2d(np.asarray(signal_mv, dtype=np.float64)))
    if x.shape[1] < fs:
        return np.zeros(0, dtype=int)
    band = sosfiltfilt(butter(2, [8.0, min(25.0, 0.45 * fs)], btype="band", fs=fs, output="sos"), x, axis=1)
    vel = _smooth(np.abs(np.diff(band, axis=1)).sum(0) * fs, 0.04 * fs)  # QRS energy; T and P waves are slower
    if not np.isfinite(vel).all() or vel.max() <= 0:
        return np.zeros(0, dtype=int)
    peaks, props = find_peaks(vel, height=0.3 * np.percentile(vel, 99.5), distance=int(0.25 * fs))
    if len(peaks):
        peaks = peaks[props["peak_heights"] >= 0.4 * np.median(props["peak_heights"])]
    return peaks


def _median_beat(x: np.ndarray, peaks: np.ndarray, fs: float, before: int, after: int) -> np.ndarray | None:
    segs = [x[:, p - before:p + after] for p in peaks if p - before >= 0 and p + after <= x.shape[1]]
    if len(segs) < 2:
        return None
    return np.median(np.stack(segs), axis=0)


def measure_intervals(signal_mv: np.ndarray, fs: float) -> dict:
    """{hr_bpm, rr_ms, pr_ms, qrs_ms, qt_ms, qtc_ms} of ``signal_mv`` [leads, samples] in mV (one lead
    works too, less precisely); values that cannot be measured are None."""
    out = dict.fromkeys(FIELDS)
    x = np.nan_to_num(np.atleast_2d(np.asarray(signal_mv, dtype=np.float64)))
    peaks = beat_positions(x, fs)
    if len(peaks) < 3:
        return out
    rr = np.diff(peaks) / fs
    rr_med = float(np.median(rr))
    out["rr_ms"] = round(1000 * rr_med, 1)
    out["hr_bpm"] = round(60.0 / rr_med, 1)
    irregular = float(np.std(rr) / np.mean(rr)) > 0.15
    before, after = int(0.4 * fs), int(min(0.7, 0.9 * rr_med) * fs)
    beat = _median_beat(x, peaks, fs, before, after)
    if beat is None:
        return out
    dt_ms = 1000.0 / fs
    vel = _smooth(np.sqrt((np.diff(beat, axis=1) ** 2).sum(0)), 0.008 * fs)
    centre = before
    lo, hi = max(centre - int(0.08 * fs), 0), min(centre + int(0.08 * fs), vel.size)
    pk = lo + int(np.argmax(vel[lo:hi]))
    thr = QRS_THRESHOLD * vel[lo:hi].max()
    quiet = max(2, int(round(0.016 * fs)))
    on = pk
    while on > quiet and (vel[on - quiet:on] > thr).any():
        on -= 1
    end = pk
    while end < vel.size - quiet and (vel[end:end + quiet] > thr).any():
        end += 1
    out["qrs_ms"] = round((end - on) * dt_ms, 1)
    beat = beat - beat[:, max(on - quiet, 0):on + 1].mean(axis=1, keepdims=True)  # PR segment as baseline
    prev_t_end = 0.0
    # T end: tangent at the steepest descent after the T peak, on the lead with the largest T
    t0 = end + int(0.04 * fs)
    if t0 < beat.shape[1] - int(0.1 * fs):
        seg = beat[:, t0:]
        lead = int(np.argmax(np.abs(seg).max(1)))
        y = beat[lead] * np.sign(seg[lead][np.argmax(np.abs(seg[lead]))])
        tp = t0 + int(np.argmax(y[t0:]))
        slope = np.diff(y) * fs / 1000.0  # mV per ms
        stop = min(tp + int(0.2 * fs), slope.size)
        if stop > tp + 1:
            k = tp + int(np.argmin(slope[tp:stop]))
            if slope[k] < 0:
                t_end = k - y[k] / slope[k] / dt_ms  # in samples
                # a T end at the window's edge (a fast rhythm) or beyond 90 % of the RR is no T end
                if end < t_end < beat.shape[1] - 0.02 * fs and (t_end - on) < 0.9 * rr_med * fs:
                    out["qt_ms"] = round(float(t_end - on) * dt_ms, 1)
                    prev_t_end = t_end - rr_med * fs  # the previous beat's T end, in this beat's samples
                    out["qtc_ms"] = round(float(out["qt_ms"] / np.sqrt(rr_med)), 1)
    # P onset: the P wave's peak in the 300 ms before the QRS (after the previous T), then back to 10 % of it
    if not irregular:
        mag = _smooth(np.sqrt((beat ** 2).sum(0)), 0.02 * fs)
        p_lo, p_hi = max(on - int(0.3 * fs), 0, int(prev_t_end + 0.02 * fs)), on - int(0.04 * fs)
        if p_hi > p_lo + 2:
            ppk = p_lo + int(np.argmax(mag[p_lo:p_hi]))
            peak = mag[ppk]
            floor = float(mag[p_lo:ppk + 1].min())  # the TP segment before the P wave
            if peak - floor > 0.03:  # mV: a visible P wave
                level = floor + 0.1 * (peak - floor)
                p_on = ppk
                while p_on > p_lo and mag[p_on] > level:
                    p_on -= 1
                out["pr_ms"] = round((on - p_on) * dt_ms, 1)
    return out

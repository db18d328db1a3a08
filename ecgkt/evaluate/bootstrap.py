"""Bootstrap confidence intervals over test ECGs; paired (same resamples) when comparing models."""
from __future__ import annotations

import numpy as np


def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def interval(values, ci: float = 0.95) -> list:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [float("nan"), float("nan")]
    a = (1 - ci) / 2
    return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]


def bootstrap_statistic(statistic, idx: np.ndarray) -> np.ndarray:
    """statistic(indices) evaluated on each row of idx (one bootstrap resample per row)."""
    return np.array([statistic(rows) for rows in idx], dtype=np.float64)


def counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Resample index rows -> how often each item is drawn per resample [n_boot, n] (float64)."""
    c = np.zeros((idx.shape[0], n), dtype=np.float64)
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    np.add.at(c, (rows, idx.ravel()), 1.0)
    return c


def auroc_per_resample(y, score, weights: np.ndarray) -> np.ndarray:
    """AUROC of one label in every resample at once: the Mann-Whitney statistic with each item weighted by
    how often the resample drew it (ties count one half). weights: [n_boot, n] -> [n_boot] (NaN where a
    resample holds a single class). Equals metrics.auroc on the resampled arrays."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], weights[:, order]
    group = np.r_[0, np.cumsum(s[1:] != s[:-1])]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]  # equal scores are contiguous once sorted
    neg_w = np.add.reduceat(w * (~y), starts, axis=1)
    before = np.cumsum(neg_w, axis=1) - neg_w
    credit = before[:, group[y]] + 0.5 * neg_w[:, group[y]]
    num = np.sum(w[:, y] * credit, axis=1)
    w_pos, w_neg = w[:, y].sum(1), w[:, ~y].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / (w_pos * w_neg)
    out[(w_pos == 0) | (w_neg == 0)] = np.nan
    return out

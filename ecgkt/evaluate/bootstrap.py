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

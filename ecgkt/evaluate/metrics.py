"""Classification metrics in numpy (exact, tie-aware, fast enough to bootstrap):
AUROC (Mann-Whitney), average precision (sklearn's definition), macro averages over labels with both
classes present, and F1 at thresholds tuned on the validation split."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(y, score) -> float:
    """Area under the ROC curve; NaN when y holds a single class."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y, score) -> float:
    """Area under the precision-recall curve as sum (R_k - R_{k-1}) P_k over distinct thresholds."""
    y = np.asarray(y).astype(bool)
    if not y.any() or y.all():
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    s, t = np.asarray(score, dtype=np.float64)[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_label(metric, y, score, mask=None) -> np.ndarray:
    y, score = np.asarray(y), np.asarray(score)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        keep = slice(None) if mask is None else np.asarray(mask[:, j]).astype(bool)
        out[j] = metric(y[keep, j], score[keep, j])
    return out


def _nanmean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def macro_auroc(y, score, mask=None) -> float:
    return _nanmean(per_label(auroc, y, score, mask))


def masked_macro_auroc(y, score, mask) -> float:
    return macro_auroc(y, score, mask)


def macro_auprc(y, score, mask=None) -> float:
    return _nanmean(per_label(average_precision, y, score, mask))


def f1_score(y, pred) -> float:
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    tp = np.sum(y & pred)
    denom = 2 * tp + np.sum(~y & pred) + np.sum(y & ~pred)
    return float(2 * tp / denom) if denom else float("nan")


def tune_thresholds(y_val, p_val) -> np.ndarray:
    """Per label, the probability threshold that maximises F1 on the validation split."""
    y_val, p_val = np.asarray(y_val).astype(bool), np.asarray(p_val, dtype=np.float64)
    thresholds = np.full(y_val.shape[1], 0.5)
    for j in range(y_val.shape[1]):
        if not y_val[:, j].any():
            continue
        order = np.argsort(-p_val[:, j], kind="stable")
        s, t = p_val[order, j], y_val[order, j]
        tp = np.cumsum(t)
        fp = np.arange(1, t.size + 1) - tp
        f1 = 2 * tp / (2 * tp + fp + (t.sum() - tp))
        last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # only thresholds between distinct scores
        k = last[np.argmax(f1[last])]
        thresholds[j] = s[k]
    return thresholds


def macro_f1(y, p, thresholds) -> float:
    y, p = np.asarray(y), np.asarray(p)
    return _nanmean([f1_score(y[:, j], p[:, j] >= thresholds[j]) for j in range(y.shape[1]) if y[:, j].any()])

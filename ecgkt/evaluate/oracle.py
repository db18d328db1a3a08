"""The ECG-oracle ceiling: what a perfect ECG reader could reach on the synthetic data.

The generator writes the true beat-model parameters of every study (synth_truth.csv.gz, next to the
MIMIC-shaped roots). A linear probe on the parameters that the waveform shows (never the latent lab values)
gives, per label group, the best an ECG-only model of that form can do on the same folds and labels; gap
bridged against it says how much of what is reachable ecgkt reaches. Real data has no such file: no ceiling."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

TRUTH_FILE = "synth_truth.csv.gz"

# Used only when the generator package offers no `oracle_features` (older generator versions).
_FALLBACK_COLUMNS = ("hr", "af", "pr", "p_dur", "qrs", "qt", "qtc", "lvh", "strain", "st_elev", "pathologic_q",
                     "pvc_rate", "pvc_qrs", "t_amp", "u_amp", "st_mag", "volt", "hypothermia_ecg", "rbbb", "lbbb",
                     "avb1")


def truth_path(store_dir) -> Path | None:
    """The generator's truth table of the data a store was prepared from, when there is one."""
    if store_dir is None:
        return None
    manifest = Path(store_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    settings = json.loads(manifest.read_text()).get("settings", {})
    if isinstance(settings, str):
        try:
            settings = ast.literal_eval(settings)
        except (ValueError, SyntaxError):
            return None
    for key in ("clinical_root", "ecg_root", "data_dir"):
        root = settings.get(key) if isinstance(settings, dict) else None
        if root:
            for cand in (Path(root).parent / TRUTH_FILE, Path(root) / TRUTH_FILE):
                if cand.is_file():
                    return cand
    return None


def rule_scales(store_dir) -> dict | None:
    """The generator's rule scales the data was made with (synth_summary.json beside the truth table)."""
    path = truth_path(store_dir)
    summary = path.parent / "synth_summary.json" if path is not None else None
    if summary is None or not summary.is_file():
        return None
    try:
        rules = json.loads(summary.read_text()).get("rules")
    except (OSError, ValueError):
        return None
    return rules if isinstance(rules, dict) else None


def _select(truth):
    try:
        from ..data.synth import oracle_features
    except ImportError:
        oracle_features = None
    if oracle_features is not None:
        ids, x, names = oracle_features(truth)
        return np.asarray(ids, dtype=np.int64), np.asarray(x, dtype=np.float64), list(names)
    cols = [c for c in _FALLBACK_COLUMNS if c in truth.columns]
    x = truth[cols].astype(np.float64).to_numpy()
    return truth["study_id"].to_numpy(dtype=np.int64), x, cols


def features(ctx) -> dict | None:
    """Oracle features of every train/val/test item of a context, or None without a truth table."""
    path = truth_path(ctx.store_dir)
    if path is None:
        return None
    import pandas as pd

    ids, x, _ = _select(pd.read_csv(path))
    index = {int(s): i for i, s in enumerate(ids)}
    out = {}
    for split in ("train", "val", "test"):
        studies = np.asarray(getattr(ctx, split).study_id, dtype=np.int64)
        pos = np.array([index.get(int(s), -1) for s in studies])
        feats = np.full((len(studies), x.shape[1]), np.nan)
        feats[pos >= 0] = x[pos[pos >= 0]]
        out[split] = feats
    fill = np.nanmean(out["train"], axis=0)
    fill = np.where(np.isfinite(fill), fill, 0.0)
    for split in out:
        bad = ~np.isfinite(out[split])
        out[split][bad] = np.broadcast_to(fill, out[split].shape)[bad]
    return out


# train-fold quantiles at which each parameter gets a hinge max(0, z - knot): thresholds and saturation
HINGE_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
# fixed random tanh units over all parameters: interactions, at a cost that does not grow as F^2 (the
# generator has 180 oracle parameters: all pairwise products would be 16,110 columns)
RANDOM_UNITS = 256
RANDOM_SEED = 0


def nonlinear_features(feats: dict | None) -> dict | None:
    """A fixed non-linear basis of the oracle features, for the non-linear ceiling (``oracle_nl``): the
    standardised parameters, hinges at train-fold quantiles (an additive piecewise-linear model: the
    generator's rules have thresholds, e.g. a QTc cut-off) and RANDOM_UNITS seeded random tanh units
    (interactions). Every statistic comes from the train fold and the random weights from a fixed seed;
    the same L2-chosen-on-validation linear probe then fits it, so the ceiling stays deterministic and on
    the same folds. Constant and repeated columns are dropped."""
    if feats is None:
        return None
    train = feats["train"]
    mean, std = train.mean(0), train.std(0)
    keep = std > 1e-9
    mean, std = mean[keep], std[keep]
    knots = np.quantile((train[:, keep] - mean) / std, HINGE_QUANTILES, axis=0)  # [K, F]
    rng = np.random.default_rng(RANDOM_SEED)
    n = int(keep.sum())
    w = rng.normal(size=(n, RANDOM_UNITS)) / np.sqrt(max(n, 1)) * 2.0
    b = rng.uniform(-1.0, 1.0, size=RANDOM_UNITS)

    def basis(x):
        z = (x[:, keep] - mean) / std
        return np.concatenate([z, *[np.maximum(z - k, 0.0) for k in knots], np.tanh(z @ w + b)], axis=1)

    out = {split: basis(x) for split, x in feats.items()}
    t = out["train"]
    varied = t.std(0) > 1e-9
    _, first = np.unique(np.round(t[:, varied], 12), axis=1, return_index=True)
    cols = np.flatnonzero(varied)[np.sort(first)]
    return {split: x[:, cols] for split, x in out.items()}

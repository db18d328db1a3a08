"""Plots of a run: training curves, ROC curves per diagnosis, per-lab AUROC bars (PNG, matplotlib Agg)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .report import MODEL_TITLES, NEGATIVE_CONTROL_LABS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(histories: dict, path) -> Path:
    """histories: stage name -> list of per-epoch records (train_loss and a val_* metric)."""
    plt = _plt()
    names = [n for n, h in histories.items() if h]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        h = histories[name]
        ep = [r["epoch"] for r in h]
        ax.plot(ep, [r["train_loss"] for r in h], "o-", label="train loss")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        val_keys = [k for k in h[0] if k.startswith("val_")]
        if val_keys:
            ax2 = ax.twinx()
            ax2.plot(ep, [r[val_keys[0]] for r in h], "s--", color="tab:orange", label=val_keys[0])
            ax2.set_ylabel(val_keys[0], color="tab:orange")
        ax.set_ylabel("train loss")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _roc(y, s):
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(s), kind="stable")
    t = y[order]
    tpr = np.r_[0, np.cumsum(t) / max(t.sum(), 1)]
    fpr = np.r_[0, np.cumsum(~t) / max((~t).sum(), 1)]
    return fpr, tpr


def roc_curves(y, probs: dict, names, path) -> Path:
    """One panel per diagnosis, one curve per model (test fold)."""
    plt = _plt()
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes.flat, names)):
        for m, p in probs.items():
            if y[:, j].min() == y[:, j].max():
                continue
            fpr, tpr = _roc(y[:, j], p[:, j])
            ax.plot(fpr, tpr, label=MODEL_TITLES.get(m, m), lw=1.2)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def lab_bars(labs: dict, path) -> Path:
    """labs: source -> lab_results dict; bars of per-test AUROC, the negative control hatched."""
    plt = _plt()
    sources = list(labs)
    tests = list(labs[sources[0]]["per_test_auroc"])
    x = np.arange(len(tests))
    w = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(tests) + 2), 4))
    for i, s in enumerate(sources):
        vals = [np.nan if labs[s]["per_test_auroc"][t] is None else labs[s]["per_test_auroc"][t] for t in tests]
        bars = ax.bar(x + i * w - 0.4 + w / 2, vals, w, label=s)
        for b, t in zip(bars, tests):
            if t in NEGATIVE_CONTROL_LABS:
                b.set_hatch("//")
    ax.axhline(0.5, color="grey", ls=":")
    ax.set_xticks(x)
    ax.set_xticklabels([t + (" (neg. control)" if t in NEGATIVE_CONTROL_LABS else "") for t in tests],
                       rotation=30, ha="right")
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("test AUROC (mean of low/high)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)

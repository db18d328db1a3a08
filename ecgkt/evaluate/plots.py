"""Plots of a run (PNG, matplotlib Agg): training curves, the summary figure (macro AUROC per model with
its CI), ROC curves per label group (ICD chapter, machine-report statements), per-lab AUROC bars.
Labels are shown by name (ecgkt.labels), never by key alone."""
from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np

from .report import MODEL_TITLES, NEGATIVE_CONTROL_LABS

TOO_FEW = "n/a \u2014 too few positives"
METRIC_TITLES = {"macro_auroc": "macro AUROC", "macro_auprc": "macro AUPRC", "macro_f1": "macro F1"}


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


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def summary_figure(results: dict, path, metric: str = "macro_auroc") -> Path:
    """The headline figure: test ``metric`` (results["dx"][model][metric] = {"value", "ci": [lo, hi]}) per
    model as a point with its bootstrap CI, signal-only as the reference line; the lab macro AUROC of the
    ECG-only model beside it when results["labs"] has it."""
    plt = _plt()
    dx = results.get("dx", {})
    models = [m for m in MODEL_TITLES if m in dx] + [m for m in dx if m not in MODEL_TITLES]
    labs = {s: v["macro_auroc"] for s, v in (results.get("labs") or {}).items() if isinstance(v, dict)
            and isinstance(v.get("macro_auroc"), dict)}
    ncols = 2 if labs else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 0.55 * max(len(models), len(labs), 2) + 1.6),
                             squeeze=False)
    ci_pct = int(round(100 * float(results.get("ci", 0.95))))

    def panel(ax, names, entries, title, unit):
        y = np.arange(len(names))[::-1]
        for yi, entry in zip(y, entries):
            v, (lo, hi) = entry.get("value"), (entry.get("ci") or [None, None])
            if not _finite(v):
                ax.text(0.5, yi, TOO_FEW, va="center", ha="center", color="#777777", fontsize=9)
                continue
            if _finite(lo) and _finite(hi):
                ax.errorbar(v, yi, xerr=[[v - lo], [hi - v]], fmt="o", color="tab:blue", capsize=4, lw=1.5)
                ax.text(hi + 0.005, yi, f"{v:.3f} [{lo:.3f}, {hi:.3f}]", va="center", fontsize=9)
            else:
                ax.plot(v, yi, "o", color="tab:blue")
                ax.text(v + 0.005, yi, f"{v:.3f}", va="center", fontsize=9)
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.axvline(0.5, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(f"{unit} (point: test fold; bar: {ci_pct} % bootstrap CI)")
        vals = [x for e in entries for x in [e.get("value"), *(e.get("ci") or [])] if _finite(x)]
        lo = min(vals + [0.5]) - 0.02
        hi = max(vals + [0.5]) + 0.12
        ax.set_xlim(max(0.0, lo), min(1.05, hi))
        ax.set_ylim(-0.7, len(names) - 0.3)

    entries = [dx[m].get(metric, {}) for m in models]
    panel(axes[0, 0], [MODEL_TITLES.get(m, m) for m in models], entries,
          f"Diagnoses: test {METRIC_TITLES.get(metric, metric)} ({results.get('n_test', '?')} ECGs)",
          METRIC_TITLES.get(metric, metric).split()[-1])
    ref = dx.get("signal_only", {}).get(metric, {}).get("value")
    if _finite(ref):
        axes[0, 0].axvline(ref, color="tab:red", ls="--", lw=1, label="signal-only")
        axes[0, 0].legend(fontsize=8, loc="lower left")
    if labs:
        panel(axes[0, 1], [MODEL_TITLES.get(s, s) for s in labs], list(labs.values()),
              "Lab abnormalities from the ECG: test macro AUROC", "AUROC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _roc(y, s):
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(s), kind="stable")
    t = y[order]
    tpr = np.r_[0, np.cumsum(t) / max(t.sum(), 1)]
    fpr = np.r_[0, np.cumsum(~t) / max((~t).sum(), 1)]
    return fpr, tpr


def _auc(fpr, tpr) -> float:
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def _roc_panels(fig_axes, y, probs: dict, idx, names, labels):
    for ax, j in zip(fig_axes, idx):
        yj = y[:, j]
        if yj.min() == yj.max():
            ax.text(0.5, 0.5, TOO_FEW, ha="center", va="center", fontsize=9, color="#777777",
                    transform=ax.transAxes)
        else:
            for m, p in probs.items():
                fpr, tpr = _roc(yj, p[:, j])
                ax.plot(fpr, tpr, lw=1.2, label=f"{MODEL_TITLES.get(m, m).split(' (')[0]} {_auc(fpr, tpr):.2f}")
            ax.legend(fontsize=6.5, loc="lower right", title=f"AUROC, {int(yj.sum())} positives",
                      title_fontsize=6.5)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title("\n".join(textwrap.wrap(labels.name(names[j]), 34)[:2]), fontsize=8.5)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.tick_params(labelsize=7)


def roc_curves(y, probs: dict, names, path) -> Path:
    """One panel per diagnosis, one curve per model (test fold), titled with the label's name."""
    from ..labels import Labels

    plt = _plt()
    y = np.asarray(y)
    labels = Labels.for_names(list(names))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    _roc_panels(axes.flat, y, probs, range(len(names)), list(names), labels)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "group"


def roc_curves_by_group(y, probs: dict, names, out_dir, group=None, prefix: str = "roc_") -> list[Path]:
    """One figure per label group instead of one figure of every label: ``group(label key) -> group name``
    (default: ecgkt.labels.group_of, the ICD-10-CM chapter or "Machine-report statements"). Each figure
    (``out_dir/<prefix><group>.png``) has a panel per label of the group, titled by name, one curve per
    model with its AUROC; a label without positives says so. Returns the paths, largest group first."""
    from ..labels import Labels, group_of

    plt = _plt()
    group = group or group_of
    y = np.asarray(y)
    names = list(names)
    labels = Labels.for_names(names)
    groups: dict = {}
    for j, n in enumerate(names):
        groups.setdefault(group(n), []).append(j)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for gname, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        cols = min(4, len(idx))
        rows = math.ceil(len(idx) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 3.3 * rows + 0.6), squeeze=False)
        _roc_panels(axes.flat, y, probs, idx, names, labels)
        for ax in list(axes.flat)[len(idx):]:
            ax.axis("off")
        fig.suptitle(f"{gname}: ROC curves on the test fold ({len(idx)} label{'s' if len(idx) > 1 else ''})",
                     fontsize=11)
        fig.tight_layout()
        path = out_dir / f"{prefix}{_slug(gname)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def lab_bars(labs: dict, path) -> Path:
    """labs: source -> lab_results dict; bars of per-test AUROC, the negative control hatched, and
    "n/a - too few positives" where a test had too few positives for an AUROC."""
    from ..labels import LAB_NAMES

    plt = _plt()
    sources = list(labs)
    tests = list(labs[sources[0]]["per_test_auroc"])
    x = np.arange(len(tests))
    w = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(tests) + 2), 4.4))
    for i, s in enumerate(sources):
        vals = [labs[s]["per_test_auroc"].get(t) for t in tests]
        xs = x + i * w - 0.4 + w / 2
        bars = ax.bar(xs, [v if _finite(v) else 0.0 for v in vals], w, label=MODEL_TITLES.get(s, s))
        for b, t, v, xi in zip(bars, tests, vals, xs):
            if t in NEGATIVE_CONTROL_LABS:
                b.set_hatch("//")
            if not _finite(v):
                ax.text(xi, 0.32, TOO_FEW, rotation=90, ha="center", va="bottom", fontsize=7, color="#666666")
    ax.axhline(0.5, color="grey", ls=":")
    ax.set_xticks(x)
    ax.set_xticklabels([LAB_NAMES.get(t, t[:1].upper() + t[1:]) + (" (neg. control)" if t in NEGATIVE_CONTROL_LABS
                                                                   else "") for t in tests],
                       rotation=30, ha="right")
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("test AUROC (mean of low/high)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)

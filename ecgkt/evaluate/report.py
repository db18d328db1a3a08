"""From saved test/validation predictions to the results: metrics with bootstrap CIs, the paired comparison
ecgkt - signal-only, gap bridged, the permuted control, lab AUROCs; written as results.json + results.md."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..io import jsonable
from . import metrics
from .bootstrap import bootstrap_statistic, interval, resamples

if TYPE_CHECKING:
    from ..train.config import Config

DX_MODELS = ("signal_only", "ecgkt", "multimodal", "control")
MODEL_TITLES = dict(signal_only="signal-only", ecgkt="ecgkt (ECG only)", multimodal="multimodal (ECG + tabular)",
                    control="control (permuted stage 1)")
NEGATIVE_CONTROL_LABS = ("sodium",)  # no effect on the ECG: its AUROC should stay near 0.5


def _test_of(label: str) -> str:
    for suffix in ("_low", "_high"):
        if label.endswith(suffix):
            return label[: -len(suffix)]
    return label


def lab_results(y, p, mask, label_names, boot_idx, ci, min_positives: int = 10) -> dict:
    """AUROC per lab label and per test (mean of its low/high labels); the macro AUROC averages the labels
    with at least `min_positives` positives and negatives among the test ECGs where the lab is known."""
    per = metrics.per_label(metrics.auroc, y, p, mask)
    pos = ((y > 0.5) & mask).sum(0)
    neg = ((y <= 0.5) & mask).sum(0)
    ok = (pos >= min_positives) & (neg >= min_positives)
    tests = {}
    for name, v, good in zip(label_names, per, ok):
        tests.setdefault(_test_of(name), []).append(v if good else np.nan)
    per_test = {t: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for t, v in tests.items()}
    keep = ok & np.array([_test_of(n) not in NEGATIVE_CONTROL_LABS for n in label_names], dtype=bool)
    yk, pk, mk = y[:, ok], p[:, ok], mask[:, ok]
    macro = metrics.macro_auroc(yk, pk, mk) if ok.any() else float("nan")
    boot = bootstrap_statistic(lambda r: metrics.macro_auroc(yk[r], pk[r], mk[r]), boot_idx) if ok.any() else []
    out = dict(macro_auroc=dict(value=macro, ci=interval(boot, ci)),
               macro_auroc_without_negative_controls=metrics.macro_auroc(y[:, keep], p[:, keep], mask[:, keep])
               if keep.any() else float("nan"),
               labels_in_macro=[n for n, g in zip(label_names, ok) if g], min_positives=int(min_positives),
               per_label_auroc={n: float(v) for n, v in zip(label_names, per)}, per_test_auroc=per_test,
               positives={n: int(v) for n, v in zip(label_names, pos)})
    for t in NEGATIVE_CONTROL_LABS:
        if t in per_test:
            out[f"negative_control_{t}"] = per_test[t]
    return out


def compute(preds: dict, dx_names, lab_label_names, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
            lab_min_positives: int = 10) -> dict:
    """preds: dict with val_dx_y, test_dx_y, test_lab_y, test_lab_mask, and per model `val_<m>`, `test_<m>`
    diagnosis probabilities; lab probabilities as `test_lab_<source>`."""
    y_val, y = np.asarray(preds["val_dx_y"]), np.asarray(preds["test_dx_y"])
    models = [m for m in DX_MODELS if f"test_{m}" in preds]
    idx = resamples(len(y), n_boot, seed)
    res = dict(n_test=int(len(y)), n_val=int(len(y_val)), bootstrap=n_boot, ci=ci, dx_names=list(dx_names),
               dx_positives_test={n: int(v) for n, v in zip(dx_names, (y > 0.5).sum(0))}, dx={})
    boot_auroc = {}
    for m in models:
        p, pv = np.asarray(preds[f"test_{m}"]), np.asarray(preds[f"val_{m}"])
        thr = metrics.tune_thresholds(y_val, pv)
        boot_auroc[m] = bootstrap_statistic(lambda r: metrics.macro_auroc(y[r], p[r]), idx)
        boot_auprc = bootstrap_statistic(lambda r: metrics.macro_auprc(y[r], p[r]), idx)
        res["dx"][m] = dict(
            macro_auroc=dict(value=metrics.macro_auroc(y, p), ci=interval(boot_auroc[m], ci)),
            macro_auprc=dict(value=metrics.macro_auprc(y, p), ci=interval(boot_auprc, ci)),
            macro_f1=dict(value=metrics.macro_f1(y, p, thr),
                          ci=interval(bootstrap_statistic(lambda r: metrics.macro_f1(y[r], p[r], thr), idx), ci)),
            val_macro_auroc=metrics.macro_auroc(y_val, pv),
            thresholds={n: float(t) for n, t in zip(dx_names, thr)},
            per_label_auroc={n: float(v) for n, v in zip(dx_names, metrics.per_label(metrics.auroc, y, p))},
        )
    comp = {}
    if "signal_only" in boot_auroc:
        base = res["dx"]["signal_only"]["macro_auroc"]["value"]
        for m in ("ecgkt", "multimodal", "control"):
            if m in boot_auroc:
                d = boot_auroc[m] - boot_auroc["signal_only"]
                comp[f"{m}_minus_signal_only"] = dict(
                    diff=res["dx"][m]["macro_auroc"]["value"] - base, ci=interval(d, ci),
                    p_not_positive=float(np.mean(d[np.isfinite(d)] <= 0)) if np.isfinite(d).any() else float("nan"))
        if "multimodal" in boot_auroc:
            gap = boot_auroc["multimodal"] - boot_auroc["signal_only"]
            full = res["dx"]["multimodal"]["macro_auroc"]["value"] - base
            for m in ("ecgkt", "control"):
                if m in boot_auroc:
                    g = (boot_auroc[m] - boot_auroc["signal_only"]) / np.where(gap > 0, gap, np.nan)
                    comp[f"gap_bridged_{m}"] = dict(
                        value=(res["dx"][m]["macro_auroc"]["value"] - base) / full if full > 0 else float("nan"),
                        ci=interval(g, ci))
    res["comparisons"] = comp
    res["labs"] = {}
    for key in preds:
        if key.startswith("test_lab_") and key not in ("test_lab_y", "test_lab_mask"):
            res["labs"][key[len("test_lab_"):]] = lab_results(
                np.asarray(preds["test_lab_y"]), np.asarray(preds[key]), np.asarray(preds["test_lab_mask"]).astype(bool),
                lab_label_names, idx, ci, lab_min_positives)
    res["verdict"] = verdict(res)
    return res


def compute_run(preds: dict, dx_names, lab_label_names, cfg: Config, extra: dict | None = None) -> dict:
    """The results of a pipeline run: the paper's comparison (100 % labels) on the headline subset and the
    protocol's eligible labels, the label-efficiency analysis, lab summaries, the pre-registered hypotheses
    and the protocol itself. Strict JSON: non-finite numbers become null (ecgkt.io.jsonable)."""
    from . import label_efficiency as le_mod

    e, p = cfg.evaluate, cfg.protocol
    extra = extra or {}
    dx_names = list(dx_names)
    headline = np.asarray(extra.get("test_ed", np.ones(len(preds["test_dx_y"]), dtype=bool)), dtype=bool)
    if p.headline_subset != "ed" or headline.sum() == 0:
        headline = np.ones(len(preds["test_dx_y"]), dtype=bool)
    le = None
    if extra.get("sweep"):
        le = le_mod.analyse(extra["sweep"], np.asarray(preds["test_dx_y"]), headline, dx_names,
                            np.asarray(extra["y_all"]), bool(extra.get("synthetic")), int(p.min_test_positives),
                            int(e.bootstrap), float(e.ci), int(e.seed), extra.get("rule_scales"))
        keep = [dx_names.index(n) for n in le["labels"]["eligible"]
                if le["labels"]["groups"] and n not in le["labels"]["groups"].get("symptom", [])]
    else:
        keep = list(range(len(dx_names)))
    paper = {k: v for k, v in preds.items() if not (k.startswith("test_") and not k.startswith("test_lab"))
             and not k.startswith("val_")}
    for k, v in preds.items():
        if k.startswith("val_") and not k.startswith("val_lab"):
            paper[k] = np.asarray(v)[:, keep]
        elif k.startswith("test_") and not k.startswith("test_lab"):
            paper[k] = np.asarray(v)[headline][:, keep]
    res = compute(paper, [dx_names[j] for j in keep], lab_label_names, int(e.bootstrap), float(e.ci),
                  int(e.seed), int(e.lab_min_positives))
    res["seed"] = cfg.seed
    res["config"] = cfg.recorded()
    res["protocol"] = dict(document="docs/protocol.md", claim=le_mod.CLAIM, hypotheses=le_mod.HYPOTHESES,
                           fractions=p.fractions, replicates=p.replicates, replicates_full=p.replicates_full,
                           pretrain_seeds=p.pretrain_seeds,
                           finetune_arms=p.finetune_arms, probe_arms=p.probe_arms,
                           headline_subset=p.headline_subset, dx_cohort=p.dx_cohort,
                           min_test_positives=p.min_test_positives,
                           finetune_budget=dict(min_steps=cfg.finetune.min_steps,
                                                epochs=cfg.finetune.epochs, rounds=cfg.finetune.rounds,
                                                batch_size=cfg.finetune.batch_size),
                           probe_l2=p.probe_l2)
    if le is not None:
        t = np.asarray(preds["test_lab_y"])
        sources = {arm: v for arm, v in extra.get("lab_probes", {}).items()}
        if "test_lab_ecgkt" in preds:
            sources["final model"] = preds["test_lab_ecgkt"]
        tests = sorted({n.rsplit("_", 1)[0] for n in lab_label_names})
        labs = (le_mod.lab_summary(sources, t, np.asarray(preds["test_lab_mask"]), list(lab_label_names),
                                   le_mod.lab_test_groups(tests, bool(extra.get("synthetic")), extra.get("rule_scales")),
                                   int(e.lab_min_positives)) if sources and len(lab_label_names) else None)
        res["label_efficiency"] = le["rows"]
        res["label_efficiency_comparisons"] = le["comparisons"]
        res["ceilings"] = le["ceilings"]
        res["label_metadata"] = le["labels"]
        res["lab_probes"] = labs
        res["hypotheses"] = le_mod.hypotheses(le, labs)
    return jsonable(res)


def verdict(res: dict) -> list[str]:
    """Plain-language reading of the numbers, including when the control says the gain is not transfer."""
    c, lines = res["comparisons"], []
    e = c.get("ecgkt_minus_signal_only")
    if e:
        lo, hi = e["ci"]
        if lo > 0:
            lines.append(f"ecgkt beats signal-only on diagnosis macro AUROC by {e['diff']:+.4f} "
                         f"(paired bootstrap 95% CI {lo:+.4f} to {hi:+.4f}, above 0).")
        else:
            lines.append(f"ecgkt does NOT significantly beat signal-only: difference {e['diff']:+.4f} "
                         f"(paired bootstrap 95% CI {lo:+.4f} to {hi:+.4f} includes or is below 0).")
    mm = c.get("multimodal_minus_signal_only")
    if mm and mm["diff"] <= 0:
        lines.append("The multimodal model does not beat signal-only, so gap bridged is undefined.")
    g, gc = c.get("gap_bridged_ecgkt"), c.get("gap_bridged_control")
    if g and np.isfinite(g["value"]):
        lines.append(f"Gap bridged by ecgkt: {100 * g['value']:.1f}% (target >= 30%).")
    if gc and np.isfinite(gc["value"]):
        lines.append(f"Gap bridged by the permuted control: {100 * gc['value']:.1f}% (should be <= 5%).")
    cc = c.get("control_minus_signal_only")
    if cc and e:
        control_gain = cc["ci"][0] > 0 or (gc is not None and gc["value"] > 0.05)
        if e["ci"][0] > 0 and control_gain:
            lines.append("WARNING: the gain survives the permuted-tabular control (pre-training with the "
                         "pairing destroyed also helps): the gain is NOT knowledge transfer from the clinical "
                         "data; it comes from pre-training itself.")
        elif e["ci"][0] > 0:
            lines.append("The permuted control does not reproduce the gain: the gain depends on the true "
                         "ECG-tabular pairing, i.e. it is knowledge transfer.")
        elif control_gain:
            lines.append("The permuted control improves on signal-only although the pairing is destroyed: "
                         "pre-training itself (not the clinical knowledge) changes the result.")
    labs = res.get("labs", {}).get("ecgkt")
    if labs:
        na = labs.get("negative_control_sodium")
        lines.append(f"Lab-abnormality macro AUROC (final model): {labs['macro_auroc']['value']:.3f}"
                     + (f"; sodium (negative control) {na:.3f}" if na is not None else "") + ".")
    return lines


def _n(v, spec=".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _fmt(m: dict) -> str:
    return f"{_n(m['value'])} [{_n(m['ci'][0])}, {_n(m['ci'][1])}]"


def markdown(res: dict, lab_label_names=None) -> str:
    lines = ["# ecgkt results", "",
             f"Test ECGs: {res['n_test']} (validation: {res['n_val']}); {res['bootstrap']} bootstrap resamples, "
             f"{int(100 * res['ci'])}% CIs.", "",
             "## Diagnosis (test fold)", "",
             "| model | macro AUROC | macro AUPRC | macro F1 (val-tuned thresholds) |", "|---|---|---|---|"]
    for m, r in res["dx"].items():
        lines.append(f"| {MODEL_TITLES.get(m, m)} | {_fmt(r['macro_auroc'])} | {_fmt(r['macro_auprc'])} | "
                     f"{_fmt(r['macro_f1'])} |")
    c = res["comparisons"]
    if c:
        lines += ["", "| comparison | value | 95% CI |", "|---|---|---|"]
        for k, v in c.items():
            val = v.get("diff", v.get("value"))
            pct = k.startswith("gap_bridged")
            f = (lambda x: "n/a" if x is None else f"{100 * x:.1f}%") if pct else (lambda x: _n(x, "+.4f"))
            lines.append(f"| {k.replace('_', ' ')} | {f(val)} | {f(v['ci'][0])} to {f(v['ci'][1])} |")
    from ..labels import Labels

    names = res["dx_names"]
    labels = Labels.for_names(names)
    lines += ["", "### Per-label AUROC", "", "| label | key | test positives | " + " | ".join(res["dx"]) + " |",
              "|---" * (3 + len(res["dx"])) + "|"]
    for n in names:
        lines.append(f"| {labels.name(n)} | `{n}` | {res['dx_positives_test'][n]} | "
                     + " | ".join(_n(res['dx'][m]['per_label_auroc'][n]) for m in res["dx"]) + " |")
    if res.get("labs"):
        srcs = list(res["labs"])
        tests = list(next(iter(res["labs"].values()))["per_test_auroc"])
        lines += ["", "## Lab abnormalities from the ECG (the explanation), AUROC per test", "",
                  "| test | " + " | ".join(srcs) + " |", "|---" * (1 + len(srcs)) + "|"]
        for t in tests:
            if all(_n(res["labs"][s]["per_test_auroc"][t]) == "n/a" for s in srcs):
                continue
            mark = " (negative control)" if t in NEGATIVE_CONTROL_LABS else ""
            lines.append(f"| {t}{mark} | " + " | ".join(_n(res['labs'][s]['per_test_auroc'][t]) for s in srcs) + " |")
        lines.append(f"| **macro ({len(res['labs'][srcs[0]]['labels_in_macro'])} labels)** | " + " | ".join(_fmt(res["labs"][s]["macro_auroc"]) for s in srcs) + " |")
        lines.append("| macro without negative controls | "
                     + " | ".join(_n(res['labs'][s]['macro_auroc_without_negative_controls']) for s in srcs) + " |")
    if res.get("label_efficiency"):
        from . import label_efficiency as le_mod

        le = dict(rows=res["label_efficiency"], comparisons=res["label_efficiency_comparisons"],
                  ceilings=res["ceilings"], labels=res["label_metadata"])
        lines += [""] + le_mod.markdown(le, res["hypotheses"], res.get("lab_probes"), res.get("protocol"))
    lines += ["", "## Reading (the paper's comparison, 100 % labels)", ""] + [f"- {v}" for v in res["verdict"]]
    return "\n".join(lines) + "\n"


def table(res: dict) -> str:
    """The compact table printed at the end of `ecgkt pipeline`."""
    rows = [f"{'model':<30} {'diagnosis macro AUROC [95% CI]':<34} {'macro AUPRC':<12}"]
    for m, r in res["dx"].items():
        a = r["macro_auroc"]
        rows.append(f"{MODEL_TITLES.get(m, m):<30} {_fmt(a):<34} {_n(r['macro_auprc']['value'])}")
    c = res["comparisons"]
    for k in ("ecgkt_minus_signal_only", "control_minus_signal_only"):
        if k in c:
            rows.append(f"{k.replace('_', ' '):<30} {_n(c[k]['diff'], '+.4f')} [{_n(c[k]['ci'][0], '+.4f')}, "
                        f"{_n(c[k]['ci'][1], '+.4f')}]")
    for k in ("gap_bridged_ecgkt", "gap_bridged_control"):
        if k in c:
            rows.append(f"{k.replace('_', ' '):<30} " + ("n/a" if c[k]["value"] is None else f"{100 * c[k]['value']:.1f}%"))
    labs = res.get("labs", {}).get("ecgkt")
    if labs:
        rows.append("lab AUROC (final model): " + ", ".join(f"{t} {v:.3f}" for t, v in labs["per_test_auroc"].items()
                                                            if v is not None and np.isfinite(v)))
        rows.append(f"lab macro AUROC: {_fmt(labs['macro_auroc'])}")
    for h in res.get("hypotheses", []):
        ev = f" ({h['evaluation']})" if h.get("evaluation") else ""
        rows.append(f"{h['id']}{ev}: {h['verdict']} -- {h['evidence']}")
    return "\n".join(rows + [""] + res["verdict"])

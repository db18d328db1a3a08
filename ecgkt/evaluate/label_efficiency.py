"""The label-efficiency analysis of docs/protocol.md: every (fraction, replicate, arm, evaluation) row scored
on the headline test subset, per label group; paired comparisons with signal-only per fraction (replicates
pooled inside each bootstrap resample); gap bridged against multimodal and against the ECG-oracle ceiling;
lab AUROCs beside the oracle's; a verdict line per pre-registered hypothesis."""
from __future__ import annotations

import numpy as np

from . import metrics
from .bootstrap import auroc_per_resample, counts, interval, resamples

CLAIM_GROUPS = ("ecg_visible", "lab_signature")
GROUP_TITLES = dict(ecg_visible="ECG-visible", lab_signature="lab with ECG signature", tabular_only="tabular-only",
                    report="report statements", symptom="symptom-only codes", all="all labels")

CLAIM = ("Knowledge from clinical data moved into an ECG encoder by contrastive pre-training makes ECG-only "
         "diagnosis better when diagnosis labels are scarce.")
HYPOTHESES = {
    "H1": "At label fractions <= 10 %, ecgkt - signal-only > 0 with the paired 95 % CI above 0 on the claim groups "
          "(ECG-visible + lab with ECG signature), for each evaluation.",
    "H2": "The permuted-pairs control and the random-initialisation probe are not above signal-only.",
    "H3": "The ecgkt - signal-only difference shrinks towards 0 at 100 % labels.",
    "H4": "No gain on the tabular-only group; sodium lab AUROC of every ECG-only model within 0.5 +- 0.05.",
    "H5": "Gap bridged against the ECG-oracle ceiling >= 50 % at <= 10 % labels (claim groups).",
    "H6": "ecgkt against the ECG-only SSL baseline (no direction stated).",
}


# --- labels -----------------------------------------------------------------------------------------
def is_symptom_code(name: str) -> bool:
    """ICD-10 chapter R (symptoms, signs and abnormal findings)."""
    return name.startswith("icd:R")


def duplicate_parents(names, y_all: np.ndarray) -> set:
    """ICD parents whose column equals their only child's column (they would count twice)."""
    names = list(names)
    codes = {n: n[len("icd:"):] for n in names if n.startswith("icd:")}
    out = set()
    for parent, code in codes.items():
        children = [c for c, cc in codes.items() if c != parent and cc.startswith(code)]
        if len(children) == 1:
            i, j = names.index(parent), names.index(children[0])
            if np.array_equal(y_all[:, i] > 0.5, y_all[:, j] > 0.5):
                out.add(parent)
    return out


def label_groups(names, synthetic: bool, rule_scales: dict | None = None) -> dict:
    """label -> group. The groups come from the generator's documented rules (at the rule scales the data
    was generated with) on synthetic data; on other data every label is `all` (symptom codes kept apart
    either way)."""
    groups = {n: ("symptom" if is_symptom_code(n) else "all") for n in names}
    if not synthetic:
        return groups
    try:
        from ..data.synth import label_groups as generator_groups
    except ImportError:
        return groups
    meta = generator_groups(list(names), rule_scales)
    for n in names:
        m = meta.get(n) or {}
        group = m.get("group", "all")
        groups[n] = "symptom" if (m.get("symptom") or is_symptom_code(n)) else ("all" if group == "unknown" else group)
    return groups


def lab_test_groups(tests, synthetic: bool, rule_scales: dict | None = None) -> dict:
    if synthetic:
        try:
            from ..data.synth import lab_groups

            return {t: (v["group"] if isinstance(v, dict) else v)
                    for t, v in lab_groups(list(tests), rule_scales).items()}
        except ImportError:
            pass
    return {t: "all" for t in tests}


# --- scoring ---------------------------------------------------------------------------------------
class Scorer:
    """Macro AUROC of label sets on the headline subset, as a point value and in every bootstrap resample."""

    def __init__(self, y: np.ndarray, label_sets: dict, n_boot: int, seed: int):
        self.y = np.asarray(y) > 0.5
        self.sets = {k: np.asarray(v, dtype=np.int64) for k, v in label_sets.items()}
        self.weights = counts(resamples(len(self.y), n_boot, seed), len(self.y))

    def score(self, p: np.ndarray) -> dict:
        """{set: (point, per-resample array)}"""
        p = np.asarray(p, dtype=np.float64)
        needed = sorted({int(j) for v in self.sets.values() for j in v})
        point, boot = {}, {}
        for j in needed:
            point[j] = metrics.auroc(self.y[:, j], p[:, j])
            boot[j] = auroc_per_resample(self.y[:, j], p[:, j], self.weights)
        out = {}
        for k, cols in self.sets.items():
            if len(cols) == 0:
                out[k] = (float("nan"), np.full(len(self.weights), np.nan))
                continue
            pts = np.array([point[j] for j in cols])
            bs = np.stack([boot[j] for j in cols], 1)
            with np.errstate(invalid="ignore"):
                b = np.nanmean(np.where(np.isfinite(bs), bs, np.nan), axis=1)
            out[k] = (float(np.nanmean(pts)) if np.isfinite(pts).any() else float("nan"), b)
        return out


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None


def _ci(values, ci):
    lo, hi = interval(values, ci)
    return [_num(lo), _num(hi)]


def analyse(models: list[dict], y_test: np.ndarray, headline_mask: np.ndarray, dx_names, y_all: np.ndarray,
            synthetic: bool, min_positives: int = 20, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
            rule_scales: dict | None = None) -> dict:
    """models: rows dict(fraction, replicate, arm, evaluation, test=[n_test, L] probabilities) on the test
    diagnosis cohort; headline_mask selects the headline subset (ED-linked) of those rows."""
    dx_names = list(dx_names)
    yh = np.asarray(y_test)[headline_mask]
    groups = label_groups(dx_names, synthetic, rule_scales)
    dup = duplicate_parents(dx_names, y_all)
    pos = (yh > 0.5).sum(0)
    eligible = [j for j, n in enumerate(dx_names) if pos[j] >= min_positives and n not in dup]
    by_group: dict[str, list] = {}
    for j in eligible:
        by_group.setdefault(groups[dx_names[j]], []).append(j)
    claim_groups = [g for g in CLAIM_GROUPS if g in by_group] or [g for g in by_group if g != "symptom"]
    sets = {"claim": [j for g in claim_groups for j in by_group[g]],
            "all": [j for j in eligible if groups[dx_names[j]] != "symptom"]}
    sets.update({f"group:{g}": v for g, v in by_group.items()})
    scorer = Scorer(yh, sets, n_boot, seed)

    rows, boots = [], {}
    for m in models:
        s = scorer.score(np.asarray(m["test"])[headline_mask])
        key = (m["evaluation"], m["arm"], float(m["fraction"]), int(m["replicate"]))
        boots[key] = {k: v[1] for k, v in s.items()}
        rows.append(dict(fraction=float(m["fraction"]), draw=int(m["replicate"]), seed=int(m["replicate"]),
                         arm=m["arm"], evaluation=m["evaluation"], n_labelled=m.get("n_labelled"),
                         macro_auroc=_num(s["claim"][0]), ci=_ci(s["claim"][1], ci),
                         macro_auroc_all=_num(s["all"][0]),
                         per_group={k[len("group:"):]: _num(v[0]) for k, v in s.items() if k.startswith("group:")}))
    fractions = sorted({r["fraction"] for r in rows})
    comparisons = _comparisons(boots, fractions, sets, ci)
    ceilings = {}
    def ceiling(arm, f):
        rs = [r for r in rows if r["arm"] == arm and r["fraction"] == f]
        return dict(claim=_mean([r["macro_auroc"] for r in rs]), all=_mean([r["macro_auroc_all"] for r in rs]),
                    **{f"group:{g}": _mean([r["per_group"].get(g) for r in rs]) for g in by_group}) if rs else None

    for f in fractions:  # the pre-registered (linear) ceiling; the non-linear one nested beside it
        if (c := ceiling("oracle", f)) is not None:
            ceilings[str(f)] = c
            if (nl := ceiling("oracle_nl", f)) is not None:
                c["nonlinear"] = nl
    labels = dict(eligible=[dx_names[j] for j in eligible], duplicate_parents_dropped=sorted(dup),
                  min_test_positives=int(min_positives), headline_subset_n=int(headline_mask.sum()),
                  groups={g: [dx_names[j] for j in v] for g, v in by_group.items()}, claim_groups=claim_groups,
                  positives_headline={dx_names[j]: int(pos[j]) for j in range(len(dx_names))})
    return dict(rows=rows, comparisons=comparisons, ceilings=ceilings, labels=labels)


def _mean_boot(boots, evaluation, arm, f, s):
    reps = [v[s] for k, v in boots.items() if k[0] == evaluation and k[1] == arm and k[2] == f]
    if not reps:
        return None
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.stack(reps), axis=0)


def _comparisons(boots, fractions, sets, ci) -> dict:
    """Per evaluation, fraction and arm: (arm - signal-only) pooled over replicates, with its paired CI,
    per label set; gap bridged against multimodal and against the oracle (claim groups)."""
    out = {}
    for evaluation in ("probe", "finetune"):
        arms = sorted({k[1] for k in boots if k[0] == evaluation} - {"signal_only", "multimodal", "oracle", "oracle_nl"})
        ev = {}
        for f in fractions:
            base = {s: _mean_boot(boots, "finetune", "signal_only", f, s) for s in sets}
            if base["claim"] is None:
                continue
            mm = _mean_boot(boots, "finetune", "multimodal", f, "claim")
            orc = _mean_boot(boots, "probe", "oracle", f, "claim")
            orc_nl = _mean_boot(boots, "probe", "oracle_nl", f, "claim")
            fr = {}
            for arm in arms:
                a = {s: _mean_boot(boots, evaluation, arm, f, s) for s in sets}
                if a["claim"] is None:
                    continue
                d = a["claim"] - base["claim"]
                entry = dict(diff=_num(np.nanmean(d)) if np.isfinite(d).any() else None, ci=_ci(d, ci),
                             per_group={})
                for s in sets:
                    if s.startswith("group:") and a[s] is not None and base[s] is not None:
                        dg = a[s] - base[s]
                        entry["per_group"][s[len("group:"):]] = dict(
                            diff=_num(np.nanmean(dg)) if np.isfinite(dg).any() else None, ci=_ci(dg, ci))
                for ref_name, ref in (("multimodal", mm), ("oracle", orc), ("oracle_nonlinear", orc_nl)):
                    if ref is not None:
                        gap = ref - base["claim"]
                        with np.errstate(invalid="ignore", divide="ignore"):
                            g = np.where(gap > 0, d / gap, np.nan)
                        point = np.nanmean(d) / np.nanmean(gap) if np.nanmean(gap) > 0 else np.nan
                        entry[f"gap_bridged_vs_{ref_name}"] = dict(value=_num(point), ci=_ci(g, ci))
                fr[arm] = entry
            ev[str(f)] = fr
        out[evaluation] = ev
    return out


# --- labs --------------------------------------------------------------------------------------------
def lab_summary(sources: dict, y, mask, label_names, test_groups: dict, min_positives: int = 10) -> dict:
    """Lab macro AUROC over all labs and over the ECG-linked labs for each source of lab probabilities."""
    y, mask = np.asarray(y), np.asarray(mask).astype(bool)
    pos, neg = ((y > 0.5) & mask).sum(0), ((y <= 0.5) & mask).sum(0)
    ok = (pos >= min_positives) & (neg >= min_positives)

    def test_of(n):
        return n.rsplit("_", 1)[0]

    linked = np.array([test_groups.get(test_of(n), "all") != "ecg_silent" for n in label_names]) & ok
    out = {}
    for name, p in sources.items():
        per = metrics.per_label(metrics.auroc, y, np.asarray(p), mask)
        out[name] = dict(macro_auroc_all=_num(np.nanmean(per[ok])) if ok.any() else None,
                         macro_auroc_ecg_linked=_num(np.nanmean(per[linked])) if linked.any() else None,
                         sodium=_num(np.nanmean([v for n, v in zip(label_names, per) if test_of(n) == "sodium"
                                                 and np.isfinite(v)])) if any(test_of(n) == "sodium" and np.isfinite(v)
                                                                              for n, v in zip(label_names, per)) else None,
                         per_label={n: _num(v) for n, v in zip(label_names, per)})
    return dict(sources=out, labels_in_macro=[n for n, k in zip(label_names, ok) if k],
                ecg_linked_labels=[n for n, k in zip(label_names, linked) if k], min_positives=int(min_positives))


# --- verdicts ----------------------------------------------------------------------------------------
def hypotheses(le: dict, labs: dict | None, small_max: float = 0.10) -> list[dict]:
    comp = le["comparisons"]
    fractions = sorted(float(f) for f in next(iter(comp.values()), {}))
    small = [f for f in fractions if f <= small_max + 1e-9]
    out = []

    def c(ev, f, arm):
        return comp.get(ev, {}).get(str(f), {}).get(arm)

    def above(e):
        return e is not None and e["ci"][0] is not None and e["ci"][0] > 0

    for ev in ("probe", "finetune"):
        hits = [f for f in small if above(c(ev, f, "ecgkt"))]
        verdict = "holds" if small and len(hits) == len(small) else ("partly" if hits else "does not hold")
        ev_text = "; ".join(f"{100 * f:g} %: {_fmt_diff(c(ev, f, 'ecgkt'))}" for f in small)
        out.append(dict(id="H1", evaluation=ev, verdict=verdict, evidence=ev_text))
    bad = [(ev, arm, f) for ev in comp for f in fractions for arm in ("control", "random") if above(c(ev, f, arm))]
    out.append(dict(id="H2", verdict="holds" if not bad else "does not hold",
                    evidence="; ".join(f"{arm} ({ev}) at {100 * f:g} %: {_fmt_diff(c(ev, f, arm))}" for ev, arm, f in bad)
                    or "no control/random difference with its CI above 0"))
    for ev in ("probe", "finetune"):
        lo, hi = (c(ev, small[0], "ecgkt") if small else None), c(ev, 1.0, "ecgkt")
        if lo and hi and lo["diff"] is not None and hi["diff"] is not None:
            out.append(dict(id="H3", evaluation=ev, verdict="holds" if hi["diff"] < lo["diff"] else "does not hold",
                            evidence=f"{100 * small[0]:g} %: {lo['diff']:+.4f}; 100 %: {hi['diff']:+.4f}"))
    tab = [(ev, f, c(ev, f, "ecgkt")["per_group"].get("tabular_only")) for ev in comp for f in fractions
           if c(ev, f, "ecgkt") and c(ev, f, "ecgkt")["per_group"].get("tabular_only")]
    gain = [t for t in tab if t[2]["ci"][0] is not None and t[2]["ci"][0] > 0]
    sodium = {k: v.get("sodium") for k, v in (labs or {}).get("sources", {}).items() if k not in ("oracle", "oracle_nl")}
    sodium_ok = all(v is None or abs(v - 0.5) <= 0.05 for v in sodium.values())
    out.append(dict(id="H4", verdict="holds" if (not gain and sodium_ok) else "does not hold",
                    evidence=(f"tabular-only gain with CI above 0 in {len(gain)} of {len(tab)} rows; " if tab else
                              "no tabular-only labels eligible; ")
                    + "sodium AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in sodium.items() if v is not None)))
    for ev in ("probe", "finetune"):
        vals = [(f, (c(ev, f, "ecgkt") or {}).get("gap_bridged_vs_oracle")) for f in small]
        vals = [(f, v) for f, v in vals if v and v["value"] is not None]
        if vals:
            ok = all(v["value"] >= 0.5 for _, v in vals)
            out.append(dict(id="H5", evaluation=ev, verdict="holds" if ok else "does not hold",
                            evidence="; ".join(f"{100 * f:g} %: {100 * v['value']:.1f} %" for f, v in vals)))
    for ev in ("probe", "finetune"):
        for f in small:
            a, b = c(ev, f, "ecgkt"), c(ev, f, "ssl")
            if a and b and a["diff"] is not None and b["diff"] is not None:
                out.append(dict(id="H6", evaluation=ev, verdict="reported",
                                evidence=f"{100 * f:g} %: ecgkt {a['diff']:+.4f} vs SSL {b['diff']:+.4f} "
                                         f"(both against signal-only)"))
    for h in out:
        h["statement"] = HYPOTHESES[h["id"]]
    return out


def _fmt_diff(e):
    if not e or e["diff"] is None:
        return "n/a"
    lo, hi = e["ci"]
    return f"{e['diff']:+.4f} [{_f(lo)}, {_f(hi)}]"


def _f(v):
    return "n/a" if v is None else f"{v:+.4f}"


def _replicates_line(protocol: dict | None) -> str:
    if not protocol or "replicates" not in protocol:
        return ""
    k = int(protocol.get("pretrain_seeds", 1))
    return (f" Replicate r (r < {protocol['replicates']} below 100 %): label draw r, training seed r, and stage-1 "
            f"run r mod {k} of each pre-trained arm ({k} stage-1 run{'s' if k > 1 else ''} per arm).")


def markdown(le: dict, hyp: list[dict], labs: dict | None, protocol: dict | None = None) -> list[str]:
    from ..train.plan import ARM_TITLES

    lines = ["## Label efficiency (docs/protocol.md)", "",
             f"Headline subset: {le['labels']['headline_subset_n']} test ECGs; "
             f"{len(le['labels']['eligible'])} labels with >= {le['labels']['min_test_positives']} positives "
             f"(claim groups: {', '.join(le['labels']['claim_groups'])}); "
             f"duplicate parents dropped: {', '.join(le['labels']['duplicate_parents_dropped']) or 'none'}."
             + _replicates_line(protocol), "",
             "| fraction | evaluation | arm | replicates | macro AUROC (claim groups), mean | "
             + " | ".join(GROUP_TITLES.get(g, g) for g in le["labels"]["groups"]) + " |",
             "|---" * (5 + len(le["labels"]["groups"])) + "|"]
    keys = sorted({(r["fraction"], r["evaluation"], r["arm"]) for r in le["rows"]},
                  key=lambda k: (k[0], k[1] != "finetune", k[2]))
    for f, ev, arm in keys:
        rs = [r for r in le["rows"] if (r["fraction"], r["evaluation"], r["arm"]) == (f, ev, arm)]
        mean = _mean([r["macro_auroc"] for r in rs])
        groups = [_mean([r["per_group"].get(g) for r in rs]) for g in le["labels"]["groups"]]
        lines.append(f"| {100 * f:g} % | {ev} | {ARM_TITLES.get(arm, arm)} | {len(rs)} | {_p(mean)} | "
                     + " | ".join(_p(g) for g in groups) + " |")
    lines += ["", "### Paired differences to signal-only (replicates pooled; 95 % CI)", "",
              "| fraction | evaluation | arm | diff (claim groups) | gap bridged vs multimodal | gap bridged vs oracle "
              "| vs non-linear oracle (exploratory) |",
              "|---|---|---|---|---|---|---|"]
    for ev, by_f in le["comparisons"].items():
        for f, arms in by_f.items():
            for arm, e in arms.items():
                gm, go = e.get("gap_bridged_vs_multimodal"), e.get("gap_bridged_vs_oracle")
                lines.append(f"| {100 * float(f):g} % | {ev} | {ARM_TITLES.get(arm, arm)} | {_fmt_diff(e)} | "
                             f"{_pct(gm)} | {_pct(go)} | {_pct(e.get('gap_bridged_vs_oracle_nonlinear'))} |")
    if le["ceilings"]:
        lines += ["", "### ECG-oracle ceilings (linear probe on the true beat parameters)", "",
                  "| fraction | claim groups | all | " + " | ".join(GROUP_TITLES.get(g, g) for g in le["labels"]["groups"]) + " |",
                  "|---" * (3 + len(le["labels"]["groups"])) + "|"]
        for f, v in le["ceilings"].items():
            for tag, c in (("", v), (" (non-linear basis, exploratory)", v.get("nonlinear"))):
                if c:
                    lines.append(f"| {100 * float(f):g} %{tag} | {_p(c.get('claim'))} | {_p(c.get('all'))} | "
                                 + " | ".join(_p(c.get(f'group:{g}')) for g in le["labels"]["groups"]) + " |")
    if labs:
        lines += ["", "### Lab abnormalities from frozen features (linear probes)", "",
                  "| source | macro AUROC, all labs | ECG-linked labs | sodium (negative control) |", "|---|---|---|---|"]
        for name, v in labs["sources"].items():
            lines.append(f"| {ARM_TITLES.get(name, name)} | {_p(v['macro_auroc_all'])} | "
                         f"{_p(v['macro_auroc_ecg_linked'])} | {_p(v['sodium'])} |")
    lines += ["", "### Pre-registered hypotheses", ""]
    for h in hyp:
        ev = f" ({h['evaluation']})" if h.get("evaluation") else ""
        lines.append(f"- **{h['id']}{ev}: {h['verdict']}.** {h['statement']} Evidence: {h['evidence']}.")
    return lines


def _mean(v):
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None


def _p(v):
    return "n/a" if v is None else f"{v:.3f}"


def _pct(e):
    if not e or e.get("value") is None:
        return "n/a"
    lo, hi = e["ci"]
    return f"{100 * e['value']:.1f} % [{'n/a' if lo is None else f'{100 * lo:.0f}'}, {'n/a' if hi is None else f'{100 * hi:.0f}'}]"


# --- the figure ----------------------------------------------------------------------------------------
def plot(res: dict, path):
    """AUROC (claim groups, headline subset) against the label fraction: one line per arm and evaluation,
    the band the bootstrap CI of the replicate mean, the ECG-oracle ceiling as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..train.plan import ARM_TITLES

    le = dict(rows=res["label_efficiency"], ceilings=res["ceilings"], labels=res["label_metadata"])
    rows = le["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = dict(signal_only="black", ecgkt="tab:red", control="tab:gray", ssl="tab:blue", random="tab:olive",
                   multimodal="tab:green", oracle="tab:purple", oracle_nl="tab:pink")
    for ax, ev in zip(axes, ("probe", "finetune")):
        arms = sorted({r["arm"] for r in rows if r["evaluation"] == ev or r["arm"] in ("signal_only", "multimodal")})
        for arm in arms:
            src = "finetune" if arm in ("signal_only", "multimodal") else ev
            fr = sorted({r["fraction"] for r in rows if r["arm"] == arm and r["evaluation"] == src})
            if not fr or (arm.startswith("oracle") and ev != "probe"):
                continue
            mean = [_mean([r["macro_auroc"] for r in rows if r["arm"] == arm and r["evaluation"] == src
                           and r["fraction"] == f]) for f in fr]
            style = dict(color=colours.get(arm), lw=2 if arm == "ecgkt" else 1.3,
                         ls="--" if arm.startswith("oracle") else ("-" if src == ev else ":"))
            ax.plot(fr, [np.nan if m is None else m for m in mean], marker="o", label=ARM_TITLES.get(arm, arm), **style)
            cis = [[r["ci"] for r in rows if r["arm"] == arm and r["evaluation"] == src and r["fraction"] == f]
                   for f in fr]
            lo = [np.mean([c[0] for c in cs if c[0] is not None]) if cs else np.nan for cs in cis]
            hi = [np.mean([c[1] for c in cs if c[1] is not None]) if cs else np.nan for cs in cis]
            ax.fill_between(fr, lo, hi, color=colours.get(arm), alpha=0.12)
        top = le["ceilings"].get("1.0", {}).get("claim")
        if top is not None:
            ax.axhline(top, color=colours["oracle"], ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sorted({r["fraction"] for r in rows}))
        ax.set_xticklabels([f"{100 * f:g} %" for f in sorted({r["fraction"] for r in rows})])
        ax.set_xlabel("share of training subjects with diagnosis labels")
        ax.set_title(f"{'frozen linear probe' if ev == 'probe' else 'full fine-tuning'} "
                     f"(references fine-tuned, dotted)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("diagnosis macro AUROC, claim groups (test)")
    fig.suptitle(f"Label efficiency: band = bootstrap 95 % CI (mean over replicates); "
                 f"{le['labels']['headline_subset_n']} headline test ECGs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Write BENCHMARKS.md and its plots from a results file of the benchmark suite (nothing in them is typed).

  python benches/report.py                                   # benches/results/results.json -> BENCHMARKS.md
  python benches/report.py RESULTS.json --out OTHER.md       # e.g. a quick run, somewhere else

The plots go beside the results file (<kernel>_<metric>.png; prefixed by the file's stem unless it is
results.json); the tables give p50 and, in brackets,
p20-p80 of each metric over the rounds of its case. What each contender is comes from the docstring of the
benchmark module that measured it.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
from pathlib import Path

import sys

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
sys.path.insert(0, str(BENCHES))

# section title, kernels, the module whose docstring describes the contenders, plots (kernel, metric, log axes)
SECTIONS = [
    ("Fused preprocessing", ["preprocess", "preprocess_2_threads", "preprocess_response"], "bench_preprocess.py",
     [("preprocess", "records/s", True)]),
    ("CUDA preprocessing: instructions per sample in the compiled SASS", ["preprocess_sass"],
     "bench_preprocess_sass.py", []),
    ("Contrastive losses (forward + backward, D = 256)", ["clip_loss", "siglip_loss"], "bench_contrastive.py",
     [("clip_loss", "s", True), ("clip_loss", "MB", True), ("siglip_loss", "s", True), ("siglip_loss", "MB", True)]),
    ("Stage-1 training, end to end", ["train_stage1"], "bench_train.py", []),
    ("Inference from files", ["predict"], "bench_predict.py", []),
    ("Data layer", ["record_read", "loader", "prepare", "labevents"], "bench_data.py",
     [("loader", "ECG/s", False), ("prepare", "records/s", True)]),
    ("Synthetic dataset", ["synth", "synth_writer"], "bench_synth.py", []),
    ("Machine floors", ["floor"], "bench_floors.py", []),
]
from _bench import SMALLER_IS_BETTER  # noqa: E402  (the suite's one definition)

NOT_RANKED = {"dB"}  # measured properties, not costs


def docstring(module: str) -> str:
    tree = ast.parse((BENCHES / module).read_text())
    return (ast.get_docstring(tree) or "").strip()


def fmt(v: float) -> str:
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1:
        return f"{v:.2f}"
    if a >= 0.001:
        return f"{v:.4f}"
    return f"{v:.2e}"


def xkey(x):
    return (0, float(x), "") if isinstance(x, (int, float)) else (1, 0.0, str(x))


def table(rows: list[dict], kernel: str, metric: str) -> list[str]:
    sel = [r for r in rows if r["kernel"] == kernel and r["metric"] == metric]
    if not sel:
        return []
    xs = sorted({r["x"] for r in sel}, key=xkey)
    providers = list(dict.fromkeys(r["provider"] for r in sel))
    x_name = sel[0]["x_name"]
    better = ("measured" if metric in NOT_RANKED else
              "smaller is better" if metric in SMALLER_IS_BETTER else "larger is better")
    out = [f"**{kernel}**, {metric} ({better}); p50 [p20–p80]", "",
           "| provider | " + " | ".join(f"{x_name} = {x:,}" if isinstance(x, int) else f"{x_name} = {x}"
                                       for x in xs) + " |",
           "|---|" + "---:|" * len(xs)]
    for p in providers:
        cells = []
        for x in xs:
            r = next((r for r in sel if r["provider"] == p and r["x"] == x), None)
            if r is None:
                cells.append("–")
            elif r["rounds"] == 1:  # one measurement: no spread to show
                cells.append(fmt(r["p50"]))
            else:
                cells.append(f"{fmt(r['p50'])} [{fmt(r['p20'])}–{fmt(r['p80'])}]")
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    notes = sorted({r["note"] for r in sel if r.get("note")})
    if notes:
        out += ["", "Note: " + "; ".join(notes) + "."]
    return out + [""]


def ratio_table(ratios: list[dict], kernels: list[str]) -> list[str]:
    sel = [r for r in ratios if r["kernel"] in kernels]
    if not sel:
        return []
    out = ["| ratio (p50 / p50, same run) | at | value | target |", "|---|---|---:|---|"]
    for r in sel:
        target = "" if r["target"] is None else f"≥ {r['target']:.3g}: {'met' if r['met'] else '**not met**'}"
        out.append(f"| {r['title']} | {r['x_name']} = {r['x']} | **{r['ratio']:.2f}×** | {target} |")
    return out + [""]


def plot(rows: list[dict], kernel: str, metric: str, log: bool, folder: Path, prefix: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["kernel"] == kernel and r["metric"] == metric and isinstance(r["x"], (int, float))]
    providers = list(dict.fromkeys(r["provider"] for r in sel))
    if not sel or len({r["x"] for r in sel}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for p in providers:
        pts = sorted((r for r in sel if r["provider"] == p), key=lambda r: r["x"])
        xs = [r["x"] for r in pts]
        ax.plot(xs, [r["p50"] for r in pts], marker="o", label=p)
        ax.fill_between(xs, [r["p20"] for r in pts], [r["p80"] for r in pts], alpha=0.2)
    if metric in SMALLER_IS_BETTER and log:  # slope guides through the first point of the first provider
        first = sorted((r for r in sel if r["provider"] == providers[0]), key=lambda r: r["x"])
        x0, y0, x1 = first[0]["x"], first[0]["p50"], max(r["x"] for r in sel)
        for power, label in ((1, "∝ x"), (2, "∝ x²")):
            ax.plot([x0, x1], [y0, y0 * (x1 / x0) ** power], ls=":", color="grey", lw=1)
            ax.annotate(label, (x1, y0 * (x1 / x0) ** power), fontsize=8, color="grey")
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xlabel(sel[0]["x_name"])
    ax.set_ylabel(metric)
    ax.set_title(f"{kernel}: {metric} (p50, band p20–p80)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"{prefix}{kernel}_{metric.replace('/', '_per_')}.png"
    fig.savefig(folder / name)
    plt.close(fig)
    return name


def render(results: dict, results_path: Path, out_path: Path) -> str:
    meta, rows = results["meta"], results["rows"]
    # ratios and targets from the rows, with the suite's own definitions (the same as printed at the end of the run)
    import _bench

    results = dict(results, ratios=_bench.ratio_rows(rows), targets=_bench.target_rows(rows))
    plots_dir = results_path.parent
    prefix = "" if results_path.stem == "results" else results_path.stem + "-"  # a quick run's plots apart
    rel = os.path.relpath(plots_dir, out_path.parent)
    lines = [
        "# Benchmarks",
        "",
        f"<!-- generated by `python benches/report.py` from {os.path.relpath(results_path, ROOT)}; do not edit -->",
        "",
        f"Every figure below was measured by the pytest-benchmark suite in `benches/` in one session "
        f"(`{meta['command']}`, {meta['mode']} mode) and is generated from its results file "
        f"[`{os.path.relpath(results_path, out_path.parent)}`]({os.path.relpath(results_path, out_path.parent)}) "
        "by `python benches/report.py`.",
        "",
        f"- machine: {meta['machine']}; Python {meta['python']}, torch {meta['torch']}, "
        f"torch CPU threads: {meta['torch_threads']} (loader workers, prepare and synth processes and predict's "
        "reader threads as each section says)",
        f"- date: {meta['date']}; commit {meta['commit']}",
        f"- load at the start: `{meta['uptime_start']}`",
        f"- load at the end: `{meta['uptime_end']}`; 1-minute load average when each case ended: "
        f"{min(r['load'] for r in rows):.1f} to {max(r['load'] for r in rows):.1f} (2 CPUs)",
        "",
        "**The machine is shared** (on the development box, other jobs build and test on the same two cores; "
        "see the load above): absolute figures are noisy and lower than on an idle machine. The **ratios between contenders of the "
        "same run** are the figures to quote: every contender of a comparison is a parametrised case of the same "
        "test, run next to its peers on the same inputs, each after a warm-up call and with the CPU caches "
        "flushed before every round. Each row also records the 1-minute load average when its case ended "
        "(`load` in the results file).",
        "",
        "Re-run: `make bench` (full) or `pytest benches --quick` (CI, < 2 min); compare two runs with "
        "`pytest-benchmark compare` (every `make bench` autosaves into `.benchmarks/`) or "
        "`pytest-benchmark compare benches/results/pytest-benchmark.json NEW.json`.",
        "",
        "## Targets",
        "",
        "| target | measured (p50) | |",
        "|---|---:|---|",
    ]
    for t in results["targets"]:
        lines.append(f"| {t['kernel']} ({t['provider']}, {t['x_name']} = {t['x']}) ≥ {t['target']:,.0f} "
                     f"{t['metric']} | {t['value']:,.0f} {t['metric']} | {'met' if t['met'] else '**not met**'} |")
    for r in results["ratios"]:
        if r["target"] is not None:
            lines.append(f"| {r['title']} ({r['x_name']} = {r['x']}) ≥ {r['target']:.3g}× | {r['ratio']:.2f}× | "
                         f"{'met' if r['met'] else '**not met**'} |")
    lines += ["", "Ratios are p50 / p50 of two contenders in this run (for times and memory: the peer's over "
              "ecgkt's); a ratio target is judged at the largest size both contenders ran.", ""]
    unplaced = sorted({r["kernel"] for r in rows} - {k for _, kernels, _, _ in SECTIONS for k in kernels})
    if unplaced:  # a new benchmark's rows must not vanish from the report
        raise SystemExit(f"{results_path}: kernel(s) {', '.join(unplaced)} belong to no section of report.SECTIONS")
    for title, kernels, module, plots in SECTIONS:
        present = [k for k in kernels if any(r["kernel"] == k for r in rows)]
        if not present:
            continue
        lines += [f"## {title}", "", f"From `benches/{module}`:", ""]
        lines += ["> " + line if line else ">" for line in docstring(module).splitlines()]
        lines.append("")
        for kernel in present:
            for metric in dict.fromkeys(r["metric"] for r in rows if r["kernel"] == kernel):
                lines += table(rows, kernel, metric)
        lines += ratio_table(results["ratios"], present)
        for kernel, metric, log in plots:
            name = plot(rows, kernel, metric, log, plots_dir, prefix)
            if name:
                lines += [f"![{kernel} {metric}]({rel}/{name})", ""]
    lines += ["## Not measured in this run", "", "Cases the run skipped, with the reason it gave:", ""]
    reasons: dict[str, list[str]] = {}
    for s in results.get("skipped", []):
        reasons.setdefault(s["reason"], []).append(s["case"].split("::")[-1])
    for reason, cases in reasons.items():
        lines.append(f"- {reason}: " + ", ".join(f"`{c}`" for c in cases))
    if not reasons:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", default=str(BENCHES / "results" / "results.json"))
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        raise SystemExit(f"{path}: no such results file; run `make bench` (or pytest benches) first")
    results = json.loads(path.read_text())
    out = Path(args.out)
    out.write_text(render(results, path, out))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Readable per-record reports: a PNG of the 12-lead ECG on standard ECG paper and an HTML page.

The picture follows the paper ECG a clinician reads: 25 mm/s and 10 mm/mV on a 1 mm / 5 mm grid, a
1 mV calibration pulse at the start of each row, leads in the 3x4 layout (I aVR V1 V4 / II aVL V2 V5 /
III aVF V3 V6, each column 2.5 s of the same 10 s) and a 10 s lead II rhythm strip below. The top
diagnoses and the lab-abnormality explanation are printed beside the tracing. The drawing is true to
scale: printed at 100 % on paper wide enough (381 mm), one small square is 1 mm.
"""
from __future__ import annotations

import html
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are files, never windows; also safe on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from ..io import atomic_write, atomic_write_text  # noqa: E402

MM_PER_INCH = 25.4
SPEED_MM_S = 25.0  # paper speed
GAIN_MM_MV = 10.0  # amplitude scale
DPI = 120
FIG_W_MM, FIG_H_MM = 381.0, 190.5  # 15 x 7.5 inches -> 1800 x 900 pixels at 120 dpi
PAPER_X0, PAPER_Y0 = 6.0, 12.0  # paper origin on the figure, mm
LEAD_IN_MM = 10.0  # space for the calibration pulse
STRIP_S = 10.0  # seconds on the paper
PAPER_W_MM = LEAD_IN_MM + STRIP_S * SPEED_MM_S + 5.0  # 265 mm
ROW_MM = 37.5
PAPER_H_MM = 4 * ROW_MM + 5.0  # 155 mm
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
IMAGE_SIZE = (int(round(FIG_W_MM / MM_PER_INCH * DPI)), int(round(FIG_H_MM / MM_PER_INCH * DPI)))  # (w, h)

GRID_MINOR = "#f6c9c9"
GRID_MAJOR = "#e48a8a"
PAPER = "#fff7f5"


def _grid(ax) -> None:
    lines_minor, lines_major = [], []
    for x in np.arange(0, PAPER_W_MM + 0.01, 1.0):
        (lines_major if round(x) % 5 == 0 else lines_minor).append([(x, 0), (x, PAPER_H_MM)])
    for y in np.arange(0, PAPER_H_MM + 0.01, 1.0):
        (lines_major if round(y) % 5 == 0 else lines_minor).append([(0, y), (PAPER_W_MM, y)])
    ax.add_collection(LineCollection(lines_minor, colors=GRID_MINOR, linewidths=0.35, zorder=0))
    ax.add_collection(LineCollection(lines_major, colors=GRID_MAJOR, linewidths=0.8, zorder=1))


def _calibration(ax, y0: float) -> None:
    """The 1 mV x 200 ms calibration pulse at the start of a row."""
    x = [1.5, 3.0, 3.0, 8.0, 8.0, 9.5]
    y = [y0, y0, y0 + GAIN_MM_MV, y0 + GAIN_MM_MV, y0, y0]
    ax.plot(x, y, color="black", linewidth=0.9, zorder=3)


def _trace(ax, mv: np.ndarray, fs: float, t0: float, t1: float, x0: float, y0: float) -> None:
    """Samples of one lead from t0 to t1 seconds, drawn from x0 (mm) around baseline y0 (mm)."""
    i0, i1 = int(round(t0 * fs)), min(int(round(t1 * fs)), mv.shape[-1])
    if i1 <= i0:
        return
    seg = mv[i0:i1]
    t = np.arange(i0, i1) / fs
    ax.plot(x0 + (t - t0) * SPEED_MM_S, y0 + np.nan_to_num(seg) * GAIN_MM_MV, color="black",
            linewidth=0.7, zorder=3, clip_on=True, solid_joinstyle="round")


def _paper_axes(fig):
    ax = fig.add_axes([PAPER_X0 / FIG_W_MM, PAPER_Y0 / FIG_H_MM, PAPER_W_MM / FIG_W_MM, PAPER_H_MM / FIG_H_MM])
    ax.set_xlim(0, PAPER_W_MM)
    ax.set_ylim(0, PAPER_H_MM)
    ax.set_facecolor(PAPER)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(GRID_MAJOR)
    return ax


def draw_ecg(ax, signal_mv: np.ndarray, fs: float, leads) -> None:
    """The 3x4 + rhythm-strip layout of the first 10 s of ``signal_mv`` [leads, samples] (mV)."""
    _grid(ax)
    index = {str(name).lower(): i for i, name in enumerate(leads)}
    col_s = STRIP_S / 4
    for r, row in enumerate(LAYOUT + ((RHYTHM_LEAD,),)):
        y0 = PAPER_H_MM - 5.0 - ROW_MM * (r + 0.55)
        _calibration(ax, y0)
        for c, lead in enumerate(row):
            full = len(row) == 1
            x0 = LEAD_IN_MM + (0 if full else c * col_s * SPEED_MM_S)
            t0, t1 = (0.0, STRIP_S) if full else (c * col_s, (c + 1) * col_s)
            i = index.get(lead.lower())
            if i is not None:
                _trace(ax, signal_mv[i], fs, t0, t1, x0, y0)
            label = lead if i is not None else f"{lead} (absent)"
            ax.text(x0 + 1.0, y0 + 12.0, label, fontsize=9, fontweight="bold", zorder=4, va="bottom")
            if c > 0:  # lead change marker, as ECG carts print it
                ax.plot([x0, x0], [y0 - 4, y0 + 4], color="black", linewidth=1.0, zorder=3)


def _default_display(result):
    from .display import Display

    return Display.for_result(result)


def _patient_line(facts: dict) -> str:
    """"Male, 78 y  |  HR 72 bpm  PR 160 ms  QRS 92 ms  QT 380 ms  QTc 410 ms" from the known facts."""
    who = ", ".join(x for x in (facts.get("sex"), f"{facts['age']:g} y" if facts.get("age") is not None else None) if x)
    iv = facts.get("intervals") or {}
    nb = "\u00a0"  # keeps "QT 410 ms" on one line when wrapped
    parts = [f"HR{nb}{iv['hr_bpm']:.0f}{nb}bpm" if iv.get("hr_bpm") is not None else None]
    parts += [f"{name}{nb}{iv[key]:.0f}{nb}ms" if iv.get(key) is not None else None
              for name, key in (("PR", "pr_ms"), ("QRS", "qrs_ms"), ("QT", "qt_ms"), ("QTc", "qtc_ms"))]
    measured = "  ".join(p for p in parts if p)
    return "  |  ".join(x for x in (who, measured) if x)


def _sidebar_lines(result, display, facts: dict) -> list[tuple[str, dict]]:
    """(text, style) lines for the panel beside the tracing."""
    lines: list[tuple[str, dict]] = []
    patient = _patient_line(facts)
    if patient:
        lines.append(("Record", dict(weight="bold", size=12)))
        for part in textwrap.wrap(patient, 52, break_on_hyphens=False):
            lines.append((part, dict(size=10)))
        if facts.get("intervals"):
            lines.append(("measured on the 12-lead median beat; QTc by Bazett", dict(size=8.5, color="#666666")))
        lines.append(("", {}))
    lines.append(("Top diagnoses", dict(weight="bold", size=12)))
    for name, p in display.top(result, 5):
        for k, part in enumerate(textwrap.wrap(name, 42)):
            lines.append(((f"{p:4.2f}  " if k == 0 else "      ") + part, dict(family="monospace", size=9.5)))
    lines.append(("", {}))
    lines.append(("Explanation: predicted lab abnormalities", dict(weight="bold", size=11.5)))
    findings = display.explanation(result)[:4]
    if display.gate.note:
        for part in textwrap.wrap(display.gate.note, 54):
            lines.append((part, dict(size=9.5, style="italic")))
    elif not findings:
        for part in textwrap.wrap(f"none: no lab abnormality with a documented ECG association predicted at or "
                                  f"above {result.lab_threshold:.2f} by a lab output with validation AUROC >= "
                                  f"{display.gate.min_auroc:.2f}", 54):
            lines.append((part, dict(size=9.5, style="italic")))
    for f in findings:
        auroc = display.gate.auroc(f.output)
        lines.append((f"{f.probability:4.2f}  {f.display_name()}", dict(family="monospace", size=10, weight="bold")))
        lines.append((f"      validation AUROC {auroc:.2f}", dict(size=9.5, color="#444444")))
        for part in textwrap.wrap("Expected on the ECG: " + f.association, 50):
            lines.append(("      " + part, dict(size=9.5)))
    notes = []
    if result.repaired_leads:
        notes.append("repaired: " + ", ".join(result.repaired_leads))
    if result.flat_leads:
        notes.append("flat / no signal: " + ", ".join(result.flat_leads))
    notes += [w for w in result.warnings if "flat" not in w and "interpolated" not in w]
    if notes:
        lines.append(("", {}))
        lines.append(("Leads and warnings", dict(weight="bold", size=12)))
        for n in notes:
            for k, part in enumerate(textwrap.wrap(n, 54)):
                lines.append((("- " if k == 0 else "  ") + part, dict(size=9.5, color="#8a1c1c")))
    return lines


def render_png(result, signal_mv: np.ndarray, fs: float, leads, path, display=None, facts=None) -> Path:
    """Write the report image for one record; returns its path. ``signal_mv`` [leads, samples] in mV."""
    path = Path(path)
    display = display or _default_display(result)
    facts = facts or {}
    fig = plt.figure(figsize=(FIG_W_MM / MM_PER_INCH, FIG_H_MM / MM_PER_INCH), dpi=DPI)
    try:
        fig.patch.set_facecolor("white")
        ax = _paper_axes(fig)
        draw_ecg(ax, np.asarray(signal_mv, dtype=np.float32), fs, leads)
        top = (PAPER_Y0 + PAPER_H_MM + 4.0) / FIG_H_MM
        fig.text(PAPER_X0 / FIG_W_MM, top, Path(result.record).name, fontsize=14, fontweight="bold", va="bottom")
        windows = f", {result.n_windows} windows averaged" if result.n_windows > 1 else ""
        fig.text((PAPER_X0 + PAPER_W_MM) / FIG_W_MM, top, f"{result.duration_s:.1f} s at {result.fs:g} Hz{windows}"
                 f"   |   25 mm/s, 10 mm/mV", fontsize=10, va="bottom", ha="right", color="#333333")
        fig.text(PAPER_X0 / FIG_W_MM, 3.0 / FIG_H_MM, "Probabilities from an ECG-only model; lab findings are "
                 "predicted from the ECG, not measured. Not a clinical device.", fontsize=8, color="#555555")
        side_x = (PAPER_X0 + PAPER_W_MM + 6.0) / FIG_W_MM
        y = (PAPER_Y0 + PAPER_H_MM) / FIG_H_MM
        for text, style in _sidebar_lines(result, display, facts):
            size = style.get("size", 10)
            fig.text(side_x, y, text, va="top", fontsize=size, fontfamily=style.get("family", "sans-serif"),
                     fontweight=style.get("weight", "normal"), fontstyle=style.get("style", "normal"),
                     color=style.get("color", "black"))
            y -= (size * 1.45 / 72 * MM_PER_INCH) / FIG_H_MM
        atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, facecolor=fig.get_facecolor(), format="png"))
    finally:
        plt.close(fig)
    return path


def render_html(result, png_name: str, path, display=None, facts=None) -> Path:
    """Write the HTML page for one record, showing ``png_name`` (a path relative to the page)."""
    e = html.escape
    display = display or _default_display(result)
    facts = facts or {}
    labels, gate = display.labels, display.gate
    dx_rows = "".join(f"<tr><td>{e(labels.dx[n]['code'] or '') if n in labels.dx else ''}</td>"
                      f"<td>{e(labels.dx[n]['title'] if n in labels.dx else labels.name(n))}</td>"
                      f"<td>{p:.3f}</td><td class=muted>{e(n)}</td></tr>" for n, p in result.diagnoses)
    admitted = {f.output for f in display.explanation(result)}

    def _auroc(f):
        a = gate.auroc(f.output)
        return "n/a" if a is None else f"{a:.2f}"

    lab_rows = "".join(
        f"<tr{' class=hit' if f.output in admitted else ''}><td>{e(f.display_name())}</td>"
        f"<td>{f.probability:.3f}</td><td>{_auroc(f)}</td><td>{e(f.association)}</td><td>{e(f.strength)}</td></tr>"
        for f in result.labs)
    explanation = "".join(f"<li>{e(t)}</li>" for t in display.sentences(result))
    if not explanation:
        explanation = f"<li>{e(gate.note)}</li>" if gate.note else (
            f"<li>No lab abnormality with a documented ECG association was predicted at or above "
            f"{result.lab_threshold:.2f} by a lab output whose validation AUROC is at least {gate.min_auroc:.2f}.</li>")
    notes = "".join(f"<li>{e(w)}</li>" for w in result.warnings) or "<li>none</li>"
    patient = _patient_line(facts)
    patient = f"<p><b>{e(patient)}</b></p>" if patient else ""
    top = "".join(f"<li>{p:.2f} &nbsp;{e(name)}</li>" for name, p in display.top(result, 5))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ecgkt report: {e(Path(result.record).name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ccc; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }}
tr.hit {{ background: #fff1d6; }}
.muted {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>{e(Path(result.record).name)}</h1>
<p class="muted">{e(result.record)} &middot; {result.duration_s:.1f} s at {result.fs:g} Hz &middot;
{result.n_windows} window(s) &middot; 25 mm/s, 10 mm/mV</p>
{patient}
<img src="{e(png_name)}" alt="12-lead ECG of {e(Path(result.record).name)}">
<h2>Top diagnoses</h2><ul>{top}</ul>
<h2>Explanation</h2><ul>{explanation}</ul>
<h2>All diagnoses</h2><table><tr><th>code</th><th>diagnosis</th><th>probability</th><th>label key</th></tr>{dx_rows}</table>
<h2>Predicted lab abnormalities</h2>
<p class="muted">A lab explains a diagnosis only when its ECG association is documented and the model's AUROC
for it on its own validation set is at least {gate.min_auroc:.2f} (highlighted rows).</p>
<table><tr><th>lab</th><th>probability</th><th>validation AUROC</th><th>ECG association</th><th>strength</th></tr>{lab_rows}</table>
<h2>Leads and warnings</h2>
<p>Repaired: {e(', '.join(result.repaired_leads) or 'none')}; flat or without signal:
{e(', '.join(result.flat_leads) or 'none')}.</p><ul>{notes}</ul>
<p class="muted">Probabilities come from an ECG-only model; the lab findings are predicted from the ECG,
not measured, and the association texts come from ecgkt's documented table (lab_associations.csv).
Not a clinical device.</p>
</body></html>
"""
    path = Path(path)
    atomic_write_text(path, page)
    return path


def report_stem(record_name: str, taken: set) -> str:
    """A file name for a record's report, unique within one output folder."""
    name = Path(record_name)
    name = name.stem if name.suffix.lower() in (".dcm", ".dicom", ".npy") else name.name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "record"
    candidate, k = stem, 2
    while candidate in taken:
        candidate, k = f"{stem}_{k}", k + 1
    taken.add(candidate)
    return candidate


def write_report(result, signal_mv: np.ndarray, fs: float, leads, out_dir, stem: str, display=None,
                 record=None) -> tuple[Path, Path]:
    """PNG + HTML for one record in ``out_dir``; returns both paths. With ``record`` (the ECGRecord it was
    read from) the report also shows the measured intervals and the age and sex of its header."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    display = display or _default_display(result)
    facts = record_facts(record, signal_mv, fs, leads) if record is not None else {}
    png = render_png(result, signal_mv, fs, leads, out_dir / f"{stem}.png", display, facts)
    page = render_html(result, png.name, out_dir / f"{stem}.html", display, facts)
    return png, page


def header_demographics(path: str) -> dict:
    """Age (years) and sex from a WFDB header's comment lines ("# Age: 78", "# Sex: Male"), when present."""
    p = Path(path)
    hea = p if p.suffix == ".hea" else p.with_name(p.name + ".hea") if not p.suffix else p.with_suffix(".hea")
    out: dict = {}
    try:
        text = hea.read_text(errors="replace") if hea.is_file() else ""
    except OSError:
        return out
    for line in text.splitlines():
        m = re.match(r"\s*#\s*(age|sex|gender)\s*:\s*(\S.*)$", line, re.I)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key == "age":
            try:
                age = float(value)
            except ValueError:
                continue
            if 0 <= age < 130:
                out["age"] = age
        elif value[:1].upper() in ("M", "F"):
            out["sex"] = "Male" if value[:1].upper() == "M" else "Female"
    return out


def record_facts(record, signal_mv, fs: float, leads) -> dict:
    """What the report states about the record itself: header age/sex and the measured intervals."""
    from .intervals import measure_intervals

    facts = header_demographics(getattr(record, "path", "") or "")
    facts["intervals"] = measure_intervals(np.asarray(signal_mv), fs)  # every lead: the median beat
    return facts


def display_signal(record, settings: dict | None = None) -> np.ndarray:
    """The first 10 s of a record in mV for the paper tracing: the model's filters (baseline wander,
    high frequencies, mains) at the record's own rate, without normalisation or resampling."""
    import torch

    from .. import preprocess

    s = settings or {}
    n = min(record.n_samples, int(round(STRIP_S * record.fs)))
    x = torch.from_numpy(np.ascontiguousarray(record.signal[:, :n]))
    out = preprocess(x, record.fs, highpass=s.get("highpass", 0.5), lowpass=s.get("lowpass", 40.0),
                     notch=s.get("notch", 60.0), target_fs=None, normalize=None,
                     gain=torch.from_numpy(record.gain), baseline=torch.from_numpy(record.baseline))
    return out.numpy()

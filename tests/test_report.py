"""Per-record reports: the ECG-paper PNG and the HTML page."""
import matplotlib.image as mpimg
import numpy as np
import pytest

from ecgkt.data.wfdb_io import STANDARD_LEADS
from ecgkt.predict import report
from ecgkt.predict.display import Display
from ecgkt.predict.explanations import ExplanationGate, explain, gate_config
from ecgkt.predict.inference import RecordResult
from predict_helpers import make_model, run_cli, synthetic_ecg


def fake_result(record="folder/rec<1>&x", warnings=()):
    labs = sorted([explain("potassium_high", 0.83), explain("calcium_low", 0.61), explain("sodium_high", 0.2)],
                  key=lambda f: -f.probability)
    return RecordResult(record=record, fs=500.0, duration_s=10.0, n_windows=1,
                        diagnoses=[("icd:I48", 0.93), ("icd:I489", 0.91), ("report:lbbb", 0.40),
                                   ("report:sinus_tachycardia", 0.05)],
                        labs=labs, repaired_leads=["aVR"], flat_leads=["V3"], warnings=list(warnings))


def test_report_png_size_and_content(tmp_path):
    mv = synthetic_ecg(10, 500, seed=1)
    result = fake_result()
    gate = ExplanationGate.from_config(gate_config({"potassium_high": 0.91, "calcium_low": 0.62}, 0.7))
    png, page = report.write_report(result, mv, 500.0, STANDARD_LEADS, tmp_path, "rec",
                                    display=Display.for_result(result, gate))
    img = mpimg.imread(png)
    assert img.shape[1::-1] == report.IMAGE_SIZE == (1800, 900)
    gray = img[..., :3].mean(axis=-1)
    assert gray.std() > 0.05  # not blank
    # the paper area holds grid (pinkish) and trace (near-black) pixels
    paper = img[int(0.2 * 900):int(0.85 * 900), int(0.05 * 1800):int(0.65 * 1800), :3]
    dark = (paper.max(axis=-1) < 0.25).mean()
    pink = ((paper[..., 0] > 0.85) & (paper[..., 1] < 0.85)).mean()
    assert 0.005 < dark < 0.2 and pink > 0.02, (dark, pink)
    html = page.read_text()
    assert 'src="rec.png"' in html and "rec&lt;1&gt;&amp;x" in html and "<1>" not in html
    # names, not keys; the parent I48 shown once, folded into its child's line; the gate at work
    assert "I48.9 Unspecified atrial fibrillation and atrial flutter (I48 0.93)" in html
    assert "Left bundle branch block" in html and "report:lbbb" in html  # the key stays, in the full table
    assert "High potassium predicted (probability 0.83, validation AUROC 0.91). Expected on the ECG: peaked" in html
    assert "Low calcium predicted" not in html  # AUROC 0.62 < 0.70: not an explanation
    assert "High sodium predicted" not in html  # no ECG signature: never an explanation


def test_report_without_validation_aurocs_says_so(tmp_path):
    png, page = report.write_report(fake_result(), synthetic_ecg(10, 500), 500.0, STANDARD_LEADS, tmp_path, "r")
    html = page.read_text()
    assert "lab explanations not shown" in html and "predicted (probability" not in html


def test_trace_follows_the_paper_scale(tmp_path):
    """A 1 mV square step must rise exactly 10 mm (10 small squares) on the drawing."""
    import matplotlib.pyplot as plt

    mv = np.zeros((12, 5000), np.float32)
    mv[1, 2500:] = 1.0  # lead II steps up by 1 mV at 5 s
    fig = plt.figure()
    ax = report._paper_axes(fig)
    report.draw_ecg(ax, mv, 500.0, STANDARD_LEADS)
    rhythm = [line for line in ax.lines if len(line.get_xdata()) == 5000]
    assert len(rhythm) == 1
    x, y = rhythm[0].get_xdata(), rhythm[0].get_ydata()
    assert x[-1] - x[0] == pytest.approx(4999 / 500 * 25.0)  # 25 mm/s
    assert y[-1] - y[0] == pytest.approx(10.0)  # 10 mm/mV
    plt.close(fig)


def test_absent_leads_are_labelled(tmp_path):
    mv = synthetic_ecg(10, 500)[:6]
    png, _ = report.write_report(fake_result("limb_only"), mv, 500.0, STANDARD_LEADS[:6], tmp_path, "limb")
    assert png.is_file()


def test_report_stems_are_unique():
    taken = set()
    names = ["a/x.hea", "b/x.hea", "c/x y", "d/ecg.dcm", "e/ecg.npy"]
    assert [report.report_stem(n, taken) for n in names] == ["x.hea", "x.hea_2", "x_y", "ecg", "ecg_2"]


def test_cli_writes_reports(cinc_dir, tmp_path):
    make_model().save_pretrained(tmp_path / "run" / "model")  # a pipeline run folder works as MODEL too
    r = run_cli("predict", tmp_path / "run", cinc_dir / "E07503", cinc_dir / "E07504", "--report", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    for name in ("E07503", "E07504"):
        img = mpimg.imread(tmp_path / "rep" / f"{name}.png")
        assert img.shape[1::-1] == report.IMAGE_SIZE and img[..., :3].std() > 0.05
        assert "E07" in (tmp_path / "rep" / f"{name}.html").read_text()

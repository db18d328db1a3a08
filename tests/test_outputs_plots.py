"""Figures of a run: the summary figure, ROC curves per label group, "too few positives" marks."""
import matplotlib.image as mpimg
import numpy as np
import pytest

from ecgkt.evaluate import plots, report

DX = ["icd:I48", "icd:I489", "icd:I10", "icd:E875", "icd:A419", "report:pvc", "report:lbbb", "report:long_qt"]
LABS = ["potassium_low", "potassium_high", "calcium_low", "calcium_high", "sodium_low", "sodium_high"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 400
    preds = {}
    for split in ("val", "test"):
        y = (rng.random((n, len(DX))) < 0.2).astype(np.float32)
        y[:, -1] = 0  # a label without a single positive
        preds[f"{split}_dx_y"] = y
        for k, m in enumerate(("signal_only", "ecgkt", "multimodal", "control")):
            preds[f"{split}_{m}"] = np.clip(0.25 * y * (k + 1) / 2 + rng.random(y.shape) * 0.8, 0, 1)
        ly = (rng.random((n, len(LABS))) < 0.15).astype(np.float32)
        ly[:, 2:4] = 0  # calcium: too few positives for an AUROC
        preds[f"{split}_lab_y"], preds[f"{split}_lab_mask"] = ly, np.ones_like(ly, dtype=bool)
        preds[f"{split}_lab_ecgkt"] = np.clip(0.4 * ly + rng.random(ly.shape) * 0.7, 0, 1)
    res = report.compute(preds, DX, LABS, n_boot=50)
    return res, preds, tmp_path_factory.mktemp("plots")


def _not_blank(path):
    img = mpimg.imread(path)[..., :3]
    assert img.std() > 0.05 and (img.mean(-1) < 0.3).mean() > 0.001, path
    return img


def test_summary_figure(run):
    res, _, out = run
    path = plots.summary_figure(res, out / "summary.png")
    _not_blank(path)


def test_roc_curves_by_group(run):
    res, preds, out = run
    probs = {m: preds[f"test_{m}"] for m in report.DX_MODELS}
    paths = plots.roc_curves_by_group(preds["test_dx_y"], probs, DX, out)
    names = sorted(p.name for p in paths)
    assert len(paths) == 4 and "roc_machine_report_statements.png" in names  # three ICD chapters + statements
    assert any("circulatory" in n for n in names)
    for p in paths:
        _not_blank(p)
    custom = plots.roc_curves_by_group(preds["test_dx_y"], probs, DX, out / "custom",
                                       group=lambda k: "ICD-10" if k.startswith("icd:") else "statements")
    assert sorted(p.name for p in custom) == ["roc_icd_10.png", "roc_statements.png"]


def test_lab_bars_mark_too_few_positives(run, monkeypatch):
    res, _, out = run
    assert not np.isfinite(res["labs"]["ecgkt"]["per_test_auroc"]["calcium"])
    texts = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text",
                        lambda self, *a, **k: (texts.append(a[2]), original(self, *a, **k))[1])
    _not_blank(plots.lab_bars(res["labs"], out / "lab_auroc.png"))
    assert texts == [plots.TOO_FEW]  # calcium only

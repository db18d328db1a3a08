import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from ecgkt.evaluate import metrics, report
from ecgkt.evaluate.bootstrap import interval, resamples


def _data(n=157, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < [0.1, 0.3, 0.5, 0.2][:c]).astype(np.float32)
    s = y * rng.normal(0.6, 1, (n, c)) + rng.normal(0, 1, (n, c))
    s[:20] = np.round(s[:20], 1)  # ties
    return y, s


def test_auroc_and_ap_match_sklearn():
    y, s = _data()
    for j in range(y.shape[1]):
        assert metrics.auroc(y[:, j], s[:, j]) == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
        assert metrics.average_precision(y[:, j], s[:, j]) == pytest.approx(
            average_precision_score(y[:, j], s[:, j]), abs=1e-12)
    assert np.isnan(metrics.auroc(np.zeros(5), np.arange(5)))


def test_masked_macro_auroc_skips_unknown_labels():
    y, s = _data()
    mask = np.ones_like(y, dtype=bool)
    mask[::3, 1] = False
    expect = np.mean([roc_auc_score(y[mask[:, j], j], s[mask[:, j], j]) for j in range(y.shape[1])])
    assert metrics.macro_auroc(y, s, mask) == pytest.approx(expect)


def test_thresholds_maximise_validation_f1():
    y, s = _data(seed=1)
    thr = metrics.tune_thresholds(y, s)
    for j in range(y.shape[1]):
        best = max(f1_score(y[:, j], s[:, j] >= t) for t in np.unique(s[:, j]))
        assert f1_score(y[:, j], s[:, j] >= thr[j]) == pytest.approx(best)


def test_bootstrap_interval_covers_estimate():
    idx = resamples(100, 200, 0)
    assert idx.shape == (200, 100) and idx.max() < 100
    lo, hi = interval(np.arange(1000.0))
    assert lo == pytest.approx(24.975) and hi == pytest.approx(974.025)


def _preds(gain_ecgkt, gain_control, n=300, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("val", "test"):
        y = (rng.random((n, 3)) < 0.3).astype(np.float32)
        out[f"{split}_dx_y"] = y
        for m, strength in (("signal_only", 0.5), ("ecgkt", 0.5 + gain_ecgkt), ("multimodal", 1.5),
                            ("control", 0.5 + gain_control)):
            out[f"{split}_{m}"] = y * strength + rng.normal(0, 1, y.shape)
        lab = (rng.random((n, 4)) < 0.2).astype(np.float32)
        out[f"{split}_lab_y"] = lab
        out[f"{split}_lab_mask"] = rng.random((n, 4)) > 0.1
        out[f"{split}_lab_ecgkt"] = lab * np.array([1.5, 1.5, 0, 0]) + rng.normal(0, 1, lab.shape)
    return out


def test_report_transfer_and_control_reading():
    names, labs = ["a", "b", "c"], ["potassium_low", "potassium_high", "sodium_low", "sodium_high"]
    res = report.compute(_preds(0.6, 0.0), names, labs, n_boot=200)
    c = res["comparisons"]
    assert c["ecgkt_minus_signal_only"]["ci"][0] > 0
    assert 0.3 < c["gap_bridged_ecgkt"]["value"] < 1.0
    assert abs(c["gap_bridged_control"]["value"]) < 0.15
    assert any("is knowledge transfer" in v for v in res["verdict"])
    lab = res["labs"]["ecgkt"]
    assert lab["per_test_auroc"]["potassium"] > 0.7 and abs(lab["negative_control_sodium"] - 0.5) < 0.1
    assert "negative control" in report.markdown(res)
    assert "signal-only" in report.table(res)


def test_report_says_when_gain_is_not_transfer():
    res = report.compute(_preds(0.6, 0.6), ["a", "b", "c"], ["k_low", "k_high", "x_low", "x_high"], n_boot=200)
    assert any("NOT knowledge transfer" in v for v in res["verdict"])


def test_report_says_when_ecgkt_does_not_win():
    res = report.compute(_preds(0.0, 0.0), ["a", "b", "c"], ["k_low", "k_high", "x_low", "x_high"], n_boot=200)
    assert any("does NOT significantly beat" in v for v in res["verdict"])
    assert not any("is knowledge transfer" in v for v in res["verdict"])

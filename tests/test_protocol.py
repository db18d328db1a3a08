"""The transfer experiment's machinery (docs/protocol.md): label subsets, the plan table, the fixed-step
sampler, the bootstrap AUROC kernel, linear probes, the label-efficiency analysis and its hypotheses."""
import numpy as np
import pytest
import torch

from ecgkt.evaluate import label_efficiency as le
from ecgkt.evaluate import metrics, probe
from ecgkt.evaluate.bootstrap import auroc_per_resample, counts, resamples
from ecgkt.train import config, distributed, plan, stages
from ecgkt.train.engine import FixedStepSampler
from ecgkt.train.fake import FakeECGDataset, fake_splits


def _ctx(tmp_path, *overrides):
    cfg = config.resolve(overrides=list(overrides))
    env = distributed.init("cpu")
    train, val, test = fake_splits(120, 24, 24, fs=100.0)
    # several ECGs per subject: subjects 0..39, three ECGs each
    train.subject_id = np.repeat(np.arange(40), 3)
    return stages.context_from_datasets(cfg, env, tmp_path, train, val, test)


def test_label_subsets_are_nested_subject_level_and_seeded(tmp_path):
    ctx = _ctx(tmp_path)
    subj = np.asarray(ctx.train.subject_id)
    for r in range(3):
        small, mid, full = (set(ctx.labelled_rows(f, r)) for f in (0.05, 0.25, 1.0))
        assert small <= mid <= full and len(small) < len(mid) < len(full) == len(ctx.train)
        for rows in (small, mid):  # a subject's ECGs come along whole
            chosen = set(subj[list(rows)])
            assert set(np.flatnonzero(np.isin(subj, list(chosen)))) == rows
        assert len(set(subj[list(small)])) == 2  # ceil(0.05 * 40)
    assert set(ctx.labelled_rows(0.25, 0)) != set(ctx.labelled_rows(0.25, 1))  # draws differ
    assert list(ctx.labelled_rows(0.25, 1)) == list(_ctx(tmp_path).labelled_rows(0.25, 1))  # and repeat


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    from ecgkt.data import prepare
    from ecgkt.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root / "raw", patients=150, seed=3)
    prepare(root / "raw", root / "store", progress=False)
    return root / "store"


def test_stage1_pool_has_no_validation_or_test_subject(tmp_path, synth_store):
    from ecgkt.data import ECGDataset

    store = synth_store
    cfg = config.resolve()
    ctx = stages.build_context(cfg, distributed.init("cpu"), tmp_path / "run", store)
    pool = set(np.asarray(ctx.train.subject_id))
    held = set(np.asarray(ctx.val.subject_id)) | set(np.asarray(ctx.test.subject_id))
    assert pool and held and not pool & held
    assert isinstance(ctx.train, ECGDataset)  # stage 1 trains on ctx.train (every train-fold ECG)
    flags = ctx.flags("test")
    assert flags["ed"].sum() <= flags["linked"].sum() <= len(ctx.test)
    assert not (flags["ed"] & ~flags["linked"]).any()
    assert 0 < flags["ed"].sum() < len(ctx.test)  # the synthetic data has ECGs outside every stay


def test_oracle_features_align_with_the_folds(tmp_path, synth_store):
    import pandas as pd

    from ecgkt.evaluate import oracle

    ctx = stages.build_context(config.resolve(), distributed.init("cpu"), tmp_path / "run", synth_store)
    path = oracle.truth_path(synth_store)
    assert path is not None and path.name == oracle.TRUTH_FILE
    feats = oracle.features(ctx)
    truth = pd.read_csv(path).set_index("study_id")
    for split in ("train", "val", "test"):
        assert feats[split].shape[0] == len(getattr(ctx, split)) and np.isfinite(feats[split]).all()
    sid = int(ctx.test.study_id[0])  # row i of the test features belongs to test study i
    assert feats["test"][0].tolist() == pytest.approx(oracle._select(truth.loc[[sid]].reset_index())[1][0].tolist())


def test_nonlinear_oracle_basis_reaches_what_a_linear_probe_cannot_with_train_statistics_only():
    from ecgkt.evaluate import oracle

    rng = np.random.default_rng(3)

    def split(n):
        x = rng.normal(size=(n, 4)) * [1.0, 2.0, 0.5, 3.0] + [0.0, 5.0, -1.0, 2.0]
        x[:, 2] = (x[:, 2] > -1.0)  # a binary parameter, like af or rbbb
        y = np.stack([(x[:, 0] * (x[:, 1] - 5.0) > 0),  # an interaction
                      (np.abs(x[:, 3] - 2.0) > 3.0)],  # a two-sided threshold
                     axis=1).astype(float)
        return x, y

    (xtr, ytr), (xva, yva), (xte, yte) = split(1501), split(403), split(397)
    feats = dict(train=xtr, val=xva, test=xte)
    nl = oracle.nonlinear_features(feats)
    assert all(np.isfinite(v).all() and v.shape[1] == nl["train"].shape[1] for v in nl.values())
    assert nl["train"].shape[1] < 4 + 4 * len(oracle.HINGE_QUANTILES) + oracle.RANDOM_UNITS  # repeated hinges dropped
    lin = probe.fit(xtr, ytr, xva, yva)
    non = probe.fit(nl["train"], ytr, nl["val"], yva)
    a_lin = metrics.macro_auroc(yte, lin.predict(xte))
    a_non = metrics.macro_auroc(yte, non.predict(nl["test"]))
    assert a_lin < 0.65 and a_non > 0.9, (a_lin, a_non)
    # the basis is a function of the train fold only: other test rows leave the train and val columns as they are
    other = oracle.nonlinear_features(dict(train=xtr, val=xva, test=xte[::-1] * 3.0))
    assert np.array_equal(other["train"], nl["train"]) and np.array_equal(other["val"], nl["val"])
    assert oracle.nonlinear_features(None) is None


def test_plan_is_one_table_with_dependencies_first():
    cfg = config.resolve(overrides=["protocol.fractions=[0.05,0.1,1.0]", "protocol.replicates=3",
                                    "protocol.probe_arms=[random,ecgkt,control,ssl,oracle,oracle_nl]"])
    jobs = plan.build(cfg)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    seen = set()
    for j in jobs:
        assert all(d in seen for d in j.deps), j
        seen.add(j.name)
    ft = [j for j in jobs if j.kind == "finetune"]
    assert len(ft) == len(plan.finetune_arms(cfg)) * (3 + 3 + 1)
    assert {"finetune", "signal_only", "multimodal", "control_finetune", "ssl_finetune"} <= set(names)
    assert "ecgkt_f5_r2" in names and "probe_oracle" in names and "probe_oracle_nl" in names
    assert [j.name for j in plan.closure(jobs, ["final_labs"])] == ["pretrain", "labs", "finetune", "final_labs"]
    with pytest.raises(Exception, match="1.0"):
        plan.build(config.resolve(overrides=["protocol.fractions=[0.1]"]))


def test_fixed_step_sampler_ranks_split_each_global_batch():
    one = list(FixedStepSampler(10, steps=7, batch_size=4, seed=3))
    assert len(one) == 28 and set(one) == set(range(10))
    parts = [list(FixedStepSampler(10, steps=7, batch_size=4, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    merged = [i for s in range(7) for r in (0, 1) for i in parts[r][2 * s: 2 * s + 2]]
    assert merged == one
    s = FixedStepSampler(10, steps=7, batch_size=4, seed=3)
    s.set_epoch(1)
    assert list(s) != one


def test_bootstrap_auroc_kernel_equals_resampled_auroc():
    rng = np.random.default_rng(0)
    n = 257
    y = rng.random(n) < 0.13
    score = np.round(rng.random(n) + 0.4 * y, 2)  # ties on purpose
    idx = resamples(n, 40, 5)
    fast = auroc_per_resample(y, score, counts(idx, n))
    slow = np.array([metrics.auroc(y[r], score[r]) for r in idx])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_probe_finds_a_linear_signal_and_picks_l2_on_validation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 7))
    logits = np.stack([2 * x[:, 0], -3 * x[:, 1] + x[:, 2]], 1)
    y = (logits + rng.logistic(size=logits.shape) > 0).astype(np.float64)
    p = probe.fit(x[:300], y[:300], x[300:], y[300:], l2_grid=(1e-4, 10.0))
    assert p.l2 == 1e-4 and p.val_macro_auroc > 0.8
    assert metrics.macro_auroc(y[300:], p.predict(x[300:])) == pytest.approx(p.val_macro_auroc)
    mask = rng.random(y.shape) > 0.3
    pm = probe.fit(x[:300], y[:300], x[300:], y[300:], mask[:300], mask[300:])
    assert pm.val_macro_auroc > 0.8


def test_duplicate_parent_counted_once():
    y = np.array([[1, 1, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=float)
    names = ["icd:I48", "icd:I489", "icd:E87", "icd:E875"]
    assert le.duplicate_parents(names, y) == {"icd:I48"}


def _rows(gains, n=400, n_lab=6, seed=0):
    """Synthetic predictions: each arm's scores carry `gain` more signal than signal-only's."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_lab)) < 0.25).astype(float)
    rows = []
    for (f, r, arm, ev), g in gains.items():
        noise = rng.normal(size=y.shape)
        rows.append(dict(fraction=f, replicate=r, arm=arm, evaluation=ev, test=(0.8 + g) * y + noise))
    return y, rows


def test_analysis_reads_a_gain_at_small_fractions_and_none_for_the_control():
    gains = {}
    for r in range(3):
        gains[(0.1, r, "signal_only", "finetune")] = 0.0
        gains[(0.1, r, "ecgkt", "finetune")] = 0.8
        gains[(0.1, r, "control", "finetune")] = 0.0
        gains[(0.1, r, "multimodal", "finetune")] = 1.6
        gains[(0.1, r, "oracle", "probe")] = 1.0
        gains[(0.1, r, "oracle_nl", "probe")] = 1.4
    for arm, g in (("signal_only", 0.9), ("ecgkt", 0.9), ("control", 0.9), ("multimodal", 2.0)):
        gains[(1.0, 0, arm, "finetune")] = g
    gains[(1.0, 0, "oracle", "probe")] = 1.2
    gains[(1.0, 0, "oracle_nl", "probe")] = 1.5
    y, rows = _rows(gains)
    res = le.analyse(rows, y, np.ones(len(y), bool), [f"icd:X{i}" for i in range(6)], y, synthetic=False,
                     min_positives=20, n_boot=200)
    c = res["comparisons"]["finetune"]
    assert c["0.1"]["ecgkt"]["ci"][0] > 0 and c["0.1"]["control"]["ci"][0] < 0 < c["0.1"]["control"]["ci"][1]
    assert 0.2 < c["0.1"]["ecgkt"]["gap_bridged_vs_multimodal"]["value"] < 0.8
    assert c["0.1"]["ecgkt"]["gap_bridged_vs_oracle"]["value"] > 0.5
    hyp = {(h["id"], h.get("evaluation")): h["verdict"] for h in le.hypotheses(res, None)}
    assert hyp[("H1", "finetune")] == "holds" and hyp[("H2", None)] == "holds"
    assert hyp[("H3", "finetune")] == "holds" and hyp[("H5", "finetune")] == "holds"
    assert set(res["ceilings"]) == {"0.1", "1.0"}
    assert res["ceilings"]["0.1"]["nonlinear"]["claim"] > res["ceilings"]["0.1"]["claim"]
    assert "oracle_nl" not in c["0.1"]  # a ceiling, not an arm compared with signal-only
    assert 0 < c["0.1"]["ecgkt"]["gap_bridged_vs_oracle_nonlinear"]["value"] < c["0.1"]["ecgkt"]["gap_bridged_vs_oracle"]["value"]
    md = "\n".join(le.markdown(res, le.hypotheses(res, None), None))
    assert "H1 (finetune): holds" in md


def test_symptom_codes_stay_out_of_the_headline():
    gains = {(1.0, 0, "signal_only", "finetune"): 0.0, (1.0, 0, "ecgkt", "finetune"): 0.5}
    y, rows = _rows(gains, n_lab=3)
    res = le.analyse(rows, y, np.ones(len(y), bool), ["icd:R07", "icd:I48", "icd:E87"], y, synthetic=False,
                     n_boot=50)
    assert res["labels"]["groups"]["symptom"] == ["icd:R07"]
    assert "icd:R07" not in res["labels"]["groups"]["all"]

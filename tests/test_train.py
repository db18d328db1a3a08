"""Training stages on a tiny in-memory dataset: mechanics and configuration (kill-and-resume of the whole
pipeline: tests/test_train_cli.py)."""
import numpy as np
import pytest
import torch

from ecgkt.errors import ECGKTError
from ecgkt.train import checkpoint, config, distributed, pipeline, stages
from ecgkt.train.fake import fake_splits

TINY = ["pretrain.epochs=2", "pretrain.batch_size=16", "labs.epochs=3", "labs.batch_size=16",
        "finetune.epochs=2", "finetune.min_steps=6", "finetune.rounds=2", "finetune.batch_size=16", "evaluate.bootstrap=30", "preprocessing.target_fs=50",
        "runtime.threads=2"]


def _ctx(run_dir, *extra):
    cfg = config.resolve(overrides=TINY + list(extra))
    env = distributed.init("cpu")
    pipeline.setup_run(cfg, run_dir, env)
    ctx = stages.context_from_datasets(cfg, env, run_dir, *fake_splits(48, 24, 24, fs=100.0))
    ctx.progress = False
    return ctx


def test_run_folder_refuses_another_config(tmp_path):
    _ctx(tmp_path)
    with pytest.raises(ECGKTError, match="another configuration.*pretrain.lr"):
        _ctx(tmp_path, "pretrain.lr=0.5")


def test_permuted_control_breaks_pairing_keeps_marginals():
    train, _, _ = fake_splits(40, 8, 8)
    tabs = stages.collect_tables(train)
    perm = stages.PermutedTabular(train, tabs["tab"], tabs["tab_mask"], seed=3)
    moved = sum(not torch.equal(torch.nan_to_num(perm[i]["tab"]), torch.nan_to_num(train[i]["tab"]))
                for i in range(len(train)))
    assert moved > 30
    assert torch.equal(perm[5]["signal"], train[5]["signal"]) and torch.equal(perm[5]["dx_y"], train[5]["dx_y"])
    rows = torch.stack([perm[i]["tab"] for i in range(len(train))])
    assert torch.equal(torch.nan_to_num(rows.sort(0).values), torch.nan_to_num(tabs["tab"].sort(0).values))


def test_frozen_stage2_keeps_encoder_and_finetuned_stage2_moves_it(tmp_path):
    ctx = _ctx(tmp_path)
    enc = stages.new_encoder(ctx.cfg).state_dict()
    frozen = stages.train_labs(ctx, enc, "labs")
    for k, v in enc.items():
        assert torch.equal(frozen["encoder"][k], v), k
    ctx2 = _ctx(tmp_path / "ft", "labs.encoder_lr=0.001")
    moved = stages.train_labs(ctx2, enc, "labs")
    assert any(not torch.equal(moved["encoder"][k], v) for k, v in enc.items() if v.is_floating_point())


def test_siglip_pretraining_runs(tmp_path):
    ctx = _ctx(tmp_path, "pretrain.loss=siglip", "pretrain.epochs=1")
    r = stages.pretrain(ctx)
    assert np.isfinite(r["history"][0]["train_loss"]) and "logit_bias" in r["state"]


def test_config_overrides_and_files(tmp_path):
    cfg = config.resolve(overrides=["model.size=small", "data.val_folds=[17]", "runtime.threads=null"])
    assert cfg.model.size == "small" and cfg.data.val_folds == [17] and cfg.runtime.threads is None
    with pytest.raises(ECGKTError, match="unknown configuration key 'model.sise'"):
        config.resolve(overrides=["model.sise=small"])
    with pytest.raises(ECGKTError, match="key.sub=value"):
        config.resolve(overrides=["pretrain.epochs"])
    (tmp_path / "c.toml").write_text("seed = 7\n[pretrain]\nloss = 'siglip'\n")
    cfg = config.resolve(tmp_path / "c.toml", ["seed=8"])
    assert cfg.seed == 8 and cfg.pretrain.loss == "siglip"
    (tmp_path / "bad.yaml").write_text("pretrain: [1, 2\n")
    with pytest.raises(ECGKTError, match="bad.yaml: cannot parse"):
        config.resolve(tmp_path / "bad.yaml")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save({"a": 1}, path)

    def boom(obj, f):
        f.write(b"partial")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        checkpoint.save({"a": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path) == {"a": 1}


def test_cli_single_stage_needs_its_predecessor(tmp_path):
    from ecgkt.cli import main

    store = tmp_path / "nostore"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    assert main(["train-labs", "--out", str(tmp_path / "run"), "--data", str(store), "--no-progress"]) == 2
    assert main(["pipeline", "--out", str(tmp_path / "r2"), "--set", "model.bogus=1"]) == 2


def test_several_stage1_seeds_feed_the_replicates(tmp_path):
    """protocol.pretrain_seeds=2: each pre-trained arm has two stage-1 runs (different weights); replicate r
    of the fine-tuning and probe arms starts from run r mod 2, and the sweep still holds every replicate."""
    from ecgkt.train import plan, runner

    ctx = _ctx(tmp_path, "protocol.pretrain_seeds=2", "protocol.replicates=2", "protocol.fractions=[0.5,1.0]",
               "protocol.finetune_arms=[signal_only,ecgkt]", "protocol.probe_arms=[random,ecgkt]",
               "control.enabled=false", "runtime.jobs=1")
    jobs = plan.build(ctx.cfg)
    by = plan.by_name(jobs)
    assert by["ecgkt_f50_r1"].deps == ("labs_s1",) and by["labs_s1"].deps == ("pretrain_s1",)
    assert by["ecgkt_f50_r0"].deps == ("labs",) and by["signal_only_f50_r1"].deps == ()
    runner.run(ctx, [j for j in jobs if j.kind != "final_labs"], 1, log=lambda *a: None)
    r = pipeline.load_results(ctx, jobs)
    a, b = r["pretrain"]["state"], r["pretrain_s1"]["state"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert set(r["probe_ecgkt"]["dx"]) == {"f50_r0", "f100_r0"} and set(r["probe_ecgkt_s1"]["dx"]) == {"f50_r1"}
    assert r["probe_ecgkt"]["lab"] is not None and r["probe_ecgkt_s1"]["lab"] is None
    rows = {(x["arm"], x["evaluation"], x["fraction"], x["replicate"]) for x in pipeline.sweep_rows(ctx, r)}
    assert {("ecgkt", e, 0.5, k) for e in ("probe", "finetune") for k in (0, 1)} <= rows
    assert {("random", "probe", 0.5, 1), ("signal_only", "finetune", 0.5, 1)} <= rows


def test_preprocess_ahead_gives_the_loaders_batches_preprocessed_in_another_thread():
    """The engine preprocesses each batch one batch ahead in a thread: the same batches in the same order,
    each carrying exactly what the Preprocessed returns for it, computed off the training thread; a failing
    batch raises in the training loop."""
    import threading

    from ecgkt.data import collate
    from ecgkt.models import ECGPreprocessor
    from ecgkt.train.engine import Preprocessed, preprocess_ahead

    train, _, _ = fake_splits(40, 8, 8, fs=100.0)
    loader = torch.utils.data.DataLoader(train, batch_size=8, collate_fn=collate)
    threads = []

    class Recording(Preprocessed):
        def __call__(self, batch, device):
            threads.append(threading.get_ident())
            return super().__call__(batch, device)

    prep = Recording(ECGPreprocessor(target_fs=50), 100.0, cache=False)
    plain = Preprocessed(ECGPreprocessor(target_fs=50), 100.0, cache=False)
    got = list(preprocess_ahead(loader, prep, torch.device("cpu")))
    want = list(loader)
    assert len(got) == len(want) == 5 and len(threads) == 5
    assert threading.get_ident() not in threads
    for g, w in zip(got, want):
        assert torch.equal(g["study_id"], w["study_id"])
        assert torch.equal(g["preprocessed"], plain(w, torch.device("cpu")))
        assert prep(g, torch.device("cpu")) is g["preprocessed"]

    class Broken(Preprocessed):
        def __call__(self, batch, device):
            raise ECGKTError("bad batch")

    with pytest.raises(ECGKTError, match="bad batch"):
        list(preprocess_ahead(loader, Broken(ECGPreprocessor(), 100.0), torch.device("cpu")))

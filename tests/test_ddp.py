"""Two gloo processes on the CPU, a few steps: the same weights as one process with the same global batch."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ecgkt.train import checkpoint, config, distributed, stages
from ecgkt.train.fake import fake_splits

# group norm and no dropout: batch statistics and random masks would otherwise legitimately differ
# between one batch of 8 and two of 4 (BatchNorm under DDP is per-rank unless SyncBatchNorm is used)
OVERRIDES = ["model.norm=group", "model.tab_dropout=0.0", "model.head_dropout=0.0", "pretrain.epochs=1",
             "pretrain.batch_size=8", "finetune.epochs=1", "finetune.min_steps=3",
             "finetune.rounds=1", "finetune.batch_size=8", "preprocessing.target_fs=50",
             "labs.epochs=2", "labs.batch_size=8", "runtime.log_every=1"]


def _train(run_dir, mode):
    cfg = config.resolve(overrides=OVERRIDES + [f"pretrain.distributed_loss={mode}"])
    env = distributed.init("cpu")
    ctx = stages.context_from_datasets(cfg, env, run_dir, *fake_splits(24, 8, 8, fs=100.0))
    ctx.progress = False
    pre = stages.pretrain(ctx)
    stages.finetune(ctx, "signal_only")
    stages.train_labs(ctx, stages._encoder_state(pre["state"]))  # frozen encoder: replicated head training


def _worker(rank, world, port, run_dir, mode):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        _train(run_dir, mode)
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["gather", "ring"])
def test_two_ranks_match_one_process(tmp_path, mode):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), mode), nprocs=2, join=True)
    _train(tmp_path / "single", mode)
    lab_a, lab_b = (checkpoint.load(tmp_path / d / "stages/labs/result.pt")["lab_head"] for d in ("ddp", "single"))
    for k in lab_b:
        torch.testing.assert_close(lab_a[k], lab_b[k], rtol=1e-3, atol=1e-3)
    for stage in ("pretrain", "signal_only"):
        a = checkpoint.load(tmp_path / "ddp/stages" / stage / "result.pt")
        b = checkpoint.load(tmp_path / "single/stages" / stage / "result.pt")
        assert a["history"][0]["samples"] == b["history"][0]["samples"] == 24
        assert a["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"], rel=1e-4)
        torch.manual_seed(stages.STAGE_SEEDS[stage])  # the stage's own seed (seed 0): its initial encoder
        init = stages.new_encoder(config.resolve(overrides=OVERRIDES)).state_dict()
        moved = apart = 0.0
        for k, v in b["state"].items():
            # Adam divides by sqrt(v): where a gradient is near 0, float32 summation-order noise (the ring
            # merges log-sum-exps in another order) moves a weight by up to a fraction of one step (lr 3e-3)
            torch.testing.assert_close(a["state"][k], v, rtol=1e-3, atol=3e-4, msg=f"{stage}: {k}")
            key = k.replace("ecg_encoder.", "").replace("encoder.", "", 1) if "encoder." in k else None
            if key in init and v.is_floating_point():
                moved += float((v - init[key]).norm() ** 2)
                apart += float((a["state"][k] - v).norm() ** 2)
        # training moved the encoder, and the two runs agree to well under 1% of that movement
        assert moved > 1e-4 and apart ** 0.5 < 0.01 * moved ** 0.5, (apart, moved)

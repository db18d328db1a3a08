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


# ------------------------------------------------------------------ a worker lost under torchrun
TORCHRUN_SETTINGS = ["data.synth_patients=200", "preprocessing.target_fs=50", "preprocessing.train_crop_seconds=2.0",
                     "pretrain.epochs=3", "pretrain.batch_size=32", "runtime.threads=1"]


def _torchrun_pretrain(run, *extra, restarts=0, data=None):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           f"--max-restarts={restarts}", "-m", "ecgkt.cli", "pretrain", "--out", str(run), "--no-progress"]
    cmd += ["--data", str(data)] if data else []
    for item in TORCHRUN_SETTINGS + list(extra):
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _two_node_pretrain(run, *extra, data):
    """Two torchrun agents on localhost as two nodes of one rank each, --max-restarts=2, TCPStore sharing off."""
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--max-restarts=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=nodes{port}",
           "-m", "ecgkt.cli", "pretrain", "--out", str(run), "--no-progress", "--data", str(data)]
    for item in TORCHRUN_SETTINGS + list(extra):
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        outputs = [n.communicate(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    return [subprocess.CompletedProcess(cmd, n.returncode, out, err) for n, (out, err) in zip(nodes, outputs)]


def test_torchrun_restarts_a_killed_worker_and_the_stage_resumes_where_it_stopped(tmp_path):
    """Rank 1 is SIGKILLed after epoch 1 of 3; rank 0 is then stuck in a collective. torchrun --max-restarts=1
    tears the group down and restarts it; the stage resumes from the epoch-1 checkpoint and ends with the same
    weights and history as an uninterrupted 2-rank run; so does the same kill with two simulated nodes."""
    a = _torchrun_pretrain(tmp_path / "a")
    assert a.returncode == 0, a.stderr[-3000:]
    assert a.stdout.count("stage 1 done") == 1  # rank 0 speaks for the group
    store = tmp_path / "a/data/store"
    lost = _torchrun_pretrain(tmp_path / "lost", "runtime.fail_after=pretrain@1:kill", data=store)
    assert lost.returncode != 0 and "killing rank 1" in lost.stderr  # no restarts allowed: the job fails...
    b = _torchrun_pretrain(tmp_path / "b", "runtime.fail_after=pretrain@1:kill", restarts=1, data=store)
    assert b.returncode == 0, b.stderr[-3000:]
    assert "killing rank 1" in b.stderr and "exitcode: -9" in b.stderr
    assert b.stdout.count("[pretrain] epoch=1 ") == 1 and "[pretrain] epoch=3 " in b.stdout  # resumed at epoch 2
    # ...and resubmitting it (what a scheduler does) resumes from the checkpoint as well
    again = _torchrun_pretrain(tmp_path / "lost", data=store)
    assert again.returncode == 0 and "[pretrain] epoch=1 " not in again.stdout, again.stderr[-3000:]
    # two simulated nodes (one rank each, c10d rendezvous, the opt-out docs/training.md gives for several nodes)
    nodes = _two_node_pretrain(tmp_path / "nodes", "runtime.fail_after=pretrain@1:kill", data=store)
    assert all(n.returncode == 0 for n in nodes), [n.stderr[-3000:] for n in nodes]
    assert "killing rank 1" in "".join(n.stderr for n in nodes)
    ref = checkpoint.load(tmp_path / "a/stages/pretrain/result.pt")
    for run in ("b", "lost", "nodes"):
        got = checkpoint.load(tmp_path / run / "stages/pretrain/result.pt")
        for k, v in ref["state"].items():
            assert torch.equal(got["state"][k], v), (run, k)
        strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ref["history"]]
        assert [{k: v for k, v in h.items() if k != "seconds"} for h in got["history"]] == strip, run

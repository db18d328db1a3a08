"""Stage-1 training throughput (ECGs/s) and the data loader's throughput alone on the same store.

The loader must deliver batches >= 5x faster than the training step consumes them, so training never waits on
data. Both are measured in the same run, on the same store, with the pipeline's default configuration:
  - loader: ECGDataset + DataLoader (int16 signals, gains, tabular rows, labels), batches only;
  - step: preprocess on the batch's device (ecgkt.preprocess, uncached: the worst case) + ECG and tabular
    encoders + CLIP loss + backward + AdamW, the batch already in memory;
  - the step again with the preprocessing cache warm (what epochs 2.. of the pipeline do).
On a CUDA machine the step is also measured on the GPU (bf16 autocast).

Usage:
  python benches/bench_train.py                    # generates a 300-patient synthetic store in a temp dir
  python benches/bench_train.py --store RUN/data/store --size tiny --steps 20 --json out.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _store(args, tmp: Path) -> Path:
    if args.store:
        return Path(args.store)
    from ecgkt.data import prepare
    from ecgkt.data.synth import generate

    generate(tmp / "raw", patients=args.patients, seed=0, progress=False)
    prepare(tmp / "raw", tmp / "store", progress=False)
    return tmp / "store"


def loader_throughput(dataset, batch_size: int, workers: int, seconds: float) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for batch in loader:
            n += len(batch["study_id"])
            if time.perf_counter() - t0 >= seconds:
                break
    return n / (time.perf_counter() - t0)


def step_throughput(cfg, dataset, device, steps: int, cached: bool) -> float:
    from torch.utils.data import DataLoader

    from ecgkt.models import ContrastiveModel, ECGPreprocessor
    from ecgkt.train import stages
    from ecgkt.train.distributed import DistEnv
    from ecgkt.train.engine import Preprocessed, autocast

    p, m = cfg["pretrain"], cfg["model"]
    env = DistEnv(device=device)
    torch.manual_seed(0)
    model = ContrastiveModel(stages.new_encoder(cfg), len(dataset.tab_names), m["embed_dim"], m["tab_hidden"],
                             m["tab_layers"], m["tab_dropout"], p["temperature"]).to(device)
    model.tab_encoder.normalizer.fit(torch.as_tensor(dataset.tab), torch.as_tensor(dataset.tab_mask))
    loss_fn, _ = stages.contrastive_loss(cfg, env)
    prep = Preprocessed(ECGPreprocessor(**stages._prep_settings(cfg)), float(dataset.fs), cache=cached,
                        crop_seconds=cfg["preprocessing"].get("train_crop_seconds"))
    optim = torch.optim.AdamW(model.parameters(), lr=p["lr"])
    batch = next(iter(DataLoader(dataset, batch_size=p["batch_size"], shuffle=True)))

    def step():
        with autocast(env, cfg["runtime"]["amp"]):
            e, t = model(prep.train_view(batch, device), batch["tab"].to(device), batch["tab_mask"].to(device))
            loss = loss_fn(e.float(), t.float(), model.logit_scale.exp(), model.logit_bias)
        optim.zero_grad()
        loss.backward()
        optim.step()

    step()  # warm-up (and fills the cache when cached)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * p["batch_size"] / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="a prepared signal store (default: generate a small synthetic one)")
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--size", default=None, help="ECG encoder size (default: the config's)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--loader-seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    ap.add_argument("--json", help="append the result row to this JSON file")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    from ecgkt.data import ECGDataset
    from ecgkt.train import config

    cfg = config.resolve(overrides=[f"model.size={args.size}"] if args.size else [])
    torch.set_num_threads(args.threads or cfg["runtime"]["threads"] or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        dataset = ECGDataset(_store(args, Path(tmp)))
        row = dict(bench="train_stage1", size=cfg["model"]["size"], batch=cfg["pretrain"]["batch_size"],
                   target_fs=cfg["preprocessing"]["target_fs"], crop_s=cfg["preprocessing"]["train_crop_seconds"],
                   threads=torch.get_num_threads(), records=len(dataset))
        row["loader_ecg_per_s"] = loader_throughput(dataset, cfg["pretrain"]["batch_size"], 0, args.loader_seconds)
        cpu = torch.device("cpu")
        row["cpu_step_ecg_per_s_uncached"] = step_throughput(cfg, dataset, cpu, args.steps, cached=False)
        row["cpu_step_ecg_per_s_cached"] = step_throughput(cfg, dataset, cpu, args.steps, cached=True)
        row["loader_over_step_uncached"] = row["loader_ecg_per_s"] / row["cpu_step_ecg_per_s_uncached"]
        row["loader_over_step_cached"] = row["loader_ecg_per_s"] / row["cpu_step_ecg_per_s_cached"]
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            row["gpu"] = torch.cuda.get_device_name()
            row["gpu_step_ecg_per_s_uncached"] = step_throughput(cfg, dataset, gpu, args.steps, cached=False)
            row["gpu_step_ecg_per_s_cached"] = step_throughput(cfg, dataset, gpu, args.steps, cached=True)
            row["loader_over_gpu_step_cached"] = row["loader_ecg_per_s"] / row["gpu_step_ecg_per_s_cached"]
    for k, v in row.items():
        print(f"{k:32s} {v:.1f}" if isinstance(v, float) else f"{k:32s} {v}")
    ok = row["loader_over_step_cached"] >= 5
    print(f"loader / training step (cached) = {row['loader_over_step_cached']:.1f}x  (target >= 5x: "
          f"{'met' if ok else 'NOT met'})")
    if args.json:
        path = Path(args.json)
        rows = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(rows + [row], indent=2))
    return row


if __name__ == "__main__":
    main()

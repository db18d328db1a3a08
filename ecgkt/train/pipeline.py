"""`ecgkt pipeline`: data -> stage 1 -> 2 -> 3 -> signal-only -> multimodal -> control -> evaluation.

Everything lands in the run folder:

    RUN/config.yaml        the resolved configuration (seed included)
    RUN/data/              the synthetic dataset and its signal store (when no --data was given)
    RUN/stages/<stage>/    checkpoint.pt (per epoch) and result.pt (stage finished), atomic
    RUN/model/             the final ECG-only model (ECGKTModel.save_pretrained)
    RUN/predictions.npz    validation/test probabilities of every model
    RUN/results.json, RUN/results.md, RUN/plots/*.png

Rerunning the same command resumes: finished stages are loaded, an interrupted stage continues from its last
epoch checkpoint, and the final results equal those of an uninterrupted run (every random choice is derived
from the seed, the stage and the epoch)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..errors import ECGKTError
from . import checkpoint, config as config_mod, distributed, stages

# Keys that may change between a run and its resumption without changing its results.
_RESUME_FREE = {("runtime", "fail_after"), ("runtime", "log_every"), ("runtime", "threads"),
                ("data", "num_workers"), ("runtime", "device")}


def _comparable(cfg: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    for a, b in _RESUME_FREE:
        out.get(a, {}).pop(b, None)
    return out


def setup_run(cfg: dict, run_dir, env) -> Path:
    """Creates RUN, records the resolved config; refuses to resume a run started with another config."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if path.is_file():
        old = yaml.safe_load(path.read_text())
        if _comparable(old) != _comparable(cfg):
            diff = sorted(f"{s}.{k}" for s in cfg if isinstance(cfg[s], dict)
                          for k in cfg[s] if (s, k) not in _RESUME_FREE and old.get(s, {}).get(k) != cfg[s][k])
            raise ECGKTError(f"{run_dir}: this run folder was started with another configuration "
                             f"(differs in {', '.join(diff) or 'top-level keys'}); use a new --out")
    if env.is_main:  # the testing aid is not part of the run's configuration
        config_mod.save_resolved({**cfg, "runtime": {**cfg["runtime"], "fail_after": None}}, path)
    return run_dir


def ensure_store(cfg: dict, run_dir: Path, data_dir, env, progress: bool = True) -> Path:
    """A prepared signal store: DIR itself when it is one; else `prepare` DIR (MIMIC-shaped roots);
    with no DIR, generate the default synthetic dataset into RUN/data first."""
    from ..data import prepare

    if data_dir is not None and (Path(data_dir) / "manifest.json").is_file():
        return Path(data_dir)
    store = run_dir / "data" / "store"
    if env.is_main and not (store / "manifest.json").is_file():
        if data_dir is None:
            from ..data.synth import generate

            raw = run_dir / "data" / "raw"
            if not (raw / ".complete").is_file():
                print(f"generating the synthetic dataset ({cfg['data']['synth_patients']} patients) into {raw}")
                generate(raw, patients=int(cfg["data"]["synth_patients"]), seed=int(cfg["data"]["synth_seed"]))
                (raw / ".complete").write_text("ok\n")
            data_dir = raw
        elif not Path(data_dir).is_dir():
            raise ECGKTError(f"--data {data_dir}: no such folder")
        print(f"preparing the signal store {store} from {data_dir}", flush=True)
        prepare(data_dir, store, progress=progress)
    distributed.barrier(env)
    return store


def _set_threads(cfg):
    if cfg["runtime"].get("threads"):
        torch.set_num_threads(int(cfg["runtime"]["threads"]))


def run(cfg: dict, run_dir, data_dir=None, progress: bool = True) -> dict | None:
    """Runs the whole pipeline; returns the results dict on rank 0 (None on other ranks)."""
    t0 = time.time()
    _set_threads(cfg)
    env = distributed.init(cfg["runtime"]["device"])
    run_dir = setup_run(cfg, run_dir, env)
    store = ensure_store(cfg, run_dir, data_dir, env, progress)
    ctx = stages.build_context(cfg, env, run_dir, store)
    ctx.progress = progress
    if env.is_main:
        print(f"data: {len(ctx.train)} train / {len(ctx.val)} validation / {len(ctx.test)} test ECGs, "
              f"{len(ctx.tab_names)} tabular features, {len(ctx.lab_label_names)} lab labels, "
              f"{len(ctx.dx_names)} diagnoses; device {env.device}, world size {env.world_size}")
    results = train_all(ctx, progress)
    if not env.is_main:
        return None
    print("evaluating every model on the test fold (bootstrap CIs, plots: a few minutes on CPU)", flush=True)
    out = evaluate_run(ctx, results)
    timing = dict(total_seconds=time.time() - t0)
    checkpoint.save_json(timing, run_dir / "timing.json")
    return out


def train_all(ctx, progress: bool = True) -> dict:
    plan = ["pretrain", "labs", "finetune", "final_labs", "signal_only", "multimodal"]
    if ctx.cfg["control"]["enabled"]:
        plan += ["control_pretrain", "control_labs", "control_finetune"]
    bar = tqdm(total=len(plan), desc="pipeline", disable=None if (progress and ctx.env.is_main) else True, position=0)
    r = {}

    def step(name, fn):
        bar.set_description(f"pipeline: {name}")
        r[name] = fn()
        bar.update(1)

    step("pretrain", lambda: stages.pretrain(ctx, "pretrain"))
    step("labs", lambda: stages.train_labs(ctx, stages._encoder_state(r["pretrain"]["state"]), "labs"))
    step("finetune", lambda: stages.finetune(ctx, "finetune", r["labs"]["encoder"], r["labs"]["lab_head"]))
    # stage 3 fine-tuned the encoder: fit the explanation head again on the final encoder (frozen), so the
    # final model's lab probabilities come from the embedding it actually computes
    step("final_labs", lambda: stages.train_labs(ctx, stages._encoder_state(r["finetune"]["state"], "encoder."),
                                                 "final_labs"))
    step("signal_only", lambda: stages.finetune(ctx, "signal_only"))
    step("multimodal", lambda: stages.multimodal(ctx, "multimodal"))
    if ctx.cfg["control"]["enabled"]:
        step("control_pretrain", lambda: stages.pretrain(ctx, "control_pretrain", permute=True))
        step("control_labs", lambda: stages.train_labs(
            ctx, stages._encoder_state(r["control_pretrain"]["state"]), "control_labs"))
        step("control_finetune", lambda: stages.finetune(
            ctx, "control_finetune", r["control_labs"]["encoder"], r["control_labs"]["lab_head"]))
    bar.close()
    return r


def final_model(ctx, r: dict):
    """The stage-3 model with the explanation head refitted on its encoder (when that stage ran)."""
    model = stages.load_ecgkt(ctx, r["finetune"])
    if "final_labs" in r:
        model.lab_head.load_state_dict(r["final_labs"]["lab_head"])
    return model


def save_final_model(ctx, r: dict) -> Path:
    """The final ECG-only model, with the provenance of its pre-training (tabular normalisation)."""
    model = final_model(ctx, r)
    pre = r["pretrain"]["state"]
    model.config["pretraining"] = dict(
        loss=ctx.cfg["pretrain"]["loss"], tab_names=ctx.tab_names,
        tab_mean=pre["tab_encoder.normalizer.mean"].tolist(), tab_std=pre["tab_encoder.normalizer.std"].tolist(),
        seed=ctx.cfg["seed"])
    model.config["training_fs"] = ctx.fs
    return model.save_pretrained(ctx.run_dir / "model")


def collect_predictions(ctx, r: dict) -> dict:
    preds = {}
    for split in ("val", "test"):
        t = ctx.tables(split)
        preds[f"{split}_dx_y"] = t["dx_y"].numpy()
        preds[f"{split}_lab_y"] = t["lab_y"].numpy()
        preds[f"{split}_lab_mask"] = t["lab_mask"].numpy()
        for name, key in (("ecgkt", "finetune"), ("signal_only", "signal_only"), ("control", "control_finetune")):
            if key in r:
                m = final_model(ctx, r) if name == "ecgkt" else stages.load_ecgkt(ctx, r[key])
                p = stages.predict_split(ctx, lambda x, b: _both(m, x), split)
                preds[f"{split}_{name}"] = p["dx"]
                if name == "ecgkt":
                    preds[f"{split}_lab_ecgkt"] = p["lab"]
        if "multimodal" in r:
            mm = stages.load_multimodal(ctx, r["multimodal"])
            preds[f"{split}_multimodal"] = stages.predict_split(
                ctx, lambda x, b: dict(dx=mm(x, b["tab"].to(ctx.env.device), b["tab_mask"].to(ctx.env.device))),
                split)["dx"]
        for name, key in (("stage2", "labs"), ("control_stage2", "control_labs")):
            if key in r:
                m = stages.new_ecgkt_model(ctx, r[key]["encoder"])
                m.lab_head.load_state_dict(r[key]["lab_head"])
                m.to(ctx.env.device).eval()
                preds[f"{split}_lab_{name}"] = stages.predict_split(
                    ctx, lambda x, b: dict(lab=m(x)["lab_logits"]), split)["lab"]
    return preds


def _both(model, x):
    out = model(x)
    return dict(dx=out["dx_logits"], lab=out["lab_logits"])


def evaluate_run(ctx, r: dict) -> dict:
    run_dir = ctx.run_dir
    if "finetune" in r:
        save_final_model(ctx, r)
    preds = collect_predictions(ctx, r)
    np.savez(run_dir / "predictions.npz", **preds)
    histories = {k: v.get("history", []) for k, v in r.items()}
    checkpoint.save_json(histories, run_dir / "histories.json")
    return write_results(run_dir, preds, histories, ctx.dx_names, ctx.lab_label_names, ctx.cfg)


def write_results(run_dir, preds: dict, histories: dict, dx_names, lab_label_names, cfg: dict) -> dict:
    from ..evaluate import plots, report

    run_dir = Path(run_dir)
    e = cfg["evaluate"]
    res = report.compute(preds, dx_names, lab_label_names, int(e["bootstrap"]), float(e["ci"]), int(e["seed"]),
                         int(e.get("lab_min_positives", 10)))
    res["seed"] = cfg["seed"]
    res["config"] = {**cfg, "runtime": {**cfg["runtime"], "fail_after": None}}
    checkpoint.save_json(res, run_dir / "results.json")
    (run_dir / "results.md").write_text(report.markdown(res))
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots.training_curves(histories, plot_dir / "training_curves.png")
    probs = {m: preds[f"test_{m}"] for m in report.DX_MODELS if f"test_{m}" in preds}
    plots.roc_curves(np.asarray(preds["test_dx_y"]), probs, dx_names, plot_dir / "roc_curves.png")
    if res["labs"]:
        plots.lab_bars(res["labs"], plot_dir / "lab_auroc.png")
    return res

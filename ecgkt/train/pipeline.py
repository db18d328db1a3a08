"""`ecgkt pipeline`: data -> the jobs of the plan (stage 1 of each pre-training arm, stage 2, fine-tuning of
every arm at every label fraction, the linear probes) -> evaluation (docs/protocol.md).

Everything lands in the run folder:

    RUN/config.yaml        the resolved configuration (seed included)
    RUN/data/              the synthetic dataset and its signal store (when no --data was given)
    RUN/stages/<job>/      checkpoint.pt (per epoch) and result.pt (job finished), atomic
    RUN/model/             the final ECG-only model (ECGKTModel.save_pretrained)
    RUN/predictions.npz    validation/test probabilities of the paper's comparison (100 % labels)
    RUN/results.json, RUN/results.md, RUN/plots/*.png

Rerunning the same command resumes: finished jobs are loaded, an interrupted job continues from its last
epoch checkpoint, and the final results equal those of an uninterrupted run (every random choice is derived
from the seed and the job's name)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import ECGKTError
from ..evaluate import oracle
from ..io import atomic_write, atomic_write_text
from . import checkpoint, config as config_mod, distributed, plan, runner, stages
from .config import Config

# Keys that may change between a run and its resumption without changing its results.
_RESUME_FREE = {("runtime", "fail_after"), ("runtime", "log_every"), ("runtime", "threads"), ("runtime", "jobs"),
                ("data", "num_workers"), ("runtime", "device")}


def _comparable(recorded: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in recorded.items()}
    for a, b in _RESUME_FREE:
        out.get(a, {}).pop(b, None)
    return out


def setup_run(cfg: Config, run_dir, env) -> Path:
    """Creates RUN, records the resolved config; refuses to resume a run started with another config."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if path.is_file():
        old, new = yaml.safe_load(path.read_text()), cfg.recorded()
        if not isinstance(old, dict) or _comparable(old) != _comparable(new):
            old = old if isinstance(old, dict) else {}
            diff = sorted(f"{s}.{k}" for s in new if isinstance(new[s], dict)
                          for k in new[s] if (s, k) not in _RESUME_FREE
                          and (old.get(s) if isinstance(old.get(s), dict) else {}).get(k) != new[s][k])
            raise ECGKTError(f"{run_dir}: this run folder was started with another configuration "
                             f"(differs in {', '.join(diff) or 'top-level keys'}); use a new --out")
    if env.is_main:  # the testing aid is not part of the run's configuration
        config_mod.save_resolved(cfg, path)
    return run_dir


def ensure_store(cfg: Config, run_dir: Path, data_dir, env, progress: bool = True) -> Path:
    """A prepared signal store: DIR itself when it is one; else `prepare` DIR (MIMIC-shaped roots);
    with no DIR, generate the default synthetic dataset into RUN/data first."""
    from ..data import prepare

    if data_dir is not None and (Path(data_dir) / "manifest.json").is_file():
        return Path(data_dir)
    store = run_dir / "data" / "store"
    progress = progress and sys.stderr.isatty()  # bars only on a terminal, never in a log file
    if env.is_main and not (store / "manifest.json").is_file():
        if data_dir is None:
            from ..data.synth import generate

            raw = run_dir / "data" / "raw"
            if not (raw / ".complete").is_file():
                print(f"generating the synthetic dataset ({cfg.data.synth_patients} patients) into {raw}")
                generate(raw, patients=int(cfg.data.synth_patients), seed=int(cfg.data.synth_seed),
                         progress=progress)
                (raw / ".complete").write_text("ok\n")
            data_dir = raw
        elif not Path(data_dir).is_dir():
            raise ECGKTError(f"--data {data_dir}: no such folder")
        print(f"preparing the signal store {store} from {data_dir}", flush=True)
        prepare(data_dir, store, progress=progress)
    distributed.barrier(env)
    return store


def _set_threads(cfg):
    if cfg.runtime.threads:
        torch.set_num_threads(int(cfg.runtime.threads))


def run(cfg: Config, run_dir, data_dir=None, progress: bool = True) -> dict | None:
    """Runs the whole pipeline; returns the results dict on rank 0 (None on other ranks)."""
    t0 = time.time()
    _set_threads(cfg)
    jobs = plan.build(cfg)
    env = distributed.init(cfg.runtime.device)
    run_dir = setup_run(cfg, run_dir, env)
    store = ensure_store(cfg, run_dir, data_dir, env, progress)
    ctx = stages.build_context(cfg, env, run_dir, store)
    ctx.progress = progress
    if env.is_main:
        print(f"data: {len(ctx.train)} train / {len(ctx.val)} validation / {len(ctx.test)} test ECGs "
              f"({len(ctx.dx_rows('train'))} / {len(ctx.dx_rows('val'))} / {len(ctx.dx_rows('test'))} in a stay), "
              f"{len(ctx.tab_names)} tabular features, {len(ctx.lab_label_names)} lab labels, "
              f"{len(ctx.dx_names)} diagnoses; device {env.device}, world size {env.world_size}; "
              f"{len(jobs)} jobs, {_workers(cfg, env)} at a time")
    runner.run(ctx, jobs, _workers(cfg, env), log=print if env.is_main else (lambda *a: None))
    if not env.is_main:
        return None
    print("evaluating every model on the test folds (bootstrap CIs, plots: a minute or more on CPU)", flush=True)
    out = evaluate_run(ctx, load_results(ctx, jobs))
    checkpoint.save_json(dict(total_seconds=time.time() - t0), run_dir / "timing.json")
    return out


def _workers(cfg, env) -> int:
    return 1 if env.distributed else max(1, int(cfg.runtime.jobs or 1))


def load_results(ctx, jobs) -> dict:
    """The results of the plan's finished jobs, by name."""
    out = {}
    for job in jobs:
        path = ctx.stage_dir(job.name) / "result.pt"
        if path.is_file():
            out[job.name] = checkpoint.load(path)
    return out


def final_model(ctx, r: dict):
    """The stage-3 model with the explanation head refitted on its encoder (when that stage ran)."""
    model = stages.load_ecgkt(ctx, r["finetune"])
    if "final_labs" in r:
        model.lab_head.load_state_dict(r["final_labs"]["lab_head"])
    return model


def save_final_model(ctx, r: dict, val_lab_probs=None) -> Path:
    """The final ECG-only model, with the provenance of its pre-training (tabular normalisation) and, given
    its lab probabilities on the validation folds, the evidence gate of its explanations (the validation
    AUROC of every lab output: only outputs above the threshold may explain a diagnosis)."""
    model = final_model(ctx, r)
    if val_lab_probs is not None:
        from ..evaluate import metrics
        from ..predict.explanations import gate_config

        t = ctx.tables("val")
        per = metrics.per_label(metrics.auroc, t["lab_y"].numpy(), val_lab_probs, t["lab_mask"].numpy().astype(bool))
        model.config.update(gate_config(dict(zip(ctx.lab_label_names, per.tolist()))))
    pre = r["pretrain"]["state"]
    model.config["pretraining"] = dict(
        loss=ctx.cfg.pretrain.loss, tab_names=ctx.tab_names,
        tab_mean=pre["tab_encoder.normalizer.mean"].tolist(), tab_std=pre["tab_encoder.normalizer.std"].tolist(),
        seed=ctx.cfg.seed)
    model.config["training_fs"] = ctx.fs
    return model.save_pretrained(ctx.run_dir / "model")


PAPER_MODELS = dict(ecgkt="finetune", signal_only="signal_only", multimodal="multimodal", control="control_finetune")


def collect_predictions(ctx, r: dict) -> dict:
    """Validation/test probabilities of the paper's comparison (100 % labels, replicate 0) on the diagnosis
    cohort, and lab probabilities of the final model and of stage 2 on every validation/test ECG."""
    preds = {}
    for split in ("val", "test"):
        preds[f"{split}_dx_y"] = np.asarray(ctx.dx_split(split).dx_y)
        t = ctx.tables(split)
        preds[f"{split}_lab_y"] = t["lab_y"].numpy()
        preds[f"{split}_lab_mask"] = t["lab_mask"].numpy()
        for name, key in PAPER_MODELS.items():
            if key in r:
                preds[f"{split}_{name}"] = r[key]["pred"][split].numpy()
        if "finetune" in r:
            m = final_model(ctx, r)
            preds[f"{split}_lab_ecgkt"] = stages.predict_split(ctx, lambda x, b: dict(lab=m(x)["lab_logits"]),
                                                               split)["lab"]
        if "labs" in r:
            m = stages.new_ecgkt_model(ctx, r["labs"]["encoder"])
            m.lab_head.load_state_dict(r["labs"]["lab_head"])
            m.to(ctx.env.device).eval()
            preds[f"{split}_lab_stage2"] = stages.predict_split(ctx, lambda x, b: dict(lab=m(x)["lab_logits"]),
                                                                split)["lab"]
    return preds


def sweep_rows(ctx, r: dict) -> list[dict]:
    """Every (fraction, replicate, arm, evaluation) of the plan that has a result, with its test
    probabilities on the diagnosis cohort."""
    rows = []
    for job in plan.build(ctx.cfg):
        res = r.get(job.name)
        if res is None:
            continue
        if job.kind == "finetune":
            rows.append(dict(fraction=job.fraction, replicate=job.replicate, arm=job.arm, evaluation="finetune",
                             n_labelled=res.get("n_labelled"), test=res["pred"]["test"].numpy()))
        elif job.kind == "probe" and res.get("available"):
            for v in res["dx"].values():
                rows.append(dict(fraction=v["fraction"], replicate=v["replicate"], arm=job.arm, evaluation="probe",
                                 n_labelled=v["n_labelled"], test=v["test"].numpy()))
    return rows


def evaluate_run(ctx, r: dict) -> dict:
    run_dir = ctx.run_dir
    preds = collect_predictions(ctx, r)
    if "finetune" in r:
        save_final_model(ctx, r, preds.get("val_lab_ecgkt"))
    atomic_write(run_dir / "predictions.npz", lambda f: np.savez(f, **preds))
    histories = {k: v.get("history", []) for k, v in r.items() if isinstance(v, dict) and v.get("history")}
    checkpoint.save_json(histories, run_dir / "histories.json")
    extra = dict(sweep=sweep_rows(ctx, r), test_ed=ctx.flags("test")["ed"][ctx.dx_rows("test")],
                 y_all=np.concatenate([np.asarray(ctx.dx_split(s).dx_y) for s in ("train", "val", "test")]),
                 synthetic=oracle.truth_path(ctx.store_dir) is not None, rule_scales=oracle.rule_scales(ctx.store_dir),
                 lab_probes={res["arm"]: res["lab"]["test"].numpy() for res in r.values()
                             if isinstance(res, dict) and res.get("available") and res.get("lab") is not None})
    return write_results(run_dir, preds, histories, ctx.dx_names, ctx.lab_label_names, ctx.cfg, extra)


def write_results(run_dir, preds: dict, histories: dict, dx_names, lab_label_names, cfg: Config,
                  extra: dict | None = None) -> dict:
    from ..evaluate import plots, report

    run_dir = Path(run_dir)
    from ..provenance import provenance

    res = report.compute_run(preds, dx_names, lab_label_names, cfg, extra)
    prov = provenance()
    checkpoint.save_json(prov, run_dir / "provenance.json")  # this evaluation's date and command
    # results.json stays a function of the run: the stable part of the provenance only
    res["provenance"] = {k: v for k, v in prov.items() if k not in ("date", "command")}
    checkpoint.save_json(res, run_dir / "results.json")
    atomic_write_text(run_dir / "results.md", report.markdown(res))
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots.training_curves(histories, plot_dir / "training_curves.png")
    probs = {m: preds[f"test_{m}"] for m in report.DX_MODELS if f"test_{m}" in preds}
    plots.roc_curves(np.asarray(preds["test_dx_y"]), probs, dx_names, plot_dir / "roc_curves.png")
    if res["labs"]:
        plots.lab_bars(res["labs"], plot_dir / "lab_auroc.png")
    if res.get("label_efficiency"):
        from ..evaluate import label_efficiency

        label_efficiency.plot(res, plot_dir / "label_efficiency.png")
    return res

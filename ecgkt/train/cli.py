"""Command line of the training pipeline: `ecgkt pipeline` and the single stages
(`pretrain`, `train-labs`, `finetune`, `baseline`, `evaluate`). All share --config/--set/--out."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import ECGKTError

CONFIG_HELP = ("Configuration: the packaged default (ecgkt/configs/default.yaml), then --config FILE (YAML or "
               "TOML), then each --set key.sub=value (e.g. --set pretrain.epochs=5 --set model.size=base). "
               "The resolved configuration and seed are written to RUN/config.yaml.")


def _common(p, needs_data: bool = True):
    p.add_argument("--out", metavar="RUN", required=True, help="run folder (created, or resumed when it exists)")
    if needs_data:
        p.add_argument("--data", metavar="DIR",
                       help="a prepared signal store, or MIMIC-shaped roots to prepare into RUN/data/store; "
                            "default: generate the synthetic dataset into RUN/data")
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file overriding the defaults")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one configuration key (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_cli(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "pipeline", formatter_class=fmt,
        help="the main job: data, the three stages, both baselines, the control, evaluation",
        description="Runs prepare -> stage 1 (ECG <-> tabular pre-training) -> stage 2 (lab abnormalities) ->\n"
                    "stage 3 (diagnoses) -> signal-only baseline -> multimodal baseline -> permuted control ->\n"
                    "evaluation, then prints the results table. Killed and rerun with the same command, it\n"
                    "resumes where it stopped and gives the same results.\n\n"
                    "Distributed: torchrun --nproc_per_node=N -m ecgkt.cli pipeline --out RUN ...\n\n" + CONFIG_HELP)
    _common(p)
    p.set_defaults(func=cmd_pipeline)

    p = subparsers.add_parser("pretrain", formatter_class=fmt, help="stage 1: ECG <-> tabular joint-embedding pre-training",
                              description="Stage 1 alone (writes RUN/stages/pretrain).\n\n" + CONFIG_HELP)
    _common(p)
    p.add_argument("--permuted", action="store_true",
                   help="the control: tabular rows permuted across patients (writes RUN/stages/control_pretrain)")
    p.set_defaults(func=cmd_pretrain)

    p = subparsers.add_parser("train-labs", formatter_class=fmt, help="stage 2: lab abnormalities from the ECG embedding",
                              description="Stage 2 alone; needs stage 1 in RUN.\n\n" + CONFIG_HELP)
    _common(p)
    p.set_defaults(func=cmd_train_labs)

    p = subparsers.add_parser("finetune", formatter_class=fmt, help="stage 3: diagnoses from the ECG; saves RUN/model",
                              description="Stage 3 alone; needs stage 2 in RUN. Saves the final ECG-only model to "
                                          "RUN/model.\n\n" + CONFIG_HELP)
    _common(p)
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser("baseline", formatter_class=fmt, help="train a baseline: signal-only, multimodal or control",
                              description="signal-only: the same ECG encoder trained on diagnoses from scratch.\n"
                                          "multimodal: ECG + tabular encoders fused (tabular data needed at inference).\n"
                                          "control: stages 1-3 with stage 1's tabular rows permuted across patients.\n\n"
                                          + CONFIG_HELP)
    p.add_argument("kind", choices=["signal-only", "multimodal", "control"])
    _common(p)
    p.set_defaults(func=cmd_baseline)

    p = subparsers.add_parser("evaluate", formatter_class=fmt, help="evaluate the trained models of a run",
                              description="Test-fold evaluation of every model trained in RUN: macro AUROC/AUPRC,\n"
                                          "F1 at validation-tuned thresholds, bootstrap CIs, paired comparison with\n"
                                          "signal-only, gap bridged, lab AUROCs; writes results.json/.md and plots.\n\n"
                                          + CONFIG_HELP)
    _common(p)
    p.set_defaults(func=cmd_evaluate)


def resolve_config(args) -> dict:
    from .config import resolve

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    run_cfg = Path(args.out) / "config.yaml"
    if not args.config and not overrides and run_cfg.is_file():
        return resolve(run_cfg)  # a bare rerun of an existing run keeps its configuration
    return resolve(args.config, overrides)


def check_run_folder(args) -> None:
    """Refuse up front what would damage a run: --out naming a file, or a run trained on a store given with
    --data resumed or evaluated without it (that would generate the default dataset into the run)."""
    run = Path(args.out)
    if run.exists() and not run.is_dir():
        raise ECGKTError(f"--out {run}: is a file; give a run folder")
    if getattr(args, "data", None) is None and (run / "stages").is_dir() \
            and not (run / "data" / "store" / "manifest.json").is_file():
        raise ECGKTError(f"{run}: this run was trained on data given with --data (it holds no data/store); "
                         f"pass the same --data")


def _context(args):
    from . import distributed, pipeline, stages

    check_run_folder(args)
    cfg = resolve_config(args)
    pipeline._set_threads(cfg)
    env = distributed.init(cfg["runtime"]["device"])
    run_dir = pipeline.setup_run(cfg, args.out, env)
    store = pipeline.ensure_store(cfg, run_dir, args.data, env, not args.no_progress)
    ctx = stages.build_context(cfg, env, run_dir, store)
    ctx.progress = not args.no_progress
    return ctx


def _need(ctx, name: str, command: str):
    from . import checkpoint

    path = ctx.stage_dir(name) / "result.pt"
    if not path.is_file():
        raise ECGKTError(f"{ctx.run_dir}: stage {name} has not run yet; run `ecgkt {command} --out {ctx.run_dir}` first")
    return checkpoint.load(path)


def cmd_pipeline(args) -> int:
    from ..evaluate import report
    from . import pipeline

    t0 = time.time()
    check_run_folder(args)
    res = pipeline.run(resolve_config(args), args.out, args.data, progress=not args.no_progress)
    if res is not None:
        print()
        print(report.table(res))
        print(f"\nresults: {Path(args.out) / 'results.md'}  model: {Path(args.out) / 'model'}  "
              f"({time.time() - t0:.0f} s)")
    return 0


def cmd_pretrain(args) -> int:
    from . import stages

    ctx = _context(args)
    name = "control_pretrain" if args.permuted else "pretrain"
    stages.pretrain(ctx, name, permute=args.permuted)
    print(f"stage 1 done: {ctx.stage_dir(name)}")
    return 0


def cmd_train_labs(args) -> int:
    from . import stages

    ctx = _context(args)
    pre = _need(ctx, "pretrain", "pretrain")
    r = stages.train_labs(ctx, stages._encoder_state(pre["state"]), "labs")
    best = max(h["val_lab_macro_auroc"] for h in r["history"])
    print(f"stage 2 done: {ctx.stage_dir('labs')} (validation lab macro AUROC {best:.3f})")
    return 0


def cmd_finetune(args) -> int:
    from . import pipeline, stages

    ctx = _context(args)
    labs = _need(ctx, "labs", "train-labs")
    r = {"finetune": stages.finetune(ctx, "finetune", labs["encoder"], labs["lab_head"]),
         "pretrain": _need(ctx, "pretrain", "pretrain")}
    r["final_labs"] = stages.train_labs(ctx, stages._encoder_state(r["finetune"]["state"], "encoder."), "final_labs")
    if ctx.env.is_main:
        print(f"stage 3 done; final model: {pipeline.save_final_model(ctx, r)}")
    return 0


def cmd_baseline(args) -> int:
    from . import stages

    ctx = _context(args)
    if args.kind == "signal-only":
        stages.finetune(ctx, "signal_only")
    elif args.kind == "multimodal":
        stages.multimodal(ctx, "multimodal")
    else:
        pre = stages.pretrain(ctx, "control_pretrain", permute=True)
        labs = stages.train_labs(ctx, stages._encoder_state(pre["state"]), "control_labs")
        stages.finetune(ctx, "control_finetune", labs["encoder"], labs["lab_head"])
    print(f"baseline {args.kind} done: {ctx.run_dir / 'stages'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluate import report
    from . import checkpoint, pipeline

    ctx = _context(args)
    if not ctx.env.is_main:
        return 0
    r = {}
    for name in ("pretrain", "labs", "finetune", "final_labs", "signal_only", "multimodal", "control_pretrain", "control_labs",
                 "control_finetune"):
        path = ctx.stage_dir(name) / "result.pt"
        if path.is_file():
            r[name] = checkpoint.load(path)
    if "finetune" not in r and "signal_only" not in r:
        raise ECGKTError(f"{ctx.run_dir}: no trained diagnosis model to evaluate (run finetune or baseline first)")
    res = pipeline.evaluate_run(ctx, r)
    print(report.table(res))
    return 0

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
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a packaged configuration applied before --config/--set: "
                        + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
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
    p.add_argument("--ssl", action="store_true",
                   help="the ECG-only self-supervised baseline: two views of each ECG (writes RUN/stages/ssl_pretrain)")
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

    p = subparsers.add_parser("baseline", formatter_class=fmt,
                              help="train a baseline with all labels: signal-only, multimodal, control or ssl",
                              description="signal-only: the same ECG encoder trained on diagnoses from scratch.\n"
                                          "multimodal: ECG + tabular encoders fused (tabular data needed at inference).\n"
                                          "control: stage 1 with the tabular rows permuted across patients, then\n"
                                          "  fine-tuning.\n"
                                          "ssl: ECG-only self-supervised stage 1 (two views of each ECG), then fine-tuning.\n"
                                          "`ecgkt pipeline` runs these at every label fraction of the protocol\n"
                                          "(docs/protocol.md).\n\n" + CONFIG_HELP)
    p.add_argument("kind", choices=list(BASELINE_JOBS))
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
    from ..train.config import resolve

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    preset = getattr(args, "preset", None)
    run_cfg = Path(args.out) / "config.yaml"
    if not args.config and not overrides and not preset and run_cfg.is_file():
        return resolve(run_cfg)  # a bare rerun of an existing run keeps its configuration
    base = resolve(preset_path(preset)) if preset else None
    return resolve(args.config, overrides, base=base)


PRESETS = {"default": "the built-in default: 2,000 synthetic patients, label fractions 10 and 100 percent",
           "science": "the full protocol: 10,000 synthetic patients, label fractions 1 to 100 percent"}


def preset_path(name: str):
    from importlib import resources

    if name not in PRESETS:
        raise ECGKTError(f"--preset {name!r}: choose from {', '.join(PRESETS)}")
    if name == "default":
        return None
    return resources.files("ecgkt").joinpath(f"configs/{name}.yaml")


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
    from ..train import distributed, pipeline, stages

    check_run_folder(args)
    cfg = resolve_config(args)
    pipeline._set_threads(cfg)
    env = distributed.init(cfg.runtime.device)
    run_dir = pipeline.setup_run(cfg, args.out, env)
    store = pipeline.ensure_store(cfg, run_dir, args.data, env, not args.no_progress)
    ctx = stages.build_context(cfg, env, run_dir, store)
    ctx.progress = not args.no_progress
    return ctx


def _run_jobs(ctx, names, workers=None):
    """Runs the named jobs of the plan and whatever they depend on (finished ones are loaded)."""
    from ..train import pipeline, plan, runner

    jobs = plan.closure(plan.build(ctx.cfg), names)
    runner.run(ctx, jobs, workers or pipeline._workers(ctx.cfg, ctx.env),
               log=print if ctx.env.is_main else (lambda *a: None))
    return pipeline.load_results(ctx, jobs)


def cmd_pipeline(args) -> int:
    from ..evaluate import report
    from ..train import pipeline

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
    ctx = _context(args)
    name = "control_pretrain" if args.permuted else ("ssl_pretrain" if args.ssl else "pretrain")
    _run_jobs(ctx, [name])
    if ctx.env.is_main:
        print(f"stage 1 done: {ctx.stage_dir(name)}")
    return 0


def cmd_train_labs(args) -> int:
    ctx = _context(args)
    r = _run_jobs(ctx, ["labs"])["labs"]
    best = max(h["val_lab_macro_auroc"] for h in r["history"])
    if ctx.env.is_main:
        print(f"stage 2 done: {ctx.stage_dir('labs')} (validation lab macro AUROC {best:.3f})")
    return 0


def cmd_finetune(args) -> int:
    from ..train import pipeline

    ctx = _context(args)
    r = _run_jobs(ctx, ["final_labs"])
    if ctx.env.is_main:
        val = pipeline.collect_predictions(ctx, r).get("val_lab_ecgkt")
        print(f"stage 3 done; final model: {pipeline.save_final_model(ctx, r, val)}")
    return 0


BASELINE_JOBS = {"signal-only": ["signal_only"], "multimodal": ["multimodal"], "control": ["control_finetune"],
                 "ssl": ["ssl_finetune"]}


def cmd_baseline(args) -> int:
    ctx = _context(args)
    _run_jobs(ctx, BASELINE_JOBS[args.kind])
    if ctx.env.is_main:
        print(f"baseline {args.kind} done: {ctx.run_dir / 'stages'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluate import report
    from ..train import pipeline, plan

    ctx = _context(args)
    if not ctx.env.is_main:
        return 0
    r = pipeline.load_results(ctx, plan.build(ctx.cfg))
    if "finetune" not in r and "signal_only" not in r:
        raise ECGKTError(f"{ctx.run_dir}: no trained diagnosis model to evaluate (run finetune or baseline first)")
    res = pipeline.evaluate_run(ctx, r)
    print(report.table(res))
    return 0

"""The experiment as one table: arms x label fractions x replicates x evaluations (docs/protocol.md).

`build(cfg)` lists every job of a run with its dependencies. The pipeline runs them all, each single-stage
command runs the ones it names (and requires their dependencies), and `evaluate` reads the results of the
jobs that exist. Nothing else wires the stage graph.

A job's name is also its folder under RUN/stages/. The paper's comparison (100 % labels, replicate 0) keeps
the stage names the method uses: pretrain, labs, finetune, final_labs, signal_only, multimodal,
control_pretrain, control_finetune."""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

# Pre-training arms: the stage-1 job that produces each arm's encoder.
PRETRAIN_STAGE = dict(ecgkt="pretrain", control="control_pretrain", ssl="ssl_pretrain")
FINETUNE_ARMS = ("signal_only", "ecgkt", "control", "ssl", "multimodal")
PROBE_ARMS = ("random", "ecgkt", "control", "ssl", "oracle", "oracle_nl")
ARM_TITLES = dict(signal_only="signal-only", ecgkt="ecgkt", control="control (permuted pairs)",
                  ssl="ECG-only SSL", random="random init", multimodal="multimodal (ECG + tabular)",
                  oracle="ECG oracle (true beat parameters)",
                  oracle_nl="ECG oracle, non-linear basis (exploratory)")
_LEGACY = {("ecgkt", 0): "finetune", ("signal_only", 0): "signal_only", ("multimodal", 0): "multimodal",
           ("control", 0): "control_finetune", ("ssl", 0): "ssl_finetune"}


@dataclasses.dataclass(frozen=True)
class Job:
    name: str  # also the folder RUN/stages/<name>
    kind: str  # pretrain | labs | final_labs | finetune | probe
    arm: str | None = None
    fraction: float | None = None
    replicate: int | None = None
    pretrain_seed: int = 0  # which stage-1 run of its arm it starts from (protocol.pretrain_seeds)
    deps: tuple = ()
    cost: float = 1.0  # rough relative cost, for scheduling the longest jobs first


def fraction_tag(f: float) -> str:
    return f"f{100 * f:g}"


def finetune_name(arm: str, fraction: float, replicate: int) -> str:
    if fraction >= 1.0 and (arm, replicate) in _LEGACY:
        return _LEGACY[(arm, replicate)]
    return f"{arm}_{fraction_tag(fraction)}_r{replicate}"


def seed_suffix(k: int) -> str:
    """Stage-1 seed k of an arm: k = 0 keeps the plain job names (`pretrain`, `labs`, `probe_ecgkt`)."""
    return "" if k == 0 else f"_s{k}"


def pretrain_seeds(cfg: Config) -> int:
    return int(cfg.protocol.pretrain_seeds)


def seed_of(cfg: Config, replicate: int) -> int:
    """Replicate r of every pre-trained arm starts from that arm's stage-1 run r mod pretrain_seeds."""
    return int(replicate) % pretrain_seeds(cfg)


def stage1_name(arm: str, k: int = 0) -> str:
    return PRETRAIN_STAGE[arm] + seed_suffix(k)


def labs_name(k: int = 0) -> str:
    return "labs" + seed_suffix(k)


def probe_name(arm: str, k: int = 0) -> str:
    return f"probe_{arm}" + seed_suffix(k)


def seeded_arm(arm: str) -> bool:
    """Arms whose initial encoder depends on a stage-1 seed (the random arm's initialisation does too)."""
    return arm in PRETRAIN_STAGE or arm == "random"


def replicates(cfg: Config, fraction: float) -> int:
    p = cfg.protocol
    return int(p.replicates_full if fraction >= 1.0 else p.replicates)


def fractions(cfg: Config) -> list[float]:
    fr = sorted(float(f) for f in cfg.protocol.fractions)
    bad = [f for f in fr if not 0.0 < f <= 1.0]
    if bad:
        from ..errors import ECGKTError

        raise ECGKTError(f"protocol.fractions must lie in (0, 1]; got {bad}")
    return fr


def finetune_arms(cfg: Config) -> list[str]:
    arms = [a for a in cfg.protocol.finetune_arms]
    if not cfg.control.enabled:
        arms = [a for a in arms if a != "control"]
    return arms


def probe_arms(cfg: Config) -> list[str]:
    arms = [a for a in cfg.protocol.probe_arms]
    if not cfg.control.enabled:
        arms = [a for a in arms if a != "control"]
    return arms


def validate(cfg: Config) -> None:
    from ..errors import ECGKTError

    p = cfg.protocol
    for key, allowed in (("finetune_arms", FINETUNE_ARMS), ("probe_arms", PROBE_ARMS)):
        bad = [a for a in getattr(p, key) if a not in allowed]
        if bad:
            raise ECGKTError(f"protocol.{key}: unknown arm(s) {bad}; choose from {list(allowed)}")
    if "ecgkt" not in p.finetune_arms or "signal_only" not in p.finetune_arms:
        raise ECGKTError("protocol.finetune_arms must include ecgkt and signal_only (the comparison itself)")
    if 1.0 not in fractions(cfg):
        raise ECGKTError("protocol.fractions must include 1.0 (the paper's comparison and the final model)")
    for key in ("replicates", "replicates_full", "pretrain_seeds"):
        if int(getattr(p, key)) < 1:
            raise ECGKTError(f"protocol.{key} must be >= 1")


def build(cfg: Config) -> list[Job]:
    """Every job of the run, dependencies first."""
    validate(cfg)
    arms = finetune_arms(cfg)
    probes = probe_arms(cfg)
    needed = {a for a in arms + probes if a in PRETRAIN_STAGE}
    seeds = range(pretrain_seeds(cfg))
    jobs = []
    for k in seeds:
        for arm in ("ecgkt", "control", "ssl"):
            if arm in needed or arm == "ecgkt":
                jobs.append(Job(stage1_name(arm, k), "pretrain", arm=arm, pretrain_seed=k,
                                cost=20.0 if arm == "ssl" else 10.0))
        jobs.append(Job(labs_name(k), "labs", arm="ecgkt", pretrain_seed=k, deps=(stage1_name("ecgkt", k),),
                        cost=1.0))
    for arm in probes:
        for k in (seeds if seeded_arm(arm) else (0,)):
            deps = (stage1_name(arm, k),) if arm in PRETRAIN_STAGE else ()
            jobs.append(Job(probe_name(arm, k), "probe", arm=arm, pretrain_seed=k, deps=deps, cost=1.0))
    for f in fractions(cfg):
        for r in range(replicates(cfg, f)):
            for arm in arms:
                k = seed_of(cfg, r) if arm in PRETRAIN_STAGE else 0
                deps = {"ecgkt": (labs_name(k),)}.get(arm, (stage1_name(arm, k),) if arm in PRETRAIN_STAGE else ())
                jobs.append(Job(finetune_name(arm, f, r), "finetune", arm=arm, fraction=f, replicate=r,
                                pretrain_seed=k, deps=deps, cost=2.0 + 6.0 * math.sqrt(f)))
    jobs.append(Job("final_labs", "final_labs", arm="ecgkt", deps=("finetune",), cost=1.0))
    return jobs


def by_name(jobs) -> dict[str, Job]:
    return {j.name: j for j in jobs}


def closure(jobs, names) -> list[Job]:
    """The named jobs and everything they depend on, in plan order."""
    index = by_name(jobs)
    want: set[str] = set()

    def add(n):
        if n not in want:
            want.add(n)
            for d in index[n].deps:
                add(d)

    for n in names:
        add(n)
    return [j for j in jobs if j.name in want]

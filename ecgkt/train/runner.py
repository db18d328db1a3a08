"""Runs the jobs of a plan: in this process, or, on one machine without torchrun, in a pool of worker
processes (`runtime.jobs`), each job as soon as its dependencies are done, the costliest first.

Every job is a deterministic function of the configuration and its dependencies' results (its seed comes
from its name), so the results do not depend on the number of workers or on the order they finish in. A job
already finished (RUN/stages/<job>/result.pt) is skipped; an interrupted one resumes from its checkpoint.
Workers die with their parent (PR_SET_PDEATHSIG), so a killed run leaves no process writing into RUN."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import sys

from . import plan, stages

_WORKER_CTX = None


def _done(ctx, job) -> bool:
    return (ctx.stage_dir(job.name) / "result.pt").is_file()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _init_worker(cfg, run_dir, store_dir, progress) -> None:
    global _WORKER_CTX
    _die_with_parent()
    import torch

    from .distributed import DistEnv, pick_device

    if cfg.runtime.threads:
        torch.set_num_threads(int(cfg.runtime.threads))
    env = DistEnv(device=pick_device(cfg.runtime.device))
    _WORKER_CTX = stages.build_context(cfg, env, run_dir, store_dir)
    _WORKER_CTX.progress = progress


def _work(job: plan.Job) -> str:
    stages.run_job(_WORKER_CTX, job)
    return job.name


def run(ctx, jobs: list[plan.Job], workers: int = 1, log=print) -> None:
    """Runs every job of `jobs` (dependencies must be in `jobs` or already finished)."""
    todo = [j for j in jobs if not _done(ctx, j)]
    if not todo:
        return
    workers = max(1, int(workers or 1))
    if workers == 1 or ctx.env.distributed or ctx.store_dir is None or len(todo) == 1:
        for job in todo:
            log(f"[{job.name}] running ({job.kind})")
            stages.run_job(ctx, job)
        return
    names = {j.name for j in jobs}
    pending = {j.name: j for j in todo}
    running: dict[cf.Future, plan.Job] = {}
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                  initargs=(ctx.cfg, ctx.run_dir, ctx.store_dir, ctx.progress))
    try:
        while pending or running:
            busy = {j.name for j in running.values()}
            ready = [j for j in pending.values()
                     if all((d in names and d not in pending and d not in busy)
                            or (d not in names and (ctx.stage_dir(d) / "result.pt").is_file()) for d in j.deps)]
            ready.sort(key=lambda j: -j.cost)
            for job in ready[: workers - len(running)]:
                log(f"[{job.name}] running ({job.kind})")
                running[pool.submit(_work, job)] = job
                del pending[job.name]
            if not running:
                missing = sorted({d for j in pending.values() for d in j.deps})
                raise RuntimeError(f"jobs {sorted(pending)} wait on unfinished dependencies {missing}")
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                running.pop(fut)
                fut.result()  # re-raises a worker's error here
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()  # stop the jobs still training: their last checkpoints are intact
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

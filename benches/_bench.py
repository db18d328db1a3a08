"""Shared parts of the benchmark suite: sizes per mode, the peers, the result rows, the ratios.

Every contender of a comparison is a parametrised case of one test, so peers run in the same session,
next to each other, on the same inputs. ``measure`` runs a case through pytest-benchmark (the statistics,
the JSON export and ``pytest-benchmark compare``) and records one row per case for the results file:
kernel, provider, metric, x, p20/p50/p80 (of the metric over the rounds), machine, date, commit.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FS = 500.0  # the records of every case: 12 leads, 10 s at 500 Hz, int16 at 200 adu/mV (MIMIC-IV-ECG's shape)
LEADS, SAMPLES, GAIN = 12, 5000, 200.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes and rounds; ``--quick`` (or ECGKT_BENCH_QUICK=1) picks the tiny ones for CI."""
    quick: bool
    rounds: int                   # timed rounds per case (plus one warm-up round)
    preprocess_batches: tuple     # records per call
    loss_batches: tuple           # B for the loss timings (D = LOSS_DIM)
    loss_memory_batches: tuple    # B for the peak-memory curve (one forward + backward per process)
    loss_peer_max_gb: float       # the materialising peer is skipped above this estimated peak
    patients: int                 # synthetic patients behind the store (about 2.4 records each)
    prepare_patients: tuple       # the prepare-time curve (records ~ 2.4 x patients)
    loader_workers: tuple
    loader_batches: int           # batches of 256 per timed round of the loader
    predict_records: int
    train_steps: int              # timed training steps per provider
    train_steps_per_round: int
    lab_rows: int                 # rows of the generated labevents.csv.gz
    synth_patients: int


QUICK = Sizes(True, 2, (4, 16), (256, 1024), (1024, 4096), 1.0, 60, (20, 60), (0, 2), 2, 64, 2, 1, 50_000, 30)
FULL = Sizes(False, 7, (1, 8, 64, 256), (512, 1024, 2048, 4096, 16384), (1024, 4096, 16384), 7.0,
             500, (100, 400), (0, 2, 4), 10, 500, 6, 2, 1_000_000, 300)
LOSS_DIM = 256


def sizes(config) -> Sizes:
    quick = config.getoption("--quick") or os.environ.get("ECGKT_BENCH_QUICK", "") not in ("", "0")
    return QUICK if quick else FULL


# ----------------------------------------------------------------------------------------------------
# Result rows
# ----------------------------------------------------------------------------------------------------
ROWS: list[dict] = []   # filled by measure/record, written by conftest at the end of the session


def record(kernel: str, provider: str, metric: str, x, values, *, x_name: str, note: str = "") -> dict:
    """Append one result row: p20/p50/p80 of ``values`` (a metric where larger or smaller is
    better, as named: records/s, ECG/s, s, MB ...)."""
    v = np.asarray(values, dtype=float)
    row = dict(kernel=kernel, provider=provider, metric=metric, x=x, x_name=x_name,
               p20=float(np.percentile(v, 20)), p50=float(np.percentile(v, 50)), p80=float(np.percentile(v, 80)),
               rounds=int(v.size), load=round(os.getloadavg()[0], 2), note=note)
    ROWS.append(row)
    return row


def measure(benchmark, fn, *, kernel: str, provider: str, x, x_name: str, items: float, unit: str,
            rounds: int, setup=None, group: str | None = None, budget_s: float | None = None, note: str = ""):
    """Time ``fn`` with pytest-benchmark (one warm-up call, then ``rounds`` rounds, caches flushed before
    each) and record ``items``/s as ``unit`` (``items`` may be a function of the warm-up call's result) (or, for unit "s", the seconds per call). With ``budget_s``, a
    slow contender gets fewer rounds (at least 2) so that it takes about that long."""
    benchmark.group = group or f"{kernel} x={x}"
    benchmark.extra_info.update(kernel=kernel, provider=provider, x=x, x_name=x_name, items=items, unit=unit)

    def before():
        flush_caches()
        if setup is not None:
            setup()

    before()
    t0 = time.perf_counter()
    warm = fn()  # warm-up: libraries, allocator, filter designs
    first = time.perf_counter() - t0
    if callable(items):  # counted by the warm-up call (e.g. records written)
        items = items(warm)
        benchmark.extra_info["items"] = items
    if budget_s is not None:
        rounds = int(max(2, min(rounds, budget_s // max(first, 1e-9))))
    result = benchmark.pedantic(fn, setup=before, rounds=rounds, warmup_rounds=0, iterations=1)
    times = _round_times(benchmark)
    if times is not None:  # unit "s": seconds per call; otherwise items per second
        values = np.asarray(times) if unit == "s" else items / np.asarray(times)
        record(kernel, provider, unit, x, values, x_name=x_name, note=note)
    return result


def _round_times(benchmark):
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return None
    return list(stats.stats.data)


_FLUSH = None


def flush_caches() -> None:
    """Touch 64 MB so that each round starts with cold CPU caches (no data of the last round in L2/L3)."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = np.ones(8 * 2**20)
    _FLUSH += 1.0


# ----------------------------------------------------------------------------------------------------
# Ratios printed at the end of the session and written with the rows (numerator / denominator of the
# same kernel, metric and x; all metrics here are rates except "s" and "MB", where smaller is better)
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Ratio:
    title: str
    kernel: str
    metric: str
    ours: str
    peer: str
    target: float | None = None   # required value of ours/peer (rates) or peer/ours (times, memory)


RATIOS = [
    Ratio("preprocess: ecgkt / scipy", "preprocess", "records/s", "ecgkt", "scipy", 10.0),
    Ratio("preprocess: ecgkt / neurokit2 ecg_clean", "preprocess", "records/s", "ecgkt", "neurokit2"),
    Ratio("preprocess: ecgkt / torch FFT", "preprocess", "records/s", "ecgkt", "torch-fft", 2.0),
    Ratio("preprocess: ecgkt / memory copy (fraction of the floor)", "preprocess", "records/s", "ecgkt", "copy"),
    Ratio("preprocess, 2 threads, float32: ecgkt / memory copy (fraction of the floor)", "preprocess_2_threads",
          "records/s", "ecgkt", "copy", 0.5),
    Ratio("preprocess CUDA: ecgkt / torch FFT", "preprocess", "records/s", "ecgkt-cuda", "torch-fft-cuda"),
    Ratio("CLIP loss time: open_clip / ecgkt", "clip_loss", "s", "ecgkt", "open_clip"),
    # the three B x B x D products' time / ecgkt's: >= 1/1.4 means ecgkt takes <= 1.4x the matmul floor
    Ratio("CLIP loss: matmul floor time / ecgkt time", "clip_loss", "s", "ecgkt", "matmul-floor", 1 / 1.4),
    Ratio("SigLIP loss time: open_clip / ecgkt", "siglip_loss", "s", "ecgkt", "open_clip"),
    Ratio("CLIP loss peak memory: open_clip / ecgkt", "clip_loss", "MB", "ecgkt", "open_clip", 20.0),
    Ratio("SigLIP loss peak memory: open_clip / ecgkt", "siglip_loss", "MB", "ecgkt", "open_clip"),
    Ratio("stage-1 training: ecgkt / scipy + open_clip (store)", "train_stage1", "ECG/s", "ecgkt",
          "scipy+open_clip", 2.0),
    Ratio("stage-1 training: ecgkt / neurokit2 + open_clip (store)", "train_stage1", "ECG/s", "ecgkt",
          "neurokit2+open_clip", 2.0),
    Ratio("stage-1 training: ecgkt / wfdb + scipy + open_clip", "train_stage1", "ECG/s", "ecgkt",
          "wfdb+scipy+open_clip", 2.0),
    Ratio("predict from files: ecgkt / wfdb + scipy + torch loop", "predict", "records/s", "ecgkt",
          "wfdb+scipy+torch"),
    Ratio("record read: ECGStore / wfdb.rdrecord", "record_read", "records/s", "ecgkt-store", "wfdb", 20.0),
    Ratio("signal-store loader: copy of the same bytes / loader", "loader", "ECG/s", "copy", "ecgkt"),
    Ratio("prepare: ecgkt / wfdb.rdrecord loop", "prepare", "records/s", "ecgkt", "wfdb-read"),
    Ratio("record writer: ecgkt / wfdb.wrsamp", "synth_writer", "records/s", "ecgkt", "wfdb"),
    Ratio("labevents: ecgkt / pandas chunks", "labevents", "rows/s", "ecgkt", "pandas"),
]

# absolute targets (issue 14), checked against the p50 of the named row at its largest x ("largest": a size)
# or at its best x ("best": a setting, such as the number of loader workers)
TARGETS = [
    ("synth", "ecgkt-2-jobs", "records/s", 1000.0, "largest"),
    ("predict", "ecgkt", "records/s", 1000.0, "largest"),
    ("predict", "ecgkt-cli", "records/s", 1000.0, "largest"),
    ("prepare", "ecgkt", "records/s", 1000.0, "largest"),
    ("loader", "ecgkt", "ECG/s", 20000.0, "best"),
]

SMALLER_IS_BETTER = {"s", "MB", "instructions/sample"}


def ratio_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in RATIOS:
        ours = {row["x"]: row for row in rows if (row["kernel"], row["provider"], row["metric"]) ==
                (r.kernel, r.ours, r.metric)}
        peer = {row["x"]: row for row in rows if (row["kernel"], row["provider"], row["metric"]) ==
                (r.kernel, r.peer, r.metric)}
        common = sorted(set(ours) & set(peer), key=_sort_key)
        for x in common:
            a, b = ours[x]["p50"], peer[x]["p50"]
            value = b / a if r.metric in SMALLER_IS_BETTER else a / b
            target = r.target if x == common[-1] else None  # a target is judged at the largest common size
            out.append(dict(title=r.title, kernel=r.kernel, metric=r.metric, ours=r.ours, peer=r.peer, x=x,
                            x_name=ours[x]["x_name"], ratio=value, target=target,
                            met=None if target is None else bool(value >= target)))
    return out


def target_rows(rows: list[dict]) -> list[dict]:
    out = []
    for kernel, provider, metric, target, at in TARGETS:
        found = [row for row in rows if (row["kernel"], row["provider"], row["metric"]) == (kernel, provider, metric)]
        if found:
            row = max(found, key=(lambda r: r["p50"]) if at == "best" else (lambda r: _sort_key(r["x"])))
            out.append(dict(kernel=kernel, provider=provider, metric=metric, x=row["x"], x_name=row["x_name"],
                            value=row["p50"], target=target, met=bool(row["p50"] >= target)))
    return out


def _sort_key(x):
    return (0, float(x), "") if isinstance(x, (int, float)) else (1, 0.0, str(x))


# ----------------------------------------------------------------------------------------------------
# Machine and run description
# ----------------------------------------------------------------------------------------------------
def machine() -> str:
    """One line for the results file, from ecgkt.provenance.hardware() (the one place that reads the machine)."""
    from ecgkt.provenance import hardware

    h = hardware()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else h["cpu_count"]
    gpu = ", " + ", ".join(h["gpus"]) if h["gpus"] else ", no GPU"
    return f"{h['cpu'] or 'unknown CPU'}, {cpus} CPUs, {h['memory_gib'] or 0:.0f} GiB{gpu}"


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "ecgkt", "csrc", "kernels", "setup.py")
    return sha + ("+dirty" if dirty else "")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def ecg_batch(batch: int, seed: int = 0) -> torch.Tensor:
    """[batch, 12, 5000] int16 ADC samples: a beat train per lead + wander + mains + noise."""
    g = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / FS
    beat = np.sin(2 * np.pi * 1.2 * t) ** 15
    amp = g.uniform(-1.5, 1.5, (batch, LEADS, 1))
    mv = (amp * beat + 0.3 * np.sin(2 * np.pi * 0.2 * t) + 0.05 * np.sin(2 * np.pi * 60 * t)
          + 0.05 * g.standard_normal((batch, LEADS, SAMPLES)))
    return torch.from_numpy(np.round(mv * GAIN).astype(np.int16))


# ----------------------------------------------------------------------------------------------------
# Peers: what a user would run without ecgkt
# ----------------------------------------------------------------------------------------------------
def scipy_clean(x: np.ndarray, fs: float, *, highpass=0.5, lowpass=100.0, notch=60.0, target_fs=None):
    """Butterworth band-pass (order 5, sosfiltfilt) + iirnotch (Q 30, filtfilt) + optional
    resample_poly + z-score per lead: the usual scipy ECG preprocessing."""
    from scipy import signal as sps

    y = x
    if lowpass is not None and lowpass < 0.45 * fs:
        sos = sps.butter(5, [highpass, lowpass], btype="bandpass", fs=fs, output="sos")
    else:
        sos = sps.butter(5, highpass, btype="highpass", fs=fs, output="sos")
    y = sps.sosfiltfilt(sos, y, axis=-1)
    if notch is not None and notch < fs / 2:
        b, a = sps.iirnotch(notch, 30.0, fs=fs)
        y = sps.filtfilt(b, a, y, axis=-1)
    if target_fs is not None and target_fs != fs:
        from fractions import Fraction

        f = Fraction(int(target_fs), int(fs))
        y = sps.resample_poly(y, f.numerator, f.denominator, axis=-1)
    y = y - y.mean(-1, keepdims=True)
    return (y / np.maximum(y.std(-1, keepdims=True), 1e-8)).astype(np.float32)


def neurokit2_clean(x: np.ndarray, fs: float, *, target_fs=None, notch=60.0):
    """neurokit2's ECG cleaning (ecg_clean, method "neurokit": 0.5 Hz Butterworth high-pass + powerline
    filter) lead by lead, then resample_poly and z-score as the scipy peer does."""
    import neurokit2 as nk
    from scipy import signal as sps

    flat = x.reshape(-1, x.shape[-1])
    y = np.stack([nk.ecg_clean(lead, sampling_rate=int(fs), method="neurokit", powerline=notch) for lead in flat])
    y = y.reshape(x.shape)
    if target_fs is not None and target_fs != fs:
        from fractions import Fraction

        f = Fraction(int(target_fs), int(fs))
        y = sps.resample_poly(y, f.numerator, f.denominator, axis=-1)
    y = y - y.mean(-1, keepdims=True)
    return (y / np.maximum(y.std(-1, keepdims=True), 1e-8)).astype(np.float32)


def need(module: str):
    """Import a peer's package or skip the case, naming the package to install."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"peer not installed: {module} (pip install 'ecgkt[bench]', or `make bench`)")
    return importlib.import_module(module)


def open_clip_losses():
    """(ClipLoss, SigLipLoss) from the installed open-clip-torch. Its package __init__ imports torchvision
    (for the image models); where torchvision is absent, the loss module itself (torch only) is loaded
    from the installed package, unchanged."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("peer not installed: open-clip-torch (pip install --no-deps open-clip-torch)")
    try:
        import open_clip

        return open_clip.ClipLoss, open_clip.SigLipLoss
    except ImportError:
        path = Path(spec.origin).parent / "loss.py"
        name = "open_clip_loss_module"
        if name not in sys.modules:
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
            sys.modules[name] = module
        module = sys.modules[name]
        return module.ClipLoss, module.SigLipLoss


def cuda_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: GPU cases run where one is")
    return torch.device("cuda")


def peak_rss_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter (its last stdout line is JSON) and return that JSON."""
    import json

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the same ecgkt as here
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])

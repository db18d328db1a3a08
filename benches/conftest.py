"""Session set-up of the benchmark suite: the --quick option, the shared synthetic data, the results
file (benches/results/results.json for a full run) and the ratios printed at the end."""
from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

import pytest
import torch

import _bench

RESULTS = Path(__file__).resolve().parent / "results"


def pytest_addoption(parser):
    g = parser.getgroup("ecgkt benchmarks")
    g.addoption("--quick", action="store_true", default=False,
                help="tiny sizes and few rounds (CI; under 2 minutes on 2 cores); also ECGKT_BENCH_QUICK=1")
    g.addoption("--threads", type=int, default=int(os.environ.get("ECGKT_BENCH_THREADS", "1")),
                help="torch CPU threads for every case (default 1, or ECGKT_BENCH_THREADS: on a shared machine, "
                     "OpenMP threads spin against the other jobs and a 2-thread step can be 100x slower)")
    g.addoption("--results", metavar="PATH", default=None,
                help="results file (default: benches/results/results.json, or quick.json with --quick)")


def pytest_configure(config):
    config._ecgkt_started = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                 uptime=_bench.uptime())
    torch.set_num_threads(max(1, config.getoption("--threads")))
    warnings.filterwarnings("ignore", category=UserWarning)


def pytest_report_header(config):
    s = _bench.sizes(config)
    return [f"ecgkt benchmarks: {'quick' if s.quick else 'full'} mode, {_bench.machine()}, commit {_bench.commit()}",
            f"load at start: {config._ecgkt_started['uptime']}"]


# parameters whose values depend on the mode: the x axis of each curve (sizes.<attribute>)
SIZE_PARAMETERS = {"preprocess_batch": ("preprocess_batches", "B"), "loss_batch": ("loss_batches", "B"),
                   "memory_batch": ("loss_memory_batches", "B"), "prepare_patients": ("prepare_patients", "p"),
                   "workers": ("loader_workers", "w")}


def pytest_generate_tests(metafunc):
    s = _bench.sizes(metafunc.config)
    for name, (attribute, prefix) in SIZE_PARAMETERS.items():
        if name in metafunc.fixturenames:
            values = getattr(s, attribute)
            metafunc.parametrize(name, values, ids=[f"{prefix}{v}" for v in values])


@pytest.fixture(scope="session")
def sizes(pytestconfig) -> _bench.Sizes:
    return _bench.sizes(pytestconfig)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ecgkt-bench")


@pytest.fixture(scope="session")
def synthetic_root(workdir, sizes) -> Path:
    """A MIMIC-shaped synthetic dataset (raw WFDB records + clinical tables)."""
    from ecgkt.data import generate

    root = workdir / "synth"
    generate(root, patients=sizes.patients, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def store(workdir, synthetic_root) -> Path:
    """The signal store of ``synthetic_root`` (every record kept)."""
    from ecgkt.data import CohortConfig, prepare

    out = workdir / "store"
    prepare(synthetic_root, out, CohortConfig(min_lab_count=1, dx_min_count=1), workers=2, progress=False)
    return out


def pytest_deselected(items):
    if items:
        items[0].config._ecgkt_partial = True


SKIPPED: list[dict] = []


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
        SKIPPED.append(dict(case=report.nodeid, reason=str(report.longrepr[2]).removeprefix("Skipped: ")))


def _results_path(config) -> Path:
    given = config.getoption("--results")
    if given:
        return Path(given)
    if _bench.sizes(config).quick:
        return RESULTS / "quick.json"
    # only a run of the whole suite replaces the committed results; a subset (-k, one file) goes beside them
    partial = getattr(config, "_ecgkt_partial", False) or any(
        not Path(a).is_dir() for a in config.args)
    return RESULTS / ("partial.json" if partial else "results.json")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not _bench.ROWS or hasattr(config, "workerinput"):
        return
    started = config._ecgkt_started
    meta = dict(machine=_bench.machine(), date=started["date"], commit=_bench.commit(),
                mode="quick" if _bench.sizes(config).quick else "full",
                command=" ".join(["pytest", *map(shlex.quote, config.invocation_params.args)]),
                uptime_start=started["uptime"], uptime_end=_bench.uptime(),
                python=sys.version.split()[0], torch=torch.__version__, torch_threads=torch.get_num_threads(),
                note="the machine is shared: absolute figures are noisy; ratios within one run are what count")
    rows = [dict(r, machine=meta["machine"], date=meta["date"], commit=meta["commit"]) for r in _bench.ROWS]
    out = dict(meta=meta, rows=rows, ratios=_bench.ratio_rows(rows), targets=_bench.target_rows(rows),
               skipped=SKIPPED)
    path = _results_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    config._ecgkt_results = (path, out)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    done = getattr(config, "_ecgkt_results", None)
    if not done:
        return
    path, out = done
    tr = terminalreporter
    tr.section("ecgkt: ratios measured in this run (p50 / p50)")
    for r in out["ratios"]:
        target = "" if r["target"] is None else f"  target >= {r['target']:g}: {'met' if r['met'] else 'NOT met'}"
        tr.write_line(f"{r['title']:58s} {r['x_name']}={r['x']!s:>6}  {r['ratio']:9.2f}x{target}")
    tr.section("ecgkt: absolute targets (p50 at the largest size)")
    for t in out["targets"]:
        tr.write_line(f"{t['kernel']:10s} {t['provider']:14s} {t['value']:12,.0f} {t['metric']:10s} "
                      f"target >= {t['target']:,.0f}: {'met' if t['met'] else 'NOT met'}")
    tr.write_line(f"results: {path}  (load at the end: {out['meta']['uptime_end']})")
    tr.write_line("tables and plots: python benches/report.py " + (str(path) if path.name != "results.json" else ""))

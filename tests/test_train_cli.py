"""`ecgkt pipeline` end to end on a tiny synthetic dataset: generate -> prepare -> all stages -> results;
killed after stage 2 and in the middle of a baseline, rerun, same results.json as an uninterrupted run."""
import json

import pytest

from ecgkt.cli import main
from ecgkt.train.engine import InjectedFailure
from faults_helpers import kill_group_after

TINY = ["data.synth_patients=200", "preprocessing.target_fs=50", "preprocessing.train_crop_seconds=2.0",
        "pretrain.epochs=2", "pretrain.batch_size=32", "labs.epochs=2", "labs.batch_size=32",
        "finetune.epochs=2", "finetune.min_steps=4", "finetune.rounds=2", "finetune.batch_size=32",
        "evaluate.bootstrap=50", "evaluate.lab_min_positives=2", "protocol.fractions=[0.5,1.0]",
        "protocol.replicates=1", "protocol.min_test_positives=3"]


def _no_nan(token):
    raise AssertionError(f"results.json holds {token}: not strict JSON")


def _cmd(run, *extra):
    args = ["pipeline", "--out", str(run), "--no-progress"]
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


def test_pipeline_cli_resume_gives_same_results(tmp_path, capsys):
    """Run a: two worker processes. Run b: one process, killed twice and resumed. Same results.json."""
    assert main(_cmd(tmp_path / "a", "runtime.jobs=2")) == 0
    out = capsys.readouterr().out
    assert "signal-only" in out and "ecgkt minus signal only" in out and "gap bridged" in out
    full = json.loads((tmp_path / "a/results.json").read_text())
    assert {r["arm"] for r in full["label_efficiency"]} == {"signal_only", "ecgkt", "control", "ssl", "multimodal",
                                                          "random", "oracle"}
    assert {r["fraction"] for r in full["label_efficiency"]} == {0.5, 1.0}
    assert full["protocol"]["claim"] and {h["id"] for h in full["hypotheses"]} >= {"H2", "H4"}
    json.loads((tmp_path / "a/results.json").read_text(), parse_constant=_no_nan)  # strict JSON
    for f in ("results.md", "plots/roc_curves.png", "plots/training_curves.png", "plots/lab_auroc.png",
              "plots/label_efficiency.png",
              "model/config.json", "model/model.safetensors", "predictions.npz", "config.yaml"):
        assert (tmp_path / "a" / f).is_file(), f
    from ecgkt.labels import Labels  # results.md names each label, its key beside it

    per_label = (tmp_path / "a/results.md").read_text().split("### Per-label AUROC")[1]
    labels = Labels.for_names(full["dx_names"])
    for key in full["dx_names"]:
        assert f"| {labels.name(key)} | `{key}` |" in per_label, key
    assert any(labels.name(key) != key for key in full["dx_names"])
    # the second run reuses run a's generated data through --data (a prepared store)
    store = str(tmp_path / "a/data/store")
    with pytest.raises(InjectedFailure):
        main(_cmd(tmp_path / "b", "runtime.fail_after=labs", "runtime.jobs=1") + ["--data", store])
    with pytest.raises(InjectedFailure):
        main(_cmd(tmp_path / "b", "runtime.fail_after=signal_only@1", "runtime.jobs=1") + ["--data", store])
    assert main(_cmd(tmp_path / "b", "runtime.jobs=1") + ["--data", store]) == 0
    resumed = json.loads((tmp_path / "b/results.json").read_text())
    assert resumed["config"]["runtime"].pop("jobs") == 1 and full["config"]["runtime"].pop("jobs") == 2
    assert resumed == full
    # `ecgkt evaluate` on a finished run (its recorded configuration) recomputes the same results
    (tmp_path / "b/results.json").unlink()
    assert main(["evaluate", "--out", str(tmp_path / "b"), "--data", store, "--no-progress"]) == 0
    again = json.loads((tmp_path / "b/results.json").read_text())
    again["config"]["runtime"].pop("jobs")
    assert again == full
    from ecgkt import ECGKTModel

    model = ECGKTModel.from_pretrained(tmp_path / "b/model")
    assert set(full["dx_names"]) <= set(model.dx_names) and model.config["preprocessing"]["target_fs"] == 50


# ------------------------------------------------------------------ kill -9 of `ecgkt pipeline`
def _pipeline_argv(run, *extra):
    import sys

    return [sys.executable, "-m", "ecgkt.cli"] + _cmd(run, *extra)


def test_kill_9_at_random_points_of_the_pipeline_then_resume_gives_the_same_results(tmp_path):
    """SIGKILL of the whole process group (main process and job workers) at two seeded random points of the
    training; the same command then finishes with results.json equal to an uninterrupted run's."""
    import random
    import subprocess

    ref = subprocess.run(_pipeline_argv(tmp_path / "ref"), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    full = json.loads((tmp_path / "ref/results.json").read_text())
    store = str(tmp_path / "ref/data/store")
    rng = random.Random(9)
    for k, lines in enumerate((3, 11)):
        run = tmp_path / f"killed{k}"
        argv = _pipeline_argv(run) + ["--data", store]
        training_line = lambda line: line.startswith("[") and " epoch=" in line  # noqa: E731
        assert kill_group_after(argv, lines, rng.uniform(0.0, 1.0), counts=training_line) >= lines
        assert not (run / "results.json").exists()
        again = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
        assert json.loads((run / "results.json").read_text()) == full, k
        assert not [p for p in run.rglob("*") if ".tmp" in p.name]

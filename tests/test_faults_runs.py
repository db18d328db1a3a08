"""Fault injection, training runs: planted pickles, damaged checkpoints and configurations, wrong value types,
a run trained with --data evaluated without it, leftovers of a crash; and the atomic-write helper itself."""
import errno
import json
import os
import shutil
import warnings

import pytest
import torch

from ecgkt.cli import main
from ecgkt.errors import ECGKTError
from faults_helpers import assert_one_line, run_cases

TINY = ["data.synth_patients=200", "preprocessing.target_fs=50", "preprocessing.train_crop_seconds=2.0",
        "pretrain.epochs=1", "pretrain.batch_size=32", "labs.epochs=1", "labs.batch_size=32",
        "finetune.epochs=1", "finetune.batch_size=32", "evaluate.bootstrap=20", "evaluate.lab_min_positives=2",
        "control.enabled=false"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


class _Payload:
    """A pickle that runs code when loaded: what a planted file in a run folder would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["pipeline", "--out", str(d / "run"), "--no-progress", *_sets(TINY)]) == 0
    return d


def _copy(d, name, with_data=True):
    target = d / name
    shutil.copytree(d / "run", target, ignore=None if with_data else shutil.ignore_patterns("data"))
    return target


@pytest.fixture(scope="module")
def run_cases_results(run):
    d = run
    marker = d / "PAYLOAD_RAN"
    cases = {}

    def case(name, argv, *words, rc=2):
        cases[name] = ({"argv": argv}, words, rc)

    evil = _copy(d, "evil")
    torch.save({"state": _Payload(marker)}, evil / "stages" / "finetune" / "result.pt")
    case("planted pickle in result.pt (evaluate)", ["evaluate", "--out", evil, "--no-progress"],
         "finetune/result.pt", "run code")

    evil_ckpt = _copy(d, "evil_ckpt")
    (evil_ckpt / "stages" / "signal_only" / "result.pt").unlink()
    torch.save({"model": _Payload(marker)}, evil_ckpt / "stages" / "signal_only" / "checkpoint.pt")
    case("planted pickle in checkpoint.pt (resume)", ["baseline", "signal-only", "--out", evil_ckpt, "--no-progress"],
         "signal_only/checkpoint.pt", "run code")

    for label, damage in {"truncated": lambda p: p.write_bytes(p.read_bytes()[:200]),
                          "empty": lambda p: p.write_bytes(b""),
                          "garbage": lambda p: p.write_bytes(b"not a checkpoint\x00" * 64)}.items():
        r = _copy(d, f"ckpt_{label}")
        damage(r / "stages" / "labs" / "result.pt")
        case(f"{label} result.pt", ["evaluate", "--out", r, "--no-progress"], "labs/result.pt", "damaged")

    bad_yaml = _copy(d, "bad_yaml")
    (bad_yaml / "config.yaml").write_text("seed: [unclosed\n  : :\n")
    case("malformed config.yaml", ["evaluate", "--out", bad_yaml, "--no-progress"], "config.yaml")

    bad_type = _copy(d, "bad_type")
    text = (bad_type / "config.yaml").read_text().replace("lr: 0.003", "lr: abc", 1)
    (bad_type / "config.yaml").write_text(text)
    case("config.yaml value of the wrong type", ["evaluate", "--out", bad_type, "--no-progress"], "config.yaml",
         "expected a finite number")

    with_data = _copy(d, "trained_with_data", with_data=False)
    case("evaluate without --data on a run trained with --data", ["evaluate", "--out", with_data, "--no-progress"],
         "--data")

    (d / "a_file").write_text("x")
    case("--out naming a file", ["pipeline", "--out", d / "a_file", "--no-progress"], "a_file")

    fresh = d / "fresh"
    case("--set float of the wrong type", ["pipeline", "--out", fresh, "--no-progress", "--set", "finetune.lr=abc"],
         "finetune.lr")
    case("--set integer given a fraction", ["pipeline", "--out", fresh, "--no-progress", "--set",
                                            "pretrain.epochs=1.5"], "pretrain.epochs")
    case("--set bool given a word", ["pipeline", "--out", fresh, "--no-progress", "--set", "control.enabled=maybe"],
         "control.enabled")
    case("--set list of the wrong type", ["pipeline", "--out", fresh, "--no-progress", "--set",
                                          "data.val_folds=[a, b]"], "data.val_folds")
    case("--set unknown key", ["pipeline", "--out", fresh, "--no-progress", "--set", "finetune.learning_rate=1"],
         "finetune.learning_rate")
    (d / "wrong.yaml").write_text("finetune:\n  epochs: many\n")
    case("--config file with a wrong type", ["pipeline", "--out", fresh, "--no-progress", "--config",
                                             d / "wrong.yaml"], "wrong.yaml", "finetune.epochs")
    (d / "broken.toml").write_text("finetune = [\n")
    case("--config file malformed", ["pipeline", "--out", fresh, "--no-progress", "--config", d / "broken.toml"],
         "broken.toml")

    leftovers = _copy(d, "leftovers")
    for stage in ("finetune", "labs"):
        (leftovers / "stages" / stage / ".checkpoint.pt.tmp999999").write_bytes(b"torn")
        (leftovers / "stages" / stage / ".result.pt.tmp999998").write_bytes(b"")
    (leftovers / "results.json").unlink()
    case("torn temporaries left by a crash", ["evaluate", "--out", leftovers, "--no-progress"], rc=0)

    model_config = (with_data / "model" / "config.json").read_bytes()
    results = run_cases([c for c, _, _ in cases.values()])
    return {name: (r, cases[name][1], cases[name][2]) for name, r in zip(cases, results)}, d, marker, model_config


CASES = ["planted pickle in result.pt (evaluate)", "planted pickle in checkpoint.pt (resume)", "truncated result.pt",
         "empty result.pt", "garbage result.pt", "malformed config.yaml", "config.yaml value of the wrong type",
         "evaluate without --data on a run trained with --data", "--out naming a file",
         "--set float of the wrong type", "--set integer given a fraction", "--set bool given a word",
         "--set list of the wrong type", "--set unknown key", "--config file with a wrong type",
         "--config file malformed"]


@pytest.mark.parametrize("case", CASES)
def test_run_folder_fault_is_one_line(run_cases_results, case):
    results, d, marker, _ = run_cases_results
    r, words, rc = results[case]
    assert_one_line(r, *words, rc=rc)
    assert not marker.exists(), "a planted pickle ran its payload"
    assert not (d / "fresh" / "stages").exists()  # bad values stop the run before any stage


def test_evaluate_without_data_changes_nothing(run_cases_results):
    _, d, _, model_config = run_cases_results
    run = d / "trained_with_data"
    assert not (run / "data").exists()  # no dataset generated into the run
    assert (run / "model" / "config.json").read_bytes() == model_config


def test_torn_temporaries_are_ignored_and_results_unchanged(run_cases_results):
    results, d, _, _ = run_cases_results
    r, _, _ = results["torn temporaries left by a crash"]
    assert r["rc"] == 0 and "Traceback" not in r["err"], r["err"]
    assert json.loads((d / "leftovers" / "results.json").read_text()) == \
        json.loads((d / "run" / "results.json").read_text())


def test_checkpoints_round_trip_with_weights_only(run):
    from ecgkt.train import checkpoint

    files = sorted((run / "run" / "stages").glob("*/*.pt"))
    assert files
    for f in files:
        torch.load(f, weights_only=True)  # plain types only: nothing that needs pickle's code paths
        assert checkpoint.load(f) is not None


def test_checkpoint_save_makes_numpy_loadable(tmp_path):
    import numpy as np

    from ecgkt.train import checkpoint

    checkpoint.save({"auroc": np.float64(0.75), "curve": np.arange(3.0), "n": np.int64(4), "where": tmp_path},
                    tmp_path / "c.pt")
    back = checkpoint.load(tmp_path / "c.pt")
    assert back["auroc"] == 0.75 and isinstance(back["auroc"], float) and back["n"] == 4
    assert back["curve"].tolist() == [0.0, 1.0, 2.0] and back["where"] == str(tmp_path)


# -------------------------------------------------------------------------------------- configuration types

def test_yaml_numbers_take_the_type_of_their_default():
    from ecgkt.train.config import resolve

    cfg = resolve(None, ["finetune.lr=1e-3", "pretrain.weight_decay=5E-5", "pretrain.epochs=3.0",
                         "runtime.threads=null", "control.enabled=off"])
    assert cfg.finetune.lr == 0.001 and isinstance(cfg.finetune.lr, float)
    assert cfg.pretrain.weight_decay == 5e-5 and cfg.pretrain.epochs == 3
    assert isinstance(cfg.pretrain.epochs, int)
    assert cfg.runtime.threads is None and cfg.control.enabled is False


def test_config_file_numbers_take_the_type_of_their_default(tmp_path):
    from ecgkt.train.config import resolve

    (tmp_path / "c.yaml").write_text("finetune:\n  lr: 1e-3\n  epochs: 2\n")
    cfg = resolve(tmp_path / "c.yaml")
    assert cfg.finetune.lr == 0.001 and cfg.finetune.epochs == 2



def test_config_is_typed_and_its_keys_are_the_yaml_defaults():
    """The dataclasses own keys and types, default.yaml owns the values: the two list the same keys, choices
    are checked before any stage runs, and the recorded form round-trips."""
    import dataclasses

    import yaml

    from ecgkt.train import config

    def keys(d, prefix=""):
        return {k for name, v in d.items()
                for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict) else {prefix + name})}

    cfg = config.resolve()
    assert keys(config.default_config()) == keys(cfg.to_dict())
    assert dataclasses.is_dataclass(cfg.pretrain) and cfg.preprocessing.filter_settings()["lowpass"] == 45.0
    assert config.Config.from_dict(yaml.safe_load(yaml.safe_dump(cfg.recorded()))) == cfg
    for item, message in (("model.size=huge", "expected one of tiny, small, base"),
                          ("preprocessing.normalize=minmax", "expected one of null, zscore, robust"),
                          ("pretrain.loss=1", "expected one of clip, siglip"),
                          ("model=3", "'model' is a section"),
                          ("pretrain.epochs=inf", "expected an integer")):
        with pytest.raises(ECGKTError, match=message):
            config.resolve(overrides=[item])
    with pytest.raises(ECGKTError, match="configuration key 'seed' is missing"):
        config.Config.from_dict({k: v for k, v in cfg.to_dict().items() if k != "seed"})

# ------------------------------------------------------------------------------------------ atomic writes

def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temporary(tmp_path):
    from ecgkt.io import atomic_write, atomic_write_json

    target = tmp_path / "results.json"
    atomic_write_json(target, {"a": 1})

    def fill_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(ECGKTError, match="results.json: no space left"):
        atomic_write(target, fill_disk)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_write_removes_temporaries_of_dead_writers_only(tmp_path):
    from ecgkt.io import atomic_write_bytes, temp_path

    target = tmp_path / "checkpoint.pt"
    dead = tmp_path / ".checkpoint.pt.tmp999999"  # no such pid
    dead.write_bytes(b"torn")
    mine = temp_path(tmp_path / "other.pt")
    mine.write_bytes(b"in progress")  # this process is alive: not a leftover
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and not dead.exists() and mine.exists()


def test_strict_json_never_writes_nan(tmp_path):
    import numpy as np

    from ecgkt.io import atomic_write_json, dumps_json

    text = dumps_json({"auroc": float("nan"), "x": np.float32(np.inf), "v": np.array([1.0, np.nan])})
    assert json.loads(text) == {"auroc": None, "x": None, "v": [1.0, None]} and "NaN" not in text
    with pytest.raises(ECGKTError, match="does not exist"):
        atomic_write_json(tmp_path / "missing" / "x.json", {})

"""``ecgkt info``: versions, the compiled extension and the backend each op runs here, as text and strict JSON."""
import json
import os
import subprocess
import sys

import pytest

from ecgkt import _extension, cli, info


def _json(capsys) -> dict:
    assert cli.main(["info", "--json"]) == 0
    return json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


def test_json_names_versions_and_a_backend_for_every_op(capsys):
    got = _json(capsys)
    import torch

    assert got["torch"]["version"] == torch.__version__
    assert set(got["backends"]) == set(info.OPS)
    assert got["extension"]["loaded"] == _extension.available
    for op, where in got["backends"].items():
        expected = "compiled C++" if _extension.has_kernel(op, "CPU") else "pure-torch reference"
        assert where["cpu"].startswith(expected), (op, where)
        if not torch.cuda.is_available():
            assert where["cuda"].endswith("[no CUDA device here]"), (op, where)


@pytest.mark.skipif(os.environ.get("ECGKT_DISABLE_EXTENSION") == "1", reason="ECGKT_DISABLE_EXTENSION=1 is set")
def test_this_build_reports_its_compiled_kernels(capsys):
    got = _json(capsys)
    assert got["extension"]["file"] and got["extension"]["file"].endswith(".so")
    assert got["extension"]["built_against"]["torch"] == _extension.build_info["torch"]
    assert all(w["cpu"] == "compiled C++ (ecgkt._C)" for w in got["backends"].values())
    assert got["extension"]["built_against"]["min_torch"] == _extension.build_info["min_torch"]


@pytest.mark.skipif(os.environ.get("ECGKT_DISABLE_EXTENSION") == "1", reason="ECGKT_DISABLE_EXTENSION=1 is set")
def test_text_names_the_oldest_torch_the_build_loads_into():
    r = subprocess.run([sys.executable, "-m", "ecgkt.info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"stable ABI: loads into torch >= {_extension.build_info['min_torch']}" in r.stdout, r.stdout


def test_without_the_extension_it_says_why_in_text():
    env = dict(os.environ, ECGKT_DISABLE_EXTENSION="1")
    r = subprocess.run([sys.executable, "-m", "ecgkt.info"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "compiled extension ecgkt._C: NOT in use" in r.stdout
    assert "why not: disabled by ECGKT_DISABLE_EXTENSION=1" in r.stdout
    assert "preprocess" in r.stdout and "CPU:  pure-torch reference (disabled by ECGKT_DISABLE_EXTENSION=1)" in r.stdout
    assert "environment: ECGKT_DISABLE_EXTENSION=1" in r.stdout

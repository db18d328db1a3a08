"""benches/gpu_check.py --dry-run on CPU: every section runs (toy sizes, Triton interpreter) and the JSON
is strict, so the prepared GPU check is not broken the day a GPU appears."""
import importlib.util
import json
import pathlib

import pytest

pytest.importorskip("triton", reason="the GPU check's Triton sections need triton")

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benches" / "gpu_check.py"


def test_dry_run_runs_every_section(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    result = json.loads(text)
    sections = result["sections"]
    assert result["dry_run"] is True
    expected = {"build", "env", "correctness", "opcheck", "bandwidth", "sanitizer", "loss", "compile", "train"}
    assert set(sections) == expected
    from ecgkt import _extension

    skipped = {"build", "sanitizer"} | (set() if _extension.available else {"opcheck", "compile"})
    for name, record in sections.items():
        assert record["status"] == ("skipped" if name in skipped else "ok"), (name, record)
    correctness = sections["correctness"]
    assert {r["backend"] for r in correctness["preprocess"]} >= {"triton"}
    assert correctness["preprocess_worst_rel_error_non_float64"] < 1e-4
    assert max(r["max_rel_error"] for r in correctness["contrastive"]) < 3e-2
    if _extension.available:
        assert sections["opcheck"]["ops"][0] == "preprocess" and len(sections["opcheck"]["ops"]) == 5
    if _extension.available:
        assert sections["compile"]["abs_difference"] < 1e-4
    assert all(r["fused_seconds"] > 0 for r in sections["loss"]["rows"])

"""The README's Python snippet runs exactly as written."""
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

from predict_helpers import make_model

NOTES = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = NOTES.read_text()
    block = re.search(r"<!-- snippet:start -->\s*```python\n(.*?)```\s*<!-- snippet:end -->", text, re.S)
    assert block, f"{NOTES}: no python block between the snippet markers"
    return block.group(1)


def test_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    # what the text says to run first: `ecgkt synth --out data/synth --patients 20 --seed 0` and `make demo`
    r = subprocess.run([sys.executable, "-m", "ecgkt.cli", "synth", "--out", "data/synth", "--patients", "20",
                        "--seed", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, r.stderr
    make_model().save_pretrained(tmp_path / "runs" / "demo" / "model", provenance=False)  # stands in for make demo
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(_snippet(), str(NOTES), "exec"), scope)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("500.0 ('I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1'") and lines[0].endswith("(12, 5000)")
    assert len(lines) == 1 + 4 and all(re.match(r"\d\.\d\d  \S", ln) for ln in lines[1:])  # the model has 4 labels
    res = scope["out"]
    assert tuple(res.signal.shape) == (12, 1000) and res.repaired.shape == res.flat.shape == (12,)
    assert {f.output for f in scope["pred"].labs} == set(scope["model"].lab_label_names)

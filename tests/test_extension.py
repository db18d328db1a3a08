"""The extension loader: a version mismatch is explained in one line, and ecgkt still works without _C."""
import os
import subprocess
import sys

import pytest

from ecgkt import _extension


def test_mismatch_names_both_versions_and_the_fix():
    msg = _extension.mismatch({"torch": "2.9.0+cu126", "cuda": "12.6"}, "2.13.0+cpu", None)
    assert "built for torch 2.9.0+cu126 (CUDA 12.6)" in msg
    assert "torch 2.13.0+cpu (CUDA None) is running" in msg
    assert "pip install --no-build-isolation" in msg and "\n" not in msg


def test_matching_or_unknown_build_is_accepted():
    assert _extension.mismatch({"torch": "2.13.0+cpu"}, "2.13.0+cpu", None) == ""
    assert _extension.mismatch({}, "2.13.0+cpu", None) == ""


@pytest.mark.skipif(os.environ.get("ECGKT_DISABLE_EXTENSION") == "1", reason="ECGKT_DISABLE_EXTENSION=1 is set")
def test_extension_loaded_in_this_build():
    assert _extension.available, _extension.reason
    assert _extension.has_kernel("preprocess", "CPU")
    assert not _extension.has_kernel("no_such_op", "CPU")


def test_import_without_extension_warns_once_and_falls_back():
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "import ecgkt\n"
        "from ecgkt import _extension\n"
        "assert not _extension.available and 'ECGKT_DISABLE_EXTENSION' in _extension.reason\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out = ecgkt.preprocess(torch.randn(2, 12, 301) + 0.1, 500.0)\n"
        "    loss = ecgkt.losses.clip_loss(torch.randn(5, 8), torch.randn(5, 8), 10.0)\n"
        "assert torch.isfinite(out).all() and torch.isfinite(loss)\n"
        "assert any('pure-torch reference' in str(x.message) for x in w), [str(x.message) for x in w]\n"
    )
    env = dict(os.environ, ECGKT_DISABLE_EXTENSION="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_spec_constants_agree_between_python_and_cpp():
    """The preprocessing spec's constants live once per language: ecgkt/ops/preprocess.py and
    csrc/preprocess/spec.h; they must say the same."""
    import pathlib
    import re

    from ecgkt.ops import preprocess as spec

    header = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "preprocess" / "spec.h").read_text()
    cpp = {name: float(value) for name, value in re.findall(r"constexpr \w+ (k\w+) = (-?[0-9.e-]+);", header)}
    assert cpp == {"kInvalidInt16": spec.INVALID_INT16, "kFlatPtp": spec.FLAT_PTP, "kZeroScale": spec.ZERO_SCALE,
                   "kMadToSigma": spec.MAD_TO_SIGMA}
    for source in ("cpu.cpp", "cpu_kernel.h", "cuda.cu"):  # no copies of them elsewhere in the kernels
        text = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "preprocess" / source).read_text()
        code = "\n".join(line.split("//")[0] for line in text.splitlines())
        assert not re.search(r"32768|1e-6|1e-8|1\.4826", code), source

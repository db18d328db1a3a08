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


def test_the_declared_torch_requirement_is_the_stable_abi_minimum():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    major, minor = re.search(r"^MIN_TORCH = \((\d+), (\d+)\)", (root / "setup.py").read_text(), re.M).groups()
    assert f'"torch>={major}.{minor}"' in (root / "pyproject.toml").read_text()


def test_a_stable_abi_build_serves_every_torch_from_its_minimum():
    cpu = {"torch": "2.13.0+cpu", "min_torch": "2.10", "with_cuda": False, "cuda": None}
    for running in ("2.10.0", "2.13.0+cpu", "2.14.1+cu130", "3.0.0"):
        assert _extension.mismatch(cpu, running, None) == "", running
    msg = _extension.mismatch(cpu, "2.9.1+cu128", "12.8")
    assert "needs torch >= 2.10" in msg and "2.9.1+cu128 is running" in msg and "\n" not in msg
    cuda = dict(cpu, torch="2.14.1+cu130", with_cuda=True, cuda="13.0")
    assert _extension.mismatch(cuda, "2.15.0+cu130", "13.2") == ""
    assert "CUDA 13.0 kernels" in _extension.mismatch(cuda, "2.14.1+cu126", "12.6")
    assert "CUDA 13.0 kernels" in _extension.mismatch(cuda, "2.14.1+cpu", None)


@pytest.mark.skipif(os.environ.get("ECGKT_DISABLE_EXTENSION") == "1", reason="ECGKT_DISABLE_EXTENSION=1 is set")
def test_the_loaded_library_uses_only_the_stable_abi():
    """No ATen, c10 or libtorch_python symbol is needed by ecgkt._C (what lets it load into other torch
    versions), and the module reports the stable-ABI version it targets."""
    import pathlib
    import shutil

    from ecgkt import _C

    assert _C.min_torch == tuple(int(v) for v in _extension.build_info["min_torch"].split("."))
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    check = pathlib.Path(__file__).resolve().parents[1] / ".ci" / "check_stable_abi.py"
    r = subprocess.run([sys.executable, str(check), _C.__file__], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


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
    """The preprocessing spec's constants live once per language: ecgkt/ops/preprocess/spec.py and
    csrc/preprocess/spec.h; they must say the same."""
    import ast
    import pathlib
    import re

    from ecgkt.ops.preprocess import spec

    header = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "preprocess" / "spec.h").read_text()
    cpp = {name: float(value) for name, value in re.findall(r"constexpr \w+ (k\w+) = (-?[0-9.e-]+);", header)}
    assert cpp == {"kInvalidInt16": spec.INVALID_INT16, "kFlatPtp": spec.FLAT_PTP, "kZeroScale": spec.ZERO_SCALE,
                   "kMadToSigma": spec.MAD_TO_SIGMA, "kNearZ1": spec.NEAR_Z1}
    for source in ("cpu.cpp", "cpu_kernel.h", "cuda.cu"):  # no copies of them elsewhere in the kernels
        text = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "preprocess" / source).read_text()
        code = "\n".join(line.split("//")[0] for line in text.splitlines())
        assert not re.search(r"32768|1e-6|1e-8|1e-2|1\.4826", code), source
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in [*(root / "ecgkt" / "ops" / "preprocess").glob("*.py"), root / "kernels" / "preprocess.py"]:
        if path.name == "spec.py":
            continue
        numbers = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                   and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)}
        assert not numbers & {32768, 1e-6, 1e-8, 1.4826}, path.name  # import them from spec.py


def _registry_schemas() -> dict:
    """The m.def(...) schemas of csrc/registry.cpp (adjacent C string literals joined)."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "registry.cpp").read_text()
    defs = re.findall(r"m\.def\(\s*((?:\"[^\"]*\"\s*)+)\)", text)
    schemas = ["".join(re.findall(r"\"([^\"]*)\"", d)) for d in defs]
    return {s.split("(", 1)[0]: s for s in schemas}


def test_python_schemas_equal_the_cpp_registry_and_the_loaded_ops():
    import torch

    from ecgkt.ops import schemas

    assert _registry_schemas() == schemas.SCHEMAS
    for op, schema in schemas.SCHEMAS.items():
        loaded = getattr(torch.ops.ecgkt, op).default._schema
        assert str(loaded) == str(torch._C.parse_schema("ecgkt::" + schema)), op


# Without ecgkt._C: the schemas come from Python, the references are the ops' CPU kernels, and the whole
# path (fake kernels, autograd, opcheck) is the registered one, equal to the float64 references.
_FALLBACK = r'''
import warnings
import torch
warnings.simplefilter("ignore")
import ecgkt
from ecgkt import _extension, losses
from ecgkt.ops import contrastive, schemas
from ecgkt.ops.preprocess import _design_tensors, filter_design, preprocess_reference
assert not _extension.available and schemas.DEFINED_HERE == set(schemas.SCHEMAS), schemas.DEFINED_HERE
assert not contrastive.HAS_OPS
g = torch.Generator().manual_seed(5)
a = torch.nn.functional.normalize(torch.randn(37, 20, generator=g), dim=-1)
b = torch.nn.functional.normalize(torch.randn(45, 20, generator=g), dim=-1)
s, t, gr, gc = torch.tensor(9.0), torch.tensor(-2.0), torch.randn(37, generator=g), torch.randn(45, generator=g)
req = [x.clone().requires_grad_() for x in (a, b, s, t)]
torch.library.opcheck(torch.ops.ecgkt.clip_block_lse.default, tuple(req[:3]))
torch.library.opcheck(torch.ops.ecgkt.siglip_block.default, tuple(req))
row, col = torch.ops.ecgkt.clip_block_lse(a, b, s)
torch.library.opcheck(torch.ops.ecgkt.clip_block_lse_backward.default, (a, b, s, row, col, gr, gc))
torch.library.opcheck(torch.ops.ecgkt.siglip_block_backward.default, (a, b, s, t, gr))
x = torch.randn(7, 403, generator=g).cumsum(1) * 0.05 + 0.3
key = (500.0, 0.5, 100.0, 60.0, 360.0)
d = filter_design(*key)
sos, zi, fir = _design_tensors(key, "cpu")
args = (x, torch.ones(7), torch.zeros(7), sos, zi, d.padlen, fir, d.up, d.down, 2)
torch.library.opcheck(torch.ops.ecgkt.preprocess.default, args)
out, flags = torch.ops.ecgkt.preprocess(*args)
ref, ref_flags = preprocess_reference(*args)
assert torch.equal(out, ref) and torch.equal(flags, ref_flags)
assert torch.allclose(ecgkt.preprocess(x, 500.0, target_fs=360.0, normalize="robust"), ref)
for kind in ("clip", "siglip"):
    ins = [v.clone().requires_grad_() for v in (a, b[:37] + 0.1 * a, s, t)][: 4 if kind == "siglip" else 3]
    loss = (losses.siglip_loss if kind == "siglip" else losses.clip_loss)(*ins)
    grads = torch.autograd.grad(loss, ins)
    dbl = [v.double().requires_grad_() for v in ins]
    want = (losses.naive_siglip_loss if kind == "siglip" else losses.naive_clip_loss)(*dbl)
    want_grads = torch.autograd.grad(want, dbl)
    assert abs(float(loss) - float(want)) < 1e-5, (kind, float(loss), float(want))
    assert all(torch.allclose(x.double(), y, atol=1e-5) for x, y in zip(grads, want_grads)), kind
print("ok")
'''


def test_without_the_extension_the_references_are_registered_kernels():
    env = dict(os.environ, ECGKT_DISABLE_EXTENSION="1")
    r = subprocess.run([sys.executable, "-c", _FALLBACK], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]

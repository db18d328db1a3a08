"""Triton contrastive kernels (kernels/contrastive.py): numerics under TRITON_INTERPRET=1 against the
float64 references, the float16 backward at B = 16,384, and the compiled resources of every
(dtype, D bucket) configuration for sm_80 and sm_90 (no GPU needed)."""
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional extra: pip install 'ecgkt[triton]')")

from ecgkt.kernels import contrastive as k  # noqa: E402
from ecgkt.ops.contrastive import reference  # noqa: E402

REL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _rel_err(got, ref, floor=0.0):
    """max|got - ref| / (max|ref| + floor); the floor for sums that cancel (scale, bias gradients)."""
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max()) / (float(ref.abs().max()) + floor)


def _rows(n, dim, dtype, g):
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1).to(dtype)


# (1, 33, 20): one row; (37, 45, 48): one D slice; (19, 23, 150): several K steps and output D slices
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,cols,dim", [(37, 45, 48), (1, 33, 20), (19, 23, 150)])
def test_triton_kernels_match_reference(dtype, rows, cols, dim):
    assert k.INTERPRET, "TRITON_INTERPRET=1 must be set before the kernels are imported"
    g = torch.Generator().manual_seed(rows * cols + dim)
    a, b = _rows(rows, dim, dtype, g), _rows(cols, dim, dtype, g)
    s, t = torch.tensor(30.0), torch.tensor(-3.0)
    gr, gc = torch.randn(rows, generator=g), torch.randn(cols, generator=g)
    a64, b64, s64, t64 = a.double(), b.double(), s.double(), t.double()
    rel = REL[dtype]

    row, col = k.clip_block_lse(a, b, s)
    ref_row, ref_col = reference.clip_block_lse_reference(a64, b64, s64)
    assert _rel_err(row, ref_row) <= 2e-5 and _rel_err(col, ref_col) <= 2e-5
    got = k.clip_block_lse_backward(a, b, s, row, col, gr, gc)
    ref = reference.clip_block_lse_backward_reference(a64, b64, s64, ref_row, ref_col, gr.double(), gc.double())
    for name, x, r in zip(("a", "b", "scale"), got, ref):
        assert x.dtype == (dtype if name != "scale" else s.dtype)
        floor = 1.0 if name == "scale" else 0.0
        assert _rel_err(x, r, floor) <= rel, f"clip grad {name}: {_rel_err(x, r, floor):.3g}"

    assert _rel_err(k.siglip_block(a, b, s, t), reference.siglip_block_reference(a64, b64, s64, t64)) <= 2e-5
    got = k.siglip_block_backward(a, b, s, t, gr)
    ref = reference.siglip_block_backward_reference(a64, b64, s64, t64, gr.double())
    for name, x, r in zip(("a", "b", "scale", "bias"), got, ref):
        floor = 1.0 if name in ("scale", "bias") else 0.0
        assert _rel_err(x, r, floor) <= rel, f"siglip grad {name}: {_rel_err(x, r, floor):.3g}"


@pytest.mark.parametrize("programs", [1, 2, 5])
def test_fused_lse_gives_the_same_statistics_for_any_number_of_programs(programs):
    """The one-pass row + column log-sum-exp: each program folds its row blocks into its own column
    partials; the merge gives the reference for 1 program (every block in one), several, and as many as
    there are row blocks; and the same inputs give bit-identical results (no atomics)."""
    g = torch.Generator().manual_seed(programs)
    a, b = _rows(161, 40, torch.float32, g), _rows(71, 40, torch.float32, g)
    s = torch.tensor(25.0)
    ref_row, ref_col = reference.clip_block_lse_reference(a.double(), b.double(), s.double())
    row, col = k.clip_block_lse(a, b, s, programs=programs)
    assert _rel_err(row, ref_row) <= 2e-6 and _rel_err(col, ref_col) <= 2e-6
    again = k.clip_block_lse(a, b, s, programs=programs)
    assert torch.equal(again[0], row) and torch.equal(again[1], col)


def _backward_both(a, b, s, t, gr, gc):
    row, col = k.clip_block_lse(a, b, s)
    return (k.clip_block_lse_backward(a, b, s, row, col, gr, gc), k.siglip_block_backward(a, b, s, t, gr))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_pass_backward_matches_the_two_pass_kernel_and_repeats_bit_for_bit(dtype, monkeypatch):
    """161 x 130 rows under the interpreter: 2 x 2 groups of up to 3 x 3 tiles each, so every program
    revisits its partials (first visit starts at 0, later ones add). The one-pass backward (4
    GEMM-equivalents per step) agrees with the reference and with the two-pass kernel the budget falls
    back to, and gives bit-identical results on repeat (no atomics)."""
    g = torch.Generator().manual_seed(161)
    a, b = _rows(161, 40, dtype, g), _rows(130, 40, dtype, g)
    s, t = torch.tensor(20.0), torch.tensor(-2.0)
    gr, gc = torch.randn(161, generator=g), torch.randn(130, generator=g)
    groups = k.grad_groups(a, b)
    assert groups == (2, 2)
    one = _backward_both(a, b, s, t, gr, gc)
    assert all(torch.equal(x, y) for x, y in zip(sum(one, ()), sum(_backward_both(a, b, s, t, gr, gc), ())))
    monkeypatch.setattr(k, "FUSED_GRAD_BUDGET_BYTES", 0)
    assert k.grad_groups(a, b) is None
    two = _backward_both(a, b, s, t, gr, gc)
    a64, b64, s64, t64 = a.double(), b.double(), s.double(), t.double()
    ref_row, ref_col = reference.clip_block_lse_reference(a64, b64, s64)
    ref = (reference.clip_block_lse_backward_reference(a64, b64, s64, ref_row, ref_col, gr.double(), gc.double()),
           reference.siglip_block_backward_reference(a64, b64, s64, t64, gr.double()))
    for path in (one, two):
        for got_loss, ref_loss in zip(path, ref):
            for i, (x, r) in enumerate(zip(got_loss, ref_loss)):
                floor = 1.0 if i >= 2 else 0.0  # scale, bias
                assert _rel_err(x, r, floor) <= REL[dtype], (i, _rel_err(x, r, floor))


def test_one_pass_groups_fill_the_grid_within_the_budget(monkeypatch):
    """Groups are equal-sized and none is empty; the partial buffers, (column groups x rows + row
    groups x columns) x D float32, must fit the budget, else the two-pass kernel runs."""
    x, y = torch.zeros(33, 10), torch.zeros(5 * 32 + 1, 10)  # 2 row blocks, 6 column blocks
    assert k.grad_groups(x, y) == (2, 2)
    assert k.grad_groups(x[:1], y[:1]) == (1, 1)
    assert k.grad_groups(x[:0], y) is None  # nothing to do: the two-pass path handles empty inputs
    need = (2 * 33 + 2 * 161) * 10 * 4
    monkeypatch.setattr(k, "FUSED_GRAD_BUDGET_BYTES", need)
    assert k.grad_groups(x, y) == (2, 2)
    monkeypatch.setattr(k, "FUSED_GRAD_BUDGET_BYTES", need - 1)
    assert k.grad_groups(x, y) is None


def test_config_covers_every_dim_with_a_bucket():
    assert [k.dim_bucket(d) for d in (1, 16, 17, 33, 64, 65, 128, 129, 4096)] == [16, 16, 32, 64, 64, 128, 128,
                                                                                   256, 256]
    for dtype in k.DTYPES:
        for dim in (5, 100, 3000):
            cfg = k.config(dtype, dim, interpret=False)
            assert cfg["BLOCK_K"] <= k.dim_bucket(dim) and cfg["BLOCK_DO"] <= k.dim_bucket(dim)
    assert k.supports(torch.zeros(2, 3000))  # any D under the interpreter (on a GPU too: D is tiled)
    assert not k.supports(torch.zeros(2, 8, dtype=torch.float64))


# float16 backward at a global batch of 16,384: 32 local rows against 16,384 columns, the call the
# "gather" mode makes for the row log-sum-exp (grad_col = 0). dL/dlogits ~ 1/(2B) * 1/B ~ 2e-9 is
# below float16's smallest subnormal (6e-8): without the row scaling the products are flushed to 0.
FP16_B, FP16_ROWS, FP16_DIM = 16384, 32, 16


def _fp16_case():
    g = torch.Generator().manual_seed(16384)
    a, b = _rows(FP16_ROWS, FP16_DIM, torch.float16, g), _rows(FP16_B, FP16_DIM, torch.float16, g)
    s, t = torch.tensor(10.0), torch.tensor(-10.0)
    row, col = reference.clip_block_lse_reference(a.double(), b.double(), s.double())
    grad_row = torch.full((FP16_ROWS,), 1 / (2 * FP16_B), dtype=torch.float64)
    return a, b, s, t, row, col, grad_row, torch.zeros(FP16_B, dtype=torch.float64)


def _fp16_clip_errors(a, b, s, row, col, gr, gc):
    ref = reference.clip_block_lse_backward_reference(a.double(), b.double(), s.double(), row, col, gr, gc)
    got = k.clip_block_lse_backward(a, b, s, row.float(), col.float(), gr.float(), gc.float())
    return [_fp16_err(x, r) for x, r in zip(got, ref)]


def _fp16_err(got, ref):
    """Relative error of a float16 gradient, less one float16 subnormal step (2^-24): the gradient of b
    (~5e-6 here) is itself subnormal in float16, whatever the kernel does."""
    err = float((got.double() - ref.to(got.dtype).double()).abs().max())
    return max(0.0, err - 2.0 ** -24) / float(ref.abs().max())


@pytest.mark.parametrize("budget", [None, 0], ids=["one-pass", "two-pass"])
def test_fp16_backward_at_16k_batch_keeps_the_small_gradients(monkeypatch, budget):
    monkeypatch.setattr(k, "FUSED_GRAD_BUDGET_BYTES", budget)
    a, b, s, t, row, col, gr, gc = _fp16_case()
    assert (k.grad_groups(a, b) is None) == (budget == 0)
    assert k.FP16_GRAD_SCALING
    errors = _fp16_clip_errors(a, b, s, row, col, gr, gc)
    assert max(errors) <= REL[torch.float16], errors
    ref = reference.siglip_block_backward_reference(a.double(), b.double(), s.double(), t.double(), 2 * gr)
    got = k.siglip_block_backward(a, b, s, t, (2 * gr).float())
    errors = [_fp16_err(x, r) for x, r in zip(got, ref)]
    assert max(errors) <= REL[torch.float16], errors


def test_fp16_backward_at_16k_batch_fails_without_the_scaling(monkeypatch):
    """The same case with the scaling turned off: the failure mode the scaling fixes (this test
    shows the first one can fail)."""
    monkeypatch.setattr(k, "FP16_GRAD_SCALING", False)
    errors = _fp16_clip_errors(*_fp16_case()[:3], *_fp16_case()[4:])
    assert errors[0] > 0.1, errors  # measured: 0.41 of the gradient of a lost


# ------------------------------------------------------------------------------------------------
# Compiled resources (TRITON_INTERPRET is unset in the subprocess: it compiles for real targets)
# ------------------------------------------------------------------------------------------------
_COMPILE_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ecgkt.kernels import contrastive as k

KERNELS = ("fused", "softplus", "grad", "grad_fused")
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
ELEM = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
INTS = {n: "i32" for n in ("n_x", "n_y", "dim", "stride_x", "stride_y")}
GRAD_PTRS = ("scale_ptr", "bias_ptr", "lse_x_ptr", "lse_y_ptr", "g_x_ptr", "g_y_ptr", "g_y_max_ptr", "grad_ptr",
             "scale_part_ptr", "bias_part_ptr")
FUSED_GRAD_PTRS = ("scale_ptr", "bias_ptr", "lse_x_ptr", "lse_y_ptr", "g_x_ptr", "g_y_ptr", "g_x_max_ptr",
                   "g_y_max_ptr", "gx_part_ptr", "gy_part_ptr", "bias_part_ptr")

def resources(arch, dtype, bucket, kernel):
    cfg, warps = k._launch_args(k.config(dtype, bucket, interpret=False), kernel)
    e = ELEM[dtype]
    if kernel == "fused":
        cfg.pop("BLOCK_DO")
        const = dict(cfg)
        sig = dict(x_ptr=e, y_ptr=e, scale_ptr="*fp32", row_out_ptr="*fp32", col_max_ptr="*fp32",
                   col_sum_ptr="*fp32", **INTS, n_programs="i32")
        fn = k._lse_fused_kernel
    elif kernel == "softplus":
        cfg.pop("BLOCK_DO")
        const = dict(cfg)
        sig = dict(x_ptr=e, y_ptr=e, scale_ptr="*fp32", bias_ptr="*fp32", out_ptr="*fp32", **INTS)
        fn = k._rows_softplus_kernel
    elif kernel == "grad":  # GRAD_CLIP: the heaviest mode (two exponentials and two statistics per element)
        const = dict(MODE=k.GRAD_CLIP, SCALE_GRAD=dtype == torch.float16, **cfg)
        sig = dict(x_ptr=e, y_ptr=e, **{p: "*fp32" for p in GRAD_PTRS}, **INTS)
        fn = k._rows_grad_kernel
    else:  # the one-pass backward, GRAD_CLIP
        const = dict(MODE=k.GRAD_CLIP, SCALE_GRAD=dtype == torch.float16, **cfg)
        sig = dict(x_ptr=e, y_ptr=e, **{p: "*fp32" for p in FUSED_GRAD_PTRS}, **INTS,
                   row_blocks_per_group="i32", col_blocks_per_group="i32")
        fn = k._grad_fused_kernel
    sig.update({c: "constexpr" for c in const})
    c = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": warps, "num_stages": cfg["NUM_STAGES"]})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    field = lambda name: int(re.search(name + r":(\d+)", usage).group(1))
    return dict(arch=arch, dtype=str(dtype), bucket=bucket, kernel=kernel, shared=c.metadata.shared,
                registers=field("REG"), stack=field("STACK"), local=field("LOCAL"))

rows = [resources(arch, dtype, bucket, kernel) for arch in (80, 90) for dtype in k.DTYPES
        for bucket in k.DIM_BUCKETS for kernel in KERNELS]
print("RESOURCES " + json.dumps(rows))
"""


@pytest.fixture(scope="module")
def compiled_resources():
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    return json.loads(re.search(r"^RESOURCES (.*)$", r.stdout, re.M).group(1))


def test_every_configuration_compiles_for_sm80_and_sm90_within_resources(compiled_resources):
    assert len(compiled_resources) == 2 * len(k.DTYPES) * len(k.DIM_BUCKETS) * 4
    for row in compiled_resources:
        assert row["shared"] <= k.SHARED_MEMORY_LIMIT, row  # A100: 164 KB per block
        assert row["stack"] == 0 and row["local"] == 0, f"register spills: {row}"
        assert row["registers"] <= 255, row

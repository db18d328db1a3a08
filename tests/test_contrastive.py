"""Contrastive losses (ecgkt.losses) and their block primitives (torch.ops.ecgkt.*, Triton)
against float64 references with the B x B logits materialised."""
import os

import pytest
import torch

from ecgkt import _extension, losses
from ecgkt.errors import ECGKTError
from ecgkt.ops import contrastive as ops
from ecgkt.ops.contrastive import reference

# Relative tolerances per input dtype: the inputs are rounded to the dtype, the normalised rows
# are rounded again before the kernels read them, accumulation is float32.
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _close(got, ref, rel, what, floor=0.0):
    """max|got - ref| <= rel * (max|ref| + floor); `floor` is the magnitude the rounding errors
    scale with when ref itself is near zero (the logit scale for a loss, s/B for the gradient
    reaching the normalised rows)."""
    got, ref = got.detach().double(), ref.detach().double()
    scale = float(ref.abs().max())
    err = float((got - ref).abs().max())
    assert err <= rel * (scale + floor), f"{what}: max error {err:.3g} vs scale {scale:.3g} (rel tol {rel})"


def _inputs(batch, dim, dtype, seed, scale=1 / 0.07, bias=-3.0):
    g = torch.Generator().manual_seed(seed)
    ecg = (torch.randn(batch, dim, generator=g, dtype=torch.float64) * 2 + 0.3).to(dtype).requires_grad_()
    # the clinical rows are correlated with the ECG rows so the positives matter
    clin = (ecg.detach().double() + torch.randn(batch, dim, generator=g, dtype=torch.float64)).to(dtype)
    clin.requires_grad_()
    param = torch.float64 if dtype == torch.float64 else torch.float32
    s = torch.tensor(scale, dtype=param, requires_grad=True)
    t = torch.tensor(bias, dtype=param, requires_grad=True)
    return ecg, clin, s, t


def _reference(kind, ecg, clin, s, t):
    """Loss and gradients of the naive float64 loss at the same (rounded) inputs."""
    args = [x.detach().double().requires_grad_() for x in (ecg, clin, s, t)]
    loss = (losses.naive_clip_loss(*args[:3]) if kind == "clip" else losses.naive_siglip_loss(*args))
    grads = torch.autograd.grad(loss, args if kind == "siglip" else args[:3])
    return loss, grads


def _fused(kind, ecg, clin, s, t, **kw):
    inputs = (ecg, clin, s, t) if kind == "siglip" else (ecg, clin, s)
    loss = losses.siglip_loss(*inputs, **kw) if kind == "siglip" else losses.clip_loss(*inputs, **kw)
    return loss, torch.autograd.grad(loss, inputs)


# tests of the registered ops themselves (torch.ops.ecgkt.*): skipped where the extension is missing
needs_ops = pytest.mark.skipif(not ops.HAS_OPS, reason=f"torch.ops.ecgkt contrastive ops missing: {_extension.reason}")


@pytest.mark.skipif(os.environ.get("ECGKT_DISABLE_EXTENSION") == "1", reason="ECGKT_DISABLE_EXTENSION=1 is set")
def test_extension_provides_the_ops():
    assert ops.HAS_OPS, f"torch.ops.ecgkt contrastive kernels missing: {_extension.reason}"


SHAPES = [(1, 48), (37, 48), (37, 256), (300, 48), (300, 256)]
CASES = [(d, b, n) for d in (torch.float32, torch.float16, torch.bfloat16) for b, n in SHAPES]
CASES.append((torch.float64, 37, 48))  # exact: one shape is enough


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("dtype,batch,dim", CASES)
def test_loss_and_grads_match_naive_float64(kind, dtype, batch, dim):
    ecg, clin, s, t = _inputs(batch, dim, dtype, seed=batch * 1000 + dim)
    loss, grads = _fused(kind, ecg, clin, s, t)
    ref_loss, ref_grads = _reference(kind, ecg, clin, s, t)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rel, s_value = TOL[dtype], float(s.detach())
    _close(loss, ref_loss, rel, f"{kind} loss", floor=s_value)
    for name, g, r in zip(("ecg", "clin", "logit_scale", "logit_bias"), grads, ref_grads):
        rows = name in ("ecg", "clin")
        assert g.dtype == (ecg.dtype if rows else s.dtype)
        _close(g, r, rel, f"{kind} grad {name}", floor=s_value / batch if rows else 1.0)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_large_logit_scale_does_not_overflow(kind):
    ecg, clin, s, t = _inputs(300, 48, torch.float32, seed=5, scale=100.0, bias=-10.0)
    loss, grads = _fused(kind, ecg, clin, s, t)
    ref_loss, ref_grads = _reference(kind, ecg, clin, s, t)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    _close(loss, ref_loss, 1e-5, "loss at s=100", floor=100.0)
    for g, r in zip(grads, ref_grads):
        _close(g, r, 1e-4, "grad at s=100", floor=100.0 / 300)


@needs_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_tiles_of_narrow_and_wide_logit_range_in_one_call(dtype):
    """The CPU kernel reduces a tile with one exp pass when its logits span a narrow range and with two
    (row and column maxima) when they span a wide one; a call whose tiles take both paths (rows of small
    norm in the first 256-row tile, unit rows after it; 700 columns = two column tiles) matches the reference.
    The first row tile's norm bound (|scale| x max row norms) is narrow enough to skip the min/max pass; the
    others are measured."""
    g = torch.Generator().manual_seed(11)
    a = torch.nn.functional.normalize(torch.randn(601, 40, generator=g, dtype=torch.float64), dim=-1)
    a[:256] *= 0.1
    b = torch.nn.functional.normalize(torch.randn(700, 40, generator=g, dtype=torch.float64), dim=-1)
    s = torch.tensor(150.0 if dtype == torch.float32 else 1000.0, dtype=torch.float64)
    limit = 80.0 if dtype == torch.float32 else 700.0  # the kernel's one-pass range (kOneExpRange)
    logits = s * a @ b.T
    first, second = logits[:256, :512], logits[256:512, :512]
    assert first.max() - first.min() < limit < second.max() - second.min()
    gr, gc = torch.randn(601, generator=g, dtype=torch.float64), torch.randn(700, generator=g, dtype=torch.float64)
    row, col = torch.ops.ecgkt.clip_block_lse(a.to(dtype), b.to(dtype), s.to(dtype))
    ref_row, ref_col = reference.clip_block_lse_reference(a, b, s)
    _close(row, ref_row, TOL[dtype], "row_lse")
    _close(col, ref_col, TOL[dtype], "col_lse")
    got = torch.ops.ecgkt.clip_block_lse_backward(a.to(dtype), b.to(dtype), s.to(dtype), row, col, gr.to(dtype),
                                                  gc.to(dtype))
    ref = reference.clip_block_lse_backward_reference(a, b, s, ref_row, ref_col, gr, gc)
    for name, x, r in zip(("a", "b", "scale"), got, ref):
        _close(x, r, TOL[dtype] * 4, f"clip grad {name}", floor=float(s) / 601)


@needs_ops
@pytest.mark.parametrize("rows,cols,dim", [(1, 300, 48), (300, 37, 256), (37, 1, 48), (700, 530, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_block_ops_rectangular_match_reference(rows, cols, dim, dtype):
    """Ring and gather modes call the primitives on [B_local, D] x [B_global, D] blocks."""
    g = torch.Generator().manual_seed(rows + cols)
    a = torch.nn.functional.normalize(torch.randn(rows, dim, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    b = torch.nn.functional.normalize(torch.randn(cols, dim, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    s, t = torch.tensor(23.0, dtype=acc), torch.tensor(-4.0, dtype=acc)
    gr, gc = torch.randn(rows, generator=g), torch.randn(cols, generator=g)
    a64, b64, s64, t64 = a.double(), b.double(), s.double(), t.double()
    rel = TOL[dtype] if dtype != torch.bfloat16 else 1e-5  # inputs already in bf16: only accumulation differs

    row, col = torch.ops.ecgkt.clip_block_lse(a, b, s)
    ref_row, ref_col = reference.clip_block_lse_reference(a64, b64, s64)
    assert row.dtype == acc and row.shape == (rows,) and col.shape == (cols,)
    _close(row, ref_row, rel, "row_lse")
    _close(col, ref_col, rel, "col_lse")
    got = torch.ops.ecgkt.clip_block_lse_backward(a, b, s, row, col, gr.to(acc), gc.to(acc))
    ref = reference.clip_block_lse_backward_reference(a64, b64, s64, ref_row, ref_col, gr.double(), gc.double())
    for name, x, r in zip(("a", "b", "scale"), got, ref):
        _close(x, r, max(rel, TOL[dtype]) * 4, f"clip grad {name}")

    rs = torch.ops.ecgkt.siglip_block(a, b, s, t)
    _close(rs, reference.siglip_block_reference(a64, b64, s64, t64), rel, "siglip row_sum")
    got = torch.ops.ecgkt.siglip_block_backward(a, b, s, t, gr.to(acc))
    ref = reference.siglip_block_backward_reference(a64, b64, s64, t64, gr.double())
    for name, x, r in zip(("a", "b", "scale", "bias"), got, ref):
        _close(x, r, max(rel, TOL[dtype]) * 4, f"siglip grad {name}")


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernels_are_run_to_run_deterministic(threads):
    """Fixed reduction order (no atomics): repeated runs agree bit for bit at a given thread count.
    (Across thread counts the BLAS may pick other GEMM kernels, so the last bits can differ.)"""
    ecg, clin, s, t = _inputs(700, 40, torch.float32, seed=11)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for kind in ("clip", "siglip"):
            (l1, g1), (l2, g2) = _fused(kind, ecg, clin, s, t), _fused(kind, ecg, clin, s, t)
            assert torch.equal(l1, l2) and all(torch.equal(x, y) for x, y in zip(g1, g2))
    finally:
        torch.set_num_threads(before)


def _opcheck_args(rows=37, cols=45, dim=20, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(rows, dim, generator=g), dim=-1).to(dtype)
    b = torch.nn.functional.normalize(torch.randn(cols, dim, generator=g), dim=-1).to(dtype)
    return a, b, torch.tensor(9.0), torch.tensor(-2.0), torch.randn(rows, generator=g), torch.randn(cols, generator=g)


@needs_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck(dtype):
    a, b, s, t, gr, gc = _opcheck_args(dtype=dtype)
    req = [x.clone().requires_grad_() for x in (a, b, s, t)]
    torch.library.opcheck(torch.ops.ecgkt.clip_block_lse.default, tuple(req[:3]))
    torch.library.opcheck(torch.ops.ecgkt.siglip_block.default, tuple(req))
    row, col = torch.ops.ecgkt.clip_block_lse(a, b, s)
    torch.library.opcheck(torch.ops.ecgkt.clip_block_lse_backward.default, (a, b, s, row, col, gr, gc))
    torch.library.opcheck(torch.ops.ecgkt.siglip_block_backward.default, (a, b, s, t, gr))


@needs_ops
def test_autograd_of_registered_op_matches_gradcheck():
    a, b, s, t, _, _ = _opcheck_args(rows=5, cols=7, dim=6, dtype=torch.float64)
    args = [x.double().requires_grad_() for x in (a, b, s, t)]
    assert torch.autograd.gradcheck(lambda *x: torch.ops.ecgkt.clip_block_lse(*x), args[:3])
    assert torch.autograd.gradcheck(lambda *x: torch.ops.ecgkt.siglip_block(*x), args)


@pytest.mark.parametrize("name", ["ecg", "clin", "logit_scale", "logit_bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise_a_clear_error(name, bad):
    ecg, clin, s, t = _inputs(37, 48, torch.float32, seed=1)
    values = {"ecg": ecg.detach().clone(), "clin": clin.detach().clone(), "logit_scale": s.detach().clone(),
              "logit_bias": t.detach().clone()}
    target = values[name]
    (target.view(-1)[min(3, target.numel() - 1)]).fill_(bad)
    with pytest.raises(ECGKTError, match=f"{name} contains 1 NaN/inf"):
        losses.siglip_loss(values["ecg"], values["clin"], values["logit_scale"], values["logit_bias"])
    if name != "logit_bias":
        with pytest.raises(ECGKTError, match=f"{name} contains 1 NaN/inf"):
            losses.clip_loss(values["ecg"], values["clin"], values["logit_scale"])


@needs_ops
def test_registered_op_rejects_non_finite_values():
    a, b, s, *_ = _opcheck_args()
    a[2, 3] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.ops.ecgkt.clip_block_lse(a, b, s)


def test_bad_shapes_and_modes_raise():
    x = torch.randn(4, 8)
    with pytest.raises(ECGKTError, match="same shape"):
        losses.clip_loss(x, torch.randn(5, 8), 10.0)
    with pytest.raises(ECGKTError, match=r"\[batch, dim\]"):
        losses.clip_loss(torch.randn(4), torch.randn(4), 10.0)
    with pytest.raises(ECGKTError, match="dtype"):
        losses.clip_loss(x.long(), x.long(), 10.0)
    with pytest.raises(ECGKTError, match="choose None"):
        losses.clip_loss(x, x, 10.0, distributed="allreduce")
    with pytest.raises(ECGKTError, match="init_process_group"):
        losses.siglip_loss(x, x, 10.0, -10.0, distributed="ring")


def test_modules_hold_the_mode_and_take_the_model_scale():
    """The loss modules own no parameters: the model's logit scale and bias are passed in."""
    clip, sig = losses.ClipLoss(), losses.SigLipLoss()
    assert list(clip.parameters()) == [] and list(sig.parameters()) == []
    ecg, clin, s, t = _inputs(37, 48, torch.float32, seed=2)
    loss = clip(ecg, clin, s)
    assert torch.equal(loss, losses.clip_loss(ecg, clin, s))
    loss.backward()
    assert s.grad is not None and float(s.grad) != 0.0
    sig(ecg, clin, s, t).backward()
    assert float(t.grad) != 0.0
    with pytest.raises(ECGKTError, match="choose None"):
        losses.SigLipLoss(distributed="allreduce")


def test_reference_runs_outside_autocast():
    """Under autocast the reference's matmuls would drop to bfloat16; it computes in float32."""
    a, b, s, t, gr, gc = _opcheck_args()
    want = reference.run_reference("clip_block_lse", a, b, s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = reference.run_reference("clip_block_lse", a, b, s)
    assert all(x.dtype == torch.float32 and torch.equal(x, y) for x, y in zip(got, want))


def test_cuda_kernel_falling_back_to_the_materialised_reference_warns():
    """The CUDA kernel (run here on CPU tensors) takes Triton where it can; float64 goes to the O(B^2)
    reference, which warns."""
    a, b, s, t, gr, gc = _opcheck_args(dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"O\(B\^2\) reference \(torch.float64 input\)"):
        got = ops.cuda_kernel("clip_block_lse")(a, b, s.double())
    want = reference.clip_block_lse_reference(a, b, s.double())
    assert all(torch.equal(x, y) for x, y in zip(got, want))

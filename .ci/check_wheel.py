"""Run from outside the source tree, in a venv holding torch and the built wheel (any torch from the
wheel's minimum on: CI runs it under the torch the wheel was built with and under a later one).

Asserts that the compiled kernels themselves serve every op (not the pure-torch fallback) and that
their results equal the references."""
import importlib.util
import os
import sys

import torch

import ecgkt
from ecgkt import _extension, losses
from ecgkt.ops import schemas
from ecgkt.ops.preprocess import _design_tensors, filter_design, preprocess_reference

assert "site-packages" in ecgkt.__file__, ecgkt.__file__
assert _extension.available, _extension.reason
assert importlib.util.find_spec("kernels") is None, "a top-level 'kernels' module leaked into site-packages"
assert os.path.exists(os.path.join(os.path.dirname(ecgkt.__file__), "kernels", "preprocess.py"))
for sub in ("data.synth", "ops.preprocess.design", "ops.contrastive.reference", "train", "predict", "evaluate"):
    assert importlib.util.find_spec(f"ecgkt.{sub}") is not None, f"ecgkt.{sub} is missing from the wheel"
assert not schemas.DEFINED_HERE, f"ops defined from Python, not by ecgkt._C: {schemas.DEFINED_HERE}"
for op in schemas.SCHEMAS:
    assert _extension.has_kernel(op, "CPU"), f"ecgkt::{op} has no compiled CPU kernel"
    cpu = [line for line in torch._C._dispatch_dump(f"ecgkt::{op}").splitlines() if line.startswith("CPU:")]
    assert len(cpu) == 1 and ".cpp:" in cpu[0], f"ecgkt::{op}'s CPU kernel is not the compiled one: {cpu}"

built, running = _extension.build_info["torch"], torch.__version__
if "--other-torch" in sys.argv:
    assert built != running, f"expected a torch other than the build's {built}, got {running}"

g = torch.Generator().manual_seed(3)
x = torch.randn(5, 12, 2501, generator=g).cumsum(-1) * 0.02 + 0.3
out = ecgkt.preprocess(x, 500.0)
assert out.shape == x.shape and torch.isfinite(out).all()
key = (500.0, 0.5, 100.0, 500.0, 250.0)
d = filter_design(*key)
sos, zi, fir = _design_tensors(key, "cpu")
flat = x.reshape(-1, x.shape[-1])
args = (flat, torch.ones(len(flat)), torch.zeros(len(flat)), sos, zi, d.padlen, fir, d.up, d.down, 2)
got, got_flags = torch.ops.ecgkt.preprocess(*args)
want, want_flags = preprocess_reference(*args)
assert torch.equal(got_flags, want_flags)
assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()

a = torch.nn.functional.normalize(torch.randn(300, 40, generator=g, dtype=torch.float64), dim=-1)
b = torch.nn.functional.normalize(a + torch.randn(300, 40, generator=g, dtype=torch.float64), dim=-1)
for kind, fused, naive in (("clip", losses.clip_loss, losses.naive_clip_loss),
                           ("siglip", losses.siglip_loss, losses.naive_siglip_loss)):
    extra = (torch.tensor(-3.0),) if kind == "siglip" else ()
    ins = [t.float().requires_grad_() for t in (a, b, torch.tensor(12.0), *extra)]
    loss = fused(*ins)
    grads = torch.autograd.grad(loss, ins)
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    ref = naive(*ref_ins)
    ref_grads = torch.autograd.grad(ref, ref_ins)
    got_v, want_v = float(loss.detach()), float(ref.detach())
    assert abs(got_v - want_v) < 1e-5 * max(1.0, abs(want_v)), (kind, got_v, want_v)
    for got_g, want_g in zip(grads, ref_grads):
        assert torch.allclose(got_g.double(), want_g, atol=1e-5, rtol=1e-4), (kind, (got_g.double() - want_g).abs().max())

print(f"wheel OK: {ecgkt.__file__}; built against torch {built}, running torch {running} on Python "
      f"{sys.version.split()[0]}; compiled CPU kernels for {', '.join(schemas.SCHEMAS)}; equal to the references")

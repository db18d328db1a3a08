"""Run from outside the source tree, in a venv holding only torch and the built wheel."""
import importlib.util
import os

import torch

import ecgkt
from ecgkt import _extension

assert "site-packages" in ecgkt.__file__, ecgkt.__file__
assert _extension.available, _extension.reason
assert importlib.util.find_spec("kernels") is None, "a top-level 'kernels' module leaked into site-packages"
assert os.path.exists(os.path.join(os.path.dirname(ecgkt.__file__), "kernels", "preprocess.py"))
assert _extension.has_kernel("preprocess", "CPU")

x = torch.randn(3, 12, 2501) + 0.3
out = ecgkt.preprocess(x, 500.0)
assert out.shape == x.shape and torch.isfinite(out).all()
print("wheel OK:", ecgkt.__file__, "preprocess", tuple(out.shape))

"""The schemas of ``torch.ops.ecgkt.*``, as Python states them: the same strings as csrc/registry.cpp (a test
compares the two, and the loaded schemas with these).

When the compiled extension is not loaded (not built, built for another torch, ECGKT_DISABLE_EXTENSION=1),
``define_missing()`` defines from here every op the loaded library lacks; ecgkt/ops/<op>.py then registers the
pure-torch references as their CPU kernels. The fallback therefore goes through the dispatcher like the
compiled kernels: the same fake kernels, the same autograd, and ``opcheck`` sees it."""
from __future__ import annotations

import torch

SCHEMAS = {
    "preprocess": "preprocess(Tensor signal, Tensor gain, Tensor baseline, Tensor sos, Tensor zi, int padlen, "
                  "Tensor fir, int up, int down, int normalize) -> (Tensor, Tensor)",
    "clip_block_lse": "clip_block_lse(Tensor a, Tensor b, Tensor scale) -> (Tensor, Tensor)",
    "clip_block_lse_backward": "clip_block_lse_backward(Tensor a, Tensor b, Tensor scale, Tensor row_lse, "
                               "Tensor col_lse, Tensor grad_row, Tensor grad_col) -> (Tensor, Tensor, Tensor)",
    "siglip_block": "siglip_block(Tensor a, Tensor b, Tensor scale, Tensor bias) -> Tensor",
    "siglip_block_backward": "siglip_block_backward(Tensor a, Tensor b, Tensor scale, Tensor bias, Tensor grad_row) "
                             "-> (Tensor, Tensor, Tensor, Tensor)",
}

DEFINED_HERE: set[str] = set()  # ops whose schema came from this module (no compiled library defined them)
TRITON_ON_CUDA: set[str] = set()  # ops whose CUDA kernel is registered from Python (Triton), not compiled
_LIBRARY = None


def is_defined(op: str) -> bool:
    return bool(torch._C._jit_get_schemas_for_operator(f"ecgkt::{op}"))


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``ecgkt::<op>`` already has a kernel for ``dispatch_key`` (compiled, from whichever library
    was loaded: ecgkt._C, or libecgkt_ops.so through torch.ops.load_library)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"ecgkt::{op}", dispatch_key)


def define_missing() -> set[str]:
    """Defines every op of SCHEMAS that no loaded library defines; returns those names."""
    global _LIBRARY
    for op, schema in SCHEMAS.items():
        if op not in DEFINED_HERE and not is_defined(op):
            if _LIBRARY is None:
                _LIBRARY = torch.library.Library("ecgkt", "FRAGMENT")
            _LIBRARY.define(schema)
            DEFINED_HERE.add(op)
    return DEFINED_HERE

"""Load the libtorch (CMake) build of the op library and check it registers the ops."""
import sys

import torch

torch.ops.load_library(sys.argv[1])
for op in ("preprocess", "clip_block_lse", "clip_block_lse_backward", "siglip_block", "siglip_block_backward"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ecgkt::{op}", "CPU"), op
print("CMake library OK:", sys.argv[1])

"""The preprocessing spec's constants, once for Python (the C++/CUDA kernels' copy:
csrc/preprocess/spec.h, tested equal; the Triton kernels import them from here)."""
import torch

NORMALIZE_CODES = {None: 0, "none": 0, "zscore": 1, "robust": 2}
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int16)
INVALID_INT16 = -32768
FLAT_PTP = 1e-6  # mV: a lead whose peak-to-peak is at most this is flat
ZERO_SCALE = 1e-8  # a std or MAD at most this is treated as zero
MAD_TO_SIGMA = 1.4826  # robust scale = MAD_TO_SIGMA * MAD
NEAR_Z1 = 1e-2  # a section with A(1) = 1 + a1 + a2 below this has poles near z = 1 (needs a precise form)
NOTCH_BANDWIDTH_HZ = 1.5  # -3 dB width of the notch (one-way); Q = notch / width
MAX_ORDER = 8

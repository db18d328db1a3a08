"""ecgkt: transferring clinical knowledge into ECG representations.

Public API:
  ecgkt.preprocess(signal, fs, ...)   fused ECG preprocessing (C++/CUDA/Triton kernels)
  ecgkt.losses                        fused contrastive losses (CLIP / SigLIP), distributed modes
  ecgkt.data                          MIMIC-IV(-ECG) loaders, WFDB/DICOM readers, signal store, synthetic data
  ecgkt.models                        ECG and tabular encoders, heads, ECGKTModel
"""
from . import _extension
from .ops.preprocess import PreprocessResult, preprocess
from . import losses
from . import data
from .models import ECGKTModel

__version__ = "0.1.0"
__all__ = ["__version__"]

"""ECG and tabular encoders, projection and prediction heads, and the final ECG-only ``ECGKTModel``."""
from .encoders import (ECG_ENCODER_SIZES, ECGEncoder, LinearHead, ProjectionHead, TabularEncoder,
                       TabularNormalizer)
from .model import STANDARD_LEADS, ContrastiveModel, ECGKTModel, ECGPreprocessor, MultimodalModel
from .ssl import ECGViewsModel

__all__ = ["ECG_ENCODER_SIZES", "ECGEncoder", "LinearHead", "ProjectionHead", "TabularEncoder",
           "TabularNormalizer", "STANDARD_LEADS", "ContrastiveModel", "ECGKTModel", "ECGPreprocessor",
           "MultimodalModel", "ECGViewsModel"]

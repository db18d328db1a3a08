"""Training: the three stages, both baselines, the permuted control, DDP, checkpoints, configuration."""
from .config import default_config, resolve

__all__ = ["default_config", "resolve"]

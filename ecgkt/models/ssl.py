"""The ECG-only self-supervised baseline's stage 1: two augmented views of one ECG pulled together in a
joint space by the same fused contrastive loss as ecgkt's stage 1 (the tabular tower replaced by a second
view), so "pre-training helps" can be told apart from "clinical knowledge helps"."""
from __future__ import annotations

import torch
from torch import nn

from .encoders import ECGEncoder, ProjectionHead, init_logit_scale


class ECGViewsModel(nn.Module):
    def __init__(self, ecg_encoder: ECGEncoder, embed_dim: int, temperature: float):
        super().__init__()
        self.ecg_encoder = ecg_encoder
        self.ecg_proj = ProjectionHead(ecg_encoder.out_dim, embed_dim)
        self.logit_scale = init_logit_scale(temperature)
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # used by SigLIP only

    def embed(self, x):
        """The projection, not normalised: ecgkt.losses L2-normalises it, once, in float32."""
        return self.ecg_proj(self.ecg_encoder(x))

    def forward(self, view_a, view_b):
        return self.embed(view_a), self.embed(view_b)


def augment(x: torch.Tensor, scale: float = 0.2, noise: float = 0.05) -> torch.Tensor:
    """Per-lead amplitude scaling in [1 - scale, 1 + scale] and Gaussian noise (torch's global generator,
    which the training loop seeds per epoch)."""
    gains = 1.0 + scale * (2.0 * torch.rand(x.shape[0], x.shape[1], 1, device=x.device) - 1.0)
    return x * gains + noise * torch.randn_like(x)

"""ECG encoder (xresnet1d family) and clinical-tabular encoder."""
from __future__ import annotations

import math

import torch
from torch import nn

# Named sizes of the ECG encoder: stem widths, stage widths, residual blocks per stage.
# "tiny" trains on 2 CPU cores in minutes at 100 Hz; "base" is xresnet1d50-like for GPUs.
ECG_ENCODER_SIZES = {
    "tiny": dict(stem=(16, 16, 32), widths=(32, 64, 96, 128), blocks=(1, 1, 1, 1), expansion=1, kernel=5),
    "small": dict(stem=(32, 32, 64), widths=(64, 96, 128, 192), blocks=(1, 2, 2, 1), expansion=1, kernel=5),
    "base": dict(stem=(32, 32, 64), widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3), expansion=4, kernel=5),
}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "group":  # batch-independent: identical results however the batch is split across ranks
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class ResBlock1d(nn.Module):
    """xresnet residual block: basic (expansion 1) or bottleneck (expansion 4); the identity path
    down-samples by average pooling (the "ResNet-D" trick) instead of a strided 1x1 conv."""

    def __init__(self, c_in: int, width: int, expansion: int, stride: int, kernel: int, norm: str):
        super().__init__()
        c_out = width * expansion
        if expansion == 1:
            layers = [_conv(c_in, width, kernel, stride), _norm(norm, width), nn.ReLU(inplace=True),
                      _conv(width, c_out, kernel), _norm(norm, c_out)]
        else:
            layers = [_conv(c_in, width, 1), _norm(norm, width), nn.ReLU(inplace=True),
                      _conv(width, width, kernel, stride), _norm(norm, width), nn.ReLU(inplace=True),
                      _conv(width, c_out, 1), _norm(norm, c_out)]
        nn.init.zeros_(layers[-1].weight)  # each block starts as the identity (zero-init last norm)
        self.body = nn.Sequential(*layers)
        idpath = []
        if stride != 1:
            idpath.append(nn.AvgPool1d(stride, stride, ceil_mode=True))
        if c_in != c_out:
            idpath += [_conv(c_in, c_out, 1), _norm(norm, c_out)]
        self.idpath = nn.Sequential(*idpath)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.idpath(x))


class ECGEncoder(nn.Module):
    """1-D xresnet over preprocessed ECGs [B, leads, T] -> embedding [B, out_dim].

    Global average + max pooling makes it length-agnostic (10 s training records, any length at inference).
    """

    def __init__(self, size: str = "tiny", in_leads: int = 12, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        if size not in ECG_ENCODER_SIZES:
            raise ValueError(f"unknown ECG encoder size {size!r}; choose from {sorted(ECG_ENCODER_SIZES)}")
        spec = ECG_ENCODER_SIZES[size]
        k = spec["kernel"]
        stem, c = [], in_leads
        for i, w in enumerate(spec["stem"]):
            stem += [_conv(c, w, k, stride=2 if i == 0 else 1), _norm(norm, w), nn.ReLU(inplace=True)]
            c = w
        stem.append(nn.MaxPool1d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        stages = []
        for i, (w, n) in enumerate(zip(spec["widths"], spec["blocks"])):
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                stages.append(ResBlock1d(c, w, spec["expansion"], stride, k, norm))
                c = w * spec["expansion"]
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = 2 * c
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        h = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        return self.dropout(h)


class TabularNormalizer(nn.Module):
    """Per-feature standardisation fitted on the training fold only (buffers: saved with the model).

    Missing values (NaN or tab_mask False) become 0 after standardisation (the training mean) and are
    flagged by a missingness indicator, so the encoder can tell "normal" from "not measured"."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    @torch.no_grad()
    def fit(self, tab: torch.Tensor, mask: torch.Tensor | None = None) -> "TabularNormalizer":
        tab = torch.as_tensor(tab, dtype=torch.float64)
        present = torch.isfinite(tab) if mask is None else (torch.as_tensor(mask, dtype=torch.bool) & torch.isfinite(tab))
        n = present.sum(0).clamp_min(1)
        x = torch.where(present, tab, torch.zeros_like(tab))
        mean = x.sum(0) / n
        var = (torch.where(present, tab - mean, torch.zeros_like(tab)) ** 2).sum(0) / n
        std = var.sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())
        return self

    def forward(self, tab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        present = mask.bool() & torch.isfinite(tab)
        z = (torch.nan_to_num(tab) - self.mean) / self.std
        z = torch.where(present, z.clamp(-10, 10), torch.zeros_like(z))
        return torch.cat([z, (~present).to(z.dtype)], dim=1)


class TabularEncoder(nn.Module):
    """MLP over labs, vitals, biometrics and demographics with per-feature missingness indicators."""

    def __init__(self, n_features: int, hidden: int = 128, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.normalizer = TabularNormalizer(n_features)
        blocks, c = [], 2 * n_features
        for _ in range(layers):
            blocks += [nn.Linear(c, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
            c = hidden
        self.mlp = nn.Sequential(*blocks)
        self.out_dim = c

    def forward(self, tab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.normalizer(tab, mask))


class ProjectionHead(nn.Module):
    """Maps an encoder's embedding into the shared (joint) embedding space."""

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x):
        return self.net(x)


class LinearHead(nn.Module):
    """Logits for independent binary labels (diagnoses, or lab low/high flags)."""

    def __init__(self, in_dim: int, n_out: int, dropout: float = 0.0, prior: torch.Tensor | None = None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, n_out)
        if prior is not None:  # start at the label prevalence: faster, stabler early training
            with torch.no_grad():
                p = prior.clamp(1e-3, 1 - 1e-3)
                self.linear.bias.copy_(torch.log(p / (1 - p)))

    def forward(self, x):
        return self.linear(self.dropout(x))


def init_logit_scale(temperature: float = 0.07) -> nn.Parameter:
    return nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

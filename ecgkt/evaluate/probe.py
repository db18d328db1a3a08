"""Linear probes: one logistic output per label on frozen features, L2 strength chosen on validation.

Full-batch L-BFGS in float64 along the L2 path (strongest penalty first from a zero start, each weaker one
warm-started from the previous solution), so a probe is a deterministic function of its inputs (no seed,
no batch order). Features are standardised with the labelled training rows' statistics."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from . import metrics

DEFAULT_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclasses.dataclass
class Probe:
    weight: torch.Tensor  # [F, L] on standardised features
    bias: torch.Tensor  # [L]
    mean: torch.Tensor
    std: torch.Tensor
    l2: float
    val_macro_auroc: float

    def predict(self, x) -> np.ndarray:
        z = (torch.as_tensor(np.asarray(x), dtype=torch.float64) - self.mean) / self.std
        return torch.sigmoid(z @ self.weight + self.bias).numpy()


def _fit_one(x, y, m, l2: float, max_iter: int, start=None) -> tuple[torch.Tensor, torch.Tensor]:
    n_feat, n_lab = x.shape[1], y.shape[1]
    if start is None:
        pos = (y * m).sum(0)
        prior = ((pos + 0.5) / (m.sum(0) + 1.0)).clamp(1e-4, 1 - 1e-4)
        start = (torch.zeros(n_feat, n_lab, dtype=torch.float64), torch.log(prior / (1 - prior)))
    w = start[0].clone().requires_grad_(True)
    b = start[1].clone().requires_grad_(True)
    denom = m.sum(0).clamp_min(1.0)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss = ((bce * m).sum(0) / denom).sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit(x_train, y_train, x_val, y_val, mask_train=None, mask_val=None, l2_grid=DEFAULT_L2,
        max_iter: int = 100) -> Probe:
    """Fits one probe per L2 strength on the training rows, keeps the one with the best validation macro
    AUROC (labels with both classes among the validation rows; masked entries ignored)."""
    x = torch.as_tensor(np.asarray(x_train), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_train), dtype=torch.float64)
    m = torch.ones_like(y) if mask_train is None else torch.as_tensor(np.asarray(mask_train), dtype=torch.float64)
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(mean)
    z = (x - mean) / std
    best, start = None, None
    for l2 in sorted(l2_grid, reverse=True):  # strongest penalty first; each fit starts from the previous one
        w, b = _fit_one(z, y, m, float(l2), max_iter, start)
        start = (w, b)
        probe = Probe(w, b, mean, std, float(l2), float("nan"))
        score = metrics.macro_auroc(np.asarray(y_val), probe.predict(x_val),
                                    None if mask_val is None else np.asarray(mask_val).astype(bool))
        probe.val_macro_auroc = score
        if best is None or (np.isfinite(score) and (not np.isfinite(best.val_macro_auroc)
                                                    or score > best.val_macro_auroc)):
            best = probe
    return best

"""The float64 numpy/scipy reference of ``torch.ops.ecgkt.preprocess``: the spec written out step by step.
Every kernel (C++ CPU, CUDA, Triton) is tested against it; it is also the CPU kernel when ecgkt._C is missing."""
from __future__ import annotations

import numpy as np
import torch
from scipy import signal as sps

from .spec import FLAT_PTP, INVALID_INT16, MAD_TO_SIGMA, ZERO_SCALE


def _repair(v: np.ndarray, invalid: np.ndarray):
    """Interpolate invalid runs in place; returns (repaired, all_invalid) per row."""
    repaired = invalid.any(axis=1)
    all_invalid = invalid.all(axis=1)
    t = np.arange(v.shape[1])
    for i in np.flatnonzero(repaired & ~all_invalid):
        ok = ~invalid[i]
        # np.interp holds the first/last valid value outside the valid range: the spec's edge rule
        v[i, ~ok] = np.interp(t[~ok], t[ok], v[i, ok])
    v[all_invalid] = 0.0
    return repaired, all_invalid


def _zero_phase(sos: np.ndarray, zi: np.ndarray, v: np.ndarray, padlen: int) -> np.ndarray:
    if len(sos) == 0:
        return v
    n, t = v.shape
    p = min(padlen, t - 1)
    if p > 0:
        left = 2 * v[:, :1] - v[:, p:0:-1]
        right = 2 * v[:, -1:] - v[:, -2:-p - 2:-1]
        ext = np.concatenate([left, v, right], axis=1)
    else:
        ext = v
    y, _ = sps.sosfilt(sos, ext, axis=1, zi=zi[:, None, :] * ext[None, :, :1])
    y = y[:, ::-1]
    y, _ = sps.sosfilt(sos, y, axis=1, zi=zi[:, None, :] * y[None, :, :1])
    return np.array(y[:, ::-1][:, p:p + t], order="C")


def _resample(y: np.ndarray, fir: np.ndarray, up: int, down: int) -> np.ndarray:
    """out[n] = sum_k fir[k] u[n*down + half - k] (u = y zero-stuffed by up), n < ceil(T*up/down)."""
    if up == 1 and down == 1:
        return y
    t = y.shape[1]
    t_out = -(-t * up // down)
    half = (len(fir) - 1) // 2
    pre = (-half) % down  # shift the filter so that the first kept output lands on a multiple of down
    h = np.concatenate([np.zeros(pre), fir])
    full = sps.upfirdn(h, y, up, down, axis=1)
    first = (half + pre) // down
    return full[:, first:first + t_out]


def _normalize(y: np.ndarray, mode: int, dead: np.ndarray) -> np.ndarray:
    if mode == 0:
        return y
    mean = y.mean(axis=1, keepdims=True)
    std = y.std(axis=1, keepdims=True)
    zs = (y - mean) / np.where(std > ZERO_SCALE, std, 1.0)
    if mode == 1:
        dead |= std[:, 0] <= ZERO_SCALE
        return zs
    med = np.median(y, axis=1, keepdims=True)
    mad = MAD_TO_SIGMA * np.median(np.abs(y - med), axis=1, keepdims=True)
    robust_ok = mad[:, 0] > MAD_TO_SIGMA * ZERO_SCALE
    dead |= ~robust_ok & (std[:, 0] <= ZERO_SCALE)
    return np.where(robust_ok[:, None], (y - med) / np.where(robust_ok[:, None], mad, 1.0), zs)


def preprocess_reference(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize):
    """float64 numpy/scipy implementation of ``torch.ops.ecgkt.preprocess`` (same arguments)."""
    x = signal.detach().cpu()
    is_int16 = x.dtype == torch.int16
    xn = x.numpy() if x.dtype not in (torch.float16, torch.bfloat16) else x.float().numpy()
    g = gain.detach().cpu().double().numpy()[:, None]
    b = baseline.detach().cpu().double().numpy()[:, None]
    v = (xn.astype(np.float64) - b) / g
    invalid = (xn == INVALID_INT16) if is_int16 else ~np.isfinite(v)
    repaired, dead = _repair(v, invalid)
    flat = np.ptp(v, axis=1) <= FLAT_PTP if v.shape[1] else np.ones(len(v), bool)
    dead |= flat
    v[dead] = 0.0
    sos_n = sos.detach().cpu().double().numpy().reshape(-1, 6)
    zi_n = zi.detach().cpu().double().numpy().reshape(-1, 2)
    y = _zero_phase(sos_n, zi_n, v, int(padlen))
    y = _resample(y, fir.detach().cpu().double().numpy(), int(up), int(down))
    y = _normalize(y, int(normalize), dead)
    y[dead] = 0.0
    flags = repaired.astype(np.int32) | (dead.astype(np.int32) << 1)
    out_dtype = torch.float64 if signal.dtype == torch.float64 else torch.float32
    out = torch.from_numpy(np.array(y, order="C")).to(device=signal.device, dtype=out_dtype)  # a copy: no negative strides
    return out, torch.from_numpy(flags).to(signal.device)

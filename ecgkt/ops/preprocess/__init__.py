"""Fused ECG preprocessing: ``ecgkt.preprocess`` wrapping ``torch.ops.ecgkt.preprocess``.

One pass per lead does, in order:

1. conversion to mV: float16/bfloat16/float32/float64 input is taken as mV; int16 input is ADC units,
   converted as ``(x - baseline) / gain`` (WFDB format 16; -32768 marks an invalid sample);
2. repair: runs of invalid samples (NaN/inf, or -32768 for int16) are linearly interpolated between the
   nearest valid samples (a leading/trailing run holds the first/last valid value); ``repaired`` reports it.
   An all-invalid or flat lead (peak-to-peak <= 1e-6 mV) comes out as zeros and is reported as ``flat``;
3. zero-phase filtering (forward-backward, odd extension, steady-state initial conditions, exactly
   ``scipy.signal.sosfiltfilt``) with one cascade of second-order sections: a Butterworth high-pass at
   ``highpass`` Hz (baseline wander), a Butterworth low-pass at ``lowpass`` Hz and an ``iirnotch`` at
   ``notch`` Hz. The orders are the smallest that meet the required response (see ``filter_design``);
4. optional polyphase resampling to ``target_fs`` (exactly ``scipy.signal.resample_poly``);
5. per-lead normalisation: ``"zscore"`` (mean 0, population std 1), ``"robust"`` (median 0, 1.4826*MAD 1,
   falling back to z-score when the MAD is 0) or ``None``.

Required zero-phase magnitude response, measured with sinusoids in tests/test_preprocess.py: within
+-1 dB from 1 Hz to 0.7*lowpass (except within +-3 Hz of the notch); >= 20 dB attenuation at and below
highpass/5; >= 30 dB at notch +- 0.1 Hz; >= 20 dB at and above 1.5*lowpass (below Nyquist). The measured
table is in docs/preprocess.md.

Backends compute the same function: the C++ CPU kernel (csrc/preprocess/cpu*.cpp, vectorised over leads),
the CUDA kernel (csrc/preprocess/cuda.cu), the Triton kernel (ecgkt.kernels.preprocess) and a float64
numpy/scipy reference. The op is not differentiable: its outputs never require grad.

Layout: ``spec`` (the constants), ``design`` (filter design), ``reference`` (the float64 reference); this
module registers the op's Python parts and holds the public face. The ``ecgkt preprocess`` command is
``ecgkt/cli/preprocess.py``, outside this package, so that ``ecgkt --help`` never imports torch.
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from ... import _extension
from ...errors import ECGKTError
from .. import schemas
from .design import (FilterDesign, _check_rate, _design_tensors, filter_design,  # noqa: F401
                     response_requirements)
from .reference import preprocess_reference
from .spec import (FLAT_PTP, INPUT_DTYPES, INVALID_INT16, MAD_TO_SIGMA, MAX_ORDER, NORMALIZE_CODES,  # noqa: F401
                   NOTCH_BANDWIDTH_HZ, ZERO_SCALE)

__all__ = ["preprocess", "PreprocessResult", "filter_design", "FilterDesign", "response_requirements",
           "measure_response", "preprocess_reference"]

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


class PreprocessResult(NamedTuple):
    """``signal``: [B, L, T_out] (or [L, T_out]); ``repaired``/``flat``: [B, L] (or [L]) bool."""

    signal: torch.Tensor
    repaired: torch.Tensor
    flat: torch.Tensor



# ---------------------------------------------------------------------------------------------------------
# The registered op: fake kernel and non-differentiability
# ---------------------------------------------------------------------------------------------------------
def _output_length(t: int, up: int, down: int) -> int:
    return -(-t * up // down)


def _cpu_fallback_kernel(*args):
    """The CPU kernel of ecgkt::preprocess when ecgkt._C has none: the float64 reference, warning once."""
    _extension.warn_fallback("preprocess")
    return preprocess_reference(*args)


def _cuda_triton_kernel(*args):
    """The CUDA kernel of ecgkt::preprocess when ecgkt._C was built without CUDA: the Triton kernels."""
    return _run_triton(*args)


def _register() -> None:
    if not schemas.has_kernel("preprocess", "CPU"):
        torch.library.register_kernel("ecgkt::preprocess", "cpu", _cpu_fallback_kernel)
    if not schemas.has_kernel("preprocess", "CUDA"):
        torch.library.register_kernel("ecgkt::preprocess", "cuda", _cuda_triton_kernel)
        schemas.TRITON_ON_CUDA.add("preprocess")

    @torch.library.register_fake("ecgkt::preprocess")
    def _preprocess_fake(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize):
        torch._check(signal.dim() == 2, lambda: "ecgkt::preprocess: signal must be [N, T]")
        n, t = signal.shape
        out_dtype = torch.float64 if signal.dtype == torch.float64 else torch.float32
        out = signal.new_empty((n, _output_length(t, up, down)), dtype=out_dtype)
        return out, signal.new_empty((n,), dtype=torch.int32)

    def _setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output)

    def _backward(ctx, grad_out, grad_flags):
        raise RuntimeError("ecgkt::preprocess is not differentiable")

    torch.library.register_autograd("ecgkt::preprocess", _backward, setup_context=_setup_context)


_register()


def measure_response(fs: float, freqs, *, dtype=torch.float32, backend="auto", **settings) -> np.ndarray:
    """Zero-phase magnitude response of ``preprocess`` in dB, measured with sinusoids.

    One lead per frequency: a unit sinusoid long enough for 8 periods of the lowest frequency (at least
    20 s) goes through ``preprocess(..., normalize=None)``; the output's amplitude at that frequency is
    a least-squares sine/cosine fit over the middle half (away from the edges)."""
    freqs = np.asarray(freqs, dtype=np.float64)
    seconds = max(20.0, 8.0 / max(float(freqs.min()), 0.01))
    n = int(seconds * fs) | 1
    t = np.arange(n) / fs
    x = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + 0.3)
    y = preprocess(torch.from_numpy(x).to(dtype), fs, normalize=None, backend=backend, **settings)
    y = y.double().numpy()
    mid = slice(n // 4, 3 * n // 4)
    out = np.empty(len(freqs))
    for i, f in enumerate(freqs):
        basis = np.stack([np.sin(2 * np.pi * f * t[mid]), np.cos(2 * np.pi * f * t[mid]), np.ones(len(t[mid]))], 1)
        coef, *_ = np.linalg.lstsq(basis, y[i, mid], rcond=None)
        out[i] = 20 * np.log10(max(np.hypot(coef[0], coef[1]), 1e-12))
    return out


# ---------------------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------------------
def _per_lead(name: str, value, b: int, l: int, batched: bool, required: bool, default: float):
    """Broadcast a scalar, [L] or [B, L] gain/baseline to a flat float32 [B*L] tensor."""
    if value is None:
        if required:
            raise ECGKTError(f"{name} is required for int16 (ADC) input: pass the per-lead {name} "
                             "(adu/mV for gain, adu for baseline), e.g. from the WFDB header")
        return torch.full((b * l,), default, dtype=torch.float32)
    t = torch.as_tensor(value).detach().to("cpu", torch.float32)
    shape = tuple(t.shape)
    if t.dim() == 0:
        t = t.expand(b, l)
    elif shape == (l,):
        t = t.unsqueeze(0).expand(b, l)
    elif batched and shape == (b, l):
        pass
    else:
        want = f"a scalar, [{l}]" + (f" or [{b}, {l}]" if batched else "")
        raise ECGKTError(f"{name} has shape {list(shape)}; expected {want} (one value per lead)")
    if not torch.isfinite(t).all():
        raise ECGKTError(f"{name} has non-finite values")
    if name == "gain" and (t == 0).any():
        raise ECGKTError("gain has zeros; a gain is adu per mV and must be non-zero")
    return t.reshape(-1).contiguous()


def _run_triton(*args):
    try:
        from ...kernels.preprocess import preprocess_triton
    except ImportError as e:
        raise ECGKTError(f"backend='triton' needs the triton package ({e}); pip install 'ecgkt[triton]'") from None
    return preprocess_triton(*args)


def preprocess(signal, fs, *, highpass=0.5, lowpass=100.0, notch=60.0, target_fs=None, normalize="zscore",
               gain=None, baseline=None, backend="auto", return_info=False):
    """Preprocess ECGs in one fused pass (see the module docstring for the exact steps).

    Args:
      signal: [B, L, T] batch or [L, T] record; float16/bfloat16/float32/float64 in mV, or int16 ADC units.
      fs: sampling rate in Hz.
      highpass: high-pass (baseline wander) corner in Hz, or None.
      lowpass: low-pass corner in Hz, or None (skipped when >= 0.45*fs).
      notch: mains notch in Hz (50 or 60), or None (skipped when >= fs/2).
      target_fs: resample to this rate (polyphase, as scipy.signal.resample_poly), or None.
      normalize: "zscore", "robust" (median / 1.4826 MAD) or None.
      gain, baseline: adu/mV and adu, scalar, [L] or [B, L]; gain is required for int16 input.
      backend: "auto" (the compiled kernel for the tensor's device), "cpu", "cuda", "triton"
        (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) or "reference" (float64 numpy/scipy).
      return_info: also return which leads were repaired and which were flat/all-invalid.

    Returns:
      float32 (float64 for float64 input) [B, L, T_out] / [L, T_out], T_out = ceil(T*target_fs/fs); or a
      PreprocessResult(signal, repaired, flat) when return_info. The output never requires grad.
    """
    if isinstance(signal, np.ndarray):
        signal = torch.from_numpy(signal)
    if not isinstance(signal, torch.Tensor):
        raise ECGKTError(f"signal must be a torch.Tensor or numpy array, got {type(signal).__name__}")
    if signal.dim() not in (2, 3):
        raise ECGKTError(f"signal has shape {list(signal.shape)}; expected [B, leads, T] or [leads, T]")
    if signal.dtype not in INPUT_DTYPES:
        raise ECGKTError(f"signal has dtype {signal.dtype}; expected float16/bfloat16/float32/float64 (mV) "
                         "or int16 (ADC units with gain and baseline)")
    if signal.shape[-1] < 1 or signal.shape[-2] < 1:
        raise ECGKTError(f"signal has shape {list(signal.shape)}; it needs at least one lead and one sample")
    if normalize not in NORMALIZE_CODES:
        raise ECGKTError(f"normalize={normalize!r}; expected 'zscore', 'robust' or None")
    if backend not in BACKENDS:
        raise ECGKTError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    key = (
        _check_rate("fs", fs, allow_none=False),
        _check_rate("highpass", highpass, allow_none=True),
        _check_rate("lowpass", lowpass, allow_none=True),
        _check_rate("notch", notch, allow_none=True),
        _check_rate("target_fs", target_fs, allow_none=True),
    )
    design = filter_design(*key)

    batched = signal.dim() == 3
    b, l, t = signal.shape if batched else (1, *signal.shape)
    is_int16 = signal.dtype == torch.int16
    g = _per_lead("gain", gain, b, l, batched, is_int16, 1.0)
    z = _per_lead("baseline", baseline, b, l, batched, False, 0.0)
    x = signal.detach().reshape(b * l, t).contiguous()
    device = x.device

    if backend == "auto":  # the dispatcher picks the kernel: compiled, else Triton (CUDA) or the reference (CPU)
        backend = "dispatch"
    if backend == "cuda" and device.type != "cuda":
        raise ECGKTError(f"backend='cuda' needs a CUDA tensor; signal is on {device}")
    if backend == "cpu" and device.type != "cpu":
        raise ECGKTError(f"backend='cpu' needs a CPU tensor; signal is on {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ECGKTError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
    if backend in ("cpu", "cuda") and not _extension.has_kernel("preprocess", backend.upper()):
        if _extension.available:  # loaded, but built without this device's kernel
            warnings.warn(f"ecgkt: ecgkt._C has no {backend.upper()} kernel for preprocess (built with "
                          f"CUDA={_extension.build_info.get('with_cuda')}); using the float64 reference",
                          RuntimeWarning, stacklevel=2)
            backend = "reference"
        else:
            backend = "dispatch"  # the registered fallback kernel (it warns once)

    sos, zi, fir = _design_tensors(key, str(device))
    args = (x, g.to(device), z.to(device), sos, zi, design.padlen, fir, design.up, design.down,
            NORMALIZE_CODES[normalize])
    if backend == "reference":
        out, flags = preprocess_reference(*args)
    elif backend == "triton":
        out, flags = _run_triton(*args)
    else:
        out, flags = torch.ops.ecgkt.preprocess(*args)

    shape = (b, l) if batched else (l,)
    out = out.reshape(*shape, out.shape[-1])
    if not return_info:
        return out
    flags = flags.reshape(shape)
    return PreprocessResult(out, (flags & 1).bool(), (flags & 2).bool())


class Preprocess(nn.Module):
    """``torch.ops.ecgkt.preprocess`` at one input rate ``fs``, as an nn.Module: the settings and the
    filter and resampling coefficients are fixed at construction (buffers), so it scripts
    (``torch.jit.script``) and exports (``torch.export``) into a graph with the model after it.

    ``forward(signal, gain=None, baseline=None)``: signal [..., T] int16 ADC units or float mV at ``fs``;
    gain (adu/mV, default 1) and baseline (adu, default 0) of the leads' shape [...]. Returns
    ``(out [..., T_out] float32 (float64 for float64 input), flags [...] int32)``, flags as in the op
    (bit 0 repaired, bit 1 flat or all-invalid). ``ecgkt.preprocess`` is the validating, any-rate face.
    """

    def __init__(self, fs: float, highpass=0.5, lowpass=100.0, notch=60.0, target_fs=None, normalize="zscore"):
        super().__init__()
        if normalize not in NORMALIZE_CODES:
            raise ECGKTError(f"normalize={normalize!r}; expected 'zscore', 'robust' or None")
        d = filter_design(fs, highpass, lowpass, notch, target_fs)
        sos, zi, fir = d.sos.reshape(-1, 6), d.zi.reshape(-1, 2), np.asarray(d.fir, dtype=np.float64)
        self.n_sections, self.n_taps = int(sos.shape[0]), int(fir.shape[0])
        # zero-size buffers break torch.export.save (its weight packing fails with "numel: integer
        # multiplication overflow"): keep at least one row and slice to the real size in forward
        self.register_buffer("sos", _padded(sos, (max(1, self.n_sections), 6)))
        self.register_buffer("zi", _padded(zi, (max(1, self.n_sections), 2)))
        self.register_buffer("fir", _padded(fir, (max(1, self.n_taps),)))
        self.padlen, self.up, self.down = int(d.padlen), int(d.up), int(d.down)
        self.normalize = int(NORMALIZE_CODES[normalize])
        self.fs = float(fs)

    def forward(self, signal: torch.Tensor, gain: Optional[torch.Tensor] = None,
                baseline: Optional[torch.Tensor] = None):
        lead_shape = signal.shape[:-1]
        x = signal.reshape(-1, signal.shape[-1])
        ones = torch.ones(x.shape[0], dtype=torch.float32, device=x.device)
        g = ones if gain is None else gain.reshape(-1).float()
        b = ones * 0 if baseline is None else baseline.reshape(-1).float()
        out, flags = torch.ops.ecgkt.preprocess(x, g, b, self.sos[: self.n_sections], self.zi[: self.n_sections],
                                                self.padlen, self.fir[: self.n_taps], self.up, self.down,
                                                self.normalize)
        return out.reshape(list(lead_shape) + [out.shape[-1]]), flags.reshape(lead_shape)

    def extra_repr(self) -> str:
        return f"fs={self.fs}, sections={self.n_sections}, up={self.up}, down={self.down}, normalize={self.normalize}"


def _padded(values: np.ndarray, shape) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float64)
    if values.size:
        out[tuple(slice(0, n) for n in values.shape)] = torch.from_numpy(np.ascontiguousarray(values, np.float64))
    return out


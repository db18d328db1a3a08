"""Triton kernel of the fused ECG preprocessing op (``ecgkt::preprocess_triton``).

Same arguments and result as ``torch.ops.ecgkt.preprocess`` (the exact function is written out in
``ecgkt/ops/preprocess/``): convert -> repair invalid runs -> flat check -> ``sosfiltfilt`` with odd
extension -> ``resample_poly`` -> z-score / robust normalisation.

Design (GPU):

* One program per block of ``BLOCK_N`` leads; the odd-extended rows are staged in a global workspace
  ``[N, T + 2P]`` (L2-resident for ECG-sized batches) and every phase streams it in tiles of
  ``BLOCK_T`` samples x ``BLOCK_N`` leads.
* The IIR recursion is not run sample by sample. Each second-order section is a linear time-invariant
  system, so on a tile of ``BLOCK_T`` samples its output is a matrix product plus the effect of the state
  entering the tile (the "chunked" form of a linear recurrence)::

      Y = H @ X + c0 s0 + c1 s1              H[t, j] = h[t - j]  (impulse response, lower Toeplitz)
      s' = A^BLOCK_T s + G @ X               c = first row of A^t, G[:, j] = A^(BLOCK_T-1-j) B

  so the work is a ``tl.dot`` (tensor cores on GPU; 3xTF32 keeps float32 accuracy) and only a 2-vector
  state per lead is passed from tile to tile. ``H``, ``c``, ``G`` and ``A^BLOCK_T`` are computed per
  section by a small setup kernel from ``sos`` on the device (float64, no host sync). The backward pass
  is the same computation on tiles read in reverse order. The carried state, its update and the
  state-to-output term stay in float64 for every input dtype (2 of the ~BLOCK_T + 4 operations per
  sample): the 0.5 Hz high-pass has poles next to z = 1 and amplifies float32 state round-off to
  3-7e-3 of the peak at 1000 Hz; with a float64 state the kernel matches the CPU kernel's 1e-4.
* Invalid-sample repair (rare) uses running max/min scans of the nearest valid index
  (``tl.associative_scan``) across tiles; the next valid index is parked in the invalid slot itself
  (bit-cast) between the reverse and the forward sweep.
* Polyphase resampling gathers the taps of each output phase; z-score is two reductions then one store.
  Robust normalisation takes its medians with torch (``kthvalue`` on chunks of rows, bounded memory) on the
  unnormalised kernel output, like the CUDA op. Computation is float32 except for float64 input (float64 throughout).

What limits it: a program walks its rows' tiles in sequence, so with 64x12 leads only 48 programs are
in flight and each waits on a chain of small matrix products; the CUDA kernel (one block per lead,
chunked scan in registers) is the throughput path. Under ``TRITON_INTERPRET=1`` the matrix form makes
the kernel fast enough for tests (numpy matmuls rather than a per-sample Python loop).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import on_device

__all__ = ["preprocess_triton", "robust_normalize", "BLOCK_T", "BLOCK_N"]

BLOCK_T = 64  # samples per tile (size of the Toeplitz block)
BLOCK_N = 16  # leads per program (tl.dot needs >= 16)
from ..ops.preprocess.spec import FLAT_PTP, INVALID_INT16, MAD_TO_SIGMA, ZERO_SCALE  # noqa: E402 - the spec's constants

_INVALID_INT16 = tl.constexpr(INVALID_INT16)
_FLAT_PTP = tl.constexpr(FLAT_PTP)  # the same values, readable inside @triton.jit functions
_ZERO_SCALE = tl.constexpr(ZERO_SCALE)

# one section's table row: h[BT], c0[BT], c1[BT], g0[BT], g1[BT], A^BT (4 values), zi (2), 2 spare
_TABLE = 5 * BLOCK_T + 8


@triton.jit
def _section_tables_kernel(sos_ptr, zi_ptr, tab_ptr, BT: tl.constexpr, TAB: tl.constexpr):
    """Per second-order section (one program each), in float64: impulse response h, first row of A^t,
    the input-to-end-state map G and A^BT, for a tile of BT samples (transposed direct-form II)."""
    s = tl.program_id(0)
    sec = sos_ptr + 6 * s
    a0 = tl.load(sec + 3).to(tl.float64)
    b0 = tl.load(sec + 0).to(tl.float64) / a0
    b1 = tl.load(sec + 1).to(tl.float64) / a0
    b2 = tl.load(sec + 2).to(tl.float64) / a0
    a1 = tl.load(sec + 4).to(tl.float64) / a0
    a2 = tl.load(sec + 5).to(tl.float64) / a0
    out = tab_ptr + s * TAB
    zero = b0 * 0.0
    z0 = zero
    z1 = zero
    r0 = zero + 1.0
    r1 = zero
    for t in range(BT):
        x = tl.where(t == 0, 1.0, 0.0)
        y = b0 * x + z0
        z0_next = b1 * x - a1 * y + z1
        z1 = b2 * x - a2 * y
        z0 = z0_next
        tl.store(out + t, y)  # impulse response h[t]
        tl.store(out + 1 * BT + t, r0)  # first row of A^t
        tl.store(out + 2 * BT + t, r1)
        r0_next = -a1 * r0 - a2 * r1
        r1 = r0
        r0 = r0_next
    v0 = b1 - a1 * b0  # B: the state update is z' = A z + B x with A = [[-a1, 1], [-a2, 0]]
    v1 = b2 - a2 * b0
    for i in range(BT):
        j = BT - 1 - i
        tl.store(out + 3 * BT + j, v0)  # A^(BT-1-j) B
        tl.store(out + 4 * BT + j, v1)
        v0_next = -a1 * v0 + v1
        v1 = -a2 * v0
        v0 = v0_next
    m00 = zero + 1.0
    m01 = zero
    m10 = zero
    m11 = zero + 1.0
    for _ in range(BT):  # M <- A M
        n00 = -a1 * m00 + m10
        n01 = -a1 * m01 + m11
        m10 = -a2 * m00
        m11 = -a2 * m01
        m00 = n00
        m01 = n01
    tl.store(out + 5 * BT + 0, m00)
    tl.store(out + 5 * BT + 1, m01)
    tl.store(out + 5 * BT + 2, m10)
    tl.store(out + 5 * BT + 3, m11)
    tl.store(out + 5 * BT + 4, tl.load(zi_ptr + 2 * s))
    tl.store(out + 5 * BT + 5, tl.load(zi_ptr + 2 * s + 1))


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def _index_to_slot(i, ACC_F64: tl.constexpr):
    if ACC_F64:
        return i.to(tl.int64).to(tl.float64, bitcast=True)
    else:
        return i.to(tl.float32, bitcast=True)


@triton.jit
def _slot_to_index(v, ACC_F64: tl.constexpr):
    if ACC_F64:
        return v.to(tl.int64, bitcast=True).to(tl.int32)
    else:
        return v.to(tl.int32, bitcast=True)


@triton.jit
def _load_converted(x_rows, t, m, gain, base, ACC: tl.constexpr, IS_INT16: tl.constexpr):
    """Samples t of the block's rows in mV, and which of them are invalid (-32768 or NaN/inf)."""
    raw = tl.load(x_rows[None, :] + t[:, None], mask=m, other=0)
    v = (raw.to(ACC) - base[None, :]) / gain[None, :]
    if IS_INT16:
        bad = (raw == _INVALID_INT16) & m
    else:
        bad = ((v != v) | (tl.abs(v) == float("inf"))) & m
    return v, bad


@triton.jit
def _preprocess_kernel(
    x_ptr, gain_ptr, base_ptr, tab_ptr, fir_ptr, work_ptr, out_ptr, flags_ptr,
    N, T, P, T_ext, T_out, S, K, up, down, half, max_taps,
    IS_INT16: tl.constexpr, ACC_F64: tl.constexpr, RESAMPLE: tl.constexpr, ZSCORE: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr, TAB: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    ACC: tl.constexpr = work_ptr.dtype.element_ty
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    tt = tl.arange(0, BT)
    x_rows = x_ptr + rows64 * T  # [BN] row pointers
    w_rows = work_ptr + rows64 * T_ext
    gain = tl.load(gain_ptr + rows, mask=row_ok, other=1.0).to(ACC)
    base = tl.load(base_ptr + rows, mask=row_ok, other=0.0).to(ACC)

    # 1. convert into work[:, P + t] (NaN where invalid); count invalid samples, range of the valid ones
    n_bad = tl.zeros([BN], tl.int32)
    lo = tl.full([BN], float("inf"), ACC)
    hi = tl.full([BN], float("-inf"), ACC)
    for t0 in range(0, T, BT):
        t = t0 + tt
        m = (t < T)[:, None] & row_ok[None, :]
        v, bad = _load_converted(x_rows, t, m, gain, base, ACC, IS_INT16)
        good = m & ~bad
        n_bad += tl.sum(bad.to(tl.int32), axis=0)
        lo = tl.minimum(lo, tl.min(tl.where(good, v, float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(good, v, float("-inf")), axis=0))
        tl.store(w_rows[None, :] + P + t[:, None], tl.where(bad, float("nan"), v), mask=m)
    tl.debug_barrier()

    # 2. repair: interpolate between the nearest valid samples (edges hold the first/last valid value)
    if tl.max(n_bad, axis=0) > 0:
        # reverse sweep: index of the next valid sample, parked (bit-cast) in each invalid slot
        next_carry = tl.full([BN], 0, tl.int32) + T
        for i0 in range(0, T, BT):
            t = T - 1 - (i0 + tt)
            m = (t >= 0)[:, None] & row_ok[None, :]
            v, bad = _load_converted(x_rows, t, m, gain, base, ACC, IS_INT16)
            key = tl.where(m & ~bad, t[:, None], T)
            nxt = tl.minimum(tl.associative_scan(key, 0, _min_combine), next_carry[None, :])
            next_carry = tl.minimum(next_carry, tl.min(key, axis=0))
            tl.store(w_rows[None, :] + P + t[:, None], _index_to_slot(nxt, ACC_F64), mask=bad)
        tl.debug_barrier()
        # forward sweep: previous valid index by a running max, then interpolate
        prev_carry = tl.full([BN], -1, tl.int32)
        for t0 in range(0, T, BT):
            t = t0 + tt
            m = (t < T)[:, None] & row_ok[None, :]
            v, bad = _load_converted(x_rows, t, m, gain, base, ACC, IS_INT16)
            key = tl.where(m & ~bad, t[:, None], -1)
            prv = tl.maximum(tl.associative_scan(key, 0, _max_combine), prev_carry[None, :])
            prev_carry = tl.maximum(prev_carry, tl.max(key, axis=0))
            slot = tl.load(w_rows[None, :] + P + t[:, None], mask=bad, other=0.0)
            nxt = tl.where(bad, _slot_to_index(slot, ACC_F64), T)
            has_prev = bad & (prv >= 0)
            has_next = bad & (nxt < T)
            vp = tl.load(w_rows[None, :] + P + prv, mask=has_prev, other=0.0)
            vn = tl.load(w_rows[None, :] + P + nxt, mask=has_next, other=0.0)
            span = tl.where(has_prev & has_next, nxt - prv, 1).to(ACC)
            mid = vp + (vn - vp) * (t[:, None] - prv).to(ACC) / span
            fill = tl.where(has_prev, tl.where(has_next, mid, vp), vn)
            tl.store(w_rows[None, :] + P + t[:, None], fill, mask=bad)
        tl.debug_barrier()
    dead = (n_bad == T) | (hi - lo <= _FLAT_PTP)

    # 3. zero-phase filter: odd extension, then each section forward, then each section backward
    if S > 0:
        v_first = tl.load(w_rows + P, mask=row_ok, other=0.0)
        v_last = tl.load(w_rows + P + T - 1, mask=row_ok, other=0.0)
        for j0 in range(0, P, BT):
            j = j0 + tt
            m = (j < P)[:, None] & row_ok[None, :]
            inner_l = tl.load(w_rows[None, :] + P + 1 + j[:, None], mask=m, other=0.0)
            inner_r = tl.load(w_rows[None, :] + P + T - 2 - j[:, None], mask=m, other=0.0)
            tl.store(w_rows[None, :] + P - 1 - j[:, None], 2 * v_first[None, :] - inner_l, mask=m)
            tl.store(w_rows[None, :] + P + T + j[:, None], 2 * v_last[None, :] - inner_r, mask=m)
        tl.debug_barrier()
        lower = tt[:, None] >= tt[None, :]
        for direction in tl.static_range(2):
            if direction == 0:
                x_start = tl.load(w_rows, mask=row_ok, other=0.0)
            else:
                x_start = tl.load(w_rows + T_ext - 1, mask=row_ok, other=0.0)
            for s in range(S):
                tab = tab_ptr + s * TAB
                # the tables and the carried state are float64 (see the module docstring); the
                # in-tile product is in ACC
                h = tl.load(tab + tt[:, None] - tt[None, :], mask=lower, other=0.0).to(ACC)
                c0 = tl.load(tab + 1 * BT + tt)
                c1 = tl.load(tab + 2 * BT + tt)
                g0 = tl.load(tab + 3 * BT + tt)
                g1 = tl.load(tab + 4 * BT + tt)
                m00 = tl.load(tab + 5 * BT + 0)
                m01 = tl.load(tab + 5 * BT + 1)
                m10 = tl.load(tab + 5 * BT + 2)
                m11 = tl.load(tab + 5 * BT + 3)
                x0 = x_start.to(tl.float64)
                s0 = tl.load(tab + 5 * BT + 4) * x0  # steady state for a step of the first input
                s1 = tl.load(tab + 5 * BT + 5) * x0
                for tau0 in range(0, T_ext, BT):
                    tau = tau0 + tt
                    if direction == 0:
                        pos = tau
                    else:
                        pos = T_ext - 1 - tau
                    m = (tau < T_ext)[:, None] & row_ok[None, :]
                    ptrs = w_rows[None, :] + pos[:, None]
                    xs = tl.load(ptrs, mask=m, other=0.0)
                    y = tl.dot(h, xs, input_precision=DOT_PRECISION, out_dtype=ACC)
                    y += (c0[:, None] * s0[None, :] + c1[:, None] * s1[None, :]).to(ACC)
                    x64 = xs.to(tl.float64)
                    n0 = m00 * s0 + m01 * s1 + tl.sum(g0[:, None] * x64, axis=0)
                    s1 = m10 * s0 + m11 * s1 + tl.sum(g1[:, None] * x64, axis=0)
                    s0 = n0
                    tl.store(ptrs, y, mask=m)
                tl.debug_barrier()

    # 4. resample (polyphase, zeros outside the row) into out; 5. normalise
    total = tl.zeros([BN], ACC)
    if RESAMPLE:
        for n0 in range(0, T_out, BT):
            n = n0 + tt
            r = n.to(tl.int64) * down + half
            k0 = r % up
            m0 = (r - k0) // up  # row index of tap k0
            acc = tl.zeros([BT, BN], ACC)
            for j in range(0, max_taps):
                k = k0 + j * up
                mi = m0 - j
                ok = (k < K) & (mi >= 0) & (mi < T) & (n < T_out)
                f = tl.load(fir_ptr + k, mask=ok, other=0.0)
                yv = tl.load(w_rows[None, :] + P + mi[:, None], mask=ok[:, None] & row_ok[None, :], other=0.0)
                acc += f[:, None] * yv
            m = (n < T_out)[:, None] & row_ok[None, :]
            tl.store(out_ptr + rows64[None, :] * T_out + n[:, None], acc, mask=m)
            total += tl.sum(tl.where(m, acc, 0.0), axis=0)
        tl.debug_barrier()
        src = out_ptr + rows64 * T_out
    else:
        src = w_rows + P
        for n0 in range(0, T_out, BT):
            n = n0 + tt
            m = (n < T_out)[:, None] & row_ok[None, :]
            total += tl.sum(tl.load(src[None, :] + n[:, None], mask=m, other=0.0), axis=0)
    mean = tl.zeros([BN], ACC)
    scale = tl.zeros([BN], ACC) + 1.0
    if ZSCORE:
        mean = total / T_out
        ss = tl.zeros([BN], ACC)
        for n0 in range(0, T_out, BT):
            n = n0 + tt
            m = (n < T_out)[:, None] & row_ok[None, :]
            d = tl.load(src[None, :] + n[:, None], mask=m, other=0.0) - mean[None, :]
            ss += tl.sum(tl.where(m, d * d, 0.0), axis=0)
        std = tl.sqrt(ss / T_out)
        dead = dead | (std <= _ZERO_SCALE)
        scale = 1.0 / tl.where(std > _ZERO_SCALE, std, 1.0)
    for n0 in range(0, T_out, BT):
        n = n0 + tt
        m = (n < T_out)[:, None] & row_ok[None, :]
        yv = tl.load(src[None, :] + n[:, None], mask=m, other=0.0)
        res = tl.where(dead[None, :], 0.0, (yv - mean[None, :]) * scale[None, :])
        tl.store(out_ptr + rows64[None, :] * T_out + n[:, None], res, mask=m)
    flags = (n_bad > 0).to(tl.int32) | (dead.to(tl.int32) * 2)
    tl.store(flags_ptr + rows, flags, mask=row_ok)


ROBUST_CHUNK_ELEMENTS = 1 << 24  # rows are normalised in chunks of about this many samples


def robust_normalize(out: torch.Tensor, flags: torch.Tensor, chunk_elements: int = ROBUST_CHUNK_ELEMENTS) -> None:
    """In place, per row: (y - median) / (1.4826 MAD); z-score where the MAD is zero; zeros and flag
    bit 1 where the std is zero too. The median of an even count is the mean of the two middle values.
    Bounded memory: rows go in chunks of ~``chunk_elements`` samples and the medians are order
    statistics (``kthvalue``), not a sort of the whole output with int64 indices."""
    n = out.shape[1]
    step = max(1, chunk_elements // max(n, 1))
    for r0 in range(0, out.shape[0], step):
        _robust_normalize_rows(out[r0:r0 + step], flags[r0:r0 + step], n)


def _median(v: torch.Tensor, n: int) -> torch.Tensor:
    lo = v.kthvalue((n + 1) // 2, dim=1, keepdim=True).values
    return lo if n % 2 else (lo + v.kthvalue(n // 2 + 1, dim=1, keepdim=True).values) * 0.5


def _robust_normalize_rows(out, flags, n):
    med = _median(out, n)
    mad = _median((out - med).abs_(), n) * MAD_TO_SIGMA
    mean = out.mean(dim=1, keepdim=True)
    std = (out - mean).square_().mean(dim=1, keepdim=True).sqrt_()
    robust_ok = mad > MAD_TO_SIGMA * ZERO_SCALE
    std_ok = std > ZERO_SCALE
    center = torch.where(robust_ok, med, mean)
    spread = torch.where(robust_ok, mad, torch.where(std_ok, std, torch.ones_like(std)))
    live = robust_ok | std_ok
    out.sub_(center).div_(spread).mul_(live.to(out.dtype))
    flags |= (~live).squeeze(1).to(torch.int32) * 2


def _launch(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize):
    if signal.dim() != 2:
        raise ValueError(f"ecgkt::preprocess_triton: signal must be [N, T], got {list(signal.shape)}")
    if signal.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int16):
        raise ValueError(f"ecgkt::preprocess_triton: unsupported signal dtype {signal.dtype}")
    if normalize not in (0, 1, 2):
        raise ValueError(f"ecgkt::preprocess_triton: normalize must be 0, 1 or 2, got {normalize}")
    if up < 1 or down < 1:
        raise ValueError(f"ecgkt::preprocess_triton: up={up} and down={down} must be >= 1")
    n, t = signal.shape
    resample = (up, down) != (1, 1)
    if resample and (fir.dim() != 1 or fir.numel() % 2 == 0):
        raise ValueError("ecgkt::preprocess_triton: fir must be a 1-D filter of odd length when resampling")
    device = signal.device
    acc = torch.float64 if signal.dtype == torch.float64 else torch.float32
    s = sos.shape[0] if sos.numel() else 0
    p = min(int(padlen), t - 1) if s > 0 else 0
    t_ext = t + 2 * p
    t_out = -(-t * up // down)
    if t_ext >= 2**31 - 1 or t_out >= 2**31 - 1:
        raise ValueError("ecgkt::preprocess_triton: rows longer than 2^31 samples are not supported")
    x = signal.contiguous()
    out = torch.empty((n, t_out), dtype=acc, device=device)
    flags = torch.zeros((n,), dtype=torch.int32, device=device)
    if n == 0:
        return out, flags
    g = gain.to(device=device, dtype=torch.float32).contiguous()
    b = baseline.to(device=device, dtype=torch.float32).contiguous()
    tables = torch.zeros((max(s, 1), _TABLE), dtype=torch.float64, device=device)
    if s > 0:
        sos64 = sos.to(device=device, dtype=torch.float64).reshape(s, 6).contiguous()
        zi64 = zi.to(device=device, dtype=torch.float64).reshape(s, 2).contiguous()
        with on_device(tables):
            _section_tables_kernel[(s,)](sos64, zi64, tables, BT=BLOCK_T, TAB=_TABLE, num_warps=1)
    f = fir.to(device=device, dtype=acc).contiguous() if resample else torch.zeros(1, dtype=acc, device=device)
    k = f.numel() if resample else 1
    work = torch.empty((n, t_ext), dtype=acc, device=device)
    precision = "tf32x3" if (device.type == "cuda" and acc == torch.float32) else "ieee"
    grid = (triton.cdiv(n, BLOCK_N),)
    with on_device(x):
        _preprocess_kernel[grid](
            x, g, b, tables, f, work, out, flags,
            n, t, p, t_ext, t_out, s, k, up, down, (k - 1) // 2, -(-k // up),
            IS_INT16=signal.dtype == torch.int16, ACC_F64=acc == torch.float64, RESAMPLE=resample,
            ZSCORE=normalize == 1, BT=BLOCK_T, BN=BLOCK_N, TAB=_TABLE, DOT_PRECISION=precision, num_warps=4,
        )
    if normalize == 2:
        robust_normalize(out, flags)
    return out, flags


@torch.library.custom_op("ecgkt::preprocess_triton", mutates_args=())
def _preprocess_triton_op(
    signal: torch.Tensor, gain: torch.Tensor, baseline: torch.Tensor, sos: torch.Tensor, zi: torch.Tensor,
    padlen: int, fir: torch.Tensor, up: int, down: int, normalize: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize)


@_preprocess_triton_op.register_fake
def _(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize):
    torch._check(signal.dim() == 2, lambda: "ecgkt::preprocess_triton: signal must be [N, T]")
    n, t = signal.shape
    acc = torch.float64 if signal.dtype == torch.float64 else torch.float32
    return signal.new_empty((n, -(-t * up // down)), dtype=acc), signal.new_empty((n,), dtype=torch.int32)


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _backward(ctx, grad_out, grad_flags):
    raise RuntimeError("ecgkt::preprocess_triton is not differentiable")


_preprocess_triton_op.register_autograd(_backward, setup_context=_setup_context)


def preprocess_triton(signal, gain, baseline, sos, zi, padlen, fir, up, down, normalize):
    """Run ``ecgkt::preprocess_triton`` (same arguments and results as ``torch.ops.ecgkt.preprocess``).

    signal [N, T] float16/bfloat16/float32/float64 (mV) or int16 (ADC); gain/baseline [N] float32;
    sos [S, 6], zi [S, 2], fir [K] float64; returns (out [N, ceil(T*up/down)] float32 (float64 for
    float64 input), flags [N] int32: bit 0 repaired, bit 1 flat/all-invalid -> zeros).
    """
    return torch.ops.ecgkt.preprocess_triton(signal, gain, baseline, sos, zi, int(padlen), fir, int(up),
                                             int(down), int(normalize))

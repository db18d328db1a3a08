"""Throughput of the GPU preprocessing kernels against the device's copy bandwidth, in one run.

Batch: 64 records x 12 leads x 5000 samples at 500 Hz (float32 mV, and the int16 ADC path), full
pipeline (0.5-100 Hz band, 60 Hz notch, per-lead z-score). Contenders:
  cuda    torch.ops.ecgkt.preprocess on CUDA tensors (csrc/preprocess/cuda.cu)
  triton  ecgkt.kernels.preprocess.preprocess_triton (kernels/preprocess.py)
  copy    a device-to-device copy of the input (reads and writes the same bytes as the op: the floor)
Timed with CUDA events over --iters launches after warm-up; the best of --rounds counts. Prints
records/s, effective GB/s (input + output bytes) and the fraction of the copy's bandwidth (target >= 0.5).

  python benches/bench_preprocess_gpu.py [--rounds 5] [--iters 20]
"""
from __future__ import annotations

import argparse
import datetime

import numpy as np
import torch

from ecgkt import _extension
from ecgkt.ops.preprocess import filter_design

B, L, T, FS = 64, 12, 5000, 500.0


def _time(fn, iters: int, rounds: int) -> float:
    """Best seconds per call."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3 / iters)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (this benchmark needs a GPU)")
        return
    dev = torch.device("cuda")
    d = filter_design(FS)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(dev)  # noqa: E731
    sos, zi, fir = as_t(d.sos.reshape(-1, 6)), as_t(d.zi.reshape(-1, 2)), as_t(d.fir)
    n = B * L
    g = torch.Generator(device=dev).manual_seed(0)
    x = (torch.randn(n, T, device=dev, generator=g).cumsum(1) * 0.02 + torch.randn(n, T, device=dev, generator=g))
    xi = (x * 200).round().clamp(-32767, 32767).to(torch.int16)
    ones, zeros = torch.ones(n, device=dev), torch.zeros(n, device=dev)
    gain200 = torch.full((n,), 200.0, device=dev)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}, batch {B}x{L}x{T} at {FS:g} Hz, {len(d.sos)} sections, padlen {d.padlen}")

    rows = []
    for label, inp, gain in (("float32", x, ones), ("int16", xi, gain200)):
        out_bytes = n * T * 4
        in_bytes = inp.numel() * inp.element_size()
        dst = torch.empty_like(inp)
        copy_s = _time(lambda: dst.copy_(inp), args.iters, args.rounds)
        copy_gbs = 2 * in_bytes / copy_s / 1e9  # the copy reads and writes the input's bytes
        rows.append((f"copy ({label})", copy_s, copy_gbs, 1.0))
        op_args = (inp, gain, zeros, sos, zi, d.padlen, fir, d.up, d.down, 1)
        contenders = {}
        if _extension.has_kernel("preprocess", "CUDA"):
            contenders["cuda"] = lambda: torch.ops.ecgkt.preprocess(*op_args)
        try:
            from ecgkt.kernels.preprocess import preprocess_triton

            contenders["triton"] = lambda: preprocess_triton(*op_args)
        except ImportError as e:
            print(f"triton unavailable: {e}")
        for name, fn in contenders.items():
            s = _time(fn, args.iters, args.rounds)
            gbs = (in_bytes + out_bytes) / s / 1e9
            rows.append((f"{name} ({label})", s, gbs, gbs / copy_gbs))
    print(f"{'contender':<18} {'records/s':>12} {'ms/batch':>9} {'GB/s':>8} {'of copy BW':>10}")
    for name, s, gbs, frac in rows:
        print(f"{name:<18} {B / s:>12,.0f} {s * 1e3:>9.3f} {gbs:>8.1f} {frac:>10.2f}")


if __name__ == "__main__":
    main()

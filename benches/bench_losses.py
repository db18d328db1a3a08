"""Benchmark: fused contrastive loss (ecgkt.losses) vs the naive torch loss (materialised B x B
logits, what open_clip computes), forward + backward, on CPU.

Each (implementation, batch) case runs in its own subprocess so that its peak memory is its own:
peak extra memory = peak RSS during the timed step (ru_maxrss) - RSS just before it (inputs,
libraries and a small warm-up already resident). The naive loss is skipped, and the output says
so, where its estimated peak would not fit in the memory limit. The matmul floor is the time of
the three B x B x D products (forward logits, two backward products) at this machine's measured
float32 matmul rate.

  python benches/bench_losses.py                                   # B = 4096, 16384, 65536; D = 256
  python benches/bench_losses.py --batches 4096 8192 --loss siglip --csv losses.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

NAIVE_BYTES_PER_LOGIT = 24  # measured peak of the naive CLIP loss: ~5.7 GB at B = 16384 (~21 B / logit)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _step(impl, loss, ecg, clin, scale, bias):
    from ecgkt import losses

    if loss == "clip":
        fn = losses.clip_loss if impl == "fused" else losses.naive_clip_loss
        value = fn(ecg, clin, scale)
    else:
        fn = losses.siglip_loss if impl == "fused" else losses.naive_siglip_loss
        value = fn(ecg, clin, scale, bias)
    value.backward()
    return float(value)


def run_case(impl: str, loss: str, batch: int, dim: int, threads: int) -> dict:
    """One measurement, in this process (called in a subprocess by main)."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)

    def inputs(n):
        ecg = torch.randn(n, dim, generator=g).requires_grad_()
        clin = (ecg.detach() + torch.randn(n, dim, generator=g)).requires_grad_()
        return ecg, clin, torch.tensor(1 / 0.07, requires_grad=True), torch.tensor(-10.0, requires_grad=True)

    _step(impl, loss, *inputs(min(batch, 512)))  # warm-up: libraries, kernels, allocator
    rate = matmul_rate(dim, threads)  # measured here, just before, under the same machine load
    args = inputs(batch)
    before = _rss_bytes()
    start = time.perf_counter()
    value = _step(impl, loss, *args)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(impl=impl, loss=loss, batch=batch, dim=dim, threads=threads, seconds=seconds,
                peak_extra_bytes=max(0, peak - before), loss_value=value, matmul_flops=rate)


def matmul_rate(dim: int, threads: int, n: int = 4096) -> float:
    """Measured float32 matmul FLOP/s for [n, dim] @ [dim, n] (best of 5)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, dim), torch.randn(dim, n)
    out = a @ b
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(5))
    return 2 * n * n * dim / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        return dict(error=(out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--loss", choices=["clip", "siglip"], default="clip")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="skip the naive loss when its estimated peak exceeds this (default: 80%% of MemAvailable)")
    p.add_argument("--csv", help="also write the rows to this CSV file")
    p.add_argument("--case", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.case:  # child process: one measurement, printed as JSON
        print(json.dumps(run_case(args.case[0], args.loss, int(args.case[1]), args.dim, args.threads)))
        return 0

    limit = args.mem_limit_gb * 1e9 if args.mem_limit_gb else 0.8 * _available_bytes()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {args.loss} loss, D={args.dim}, "
          f"{args.threads} threads, memory limit {limit / 1e9:.1f} GB; floor = 3 B*B*D matmuls at the float32 "
          "matmul rate measured in each case's process just before its step")
    header = ["batch", "impl", "seconds", "peak_extra_GB", "GFLOPs", "floor_s", "x_floor", "vs_naive_time",
              "vs_naive_mem"]
    print("{:>7} {:>6} {:>9} {:>13} {:>7} {:>8} {:>8} {:>13} {:>12}".format(*header))
    rows = []
    for batch in args.batches:
        common = ["--dim", str(args.dim), "--loss", args.loss, "--threads", str(args.threads)]
        naive_estimate = NAIVE_BYTES_PER_LOGIT * batch * batch
        if naive_estimate > limit:
            naive = dict(skipped=f"estimated peak {naive_estimate / 1e9:.0f} GB > limit {limit / 1e9:.0f} GB")
        else:
            naive = _subprocess(["--case", "naive", str(batch), *common])
        fused = _subprocess(["--case", "fused", str(batch), *common])
        for impl, r in (("naive", naive), ("fused", fused)):
            if "seconds" not in r:
                print(f"{batch:>7} {impl:>6}   skipped: {r.get('skipped') or r.get('error')}")
                continue
            floor = 3 * 2 * batch * batch * args.dim / r["matmul_flops"]
            row = dict(batch=batch, impl=impl, seconds=r["seconds"], peak_extra_GB=r["peak_extra_bytes"] / 1e9,
                       GFLOPs=r["matmul_flops"] / 1e9, floor_s=floor, x_floor=r["seconds"] / floor)
            if impl == "fused" and "seconds" in naive:
                row["vs_naive_time"] = r["seconds"] / naive["seconds"]
                row["vs_naive_mem"] = r["peak_extra_bytes"] / max(naive["peak_extra_bytes"], 1)
            rows.append(row)
            print("{batch:>7} {impl:>6} {seconds:>9.2f} {peak_extra_GB:>13.3f} {GFLOPs:>7.1f} {floor_s:>8.2f} "
                  "{x_floor:>8.2f}".format(**row)
                  + ("" if "vs_naive_time" not in row else
                     " {vs_naive_time:>13.3f} {vs_naive_mem:>12.4f}".format(**row)), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

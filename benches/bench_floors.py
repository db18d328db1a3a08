"""The machine's floors, measured in the same run as the kernels: memory copy bandwidth and float32
matmul rate (what a memory-bound or a matmul-bound kernel can reach here at best)."""
import torch

from _bench import LOSS_DIM, measure


def test_memory_copy(benchmark, sizes):
    n = (16 if sizes.quick else 128) * 2**20  # bytes, well past the last-level cache
    src = torch.ones(n, dtype=torch.uint8)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), kernel="floor", provider="memory-copy", x=n >> 20, x_name="MiB",
            items=2 * n / 1e9, unit="GB/s", rounds=sizes.rounds * 3)  # read + write


def test_matmul(benchmark, sizes):
    n = 1024 if sizes.quick else 4096
    a, b = torch.randn(n, LOSS_DIM), torch.randn(LOSS_DIM, n)
    out = a @ b
    measure(benchmark, lambda: torch.mm(a, b, out=out), kernel="floor", provider="matmul-fp32", x=n,
            x_name="N", items=2 * n * n * LOSS_DIM / 1e9, unit="GFLOP/s", rounds=sizes.rounds * 3)

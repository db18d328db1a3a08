"""The CUDA kernel of csrc/preprocess/cuda.cu, run on the CPU through csrc/preprocess/cuda_emulation.h
(one std::thread per CUDA thread, real barriers and warp shuffles), against the float64 reference.

This checks the kernel's logic (chunked scan, repair scans, tiling, global staging, resampling,
z-score, and the robust normalisation's element-wise kernels around torch's order statistics) on machines
without a GPU; tests/test_preprocess_triton.py has the on-GPU comparison."""
import ctypes
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ecgkt.ops.preprocess import filter_design, preprocess_reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "preprocess" / "cuda.cu"
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.int16: 2}
# The CPU kernel's tolerance (tests/test_preprocess.py): the high-pass section runs in float32 delta form
# (measured at 1000 Hz x 10 s: 2.3e-6 of the peak; 1.1e-5 with float64 state, 3.0e-3 with plain float32).
TOL = {torch.float32: 1e-4, torch.int16: 1e-4, torch.float64: 1e-9}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA-kernel emulation")
    lib = tmp_path_factory.mktemp("cuda_emulation") / "libpreprocess_emulated.so"
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-DECGKT_CUDA_EMULATION",
           "-Wno-unknown-pragmas", "-x", "c++", str(SOURCE), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def kernel(library):
    fn = library.ecgkt_emulated_preprocess
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [ctypes.c_void_p] + \
        [ctypes.c_int] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_int, ctypes.c_longlong]
    return fn


def _run(fn, x, gain, base, design, normalize, thread_cap=1024, smem_limit=227 * 1024):
    d = design
    xs = x.contiguous()
    n, t = xs.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    t_out = -(-t * d.up // d.down)
    out = torch.full((n, t_out), float("nan"), dtype=acc)
    flags = torch.full((n,), -1, dtype=torch.int32)
    sos = np.ascontiguousarray(d.sos, dtype=np.float64)
    zi = np.ascontiguousarray(d.zi, dtype=np.float64)
    fir = np.ascontiguousarray(d.fir if len(d.fir) else np.zeros(1), dtype=np.float64)
    g = gain.float().contiguous()
    b = base.float().contiguous()
    ptr = lambda a: a.ctypes.data if isinstance(a, np.ndarray) else a.data_ptr()  # noqa: E731
    fn(DTYPE_CODE[x.dtype], ptr(xs), ptr(g), ptr(b), ptr(sos), ptr(zi), len(sos), n, t, d.padlen, ptr(fir),
       len(d.fir), d.up, d.down, normalize, ptr(out), ptr(flags), thread_cap, smem_limit)
    t_ = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    ref, ref_flags = preprocess_reference(x, gain, base, t_(d.sos.reshape(-1, 6)), t_(d.zi.reshape(-1, 2)),
                                          d.padlen, t_(d.fir), d.up, d.down, normalize)
    return out, flags, ref, ref_flags


def _signal(n, t, seed, fs=500.0):
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t, dtype=torch.float64) / fs
    return (torch.randn(n, t, generator=g, dtype=torch.float64).cumsum(1) * 0.02
            + torch.sin(2 * torch.pi * 1.3 * time) ** 31 + 0.1 * torch.sin(2 * torch.pi * 60 * time)
            + 0.05 * torch.randn(n, t, generator=g, dtype=torch.float64) + torch.rand(n, 1, generator=g))


def _check(out, flags, ref, ref_flags, dtype):
    assert torch.isfinite(out).all()
    scale = max(1.0, ref.abs().max().item())
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= TOL[dtype] * scale, f"max error {err:.3g}"
    assert flags.tolist() == ref_flags.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_tile_in_shared_memory(kernel, dtype):
    x = _signal(5, 257, seed=1).to(dtype)
    _check(*_run(kernel, x, torch.ones(5), torch.zeros(5), filter_design(500.0), 1), dtype)


def test_int16_invalid_runs_flat_and_all_invalid(kernel):
    gain = torch.tensor([200.0, 200.0, 100.0, 1000.0, 200.0, 200.0, 200.0])
    base = torch.tensor([0.0, 12.0, -7.0, 1024.0, 3.0, 0.0, 0.0])
    x = (_signal(7, 301, seed=2) * gain[:, None] + base[:, None]).round().to(torch.int16)
    x[0, 40:53] = -32768
    x[1, :9] = -32768
    x[2, -17:] = -32768
    x[3, 100] = -32768
    x[3, 200:203] = -32768
    x[5] = -32768  # all invalid
    x[6] = 250  # flat
    x[6, 10:20] = -32768
    out, flags, ref, ref_flags = _run(kernel, x, gain, base, filter_design(500.0), 0)
    _check(out, flags, ref, ref_flags, torch.int16)
    assert flags.tolist() == [1, 1, 1, 1, 0, 3, 3]


def test_many_tiles_and_global_staging(kernel):
    """32 threads per block (a 2,016-sample tile) and a tiny shared-memory limit: the row is filtered in
    several tiles with the state carried between them (the last one partly past the row's end), staged in
    the global workspace."""
    x = _signal(3, 1500, seed=3).float()
    x[1, 700:760] = float("nan")
    d = filter_design(500.0)
    for smem in (227 * 1024, 4096):
        _check(*_run(kernel, x, torch.ones(3), torch.zeros(3), d, 1, thread_cap=32, smem_limit=smem),
               torch.float32)


def test_multi_warp_scan(kernel):
    """T = 5000 at 500 Hz: 96 threads (3 warps), one tile, as on the benchmark batch."""
    x = _signal(2, 5000, seed=4).float()
    _check(*_run(kernel, x, torch.ones(2), torch.zeros(2), filter_design(500.0), 1), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16])
def test_1000hz_ten_seconds(kernel, dtype):
    """1000 Hz x 10 s: the 0.5 Hz high-pass has poles closest to z = 1 here (192 threads, one tile)."""
    fs, gain = 1000.0, torch.tensor([200.0, 1000.0])
    x = _signal(2, 10_000, seed=9, fs=fs)
    x = (x * gain[:, None]).round().to(torch.int16) if dtype == torch.int16 else x.float()
    gains = gain if dtype == torch.int16 else torch.ones(2)
    _check(*_run(kernel, x, gains, torch.zeros(2), filter_design(fs), 1), dtype)


@pytest.mark.parametrize("fs,target", [(360.0, 500.0), (500.0, 100.0)])
def test_resampling(kernel, fs, target):
    x = _signal(3, 211, seed=5, fs=fs).float()
    d = filter_design(fs, target_fs=target)
    _check(*_run(kernel, x, torch.ones(3), torch.zeros(3), d, 1), torch.float32)
    _check(*_run(kernel, x, torch.ones(3), torch.zeros(3), d, 1, smem_limit=4096), torch.float32)


def test_no_filter_and_short_rows(kernel):
    x = _signal(3, 50, seed=6).float()
    _check(*_run(kernel, x, torch.ones(3), torch.zeros(3), filter_design(500.0, highpass=None, lowpass=None,
                                                                          notch=None), 1), torch.float32)
    for t in (1, 2, 5):
        x = _signal(2, t, seed=7 + t).float()
        _check(*_run(kernel, x, torch.ones(2), torch.zeros(2), filter_design(500.0), 1), torch.float32)


@pytest.mark.parametrize("t", [401, 400])  # odd and even counts: the median of an even count is a mean
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_robust_normalisation_kernels(library, kernel, dtype, t):
    """The GPU path's robust normalisation: order statistics, mean and variance from torch (what the CUDA
    wrapper calls through the dispatcher) around the two element-wise kernels of cuda.cu, emulated. Rows: a
    signal, a flat lead (zeros, flag bit 1), a MAD of 0 with a non-zero std (the z-score fallback)."""
    x = _signal(4, t, seed=21)
    x[1] = 0.3
    x[2] = 0.0
    x[2, [5, 77, 200]] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = x.to(dtype)
    gain, base = torch.ones(4), torch.zeros(4)
    design = filter_design(500.0, None, None, None)  # no filter: row 2 keeps its MAD of 0
    out, flags, _, _ = _run(kernel, x, gain, base, design, normalize=0)
    t_ = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    ref, ref_flags = preprocess_reference(x, gain, base, t_(design.sos.reshape(-1, 6)), t_(design.zi.reshape(-1, 2)),
                                          design.padlen, t_(design.fir), design.up, design.down, 2)

    code, n, total = DTYPE_CODE[dtype], out.shape[1], out.numel()
    ptr = lambda a: ctypes.c_void_p(a.data_ptr())  # noqa: E731
    kth = lambda v, k: v.kthvalue(k, 1, keepdim=True).values.contiguous()  # noqa: E731
    lo, hi = kth(out, (n + 1) // 2), kth(out, n // 2 + 1)
    dev = torch.empty_like(out)
    library.ecgkt_emulated_abs_deviation(code, ptr(dev), ptr(out), ptr(lo), ptr(hi), ctypes.c_longlong(n),
                                         ctypes.c_longlong(total))
    mad_lo, mad_hi = kth(dev, (n + 1) // 2), kth(dev, n // 2 + 1)
    mean, var = out.mean(1, keepdim=True), out.var(1, unbiased=False, keepdim=True)
    library.ecgkt_emulated_robust_apply(code, ptr(out), ptr(flags), ptr(lo), ptr(hi), ptr(mad_lo), ptr(mad_hi),
                                        ptr(mean), ptr(var), ctypes.c_longlong(n), ctypes.c_longlong(total))
    assert float(mad_lo[2]) == 0.0 and float(out[2].abs().max()) > 0  # the fallback branch ran
    _check(out, flags, ref, ref_flags, dtype)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compiles_without_spills(arch, tmp_path):
    """The real CUDA compile of every preprocessing kernel for the two target architectures: no register
    spills or stack (the register budget follows max_threads<acc_t>() and chunk<acc_t>())."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found (the CUDA toolkit): the CUDA kernel is not compiled here")
    from torch.utils import cpp_extension

    cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-O3", "--use_fast_math", "--resource-usage",
           "-DTORCH_TARGET_VERSION=0x020a000000000000", f"-I{ROOT / 'csrc'}",
           *[f"-I{p}" for p in cpp_extension.include_paths()], str(SOURCE), "-o", str(tmp_path / "k.cubin")]
    report = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    kernels, name = {}, None
    for line in report.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)'", line)
        name = entry.group(1) if entry else name
        usage = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
        if usage and name:
            kernels[name] = (int(usage.group(1)), int(usage.group(2)))
    assert sum("preprocess_kernel" in k for k in kernels) == 5 and sum("tables_kernel" in k for k in kernels) == 2
    assert all(usage == (0, 0) for usage in kernels.values()), report

"""Instructions per sample of the CUDA preprocessing kernel, counted in its compiled SASS (no GPU needed).

csrc/preprocess/cuda.cu compiled with -DECGKT_SASS_PROBES adds probe kernels made of the kernel's own
device functions (float32 compute, int16 input: the MIMIC-IV-ECG case). nvcc compiles them for sm_80 and
sm_90; cuobjdump lists the SASS; this module counts:

- the filter, per chunk of L samples: ``sass_probe_tile<1|2, dir>`` (one section between the kernel's chunk load
  and store) minus ``sass_probe_tile<0>`` (the load and store alone) is one section in one direction; the
  tile's cost is the sum over the design's sections (delta form for poles near z = 1, the high-pass), both
  directions, plus the load and store once;
- the loops outside the filter (conversion, sum, centred squares, normalised store): the largest loop body
  of each probe, divided by the samples one pass of it handles (its loads or stores of a sample).

Per sample of the input row: filter x (threads x L) / T (every thread filters a whole chunk, pads included),
plus the loops (conversion and output loops once per sample each). Not counted: per-row fixed costs (table
copy, block reductions, barriers) and the odd extension (2P of T samples). The target (issue "Kernel layer
v2"): at most 100 instructions per sample at 500 Hz (the design of ``ecgkt.preprocess``'s defaults).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from _bench import ROOT, record
from ecgkt.ops.preprocess.spec import NEAR_Z1

SOURCE = ROOT / "csrc" / "preprocess" / "cuda.cu"
ARCHS = ("sm_80", "sm_90")
TARGET = 100.0


def _constant(function: str) -> int:
    """The float32 value of a constexpr function of cuda.cu (``return sizeof(acc_t) == 8 ? A : B;`` or
    ``return N;``)."""
    m = re.search(rf"constexpr int {function}\(\) {{ return (?:sizeof\(acc_t\) == 8 \? \d+ : )?(\d+); }}",
                  SOURCE.read_text())
    assert m, f"{function}() not found in {SOURCE}"
    return int(m.group(1))


CHUNK, MAX_THREADS = _constant("chunk"), _constant("max_threads")  # float32 samples per thread, threads per block


def _tool(name: str) -> str | None:
    """nvcc from PATH or CUDA_HOME; cuobjdump from there or from the triton wheel (it ships one)."""
    found = shutil.which(name)
    if found:
        return found
    in_cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name)
    if in_cuda_home.exists():
        return str(in_cuda_home)
    try:
        import triton
        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        return str(path) if path.exists() else None
    except ImportError:
        return None


def compile_probes(arch: str, out_dir: Path, source: Path = SOURCE) -> Path:
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    cubin = out_dir / f"probes_{arch}.cubin"
    subprocess.run([_tool("nvcc"), "-cubin", f"-arch={arch}", "-std=c++17", "-O3", "--use_fast_math",
                    "-DECGKT_SASS_PROBES", "-diag-suppress=177", "-DTORCH_TARGET_VERSION=0x020a000000000000", f"-I{ROOT / 'csrc'}",
                    *includes, str(source), "-o", str(cubin)], check=True, capture_output=True, text=True)
    return cubin


_FUNCTION = re.compile(r"Function : (\S+)")
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def functions(cubin: Path) -> dict[str, list[tuple[int, str, str]]]:
    """{mangled name: [(address, opcode, operands)]}, the trailing self-branch and NOP padding dropped."""
    text = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], check=True, capture_output=True,
                          text=True).stdout
    out: dict[str, list] = {}
    name = None
    for line in text.splitlines():
        m = _FUNCTION.search(line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        m = _INSTR.search(line)
        if m and name is not None:
            out[name].append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    for name, code in out.items():
        while code and (code[-1][1] == "NOP" or (code[-1][1] == "BRA" and _target(code[-1]) == code[-1][0])):
            code.pop()
    return out


def _target(instr) -> int | None:
    m = re.search(r"0x([0-9a-f]+)", instr[2])
    return int(m.group(1), 16) if m else None


def _find(funcs: dict, *parts: str) -> list:
    hits = [code for name, code in funcs.items() if all(p in name for p in parts)]
    assert len(hits) == 1, f"{parts}: {len(hits)} functions"
    return hits[0]


def largest_loop_per_sample(code: list, sample_ops: tuple[str, ...]) -> float:
    """Instructions of the largest loop body (a backward branch's span) per sample it handles, counted as its
    instructions whose opcode starts with one of ``sample_ops``."""
    best = None
    for i, ins in enumerate(code):
        t = _target(ins) if ins[1] == "BRA" else None
        if t is not None and t <= ins[0]:
            body = [c for c in code if t <= c[0] <= ins[0]]
            if best is None or len(body) > len(best):
                best = body
    assert best is not None, "no loop"
    samples = sum(1 for c in best if c[1].startswith(sample_ops))
    return len(best) / samples


def count(arch: str, out_dir: Path, design, T: int) -> dict:
    """Per-sample instruction counts of one probe build for a filter design at a row length T."""
    funcs = functions(compile_probes(arch, out_dir))
    io = len(_find(funcs, "sass_probe_tile", "ILi0ELb0E"))
    section = {(kind, backward): len(_find(funcs, "sass_probe_tile", f"ILi{kind}ELb{int(backward)}E")) - io
               for kind in (1, 2) for backward in (False, True)}
    flags = [1.0 + s[4] / s[3] + s[5] / s[3] < NEAR_Z1 for s in design.sos.reshape(-1, 6)]
    tile = io + sum(section[(2 if f else 1, b)] for f in flags for b in (False, True))
    p = min(design.padlen, T - 1)
    padded = T + 2 * p
    padded += (CHUNK - padded % CHUNK) % CHUNK
    threads = min(MAX_THREADS, max(32, -(-(padded // CHUNK) // 32) * 32))
    assert threads * CHUNK >= padded, "the row needs several tiles: not the case counted here"
    filter_per_sample = tile * threads / T  # tile: per chunk of one thread; threads x CHUNK samples
    loops = {"convert": largest_loop_per_sample(_find(funcs, "sass_probe_convert"), ("STS",)),
             "sum": largest_loop_per_sample(_find(funcs, "sass_probe_sum"), ("LDS",)),
             "squares": largest_loop_per_sample(_find(funcs, "sass_probe_squares"), ("LDS",)),
             "store": largest_loop_per_sample(_find(funcs, "sass_probe_store"), ("STG",))}
    return dict(tile=tile, io=io, sections=section, flags=flags, threads=threads, padded=padded,
                filter=filter_per_sample, loops=loops, total=filter_per_sample + sum(loops.values()))


def _skip_without_tools():
    for tool in ("nvcc", "cuobjdump"):
        if _tool(tool) is None:
            pytest.skip(f"{tool} not found (the CUDA toolkit's nvcc; cuobjdump from it or the triton wheel)")


@pytest.mark.parametrize("arch", ARCHS)
def test_preprocess_sass_instructions_per_sample(arch, tmp_path):
    _skip_without_tools()
    from ecgkt.ops.preprocess import filter_design

    design, T = filter_design(500.0), 5000
    c = count(arch, tmp_path, design, T)
    note = (f"T={T} at 500 Hz, {len(c['flags'])} sections ({sum(c['flags'])} in delta form), {c['threads']} "
            f"threads x {CHUNK}; per chunk: tile {c['tile']}, load+store {c['io']}; target <= {TARGET:g}")
    record("preprocess_sass", "ecgkt-cuda", "instructions/sample", arch, [c["total"]], x_name="arch", note=note)
    record("preprocess_sass", "ecgkt-cuda-filter", "instructions/sample", arch, [c["filter"]], x_name="arch",
           note="the zero-phase filter alone (both directions, scans, chunk load and store)")
    print(f"\n{arch}: {c['total']:.1f} instructions/sample (filter {c['filter']:.1f}, "
          + ", ".join(f"{k} {v:.1f}" for k, v in c["loops"].items()) + f"); {note}")
    assert all(v > 0 for v in c["sections"].values()) and all(v > 0 for v in c["loops"].values())

"""The prepared GPU check: one run on a CUDA machine, one JSON of results.

    python benches/gpu_check.py --build --out gpu_check.json      # on the GPU machine (<= ~8 min on an H100)
    python benches/gpu_check.py --dry-run --out /tmp/check.json   # on CPU: tiny sizes, the Triton interpreter

Sections (each records its figures or its error; one failing section does not stop the others):
  build        ECGKT_FORCE_CUDA=1 in-place build of ecgkt._C (with --build)
  correctness  preprocessing backends (cuda, triton) x input dtypes x settings (500 Hz z-score,
               1000 Hz robust, 360 -> 500 Hz resampling) against the float64 reference; the contrastive
               primitives (float32/float16/bfloat16, D in 48/150/512) against theirs; with --big a
               > 2^31-element preprocessing batch
  opcheck      torch.library.opcheck of every ecgkt op on device tensors
  bandwidth    preprocessing of B x 12 x 5000 float32 (B = 64/1024/4096) against a same-size copy and
               an HBM-sized (1 GiB) copy
  sanitizer    compute-sanitizer racecheck and memcheck of a small preprocessing + loss case
  loss         fused vs naive CLIP loss forward + backward: time and peak memory at B = 16k/64k/256k,
               D = 256, bfloat16, and the 3-GEMM floor from the measured matmul rate
  compile      torch.compile of preprocess -> encoder -> loss, against eager
  train        two bfloat16-autocast optimizer steps of the contrastive model

``--dry-run`` runs every section at toy sizes on CPU (tests/test_gpu_check.py), so the script is not
broken the day a GPU appears; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON written (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, Triton interpreter: checks the script")
    p.add_argument("--build", action="store_true", help="build ecgkt._C with CUDA in place first")
    p.add_argument("--big", action="store_true", help="include the > 2^31-element preprocessing case (~30 GB)")
    p.add_argument("--only", nargs="*", default=None, help="run only these sections")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before any triton kernel module is imported
    results = {"dry_run": args.dry_run, "sections": {}}
    sections = [("build", section_build), ("env", section_env), ("correctness", section_correctness),
                ("opcheck", section_opcheck), ("bandwidth", section_bandwidth), ("sanitizer", section_sanitizer),
                ("loss", section_loss), ("compile", section_compile), ("train", section_train)]
    for name, fn in sections:
        if args.only and name not in args.only and name != "env":
            continue
        start = time.perf_counter()
        try:
            record = {"status": "ok", **fn(args)}
        except Skip as s:
            record = {"status": "skipped", "reason": str(s)}
        except Exception as e:  # noqa: BLE001 - every section reports, none stops the run
            record = {"status": "error", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=8)}
        record["seconds"] = round(time.perf_counter() - start, 2)
        results["sections"][name] = record
        print(f"gpu_check: {name}: {record['status']} ({record['seconds']} s)", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_strict(results), indent=1, allow_nan=False))
    failed = [n for n, r in results["sections"].items() if r["status"] == "error"]
    print(f"gpu_check: wrote {args.out}; errors in: {', '.join(failed) or 'none'}", file=sys.stderr)
    return 1 if failed else 0


class Skip(Exception):
    """A section that does not apply on this machine / in this mode."""


def _strict(x):
    """Strict JSON: NaN/inf become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def _device(args):
    import torch

    if args.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (use --dry-run on a machine without a GPU)")
    return torch.device("cuda")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats=5):
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def section_build(args):
    if not args.build:
        raise Skip("no --build")
    if args.dry_run:
        raise Skip("dry run")
    env = dict(os.environ, ECGKT_FORCE_CUDA="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"build failed:\n{r.stderr[-4000:]}")
    return {"build_seconds": round(time.perf_counter() - t0, 1)}


def section_env(args):
    import torch

    import ecgkt
    from ecgkt import _extension

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "ecgkt_extension": _extension.available,
            "build_info": getattr(_extension, "build_info", None)}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available() and not args.dry_run:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30)
    info["ecgkt"] = ecgkt.__version__
    return info


def _preprocess_cases(dry):
    import torch

    t = 201 if dry else 5000
    return [("500Hz_zscore", 500.0, {}, t, "zscore"), ("1000Hz_robust", 1000.0, {}, 2 * t, "robust"),
            ("360to500_zscore", 360.0, {"target_fs": 500}, t, "zscore")], \
        [torch.float32, torch.float16, torch.bfloat16, torch.int16, torch.float64]


def _ecg(n, t, fs, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    time_ = torch.arange(t, dtype=torch.float64) / fs
    return (torch.randn(n, t, generator=g, dtype=torch.float64).cumsum(1) * 0.02
            + torch.sin(2 * torch.pi * 1.3 * time_) ** 31 + 0.1 * torch.sin(2 * torch.pi * 60 * time_)
            + 0.05 * torch.randn(n, t, generator=g, dtype=torch.float64))


def section_correctness(args):
    import torch

    import ecgkt
    from ecgkt import _extension
    from ecgkt.ops import contrastive as ops
    from ecgkt.ops.contrastive import reference

    device = _device(args)
    cases, dtypes = _preprocess_cases(args.dry_run)
    backends = ["triton"] + (["cuda"] if device.type == "cuda" and _extension.has_kernel("preprocess", "CUDA") else [])
    if device.type == "cpu" and _extension.has_kernel("preprocess", "CPU"):
        backends.append("cpu")
    rows, worst = [], 0.0
    n = 2 if args.dry_run else 96
    for name, fs, extra, t, norm in cases:
        x64 = _ecg(n, t, fs, seed=len(rows))
        for dtype in dtypes:
            if dtype == torch.int16:
                x, gain = (x64 * 200).round().to(torch.int16), torch.full((n,), 200.0)
            else:
                x, gain = x64.to(dtype), torch.ones(n)
            ref = ecgkt.preprocess(x, fs, normalize=norm, gain=gain, backend="reference", **extra)
            for backend in backends:
                got = ecgkt.preprocess(x.to(device), fs, normalize=norm, gain=gain.to(device), backend=backend,
                                       **extra).cpu()
                err = float((got.double() - ref.double()).abs().max() / max(1.0, float(ref.abs().max())))
                worst = max(worst, err if dtype != torch.float64 else 0.0)
                rows.append(dict(case=name, dtype=str(dtype), backend=backend, max_rel_error=err))
    loss_rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for dim in (48, 150, 512):
            g = torch.Generator().manual_seed(dim)
            a = torch.nn.functional.normalize(torch.randn(70, dim, generator=g), dim=-1).to(dtype)
            b = torch.nn.functional.normalize(torch.randn(90, dim, generator=g), dim=-1).to(dtype)
            s = torch.tensor(20.0)
            ref = reference.clip_block_lse_reference(a.double(), b.double(), s.double())
            # CUDA: the registered kernel itself; CPU (dry run): the public primitive (the compiled CPU
            # kernel, or the reference where the extension is missing)
            fn = ops.cuda_kernel("clip_block_lse") if device.type == "cuda" else ops.clip_block_lse
            got = fn(a.to(device), b.to(device), s.to(device))
            err = max(float((x.cpu().double() - r).abs().max() / r.abs().max()) for x, r in zip(got, ref))
            loss_rows.append(dict(dtype=str(dtype), dim=dim, max_rel_error=err))
    out = {"preprocess": rows, "preprocess_worst_rel_error_non_float64": worst, "contrastive": loss_rows}
    if args.big and not args.dry_run:
        t = 5000
        n_big = (2**31) // t + 64  # > 2^31 samples
        x = torch.zeros(n_big, t, dtype=torch.int16, device=device)
        x[:, ::7] = 100
        y = ecgkt.preprocess(x, 500.0, gain=torch.full((n_big,), 200.0, device=device))
        tail = ecgkt.preprocess(x[-8:].cpu(), 500.0, gain=torch.full((8,), 200.0), backend="reference")
        out["big"] = dict(elements=n_big * t, tail_max_abs_error=float((y[-8:].cpu() - tail).abs().max()))
    return out


def section_opcheck(args):
    import torch

    import ecgkt  # noqa: F401 - registers the ops
    from ecgkt.ops.preprocess import filter_design

    from ecgkt import _extension

    if not _extension.available:
        raise Skip(f"ecgkt._C is not loaded ({_extension.reason}): the ops are not registered")
    device = _device(args)
    g = torch.Generator().manual_seed(0)
    d = filter_design(500.0)
    t64 = lambda a: torch.from_numpy(a.copy()).to(device)  # noqa: E731
    x = _ecg(3, 301, 500.0, 1).float().to(device)
    pre_args = (x, torch.ones(3, device=device), torch.zeros(3, device=device), t64(d.sos.reshape(-1, 6)),
                t64(d.zi.reshape(-1, 2)), d.padlen, t64(d.fir), d.up, d.down, 1)
    checked = []
    torch.library.opcheck(torch.ops.ecgkt.preprocess.default, pre_args)
    checked.append("preprocess")
    a = torch.nn.functional.normalize(torch.randn(37, 20, generator=g), dim=-1).to(device)
    b = torch.nn.functional.normalize(torch.randn(45, 20, generator=g), dim=-1).to(device)
    s, t = torch.tensor(9.0, device=device), torch.tensor(-2.0, device=device)
    req = [v.clone().requires_grad_() for v in (a, b, s, t)]
    torch.library.opcheck(torch.ops.ecgkt.clip_block_lse.default, tuple(req[:3]))
    torch.library.opcheck(torch.ops.ecgkt.siglip_block.default, tuple(req))
    row, col = torch.ops.ecgkt.clip_block_lse(a, b, s)
    gr, gc = torch.randn(37, generator=g).to(device), torch.randn(45, generator=g).to(device)
    torch.library.opcheck(torch.ops.ecgkt.clip_block_lse_backward.default, (a, b, s, row, col, gr, gc))
    torch.library.opcheck(torch.ops.ecgkt.siglip_block_backward.default, (a, b, s, t, gr))
    checked += ["clip_block_lse", "siglip_block", "clip_block_lse_backward", "siglip_block_backward"]
    return {"device": str(device), "ops": checked}


def section_bandwidth(args):
    import torch

    import ecgkt

    device = _device(args)
    batches = (1,) if args.dry_run else (64, 1024, 4096)
    t = 300 if args.dry_run else 5000
    big = torch.empty((2**18 if args.dry_run else 2**28,), dtype=torch.float32, device=device)  # 1 GiB on GPU
    hbm_copy = _time(lambda: big.clone(), device)
    rows = []
    for b in batches:
        x = torch.randn(b * 12, t, device=device)
        nbytes = 2 * x.numel() * 4  # read once, write once
        copy = _time(lambda: x.clone(), device)
        for backend in (["triton", "cuda"] if device.type == "cuda" else ["triton"]):
            try:
                sec = _time(lambda: ecgkt.preprocess(x, 500.0, backend=backend), device, repeats=2 if args.dry_run else 5)
            except Exception as e:  # noqa: BLE001 - e.g. no compiled CUDA kernel
                rows.append(dict(batch=b, backend=backend, error=str(e)))
                continue
            rows.append(dict(batch=b, backend=backend, seconds=sec, gb_per_s=nbytes / sec / 1e9,
                             fraction_of_same_size_copy=copy / sec, fraction_of_hbm_copy=(nbytes / sec) /
                             (2 * big.numel() * 4 / hbm_copy)))
    return {"rows": rows, "hbm_copy_gb_per_s": 2 * big.numel() * 4 / hbm_copy / 1e9}


_SANITIZE_SNIPPET = """
import torch, ecgkt
x = torch.randn(6, 700, device="cuda")
ecgkt.preprocess(x, 500.0)
ecgkt.preprocess(x, 500.0, backend="triton", normalize="robust")
e = torch.randn(50, 64, device="cuda", requires_grad=True)
c = torch.randn(50, 64, device="cuda", requires_grad=True)
ecgkt.losses.clip_loss(e, c, 10.0).backward()
torch.cuda.synchronize()
print("sanitized case ok")
"""


def section_sanitizer(args):
    if args.dry_run:
        raise Skip("dry run (needs a GPU)")
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        raise Skip("compute-sanitizer not on PATH")
    out = {}
    for check in ("racecheck", "memcheck"):
        r = subprocess.run([tool, "--tool", check, "--error-exitcode", "3", sys.executable, "-c", _SANITIZE_SNIPPET],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        out[check] = {"returncode": r.returncode, "tail": (r.stdout + r.stderr)[-1500:]}
        if r.returncode:
            raise RuntimeError(f"compute-sanitizer {check} failed: {out[check]['tail']}")
    return out


def section_loss(args):
    import torch

    from ecgkt import losses

    device = _device(args)
    dim = 256
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    batches = (256, 512) if args.dry_run else (16384, 65536, 262144)
    m = 1024 if args.dry_run else 8192
    xa, xb = torch.randn(m, dim, device=device, dtype=dtype), torch.randn(m, dim, device=device, dtype=dtype)
    mm = _time(lambda: xa @ xb.T, device)
    flops = 2 * m * m * dim / mm
    rows = []
    for b in batches:
        emb_a = torch.randn(b, dim, device=device, dtype=dtype, requires_grad=True)
        emb_b = torch.randn(b, dim, device=device, dtype=dtype, requires_grad=True)
        row = dict(batch=b, dim=dim, dtype=str(dtype), matmul_floor_seconds=3 * 2 * b * b * dim / flops)
        for impl, fn in (("fused", losses.clip_loss), ("naive", losses.naive_clip_loss)):
            if impl == "naive" and b * b * 4 * 3 > (2**31 if args.dry_run else 60 * 2**30):
                row["naive"] = "skipped: B x B logits do not fit"
                continue

            def step():
                loss = fn(emb_a, emb_b, 10.0)
                loss.backward()
                return loss

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            sec = _time(step, device, repeats=1 if args.dry_run else 3)
            row[f"{impl}_seconds"] = sec
            if device.type == "cuda":
                row[f"{impl}_peak_extra_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        row["fused_over_floor"] = row["fused_seconds"] / row["matmul_floor_seconds"]
        rows.append(row)
        emb_a = emb_b = None  # free this batch's tensors before the next, larger one
    return {"matmul_tflops": flops / 1e12, "rows": rows}


def _contrastive_model(device):
    from ecgkt.models.encoders import ECGEncoder
    from ecgkt.models.model import ContrastiveModel

    return ContrastiveModel(ECGEncoder("tiny"), n_tab=17, embed_dim=32, tab_hidden=32, tab_layers=1,
                            tab_dropout=0.0, temperature=0.07).to(device)


def section_compile(args):
    import torch

    from ecgkt import _extension, losses

    if not _extension.available:
        raise Skip(f"ecgkt._C is not loaded ({_extension.reason}): torch.ops.ecgkt.preprocess is not registered")
    device = _device(args)
    torch.manual_seed(0)
    model = _contrastive_model(device).eval()
    from ecgkt.models.model import ECGPreprocessor

    model_preprocess = ECGPreprocessor().at_rate(500.0).to(device)
    signal = (torch.randn(4, 12, 500 if args.dry_run else 5000, device=device) * 150).round().to(torch.int16)
    gain, base = torch.full((4, 12), 200.0, device=device), torch.zeros(4, 12, device=device)
    tab, mask = torch.randn(4, 17, device=device), torch.ones(4, 17, dtype=torch.bool, device=device)

    def pipeline(signal, gain, base, tab, mask):
        x, _ = model_preprocess(signal, gain, base)
        e, t = model(x, tab, mask)
        return losses.clip_loss(e, t, model.logit_scale.exp())

    with torch.no_grad():
        want = pipeline(signal, gain, base, tab, mask)
        backend = "aot_eager" if args.dry_run else "inductor"  # the dry run checks the graph capture only
        compiled = torch.compile(pipeline, backend=backend, fullgraph=False)
        got = compiled(signal, gain, base, tab, mask)
    return {"backend": backend, "eager": float(want), "compiled": float(got),
            "abs_difference": abs(float(want) - float(got))}


def section_train(args):
    import torch

    from ecgkt import losses

    device = _device(args)
    torch.manual_seed(0)
    model = _contrastive_model(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b, t = (16, 500) if args.dry_run else (256, 1000)
    x = torch.randn(b, 12, t, device=device)
    tab, mask = torch.randn(b, 17, device=device), torch.ones(b, 17, dtype=torch.bool, device=device)
    values = []
    for _ in range(2):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            e, c = model(x, tab, mask)
            loss = losses.clip_loss(e.float(), c.float(), model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    if not all(math.isfinite(v) for v in values):
        raise RuntimeError(f"non-finite training loss {values}")
    return {"losses": values}


if __name__ == "__main__":
    sys.exit(main())

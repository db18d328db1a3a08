"""``ecgkt preprocess RECORD --out PNG``: preprocess one WFDB record and plot it before and after."""
from __future__ import annotations

import argparse
import pathlib

from ..errors import ECGKTError, RecordError
from ..io import atomic_write


def _notch(value: str):
    if value.lower() in ("none", "off", "0"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--notch must be a frequency in Hz (50, 60) or 'none', got {value!r}")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="preprocess one WFDB record and save a before/after plot",
        description=(
            "Read a WFDB record (RECORD is the path without extension, e.g. data/E07500), run ecgkt.preprocess "
            "on it (band-pass, mains notch, optional resampling, per-lead normalisation; int16 ADC samples are "
            "converted with the header's gain and baseline) and save a plot of each lead before (mV) and after."
        ),
    )
    p.add_argument("record", help="WFDB record path without extension (the .hea file must exist)")
    p.add_argument("--out", required=True, help="image to write (.png, .pdf, .svg)")
    p.add_argument("--highpass", type=float, default=0.5, help="high-pass corner in Hz (default 0.5)")
    p.add_argument("--lowpass", type=float, default=100.0, help="low-pass corner in Hz (default 100)")
    p.add_argument("--notch", type=_notch, default=60.0, help="mains notch in Hz: 50, 60 or none (default 60)")
    p.add_argument("--target-fs", type=float, default=None, help="resample to this rate in Hz (default: keep)")
    p.add_argument("--normalize", choices=["zscore", "robust", "none"], default="zscore",
                   help="per-lead normalisation (default zscore)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the plotted window in s (default 10)")
    p.set_defaults(func=run)


def read_wfdb(record: str):
    """(int16 [leads, T] tensor, fs, gain, baseline, lead names) of a WFDB record, every signal kept.

    Read and checked by ``ecgkt.data.wfdb_io`` like every other input (formats wider than 16 bits are
    rescaled to int16 with the gain scaled alike)."""
    import torch

    from ..data.wfdb_io import read_record

    path = pathlib.Path(record)
    if path.suffix in (".hea", ".dat", ".mat"):
        path = path.with_suffix("")
    if not path.with_suffix(".hea").is_file():
        raise RecordError(path.with_suffix(".hea"), "no such WFDB header")
    rec = read_record(path, leads="all")
    return torch.from_numpy(rec.signal), float(rec.fs), rec.gain, rec.baseline, list(rec.leads)


def run(args) -> int:
    import numpy as np
    import torch

    from ..ops.preprocess import preprocess

    sig, fs, gain, baseline, names = read_wfdb(args.record)
    res = preprocess(sig, fs, highpass=args.highpass, lowpass=args.lowpass, notch=args.notch,
                     target_fs=args.target_fs, normalize=None if args.normalize == "none" else args.normalize,
                     gain=None if gain is None else torch.from_numpy(gain),
                     baseline=None if baseline is None else torch.from_numpy(baseline), return_info=True)
    if sig.dtype == torch.int16:
        before = (sig.double().numpy() - baseline[:, None]) / gain[:, None]
        before[sig.numpy() == -32768] = np.nan
    else:
        before = sig.double().numpy()
    after = res.signal.numpy()
    fs_out = args.target_fs or fs

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_in, n_out = min(before.shape[1], int(args.seconds * fs)), min(after.shape[1], int(args.seconds * fs_out))
    leads = len(names)
    fig, axes = plt.subplots(leads, 2, figsize=(14, 1.1 * leads + 1), sharex="col", squeeze=False)
    for i, name in enumerate(names):
        axes[i, 0].plot(np.arange(n_in) / fs, before[i, :n_in], lw=0.6, color="0.3")
        axes[i, 1].plot(np.arange(n_out) / fs_out, after[i, :n_out], lw=0.6, color="C0")
        tag = " (repaired)" if res.repaired[i] else ""
        tag += " (flat: zeros)" if res.flat[i] else ""
        axes[i, 0].set_ylabel(name + tag, rotation=0, ha="right", fontsize=8)
    axes[0, 0].set_title(f"before: {pathlib.Path(args.record).name}, {fs:g} Hz, mV")
    notch = "no notch" if args.notch is None else f"{args.notch:g} Hz notch"
    axes[0, 1].set_title(f"after: {args.highpass:g}-{args.lowpass:g} Hz, {notch}, {fs_out:g} Hz, {args.normalize}")
    axes[-1, 0].set_xlabel("s")
    axes[-1, 1].set_xlabel("s")
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = out.suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(out, lambda f: fig.savefig(f, dpi=110, format=fmt))
    except ValueError as e:  # an image format matplotlib does not know
        raise ECGKTError(f"--out {out}: cannot save the plot ({e})") from None
    finally:
        plt.close(fig)
    print(f"wrote {out}: {leads} leads, {before.shape[1]} -> {after.shape[1]} samples; "
          f"repaired {int(res.repaired.sum())}, flat {int(res.flat.sum())}")
    return 0

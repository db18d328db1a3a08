"""``ecgkt synth``: the command line of the generator (import-light: numpy, pandas and the
generator itself load only when the command runs, so ``ecgkt --help`` stays fast)."""
from __future__ import annotations

from ..errors import ECGKTError
from ..data.synth.rules import RULES


def _parse_rule(text: str) -> tuple[str, float]:
    name, sep, scale = text.partition("=")
    if not sep:
        raise ECGKTError(f"--rule {text!r}: expected NAME=SCALE, e.g. potassium_t=0")
    try:
        return name.strip(), float(scale)
    except ValueError:
        raise ECGKTError(f"--rule {text!r}: scale {scale!r} is not a number") from None


def _run(args) -> int:
    from ..data.synth.config import SynthConfig
    from ..data.synth.generator import generate

    rules = dict(_parse_rule(r) for r in args.rule or [])
    cfg = SynthConfig(rules=rules, waveforms=not args.no_waveforms)
    summary = generate(args.out, patients=args.patients, seed=args.seed, config=cfg,
                       progress=not args.quiet, overwrite=args.overwrite, jobs=args.jobs)
    print(f"wrote {summary['records']} ECGs of {summary['patients']} patients, {summary['labevents']} lab rows "
          f"to {summary['out_dir']} in {summary['seconds']} s ({summary['records_per_s']} records/s)")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write a synthetic MIMIC-IV-ECG + MIMIC-IV shaped dataset",
        description="Write DIR/mimic-iv-ecg (record_list.csv, machine_measurements.csv, WFDB records) and "
                    "DIR/mimic-iv (hosp/ and ed/ csv.gz tables) with MIMIC's names, columns and quirks. A latent "
                    "patient state drives labs, vitals, biometrics, ECG morphology, machine statements and ICD-10 "
                    "codes through documented rules (see docs/synthetic_data.md). Same seed, same bytes.")
    p.add_argument("--out", required=True, help="output folder (gets mimic-iv-ecg/ and mimic-iv/)")
    p.add_argument("--patients", type=int, default=1000, help="number of subjects (about 2.4 ECGs each; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--rule", action="append", metavar="NAME=SCALE",
                   help="scale one physiology rule (0 switches it off); repeatable. Rules: " + ", ".join(RULES))
    p.add_argument("--no-waveforms", action="store_true", help="write the tables only (no WFDB records)")
    p.add_argument("--overwrite", action="store_true", help="replace existing mimic-iv-ecg/ and mimic-iv/ folders")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes rendering waveforms (default: up to 2; the output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)

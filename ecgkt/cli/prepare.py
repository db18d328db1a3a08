"""``ecgkt prepare``: MIMIC-shaped roots -> signal store + cohort table."""
from __future__ import annotations

import argparse

from ..errors import ECGKTError


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="convert MIMIC-IV-ECG records and MIMIC-IV tables into a fast signal store",
        description=(
            "Build the cohort table (one row per ECG study: paired labs, vitals, biometrics, labels,\n"
            "subject-level folds) and copy every valid record into one memory-mapped int16 array.\n"
            "Corrupt records are skipped and listed with their reason in STORE/skipped.csv.\n"
            "An interrupted run resumes where it stopped when started again with the same arguments.\n\n"
            "Give either --data DIR (a folder holding mimic-iv-ecg/ and mimic-iv/, e.g. the output of\n"
            "`ecgkt synth`) or --ecg-root and, optionally, --clinical-root."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", metavar="DIR", help="folder holding mimic-iv-ecg/ and mimic-iv/ (any nesting)")
    p.add_argument("--ecg-root", metavar="DIR", help="MIMIC-IV-ECG root (the folder with record_list.csv)")
    p.add_argument("--clinical-root", metavar="DIR", help="MIMIC-IV root (the folder with hosp/ and ed/)")
    p.add_argument("--out", metavar="STORE", required=True, help="store folder to create or resume")
    p.add_argument("--workers", type=int, default=2, help="parallel reader processes (default 2)")
    p.add_argument("--chunk-size", type=int, default=256, help="records per resumable chunk (default 256)")
    p.add_argument("--lab-window", type=float, default=60.0, metavar="MIN",
                   help="labs: closest value within ± MIN minutes of the ECG (default 60)")
    p.add_argument("--vitals-window", type=float, default=30.0, metavar="MIN",
                   help="ED vitals: closest within ± MIN minutes (default 30)")
    p.add_argument("--omr-window", type=float, default=30.0, metavar="DAYS",
                   help="omr biometrics: closest within ± DAYS days (default 30)")
    p.add_argument("--min-lab-count", type=int, default=200,
                   help="drop lab tests with fewer paired values (default 200)")
    p.add_argument("--dx-min-count", type=int, default=50,
                   help="drop diagnosis labels with fewer positive ECGs (default 50)")
    p.add_argument("--overwrite", action="store_true", help="replace a store built with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.mimic import CohortConfig
    from ..data.store import prepare

    if args.data and (args.ecg_root or args.clinical_root):
        raise ECGKTError("--data: give either --data or --ecg-root/--clinical-root, not both")
    if not args.data and not args.ecg_root:
        raise ECGKTError("--data/--ecg-root: say where the records are")
    if args.workers < 1 or args.chunk_size < 1:
        raise ECGKTError("--workers/--chunk-size: must be at least 1")
    roots = args.data if args.data else (args.ecg_root, args.clinical_root)
    cfg = CohortConfig(lab_window_min=args.lab_window, vitals_window_min=args.vitals_window,
                       omr_window_days=args.omr_window, min_lab_count=args.min_lab_count,
                       dx_min_count=args.dx_min_count)
    store = prepare(roots, args.out, cfg, workers=args.workers, chunk_size=args.chunk_size,
                    progress=not args.no_progress, overwrite=args.overwrite)
    print(f"store: {store.path} ({len(store)} records, {len(store.meta['tab_names'])} tabular features, "
          f"{len(store.meta['lab_label_names'])} lab labels, {len(store.meta['dx_names'])} diagnosis labels)")
    return 0

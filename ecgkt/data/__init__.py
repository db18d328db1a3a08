"""Data layer: WFDB/DICOM readers, the MIMIC-IV cohort joiner, the signal store and its Dataset.

  read_record(path)                 any WFDB record -> ECGRecord (int16, standard lead order)
  read_dicom(path)                  12-lead DICOM waveform -> ECGRecord (needs pydicom)
  build_cohort(ecg_root, clinical)  one row per ECG study: labs, vitals, biometrics, labels, folds
  read_labevents(path, itemids)     streaming, filtered labevents reader
  prepare(roots, out_dir)           the signal store (`ecgkt prepare`); ECGStore reads it
  ECGDataset(store_dir, folds)      torch Dataset over a store (imported lazily: needs torch)
  collate(items)                    DataLoader collate_fn for its items (numpy stacking)
  generate(out_dir, patients, seed) the synthetic MIMIC-shaped dataset (`ecgkt synth`)
"""
from .labevents import read_labevents
from .mimic import CohortConfig, Cohort, build_cohort, find_roots, subject_folds
from .store import ECGStore, prepare
from .synth import SynthConfig, generate
from .wfdb_io import INVALID, STANDARD_LEADS, ECGRecord, iter_windows, read_header, read_record


def __getattr__(name):
    # torch and pydicom are imported only when these are asked for
    if name in ("ECGDataset", "collate"):
        from . import dataset

        return getattr(dataset, name)
    if name == "read_dicom":
        from .dicom_io import read_dicom

        return read_dicom
    raise AttributeError(f"module 'ecgkt.data' has no attribute {name!r}")


__all__ = ["INVALID", "STANDARD_LEADS", "ECGRecord", "read_record", "read_header", "iter_windows",
           "read_dicom", "read_labevents", "CohortConfig", "Cohort", "build_cohort", "find_roots",
           "subject_folds", "prepare", "ECGStore", "ECGDataset", "collate", "generate", "SynthConfig"]

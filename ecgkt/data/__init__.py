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
import importlib

# Imported on first use, so that `ecgkt --help` and light readers do not pay for pandas / torch / pydicom.
_LAZY = {
    "read_labevents": ".labevents",
    **dict.fromkeys(("CohortConfig", "Cohort", "build_cohort", "find_roots", "subject_folds"), ".mimic"),
    **dict.fromkeys(("ECGStore", "prepare"), ".store"),
    **dict.fromkeys(("SynthConfig", "generate"), ".synth"),
    **dict.fromkeys(("INVALID", "STANDARD_LEADS", "ECGRecord", "iter_windows", "read_header", "read_record"),
                    ".wfdb_io"),
    **dict.fromkeys(("ECGDataset", "collate"), ".dataset"),  # needs torch
    "read_dicom": ".dicom_io",  # needs pydicom
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ecgkt.data' has no attribute {name!r}")


__all__ = ["INVALID", "STANDARD_LEADS", "ECGRecord", "read_record", "read_header", "iter_windows",
           "read_dicom", "read_labevents", "CohortConfig", "Cohort", "build_cohort", "find_roots",
           "subject_folds", "prepare", "ECGStore", "ECGDataset", "collate", "generate", "SynthConfig"]

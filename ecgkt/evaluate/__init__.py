"""Evaluation: metrics (AUROC, AUPRC, F1 at validation-tuned thresholds), bootstrap CIs, the paired
comparison with the signal-only baseline, gap bridged, lab AUROCs, plots and the results files."""
from .metrics import auroc, average_precision, macro_auprc, macro_auroc, tune_thresholds
from .report import compute, markdown, table

__all__ = ["auroc", "average_precision", "macro_auprc", "macro_auroc", "tune_thresholds", "compute", "markdown",
           "table"]

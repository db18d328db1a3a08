"""Synthetic MIMIC-shaped dataset: ``ecgkt synth --out DIR --patients N --seed S``.

Writes ``DIR/mimic-iv-ecg/`` (record_list.csv, machine_measurements.csv, WFDB records under
files/pNNNN/pNNNNNNNN/sNNNNNNNN/) and ``DIR/mimic-iv/`` (hosp/ and ed/ csv.gz tables) with the
names, columns, formats and quirks of the real releases (docs/synthetic_data.md), so the loaders
read it exactly as they would read MIMIC. A latent patient state drives every table and the
waveforms through the named rules of :mod:`.rules`. ``DIR/synth_truth.csv.gz`` (outside both
roots) keeps the true state and beat-model parameters of every study.

Modules: ``rules`` (the rule table), ``config`` (SynthConfig), ``population`` (subjects,
encounters, latent state), ``physiology`` (state -> beat-model parameters), ``beat_model``
(waveform rendering), ``coding`` (machine statements, ICD codes), ``mimic_ecg`` / ``mimic_clinical``
(the MIMIC-IV-ECG and MIMIC-IV tables), ``generator`` (``generate``), ``labels`` (label groups
and ECG-oracle features for the evaluation).

Deterministic: the same seed and config give the same files, byte for byte.
"""

# name -> module; loaded on first use so that the command line stays fast
_LAZY = {"SynthConfig": "config", "generate": "generator", "MISSING": "mimic_ecg", "Simulation": "population",
         "simulate": "population", "RULES": "rules", "check_rules": "rules", "label_groups": "labels",
         "lab_groups": "labels", "oracle_features": "labels"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_LAZY]

"""``SynthConfig``: every knob of the generator (rule scales, proportions, edge-case rates)."""
from __future__ import annotations

import dataclasses

from .rules import check_rules


@dataclasses.dataclass
class SynthConfig:
    """Knobs of the generator; the defaults give MIMIC-like proportions."""

    rules: dict = dataclasses.field(default_factory=dict)  # physiology rule -> scale (0 = off)
    ecgs_per_patient_p: float = 0.45  # ECGs per patient ~ 1 + Geometric(p) - 1, capped
    max_ecgs_per_patient: int = 8
    p_ed: float = 0.65  # share of ECGs taken in the ED (others: inpatient 0.15, outpatient rest)
    p_inpatient: float = 0.15
    lab_near_prob: float = 0.8  # a drawn panel falls within +-55 min of the ECG, else hours away
    p_bad_clock_cart: float = 0.05  # carts whose clock is an hour off (pairing window misses)
    p_omr: float = 0.6  # subjects with any omr biometrics
    code_sensitivity: float = 0.85  # P(true condition coded)
    code_false_rate: float = 0.01  # P(code present without the condition)
    statement_miss_rate: float = 0.05
    statement_false_rate: float = 0.3  # among missed rhythm statements, share misread as AF
    noise_scale: float = 1.0
    p_mains: float = 0.1
    p_nan_run: float = 0.01
    p_flat_lead: float = 0.01
    p_deid_value: float = 0.004  # lab value '___'
    p_empty_range: float = 0.02
    p_flag_disagree: float = 0.02
    p_celsius: float = 0.03  # ED temperatures charted in degC
    p_icd9: float = 0.03  # admissions coded in ICD-9
    p_serial_ecg: float = 0.12  # ED encounters with a second ECG 15-150 min after the first
    chunk_records: int = 200  # records rendered together (fixed: part of the random stream)
    waveforms: bool = True

    def __post_init__(self):
        self.rules = check_rules(self.rules)


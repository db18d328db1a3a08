"""How one model's results read to a person: label names and evidence-gated explanations. Import-light
(ecgkt.labels and the explanation gate load on first use), so the command line can import it at once."""
from __future__ import annotations


class Display:
    """How one model's results read: label names (ecgkt.labels) and the evidence gate of its explanations
    (ecgkt.predict.explanations), from the model's config or given."""

    def __init__(self, model=None, labels=None, gate=None):
        from ..labels import Labels
        from ..predict.explanations import ExplanationGate

        self.labels = labels or Labels.for_model(model)
        self.gate = gate or ExplanationGate.from_config(getattr(model, "config", {}))

    @classmethod
    def for_result(cls, result, gate=None) -> "Display":
        """Names from a result's own label keys; without ``gate`` no lab explanations (nothing to gate on)."""
        from ..labels import Labels
        from ..predict.explanations import ExplanationGate

        return cls(labels=Labels.for_names([k for k, _ in result.diagnoses], [f.output for f in result.labs]),
                   gate=gate or ExplanationGate(None))

    def top(self, result, k: int):
        """[(display line, probability)] of the k most probable diagnoses, each parent shown once."""
        return [(self.labels.line(key, folded), p) for key, p, folded in self.labels.top(result.diagnoses, k)]

    def explanation(self, result):
        return self.gate.explanation(result.labs, result.lab_threshold)

    def sentences(self, result) -> list[str]:
        return self.gate.sentences(result.labs, result.lab_threshold)

    def to_dict(self, result) -> dict:
        d = result.to_dict()
        d["diagnosis_names"] = {key: self.labels.name(key) for key, _ in result.diagnoses}
        d["top_diagnoses"] = [{"label": key, "name": self.labels.name(key), "probability": round(p, 6),
                               "parents_shown_here": [f for f, _ in folded]}
                              for key, p, folded in self.labels.top(result.diagnoses, len(result.diagnoses))]
        d["explanation"] = self.gate.explanation_dicts(result.labs, result.lab_threshold)
        return d

"""Turn predicted lab abnormalities into readable explanations.

The association texts live in one documented table, ``lab_associations.csv`` beside this file
(columns: lab, direction, aliases, association, strength). The directions and texts follow clinical
teaching as summarised in the project's physiology notes; ``strength`` says how visible the effect is on
a surface ECG (strong / moderate / weak / indirect / none), so a reader can weigh an explanation.

A model names its lab outputs in many ways ("potassium_high", "Potassium (high)", "50971_high",
"k high"); :func:`parse_lab_output` reads all of them.

Evidence gate (:class:`ExplanationGate`): a predicted lab abnormality is offered as an explanation only
when (1) the table documents an ECG association for it (strength strong / moderate / weak / indirect;
labs with no ECG signature never explain anything) and (2) the model predicted that lab well on its own
validation set: its AUROC there, stored in the model config as ``lab_validation_auroc`` {label: AUROC},
is at least ``explanation_min_auroc`` (saved with it; :func:`gate_config` makes both entries). A model
saved without these entries shows no lab explanations, and says so in one line.
"""
from __future__ import annotations

import csv
import functools
import math
import re
from dataclasses import dataclass
from importlib import resources

DIRECTIONS = ("low", "high")
UNDOCUMENTED = "no ECG association documented for this lab in lab_associations.csv"
EVIDENCE_STRENGTHS = ("strong", "moderate", "weak", "indirect")  # a documented ECG association
DEFAULT_MIN_AUROC = 0.7
NO_GATE_NOTE = ("lab explanations not shown: this model was saved without validation AUROCs for its lab "
                "outputs (no lab_validation_auroc in its config.json)")


@dataclass(frozen=True)
class Association:
    lab: str
    direction: str
    association: str
    strength: str


@dataclass(frozen=True)
class LabFinding:
    """One predicted lab abnormality with its explanation."""

    output: str  # the model's output name, e.g. "potassium_high"
    lab: str  # canonical lab name, e.g. "potassium"
    direction: str  # "low" / "high" ("" when the output name gives none)
    probability: float
    association: str
    strength: str

    def text(self) -> str:
        head = f"{self.lab} {self.direction}".strip()
        if self.strength in ("none", "unknown"):  # nothing on the ECG to point at: say so plainly
            return f"{head} {self.probability:.2f} \u2014 {self.association}"
        return f"{head} {self.probability:.2f} \u2014 associated with {self.association}"

    @property
    def documented(self) -> bool:
        """The table documents an ECG association for this lab and direction."""
        return self.strength in EVIDENCE_STRENGTHS

    def display_name(self) -> str:
        """"High potassium", "Low pH", "NT-proBNP" (no direction)."""
        from ..labels import LAB_NAMES

        name = LAB_NAMES.get(self.lab, self.lab)
        return f"{self.direction.capitalize()} {name}" if self.direction else name[:1].upper() + name[1:]

    def sentence(self, auroc: float | None = None) -> str:
        """The explanation as a sentence: "High potassium predicted (probability 0.81, validation AUROC
        0.93). Expected on the ECG: peaked, narrow T waves (V2-V4); ..."."""
        evidence = f"probability {self.probability:.2f}"
        if auroc is not None:
            evidence += f", validation AUROC {auroc:.2f}"
        text = self.association.rstrip(".")
        if not self.documented:
            return f"{self.display_name()} predicted ({evidence}). {text[:1].upper() + text[1:]}."
        return f"{self.display_name()} predicted ({evidence}). Expected on the ECG: {text}."

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "lab": self.lab,
            "direction": self.direction,
            "probability": round(float(self.probability), 6),
            "association": self.association,
            "strength": self.strength,
            "text": self.text(),
        }


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


@functools.lru_cache(maxsize=1)
def load_table() -> tuple[dict[tuple[str, str], Association], dict[str, str]]:
    """Return ({(lab, direction): Association}, {alias: lab}) from the packaged table."""
    text = resources.files("ecgkt.predict").joinpath("lab_associations.csv").read_text()
    table: dict[tuple[str, str], Association] = {}
    aliases: dict[str, str] = {}
    for row in csv.DictReader(text.splitlines()):
        lab, direction = row["lab"].strip(), row["direction"].strip()
        if direction not in DIRECTIONS:
            raise ValueError(f"lab_associations.csv: direction must be low or high, got {direction!r}")
        table[(lab, direction)] = Association(lab, direction, row["association"].strip(), row["strength"].strip())
        aliases[_key(lab)] = lab
        for alias in filter(None, (a.strip() for a in row["aliases"].split(";"))):
            aliases[_key(alias)] = lab
    return table, aliases


@functools.lru_cache(maxsize=4096)  # a model has a few dozen outputs, parsed again for every record scored
def parse_lab_output(name: str) -> tuple[str, str]:
    """Split a model output name into (canonical lab, direction).

    "potassium_high" -> ("potassium", "high"); "50971 low" -> ("potassium", "low");
    "Troponin T (high)" -> ("troponin", "high"). Unknown labs keep their own (cleaned) name.
    """
    key = _key(name)
    direction = ""
    for d in DIRECTIONS:
        if key.endswith(" " + d) or key == d:
            direction, key = d, key[: -len(d)].strip()
            break
        if key.startswith(d + " "):
            direction, key = d, key[len(d) :].strip()
            break
    _, aliases = load_table()
    return aliases.get(key, key), direction


def explain(output: str, probability: float) -> LabFinding:
    """The explanation for one lab output and its probability."""
    lab, direction = parse_lab_output(output)
    table, _ = load_table()
    assoc = table.get((lab, direction))
    if assoc is None and not direction:
        # an output with no direction ("potassium abnormal"): join both directions' texts
        parts = [table[(lab, d)] for d in DIRECTIONS if (lab, d) in table]
        if parts:
            text = "; ".join(f"{p.direction}: {p.association}" for p in parts)
            return LabFinding(output, lab, "", float(probability), text, parts[0].strength)
    if assoc is None:
        return LabFinding(output, lab, direction, float(probability), UNDOCUMENTED, "unknown")
    return LabFinding(output, lab, direction, float(probability), assoc.association, assoc.strength)


def explain_all(names, probabilities, threshold: float = 0.5, top: int | None = None) -> list[LabFinding]:
    """Findings for every lab output at or above ``threshold``, most probable first."""
    findings = [explain(n, p) for n, p in zip(names, probabilities) if float(p) >= threshold]
    findings.sort(key=lambda f: -f.probability)
    return findings[:top] if top else findings


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def gate_config(val_auroc_by_label: dict, threshold: float = DEFAULT_MIN_AUROC) -> dict:
    """The model-config entries of the evidence gate, to merge into ``ECGKTModel.config`` before saving:
    ``{"lab_validation_auroc": {label: AUROC or None}, "explanation_min_auroc": threshold}``.
    ``val_auroc_by_label`` maps each lab output name (``model.lab_label_names``) to its AUROC on the
    model's own validation set; a NaN (too few positives) is stored as null and never passes."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be an AUROC in [0, 1], got {threshold}")
    return {"lab_validation_auroc": {str(k): _finite(v) for k, v in val_auroc_by_label.items()},
            "explanation_min_auroc": float(threshold)}


@dataclass(frozen=True)
class ExplanationGate:
    """Which lab outputs of a model may explain its diagnoses (see the module docstring)."""

    aurocs: dict | None  # label -> validation AUROC (None: too few positives); None: the model has none
    min_auroc: float = DEFAULT_MIN_AUROC

    @classmethod
    def from_config(cls, config: dict | None) -> "ExplanationGate":
        config = config or {}
        aurocs = config.get("lab_validation_auroc")
        if not isinstance(aurocs, dict):
            return cls(None, float(config.get("explanation_min_auroc", DEFAULT_MIN_AUROC)))
        return cls({str(k): _finite(v) for k, v in aurocs.items()},
                   float(config.get("explanation_min_auroc", DEFAULT_MIN_AUROC)))

    @property
    def available(self) -> bool:
        return self.aurocs is not None

    @property
    def note(self) -> str | None:
        """The one info line for a model without validation AUROCs, else None."""
        return None if self.available else NO_GATE_NOTE

    def auroc(self, output: str) -> float | None:
        return None if self.aurocs is None else self.aurocs.get(output)

    def admits(self, finding: LabFinding) -> bool:
        auroc = self.auroc(finding.output)
        return finding.documented and auroc is not None and auroc >= self.min_auroc

    def explanation(self, findings, threshold: float = 0.5) -> list[LabFinding]:
        """The findings at or above ``threshold`` that pass the gate, most probable first."""
        out = [f for f in findings if f.probability >= threshold and self.admits(f)]
        return sorted(out, key=lambda f: -f.probability)

    def sentences(self, findings, threshold: float = 0.5) -> list[str]:
        return [f.sentence(self.auroc(f.output)) for f in self.explanation(findings, threshold)]

    def explanation_dicts(self, findings, threshold: float = 0.5) -> list[dict]:
        """JSON-ready explanation entries (with the AUROC and the sentence)."""
        return [{**f.to_dict(), "validation_auroc": self.auroc(f.output), "text": f.sentence(self.auroc(f.output))}
                for f in self.explanation(findings, threshold)]

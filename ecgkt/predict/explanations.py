"""Turn predicted lab abnormalities into readable explanations.

The association texts live in one documented table, ``lab_associations.csv`` beside this file
(columns: lab, direction, aliases, association, strength). The directions and texts follow clinical
teaching as summarised in the project's physiology notes; ``strength`` says how visible the effect is on
a surface ECG (strong / moderate / weak / indirect / none), so a reader can weigh an explanation.

A model names its lab outputs in many ways ("potassium_high", "Potassium (high)", "50971_high",
"k high"); :func:`parse_lab_output` reads all of them.
"""
from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from importlib import resources

DIRECTIONS = ("low", "high")
UNDOCUMENTED = "no ECG association documented for this lab in lab_associations.csv"


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

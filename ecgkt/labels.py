"""Names for people: label keys (``icd:I489``, ``report:pvc``, ``potassium_high``) -> display names.

One place maps every label key a model can output to what a reader sees:

  icd:<code>        "I48.9 Unspecified atrial fibrillation and atrial flutter" (ICD-10-CM title from the
                    ``simple-icd-10-cm`` package, the code shown beside it with its dot)
  report:<name>     "Premature ventricular complexes" (the machine-report statements of ecgkt.data.mimic)
  <lab>_<low|high>  "Potassium, high"
  anything else     the key itself, underscores as spaces

The table is computed once when a model is saved (:func:`label_table`) and stored in its config as
``labels`` (and ``id2label``/``label2id`` in the usual model-config style), so reading a saved model
needs neither the ICD package nor its 2 s import. :class:`Labels` reads that table back (or computes it for
an old model folder) and knows the parent/child relations of the ICD codes, so a ranked list shows a
parent once: when both ``icd:A41`` and ``icd:A419`` rank among the findings, only the more specific
A41.9 is listed, with its parent named beside it.
"""
from __future__ import annotations

import functools
import re

ICD_PREFIX = "icd:"
REPORT_PREFIX = "report:"

# The machine-report statements (ecgkt.data.mimic.REPORT_STATEMENTS) in words.
REPORT_STATEMENT_NAMES = {
    "sinus_rhythm": "Sinus rhythm",
    "sinus_tachycardia": "Sinus tachycardia",
    "sinus_bradycardia": "Sinus bradycardia",
    "atrial_fibrillation": "Atrial fibrillation",
    "atrial_flutter": "Atrial flutter",
    "av_block_1st": "First-degree AV block",
    "rbbb": "Right bundle branch block",
    "lbbb": "Left bundle branch block",
    "pvc": "Premature ventricular complexes",
    "infarction": "Infarction (any territory, any age)",
    "lvh": "Left ventricular hypertrophy",
    "low_voltage": "Low QRS voltage",
    "long_qt": "Prolonged QT interval",
    "st_elevation": "ST elevation",
    "st_depression": "ST depression",
    "t_wave_abnormality": "T-wave abnormality",
    "pacemaker": "Paced rhythm / pacemaker",
    "poor_data_quality": "Poor data quality / artefact",
}

LAB_NAMES = {"ph": "pH", "nt-probnp": "NT-proBNP", "ck-mb": "CK-MB", "ck": "CK", "crp": "CRP", "alt": "ALT",
             "ast": "AST", "alp": "ALP", "rdw": "RDW", "white blood cells": "white blood cell count"}


@functools.lru_cache(maxsize=1)
def _icd():
    """The ICD-10-CM library, or None when it is not installed (then codes are shown without titles)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the library imports the deprecated pkg_resources
            import simple_icd_10_cm as cm
    except ImportError:
        return None
    return cm


def _dotted(code: str) -> str:
    return code[:3] + "." + code[3:] if len(code) > 3 and "." not in code else code


def icd_title(code: str) -> str | None:
    """The ICD-10-CM title of a code (``"I489"`` or ``"I48.9"``), or None when unknown."""
    cm = _icd()
    if cm is None or not cm.is_valid_item(code):
        return None
    return cm.get_description(code)


def icd_parent(code: str, among) -> str | None:
    """The nearest ancestor of ``code`` (undotted) found in ``among`` (undotted codes), or None."""
    among = set(among)
    cm = _icd()
    if cm is not None and cm.is_valid_item(code):
        for anc in cm.get_ancestors(code):
            anc = anc.replace(".", "")
            if anc in among:
                return anc
        return None
    for n in range(len(code) - 1, 2, -1):  # codes the library does not know: by prefix
        if code[:n] in among:
            return code[:n]
    return None


REPORT_GROUP = "Machine-report statements"
OTHER_GROUP = "Other labels"


def group_of(key: str) -> str:
    """The group a label belongs to in figures: its ICD-10-CM chapter ("Diseases of the circulatory
    system (I00-I99)"), the machine-report statements, or other labels."""
    if key.startswith(REPORT_PREFIX):
        return REPORT_GROUP
    if key.startswith(ICD_PREFIX):
        code = key[len(ICD_PREFIX):].replace(".", "").strip().upper()
        cm = _icd()
        if cm is not None and cm.is_valid_item(code):
            chapter = cm.get_ancestors(code)[-1] if cm.get_ancestors(code) else code
            return cm.get_description(chapter)
        return f"ICD-10 {code[:1]}"
    return OTHER_GROUP


def lab_display(key: str) -> str:
    """``potassium_high`` -> ``Potassium, high``; ``urea nitrogen low`` -> ``Urea nitrogen, low``."""
    from .predict.explanations import parse_lab_output

    lab, direction = parse_lab_output(key)
    name = LAB_NAMES.get(lab, lab)
    name = name if name == "pH" else name[:1].upper() + name[1:]
    return f"{name}, {direction}" if direction else name


def describe(key: str, kind: str = "dx") -> dict:
    """One label's entry: key, name (what a reader sees), code (ICD, dotted) or None, kind."""
    if key.startswith(ICD_PREFIX):
        raw = key[len(ICD_PREFIX):].replace(".", "").strip().upper()
        code = _dotted(raw)
        title = icd_title(raw)
        return dict(key=key, kind="icd", code=code, title=title or "",
                    name=f"{code} {title}" if title else f"ICD-10 {code}")
    if key.startswith(REPORT_PREFIX):
        stmt = key[len(REPORT_PREFIX):]
        title = REPORT_STATEMENT_NAMES.get(stmt) or stmt.replace("_", " ").capitalize()
        return dict(key=key, kind="report", code=None, title=title, name=title)
    if kind == "lab":
        title = lab_display(key)
        return dict(key=key, kind="lab", code=None, title=title, name=title)
    title = re.sub(r"[_]+", " ", key).strip()
    title = title[:1].upper() + title[1:]
    return dict(key=key, kind="other", code=None, title=title, name=title)


def label_table(dx_names, lab_label_names=()) -> dict:
    """The table stored in a model config: {"dx": [entry...], "lab": [entry...]}; ICD entries carry
    ``parent`` (the key of the nearest ancestor among the model's own labels, or None)."""
    dx = [describe(k) for k in dx_names]
    codes = {e["key"][len(ICD_PREFIX):].replace(".", "").upper(): e["key"] for e in dx if e["kind"] == "icd"}
    for e in dx:
        e["parent"] = None
        if e["kind"] == "icd":
            own = e["key"][len(ICD_PREFIX):].replace(".", "").upper()
            parent = icd_parent(own, set(codes) - {own})
            e["parent"] = codes[parent] if parent else None
    return {"dx": dx, "lab": [describe(k, "lab") for k in lab_label_names]}


def config_entries(dx_names, lab_label_names=()) -> dict:
    """What :meth:`ECGKTModel.save_pretrained` merges into config.json: ``labels`` and the id-to-label maps."""
    table = label_table(dx_names, lab_label_names)
    return {"labels": table,
            "id2label": {str(i): e["name"] for i, e in enumerate(table["dx"])},
            "label2id": {e["key"]: i for i, e in enumerate(table["dx"])}}


class Labels:
    """Display names and ICD parents of one model's labels (from its config, or computed)."""

    def __init__(self, table: dict):
        self.dx = {e["key"]: e for e in table.get("dx", [])}
        self.lab = {e["key"]: e for e in table.get("lab", [])}

    @classmethod
    def for_model(cls, model) -> "Labels":
        cfg = getattr(model, "config", {}) or {}
        table = cfg.get("labels")
        dx_names, lab_names = list(getattr(model, "dx_names", [])), list(getattr(model, "lab_label_names", []))
        if not table or [e["key"] for e in table.get("dx", [])] != dx_names \
                or [e["key"] for e in table.get("lab", [])] != lab_names:
            table = label_table(dx_names, lab_names)  # a model saved before the table existed
        return cls(table)

    @classmethod
    def for_names(cls, dx_names, lab_label_names=()) -> "Labels":
        return cls(label_table(dx_names, lab_label_names))

    def name(self, key: str) -> str:
        e = self.dx.get(key) or self.lab.get(key)
        return e["name"] if e else describe(key)["name"]

    def lab_name(self, key: str) -> str:
        e = self.lab.get(key)
        return e["name"] if e else describe(key, "lab")["name"]

    def parent(self, key: str) -> str | None:
        e = self.dx.get(key)
        return e.get("parent") if e else None

    def ancestors(self, key: str) -> list[str]:
        out, p = [], self.parent(key)
        while p and p not in out:
            out.append(p)
            p = self.parent(p)
        return out

    def top(self, ranked, k: int = 5) -> list[tuple[str, float, list[str]]]:
        """The ``k`` most probable findings of ``ranked`` [(key, p)] (most probable first) with each
        parent shown once: a parent whose descendant is listed is folded into the descendant's line (at
        the parent's rank when the parent ranks higher), returned as the third element [(parent key, p)]."""
        shown: list[list] = []  # [key, p, folded parent keys]
        for key, p in ranked:
            ancestors = set(self.ancestors(key))
            held = [s for s in shown if s[0] in ancestors]
            if held:  # a parent is listed already: the more specific child takes its place
                first = held[0]
                first[2] = [(h[0], h[1]) for h in held] + [f for h in held for f in h[2]]
                first[0], first[1] = key, float(p)
                for h in held[1:]:
                    shown.remove(h)
                continue
            child = next((s for s in shown if key in self.ancestors(s[0])), None)
            if child is not None:  # a parent of a finding already listed
                child[2].append((key, float(p)))
                continue
            if len(shown) >= k:
                break
            shown.append([key, float(p), []])
        shown.sort(key=lambda s: -s[1])  # a child that took its parent's place moves to its own rank
        return [tuple(s) for s in shown]

    def line(self, key: str, folded=()) -> str:
        """A finding's display name with its folded parents, e.g. ``A41.9 Sepsis, unspecified organism
        (A41 0.90)``: the parent's code and probability."""
        name = self.name(key)
        parts = [f"{self.dx[f]['code'] or f} {fp:.2f}" for f, fp in folded if f in self.dx]
        return f"{name} ({', '.join(parts)})" if parts else name

"""The final ECG-only model (stage 3 output) and the training-time model wrappers.

``ECGKTModel`` needs only the ECG: it outputs diagnosis probabilities and lab-abnormality probabilities
(the explanation). Saved as a folder: ``config.json`` (architecture, label names, lab names, preprocessing
settings, provenance of the tabular normalisation used in pre-training) + ``model.safetensors``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ECGKTError
from .encoders import ECGEncoder, LinearHead, ProjectionHead, TabularEncoder, init_logit_scale

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1

DEFAULT_PREPROCESSING = dict(highpass=0.5, lowpass=45.0, notch=60.0, target_fs=100, normalize="zscore")


class ECGPreprocessor(nn.Module):
    """Applies ``ecgkt.preprocess`` with the model's saved settings, on the device of the batch."""

    def __init__(self, highpass=0.5, lowpass=45.0, notch=60.0, target_fs=100, normalize="zscore"):
        super().__init__()
        self.settings = dict(highpass=highpass, lowpass=lowpass, notch=notch, target_fs=target_fs,
                             normalize=normalize)

    @torch.no_grad()
    def forward(self, signal, fs, gain=None, baseline=None, return_info=False):
        from .. import preprocess  # the fused op (C++ / CUDA / Triton / reference)

        s = self.settings
        return preprocess(signal, fs, highpass=s["highpass"], lowpass=s["lowpass"], notch=s["notch"],
                          target_fs=s["target_fs"], normalize=s["normalize"], gain=gain, baseline=baseline,
                          return_info=return_info)

    def at_rate(self, fs: float) -> nn.Module:
        """These settings at one input rate as a scriptable / exportable module (ecgkt.ops.preprocess.Preprocess):
        ``(signal [B, leads, T], gain, baseline) -> (out [B, leads, T_out], flags [B, leads])``."""
        from ..ops.preprocess import Preprocess

        return Preprocess(fs, **self.settings)


class ContrastiveModel(nn.Module):
    """Stage 1: ECG encoder + tabular encoder, each with a projection into the joint space."""

    def __init__(self, ecg_encoder: ECGEncoder, n_tab: int, embed_dim: int, tab_hidden: int, tab_layers: int,
                 tab_dropout: float, temperature: float):
        super().__init__()
        self.ecg_encoder = ecg_encoder
        self.ecg_proj = ProjectionHead(ecg_encoder.out_dim, embed_dim)
        self.tab_encoder = TabularEncoder(n_tab, tab_hidden, tab_layers, tab_dropout)
        self.tab_proj = ProjectionHead(self.tab_encoder.out_dim, embed_dim)
        self.logit_scale = init_logit_scale(temperature)
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # used by SigLIP only

    def forward(self, x, tab, tab_mask):
        """The two projections, not normalised: ecgkt.losses L2-normalises them, once, in float32."""
        return self.ecg_proj(self.ecg_encoder(x)), self.tab_proj(self.tab_encoder(tab, tab_mask))


class MultimodalModel(nn.Module):
    """The fully multimodal baseline: ECG and tabular embeddings concatenated, tabular data needed at inference."""

    def __init__(self, ecg_encoder: ECGEncoder, n_tab: int, n_dx: int, tab_hidden: int, tab_layers: int,
                 tab_dropout: float, head_dropout: float, prior=None):
        super().__init__()
        self.ecg_encoder = ecg_encoder
        self.tab_encoder = TabularEncoder(n_tab, tab_hidden, tab_layers, tab_dropout)
        self.dx_head = LinearHead(ecg_encoder.out_dim + self.tab_encoder.out_dim, n_dx, head_dropout, prior)

    def forward(self, x, tab, tab_mask):
        h = torch.cat([self.ecg_encoder(x), self.tab_encoder(tab, tab_mask)], dim=1)
        return self.dx_head(h)


class ECGKTModel(nn.Module):
    """ECG-only model: encoder -> (diagnosis head, lab-abnormality head)."""

    def __init__(self, config: dict):
        super().__init__()
        arch = config["architecture"]
        self.config = config
        self.leads = list(config.get("leads", STANDARD_LEADS))
        self.dx_names = list(config["dx_names"])
        self.lab_label_names = list(config["lab_label_names"])
        self.preprocessor = ECGPreprocessor(**config.get("preprocessing", DEFAULT_PREPROCESSING))
        self.encoder = ECGEncoder(arch["size"], len(self.leads), arch.get("norm", "batch"), arch.get("dropout", 0.0))
        self.lab_head = LinearHead(self.encoder.out_dim, len(self.lab_label_names))
        self.dx_head = LinearHead(self.encoder.out_dim, len(self.dx_names), arch.get("head_dropout", 0.0))

    @classmethod
    def build(cls, *, size="tiny", norm="batch", dropout=0.0, head_dropout=0.0, leads=STANDARD_LEADS,
              dx_names, lab_label_names, lab_tests=(), preprocessing=None, extra=None) -> "ECGKTModel":
        config = dict(
            format_version=FORMAT_VERSION,
            model_type="ecgkt",
            architecture=dict(size=size, norm=norm, dropout=dropout, head_dropout=head_dropout),
            leads=list(leads), dx_names=list(dx_names), lab_label_names=list(lab_label_names),
            lab_tests=list(lab_tests), preprocessing=dict(preprocessing or DEFAULT_PREPROCESSING),
        )
        config.update(extra or {})
        return cls(config)

    def forward(self, x: torch.Tensor) -> dict:
        """x: preprocessed ECGs [B, leads, T] -> embedding, diagnosis logits and lab logits."""
        h = self.encoder(x)
        return dict(embedding=h, dx_logits=self.dx_head(h), lab_logits=self.lab_head(h))

    # --- persistence -------------------------------------------------------------------------
    def save_pretrained(self, directory, provenance: bool = True) -> Path:
        """Writes model.safetensors, config.json and README.md (the model card), each atomically (weights first:
        a folder whose config is new always has matching weights). Refuses non-finite weights; the config is
        strict JSON. The config gains the label table (``labels``, ``id2label``: names for people, see
        ecgkt.labels) and, unless it has one or ``provenance=False``, ``provenance`` (versions, commit,
        hardware: ecgkt.provenance)."""
        from safetensors.torch import save

        from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
        from ..labels import config_entries

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.update(config_entries(self.dx_names, self.lab_label_names))
        if provenance and "provenance" not in self.config:
            from ..provenance import provenance as _provenance

            self.config["provenance"] = _provenance()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ECGKTError(f"{directory}: refusing to save non-finite weights ({', '.join(bad[:3])})")
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
        self.config = jsonable(self.config)  # strict JSON: a NaN metric is stored as null
        atomic_write_json(directory / CONFIG_NAME, self.config)
        atomic_write_text(directory / CARD_NAME, model_card(self.config))
        return directory

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "ECGKTModel":
        """Loads a model folder. A damaged folder (missing or malformed files, a config that does not
        describe the weights, weights that are not finite) is an ECGKTError naming the file."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not directory.is_dir():
            raise ECGKTError(f"{directory}: not an ecgkt model folder (not a folder)")
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ECGKTError(f"{directory}: not an ecgkt model folder ({p.name} is missing)")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ECGKTError(f"{cfg_path}: malformed JSON ({e})") from None
        if not isinstance(config, dict):
            raise ECGKTError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
        if config.get("model_type") != "ecgkt":
            raise ECGKTError(f"{cfg_path}: model_type is {config.get('model_type')!r}, expected 'ecgkt'")
        version = config.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ECGKTError(f"{cfg_path}: format_version {version!r} is not an integer")
        if version > FORMAT_VERSION:
            raise ECGKTError(f"{cfg_path}: format_version {config['format_version']} is newer than this ecgkt "
                             f"supports ({FORMAT_VERSION}); upgrade ecgkt")
        try:
            model = cls(config)
        except KeyError as e:
            raise ECGKTError(f"{cfg_path}: missing key {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ECGKTError(f"{cfg_path}: invalid model configuration ({type(e).__name__}: {e})") from None
        try:
            state = load_file(str(w_path), device=str(map_location))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types for damaged files
            message = " ".join(str(e).split())[:200] or type(e).__name__
            raise ECGKTError(f"{w_path}: damaged weights file ({message})") from None
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ECGKTError(f"{w_path}: weights hold NaN or infinite values ({', '.join(bad[:3])}); the file is "
                             f"damaged")
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shapes that do not match config.json
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
            raise ECGKTError(f"{w_path}: weights do not match config.json ({first})") from None
        if missing or unexpected:
            raise ECGKTError(f"{w_path}: weights do not match config.json (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        return model.eval()

    # --- inference ---------------------------------------------------------------------------
    def lead_index(self, leads) -> list[int]:
        """Positions in `leads` of the model's leads, matched by name case-insensitively."""
        pos = {str(name).strip().lower(): i for i, name in enumerate(leads)}
        missing = [name for name in self.leads if name.lower() not in pos]
        if missing:
            raise ECGKTError(f"the record lacks lead(s) {', '.join(missing)} that the model needs "
                             f"(it has {', '.join(map(str, leads))})")
        return [pos[name.lower()] for name in self.leads]

    @torch.no_grad()
    def predict_proba(self, signal, fs, leads=STANDARD_LEADS, gain=None, baseline=None):
        """signal [leads, T] or [B, leads, T] (mV, or int16 ADC units with gain/baseline) -> (dx, lab, info)."""
        x = torch.as_tensor(np.asarray(signal)) if not torch.is_tensor(signal) else signal
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3:
            raise ECGKTError(f"signal must be [leads, samples] or [records, leads, samples], got shape {tuple(x.shape)}")
        if x.shape[1] != len(leads):
            raise ECGKTError(f"signal has {x.shape[1]} leads but {len(leads)} lead names were given")
        idx = self.lead_index(leads)
        device = next(self.parameters()).device
        x = x[:, idx].to(device)

        def _by_lead(v):
            v = torch.as_tensor(v, dtype=torch.float32)
            return v[..., idx].to(device) if v.dim() >= 1 and v.shape[-1] == len(leads) else v.to(device)

        gain = None if gain is None else _by_lead(gain)
        baseline = None if baseline is None else _by_lead(baseline)
        info = self.preprocessor(x, fs, gain=gain, baseline=baseline, return_info=True)
        out = self(info.signal.float())
        return torch.sigmoid(out["dx_logits"]).cpu(), torch.sigmoid(out["lab_logits"]).cpu(), info

    def predict(self, signal, fs, leads=STANDARD_LEADS, gain=None, baseline=None):
        """One record ``[leads, T]`` (float mV, NaN = missing; or integer ADC units with ``gain`` and
        ``baseline``, scalars or per lead) -> a ``RecordResult`` (ecgkt.predict.inference): diagnoses and lab
        findings by name, most probable first, the repaired and flat leads, warnings. A batch ``[B, leads, T]``
        (``gain``/``baseline`` per lead or ``[B, leads]``) -> a list of them. Leads are matched by name, in any
        order. The same path as ``ecgkt predict`` (windows, repair, the same checks); a record that cannot be
        used raises RecordError. For many records build one ``Predictor`` and reuse it."""
        from ..predict.inference import Predictor
        from ..errors import RecordError
        from ..predict.inputs import Failure, ecg_record_from_array

        arr = signal.detach().cpu().numpy() if torch.is_tensor(signal) else np.asarray(signal)
        if arr.ndim not in (2, 3):
            raise ECGKTError(f"signal must be [leads, samples] or [records, leads, samples], got shape {arr.shape}")
        if arr.shape[-2] != len(leads):
            raise ECGKTError(f"signal has {arr.shape[-2]} leads but {len(leads)} lead names were given")
        self.lead_index(leads)  # every lead the model needs is there

        def per_record(v, b):
            v = None if v is None else (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
            return v[b] if v is not None and arr.ndim == 3 and v.ndim == 2 else v

        was_training = self.training
        try:
            predictor = Predictor(self, device=next(self.parameters()).device)
            if arr.ndim == 2:
                return predictor.predict(arr, fs, leads, gain=per_record(gain, 0), baseline=per_record(baseline, 0))
            names = [f"record {b}" for b in range(arr.shape[0])]
            records = [ecg_record_from_array(arr[b], fs, list(leads), names[b], gain=per_record(gain, b),
                                             baseline=per_record(baseline, b)) for b in range(arr.shape[0])]
            results = predictor.predict_records(records, names)
        finally:
            self.train(was_training)
        for r in results:
            if isinstance(r, Failure):
                raise RecordError(r.name, r.problem)
        return results


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def model_card(config: dict) -> str:
    """The model folder's README.md, in the usual model-card layout, from its config alone."""
    from ..labels import label_table

    labels = config.get("labels") or label_table(config.get("dx_names", []), config.get("lab_label_names", []))
    data = config.get("training_data") or ("the built-in synthetic MIMIC-shaped dataset of `ecgkt synth` "
                                          "(no real patient data)")
    arch = config.get("architecture", {})
    pre = config.get("preprocessing", {})
    prov = config.get("provenance") or {}
    lines = [
        "---",
        "library_name: ecgkt",
        "tags: [ecg, electrocardiogram, multi-label-classification, research]",
        "license: apache-2.0",
        "---",
        "",
        "# ecgkt ECG-only model",
        "",
        "An ECG-only model from the ecgkt pipeline (clinical knowledge transferred into an ECG encoder by "
        "contrastive pre-training against labs, vitals and biometrics): from a 12-lead ECG it predicts "
        f"{len(labels['dx'])} diagnosis labels and {len(labels['lab'])} lab abnormalities, the latter "
        "serving as the explanation of the former.",
        "",
        "**Not a clinical device.** Research use only: it must not inform the diagnosis or treatment of "
        "any person.",
        "",
        "## Intended use",
        "",
        "- Research on ECG representation learning and on explaining ECG predictions through labs.",
        "- Scoring ECG records with `ecgkt predict MODEL RECORD...` (table, JSON, CSV, PNG/HTML reports) "
        "or `ECGKTModel.from_pretrained(MODEL)` in Python.",
        "",
        "## Training data",
        "",
        f"Trained on {data}.",
    ]
    if not config.get("training_data"):
        lines += ["", "Its probabilities say what the generator's rules make visible on the ECG; they carry no "
                      "evidence about real patients."]
    lines += ["", "## Model", "",
              f"- Encoder: 1-D CNN, size `{arch.get('size', '?')}`, normalisation `{arch.get('norm', '?')}`; "
              f"{len(config.get('leads', []))} leads ({', '.join(config.get('leads', []))}).",
              f"- Input: any sampling rate, resampled to {pre.get('target_fs', '?')} Hz; band-pass "
              f"{pre.get('highpass', '?')}-{pre.get('lowpass', '?')} Hz, notch {pre.get('notch', '?')} Hz, "
              f"normalisation `{pre.get('normalize', '?')}`; windows of {config.get('window_s', 10)} s averaged."]
    metrics = config.get("metrics")
    lines += ["", "## Metrics", ""]
    if isinstance(metrics, dict) and metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        for k, v in metrics.items():
            lines.append(f"| {_md(k)} | {v:.4f} |" if isinstance(v, (int, float)) and v == v else
                         f"| {_md(k)} | {_md('n/a' if v is None else v)} |")
    else:
        lines.append("No metrics were stored with this model; see the run's results.md.")
    gate = config.get("lab_validation_auroc")
    lines += ["", "## Explanations", ""]
    if isinstance(gate, dict):
        thr = config.get("explanation_min_auroc", 0.7)
        lines.append(f"A predicted lab abnormality explains a diagnosis only when its ECG association is documented "
                     f"(ecgkt/predict/lab_associations.csv) and its AUROC on this model's validation set is at "
                     f"least {thr:.2f}.")
    else:
        lines.append("This model carries no validation AUROCs for its lab outputs, so `ecgkt predict` shows no "
                     "lab explanations for it.")
    lines += ["", "## Limitations", "",
              "- Probabilities are not calibrated to any real population; label frequencies follow the training data.",
              "- Lab abnormalities are predicted from the ECG, not measured; labs with no ECG signature are not "
              "predictable from an ECG and never explain a diagnosis.",
              "- ICD-10 labels come from the encounters an ECG falls in: they describe the stay, not necessarily "
              "the ECG.",
              "- Records far from the training data (paced rhythms, children, other devices and filters) may be "
              "scored with confidence and still be wrong.",
              "", "## Labels", "", "| # | code | diagnosis | label key |", "| --- | --- | --- | --- |"]
    for i, e in enumerate(labels["dx"]):
        lines.append(f"| {i} | {_md(e.get('code') or '')} | {_md(e.get('title') or e['name'])} | `{_md(e['key'])}` |")
    lines += ["", "| # | lab abnormality | output | validation AUROC |", "| --- | --- | --- | --- |"]
    for i, e in enumerate(labels["lab"]):
        auroc = gate.get(e["key"]) if isinstance(gate, dict) else None
        lines.append(f"| {i} | {_md(e['name'])} | `{_md(e['key'])}` | "
                     f"{'n/a' if auroc is None else f'{auroc:.3f}'} |")
    if prov:
        pk = prov.get("packages", {})
        git = prov.get("git") or {}
        hw = prov.get("hardware") or {}
        lines += ["", "## Provenance", "",
                  f"- Saved {prov.get('date', '?')} by ecgkt {pk.get('ecgkt') or '?'} "
                  f"(git {git.get('commit', 'n/a')[:12]}{' + local changes' if git.get('dirty') else ''}), "
                  f"torch {pk.get('torch') or '?'}, Python {prov.get('python', '?')}.",
                  f"- Hardware: {hw.get('cpu') or '?'}, {hw.get('cpu_count') or '?'} cores"
                  + (f", GPUs: {', '.join(hw['gpus'])}" if hw.get("gpus") else ", no GPU") + ".",
                  f"- Command: `{_md(prov.get('command') or 'n/a')}`."]
    return "\n".join(lines) + "\n"

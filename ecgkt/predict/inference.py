"""Batched inference of a saved ECG-only model on records of any supported layout.

What happens to a record (the model's saved settings decide every step):
1. It is read as 12 int16 leads in standard order with per-lead gain and baseline (``ecgkt.data``);
   the model's own lead order is taken by name.
2. It is cut into windows of the model's window length (``window_s`` in the model config, 10 s by
   default) at the record's own rate: a record up to 1.5 windows long is one window; a longer one gets
   ceil(T / window) windows spread evenly from its start to its end (the last ones may overlap), so no
   sample is dropped.
3. Windows of the same rate and length are batched through ``ecgkt.preprocess`` with the model's
   settings (gain/baseline to mV, invalid-sample repair, filtering, resampling to the model's rate,
   normalisation) on the model's device, then through the network.
4. Per record, window probabilities are averaged; a lead counts as repaired / flat when the
   preprocessing flagged it in any window.
"""
from __future__ import annotations

import concurrent.futures as cf
import copy
import dataclasses
import math
import os
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data.wfdb_io import STANDARD_LEADS, ECGRecord
from ..errors import ECGKTError, RecordError
from .explanations import LabFinding, explain
from .inputs import Failure, Source, read_source

DEFAULT_WINDOW_S = 10.0
MIN_DURATION_S = 1.0
SINGLE_WINDOW_UP_TO = 1.5  # records up to this many windows long are scored whole


@dataclasses.dataclass
class RecordResult:
    """One record's prediction: diagnoses and lab findings (most probable first), lead notes, warnings."""

    record: str
    fs: float
    duration_s: float
    n_windows: int
    diagnoses: list  # [(label, probability)], all labels, most probable first
    labs: list  # [LabFinding], all lab outputs, most probable first
    repaired_leads: list
    flat_leads: list
    warnings: list
    lab_threshold: float = 0.5

    @property
    def explanation(self) -> list[LabFinding]:
        """The lab abnormalities predicted at or above the threshold: the explanation of the diagnoses."""
        return [f for f in self.labs if f.probability >= self.lab_threshold]

    def top_diagnoses(self, k: int = 5) -> list:
        return self.diagnoses[:k]

    def to_dict(self) -> dict:
        return {
            "record": self.record,
            "fs": self.fs,
            "duration_s": round(self.duration_s, 3),
            "windows": self.n_windows,
            "diagnoses": {name: round(float(p), 6) for name, p in self.diagnoses},
            "labs": {f.output: round(f.probability, 6) for f in self.labs},
            "explanation": [f.to_dict() for f in self.explanation],
            "repaired_leads": list(self.repaired_leads),
            "flat_leads": list(self.flat_leads),
            "warnings": list(self.warnings),
        }


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ECGKTError(f"--device: {device!r} is not a device (use cpu, cuda, cuda:1 or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ECGKTError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
    return dev


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with, in each Sequential, every Conv1d -> BatchNorm1d pair folded into
    one convolution, and every AvgPool1d(2) -> 1x1 Conv1d pair (the residual shortcuts) into one Conv1d
    of kernel 2 and stride 2 with half the weights per tap: the same function (to float rounding), with a
    memory pass less per pair (torch's CPU average pooling alone took 13 % of the tiny model's time)."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq._modules.items())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv1d) and isinstance(b, nn.BatchNorm1d) and b.track_running_stats:
                seq._modules[name_a] = fuse_conv_bn_eval(a, b)
                seq._modules[name_b] = nn.Identity()
        children = list(seq._modules.items())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if _is_pool2(a) and _is_pointwise(b):
                seq._modules[name_a] = nn.Identity()
                seq._modules[name_b] = PooledPointwise(b, a.ceil_mode)
    return model


def _is_pool2(m: nn.Module) -> bool:
    return (isinstance(m, nn.AvgPool1d) and tuple(m.kernel_size) == (2,) and tuple(m.stride) == (2,)
            and tuple(m.padding) == (0,))


def _is_pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv1d) and m.kernel_size == (1,) and m.stride == (1,) and m.padding == (0,)
            and m.dilation == (1,) and m.groups == 1 and m.padding_mode == "zeros")


class PooledPointwise(nn.Module):
    """conv1x1(avgpool2(x)) as one convolution of kernel 2 and stride 2: W (x[2t] + x[2t+1]) / 2. With
    ceil_mode and an odd length the pool's last window is x[L-1] alone; replicating that sample gives
    the same (x + x) / 2."""

    def __init__(self, conv: nn.Conv1d, ceil_mode: bool):
        super().__init__()
        self.ceil_mode = ceil_mode
        with torch.no_grad():
            self.weight = nn.Parameter((conv.weight / 2).expand(-1, -1, 2).contiguous(), requires_grad=False)
            self.bias = None if conv.bias is None else nn.Parameter(conv.bias.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ceil_mode and x.shape[-1] % 2:
            x = nn.functional.pad(x, (0, 1), mode="replicate")
        return nn.functional.conv1d(x, self.weight, self.bias, stride=2)


def default_read_workers() -> int:
    """Reader threads that leave the model its torch threads: the cores not in torch's pool, at least 1, at
    most 4. The readers are mostly Python, so one more than that slows the model through the GIL and the
    shared cores (2 cores, 1 torch thread: 1 reader scores 10 % faster than 2)."""
    return max(1, min(4, (os.cpu_count() or 1) - torch.get_num_threads()))


def window_starts(n_samples: int, window: int) -> list[int]:
    """Window start positions covering the whole record (see the module docstring)."""
    if n_samples <= SINGLE_WINDOW_UP_TO * window:
        return [0]
    count = math.ceil(n_samples / window)
    return [int(round(s)) for s in np.linspace(0, n_samples - window, count)]


class Predictor:
    """Scores ECG records with an ``ECGKTModel``; ``batch_size`` windows go through the model at a time."""

    def __init__(self, model, device=None, batch_size: int = 64, window_s: float | None = None,
                 lab_threshold: float = 0.5, read_workers: int | None = None):
        if batch_size < 1:
            raise ECGKTError(f"--batch-size must be at least 1, got {batch_size}")
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.model = model.to(self.device).eval()
        self.network = fuse_for_inference(self.model)
        cfg = getattr(model, "config", {}) or {}
        self.window_s = float(window_s or cfg.get("window_s") or cfg.get("preprocessing", {}).get("window_s")
                              or DEFAULT_WINDOW_S)
        self.batch_size = batch_size
        self.lab_threshold = lab_threshold
        self.read_workers = read_workers if read_workers is None else max(1, read_workers)
        self.lead_order = model.lead_index(STANDARD_LEADS)  # model lead i = standard lead lead_order[i]
        self.model_leads = list(model.leads)

    # --- records in memory -----------------------------------------------------------------------
    def _windows(self, record: ECGRecord):
        if record.n_samples < MIN_DURATION_S * record.fs:
            raise RecordError(record.path, f"record is {record.n_samples / record.fs:.2f} s long; "
                                           f"at least {MIN_DURATION_S:g} s is needed")
        window = int(round(self.window_s * record.fs))
        starts = window_starts(record.n_samples, window)
        length = record.n_samples if len(starts) == 1 else window
        return starts, length

    @torch.no_grad()
    def _preprocess(self, signal: np.ndarray, gain: np.ndarray, baseline: np.ndarray, fs: float):
        dev = self.device
        return self.model.preprocessor(torch.from_numpy(signal).to(dev), fs, gain=torch.from_numpy(gain).to(dev),
                                       baseline=torch.from_numpy(baseline).to(dev), return_info=True)

    @torch.no_grad()
    def _score(self, signal: np.ndarray, gain: np.ndarray, baseline: np.ndarray, fs: float, info=None):
        """signal int16 [W, 12, T] (model lead order) -> (dx probs [W, D], lab probs [W, L], repaired, flat).
        ``info``: the preprocessing of these windows when done ahead (run's reader threads)."""
        if info is None:
            info = self._preprocess(signal, gain, baseline, fs)
        out = self.network(info.signal.float())
        return (torch.sigmoid(out["dx_logits"]).float().cpu().numpy(),
                torch.sigmoid(out["lab_logits"]).float().cpu().numpy(),
                info.repaired.cpu().numpy(), info.flat.cpu().numpy())

    def predict_records(self, records: list[ECGRecord], names: list[str] | None = None) -> list:
        """Results for records already read: a RecordResult, or a Failure for a record that cannot be used."""
        return self._scored(*self._batches(records, names, ahead=False))

    def _batches(self, records, names, ahead: bool):
        """(records, names, results so far, batches): the windows of the records grouped into batches of one
        shape, each (windows [(record index, start)], fs, length, ready). With ``ahead``, ready holds the
        batch gathered and preprocessed (run() does this in its reader threads, off the model's thread);
        otherwise None, and each batch is gathered when scored."""
        names = names or [r.path for r in records]
        groups: dict = {}  # (fs, window length) -> [(record index, window start)]: one batch shape each
        out: list = [None] * len(records)
        for i, rec in enumerate(records):
            try:
                starts, length = self._windows(rec)
            except RecordError as e:
                out[i] = Failure(e.path or names[i], e.problem)
                continue
            for s in starts:
                groups.setdefault((float(rec.fs), length), []).append((i, s))
        batches = []
        for (fs, length), items in groups.items():
            for b in range(0, len(items), self.batch_size):
                chunk = items[b:b + self.batch_size]
                ready = None
                if ahead:
                    sig, gain, base = self._gather(records, chunk, length)
                    try:
                        info = self._preprocess(sig, gain, base, fs)
                    except Exception:  # noqa: BLE001 - raised again, and pinned on its record, when scored
                        info = None
                    ready = (sig, gain, base, info)
                batches.append((chunk, fs, length, ready))
        return records, names, out, batches

    def _scored(self, records, names, out, batches) -> list:
        per_record: dict = {}
        for chunk, fs, length, ready in batches:
            self._score_chunk(records, chunk, fs, length, names, out, per_record, ready)
        for i, windows in per_record.items():
            if out[i] is None:
                try:
                    out[i] = self._result(names[i], records[i], windows)
                except RecordError as e:
                    out[i] = Failure(names[i], e.problem)
        return out

    def _gather(self, records, chunk, length):
        """The windows [(record index, start)] as int16 [W, leads, length] in model lead order, with gains and
        baselines [W, leads]."""
        order = self.lead_order
        # window by window into the batch: np.stack of the lead-ordered copies kept them all alive at once, fresh
        # memory to fault in (six times the time of this loop)
        sig = np.empty((len(chunk), len(order), length), np.result_type(*(records[i].signal for i, _ in chunk)))
        for j, (i, s) in enumerate(chunk):
            sig[j] = records[i].signal[order, s:s + length]
        gain = np.stack([records[i].gain[order] for i, _ in chunk]).astype(np.float32)
        base = np.stack([records[i].baseline[order] for i, _ in chunk]).astype(np.float32)
        return sig, gain, base

    def _score_chunk(self, records, chunk, fs, length, names, out, per_record, ready=None) -> None:
        """Score windows [(record index, start)] of one shape (``ready``: see _batches). When the batch fails, or
        gives a non-finite output for some window, its records are scored one by one: only the record at fault
        fails."""
        sig, gain, base, info = ready or (*self._gather(records, chunk, length), None)
        try:
            dx, lab, rep, flat = self._score(sig, gain, base, fs, info)
            finite = np.isfinite(dx).all(axis=1) & np.isfinite(lab).all(axis=1)
            problem = None if finite.all() else "the model's output is not finite (NaN or infinity)"
        except Exception as e:  # noqa: BLE001 - whatever broke, find the record it belongs to
            problem = _one_line(e)
        if problem is None:
            for j, (i, _) in enumerate(chunk):
                per_record.setdefault(i, []).append((dx[j], lab[j], rep[j], flat[j]))
            return
        record_ids = list(dict.fromkeys(i for i, _ in chunk))
        if len(record_ids) == 1:
            i = record_ids[0]
            out[i] = Failure(names[i], problem)
            return
        for i in record_ids:  # retry record by record
            self._score_chunk(records, [w for w in chunk if w[0] == i], fs, length, names, out, per_record)

    def _result(self, name: str, rec: ECGRecord, windows) -> RecordResult:
        usable = [w for w in windows if not np.all(w[3])]  # a window whose every lead is flat says nothing
        if not usable:
            raise RecordError(name, "no usable signal: after preprocessing every lead is flat or missing")
        dropped = len(windows) - len(usable)
        windows = usable
        if len(windows) == 1:  # the mean of one window is that window (the usual record: no array calls)
            dx, lab, repaired, flat = windows[0]
        else:
            dx = np.mean([w[0] for w in windows], axis=0)
            lab = np.mean([w[1] for w in windows], axis=0)
            repaired = np.any([w[2] for w in windows], axis=0)
            flat = np.any([w[3] for w in windows], axis=0)
        leads = self.model_leads
        warnings = []
        duration = rec.n_samples / rec.fs
        if duration < 0.5 * self.window_s:
            warnings.append(f"record is {duration:.1f} s long; the model was trained on {self.window_s:g} s windows")
        model_fs = self.model.preprocessor.settings.get("target_fs")
        if model_fs and rec.fs < model_fs:
            warnings.append(f"record sampled at {rec.fs:g} Hz, below the model's {model_fs:g} Hz: upsampled, so "
                            f"content above {rec.fs / 2:g} Hz is missing")
        if dropped:
            warnings.append(f"{dropped} window(s) without any signal left out of the average")
        flat_names = [leads[k] for k in np.flatnonzero(flat)]
        if flat_names:
            warnings.append(f"lead(s) {', '.join(flat_names)} flat or without signal: fed to the model as zeros")
        repaired_names = [leads[k] for k in np.flatnonzero(repaired & ~flat)]
        if repaired_names:
            warnings.append(f"invalid samples interpolated in lead(s) {', '.join(repaired_names)}")
        model = self.model
        diagnoses = sorted(zip(model.dx_names, map(float, dx)), key=lambda kv: -kv[1])
        labs = sorted((explain(n, float(p)) for n, p in zip(model.lab_label_names, lab)),
                      key=lambda f: -f.probability)
        return RecordResult(name, float(rec.fs), duration, len(windows), diagnoses, labs, repaired_names,
                            flat_names, warnings, self.lab_threshold)

    def predict(self, signal, fs: float, leads=STANDARD_LEADS, gain=None, baseline=None, name="signal"):
        """One in-memory ECG: ``signal`` [leads, samples] in mV (float) or int16 ADC units with ``gain``."""
        from .inputs import ecg_record_from_array

        rec = ecg_record_from_array(np.asarray(signal), fs, list(leads), name, gain=gain, baseline=baseline)
        result = self.predict_records([rec], [name])[0]
        if isinstance(result, Failure):
            raise RecordError(result.name, result.problem)
        return result

    # --- records on disk -------------------------------------------------------------------------
    def run(self, sources: Iterable[Source], fs: float | None = None, leads=None,
            progress=None) -> Iterator[tuple]:
        """Read and score records: yields (source, ECGRecord, RecordResult) or (source, None, Failure), in
        input order. Reading, batching and preprocessing run in a thread pool one chunk ahead of the model."""
        sources = list(sources)
        chunk = max(self.batch_size, 8)
        chunks = [sources[i:i + chunk] for i in range(0, len(sources), chunk)]
        workers = self.read_workers or default_read_workers()
        with cf.ThreadPoolExecutor(workers) as pool:
            def submit(c):
                # one slice of the chunk per reader (not a task per record: a future and its locks each), then
                # a task that batches and preprocesses the chunk, so that this thread only runs the network
                step = -(-len(c) // workers)
                slices = [pool.submit(_read_many, c[i:i + step], fs, leads) for i in range(0, len(c), step)]
                return pool.submit(self._read_chunk, c, slices)

            pending = submit(chunks[0]) if chunks else None
            for k, current in enumerate(chunks):
                read, batches = pending.result()
                pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else None
                scored = iter(self._scored(*batches))
                for s, r in zip(current, read):
                    if isinstance(r, Failure):
                        yield s, None, r
                    else:
                        res = next(scored)
                        yield (s, None, res) if isinstance(res, Failure) else (s, r, res)
                if progress is not None:
                    progress.update(len(current))

    def _read_chunk(self, sources, slices):
        """(what each source read to, the batches of the records read): a reader thread's task."""
        read = [r for f in slices for r in f.result()]
        ok = [(s, r) for s, r in zip(sources, read) if isinstance(r, ECGRecord)]
        return read, self._batches([r for _, r in ok], [s.name for s, _ in ok], ahead=True)


def _one_line(e: BaseException) -> str:
    if isinstance(e, RecordError):
        return e.problem
    message = " ".join(str(e).split()) or "no details"
    return message if isinstance(e, ECGKTError) else f"cannot score ({type(e).__name__}: {message})"


def _read_many(sources, fs, leads) -> list:
    return [_read_one(s, fs, leads) for s in sources]


def _read_one(source: Source, fs, leads):
    """Read a record; any problem becomes a one-line Failure naming the file."""
    try:
        return read_source(source, fs, leads)
    except RecordError as e:
        return Failure(e.path or source.name, e.problem)
    except ECGKTError as e:
        return Failure(source.name, str(e))
    except Exception as e:  # a reader bug or an odd file must not stop a batch of thousands
        message = " ".join(str(e).split()) or "no details"
        return Failure(source.name, f"cannot read ({type(e).__name__}: {message})")

"""``torch.utils.data.Dataset`` over a signal store.

Each item is a dict::

    signal    int16 [12, T]   raw samples, standard lead order, -32768 = missing
    gain      float32 [12]    adu/mV          baseline  float32 [12]  adu
    tab       float32 [F]     raw clinical values (labs, vitals, biometrics, age, sex), NaN = missing
    tab_mask  bool [F]        True = observed
    lab_y     float32 [2L]    <test>_low, <test>_high for each lab test (0 where unknown)
    lab_mask  bool [2L]       True = label known
    dx_y      float32 [C]     multi-label diagnoses (ICD-10 codes, report statements)
    index, subject_id, study_id   int64 (index = row of the store's cohort table)

Signals are not filtered here: the model runs ``ecgkt.preprocess`` on the batch's device. The
memmap is opened lazily in each worker process, so the dataset can be used with any number of
DataLoader workers and with ``DistributedSampler``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ECGKTError
from .store import ECGStore


class ECGDataset(Dataset):
    """The rows of a store whose subject-level fold is in ``folds`` (all rows when None)."""

    def __init__(self, store_dir, folds=None):
        self.store = ECGStore(store_dir)
        meta = self.store.meta
        cohort = self.store.cohort
        self.fs = self.store.fs
        self.leads = list(self.store.leads)
        self.tab_names = list(meta["tab_names"])
        self.lab_tests = list(meta["lab_tests"])
        self.lab_label_names = list(meta["lab_label_names"])
        self.dx_names = list(meta["dx_names"])
        self.lab_label_selected = np.asarray(meta.get("lab_label_selected", [True] * len(self.lab_label_names)),
                                             dtype=bool)
        all_folds = cohort["fold"].to_numpy(dtype=np.int64)
        if folds is None:
            rows = np.arange(len(cohort))
        else:
            folds = [int(f) for f in np.atleast_1d(folds)]
            rows = np.flatnonzero(np.isin(all_folds, folds))
        self.rows = rows.astype(np.int64)  # cohort position of each item (the item's ``index``)
        self.signal_rows = self.store.rows[rows]  # its row in the signal file
        self.folds = all_folds[rows]
        self.subject_id = cohort["subject_id"].to_numpy(dtype=np.int64)[rows]
        self.study_id = cohort["study_id"].to_numpy(dtype=np.int64)[rows]
        self.tab = _columns(cohort, self.tab_names, rows)
        self.tab_mask = ~np.isnan(self.tab)
        lab = _columns(cohort, self.lab_label_names, rows)
        self.lab_mask = ~np.isnan(lab)
        self.lab_y = np.nan_to_num(lab, nan=0.0)
        self.dx_y = np.nan_to_num(_columns(cohort, self.dx_names, rows), nan=0.0)
        self.gains = self.store.gains[self.signal_rows]
        self.baselines = self.store.baselines[self.signal_rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} rows")
        i = int(i) % len(self)
        return {key: torch.from_numpy(np.array(array[at])) for key, (array, at) in self._sources(i).items()}

    def __getitems__(self, indices) -> "_Items":
        """The items at ``indices``, as the DataLoader fetches a batch (same values as
        ``[self[i] for i in indices]``); see :class:`_Items`."""
        idx = np.array([int(i) for i in indices], dtype=np.int64)
        bad = (idx < -len(self)) | (idx >= len(self))
        if bad.any():
            raise IndexError(f"index {idx[bad][0]} out of range for a dataset of {len(self)} rows")
        return _Items(self, idx % len(self) if len(self) else idx)

    def _sources(self, idx):
        """Each field of item(s) ``idx`` (in range) as (array, positions in it): the one list of fields."""
        return {"signal": (self.store.signals, self.signal_rows[idx]), "gain": (self.gains, idx),
                "baseline": (self.baselines, idx), "tab": (self.tab, idx), "tab_mask": (self.tab_mask, idx),
                "lab_y": (self.lab_y, idx), "lab_mask": (self.lab_mask, idx), "dx_y": (self.dx_y, idx),
                "index": (self.rows, idx), "subject_id": (self.subject_id, idx), "study_id": (self.study_id, idx)}

    def _gather(self, idx: np.ndarray, shared: bool) -> dict:
        """The batch of items ``idx`` (in range), each field gathered with one numpy take."""
        batch = {}
        for key, (array, take) in self._sources(idx).items():
            out = _empty((len(idx), *array.shape[1:]), torch.from_numpy(np.empty(0, array.dtype)).dtype, shared)
            # mode="clip" (the indices are in range) spares the copy through a temporary buffer that
            # mode="raise" makes whenever `out` is given
            np.take(array, take, axis=0, out=out.numpy(), mode="clip")
            batch[key] = out
        return batch


class _Items(Sequence):
    """The items of one ``ECGDataset.__getitems__`` call, fetched lazily. ``collate`` gathers the whole
    batch at once (one numpy take per field, straight into shared memory in a worker) instead of
    building eleven small tensors per item and stacking them; any other collate_fn sees ordinary items
    (dicts of views into such a batch, gathered on first access)."""

    def __init__(self, dataset: ECGDataset, idx: np.ndarray):
        self.dataset, self.idx = dataset, idx
        self._items = None

    def __len__(self) -> int:
        return len(self.idx)

    def batch(self, shared: bool = False) -> dict:
        return self.dataset._gather(self.idx, shared)

    def __getitem__(self, j):
        if self._items is None:
            fields = self.batch()
            self._items = [{k: v[i] for k, v in fields.items()} for i in range(len(self))]
        return self._items[j]


def _empty(shape, dtype, shared: bool) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype)
    if shared:
        out.share_memory_()  # the batch goes to the main process through shared memory anyway
    return out


def _columns(df, names, rows) -> np.ndarray:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ECGKTError(f"store cohort lacks column(s) {', '.join(missing)}; prepare the store again")
    if not names:
        return np.zeros((len(rows), 0), dtype=np.float32)
    return df[names].to_numpy(dtype=np.float32, na_value=np.nan)[rows]


def collate(items: list[dict]) -> dict:
    """Batch a list of items like ``default_collate``, stacking with numpy.

    Same result as ``torch.utils.data.default_collate`` for these items, but without torch's
    parallel concatenation kernel, which on a busy CPU is far slower than a plain copy (see
    docs/data.md). Pass it as ``DataLoader(..., collate_fn=collate)``.
    """
    if not items:
        raise ValueError("collate: empty batch")
    in_worker = torch.utils.data.get_worker_info() is not None
    if isinstance(items, _Items):  # from ECGDataset.__getitems__: gathered field by field
        return items.batch(shared=in_worker)
    batch = {}
    for key, first in items[0].items():
        out = _empty((len(items), *first.shape), first.dtype, in_worker)
        np.stack([item[key].numpy() for item in items], out=out.numpy())
        batch[key] = out
    return batch


"""A tiny in-memory dataset with the ECGDataset item contract, for fast tests of the training code.

Signals carry a weak, learnable trace of the labels (a lab value scales the T-wave-like bump of some leads and
a diagnosis adds a rhythm component), so training has something to find, but nothing here is calibrated."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..models import STANDARD_LEADS


class FakeECGDataset(Dataset):
    def __init__(self, n: int = 48, seed: int = 0, fs: float = 250.0, seconds: float = 2.0, n_dx: int = 3,
                 start_id: int = 0):
        rng = np.random.default_rng(seed)
        self.fs, self.leads = fs, list(STANDARD_LEADS)
        self.lab_tests = ["potassium", "sodium"]
        self.lab_label_names = [f"{t}_{s}" for t in self.lab_tests for s in ("low", "high")]
        self.tab_names = ["potassium", "sodium", "heartrate", "age", "sex"]
        self.dx_names = [f"dx{i}" for i in range(n_dx)]
        T = int(fs * seconds)
        t = np.arange(T) / fs
        k = rng.normal(4.2, 0.6, n)
        na = rng.normal(140, 4, n)
        hr = rng.normal(75, 15, n)
        age = rng.uniform(20, 90, n)
        sex = rng.integers(0, 2, n).astype(np.float32)
        self.tab = np.stack([k, na, hr, age, sex], 1).astype(np.float32)
        self.tab[rng.random(self.tab.shape) < 0.15] = np.nan
        self.tab_mask = ~np.isnan(self.tab)
        lab = np.stack([k < 3.6, k > 5.0, na < 135, na > 145], 1).astype(np.float32)
        self.lab_mask = rng.random(lab.shape) > 0.2
        self.lab_y = lab * self.lab_mask
        logits = np.stack([(k - 4.2) * 2, (hr - 75) / 10, (age - 55) / 20][:n_dx], 1) + rng.normal(0, 1, (n, n_dx))
        self.dx_y = (logits > 0.5).astype(np.float32)
        beat = np.sin(2 * np.pi * (hr[:, None] / 60) * t[None]) ** 15
        sig = 0.8 * beat[:, None, :] * (1 + 0.3 * (k[:, None, None] - 4.2)) * rng.uniform(0.5, 1.5, (n, 12, 1))
        sig = sig + rng.normal(0, 0.05, (n, 12, T))
        self.gain = np.full((n, 12), 200.0, np.float32)
        self.baseline = np.zeros((n, 12), np.float32)
        self.signal = np.clip(np.round(sig * 200), -32767, 32767).astype(np.int16)
        self.subject_id = np.arange(n, dtype=np.int64) + start_id
        self.study_id = self.subject_id * 10 + 1

    def __len__(self):
        return len(self.signal)

    def __getitem__(self, i):
        return dict(signal=torch.from_numpy(self.signal[i]), gain=torch.from_numpy(self.gain[i]),
                    baseline=torch.from_numpy(self.baseline[i]), tab=torch.from_numpy(self.tab[i]),
                    tab_mask=torch.from_numpy(self.tab_mask[i]), lab_y=torch.from_numpy(self.lab_y[i]),
                    lab_mask=torch.from_numpy(self.lab_mask[i]), dx_y=torch.from_numpy(self.dx_y[i]),
                    index=torch.tensor(i), subject_id=torch.tensor(self.subject_id[i]),
                    study_id=torch.tensor(self.study_id[i]))


def fake_splits(n_train: int = 64, n_val: int = 32, n_test: int = 32, seed: int = 0, **kw):
    return (FakeECGDataset(n_train, seed, start_id=0, **kw), FakeECGDataset(n_val, seed + 1, start_id=10_000, **kw),
            FakeECGDataset(n_test, seed + 2, start_id=20_000, **kw))

"""Shared helpers for the predict / report / export tests: a tiny random model and small records."""
import os
import subprocess
import sys

import numpy as np
import torch

DX_NAMES = ["atrial fibrillation", "left bundle branch block", "sinus tachycardia", "left ventricular hypertrophy"]
LAB_NAMES = ["potassium_low", "potassium_high", "calcium_low", "sodium_high", "troponin_high"]


def make_model(seed: int = 0):
    from ecgkt.models import ECGKTModel

    torch.manual_seed(seed)
    model = ECGKTModel.build(size="tiny", dx_names=DX_NAMES, lab_label_names=LAB_NAMES)
    # give the randomly initialised network non-trivial batch-norm statistics and head outputs
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def synthetic_ecg(seconds: float, fs: float, seed: int = 0) -> np.ndarray:
    """[12, T] mV: a crude beat train on every lead, different per lead, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fs))) / fs
    phase = (t * 1.2) % 1.0
    beat = 1.2 * np.exp(-((phase - 0.3) / 0.012) ** 2) + 0.25 * np.exp(-((phase - 0.6) / 0.05) ** 2)
    amps = rng.uniform(-1.0, 1.0, 12)
    return (amps[:, None] * beat[None, :] + 0.02 * rng.standard_normal((12, t.size))).astype(np.float32)


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "ecgkt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)

"""Stage-1 training throughput (ECG/s): ecgkt against the same model trained as a user would without it.

Same for every contender: the store's records (10 s, 500 Hz int16), the ContrastiveModel of the default
configuration (tiny ECG encoder + tabular encoder, joint space 64), batch 128, 5 s random windows at 100 Hz,
AdamW, torch threads of the default configuration. A round is a few optimiser steps (sizes.train_steps_per_round),
each pulling its batch from the DataLoader (so data time counts).

  ecgkt                  ECGDataset + DataLoader (the config's workers) -> ecgkt.preprocess on the batch
                         (the engine's Preprocessed, uncached: the first epoch; one batch ahead in a thread,
                         as the engine's preprocess_ahead) -> ecgkt.losses.clip_loss
  ecgkt-cached           the same with the preprocessing cache warm (epochs 2.. of `ecgkt pipeline`)
  scipy+open_clip        per-item scipy preprocessing (band-pass, notch, resample_poly, z-score) in 2 DataLoader
                         workers, reading the same store rows, + open_clip's ClipLoss
  neurokit2+open_clip    the same with neurokit2's ecg_clean instead of scipy's filters
  wfdb+scipy+open_clip   the same as scipy+open_clip, reading the raw WFDB records with wfdb.rdrecord
"""
import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from _bench import cuda_or_skip, measure, need, neurokit2_clean, open_clip_losses, scipy_clean

PEER_WORKERS = 2
PROVIDERS = ["ecgkt", "ecgkt-cached", "scipy+open_clip", "neurokit2+open_clip", "wfdb+scipy+open_clip"]


class PeerDataset(Dataset):
    """What a user writes: read one record, preprocess it with scipy/neurokit2, crop a random window."""

    def __init__(self, ds, cfg, clean: str, read: str):
        self.ds, self.clean, self.read = ds, clean, read
        pp = cfg.preprocessing
        self.settings = dict(target_fs=pp.target_fs, notch=pp.notch)
        self.lowpass, self.highpass = pp.lowpass, pp.highpass
        self.crop = int(round(pp.train_crop_seconds * pp.target_fs))
        self.paths = [str(p) for p in ds.store.cohort["record"].to_numpy()[ds.rows]]

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        fs = float(self.ds.fs)
        if self.read == "wfdb":
            import wfdb

            r = wfdb.rdrecord(self.paths[i])
            names = [n.lower() for n in r.sig_name]
            mv = r.p_signal.T[[names.index(n.lower()) for n in self.ds.leads]]
        else:
            raw = np.asarray(self.ds.store.signals[self.ds.signal_rows[i]], dtype=np.float32)
            mv = (raw - self.ds.baselines[i][:, None]) / self.ds.gains[i][:, None]
        if self.clean == "neurokit2":
            x = neurokit2_clean(mv[None], fs, **self.settings)[0]
        else:
            x = scipy_clean(mv[None], fs, highpass=self.highpass, lowpass=self.lowpass, **self.settings)[0]
        start = np.random.randint(0, x.shape[-1] - self.crop + 1)
        return {"signal": torch.from_numpy(np.ascontiguousarray(x[:, start:start + self.crop])),
                "tab": torch.from_numpy(self.ds.tab[i]), "tab_mask": torch.from_numpy(self.ds.tab_mask[i])}


def _model(cfg, ds, device):
    from ecgkt.models import ContrastiveModel, ECGEncoder

    m, p = cfg.model, cfg.pretrain
    torch.manual_seed(0)
    model = ContrastiveModel(ECGEncoder(m.size, 12, m.norm, m.dropout), len(ds.tab_names), m.embed_dim,
                             m.tab_hidden, m.tab_layers, m.tab_dropout, p.temperature)
    model.tab_encoder.normalizer.fit(torch.as_tensor(ds.tab), torch.as_tensor(ds.tab_mask))
    return model.to(device)


def _trainer(provider: str, store, device):
    """-> (one_step(), description); one_step pulls a batch and makes one optimiser step."""
    from ecgkt import losses
    from ecgkt.data import ECGDataset, collate
    from ecgkt.models import ECGPreprocessor
    from ecgkt.train import config
    from ecgkt.train.engine import Preprocessed, preprocess_ahead

    cfg = config.resolve()
    p = cfg.pretrain
    ds = ECGDataset(store)
    if len(ds) < p.batch_size:
        pytest.skip(f"the store has {len(ds)} records, fewer than one batch of {p.batch_size}")
    model = _model(cfg, ds, device)
    optim = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                    enabled=False)

    def scale():
        return model.logit_scale.clamp(max=float(np.log(100.0))).exp()

    if provider.startswith("ecgkt"):
        settings = cfg.preprocessing.filter_settings()
        prep = Preprocessed(ECGPreprocessor(**settings), float(ds.fs), cache=provider.startswith("ecgkt-cached"),
                            crop_seconds=cfg.preprocessing.train_crop_seconds)
        workers = cfg.data.num_workers
        loader = DataLoader(ds, batch_size=p.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                            collate_fn=collate, persistent_workers=workers > 0)
        if provider.startswith("ecgkt-cached"):  # fill the cache as epoch 1 does (not timed)
            for batch in DataLoader(ds, batch_size=p.batch_size, collate_fn=collate):
                prep(batch, device)
        # the engine's loop: each batch preprocessed one batch ahead (ecgkt.train.engine.fit)
        batches = itertools.chain.from_iterable(preprocess_ahead(loader, prep, device) for _ in itertools.count())

        def step():
            batch = next(batches)
            with amp:
                e, t = model(prep.train_view(batch, device), batch["tab"].to(device), batch["tab_mask"].to(device))
                loss = losses.clip_loss(e.float(), t.float(), scale())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        return step

    clip_cls, _ = open_clip_losses()
    peer_loss = clip_cls()
    clean = "neurokit2" if provider.startswith("neurokit2") else "scipy"
    if clean == "neurokit2":
        need("neurokit2")
    read = "wfdb" if provider.startswith("wfdb") else "store"
    if read == "wfdb":
        need("wfdb")
    loader = DataLoader(PeerDataset(ds, cfg, clean, read), batch_size=p.batch_size, shuffle=True, drop_last=True,
                        num_workers=PEER_WORKERS, persistent_workers=True,
                        worker_init_fn=lambda w: (torch.set_num_threads(1), np.random.seed(w)))
    batches = itertools.chain.from_iterable(itertools.repeat(loader))

    def step():
        batch = next(batches)
        with amp:
            e, t = model(batch["signal"].to(device), batch["tab"].to(device), batch["tab_mask"].to(device))
            loss = peer_loss(e.float(), t.float(), scale())  # open_clip takes normalised features: these are
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    return step


def _run(benchmark, sizes, step, provider, device, x_name="batch"):
    from ecgkt.train import config

    cfg = config.resolve()
    batch = cfg.pretrain.batch_size

    per_round = sizes.train_steps_per_round

    def fn():
        for _ in range(per_round):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    measure(benchmark, fn, kernel="train_stage1", provider=provider, x=batch, x_name=x_name,
            items=batch * per_round, unit="ECG/s", rounds=max(2, sizes.train_steps // per_round),
            note=f"{per_round} steps per round")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_stage1(benchmark, sizes, store, provider):
    from ecgkt.train import config

    threads = config.resolve().runtime.threads or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the configuration's CPU threads, for every contender
    try:
        _run(benchmark, sizes, _trainer(provider, store, torch.device("cpu")), provider, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["ecgkt-cuda", "scipy+open_clip-cuda"])
def test_train_stage1_gpu(benchmark, sizes, store, provider):
    device = cuda_or_skip()
    _run(benchmark, sizes, _trainer(provider.replace("-cuda", ""), store, device), provider, device)

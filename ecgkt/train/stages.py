"""The jobs of the experiment (ecgkt/train/plan.py lists them): stage 1 for each pre-training arm (ecgkt,
the permuted-pairs control, the ECG-only SSL baseline), stage 2 (lab abnormalities), fine-tuning of every arm
at every label fraction, the multimodal reference, and the linear probes.

Every job runs through `_run_stage`: when its folder already holds `result.pt`, the job is done and its
result is loaded instead of retrained; otherwise it trains (resuming from its own checkpoint) and writes
`result.pt` atomically. A killed pipeline therefore resumes at the job and epoch where it stopped.
Fine-tuning and probe results carry their validation and test probabilities, so evaluation needs no model."""
from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ECGKTError
from ..models import ContrastiveModel, ECGEncoder, ECGKTModel, ECGPreprocessor, ECGViewsModel, MultimodalModel
from . import checkpoint, plan
from .config import Config, Finetune, Labs, Pretrain
from .distributed import DistEnv, barrier
from .engine import (InjectedFailure, Preprocessed, Schedule, Task, fit, fixed_step_loader, make_loader,
                     param_groups)

STAGE_SEEDS = dict(pretrain=1, labs=2, finetune=3, signal_only=4, multimodal=5, control_pretrain=6,
                   control_labs=7, control_finetune=8, final_labs=9, ssl_pretrain=10, ssl_finetune=11)


class RowSubset(Dataset):
    """Some rows of a dataset, with the same in-memory table attributes (tab, dx_y, ...) sliced alike."""

    def __init__(self, base, idx):
        self.base, self.idx = base, np.asarray(idx, dtype=np.int64)
        for attr in ("fs", "leads", "tab_names", "lab_tests", "lab_label_names", "dx_names"):
            setattr(self, attr, getattr(base, attr))
        for attr in _TABLE_KEYS + ("subject_id",):
            if hasattr(base, attr):
                setattr(self, attr, np.asarray(getattr(base, attr))[self.idx])

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.base[int(self.idx[i])]


@dataclasses.dataclass
class Context:
    """Everything a job needs: resolved config, process group, the three splits and shared caches."""

    cfg: Config
    env: DistEnv
    run_dir: Path
    train: Dataset
    val: Dataset
    test: Dataset
    prep: Preprocessed
    fs: float
    leads: list
    tab_names: list
    lab_tests: list
    lab_label_names: list
    dx_names: list
    store_dir: Path | None = None
    progress: bool = True
    _tables: dict = dataclasses.field(default_factory=dict)
    _cache: dict = dataclasses.field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def seed(self, name: str) -> int:
        own = STAGE_SEEDS.get(name, 100 + zlib.crc32(name.encode()) % 900)
        return int(self.cfg.seed) * 1000 + own

    def tables(self, split: str) -> dict:
        """The non-signal arrays of a split (tab, tab_mask, lab_y, lab_mask, dx_y, study_id), in item order."""
        if split not in self._tables:
            self._tables[split] = collect_tables(getattr(self, split))
        return self._tables[split]

    # --- cohorts (docs/protocol.md) ------------------------------------------------------------
    def flags(self, split: str) -> dict:
        """Per item of a split: `linked` (inside a hospital or ED stay: diagnosis labels exist) and `ed`
        (inside an ED stay). Datasets without that information count every ECG as linked and ED."""
        key = ("flags", split)
        if key not in self._cache:
            ds = getattr(self, split)
            n = len(ds)
            linked, ed = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
            cohort = getattr(getattr(ds, "store", None), "cohort", None)
            if cohort is not None and "dx_linked" in cohort.columns:
                linked = cohort["dx_linked"].to_numpy(dtype=bool)[ds.rows]
                ed = (cohort["dx_ed_linked"].to_numpy(dtype=bool)[ds.rows] if "dx_ed_linked" in cohort.columns
                      else linked.copy())
            if self.cfg.protocol.dx_cohort == "all":
                linked = np.ones(n, dtype=bool)
            self._cache[key] = dict(linked=linked, ed=ed & linked)
        return self._cache[key]

    def dx_rows(self, split: str) -> np.ndarray:
        """Items of a split in the diagnosis cohort (stay-linked ECGs)."""
        return np.flatnonzero(self.flags(split)["linked"])

    def dx_split(self, split: str) -> Dataset:
        key = ("dx_split", split)
        if key not in self._cache:
            self._cache[key] = RowSubset(getattr(self, split), self.dx_rows(split))
        return self._cache[key]

    def labelled_rows(self, fraction: float, replicate: int) -> np.ndarray:
        """Train items whose diagnosis labels a fraction keeps: nested, subject-level, seeded subsets.
        Draw r is one permutation of the linked training subjects (seed 1000 + r); fraction f keeps the
        first ceil(f * n) subjects of it, with all their linked ECGs."""
        rows = self.dx_rows("train")
        if fraction >= 1.0:
            return rows
        subjects = np.asarray(self.train.subject_id)[rows]
        uniq = np.unique(subjects)
        order = np.random.default_rng(1000 + int(replicate)).permutation(uniq)
        keep = order[: max(1, math.ceil(fraction * len(uniq)))]
        return rows[np.isin(subjects, keep)]

    def labelled(self, fraction: float, replicate: int) -> Dataset:
        return RowSubset(self.train, self.labelled_rows(fraction, replicate))


def build_context(cfg: Config, env: DistEnv, run_dir, store_dir) -> Context:
    from ..data import ECGDataset

    d = cfg.data
    try:
        train = ECGDataset(store_dir, folds=d.train_folds)
        val = ECGDataset(store_dir, folds=d.val_folds)
        test = ECGDataset(store_dir, folds=d.test_folds)
    except FileNotFoundError as e:
        raise ECGKTError(f"{store_dir}: not a prepared ecgkt signal store ({e})") from None
    ctx = context_from_datasets(cfg, env, run_dir, train, val, test)
    ctx.store_dir = Path(store_dir)
    return ctx


def context_from_datasets(cfg, env, run_dir, train, val, test) -> Context:
    for split, ds in (("train", train), ("val", val), ("test", test)):
        if len(ds) == 0:
            raise ECGKTError(f"the {split} split (folds {getattr(cfg.data, split + '_folds')}) holds no ECGs")
    prep = Preprocessed(ECGPreprocessor(**cfg.preprocessing.filter_settings()), float(train.fs), cfg.preprocessing.cache,
                        cfg.preprocessing.train_crop_seconds)
    return Context(cfg=cfg, env=env, run_dir=Path(run_dir), train=train, val=val, test=test, prep=prep,
                   fs=float(train.fs), leads=list(train.leads), tab_names=list(train.tab_names),
                   lab_tests=list(train.lab_tests), lab_label_names=list(train.lab_label_names),
                   dx_names=list(train.dx_names))


_TABLE_KEYS = ("tab", "tab_mask", "lab_y", "lab_mask", "dx_y", "study_id")


def collect_tables(dataset) -> dict:
    """Stacks the non-signal fields of every item (used to fit tabular normalisation on the training fold
    and for the permuted control)."""
    keys = _TABLE_KEYS + (("subject_id",) if hasattr(dataset, "subject_id") else ())
    if all(hasattr(dataset, k) for k in _TABLE_KEYS):  # ECGDataset keeps them in memory
        return {k: torch.as_tensor(np.asarray(getattr(dataset, k))) for k in keys}
    out = {k: [] for k in _TABLE_KEYS + ("subject_id",)}
    for batch in DataLoader(dataset, batch_size=256, shuffle=False):
        for k in out:
            out[k].append(torch.as_tensor(batch[k]))
    return {k: torch.cat(v) for k, v in out.items()}


class PermutedTabular(Dataset):
    """The control's training set: each ECG paired with another patient's tabular row (pairing destroyed,
    marginal distribution of the tabular data kept)."""

    def __init__(self, base, tab: torch.Tensor, tab_mask: torch.Tensor, seed: int):
        self.base, self.tab, self.tab_mask = base, tab, tab_mask
        g = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(base), generator=g)
        for attr in ("fs", "leads", "tab_names", "lab_tests", "lab_label_names", "dx_names"):
            setattr(self, attr, getattr(base, attr))

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        j = int(self.perm[i])
        item["tab"], item["tab_mask"] = self.tab[j], self.tab_mask[j]
        return item


# --------------------------------------------------------------------------------------------------
def _run_stage(ctx: Context, name: str, train_fn):
    result_path = ctx.stage_dir(name) / "result.pt"
    if result_path.is_file():
        return checkpoint.load(result_path)
    ctx.stage_dir(name).mkdir(parents=True, exist_ok=True)
    result = train_fn()
    if ctx.env.is_main:
        checkpoint.save(result, result_path)
    barrier(ctx.env)
    if ctx.cfg.runtime.fail_after == name:
        raise InjectedFailure(f"injected failure after stage {name} (runtime.fail_after)")
    return result


def new_encoder(cfg) -> ECGEncoder:
    m = cfg.model
    return ECGEncoder(m.size, 12, m.norm, m.dropout)


def _maybe_compile(cfg, module: nn.Module) -> None:
    if cfg.runtime.compile:
        module.compile()


def _schedule(ctx: Context, name: str, stage_cfg: Pretrain | Labs | Finetune, epochs: int | None = None) -> Schedule:
    rt = ctx.cfg.runtime
    return Schedule(stage_dir=ctx.stage_dir(name), env=ctx.env,
                    epochs=int(stage_cfg.epochs if epochs is None else epochs),
                    warmup_epochs=float(stage_cfg.warmup_epochs), seed=ctx.seed(name), amp=rt.amp,
                    fail_after=rt.fail_after, log_every=rt.log_every, progress=ctx.progress)


def contrastive_loss(cfg: Config, env: DistEnv):
    """The stage-1 loss from ecgkt.losses -> (loss(e, t, scale, bias), uses_bias); distributed across ranks
    (gather | ring, `pretrain.distributed_loss`) under torchrun."""
    from .. import losses

    p = cfg.pretrain
    mode = p.distributed_loss if env.distributed else None
    if p.loss == "clip":
        return (lambda e, t, scale, bias: losses.clip_loss(e, t, scale, distributed=mode)), False
    if p.loss == "siglip":
        return (lambda e, t, scale, bias: losses.siglip_loss(e, t, scale, bias, distributed=mode)), True
    raise ECGKTError(f"pretrain.loss must be 'clip' or 'siglip', got {p.loss!r}")


def _scale(model) -> torch.Tensor:
    return model.logit_scale.clamp(max=float(np.log(100.0))).exp()


def pretrain(ctx: Context, name: str = "pretrain", permute: bool = False) -> dict:
    """Stage 1: joint-embedding pre-training of the ECG encoder against the tabular encoder, on the stage-1
    pool (every train-fold ECG; validation and test subjects never enter). permute=True is the control."""

    def train():
        cfg, env, p, m = ctx.cfg, ctx.env, ctx.cfg.pretrain, ctx.cfg.model
        torch.manual_seed(ctx.seed(name))
        tabs = ctx.tables("train")
        model = ContrastiveModel(new_encoder(cfg), len(ctx.tab_names), m.embed_dim, m.tab_hidden,
                                 m.tab_layers, m.tab_dropout, p.temperature)
        model.tab_encoder.normalizer.fit(tabs["tab"], tabs["tab_mask"])  # training fold only
        loss_mod, uses_bias = contrastive_loss(cfg, env)
        model.logit_bias.requires_grad_(uses_bias)
        model.to(env.device)
        _maybe_compile(cfg, model.ecg_encoder)
        dataset = PermutedTabular(ctx.train, tabs["tab"], tabs["tab_mask"], ctx.seed(name)) if permute else ctx.train
        loader = make_loader(dataset, p.batch_size, env, seed=ctx.seed(name), shuffle=True,
                             num_workers=cfg.data.num_workers)

        def pair_loss(net, batch, loss_fn, train=True):
            x = ctx.prep.train_view(batch, env.device) if train else ctx.prep(batch, env.device)
            e, t = net(x, batch["tab"].to(env.device), batch["tab_mask"].to(env.device))
            return loss_fn(e.float(), t.float(), _scale(model), model.logit_bias)

        history = _fit_contrastive(ctx, name, model, loader, pair_loss, loss_mod)
        return dict(state=_cpu_state(model), history=history, permuted=permute)

    return _run_stage(ctx, name, train)


def ssl_pretrain(ctx: Context, name: str = "ssl_pretrain") -> dict:
    """The ECG-only self-supervised baseline: the same stage-1 recipe (pool, epochs, batch, learning rate,
    fused loss), with a second augmented view of the same ECG in place of its tabular row."""
    from ..models.ssl import augment

    def train():
        cfg, env, p, m = ctx.cfg, ctx.env, ctx.cfg.pretrain, ctx.cfg.model
        torch.manual_seed(ctx.seed(name))
        model = ECGViewsModel(new_encoder(cfg), m.embed_dim, p.temperature)
        loss_mod, uses_bias = contrastive_loss(cfg, env)
        model.logit_bias.requires_grad_(uses_bias)
        model.to(env.device)
        _maybe_compile(cfg, model.ecg_encoder)
        loader = make_loader(ctx.train, p.batch_size, env, seed=ctx.seed(name), shuffle=True,
                             num_workers=cfg.data.num_workers)

        def views_loss(net, batch, loss_fn, train=True):
            if train:
                a = augment(ctx.prep.train_view(batch, env.device, view=0))
                b = augment(ctx.prep.train_view(batch, env.device, view=1))
            else:  # deterministic validation views: the two halves of the record
                x = ctx.prep(batch, env.device)
                half = x.shape[-1] // 2
                a, b = x[..., :half], x[..., half: 2 * half]
            e1, e2 = net(a, b)
            return loss_fn(e1.float(), e2.float(), _scale(model), model.logit_bias)

        history = _fit_contrastive(ctx, name, model, loader, views_loss, loss_mod)
        return dict(state=_cpu_state(model), history=history)

    return _run_stage(ctx, name, train)


def _fit_contrastive(ctx: Context, name: str, model, loader, batch_loss, loss_mod) -> list[dict]:
    """Stage-1 training of any pre-training arm: batch_loss(net, batch, loss_fn, train) on the pool, the
    best epoch by the single-process validation loss kept."""
    p = ctx.cfg.pretrain
    local_loss = contrastive_loss(ctx.cfg, DistEnv())[0]
    validate = _pair_validation(ctx, p.batch_size, lambda mdl, b: batch_loss(mdl, b, local_loss, train=False))
    task = Task(name, model, param_groups([(model, p.lr)], p.weight_decay),
                loss=lambda net, b: batch_loss(net, b, loss_mod), validate=validate, select="val_loss",
                minimize=True, prep=ctx.prep)
    return fit(task, loader, _schedule(ctx, name, p))


def _pair_validation(ctx: Context, batch_size: int, batch_loss):
    """Stage-1 validation: the single-process loss on validation-fold pairs (comparable across arms)."""

    @torch.no_grad()
    def validate(mdl):
        total, n = 0.0, 0
        for batch in make_loader(ctx.val, batch_size, ctx.env, seed=0, shuffle=False):
            if len(batch["study_id"]) < 2:
                continue
            total += float(batch_loss(mdl, batch)) * len(batch["study_id"])
            n += len(batch["study_id"])
        return dict(val_loss=total / max(n, 1))

    return validate


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _encoder_state(state: dict, prefix: str = "ecg_encoder.") -> dict:
    """The ECG encoder's weights inside a stage-1 (prefix "ecg_encoder.") or ECGKTModel ("encoder.") state."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def arm_encoder_state(ctx: Context, arm: str, pretrain_seed: int = 0) -> dict | None:
    """The initial encoder of a fine-tuning or probe arm: its stage-1 encoder (run `pretrain_seed` of that
    arm); ecgkt's through stage 2 (unchanged there unless labs.encoder_lr > 0); None for the arms that start
    from random weights."""
    if arm == "ecgkt":
        return checkpoint.load(ctx.stage_dir(plan.labs_name(pretrain_seed)) / "result.pt")["encoder"]
    if arm in plan.PRETRAIN_STAGE:
        state = checkpoint.load(ctx.stage_dir(plan.stage1_name(arm, pretrain_seed)) / "result.pt")["state"]
        return _encoder_state(state)
    return None


def new_ecgkt_model(ctx: Context, encoder_state: dict | None = None) -> ECGKTModel:
    m = ctx.cfg.model
    model = ECGKTModel.build(size=m.size, norm=m.norm, dropout=m.dropout, head_dropout=m.head_dropout,
                             leads=ctx.leads, dx_names=ctx.dx_names, lab_label_names=ctx.lab_label_names,
                             lab_tests=ctx.lab_tests, preprocessing=ctx.cfg.preprocessing.filter_settings())
    if encoder_state is not None:
        model.encoder.load_state_dict(encoder_state)
    return model


def masked_bce(logits, target, mask):
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


@torch.no_grad()
def embed(ctx: Context, encoder: nn.Module, dataset) -> torch.Tensor:
    encoder.eval()
    out = []
    for batch in make_loader(dataset, 256, ctx.env, seed=0, shuffle=False, num_workers=ctx.cfg.data.num_workers):
        out.append(encoder(ctx.prep(batch, ctx.env.device)).float().cpu())
    return torch.cat(out)


class _Rows(Dataset):
    """Precomputed embeddings + labels as a dataset (stage 2 with a frozen encoder)."""

    def __init__(self, **arrays):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


def train_labs(ctx: Context, encoder_state: dict, name: str = "labs") -> dict:
    """Stage 2: lab abnormalities (low/high per test, masked where missing) from the ECG embedding."""

    def train():
        cfg, env, s = ctx.cfg, ctx.env, ctx.cfg.labs
        torch.manual_seed(ctx.seed(name))
        model = new_ecgkt_model(ctx, encoder_state).to(env.device)
        frozen = float(s.encoder_lr) == 0.0
        val_tab = ctx.tables("val")
        model.dx_head.requires_grad_(False)
        if frozen:
            # the encoder never changes: embed each ECG once, then train the head on the embeddings
            train_tab = ctx.tables("train")
            train_rows = _Rows(h=embed(ctx, model.encoder, ctx.train), lab_y=train_tab["lab_y"],
                               lab_mask=train_tab["lab_mask"])
            val_h = embed(ctx, model.encoder, ctx.val)
            model.encoder.requires_grad_(False)
            loader = make_loader(train_rows, s.batch_size, DistEnv(device=env.device), seed=ctx.seed(name),
                                 shuffle=True)
            groups = param_groups([(model.lab_head, s.lr)], s.weight_decay)

            def loss_fn(net, b):
                return masked_bce(net.lab_head(b["h"].to(env.device)), b["lab_y"].to(env.device),
                                  b["lab_mask"].to(env.device))

            def val_logits(mdl):
                return mdl.lab_head(val_h.to(env.device))
        else:
            loader = make_loader(ctx.train, s.batch_size, env, seed=ctx.seed(name), shuffle=True,
                                 num_workers=cfg.data.num_workers)
            groups = param_groups([(model.encoder, s.encoder_lr), (model.lab_head, s.lr)], s.weight_decay)

            def loss_fn(net, b):
                out = net(ctx.prep.train_view(b, env.device))
                return masked_bce(out["lab_logits"], b["lab_y"].to(env.device), b["lab_mask"].to(env.device))

            def val_logits(mdl):
                return torch.cat([mdl(ctx.prep(b, env.device))["lab_logits"].float()
                                  for b in make_loader(ctx.val, 256, env, seed=0, shuffle=False)])

        @torch.no_grad()
        def validate(mdl):
            from ..evaluate.metrics import masked_macro_auroc

            logits = val_logits(mdl).float().cpu().numpy()
            return dict(val_lab_macro_auroc=masked_macro_auroc(val_tab["lab_y"].numpy(), logits,
                                                               val_tab["lab_mask"].numpy()))

        def keep_encoder_eval(mdl):
            if frozen:
                mdl.encoder.eval()

        task = Task(name, model, groups, loss=loss_fn, validate=validate, select="val_lab_macro_auroc",
                    train_mode=keep_encoder_eval, ddp=not frozen, prep=None if frozen else ctx.prep)
        history = fit(task, loader, _schedule(ctx, name, s))
        return dict(encoder=_cpu_state(model.encoder), lab_head=_cpu_state(model.lab_head), history=history)

    return _run_stage(ctx, name, train)


@torch.no_grad()
def predict_split(ctx: Context, forward, split) -> dict:
    """forward(x, batch) -> dict of logits; returns probabilities for a split (a name or a dataset)."""
    dataset = getattr(ctx, split) if isinstance(split, str) else split
    probs = {}
    for batch in make_loader(dataset, 256, ctx.env, seed=0, shuffle=False):
        out = forward(ctx.prep(batch, ctx.env.device), batch)
        for k, v in out.items():
            probs.setdefault(k, []).append(torch.sigmoid(v.float()).cpu())
    return {k: torch.cat(v).numpy() for k, v in probs.items()}


def _dx_validate(ctx: Context, forward):
    from ..evaluate.metrics import macro_auroc

    val = ctx.dx_split("val")
    y = np.asarray(val.dx_y)

    @torch.no_grad()
    def validate(mdl):
        mdl.eval()
        p = predict_split(ctx, lambda x, b: dict(dx=forward(mdl, x, b)), val)["dx"]
        return dict(val_dx_macro_auroc=macro_auroc(y, p))

    return validate


def _dx_predictions(ctx: Context, model, forward) -> dict:
    """Diagnosis probabilities on the validation and test diagnosis cohorts (stored with the result)."""
    model.eval()
    return {split: torch.from_numpy(predict_split(ctx, lambda x, b: dict(dx=forward(model, x, b)),
                                                  ctx.dx_split(split))["dx"]) for split in ("val", "test")}


def finetune_steps(ctx: Context, n_labelled: int) -> tuple[int, int]:
    """The fixed step budget of a fraction, the same for every arm: max(min_steps, epochs * n / batch),
    split into `rounds` validation rounds -> (rounds, steps per round)."""
    s = ctx.cfg.finetune
    total = max(int(s.min_steps), math.ceil(float(s.epochs) * n_labelled / int(s.batch_size)))
    rounds = max(1, int(s.rounds))
    return rounds, max(1, math.ceil(total / rounds))


def _labelled_loader(ctx: Context, name: str, fraction: float, replicate: int):
    s = ctx.cfg.finetune
    data = ctx.labelled(fraction, replicate)
    rounds, per_round = finetune_steps(ctx, len(data))
    loader = fixed_step_loader(data, s.batch_size, ctx.env, seed=ctx.seed(name), steps=per_round,
                               num_workers=ctx.cfg.data.num_workers)
    return data, loader, rounds


def _dx_prior(data) -> torch.Tensor:
    return torch.as_tensor(np.asarray(data.dx_y)).float().mean(0)


def finetune(ctx: Context, name: str = "finetune", encoder_state: dict | None = None,
             lab_head_state: dict | None = None, fraction: float = 1.0, replicate: int = 0) -> dict:
    """Diagnoses from the ECG alone, whole network trained, on the labelled subset of a fraction: stage 3
    (from a pre-trained encoder) or the signal-only baseline (encoder_state None: from scratch)."""

    def train():
        cfg, env, s = ctx.cfg, ctx.env, ctx.cfg.finetune
        torch.manual_seed(ctx.seed(name))
        data, loader, rounds = _labelled_loader(ctx, name, fraction, replicate)
        model = new_ecgkt_model(ctx, encoder_state)
        with torch.no_grad():
            p = _dx_prior(data).clamp(1e-3, 1 - 1e-3)
            model.dx_head.linear.bias.copy_(torch.log(p / (1 - p)))
        if lab_head_state is not None:
            model.lab_head.load_state_dict(lab_head_state)
        lab_w = float(s.lab_loss_weight)
        model.lab_head.requires_grad_(lab_w > 0)
        model.to(env.device)
        _maybe_compile(cfg, model.encoder)
        enc_lr = s.encoder_lr if encoder_state is not None else s.lr
        heads = [(model.dx_head, s.lr)] + ([(model.lab_head, s.lr)] if lab_w > 0 else [])
        groups = param_groups([(model.encoder, enc_lr)] + heads, s.weight_decay)

        def loss_fn(net, b):
            out = net(ctx.prep.train_view(b, env.device))
            loss = nn.functional.binary_cross_entropy_with_logits(out["dx_logits"].float(), b["dx_y"].to(env.device))
            if lab_w > 0:
                loss = loss + lab_w * masked_bce(out["lab_logits"], b["lab_y"].to(env.device),
                                                 b["lab_mask"].to(env.device))
            return loss

        def forward(mdl, x, b):
            return mdl(x)["dx_logits"]

        task = Task(name, model, groups, loss=loss_fn, validate=_dx_validate(ctx, forward),
                    select="val_dx_macro_auroc", prep=ctx.prep)
        history = fit(task, loader, _schedule(ctx, name, s, epochs=rounds))
        return dict(model_config=model.config, state=_cpu_state(model), history=history,
                    pred=_dx_predictions(ctx, model, forward), n_labelled=len(data))

    return _run_stage(ctx, name, train)


def multimodal(ctx: Context, name: str = "multimodal", fraction: float = 1.0, replicate: int = 0) -> dict:
    """Reference: ECG + tabular encoders fused, trained on diagnoses; tabular data needed at inference."""

    def train():
        cfg, env, s, m = ctx.cfg, ctx.env, ctx.cfg.finetune, ctx.cfg.model
        torch.manual_seed(ctx.seed(name))
        data, loader, rounds = _labelled_loader(ctx, name, fraction, replicate)
        tabs = ctx.tables("train")
        model = MultimodalModel(new_encoder(cfg), len(ctx.tab_names), len(ctx.dx_names), m.tab_hidden,
                                m.tab_layers, m.tab_dropout, m.head_dropout, _dx_prior(data))
        model.tab_encoder.normalizer.fit(tabs["tab"], tabs["tab_mask"])
        model.to(env.device)
        _maybe_compile(cfg, model.ecg_encoder)

        def fwd(net, x, b):
            return net(x, b["tab"].to(env.device), b["tab_mask"].to(env.device))

        def loss_fn(net, b):
            logits = fwd(net, ctx.prep.train_view(b, env.device), b)
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), b["dx_y"].to(env.device))

        task = Task(name, model, param_groups([(model, s.lr)], s.weight_decay), loss=loss_fn,
                    validate=_dx_validate(ctx, fwd), select="val_dx_macro_auroc", prep=ctx.prep)
        history = fit(task, loader, _schedule(ctx, name, s, epochs=rounds))
        return dict(state=_cpu_state(model), history=history, pred=_dx_predictions(ctx, model, fwd),
                    n_labelled=len(data))

    return _run_stage(ctx, name, train)


# --- linear probes -----------------------------------------------------------------------------------
def _features(ctx: Context, arm: str, pretrain_seed: int = 0) -> dict:
    """Frozen features of every train/val/test item for a probe arm: its encoder's embedding of the whole
    record, or for the oracles the generator's true beat parameters (as they are, or in a non-linear basis)."""
    if arm in ("oracle", "oracle_nl"):
        from ..evaluate import oracle

        feats = oracle.features(ctx)
        return oracle.nonlinear_features(feats) if arm == "oracle_nl" else feats
    state = arm_encoder_state(ctx, arm, pretrain_seed)
    torch.manual_seed(ctx.seed(plan.probe_name(arm, pretrain_seed)))  # the random arm's initialisation
    encoder = new_encoder(ctx.cfg)
    if state is not None:
        encoder.load_state_dict(state)
    encoder.to(ctx.env.device)
    return {split: embed(ctx, encoder, getattr(ctx, split)).double().numpy() for split in ("train", "val", "test")}


def probe(ctx: Context, arm: str, pretrain_seed: int = 0) -> dict:
    """Linear probes of one frozen arm (its stage-1 run `pretrain_seed`): diagnoses at every (fraction,
    replicate) of the plan that starts from that run, on the diagnosis cohort; lab abnormalities (run 0 only)
    on every train-fold ECG whose lab is known."""
    from ..evaluate import probe as probe_mod

    name = plan.probe_name(arm, pretrain_seed)
    seeded = plan.seeded_arm(arm)

    def train():
        feats = _features(ctx, arm, pretrain_seed)
        if feats is None:
            return dict(arm=arm, available=False, dx={}, lab=None)
        l2 = [float(v) for v in ctx.cfg.protocol.probe_l2]
        val_rows, test_rows = ctx.dx_rows("val"), ctx.dx_rows("test")
        tv, tt, ttr = ctx.tables("val"), ctx.tables("test"), ctx.tables("train")
        dx = {}
        for f in plan.fractions(ctx.cfg):
            for r in range(plan.replicates(ctx.cfg, f)):
                if seeded and plan.seed_of(ctx.cfg, r) != pretrain_seed:
                    continue
                rows = ctx.labelled_rows(f, r)
                p = probe_mod.fit(feats["train"][rows], ttr["dx_y"].numpy()[rows], feats["val"][val_rows],
                                  tv["dx_y"].numpy()[val_rows], l2_grid=l2)
                dx[f"{plan.fraction_tag(f)}_r{r}"] = dict(
                    fraction=f, replicate=r, l2=p.l2, val_macro_auroc=p.val_macro_auroc, n_labelled=int(len(rows)),
                    val=torch.from_numpy(p.predict(feats["val"][val_rows])),
                    test=torch.from_numpy(p.predict(feats["test"][test_rows])))
        lab = None
        if ttr["lab_y"].shape[1] and pretrain_seed == 0:
            p = probe_mod.fit(feats["train"], ttr["lab_y"].numpy(), feats["val"], tv["lab_y"].numpy(),
                              ttr["lab_mask"].numpy(), tv["lab_mask"].numpy(), l2_grid=l2)
            lab = dict(l2=p.l2, val_macro_auroc=p.val_macro_auroc, val=torch.from_numpy(p.predict(feats["val"])),
                       test=torch.from_numpy(p.predict(feats["test"])))
        return dict(arm=arm, available=True, dx=dx, lab=lab)

    return _run_stage(ctx, name, train)


# --- running a job of the plan -------------------------------------------------------------------------
def run_job(ctx: Context, job: plan.Job) -> dict:
    """Runs (or loads, when finished) one job of the plan."""
    if job.kind == "pretrain":
        if job.arm == "ssl":
            return ssl_pretrain(ctx, job.name)
        return pretrain(ctx, job.name, permute=job.arm == "control")
    if job.kind == "labs":
        stage1 = checkpoint.load(ctx.stage_dir(plan.stage1_name("ecgkt", job.pretrain_seed)) / "result.pt")
        return train_labs(ctx, _encoder_state(stage1["state"]), job.name)
    if job.kind == "final_labs":
        final = checkpoint.load(ctx.stage_dir("finetune") / "result.pt")
        return train_labs(ctx, _encoder_state(final["state"], "encoder."), job.name)
    if job.kind == "probe":
        return probe(ctx, job.arm, job.pretrain_seed)
    if job.kind == "finetune":
        if job.arm == "multimodal":
            return multimodal(ctx, job.name, job.fraction, job.replicate)
        state = arm_encoder_state(ctx, job.arm, job.pretrain_seed)
        lab_head = None
        if job.arm == "ecgkt":
            lab_head = checkpoint.load(ctx.stage_dir(plan.labs_name(job.pretrain_seed)) / "result.pt")["lab_head"]
        return finetune(ctx, job.name, state, lab_head, job.fraction, job.replicate)
    raise ECGKTError(f"unknown job kind {job.kind!r}")


def load_multimodal(ctx: Context, result: dict) -> MultimodalModel:
    m = ctx.cfg.model
    model = MultimodalModel(new_encoder(ctx.cfg), len(ctx.tab_names), len(ctx.dx_names), m.tab_hidden,
                            m.tab_layers, m.tab_dropout, m.head_dropout)
    model.load_state_dict(result["state"])
    return model.to(ctx.env.device).eval()


def load_ecgkt(ctx: Context, result: dict) -> ECGKTModel:
    model = ECGKTModel(result["model_config"])
    model.load_state_dict(result["state"])
    return model.to(ctx.env.device).eval()

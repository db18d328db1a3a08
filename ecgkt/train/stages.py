"""The three stages of the method, both baselines and the permuted-tabular control.

Every stage runs through `_run_stage`: when its folder already holds `result.pt`, the stage is done and its
result is loaded instead of retrained; otherwise it trains (resuming from its own checkpoint) and writes
`result.pt` atomically. A killed pipeline therefore resumes at the stage and epoch where it stopped."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import ECGKTError
from ..models import ContrastiveModel, ECGEncoder, ECGKTModel, ECGPreprocessor, MultimodalModel
from . import checkpoint
from .distributed import DistEnv, barrier
from .engine import InjectedFailure, Preprocessed, fit, make_loader, param_groups

STAGE_SEEDS = dict(pretrain=1, labs=2, finetune=3, signal_only=4, multimodal=5, control_pretrain=6,
                   control_labs=7, control_finetune=8, final_labs=9)


@dataclasses.dataclass
class Context:
    """Everything a stage needs: resolved config, process group, the three splits and shared caches."""

    cfg: dict
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
    progress: bool = True
    _tables: dict = dataclasses.field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def seed(self, name: str) -> int:
        return int(self.cfg["seed"]) * 1000 + STAGE_SEEDS.get(name, 99)

    def tables(self, split: str) -> dict:
        """The non-signal arrays of a split (tab, tab_mask, lab_y, lab_mask, dx_y, study_id), in item order."""
        if split not in self._tables:
            self._tables[split] = collect_tables(getattr(self, split))
        return self._tables[split]


def build_context(cfg: dict, env: DistEnv, run_dir, store_dir) -> Context:
    from ..data import ECGDataset

    d = cfg["data"]
    try:
        train = ECGDataset(store_dir, folds=d["train_folds"])
        val = ECGDataset(store_dir, folds=d["val_folds"])
        test = ECGDataset(store_dir, folds=d["test_folds"])
    except FileNotFoundError as e:
        raise ECGKTError(f"{store_dir}: not a prepared ecgkt signal store ({e})") from None
    return context_from_datasets(cfg, env, run_dir, train, val, test)


def context_from_datasets(cfg, env, run_dir, train, val, test) -> Context:
    for split, ds in (("train", train), ("val", val), ("test", test)):
        if len(ds) == 0:
            raise ECGKTError(f"the {split} split (folds {cfg['data'][split + '_folds']}) holds no ECGs")
    prep = Preprocessed(ECGPreprocessor(**_prep_settings(cfg)), float(train.fs), cfg["preprocessing"]["cache"],
                        cfg["preprocessing"].get("train_crop_seconds"))
    return Context(cfg=cfg, env=env, run_dir=Path(run_dir), train=train, val=val, test=test, prep=prep,
                   fs=float(train.fs), leads=list(train.leads), tab_names=list(train.tab_names),
                   lab_tests=list(train.lab_tests), lab_label_names=list(train.lab_label_names),
                   dx_names=list(train.dx_names))


def _prep_settings(cfg) -> dict:
    return {k: v for k, v in cfg["preprocessing"].items() if k not in ("cache", "train_crop_seconds")}


_TABLE_KEYS = ("tab", "tab_mask", "lab_y", "lab_mask", "dx_y", "study_id")


def collect_tables(dataset) -> dict:
    """Stacks the non-signal fields of every item (used to fit tabular normalisation on the training fold
    and for the permuted control)."""
    if all(hasattr(dataset, k) for k in _TABLE_KEYS):  # ECGDataset keeps them in memory
        return {k: torch.as_tensor(np.asarray(getattr(dataset, k))) for k in _TABLE_KEYS}
    out = {k: [] for k in _TABLE_KEYS}
    for batch in DataLoader(dataset, batch_size=256, shuffle=False):
        for k in _TABLE_KEYS:
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
    if ctx.cfg["runtime"].get("fail_after") == name:
        raise InjectedFailure(f"injected failure after stage {name} (runtime.fail_after)")
    return result


def new_encoder(cfg) -> ECGEncoder:
    m = cfg["model"]
    return ECGEncoder(m["size"], 12, m["norm"], m["dropout"])


def _maybe_compile(cfg, module: nn.Module) -> None:
    if cfg["runtime"].get("compile"):
        module.compile()


def _fit_kwargs(ctx: Context, name: str, stage_cfg: dict) -> dict:
    rt = ctx.cfg["runtime"]
    return dict(name=name, stage_dir=ctx.stage_dir(name), env=ctx.env, epochs=int(stage_cfg["epochs"]),
                warmup_epochs=float(stage_cfg.get("warmup_epochs", 0)), seed=ctx.seed(name), amp=rt["amp"],
                fail_after=rt.get("fail_after"), log_every=rt.get("log_every", 20), progress=ctx.progress)


def contrastive_loss(cfg: dict, env: DistEnv):
    """The stage-1 loss from ecgkt.losses -> (loss(e, t, scale, bias), uses_bias); distributed across ranks
    (gather | ring, `pretrain.distributed_loss`) under torchrun."""
    from .. import losses

    p = cfg["pretrain"]
    mode = p["distributed_loss"] if env.distributed else None
    if p["loss"] == "clip":
        return (lambda e, t, scale, bias: losses.clip_loss(e, t, scale, distributed=mode)), False
    if p["loss"] == "siglip":
        return (lambda e, t, scale, bias: losses.siglip_loss(e, t, scale, bias, distributed=mode)), True
    raise ECGKTError(f"pretrain.loss must be 'clip' or 'siglip', got {p['loss']!r}")


def pretrain(ctx: Context, name: str = "pretrain", permute: bool = False) -> dict:
    """Stage 1: joint-embedding pre-training of the ECG encoder against the tabular encoder."""

    def train():
        cfg, env, p, m = ctx.cfg, ctx.env, ctx.cfg["pretrain"], ctx.cfg["model"]
        torch.manual_seed(ctx.seed(name))
        tabs = ctx.tables("train")
        model = ContrastiveModel(new_encoder(cfg), len(ctx.tab_names), m["embed_dim"], m["tab_hidden"],
                                 m["tab_layers"], m["tab_dropout"], p["temperature"])
        model.tab_encoder.normalizer.fit(tabs["tab"], tabs["tab_mask"])  # training fold only
        loss_mod, uses_bias = contrastive_loss(cfg, env)
        model.logit_bias.requires_grad_(uses_bias)
        model.to(env.device)
        _maybe_compile(cfg, model.ecg_encoder)
        dataset = PermutedTabular(ctx.train, tabs["tab"], tabs["tab_mask"], ctx.seed(name)) if permute else ctx.train
        loader = make_loader(dataset, p["batch_size"], env, seed=ctx.seed(name), shuffle=True,
                             num_workers=cfg["data"]["num_workers"])

        def pair_loss(net, batch, loss_fn, train=True):
            x = ctx.prep.train_view(batch, env.device) if train else ctx.prep(batch, env.device)
            e, t = net(x, batch["tab"].to(env.device), batch["tab_mask"].to(env.device))
            scale = model.logit_scale.clamp(max=float(np.log(100.0))).exp()
            return loss_fn(e.float(), t.float(), scale, model.logit_bias)

        local_loss = contrastive_loss({**cfg, "pretrain": p}, DistEnv())[0]

        @torch.no_grad()
        def validate(mdl):
            # true pairs of the validation fold, single-process loss: comparable across runs and controls
            losses_, n = 0.0, 0
            for batch in make_loader(ctx.val, p["batch_size"], env, seed=0, shuffle=False):
                if len(batch["study_id"]) < 2:
                    continue
                losses_ += float(pair_loss(mdl, batch, local_loss, train=False)) * len(batch["study_id"])
                n += len(batch["study_id"])
            return dict(val_loss=losses_ / max(n, 1))

        history = fit(model=model, groups=param_groups([(model, p["lr"])], p["weight_decay"]),
                      loss_fn=lambda net, b: pair_loss(net, b, loss_mod), loader=loader, validate=validate,
                      select="val_loss", minimize=True, **_fit_kwargs(ctx, name, p))
        return dict(state=_cpu_state(model), history=history, permuted=permute)

    return _run_stage(ctx, name, train)


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _encoder_state(state: dict, prefix: str = "ecg_encoder.") -> dict:
    """The ECG encoder's weights inside a stage-1 (prefix "ecg_encoder.") or ECGKTModel ("encoder.") state."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def new_ecgkt_model(ctx: Context, encoder_state: dict | None = None) -> ECGKTModel:
    m = ctx.cfg["model"]
    model = ECGKTModel.build(size=m["size"], norm=m["norm"], dropout=m["dropout"], head_dropout=m["head_dropout"],
                             leads=ctx.leads, dx_names=ctx.dx_names, lab_label_names=ctx.lab_label_names,
                             lab_tests=ctx.lab_tests, preprocessing=_prep_settings(ctx.cfg))
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
    for batch in make_loader(dataset, 256, ctx.env, seed=0, shuffle=False, num_workers=ctx.cfg["data"]["num_workers"]):
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
        cfg, env, s = ctx.cfg, ctx.env, ctx.cfg["labs"]
        torch.manual_seed(ctx.seed(name))
        model = new_ecgkt_model(ctx, encoder_state).to(env.device)
        frozen = float(s["encoder_lr"]) == 0.0
        val_tab = ctx.tables("val")
        if frozen:
            # the encoder never changes: embed each ECG once, then train the head on the embeddings
            train_tab = ctx.tables("train")
            train_rows = _Rows(h=embed(ctx, model.encoder, ctx.train), lab_y=train_tab["lab_y"],
                               lab_mask=train_tab["lab_mask"])
            val_h = embed(ctx, model.encoder, ctx.val)
            model.encoder.requires_grad_(False)
            loader = make_loader(train_rows, s["batch_size"], DistEnv(device=env.device), seed=ctx.seed(name),
                                 shuffle=True)
            groups = param_groups([(model.lab_head, s["lr"])], s["weight_decay"])
            model.dx_head.requires_grad_(False)

            def loss_fn(net, b):
                return masked_bce(net.lab_head(b["h"].to(env.device)), b["lab_y"].to(env.device),
                                  b["lab_mask"].to(env.device))

            def val_logits(mdl):
                return mdl.lab_head(val_h.to(env.device))
        else:
            loader = make_loader(ctx.train, s["batch_size"], env, seed=ctx.seed(name), shuffle=True,
                                 num_workers=cfg["data"]["num_workers"])
            model.dx_head.requires_grad_(False)
            groups = param_groups([(model.encoder, s["encoder_lr"]), (model.lab_head, s["lr"])], s["weight_decay"])

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

        history = fit(model=model, groups=groups, loss_fn=loss_fn, loader=loader, validate=validate,
                      select="val_lab_macro_auroc", set_train_mode=keep_encoder_eval, ddp=not frozen,
                      **_fit_kwargs(ctx, name, s))
        return dict(encoder=_cpu_state(model.encoder), lab_head=_cpu_state(model.lab_head), history=history)

    return _run_stage(ctx, name, train)


@torch.no_grad()
def predict_split(ctx: Context, forward, split: str) -> dict:
    """forward(x, batch) -> dict of logits; returns probabilities and labels for a split."""
    probs = {}
    for batch in make_loader(getattr(ctx, split), 256, ctx.env, seed=0, shuffle=False):
        out = forward(ctx.prep(batch, ctx.env.device), batch)
        for k, v in out.items():
            probs.setdefault(k, []).append(torch.sigmoid(v.float()).cpu())
    return {k: torch.cat(v).numpy() for k, v in probs.items()}


def _dx_validate(ctx: Context, forward):
    from ..evaluate.metrics import macro_auroc

    val = ctx.tables("val")

    @torch.no_grad()
    def validate(mdl):
        mdl.eval()
        p = predict_split(ctx, lambda x, b: dict(dx=forward(mdl, x, b)), "val")["dx"]
        y = val["dx_y"].numpy()
        return dict(val_dx_macro_auroc=macro_auroc(y, p))

    return validate


def _dx_prior(ctx):
    return ctx.tables("train")["dx_y"].float().mean(0)


def finetune(ctx: Context, name: str = "finetune", encoder_state: dict | None = None,
             lab_head_state: dict | None = None) -> dict:
    """Stage 3 (from a pre-trained encoder) or the signal-only baseline (encoder_state None: from scratch):
    multi-label diagnosis from the ECG alone, encoder fine-tuned."""

    def train():
        cfg, env, s = ctx.cfg, ctx.env, ctx.cfg["finetune"]
        torch.manual_seed(ctx.seed(name))
        model = new_ecgkt_model(ctx, encoder_state)
        with torch.no_grad():
            p = _dx_prior(ctx).clamp(1e-3, 1 - 1e-3)
            model.dx_head.linear.bias.copy_(torch.log(p / (1 - p)))
        if lab_head_state is not None:
            model.lab_head.load_state_dict(lab_head_state)
        lab_w = float(s.get("lab_loss_weight", 0.0))
        model.lab_head.requires_grad_(lab_w > 0)
        model.to(env.device)
        _maybe_compile(cfg, model.encoder)
        enc_lr = s["encoder_lr"] if encoder_state is not None else s["lr"]
        heads = [(model.dx_head, s["lr"])] + ([(model.lab_head, s["lr"])] if lab_w > 0 else [])
        groups = param_groups([(model.encoder, enc_lr)] + heads, s["weight_decay"])
        loader = make_loader(ctx.train, s["batch_size"], env, seed=ctx.seed(name), shuffle=True,
                             num_workers=cfg["data"]["num_workers"])

        def loss_fn(net, b):
            out = net(ctx.prep.train_view(b, env.device))
            loss = nn.functional.binary_cross_entropy_with_logits(out["dx_logits"].float(), b["dx_y"].to(env.device))
            if lab_w > 0:
                loss = loss + lab_w * masked_bce(out["lab_logits"], b["lab_y"].to(env.device),
                                                 b["lab_mask"].to(env.device))
            return loss

        history = fit(model=model, groups=groups, loss_fn=loss_fn, loader=loader,
                      validate=_dx_validate(ctx, lambda mdl, x, b: mdl(x)["dx_logits"]),
                      select="val_dx_macro_auroc", **_fit_kwargs(ctx, name, s))
        return dict(model_config=model.config, state=_cpu_state(model), history=history)

    return _run_stage(ctx, name, train)


def multimodal(ctx: Context, name: str = "multimodal") -> dict:
    """Baseline: ECG + tabular encoders fused, trained on diagnoses; tabular data needed at inference."""

    def train():
        cfg, env, s, m = ctx.cfg, ctx.env, ctx.cfg["finetune"], ctx.cfg["model"]
        torch.manual_seed(ctx.seed(name))
        tabs = ctx.tables("train")
        model = MultimodalModel(new_encoder(cfg), len(ctx.tab_names), len(ctx.dx_names), m["tab_hidden"],
                                m["tab_layers"], m["tab_dropout"], m["head_dropout"], _dx_prior(ctx))
        model.tab_encoder.normalizer.fit(tabs["tab"], tabs["tab_mask"])
        model.to(env.device)
        _maybe_compile(cfg, model.ecg_encoder)
        loader = make_loader(ctx.train, s["batch_size"], env, seed=ctx.seed(name), shuffle=True,
                             num_workers=cfg["data"]["num_workers"])

        def fwd(net, x, b):
            return net(x, b["tab"].to(env.device), b["tab_mask"].to(env.device))

        def loss_fn(net, b):
            logits = fwd(net, ctx.prep.train_view(b, env.device), b)
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), b["dx_y"].to(env.device))

        history = fit(model=model, groups=param_groups([(model, s["lr"])], s["weight_decay"]), loss_fn=loss_fn,
                      loader=loader, validate=_dx_validate(ctx, fwd), select="val_dx_macro_auroc",
                      **_fit_kwargs(ctx, name, s))
        return dict(state=_cpu_state(model), history=history)

    return _run_stage(ctx, name, train)


def load_multimodal(ctx: Context, result: dict) -> MultimodalModel:
    m = ctx.cfg["model"]
    model = MultimodalModel(new_encoder(ctx.cfg), len(ctx.tab_names), len(ctx.dx_names), m["tab_hidden"],
                            m["tab_layers"], m["tab_dropout"], m["head_dropout"])
    model.load_state_dict(result["state"])
    return model.to(ctx.env.device).eval()


def load_ecgkt(ctx: Context, result: dict) -> ECGKTModel:
    model = ECGKTModel(result["model_config"])
    model.load_state_dict(result["state"])
    return model.to(ctx.env.device).eval()

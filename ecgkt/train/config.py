"""Configuration: the packaged default YAML, an optional user YAML/TOML/JSON file, then `key.sub=value`
overrides, resolved into a typed `Config` (dataclasses, one per section).

The dataclasses own the keys and their types (a value that cannot be that type is one error naming the key
and where it came from, before any stage runs); default.yaml owns the default values and their comments.
A test asserts that the two list the same keys. Every run writes the fully resolved configuration (with the
seed) next to its outputs."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

import yaml

from ..errors import ECGKTError
from ..io import atomic_write_text


@dataclass
class Data:
    dir: Optional[str]
    synth_patients: int
    synth_seed: int
    train_folds: list[int]
    val_folds: list[int]
    test_folds: list[int]
    num_workers: int


@dataclass
class Preprocessing:
    highpass: float
    lowpass: float
    notch: Optional[float]
    target_fs: Optional[int]
    normalize: Literal[None, "zscore", "robust"]
    cache: bool
    train_crop_seconds: Optional[float]

    def filter_settings(self) -> dict:
        """The arguments of `ECGPreprocessor` (what a saved model records and inference replays)."""
        return dict(highpass=self.highpass, lowpass=self.lowpass, notch=self.notch, target_fs=self.target_fs,
                    normalize=self.normalize)


@dataclass
class Model:
    size: Literal["tiny", "small", "base"]
    norm: Literal["batch", "group"]
    dropout: float
    head_dropout: float
    embed_dim: int
    tab_hidden: int
    tab_layers: int
    tab_dropout: float


@dataclass
class Pretrain:
    loss: Literal["clip", "siglip"]
    distributed_loss: Literal["gather", "ring"]
    temperature: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float


@dataclass
class Labs:
    epochs: int
    batch_size: int
    lr: float
    encoder_lr: float
    weight_decay: float
    warmup_epochs: float


@dataclass
class Finetune:
    epochs: int
    min_steps: int
    rounds: int
    batch_size: int
    lr: float
    encoder_lr: float
    weight_decay: float
    warmup_epochs: float
    lab_loss_weight: float


@dataclass
class Control:
    enabled: bool


@dataclass
class Protocol:
    fractions: list[float]
    replicates: int
    replicates_full: int
    pretrain_seeds: int
    finetune_arms: list[str]
    probe_arms: list[str]
    probe_l2: list[float]
    dx_cohort: Literal["linked", "all"]
    headline_subset: Literal["ed", "linked"]
    min_test_positives: int


@dataclass
class Evaluate:
    bootstrap: int
    ci: float
    lab_min_positives: int
    seed: int


@dataclass
class Runtime:
    device: str
    amp: Literal["auto", "bf16", "off"]
    compile: bool
    jobs: Optional[int]
    threads: Optional[int]
    log_every: int
    fail_after: Optional[str]


@dataclass
class Config:
    seed: int
    data: Data
    preprocessing: Preprocessing
    model: Model
    pretrain: Pretrain
    labs: Labs
    finetune: Finetune
    control: Control
    protocol: Protocol
    evaluate: Evaluate
    runtime: Runtime

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recorded(self) -> dict:
        """What a run folder and results.json record: everything but the testing aid `runtime.fail_after`."""
        out = self.to_dict()
        out["runtime"]["fail_after"] = None
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "") -> "Config":
        """A complete nested mapping (every key present) as a Config; values are coerced to their types."""
        return _build(cls, data, "", source)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _build(cls, data: dict, where: str, source: str):
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ECGKTError(f"{source + ': ' if source else ''}unknown configuration key {where + unknown[0]!r}")
    missing = sorted(set(hints) - set(data))
    if missing:
        raise ECGKTError(f"{source + ': ' if source else ''}configuration key {where + missing[0]!r} is missing")
    values = {}
    for name, typ in hints.items():
        if dataclasses.is_dataclass(typ):
            if not isinstance(data[name], dict):
                raise ECGKTError(f"configuration key {where + name!r}: expected a mapping of keys to values")
            values[name] = _build(typ, data[name], f"{where}{name}.", source)
        else:
            values[name] = coerce(data[name], typ, where + name, source)
    return cls(**values)


def key_type(path: list[str]):
    """The declared type of `a.b` (a dataclass for a section); None when there is no such key."""
    typ = Config
    for part in path:
        if not dataclasses.is_dataclass(typ):
            return None
        typ = _hints(typ).get(part)
        if typ is None:
            return None
    return typ


def default_config() -> dict:
    """The packaged defaults as a plain nested mapping (default.yaml)."""
    text = resources.files("ecgkt").joinpath("configs/default.yaml").read_text()
    return yaml.safe_load(text)


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def coerce(value, typ, key: str, source: str = ""):
    """``value`` as type ``typ`` (its key's declared type): YAML reads ``1e-3`` as a string, this gives the
    float 0.001; ``3.0`` for an integer gives 3. A value that cannot be that type is an ECGKTError naming the
    key (and where it came from)."""
    where = f" ({source})" if source else ""

    def bad(expected):
        return ECGKTError(f"configuration key {key!r}{where}: expected {expected}, got {value!r}")

    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is Literal:
        if isinstance(value, str) and value.strip().lower() in ("null", "none") and None in args:
            value = None
        if value in args and not isinstance(value, bool):
            return value
        raise bad("one of " + ", ".join("null" if a is None else a for a in args))
    if origin is typing.Union:  # Optional[T]
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return coerce(value, inner, key, source)
    if value is None:
        raise bad(f"a {getattr(typ, '__name__', typ)} (this key does not take null)")
    if origin is list:
        if not isinstance(value, list):
            raise bad("a list, e.g. [1, 2]")
        return [coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise bad("true or false")
    if typ is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and math.isfinite(number) and float(number).is_integer():
            return int(number)
        raise bad("an integer")
    if typ is float:
        if isinstance(value, bool):
            raise bad("a number")
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise bad("a finite number")
        return float(number)
    if typ is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    raise TypeError(f"configuration key {key!r}: no coercion for the declared type {typ!r}")


def _number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _merge(base: dict, update: dict, path: list[str], source: str) -> dict:
    for key, value in update.items():
        here = path + [str(key)]
        typ = key_type(here)
        if typ is None:
            raise ECGKTError(f"{source + ': ' if source else ''}unknown configuration key {'.'.join(here)!r}")
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ECGKTError(f"configuration key {'.'.join(here)!r} ({source}): expected a mapping of keys "
                                 f"to values, got {value!r}")
            _merge(base.setdefault(key, {}), value, here, source)
        else:
            base[key] = coerce(value, typ, ".".join(here), source)
    return base


def load_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ECGKTError(f"{path}: configuration file not found")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parser's error becomes one line naming the file
        raise ECGKTError(f"{path}: cannot parse configuration ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ECGKTError(f"{path}: a configuration file must hold a mapping of keys to values")
    return data


def apply_override(cfg: dict, item: str) -> None:
    """`pretrain.epochs=5` applied to a nested mapping: the value is parsed as YAML (numbers, lists, null,
    strings) and coerced to the key's type."""
    if "=" not in item:
        raise ECGKTError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    typ = key_type(parts)
    if typ is None:
        i = next(i for i in range(1, len(parts) + 1) if key_type(parts[:i]) is None)
        raise ECGKTError(f"unknown configuration key {'.'.join(parts[:i])!r} in override {item!r}")
    if dataclasses.is_dataclass(typ):
        first = next(iter(_hints(typ)))
        raise ECGKTError(f"override {item!r}: {key.strip()!r} is a section; set one of its keys, "
                         f"e.g. {key.strip()}.{first}=...")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = coerce(value, typ, key.strip(), f"--set {item}")


def resolve(config_file=None, overrides=(), base: Config | None = None) -> Config:
    """Defaults (or ``base``), then ``config_file``, then the ``--set`` overrides, as a typed Config."""
    cfg = base.to_dict() if base is not None else default_config()
    cfg = copy.deepcopy(cfg)
    if config_file:
        _merge(cfg, load_file(config_file), [], str(config_file))
    for item in overrides or ():
        apply_override(cfg, item)
    return Config.from_dict(cfg)


def save_resolved(cfg: Config, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(cfg.recorded(), sort_keys=False))

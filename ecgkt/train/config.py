"""Configuration: the packaged default YAML, an optional user YAML/TOML file, then `key.sub=value` overrides.

Every run writes the fully resolved configuration (with the seed) next to its outputs."""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import yaml

from ..errors import ECGKTError


def default_config() -> dict:
    text = resources.files("ecgkt").joinpath("configs/default.yaml").read_text()
    return yaml.safe_load(text)


def _merge(base: dict, update: dict, where: str = "") -> dict:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ECGKTError(f"unknown configuration key {path!r}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, path + ".")
        else:
            base[key] = value
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
    """`pretrain.epochs=5`: the value is parsed as YAML (numbers, lists, null, strings)."""
    if "=" not in item:
        raise ECGKTError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node.get(p), dict):
            raise ECGKTError(f"unknown configuration key {'.'.join(parts[: i + 1])!r} in override {item!r}")
        node = node[p]
    if parts[-1] not in node:
        raise ECGKTError(f"unknown configuration key {key!r} in override {item!r}")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        node[parts[-1]] = raw


def resolve(config_file=None, overrides=(), base: dict | None = None) -> dict:
    cfg = copy.deepcopy(base) if base is not None else default_config()
    if config_file:
        _merge(cfg, load_file(config_file))
    for item in overrides or ():
        apply_override(cfg, item)
    return cfg


def save_resolved(cfg: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(path)

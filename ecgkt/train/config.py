"""Configuration: the packaged default YAML, an optional user YAML/TOML file, then `key.sub=value` overrides.

Every run writes the fully resolved configuration (with the seed) next to its outputs."""
from __future__ import annotations

import copy
import json
import math
from importlib import resources
from pathlib import Path

import yaml

from ..errors import ECGKTError
from ..io import atomic_write_text


def default_config() -> dict:
    text = resources.files("ecgkt").joinpath("configs/default.yaml").read_text()
    return yaml.safe_load(text)


# Keys whose default is a number but that also take null (see the comments in default.yaml).
NULLABLE = {"preprocessing.train_crop_seconds", "preprocessing.notch", "preprocessing.target_fs", "runtime.threads",
            "runtime.jobs"}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def coerce(value, default, key: str, source: str = ""):
    """``value`` as the type of ``default`` (its key's default): YAML reads ``1e-3`` as a string, this gives
    the float 0.001. A value that cannot be that type is an ECGKTError naming the key (and where it came
    from), raised before any stage runs."""
    where = f" ({source})" if source else ""

    def bad(expected):
        return ECGKTError(f"configuration key {key!r}{where}: expected {expected}, got {value!r}")

    if default is None:
        return value
    if value is None:
        if key in NULLABLE:
            return None
        raise bad(f"a {type(default).__name__} (this key does not take null)")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise bad("true or false")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
        raise bad("an integer")
    if isinstance(default, float):
        if isinstance(value, bool):
            raise bad("a number")
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise bad("a finite number")
        return float(number)
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise bad("a string")
    if isinstance(default, list):
        if not isinstance(value, list):
            raise bad("a list, e.g. [1, 2]")
        if default:
            return [coerce(v, default[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad("a mapping of keys to values")
        return value
    return value


def _number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _merge(base: dict, update: dict, where: str = "", source: str = "") -> dict:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ECGKTError(f"{source + ': ' if source else ''}unknown configuration key {path!r}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, path + ".", source)
        else:
            base[key] = coerce(value, base[key], path, source)
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
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node[parts[-1]] = coerce(value, node[parts[-1]], key.strip(), f"--set {item}")


def resolve(config_file=None, overrides=(), base: dict | None = None) -> dict:
    cfg = copy.deepcopy(base) if base is not None else default_config()
    if config_file:
        _merge(cfg, load_file(config_file), source=str(config_file))
    for item in overrides or ():
        apply_override(cfg, item)
    return cfg


def save_resolved(cfg: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))

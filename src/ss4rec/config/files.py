"""Configuration: packaged YAML files, ``--set key=value`` parsing, and unknown-key checks.

RecBole answers ``None`` for any key it does not know, so a typo such as ``num_epochs: 5``
trains for RecBole's default 300 epochs without a word. Here every key from config files,
``config_dict`` and ``--set`` is checked against the keys RecBole, the chosen model and
ss4rec understand; an unknown key is an error with a did-you-mean suggestion:

    >>> check_keys({"num_epochs": 5}, model="SS4Rec")
    Traceback (most recent call last):
    ...
    ss4rec.errors.ConfigError: unknown config key 'num_epochs' (from config_dict); did you mean 'epochs'?

Packaged configs (``src/ss4rec/configs/*.yaml``, also at ``configs/`` in the repository) can
be named without a path: ``resolve_config_file("ml-100k-quick")``.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import yaml
from recbole.utils import argument_list

from ss4rec.config import CONFIGS_DIR, PROPERTIES_DIR
from ss4rec.config.safe_yaml import load_yaml, read_yaml_file
from ss4rec.config.validation import DATA_DEFAULTS, GUARD_DEFAULTS, SS4REC_KEYS
from ss4rec.errors import ConfigError

# Keys RecBole reads that no RecBole YAML file lists (distributed runs, internals).
_RECBOLE_EXTRA_KEYS = {
    "model", "dataset", "config_file", "nproc", "world_size", "offset", "ip", "port",
    "local_rank", "single_spec", "device", "eval_type", "MODEL_TYPE", "MODEL_INPUT_TYPE",
    "valid_neg_sample_args", "test_neg_sample_args", "wandb_project", "worker", "shuffle",
    "require_pow", "enable_amp", "enable_scaler", "transform", "numerical_features",
    "discretization", "kg_reverse_r", "entity_kg_num_interval", "relation_kg_num_interval",
}


def _recbole_dir() -> Path:
    return Path(importlib.util.find_spec("recbole").submodule_search_locations[0])


def _yaml_keys(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    return set(data) if isinstance(data, dict) else set()


def model_config_file(model: str) -> Path | None:
    """The YAML of a model's own defaults: ours for SS4Rec, RecBole's for its models."""
    ours = PROPERTIES_DIR / f"{model}.yaml"
    if ours.is_file():
        return ours
    theirs = _recbole_dir() / "properties" / "model" / f"{model}.yaml"
    return theirs if theirs.is_file() else None


def known_keys(model: str) -> set[str]:
    """Every key that RecBole, the model ``model`` and ss4rec understand."""

    props = _recbole_dir() / "properties"
    keys = set(_RECBOLE_EXTRA_KEYS) | SS4REC_KEYS
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, name))
    for path in [props / "overall.yaml", *sorted((props / "dataset").glob("*.yaml")),
                 *sorted((props / "quick_start_config").glob("*.yaml"))]:
        if path.name not in ("url.yaml", "kg_url.yaml"):  # download links, not settings
            keys |= _yaml_keys(path)
    model_file = model_config_file(model)
    if model_file is not None:
        keys |= _yaml_keys(model_file)
    return keys


def known_defaults(model: str) -> dict:
    """Default values of RecBole's general keys, the model's own and ss4rec's (for type checks)."""

    defaults = {}
    for path in (_recbole_dir() / "properties" / "overall.yaml", model_config_file(model)):
        if path is not None:
            defaults.update(load_config_file(path))
    return {**defaults, **GUARD_DEFAULTS, **DATA_DEFAULTS}


def check_keys(config: dict, model: str, source: str = "config_dict") -> None:
    """Raise :class:`ConfigError` for the first key in ``config`` that nothing understands."""
    allowed = known_keys(model)
    for key in config:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown config key {key!r} (from {source}){hint}")


def resolve_config_file(name_or_path) -> Path:
    """A config file path, or the name of a packaged config (``ml-100k-quick``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    packaged = CONFIGS_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if packaged.is_file():
        return packaged
    available = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {name_or_path} not found (packaged configs: {available})")


def load_config_file(path) -> dict:
    """Read one YAML config file into a dict; a malformed, oversized or non-UTF-8 file is a
    ConfigError naming it (see :func:`ss4rec.config.safe_yaml.load_yaml`)."""
    path = resolve_config_file(path)
    data = read_yaml_file(path, what="config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def parse_value(text: str, source: str = "--set"):
    """Type a ``--set`` value as YAML does, plus plain floats like ``1e-3``."""
    try:
        value = load_yaml(text, source)
    except ConfigError as exc:
        if not isinstance(exc.__cause__, yaml.YAMLError):
            raise  # too large or too many aliases: never fall back to the raw text
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_sets(pairs) -> dict:
    """``["epochs=3", "learning_rate=1e-3"]`` -> ``{"epochs": 3, "learning_rate": 0.001}``."""
    result = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is not of the form key=value (e.g. --set epochs=5)")
        result[key.strip()] = parse_value(value.strip(), f"--set {key.strip()}")
    return result

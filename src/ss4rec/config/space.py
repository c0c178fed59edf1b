"""Search spaces for ``ss4rec tune``: one YAML per model beside its defaults, checked before any trial.

A space maps config keys to the values a tuner may try:

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    hidden_size: {type: categorical, choices: [32, 64, 128]}
    n_layers: {type: int, low: 1, high: 3}

``float`` and ``int`` take ``low``, ``high`` and optionally ``log: true`` (a log-uniform
range, above 0) or ``step``; ``categorical`` takes a list of ``choices``. The packaged spaces
live beside the models' defaults as ``properties/MODEL.space.yaml`` (SS4Rec, TiSASRec, SASRec,
GRU4Rec); ``--space FILE`` replaces them.

:func:`load_space` refuses, with the file and the key named, what would otherwise fail in
the middle of a search or silently search nothing: unknown keys (the same check as every
setting), unknown types or fields, ``low >= high``, a log range that reaches 0, a step that is
not positive, empty or repeated choices, fractions for an integer key, and any bound or
choice that the key's own rule refuses (:mod:`ss4rec.config.validation`: ``dropout_prob``
below 1, ``hidden_size`` an integer >= 1, ...):

    >>> check_space({"dropout_prob": {"type": "float", "low": 0.1, "high": 1.0}}, "SS4Rec", "my.yaml")
    Traceback (most recent call last):
    ...
    ss4rec.errors.ConfigError: dropout_prob=1.0 (from my.yaml, dropout_prob.high): use a number >= 0 and < 1
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from ss4rec.config import PROPERTIES_DIR
from ss4rec.config.files import check_keys, known_defaults
from ss4rec.config.validation import RULES, check_values
from ss4rec.errors import ConfigError

TYPES = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
         "categorical": {"choices"}}
SPACE_SUFFIX = ".space.yaml"
FORMAT_HINT = ("e.g. learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true} or "
               "hidden_size: {type: categorical, choices: [32, 64]}")


def space_file(model: str) -> Path | None:
    """The packaged search space of ``model`` (``properties/MODEL.space.yaml``), or None."""
    path = PROPERTIES_DIR / f"{model}{SPACE_SUFFIX}"
    return path if path.is_file() else None


def packaged_spaces() -> list[str]:
    """Models with a packaged search space."""
    return sorted(p.name[:-len(SPACE_SUFFIX)] for p in PROPERTIES_DIR.glob(f"*{SPACE_SUFFIX}"))


def load_space(model: str, path=None) -> dict:
    """The checked search space for ``model``: from ``path`` (``--space``), else the packaged one.

    Returns ``{key: {"type": ..., fields}}`` with numbers as numbers and ``log`` filled in.
    """
    if path is None:
        path = space_file(model)
        if path is None:
            raise ConfigError(f"no packaged search space for {model} (packaged: {', '.join(packaged_spaces())}): "
                              f"write one and pass --space FILE ({FORMAT_HINT})")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space {path}: no such file ({FORMAT_HINT})")
    try:
        space = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {exc}") from None
    return check_space(space, model, str(path))


def check_space(space, model: str, source: str = "the search space") -> dict:
    """Raise :class:`ConfigError` for the first problem of ``space``; return it normalised."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"search space {source} must map config keys to ranges ({FORMAT_HINT})")
    check_keys(space, model, source=source)
    defaults = known_defaults(model)
    return {key: _check_entry(key, entry, source, defaults) for key, entry in space.items()}


def _check_entry(key: str, entry, source: str, defaults: dict) -> dict:
    where = f"{source}, {key}"
    if not isinstance(entry, dict) or entry.get("type") not in TYPES:
        raise ConfigError(f"{where}: give a type (float, int or categorical) and its range, {FORMAT_HINT}")
    kind = entry["type"]
    extra = set(entry) - TYPES[kind] - {"type"}
    if extra:
        raise ConfigError(f"{where}: unknown field {sorted(extra)[0]!r} for type {kind} "
                          f"(use {', '.join(sorted(TYPES[kind]))})")
    integer_key = _takes_integers(key, defaults)
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, e.g. choices: [32, 64]")
        numeric = key in RULES and RULES[key].kind in ("int", "float") or _is_number(defaults.get(key))
        choices = [_number(c) if numeric and isinstance(c, str) else c for c in choices]
        for i, choice in enumerate(choices):
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise ConfigError(f"{where}: choice {choice!r} must be a number, a string, true/false or ~")
            check_values({key: choice}, f"{where}.choices[{i}]", defaults)
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}: choices {choices} repeat a value; list each once")
        return {"type": kind, "choices": choices}

    if kind == "float" and integer_key:
        raise ConfigError(f"{where}: {key} takes whole numbers; use type: int (or categorical)")
    normal = {"type": kind, "log": entry.get("log", False)}
    for field in ("low", "high", "step"):
        if field not in entry:
            if field == "step":
                continue
            raise ConfigError(f"{where}: {field} is missing, {FORMAT_HINT}")
        value = _number(entry[field])
        if not _is_number(value) or not math.isfinite(value) or (kind == "int" and not isinstance(value, int)):
            noun = "an integer" if kind == "int" else "a number"
            raise ConfigError(f"{where}: {field}={entry[field]!r} must be {noun}")
        normal[field] = value
    if not isinstance(normal["log"], bool):
        raise ConfigError(f"{where}: log must be true or false")
    low, high = normal["low"], normal["high"]
    if low >= high:
        raise ConfigError(f"{where}: low={low!r} must be below high={high!r} "
                          "(to fix the value, set it with --set or in the config instead)")
    if normal["log"] and low <= 0:
        raise ConfigError(f"{where}: a log range must lie above 0, not start at low={low!r} "
                          "(use a small positive low, or a categorical with 0 among the choices)")
    if "step" in normal:
        if normal["step"] <= 0:
            raise ConfigError(f"{where}: step={normal['step']!r} must be above 0")
        if normal["log"]:
            raise ConfigError(f"{where}: step and log: true do not go together (Optuna samples one or the other)")
    for field in ("low", "high"):
        check_values({key: normal[field]}, f"{where}.{field}", defaults)
    return normal


def _takes_integers(key: str, defaults: dict) -> bool:
    rule = RULES.get(key)
    if rule is not None:
        return rule.kind in ("int", "int_list")
    default = defaults.get(key)
    return isinstance(default, int) and not isinstance(default, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value):
    """YAML reads ``1e-4`` (no dot) as a string: take it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value

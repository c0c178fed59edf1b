"""Settings validation: the keys ss4rec owns, and the type and range of every numeric key.

Every run checks its settings here before anything is built or written
(:func:`ss4rec.pipeline.settings.build_config`, so ``train``, ``preflight``, ``compare``, ``evaluate``,
``recommend`` and the pod entrypoint give the same one-line answer):

    >>> check_values({"train_batch_size": 0}, source="--set")
    Traceback (most recent call last):
    ...
    ss4rec.errors.ConfigError: train_batch_size=0 (from --set): use an integer >= 1

* :data:`RULES` gives the type and range of each key RecBole or ss4rec reads as a number
  (training, evaluation, model widths, dropout, the trainer's guards and schedule).
* Any other key with a known default (RecBole's YAML files, a model's YAML, ours) must
  have that default's type: ``embedding_size: abc`` fails before RecBole sees it.
* ss4rec's own defaults live in ``properties/guards.yaml`` and ``properties/data.yaml``;
  this module reads them (:data:`GUARD_DEFAULTS`, :data:`DATA_DEFAULTS`), so ``config``,
  ``guards`` and ``data.modes`` all depend on it and not on each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from ss4rec.config import PROPERTIES_DIR
from ss4rec.config.shapes import shape_problem
from ss4rec.errors import ConfigError


def _defaults(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


GUARDS_FILE = PROPERTIES_DIR / "guards.yaml"
GUARD_DEFAULTS: dict = _defaults(GUARDS_FILE)
DATA_FILE = PROPERTIES_DIR / "data.yaml"
DATA_DEFAULTS: dict = _defaults(DATA_FILE)
TRAIN_MODES = ("prefix", "sequence")  # ss4rec.data.modes
SCHEDULERS = ("none", "linear", "cosine")  # ss4rec.training.guards.LRSchedule
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # ss4rec.training.precision

# Keys our own code reads (trainer guards and schedule, training mode, DDP's collective
# timeout: ss4rec.training.distributed).
SS4REC_KEYS: set[str] = set(GUARD_DEFAULTS) | set(DATA_DEFAULTS) | {"ddp_timeout"}


@dataclass(frozen=True)
class Rule:
    """A key's type (``int``, ``float``, ``bool``, ``int_list``, ``choice``, ``mapping``) and its range."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself not allowed
    high_open: bool = False
    optional: bool = False  # ~ (None) allowed
    choices: tuple = ()

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` ("use an integer >= 1"), or None."""
        if value is None:
            return None if self.optional else f"use {self._wanted()}"
        if self.kind == "choice":
            return None if str(value).lower() in self.choices else f"use one of {', '.join(self.choices)}"
        if self.kind == "bool":
            return None if isinstance(value, bool) else "use true or false"
        if self.kind == "mapping":
            return None if isinstance(value, dict) else "use a mapping such as {max_norm: 5}, or ~"
        if self.kind == "int_list":
            values = value if isinstance(value, (list, tuple)) else [value]
            ok = values and all(isinstance(v, int) and not isinstance(v, bool) and self._in_range(v) for v in values)
            return None if ok else f"use {self._wanted()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"use {self._wanted()}"
        if self.kind == "int" and not isinstance(value, int):
            return f"use {self._wanted()}"
        if not math.isfinite(value) or not self._in_range(value):
            return f"use {self._wanted()}"
        return None

    def _in_range(self, v) -> bool:
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.high_open and v == self.high)))

    def _wanted(self) -> str:
        noun = {"int": "an integer", "float": "a number", "int_list": "a list of integers"}.get(self.kind, self.kind)
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = f"{noun} {' and '.join(bounds)}".strip()
        if self.kind == "int_list" and bounds:
            text = f"a list of integers, each {' and '.join(bounds)}"
        return text + (", or ~" if self.optional else "")


def _int(low=None, **kw):
    return Rule("int", low, **kw)


def _float(low=None, high=None, **kw):
    return Rule("float", low, high, **kw)


_PROBABILITY = _float(0, 1, high_open=True)
_POSITIVE = _float(0, low_open=True)

RULES: dict[str, Rule] = {
    # RecBole: training and evaluation
    "epochs": _int(1), "train_batch_size": _int(1), "eval_batch_size": _int(1),
    "learning_rate": _float(0),  # 0 is the lr guard's business (guard_lr_zero)
    "weight_decay": _float(0), "stopping_step": _int(1), "eval_step": _int(1),
    "seed": _int(0, high=2**32 - 1),  # numpy's seed range
    "MAX_ITEM_LIST_LENGTH": _int(2), "topk": Rule("int_list", 1), "worker": _int(0),
    "reproducibility": Rule("bool"), "use_gpu": Rule("bool"), "shuffle": Rule("bool"),
    "show_progress": Rule("bool"), "saved": Rule("bool"),
    # model widths, depths and dropout (SS4Rec, TiSASRec and RecBole's models alike)
    **{k: _int(1) for k in ("hidden_size", "embedding_size", "num_layers", "n_layers", "n_heads",
                            "inner_size", "d_state", "d_conv", "expand", "d_P", "time_span")},
    "d_H": _int(1, optional=True),
    **{k: _PROBABILITY for k in ("dropout_prob", "hidden_dropout_prob", "attn_dropout_prob")},
    "dt_min": _POSITIVE, "dt_max": _POSITIVE, "layer_norm_eps": _POSITIVE, "initializer_range": _float(0),
    # the trainer's schedule, guards and progress (guards.yaml)
    "grad_accum_steps": _int(1), "lr_warmup_steps": _int(0), "lr_schedule_steps": _int(1, optional=True),
    "lr_scheduler": Rule("choice", choices=SCHEDULERS),
    "lr_min_ratio": _float(0, 1), "guard_baseline_tolerance": _float(0, 1, low_open=True, high_open=True),
    "guard_baseline_warn_steps": _int(0), "guard_baseline_fail_steps": _int(0),
    "guard_frozen_metrics_evals": _int(2), "progress_interval": _float(0),
    **{k: Rule("bool") for k, v in GUARD_DEFAULTS.items() if isinstance(v, bool)},
    "train_mode": Rule("choice", choices=TRAIN_MODES),
    "precision": Rule("choice", choices=PRECISIONS), "guard_check_batches": _int(1, optional=True),
    "ddp_timeout": _float(0, low_open=True, optional=True),
}


def _default_type_problem(value, default) -> str | None:
    """A value whose key has a known default must have the default's type."""
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "use true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "use an integer"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "use a number"
    return None


def check_values(settings: dict, source: str = "config_dict", defaults: dict | None = None) -> None:
    """Raise :class:`ConfigError` for the first value of ``settings`` of the wrong type or range.

    ``defaults``: the known defaults (RecBole's, the model's, ours), whose types keys without
    a rule must match.
    """
    for key, value in settings.items():
        rule = RULES.get(key)
        need = rule.problem(value) if rule is not None else _default_type_problem(value, (defaults or {}).get(key))
        if need is None:
            need = shape_problem(key, value)  # nested and textual keys (ss4rec.config.shapes)
        if need is not None:
            raise ConfigError(f"{key}={value!r} (from {source}): {need}")

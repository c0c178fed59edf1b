"""Training guards and the learning-rate schedule used by :class:`ss4rec.training.trainer.SS4RecTrainer`.

A run that is silently broken (NaN loss, LR stuck at 0, a loss that never leaves the
random baseline, metrics that never change) costs hours before anyone notices. Each guard
here turns one such failure into an immediate :class:`~ss4rec.errors.TrainingGuardError`
that says what happened, where, and how to fix it. Every guard is on by default and
configurable through the keys in ``properties/guards.yaml`` (the one place holding their
defaults; their types and ranges are checked in :mod:`ss4rec.config.validation`).

    >>> settings = guard_settings({"grad_accum_steps": 4})   # unset keys: guards.yaml
    >>> settings["grad_accum_steps"], settings["guard_nonfinite"]
    (4, True)
    >>> schedule = LRSchedule("cosine", total_steps=10, warmup_steps=2)
    >>> [round(schedule.factor(s), 3) for s in (0, 2, 9)]
    [0.333, 1.0, 0.0]
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass

from ss4rec.config.validation import GUARD_DEFAULTS, GUARDS_FILE, RULES, SCHEDULERS
from ss4rec.errors import ConfigError, TrainingGuardError

BASELINE_WINDOW = 10  # optimiser steps averaged before comparing the loss with the baseline

logger = logging.getLogger(__name__)


def guard_settings(config) -> dict:
    """Every key of guards.yaml: the config's value, or the default when unset (None).

    Raises :class:`ConfigError` for values out of range.
    """
    settings = {}
    for key, default in GUARD_DEFAULTS.items():
        value = config[key] if key in config else None
        settings[key] = default if value is None else value
    _check_settings(settings)
    return settings


def _check_settings(s: dict) -> None:
    # Types and ranges live in ss4rec.config.validation; lr_scheduler is case-insensitive.
    for key in GUARD_DEFAULTS:
        need = RULES[key].problem(s[key]) if key in RULES else None
        if need is not None:
            raise ConfigError(f"config key {key}={s[key]!r} is invalid: {need} (defaults in {GUARDS_FILE})")
    s["lr_scheduler"] = str(s["lr_scheduler"]).lower()


def optimizer_steps(batches_per_epoch: int, grad_accum_steps: int, epochs: int) -> int:
    """Optimiser steps of a whole run: the last, partial accumulation group of an epoch steps too.

    >>> optimizer_steps(batches_per_epoch=10, grad_accum_steps=4, epochs=3)  # 4+4+2 batches
    9
    """
    return math.ceil(batches_per_epoch / grad_accum_steps) * epochs


@dataclass
class LRSchedule:
    """LR multiplier per optimiser step: linear warmup, then linear or cosine decay.

    Step ``s`` (0-based) trains with ``learning_rate * factor(s)``. Warmup rises to 1 at step
    ``warmup_steps``; the decay then reaches ``min_ratio`` exactly at the last step
    ``total_steps - 1`` and stays there.

        >>> s = LRSchedule("linear", total_steps=5, min_ratio=0.1)
        >>> [round(s.factor(i), 3) for i in range(5)]
        [1.0, 0.775, 0.55, 0.325, 0.1]
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULERS:
            raise ConfigError(f"lr_scheduler {self.kind!r} is unknown; use one of {', '.join(SCHEDULERS)}")
        if self.total_steps < 1:
            raise ConfigError(f"the LR schedule needs at least 1 optimiser step, not {self.total_steps}")
        if self.warmup_steps >= self.total_steps and self.kind != "none":
            raise ConfigError(
                f"lr_warmup_steps={self.warmup_steps} leaves no room for the decay in a schedule of "
                f"{self.total_steps} optimiser steps; lower lr_warmup_steps"
            )

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "none":
            return 1.0
        decay_steps = self.total_steps - 1 - self.warmup_steps
        progress = 1.0 if decay_steps <= 0 else min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape

    def state_dict(self) -> dict:
        return {"kind": self.kind, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_ratio": float(self.min_ratio)}


def baseline_loss(loss_type, n_items) -> float | None:
    """The loss of a model that knows nothing: uniform scores. None where it is not known."""
    if str(loss_type).upper() == "CE" and n_items:
        return math.log(n_items)  # softmax over every item id (padding included), as RecBole's CE
    if str(loss_type).upper() == "BPR":
        return math.log(2.0)  # -log sigmoid(0)
    return None


class TrainingGuards:
    """The guards' checks and the little state they need (kept in checkpoints for resume).

    Each ``check_*`` raises :class:`TrainingGuardError` when its guard is on and trips;
    ``where`` is a description of the place such as ``"epoch 0, batch 3 (optimiser step 1)"``.
    """

    def __init__(self, settings: dict, baseline: float | None = None):
        self.settings = settings
        self.baseline = baseline
        self.recent_losses = collections.deque(maxlen=BASELINE_WINDOW)
        self.baseline_warned = False
        self.metric_history: list[dict] = []

    def check_loss(self, loss_value: float, where: str) -> None:
        if self.settings["guard_nonfinite"] and not math.isfinite(loss_value):
            raise TrainingGuardError(
                f"non-finite training loss ({loss_value}) at {where}. Fix: lower learning_rate, "
                "set clip_grad_norm (e.g. {'max_norm': 5}), or look for log(0)/division by zero in "
                "the model; the failing batch's ids are in the debug bundle (guard_nonfinite: false "
                "turns this check off)"
            )

    def check_grads(self, grad_norm: float, where: str, first_bad) -> None:
        """``grad_norm``: the norm of all gradients together; ``first_bad()``: the name of the
        first parameter whose gradient is not finite (asked only when the norm is not)."""
        if not self.settings["guard_nonfinite"] or math.isfinite(grad_norm):
            return
        first = first_bad()
        raise TrainingGuardError(
            f"non-finite gradient (norm {grad_norm}) at {where}; first parameter with a non-finite "
            f"gradient: {first}. Fix: lower learning_rate, set clip_grad_norm, or check that "
            "parameter's computation (exp/log/division overflow); guard_nonfinite: false turns this off"
        )

    def check_lr(self, lr: float, step: int, total_steps: int, where: str) -> None:
        remaining = total_steps - step - 1
        if self.settings["guard_lr_zero"] and lr == 0.0 and remaining > 0:
            raise TrainingGuardError(
                f"learning rate is 0 at {where} with {remaining} of {total_steps} optimiser steps "
                "left: the rest of training would change nothing. Fix: learning_rate > 0, and an LR "
                "schedule as long as the training (lr_schedule_steps ~ computes "
                "ceil(batches per epoch / grad_accum_steps) * epochs; a schedule counted in batches "
                "or stepped per batch with gradient accumulation ends too early); "
                "guard_lr_zero: false turns this off"
            )

    def check_baseline(self, loss_value: float, step: int, where: str) -> None:
        """Call after each optimiser step with that step's mean loss (steps counted from 1)."""
        s = self.settings
        self.recent_losses.append(loss_value)
        if not s["guard_baseline_loss"] or self.baseline is None or len(self.recent_losses) < BASELINE_WINDOW:
            return
        mean = sum(self.recent_losses) / len(self.recent_losses)
        if abs(mean - self.baseline) > s["guard_baseline_tolerance"] * self.baseline:
            return
        message = (
            f"training loss is stuck at the random baseline: mean {mean:.4f} over the last "
            f"{len(self.recent_losses)} optimiser steps vs {self.baseline:.4f} (a model that knows "
            f"nothing) after {step} steps, at {where}. Fix: check learning_rate (> 0) and its "
            "schedule, that parameters are not frozen (requires_grad) and that labels match inputs"
        )
        if step >= s["guard_baseline_fail_steps"]:
            raise TrainingGuardError(message + "; guard_baseline_loss: false turns this off")
        if step >= s["guard_baseline_warn_steps"] and not self.baseline_warned:
            self.baseline_warned = True
            logger.warning(f"{message}; training stops after guard_baseline_fail_steps="
                           f"{s['guard_baseline_fail_steps']} steps if it stays there")

    def check_metrics(self, result: dict, epoch: int) -> None:
        """Call after each evaluation with its metrics."""
        s = self.settings
        metrics = {k: float(v) for k, v in (result or {}).items()}
        self.metric_history = (self.metric_history + [metrics])[-s["guard_frozen_metrics_evals"]:]
        n = s["guard_frozen_metrics_evals"]
        if (s["guard_frozen_metrics"] and len(self.metric_history) == n
                and all(m == self.metric_history[0] for m in self.metric_history)):
            shown = ", ".join(f"{k}={v}" for k, v in list(metrics.items())[:4])
            raise TrainingGuardError(
                f"metrics frozen: the last {n} evaluations (up to epoch {epoch}) gave identical "
                f"validation metrics ({shown}, ...): the model is not changing. Fix: check the "
                "learning rate (> 0, schedule not ended), frozen parameters and that the optimiser "
                "holds the model's parameters; guard_frozen_metrics: false turns this off"
            )

    def state_dict(self) -> dict:
        return {"recent_losses": list(self.recent_losses), "baseline_warned": self.baseline_warned,
                "metric_history": list(self.metric_history)}

    def load_state_dict(self, state: dict) -> None:
        self.recent_losses.clear()
        self.recent_losses.extend(state.get("recent_losses", []))
        self.baseline_warned = bool(state.get("baseline_warned", False))
        self.metric_history = [dict(m) for m in state.get("metric_history", [])]

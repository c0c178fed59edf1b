"""The shape of every nested or textual setting, and the rules that tie settings together.

:mod:`ss4rec.config.validation` types and bounds the numeric keys; this module owns the rest,
so a setting that passes here cannot crash RecBole later (after a full epoch, for a
``valid_metric`` that is not computed) or quietly change what training does (a negative
``clip_grad_norm.max_norm`` multiplies every gradient by a negative number: gradient ascent).

* :func:`shape_problem`: one key's value alone (``clip_grad_norm``, ``eval_args``,
  ``load_col``, ``metrics``, ``train_neg_sample_args``, filter intervals, ...), checked
  where each source is read (:func:`ss4rec.config.validation.check_values`);
* :func:`combination_problem`: keys together, on the merged settings RecBole ends up with
  (``valid_metric`` among ``metrics`` x ``topk``; attention heads dividing the hidden size).

    >>> shape_problem("clip_grad_norm", {"max_norm": -1})
    'max_norm: use a number > 0 (a negative one turns training into gradient ascent)'
"""

from __future__ import annotations

import math
import re

from recbole.evaluator.register import metric_types

# Metrics whose result has no @k (RecBole's output_metric); every other one is NAME@k per topk.
NO_CUTOFF_METRICS = {"auc", "gauc", "mae", "rmse", "logloss"}
CLIP_KEYS = {"max_norm", "norm_type", "error_if_nonfinite", "foreach"}
EVAL_KEYS = {"split", "order", "group_by", "mode"}
NEG_SAMPLE_KEYS = {"distribution", "sample_num", "alpha", "dynamic", "candidate_num"}
_EVAL_MODE = re.compile(r"^(full|labeled|uni[1-9][0-9]*|pop[1-9][0-9]*)$")
_NUMBER = r"\s*[-+]?(?:inf|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_INTERVAL = re.compile(rf"^[\[(]{_NUMBER},{_NUMBER}[\])]$")
KD_DAGFM_TEACHERS = ("CrossNet", "CIN")  # RecBole's KD_DAGFM eval()s `teacher`: only these names


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _clip_grad_norm(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "use a mapping such as {max_norm: 5}, or ~"
    unknown = sorted(set(map(str, value)) - CLIP_KEYS)
    if unknown:
        return f"unknown key(s) {unknown}: use max_norm (and optionally norm_type, error_if_nonfinite, foreach)"
    if "max_norm" not in value:
        return "max_norm is missing: use e.g. {max_norm: 5}"
    if not _number(value["max_norm"]) or value["max_norm"] <= 0:
        return "max_norm: use a number > 0 (a negative one turns training into gradient ascent)"
    norm = value.get("norm_type", 2)
    if not (norm in ("inf", float("inf")) or (_number(norm) and norm > 0)):
        return "norm_type: use a number > 0 or inf"
    for key in ("error_if_nonfinite", "foreach"):
        if value.get(key) is not None and not isinstance(value[key], bool):
            return f"{key}: use true or false"
    return None


def _split(split) -> str | None:
    if not isinstance(split, dict) or len(split) != 1:
        return "split: use {RS: [0.8, 0.1, 0.1]} or {LS: valid_and_test}"
    (kind, args), = split.items()
    # Runs need a train, a valid and a test part (training selects on valid, reports test).
    if kind == "RS":
        ok = isinstance(args, list) and len(args) == 3 and all(_number(a) and a > 0 for a in args)
        return None if ok else "split RS: use 3 ratios > 0 (train, valid, test), e.g. [0.8, 0.1, 0.1]"
    if kind == "LS":
        return None if args == "valid_and_test" else \
            "split LS: use valid_and_test (a run needs both a valid and a test part)"
    return f"split {kind!r} is unknown: use RS (ratios) or LS (leave-one-out)"


def _eval_args(value) -> str | None:
    if not isinstance(value, dict):
        return "use a mapping such as {split: {LS: valid_and_test}, order: TO, mode: full}"
    unknown = sorted(set(map(str, value)) - EVAL_KEYS)
    if unknown:
        return f"unknown key(s) {unknown}: use split, order, group_by and mode"
    if "split" in value and (problem := _split(value["split"])):
        return problem
    if value.get("order", "RO") not in ("RO", "TO"):
        return "order: use RO (random) or TO (time order)"
    if value.get("group_by", "user") not in ("user", "none", None):
        return "group_by: use user or none"
    mode = value.get("mode", "full")
    modes = mode if isinstance(mode, dict) else {"valid": mode}
    if isinstance(mode, dict) and (not mode or set(map(str, mode)) - {"valid", "test"}):
        return "mode: use a string, or a mapping with valid and/or test"
    if not all(isinstance(m, str) and _EVAL_MODE.match(m) for m in modes.values()):
        return "mode: use full, labeled, uniN or popN (e.g. uni100)"
    return None


def _columns(value) -> str | None:
    """load_col / unload_col / unused_col: ~ or {suffix: [field, ...]}."""
    if value is None:
        return None
    ok = isinstance(value, dict) and all(isinstance(k, str) and _is_str_list(v) for k, v in value.items())
    return None if ok else "use a mapping of file suffix to field names, e.g. {inter: [user_id, item_id, timestamp]}, or ~"


def _metrics(value) -> str | None:
    names = [value] if isinstance(value, str) else value
    if not _is_str_list(names) or not names:
        return "use a metric name or a list of them, e.g. [Hit, NDCG, MRR]"
    unknown = [m for m in names if m.lower() not in metric_types]
    if unknown:
        return f"unknown metric(s) {unknown}: use RecBole's ({', '.join(sorted(metric_types))})"
    if len({metric_types[m.lower()] for m in names}) > 1:
        return "ranking metrics (Hit, NDCG, ...) and value metrics (AUC, RMSE, ...) cannot be mixed: use one kind"
    return None


def _neg_sample_args(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "use a mapping such as {distribution: uniform, sample_num: 1}, or ~"
    unknown = sorted(set(map(str, value)) - NEG_SAMPLE_KEYS)
    if unknown:
        return f"unknown key(s) {unknown}: use {', '.join(sorted(NEG_SAMPLE_KEYS))}"
    if value.get("distribution", "uniform") not in ("uniform", "popularity", "none"):
        return "distribution: use uniform, popularity or none"
    sample_num = value.get("sample_num", 1)
    if sample_num != "none" and not (isinstance(sample_num, int) and not isinstance(sample_num, bool)
                                     and sample_num >= 1):
        return "sample_num: use an integer >= 1"
    if not _number(value.get("alpha", 1.0)):
        return "alpha: use a number"
    if not isinstance(value.get("dynamic", False), bool):
        return "dynamic: use true or false"
    candidates = value.get("candidate_num", 0)
    if not (isinstance(candidates, int) and not isinstance(candidates, bool) and candidates >= 0):
        return "candidate_num: use an integer >= 0"
    return None


def _interval(value) -> str | None:
    """RecBole's filter intervals: '[0,40]', '(1,inf)', several joined by ';', or a [low, high] list."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(_number(v) or v == float("inf") for v in value):
        return None
    if isinstance(value, str) and all(_INTERVAL.match(part.strip()) for part in value.split(";")):
        return None
    return "use an interval such as '[0,40]' or '[5,inf)' (brackets: [ ] inclusive, ( ) exclusive), or ~"


def _valid_metric(value) -> str | None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]+(@[1-9][0-9]*)?", value):
        return "use a metric name with its cut-off, e.g. NDCG@10"
    return None


def _teacher(value) -> str | None:
    return None if value in KD_DAGFM_TEACHERS else f"use one of {', '.join(KD_DAGFM_TEACHERS)}"


SHAPES = {
    "clip_grad_norm": _clip_grad_norm, "eval_args": _eval_args, "load_col": _columns,
    "unload_col": _columns, "unused_col": _columns, "metrics": _metrics,
    "train_neg_sample_args": _neg_sample_args, "user_inter_num_interval": _interval,
    "item_inter_num_interval": _interval, "valid_metric": _valid_metric, "teacher": _teacher,
}


def shape_problem(key: str, value) -> str | None:
    """What is wrong with the shape of ``value`` for ``key`` ("use ..."), or None."""
    check = SHAPES.get(key)
    return check(value) if check is not None else None


def computed_metrics(metrics, topk) -> list[str]:
    """The result names RecBole computes for ``metrics`` at ``topk`` (``ndcg@10``, ``auc``)."""
    names = [metrics] if isinstance(metrics, str) else list(metrics or ())
    cutoffs = [topk] if isinstance(topk, int) else list(topk or ())
    return [m.lower() if m.lower() in NO_CUTOFF_METRICS else f"{m.lower()}@{k}" for m in names
            for k in (cutoffs if m.lower() not in NO_CUTOFF_METRICS else [None])]


def combination_problem(settings) -> str | None:
    """A one-line ConfigError message for settings that do not go together, or None.

    ``settings``: the merged values (RecBole's ``Config`` or a dict with every key read here).
    """
    get = settings.get if isinstance(settings, dict) else (lambda k, d=None: settings[k] if settings[k] is not None else d)
    metrics, topk, valid_metric = get("metrics"), get("topk"), get("valid_metric")
    if metrics is not None and valid_metric is not None:
        computed = computed_metrics(metrics, topk)
        if str(valid_metric).lower() not in computed:
            shown = ", ".join(computed[:8]) + (" ..." if len(computed) > 8 else "")
            return (f"valid_metric={valid_metric!r} is not among the metrics computed ({shown}): use one "
                    "of those, or add its metric to metrics and its cut-off to topk")
    heads, hidden = get("n_heads"), get("hidden_size")
    if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads:
        return (f"hidden_size={hidden} is not divisible by n_heads={heads}: attention splits the hidden "
                f"size across heads; use e.g. hidden_size={hidden - hidden % heads or heads} or n_heads that divides {hidden}")
    return None

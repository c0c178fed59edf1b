"""``ss4rec inspect --signal``: do a log's order and its gaps carry signal? Trained, paired tests.

    >>> result = signal_tests(log, "runs/inspect-ml-100k", epochs=20, seed=2020)  # doctest: +SKIP
    >>> result["verdicts"]  # doctest: +SKIP
    ['order carries signal: yes (Δ NDCG@10 real − shuffled +0.0312 [+0.0231, +0.0395], 943 users)', ...]

Both tests train small fast models (``ml-100k-quick``'s settings, ``train_mode: sequence``,
learning rate 0.003, at most 30 epochs, early stopping after 4 without gain) through compare's
own machinery (:func:`ss4rec.evaluation.compare.run_model`:
a subprocess per run, then ``ss4rec evaluate`` for per-user ranks) on datasets written into
``OUTPUT/data``, and compare per-user test NDCG@10 with the paired bootstrap of
:func:`ss4rec.evaluation.study.bootstrap_ci`. Every variant keeps every user's valid and test
targets (items and timestamps), so the same users are tested on the same targets:

* **Sequential signal** (Klenitskiy et al., RecSys 2024): SASRec on the real order vs on
  :func:`shuffled_order`, each user's *training part* (every interaction before the valid
  target) with its items put in a random order; the timestamps stay where they were (sorted),
  so only which item sits at which training position changes.
* **Time signal**: SS4Rec on the real gaps vs on :func:`permuted_gaps`, each user's training
  gaps (between consecutive interactions of the training part) permuted within the user and
  the timestamps rebuilt from them; vs SS4Rec ``ignore-time`` (a constant step) on the real data.

A verdict is "yes" when the 95% CI of (real − variant) lies above 0: the real data is better.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ss4rec.data.atomic import StagedOutput
from ss4rec.data.time_profile import TimeLog, positions
from ss4rec.evaluation.compare import ModelSpec, run_model, settings_for, shared_settings
from ss4rec.evaluation.probe import ndcg_at
from ss4rec.evaluation.study import bootstrap_ci

SIGNAL_CONFIG = "ml-100k-quick"  # small fast models, sequence mode
VARIANTS = ("real", "order-shuffled", "gaps-permuted")
# The positive control's budget (docs/benchmarks.md): at ml-100k-quick's learning rate 0.001 and
# 20 epochs, models were still far from the control's time-aware ceiling when they stopped.
DEFAULT_EPOCHS = 30
DEFAULT_PATIENCE = 4
DEFAULT_LEARNING_RATE = 0.003
DEFAULT_TIME_UNIT = "auto"  # a typical gap is one unit: the time-aware model's fairest chance


def shuffled_order(log: TimeLog, seed: int = 0) -> np.ndarray:
    """``[N]`` items with each user's training part in a random order (vectorised).

    Kept: every timestamp (in place, sorted), each user's valid and test targets (the items
    and their timestamps), the multiset of each user's training items. Changed: which
    training item sits at which training position.
    """
    pos = positions(log)
    rows = np.flatnonzero(pos.training)  # grouped by user, in order
    keys = np.random.default_rng(seed).random(len(rows))
    shuffled = rows[np.lexsort((keys, log.users[rows]))]  # the same users' rows, randomly ordered
    items = log.items.copy()
    items[rows] = log.items[shuffled]
    return items


def permuted_gaps(log: TimeLog, seed: int = 0) -> np.ndarray:
    """``[N]`` timestamps rebuilt from each user's training gaps permuted within the user.

    The training part of a user with ``n`` interactions is every interaction before the
    valid target (:func:`ss4rec.data.time_profile.positions`); its ``h - 1`` gaps are permuted
    and the times rebuilt as ``t_0 + cumsum``. Kept: every item in place; each user's first
    and last training timestamps (the gaps sum to the same span), hence the valid and test
    targets' timestamps and their gaps to the last training item; the multiset of each
    user's training gaps. Changed: which training gap lies between which two training items.
    """
    pos = positions(log)
    rows = np.flatnonzero(pos.train_target)  # rows with a gap into them inside the training part
    keys = np.random.default_rng(seed).random(len(rows))
    source = rows[np.lexsort((keys, log.users[rows]))]
    gaps = np.where(pos.first, 0.0, pos.gaps)
    gaps[rows] = pos.gaps[source]
    first_time = np.repeat(log.times[pos.starts], pos.counts)
    times = np.where(pos.training, first_time + pd.Series(gaps).groupby(log.users).cumsum().to_numpy(), log.times)
    last_training = np.flatnonzero(pos.training & ~np.r_[pos.training[1:], False])  # each user's last one
    times[last_training] = log.times[last_training]  # exact, whatever the float rounding of the sums
    return times


def write_dataset(folder, name: str, log: TimeLog, items=None, times=None) -> Path:
    """``folder/name/name.inter`` (user, item, timestamp) from ``log`` with ``items``/``times``
    replaced; rows in the log's (user, time) order. Returns the folder that holds it."""
    times = log.times if times is None else times
    frame = pd.DataFrame({"user_id:token": log.users + 1, "item_id:token": (log.items if items is None else items) + 1,
                          "timestamp:float": times})
    whole = bool(np.all(np.mod(times, 1) == 0))
    with StagedOutput(folder, overwrite=True) as stage:
        frame.to_csv(stage.path / f"{name}.inter", sep="\t", index=False, float_format="%.0f" if whole else None)
        stage.commit(Path(folder) / name)
    return Path(folder) / name


def _runs(time_unit: str):
    """(variant, spec) of every run, in the order they train."""
    ss4rec = ModelSpec("SS4Rec", "SS4Rec", {"time_unit": time_unit})
    return [("real", ModelSpec("SASRec", "SASRec")), ("order-shuffled", ModelSpec("SASRec", "SASRec")),
            ("real", ss4rec), ("gaps-permuted", ss4rec),
            ("real", ModelSpec("ignore-time", "SS4Rec", {"model_type": "ignore-time"}))]


def _user_ndcg(run_dir) -> pd.Series | None:
    path = Path(run_dir) / "evaluate" / "user_ranks.csv"
    if not path.is_file():
        return None
    ranks = pd.read_csv(path, dtype={"user_id": str}).set_index("user_id")["rank"]
    return pd.Series(ndcg_at(ranks.to_numpy(), 10), index=ranks.index)


def paired(real: pd.Series, other: pd.Series) -> dict:
    """Mean per-user difference real − other and its paired 95% bootstrap CI."""
    users = real.index.intersection(other.index)
    diff = real.loc[users].to_numpy() - other.loc[users].to_numpy()
    low, high = bootstrap_ci(diff)
    return {"delta": float(diff.mean()), "ci": [low, high], "users": int(len(users))}


def verdict(claim: str, label: str, comparison: dict | None, why: str = "") -> str:
    """``"order carries signal: yes (Δ NDCG@10 real − shuffled +0.0312 [+0.0231, +0.0395], 943 users)"``."""
    if comparison is None:
        return f"{claim}: n/a ({why})"
    low, high = comparison["ci"]
    answer = "yes" if low > 0 else "no"
    return (f"{claim}: {answer} (Δ NDCG@10 {label} {comparison['delta']:+.4f} "
            f"[{low:+.4f}, {high:+.4f}], {comparison['users']:,} users)")


def signal_tests(log: TimeLog, out_dir, epochs: int = DEFAULT_EPOCHS, seed: int = 2020,
                 patience: int = DEFAULT_PATIENCE, time_unit: str = DEFAULT_TIME_UNIT,
                 config_dict=None, log_line=print, timeout_s=None) -> dict:
    """Write the variants into ``out_dir/data``, train the five runs into ``out_dir/runs``, compare.

    ``config_dict`` goes over the ``ml-100k-quick`` settings (e.g. a smaller model in tests).
    A run that finished before with the same settings and data is reused (compare's rule).
    Returns ``{"verdicts", "comparisons", "runs", "settings", "settings_line"}``.
    """
    out_dir = Path(out_dir).resolve()
    data_dir = out_dir / "data"
    write_dataset(data_dir, "real", log)
    write_dataset(data_dir, "order-shuffled", log, items=shuffled_order(log, seed))
    write_dataset(data_dir, "gaps-permuted", log, times=permuted_gaps(log, seed))
    extra = {"train_mode": "sequence", "stopping_step": patience, "learning_rate": DEFAULT_LEARNING_RATE,
             "data_path": str(data_dir), "seed": seed, **(config_dict or {})}
    shared = shared_settings([SIGNAL_CONFIG], extra, epochs)
    plan = _runs(time_unit)
    specs = [spec for _, spec in plan]
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS") or "1"  # the subprocesses' threads
    runs, scores = [], {}
    for i, (variant, spec) in enumerate(plan, 1):
        started = time.monotonic()
        log_line(f"[inspect --signal] run {i}/{len(plan)}: {spec.label} on {variant}: training", flush=True)
        row = run_model(spec, settings_for(spec, shared, specs), variant, out_dir / "runs" / variant, device="cpu",
                        timeout_s=timeout_s, log=log_line)
        entry = {"model": spec.label, "variant": variant, "status": row["status"], "run_dir": row["run_dir"],
                 "seconds": round(time.monotonic() - started, 1)}
        if row["status"] == "ok":
            entry.update({"ndcg@10": row.get("ndcg@10"), "epochs_run": row.get("epochs_run"),
                          "best_epoch": row.get("best_epoch")})
            per_user = _user_ndcg(row["run_dir"])
            if per_user is None:
                entry.update(status="failed", error=f"no per-user ranks ({row.get('evaluate_error') or 'evaluate failed'})")
            else:
                scores[(spec.label, variant)] = per_user
        else:
            entry["error"] = row["error"]
        runs.append(entry)
        detail = f"test NDCG@10 {entry['ndcg@10']:.4f}" if entry["status"] == "ok" else entry["error"]
        log_line(f"[inspect --signal] run {i}/{len(plan)}: {spec.label} on {variant}: {entry['status']} "
                 f"({detail}; {entry['seconds']:.0f} s)", flush=True)

    def compare_pair(model_a, variant_a, model_b, variant_b):
        a, b = scores.get((model_a, variant_a)), scores.get((model_b, variant_b))
        return None if a is None or b is None else paired(a, b)

    comparisons = {
        "order": compare_pair("SASRec", "real", "SASRec", "order-shuffled"),
        "gaps": compare_pair("SS4Rec", "real", "SS4Rec", "gaps-permuted"),
        "time_vs_ignore_time": compare_pair("SS4Rec", "real", "ignore-time", "real"),
    }
    failed = "a run failed (see runs)"
    verdicts = [verdict("order carries signal", "real − shuffled (SASRec)", comparisons["order"], failed),
                verdict("gaps carry signal", "real − permuted (SS4Rec)", comparisons["gaps"], failed)]
    versus = comparisons["time_vs_ignore_time"]
    if versus is not None:
        low, high = versus["ci"]
        verdicts.append(f"SS4Rec vs ignore-time on the real data: Δ NDCG@10 {versus['delta']:+.4f} "
                        f"[{low:+.4f}, {high:+.4f}]")
    settings = {"config": SIGNAL_CONFIG, "epochs": epochs, "stopping_step": patience, "seed": seed,
                "learning_rate": DEFAULT_LEARNING_RATE, "train_mode": "sequence", "time_unit": time_unit, "threads": os.environ["OMP_NUM_THREADS"],
                **(config_dict or {})}
    settings_line = (f"Settings: {SIGNAL_CONFIG}, train_mode sequence, learning rate {settings['learning_rate']}, at most "
                     f"{epochs} epochs (early stopping "
                     f"after {patience} evaluations without gain), seed {seed}, SS4Rec time_unit {time_unit}; "
                     "95% paired bootstrap CIs over the test users; data variants in data/, runs in runs/.")
    return {"verdicts": verdicts, "comparisons": comparisons, "runs": runs, "settings": settings,
            "settings_line": settings_line}

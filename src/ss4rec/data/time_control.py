"""A positive control for time signal: a synthetic log whose next item depends on a gap.

    >>> log = time_control_log(users=50, seed=0)
    >>> sorted(log.columns)
    ['item_id:token', 'timestamp:float', 'user_id:token']

The rule (``RULES``, also written into the dataset's ``.json`` beside its ``.inter``):

* ``items`` items (60); four fixed random permutations ``succ_0 .. succ_3`` of them (from ``seed``);
* each user has a random number of interactions (``min_per_user`` to ``max_per_user``), with
  gaps between consecutive interactions drawn independently, log-uniform between 1 minute
  and 1 day;
* the gap *into* an interaction picks its bucket ``b``: the four quartiles of that
  distribution, with edges 6.2 min, 38 min and 3.9 h (``60 · 1440^(j/4)`` s);
* the first two items of a user are uniform; after that, the item after ``i_k`` is
  ``succ_b(i_k)``, except with probability ``noise`` (0.1), when it is uniform. Which gap
  picks ``b`` is the ``rule``:

  - ``last-gap`` (default): the gap *into* ``i_k`` (``t_k − t_{k−1}``), the last gap of the
    history. Every time-aware model can see it: TiSASRec as an interval between its last two
    items, SS4Rec through the S5 steps of its history.
  - ``next-gap``: the gap from ``i_k`` to the item being predicted (``t_{k+1} − t_k``): how
    long after the last interaction the request comes. Only a model that reads the time of
    the request can see it: SS4Rec (its last S5 step), not TiSASRec (which reads only the
    history's times).

So the next item is a function of the last item *and a gap*: a model that reads that gap
can be right 90% of the time, one that does not (SASRec, GRU4Rec, S6-only, ignore-time) can
only spread its guess over the four successors. Order carries signal too (the successor
tables), so shuffling a user's history destroys it. Gaps are drawn independently of items and
of each other, so no item sequence reveals a gap, and permuting a user's gaps keeps every
marginal and destroys only the gap → item rule.

Ideal NDCG@10: ≈ 0.90 for a time-aware model (rank 1 when the rule applies), ≈ 0.58 for the
best time-blind one (ranks 1–4 at random: 0.9 × mean(1, 0.63, 0.5, 0.43)).
"""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import pandas as pd

from ss4rec.data.atomic import StagedOutput, check_dataset_name

GAP_RANGE_S = (60.0, 86400.0)  # log-uniform gaps, 1 minute to 1 day
BUCKET_EDGES_S = tuple(60.0 * 1440.0 ** (j / 4) for j in (1, 2, 3))  # the distribution's quartiles
START_S = 1_600_000_000.0  # 2020-09-13: epoch seconds of the earliest possible first interaction
RULES = {
    "last-gap": "next item = succ_b(last item), b = quartile bucket of the gap into the last item "
                "(edges 6.2 min, 38 min, 3.9 h; gaps log-uniform 1 min .. 1 day); uniform with probability noise",
    "next-gap": "next item = succ_b(last item), b = quartile bucket of the gap from the last item to the next "
                "(edges 6.2 min, 38 min, 3.9 h; gaps log-uniform 1 min .. 1 day); uniform with probability noise",
}


def time_control_log(users: int = 600, items: int = 60, min_per_user: int = 30, max_per_user: int = 60,
                     noise: float = 0.1, seed: int = 0, rule: str = "last-gap") -> pd.DataFrame:
    """The control's interactions as a RecBole atomic table (``user_id:token``, ``item_id:token``,
    ``timestamp:float``), users in order, each user's interactions in time order."""
    if users < 1 or items < 5 or not 3 <= min_per_user <= max_per_user or not 0 <= noise <= 1:
        raise ValueError("time_control_log needs users >= 1, items >= 5, 3 <= min_per_user <= max_per_user "
                         "and 0 <= noise <= 1")
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {sorted(RULES)}")
    shift = 1 if rule == "last-gap" else 0  # the gap into item k (k-1 of the gaps) or out of it (k)
    rng = np.random.default_rng(seed)
    successors = _draw_successors(rng, items)  # [4 items]
    counts = rng.integers(min_per_user, max_per_user + 1, size=users)
    user_col, item_col, time_col = [], [], []
    low, high = np.log(GAP_RANGE_S[0]), np.log(GAP_RANGE_S[1])
    for user, n in enumerate(counts):
        draws = np.exp(rng.uniform(low, high, size=n - 1))
        # whole seconds, as real logs; the rule reads the gaps of the times as written
        times = np.round(START_S + rng.uniform(0, 86400 * 30) + np.concatenate([[0.0], np.cumsum(draws)]))
        buckets = np.searchsorted(BUCKET_EDGES_S, np.diff(times))  # [n-1], bucket of the gap into k+1
        seq = np.empty(n, dtype=np.int64)
        seq[:2] = rng.integers(0, items, size=2)
        for k in range(1, n - 1):  # item k+1 from item k and the gap into it
            seq[k + 1] = rng.integers(0, items) if rng.random() < noise else successors[buckets[k - shift], seq[k]]
        user_col.append(np.full(n, user + 1))
        item_col.append(seq + 1)
        time_col.append(times)
    return pd.DataFrame({"user_id:token": np.concatenate(user_col), "item_id:token": np.concatenate(item_col),
                         "timestamp:float": np.concatenate(time_col)})


def successor_tables(items: int = 60, seed: int = 0) -> np.ndarray:
    """``[4 items]``: row ``b`` maps a 0-based item to its successor after a gap in bucket ``b``."""
    return _draw_successors(np.random.default_rng(seed), items)


def _draw_successors(rng, items: int) -> np.ndarray:
    return np.stack([rng.permutation(items) for _ in range(4)])


def write_time_control(output_dir, name: str = "time-control", overwrite: bool = False, **options) -> dict:
    """Write ``output_dir/NAME/NAME.inter`` (and ``NAME.json``: the rule and its options).

    Train on it with ``--dataset NAME --data-path output_dir``. Returns the description.
    """
    check_dataset_name(name)
    log = time_control_log(**options)
    defaults = {key: p.default for key, p in inspect.signature(time_control_log).parameters.items()}
    options = {**defaults, **options}
    facts = {"dataset": name, "rule": RULES[options["rule"]], "bucket_edges_s": list(BUCKET_EDGES_S),
             "gap_range_s": list(GAP_RANGE_S), "options": options,
             "interactions": len(log), "synthetic": True}
    final = os.path.join(output_dir, name)
    with StagedOutput(final, overwrite=overwrite) as stage:
        log.to_csv(stage.path / f"{name}.inter", sep="\t", index=False, float_format="%.0f")
        (stage.path / f"{name}.json").write_text(json.dumps(facts, indent=2) + "\n")
        stage.commit(final)
    return {**facts, "inter_file": os.path.join(final, f"{name}.inter")}

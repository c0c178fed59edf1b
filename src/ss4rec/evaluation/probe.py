"""Time diagnostics of a trained model: quality by gap, and how rankings react to the request time.

    $ ss4rec evaluate --checkpoint RUN/checkpoints/SS4Rec-best.pth --time-probe

* **Gap buckets.** Each test user's gap between the last history item and the target
  (exact seconds, from the data, whatever the model reads), in buckets (< 1 min, < 1 h,
  < 1 day, < 30 days, more); NDCG@10 per bucket. A model that uses time should gain most
  where gaps are informative.
* **Time shift.** The request time (the time field of the evaluated interaction) is moved
  by +1 h, +1 day and +30 days; for each user, the Spearman rank correlation of the item
  scores before and after (items of the history excluded, as in evaluation). A model that
  never reads the request time gives exactly 1.0 — a built-in sanity check. SS4Rec reads
  it (its last S5 step is the gap to the request); TiSASRec and SASRec do not.

Used by :func:`ss4rec.evaluation.evaluate.evaluate_checkpoint` (``time_probe=True``), which writes
``time_probe.json`` and a ``target_gap_seconds`` column in ``user_ranks.csv``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

GAP_BUCKETS = (("< 1 min", 60.0), ("< 1 h", 3600.0), ("< 1 day", 86400.0),
               ("< 30 days", 30 * 86400.0), (">= 30 days", math.inf))
TIME_SHIFTS = {"+1 h": 3600.0, "+1 day": 86400.0, "+30 days": 30 * 86400.0}
# Rank correlations cost a sort of every item per user: enough users for a stable mean.
PROBE_USERS = 2000


def test_gaps(config, dataset) -> dict:
    """Original user id -> seconds between the user's last two interactions (leave-one-out's
    test target and the last item before it).

    ``dataset`` must keep exact times (:class:`ss4rec.data.dataset.SS4RecDataset`, e.g. from
    :func:`ss4rec.data.loaders.exact_time_dataset`): RecBole min-max normalises times in its
    bundled ml-100k settings.
    """
    uid_field, time_field = config["USER_ID_FIELD"], config["TIME_FIELD"]
    feat = dataset.flat_feat if dataset.flat_feat is not None else dataset.inter_feat
    users = np.asarray(feat[uid_field]).astype(np.int64)
    times = np.asarray(feat[time_field], dtype=np.float64)
    order = np.lexsort((times, users))  # by user, then time
    users, times = users[order], times[order]
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])  # each user's last row
    has_two = (last > 0) & (users[np.maximum(last - 1, 0)] == users[last])
    last = last[has_two]
    gaps = times[last] - times[last - 1]
    tokens = dataset.id2token(uid_field, users[last])
    return dict(zip(tokens.tolist(), gaps.tolist()))


def gap_bucket(gap_seconds: float) -> str:
    return next(name for name, upper in GAP_BUCKETS if gap_seconds < upper)


def ndcg_at(ranks, k: int):
    """Per-user NDCG@k of a single held-out item at ``ranks`` (1 = top)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def gap_bucket_table(ndcg, gaps) -> list[dict]:
    """Mean of per-user ``ndcg`` (NDCG@10) and user count per gap bucket (every bucket
    listed, empty ones with None)."""
    ndcg = np.asarray(ndcg, dtype=np.float64)
    names = np.array([gap_bucket(g) for g in gaps])
    rows = []
    for name, _ in GAP_BUCKETS:
        inside = names == name
        rows.append({"bucket": name, "users": int(inside.sum()),
                     "ndcg@10": float(ndcg[inside].mean()) if inside.any() else None})
    return rows


def rank_correlations(before, after) -> np.ndarray:
    """Per-row Spearman correlation of two ``[U n_items]`` score arrays, over finite entries.

    Rows that are identical give exactly 1.0 (no rounding through the correlation formula).
    """

    out = np.empty(len(before))
    for i, (a, b) in enumerate(zip(before, after)):
        if np.array_equal(a, b):
            out[i] = 1.0
            continue
        keep = np.isfinite(a) & np.isfinite(b)
        out[i] = spearmanr(a[keep], b[keep]).statistic
    return out


def shift_summary(correlations: dict) -> dict:
    """``{shift: [U] correlations}`` -> mean, min and user count per shift."""
    return {name: {"spearman_mean": float(np.mean(c)), "spearman_min": float(np.min(c)), "users": len(c)}
            for name, c in correlations.items()}

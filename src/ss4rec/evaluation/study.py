"""A multi-seed comparison's statistics: mean ± std over seeds, bootstrap CIs over users.

    >>> from ss4rec.evaluation.study import summarise
    >>> summary = summarise(rows, topk=[1, 5, 10, 20], reference="SS4Rec")  # doctest: +SKIP

Input: the rows of :func:`ss4rec.evaluation.compare.compare`, one per model × seed, each with its run
folder, whose ``evaluate/user_ranks.csv`` holds every test user's rank of the held-out item
(and ``evaluate/time_probe.json`` the time diagnostics).

* **Mean ± std** of each test metric over a model's seeds (sample std; 0 for one seed), as
  RecBole computed them.
* **CIs over users.** A user's NDCG@10 is averaged over the model's seeds first. The 95%
  CI of a model's NDCG@10 and the *paired* CI of its difference from the reference model
  (the same test users, per-user differences) are percentile bootstraps over users
  (``scipy.stats.bootstrap``). They measure how much the result depends on which users
  were tested; the seed spread is the std column.
* NDCG@K against K, NDCG@10 by gap bucket and the time-shift correlations, per model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from ss4rec.evaluation.probe import gap_bucket_table, ndcg_at

CURVE_KS = (1, 2, 5, 10, 20, 50)
BOOTSTRAP_RESAMPLES = 5000
CONFIDENCE = 0.95


def _user_ranks(run_dir):
    """A run's ``evaluate/user_ranks.csv`` indexed by user id (a DataFrame), or None."""

    path = Path(run_dir) / "evaluate" / "user_ranks.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"user_id": str}).set_index("user_id")


def _time_shift(run_dir) -> dict | None:
    path = Path(run_dir) / "evaluate" / "time_probe.json"
    return json.loads(path.read_text(encoding="utf-8"))["time_shift"] if path.is_file() else None


def bootstrap_ci(values) -> tuple[float, float]:
    """Percentile-bootstrap 95% CI of the mean of ``values`` (fixed random state)."""

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    result = bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                       method="percentile", random_state=0, vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def best_epoch(results: dict) -> int | None:
    """1-based epoch of the best validation score of a ``results.json`` (RecBole keeps the first best)."""
    history = results.get("history") or []
    metric = str(results.get("config", {}).get("valid_metric", "NDCG@10")).lower()
    scores = [h.get("valid", {}).get(metric) for h in history]
    scores = [s for s in scores if s is not None]
    return int(np.argmax(scores)) + 1 if scores else None


def summarise(rows, topk, reference: str | None = "SS4Rec") -> dict:
    """Per model: seeds, metric mean ± std, CIs, curves, gap buckets, time shift (JSON-able)."""

    metrics = [f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in topk]
    models = list(dict.fromkeys(r["model"] for r in rows))
    per_user = {}  # model -> pd.DataFrame of seed-averaged per-user values
    out = {"models": [], "reference": None, "confidence": CONFIDENCE, "resamples": BOOTSTRAP_RESAMPLES}
    for model in models:
        ok = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        entry = {"model": model, "runs": len([r for r in rows if r["model"] == model and r["status"] != "missing"]),
                 "seeds_ok": len(ok),
                 "seeds": [r.get("seed") for r in ok]}
        if ok:
            for m in metrics:
                entry[m] = _mean_std([r[m] for r in ok])
            entry["train_mode"] = ", ".join(sorted({str(r.get("train_mode", "")) for r in ok}))
            entry["epochs_run"] = [r["epochs_run"] for r in ok]
            entry["best_epoch"] = [r.get("best_epoch") for r in ok]
            entry["seconds_per_epoch"] = float(np.mean([r["seconds_per_epoch"] for r in ok]))
            entry["peak_memory_mb"] = float(max(r["peak_memory_mb"] for r in ok))
            entry["memory_kind"] = ok[0]["memory_kind"]
        ranks = [_user_ranks(r["run_dir"]) for r in ok]
        ranks = [r for r in ranks if r is not None]
        if ranks:
            users = sorted(set.intersection(*(set(r.index) for r in ranks)))
            table = {f"ndcg@{k}": np.mean([ndcg_at(r.loc[users, "rank"], k) for r in ranks], axis=0)
                     for k in CURVE_KS}
            frame = pd.DataFrame(table, index=users)
            per_user[model] = frame
            entry["users"] = len(users)
            entry["ndcg@10_user_mean"] = float(frame["ndcg@10"].mean())
            entry["ndcg@10_ci"] = bootstrap_ci(frame["ndcg@10"])
            entry["ndcg_at_k"] = {str(k): float(frame[f"ndcg@{k}"].mean()) for k in CURVE_KS}
            if "target_gap_seconds" in ranks[0].columns:  # the gap is the data's: any seed's
                entry["gap_buckets"] = gap_bucket_table(frame["ndcg@10"], ranks[0].loc[users, "target_gap_seconds"])
        shifts = [s for s in (_time_shift(r["run_dir"]) for r in ok) if s]
        if shifts:
            entry["time_shift"] = {name: float(np.mean([s[name]["spearman_mean"] for s in shifts]))
                                   for name in shifts[0]}
        out["models"].append(entry)

    if reference not in per_user and per_user:
        reference = next(iter(per_user))  # the first model with ranks
    if reference in per_user:
        out["reference"] = reference
        ref = per_user[reference]["ndcg@10"]
        for entry in out["models"]:
            if entry["model"] == reference or entry["model"] not in per_user:
                continue
            mine = per_user[entry["model"]]["ndcg@10"]
            common = ref.index.intersection(mine.index)
            diff = mine.loc[common].to_numpy() - ref.loc[common].to_numpy()
            entry["delta_ndcg@10"] = float(diff.mean())
            entry["delta_ndcg@10_ci"] = bootstrap_ci(diff)
            entry["paired_users"] = len(common)
    return out


def _pm(value) -> str:
    mean, std = value
    return f"{mean:.4f} ± {std:.4f}"


def markdown_summary(summary: dict, topk) -> str:
    """The mean ± std table with CI columns, and the time diagnostics, in Markdown."""
    k = 10 if 10 in topk else topk[-1]
    ref = summary["reference"]
    header = ["model", "train mode", "seeds", f"HR@{k}", f"NDCG@{k}", f"MRR@{k}", "NDCG@10 95% CI (users)",
              f"Δ NDCG@10 vs {ref} [95% CI]" if ref else "Δ NDCG@10", "epochs run", "best epoch",
              "s/epoch", "peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in summary["models"]:
        if not e["seeds_ok"]:
            status = "failed" if e["runs"] else "not run yet"
            lines.append("| " + " | ".join([e["model"], "", f"0/{e['runs']}", status, *[""] * (len(header) - 4)]) + " |")
            continue
        ci = e.get("ndcg@10_ci")
        if e["model"] == ref:
            delta = "(reference)"
        elif "delta_ndcg@10" in e:
            lo, hi = e["delta_ndcg@10_ci"]
            mark = "" if lo <= 0 <= hi else " *"
            delta = f"{e['delta_ndcg@10']:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}"
        else:
            delta = ""
        cells = [e["model"], e["train_mode"], f"{e['seeds_ok']}/{e['runs']}", _pm(e[f"hit@{k}"]), _pm(e[f"ndcg@{k}"]),
                 _pm(e[f"mrr@{k}"]), f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "",
                 delta, ", ".join(str(x) for x in e["epochs_run"]),
                 ", ".join("?" if x is None else str(x) for x in e["best_epoch"]),
                 f"{e['seconds_per_epoch']:.1f}", f"{e['peak_memory_mb']:.0f} ({e['memory_kind']})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Metrics: mean ± sample std over seeds (RecBole's full-ranking test metrics). CIs: "
              f"percentile bootstrap over test users ({summary['resamples']:,} resamples) of per-user "
              "NDCG@10 averaged over seeds; Δ is paired by user; * marks a CI that excludes 0."]
    with_gaps = [e for e in summary["models"] if e.get("gap_buckets")]
    if with_gaps:
        names = [b["bucket"] for b in with_gaps[0]["gap_buckets"]]
        counts = [b["users"] for b in with_gaps[0]["gap_buckets"]]
        lines += ["", "NDCG@10 by gap between the last history item and the target (users per bucket in "
                  "the header):", "",
                  "| model | " + " | ".join(f"{n} ({c})" for n, c in zip(names, counts)) + " |",
                  "|---|" + "---|" * len(names)]
        for e in with_gaps:
            cells = ["" if b["ndcg@10"] is None else f"{b['ndcg@10']:.4f}" for b in e["gap_buckets"]]
            lines.append(f"| {e['model']} | " + " | ".join(cells) + " |")
    with_shift = [e for e in summary["models"] if e.get("time_shift")]
    if with_shift:
        names = list(with_shift[0]["time_shift"])
        lines += ["", "Rank correlation (Spearman, mean over users and seeds) of each user's scores when the "
                  "request time moves (1.0: the ranking ignores when it is asked for):", "",
                  "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for e in with_shift:
            lines.append(f"| {e['model']} | " + " | ".join(f"{e['time_shift'][n]:.4f}" for n in names) + " |")
    return "\n".join(lines) + "\n"

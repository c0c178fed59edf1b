"""The comparison's plots (PNG, matplotlib), drawn from :func:`ss4rec.evaluation.study.summarise`'s output.

    >>> plot_summary(summary, "runs/cmp")  # doctest: +SKIP
    {'ndcg10_ci': 'runs/cmp/ndcg10_ci.png', ...}

* ``ndcg10_ci.png``: NDCG@10 per model with its 95% CI over users;
* ``ndcg_at_k.png``: NDCG@K against K;
* ``gap_buckets.png``: NDCG@10 per gap bucket (gap between the last history item and the
  target), with the users in each bucket;
* ``time_shift.png``: rank correlation of the scores when the request time moves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

PLOTS = ("ndcg10_ci", "ndcg_at_k", "gap_buckets", "time_shift")


def _figure(width=7.0, height=4.0):
    # A bare Figure, not pyplot: no backend switch and no global state, so this also runs
    # inside a notebook without changing how its own plots display.

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long model labels stay in the picture
    return str(path)


def _grouped_bars(ax, groups, series: dict, ylabel):
    """Bars of ``series`` (label -> values per group), side by side within each group."""

    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them


def plot_summary(summary: dict, out_dir) -> dict:
    """Write the plots that the summary has data for; returns ``{name: path}``."""
    out_dir = Path(out_dir)
    models = [e for e in summary["models"] if e.get("ndcg@10_ci")]
    written = {}
    if not models:
        return written

    fig, ax = _figure(7.0, 0.5 + 0.45 * len(models))
    names = [e["model"] for e in models][::-1]
    means = [e["ndcg@10_user_mean"] for e in models][::-1]
    lows = [m - e["ndcg@10_ci"][0] for m, e in zip(means, models[::-1])]
    highs = [e["ndcg@10_ci"][1] - m for m, e in zip(means, models[::-1])]
    ax.barh(names, means, xerr=[lows, highs], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xlabel("test NDCG@10, seed-averaged (95% CI over users)")
    written["ndcg10_ci"] = _save(fig, out_dir / "ndcg10_ci.png")

    fig, ax = _figure()
    for e in models:
        ks = sorted(e["ndcg_at_k"], key=int)  # JSON keys: "1", "2", ...
        ax.plot([int(k) for k in ks], [e["ndcg_at_k"][k] for k in ks], marker="o", label=e["model"])
    ax.set_xscale("log")
    ax.set_xticks([int(k) for k in ks], ks)
    ax.set_xlabel("K")
    ax.set_ylabel("test NDCG@K")
    ax.legend(fontsize=8, ncol=2)
    written["ndcg_at_k"] = _save(fig, out_dir / "ndcg_at_k.png")

    with_gaps = [e for e in models if e.get("gap_buckets")]
    if with_gaps:
        fig, ax = _figure(9.5, 4.0)
        groups = [f"{b['bucket']}\n({b['users']} users)" for b in with_gaps[0]["gap_buckets"]]
        _grouped_bars(ax, groups, {e["model"]: [b["ndcg@10"] for b in e["gap_buckets"]] for e in with_gaps},
                      "test NDCG@10")
        ax.set_xlabel("gap between the last history item and the target")
        written["gap_buckets"] = _save(fig, out_dir / "gap_buckets.png")

    with_shift = [e for e in models if e.get("time_shift")]
    if with_shift:
        fig, ax = _figure(9.0, 4.0)
        shifts = list(with_shift[0]["time_shift"])
        _grouped_bars(ax, [f"request {s}" for s in shifts],
                      {e["model"]: [e["time_shift"][s] for s in shifts] for e in with_shift},
                      "Spearman correlation of scores\n(1.0 = ranking ignores request time)")
        low = min(min(e["time_shift"].values()) for e in with_shift)
        ax.set_ylim(max(-1.0, low - 0.05), 1.01)  # zoomed: the differences are small
        written["time_shift"] = _save(fig, out_dir / "time_shift.png")
    return written

"""The paper's published numbers as a target: beside a comparison's own results, with the ratio.

    >>> from ss4rec.evaluation.published import published_for
    >>> published_for("ml-1m")["SS4Rec"]["ndcg@10"]
    0.2127
    >>> published_for("ml-100k")
    {}

The numbers and their source live in one data file, ``published.yaml`` beside this module
(what is in it, what is not and why). ``ss4rec compare`` adds :func:`published_section` to
``comparison.md`` (which it prints) and the same rows to ``summary.json``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
METRICS = ("hit@10", "ndcg@10", "mrr@10")
LABELS = {"hit@10": "HR@10", "ndcg@10": "NDCG@10", "mrr@10": "MRR@10"}


@lru_cache(maxsize=1)
def load_published() -> dict:
    """The parsed data file: ``source`` and ``datasets``."""
    with open(PUBLISHED_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def published_for(dataset: str) -> dict[str, dict[str, float]]:
    """``{model: {metric: value}}`` published for ``dataset`` (empty when the paper has none here)."""
    entry = load_published()["datasets"].get(dataset) or {}
    return dict(entry.get("models") or {})


def base_model(label: str) -> str:
    """A compare label's model name: ``'SS4Rec (epochs=10)'`` -> ``'SS4Rec'``."""
    return label.split(" (", 1)[0].strip()


def published_rows(summary: dict, dataset: str) -> list[dict]:
    """One row per (model, metric) that has both a published value and a result of ours."""
    published = {name.lower(): (name, values) for name, values in published_for(dataset).items()}
    rows = []
    for entry in summary.get("models", []):
        match = published.get(base_model(entry["model"]).lower())
        if not match or not entry.get("seeds_ok"):
            continue
        paper_name, values = match
        for metric in METRICS:
            if metric not in values or metric not in entry:
                continue
            ours = float(entry[metric][0])
            rows.append({"model": entry["model"], "paper_model": paper_name, "metric": metric, "ours": ours,
                         "published": float(values[metric]), "ratio": ours / float(values[metric])})
    return rows


def published_section(summary: dict, dataset: str) -> str | None:
    """Markdown: our mean beside the published value and the ratio; None when the paper has
    no numbers for ``dataset`` here."""
    published = published_for(dataset)
    if not published:
        return None
    source = load_published()["source"]
    rows = published_rows(summary, dataset)
    lines = [f"## Published numbers ({source['url']})", ""]
    if rows:
        lines += ["| model | metric | ours (mean over seeds) | published | ours / published |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {LABELS[r['metric']]} | {r['ours']:.4f} | {r['published']:.4f} | "
                  f"{r['ratio']:.2f} |" for r in rows]
    else:
        lines.append(f"No finished run of a model the paper reports on `{dataset}` "
                     f"({', '.join(published)}), or no @10 metrics (topk must include 10).")
    preset = (load_published()["datasets"][dataset] or {}).get("preset")
    lines += ["", f"Source: {source['paper']}; {source['table']}. Protocol: {source['protocol']}. "
              f"Comparable only under that protocol (`--config {preset}`, prefix mode, the full schedule); "
              "other settings make the ratio a rough target. Sources and gaps: "
              "src/ss4rec/evaluation/published.yaml.", ""]
    return "\n".join(lines)


__all__ = ["load_published", "published_for", "published_rows", "published_section", "PUBLISHED_FILE"]

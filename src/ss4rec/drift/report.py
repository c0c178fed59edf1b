"""``drift.md`` and the PNG plots of a drift report (matplotlib, headless).

    >>> write_markdown(report, "out/drift.md")  # doctest: +SKIP
    >>> write_plots(report, "out")  # doctest: +SKIP
    ['out/data_drift.png', 'out/model_drift.png']
"""

from __future__ import annotations

from pathlib import Path

_MEASURE_TITLES = {
    "popularity_js": "item popularity JS divergence",
    "new_item_share": "share on items new since the past",
    "new_user_share": "share by users new since the past",
    "rating_js": "rating distribution JS divergence",
    "gap_ks": "inter-event gap KS statistic",
    "activity_ks": "user activity KS statistic",
}


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    data = report["data_drift"]
    lines = [
        "# Drift report", "",
        f"- past: `{data['past']['path']}`: {data['past']['rows']:,} interactions, {data['past']['users']:,} users, "
        f"{data['past']['items']:,} items, {data['past']['time_min_utc']} .. {data['past']['time_max_utc']}",
        f"- future: `{data['future']['path']}`: {data['future']['rows']:,} interactions, "
        f"{data['future']['users']:,} users ({data['future']['new_users']:,} new), {data['future']['items']:,} items "
        f"({data['future']['new_items']:,} new), {data['future']['time_min_utc']} .. {data['future']['time_max_utc']}",
        f"- windows: {data['window']}; overall data verdict: **{data['overall']['verdict']}**"
        + (f" ({', '.join(data['overall']['drifting'])})" if data["overall"]["drifting"] else ""),
        f"- gaps: {data['gap_method']}", "",
        "## Data drift", "",
        "Each future window against the whole past. Drift when the value passes its threshold "
        "(popularity: after subtracting the sampling-noise level; KS: also above the alpha=0.01 "
        "critical value).", "",
    ]
    names = list(_MEASURE_TITLES)
    lines.append("| window | rows | " + " | ".join(names) + " | verdict |")
    lines.append("|---|---:|" + "---:|" * len(names) + "---|")
    for entry in data["windows"] + [dict(data["overall"], label="**all**")]:
        cells = []
        for name in names:
            measure = entry["measures"][name]
            mark = " ⚠" if measure["verdict"] == "drift" else ""
            cells.append(_fmt(measure["value"]) + mark)
        lines.append(f"| {entry['label']} | {entry['rows']:,} | " + " | ".join(cells) + f" | {entry['verdict']} |")
    lines += ["", "Thresholds: " + ", ".join(f"{k} {v}" for k, v in data["thresholds"].items())
              + f"; windows under {data['min_window_rows']} rows: insufficient data.", ""]

    model = report.get("model_drift")
    if model:
        k = model["verdict_k"]
        ref = model["reference"]["metrics"]
        lines += [
            "## Model drift", "",
            f"{model['model']} from `{model['checkpoint']}` predicting each future interaction from everything the "
            f"user did before it (last {model['max_item_list_length']} items). Reference (the model's own test "
            f"score, {model['reference']['source']}): HR@{k} {_fmt(ref.get(f'hit@{k}'))}, NDCG@{k} "
            f"{_fmt(ref.get(f'ndcg@{k}'))}. Drift when HR@{k} or NDCG@{k} is more than "
            f"{model['max_relative_drop']:.0%} below it. Unknown target items are excluded and counted; "
            f"{model['unknown_users']:,} of {model['future_users']:,} future users are unknown to the model.", "",
            f"| window | predictions | HR@{k} | NDCG@{k} | unknown-item targets | no context | unknown-user predictions | verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for entry in model["windows"] + [dict(model["overall"], label="**all**")]:
            lines.append(
                f"| {entry['label']} | {entry['predictions']:,} | {_fmt(entry['metrics'][f'hit@{k}'])} | "
                f"{_fmt(entry['metrics'][f'ndcg@{k}'])} | {entry['unknown_item_targets']:,} | {entry['no_context']:,} | "
                f"{entry['unknown_user_predictions']:,} | {entry['verdict']} |")
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def write_markdown(report: dict, path) -> None:
    Path(path).write_text(markdown(report), encoding="utf-8")


def write_plots(report: dict, output_dir) -> list[str]:
    """``data_drift.png`` (each measure per window, with its threshold) and, with a model,
    ``model_drift.png`` (HR@K / NDCG@K per window, with the reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    written = []
    data = report["data_drift"]
    labels = [w["label"] for w in data["windows"]]
    x = range(len(labels))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), sharex=True)
    for ax, name in zip(axes.flat, _MEASURE_TITLES):
        values = [w["measures"][name]["value"] for w in data["windows"]]
        ax.plot(x, [float("nan") if v is None else v for v in values], marker="o", label="future window")
        ax.axhline(data["thresholds"][name], color="red", linestyle="--", label="threshold")
        if name == "popularity_js":
            noise = [w["measures"][name].get("noise") for w in data["windows"]]
            ax.plot(x, [float("nan") if v is None else v for v in noise], color="gray", linestyle=":", label="noise level")
        ax.set_title(_MEASURE_TITLES[name], fontsize=10)
        ax.set_xticks(list(x), labels, rotation=60, fontsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Data drift per {data['window']} window against the past")
    fig.tight_layout()
    path = output_dir / "data_drift.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))

    model = report.get("model_drift")
    if model:
        k = model["verdict_k"]
        labels = [w["label"] for w in model["windows"]]
        x = range(len(labels))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for metric, color in ((f"hit@{k}", "tab:blue"), (f"ndcg@{k}", "tab:orange")):
            values = [w["metrics"][metric] for w in model["windows"]]
            ax.plot(x, [float("nan") if v is None else v for v in values], marker="o", color=color,
                    label=f"{metric} per window")
            reference = model["reference"]["metrics"].get(metric)
            if reference is not None:
                ax.axhline(reference, color=color, linestyle="--", label=f"{metric} test (reference)")
        ax.set_xticks(list(x), labels, rotation=60, fontsize=8)
        ax.set_title(f"Model drift: {model['model']} next-item metrics per {data['window']} window")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = output_dir / "model_drift.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written

"""``drift.md`` and the PNG plots of a drift report (matplotlib, headless).

    >>> write_markdown(report, "out/drift.md")  # doctest: +SKIP
    >>> write_plots(report, "out")  # doctest: +SKIP
    ['out/data_drift.png', 'out/model_drift.png']
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd

# Bare Figures, not pyplot: no backend switch and no global state (notebooks keep theirs).
from matplotlib.figure import Figure

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


def _duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _cell(measure: dict) -> str:
    """A measure as its rule read it: popularity ``value - noise = excess``, KS ``value (crit
    c)``; ⚠ only on a drift verdict (never on insufficient or not-applicable ones)."""
    value = measure["value"]
    if value is None:
        return "n/a"
    text = _fmt(value)
    if "excess" in measure:
        text = f"{text} − {_fmt(measure['noise'])} = {_fmt(measure['excess'])}"
    elif measure.get("critical_value") is not None:
        text = f"{text} (crit {_fmt(measure['critical_value'])})"
    if measure["verdict"] == "not applicable":
        return f"{text} (not applicable)"
    return text + (" ⚠" if measure["verdict"] == "drift" else "")


def _gaps(details: dict) -> str:
    if "zero_gap_share" not in details:
        return "n/a"
    return f"{details['zero_gap_share']:.0%} · {_duration(details['median_positive_gap_seconds'])}"


def _verdict_cell(entry: dict) -> str:
    if entry.get("insufficient"):
        return f"insufficient data: {entry['insufficient_reason']}"
    return entry["verdict"] + (f" ({', '.join(entry['drifting'])})" if entry.get("drifting") else "")


def markdown(report: dict) -> str:
    data = report["data_drift"]
    past, future, t = data["past"], data["future"], data["thresholds"]
    insufficient = sum(w["insufficient"] for w in data["windows"])
    lines = [
        "# Drift report", "",
        f"**Data: {data['headline']}.**", "",
        f"- past: `{past['path']}`: {past['rows']:,} interactions, {past['users']:,} users, "
        f"{past['items']:,} items, {past['time_min_utc']} .. {past['time_max_utc']}; gaps: "
        f"{_gaps(past)} (share under 1 s · median of the others)",
        f"- future: `{future['path']}`: {future['rows']:,} interactions, "
        f"{future['users']:,} users ({future['new_users']:,} new, {future['shared_users']:,} also in the past), "
        f"{future['items']:,} items ({future['new_items']:,} new), {future['time_min_utc']} .. {future['time_max_utc']}",
        f"- windows: {len(data['windows'])} × {data['window']}, {insufficient} with insufficient data "
        f"(under {data['min_window_rows']:,} interactions or {data['min_window_users']:,} active users: no verdict, "
        f"no ⚠); overall data verdict: **{_verdict_cell(data['overall'])}**",
        f"- gaps: {data['gap_method']}", "",
        "## Data drift", "",
        "Each future window against the whole past; ⚠ marks a measure that drifts. Rules: popularity_js cells read "
        f"`value − noise = excess` (noise: the divergence sampling alone gives at the window's size), drift when "
        f"excess > {t['popularity_js']}; gap_ks and activity_ks cells read `value (crit c)` (c: the two-sample "
        f"KS critical value at alpha = 0.01), drift when value > threshold ({t['gap_ks']}, {t['activity_ks']}) "
        f"and > c; new_item_share > {t['new_item_share']}, new_user_share > {t['new_user_share']}, "
        f"rating_js > {t['rating_js']}. Gaps: share of gaps under 1 s · median of the others.", "",
    ]
    if data["user_split"]:
        lines += [f"new_user_share is not applicable: {data['overall']['measures']['new_user_share']['note']}.", ""]
    names = list(_MEASURE_TITLES)
    lines.append("| window | rows | users | " + " | ".join(names) + " | gaps | verdict |")
    lines.append("|---|---:|---:|" + "---:|" * len(names) + "---:|---|")
    for entry in data["windows"] + [dict(data["overall"], label="**all**")]:
        cells = [_cell(entry["measures"][name]) for name in names]
        lines.append(f"| {entry['label']} | {entry['rows']:,} | {entry['users']:,} | " + " | ".join(cells)
                     + f" | {_gaps(entry['details'])} | {_verdict_cell(entry)} |")
    lines += ["", "Thresholds: " + ", ".join(f"{k} {v}" for k, v in t.items()) + ".", ""]

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
            "Training data: " + (model.get("training_data") or {}).get(
                "detail", "not checked (a report from an older version)") + ".", "",
            f"| window | predictions | HR@{k} | NDCG@{k} | unknown-item targets | no context | unknown-user predictions | verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for entry in model["windows"] + [dict(model["overall"], label="**all**")]:
            lines.append(
                f"| {entry['label']} | {entry['predictions']:,} | {_fmt(entry['metrics'][f'hit@{k}'])} | "
                f"{_fmt(entry['metrics'][f'ndcg@{k}'])} | {entry['unknown_item_targets']:,} | {entry['no_context']:,} | "
                f"{entry['unknown_user_predictions']:,} | {_verdict_cell(entry)} |")
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def write_markdown(report: dict, path) -> None:
    Path(path).write_text(markdown(report), encoding="utf-8")


def _window_times(windows: list[dict]):
    """Each window's (start, end, middle) as matplotlib date numbers (UTC)."""
    start = mdates.date2num(pd.to_datetime([w["start_utc"] for w in windows]).tz_convert(None).to_pydatetime())
    end = mdates.date2num(pd.to_datetime([w["end_utc"] for w in windows]).tz_convert(None).to_pydatetime())
    return np.asarray(start), np.asarray(end), (np.asarray(start) + np.asarray(end)) / 2


def _date_axis(ax) -> None:
    """A date axis readable with any number of windows: a few ticks, concise labels."""
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _grey_out(ax, start, end, middle, values, insufficient) -> None:
    """Insufficient windows: a grey band and hollow grey markers (gid ``insufficient``);
    their values are off the main line, so they are not read as results."""
    for a, b in zip(start[insufficient], end[insufficient]):
        ax.axvspan(a, b, color="0.9", zorder=0, gid="insufficient")
    ax.scatter(middle[insufficient], values[insufficient], facecolors="none", edgecolors="0.6", s=18,
               gid="insufficient", label="insufficient data (no verdict)")


def data_drift_figure(report: dict):
    """The data-drift figure: per measure, sufficient windows on a line with the per-window
    drift limit (threshold; popularity: noise + threshold; KS: max(threshold, critical
    value)), drifting windows in red (gid ``drift``), insufficient ones greyed out (gid
    ``insufficient``), on a date axis. Returned, not saved, so tests can read its artists."""

    data = report["data_drift"]
    windows = data["windows"]
    start, end, middle = _window_times(windows)
    insufficient = np.array([w["insufficient"] for w in windows], dtype=bool)
    fig = Figure(figsize=(14, 7))
    axes = fig.subplots(2, 3, sharex=True)
    for ax, name in zip(axes.flat, _MEASURE_TITLES):
        measures = [w["measures"][name] for w in windows]
        values = np.array([np.nan if m["value"] is None else m["value"] for m in measures])
        shown = np.where(insufficient, np.nan, values)
        ax.plot(middle, shown, marker="o", markersize=3, label="future window")
        if name == "popularity_js":
            noise = np.array([np.nan if m.get("noise") is None else m["noise"] for m in measures])
            ax.plot(middle, np.where(insufficient, np.nan, noise), color="gray", linestyle=":", marker="_",
                    label="noise level")
            limit = np.where(insufficient, np.nan, noise + data["thresholds"][name])
            ax.plot(middle, limit, color="red", linestyle="--", marker="_", label="drift limit")
        elif name in ("gap_ks", "activity_ks"):
            critical = np.array([np.nan if m.get("critical_value") is None else m["critical_value"] for m in measures])
            limit = np.where(insufficient, np.nan, np.fmax(critical, data["thresholds"][name]))
            ax.plot(middle, limit, color="red", linestyle="--", marker="_", label="drift limit")
        else:
            ax.axhline(data["thresholds"][name], color="red", linestyle="--", label="drift limit")
        drifting = np.array([m["verdict"] == "drift" for m in measures], dtype=bool)
        if drifting.any():
            ax.scatter(middle[drifting], values[drifting], color="red", s=22, zorder=3, gid="drift", label="drift")
        if insufficient.any():
            _grey_out(ax, start, end, middle, values, insufficient)
        title = _MEASURE_TITLES[name]
        if measures and measures[0]["verdict"] == "not applicable":
            title += " (not applicable)"
        ax.set_title(title, fontsize=10)
        _date_axis(ax)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Data drift per {data['window']} window against the past ({len(windows)} windows, "
                 f"{int(insufficient.sum())} with insufficient data)")
    fig.tight_layout()
    return fig


def model_drift_figure(report: dict):
    """HR@K / NDCG@K per window with the reference, on the data part's date axis;
    insufficient windows greyed out as in :func:`data_drift_figure`."""

    model = report["model_drift"]
    k = model["verdict_k"]
    by_key = {w["key"]: w for w in report["data_drift"]["windows"]}  # same future file, same window keys
    start, end, middle = _window_times([by_key[w["key"]] for w in model["windows"]])
    insufficient = np.array([w["verdict"] == "insufficient data" for w in model["windows"]], dtype=bool)
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    for metric, color in ((f"hit@{k}", "tab:blue"), (f"ndcg@{k}", "tab:orange")):
        values = np.array([np.nan if w["metrics"][metric] is None else w["metrics"][metric] for w in model["windows"]])
        ax.plot(middle, np.where(insufficient, np.nan, values), marker="o", markersize=3, color=color,
                label=f"{metric} per window")
        reference = model["reference"]["metrics"].get(metric)
        if reference is not None:
            ax.axhline(reference, color=color, linestyle="--", label=f"{metric} test (reference)")
        if insufficient.any():
            _grey_out(ax, start, end, middle, values, insufficient)
    _date_axis(ax)
    ax.set_title(f"Model drift: {model['model']} next-item metrics per {report['data_drift']['window']} window")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(report: dict, output_dir) -> list[str]:
    """``data_drift.png`` (:func:`data_drift_figure`) and, with a model, ``model_drift.png``
    (:func:`model_drift_figure`)."""
    output_dir = Path(output_dir)
    figures = [("data_drift.png", data_drift_figure)]
    if report.get("model_drift"):
        figures.append(("model_drift.png", model_drift_figure))
    written = []
    for name, make in figures:
        fig = make(report)
        fig.savefig(output_dir / name, dpi=100)
        written.append(str(output_dir / name))
    return written

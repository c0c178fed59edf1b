"""``ss4rec inspect``'s report: a log's time axis and what each SS4Rec time scale does with it.

    >>> from ss4rec.data.time_profile import read_time_log
    >>> report = inspect_report(read_time_log("data/ml-1m/ml-1m.inter"))  # doctest: +SKIP
    >>> print(markdown(report))  # doctest: +SKIP
    >>> write_report(report, "runs/inspect-ml-1m")  # doctest: +SKIP

The report holds :func:`ss4rec.data.time_profile.time_profile`'s facts (same-second shares,
gaps, sessions, span, the ``auto`` and ``normalized`` units), the gaps counted in the time
probe's buckets (:data:`ss4rec.evaluation.probe.GAP_BUCKETS`, for every consecutive pair
and for the test targets), and the S5 state kept across a typical gap (the median positive
gap), 1 hour and 1 day under every ``time_unit`` × ``time_transform``
(:func:`ss4rec.models.ss4rec.state_kept` at SS4Rec's initial steps ``dt_min..dt_max``,
``Re Λ = -0.5``: the median step and the range). ``meaning`` says it in two sentences.

:func:`write_report` writes ``inspect.json``, ``inspect.md`` and ``gap_distribution.png``
(the gaps on a log scale with the bucket edges and the ``auto`` unit marked) all or nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ss4rec.data.atomic import StagedOutput
from ss4rec.data.time_profile import SESSION_GAP_S, TimeLog, duration, positions, time_profile
from ss4rec.errors import UserError
from ss4rec.evaluation.probe import GAP_BUCKETS
from ss4rec.models.ss4rec import TIME_TRANSFORMS, TIME_UNITS, state_kept

REPORT_FILES = ("inspect.json", "inspect.md", "gap_distribution.png")
SCALE_UNITS = (*TIME_UNITS, "auto", "normalized")
PROBE_GAPS = {"1 h": 3600.0, "1 day": 86400.0}  # gaps every report shows besides the typical one


def inspect_report(log: TimeLog, session_gap: float = SESSION_GAP_S) -> dict:
    """The whole cheap report of ``log`` (JSON-able; see the module docstring)."""
    profile = time_profile(log, session_gap, bucket_edges=[upper for _, upper in GAP_BUCKETS])
    counts = profile.pop("buckets")
    profile["gap_buckets"] = [{"bucket": name, "all_gaps": a, "test_targets": t}
                              for (name, _), a, t in zip(GAP_BUCKETS, counts["all_gaps"], counts["test_targets"])]
    typical = profile["gaps"]["median_positive_seconds"] or 1.0
    profile["state_kept"] = state_table(profile["units"], typical)
    profile["meaning"] = meaning(profile)
    return profile


def unit_seconds(unit: str, units: dict) -> float:
    """Seconds per unit of ``unit`` for this data (``units``: the profile's ``units``)."""
    if unit == "auto":
        return units["auto_seconds"]
    if unit == "normalized":
        return units["normalized_seconds"] or 1.0  # one timestamp: the model refuses; show seconds
    return TIME_UNITS[unit]


def state_table(units: dict, typical_gap: float) -> dict:
    """``{"gaps": {label: seconds}, "rows": [{time_unit, time_transform, seconds_per_unit, kept:
    {label: {median, min, max}}}]}``: the S5 state kept across each gap, per time scale."""
    gaps = {f"typical ({duration(typical_gap)})": typical_gap, **PROBE_GAPS}
    rows = []
    for unit in SCALE_UNITS:
        per_unit = unit_seconds(unit, units)
        for transform in TIME_TRANSFORMS:
            kept = {}
            for label, gap in gaps.items():
                low, median, high = state_kept(gap, per_unit, transform)  # at dt_max, median, dt_min
                kept[label] = {"median": median, "min": low, "max": high}
            rows.append({"time_unit": unit, "time_transform": transform, "seconds_per_unit": per_unit, "kept": kept})
    return {"gaps": gaps, "rows": rows}


def _kept(table: dict, unit: str, transform: str, label: str) -> float:
    row = next(r for r in table["rows"] if r["time_unit"] == unit and r["time_transform"] == transform)
    return row["kept"][label]["median"]


def meaning(profile: dict) -> str:
    """Two sentences: how close test targets come, and what a gap does to the state."""
    buckets = profile["gap_buckets"]
    tested = sum(b["test_targets"] for b in buckets)
    same = profile["identical"]["test_target"]
    table = profile["state_kept"]
    parts = []
    if tested:
        within = buckets[0]["test_targets"] / tested
        parts.append(f"{within:.0%} of test targets come within a minute of the previous interaction "
                     f"({same['share']:.0%} in the same second, where the item does not enter SS4Rec's S5 state).")
    auto = profile["units"]["auto_seconds"]
    parts.append(f"With time_unit seconds a 1-hour gap keeps {_kept(table, 'seconds', 'linear', '1 h'):.1g} of an "
                 f"S5 state and a day {_kept(table, 'seconds', 'linear', '1 day'):.1g}; with auto "
                 f"(1 unit = {duration(auto)}) an hour keeps {_kept(table, 'auto', 'linear', '1 h'):.2g} "
                 f"(log1p: {_kept(table, 'auto', 'log1p', '1 h'):.2g}); with normalized an hour loses only "
                 f"{1 - _kept(table, 'normalized', 'linear', '1 h'):.1g} of it (S5 close to its skip path).")
    return " ".join(parts)


def _pct(part: dict) -> str:
    return "n/a" if part["share"] is None else f"{part['zero']:,} of {part['of']:,} ({100 * part['share']:.1f}%)"


def markdown(report: dict) -> str:
    """The report as Markdown (also what the terminal shows)."""
    same, span, sess = report["identical"], report["span"], report["sessions"]
    lines = [
        f"# Time axis of `{report['source']}`", "",
        f"{report['interactions']:,} interactions, {report['users']:,} users, {report['items']:,} items "
        f"(median {report['interactions_per_user']['median']:.0f} per user); "
        f"{span['first'][:10]} to {span['last'][:10]} ({span['days']:.1f} days).", "",
        f"**What this means:** {report['meaning']}", "",
        "## Identical timestamps (same second)", "",
        "| pairs | same second |", "|---|---|",
        f"| consecutive interactions of a user | {_pct(same['consecutive_pairs'])} |",
        f"| each user's last two | {_pct(same['last_two'])} |",
        f"| test target vs the interaction before it | {_pct(same['test_target'])} |",
        f"| valid target vs the interaction before it | {_pct(same['valid_target'])} |", "",
        "## Gaps (time-probe buckets)", "",
        "| gap | all consecutive pairs | test targets |", "|---|---|---|",
    ]
    totals = [sum(b[k] for b in report["gap_buckets"]) or 1 for k in ("all_gaps", "test_targets")]
    for b in report["gap_buckets"]:
        lines.append(f"| {b['bucket']} | {b['all_gaps']:,} ({b['all_gaps'] / totals[0]:.1%}) | "
                     f"{b['test_targets']:,} ({b['test_targets'] / totals[1]:.1%}) |")
    gaps = report["gaps"]
    lines += ["", f"Median gap {duration(gaps['median_seconds'])}, median positive gap "
              f"{duration(gaps['median_positive_seconds'])}, median test-target gap {duration(gaps['test_median_seconds'])}.",
              "", f"Sessions (a new one after {duration(sess['gap_seconds'])} without an interaction): "
              f"{sess['count']:,}, mean length {sess['mean_length']:.1f}, median {sess['median_length']:.0f} "
              f"({sess['single_interaction_share']:.0%} are a single interaction).", "",
              "## Time scale", "",
              f"`time_unit: auto` would be {report['units']['auto_seconds']:.6g} s (the median positive gap of the {report['units']['training_targets']:,} training targets); "
              f"`normalized` {report['units']['normalized_seconds']:.6g} s ({duration(report['units']['normalized_seconds'])}, "
              "the span).", "",
              "S5 state kept across a gap (median initial step; range over dt_min..dt_max in brackets; Re Λ = -0.5):", ""]
    labels = list(report["state_kept"]["gaps"])
    lines += ["| time_unit | transform | 1 unit | " + " | ".join(labels) + " |", "|---|---|---|" + "---|" * len(labels)]
    for row in report["state_kept"]["rows"]:
        cells = [f"{k['median']:.3g} [{k['min']:.2g}, {k['max']:.3g}]" for k in row["kept"].values()]
        lines.append(f"| {row['time_unit']} | {row['time_transform']} | {duration(row['seconds_per_unit'])} | "
                     + " | ".join(cells) + " |")
    if report.get("signal"):
        lines += ["", signal_markdown(report["signal"])]
    return "\n".join(lines) + "\n"


def signal_markdown(signal: dict) -> str:
    """The ``--signal`` section: verdicts, then one row per trained run."""
    lines = ["## Signal tests (trained models)", "", *[f"- {v}" for v in signal["verdicts"]], "",
             "| model | data | test NDCG@10 | epochs | run |", "|---|---|---|---|---|"]
    for run in signal["runs"]:
        score = f"{run['ndcg@10']:.4f}" if run.get("ndcg@10") is not None else run.get("error", "failed")
        lines.append(f"| {run['model']} | {run['variant']} | {score} | {run.get('epochs_run', '')} | {run['run_dir']} |")
    lines += ["", signal["settings_line"]]
    return "\n".join(lines)


def gap_figure(log: TimeLog, report: dict) -> Figure:
    """Histogram of the positive gaps (log x), test-target gaps on top; bucket edges and the
    ``auto`` unit marked; zero gaps counted in the title."""
    pos = positions(log)
    gaps = pos.gaps[~pos.first]
    test = pos.gaps[pos.test]
    fig = Figure(figsize=(8.0, 4.2))  # a bare Figure: no pyplot, no backend switch
    ax = fig.subplots()
    positive = gaps[gaps > 0]
    if len(positive):
        bins = np.logspace(math.log10(max(positive.min(), 1e-3)), math.log10(positive.max() * 1.01), 60)
        ax.hist(positive, bins=bins, color="tab:blue", alpha=0.6, label="all consecutive gaps")
        ax.set_xscale("log")
        right = ax.twinx()  # far fewer test targets than pairs: their own scale
        right.hist(test[test > 0], bins=bins, color="tab:orange", histtype="step", linewidth=1.8,
                   label="test-target gaps (right axis)")
        right.set_ylabel("test targets")
        for name, upper in GAP_BUCKETS[:-1]:
            ax.axvline(upper, color="grey", linestyle=":", linewidth=1)
            ax.text(upper, 1.0, f" {name.replace('< ', '')}", rotation=90, va="top", ha="right", fontsize=8,
                    color="grey", transform=ax.get_xaxis_transform())
        auto = report["units"]["auto_seconds"]
        ax.axvline(auto, color="tab:red", linewidth=1.5, label=f"time_unit auto = {duration(auto)}")
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=8, loc="center right")
    ax.set_xlabel("gap between a user's consecutive interactions (seconds, log scale)")
    ax.set_ylabel("pairs")
    same = report["identical"]
    ax.set_title(f"{same['consecutive_pairs']['zero']:,} zero gaps not shown "
                 f"({same['consecutive_pairs']['share'] or 0:.0%} of pairs; "
                 f"{same['test_target']['zero']:,} of the {same['test_target']['of']:,} test targets)", fontsize=9)
    fig.tight_layout()
    return fig


def existing_outputs(out_dir, extra=()) -> list[str]:
    """The report's files (and ``extra`` names) already in ``out_dir``."""
    out_dir = Path(out_dir)
    return [name for name in (*REPORT_FILES, *extra) if (out_dir / name).exists() or (out_dir / name).is_symlink()]


def check_output(out_dir, overwrite: bool, extra=()) -> None:
    """Refuse, before any work, an ``out_dir`` that holds an earlier report unless ``overwrite``."""
    present = existing_outputs(out_dir, extra)
    if present and not overwrite:
        raise UserError(f"--output {out_dir} already holds {', '.join(present)}; nothing was changed. "
                        "Use another --output, or --overwrite to replace that report")


def write_report(report: dict, out_dir, log: TimeLog, overwrite: bool = True) -> list[str]:
    """``inspect.json``, ``inspect.md`` and ``gap_distribution.png`` into ``out_dir``, all or nothing."""
    with StagedOutput(out_dir, overwrite=overwrite) as stage:
        (stage.path / "inspect.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        (stage.path / "inspect.md").write_text(markdown(report), encoding="utf-8")
        gap_figure(log, report).savefig(stage.path / "gap_distribution.png", dpi=110)
        written = stage.commit(out_dir)
    return [str(p) for p in written]

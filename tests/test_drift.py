"""``ss4rec drift`` on the bundled ML-100K: real splits, real training, real files.

Data drift is checked on three pairs built from the same ratings: a time split (real
drift: new users arrive over time), the time split with the future's item ids shuffled
(popularity drift by construction) and a random 50/50 split (no drift by construction).
Model drift uses a SASRec / SS4Rec checkpoint trained one epoch on the past half.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ss4rec.drift import DEFAULT_THRESHOLDS, compute_data_drift, compute_model_drift, drift_report
from ss4rec.drift.stats import js_divergence, ks_from_histograms
from ss4rec.drift.windows import WindowSpec
from ss4rec.errors import UserError

from conftest import TINY_SS4REC

MEASURES = set(DEFAULT_THRESHOLDS)


def _bundled_ml100k() -> Path:
    from ss4rec.config.files import _recbole_dir

    return _recbole_dir() / "dataset_example" / "ml-100k" / "ml-100k.inter"


def _write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from ss4rec.data.split import split_by_time

    root = tmp_path_factory.mktemp("drift-data")
    split_by_time(_bundled_ml100k(), root / "time", future_fraction=0.3)
    past = root / "time" / "ml-100k-past" / "ml-100k-past.inter"
    future = root / "time" / "ml-100k-future" / "ml-100k-future.inter"
    rng = np.random.default_rng(0)

    shuffled = pd.read_csv(future, sep="\t", dtype=str)
    items = shuffled["item_id:token"].unique()
    shuffled["item_id:token"] = shuffled["item_id:token"].map(dict(zip(items, rng.permutation(items))))

    everything = pd.read_csv(_bundled_ml100k(), sep="\t", dtype=str)
    in_past = rng.random(len(everything)) < 0.5
    return {
        "root": root, "data_path": root / "time", "past": past, "future": future,
        "shuffled_future": _write(shuffled, root / "shuffled" / "future.inter"),
        "random_past": _write(everything[in_past], root / "random" / "past.inter"),
        "random_future": _write(everything[~in_past], root / "random" / "future.inter"),
    }


@pytest.fixture(scope="module")
def sasrec_past_run(splits, tmp_path_factory):
    import ss4rec

    out = tmp_path_factory.mktemp("sasrec-past")
    return ss4rec.run(model="SASRec", dataset="ml-100k-past", config_files=["tiny"],
                      config_dict={"data_path": str(splits["data_path"]), "hidden_size": 32,
                                   "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}},
                      output_dir=out, device="cpu")


def test_js_and_ks_basics():
    assert js_divergence(np.array([3, 1]), np.array([6, 2])) == pytest.approx(0.0)
    assert js_divergence(np.array([1, 0]), np.array([0, 0, 5])) == pytest.approx(1.0)
    assert ks_from_histograms(np.array([1, 1, 0]), np.array([0, 1, 1])) == pytest.approx(0.5)
    assert math.isnan(js_divergence(np.array([0, 0]), np.array([1, 1])))


def test_window_specs():
    assert WindowSpec.parse("quarter").label(int(WindowSpec.parse("quarter").keys(np.array([891388800.0]))[0])) == "1998Q2"
    week = WindowSpec.parse("7-days", anchor=100.0)
    assert week.keys(np.array([100.0, 100.0 + 7 * 86400 - 1, 100.0 + 7 * 86400, 99.0])).tolist() == [0, 0, 1, -1]
    assert WindowSpec.parse("30d").days == 30
    with pytest.raises(UserError, match="month, quarter or a number of days"):
        WindowSpec.parse("fortnight")


def test_report_has_every_field(splits, tmp_path):
    report = drift_report(splits["past"], splits["future"], tmp_path / "out", window="month")
    saved = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert saved["data_drift"]["overall"]["verdict"] == report["data_drift"]["overall"]["verdict"]
    assert (tmp_path / "out" / "drift.md").read_text().startswith("# Drift report")
    assert (tmp_path / "out" / "data_drift.png").stat().st_size > 10_000
    assert saved["model_drift"] is None

    data = saved["data_drift"]
    assert data["past"]["rows"] + data["future"]["rows"] == 100_000
    assert [w["label"] for w in data["windows"]] == ["1998-02", "1998-03", "1998-04"]
    assert sum(w["rows"] for w in data["windows"]) == data["future"]["rows"]
    for entry in data["windows"] + [data["overall"]]:
        assert set(entry["measures"]) == MEASURES
        for name, measure in entry["measures"].items():
            assert 0 <= measure["value"] <= 1, (name, measure)
            assert measure["threshold"] == DEFAULT_THRESHOLDS[name]
            assert measure["verdict"] in ("drift", "no drift")
        assert entry["verdict"] in ("drift", "no drift", "insufficient data")
    # ML-100K users arrive over time: most future interactions come from users new since the past
    assert data["overall"]["measures"]["new_user_share"]["value"] > 0.5
    assert "new_user_share" in data["overall"]["drifting"]
    assert data["future"]["new_users"] > 0 and data["future"]["new_items"] > 0


def test_shuffled_future_items_are_popularity_drift(splits):
    plain = compute_data_drift(splits["past"], splits["future"])
    shuffled = compute_data_drift(splits["past"], splits["shuffled_future"])
    for report, expected in ((plain, "no drift"), (shuffled, "drift")):
        for entry in report["windows"] + [report["overall"]]:
            assert entry["measures"]["popularity_js"]["verdict"] == expected, entry["measures"]["popularity_js"]
    assert shuffled["overall"]["measures"]["popularity_js"]["value"] > 3 * plain["overall"]["measures"]["popularity_js"]["value"]
    # a relabelling of items changes nothing about who rates when, or how
    for name in ("new_user_share", "rating_js", "gap_ks", "activity_ks"):
        assert shuffled["overall"]["measures"][name]["value"] == pytest.approx(plain["overall"]["measures"][name]["value"])


def test_random_split_is_no_drift(splits):
    report = compute_data_drift(splits["random_past"], splits["random_future"])
    assert report["overall"]["verdict"] == "no drift", report["overall"]
    assert report["overall"]["measures"]["new_user_share"]["value"] == 0.0
    assert len(report["windows"]) == 8  # 1997-09 .. 1998-04
    for entry in report["windows"]:  # months under 100 active users have no verdict, the others no drift
        expected = "insufficient data" if entry["users"] < 100 else "no drift"
        assert entry["measures"]["popularity_js"]["verdict"] == expected, (entry["label"], entry["measures"])


def test_streamed_gaps_equal_sorted_gaps(splits, tmp_path):
    """A file in per-user time order is streamed; the raw (unordered) one is sorted in memory.
    Both must give the same gap histograms, hence the same KS statistics."""
    ordered = pd.read_csv(splits["future"], sep="\t", dtype=str)
    ordered = ordered.sort_values("timestamp:float", key=lambda s: s.astype(float), kind="stable")
    ordered_path = _write(ordered, tmp_path / "ordered.inter")
    raw = compute_data_drift(splits["past"], splits["future"], chunk_rows=7_000)
    streamed = compute_data_drift(splits["past"], ordered_path, chunk_rows=7_000)
    assert raw["gap_method"].startswith("past and future not in per-user time order")
    assert streamed["gap_method"].startswith("past not in")  # the future was streamed
    for a, b in zip(raw["windows"] + [raw["overall"]], streamed["windows"] + [streamed["overall"]]):
        for name in MEASURES:
            assert a["measures"][name]["value"] == pytest.approx(b["measures"][name]["value"]), name


@pytest.fixture(scope="module")
def user_split(tmp_path_factory):
    """ML-100K's users in two random halves over the same months (no drift injected), and the
    same future with every user's gaps multiplied by 50 (a gap shift injected)."""
    root = tmp_path_factory.mktemp("drift-users")
    everything = pd.read_csv(_bundled_ml100k(), sep="\t", dtype=str)
    users = everything["user_id:token"].unique()
    in_past = everything["user_id:token"].isin(np.random.default_rng(0).choice(users, len(users) // 2, replace=False))
    future = everything[~in_past].copy()
    times = future["timestamp:float"].astype(float)
    first = times.groupby(future["user_id:token"]).transform("min")
    future["timestamp:float"] = (first + 50 * (times - first)).map(lambda t: f"{t:.0f}")
    return {"past": _write(everything[in_past], root / "past.inter"),
            "future": _write(everything[~in_past], root / "future.inter"),
            "future_gaps_x50": _write(future, root / "future-gaps-x50.inter")}


def test_user_split_headline_names_only_new_user_share(user_split, tmp_path):
    """Issue 18: on a user split new_user_share is 1.0 by construction; the headline must say
    that it is the only cause and that it does not apply, and the verdict must not be drift."""
    report = drift_report(user_split["past"], user_split["future"], tmp_path / "out", window="month")
    data = json.loads((tmp_path / "out" / "drift.json").read_text())["data_drift"]
    assert data["user_split"] is True and data["future"]["shared_users"] == 0
    overall = data["overall"]
    assert overall["measures"]["new_user_share"]["value"] == 1.0
    assert overall["measures"]["new_user_share"]["verdict"] == "not applicable"
    assert "by construction" in overall["measures"]["new_user_share"]["note"]
    assert overall["verdict"] == "no drift" and overall["drifting"] == []
    headline = data["headline"]
    assert headline.startswith("no drift. The only measure past its threshold is new_user_share (1.0000)")
    assert "does not apply" in headline and "share no users" in headline
    assert not [name for name in MEASURES - {"new_user_share"} if name in headline], headline
    assert report["data_drift"]["headline"] == headline
    markdown = (tmp_path / "out" / "drift.md").read_text()
    assert f"**Data: {headline}.**" in markdown
    assert [w["verdict"] for w in data["windows"]].count("drift") == 0
    for entry in data["windows"] + [overall]:
        assert entry["measures"]["new_user_share"]["verdict"] == "not applicable"

    # the noise level and the critical value are in the JSON and printed in drift.md
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown.splitlines() if line.startswith("| ")}
    for entry in data["windows"] + [dict(overall, label="**all**")]:
        popularity = entry["measures"]["popularity_js"]
        assert popularity["excess"] == pytest.approx(popularity["value"] - popularity["noise"])
        assert f"{popularity['value']:.4f} − {popularity['noise']:.4f} = {popularity['excess']:.4f}" in rows[entry["label"]]
        for name in ("gap_ks", "activity_ks"):
            measure = entry["measures"][name]
            assert f"{measure['value']:.4f} (crit {measure['critical_value']:.4f})" in rows[entry["label"]]


def test_insufficient_windows_are_marked_in_json_markdown_and_plot(user_split, tmp_path):
    """Months with fewer than 100 active users are insufficient: marked with the reason in the
    JSON, no ⚠ in drift.md, greyed out in the plot. rating_js=0 makes every sufficient window
    drift, so a missing flag on the insufficient ones is the rule, not luck."""
    from matplotlib.dates import ConciseDateFormatter, date2num

    from ss4rec.drift.report import data_drift_figure

    report = drift_report(user_split["past"], user_split["future"], tmp_path / "out", window="month",
                          thresholds={"rating_js": 0.0})
    data = json.loads((tmp_path / "out" / "drift.json").read_text())["data_drift"]
    assert data["min_window_users"] == 100
    short = [w for w in data["windows"] if w["insufficient"]]
    assert 0 < len(short) < len(data["windows"])
    for entry in data["windows"]:
        if entry["insufficient"]:
            assert entry["users"] < 100 and entry["rows"] >= 500  # rows alone would have passed
            assert entry["insufficient_reason"] == f"{entry['users']} users < 100"
            assert entry["verdict"] == "insufficient data" and entry["drifting"] == []
            assert {m["verdict"] for m in entry["measures"].values()} <= {"insufficient data", "not applicable"}
        else:
            assert entry["users"] >= 100 and entry["insufficient_reason"] is None
            assert entry["verdict"] == "drift" and "rating_js" in entry["drifting"]

    rows = {line.split(" | ")[0].lstrip("| "): line for line in (tmp_path / "out" / "drift.md").read_text().splitlines()
            if line.startswith("| ")}
    for entry in data["windows"]:
        line = rows[entry["label"]]
        if entry["insufficient"]:
            assert "⚠" not in line and line.endswith(f"| insufficient data: {entry['users']} users < 100 |")
        else:
            assert "⚠" in line

    fig = data_drift_figure(report)
    middles = [date2num(pd.Timestamp(w["start_utc"]).tz_convert(None)) / 2
               + date2num(pd.Timestamp(w["end_utc"]).tz_convert(None)) / 2 for w in short]
    for ax in fig.axes:
        greyed = [c for c in ax.collections if c.get_gid() == "insufficient"]
        assert len(greyed) == 1 and greyed[0].get_offsets()[:, 0].tolist() == pytest.approx(middles)
        assert len([p for p in ax.patches if p.get_gid() == "insufficient"]) == len(short)  # grey bands
        main = ax.get_lines()[0]  # the sufficient windows' line leaves the insufficient ones out
        assert np.isnan(main.get_ydata()).sum() == len(short)
        assert isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter)


def test_scaled_gaps_move_the_gap_measure(user_split, tmp_path):
    """Half of ML-100K's gaps are 0 s, so a plain median gap never moves. Multiplying every
    future gap by 50 moves the median of the positive gaps ~50x and flags gap_ks; the null
    split flags neither. The stretched future spans ~270 months: the axis stays readable."""
    from ss4rec.drift.report import data_drift_figure

    null = compute_data_drift(user_split["past"], user_split["future"])
    scaled = compute_data_drift(user_split["past"], user_split["future_gaps_x50"])
    past_gaps = null["past"]
    assert 0.4 < past_gaps["zero_gap_share"] < 0.6  # why a median over all gaps says nothing
    for report in (null, scaled):
        assert report["overall"]["details"]["zero_gap_share"] == pytest.approx(null["overall"]["details"]["zero_gap_share"])
    ratio = (scaled["overall"]["details"]["median_positive_gap_seconds"]
             / null["overall"]["details"]["median_positive_gap_seconds"])
    assert 40 < ratio < 60, ratio
    assert 0.7 < null["overall"]["details"]["median_positive_gap_seconds"] / past_gaps["median_positive_gap_seconds"] < 1.4
    assert scaled["overall"]["measures"]["gap_ks"]["verdict"] == "drift"
    assert "gap_ks" in scaled["overall"]["drifting"] and "gap_ks" in scaled["headline"]
    assert all(w["measures"]["gap_ks"]["verdict"] != "drift" for w in null["windows"] + [null["overall"]])

    assert len(scaled["windows"]) > 250
    fig = data_drift_figure({"data_drift": scaled})
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
        assert len(labels) <= 10, labels


def test_minimum_users_is_configurable(user_split, tmp_path):
    from ss4rec.cli import main

    out = tmp_path / "out"
    assert main(["drift", "--past", str(user_split["past"]), "--future", str(user_split["future"]),
                 "--output", str(out), "--min-window-users", "10", "--min-window-rows", "4000"]) == 0
    data = json.loads((out / "drift.json").read_text())["data_drift"]
    assert (data["min_window_users"], data["min_window_rows"]) == (10, 4000)
    for entry in data["windows"]:
        assert entry["insufficient"] == (entry["rows"] < 4000)
        if entry["insufficient"]:
            assert entry["insufficient_reason"] == f"{entry['rows']:,} rows < 4,000"


def test_bad_inputs_are_clear_errors(splits, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        compute_data_drift(tmp_path / "missing.inter", splits["future"])
    (tmp_path / "no-time.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(UserError, match="no 'timestamp' field"):
        compute_data_drift(splits["past"], tmp_path / "no-time.inter")
    with pytest.raises(UserError, match="unknown drift threshold"):
        compute_data_drift(splits["past"], splits["future"], thresholds={"popularity": 0.1})


def test_model_drift_finite_metrics_per_window(splits, sasrec_past_run):
    report = compute_model_drift(sasrec_past_run["checkpoint"], splits["past"], splits["future"], topk=[10, 20])
    assert report["training_data"]["checked"] and "trained on --past itself" in report["training_data"]["detail"]
    assert report["reference"]["source"].endswith("results.json")
    assert report["reference"]["metrics"]["hit@10"] == sasrec_past_run["test"]["hit@10"]
    assert [w["label"] for w in report["windows"]] == ["1998-02", "1998-03", "1998-04"]
    attempted = 0
    for entry in report["windows"] + [report["overall"]]:
        assert entry["predictions"] > 100
        for value in entry["metrics"].values():
            assert math.isfinite(value) and 0 <= value <= 1
        assert entry["metrics"]["hit@20"] >= entry["metrics"]["hit@10"] >= entry["metrics"]["ndcg@10"]
        assert entry["verdict"] in ("drift", "no drift")
    for entry in report["windows"]:
        attempted += entry["predictions"] + entry["unknown_item_targets"] + entry["no_context"]
    # every future interaction is predicted, or counted as unknown item / no context
    assert attempted == report["future_interactions"] == 29_999
    # the tiny config keeps only users with <= 40 past ratings: most future users are unknown
    assert report["unknown_users"] > 0 and report["overall"]["unknown_user_predictions"] > 0


def test_model_drift_unknown_ids_are_counted(splits, sasrec_past_run, tmp_path):
    """New items and users in the future never crash the evaluation; they are counted.
    Without results.json the reference is the restored test split, evaluated again."""
    future = pd.read_csv(splits["future"], sep="\t", dtype=str).iloc[:3000].copy()
    future.loc[future.index[:50], "item_id:token"] = [f"new-item-{i}" for i in range(50)]
    extra = pd.DataFrame({"user_id:token": "new-user", "item_id:token": ["1", "new-item-x", "50", "100"],
                          "rating:float": "4", "timestamp:float": ["892000000", "892000100", "892000200", "892000300"]})
    path = _write(pd.concat([future, extra]), tmp_path / "future.inter")
    # a copy of the checkpoint without its results.json: the reference is evaluated instead
    checkpoint = tmp_path / "run-copy" / "checkpoints" / "SASRec-best.pth"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(sasrec_past_run["checkpoint"], checkpoint)

    n_items = sasrec_past_run["n_items"]
    report = compute_model_drift(checkpoint, splits["past"], path, topk=[10, n_items], window="30-days")
    overall = report["overall"]
    # K = every item: each scored target is a hit, so ranks stay within 1..n_items (the
    # padding item and the masked history never push a fresh target out of the ranking)
    assert overall["metrics"][f"hit@{n_items}"] == pytest.approx(1.0)
    assert overall["unknown_item_targets"] >= 51
    assert overall["coverage"] == pytest.approx(overall["predictions"] / (overall["predictions"] + overall["unknown_item_targets"]))
    assert report["reference"]["source"] == "evaluated the restored test split"
    assert report["reference"]["metrics"]["hit@10"] == pytest.approx(sasrec_past_run["test"]["hit@10"], abs=1e-4)
    assert all(math.isfinite(v) for w in report["windows"] if w["predictions"] for v in w["metrics"].values())
    assert report["windows"][0]["label"].startswith("1998-02-09..")


def test_ss4rec_model_drift_and_cli(splits, tmp_path):
    """SS4Rec reads the float64 timestamps of the contexts; the CLI writes every output."""
    import ss4rec
    from ss4rec.cli import main

    run = ss4rec.run(model="SS4Rec", dataset="ml-100k-past", config_files=["tiny"],
                     config_dict={"data_path": str(splits["data_path"]), "hidden_size": 32, **TINY_SS4REC,
                                  "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}},
                     output_dir=tmp_path / "run", device="cpu")
    out = tmp_path / "drift"
    code = main(["drift", "--past", str(splits["past"]), "--future", str(splits["future"]),
                 "--checkpoint", run["checkpoint"], "--window", "quarter", "--output", str(out),
                 "--max-predictions", "1500", "--threshold", "popularity_js=0.2"])
    assert code == 0
    report = json.loads((out / "drift.json").read_text())
    assert report["data_drift"]["thresholds"]["popularity_js"] == 0.2
    assert [w["label"] for w in report["model_drift"]["windows"]] == ["1998Q1", "1998Q2"]
    for entry in report["model_drift"]["windows"]:
        assert entry["predictions"] > 0
        assert all(math.isfinite(v) for v in entry["metrics"].values())
    assert {Path(p).name for p in report["plots"]} == {"data_drift.png", "model_drift.png"}
    assert "## Model drift" in (out / "drift.md").read_text()
    assert main(["drift", "--past", str(splits["past"]), "--future", str(splits["future"]),
                 "--window", "weekly", "--output", str(out)]) == 2


def test_a_model_that_saw_the_future_is_refused(splits, tmp_path, capsys):
    """drift --checkpoint checks that the model saw only data up to --past: one trained on all of
    ML-100K (the future included) would be scored on interactions it was trained on."""
    import ss4rec
    from ss4rec.cli import main

    run = ss4rec.run(model="SASRec", dataset="ml-100k", config_files=["tiny"], config_dict={"hidden_size": 16},
                     output_dir=tmp_path / "run", device="cpu")
    out = tmp_path / "drift"
    assert main(["drift", "--past", str(splits["past"]), "--future", str(splits["future"]),
                 "--checkpoint", run["checkpoint"], "--output", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "at or after the first interaction of --future" in line and "it would be scored on interactions it saw" in line
    assert not out.exists()  # nothing half-written

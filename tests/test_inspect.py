"""``ss4rec inspect``: its numbers against independent pandas computations on the bundled
ML-100K, the auto unit against the model's own, safe output, clear errors, and the trained
signal tests on a small positive control."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import recbole
from recbole.data import create_dataset, data_preparation

from ss4rec.cli import main as cli_main
from ss4rec.data.time_control import write_time_control
from ss4rec.data.time_profile import TimeLog, positions, read_time_log, time_profile
from ss4rec.evaluation.signal_tests import permuted_gaps, shuffled_order
from ss4rec.models.ss4rec import SS4Rec
from ss4rec.pipeline.settings import build_config
from tests.conftest import TINY_SS4REC

ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"


def _pandas_log(path) -> pd.DataFrame:
    """Each user's interactions in time order (ties in file order), read independently."""
    log = pd.read_csv(path, sep="\t", usecols=["user_id:token", "item_id:token", "timestamp:float"])
    log.columns = ["user", "item", "time"]
    return log.sort_values("time", kind="stable").sort_values("user", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def ml100k_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "ml-100k"
    assert cli_main(["inspect", "ml-100k", "--output", str(out)]) == 0
    return out, json.loads((out / "inspect.json").read_text())


def test_ml100k_numbers_agree_with_pandas(ml100k_report):
    out, report = ml100k_report
    log = _pandas_log(ML100K)
    gap = log.groupby("user")["time"].diff()  # NaN at each user's first
    last = log.groupby("user").tail(1).set_index("user")["time"]
    before_last = log.groupby("user").nth(-2).set_index("user")["time"]
    test_gap = (last - before_last.reindex(last.index)).to_numpy()
    valid = log.groupby("user").nth(-2).set_index("user")["time"]
    before_valid = log.groupby("user").nth(-3).set_index("user")["time"]
    valid_gap = (valid - before_valid.reindex(valid.index)).to_numpy()

    assert (report["interactions"], report["users"], report["items"]) == (100_000, 943, 1682)
    same = report["identical"]
    assert same["last_two"] == {"zero": 415, "of": 943, "share": 415 / 943}  # the benchmarks doc's count
    assert same["test_target"]["zero"] == int((test_gap == 0).sum()) == 415
    assert same["valid_target"]["zero"] == int((valid_gap == 0).sum())
    assert same["consecutive_pairs"]["zero"] == int((gap == 0).sum())
    assert same["consecutive_pairs"]["of"] == int(gap.notna().sum()) == 100_000 - 943
    buckets = {b["bucket"]: b for b in report["gap_buckets"]}
    assert buckets["< 1 min"]["test_targets"] == int((test_gap < 60).sum()) == 678  # 678 of 943 within a minute
    edges = [0, 60, 3600, 86400, 30 * 86400, np.inf]
    assert [b["all_gaps"] for b in report["gap_buckets"]] == np.histogram(gap.dropna(), edges)[0].tolist()
    assert [b["test_targets"] for b in report["gap_buckets"]] == np.histogram(test_gap, edges)[0].tolist()
    assert report["gaps"]["median_positive_seconds"] == float(gap[gap > 0].median())
    breaks = gap.isna() | (gap >= 1800)
    lengths = breaks.cumsum().value_counts()
    assert report["sessions"]["count"] == int(breaks.sum()) == len(lengths)
    assert report["sessions"]["median_length"] == float(lengths.median())
    assert report["span"]["seconds"] == report["units"]["normalized_seconds"] == log["time"].max() - log["time"].min()
    assert report["span"]["first"].startswith("1997-09-20")
    # the auto unit: the median positive gap of the training targets (not first, not valid / test)
    index = log.groupby("user").cumcount()
    n = log.groupby("user")["user"].transform("size")
    train = (index >= 1) & (index <= n - 3)
    assert report["units"]["auto_seconds"] == float(gap[train & (gap > 0)].median()) == 37.0
    assert "72% of test targets come within a minute" in report["meaning"]
    # the S5 state table: every unit x transform, the 1-hour gap wiped under seconds, kept under hours
    rows = {(r["time_unit"], r["time_transform"]): r for r in report["state_kept"]["rows"]}
    assert len(rows) == 12
    assert rows[("seconds", "linear")]["kept"]["1 h"]["median"] < 1e-6 < rows[("hours", "linear")]["kept"]["1 h"]["median"]
    assert rows[("auto", "linear")]["seconds_per_unit"] == 37.0
    # every file written: the Markdown says it, the PNG is a PNG
    md = (out / "inspect.md").read_text()
    assert "415 of 943 (44.0%)" in md and "| < 1 min |" in md
    assert (out / "gap_distribution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _model_unit(dataset: str, config_dict: dict) -> float:
    config, _ = build_config("SS4Rec", dataset, (), {**TINY_SS4REC, "hidden_size": 16, "time_unit": "auto",
                                                     **config_dict}, device="cpu")
    train_data, _, _ = data_preparation(config, create_dataset(config))
    return SS4Rec(config, train_data._dataset).time_unit


@pytest.mark.parametrize("train_mode", ["prefix", "sequence"])
def test_auto_unit_is_the_models(tmp_path, train_mode):
    """The unit inspect reports is the one SS4Rec computes with time_unit auto on the same data."""
    write_time_control(tmp_path, users=80, items=30)  # a log with no same-second pairs
    inter = tmp_path / "time-control" / "time-control.inter"
    settings = {"data_path": str(tmp_path), "train_mode": train_mode, "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    assert time_profile(read_time_log(inter))["units"]["auto_seconds"] == _model_unit("time-control", settings)
    if train_mode == "prefix":  # ML-100K: half its pairs in the same second, which the median leaves out
        ml = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "train_mode": train_mode}
        assert time_profile(read_time_log(ML100K))["units"]["auto_seconds"] == _model_unit("ml-100k", ml) == 37.0


def test_output_is_never_replaced_silently(ml100k_report, capsys):
    out, _ = ml100k_report
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli_main(["inspect", "ml-100k", "--output", str(out), "--session-gap", "10"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "nothing was changed" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli_main(["inspect", str(ML100K), "--output", str(out), "--session-gap", "10", "--overwrite"]) == 0
    assert json.loads((out / "inspect.json").read_text())["sessions"]["gap_seconds"] == 600


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case, needle", [
    ("missing", "not found"),
    ("empty", "empty"),
    ("header only", "no rows"),
    ("no timestamp", "no timestamp:float column"),
    ("bad time", "not a number"),
    ("unknown name", "not found"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, case, needle):
    files = {
        "empty": "",
        "header only": "user_id:token\titem_id:token\ttimestamp:float\n",
        "no timestamp": "user_id:token\titem_id:token\trating:float\n1\t2\t5\n1\t3\t4\n",
        "bad time": "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\tyesterday\n",
    }
    if case == "unknown name":
        args = ["inspect", "nothere", "--data-path", str(tmp_path)]
    else:
        path = tmp_path / "d" / "d.inter"
        if case in files:
            _write(path, files[case])
        args = ["inspect", str(path)]
    assert cli_main([*args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_signal_variants_keep_what_they_promise():
    log = TimeLog.from_arrays(*[np.asarray(c) for c in _pandas_log(ML100K)[["user", "item", "time"]].T.to_numpy()])
    pos = positions(log)
    held = ~pos.training
    items = shuffled_order(log, seed=1)
    assert np.array_equal(items[held], log.items[held])  # valid and test targets kept
    frame = pd.DataFrame({"u": log.users, "a": log.items, "b": items})[pos.training]
    assert (frame.groupby("u")["a"].apply(sorted) == frame.groupby("u")["b"].apply(sorted)).all()  # same items
    assert (items != log.items).mean() > 0.5  # and moved
    times = permuted_gaps(log, seed=1)
    assert np.array_equal(times[held], log.times[held])  # valid / test timestamps kept
    last_training = pos.training & ~np.r_[pos.training[1:], False]
    assert np.array_equal(times[last_training | pos.first], log.times[last_training | pos.first])
    assert np.all(np.diff(times)[log.users[1:] == log.users[:-1]] >= 0)  # still in time order
    new_gaps = np.diff(times, prepend=np.nan)
    new_gaps[pos.first] = np.nan
    old = pd.DataFrame({"u": log.users, "g": pos.gaps})[pos.train_target].groupby("u")["g"].apply(sorted)
    new = pd.DataFrame({"u": log.users, "g": new_gaps})[pos.train_target].groupby("u")["g"].apply(sorted)
    assert (old == new).all()  # each user's training gaps, as a multiset
    assert (new_gaps[pos.train_target] != pos.gaps[pos.train_target]).mean() > 0.3


def test_signal_machinery_on_a_small_positive_control(tmp_path, capsys):
    """Five real (short) trainings on a small control log: the variants are written, every run
    trains and is evaluated, the paired CIs are computed over the same users, the verdicts
    read as documented, and the order signal (strong by construction) is found.

    The gap verdict is only checked for its form: on the control, SS4Rec needs more training
    than a test can afford to pick up the gap rule (the command's verdicts on the full control
    are in docs/benchmarks.md).
    """
    import re

    from ss4rec.evaluation.signal_tests import signal_tests

    write_time_control(tmp_path / "data", users=100, items=40, min_per_user=30, max_per_user=40, seed=1)
    log = read_time_log(tmp_path / "data" / "time-control" / "time-control.inter")
    result = signal_tests(log, tmp_path / "out", epochs=6, seed=2020, patience=3,
                          config_dict={"learning_rate": 0.01, "hidden_size": 32, "d_state": 8, "d_P": 8,
                                       "expand": 1, "MAX_ITEM_LIST_LENGTH": 20})
    progress = capsys.readouterr().out
    assert progress.count("[inspect --signal] run ") == 10  # a start and an end line per run
    assert [r["status"] for r in result["runs"]] == ["ok"] * 5, result["runs"]
    for variant in ("real", "order-shuffled", "gaps-permuted"):
        assert (tmp_path / "out" / "data" / variant / f"{variant}.inter").is_file()
    for run in result["runs"]:
        assert (Path(run["run_dir"]) / "evaluate" / "user_ranks.csv").is_file()
    number = r"[+-]\d\.\d{4}"
    order, gaps, versus = result["verdicts"]
    assert re.fullmatch(rf"order carries signal: yes \(Δ NDCG@10 real − shuffled \(SASRec\) {number} "
                        rf"\[{number}, {number}\], 100 users\)", order), order
    assert re.fullmatch(rf"gaps carry signal: (yes|no) \(Δ NDCG@10 real − permuted \(SS4Rec\) {number} "
                        rf"\[{number}, {number}\], 100 users\)", gaps), gaps
    assert versus.startswith("SS4Rec vs ignore-time on the real data: Δ NDCG@10 ")
    for name, comparison in result["comparisons"].items():
        low, high = comparison["ci"]
        assert comparison["users"] == 100 and low <= comparison["delta"] <= high, (name, comparison)
    assert gaps.split(": ")[1].startswith("yes") == (result["comparisons"]["gaps"]["ci"][0] > 0)
    real = next(r for r in result["runs"] if r["model"] == "SASRec" and r["variant"] == "real")
    shuffled = next(r for r in result["runs"] if r["model"] == "SASRec" and r["variant"] == "order-shuffled")
    assert result["comparisons"]["order"]["delta"] == pytest.approx(real["ndcg@10"] - shuffled["ndcg@10"], abs=1e-3)

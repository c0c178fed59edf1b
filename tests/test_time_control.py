"""The positive control's log follows its documented rule, and its files are written safely."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ss4rec.cli import main as cli_main
from ss4rec.data.time_control import BUCKET_EDGES_S, successor_tables, time_control_log


@pytest.mark.parametrize("rule, shift", [("last-gap", 1), ("next-gap", 0)])
def test_the_next_item_follows_the_gap_bucket_rule(rule, shift):
    log = time_control_log(users=300, items=50, noise=0.1, seed=3, rule=rule)
    successors = successor_tables(items=50, seed=3)
    followed = total = 0
    blind_best = 0
    for _, user in log.groupby("user_id:token", sort=False):
        items = user["item_id:token"].to_numpy() - 1
        times = user["timestamp:float"].to_numpy()
        assert np.all(np.diff(times) >= 60) and np.all(np.diff(times) <= 86401)  # 1 min .. 1 day
        buckets = np.searchsorted(BUCKET_EDGES_S, np.diff(times))
        for k in range(1, len(items) - 1):
            total += 1
            followed += items[k + 1] == successors[buckets[k - shift], items[k]]
            blind_best += items[k + 1] in successors[:, items[k]]
    assert 0.88 < followed / total < 0.93  # 90% by the rule (+ noise that lands right by chance)
    assert blind_best / total > followed / total  # the four successors: all a time-blind model can narrow to
    # every bucket is used about equally (the edges are the gap distribution's quartiles)
    gaps = np.concatenate([np.diff(u["timestamp:float"].to_numpy()) for _, u in log.groupby("user_id:token")])
    shares = np.bincount(np.searchsorted(BUCKET_EDGES_S, gaps), minlength=4) / len(gaps)
    assert np.all(np.abs(shares - 0.25) < 0.02)


def test_same_seed_same_log_other_seed_other_log():
    assert time_control_log(users=20, seed=1).equals(time_control_log(users=20, seed=1))
    assert not time_control_log(users=20, seed=1).equals(time_control_log(users=20, seed=2))


def test_command_writes_the_dataset_and_never_replaces_silently(tmp_path, capsys):
    assert cli_main(["positive-control", "--output", str(tmp_path), "--users", "40", "--seed", "5"]) == 0
    folder = tmp_path / "time-control"
    facts = json.loads((folder / "time-control.json").read_text())
    assert facts["synthetic"] and facts["options"]["users"] == 40 and "succ_b" in facts["rule"]
    before = (folder / "time-control.inter").read_bytes()
    assert before.startswith(b"user_id:token\titem_id:token\ttimestamp:float\n")
    assert cli_main(["positive-control", "--output", str(tmp_path), "--users", "80"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (folder / "time-control.inter").read_bytes() == before
    assert cli_main(["positive-control", "--output", str(tmp_path), "--users", "80", "--overwrite", "--rule",
                     "next-gap"]) == 0
    assert json.loads((folder / "time-control.json").read_text())["options"]["rule"] == "next-gap"
    assert (folder / "time-control.inter").read_bytes() != before
    assert cli_main(["positive-control", "--output", str(tmp_path), "--name", "x", "--noise", "2"]) == 2
    assert "noise" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad", [["--users", "0"], ["--items", "2"]])
def test_bad_sizes_are_clear_errors(bad, tmp_path, capsys):
    assert cli_main(["positive-control", "--output", str(tmp_path), *bad]) == 2
    assert "Traceback" not in capsys.readouterr().err

"""``ss4rec split``: past ∪ future = input, no overlap, past times <= future times, on the real
ML-100K; every cut rule; the past part loads in RecBole and trains; bad input changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ss4rec
from ss4rec.cli import main
from ss4rec.data.split import parse_cut_time, split_by_time

RECBOLE_ML100K = Path(__import__("recbole").__file__).parent / "dataset_example" / "ml-100k"
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


@pytest.fixture
def real_inter(tmp_path) -> Path:
    """RecBole's ml-100k copied as data/mlk/mlk.{inter,item,user}."""
    folder = tmp_path / "data" / "mlk"
    folder.mkdir(parents=True)
    for ext in ("inter", "item", "user"):
        shutil.copyfile(RECBOLE_ML100K / f"ml-100k.{ext}", folder / f"mlk.{ext}")
    return folder / "mlk.inter"


def rows_of(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    assert lines[0] + "\n" == HEADER
    return lines[1:]


def times_of(lines: list[str]) -> np.ndarray:
    return np.array([int(line.split("\t")[3]) for line in lines], dtype=np.int64)


def snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def write_inter(path: Path, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join("\t".join(map(str, row)) + "\n" for row in rows))
    return path


def test_future_fraction_on_real_ml100k_partitions_by_time(real_inter, tmp_path, capsys):
    out = tmp_path / "splits"
    assert main(["split", "--inter", str(real_inter), "--future-fraction", "0.2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out

    past_lines = rows_of(out / "mlk-past" / "mlk-past.inter")
    future_lines = rows_of(out / "mlk-future" / "mlk-future.inter")
    input_lines = rows_of(real_inter)
    assert Counter(past_lines) + Counter(future_lines) == Counter(input_lines)  # union, byte for byte
    assert len(past_lines) + len(future_lines) == 100_000  # so no line is in both
    assert times_of(past_lines).max() < times_of(future_lines).min()
    assert 19_900 <= len(future_lines) <= 20_000  # the latest 20%, minus ties kept in the past

    for side in ("past", "future"):  # the item and user files travel with both parts
        for ext in ("item", "user"):
            copied = out / f"mlk-{side}" / f"mlk-{side}.{ext}"
            assert copied.read_bytes() == (real_inter.parent / f"mlk.{ext}").read_bytes()

    report = json.loads((out / "mlk-split.json").read_text())
    past = pd.DataFrame([line.split("\t") for line in past_lines])
    future = pd.DataFrame([line.split("\t") for line in future_lines])
    new_users = set(future[0]) - set(past[0])
    new_items = set(future[1]) - set(past[1])
    assert report["past"]["rows"] == len(past_lines) and report["future"]["rows"] == len(future_lines)
    assert report["future_only_users"] == len(new_users) > 0
    assert report["future_only_items"] == len(new_items) > 0
    assert report["future_rows_with_future_only_user"] == int(future[0].isin(new_users).sum())
    assert report["past"]["time_range"]["max"] <= report["rule"]["cut"] < report["future"]["time_range"]["min"]
    assert f"{len(new_users):,} users" in printed and f"{len(past_lines):,} interactions" in printed


def test_ties_at_the_cut_go_to_the_past_and_date_forms_agree(tmp_path):
    day = 1_420_070_400  # 2015-01-01T00:00:00Z
    rows = [(1, 1, 4, day - 10), (1, 2, 4, day), (2, 1, 3, day), (2, 3, 5, day), (3, 4, 1, day + 1), (4, 4, 2, day + 99)]
    inter = write_inter(tmp_path / "d" / "tiny.inter", rows)
    assert parse_cut_time("2015-01-01") == parse_cut_time(str(day)) == parse_cut_time("2015-01-01T01:00:00+01:00")
    for at in ("2015-01-01", str(day), "2015-01-01T00:00:00"):
        report = split_by_time(inter, tmp_path / "s", at=at)
        assert report["past"]["rows"] == 4 and report["future"]["rows"] == 2
        assert times_of(rows_of(tmp_path / "s" / "tiny-future" / "tiny-future.inter")).tolist() == [day + 1, day + 99]
    assert report["future_only_users"] == 2 and report["future_only_user_examples"] == ["3", "4"]
    assert report["future_only_items"] == 1

    # future_fraction 0.5 asks for 3 future rows; the cut timestamp is shared by 3 rows
    # that all stay in the past, so only the 2 later ones move.
    report = split_by_time(inter, tmp_path / "s", future_fraction=0.5)
    assert (report["past"]["rows"], report["future"]["rows"]) == (4, 2)


def test_until_of_cuts_at_the_other_files_last_timestamp(real_inter, tmp_path, capsys):
    earlier = real_inter.parent.parent / "older" / "older.inter"
    lines = rows_of(real_inter)
    cut = int(np.quantile(times_of(lines), 0.7))
    earlier.parent.mkdir()
    earlier.write_text(HEADER + "".join(line + "\n" for line in lines if int(line.split("\t")[3]) <= cut))

    out = tmp_path / "splits"
    assert main(["split", "--inter", str(real_inter), "--until-of", str(earlier), "--output", str(out)]) == 0
    past = rows_of(out / "mlk-past" / "mlk-past.inter")
    future = rows_of(out / "mlk-future" / "mlk-future.inter")
    assert Counter(past) == Counter(rows_of(earlier))  # the past is exactly the older file
    assert times_of(future).min() > cut and len(past) + len(future) == 100_000


def test_past_part_loads_in_recbole_and_trains_one_epoch(tmp_path, monkeypatch):
    # 60 real users keep the epoch short on CPU
    full = pd.read_csv(RECBOLE_ML100K / "ml-100k.inter", sep="\t")
    small = full[full["user_id:token"] <= 60]
    inter = tmp_path / "data" / "small" / "small.inter"
    inter.parent.mkdir(parents=True)
    small.to_csv(inter, sep="\t", index=False)
    report = split_by_time(inter, tmp_path / "splits", future_fraction=0.1)

    from recbole.config import Config
    from recbole.data import create_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    config = Config(model="SASRec", dataset="small-past", config_dict={
        "data_path": str(tmp_path / "splits"), "show_progress": False, "state": "ERROR",
        "train_neg_sample_args": None,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
    })
    assert create_dataset(config).inter_num == report["past"]["rows"]

    result = ss4rec.run(model="SASRec", dataset="small-past", output_dir=tmp_path / "run", device="cpu",
                        config_dict={"data_path": str(tmp_path / "splits"), "epochs": 1,
                                     "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
                                     "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 256,
                                     "eval_batch_size": 256, "loss_type": "CE",
                                     "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}})
    assert result["epochs_run"] == 1
    assert 0.0 <= result["test"]["ndcg@10"] <= 1.0


# --------------------------------------------------------------------------- bad input
GOOD_ROWS = [(1, 1, 4, 100), (1, 2, 4, 200), (2, 1, 3, 300), (2, 3, 5, 400)]
BAD_INTERS = {
    # case: (file text, cut arguments, message fragments)
    "empty file": ("", ["--at", "250"], ["line 1", "file is empty"]),
    "header only": (HEADER, ["--at", "250"], ["no interactions"]),
    "no timestamp field": ("user_id:token\titem_id:token\n1\t2\n", ["--at", "250"],
                           ["line 1", "expected a 'timestamp:float' field"]),
    "untyped header": ("user_id\titem_id\ttimestamp\n1\t2\t3\n", ["--at", "250"], ["line 1", "expected 'name:type'"]),
    "non-numeric timestamp": (HEADER + "1\t1\t4\t100\n1\t2\t4\tnoon\n", ["--at", "250"],
                              ["line 3", "timestamp is 'noon'", "non-negative epoch seconds"]),
    "negative timestamp": (HEADER + "1\t1\t4\t100\n1\t2\t4\t-100\n", ["--at", "250"], ["line 3", "'-100'"]),
    "blank timestamp": (HEADER + "1\t1\t4\t100\n1\t2\t4\t\n", ["--at", "250"], ["line 3", "timestamp is blank"]),
    "truncated line": (HEADER + "1\t1\t4\t100\n1\t2", ["--at", "250"], ["line 3", "expected 4 tab-separated fields"]),
    "extra field": (HEADER + "1\t1\t4\t100\t7\n", ["--at", "250"], ["line 2", "expected 4 tab-separated fields", "found 5"]),
    "binary garbage": (HEADER + "1\t1\t4\t100\n\x89PNG\x00\xff\xfe\n", ["--at", "250"], ["line 3"]),
    "cut after the data": (None, ["--at", "2030-01-01"], ["future empty", "choose an earlier cut"]),
    "cut before the data": (None, ["--at", "50"], ["past empty", "choose a later cut"]),
}


@pytest.fixture
def good_split(tmp_path):
    inter = write_inter(tmp_path / "data" / "d" / "d.inter", GOOD_ROWS)
    out = tmp_path / "splits"
    assert main(["split", "--inter", str(inter), "--at", "250", "--output", str(out)]) == 0
    before = snapshot(out)
    assert "d-past/d-past.inter" in before
    return inter, out, before


@pytest.mark.parametrize("case", list(BAD_INTERS))
def test_bad_input_fails_cleanly_and_keeps_the_old_split(case, good_split, capsys):
    text, cut_args, fragments = BAD_INTERS[case]
    inter, out, before = good_split
    if text is not None:
        inter.write_bytes(text.encode("latin-1"))
    capsys.readouterr()
    assert main(["split", "--inter", str(inter), *cut_args, "--output", str(out)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: {inter}"), message
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(out) == before


@pytest.mark.parametrize("cut_args, fragment", [
    (["--at", "next tuesday"], "expected an ISO date"),
    (["--future-fraction", "1.5"], "expected a number between 0 and 1"),
    (["--future-fraction", "0.0001"], "leaves the future empty"),
])
def test_bad_cut_arguments(cut_args, fragment, good_split, capsys):
    inter, out, before = good_split
    assert main(["split", "--inter", str(inter), *cut_args, "--output", str(out)]) == 2
    assert fragment in capsys.readouterr().err
    assert snapshot(out) == before


def test_until_of_a_bad_file_names_that_file(good_split, tmp_path, capsys):
    inter, out, before = good_split
    other = tmp_path / "other.inter"
    other.write_text(HEADER + "1\t1\t4\tlater\n")
    assert main(["split", "--inter", str(inter), "--until-of", str(other), "--output", str(out)]) == 2
    assert f"error: {other}: line 2" in capsys.readouterr().err
    assert main(["split", "--inter", str(inter), "--until-of", str(tmp_path / "nope.inter"), "--output", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert snapshot(out) == before

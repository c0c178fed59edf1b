"""``ss4rec.evaluation.recommend`` and ``ss4rec recommend`` on real one-epoch runs (tiny ML-100K subset).

Expected values come from the raw atomic files of RecBole's bundled ML-100K, read here
with pandas, and from the models' own ``full_sort_predict`` on inputs built here.
"""

from __future__ import annotations

import json
import warnings
from io import StringIO

import numpy as np
import pandas as pd
import pytest
import torch

import ss4rec
from ss4rec import cli
from ss4rec.config.files import _recbole_dir
from ss4rec.errors import UserError
from ss4rec.pipeline.runner import restore
from ss4rec.evaluation.recommend import parse_time, recommend

BUNDLED = _recbole_dir() / "dataset_example" / "ml-100k"
# Users of the "tiny" subset (at most 40 ratings each); checked against the raw file below.
USERS = ["4", "9", "17", "33"]
LATEST_ML100K = parse_time("1998-04-23")  # after the last ML-100K rating (1998-04-22)


@pytest.fixture(scope="module")
def raw_ratings() -> pd.DataFrame:
    frame = pd.read_csv(BUNDLED / "ml-100k.inter", sep="\t", dtype=str)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame["timestamp"] = frame["timestamp"].astype("float64")
    return frame


@pytest.fixture(scope="module")
def raw_items() -> dict[str, tuple[str, str]]:
    """item id -> (title, genres joined by '|'), straight from the .item file's lines."""
    lines = (BUNDLED / "ml-100k.item").read_text(encoding="utf-8").splitlines()[1:]
    return {f[0]: (f[1], "|".join(f[3].split())) for f in (line.split("\t") for line in lines)}


def _train(tmp_path_factory, model: str, config_dict=None):
    out = tmp_path_factory.mktemp(model)
    result = ss4rec.run(model=model, dataset="ml-100k", config_files=["tiny"], config_dict=config_dict,
                        output_dir=out, device="cpu")
    return result["checkpoint"]


@pytest.fixture(scope="module")
def sasrec_checkpoint(tmp_path_factory):
    # Raw (unscaled) timestamps, so the request time reaches SASRec and can be shown ignored.
    return _train(tmp_path_factory, "SASRec", {"normalize_all": False})


@pytest.fixture(scope="module")
def ss4rec_checkpoint(tmp_path_factory):
    return _train(tmp_path_factory, "SS4Rec")


@pytest.fixture(scope="module")
def sasrec_run(sasrec_checkpoint):
    return restore(sasrec_checkpoint)


@pytest.fixture(scope="module")
def ss4rec_run(ss4rec_checkpoint):
    return restore(ss4rec_checkpoint)


def _history(raw_ratings, user):
    """The user's (items, times) from the raw file, ordered by exact time (ties in file order).

    Every run's dataset orders interactions this way, whatever dtype it then stores the time
    in (:mod:`ss4rec.data.ordering`: float32 times would tie epoch seconds within ~64 s).
    """
    rows = raw_ratings[raw_ratings["user_id"] == user]
    order = np.argsort(rows["timestamp"].to_numpy(dtype=np.float64), kind="stable")
    return rows["item_id"].to_numpy()[order].tolist(), rows["timestamp"].to_numpy()[order]


def _reference_scores(run, raw_ratings, users, at_seconds):
    """``full_sort_predict`` on an input built here from the raw file: [len(users) n_items]."""
    from recbole.data.interaction import Interaction

    max_len = run.config["MAX_ITEM_LIST_LENGTH"]
    time_dtype = run.dataset.inter_feat["timestamp"].dtype
    item_seq = torch.zeros(len(users), max_len, dtype=torch.long)
    time_seq = torch.zeros(len(users), max_len, dtype=time_dtype)
    lengths = torch.zeros(len(users), dtype=torch.long)
    for row, user in enumerate(users):
        items, times = _history(raw_ratings, user)
        items, times = items[-max_len:], times[-max_len:]
        item_seq[row, : len(items)] = torch.as_tensor(run.dataset.token2id("item_id", items))
        time_seq[row, : len(times)] = torch.as_tensor(times, dtype=time_dtype)
        lengths[row] = len(items)
    interaction = Interaction({
        "item_id_list": item_seq, "item_length": lengths, "timestamp_list": time_seq,
        "timestamp": torch.full((len(users),), at_seconds, dtype=time_dtype),
    })
    with torch.no_grad():
        return run.model.full_sort_predict(interaction).float()


def test_users_are_in_the_tiny_subset(raw_ratings):
    counts = raw_ratings["user_id"].value_counts()
    assert all(2 <= counts[u] <= 40 for u in USERS)


def test_parse_time_accepts_epoch_and_iso_utc():
    assert parse_time("891388800") == 891388800.0
    assert parse_time(891388800) == 891388800.0
    assert parse_time("1998-04-01") == 891388800.0
    assert parse_time("1998-04-01T00:00:00Z") == 891388800.0
    assert parse_time("1998-04-01T02:00:00+02:00") == 891388800.0
    with pytest.raises(UserError, match=r"neither epoch seconds \(e.g. 891388800\) nor an ISO date"):
        parse_time("next tuesday")
    with pytest.raises(UserError, match="finite"):
        parse_time("nan")


def test_ids_titles_and_genres_are_the_original_ones(sasrec_run, raw_ratings, raw_items):
    frame = recommend(sasrec_run, USERS, k=7)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "title", "genres"]
    assert frame["user_id"].tolist() == [u for u in USERS for _ in range(7)]
    assert frame["rank"].tolist() == list(range(1, 8)) * len(USERS)
    for user, group in frame.groupby("user_id"):
        assert group["score"].is_monotonic_decreasing
    for item, title, genres in frame[["item_id", "title", "genres"]].itertuples(index=False):
        assert (title, genres) == raw_items[item]
    # Every recommended id is a real item of the run's dataset (never the padding item).
    assert set(frame["item_id"]) <= set(raw_ratings["item_id"])


def test_exclude_seen_drops_the_whole_history(sasrec_run, raw_ratings):
    frame = recommend(sasrec_run, USERS, k=50, exclude_seen=True)
    for user in USERS:
        seen = set(_history(raw_ratings, user)[0])
        assert len(seen) > 20  # longer than MAX_ITEM_LIST_LENGTH: the cut must not matter
        recommended = frame.loc[frame["user_id"] == user, "item_id"]
        assert len(recommended) == 50 and not seen & set(recommended)
    # Without the flag, seen items compete: the top 50 of a trained model holds some.
    kept = recommend(sasrec_run, USERS, k=50)
    assert any(set(_history(raw_ratings, u)[0]) & set(kept.loc[kept["user_id"] == u, "item_id"]) for u in USERS)


@pytest.mark.parametrize("which", ["sasrec_run", "ss4rec_run"])
def test_scores_equal_full_sort_predict_on_the_full_history(which, request, raw_ratings):
    run = request.getfixturevalue(which)
    at = LATEST_ML100K + 3600.0
    frame = recommend(run, USERS, k=10, at=at, batch_size=3)  # 2 batches
    reference = _reference_scores(run, raw_ratings, USERS, at)  # [U n_items]
    reference[:, 0] = -torch.inf
    for row, user in enumerate(USERS):
        got = frame[frame["user_id"] == user]
        expected_scores, expected_ids = reference[row].topk(10)
        assert got["item_id"].tolist() == list(run.dataset.id2token("item_id", expected_ids.numpy()))
        np.testing.assert_allclose(got["score"], expected_scores.numpy(), rtol=1e-5, atol=1e-5)


def test_default_request_time_is_last_plus_median_gap(ss4rec_run, raw_ratings):
    frame = recommend(ss4rec_run, USERS[:2], k=3)
    for user in USERS[:2]:
        times = _history(raw_ratings, user)[1]
        assert frame.attrs["request_time"][user] == times[-1] + np.median(np.diff(times))


def test_request_time_moves_ss4rec_but_not_sasrec(ss4rec_run, sasrec_run, raw_ratings):
    # A minute after the user's last rating vs years later: SS4Rec's last step sees the gap.
    late = "2003-01-01T00:00:00Z"
    for user in USERS[:2]:
        soon = _history(raw_ratings, user)[1][-1] + 60.0
        ss4_soon, ss4_late = (recommend(ss4rec_run, [user], k=10, at=t) for t in (soon, late))
        assert not np.allclose(ss4_soon["score"], ss4_late["score"], atol=1e-3)
        assert ss4_soon["item_id"].tolist() != ss4_late["item_id"].tolist()
        sas_soon, sas_late = (recommend(sasrec_run, [user], k=10, at=t) for t in (soon, late))
        assert sas_soon["item_id"].tolist() == sas_late["item_id"].tolist()
        np.testing.assert_array_equal(sas_soon["score"], sas_late["score"])


def test_request_time_before_the_history_is_refused(ss4rec_run):
    with pytest.raises(UserError, match=r"before the last interaction of user\(s\) '4'"):
        recommend(ss4rec_run, ["4"], at="1990-01-01")


def test_unknown_users_are_reported_and_the_others_answered(sasrec_run):
    with pytest.warns(UserWarning, match="user '999999': not a user of this run's dataset"):
        frame = recommend(sasrec_run, ["999999", "4", "abc"], k=3)
    assert frame["user_id"].tolist() == ["4"] * 3
    assert set(frame.attrs["skipped_users"]) == {"999999", "abc"}
    with pytest.raises(UserError, match="no user could be answered"):
        recommend(sasrec_run, ["999999"], k=3, on_unknown="ignore")
    with pytest.raises(UserError, match="user '999999'"):
        recommend(sasrec_run, ["4", "999999"], k=3, on_unknown="raise")


def test_checkpoint_path_is_accepted(sasrec_checkpoint, sasrec_run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RecBole's own pandas FutureWarnings while loading
        from_path = recommend(sasrec_checkpoint, 4, k=5)
    pd.testing.assert_frame_equal(from_path, recommend(sasrec_run, ["4"], k=5))


def test_cli_formats_and_unknown_users(sasrec_checkpoint, tmp_path, capsys):
    users_file = tmp_path / "users.txt"
    users_file.write_text("# users to answer\n9\n\n123456\n", encoding="utf-8")
    code = cli.main(["recommend", "--checkpoint", sasrec_checkpoint, "--user", "4",
                     "--users-file", str(users_file), "-k", "3", "--format", "json", "--exclude-seen"])
    captured = capsys.readouterr()
    assert code == 0
    records = json.loads(captured.out)
    assert [(r["user_id"], r["rank"]) for r in records] == [("4", 1), ("4", 2), ("4", 3), ("9", 1), ("9", 2), ("9", 3)]
    assert set(records[0]) == {"user_id", "rank", "item_id", "score", "title", "genres"}
    assert "warning: user '123456' skipped: not a user of this run's dataset" in captured.err

    code = cli.main(["recommend", "--checkpoint", sasrec_checkpoint, "--user", "4", "-k", "2",
                     "--format", "csv", "--exclude-seen"])
    csv_frame = pd.read_csv(StringIO(capsys.readouterr().out), dtype={"user_id": str, "item_id": str})
    assert code == 0
    assert list(csv_frame.columns) == ["user_id", "rank", "item_id", "score", "title", "genres"]
    assert csv_frame["item_id"].tolist() == [r["item_id"] for r in records[:2]]
    np.testing.assert_allclose(csv_frame["score"], [r["score"] for r in records[:2]], rtol=1e-6)

    code = cli.main(["recommend", "--checkpoint", sasrec_checkpoint, "--user", "4", "-k", "2"])
    table = capsys.readouterr().out
    assert code == 0
    assert table.splitlines()[0].split()[:4] == ["user_id", "rank", "item_id", "score"]
    assert len(table.splitlines()) == 3

    code = cli.main(["recommend", "--checkpoint", sasrec_checkpoint, "--user", "123456"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "error: no user could be answered: user '123456'" in captured.err

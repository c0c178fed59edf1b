"""``ss4rec evaluate``: a saved checkpoint reproduces its run's test metrics; per-user ranks agree."""

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import recbole

import ss4rec
from ss4rec.cli import main as cli_main
from ss4rec.errors import UserError
from ss4rec.evaluation.evaluate import evaluate_checkpoint

# The tiny config (305 users of bundled ML-100K), made smaller still: seconds on 2 cores.
SMALL = {"MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "train_batch_size": 1024}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gru4rec")
    return ss4rec.run(model="GRU4Rec", dataset="ml-100k", config_files=["tiny"], config_dict=SMALL,
                      output_dir=out, device="cpu")


def test_reproduces_run_test_metrics_exactly(trained_run, tmp_path):
    report = evaluate_checkpoint(trained_run["checkpoint"], output_dir=tmp_path)
    assert report["metrics"] == trained_run["test"]  # same seed, split and weights: exact
    assert report["topk"] == [1, 5, 10, 20]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"] == trained_run["test"]


def test_user_ranks_match_metrics(trained_run, tmp_path):
    report = evaluate_checkpoint(trained_run["checkpoint"], topk=[1, 5, 10, 20, 50], output_dir=tmp_path)
    # Extra cut-offs change nothing at the old ones.
    assert {k: report["metrics"][k] for k in trained_run["test"]} == trained_run["test"]
    assert "ndcg@50" in report["metrics"]

    with open(tmp_path / "user_ranks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["user_id", "item_id", "rank", "history_length"]
    assert len(rows) == report["n_users"] == trained_run["n_users"] - 1  # all users but padding
    assert len({r["user_id"] for r in rows}) == len(rows)  # one test item per user
    ranks = [int(r["rank"]) for r in rows]
    n_items = trained_run["n_items"] - 1
    assert all(1 <= r <= n_items for r in ranks)
    # Tiny keeps users with at most 40 interactions; each has >= 2 before its test item, and
    # history_length counts them all: the user's rows in the bundled file, less the test item.
    assert all(2 <= int(r["history_length"]) <= 39 for r in rows)
    inter = pd.read_csv(Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter", sep="\t")
    rows_per_user = inter["user_id:token"].astype(str).value_counts()
    assert all(int(r["history_length"]) == rows_per_user[r["user_id"]] - 1 for r in rows)
    # Original ML-100K ids are numbers as strings ("1".."943", "1".."1682").
    assert all(1 <= int(r["user_id"]) <= 943 and 1 <= int(r["item_id"]) <= 1682 for r in rows)

    hit10 = sum(r <= 10 for r in ranks) / len(ranks)
    ndcg10 = sum(1 / math.log2(r + 1) for r in ranks if r <= 10) / len(ranks)
    assert round(hit10, 4) == report["metrics"]["hit@10"]
    assert round(ndcg10, 4) == report["metrics"]["ndcg@10"]


def test_cli_writes_both_files(trained_run, tmp_path, capsys):
    code = cli_main(["evaluate", "--checkpoint", trained_run["checkpoint"], "--topk", "10",
                     "--output", str(tmp_path / "ev")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["metrics"]) == {"hit@10", "ndcg@10", "mrr@10"}
    assert (tmp_path / "ev" / "metrics.json").is_file()
    assert (tmp_path / "ev" / "user_ranks.csv").is_file()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        evaluate_checkpoint(tmp_path / "nope.pth")


def test_bad_topk_is_a_clear_error(trained_run, tmp_path):
    with pytest.raises(UserError, match="positive integers"):
        evaluate_checkpoint(trained_run["checkpoint"], topk=[0, 10], output_dir=tmp_path)


def test_only_the_padding_item_is_left_out_of_the_ranking(trained_run, tmp_path):
    """Ranks re-derived from the model's scores with only item 0 masked (RecBole 1.2.1's rule for
    sequential models): the user's earlier items stay in the ranking and do outrank targets."""
    import torch

    from ss4rec.pipeline.runner import restore

    evaluate_checkpoint(trained_run["checkpoint"], output_dir=tmp_path)
    with open(tmp_path / "user_ranks.csv", newline="") as f:
        recorded = {r["user_id"]: int(r["rank"]) for r in csv.DictReader(f)}
    run = restore(trained_run["checkpoint"], device="cpu")
    config, dataset, model = run.config, run.dataset, run.model.eval()
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    ours, outranked_by_history = {}, 0
    with torch.no_grad():
        for interaction, _, positive_u, positive_i in run.test_data:
            scores = model.full_sort_predict(interaction).view(-1, dataset.item_num)  # [B n_items]
            scores[:, 0] = -torch.inf
            target = scores[positive_u, positive_i]
            ranks = 1 + (scores[positive_u] > target.unsqueeze(1)).sum(1)
            history = interaction[iid + config["LIST_SUFFIX"]][positive_u]  # [B L]
            above = scores[positive_u].gather(1, history) > target.unsqueeze(1)  # [B L]
            outranked_by_history += int((above & (history > 0)).any(1).sum())
            users = dataset.id2token(uid, interaction[uid][positive_u].numpy())
            ours.update(zip(users.tolist(), ranks.tolist()))
    assert ours == recorded
    assert outranked_by_history > 0  # a history mask would have changed these users' ranks

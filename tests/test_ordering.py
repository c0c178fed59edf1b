"""Every model of a comparison gets the identical split and histories (one exact ordering).

Models on exact float64 time (SS4Rec, TiSASRec) and RecBole's models (float32, min-max
normalised time) used to order interactions a few seconds apart differently: on the full
ML-100K, 4 test targets, 5 valid targets and ~38 histories differed between SS4Rec and
SASRec. These tests build each model's real datasets on the full bundled ML-100K.
"""

from __future__ import annotations

import numpy as np
import pytest

from ss4rec.data.loaders import create_dataset
from ss4rec.pipeline.settings import build_config


def _splits(model: str, extra=None):
    config, _ = build_config(model, "ml-100k", ["ml-100k-quick"], dict(extra or {}), device="cpu")
    dataset = create_dataset(config)
    return config, dataset, dataset.build()


def _targets(dataset, part, config) -> dict:
    """{user token: item token} of one leave-one-out part."""
    users = dataset.id2token(config["USER_ID_FIELD"], part.inter_feat[config["USER_ID_FIELD"]].numpy())
    items = dataset.id2token(config["ITEM_ID_FIELD"], part.inter_feat[config["ITEM_ID_FIELD"]].numpy())
    return dict(zip(users.tolist(), items.tolist()))


def _histories(dataset, part, config) -> dict:
    """{user token: tuple of history item tokens} of the test part of a sequential dataset."""
    batch = part[np.arange(len(part))]
    users = dataset.id2token(config["USER_ID_FIELD"], batch[config["USER_ID_FIELD"]].numpy())
    lists = batch[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]].numpy()
    lengths = batch[config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    return {u: tuple(dataset.id2token(config["ITEM_ID_FIELD"], row[:n]).tolist())
            for u, row, n in zip(users.tolist(), lists, lengths)}


@pytest.fixture(scope="module")
def built():
    return {model: _splits(model, {"train_mode": "prefix"}) for model in ("SS4Rec", "SASRec", "NeuMF")}


def test_same_test_and_valid_targets_for_every_model(built):
    reference = built["SS4Rec"]
    for model in ("SASRec", "NeuMF"):
        config, dataset, parts = built[model]
        for index, name in ((1, "valid"), (2, "test")):
            ours = _targets(reference[1], reference[2][index], reference[0])
            theirs = _targets(dataset, parts[index], config)
            differ = sorted(u for u in ours if ours[u] != theirs.get(u))
            assert len(ours) == 943 and not differ, f"{model} {name} targets differ for users {differ[:10]}"


def test_same_histories_for_exact_and_normalised_time(built):
    ss4rec_config, ss4rec_data, ss4rec_parts = built["SS4Rec"]
    sas_config, sas_data, sas_parts = built["SASRec"]
    assert not sas_config["TIME_FIELD"] or sas_data.inter_feat[sas_config["TIME_FIELD"]].dtype != ss4rec_data.inter_feat[
        ss4rec_config["TIME_FIELD"]].dtype  # the two really store time differently
    ours = _histories(ss4rec_data, ss4rec_parts[2], ss4rec_config)
    theirs = _histories(sas_data, sas_parts[2], sas_config)
    differ = [u for u in ours if ours[u] != theirs[u]]
    assert len(ours) == 943 and not differ, f"histories differ for {len(differ)} users"


def test_identical_timestamps_keep_file_order(tmp_path):
    """Interactions in the same second keep the order of the file, for every dataset class."""
    folder = tmp_path / "ties"
    folder.mkdir()
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, 6):
        # items 10..17, all at one second except the first two; the file lists them 17..10
        rows += [f"u{user}\ti{item}\t{1_000_000 if item > 11 else 999_000 + item}" for item in range(17, 9, -1)]
    (folder / "ties.inter").write_text("\n".join(rows) + "\n")
    settings = {"data_path": str(tmp_path), "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)"}
    seen = {}
    for model in ("SS4Rec", "SASRec"):
        config, _ = build_config(model, "ties", ["tiny"], dict(settings), device="cpu")
        dataset = create_dataset(config)
        parts = dataset.build()
        seen[model] = (_targets(dataset, parts[2], config), _histories(dataset, parts[2], config))
    assert seen["SS4Rec"] == seen["SASRec"]
    targets, histories = seen["SS4Rec"]
    # by time: i10, i11, then the tied i17 ... i12 in file order; i12 is the test target
    assert targets["u1"] == "i12" and histories["u1"] == ("i10", "i11", "i17", "i16", "i15", "i14", "i13")

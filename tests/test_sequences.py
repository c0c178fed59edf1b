"""O(N) sequential data and whole-sequence training (``train_mode: prefix | sequence``).

Real RecBole datasets built from the bundled ML-100K: our prefix-mode examples equal
RecBole's own augmentation and leave-one-out (same rows, same order, same values); windows
count every training target exactly once; and for users whose histories fit in one window,
sequence mode's summed loss and gradients equal prefix mode's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.dataset import Dataset, SequentialDataset

from conftest import TINY_SS4REC, assert_metrics_finite_above_random
from ss4rec.data.dataset import SS4RecDataset
from ss4rec.data.loaders import create_dataset, prepare_data
from ss4rec.data.ordering import exactly_ordered
from ss4rec.data.sequences import (COUNT_FROM, FLAT_POS, TARGET_ITEMS, TARGET_MASK,
                                   FlatSequentialDataset, window_rows)
from ss4rec.errors import ConfigError
from ss4rec.models.losses import window_loss
from ss4rec.pipeline.settings import build_config


def _recbole_reference(base):
    """``base`` with RecBole's own loading, augmentation, split and indexing put back.

    It keeps one thing of ours: interactions sorted stably by exact time as they load
    (:mod:`ss4rec.data.ordering`), so RecBole's float32 times order same-second-ish
    interactions as every model of a comparison sees them (tests/test_ordering.py).
    """

    class Reference(exactly_ordered(base)):
        _load_feat = Dataset._load_feat
        data_augmentation = SequentialDataset.data_augmentation
        build = SequentialDataset.build
        __getitem__ = Dataset.__getitem__
        inter_matrix = SequentialDataset.inter_matrix

    return Reference


def _all_rows(dataset):
    return dataset[np.arange(len(dataset))]


@pytest.mark.parametrize("model, config_files, settings, ours, theirs", [
    # SS4Rec on the full ML-100K, quickstart settings: exact float64 times.
    ("SS4Rec", ["ml-100k-quick"], {"train_mode": "prefix"}, SS4RecDataset, SS4RecDataset),
    # SASRec with RecBole's ml-100k.yaml (rating loaded, times normalised), short histories.
    ("SASRec", [], {"MAX_ITEM_LIST_LENGTH": 7}, FlatSequentialDataset, SequentialDataset),
])
def test_prefix_examples_equal_recboles(model, config_files, settings, ours, theirs):
    config, _ = build_config(model, "ml-100k", config_files, settings, device="cpu")
    assert type(create_dataset(config)) is ours
    flat = ours(config).build()
    reference = _recbole_reference(theirs)(config).build()
    for split, mine, recbole in zip(("train", "valid", "test"), flat, reference):
        expected = recbole.inter_feat
        got = _all_rows(mine)
        assert sorted(got.interaction) == sorted(expected.interaction), split
        for field in expected.interaction:
            assert got[field].dtype == expected[field].dtype, (split, field)
            assert torch.equal(got[field], expected[field]), (split, field)
    # Histories are stored once: no [N, L] field anywhere in the built datasets.
    assert all(t.dim() == 1 for t in flat[0].inter_feat.interaction.values())
    # RecBole's interaction matrix of the training split (used by some models) is unchanged.
    assert (flat[0].inter_matrix() != reference[0].inter_matrix()).nnz == 0


def _counted(last, length, count_from):
    """Flat positions of every counted target, and the items each one sees."""
    targets, context = [], []
    for end, n, first in zip(last, length, count_from):
        for p in range(first, n):
            targets.append(end - n + p + 1)
            context.append(p + 1)
    return np.array(targets), np.array(context)


@pytest.mark.parametrize("n_targets", [1, 7, 19, 20, 21, 50, 51])
@pytest.mark.parametrize("max_len", [1, 2, 5, 20])
def test_windows_count_every_target_once(n_targets, max_len):
    first_target = np.array([101, 1001])  # two users, the second with twice the history
    counts = np.array([n_targets, 2 * n_targets])
    last, length, count_from = window_rows(first_target, counts, max_len)
    targets, context = _counted(last, length, count_from)
    expected = np.r_[np.arange(101, 101 + n_targets), np.arange(1001, 1001 + 2 * n_targets)]
    assert sorted(targets) == sorted(expected)  # each target exactly once
    assert (length <= max_len).all() and (length >= 1).all()
    # A target sees every item before it, up to L: at least L/2 deep in a long history.
    history = targets - np.where(targets >= 1001, 1000, 100)
    assert (context >= np.minimum(history, max(1, max_len // 2))).all()


@pytest.mark.parametrize("multiple", [0.5, 1.0, 2.5])
def test_windows_shorter_exact_and_longer_than_max_len(multiple):
    max_len = 20
    n = int(multiple * max_len)
    last, length, count_from = window_rows(np.array([1]), np.array([n]), max_len)
    windows = list(zip(last.tolist(), length.tolist(), count_from.tolist()))
    if multiple == 0.5:  # one window holding the whole history
        assert windows == [(10, 10, 0)]
    elif multiple == 1.0:  # exactly one full window
        assert windows == [(20, 20, 0)]
    else:  # 50 targets: windows start at inputs 0, 10, 20, 30; later ones count their second half
        assert windows == [(20, 20, 0), (30, 20, 10), (40, 20, 10), (50, 20, 10)]


def _sequence_config(model, mode="sequence", **settings):
    base = dict(TINY_SS4REC) if model == "SS4Rec" else {}
    base.update({"train_mode": mode, **settings})
    return build_config(model, "ml-100k", ["tiny"], base, device="cpu")


def _prefix_split(model, **settings):
    """The prefix-mode training split of the same data and settings."""
    config, _ = _sequence_config(model, mode="prefix", **settings)
    return create_dataset(config).build()[0]


def test_sequence_mode_counts_every_training_target_once():
    config, _ = _sequence_config("SS4Rec", MAX_ITEM_LIST_LENGTH=8)
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    windows = train._dataset
    prefix_targets = np.sort(_prefix_split("SS4Rec", MAX_ITEM_LIST_LENGTH=8).inter_feat[FLAT_POS].numpy())

    batch = windows[np.arange(len(windows))]
    pos = windows.inter_feat[FLAT_POS].numpy()
    lengths = batch[config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    mask = batch[TARGET_MASK].numpy()
    rows, cols = np.nonzero(mask)
    counted = pos[rows] - lengths[rows] + cols + 1  # flat position of each counted target
    assert np.array_equal(np.sort(counted), prefix_targets)
    assert train.targets == len(prefix_targets) == mask.sum()
    # The target at each counted position is the flat item there.
    flat_items = dataset.flat_feat[config["ITEM_ID_FIELD"]].numpy()
    assert np.array_equal(batch[TARGET_ITEMS].numpy()[rows, cols], flat_items[counted])
    assert (windows.inter_feat[COUNT_FROM].numpy() >= 0).all()


def _loss_and_grads(model, loss):
    model.zero_grad()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_name, no_dropout", [
    ("SS4Rec", {"dropout_prob": 0.0}),
    ("SASRec", {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}),
    ("GRU4Rec", {"dropout_prob": 0.0}),
    ("TiSASRec", {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}),
])
def test_sequence_loss_and_gradients_equal_prefix(model_name, no_dropout):
    # Tiny keeps users with <= 40 ratings: with histories of 50 every user fits one window.
    settings = {"MAX_ITEM_LIST_LENGTH": 50, **no_dropout}
    config, model_class = _sequence_config(model_name, **settings)
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    windows = train._dataset
    users = np.unique(windows.inter_feat[config["USER_ID_FIELD"]].numpy())[:60]
    torch.manual_seed(0)
    model = model_class(config, windows)
    model.eval()  # no dropout anywhere; gradients still flow

    window_rows_ = np.flatnonzero(np.isin(windows.inter_feat[config["USER_ID_FIELD"]].numpy(), users))
    seq_batch = windows[window_rows_]
    seq_loss, seq_grads = _loss_and_grads(model, window_loss(model, seq_batch, reduction="sum"))

    prefixes = _prefix_split(model_name, **settings)
    prefix_rows = np.flatnonzero(np.isin(prefixes.inter_feat[config["USER_ID_FIELD"]].numpy(), users))
    prefix_batch = prefixes[prefix_rows]
    n_targets = len(prefix_rows)
    assert n_targets == int(seq_batch[TARGET_MASK].sum()) > 500
    prefix_loss, prefix_grads = _loss_and_grads(model, model.calculate_loss(prefix_batch) * n_targets)

    assert seq_loss == pytest.approx(prefix_loss, rel=1e-5)
    assert seq_grads.keys() == prefix_grads.keys()
    # Relative to each entry, with a floor relative to the largest gradient: some gradients
    # are exactly zero in theory (attention key biases) and only rounding noise in practice.
    largest = max(g.abs().max().item() for g in prefix_grads.values())
    for name, grad in prefix_grads.items():
        torch.testing.assert_close(seq_grads[name], grad, rtol=1e-5, atol=1e-5 * largest, msg=name)


@pytest.mark.parametrize("model_name", ["SS4Rec", "SASRec", "GRU4Rec", "TiSASRec"])
def test_sequence_mode_trains_above_random(model_name, tmp_path):
    import ss4rec

    settings = dict(TINY_SS4REC) if model_name == "SS4Rec" else {}
    settings.update({"train_mode": "sequence", "epochs": 2})
    result = ss4rec.run(model=model_name, dataset="ml-100k", config_files=["tiny"],
                        config_dict=settings, output_dir=tmp_path, device="cpu")
    assert_metrics_finite_above_random(result)
    assert result["config"]["train_mode"] == "sequence"
    assert "train_mode sequence:" in (tmp_path / "train.log").read_text(encoding="utf-8")


def test_sequence_mode_bpr_draws_a_negative_per_position(tmp_path):
    config, _ = _sequence_config("SS4Rec", loss_type="BPR")
    train, _, _ = prepare_data(config, create_dataset(config))
    batch = next(iter(train))
    from ss4rec.data.sequences import NEG_TARGETS

    real = batch[TARGET_ITEMS] > 0
    negatives = batch[NEG_TARGETS]
    assert negatives.shape == batch[TARGET_ITEMS].shape
    assert ((negatives >= 1) & (negatives < train._dataset.item_num))[real].all()
    assert (negatives != batch[TARGET_ITEMS])[real].all()

    import ss4rec

    result = ss4rec.run(model="SS4Rec", dataset="ml-100k", config_files=["tiny"],
                        config_dict={**TINY_SS4REC, "train_mode": "sequence", "loss_type": "BPR",
                                     "epochs": 2},
                        output_dir=tmp_path, device="cpu")
    assert all(np.isfinite(v) for v in result["test"].values())


def test_models_without_position_output_refuse_sequence_mode():
    with pytest.raises(ConfigError, match="NARM cannot train in train_mode: sequence.*train_mode: prefix"):
        build_config("NARM", "ml-100k", ["tiny"], {"train_mode": "sequence"}, device="cpu")
    with pytest.raises(ConfigError, match="train_mode='windows' .from config_dict.: use one of prefix, sequence"):
        build_config("SS4Rec", "ml-100k", ["tiny"], {"train_mode": "windows"}, device="cpu")


def test_sequence_mode_needs_leave_one_out(tmp_path):
    config, _ = _sequence_config("SASRec", eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO",
                                                      "mode": "full"})
    with pytest.raises(ConfigError, match="leave-one-out"):
        prepare_data(config, create_dataset(config))

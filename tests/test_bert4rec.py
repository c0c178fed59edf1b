"""BERT4Rec on windows: the cloze masking, next-item examples as evaluation scores them, prefix
mode exactly RecBole's, and a real training run in ``train_mode: sequence``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as RecBoleBERT4Rec

import ss4rec
from conftest import assert_metrics_finite_above_random
from ss4rec.data.loaders import create_dataset, prepare_data
from ss4rec.data.sequences import TARGET_ITEMS
from ss4rec.models.baselines import BERT4Rec, cloze_windows
from ss4rec.models.losses import supports_windows, window_loss
from ss4rec.pipeline.settings import build_config

MASK = 999


def window_targets(batch=4000, length=20, seed=0):
    """``TARGET_ITEMS``-like ``[B L]`` items (0 at padding) and ``[B]`` lengths, some full."""
    g = torch.Generator().manual_seed(seed)
    seq_len = torch.randint(1, length + 1, (batch,), generator=g)
    seq_len[:10] = length
    items = torch.randint(1, MASK, (batch, length), generator=g)
    return torch.where(torch.arange(length) < seq_len[:, None], items, 0), seq_len


def test_cloze_masks_real_items_at_the_ratio_and_never_padding():
    next_items, seq_len = window_targets()
    real = next_items > 0
    torch.manual_seed(0)
    masked_seq, labels = cloze_windows(next_items, seq_len, MASK, mask_ratio=0.2, ft_ratio=0.0)
    masked = labels > 0
    assert not (masked & ~real).any()  # padding never masked, never a label
    assert torch.equal(masked_seq == MASK, masked)
    assert torch.equal(labels[masked], next_items[masked])  # the label is the hidden item
    assert torch.equal(masked_seq[~masked], next_items[~masked])  # the rest (padding too) as it was
    assert masked.sum() / real.sum() == pytest.approx(0.2, abs=0.01)
    every = cloze_windows(next_items, seq_len, MASK, mask_ratio=1.0, ft_ratio=0.0)[1]
    assert torch.equal(every, next_items)  # ratio 1: every real item, including the last


def test_next_item_examples_mask_only_the_last_position():
    next_items, seq_len = window_targets(seed=1)
    rows = torch.arange(len(seq_len))
    masked_seq, labels = cloze_windows(next_items, seq_len, MASK, mask_ratio=0.2, ft_ratio=1.0)
    assert torch.equal((labels > 0).sum(dim=1), torch.ones_like(seq_len))
    assert torch.equal(labels[rows, seq_len - 1], next_items[rows, seq_len - 1])  # the item after the window
    expected = next_items.clone()
    expected[rows, seq_len - 1] = MASK
    assert torch.equal(masked_seq, expected)
    # ft_ratio 0.5 (RecBole's default): about half the windows are next-item examples.
    torch.manual_seed(1)
    _, labels = cloze_windows(next_items, seq_len, MASK, mask_ratio=0.0, ft_ratio=0.5)
    assert (labels > 0).any(dim=1).float().mean() == pytest.approx(0.5, abs=0.03)


@pytest.fixture(scope="module")
def windows():
    config, model_class = build_config("BERT4Rec", "ml-100k", ["tiny"], {"train_mode": "sequence"}, device="cpu")
    assert model_class is BERT4Rec and supports_windows(model_class)
    train, _, _ = prepare_data(config, create_dataset(config))
    return config, train


def test_next_item_examples_are_what_evaluation_scores(windows):
    config, train = windows
    batch = train._dataset[np.arange(len(train._dataset))]
    lengths = batch[config["ITEM_LIST_LENGTH_FIELD"]]
    assert (lengths == config["MAX_ITEM_LIST_LENGTH"]).any() and (lengths < config["MAX_ITEM_LIST_LENGTH"]).any()
    torch.manual_seed(0)
    model = BERT4Rec(config, train._dataset).eval()
    model.ft_ratio = 1.0  # every window a next-item example
    loss = window_loss(model, batch, reduction="sum")
    # RecBole's evaluation of each window's history (its inputs), against the item after it.
    with torch.no_grad():
        scores = model.full_sort_predict(batch)  # [B n_items]
    expected = F.cross_entropy(scores, batch[config["ITEM_ID_FIELD"]], reduction="sum")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(batch[TARGET_ITEMS][torch.arange(len(lengths)), lengths - 1], batch[config["ITEM_ID_FIELD"]])


def test_window_batches_skip_recboles_prefix_masking(windows):
    _, train = windows
    batch = next(iter(train))
    assert not any(field.startswith("Mask_") for field in batch.interaction)


def test_prefix_mode_is_recboles_bert4rec():
    config, model_class = build_config("BERT4Rec", "ml-100k", ["tiny"], {"train_mode": "prefix"}, device="cpu")
    train, _, _ = prepare_data(config, create_dataset(config))
    torch.manual_seed(0)
    ours = model_class(config, train._dataset)
    theirs = RecBoleBERT4Rec(config, train._dataset)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(1)
    batch = next(iter(train))  # RecBole's mask_itemseq transform ran on these prefixes
    assert "Mask_" + config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"] in batch.interaction
    for mode in ("train", "eval"):  # dropout on (same seed) and off
        losses = []
        for model in (ours, theirs):
            getattr(model, mode)()
            torch.manual_seed(2)
            losses.append(model.calculate_loss(batch).item())
        assert losses[0] == losses[1]
    with torch.no_grad():
        assert torch.equal(ours.full_sort_predict(batch), theirs.full_sort_predict(batch))


def test_trains_in_sequence_mode_loss_falls_and_evaluates(tmp_path):
    result = ss4rec.run(model="BERT4Rec", dataset="ml-100k", config_files=["tiny"],
                        config_dict={"train_mode": "sequence", "epochs": 3}, output_dir=tmp_path, device="cpu")
    assert result["config"]["train_mode"] == "sequence"
    assert "train_mode sequence:" in (tmp_path / "train.log").read_text(encoding="utf-8")
    losses = [epoch["train_loss"] for epoch in result["history"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[0] > losses[1] > losses[2], losses
    assert_metrics_finite_above_random(result)

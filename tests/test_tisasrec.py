"""TiSASRec: personalised intervals, causality, padding, dependence on intervals, training."""

from __future__ import annotations

import pytest
import torch

import ss4rec
from ss4rec.models.tisasrec import TiSASRec, interval_matrix

from conftest import assert_metrics_finite_above_random

L = 12


@pytest.fixture(scope="module")
def config_and_dataset():
    from ss4rec.data.loaders import create_dataset, prepare_data
    from ss4rec.pipeline.settings import build_config

    config, _ = build_config("TiSASRec", "ml-100k", ["tiny"], {"MAX_ITEM_LIST_LENGTH": L}, device="cpu")
    train, _, _ = prepare_data(config, create_dataset(config))
    return config, train._dataset


@pytest.fixture(scope="module")
def model(config_and_dataset):
    torch.manual_seed(0)
    return TiSASRec(*config_and_dataset).eval()


def random_batch(n_items, batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items, (batch, L), generator=g)
    seq_len = torch.tensor([L, L - 1, 7, 3, 1, L])[:batch]
    gaps = torch.rand(batch, L, generator=g, dtype=torch.float64) * 1e5
    gaps[:, 3] = 0.0  # two interactions in the same second, as in ML-100K
    times = 1.6e9 + torch.cumsum(gaps, dim=1)
    return items, seq_len, times


def test_intervals_are_personal_scaled_and_clipped():
    times = torch.tensor([[0.0, 10.0, 10.0, 40.0, 5000.0, 0.0]], dtype=torch.float64)
    seq_len = torch.tensor([5])
    r = interval_matrix(times, seq_len, time_span=100)  # [1 6 6]
    # Up to position 1 the smallest non-zero gap is 10 s; the 0 s gap never scales.
    assert r[0, 1, 0].item() == 1 and r[0, 2, 0].item() == 1 and r[0, 2, 1].item() == 0
    assert r[0, 3, 0].item() == 4  # 40 s / 10 s
    assert r[0, 4, 0].item() == 100  # 5000 s / 10 s = 500, clipped to time_span
    assert r[0, :, 5].eq(0).all() and r[0, 5].eq(0).all()  # padding
    # Another user, ten times slower: the same intervals (personalised scale).
    assert torch.equal(interval_matrix(times * 10, seq_len, 100), r)
    # A user whose gaps are all 0 s: scale 1 s, every interval 0.
    assert interval_matrix(torch.zeros(1, 4, dtype=torch.float64), torch.tensor([4]), 100).eq(0).all()


def test_scale_uses_only_the_past():
    times = torch.tensor([[0.0, 100.0, 200.0, 201.0]], dtype=torch.float64)
    seq_len = torch.tensor([4])
    r = interval_matrix(times, seq_len, time_span=1000)
    assert r[0, 2, 0].item() == 2  # rows up to 2 scale by 100 s: the later 1 s gap is future
    assert r[0, 3, 0].item() == 201  # row 3 sees the 1 s gap


def test_causality_items_and_times_after_k_do_not_change_outputs_up_to_k(model):
    items, _, times = random_batch(model.n_items)
    full = torch.full((items.shape[0],), L)
    k = 5
    changed_items = items.clone()
    changed_items[:, k + 1:] = torch.randint(1, model.n_items, changed_items[:, k + 1:].shape)
    changed_times = times.clone()
    changed_times[:, k + 1:] += 12345.0  # later times: also a smaller or larger scale later
    with torch.no_grad():
        out = model.sequence_output(items, full, times)
        out_items = model.sequence_output(changed_items, full, times)
        out_times = model.sequence_output(items, full, changed_times)
    assert torch.equal(out[:, : k + 1], out_items[:, : k + 1])
    assert torch.equal(out[:, : k + 1], out_times[:, : k + 1])
    assert not torch.allclose(out[:, k + 1:], out_items[:, k + 1:])


def test_padding_content_never_changes_the_prediction(model):
    items, seq_len, times = random_batch(model.n_items, seed=1)
    pos = torch.arange(L)
    padded = pos >= seq_len[:, None]
    junk_items = torch.where(padded, torch.randint(1, model.n_items, items.shape), items)
    junk_times = torch.where(padded, torch.rand(times.shape, dtype=torch.float64) * 1e9, times)
    with torch.no_grad():
        clean = model(torch.where(padded, 0, items), seq_len, torch.where(padded, 0.0, times))
        junk = model(junk_items, seq_len, junk_times)
    torch.testing.assert_close(clean, junk, rtol=0, atol=0)


def test_outputs_depend_on_the_intervals(model):
    items, seq_len, times = random_batch(model.n_items, seed=2)
    stretched = times.clone()
    stretched[:, 6:] += 50 * 86400.0  # one long break before position 6: intervals change
    with torch.no_grad():
        base = model(items, seq_len, times)
        moved = model(items, seq_len, stretched)
        shifted = model(items, seq_len, times + 3600.0)  # same intervals, another hour
    long_rows = seq_len > 6
    assert not torch.allclose(base[long_rows], moved[long_rows])
    torch.testing.assert_close(base[~long_rows], moved[~long_rows], rtol=0, atol=0)
    torch.testing.assert_close(base, shifted, rtol=0, atol=0)


def test_trains_one_tiny_epoch_above_random(tmp_path):
    result = ss4rec.run(model="TiSASRec", dataset="ml-100k", config_files=["tiny"],
                        output_dir=tmp_path, device="cpu")
    assert_metrics_finite_above_random(result)
    assert result["config"]["time_span"] == 256  # the paper's default, from TiSASRec.yaml


def test_unknown_key_and_bad_time_span_are_clear_errors(tmp_path):
    from ss4rec.errors import ConfigError

    with pytest.raises(ConfigError, match="time_spam"):
        ss4rec.run(model="TiSASRec", config_files=["tiny"], config_dict={"time_spam": 10},
                   output_dir=tmp_path / "a", device="cpu")
    with pytest.raises(ConfigError, match="time_span=0"):
        ss4rec.run(model="TiSASRec", config_files=["tiny"], config_dict={"time_span": 0},
                   output_dir=tmp_path / "b", device="cpu")

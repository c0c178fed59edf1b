"""SS4Rec model semantics: intervals, causality, padding, stability, ablations, state_dict, training."""

from __future__ import annotations

import contextlib
import math

import pytest
import numpy as np
import torch
from recbole.data.interaction import Interaction

import ss4rec
from ss4rec.models.ss4rec import SS4Rec, time_intervals

from conftest import TINY_SS4REC, assert_metrics_finite_above_random

L = 12


@contextlib.contextmanager
def overridden(config, **values):
    saved = {k: config[k] for k in values}
    for k, v in values.items():
        config[k] = v
    try:
        yield config
    finally:
        for k, v in saved.items():
            config[k] = v


def make_model(config_and_dataset, seed=0, **overrides) -> SS4Rec:
    config, dataset = config_and_dataset
    torch.manual_seed(seed)
    with overridden(config, **overrides):
        model = SS4Rec(config, dataset)
    return model.eval()


def make_batch(n_items, batch=4, length=L, seed=0, gap_scale=1e4):
    g = torch.Generator().manual_seed(seed)
    seq_len = torch.randint(3, length + 1, (batch,), generator=g)
    items = torch.randint(1, n_items, (batch, length), generator=g)
    gaps = torch.rand(batch, length, generator=g, dtype=torch.float64) * gap_scale
    times = 1.6e9 + torch.cumsum(gaps, dim=1)
    pos = torch.arange(length)
    items = torch.where(pos < seq_len[:, None], items, torch.zeros_like(items))
    times = torch.where(pos < seq_len[:, None], times, torch.zeros_like(times))
    last = times.gather(1, (seq_len - 1)[:, None]).squeeze(1)
    target_time = last + torch.rand(batch, generator=g, dtype=torch.float64) * gap_scale
    return items, seq_len, times, target_time


def as_interaction(model, items, seq_len, times, target_time, pos_items=None, neg_items=None):
    data = {
        model.ITEM_SEQ: items, model.ITEM_SEQ_LEN: seq_len, model.TIME_SEQ: times,
        model.TIME_FIELD: target_time,
        model.POS_ITEM_ID: pos_items if pos_items is not None else torch.ones_like(seq_len),
    }
    if neg_items is not None:
        data[model.NEG_ITEM_ID] = neg_items
    return Interaction(data)


def test_time_intervals_next_gap_target_gap_and_zero_padding():
    times = torch.tensor([[10.0, 15.0, 27.0, 0.0], [100.0, 100.0, 0.0, 0.0]], dtype=torch.float64)
    seq_len = torch.tensor([3, 2])
    target = torch.tensor([40.0, 160.0], dtype=torch.float64)
    dt = time_intervals(times, seq_len, target)
    assert dt.tolist() == [[5.0, 12.0, 13.0, 0.0], [0.0, 60.0, 0.0, 0.0]]


def test_intervals_exact_to_the_second_near_1_6e9(tmp_path):
    """Timestamps ~1.6e9 s: float32 would quantise them to 128 s; the model must see exact gaps."""
    from recbole.data import create_dataset, data_preparation

    from ss4rec.pipeline.settings import build_config

    name = "exact-times"
    folder = tmp_path / name
    folder.mkdir()
    gaps = [1, 3, 7, 60, 1, 0, 2, 3599, 86401, 5, 1, 1]  # a duplicate timestamp included
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, 7):
        t = 1_600_000_000 + user * 17
        for j, gap in enumerate(gaps):
            t += gap
            lines.append(f"{user}\t{(user * 5 + j) % 40 + 1}\t{t}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")

    config, _ = build_config("SS4Rec", name, ["tiny"], {
        **TINY_SS4REC, "data_path": str(tmp_path), "user_inter_num_interval": None,
        "normalize_all": True,  # must not touch the time field
    }, device="cpu")
    dataset = create_dataset(config)
    train, _, test = data_preparation(config, dataset)
    model = SS4Rec(config, train._dataset)

    inter = test._dataset[np.arange(len(test._dataset))]  # histories are gathered per batch
    times, seq_len, target = inter[model.TIME_SEQ], inter[model.ITEM_SEQ_LEN], inter[model.TIME_FIELD]
    assert times.dtype == torch.float64
    assert target.min().item() > 1.6e9  # not normalised to [0, 1]
    dt = time_intervals(times, seq_len, target)
    for row in range(len(inter)):
        n = int(seq_len[row])
        got = dt[row, :n].tolist()
        assert got == [float(g) for g in gaps[1:n + 1]], (row, got)
        assert got == [round(x) for x in got]  # exact whole seconds


def test_causality_items_after_k_do_not_change_outputs_up_to_k(tiny_config_and_dataset):
    model = make_model(tiny_config_and_dataset, **TINY_SS4REC)
    items, _, times, target = make_batch(model.n_items, length=L)
    full = torch.full((items.shape[0],), L)
    items[:, :] = torch.randint(1, model.n_items, items.shape)
    times = 1.6e9 + torch.cumsum(torch.rand(items.shape, dtype=torch.float64) * 1e4, 1)
    target = times[:, -1] + 100
    k = 5
    changed = items.clone()
    changed[:, k + 1:] = torch.randint(1, model.n_items, changed[:, k + 1:].shape)
    with torch.no_grad():
        out_a = model.sequence_output(items, full, times, target)
        out_b = model.sequence_output(changed, full, times, target)
    assert torch.equal(out_a[:, : k + 1], out_b[:, : k + 1])
    assert not torch.allclose(out_a[:, k + 1:], out_b[:, k + 1:])


def test_padding_content_never_changes_the_prediction(tiny_config_and_dataset):
    model = make_model(tiny_config_and_dataset, **TINY_SS4REC)
    items, seq_len, times, target = make_batch(model.n_items)
    pos = torch.arange(items.shape[1])
    junk_items = torch.where(pos < seq_len[:, None], items, torch.randint(1, model.n_items, items.shape))
    junk_times = torch.where(pos < seq_len[:, None], times, torch.rand(times.shape, dtype=torch.float64) * 1e9)
    with torch.no_grad():
        clean = model.full_sort_predict(as_interaction(model, items, seq_len, times, target))
        junk = model.full_sort_predict(as_interaction(model, junk_items, seq_len, junk_times, target))
    torch.testing.assert_close(clean, junk, rtol=0, atol=0)


@pytest.mark.parametrize("gap", [0.0, 1.0, 1e3, 1e6, 1e9])
@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_extreme_and_duplicate_gaps_give_finite_loss_and_gradients(tiny_config_and_dataset, gap, loss_type):
    model = make_model(tiny_config_and_dataset, loss_type=loss_type, **TINY_SS4REC).train()
    items, seq_len, _, _ = make_batch(model.n_items)
    times = 1.6e9 + gap * torch.arange(items.shape[1], dtype=torch.float64).expand(items.shape[0], -1)
    times = times.clone()
    times[:, 1] = times[:, 0]  # duplicate timestamps
    target = times.gather(1, (seq_len - 1)[:, None]).squeeze(1) + gap
    pos_items = torch.randint(1, model.n_items, seq_len.shape)
    neg_items = torch.randint(1, model.n_items, seq_len.shape)
    loss = model.calculate_loss(as_interaction(model, items, seq_len, times, target, pos_items, neg_items))
    loss.backward()
    assert math.isfinite(loss.item())
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def _scores(model, batch):
    with torch.no_grad():
        return model.full_sort_predict(as_interaction(model, *batch))


@pytest.mark.parametrize("model_type", ["SS4Rec", "S5-only", "S6-only", "ignore-time"])
def test_model_type_changes_the_computation(tiny_config_and_dataset, model_type):
    others = [t for t in ("SS4Rec", "S5-only", "S6-only", "ignore-time") if t != model_type]
    model = make_model(tiny_config_and_dataset, model_type=model_type, **TINY_SS4REC)
    batch = make_batch(model.n_items)
    mine = _scores(model, batch)
    for other in others:
        theirs = _scores(make_model(tiny_config_and_dataset, model_type=other, **TINY_SS4REC), batch)
        assert not torch.allclose(mine, theirs), (model_type, other)
    has_s5 = [hasattr(block, "S5") for block in model.model]
    has_s6 = [hasattr(block, "S6") for block in model.model]
    assert all(has_s5) == (model_type != "S6-only")
    assert all(has_s6) == (model_type != "S5-only")


@pytest.mark.parametrize("model_type, time_aware", [
    ("SS4Rec", True), ("S5-only", True), ("S6-only", False), ("ignore-time", False)])
def test_only_time_aware_types_depend_on_timestamps(tiny_config_and_dataset, model_type, time_aware):
    model = make_model(tiny_config_and_dataset, model_type=model_type, **TINY_SS4REC)
    items, seq_len, times, target = make_batch(model.n_items, gap_scale=1e2)
    _, _, other_times, other_target = make_batch(model.n_items, seed=1, gap_scale=1e2)
    a = _scores(model, (items, seq_len, times, target))
    b = _scores(model, (items, seq_len, other_times, other_target))
    assert (not torch.allclose(a, b)) == time_aware


def test_state_dict_keys_match_the_official_module_names(tiny_config_and_dataset):
    model = make_model(tiny_config_and_dataset, **TINY_SS4REC)
    keys = set(model.state_dict())
    assert "item_embedding.weight" in keys
    for i in range(model.num_layers):
        for key in ("S5.seq.Lambda", "S5.seq.B", "S5.seq.C", "S5.seq.D", "S5.seq.log_step",
                    "S6.in_proj.weight", "S6.conv1d.weight", "S6.conv1d.bias", "S6.x_proj.weight",
                    "S6.dt_proj.weight", "S6.dt_proj.bias", "S6.A_log", "S6.D", "S6.out_proj.weight",
                    "LayerNorm.weight", "LayerNorm.bias"):
            assert f"model.{i}.{key}" in keys, key
    assert all(k == "item_embedding.weight" or k.startswith("model.") for k in keys), keys
    # An official checkpoint also holds an unused top-level LayerNorm: it loads (dropped).
    official = {**model.state_dict(), "LayerNorm.weight": torch.ones(model.hidden_size),
                "LayerNorm.bias": torch.zeros(model.hidden_size)}
    make_model(tiny_config_and_dataset, seed=1, **TINY_SS4REC).load_state_dict(official)


def test_init_keeps_mamba_dt_bias_out_of_the_zeroing(tiny_config_and_dataset):
    model = make_model(tiny_config_and_dataset, **TINY_SS4REC)
    for block in model.model:
        bias = block.S6.dt_proj.bias
        assert getattr(bias, "_no_reinit", False)
        dt = torch.nn.functional.softplus(bias)
        assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
        assert bias.abs().min() > 0


def test_predict_works_at_batch_size_one(tiny_config_and_dataset):
    model = make_model(tiny_config_and_dataset, **TINY_SS4REC)
    items, seq_len, times, target = make_batch(model.n_items, batch=1)
    inter = as_interaction(model, items, seq_len, times, target)
    inter.update(Interaction({model.ITEM_ID: torch.tensor([3])}))
    with torch.no_grad():
        assert model.predict(inter).shape == (1,)


def test_bad_model_settings_fail_loudly(tiny_config_and_dataset):
    with pytest.raises(ss4rec.errors.ConfigError, match="model_type"):
        make_model(tiny_config_and_dataset, model_type="S4-only")
    with pytest.raises(ss4rec.errors.ConfigError, match="time_unit"):
        make_model(tiny_config_and_dataset, time_unit="fortnights")
    with pytest.raises(ss4rec.errors.ConfigError, match="d_H"):
        make_model(tiny_config_and_dataset, d_H=16)


def test_one_epoch_ce_on_bundled_ml100k_beats_random(ss4rec_ce_run):
    assert ss4rec_ce_run["config"]["loss_type"] == "CE"
    assert_metrics_finite_above_random(ss4rec_ce_run)


def test_one_epoch_bpr_on_bundled_ml100k_beats_random(tmp_path):
    result = ss4rec.run(model="SS4Rec", dataset="ml-100k", config_files=["tiny"],
                        config_dict={**TINY_SS4REC, "loss_type": "BPR"},
                        output_dir=tmp_path, device="cpu")
    assert result["config"]["train_neg_sample_args"]["distribution"] == "uniform"
    assert_metrics_finite_above_random(result)

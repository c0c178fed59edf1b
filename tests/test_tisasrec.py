"""TiSASRec: personalised intervals, causality, padding, dependence on intervals, training,
the bucketed attention equal to the plain one and never [B, L, L, H] in memory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.profiler import profile

import ss4rec
from ss4rec.models.tisasrec import TiSASRec, interval_attention, interval_attention_reference, interval_matrix

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


# ---- the bucketed attention: the reference's numbers, without [B, L, L, H] ----

def attention_inputs(batch, length, n_heads, head_size, time_span, seed):
    """Random q, k, v and per-sequence tables; intervals from padded times with ties."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, length, n_heads, head_size, generator=g).requires_grad_() for _ in range(3))
    table_k, table_v = (torch.randn(batch, time_span + 1, n_heads, head_size, generator=g).requires_grad_()
                        for _ in range(2))
    gaps = torch.rand(batch, length, generator=g, dtype=torch.float64) * 1e4
    gaps[:, 1::3] = 0.0  # ties: several interactions in one second
    seq_len = torch.randint(1, length + 1, (batch,), generator=g)
    seq_len[0] = length
    times = torch.where(torch.arange(length) < seq_len[:, None], 1.6e9 + gaps.cumsum(dim=1), 0.0)
    return (q, k, v, interval_matrix(times, seq_len, time_span), table_k, table_v)


@pytest.mark.parametrize("batch, length, n_heads, head_size, time_span", [
    (4, 12, 1, 50, 256), (3, 11, 2, 6, 4), (5, 30, 4, 8, 16), (2, 1, 1, 3, 2),
])
def test_bucketed_attention_equals_the_reference_outputs_and_gradients(batch, length, n_heads, head_size,
                                                                        time_span):
    inputs = attention_inputs(batch, length, n_heads, head_size, time_span, seed=length)
    leaves = [x for x in inputs if x.requires_grad]
    weights = torch.randn(batch, length, n_heads, head_size)
    results = []
    for attend in (interval_attention, interval_attention_reference):
        out = attend(*inputs, torch.nn.Identity())
        grads = torch.autograd.grad((out * weights).sum(), leaves)
        results.append((out, grads))
    (out, grads), (ref_out, ref_grads) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_model_equals_the_reference_attention_outputs_and_gradients(model):
    reference = copy.deepcopy(model)
    for block in reference.blocks:
        block.attention.attend = interval_attention_reference
    items, seq_len, times = random_batch(model.n_items, seed=3)
    weights = torch.randn(len(items), L, model.hidden_size, generator=torch.Generator().manual_seed(0))
    outputs = []
    for m in (model, reference):
        m.zero_grad()
        out = m.sequence_output(items, seq_len, times)
        (out * weights).sum().backward()
        outputs.append((out.detach(), {name: p.grad.clone() for name, p in m.named_parameters()}))
    model.zero_grad()
    (out, grads), (ref_out, ref_grads) = outputs
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def per_pair_shapes(run, length, head_size):
    """Shapes of every op's inputs while ``run()`` does forward and backward that hold L x L x d."""
    with profile(record_shapes=True) as prof:
        run()
    shapes = {tuple(shape) for event in prof.events() for shape in event.input_shapes
              if isinstance(shape, list) and all(isinstance(size, int) for size in shape)}
    return {shape for shape in shapes if shape.count(length) >= 2 and head_size in shape}


def test_no_per_pair_interval_embeddings_in_forward_or_backward(config_and_dataset):
    # Sizes all distinct (B, L, n, d, S and B·n), so an [L, L, d] block is known by its shape.
    inputs = attention_inputs(5, 11, 2, 6, 6, seed=0)
    for attend, expected in ((interval_attention, False), (interval_attention_reference, True)):
        found = per_pair_shapes(lambda: attend(*inputs, torch.nn.Dropout(0.2)).sum().backward(), 11, 6)
        assert bool(found) == expected, (attend.__name__, found)
    # The whole model, training (dropout on), forward and backward.
    torch.manual_seed(0)
    train_model = TiSASRec(*config_and_dataset).train()
    items, seq_len, times = random_batch(train_model.n_items, seed=4)
    assert L not in (len(items), train_model.hidden_size, train_model.time_span + 1)
    found = per_pair_shapes(lambda: train_model.sequence_output(items, seq_len, times).sum().backward(),
                            L, train_model.blocks[0].attention.head_size)
    assert not found, found


def test_bucketed_attention_runs_under_bf16_autocast():
    # Autocast keeps softmax in fp32 and runs matmuls in bf16: the scatter must accept both.
    inputs = attention_inputs(3, 11, 2, 6, 6, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = interval_attention(*inputs, torch.nn.Dropout(0.2))
        out.float().sum().backward()
    exact = interval_attention(*inputs, torch.nn.Identity())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = interval_attention(*inputs, torch.nn.Identity())
    torch.testing.assert_close(low.float(), exact, rtol=0.05, atol=0.05)

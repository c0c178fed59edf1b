"""Tests for the pure-PyTorch Mamba (S6) layer and its selective scan.

The ground truth is a per-step recurrence written here from the module's parameters,
independent of ss4rec.ssm.scan; the fast chunked scan must match it in value and gradient.
"""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from ss4rec.errors import ConfigError, UserError
from ss4rec.ssm.mamba import Mamba, mamba_kernels_available
from ss4rec.ssm.scan import selective_scan, selective_scan_reference

# How close the fast path must be to the per-step recurrence, by compute dtype.
# "rel" is relative to the largest magnitude of the compared tensor.
TOLERANCE = {
    torch.float64: {"rel": 1e-10},
    torch.float32: {"rel": 1e-5},
}

# (batch, length, d_model, d_state, expand, scan_chunk_size)
SHAPES = [
    (2, 1, 16, 4, 2, 32),  # L = 1
    (3, 7, 16, 4, 2, 3),  # L not divisible by the chunk size
    (2, 17, 32, 8, 2, 8),  # two chunks plus a remainder of one step
    (1, 5, 8, 16, 1, 32),  # one chunk longer than L, expand 1
    (2, 12, 16, 4, 2, 1),  # chunk of one step
]


def assert_close_rel(actual, expected, rel, what):
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual - expected).abs().max()
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} > {rel:g} x max |expected| {scale:.3e}"


def per_step_mamba(layer: Mamba, hidden: torch.Tensor) -> torch.Tensor:
    """Mamba's forward written as a plain loop over time from the layer's parameters."""
    batch, length, _ = hidden.shape
    d_inner, d_state, d_conv = layer.d_inner, layer.d_state, layer.d_conv
    x_all, z_all = (hidden @ layer.in_proj.weight.t()).split(d_inner, dim=-1)  # [B L Di]
    conv_w = layer.conv1d.weight[:, 0, :]  # [Di K]; tap K-1 multiplies the current step
    A = -torch.exp(layer.A_log)  # [Di N]
    state = hidden.new_zeros(batch, d_inner, d_state)
    outputs = []
    for t in range(length):
        conv = layer.conv1d.bias.clone().expand(batch, d_inner)
        for lag in range(min(d_conv, t + 1)):
            conv = conv + conv_w[:, d_conv - 1 - lag] * x_all[:, t - lag]
        x = F.silu(conv)  # [B Di]
        proj = x @ layer.x_proj.weight.t()
        dt = proj[:, : layer.dt_rank]
        B = proj[:, layer.dt_rank : layer.dt_rank + d_state]  # [B N]
        C = proj[:, layer.dt_rank + d_state :]  # [B N]
        delta = F.softplus(dt @ layer.dt_proj.weight.t() + layer.dt_proj.bias)  # [B Di]
        state = torch.exp(delta[:, :, None] * A) * state + (delta * x)[:, :, None] * B[:, None, :]
        y = (state * C[:, None, :]).sum(-1) + layer.D * x  # [B Di]
        outputs.append((y * F.silu(z_all[:, t])) @ layer.out_proj.weight.t())
    return torch.stack(outputs, dim=1)  # [B L d_model]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-L{}-H{}-N{}-E{}-T{}".format(*s))
def test_torch_mamba_matches_per_step_recurrence(shape, dtype):
    batch, length, d_model, d_state, expand, chunk = shape
    torch.manual_seed(0)
    layer = Mamba(d_model, d_state=d_state, expand=expand, backend="torch", scan_chunk_size=chunk)
    layer = layer.to(torch.float64)  # the reference runs in float64
    with torch.no_grad():  # move D and A off their init so both enter the check
        layer.D.uniform_(0.5, 1.5)
        layer.A_log.add_(0.3 * torch.randn_like(layer.A_log))
    hidden = torch.randn(batch, length, d_model, dtype=torch.float64)
    weights = torch.randn(batch, length, d_model, dtype=torch.float64)

    expected = per_step_mamba(layer, hidden.requires_grad_())
    (expected * weights).sum().backward()
    expected_grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    expected_grads["input"] = hidden.grad.clone()

    layer = layer.to(dtype)
    layer.zero_grad()
    hidden_fast = hidden.detach().to(dtype).requires_grad_()
    out = layer(hidden_fast)
    (out * weights.to(dtype)).sum().backward()

    rel = TOLERANCE[dtype]["rel"]
    assert out.dtype == dtype
    assert_close_rel(out.double(), expected.detach(), rel, "output")
    grads = {name: p.grad for name, p in layer.named_parameters()}
    grads["input"] = hidden_fast.grad
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert_close_rel(grad.double(), expected_grads[name], rel, f"grad of {name}")


@pytest.mark.parametrize("length,chunk", [(1, 4), (9, 4), (4, 1)])
def test_selective_scan_gradcheck(length, chunk):
    torch.manual_seed(1)
    batch, d_inner, d_state = 1, 2, 3
    kw = {"dtype": torch.float64, "requires_grad": True}
    u = torch.randn(batch, length, d_inner, **kw)
    delta = (torch.rand(batch, length, d_inner, dtype=torch.float64) * 0.5 + 0.01).requires_grad_()
    A = (-torch.rand(d_inner, d_state, dtype=torch.float64) * 3).requires_grad_()
    B = torch.randn(batch, length, d_state, **kw)
    C = torch.randn(batch, length, d_state, **kw)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk_size=chunk), (u, delta, A, B, C))
    assert_close_rel(
        selective_scan(u, delta, A, B, C, chunk_size=chunk),
        selective_scan_reference(u, delta, A, B, C), 1e-12, "scan vs reference",
    )


def test_selective_scan_half_inputs_compute_in_fp32():
    torch.manual_seed(2)
    u, delta = torch.randn(2, 9, 4), torch.rand(2, 9, 4) * 0.1
    A, B, C = -torch.rand(4, 3), torch.randn(2, 9, 3), torch.randn(2, 9, 3)
    y16 = selective_scan(u.bfloat16(), delta, A, B.bfloat16(), C.bfloat16(), chunk_size=4)
    y32 = selective_scan(u.bfloat16().float(), delta, A, B.bfloat16().float(), C.bfloat16().float())
    assert y16.dtype == torch.bfloat16
    assert_close_rel(y16.float(), y32, 1e-2, "bf16 in, fp32 scan")  # only the output rounding


def test_selective_scan_rejects_bad_shapes():
    u = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, u.abs(), -torch.rand(4, 3), torch.randn(2, 5, 2), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, u.abs(), -torch.rand(4, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 3), chunk_size=0)


# mamba_ssm.Mamba(d_model=64, d_state=32, d_conv=4, expand=2): state_dict keys and shapes, in order
MAMBA_SSM_STATE = [
    ("A_log", (128, 32)),
    ("D", (128,)),
    ("in_proj.weight", (256, 64)),
    ("conv1d.weight", (128, 1, 4)),
    ("conv1d.bias", (128,)),
    ("x_proj.weight", (68, 128)),
    ("dt_proj.weight", (128, 4)),
    ("dt_proj.bias", (128,)),
    ("out_proj.weight", (64, 128)),
]


def test_parameters_match_mamba_ssm_names_shapes_and_init():
    torch.manual_seed(3)
    dt_min, dt_max = 0.001, 0.1
    layer = Mamba(d_model=64, d_state=32, d_conv=4, expand=2, dt_min=dt_min, dt_max=dt_max)
    assert [(k, tuple(v.shape)) for k, v in layer.state_dict().items()] == MAMBA_SSM_STATE
    assert layer.dt_rank == 4 and layer.d_inner == 128
    assert layer.dt_proj.bias._no_reinit is True
    assert layer.A_log._no_weight_decay is True and layer.D._no_weight_decay is True
    dt = F.softplus(layer.dt_proj.bias.detach())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    assert dt.std() > 0  # sampled, not constant
    bound = layer.dt_rank**-0.5
    assert layer.dt_proj.weight.abs().max() <= bound
    expected_A_log = torch.log(torch.arange(1, 33, dtype=torch.float32)).repeat(128, 1)
    assert torch.equal(layer.A_log.detach(), expected_A_log)
    assert torch.equal(layer.D.detach(), torch.ones(128))


def test_constant_dt_init_floor_and_dtype():
    layer = Mamba(16, d_state=4, dt_init="constant", dt_scale=2.0, dt_min=1e-6, dt_max=1e-5,
                  dt_init_floor=1e-4, dtype=torch.float64)
    assert torch.all(layer.dt_proj.weight == 2.0 * layer.dt_rank**-0.5)
    # every sampled dt is below the floor, so softplus(bias) sits at the floor
    assert torch.allclose(F.softplus(layer.dt_proj.bias), torch.full((32,), 1e-4, dtype=torch.float64))
    assert layer.in_proj.weight.dtype == torch.float64
    assert layer.A_log.dtype == torch.float32 and layer.D.dtype == torch.float32  # as mamba-ssm
    with pytest.raises(ConfigError, match="dt_init"):
        Mamba(16, dt_init="lognormal")


@pytest.mark.parametrize("cut", [0, 5, 17])
def test_causal(cut):
    torch.manual_seed(4)
    layer = Mamba(16, d_state=8, backend="torch", scan_chunk_size=4)
    hidden = torch.randn(2, 20, 16)
    changed = hidden.clone()
    changed[:, cut + 1 :] = torch.randn_like(changed[:, cut + 1 :])
    with torch.no_grad():
        out, out_changed = layer(hidden), layer(changed)
    torch.testing.assert_close(out_changed[:, : cut + 1], out[:, : cut + 1], rtol=0, atol=1e-6)
    assert (out_changed[:, cut + 1 :] - out[:, cut + 1 :]).abs().max() > 1e-3


def test_cuda_backend_without_kernels_names_the_fix():
    ok, reason = mamba_kernels_available()
    if ok:  # a GPU machine with mamba-ssm: the backend builds, and refuses CPU inputs clearly
        layer = Mamba(16, backend="cuda")
        with pytest.raises(UserError, match="CUDA device"):
            layer(torch.randn(1, 3, 16))
    else:
        assert reason
        with pytest.raises(UserError, match=r"ss4rec kernels install.*--set mamba_backend=torch"):
            Mamba(16, backend="cuda")


def test_auto_on_cpu_picks_torch_and_logs_once(caplog, monkeypatch):
    from ss4rec.ssm import mamba

    monkeypatch.setattr(mamba, "_ANNOUNCED", set())  # as in a fresh process
    layer, other = Mamba(16, d_state=4), Mamba(16, d_state=4)
    with caplog.at_level(logging.INFO, logger="ss4rec.ssm.mamba"):
        layer(torch.randn(1, 3, 16))
        layer(torch.randn(2, 4, 16))
        other(torch.randn(2, 4, 16))  # a second layer (of the same model): no second line
    assert layer.last_backend == other.last_backend == "torch"
    messages = [r.getMessage() for r in caplog.records if r.name == "ss4rec.ssm.mamba"]
    assert len(messages) == 1 and "'torch'" in messages[0], messages


def test_unknown_backend_and_bad_input_raise():
    with pytest.raises(ConfigError, match="unknown backend 'triton'.*auto, cuda, torch"):
        Mamba(16, backend="triton")
    layer = Mamba(16, backend="torch")
    with pytest.raises(ValueError, match=r"d_model=16"):
        layer(torch.randn(2, 5, 8))


def test_bfloat16_module_runs_with_fp32_scan():
    torch.manual_seed(5)
    layer = Mamba(16, d_state=4, backend="torch")
    hidden = torch.randn(2, 9, 16)
    expected = layer(hidden)
    out = layer.to(torch.bfloat16)(hidden.bfloat16())
    assert out.dtype == torch.bfloat16
    assert math.isfinite(out.float().sum().item())
    assert_close_rel(out.float(), expected.detach(), 0.05, "bf16 module")


def test_reference_scan_impl_matches_chunked_and_bad_impl_raises():
    torch.manual_seed(6)
    layer = Mamba(16, d_state=4, backend="torch", scan_chunk_size=4).double()
    hidden = torch.randn(2, 11, 16, dtype=torch.float64)
    fast = layer(hidden)
    layer.scan_impl = "reference"
    assert_close_rel(layer(hidden), fast, 1e-12, "reference scan_impl")
    layer.scan_impl = "blelloch"
    with pytest.raises(ConfigError, match="scan_impl"):
        layer(hidden)


def test_narrow_linear_matches_f_linear_in_value_and_gradient():
    """dt_proj's product with its faster backward (ss4rec.ssm.mamba.narrow_linear) is F.linear."""
    from ss4rec.ssm.mamba import narrow_linear

    torch.manual_seed(0)
    packed = torch.randn(6, 50, 68, requires_grad=True)  # x_proj's output; dt is a strided view
    weight = torch.randn(128, 4, requires_grad=True)
    grad = torch.randn(6, 50, 128)
    results = []
    for fn in (torch.nn.functional.linear, narrow_linear):
        out = fn(packed[..., :4], weight)
        results.append((out, *torch.autograd.grad(out, [packed, weight], grad)))
    for got, want in zip(results[1], results[0]):  # sums in another order: rounding apart
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the backward autocasts as the forward did
        out = narrow_linear(packed[..., :4], weight)
    assert out.dtype == torch.bfloat16
    grad_packed, grad_weight = torch.autograd.grad(out.float().sum(), [packed, weight])
    assert grad_weight.dtype == torch.float32 and torch.isfinite(grad_packed).all()

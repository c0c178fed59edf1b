"""Tests for the time-aware S5 layer, with s5-pytorch 0.2.1 (``import s5``) as the oracle."""

from __future__ import annotations

import pytest
import s5 as s5_pytorch
import torch

from ss4rec.ssm.s5 import (
    LAMBDA_REAL_MAX,
    S5,
    raise_deferred_errors,
    s5_scan,
    s5_scan_reference,
    zoh_decay,
    zoh_scan,
)

# Largest allowed relative error max|ours - oracle| / max|oracle|, per comparison.
TOLERANCE = {
    "output_fp32": 1e-4,  # ours vs s5-pytorch, fp32
    "grad_fp32": 1e-4,  # gradients w.r.t. the input and every parameter, fp32
    "scan_fp64": 1e-10,  # chunked scan vs the per-step loop, float64 / complex128
    "scan_fp32": 1e-5,  # the same in complex64
    "autocast": 1e-5,  # bf16 autocast vs fp32 on the same (bf16-rounded) input
}

WIDTH, STATE = 16, 8  # small H, P keep the oracle fast
PARAMETER_NAMES = ["seq.Lambda", "seq.B", "seq.C", "seq.D", "seq.log_step"]


def relative_error(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    scale = oracle.abs().max().clamp_min(1e-12)
    return ((ours - oracle).abs().max() / scale).item()


def make_pair(seed: int = 0, width: int = WIDTH, state: int = STATE):
    """An s5-pytorch S5 and ours holding the same parameters."""
    torch.manual_seed(seed)
    oracle = s5_pytorch.S5(width, state, dt_min=0.001, dt_max=0.1)
    ours = S5(width, state, dt_min=0.001, dt_max=0.1)
    ours.load_state_dict(oracle.state_dict())
    return ours, oracle


def random_gaps(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """Positive per-step gaps spanning 0 to ~1e3, with duplicate timestamps (zeros)."""
    generator = torch.Generator().manual_seed(seed)
    decades = torch.randint(-2, 4, (batch, length), generator=generator)
    gaps = torch.rand(batch, length, generator=generator) * 10.0**decades
    gaps[torch.rand(batch, length, generator=generator) < 0.15] = 0.0
    return gaps


def forward_and_grads(module, x, step_scale, output_grad):
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    out = module(x, step_scale)
    out.backward(output_grad)
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


# ---------------------------------------------------------------- parameters and init


def test_state_dict_has_s5_pytorch_keys_shapes_and_dtypes():
    ours, oracle = make_pair()
    ours_state, oracle_state = ours.state_dict(), oracle.state_dict()
    assert list(ours_state) == list(oracle_state) == PARAMETER_NAMES
    for name in PARAMETER_NAMES:
        assert ours_state[name].shape == oracle_state[name].shape, name
        assert ours_state[name].dtype == oracle_state[name].dtype, name


def test_same_seed_gives_the_same_initialisation_as_s5_pytorch():
    torch.manual_seed(123)
    oracle = s5_pytorch.S5(64, 32, dt_min=0.001, dt_max=0.1)
    torch.manual_seed(123)
    ours = S5(64, 32, dt_min=0.001, dt_max=0.1)
    for name, value in oracle.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)
    # DPLR-HiPPO: Re(Λ) = -0.5 (so the Re(Λ) clamp is inactive at init), steps in [dt_min, dt_max]
    assert torch.allclose(ours.seq.Lambda.real, torch.full((32,), -0.5))
    steps = ours.seq.log_step.exp()
    assert bool(((steps >= 0.001) & (steps <= 0.1)).all())


@pytest.mark.parametrize("direction", ["s5_pytorch_into_ours", "ours_into_s5_pytorch"])
def test_state_dict_round_trip(direction):
    x = torch.randn(2, 9, WIDTH)
    gaps = random_gaps(2, 9)
    torch.manual_seed(5)
    source_oracle = s5_pytorch.S5(WIDTH, STATE)
    source_ours = S5(WIDTH, STATE)  # different draws from source_oracle
    if direction == "s5_pytorch_into_ours":
        source, target = source_oracle, S5(WIDTH, STATE)
    else:
        source, target = source_ours, s5_pytorch.S5(WIDTH, STATE)
    target.load_state_dict(source.state_dict())
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    with torch.no_grad():
        assert relative_error(target(x, gaps), source(x, gaps)) <= TOLERANCE["output_fp32"]


# ---------------------------------------------------------------- parity with s5-pytorch


STEP_KINDS = {
    "per_step_gaps": lambda batch, length: random_gaps(batch, length),
    "python_scalar": lambda batch, length: 0.7,
    "per_sequence": lambda batch, length: torch.tensor([0.3, 2.0, 11.0])[:batch],
}


@pytest.mark.parametrize("step_kind", list(STEP_KINDS))
@pytest.mark.parametrize("length", [1, 23, 64])
def test_matches_s5_pytorch_outputs_and_gradients(step_kind, length):
    ours, oracle = make_pair(seed=length)
    torch.manual_seed(100 + length)
    x = torch.randn(3, length, WIDTH)
    output_grad = torch.randn(3, length, WIDTH)
    step_scale = STEP_KINDS[step_kind](3, length)

    ours_out, ours_grads = forward_and_grads(ours, x, step_scale, output_grad)
    oracle_out, oracle_grads = forward_and_grads(oracle, x, step_scale, output_grad)

    assert relative_error(ours_out, oracle_out) <= TOLERANCE["output_fp32"]
    for name in ["input"] + PARAMETER_NAMES:
        error = relative_error(ours_grads[name], oracle_grads[name])
        assert error <= TOLERANCE["grad_fp32"], f"gradient of {name}: relative error {error:.2e}"


def test_zero_dim_tensor_step_equals_python_scalar():
    ours, _ = make_pair()
    x = torch.randn(2, 10, WIDTH)
    with torch.no_grad():
        assert torch.equal(ours(x, torch.tensor(0.25)), ours(x, 0.25))


def test_state_passing_matches_s5_pytorch_and_a_single_run():
    ours, oracle = make_pair(seed=3)
    x, gaps = torch.randn(2, 30, WIDTH), random_gaps(2, 30)
    with torch.no_grad():
        full, last = ours(x, gaps, return_state=True)
        oracle_full, oracle_last = oracle(x, gaps, return_state=True)
        first_half, middle = ours(x[:, :12], gaps[:, :12], return_state=True)
        second_half = ours(x[:, 12:], gaps[:, 12:], state=middle)
        _, oracle_middle = oracle(x[:, :12], gaps[:, :12], return_state=True)
        oracle_second_half = oracle(x[:, 12:], gaps[:, 12:], state=oracle_middle)
    assert last.shape == (2, STATE) and last.dtype == torch.complex64
    assert relative_error(last, oracle_last) <= TOLERANCE["output_fp32"]
    assert relative_error(full, oracle_full) <= TOLERANCE["output_fp32"]
    assert relative_error(torch.cat([first_half, second_half], 1), full) <= TOLERANCE["output_fp32"]
    assert relative_error(second_half, oracle_second_half) <= TOLERANCE["output_fp32"]


# ---------------------------------------------------------------- the scan


@pytest.mark.parametrize("length", [1, 2, 3, 8, 15, 16, 17, 50, 199])
@pytest.mark.parametrize("with_initial_state", [False, True])
@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64, torch.complex64])
def test_chunked_scan_equals_reference_loop(length, with_initial_state, dtype):
    generator = torch.Generator().manual_seed(length)
    shape = (3, length, 5)
    real = dtype if not dtype.is_complex else (torch.float64 if dtype == torch.complex128 else torch.float32)
    magnitude = torch.rand(shape, generator=generator, dtype=real)
    magnitude[torch.rand(shape, generator=generator) < 0.1] = 0.0  # huge gap: Λ̄ = 0
    magnitude[torch.rand(shape, generator=generator) < 0.1] = 1.0  # zero gap: Λ̄ = 1
    if dtype.is_complex:
        angle = torch.rand(shape, generator=generator, dtype=real) * 6.3
        decay = torch.polar(magnitude, angle)
    else:
        decay = magnitude * torch.sign(torch.randn(shape, generator=generator, dtype=real))
    drive = torch.randn(shape, generator=generator, dtype=dtype)
    initial = torch.randn((3, 5), generator=generator, dtype=dtype) if with_initial_state else None
    output_grad = torch.randn(shape, generator=generator, dtype=dtype)

    results = []
    for scan in (s5_scan, s5_scan_reference):
        inputs = [decay.clone().requires_grad_(), drive.clone().requires_grad_()]
        if initial is not None:
            inputs.append(initial.clone().requires_grad_())
        states = scan(*inputs[:2], inputs[2] if initial is not None else None)
        states.backward(output_grad)
        results.append([states.detach()] + [t.grad for t in inputs])

    tolerance = TOLERANCE["scan_fp32" if dtype == torch.complex64 else "scan_fp64"]
    for name, fast, reference in zip(["states", "grad a", "grad b", "grad x0"], *results):
        assert relative_error(fast, reference) <= tolerance, name


def test_scan_gradcheck_with_broadcast_decay():
    generator = torch.Generator().manual_seed(0)
    magnitude, angle = torch.rand(2, 4, dtype=torch.float64, generator=generator)
    decay = torch.polar(magnitude, angle)  # [P], broadcast over [B L P]
    drive = torch.randn(2, 11, 4, dtype=torch.complex128, generator=generator)
    initial = torch.randn(2, 4, dtype=torch.complex128, generator=generator)
    inputs = tuple(t.requires_grad_() for t in (decay, drive, initial))
    assert torch.autograd.gradcheck(s5_scan, inputs)


@pytest.mark.parametrize("scale_shape", [(3, 17, 1), (3, 1, 1), (1, 1, 1)])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_fused_zoh_scan_equals_discretise_then_reference_loop(scale_shape, with_initial_state):
    generator = torch.Generator().manual_seed(len(scale_shape) + scale_shape[1])
    real, complex_ = torch.float64, torch.complex128
    scale = torch.rand(scale_shape, generator=generator, dtype=real) * 3
    if scale_shape[1] > 1:
        scale[:, ::4] = 0.0  # duplicate timestamps
        scale[:, 1::5] = 1e6  # huge gaps: Λ̄ = 0
    base_step = torch.rand(6, generator=generator, dtype=real) * 0.1
    lam_real, lam_imag = torch.rand(6, generator=generator, dtype=real), torch.randn(6, generator=generator, dtype=real)
    lam = torch.complex(-lam_real, lam_imag * 5)
    scaled_input = torch.randn(3, 17, 6, generator=generator, dtype=complex_)
    initial = torch.randn(3, 6, generator=generator, dtype=complex_) if with_initial_state else None
    output_grad = torch.randn(3, 17, 6, generator=generator, dtype=complex_)

    def reference(scale, base_step, lam, scaled_input, initial):
        lam_bar = zoh_decay(scale, base_step, lam)
        return s5_scan_reference(lam_bar, (lam_bar - 1) * scaled_input, initial)

    results = []
    for function in (zoh_scan, reference):
        inputs = [t.clone().requires_grad_() for t in (scale, base_step, lam, scaled_input)]
        inputs.append(initial.clone().requires_grad_() if initial is not None else None)
        function(*inputs).backward(output_grad)
        results.append([function(*inputs).detach()] + [t.grad for t in inputs if t is not None])
    names = ["states", "grad step_scale", "grad base_step", "grad lam", "grad input", "grad x0"]
    for name, fused, plain in zip(names, *results):
        assert relative_error(fused, plain) <= TOLERANCE["scan_fp64"], name


# ---------------------------------------------------------------- causality and extreme gaps


@pytest.mark.parametrize("cut", [0, 13, 38])
def test_outputs_up_to_k_ignore_later_inputs_and_gaps(cut):
    ours, _ = make_pair(seed=7)
    x, gaps = torch.randn(2, 40, WIDTH), random_gaps(2, 40)
    changed_x, changed_gaps = x.clone(), gaps.clone()
    changed_x[:, cut + 1 :] = torch.randn_like(changed_x[:, cut + 1 :]) * 100
    changed_gaps[:, cut + 1 :] = 1e6
    with torch.no_grad():
        before, after = ours(x, gaps), ours(changed_x, changed_gaps)
    torch.testing.assert_close(after[:, : cut + 1], before[:, : cut + 1], rtol=1e-6, atol=1e-6)
    if cut + 1 < 40:
        assert not torch.allclose(after[:, cut + 1 :], before[:, cut + 1 :])


EXTREME_GAPS = {
    "zeros": [0.0],
    "ones": [1.0],
    "1e3": [1e3],
    "1e6": [1e6],
    "1e9": [1e9],
    "mixed_with_duplicates": [0.0, 0.0, 1e9, 0.0, 1.0, 1e6, 1e6, 0.0, 1e3, 1e-3],
}


@pytest.mark.parametrize("gap_kind", list(EXTREME_GAPS))
def test_extreme_gaps_give_finite_outputs_and_gradients(gap_kind):
    ours, _ = make_pair(seed=11)
    pattern = torch.tensor(EXTREME_GAPS[gap_kind])
    gaps = pattern.repeat(3 * 20 // len(pattern) + 1)[: 3 * 20].reshape(3, 20)
    x = torch.randn(3, 20, WIDTH, requires_grad=True)
    out = ours(x, gaps)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all()
    for name, parameter in ours.named_parameters():
        grad = torch.view_as_real(parameter.grad) if parameter.grad.is_complex() else parameter.grad
        assert torch.isfinite(grad).all(), name


def test_zero_gaps_keep_the_state_and_huge_gaps_forget_it():
    ours, _ = make_pair(seed=2)
    x = torch.randn(2, 12, WIDTH)
    with torch.no_grad():
        # Δ = 0: Λ̄ = 1 and B̄ = 0, so the state stays 0 and only the skip term D ⊙ u is left
        assert torch.equal(ours(x, torch.zeros(2, 12)), ours.seq.D * x)
        # Δ = 1e9: Λ̄ = 0, each output depends on its own input only
        alone = torch.cat([ours(x[:, k : k + 1], 1e9) for k in range(12)], dim=1)
        torch.testing.assert_close(ours(x, torch.full((2, 12), 1e9)), alone, rtol=1e-6, atol=1e-6)


def test_positive_real_lambda_is_clamped_and_stays_finite():
    ours, _ = make_pair(seed=4)
    with torch.no_grad():
        ours.seq.Lambda.copy_(torch.complex(torch.full((STATE,), 0.5), ours.seq.Lambda.imag))
    x = torch.randn(2, 15, WIDTH, requires_grad=True)
    gaps = torch.tensor([0.0, 1.0, 1e3, 1e6, 1e9]).repeat(6).reshape(2, 15)
    out = ours(x, gaps)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    # the forward used Re(Λ) = LAMBDA_REAL_MAX
    clamped = S5(WIDTH, STATE)
    clamped.load_state_dict(ours.state_dict())
    with torch.no_grad():
        clamped.seq.Lambda.copy_(torch.complex(torch.full((STATE,), LAMBDA_REAL_MAX), ours.seq.Lambda.imag))
        assert torch.equal(clamped(x, gaps), out)


# ---------------------------------------------------------------- precision and input checks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_autocast_keeps_the_scan_in_fp32(dtype):
    ours, _ = make_pair(seed=6)
    x, gaps = torch.randn(2, 20, WIDTH).to(dtype), random_gaps(2, 20)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=dtype):
            mixed = ours(x, gaps)
        full = ours(x.float(), gaps)
    assert mixed.dtype == torch.float32
    assert relative_error(mixed, full) <= TOLERANCE["autocast"]


def test_float64_input_runs_in_float64():
    ours, _ = make_pair(seed=8)
    x, gaps = torch.randn(2, 20, WIDTH), random_gaps(2, 20)
    with torch.no_grad():
        double = ours(x.double(), gaps.double())
        single = ours(x, gaps)
    assert double.dtype == torch.float64
    assert relative_error(single.double(), double) <= TOLERANCE["output_fp32"]


@pytest.mark.parametrize(
    "step_scale, message",
    [
        (torch.tensor([[1.0, -1.0, 2.0]]), "finite and >= 0"),
        (torch.tensor([[1.0, float("nan"), 2.0]]), "finite and >= 0"),
        (torch.tensor([[1.0, float("inf"), 2.0]]), "finite and >= 0"),
        (torch.ones(1, 4), "step_scale must be"),
        (torch.ones(1, 3, 1), "step_scale must be"),
    ],
)
def test_bad_step_scale_is_rejected(step_scale, message):
    ours, _ = make_pair()
    with pytest.raises(ValueError, match=message):
        ours(torch.randn(1, 3, WIDTH), step_scale)


def test_bad_signal_and_unsupported_options_are_rejected():
    ours, _ = make_pair()
    with pytest.raises(ValueError, match=r"\[B L H\]"):
        ours(torch.randn(3, WIDTH), 1.0)
    with pytest.raises(ValueError, match=r"\[B L H\]"):
        ours(torch.randn(1, 3, WIDTH + 1), 1.0)
    for option in [{"bidir": True}, {"liquid": True}, {"block_count": 2}, {"degree": 2}, {"factor_rank": 4}]:
        with pytest.raises(ValueError, match="not supported"):
            S5(WIDTH, STATE, **option)


def test_bad_step_scale_check_can_wait_for_the_next_read_back():
    # On a GPU the check is deferred (no host-device sync per call): the bad values are counted
    # on the device and raise_deferred_errors raises the same error at the next read-back.
    ours, _ = make_pair()
    ours.defer_step_checks = True  # what the GPU path does, here on the CPU
    model = torch.nn.Sequential(ours)
    ours(torch.randn(1, 3, WIDTH), torch.tensor([[1.0, -1.0, 2.0]]))  # no error yet
    ours(torch.randn(1, 3, WIDTH), torch.tensor([[1.0, float("nan"), 2.0]]))
    with pytest.raises(ValueError, match=r"finite and >= 0 .*found e.g. 2 values"):
        raise_deferred_errors(model)
    raise_deferred_errors(model)  # counted once: nothing left to report
    ours(torch.randn(1, 3, WIDTH), torch.ones(1, 3))
    raise_deferred_errors(model)  # good values: nothing to report

"""Tests for the fused CPU selective scan (ss4rec.ssm.scan_fused).

The yardstick is ``selective_scan_reference`` (a per-step loop under autograd): the C kernel
must match its output and the gradients of all five inputs. The kernel is built once per
machine (cached on disk); a build failure here fails the tests rather than hiding behind
the fallback, since CI has gcc.
"""

import os
import subprocess
import sys

import pytest
import torch

from ss4rec.ssm.scan import selective_scan_reference
from ss4rec.ssm.scan_fused import fused_causal_conv1d_silu, fused_scan_available, fused_selective_scan

# How close the kernel must be to the per-step reference, relative to the largest
# magnitude of the compared tensor (the kernel computes in float32).
TOLERANCE = {
    torch.float32: {"rel": 1e-5},
    torch.bfloat16: {"rel": 1e-2},  # inputs and y rounded to bf16; the scan itself is fp32
}

# (batch, length, d_inner, d_state): channel counts off the kernel's 16-lane blocks,
# L = 1, B = 1, lengths that no chunk size divides
SHAPES = [
    (2, 1, 16, 4),  # L = 1
    (1, 5, 8, 16),  # B = 1, half a lane block
    (3, 7, 5, 4),  # one partial block
    (2, 17, 40, 8),  # two full blocks and a partial one
    (1, 50, 33, 32),  # SS4Rec's d_state
]


def assert_close_rel(actual, expected, rel, what):
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual.double() - expected.double()).abs().max()
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} > {rel:g} x max |expected| {scale:.3e}"


def make_inputs(batch, length, d_inner, d_state, seed=0, delta_scale=0.5):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, d_inner, generator=generator)  # [B L D]
    delta = torch.rand(batch, length, d_inner, generator=generator) * delta_scale + 1e-3  # > 0
    A = -torch.rand(d_inner, d_state, generator=generator) * 4 - 0.1  # [D N], negative
    B = torch.randn(batch, length, d_state, generator=generator)  # [B L N]
    C = torch.randn(batch, length, d_state, generator=generator)
    return [t.requires_grad_() for t in (u, delta, A, B, C)]


def outputs_and_grads(scan, inputs, grad_seed=1):
    y = scan(*inputs)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y.dtype)
    grads = torch.autograd.grad(y, inputs, grad_y)
    return y, grads


@pytest.fixture(scope="module", autouse=True)
def kernel_builds():
    ok, reason = fused_scan_available()
    assert ok, f"the fused kernel should build on this machine (gcc is required): {reason}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-L{}-D{}-N{}".format(*s))
def test_matches_reference_in_value_and_gradient(shape):
    inputs = make_inputs(*shape)
    y, grads = outputs_and_grads(fused_selective_scan, inputs)
    y_ref, grads_ref = outputs_and_grads(selective_scan_reference, inputs)
    rel = TOLERANCE[torch.float32]["rel"]
    assert y.shape == y_ref.shape and y.dtype == torch.float32
    assert_close_rel(y, y_ref, rel, "y")
    for name, grad, grad_ref in zip(("u", "delta", "A", "B", "C"), grads, grads_ref):
        assert grad.shape == grad_ref.shape
        assert_close_rel(grad, grad_ref, rel, f"grad {name}")


@pytest.mark.parametrize("gated", [True, False], ids=["skip+gate", "skip-only"])
@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (17, 9, 20, 8)], ids=lambda s: "B{}-L{}-D{}-N{}".format(*s))
def test_skip_and_gate_match_reference(shape, gated):
    # Mamba's output before out_proj: (scan + D * u) * silu(z), fused into the kernel
    inputs = make_inputs(*shape, seed=9)
    generator = torch.Generator().manual_seed(10)
    D = torch.randn(shape[2], generator=generator).requires_grad_()
    z = (torch.randn(shape[0], shape[1], shape[2], generator=generator) * 3).requires_grad_() if gated else None
    extra = [D] + ([z] if gated else [])

    def reference(u, delta, A, B, C, D, z=None):
        y = selective_scan_reference(u, delta, A, B, C) + D * u
        return y * torch.nn.functional.silu(z) if z is not None else y

    y, grads = outputs_and_grads(lambda *a: fused_selective_scan(*a[:5], D=a[5], z=a[6] if gated else None),
                                 inputs + extra)
    y_ref, grads_ref = outputs_and_grads(lambda *a: reference(*a), inputs + extra)
    rel = TOLERANCE[torch.float32]["rel"]
    assert_close_rel(y, y_ref, rel, "y")
    names = ("u", "delta", "A", "B", "C", "D", "z")
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        assert_close_rel(grad, grad_ref, rel, f"grad {name}")


def test_strong_decay_underflow_matches_reference():
    # delta * A far below -87: the kernel clamps its exp there, the reference underflows to 0
    inputs = make_inputs(2, 9, 20, 8, seed=3, delta_scale=60.0)
    y, grads = outputs_and_grads(fused_selective_scan, inputs)
    y_ref, grads_ref = outputs_and_grads(selective_scan_reference, inputs)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    assert_close_rel(y, y_ref, TOLERANCE[torch.float32]["rel"], "y")
    for name, grad, grad_ref in zip(("u", "delta", "A", "B", "C"), grads, grads_ref):
        assert_close_rel(grad, grad_ref, TOLERANCE[torch.float32]["rel"], f"grad {name}")


def test_threads_split_the_batch_without_changing_results():
    inputs = make_inputs(7, 11, 24, 8, seed=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, grads1 = outputs_and_grads(fused_selective_scan, inputs)
        torch.set_num_threads(3)  # more slices than cores is fine: slices are independent
        y3, grads3 = outputs_and_grads(fused_selective_scan, inputs)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y3)
    for name, g1, g3 in zip(("u", "delta", "A", "B", "C"), grads1, grads3):
        # grad_A sums per-thread parts, so only its rounding may differ
        assert_close_rel(g3, g1, 1e-6, f"grad {name}")


def test_bfloat16_inputs_compute_in_float32():
    inputs = [t.detach().to(torch.bfloat16).requires_grad_() for t in make_inputs(2, 6, 16, 4)]
    y, grads = outputs_and_grads(fused_selective_scan, inputs)
    y_ref, grads_ref = outputs_and_grads(selective_scan_reference, inputs)
    assert y.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    rel = TOLERANCE[torch.bfloat16]["rel"]
    assert_close_rel(y, y_ref, rel, "y")
    for name, grad, grad_ref in zip(("u", "delta", "A", "B", "C"), grads, grads_ref):
        assert_close_rel(grad, grad_ref, rel, f"grad {name}")


def test_non_contiguous_inputs():
    u, delta, A, B, C = make_inputs(3, 8, 12, 4, seed=7)
    # the same values through transposed storage
    views = [x.detach().transpose(0, 1).contiguous().transpose(0, 1) for x in (u, delta, B, C)]
    args = [views[0], views[1], A.detach().t().contiguous().t(), views[2], views[3]]
    assert not args[0].is_contiguous()
    assert torch.equal(fused_selective_scan(*args), fused_selective_scan(u, delta, A, B, C))


def test_bad_input_is_named():
    u, delta, A, B, C = (t.detach() for t in make_inputs(2, 5, 8, 4))
    with pytest.raises(ValueError, match="delta must have u's shape"):
        fused_selective_scan(u, delta[:, :4], A, B, C)
    with pytest.raises(ValueError, match="C must be"):
        fused_selective_scan(u, delta, A, B, C[..., :3])
    with pytest.raises(ValueError, match="A is float64"):
        fused_selective_scan(u, delta, A.double(), B, C)
    with pytest.raises(ValueError, match="D must be"):
        fused_selective_scan(u, delta, A, B, C, D=torch.ones(7))
    with pytest.raises(ValueError, match="z must have"):
        fused_selective_scan(u, delta, A, B, C, z=u[:1])


def _probe(env_overrides):
    """fused_scan_available() and the log in a fresh interpreter with env_overrides."""
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s');"
        "from ss4rec.ssm.scan_fused import fused_scan_available as f; ok, why = f(); f(); print(ok, why)"
    )
    env = {**os.environ, **env_overrides}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_env_var_disables_the_kernel():
    out, err = _probe({"SS4REC_FUSED_SCAN": "0"})
    assert out.startswith("False") and "SS4REC_FUSED_SCAN=0" in out
    assert "WARNING" not in err  # asked for, so nothing to warn about


def test_build_failure_is_logged_once_and_reported(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should go")
    out, err = _probe({"SS4REC_CACHE_DIR": str(blocker)})
    assert out.startswith("False") and "unavailable" in out
    assert err.count("WARNING") == 1 and "pure-PyTorch" in err


def test_mamba_layer_picks_the_kernel_on_cpu_and_matches_the_chunked_scan():
    from ss4rec.ssm.mamba import Mamba

    torch.manual_seed(11)
    layer = Mamba(24, d_state=8, backend="torch")  # d_inner 48: three lane blocks
    hidden = torch.randn(3, 13, 24, requires_grad=True)
    assert layer.scan_impl == "auto"
    out_auto = layer(hidden)  # fused: float32 on CPU
    grads_auto = torch.autograd.grad(out_auto.sum(), [hidden, layer.A_log, layer.dt_proj.weight])
    layer.scan_impl = "chunked"
    out_chunked = layer(hidden)
    grads_chunked = torch.autograd.grad(out_chunked.sum(), [hidden, layer.A_log, layer.dt_proj.weight])
    rel = TOLERANCE[torch.float32]["rel"]
    assert_close_rel(out_auto, out_chunked, rel, "layer output")
    for name, g_auto, g_chunked in zip(("input", "A_log", "dt_proj.weight"), grads_auto, grads_chunked):
        assert_close_rel(g_auto, g_chunked, rel, f"grad {name}")
    layer.scan_impl = "fused"
    with pytest.raises(ValueError, match="float64"):
        layer.double()(hidden.detach().double())  # explicit "fused" does not fall back silently


def test_kernel_leaves_the_callers_denormal_mode_alone():
    # the kernel flushes denormals while it runs (speed); the caller's FP mode must survive
    tiny = torch.tensor([1e-39])  # a float32 denormal
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the kernel runs on this very thread
        fused_selective_scan(*(t.detach() for t in make_inputs(2, 5, 8, 4)))
    finally:
        torch.set_num_threads(before)
    assert (tiny * 1.0).item() > 0


def test_deep_decays_in_the_backward_stay_accurate():
    # long sequences with strong decays push carried gradients into the denormal range,
    # which the kernel flushes to zero: results must still match the reference
    inputs = make_inputs(2, 120, 16, 8, seed=12, delta_scale=8.0)
    y, grads = outputs_and_grads(fused_selective_scan, inputs)
    y_ref, grads_ref = outputs_and_grads(selective_scan_reference, inputs)
    rel = TOLERANCE[torch.float32]["rel"]
    assert_close_rel(y, y_ref, rel, "y")
    for name, grad, grad_ref in zip(("u", "delta", "A", "B", "C"), grads, grads_ref):
        assert_close_rel(grad, grad_ref, rel, f"grad {name}")


@pytest.mark.parametrize("batch, length, channels, taps", [(2, 1, 8, 4), (3, 7, 20, 4), (1, 9, 16, 2), (2, 3, 5, 4)])
def test_conv_silu_matches_conv1d(batch, length, channels, taps):
    torch.manual_seed(13)
    conv = torch.nn.Conv1d(channels, channels, taps, groups=channels, padding=taps - 1)
    xz = torch.randn(batch, length, 2 * channels, requires_grad=True)
    x = xz[..., :channels]  # a strided view, as Mamba's in_proj(...).chunk(2) gives
    weights = torch.randn(batch, length, channels)

    def reference():
        return torch.nn.functional.silu(conv(x.transpose(1, 2))[..., :length]).transpose(1, 2)

    def fused():
        return fused_causal_conv1d_silu(x, conv.weight, conv.bias)

    results = []
    for fn in (reference, fused):
        out = fn()
        results.append((out, *torch.autograd.grad((out * weights).sum(), [xz, conv.weight, conv.bias])))
    rel = TOLERANCE[torch.float32]["rel"]
    for name, got, want in zip(("out", "grad x", "grad weight", "grad bias"), results[1], results[0]):
        assert got.shape == want.shape
        assert_close_rel(got, want, rel, name)



# ---------------------------------------------------------------- right padding skipped (lengths)
# A batch of windows is right-padded and nothing reads the padding's outputs, so the scan and
# the conv may skip it: results at real steps, and every gradient, must not change by one bit.
PADDED_LENGTHS = [17, 1, 9, 0, 16]  # a full row, a one-step row, rows ending inside the tiles


def _padding_mask(lengths, length):
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # [B L] real steps


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "skip-and-gate"])
def test_scan_skips_the_padding_and_keeps_every_real_result(gated):
    batch, length, d_inner, d_state = len(PADDED_LENGTHS), 17, 40, 8
    inputs = make_inputs(batch, length, d_inner, d_state, seed=5)
    extra = [torch.randn(d_inner).requires_grad_(), torch.randn(batch, length, d_inner).requires_grad_()] if gated else []
    real = _padding_mask(PADDED_LENGTHS, length)  # [B L]
    grad_y = torch.randn(batch, length, d_inner) * real[..., None]  # nothing flows back from padding
    results = []
    for lengths in (None, torch.tensor(PADDED_LENGTHS)):
        def scan(u, delta, A, B, C, *rest):
            return fused_selective_scan(u, delta, A, B, C, *rest, lengths=lengths)
        y = scan(*inputs, *extra)
        results.append((y, torch.autograd.grad(y, inputs + extra, grad_y)))
    (y_all, grads_all), (y_skip, grads_skip) = results
    assert torch.equal(y_skip[real], y_all[real])
    assert not y_skip[~real].any()  # the skipped outputs are zeros
    for name, got, want in zip(("u", "delta", "A", "B", "C", "D", "z"), grads_skip, grads_all):
        assert torch.equal(got, want), f"grad {name} changed"


def test_conv_skips_the_padding_and_keeps_every_real_result():
    batch, length, channels, taps = len(PADDED_LENGTHS), 17, 20, 4
    torch.manual_seed(3)
    conv = torch.nn.Conv1d(channels, channels, taps, groups=channels, padding=taps - 1)
    x = torch.randn(batch, length, channels, requires_grad=True)
    real = _padding_mask(PADDED_LENGTHS, length)
    weights = torch.randn(batch, length, channels) * real[..., None]
    results = []
    for lengths in (None, torch.tensor(PADDED_LENGTHS)):
        out = fused_causal_conv1d_silu(x, conv.weight, conv.bias, lengths)
        results.append((out, torch.autograd.grad((out * weights).sum(), [x, conv.weight, conv.bias])))
    (out_all, grads_all), (out_skip, grads_skip) = results
    assert torch.equal(out_skip[real], out_all[real])
    assert not out_skip[~real].any()
    for name, got, want in zip(("x", "weight", "bias"), grads_skip, grads_all):
        assert torch.equal(got, want), f"grad {name} changed"


def test_mamba_layer_with_lengths_gives_the_same_training_step():
    from ss4rec.ssm.mamba import Mamba

    torch.manual_seed(0)
    layer = Mamba(d_model=16, d_state=8, d_conv=4, expand=2, backend="torch")
    x = torch.randn(len(PADDED_LENGTHS), 17, 16)
    real = _padding_mask(PADDED_LENGTHS, 17)
    steps = []
    for lengths in (None, torch.tensor(PADDED_LENGTHS)):
        layer.zero_grad()
        out = layer(x, lengths=lengths)
        (out[real] ** 2).sum().backward()  # a loss over real positions only, as a model's
        steps.append((out[real], {name: p.grad.clone() for name, p in layer.named_parameters()}))
    assert torch.equal(steps[0][0], steps[1][0])
    for name, grad in steps[0][1].items():
        assert torch.equal(steps[1][1][name], grad), f"grad {name} changed"


def test_bad_lengths_are_named():
    u, delta, A, B, C = make_inputs(2, 5, 8, 4)
    with pytest.raises(ValueError, match=r"lengths must be integers of shape \[B\]"):
        fused_selective_scan(u, delta, A, B, C, lengths=torch.tensor([5.0, 2.0]))
    with pytest.raises(ValueError, match=r"lengths must be integers of shape \[B\]"):
        fused_causal_conv1d_silu(u, torch.randn(8, 1, 4), None, torch.tensor([5, 2, 1]))

# ---------------------------------------------------------------- S5's kernels (complex64)

from ss4rec.ssm.s5 import UNDERFLOW_EXPONENT, _ZOHScan, s5_scan_reference, zoh_decay  # noqa: E402
from ss4rec.ssm.scan_fused import fused_linear_scan, fused_zoh_scan  # noqa: E402

# The C kernels against the plain per-step loop run in complex128 (so the yardstick carries
# no rounding of its own), relative to the largest magnitude of each compared tensor.
S5_TOLERANCE = {"scan": 1e-5, "zoh": 1e-5, "zoh_vs_torch_op": 1e-5}
S5_SHAPES = [(1, 1, 1), (2, 7, 3), (3, 50, 32), (2, 199, 5)]  # (batch, length, states)


@pytest.mark.parametrize("shape", S5_SHAPES, ids=lambda s: "B{}-L{}-P{}".format(*s))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("decay_shape", ["full", "per-row", "shared"])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_linear_scan_matches_the_reference_loop(shape, reverse, decay_shape, with_initial_state):
    batch, length, width = shape
    generator = torch.Generator().manual_seed(length + width)
    a_shape = {"full": shape, "per-row": (batch, 1, width), "shared": (1, 1, width)}[decay_shape]
    magnitude = torch.rand(a_shape, generator=generator, dtype=torch.float64)
    magnitude[torch.rand(a_shape, generator=generator) < 0.1] = 0.0
    a = torch.polar(magnitude, torch.rand(a_shape, generator=generator, dtype=torch.float64) * 6.3)
    b = torch.randn(shape, generator=generator, dtype=torch.complex128)
    initial = torch.randn(batch, width, generator=generator, dtype=torch.complex128) if with_initial_state else None
    flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
    expected = flip(s5_scan_reference(flip(a.expand(shape)), flip(b), initial))
    got = fused_linear_scan(a.to(torch.complex64), b.to(torch.complex64),
                            None if initial is None else initial.to(torch.complex64), reverse=reverse)
    assert got.dtype == torch.complex64
    assert_close_rel(torch.view_as_real(got), torch.view_as_real(expected), S5_TOLERANCE["scan"], "states")


def zoh_inputs(batch, length, width, scale_shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(scale_shape, generator=generator, dtype=torch.float64) * 3
    if scale_shape[1] > 1:
        scale[:, ::4] = 0.0  # duplicate timestamps
        scale[:, 1::5] = 1e6  # huge gaps: Λ̄ flushed to 0
    base_step = torch.rand(width, generator=generator, dtype=torch.float64) * 0.1 + 1e-3
    lam = torch.complex(-torch.rand(width, generator=generator, dtype=torch.float64) - 1e-3,
                        torch.randn(width, generator=generator, dtype=torch.float64) * 5)
    scaled_input = torch.randn(batch, length, width, generator=generator, dtype=torch.complex128)
    initial = torch.randn(batch, width, generator=generator, dtype=torch.complex128)
    grad = torch.randn(batch, length, width, generator=generator, dtype=torch.complex128)
    return [scale, base_step, lam, scaled_input, initial], grad


def zoh_reference(scale, base_step, lam, scaled_input, initial):
    lam_bar = zoh_decay(scale, base_step, lam)
    return s5_scan_reference(lam_bar, (lam_bar - 1) * scaled_input, initial)


def zoh_results(fn, inputs, grad, dtype):
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    leaves = [t.to(dtype if t.is_complex() else real).detach().requires_grad_() if t is not None else None
              for t in inputs]
    states = fn(*leaves)
    grads = torch.autograd.grad(states, [t for t in leaves if t is not None], grad.to(dtype))
    return [states, *grads]


ZOH_NAMES = ["states", "grad step_scale", "grad base_step", "grad lam", "grad input", "grad x0"]


@pytest.mark.parametrize("shape", S5_SHAPES[1:], ids=lambda s: "B{}-L{}-P{}".format(*s))
@pytest.mark.parametrize("scale_kind", ["per-step", "per-row", "one"])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_zoh_scan_matches_discretise_then_reference_loop(shape, scale_kind, with_initial_state):
    batch, length, width = shape
    scale_shape = {"per-step": (batch, length, 1), "per-row": (batch, 1, 1), "one": (1, 1, 1)}[scale_kind]
    inputs, grad = zoh_inputs(batch, length, width, scale_shape, seed=length)
    if not with_initial_state:
        inputs[4] = None
    expected = zoh_results(zoh_reference, inputs, grad, torch.complex128)  # the yardstick, exact-ish

    def fused(*args):
        return fused_zoh_scan(*args, UNDERFLOW_EXPONENT)
    got = zoh_results(fused, inputs, grad, torch.complex64)
    torch_op = zoh_results(_ZOHScan.apply, inputs, grad, torch.complex64)  # what runs off the CPU
    for name, fast, plain, reference in zip(ZOH_NAMES, got, torch_op, expected):
        fast, plain, reference = (torch.view_as_real(t.resolve_conj()) if t.is_complex() else t
                                  for t in (fast, plain, reference))
        assert_close_rel(fast, reference, S5_TOLERANCE["zoh"], name)
        assert_close_rel(fast, plain, S5_TOLERANCE["zoh_vs_torch_op"], f"{name} (vs the torch op)")


def test_zoh_scan_threads_split_the_batch_without_changing_results():
    inputs, grad = zoh_inputs(5, 30, 8, (5, 30, 1), seed=3)
    before = torch.get_num_threads()

    def fused(*args):
        return fused_zoh_scan(*args, UNDERFLOW_EXPONENT)
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(zoh_results(fused, inputs, grad, torch.complex64))
    finally:
        torch.set_num_threads(before)
    for name, one, two in zip(ZOH_NAMES, *results):
        one, two = (torch.view_as_real(t.resolve_conj()) if t.is_complex() else t for t in (one, two))
        assert_close_rel(two, one, S5_TOLERANCE["zoh"], name)  # only the partial sums' order differs

"""Time-aware S5 layer: a drop-in for s5-pytorch 0.2.1's ``s5.S5`` with a fast scan.

SS4Rec runs an S5 layer whose discretisation step changes at every position (the time gap
between two interactions). s5-pytorch handles a per-step ``step_scale`` by building a complex
``B̄`` of shape ``[L, P, H]`` for every sequence; this module computes the same output with
O(B·L·P) memory:

* ``B̃u / Λ`` is projected once (one real matmul, ``[B L P]`` complex) and scaled per step
  by ``Λ̄ − 1`` (since ``B̄ u = ((Λ̄ − 1)/Λ) ⊙ (B̃ u)``);
* the diagonal recurrence ``x_k = Λ̄_k ⊙ x_{k−1} + (B̄u)_k`` runs as a chunked scan: about
  ``2·sqrt(L)`` vectorised steps instead of ``L`` (:func:`s5_scan` is the generic op);
* discretisation and scan are one autograd op (:func:`zoh_scan`) with a hand-written
  backward (a reverse scan of the adjoint) that recomputes ``Λ̄``, so training keeps only
  ``B̃u/Λ`` and the states (two ``[B L P]`` complex tensors) for this part of the layer.
* on the CPU in complex64 (every fp32 run), :func:`zoh_scan` runs as one C pass each way
  (:func:`ss4rec.ssm.scan_fused.fused_zoh_scan`: discretisation, recurrence and every
  gradient per step; it keeps ``Λ̄`` rather than recomputing it) and :func:`s5_scan`'s
  recurrence as a plain C loop; at SS4Rec's sizes the chunked torch scan's many small ops
  cost several times the arithmetic. The torch ops stay the path elsewhere (GPU, float64).

:func:`s5_scan_reference` is the plain per-step loop the fast ops are tested against.

Parameters, their names, shapes, dtypes and their initialisation (DPLR-HiPPO ``Λ``,
``B̃ = V⁻¹B``, ``C̃ = CV``, ``log_step ~ U[log dt_min, log dt_max]``) are those of s5-pytorch,
so ``state_dict``s load both ways (keys ``seq.Lambda, seq.B, seq.C, seq.D, seq.log_step``).
Deliberate differences from s5-pytorch:

* ``Re(Λ)`` is clamped at use to at most ``LAMBDA_REAL_MAX`` (``-1e-4``): the stored parameter
  is unchanged, but the forward uses ``min(Re Λ, -1e-4) + i Im Λ`` so ``|Λ̄| = exp(Re(Λ)Δ) ≤ 1``
  never overflows, whatever the gap (the clamp's gradient is zero while it is active).
  s5-pytorch initialises ``Re(Λ) = -0.5``, so this changes nothing at init.
* ``Λ̄`` is set to exactly 0 once ``Re(ΛΔ) < -UNDERFLOW_EXPONENT`` (``|Λ̄| < 5e-18``, below
  fp32 resolution; it keeps CPU arithmetic off the slow denormal path).
* ``step_scale`` must be finite and ``>= 0`` (a negative gap means unsorted timestamps). On
  the CPU a bad value raises ``ValueError`` at once. On a GPU, reading the values back would
  stall the device at every call, so they are counted on the device instead and
  :func:`raise_deferred_errors` raises the same error when the caller next reads results
  back (the trainer does, at its periodic checks and at the end of each epoch).
* Discretisation and scan always run in fp32/complex64 (fp64/complex128 for fp64 inputs),
  with autocast disabled (bf16/fp16 mixed precision leaves them alone); the output is fp32
  (fp64) whatever the input dtype.
* Options SS4Rec does not use (``bidir``, ``liquid``, ``degree``, ``factor_rank``,
  ``block_count``, ``bcInit`` other than ``"dense"``) are rejected with a ``ValueError``.

Example::

    >>> import torch
    >>> from ss4rec.ssm.s5 import S5
    >>> layer = S5(width=64, state_width=32, dt_min=0.001, dt_max=0.1)
    >>> items = torch.randn(8, 50, 64)                 # [B L H]
    >>> gaps = torch.rand(8, 50) * 3600.0              # [B L] seconds until the next event
    >>> layer(items, gaps).shape                       # per-step time gaps
    torch.Size([8, 50, 64])
    >>> layer(items, 1.0).shape                        # one fixed step for every position
    torch.Size([8, 50, 64])
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ss4rec.ssm.scan_fused import fused_linear_scan, fused_linear_scan_usable, fused_zoh_scan, fused_zoh_scan_usable

__all__ = [
    "LAMBDA_REAL_MAX",
    "UNDERFLOW_EXPONENT",
    "S5",
    "S5StateSpace",
    "make_dplr_hippo",
    "raise_deferred_errors",
    "s5_scan",
    "s5_scan_reference",
    "zoh_decay",
    "zoh_scan",
]

# Largest real part of Λ used in the forward: keeps |exp(ΛΔ)| <= 1 for every Δ >= 0.
LAMBDA_REAL_MAX = -1e-4
# Λ̄ = exp(ΛΔ) is flushed to 0 once Re(ΛΔ) < -40 (|Λ̄| < 5e-18, invisible in fp32).
UNDERFLOW_EXPONENT = 40.0


# --------------------------------------------------------------------------------------------
# Linear recurrence x_k = a_k * x_{k-1} + b_k
# --------------------------------------------------------------------------------------------


def s5_scan_reference(
    a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain per-step loop for ``x_k = a_k ⊙ x_{k-1} + b_k`` (the oracle for :func:`s5_scan`).

    Args:
        a: decay ``[B L P]`` (or anything that broadcasts to ``b``), real or complex.
        b: inputs ``[B L P]``.
        initial_state: ``x_{-1}`` ``[B P]``; zeros when ``None``.

    Returns:
        all states ``[B L P]``.

    Example::

        >>> a = torch.full((1, 3, 1), 0.5); b = torch.ones(1, 3, 1)
        >>> s5_scan_reference(a, b).flatten().tolist()
        [1.0, 1.5, 1.75]
    """
    a = a.expand_as(b)
    state = torch.zeros_like(b[:, 0]) if initial_state is None else initial_state
    states = []
    for k in range(b.shape[1]):
        state = a[:, k] * state + b[:, k]
        states.append(state)
    return torch.stack(states, dim=1)


def _chunk_length(length: int) -> int:
    # sqrt(L) balances the loop inside chunks against the loop over chunks.
    return max(1, math.isqrt(length))


@torch.no_grad()
def _chunked_scan(
    a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None, reverse: bool = False
) -> torch.Tensor:
    """Chunked scan without autograd: ``a, b [B L P]`` -> states ``[B L P]``.

    Forward: ``x_k = a_k x_{k-1} + b_k`` from ``x_{-1} = initial_state`` (zeros if None).
    Reverse: ``x_k = a_k x_{k+1} + b_k`` from ``x_L = initial_state``.

    The first ``n·T`` positions (``T ≈ sqrt(L)``) are cut into ``n`` chunks. (1) A loop over the ``T`` positions of a chunk runs all chunks' local
    recurrences at once, from a zero state, and accumulates each position's decay since its
    chunk start. (2) A loop over the ``n`` chunks carries the true state across chunk
    boundaries. (3) One vectorised fix-up adds ``decay * state entering the chunk``. The
    ``L - n·T < T`` leftover positions at the end run as a plain loop (after the chunks, or
    before them in reverse). Only products of ``a`` are formed
    (no division, no logs), so ``a = 0`` (huge gap) and ``a = 1`` (zero gap) stay exact.
    """
    batch, length, width = b.shape
    a = a.expand_as(b)
    states = torch.empty_like(b)  # [B L P]
    state = b.new_zeros(batch, width) if initial_state is None else initial_state.to(b.dtype)
    if length == 0:
        return states
    chunk = _chunk_length(length)
    n_chunks = length // chunk

    def run_leftover(positions, state):
        for k in positions:
            state = torch.addcmul(b[:, k], a[:, k], state, out=states[:, k])
        return state

    chunked = slice(0, n_chunks * chunk)  # the leftover positions sit at the end
    if reverse:
        state = run_leftover(range(length - 1, n_chunks * chunk - 1, -1), state)
        inner, outer = range(chunk - 1, -1, -1), range(n_chunks - 1, -1, -1)
    else:
        inner, outer = range(chunk), range(n_chunks)

    a_c = a[:, chunked].unflatten(1, (n_chunks, chunk))  # [B n T P] (views)
    b_c = b[:, chunked].unflatten(1, (n_chunks, chunk))
    local = states[:, chunked].unflatten(1, (n_chunks, chunk))  # written in place
    decay = torch.empty_like(local)  # product of a from the chunk's entry up to position t
    first, *rest = inner
    local[:, :, first] = b_c[:, :, first]
    decay[:, :, first] = a_c[:, :, first]
    previous = first
    for t in rest:
        torch.addcmul(b_c[:, :, t], a_c[:, :, t], local[:, :, previous], out=local[:, :, t])
        torch.mul(a_c[:, :, t], decay[:, :, previous], out=decay[:, :, t])
        previous = t
    last = previous  # the chunk position whose state leaves the chunk

    entering = torch.empty_like(local[:, :, 0])  # [B n P]
    for c in outer:
        entering[:, c] = state
        state = torch.addcmul(local[:, c, last], decay[:, c, last], state)
    local.addcmul_(decay, entering.unsqueeze(2))

    if not reverse:
        run_leftover(range(n_chunks * chunk, length), state)
    return states


def _scan_states(
    a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None, reverse: bool = False
) -> torch.Tensor:
    """:func:`_chunked_scan`'s states, through the C kernel for complex64 on the CPU (the
    chunked scan's many small ops cost far more there than the recurrence itself)."""
    if fused_linear_scan_usable(b):
        return fused_linear_scan(a, b, initial_state, reverse=reverse)
    return _chunked_scan(a, b, initial_state, reverse=reverse)


def _scan_backward(
    a: torch.Tensor, states: torch.Tensor, grad_states: torch.Tensor, initial_state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of ``x_k = a_k x_{k-1} + b_k`` w.r.t. ``b``, ``a`` and ``x_{-1}``.

    With ``g_k = dLoss/dx_k`` (PyTorch's conjugate-Wirtinger convention for complex tensors)
    the adjoint ``λ_k = g_k + conj(a_{k+1}) λ_{k+1}`` runs as a reverse scan; then
    ``dLoss/db_k = λ_k``, ``dLoss/da_k = λ_k conj(x_{k-1})``, ``dLoss/dx_{-1} = conj(a_0) λ_0``.
    """
    a = a.expand_as(states)
    next_decay = torch.empty_like(states)  # conj(a_{k+1}); the last one meets a zero state
    next_decay[:, :-1] = a[:, 1:].conj()
    next_decay[:, -1] = 0
    adjoint = _scan_states(next_decay, grad_states.to(states.dtype), None, reverse=True)  # [B L P]
    del next_decay
    grad_a = torch.empty_like(states)
    torch.mul(adjoint[:, 1:], states[:, :-1].conj(), out=grad_a[:, 1:])
    if initial_state is None:
        grad_a[:, 0] = 0
        grad_initial = None
    else:
        torch.mul(adjoint[:, 0], initial_state.to(states.dtype).conj(), out=grad_a[:, 0])
        grad_initial = (a[:, 0].conj() * adjoint[:, 0]).to(initial_state.dtype)
    return adjoint, grad_a, grad_initial


class _LinearScan(torch.autograd.Function):
    """Differentiable chunked scan; the backward is the adjoint recurrence, run as a scan."""

    @staticmethod
    def forward(ctx, a, b, initial_state):
        states = _scan_states(a, b, initial_state)
        ctx.save_for_backward(a, states, initial_state)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        a, states, initial_state = ctx.saved_tensors
        grad_b, grad_a, grad_initial = _scan_backward(a, states, grad_states, initial_state)
        return grad_a, grad_b, grad_initial


def s5_scan(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``x_k = a_k ⊙ x_{k-1} + b_k`` along dim 1, fast and differentiable.

    Args:
        a: decay, broadcastable to ``b`` (``[B L P]``, ``[B 1 P]`` or ``[P]``), real or complex.
        b: inputs ``[B L P]``, same dtype as ``a``.
        initial_state: ``x_{-1}`` ``[B P]``; zeros when ``None``.

    Returns:
        states ``[B L P]``; equal (up to rounding) to :func:`s5_scan_reference`.

    Example::

        >>> a = torch.full((1, 3, 1), 0.5); b = torch.ones(1, 3, 1)
        >>> s5_scan(a, b).flatten().tolist()
        [1.0, 1.5, 1.75]
    """
    if b.dim() != 3:
        raise ValueError(f"s5_scan: b must be [B L P], got shape {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"s5_scan: a and b must share a dtype, got {a.dtype} and {b.dtype}")
    try:
        a = a.expand_as(b)  # autograd sums the gradient back to a's own shape
    except RuntimeError as error:
        raise ValueError(
            f"s5_scan: a {tuple(a.shape)} does not broadcast to b {tuple(b.shape)}"
        ) from error
    if initial_state is not None and initial_state.shape != (b.shape[0], b.shape[2]):
        raise ValueError(
            f"s5_scan: initial_state must be [B P] = {(b.shape[0], b.shape[2])}, "
            f"got {tuple(initial_state.shape)}"
        )
    return _LinearScan.apply(a, b, initial_state)


def zoh_decay(step_scale: torch.Tensor, base_step: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Zero-order-hold decay ``Λ̄ = exp(ΛΔ)`` with ``Δ = step_scale · base_step`` (differentiable).

    Args:
        step_scale: real, broadcastable to ``[B L 1]``.
        base_step: real ``[P]`` (``exp(log_step)``).
        lam: complex ``[P]`` with ``Re(Λ) < 0``.

    Returns:
        complex ``[B L P]`` (or the broadcast shape). Computed as ``exp(Re ΛΔ)·(cos + i sin)(Im ΛΔ)``
        (complex ``exp`` is several times slower on CPU) and set to exactly 0 where
        ``Re(ΛΔ) < -UNDERFLOW_EXPONENT``: there ``|Λ̄| < 5e-18``, far below fp32 resolution,
        and skipping ``exp`` of huge negative numbers keeps CPUs off their slow denormal path.
    """
    step = step_scale * base_step  # [B L P]
    log_magnitude = step * lam.real  # <= 0
    magnitude = torch.exp(log_magnitude.clamp(min=-UNDERFLOW_EXPONENT))
    magnitude = magnitude * (log_magnitude >= -UNDERFLOW_EXPONENT)
    return torch.polar(magnitude, step * lam.imag)


class _ZOHScan(torch.autograd.Function):
    """Fused ZOH discretisation + scan: states of ``x_k = Λ̄_k x_{k-1} + (Λ̄_k - 1) v_k``.

    Only ``v``, the states and ``step_scale`` are kept for the backward (``Λ̄`` is recomputed
    there), so training stores two ``[B L P]`` complex tensors for the whole layer.
    """

    @staticmethod
    def forward(ctx, step_scale, base_step, lam, scaled_input, initial_state):
        with torch.no_grad():
            lam_bar = zoh_decay(step_scale, base_step, lam)  # [B L P]
            drive = (lam_bar - 1) * scaled_input
            states = _scan_states(lam_bar, drive, initial_state)
        ctx.save_for_backward(step_scale, base_step, lam, scaled_input, states, initial_state)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        # Works with μ = conj(λ), the conjugated adjoint, so no product needs a conjugated
        # operand (PyTorch materialises those): μ_k = conj(g_k) + Λ̄_{k+1} μ_{k+1}, and each
        # gradient is the conjugate of a plain product.
        step_scale, base_step, lam, scaled_input, states, initial_state = ctx.saved_tensors
        lam_bar = zoh_decay(step_scale, base_step, lam).expand_as(states)  # [B L P]
        next_decay = torch.empty_like(states)  # Λ̄_{k+1}; the last one meets a zero state
        next_decay[:, :-1] = lam_bar[:, 1:]
        next_decay[:, -1] = 0
        adjoint_conj = _scan_states(next_decay, grad_states.conj_physical(), None, reverse=True)  # μ
        del next_decay

        grad_initial = None
        if initial_state is not None and ctx.needs_input_grad[4]:
            grad_initial = (lam_bar[:, 0] * adjoint_conj[:, 0]).conj_physical_().to(initial_state.dtype)
        # drive = (Λ̄ - 1) v  ->  dLoss/dv = conj(μ (Λ̄ - 1))
        grad_input = (lam_bar - 1).mul_(adjoint_conj).conj_physical_()  # [B L P]
        # Λ̄_k multiplies x_{k-1} and v_k  ->  dLoss/dΛ̄ = conj(μ (x_{k-1} + v_k))
        source = scaled_input.clone()  # x_{k-1} + v_k
        source[:, 1:] += states[:, :-1]
        if initial_state is not None:
            source[:, 0] += initial_state.to(states.dtype)
        # Λ̄ = exp(ΛΔ): dLoss/dΛ = Σ Δ G conj(Λ̄), dLoss/dΔ = Re(G conj(Λ Λ̄)), G = dLoss/dΛ̄
        weighted_conj = source.mul_(adjoint_conj).mul_(lam_bar)  # conj(G conj(Λ̄)) [B L P]
        step = step_scale * base_step  # [B L P] (or broadcastable)
        grad_lam = (weighted_conj * step).sum(dim=(0, 1)).conj()  # [P]
        grad_step = (weighted_conj * lam).real  # [B L P]
        grad_base_step = (grad_step * step_scale).sum(dim=(0, 1))  # [P]
        grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_scale = (grad_step * base_step).sum(-1, keepdim=True).sum_to_size(step_scale.shape)
        return grad_scale, grad_base_step, grad_lam, grad_input, grad_initial


def zoh_scan(
    step_scale: torch.Tensor,
    base_step: torch.Tensor,
    lam: torch.Tensor,
    scaled_input: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """S5 states with ``Λ̄ = exp(ΛΔ)``, ``B̄u = (Λ̄ - 1) ⊙ (B̃u / Λ)``, ``Δ = step_scale·base_step``.

    Equal (up to rounding) to ``s5_scan_reference(Λ̄, (Λ̄ - 1) * scaled_input, initial_state)``
    with ``Λ̄ = zoh_decay(step_scale, base_step, lam)``, with gradients for every argument.

    Args:
        step_scale: real ``[B L 1]``, ``[B 1 1]`` or ``[1 1 1]``.
        base_step: real ``[P]``.
        lam: complex ``[P]``, ``Re(Λ) < 0``.
        scaled_input: ``B̃u / Λ``, complex ``[B L P]``.
        initial_state: complex ``[B P]`` or ``None`` (zeros).

    Example::

        >>> lam = torch.tensor([-1.0 + 2.0j]); v = torch.ones(1, 4, 1, dtype=torch.complex64)
        >>> zoh_scan(torch.ones(1, 4, 1), torch.ones(1), lam, v).shape
        torch.Size([1, 4, 1])
    """
    if scaled_input.dim() != 3 or lam.shape != scaled_input.shape[-1:]:
        raise ValueError(
            f"zoh_scan: need scaled_input [B L P] and lam [P], got {tuple(scaled_input.shape)} "
            f"and {tuple(lam.shape)}"
        )
    if fused_zoh_scan_usable(scaled_input) and step_scale.dim() == 3:
        # complex64 on the CPU: one C pass each way (ss4rec.ssm.scan_fused), same maths
        return fused_zoh_scan(step_scale, base_step, lam, scaled_input, initial_state, UNDERFLOW_EXPONENT)
    return _ZOHScan.apply(step_scale, base_step, lam, scaled_input, initial_state)


# --------------------------------------------------------------------------------------------
# Initialisation (same distributions and random-number use as s5-pytorch 0.2.1)
# --------------------------------------------------------------------------------------------

# 1 / (std of a standard normal truncated to [-2, 2]): rescales the truncated draw to unit
# variance, as JAX's lecun_normal (and s5-pytorch's port of it) does.
_TRUNCATED_NORMAL_UNIT_STD = 0.87962566103423978


def make_dplr_hippo(state_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the normal part of HiPPO-LegS, ``S = V diag(Λ) V*``.

    Returns ``(Lambda [P] complex128, V [P P] complex128)``; ``Re(Λ) = -0.5`` everywhere.

    Example::

        >>> lam, v = make_dplr_hippo(4)
        >>> bool(np.allclose(lam.real, -0.5))
        True
    """
    n = np.arange(state_width)
    scale = np.sqrt(2 * n + 1.0)
    # HiPPO-LegS: A[i, j] = -sqrt(2i+1) sqrt(2j+1) below the diagonal, -(i+1) on it, 0 above.
    hippo = -(np.tril(np.outer(scale, scale)) - np.diag(n))
    low_rank = np.sqrt(n + 0.5)
    normal = hippo + np.outer(low_rank, low_rank)  # = -0.5 I + skew-symmetric
    # -i * (skew part) is Hermitian: its real eigenvalues are Im(Λ). eigh reads only the
    # lower triangle and the real diagonal, so this is the decomposition s5-pytorch gets.
    imag, eigenvectors = np.linalg.eigh(normal * -1j)
    real = np.mean(np.diagonal(normal)) * np.ones(state_width)
    return real + 1j * imag, eigenvectors


def _truncated_normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """fp32 normal(0, std²)-scaled draw truncated to ±2 (pre-scaling), by inverse CDF."""
    low, high = math.erf(-2.0 / math.sqrt(2.0)), math.erf(2.0 / math.sqrt(2.0))
    uniform = torch.rand(shape) * (high - low) + low
    draw = math.sqrt(2.0) * torch.erfinv(uniform)
    # keep strictly inside (-2, 2): erfinv of the interval's edge would give ±2 or inf
    inner = torch.nextafter(torch.tensor(2.0), torch.tensor(0.0)).item()
    return draw.clamp(-inner, inner) * (std * _TRUNCATED_NORMAL_UNIT_STD)


class S5StateSpace(nn.Module):
    """Parameters of one S5 SSM, stored exactly as s5-pytorch's ``S5SSM`` stores them.

    * ``Lambda`` ``[P]`` complex64: diagonal continuous-time state matrix.
    * ``B`` ``[P H 2]`` float32: ``B̃ = V⁻¹ B`` as (real, imag) pairs.
    * ``C`` ``[H P]`` complex64: ``C̃ = C V``.
    * ``D`` ``[H]`` float32: skip connection.
    * ``log_step`` ``[P]`` float32: log of the per-state base step.
    """

    def __init__(self, width: int, state_width: int, dt_min: float, dt_max: float):
        super().__init__()
        lambda_init, eigenvectors = make_dplr_hippo(state_width)
        eigenvectors = torch.tensor(eigenvectors, dtype=torch.complex64)  # [P P]
        inverse = eigenvectors.conj().T  # V is unitary

        self.Lambda = nn.Parameter(torch.tensor(lambda_init, dtype=torch.complex64))
        # Draw order (B, C, D, log_step) follows s5-pytorch so a seed gives the same init.
        input_matrix = _truncated_normal((state_width, width), std=math.sqrt(1.0 / state_width))
        b_tilde = inverse @ input_matrix.to(torch.complex64)  # [P H]
        self.B = nn.Parameter(torch.stack([b_tilde.real, b_tilde.imag], dim=-1))
        # s5-pytorch's lecun_normal on an (H, P, 2) shape uses fan-in H·P.
        output_pairs = _truncated_normal((width, state_width, 2), std=math.sqrt(1.0 / (width * state_width)))
        output_matrix = torch.complex(output_pairs[..., 0], output_pairs[..., 1])  # [H P]
        self.C = nn.Parameter(output_matrix @ eigenvectors)
        self.D = nn.Parameter(torch.rand(width))
        log_min, log_max = math.log(dt_min), math.log(dt_max)
        draws = [torch.rand(1) for _ in range(state_width)]  # one draw per state, as s5-pytorch
        self.log_step = nn.Parameter(torch.cat(draws) * (log_max - log_min) + log_min)

    def stable_lambda(self, complex_dtype: torch.dtype) -> torch.Tensor:
        """``Λ`` with ``Re(Λ)`` clamped to ``<= LAMBDA_REAL_MAX`` (so ``|exp(ΛΔ)| <= 1``). ``[P]``"""
        lam = self.Lambda.to(complex_dtype)
        return torch.complex(lam.real.clamp(max=LAMBDA_REAL_MAX), lam.imag)

    def input_projection(self, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``(B̃ u) / Λ`` for real ``u [B L H]`` -> complex ``[B L P]`` (one real matmul).

        Folding ``1/Λ`` (from the ZOH factor ``(Λ̄ - 1)/Λ``) into the ``[P H]`` weight saves a
        full ``[B L P]`` division.
        """
        state_width = self.B.shape[0]
        b_tilde = torch.complex(self.B[..., 0], self.B[..., 1]).to(lam.dtype)  # [P H]
        scaled = torch.view_as_real(b_tilde / lam[:, None])  # [P H 2]
        # rows (p, real), (p, imag) interleaved so the product views as complex without a copy
        weight = scaled.permute(0, 2, 1).reshape(2 * state_width, -1).to(u.dtype)  # [2P H]
        pairs = (u @ weight.T).unflatten(-1, (state_width, 2))  # [B L P 2]
        return torch.view_as_complex(pairs)

    def output_projection(self, states: torch.Tensor, real_dtype: torch.dtype) -> torch.Tensor:
        """``Re(C̃ x)`` for complex ``x [B L P]`` -> real ``[B L H]`` (one real matmul)."""
        c = self.C.to(states.dtype)
        # Re(C x) = C_re x_re - C_im x_im, laid out to match view_as_real(x)'s (p, re/im) pairs
        weight = torch.stack([c.real, -c.imag], dim=-1).flatten(1).to(real_dtype)  # [H 2P]
        return torch.view_as_real(states).flatten(-2) @ weight.T


class S5(nn.Module):
    """Time-aware S5 layer (single SSM, zero-order hold), drop-in for s5-pytorch's ``S5``.

    Args:
        width: ``H``, the feature size of input and output.
        state_width: ``P``, the number of complex states (default ``width``).
        dt_min, dt_max: range of the initial per-state base steps ``exp(log_step)``.
        factor_rank, block_count, liquid, degree, bidir, bcInit: accepted for signature
            compatibility with s5-pytorch; only their defaults (``bcInit`` None or "dense")
            are supported.

    Call ``layer(x, step_scale)`` with ``x [B L H]`` and ``step_scale`` a python number, a 0-d
    tensor, ``[B]`` (one step per sequence) or ``[B L]`` (one step per position, e.g. time
    gaps); the effective step of state ``p`` at position ``k`` is
    ``step_scale[b, k] * exp(log_step[p])``. Returns ``[B L H]`` (and the last state ``[B P]``
    when ``return_state=True``). See the module docstring for an example.
    """

    def __init__(
        self,
        width: int,
        state_width: int | None = None,
        factor_rank: int | None = None,
        block_count: int = 1,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        liquid: bool = False,
        degree: int = 1,
        bidir: bool = False,
        bcInit: str | None = None,  # noqa: N803 - s5-pytorch's argument name
    ):
        super().__init__()
        unsupported = {
            "factor_rank": (factor_rank, None),
            "block_count": (block_count, 1),
            "liquid": (liquid, False),
            "degree": (degree, 1),
            "bidir": (bidir, False),
        }
        for name, (value, default) in unsupported.items():
            if value != default:
                raise ValueError(
                    f"S5: {name}={value!r} is not supported by ss4rec's S5 (SS4Rec does not use it); "
                    f"leave it at {default!r} or use s5-pytorch's s5.S5 directly"
                )
        if bcInit not in (None, "dense"):
            raise ValueError(f"S5: bcInit={bcInit!r} is not supported; only 'dense' (the default) is")
        state_width = state_width or width
        if width <= 0 or state_width <= 0:
            raise ValueError(f"S5: width and state_width must be positive, got {width}, {state_width}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S5: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.width = width
        self.state_width = state_width
        self.seq = S5StateSpace(width, state_width, dt_min, dt_max)
        # Where bad step_scale values raise: None = at once on the CPU, deferred elsewhere
        # (counted on the device until raise_deferred_errors); True/False force one way.
        self.defer_step_checks: bool | None = None
        self._bad_steps: torch.Tensor | None = None  # the deferred count

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Zero state ``[B P]`` complex64, for ``forward(..., state=...)``."""
        return torch.zeros(batch_size, self.state_width, dtype=torch.complex64, device=self.seq.Lambda.device)

    def forward(
        self,
        signal: torch.Tensor,
        step_scale: float | torch.Tensor = 1.0,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ):
        if signal.dim() != 3 or signal.shape[-1] != self.width:
            raise ValueError(
                f"S5.forward: signal must be [B L H] with H={self.width}, got shape {tuple(signal.shape)}"
            )
        batch, length, _ = signal.shape
        real_dtype = torch.float64 if signal.dtype == torch.float64 else torch.float32
        complex_dtype = torch.complex128 if real_dtype == torch.float64 else torch.complex64
        with _autocast_off(signal.device.type):
            u = signal.to(real_dtype)  # [B L H]
            scale = self._step(step_scale, batch, length, u)  # [1 1 1], [B 1 1] or [B L 1]
            # zero-order hold: Λ̄ = exp(ΛΔ), B̄u = (Λ̄ - 1)/Λ ⊙ B̃u
            lam = self.seq.stable_lambda(complex_dtype)  # [P]
            base_step = self.seq.log_step.to(real_dtype).exp()  # [P]
            scaled_input = self.seq.input_projection(u, lam)  # B̃u / Λ  [B L P]
            if state is not None:
                if state.shape != (batch, self.state_width):
                    raise ValueError(
                        f"S5.forward: state must be [B P] = {(batch, self.state_width)}, "
                        f"got {tuple(state.shape)}"
                    )
                state = state.to(complex_dtype)
            states = zoh_scan(scale, base_step, lam, scaled_input, state)  # [B L P]
            out = self.seq.output_projection(states, real_dtype) + self.seq.D.to(real_dtype) * u
        if return_state:
            return out, states[:, -1]
        return out

    def _step(self, step_scale, batch: int, length: int, u: torch.Tensor) -> torch.Tensor:
        """``step_scale`` as a tensor broadcastable to ``[B L 1]``, checked finite and >= 0."""
        if isinstance(step_scale, (int, float)) and not isinstance(step_scale, bool):
            if not (math.isfinite(step_scale) and step_scale >= 0):
                raise ValueError(_bad_step_message([step_scale]))
            return u.new_full((1, 1, 1), float(step_scale))  # no host-to-device copy
        scale = torch.as_tensor(step_scale, dtype=u.dtype, device=u.device)
        if scale.dim() == 0:
            scale = scale.reshape(1, 1, 1)
        elif scale.shape == (batch,):
            scale = scale.reshape(batch, 1, 1)  # one step per sequence
        elif scale.shape == (batch, length):
            scale = scale.unsqueeze(-1)  # one step per position
        else:
            raise ValueError(
                f"S5.forward: step_scale must be a number, [B]={batch} or [B L]={(batch, length)}, "
                f"got shape {tuple(scale.shape)}"
            )
        # negative or non-finite gaps would make |exp(ΛΔ)| blow up (unsorted timestamps, NaNs)
        bad = ~(torch.isfinite(scale) & (scale >= 0))
        defer = self.defer_step_checks
        if not (scale.device.type != "cpu" if defer is None else defer):
            if bool(bad.any()):
                raise ValueError(_bad_step_message(scale[bad].flatten()[:5].tolist()))
        else:  # counted on the device; raise_deferred_errors reads it (no sync per call)
            count = bad.sum()
            self._bad_steps = count if self._bad_steps is None else self._bad_steps + count
        return scale

    def raise_deferred_error(self) -> None:
        """Raise the ``ValueError`` for bad ``step_scale`` values counted on the device since the
        last call (reads one number back from the device); nothing when there were none."""
        count, self._bad_steps = self._bad_steps, None
        if count is not None and int(count) > 0:
            raise ValueError(_bad_step_message(f"{int(count)} values"))


def _bad_step_message(found) -> str:
    return (f"S5.forward: step_scale must be finite and >= 0 (time gaps), found e.g. {found}; "
            "sort events by time and replace missing gaps by 0")


def raise_deferred_errors(module: nn.Module) -> None:
    """Raise the first error an :class:`S5` layer in ``module`` deferred on a GPU (see the
    module docstring); call it where reading back from the device costs nothing extra."""
    for layer in module.modules():
        if isinstance(layer, S5):
            layer.raise_deferred_error()


def _autocast_off(device_type: str):
    """Autocast disabled on ``device_type``; nothing to disable where autocast does not exist
    (the ``meta`` device: models are checked there without data)."""
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if device_type in ("cpu", "cuda") or (available is not None and available(device_type)):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()

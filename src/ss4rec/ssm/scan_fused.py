"""Fused CPU kernels for Mamba (selective scan + skip and gate; causal conv + SiLU) and S5.

Small C kernels (``scan_fused.c`` beside this file), built with the system C compiler on
first use. The scan computes the same maths as :func:`ss4rec.ssm.scan.selective_scan`,
optionally followed by Mamba's skip and gate (``(y + D * u) * silu(z)``)::

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n]

Why kernels: the pure-PyTorch scan streams ``[B, L, D, N]`` tensors through memory about
fifteen times per forward+backward (one pass per op). Here 16 channels of one batch row
run their recurrence together as one vector, read straight from the ``[B, L, D]`` tensors,
with the ``N`` states in L1 and sums over them carried in registers; the backward
recomputes those states (and decays) tile by tile (32 steps, restarted from the states the
forward kept at tile boundaries -- a few MB --, so the working set does not grow with L) and
walks back through them. Nothing of size ``[B, L, D, N]`` is allocated; the inputs and the
tile-boundary states are saved for the backward. Built with ``-ffp-contract=fast``: the
recurrence and the exp polynomial use fused multiply-adds (one rounding instead of two). Mamba's
depthwise causal conv + SiLU gets the same treatment (PyTorch's grouped ``conv1d``
backward is slow on CPU). Denormals are flushed inside the kernels (the backward's carried
gradients decay into that range, where x86 is ~100x slower); the caller's FP mode is kept.

How it is built: plain C (no PyTorch headers, so the build takes about a second and needs
no ``ninja``), compiled with ``cc -O3 -march=native -fopenmp -shared`` into
``$SS4REC_CACHE_DIR`` (default ``~/.cache/ss4rec``)``/scan_fused`` under a name hashed from
the source, flags and CPU, and loaded with :mod:`ctypes` (calls release the GIL). Batch
rows are split over an OpenMP team of ``torch.get_num_threads()`` threads on PyTorch's own
libgomp (so no second thread pool competes for the cores); a compiler without OpenMP gives
a single-threaded build. ``exp`` is a vectorisable range-reduced polynomial (error below
float32 rounding) instead of libm's scalar ``expf``.

S5 (:mod:`ss4rec.ssm.s5`) gets two more: :func:`fused_zoh_scan` (zero-order-hold
discretisation ``Λ̄ = exp(ΛΔ)`` and the complex recurrence, forward and backward, one pass
each way per batch row) and :func:`fused_linear_scan` (the bare complex recurrence,
forward or reverse). Each has a plain torch twin in :mod:`ss4rec.ssm.s5` and an equivalence
test against the complex128 per-step loop (tests/test_scan_fused.py).

Scope: float32 (complex64 for S5) compute on CPU tensors. :func:`fused_scan_available` says whether the
kernels built here (and why not; a failure is logged once as a warning);
:func:`fused_scan_usable` whether they apply to a tensor; :func:`fused_selective_scan` and
:func:`fused_causal_conv1d_silu` raise when unavailable, so callers choose the fallback
explicitly (:class:`ss4rec.ssm.mamba.Mamba` falls back to the pure-PyTorch path). Set
``SS4REC_FUSED_SCAN=0`` to disable the kernels.

Example::

    >>> import torch
    >>> from ss4rec.ssm.scan_fused import fused_scan_available, fused_selective_scan
    >>> ok, why = fused_scan_available()
    >>> b, l, d, n = 2, 7, 4, 3
    >>> u, delta = torch.randn(b, l, d), torch.rand(b, l, d) * 0.1
    >>> A, B, C = -torch.rand(d, n), torch.randn(b, l, n), torch.randn(b, l, n)
    >>> y = fused_selective_scan(u, delta, A, B, C) if ok else None   # [B L D]
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from ss4rec.ssm.scan import _check_shapes

logger = logging.getLogger(__name__)

DISABLE_ENV = "SS4REC_FUSED_SCAN"  # "0" turns the kernel off
CACHE_ENV = "SS4REC_CACHE_DIR"
# -fno-trapping-math lets gcc vectorise fast_exp's float->int step (no -ffast-math: it
# would reassociate sums and, linked into a shared library, can flush denormals process-wide)
COMPILE_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-fno-trapping-math", "-ffp-contract=fast")
# OpenMP: links libgomp.so.1, which resolves to the copy PyTorch has already loaded, so the
# kernels share PyTorch's thread pool instead of fighting it for cores
OPENMP_FLAGS = ("-fopenmp",)
# x86 with AVX-512: one 16-lane register per channel block (faster than two AVX2 halves)
TUNING_FLAGS = ("-mprefer-vector-width=512",)

# The kernels' C source, shipped beside this file as package data.
C_SOURCE_FILE = Path(__file__).with_name("scan_fused.c")


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ss4rec"
    return Path(root) / "scan_fused"


def _cpu_tag() -> str:
    """What -march=native depends on: the CPU model and flags (a cache shared across
    machines must not hand one CPU's binary to another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise RuntimeError("no C compiler found (looked for $CC, cc, gcc, clang); install gcc")


def _build() -> ctypes.CDLL:
    """Compile (once per source/flags/CPU; cached on disk) and load the kernel."""
    compiler = _compiler()
    source_text = C_SOURCE_FILE.read_text(encoding="utf-8")
    key = hashlib.sha256("\0".join((source_text, compiler, *COMPILE_FLAGS, *TUNING_FLAGS, *OPENMP_FLAGS, _cpu_tag())).encode())
    target = _cache_dir() / f"scan_fused_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            errors = []
            # tuning flags are x86-only, and some compilers (clang on arm) reject -march=native
            portable = tuple(f for f in COMPILE_FLAGS if f != "-march=native")
            attempts = (
                COMPILE_FLAGS + TUNING_FLAGS + OPENMP_FLAGS,
                COMPILE_FLAGS + OPENMP_FLAGS,
                COMPILE_FLAGS,  # no OpenMP (e.g. Apple clang): one thread per call
                portable,
            )
            for flags in attempts:
                proc = subprocess.run(
                    [compiler, *flags, str(C_SOURCE_FILE), "-o", str(built), "-lm"],
                    capture_output=True, text=True, timeout=120,
                )
                if proc.returncode == 0:
                    break
                errors.append(proc.stderr.strip()[-600:])
            else:
                raise RuntimeError(f"{compiler} failed: {errors[-1]}")
            os.replace(built, target)  # atomic: concurrent builders never see half a file
    lib = ctypes.CDLL(str(target))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    strided = [ptr, i64, i64]  # a tensor with (batch, step) strides
    lib.scan_forward.argtypes = [ptr] * 3 + strided * 2 + [ptr] + strided + [ptr] * 3 + [i64] * 5
    lib.scan_backward.argtypes = [ptr] * 3 + strided * 2 + [ptr] + strided + [ptr] * 10 + [i64] * 5
    lib.scan_boundary_floats.argtypes = [i64] * 3
    lib.scan_boundary_floats.restype = i64
    lib.conv_forward.argtypes = strided + [ptr] * 4 + [i64] * 5
    lib.conv_backward.argtypes = strided + [ptr] * 7 + [i64] * 5
    lib.complex_scan.argtypes = [ptr, i64, i64, ptr, ptr, ptr] + [i64] * 5
    lib.zoh_forward.argtypes = [ptr, i64, i64, ptr, ptr, ctypes.c_float] + [ptr] * 4 + [i64] * 4
    lib.zoh_backward.argtypes = [ptr, i64, i64] + [ptr] * 12 + [i64] * 4
    lib.dropout_mask.argtypes = [ptr, i64, ctypes.c_uint64, ctypes.c_float, ctypes.c_float, i64]
    for kernel in (lib.scan_forward, lib.scan_backward, lib.conv_forward, lib.conv_backward,
                   lib.complex_scan, lib.zoh_forward, lib.zoh_backward, lib.dropout_mask):
        kernel.restype = None
    return lib


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[object, str]:
    """The loaded kernel (or None) and why; built and logged at most once per process."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    try:
        return _build(), f"built with {_compiler()} into {_cache_dir()}"
    except Exception as exc:  # compiler missing/failing, unwritable cache, odd platform
        reason = f"fused CPU selective scan unavailable ({type(exc).__name__}: {exc})"
        logger.warning("%s; using the pure-PyTorch chunked scan instead", reason)
        return None, reason


def fused_scan_available() -> Tuple[bool, str]:
    """Whether the C kernel is usable in this process, and why (or why not).

    >>> ok, reason = fused_scan_available()
    """
    lib, reason = _load()
    return lib is not None, reason


def _rows(t: Optional[Tensor]) -> list:
    """[pointer, batch stride, step stride] of a [B L F] tensor with contiguous features."""
    return [None, 0, 0] if t is None else [t.data_ptr(), t.stride(0), t.stride(1)]


class _FusedScanFn(torch.autograd.Function):
    """float32 CPU inputs: u, delta [B L D] contiguous; A [D N], D_skip [D] contiguous;
    B, C [B L N] and z [B L D] (or None) with contiguous last dimension (views are fine);
    lengths int64 [B] contiguous, in [0, L], or None."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D_skip, z, lengths):
        lib, _ = _load()
        batch, length, d_inner = u.shape
        y = torch.empty_like(u)  # [B L D]
        head = [u.data_ptr(), delta.data_ptr(), A.data_ptr(), *_rows(B), *_rows(C), D_skip.data_ptr(), *_rows(z)]
        # With gradients to come, the forward keeps the state entering every time tile of
        # every (row, channel block) (a few MB), so the backward need not rerun the scan to find them.
        boundaries = None
        if any(ctx.needs_input_grad):
            boundaries = u.new_empty(batch, lib.scan_boundary_floats(length, d_inner, A.shape[1]))
        lib.scan_forward(*head, y.data_ptr(), None if boundaries is None else boundaries.data_ptr(),
                         _ptr(lengths), batch, length, d_inner, A.shape[1], _threads(batch))
        ctx.save_for_backward(u, delta, A, B, C, D_skip, z, boundaries, lengths)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        lib, _ = _load()
        u, delta, A, B, C, D_skip, z, boundaries, lengths = ctx.saved_tensors
        batch, length, d_inner = u.shape
        d_state = A.shape[1]
        grad_y = grad_y.to(torch.float32).contiguous()
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
        grad_z = None if z is None else torch.empty_like(u)
        grad_B = u.new_empty(batch, length, d_state)
        grad_C = u.new_empty(batch, length, d_state)
        threads = _threads(batch)
        # grad_A and grad_D sum over the batch: one slot per thread, summed here
        grad_A_parts = A.new_zeros(threads, d_inner, d_state)
        grad_D_parts = A.new_zeros(threads, d_inner)
        head = [u.data_ptr(), delta.data_ptr(), A.data_ptr(), *_rows(B), *_rows(C), D_skip.data_ptr(), *_rows(z)]
        lib.scan_backward(
            *head, boundaries.data_ptr(), grad_y.data_ptr(), grad_u.data_ptr(), grad_delta.data_ptr(),
            None if grad_z is None else grad_z.data_ptr(), grad_A_parts.data_ptr(),
            grad_B.data_ptr(), grad_C.data_ptr(), grad_D_parts.data_ptr(), _ptr(lengths),
            batch, length, d_inner, d_state, threads,
        )
        return grad_u, grad_delta, grad_A_parts.sum(0), grad_B, grad_C, grad_D_parts.sum(0), grad_z, None


def _threads(batch: int) -> int:
    """Threads for one kernel call: PyTorch's intra-op count, at most one per batch row."""
    return max(1, min(torch.get_num_threads(), batch))


class _FusedConvSiluFn(torch.autograd.Function):
    """x [B L D] float32 with stride(-1) == 1; weight [K D] and bias [D] contiguous float32;
    lengths int64 [B] contiguous, in [0, L], or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, lengths):
        lib, _ = _load()
        batch, length, channels = x.shape
        out = x.new_empty(batch, length, channels)  # [B L D]
        lib.conv_forward(*_rows(x), weight.data_ptr(), bias.data_ptr(), out.data_ptr(), _ptr(lengths),
                         batch, length, channels, weight.shape[0], _threads(batch))
        ctx.save_for_backward(x, weight, bias, lengths)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        lib, _ = _load()
        x, weight, bias, lengths = ctx.saved_tensors
        batch, length, channels = x.shape
        taps = weight.shape[0]
        grad_out = grad_out.to(torch.float32).contiguous()
        grad_x = torch.empty(batch, length, channels, dtype=torch.float32)
        threads = _threads(batch)
        grad_w_parts = weight.new_zeros(threads, taps, channels)  # one slot per thread
        grad_b_parts = bias.new_zeros(threads, channels)
        lib.conv_backward(*_rows(x), weight.data_ptr(), bias.data_ptr(), grad_out.data_ptr(),
                          grad_x.data_ptr(), grad_w_parts.data_ptr(), grad_b_parts.data_ptr(),
                          _ptr(lengths), batch, length, channels, taps, threads)
        return grad_x, grad_w_parts.sum(0), grad_b_parts.sum(0), None


def fused_causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                             lengths: Optional[Tensor] = None) -> Tensor:
    """``silu(causal depthwise conv1d(x))`` through the C kernel (CPU, float32 compute).

    x ``[B, L, D]`` (any strides; a view with contiguous channels is read in place);
    weight ``[D, 1, K]`` as ``nn.Conv1d(D, D, K, groups=D).weight`` (tap K-1 multiplies
    the current step); bias ``[D]`` or None. Returns ``[B, L, D]`` in x's dtype, equal to
    ``silu(conv1d(x.transpose(1, 2), weight, bias, padding=K-1, groups=D)[..., :L]).transpose(1, 2)``.
    ``lengths`` (``[B]``, optional): real steps per row of a right-padded batch; the padding
    is skipped (see :func:`fused_selective_scan`).

    >>> conv = torch.nn.Conv1d(8, 8, 4, groups=8, padding=3)
    >>> out = fused_causal_conv1d_silu(torch.randn(2, 5, 8), conv.weight, conv.bias)  # [2 5 8]
    """
    if x.dim() != 3 or weight.dim() != 3 or weight.shape[0] != x.shape[2] or weight.shape[1] != 1:
        raise ValueError(
            f"fused_causal_conv1d_silu: expected x [B, L, D] and weight [D, 1, K], got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"fused_causal_conv1d_silu: {reason}")
    x32 = x.to(torch.float32)
    if x32.stride(2) != 1:
        x32 = x32.contiguous()
    weight_kd = weight[:, 0, :].t().to(torch.float32).contiguous()  # [K D]
    bias32 = (bias if bias is not None else weight.new_zeros(weight.shape[0])).to(torch.float32).contiguous()
    lengths = _lengths(lengths, x.shape[0], x.shape[1], "fused_causal_conv1d_silu")
    return _FusedConvSiluFn.apply(x32, weight_kd, bias32, lengths).to(x.dtype)  # [B L D]


def _lengths(lengths: Optional[Tensor], batch: int, length: int, caller: str) -> Optional[Tensor]:
    """``lengths`` as the kernels read it (int64 ``[B]`` in ``[0, L]``, contiguous), or None."""
    if lengths is None:
        return None
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"{caller}: lengths must be integers of shape [B]={(batch,)}, got "
                         f"{lengths.dtype} {tuple(lengths.shape)}")
    return lengths.to(device="cpu", dtype=torch.int64).clamp(0, length).contiguous()


def fused_scan_usable(delta: Tensor) -> bool:
    """Whether ``fused_selective_scan`` would run for a scan whose ``delta`` is this tensor
    (float32-or-narrower on CPU, kernel built); callers fall back to the torch scan otherwise.

    >>> use_fused = fused_scan_usable(torch.rand(2, 5, 8))
    """
    return delta.device.type == "cpu" and delta.dtype != torch.float64 and _load()[0] is not None


def _check_supported(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    _check_shapes(u, delta, A, B, C)
    for name, tensor in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if tensor.device.type != "cpu":
            raise ValueError(
                f"fused_selective_scan: {name} is on {tensor.device}; the fused kernel is CPU-only "
                "(use ss4rec.ssm.scan.selective_scan on other devices)"
            )
        if tensor.dtype == torch.float64:
            raise ValueError(
                f"fused_selective_scan: {name} is float64; the kernel computes in float32 "
                "(use ss4rec.ssm.scan.selective_scan for float64)"
            )


def fused_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                         lengths: Optional[Tensor] = None) -> Tensor:
    """Selective scan through the fused C kernel (CPU, float32 compute).

    Shapes: u, delta ``[B, L, D]``; A ``[D, N]``; B, C ``[B, L, N]``; optional skip D
    ``[D]`` and gate z ``[B, L, D]``. Returns ``(scan + D * u) * silu(z)`` (Mamba's output
    before ``out_proj``; plain ``scan`` when both are None), ``[B, L, D]`` in u's dtype.
    ``lengths`` (integers ``[B]``, optional): the real steps of each row of a right-padded
    batch. Steps from ``lengths[b]`` on are skipped: their outputs are 0 and gradients to
    them are ignored (0 when the padding's outputs are unused, as in a model that reads only
    real positions); every output and gradient of the real steps is then the same, bit for
    bit, as without ``lengths``.
    Gradients flow to every tensor given. Raises RuntimeError when the kernel is
    unavailable (see :func:`fused_scan_available`), ValueError for CUDA or float64 inputs.
    """
    _check_supported(u, delta, A, B, C)
    d_inner = u.shape[2]
    if D is not None and D.shape != (d_inner,):
        raise ValueError(f"fused_selective_scan: D must be [d_inner={d_inner}], got {tuple(D.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"fused_selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"fused_selective_scan: {reason}")
    if D is None:
        D = u.new_zeros(d_inner, dtype=torch.float32)
    u32, delta32, A32, D32 = (t.to(torch.float32).contiguous() for t in (u, delta, A, D))
    # B, C, z may stay strided views (read in place) as long as their last dimension is dense
    B32, C32, z32 = (None if t is None else _dense_last(t.to(torch.float32)) for t in (B, C, z))
    lengths = _lengths(lengths, u.shape[0], u.shape[1], "fused_selective_scan")
    return _FusedScanFn.apply(u32, delta32, A32, B32, C32, D32, z32, lengths).to(u.dtype)  # [B L D]


def _dense_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def fused_linear_scan_usable(b: Tensor) -> bool:
    """Whether :func:`fused_linear_scan` runs for inputs ``b`` (complex64 on the CPU, kernel built);
    callers fall back to the chunked torch scan of :mod:`ss4rec.ssm.s5` otherwise.

    >>> use_fused = fused_linear_scan_usable(torch.zeros(2, 5, 4, dtype=torch.complex64))
    """
    return b.device.type == "cpu" and b.dtype == torch.complex64 and _load()[0] is not None


@torch.no_grad()
def fused_linear_scan(a: Tensor, b: Tensor, initial_state: Optional[Tensor] = None,
                      reverse: bool = False) -> Tensor:
    """S5's recurrence through the C kernel: all states ``[B, L, P]`` complex64, no autograd.

    Forward: ``x_k = a_k x_{k-1} + b_k`` from ``x_{-1} = initial_state``; ``reverse=True``:
    ``x_k = a_k x_{k+1} + b_k`` from ``x_L = initial_state`` (zeros when None). ``a``
    broadcasts to ``b`` (``[B L P]``, ``[B 1 P]``, ``[1 1 P]``, read in place). Same contract
    as ``ss4rec.ssm.s5._chunked_scan``, the torch implementation it replaces on the CPU.

    >>> a = torch.full((1, 3, 1), 0.5 + 0j, dtype=torch.complex64)
    >>> b = torch.ones(1, 3, 1, dtype=torch.complex64)
    >>> fused_linear_scan(a, b).real.flatten().tolist() if fused_linear_scan_usable(b) else [1.0, 1.5, 1.75]
    [1.0, 1.5, 1.75]
    """
    if b.dim() != 3 or b.dtype != torch.complex64 or b.device.type != "cpu":
        raise ValueError(f"fused_linear_scan: b must be complex64 [B, L, P] on the CPU, got "
                         f"{b.dtype} {tuple(b.shape)} on {b.device}")
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"fused_linear_scan: {reason}")
    batch, length, width = b.shape
    a = a.to(torch.complex64).expand_as(b)
    if a.stride(2) != 1:
        a = a.contiguous()
    b = b.contiguous()
    states = torch.empty_like(b)  # [B L P]
    init = None if initial_state is None else initial_state.to(torch.complex64).contiguous()
    if length > 0:
        lib.complex_scan(a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(),
                         None if init is None else init.data_ptr(), states.data_ptr(),
                         batch, length, width, int(reverse), _threads(batch))
    return states


def _ptr(t: Optional[Tensor]):
    return None if t is None else t.data_ptr()


class _FusedZOHFn(torch.autograd.Function):
    """S5's discretisation + scan (``ss4rec.ssm.s5.zoh_scan``'s contract) through the C kernels.

    step_scale float32 broadcastable to ``[B L 1]``; base_step float32 ``[P]``; lam complex64
    ``[P]``; scaled_input complex64 ``[B L P]``; initial_state complex64 ``[B P]`` or None.
    Keeps ``Λ̄`` from the forward (one more ``[B L P]`` complex tensor) instead of recomputing
    its exp, cos and sin in the backward.
    """

    @staticmethod
    def forward(ctx, step_scale, base_step, lam, scaled_input, initial_state, underflow):
        lib, _ = _load()
        batch, length, width = scaled_input.shape
        scale = step_scale.expand(batch, length, 1)
        states, lam_bar = torch.empty_like(scaled_input), torch.empty_like(scaled_input)  # [B L P]
        lib.zoh_forward(scale.data_ptr(), scale.stride(0), scale.stride(1), base_step.data_ptr(),
                        lam.data_ptr(), underflow, scaled_input.data_ptr(), _ptr(initial_state),
                        states.data_ptr(), lam_bar.data_ptr(), batch, length, width, _threads(batch))
        ctx.save_for_backward(step_scale, base_step, lam, scaled_input, initial_state, states, lam_bar)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        lib, _ = _load()
        step_scale, base_step, lam, scaled_input, initial_state, states, lam_bar = ctx.saved_tensors
        batch, length, width = scaled_input.shape
        scale = step_scale.expand(batch, length, 1)
        grad_states = grad_states.to(torch.complex64).contiguous()
        grad_input = torch.empty_like(scaled_input)
        grad_initial = None if initial_state is None else torch.empty_like(initial_state)
        grad_scale = scaled_input.new_empty(batch, length, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        threads = _threads(batch)
        grad_lam_parts = torch.zeros(threads, width, dtype=torch.complex64)  # one slot per thread
        grad_base_parts = torch.zeros(threads, width, dtype=torch.float32)
        lib.zoh_backward(scale.data_ptr(), scale.stride(0), scale.stride(1), base_step.data_ptr(),
                         lam.data_ptr(), scaled_input.data_ptr(), _ptr(initial_state), states.data_ptr(),
                         lam_bar.data_ptr(), grad_states.data_ptr(), grad_input.data_ptr(),
                         _ptr(grad_initial), _ptr(grad_scale), grad_lam_parts.data_ptr(),
                         grad_base_parts.data_ptr(), batch, length, width, threads)
        if grad_scale is not None:
            grad_scale = grad_scale.unsqueeze(-1).sum_to_size(step_scale.shape)
        return grad_scale, grad_base_parts.sum(0), grad_lam_parts.sum(0).conj(), grad_input, grad_initial, None


def fused_zoh_scan_usable(scaled_input: Tensor) -> bool:
    """Whether :func:`fused_zoh_scan` runs for this ``scaled_input`` (complex64 on the CPU, kernel
    built); ``ss4rec.ssm.s5.zoh_scan`` falls back to its torch implementation otherwise.

    >>> use_fused = fused_zoh_scan_usable(torch.zeros(2, 5, 4, dtype=torch.complex64))
    """
    return fused_linear_scan_usable(scaled_input)


def fused_zoh_scan(step_scale: Tensor, base_step: Tensor, lam: Tensor, scaled_input: Tensor,
                   initial_state: Optional[Tensor], underflow: float) -> Tensor:
    """S5 states with zero-order hold, ``ss4rec.ssm.s5.zoh_scan``'s maths, through the C kernels.

    ``Λ̄ = exp(ΛΔ)`` with ``Δ = step_scale · base_step`` (0 once ``Re(ΛΔ) < -underflow``);
    ``x_k = Λ̄_k x_{k-1} + (Λ̄_k - 1) v_k``. Shapes as ``zoh_scan``: step_scale real
    ``[B L 1]``, ``[B 1 1]`` or ``[1 1 1]``; base_step ``[P]``; lam complex ``[P]``;
    scaled_input ``v`` complex64 ``[B L P]``; initial_state ``[B P]`` or None. Gradients for all.
    """
    if not fused_zoh_scan_usable(scaled_input):
        raise RuntimeError(f"fused_zoh_scan: needs complex64 CPU input and the kernel ({_load()[1]})")
    batch, length, width = scaled_input.shape
    if step_scale.dim() != 3 or step_scale.shape[2] != 1 or step_scale.shape[0] not in (1, batch) \
            or step_scale.shape[1] not in (1, length):
        raise ValueError(f"fused_zoh_scan: step_scale must broadcast to [B L 1] = {(batch, length, 1)}, "
                         f"got {tuple(step_scale.shape)}")
    step_scale = step_scale.to(torch.float32).contiguous()
    base_step = base_step.to(torch.float32).contiguous()
    lam = lam.to(torch.complex64).contiguous()
    init = None if initial_state is None else initial_state.to(torch.complex64).contiguous()
    return _FusedZOHFn.apply(step_scale, base_step, lam, scaled_input.contiguous(), init, float(underflow))


def fused_dropout_usable(x: Tensor) -> bool:
    """Whether :func:`fused_dropout_mask` runs for a tensor like ``x`` (on the CPU, kernel built)."""
    return x.device.type == "cpu" and _load()[0] is not None


def fused_dropout_mask(shape, p: float) -> Tensor:
    """A float32 CPU dropout mask of ``shape``: ``1 / (1 - p)`` with probability ``1 - p``, else 0.

    The draws come from the C kernel's SplitMix64 (24-bit uniforms, counter-based), started
    at a seed drawn from torch's default generator: ``torch.manual_seed`` fixes the masks, and
    they do not depend on the thread count. ``0 < p < 1``.

    >>> mask = fused_dropout_mask((4, 5), 0.2) if fused_dropout_usable(torch.zeros(1)) else None
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"fused_dropout_mask: p must be in (0, 1), got {p}")
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"fused_dropout_mask: {reason}")
    seed = int(torch.randint(0, 2**62, (1,)).item())  # from torch's generator: seeding as torch's
    mask = torch.empty(shape, dtype=torch.float32)
    if mask.numel():
        lib.dropout_mask(mask.data_ptr(), mask.numel(), seed, float(p), 1.0 / (1.0 - p), _threads(mask.numel()))
    return mask

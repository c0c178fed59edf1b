"""Fused CPU selective scan: a tiny C kernel, built with the system C compiler on first use.

Same maths and signature as :func:`ss4rec.ssm.scan.selective_scan`::

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n]

Why a kernel: the pure-PyTorch scan streams ``[B, L, D, N]`` tensors through memory about
fifteen times per forward+backward (one pass per op). Here each (batch row, channel) pair
runs its whole recurrence with the ``N`` states in registers; the backward recomputes that
row's states into a per-thread buffer of ``(L + 1) x N`` floats (6.5 KB at L=50, N=32, so
it stays in cache) and walks back through them. Nothing of size ``[B, L, D, N]`` is ever
allocated, and no state is saved between forward and backward (only the inputs).

How it is built: plain C (no PyTorch headers, so the build takes about a second and needs
no ``ninja``), compiled with ``cc -O3 -march=native -shared`` into
``$SS4REC_CACHE_DIR`` (default ``~/.cache/ss4rec/scan_fused``) under a name hashed from the
source, flags and CPU, and loaded with :mod:`ctypes`. Calls release the GIL; the batch is
split over ``torch.get_num_threads()`` Python threads. ``exp`` is a vectorisable
range-reduced polynomial (error below float32 rounding) instead of libm's scalar ``expf``.

Scope: float32 compute on CPU tensors. :func:`fused_scan_available` says whether the kernel
built here (and why not); :func:`fused_selective_scan` raises when it did not, so callers
choose the fallback explicitly. Set ``SS4REC_FUSED_SCAN=0`` to disable the kernel.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

DISABLE_ENV = "SS4REC_FUSED_SCAN"  # "0" turns the kernel off
CACHE_ENV = "SS4REC_CACHE_DIR"
# -fno-trapping-math lets gcc vectorise fast_exp's float->int step (no -ffast-math: it
# would reassociate sums and, linked into a shared library, can flush denormals process-wide)
COMPILE_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-fno-trapping-math")
LANES = 16  # batch rows per vector block; W in the C source

# Layout: u, delta, y, grad_* [B L D]; Bm, Cm [B L N]; A [D N]; all contiguous float32.
# Each call handles batch rows [b0, b1); rows are independent except for grad_A, which the
# caller gives each thread its own copy of and sums afterwards.
_C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Lanes are W batch rows (one AVX-512 or two AVX2 registers). The caller pads the batch
   to K blocks of W rows and lays every array out block by block, lanes last:
   u, delta, y, grad_u, grad_delta [K D L W]; Bm, Cm, grad_B, grad_C [K L N W]; A [D N].
   So one block's data is contiguous (a channel's whole sequence is L x W floats in a row),
   a lane vector is always one contiguous load, every inner loop runs over the W lanes
   with a compile-time trip count (fully vectorised), and the reductions over d and n are
   plain vector adds; only grad_A sums over lanes, once per (channel, state). Padding rows
   are zero (delta = 0: decay 1, no drive; B = C = 0: no output, no gradient). */
#define W 16

/* exp(x), vectorisable: x = k ln2 + r with |r| <= ln2/2, exp(r) by its degree-7 Taylor
   polynomial (truncation < 6e-9 relative, below float rounding), 2^k built in the exponent
   bits. x is clamped to [-87, 88] so the result stays a normal float (exp(-87) ~ 1.6e-38
   stands in for smaller decays). */
static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693145751953125f - k * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)k + 127) << 23;
    return p * scale.f;
}

/* Lane blocks [k0, k1) (block k = batch rows k*W ... k*W + W - 1). */
void scan_forward(const float *u, const float *delta, const float *A, const float *Bm,
                  const float *Cm, float *y, int64_t k0, int64_t k1, int64_t L, int64_t D,
                  int64_t N) {
    float *h = (float *)aligned_alloc(64, (size_t)(N * W) * sizeof(float));
    for (int64_t k = k0; k < k1; k++) {
        const float *Bk = Bm + k * L * N * W, *Ck = Cm + k * L * N * W;
        for (int64_t d = 0; d < D; d++) {
            const float *a = A + d * N;
            int64_t seq = (k * D + d) * L * W;  /* this channel's [L W] sequence */
            memset(h, 0, (size_t)(N * W) * sizeof(float));
            for (int64_t t = 0; t < L; t++) {
                const float *restrict dt = delta + seq + t * W, *restrict ut = u + seq + t * W;
                const float *bt = Bk + t * N * W, *ct = Ck + t * N * W;
                float du[W], out[W];
                for (int j = 0; j < W; j++) { du[j] = dt[j] * ut[j]; out[j] = 0.0f; }
                for (int64_t n = 0; n < N; n++) {
                    float an = a[n], *restrict hn = h + n * W;
                    const float *restrict bn = bt + n * W, *restrict cn = ct + n * W;
                    for (int j = 0; j < W; j++) {
                        hn[j] = fast_exp(dt[j] * an) * hn[j] + du[j] * bn[j];
                        out[j] += cn[j] * hn[j];
                    }
                }
                float *yt = y + seq + t * W;
                for (int j = 0; j < W; j++) yt[j] = out[j];
            }
        }
    }
    free(h);
}

/* Lane blocks [k0, k1) of grad_u, grad_delta, grad_B, grad_C are overwritten; grad_A (this
   thread's own copy) is added to. Per (block, channel) the forward states are recomputed
   into a buffer of (L + 1) x N x W floats, with their decays, then walked backwards. */
void scan_backward(const float *u, const float *delta, const float *A, const float *Bm,
                   const float *Cm, const float *grad_y, float *grad_u, float *grad_delta,
                   float *grad_A, float *grad_B, float *grad_C, int64_t k0, int64_t k1,
                   int64_t L, int64_t D, int64_t N) {
    size_t block = (size_t)(N * W) * sizeof(float);
    float *gh = (float *)aligned_alloc(64, block);  /* dLoss/dh_t carried from t + 1 */
    float *gA = (float *)aligned_alloc(64, block);  /* per-lane dLoss/dA[d, :] */
    float *hs = (float *)aligned_alloc(64, (size_t)(L + 1) * block);  /* slot t: h_{t-1} */
    float *decay = (float *)aligned_alloc(64, (size_t)L * block);
    for (int64_t k = k0; k < k1; k++) {
        const float *Bk = Bm + k * L * N * W, *Ck = Cm + k * L * N * W;
        float *gBk = grad_B + k * L * N * W, *gCk = grad_C + k * L * N * W;
        memset(gBk, 0, (size_t)(L * N * W) * sizeof(float));
        memset(gCk, 0, (size_t)(L * N * W) * sizeof(float));
        for (int64_t d = 0; d < D; d++) {
            const float *a = A + d * N;
            int64_t seq = (k * D + d) * L * W;  /* this channel's [L W] sequence */
            memset(hs, 0, block);
            for (int64_t t = 0; t < L; t++) {  /* recompute this channel's states */
                const float *restrict dt = delta + seq + t * W, *restrict ut = u + seq + t * W;
                const float *restrict bt = Bk + t * N * W;
                const float *restrict prev = hs + t * N * W;
                float *restrict next = hs + (t + 1) * N * W, *restrict dec = decay + t * N * W;
                float du[W];
                for (int j = 0; j < W; j++) du[j] = dt[j] * ut[j];
                for (int64_t n = 0; n < N; n++) {
                    float an = a[n];
                    const float *restrict bn = bt + n * W;
                    for (int j = 0; j < W; j++) {
                        float e = fast_exp(dt[j] * an);
                        dec[n * W + j] = e;
                        next[n * W + j] = e * prev[n * W + j] + du[j] * bn[j];
                    }
                }
            }
            memset(gh, 0, block);
            memset(gA, 0, block);
            for (int64_t t = L - 1; t >= 0; t--) {
                int64_t row = seq + t * W;
                const float *restrict dt = delta + row, *restrict ut = u + row, *restrict gy = grad_y + row;
                const float *bt = Bk + t * N * W, *ct = Ck + t * N * W;
                float *gbt = gBk + t * N * W, *gct = gCk + t * N * W;
                const float *prev = hs + t * N * W, *cur = hs + (t + 1) * N * W, *dec = decay + t * N * W;
                float du[W], g_du[W], g_delta[W];
                for (int j = 0; j < W; j++) { du[j] = dt[j] * ut[j]; g_du[j] = 0.0f; g_delta[j] = 0.0f; }
                for (int64_t n = 0; n < N; n++) {
                    float an = a[n], *restrict ghn = gh + n * W, *restrict gAn = gA + n * W;
                    const float *restrict bn = bt + n * W, *restrict cn = ct + n * W;
                    float *restrict gbn = gbt + n * W, *restrict gcn = gct + n * W;
                    const float *restrict pn = prev + n * W, *restrict hn = cur + n * W;
                    const float *restrict en = dec + n * W;
                    for (int j = 0; j < W; j++) {
                        float g = ghn[j] + gy[j] * cn[j];        /* total dLoss/dh_t */
                        gcn[j] += gy[j] * hn[j];                 /* dLoss/dC_t[n] */
                        gbn[j] += du[j] * g;                     /* dLoss/dB_t[n] */
                        g_du[j] += g * bn[j];
                        float g_log_decay = g * pn[j] * en[j];   /* dLoss/d(delta A) */
                        g_delta[j] += g_log_decay * an;
                        gAn[j] += dt[j] * g_log_decay;
                        ghn[j] = g * en[j];
                    }
                }
                float *restrict gu = grad_u + row, *restrict gd = grad_delta + row;
                for (int j = 0; j < W; j++) {
                    gu[j] = g_du[j] * dt[j];
                    gd[j] = g_delta[j] + g_du[j] * ut[j];
                }
            }
            for (int64_t n = 0; n < N; n++) {
                float total = 0.0f;
                for (int j = 0; j < W; j++) total += gA[n * W + j];
                grad_A[d * N + n] += total;
            }
        }
    }
    free(gh);
    free(gA);
    free(hs);
    free(decay);
}
"""


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
    key = hashlib.sha256("\0".join((_C_SOURCE, compiler, *COMPILE_FLAGS, _cpu_tag())).encode())
    target = _cache_dir() / f"scan_fused_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            source = Path(tmp) / "scan_fused.c"
            source.write_text(_C_SOURCE)
            built = Path(tmp) / target.name
            errors = []
            # a compiler that rejects -march=native (some clang/arm builds) still gets a try
            for flags in (COMPILE_FLAGS, tuple(f for f in COMPILE_FLAGS if f != "-march=native")):
                proc = subprocess.run(
                    [compiler, *flags, str(source), "-o", str(built), "-lm"],
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
    lib.scan_forward.argtypes = [ptr] * 6 + [i64] * 5
    lib.scan_forward.restype = None
    lib.scan_backward.argtypes = [ptr] * 11 + [i64] * 5
    lib.scan_backward.restype = None
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


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ss4rec-scan")


def _block_slices(blocks: int):
    """Contiguous ranges of lane blocks, one per torch intra-op thread (the kernel releases the GIL)."""
    workers = max(1, min(torch.get_num_threads(), blocks))
    bounds = [blocks * k // workers for k in range(workers + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(workers)]


def _run_sliced(fn, slices) -> list:
    """fn(*slice) for every slice, on the thread pool when there is more than one."""
    if len(slices) == 1:
        return [fn(*slices[0])]
    return list(_pool(len(slices)).map(lambda s: fn(*s), slices))


def _to_blocks(x: Tensor, padded_batch: int, channel_major: bool) -> Tensor:
    """[B L F] -> contiguous float32 blocks of LANES batch rows, lanes last, zero-padded:
    [K F L W] when ``channel_major`` (u, delta: one channel's sequence in a row), else
    [K L F W] (B, C: one step's states in a row)."""
    batch, length, features = x.shape
    padded = x.to(torch.float32)
    if padded_batch > batch:
        padded = torch.cat([padded, padded.new_zeros(padded_batch - batch, length, features)])
    blocks = padded.view(padded_batch // LANES, LANES, length, features)  # [K W L F]
    order = (0, 3, 2, 1) if channel_major else (0, 2, 3, 1)
    return blocks.permute(*order).contiguous()


def _from_blocks(y: Tensor, batch: int) -> Tensor:
    """[K D L W] -> [B L D] (the first ``batch`` rows)."""
    blocks, d_inner, length, lanes = y.shape
    return y.permute(0, 3, 2, 1).reshape(blocks * lanes, length, d_inner)[:batch]


class _FusedScanFn(torch.autograd.Function):
    """Inputs in the kernel layout: u, delta [K D L W]; A [D N]; B, C [K L N W] (float32, CPU)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        lib, _ = _load()
        blocks, d_inner, length, _ = u.shape
        d_state = A.shape[1]
        y = torch.empty_like(u)  # [K D L W]
        ptrs = [t.data_ptr() for t in (u, delta, A, B, C, y)]
        _run_sliced(
            lambda k0, k1: lib.scan_forward(*ptrs, k0, k1, length, d_inner, d_state),
            _block_slices(blocks),
        )
        ctx.save_for_backward(u, delta, A, B, C)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        lib, _ = _load()
        u, delta, A, B, C = ctx.saved_tensors
        blocks, d_inner, length, _ = u.shape
        d_state = A.shape[1]
        grad_y = grad_y.to(torch.float32).contiguous()
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        slices = _block_slices(blocks)
        grad_A_parts = A.new_zeros(len(slices), d_inner, d_state)  # one per thread, summed below
        ptrs = [t.data_ptr() for t in (u, delta, A, B, C, grad_y, grad_u, grad_delta)]
        tail = [grad_B.data_ptr(), grad_C.data_ptr()]

        def work(k, k0, k1):
            lib.scan_backward(*ptrs, grad_A_parts[k].data_ptr(), *tail, k0, k1,
                              length, d_inner, d_state)

        _run_sliced(work, [(k, *bounds) for k, bounds in enumerate(slices)])
        return grad_u, grad_delta, grad_A_parts.sum(0), grad_B, grad_C


def fused_scan_usable(delta: Tensor) -> bool:
    """Whether ``fused_selective_scan`` would run for a scan whose ``delta`` is this tensor
    (float32-or-narrower on CPU, kernel built); callers fall back to the torch scan otherwise.

    >>> use_fused = fused_scan_usable(torch.rand(2, 5, 8))
    """
    return delta.device.type == "cpu" and delta.dtype != torch.float64 and _load()[0] is not None


def _check_supported(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    from ss4rec.ssm.scan import _check_shapes  # shape messages shared with the torch scan

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


def fused_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Selective scan through the fused C kernel (CPU, float32 compute).

    Shapes: u, delta ``[B, L, D]``; A ``[D, N]``; B, C ``[B, L, N]``; returns y ``[B, L, D]``
    in u's dtype. Raises RuntimeError when the kernel is unavailable (see
    :func:`fused_scan_available`) and ValueError for CUDA or float64 inputs.
    """
    _check_supported(u, delta, A, B, C)
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"fused_selective_scan: {reason}")
    batch = u.shape[0]
    padded = -(-batch // LANES) * LANES
    u_k, delta_k = (_to_blocks(x, padded, channel_major=True) for x in (u, delta))  # [K D L W]
    B_k, C_k = (_to_blocks(x, padded, channel_major=False) for x in (B, C))  # [K L N W]
    A32 = A.to(torch.float32).contiguous()  # [D N]
    y = _FusedScanFn.apply(u_k, delta_k, A32, B_k, C_k)  # [K D L W]
    return _from_blocks(y, batch).to(u.dtype)  # [B L D]

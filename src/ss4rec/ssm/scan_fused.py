"""Fused CPU kernels for Mamba: selective scan (+ skip and gate) and causal conv + SiLU.

Small C kernels, built with the system C compiler on first use. The scan computes the same
maths as :func:`ss4rec.ssm.scan.selective_scan`, optionally followed by Mamba's skip and
gate (``(y + D * u) * silu(z)``)::

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n]

Why kernels: the pure-PyTorch scan streams ``[B, L, D, N]`` tensors through memory about
fifteen times per forward+backward (one pass per op). Here 16 channels of one batch row
run their recurrence together as one vector, read straight from the ``[B, L, D]`` tensors,
with the ``N`` states in L1; the backward recomputes those states (and decays) tile by
tile (32 steps, restarted from states kept at tile boundaries, so the working set does not
grow with L) and walks back through them. Nothing of size
``[B, L, D, N]`` is allocated, and only the inputs are saved for the backward. Mamba's
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

Scope: float32 compute on CPU tensors. :func:`fused_scan_available` says whether the
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

logger = logging.getLogger(__name__)

DISABLE_ENV = "SS4REC_FUSED_SCAN"  # "0" turns the kernel off
CACHE_ENV = "SS4REC_CACHE_DIR"
# -fno-trapping-math lets gcc vectorise fast_exp's float->int step (no -ffast-math: it
# would reassociate sums and, linked into a shared library, can flush denormals process-wide)
COMPILE_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-fno-trapping-math")
# OpenMP: links libgomp.so.1, which resolves to the copy PyTorch has already loaded, so the
# kernels share PyTorch's thread pool instead of fighting it for cores
OPENMP_FLAGS = ("-fopenmp",)
# x86 with AVX-512: one 16-lane register per channel block (faster than two AVX2 halves)
TUNING_FLAGS = ("-mprefer-vector-width=512",)

# Layout: u, delta, y, grad_* [B L D]; Bm, Cm [B L N]; A [D N]; all contiguous float32.
# Each call handles batch rows [b0, b1); rows are independent except for grad_A, which the
# caller gives each thread its own copy of and sums afterwards.
_C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Selective scan. Tensors are float32 with contiguous channels: u, delta, y, grad_y, grad_u,
   grad_delta, grad_z [Bsz L D] contiguous; z [Bsz L D], Bm, Cm [Bsz L N] with row strides
   (sb, st) (views of Mamba's projections are read in place); grad_B, grad_C [Bsz L N]
   contiguous; A, grad_A [D N]; Dsk, grad_D [D]. Output y = (scan + Dsk * u) * silu(z), or
   without the gate when z is NULL (Mamba's skip and gate, fused so they cost no passes).

   Lanes are W consecutive channels of one batch row, read straight from the tensors (one
   AVX-512 register, or two AVX2 ones); B_t[n] and C_t[n] are scalars broadcast over the
   lanes. Every inner loop runs over the W lanes with a compile-time trip count, so gcc
   vectorises it fully. A last, partial block is zero-padded in registers (delta = u = 0:
   decay 1, no drive) and its padding is never stored. The backward sums grad_B and grad_C
   over channels as lane vectors in per-row buffers and reduces the lanes once per row. */
#define W 16
#define TT 32  /* backward time tile: its states and decays stay in L2 at any L */

#if defined(__SSE__)
#include <xmmintrin.h>
/* Flush denormals to zero (and read them as zero) for the duration of a kernel call: long
   decays and small gradients drift into the denormal range, where x86 arithmetic is ~100x
   slower, while values below 1.2e-38 cannot matter at float32 precision. The caller's
   MXCSR is restored on return. */
static inline unsigned int denormals_off(void) {
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040);  /* FTZ | DAZ */
    return saved;
}
static inline void denormals_restore(unsigned int saved) { _mm_setcsr(saved); }
#else
static inline unsigned int denormals_off(void) { return 0; }
static inline void denormals_restore(unsigned int saved) { (void)saved; }
#endif

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

static float *buffer(int64_t floats) {
    return (float *)aligned_alloc(64, (size_t)(((floats * 4 + 63) / 64) * 64));
}

/* dst[W] = src[0 .. width-1], zero-padded. */
static inline void load_lanes(float *restrict dst, const float *restrict src, int64_t width) {
    if (width == W) {
        for (int j = 0; j < W; j++) dst[j] = src[j];
    } else {
        for (int j = 0; j < W; j++) dst[j] = j < width ? src[j] : 0.0f;
    }
}

static inline void store_lanes(float *restrict dst, const float *restrict src, int64_t width) {
    if (width == W) {
        for (int j = 0; j < W; j++) dst[j] = src[j];
    } else {
        for (int j = 0; j < width; j++) dst[j] = src[j];
    }
}

/* a[n][j] = A[d0 + j, n] and skip[j] = Dsk[d0 + j] for one channel block, zero-padded. */
static void load_block_params(float *a, float *skip, const float *A, const float *Dsk,
                              int64_t d0, int64_t width, int64_t N) {
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < W; j++) a[n * W + j] = j < width ? A[(d0 + j) * N + n] : 0.0f;
    for (int j = 0; j < W; j++) skip[j] = j < width ? Dsk[d0 + j] : 0.0f;
}

/* Batch rows [b0, b1). */
static void scan_forward_rows(const float *u, const float *delta, const float *A, const float *Bm,
                  int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                  const float *Dsk, const float *z, int64_t sbZ, int64_t stZ, float *y,
                  int64_t b0, int64_t b1, int64_t L, int64_t D, int64_t N) {
    float *h = buffer(N * W), *a = buffer(N * W);
    float dt[W], ut[W], zt[W], du[W], out[W], skip[W];
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t d0 = 0; d0 < D; d0 += W) {
            int64_t width = D - d0 < W ? D - d0 : W;
            load_block_params(a, skip, A, Dsk, d0, width, N);
            memset(h, 0, (size_t)(N * W) * sizeof(float));
            for (int64_t t = 0; t < L; t++) {
                int64_t row = (b * L + t) * D + d0;
                const float *bt = Bm + b * sbB + t * stB, *ct = Cm + b * sbC + t * stC;
                load_lanes(dt, delta + row, width);
                load_lanes(ut, u + row, width);
                for (int j = 0; j < W; j++) { du[j] = dt[j] * ut[j]; out[j] = 0.0f; }
                for (int64_t n = 0; n < N; n++) {
                    float bn = bt[n], cn = ct[n];
                    float *restrict hn = h + n * W;
                    const float *restrict an = a + n * W;
                    for (int j = 0; j < W; j++) {
                        hn[j] = fast_exp(dt[j] * an[j]) * hn[j] + du[j] * bn;
                        out[j] += cn * hn[j];
                    }
                }
                if (z) {
                    load_lanes(zt, z + b * sbZ + t * stZ + d0, width);
                    for (int j = 0; j < W; j++)  /* silu(z) = z / (1 + exp(-z)) */
                        out[j] = (out[j] + skip[j] * ut[j]) * zt[j] / (1.0f + fast_exp(-zt[j]));
                } else {
                    for (int j = 0; j < W; j++) out[j] += skip[j] * ut[j];
                }
                store_lanes(y + row, out, width);
            }
        }
    }
    free(h);
    free(a);
}

/* Batch rows [b0, b1) of grad_u, grad_delta, grad_z, grad_B, grad_C are overwritten;
   grad_A and grad_D (this thread's own copies) are added to. Per (row, channel block) the
   forward states are recomputed with their decays into (L + 1) x N x W buffers, then
   walked backwards. */
static void scan_backward_rows(const float *u, const float *delta, const float *A, const float *Bm,
                   int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                   const float *Dsk, const float *z, int64_t sbZ, int64_t stZ,
                   const float *grad_y, float *grad_u, float *grad_delta, float *grad_z,
                   float *grad_A, float *grad_B, float *grad_C, float *grad_D,
                   int64_t b0, int64_t b1, int64_t L, int64_t D, int64_t N) {
    int64_t block = N * W;
    float *a = buffer(block), *gh = buffer(block), *gA = buffer(block);
    int64_t chunks = (L + TT - 1) / TT;
    float *hs = buffer((TT + 1) * block);  /* one time tile's states; slot i: h_{t0+i-1} */
    float *decay = buffer(TT * block);
    float *bnd = buffer(chunks * block);   /* state entering each time tile */
    float *hw = buffer(block);
    float *ys = buffer(L * W);            /* the scan's own y_t, for the gate's gradient */
    float *gBl = buffer(L * block), *gCl = buffer(L * block);  /* per-lane dLoss/dB, dLoss/dC */
    float dt[W], ut[W], zt[W], go[W], du[W], out[W], skip[W], gy[W], g_du[W], g_delta[W];
    float gz[W], gu[W], gd[W], gD[W];
    for (int64_t b = b0; b < b1; b++) {
        memset(gBl, 0, (size_t)(L * block) * sizeof(float));
        memset(gCl, 0, (size_t)(L * block) * sizeof(float));
        for (int64_t d0 = 0; d0 < D; d0 += W) {
            int64_t width = D - d0 < W ? D - d0 : W;
            load_block_params(a, skip, A, Dsk, d0, width, N);
            /* states entering each tile of TT steps, from one pass that stores nothing else */
            memset(bnd, 0, (size_t)block * sizeof(float));
            memset(hw, 0, (size_t)block * sizeof(float));
            for (int64_t t = 0; t < (chunks - 1) * TT; t++) {
                if (t > 0 && t % TT == 0) memcpy(bnd + (t / TT) * block, hw, (size_t)block * sizeof(float));
                int64_t row = (b * L + t) * D + d0;
                const float *bt = Bm + b * sbB + t * stB;
                load_lanes(dt, delta + row, width);
                load_lanes(ut, u + row, width);
                for (int j = 0; j < W; j++) du[j] = dt[j] * ut[j];
                for (int64_t n = 0; n < N; n++) {
                    float bn = bt[n];
                    float *restrict hn = hw + n * W;
                    const float *restrict an = a + n * W;
                    for (int j = 0; j < W; j++) hn[j] = fast_exp(dt[j] * an[j]) * hn[j] + du[j] * bn;
                }
            }
            if (chunks > 1) memcpy(bnd + (chunks - 1) * block, hw, (size_t)block * sizeof(float));
            memset(gh, 0, (size_t)block * sizeof(float));  /* dLoss/dh_t carried from t + 1 */
            memset(gA, 0, (size_t)block * sizeof(float));
            for (int j = 0; j < W; j++) gD[j] = 0.0f;
            for (int64_t c = chunks - 1; c >= 0; c--) {  /* time tiles, last first */
                int64_t t0 = c * TT, t1 = t0 + TT < L ? t0 + TT : L;
                memcpy(hs, bnd + c * block, (size_t)block * sizeof(float));
                for (int64_t t = t0; t < t1; t++) {  /* recompute this tile's states */
                    int64_t row = (b * L + t) * D + d0;
                    const float *bt = Bm + b * sbB + t * stB, *ct = Cm + b * sbC + t * stC;
                    const float *restrict prev = hs + (t - t0) * block;
                    float *restrict next = hs + (t - t0 + 1) * block, *restrict dec = decay + (t - t0) * block;
                    load_lanes(dt, delta + row, width);
                    load_lanes(ut, u + row, width);
                    for (int j = 0; j < W; j++) { du[j] = dt[j] * ut[j]; out[j] = 0.0f; }
                    for (int64_t n = 0; n < N; n++) {
                        float bn = bt[n], cn = ct[n];
                        const float *restrict an = a + n * W;
                        for (int j = 0; j < W; j++) {
                            float e = fast_exp(dt[j] * an[j]);
                            float hn = e * prev[n * W + j] + du[j] * bn;
                            dec[n * W + j] = e;
                            next[n * W + j] = hn;
                            out[j] += cn * hn;
                        }
                    }
                    for (int j = 0; j < W; j++) ys[t * W + j] = out[j];
                }
                for (int64_t t = t1 - 1; t >= t0; t--) {
                    int64_t row = (b * L + t) * D + d0;
                    const float *bt = Bm + b * sbB + t * stB, *ct = Cm + b * sbC + t * stC;
                    load_lanes(dt, delta + row, width);
                    load_lanes(ut, u + row, width);
                    load_lanes(go, grad_y + row, width);
                    if (z) {  /* through the gate: out = (y + skip u) silu(z) */
                        load_lanes(zt, z + b * sbZ + t * stZ + d0, width);
                        for (int j = 0; j < W; j++) {
                            float sig = 1.0f / (1.0f + fast_exp(-zt[j]));
                            gy[j] = go[j] * zt[j] * sig;
                            /* silu'(z) = sig (1 + z (1 - sig)) */
                            gz[j] = go[j] * (ys[t * W + j] + skip[j] * ut[j]) * sig * (1.0f + zt[j] * (1.0f - sig));
                        }
                        store_lanes(grad_z + row, gz, width);
                    } else {
                        for (int j = 0; j < W; j++) gy[j] = go[j];
                    }
                    for (int j = 0; j < W; j++) {
                        du[j] = dt[j] * ut[j]; g_du[j] = 0.0f; g_delta[j] = 0.0f;
                        gD[j] += gy[j] * ut[j];
                    }
                    const float *restrict prev = hs + (t - t0) * block, *restrict cur = hs + (t - t0 + 1) * block;
                    const float *restrict dec = decay + (t - t0) * block;
                    float *restrict gbt = gBl + t * block, *restrict gct = gCl + t * block;
                    for (int64_t n = 0; n < N; n++) {
                        float bn = bt[n], cn = ct[n];
                        float *restrict ghn = gh + n * W, *restrict gAn = gA + n * W;
                        float *restrict gbn = gbt + n * W, *restrict gcn = gct + n * W;
                        const float *restrict an = a + n * W, *restrict pn = prev + n * W;
                        const float *restrict hn = cur + n * W, *restrict en = dec + n * W;
                        for (int j = 0; j < W; j++) {
                            float g = ghn[j] + gy[j] * cn;          /* total dLoss/dh_t */
                            gcn[j] += gy[j] * hn[j];                /* dLoss/dC_t[n], lane part */
                            gbn[j] += du[j] * g;                    /* dLoss/dB_t[n], lane part */
                            g_du[j] += g * bn;
                            float g_log_decay = g * pn[j] * en[j];  /* dLoss/d(delta A) */
                            g_delta[j] += g_log_decay * an[j];
                            gAn[j] += dt[j] * g_log_decay;
                            ghn[j] = g * en[j];
                        }
                    }
                    for (int j = 0; j < W; j++) {
                        gu[j] = g_du[j] * dt[j] + gy[j] * skip[j];
                        gd[j] = g_delta[j] + g_du[j] * ut[j];
                    }
                    store_lanes(grad_u + row, gu, width);
                    store_lanes(grad_delta + row, gd, width);
                }
            }
            for (int64_t j = 0; j < width; j++) {
                for (int64_t n = 0; n < N; n++) grad_A[(d0 + j) * N + n] += gA[n * W + j];
                grad_D[d0 + j] += gD[j];
            }
        }
        for (int64_t t = 0; t < L; t++)  /* one lane reduction per (row, step, state) */
            for (int64_t n = 0; n < N; n++) {
                float sum_b = 0.0f, sum_c = 0.0f;
                for (int j = 0; j < W; j++) {
                    sum_b += gBl[(t * N + n) * W + j];
                    sum_c += gCl[(t * N + n) * W + j];
                }
                grad_B[(b * L + t) * N + n] = sum_b;
                grad_C[(b * L + t) * N + n] = sum_c;
            }
    }
    free(a); free(gh); free(gA); free(hs); free(decay); free(ys); free(gBl); free(gCl);
    free(bnd); free(hw);
}

/* Mamba's causal depthwise convolution and SiLU, fused, vectorised over channels:
   out[b, t, d] = silu(bias[d] + sum_k w[k, d] * x[b, t - (K - 1) + k, d])  (x = 0 before t = 0)
   x: rows with strides (sb, st) and contiguous channels (a view of in_proj's output);
   w [K D] (tap K - 1 multiplies the current step); out, grad_out, grad_x [Bsz L D].
   conv_preactivation is the sum inside silu at step t of one batch row (xb = that row's
   start); the backward recomputes it rather than storing it. */
static inline void conv_preactivation(const float *xb, int64_t st, const float *w, const float *bias,
                                      float *restrict o, int64_t t, int64_t D, int64_t K) {
    for (int64_t d = 0; d < D; d++) o[d] = bias[d];
    for (int64_t k = 0; k < K; k++) {
        int64_t s = t - (K - 1) + k;
        if (s < 0) continue;
        const float *restrict xs = xb + s * st, *restrict wk = w + k * D;
        for (int64_t d = 0; d < D; d++) o[d] += wk[d] * xs[d];
    }
}

static void conv_forward_rows(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                  float *out, int64_t b0, int64_t b1, int64_t L, int64_t D, int64_t K) {
    for (int64_t b = b0; b < b1; b++)
        for (int64_t t = 0; t < L; t++) {
            float *restrict o = out + (b * L + t) * D;
            conv_preactivation(x + b * sb, st, w, bias, o, t, D, K);
            for (int64_t d = 0; d < D; d++) o[d] = o[d] / (1.0f + fast_exp(-o[d]));
        }
}

/* grad_x rows [b0, b1) are overwritten; grad_w [K D] and grad_bias [D] (this thread's own
   copies) are added to. g is a scratch buffer of L x D floats. */
static void conv_backward_rows(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                   const float *grad_out, float *grad_x, float *grad_w, float *grad_bias,
                   int64_t b0, int64_t b1, int64_t L, int64_t D, int64_t K) {
    float *g = buffer(L * D);  /* dLoss/d(pre-activation) of one batch row */
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t t = 0; t < L; t++) {
            float *restrict gt = g + t * D;
            conv_preactivation(x + b * sb, st, w, bias, gt, t, D, K);
            const float *restrict go = grad_out + (b * L + t) * D;
            for (int64_t d = 0; d < D; d++) {  /* silu'(p) = sig (1 + p (1 - sig)) */
                float p = gt[d], sig = 1.0f / (1.0f + fast_exp(-p));
                gt[d] = go[d] * sig * (1.0f + p * (1.0f - sig));
            }
            for (int64_t d = 0; d < D; d++) grad_bias[d] += gt[d];
            for (int64_t k = 0; k < K; k++) {
                int64_t s = t - (K - 1) + k;
                if (s < 0) continue;
                const float *restrict xs = x + b * sb + s * st;
                float *restrict gwk = grad_w + k * D;
                for (int64_t d = 0; d < D; d++) gwk[d] += gt[d] * xs[d];
            }
        }
        for (int64_t s = 0; s < L; s++) {
            float *restrict gx = grad_x + (b * L + s) * D;
            for (int64_t d = 0; d < D; d++) gx[d] = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                int64_t t = s + (K - 1) - k;
                if (t >= L) continue;
                const float *restrict gt = g + t * D, *restrict wk = w + k * D;
                for (int64_t d = 0; d < D; d++) gx[d] += wk[d] * gt[d];
            }
        }
    }
    free(g);
}

/* Exported entry points: rows split over an OpenMP team of `threads` (the same libgomp
   runtime, and so the same thread pool, as PyTorch's own CPU ops; without OpenMP the
   caller's thread does all rows). Thread `tid` adds its grad_A / grad_D / grad_w / grad_bias
   into slot `tid` of the caller's per-thread buffers. */
#ifdef _OPENMP
#include <omp.h>
#define TEAM_BEGIN(threads) _Pragma("omp parallel num_threads(threads)") { \
    int tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
#define TEAM_BEGIN(threads) { int tid = 0, team = 1; (void)threads;
#endif
#define TEAM_END }
#define ROWS(total) int64_t r0 = (total) * tid / team, r1 = (total) * (tid + 1) / team;

void scan_forward(const float *u, const float *delta, const float *A, const float *Bm,
                  int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                  const float *Dsk, const float *z, int64_t sbZ, int64_t stZ, float *y,
                  int64_t Bsz, int64_t L, int64_t D, int64_t N, int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        scan_forward_rows(u, delta, A, Bm, sbB, stB, Cm, sbC, stC, Dsk, z, sbZ, stZ, y,
                          r0, r1, L, D, N);
        denormals_restore(saved);
    TEAM_END
}

void scan_backward(const float *u, const float *delta, const float *A, const float *Bm,
                   int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                   const float *Dsk, const float *z, int64_t sbZ, int64_t stZ,
                   const float *grad_y, float *grad_u, float *grad_delta, float *grad_z,
                   float *grad_A_parts, float *grad_B, float *grad_C, float *grad_D_parts,
                   int64_t Bsz, int64_t L, int64_t D, int64_t N, int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        scan_backward_rows(u, delta, A, Bm, sbB, stB, Cm, sbC, stC, Dsk, z, sbZ, stZ, grad_y,
                           grad_u, grad_delta, grad_z, grad_A_parts + tid * D * N, grad_B,
                           grad_C, grad_D_parts + tid * D, r0, r1, L, D, N);
        denormals_restore(saved);
    TEAM_END
}

void conv_forward(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                  float *out, int64_t Bsz, int64_t L, int64_t D, int64_t K, int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        conv_forward_rows(x, sb, st, w, bias, out, r0, r1, L, D, K);
        denormals_restore(saved);
    TEAM_END
}

void conv_backward(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                   const float *grad_out, float *grad_x, float *grad_w_parts,
                   float *grad_bias_parts, int64_t Bsz, int64_t L, int64_t D, int64_t K,
                   int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        conv_backward_rows(x, sb, st, w, bias, grad_out, grad_x, grad_w_parts + tid * K * D,
                           grad_bias_parts + tid * D, r0, r1, L, D, K);
        denormals_restore(saved);
    TEAM_END
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
    key = hashlib.sha256("\0".join((_C_SOURCE, compiler, *COMPILE_FLAGS, *TUNING_FLAGS, *OPENMP_FLAGS, _cpu_tag())).encode())
    target = _cache_dir() / f"scan_fused_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            source = Path(tmp) / "scan_fused.c"
            source.write_text(_C_SOURCE)
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
    strided = [ptr, i64, i64]  # a tensor with (batch, step) strides
    lib.scan_forward.argtypes = [ptr] * 3 + strided * 2 + [ptr] + strided + [ptr] + [i64] * 5
    lib.scan_backward.argtypes = [ptr] * 3 + strided * 2 + [ptr] + strided + [ptr] * 8 + [i64] * 5
    lib.conv_forward.argtypes = strided + [ptr] * 3 + [i64] * 5
    lib.conv_backward.argtypes = strided + [ptr] * 6 + [i64] * 5
    for kernel in (lib.scan_forward, lib.scan_backward, lib.conv_forward, lib.conv_backward):
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
    B, C [B L N] and z [B L D] (or None) with contiguous last dimension (views are fine)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D_skip, z):
        lib, _ = _load()
        batch, length, d_inner = u.shape
        y = torch.empty_like(u)  # [B L D]
        head = [u.data_ptr(), delta.data_ptr(), A.data_ptr(), *_rows(B), *_rows(C), D_skip.data_ptr(), *_rows(z)]
        lib.scan_forward(*head, y.data_ptr(), batch, length, d_inner, A.shape[1], _threads(batch))
        ctx.save_for_backward(u, delta, A, B, C, D_skip, z)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        lib, _ = _load()
        u, delta, A, B, C, D_skip, z = ctx.saved_tensors
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
            *head, grad_y.data_ptr(), grad_u.data_ptr(), grad_delta.data_ptr(),
            None if grad_z is None else grad_z.data_ptr(), grad_A_parts.data_ptr(),
            grad_B.data_ptr(), grad_C.data_ptr(), grad_D_parts.data_ptr(),
            batch, length, d_inner, d_state, threads,
        )
        return grad_u, grad_delta, grad_A_parts.sum(0), grad_B, grad_C, grad_D_parts.sum(0), grad_z


def _threads(batch: int) -> int:
    """Threads for one kernel call: PyTorch's intra-op count, at most one per batch row."""
    return max(1, min(torch.get_num_threads(), batch))


class _FusedConvSiluFn(torch.autograd.Function):
    """x [B L D] float32 with stride(-1) == 1; weight [K D] and bias [D] contiguous float32."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        lib, _ = _load()
        batch, length, channels = x.shape
        out = x.new_empty(batch, length, channels)  # [B L D]
        lib.conv_forward(*_rows(x), weight.data_ptr(), bias.data_ptr(), out.data_ptr(),
                         batch, length, channels, weight.shape[0], _threads(batch))
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        lib, _ = _load()
        x, weight, bias = ctx.saved_tensors
        batch, length, channels = x.shape
        taps = weight.shape[0]
        grad_out = grad_out.to(torch.float32).contiguous()
        grad_x = torch.empty(batch, length, channels, dtype=torch.float32)
        threads = _threads(batch)
        grad_w_parts = weight.new_zeros(threads, taps, channels)  # one slot per thread
        grad_b_parts = bias.new_zeros(threads, channels)
        lib.conv_backward(*_rows(x), weight.data_ptr(), bias.data_ptr(), grad_out.data_ptr(),
                          grad_x.data_ptr(), grad_w_parts.data_ptr(), grad_b_parts.data_ptr(),
                          batch, length, channels, taps, threads)
        return grad_x, grad_w_parts.sum(0), grad_b_parts.sum(0)


def fused_causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``silu(causal depthwise conv1d(x))`` through the C kernel (CPU, float32 compute).

    x ``[B, L, D]`` (any strides; a view with contiguous channels is read in place);
    weight ``[D, 1, K]`` as ``nn.Conv1d(D, D, K, groups=D).weight`` (tap K-1 multiplies
    the current step); bias ``[D]`` or None. Returns ``[B, L, D]`` in x's dtype, equal to
    ``silu(conv1d(x.transpose(1, 2), weight, bias, padding=K-1, groups=D)[..., :L]).transpose(1, 2)``.

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
    return _FusedConvSiluFn.apply(x32, weight_kd, bias32).to(x.dtype)  # [B L D]


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


def fused_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor] = None, z: Optional[Tensor] = None) -> Tensor:
    """Selective scan through the fused C kernel (CPU, float32 compute).

    Shapes: u, delta ``[B, L, D]``; A ``[D, N]``; B, C ``[B, L, N]``; optional skip D
    ``[D]`` and gate z ``[B, L, D]``. Returns ``(scan + D * u) * silu(z)`` (Mamba's output
    before ``out_proj``; plain ``scan`` when both are None), ``[B, L, D]`` in u's dtype.
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
    return _FusedScanFn.apply(u32, delta32, A32, B32, C32, D32, z32).to(u.dtype)  # [B L D]


def _dense_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()

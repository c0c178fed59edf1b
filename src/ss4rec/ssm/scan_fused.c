/* Fused CPU kernels for Mamba (ss4rec.ssm.scan_fused builds and calls them through ctypes).

   Layout: u, delta, y, grad_* [B L D]; Bm, Cm [B L N]; A [D N]; all contiguous float32.
   Each call handles batch rows [b0, b1); rows are independent except for grad_A, which the
   caller gives each thread its own copy of and sums afterwards. lens (the scan and the conv;
   NULL: every row has L steps) gives each row's real steps, right-padded: steps t >= lens[b]
   are skipped, their outputs and input gradients written as 0 (their incoming gradients are
   taken to be 0, as they are when the padding's outputs are never used; then every result at
   a real step is the same, bit for bit, as without lens). */
#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
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

/* a[n][j] = A[d0 + j, n], a2[n][j] = A[d0 + j, n] log2(e) (the decays are 2^(delta a2)) and
   skip[j] = Dsk[d0 + j] for one channel block, zero-padded. */
static void load_block_params(float *a, float *a2, float *skip, const float *A, const float *Dsk,
                              int64_t d0, int64_t width, int64_t N) {
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < W; j++) {
            a[n * W + j] = j < width ? A[(d0 + j) * N + n] : 0.0f;
            a2[n * W + j] = a[n * W + j] * 1.44269504088896341f;
        }
    for (int j = 0; j < W; j++) skip[j] = j < width ? Dsk[d0 + j] : 0.0f;
}

/* W lanes as one vector value (GCC/clang vector extension): held in a register, so sums
   carried across the state loop (y_t, and the backward's gradients) are register
   accumulators, not a store/reload chain through a stack array, which was the kernels'
   bottleneck (about 3x the arithmetic). Same operations in the same order as the lane loops
   they replace, so the same results. */
typedef float lanes __attribute__((vector_size(W * sizeof(float))));

static inline lanes lanes_load(const float *p) {
    lanes v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void lanes_store(float *p, lanes v) { memcpy(p, &v, sizeof v); }

/* The scan's decays, e[j] = exp(dt[j] A[j]) = 2^(dt[j] a2[j]) with a2 = A log2(e): the
   kernels' hottest line (one per state, step and channel, again in the backward's recompute),
   so it is written for few instructions: k = nearest integer to x, 2^(x - k) by a degree-6
   minimax polynomial on [-1/2, 1/2] (relative error 2e-9, below float32 rounding), times 2^k.
   x is clamped to [-125, 127]: the result stays a normal float (2^-125 ~ 2.4e-38 stands in
   for smaller decays). About 12 vector instructions with AVX-512's scalef, against ~18 for
   fast_exp's natural-base range reduction; both paths below give the same bits (with FMA). */
#define EXP2_C6 1.5345810970757157e-4f
#define EXP2_C5 1.3399930903688073e-3f
#define EXP2_C4 9.618489071726799e-3f
#define EXP2_C3 5.550328642129898e-2f
#define EXP2_C2 2.4022646248340607e-1f
#define EXP2_C1 6.931471824645996e-1f
#if defined(__AVX512F__) && W == 16
static inline lanes lanes_decay(const float *restrict dt, const float *restrict a2n) {
    __m512 x = _mm512_mul_ps(_mm512_loadu_ps(dt), _mm512_loadu_ps(a2n));
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-125.0f)), _mm512_set1_ps(127.0f));
    __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, k);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(EXP2_C6), f, _mm512_set1_ps(EXP2_C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    __m512 e = _mm512_scalef_ps(p, k);  /* p 2^k, exact */
    lanes out;
    memcpy(&out, &e, sizeof out);
    return out;
}
#else
static inline float fast_exp2_decay(float x) {
    x = x < -125.0f ? -125.0f : (x > 127.0f ? 127.0f : x);
    float k = __builtin_rintf(x);
    float f = x - k;
    float p = EXP2_C6 * f + EXP2_C5;
    p = p * f + EXP2_C4;
    p = p * f + EXP2_C3;
    p = p * f + EXP2_C2;
    p = p * f + EXP2_C1;
    p = p * f + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)k + 127) << 23;
    return p * scale.f;
}

static inline lanes lanes_decay(const float *restrict dt, const float *restrict a2n) {
    float e[W];
    for (int j = 0; j < W; j++) e[j] = fast_exp2_decay(dt[j] * a2n[j]);
    return lanes_load(e);
}
#endif

/* sig[j] = 1 / (1 + exp(-z[j])) over the lanes (a plain loop gcc vectorises whole; the gate's
   lane loops written with scalars around it were left scalar, a third of the backward's time). */
static inline lanes lanes_sigmoid(const float *restrict z) {
    float s[W];
    for (int j = 0; j < W; j++) s[j] = 1.0f / (1.0f + fast_exp(-z[j]));
    return lanes_load(s);
}

/* Batch rows [b0, b1). */
static void scan_forward_rows(const float *u, const float *delta, const float *A, const float *Bm,
                  int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                  const float *Dsk, const float *z, int64_t sbZ, int64_t stZ, float *y,
                  float *bnd, const int64_t *lens, int64_t b0, int64_t b1, int64_t L, int64_t D,
                  int64_t N) {
    float *h = buffer(N * W), *a = buffer(N * W), *a2 = buffer(N * W);
    float dt[W], ut[W], zt[W], out[W], skip[W];
    int64_t block = N * W, chunks = (L + TT - 1) / TT;
    for (int64_t b = b0; b < b1; b++) {
        int64_t Lb = lens ? lens[b] : L;  /* real steps of this row */
        memset(y + (b * L + Lb) * D, 0, (size_t)((L - Lb) * D) * sizeof(float));
        for (int64_t d0 = 0; d0 < D; d0 += W) {
            int64_t width = D - d0 < W ? D - d0 : W;
            /* this (row, channel block)'s tile-entry states, for the backward */
            float *tiles = bnd ? bnd + (b * ((D + W - 1) / W) + d0 / W) * chunks * block : NULL;
            load_block_params(a, a2, skip, A, Dsk, d0, width, N);
            memset(h, 0, (size_t)(N * W) * sizeof(float));
            for (int64_t t = 0; t < Lb; t++) {
                if (tiles && t % TT == 0) memcpy(tiles + (t / TT) * block, h, (size_t)block * sizeof(float));
                int64_t row = (b * L + t) * D + d0;
                const float *bt = Bm + b * sbB + t * stB, *ct = Cm + b * sbC + t * stC;
                load_lanes(dt, delta + row, width);
                load_lanes(ut, u + row, width);
                lanes du = lanes_load(dt) * lanes_load(ut), acc = {0};
                for (int64_t n = 0; n < N; n++) {
                    lanes hn = lanes_decay(dt, a2 + n * W) * lanes_load(h + n * W) + du * bt[n];
                    lanes_store(h + n * W, hn);
                    acc += ct[n] * hn;
                }
                acc += lanes_load(skip) * lanes_load(ut);
                if (z) {  /* silu(z) = z sigmoid(z) */
                    load_lanes(zt, z + b * sbZ + t * stZ + d0, width);
                    acc = acc * lanes_load(zt) * lanes_sigmoid(zt);
                }
                lanes_store(out, acc);
                store_lanes(y + row, out, width);
            }
        }
    }
    free(h);
    free(a);
    free(a2);
}

/* Batch rows [b0, b1) of grad_u, grad_delta, grad_z, grad_B, grad_C are overwritten;
   grad_A and grad_D (this thread's own copies) are added to. Per (row, channel block) the
   forward states are recomputed with their decays into (L + 1) x N x W buffers, then
   walked backwards. */
static void scan_backward_rows(const float *u, const float *delta, const float *A, const float *Bm,
                   int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                   const float *Dsk, const float *z, int64_t sbZ, int64_t stZ,
                   const float *bnd, const float *grad_y, float *grad_u, float *grad_delta,
                   float *grad_z, float *grad_A, float *grad_B, float *grad_C, float *grad_D,
                   const int64_t *lens, int64_t b0, int64_t b1, int64_t L, int64_t D, int64_t N) {
    int64_t block = N * W;
    float *a = buffer(block), *a2 = buffer(block), *gh = buffer(block), *gA = buffer(block);
    int64_t chunks = (L + TT - 1) / TT;
    float *hs = buffer((TT + 1) * block);  /* one time tile's states; slot i: h_{t0+i-1} */
    float *decay = buffer(TT * block);
    float *ys = buffer(L * W);            /* the scan's own y_t, for the gate's gradient */
    float *gBl = buffer(L * block), *gCl = buffer(L * block);  /* per-lane dLoss/dB, dLoss/dC */
    float dt[W], ut[W], zt[W], go[W], skip[W];
    float gz[W], gu[W], gd[W], gD[W];
    for (int64_t b = b0; b < b1; b++) {
        int64_t Lb = lens ? lens[b] : L;  /* real steps of this row; the padding's gradients are 0 */
        size_t pad = (size_t)((L - Lb) * D) * sizeof(float);
        memset(grad_u + (b * L + Lb) * D, 0, pad);
        memset(grad_delta + (b * L + Lb) * D, 0, pad);
        if (z) memset(grad_z + (b * L + Lb) * D, 0, pad);
        memset(gBl, 0, (size_t)(L * block) * sizeof(float));
        memset(gCl, 0, (size_t)(L * block) * sizeof(float));
        for (int64_t d0 = 0; d0 < D; d0 += W) {
            int64_t width = D - d0 < W ? D - d0 : W;
            load_block_params(a, a2, skip, A, Dsk, d0, width, N);
            const float *tiles = bnd + (b * ((D + W - 1) / W) + d0 / W) * chunks * block;
            memset(gh, 0, (size_t)block * sizeof(float));  /* dLoss/dh_t carried from t + 1 */
            memset(gA, 0, (size_t)block * sizeof(float));
            for (int j = 0; j < W; j++) gD[j] = 0.0f;
            for (int64_t c = (Lb + TT - 1) / TT - 1; c >= 0; c--) {  /* time tiles, last first */
                int64_t t0 = c * TT, t1 = t0 + TT < Lb ? t0 + TT : Lb;
                memcpy(hs, tiles + c * block, (size_t)block * sizeof(float));
                for (int64_t t = t0; t < t1; t++) {  /* recompute this tile's states */
                    int64_t row = (b * L + t) * D + d0;
                    const float *bt = Bm + b * sbB + t * stB, *ct = Cm + b * sbC + t * stC;
                    const float *restrict prev = hs + (t - t0) * block;
                    float *restrict next = hs + (t - t0 + 1) * block, *restrict dec = decay + (t - t0) * block;
                    load_lanes(dt, delta + row, width);
                    load_lanes(ut, u + row, width);
                    lanes duv = lanes_load(dt) * lanes_load(ut), acc = {0};
                    for (int64_t n = 0; n < N; n++) {
                        lanes e = lanes_decay(dt, a2 + n * W);
                        lanes hn = e * lanes_load(prev + n * W) + duv * bt[n];
                        lanes_store(dec + n * W, e);
                        lanes_store(next + n * W, hn);
                        acc += ct[n] * hn;
                    }
                    lanes_store(ys + t * W, acc);
                }
                for (int64_t t = t1 - 1; t >= t0; t--) {
                    int64_t row = (b * L + t) * D + d0;
                    const float *bt = Bm + b * sbB + t * stB, *ct = Cm + b * sbC + t * stC;
                    load_lanes(dt, delta + row, width);
                    load_lanes(ut, u + row, width);
                    load_lanes(go, grad_y + row, width);
                    lanes utv = lanes_load(ut), gyv = lanes_load(go);
                    if (z) {  /* through the gate: out = (y + skip u) silu(z) */
                        load_lanes(zt, z + b * sbZ + t * stZ + d0, width);
                        lanes zv = lanes_load(zt), sig = lanes_sigmoid(zt);
                        lanes pre = lanes_load(ys + t * W) + lanes_load(skip) * utv;
                        /* silu'(z) = sig (1 + z (1 - sig)) */
                        lanes_store(gz, gyv * pre * sig * (1.0f + zv * (1.0f - sig)));
                        store_lanes(grad_z + row, gz, width);
                        gyv = gyv * zv * sig;
                    }
                    lanes_store(gD, lanes_load(gD) + gyv * utv);
                    lanes dtv = lanes_load(dt), duv = dtv * utv;
                    lanes gduv = {0}, gdeltav = {0};
                    const float *restrict prev = hs + (t - t0) * block, *restrict cur = hs + (t - t0 + 1) * block;
                    const float *restrict dec = decay + (t - t0) * block;
                    float *restrict gbt = gBl + t * block, *restrict gct = gCl + t * block;
                    for (int64_t n = 0; n < N; n++) {
                        float bn = bt[n], cn = ct[n];
                        float *ghn = gh + n * W, *gAn = gA + n * W;
                        float *gbn = gbt + n * W, *gcn = gct + n * W;
                        lanes en = lanes_load(dec + n * W);
                        lanes g = lanes_load(ghn) + gyv * cn;                           /* total dLoss/dh_t */
                        lanes_store(gcn, lanes_load(gcn) + gyv * lanes_load(cur + n * W));  /* dLoss/dC_t[n], lane part */
                        lanes_store(gbn, lanes_load(gbn) + duv * g);                     /* dLoss/dB_t[n], lane part */
                        gduv += g * bn;
                        lanes g_log_decay = g * lanes_load(prev + n * W) * en;          /* dLoss/d(delta A) */
                        gdeltav += g_log_decay * lanes_load(a + n * W);
                        lanes_store(gAn, lanes_load(gAn) + dtv * g_log_decay);
                        lanes_store(ghn, g * en);
                    }
                    lanes_store(gu, gduv * dtv + gyv * lanes_load(skip));
                    lanes_store(gd, gdeltav + gduv * utv);
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
    free(a); free(a2); free(gh); free(gA); free(hs); free(decay); free(ys); free(gBl); free(gCl);
}

/* Mamba's causal depthwise convolution and SiLU, fused, vectorised over channels:
   out[b, t, d] = silu(bias[d] + sum_k w[k, d] * x[b, t - (K - 1) + k, d])  (x = 0 before t = 0)
   x: rows with strides (sb, st) and contiguous channels (a view of in_proj's output);
   w [K D] (tap K - 1 multiplies the current step); out, grad_out, grad_x [Bsz L D].
   conv_preactivation is the sum inside silu at step t of one batch row (xb = that row's
   start); the backward recomputes it rather than storing it. */
static inline void conv_preactivation(const float *xb, int64_t st, const float *w, const float *bias,
                                      float *restrict o, int64_t t, int64_t D, int64_t K) {
    int64_t d = 0;
    for (; d + W <= D; d += W) {  /* the taps summed in registers, W channels at a time (summed
                                     through o, each tap's store fed the next tap's load) */
        lanes acc = lanes_load(bias + d);
        for (int64_t k = 0; k < K; k++) {
            int64_t s = t - (K - 1) + k;
            if (s >= 0) acc += lanes_load(w + k * D + d) * lanes_load(xb + s * st + d);
        }
        lanes_store(o + d, acc);
    }
    for (; d < D; d++) {  /* the channels after the last full block, in the same order */
        float acc = bias[d];
        for (int64_t k = 0; k < K; k++) {
            int64_t s = t - (K - 1) + k;
            if (s >= 0) acc += w[k * D + d] * xb[s * st + d];
        }
        o[d] = acc;
    }
}

static void conv_forward_rows(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                  float *out, const int64_t *lens, int64_t b0, int64_t b1, int64_t L, int64_t D,
                  int64_t K) {
    for (int64_t b = b0; b < b1; b++) {
        int64_t Lb = lens ? lens[b] : L;
        for (int64_t t = 0; t < Lb; t++) {
            float *restrict o = out + (b * L + t) * D;
            conv_preactivation(x + b * sb, st, w, bias, o, t, D, K);
            for (int64_t d = 0; d < D; d++) o[d] = o[d] / (1.0f + fast_exp(-o[d]));
        }
        memset(out + (b * L + Lb) * D, 0, (size_t)((L - Lb) * D) * sizeof(float));
    }
}

/* grad_x rows [b0, b1) are overwritten; grad_w [K D] and grad_bias [D] (this thread's own
   copies) are added to. g is a scratch buffer of L x D floats. */
static void conv_backward_rows(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                   const float *grad_out, float *grad_x, float *grad_w, float *grad_bias,
                   const int64_t *lens, int64_t b0, int64_t b1, int64_t L, int64_t D, int64_t K) {
    float *g = buffer(L * D);  /* dLoss/d(pre-activation) of one batch row */
    for (int64_t b = b0; b < b1; b++) {
        int64_t Lb = lens ? lens[b] : L;  /* steps t >= Lb: no gradient (padding) */
        for (int64_t t = 0; t < Lb; t++) {
            float *restrict gt = g + t * D;
            conv_preactivation(x + b * sb, st, w, bias, gt, t, D, K);
            const float *restrict go = grad_out + (b * L + t) * D;
            for (int64_t d = 0; d < D; d++) {  /* silu'(p) = sig (1 + p (1 - sig)) */
                float p = gt[d], sig = 1.0f / (1.0f + fast_exp(-p));
                gt[d] = go[d] * sig * (1.0f + p * (1.0f - sig));
            }
        }
        /* grad_bias[d] += sum_t g[t, d] and grad_w[k, d] += sum_t g[t, d] x[t - (K-1) + k, d],
           summed over t in registers, W channels at a time (accumulating into grad_w at every
           step chained each step's store to the next step's load: most of the backward) */
        for (int64_t d0 = 0; d0 < D; d0 += W) {
            if (d0 + W > D) {  /* a last partial block of channels */
                for (int64_t d = d0; d < D; d++)
                    for (int64_t t = 0; t < Lb; t++) {
                        grad_bias[d] += g[t * D + d];
                        for (int64_t k = 0; k < K; k++) {
                            int64_t s = t - (K - 1) + k;
                            if (s >= 0) grad_w[k * D + d] += g[t * D + d] * x[b * sb + s * st + d];
                        }
                    }
                break;
            }
            lanes sum = {0};
            for (int64_t t = 0; t < Lb; t++) sum += lanes_load(g + t * D + d0);
            lanes_store(grad_bias + d0, lanes_load(grad_bias + d0) + sum);
            for (int64_t k = 0; k < K; k++) {
                lanes acc = {0};
                for (int64_t t = (K - 1) - k; t < Lb; t++)  /* s = t - (K-1) + k >= 0 */
                    acc += lanes_load(g + t * D + d0) * lanes_load(x + b * sb + (t - (K - 1) + k) * st + d0);
                lanes_store(grad_w + k * D + d0, lanes_load(grad_w + k * D + d0) + acc);
            }
        }
        for (int64_t s = 0; s < L; s++) {
            float *restrict gx = grad_x + (b * L + s) * D;
            for (int64_t d = 0; d < D; d++) gx[d] = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                int64_t t = s + (K - 1) - k;
                if (t >= Lb) continue;
                const float *restrict gt = g + t * D, *restrict wk = w + k * D;
                for (int64_t d = 0; d < D; d++) gx[d] += wk[d] * gt[d];
            }
        }
    }
    free(g);
}

/* S5's complex linear recurrence (ss4rec.ssm.s5), rows [b0, b1): complex64 as interleaved
   (re, im) floats. Forward: x_t = a_t x_{t-1} + b_t from x_{-1} = init; reverse:
   x_t = a_t x_{t+1} + b_t from x_L = init (init NULL: zeros). b, x [Bsz L P] contiguous;
   a [Bsz L P] with batch and step strides (sab, sat, in complex numbers; 0 where a is
   broadcast) and contiguous states; init [Bsz P]. The plain per-step loop (the work, B L P
   complex multiply-adds, is far too small for a chunked or parallel scan to pay off). */
static void complex_scan_rows(const float *a, int64_t sab, int64_t sat, const float *b,
                              const float *init, float *x, int64_t b0, int64_t b1,
                              int64_t L, int64_t P, int64_t reverse) {
    float *state = buffer(2 * P);
    for (int64_t r = b0; r < b1; r++) {
        if (init) memcpy(state, init + 2 * r * P, (size_t)(2 * P) * sizeof(float));
        else memset(state, 0, (size_t)(2 * P) * sizeof(float));
        for (int64_t i = 0; i < L; i++) {
            int64_t t = reverse ? L - 1 - i : i;
            const float *at = a + 2 * (r * sab + t * sat), *bt = b + 2 * (r * L + t) * P;
            float *xt = x + 2 * (r * L + t) * P;
            for (int64_t p = 0; p < P; p++) {
                float ar = at[2 * p], ai = at[2 * p + 1], sr = state[2 * p], si = state[2 * p + 1];
                float nr = ar * sr - ai * si + bt[2 * p], ni = ar * si + ai * sr + bt[2 * p + 1];
                state[2 * p] = nr;
                state[2 * p + 1] = ni;
                xt[2 * p] = nr;
                xt[2 * p + 1] = ni;
            }
        }
    }
    free(state);
}

/* S5's zero-order-hold discretisation and scan in one pass (ss4rec.ssm.s5._ZOHScan), rows
   [b0, b1). Per row k, state p: step = scale[k] base[p]; Λ̄ = exp(Re(λ) step) (cos + i sin)(Im(λ) step),
   exactly 0 once Re(λ) step < -underflow; x_k = Λ̄ x_{k-1} + (Λ̄ - 1) v_k from x_{-1} = init
   (NULL: zeros). Complex numbers are interleaved (re, im) floats; scale has batch and step
   strides (0 where broadcast); v, x, lam_bar [Bsz L P] contiguous; lam [P] complex, base [P]. */
static inline void zoh_decay_at(float scale, float base, float lr, float li, float underflow,
                                float *dr, float *di) {
    float step = scale * base, log_magnitude = step * lr;
    float magnitude = log_magnitude >= -underflow ? expf(log_magnitude) : 0.0f;
    float angle = step * li;
    *dr = magnitude * cosf(angle);
    *di = magnitude * sinf(angle);
}

static void zoh_forward_rows(const float *scale, int64_t ssb, int64_t sst, const float *base,
                             const float *lam, float underflow, const float *v, const float *init,
                             float *x, float *lam_bar, int64_t b0, int64_t b1, int64_t L, int64_t P) {
    float *state = buffer(2 * P);
    for (int64_t r = b0; r < b1; r++) {
        if (init) memcpy(state, init + 2 * r * P, (size_t)(2 * P) * sizeof(float));
        else memset(state, 0, (size_t)(2 * P) * sizeof(float));
        for (int64_t t = 0; t < L; t++) {
            float sc = scale[r * ssb + t * sst];
            int64_t row = 2 * (r * L + t) * P;
            for (int64_t p = 0; p < P; p++) {
                float dr, di;
                zoh_decay_at(sc, base[p], lam[2 * p], lam[2 * p + 1], underflow, &dr, &di);
                float vr = v[row + 2 * p], vi = v[row + 2 * p + 1];
                float sr = state[2 * p], si = state[2 * p + 1];
                /* Λ̄ x + (Λ̄ - 1) v */
                float nr = dr * sr - di * si + ((dr - 1.0f) * vr - di * vi);
                float ni = dr * si + di * sr + ((dr - 1.0f) * vi + di * vr);
                state[2 * p] = nr;
                state[2 * p + 1] = ni;
                x[row + 2 * p] = nr;
                x[row + 2 * p + 1] = ni;
                lam_bar[row + 2 * p] = dr;
                lam_bar[row + 2 * p + 1] = di;
            }
        }
    }
    free(state);
}

/* The backward of zoh_forward_rows, one reverse pass per row with μ = conj(adjoint):
   μ_k = conj(g_k) + Λ̄_{k+1} μ_{k+1}; dLoss/dv_k = conj(μ_k (Λ̄_k - 1));
   w_k = (x_{k-1} + v_k) μ_k Λ̄_k; dLoss/dλ = conj(Σ w step); dLoss/dstep = Re(w λ);
   dLoss/dbase[p] = Σ dstep scale; dLoss/dscale[k] = Σ_p dstep base (grad_scale [Bsz L], or NULL);
   dLoss/dx_{-1} = conj(Λ̄_0 μ_0) (grad_init, when init is given). grad_lam [P] complex and
   grad_base [P] are this thread's own slots, added to. */
static void zoh_backward_rows(const float *scale, int64_t ssb, int64_t sst, const float *base,
                              const float *lam, const float *v, const float *init, const float *x,
                              const float *lam_bar, const float *g, float *grad_v, float *grad_init,
                              float *grad_scale, float *grad_lam, float *grad_base,
                              int64_t b0, int64_t b1, int64_t L, int64_t P) {
    float *mu = buffer(2 * P), *next = buffer(2 * P);
    for (int64_t r = b0; r < b1; r++) {
        memset(mu, 0, (size_t)(2 * P) * sizeof(float));
        memset(next, 0, (size_t)(2 * P) * sizeof(float));  /* Λ̄_{k+1}; none after the last step */
        for (int64_t t = L - 1; t >= 0; t--) {
            float sc = scale[r * ssb + t * sst], gs = 0.0f;
            int64_t row = 2 * (r * L + t) * P;
            const float *prev = t > 0 ? x + row - 2 * P : (init ? init + 2 * r * P : NULL);
            for (int64_t p = 0; p < P; p++) {
                float dr = lam_bar[row + 2 * p], di = lam_bar[row + 2 * p + 1];
                float ar = next[2 * p], ai = next[2 * p + 1], mr0 = mu[2 * p], mi0 = mu[2 * p + 1];
                float mr = g[row + 2 * p] + (ar * mr0 - ai * mi0);
                float mi = -g[row + 2 * p + 1] + (ar * mi0 + ai * mr0);
                mu[2 * p] = mr;
                mu[2 * p + 1] = mi;
                next[2 * p] = dr;
                next[2 * p + 1] = di;
                /* conj(μ (Λ̄ - 1)) */
                grad_v[row + 2 * p] = mr * (dr - 1.0f) - mi * di;
                grad_v[row + 2 * p + 1] = -(mr * di + mi * (dr - 1.0f));
                float sr = v[row + 2 * p], si = v[row + 2 * p + 1];
                if (prev) { sr += prev[2 * p]; si += prev[2 * p + 1]; }
                float qr = sr * mr - si * mi, qi = sr * mi + si * mr;  /* source μ */
                float wr = qr * dr - qi * di, wi = qr * di + qi * dr;  /* source μ Λ̄ */
                float step = sc * base[p];
                grad_lam[2 * p] += wr * step;
                grad_lam[2 * p + 1] += wi * step;
                float gstep = wr * lam[2 * p] - wi * lam[2 * p + 1];
                grad_base[p] += gstep * sc;
                gs += gstep * base[p];
            }
            if (grad_scale) grad_scale[r * L + t] = gs;
        }
        if (init && grad_init)
            for (int64_t p = 0; p < P; p++) {  /* conj(Λ̄_0 μ_0); next holds Λ̄_0 now */
                float dr = next[2 * p], di = next[2 * p + 1], mr = mu[2 * p], mi = mu[2 * p + 1];
                grad_init[2 * (r * P + p)] = dr * mr - di * mi;
                grad_init[2 * (r * P + p) + 1] = -(dr * mi + di * mr);
            }
    }
    free(mu);
    free(next);
}

/* Dropout masks (ss4rec.models.dropout): out[i] = scale where u_i >= p, else 0, for uniforms
   u_i on [0, 1) with 24 random bits each. Output k of SplitMix64 started at `seed` gives
   u_{2k} (its top 24 bits) and u_{2k+1} (the next 24). Counter-based: every element's draw
   depends only on (seed, i), so any split over threads gives the same masks. */
static inline uint64_t splitmix64_at(uint64_t seed, uint64_t k) {
    uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void dropout_pairs(float *out, int64_t k0, int64_t k1, uint64_t seed, float p, float scale) {
    for (int64_t k = k0; k < k1; k++) {
        uint64_t z = splitmix64_at(seed, (uint64_t)k);
        float u0 = (float)(int32_t)(z >> 40) * 0x1.0p-24f;
        float u1 = (float)(int32_t)((z >> 16) & 0xFFFFFFu) * 0x1.0p-24f;
        out[2 * k] = u0 >= p ? scale : 0.0f;
        out[2 * k + 1] = u1 >= p ? scale : 0.0f;
    }
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

/* Floats of tile-entry states scan_forward stores per batch row (bnd), for scan_backward. */
int64_t scan_boundary_floats(int64_t L, int64_t D, int64_t N) {
    return ((D + W - 1) / W) * ((L + TT - 1) / TT) * N * W;
}

void scan_forward(const float *u, const float *delta, const float *A, const float *Bm,
                  int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                  const float *Dsk, const float *z, int64_t sbZ, int64_t stZ, float *y,
                  float *bnd, const int64_t *lens, int64_t Bsz, int64_t L, int64_t D, int64_t N,
                  int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        scan_forward_rows(u, delta, A, Bm, sbB, stB, Cm, sbC, stC, Dsk, z, sbZ, stZ, y,
                          bnd, lens, r0, r1, L, D, N);
        denormals_restore(saved);
    TEAM_END
}

void scan_backward(const float *u, const float *delta, const float *A, const float *Bm,
                   int64_t sbB, int64_t stB, const float *Cm, int64_t sbC, int64_t stC,
                   const float *Dsk, const float *z, int64_t sbZ, int64_t stZ, const float *bnd,
                   const float *grad_y, float *grad_u, float *grad_delta, float *grad_z,
                   float *grad_A_parts, float *grad_B, float *grad_C, float *grad_D_parts,
                   const int64_t *lens, int64_t Bsz, int64_t L, int64_t D, int64_t N,
                   int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        scan_backward_rows(u, delta, A, Bm, sbB, stB, Cm, sbC, stC, Dsk, z, sbZ, stZ, bnd, grad_y,
                           grad_u, grad_delta, grad_z, grad_A_parts + tid * D * N, grad_B,
                           grad_C, grad_D_parts + tid * D, lens, r0, r1, L, D, N);
        denormals_restore(saved);
    TEAM_END
}

void conv_forward(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                  float *out, const int64_t *lens, int64_t Bsz, int64_t L, int64_t D, int64_t K,
                  int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        conv_forward_rows(x, sb, st, w, bias, out, lens, r0, r1, L, D, K);
        denormals_restore(saved);
    TEAM_END
}

void conv_backward(const float *x, int64_t sb, int64_t st, const float *w, const float *bias,
                   const float *grad_out, float *grad_x, float *grad_w_parts,
                   float *grad_bias_parts, const int64_t *lens, int64_t Bsz, int64_t L, int64_t D,
                   int64_t K, int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        conv_backward_rows(x, sb, st, w, bias, grad_out, grad_x, grad_w_parts + tid * K * D,
                           grad_bias_parts + tid * D, lens, r0, r1, L, D, K);
        denormals_restore(saved);
    TEAM_END
}

void complex_scan(const float *a, int64_t sab, int64_t sat, const float *b, const float *init,
                  float *x, int64_t Bsz, int64_t L, int64_t P, int64_t reverse, int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        complex_scan_rows(a, sab, sat, b, init, x, r0, r1, L, P, reverse);
        denormals_restore(saved);
    TEAM_END
}

void zoh_forward(const float *scale, int64_t ssb, int64_t sst, const float *base, const float *lam,
                 float underflow, const float *v, const float *init, float *x, float *lam_bar,
                 int64_t Bsz, int64_t L, int64_t P, int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        zoh_forward_rows(scale, ssb, sst, base, lam, underflow, v, init, x, lam_bar, r0, r1, L, P);
        denormals_restore(saved);
    TEAM_END
}

void zoh_backward(const float *scale, int64_t ssb, int64_t sst, const float *base, const float *lam,
                  const float *v, const float *init, const float *x, const float *lam_bar,
                  const float *g, float *grad_v, float *grad_init, float *grad_scale,
                  float *grad_lam_parts, float *grad_base_parts, int64_t Bsz, int64_t L, int64_t P,
                  int64_t threads) {
    TEAM_BEGIN(threads)
        ROWS(Bsz)
        unsigned int saved = denormals_off();
        zoh_backward_rows(scale, ssb, sst, base, lam, v, init, x, lam_bar, g, grad_v, grad_init,
                          grad_scale, grad_lam_parts + tid * 2 * P, grad_base_parts + tid * P,
                          r0, r1, L, P);
        denormals_restore(saved);
    TEAM_END
}

void dropout_mask(float *out, int64_t n, uint64_t seed, float p, float scale, int64_t threads) {
    int64_t pairs = n / 2;
    TEAM_BEGIN(threads)
        ROWS(pairs)
        dropout_pairs(out, r0, r1, seed, p, scale);
    TEAM_END
    if (n % 2) {  /* an odd last element: the first half of output `pairs` */
        float u = (float)(int32_t)(splitmix64_at(seed, (uint64_t)pairs) >> 40) * 0x1.0p-24f;
        out[n - 1] = u >= p ? scale : 0.0f;
    }
}

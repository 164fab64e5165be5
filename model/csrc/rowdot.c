/* Decoding kernels for x86-64 CPUs: matrix products of one (or a few) rows, y = W x + b,
 * with bf16, fp32 or int8 weights; multi-query attention of one query token over the
 * cached keys and values; and a whole GPTBigCode block of a one-token step in one call.
 *
 * A decode step multiplies one row of activations by every weight matrix of the model, so
 * its speed is how fast the weights stream from memory. These loops read each weight once,
 * row after row, front to back, and keep x in the L1 cache; the arithmetic is far below
 * what the core can do. The fused block saves the Python work between the operations of a
 * block, which for a small model costs more than the arithmetic.
 *
 * Built at run time by model/native.py (gcc or clang, -O3 -fopenmp) and called through
 * ctypes. Each kernel carries its instruction set in a target attribute, so one library
 * builds on any x86-64 machine; Python calls a kernel only when the CPU has what it needs.
 * The OpenMP runtime is the one torch already loaded (same soname), so torch.set_num_threads
 * governs these loops too.
 *
 * Layouts: W is (n, k) row-major with row stride ldw (elements); x has k elements; bias
 * (n elements) may be NULL; y has n elements. bf16 values travel as uint16_t.
 */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,fma")))
#define AVX512 __attribute__((target("avx512f,avx512bw,fma")))

int rowdot_abi_version(void) { return 8; }

/* fp32 -> bf16 with round-to-nearest-even; NaN stays NaN (as torch converts). */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- bf16 weights, bf16 activations: AVX512-BF16 dot products, fp32 accumulation ------ */

/* One row against x, both as kv vectors of 32 bf16. Four accumulators along the row keep
 * four products in flight; the row is read front to back, which the hardware prefetchers
 * follow at full speed (interleaving several rows' short streams halves the speed). */
AVX512_BF16 static inline float dot_bf16(const uint16_t *w, const __m512bh *xv, int64_t kv) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 4 <= kv; i += 4) {
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + 32 * i), xv[i]);
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(w + 32 * i + 32), xv[i + 1]);
        a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(w + 32 * i + 64), xv[i + 2]);
        a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(w + 32 * i + 96), xv[i + 3]);
    }
    for (; i < kv; i++)
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + 32 * i), xv[i]);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* Two rows against x, one after the other in one loop body, two accumulators each: the
 * next row's loads start while the previous row's sum is reduced (10-20% faster from memory
 * than one row per iteration with four accumulators). */
AVX512_BF16 static inline void dot2_bf16(const uint16_t *w0, const uint16_t *w1,
                                         const __m512bh *xv, int64_t kv, float *out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= kv; i += 2) {
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w0 + 32 * i), xv[i]);
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(w0 + 32 * i + 32), xv[i + 1]);
    }
    if (i < kv) a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w0 + 32 * i), xv[i]);
    for (i = 0; i + 2 <= kv; i += 2) {
        b0 = _mm512_dpbf16_ps(b0, (__m512bh)_mm512_loadu_si512(w1 + 32 * i), xv[i]);
        b1 = _mm512_dpbf16_ps(b1, (__m512bh)_mm512_loadu_si512(w1 + 32 * i + 32), xv[i + 1]);
    }
    if (i < kv) b0 = _mm512_dpbf16_ps(b0, (__m512bh)_mm512_loadu_si512(w1 + 32 * i), xv[i]);
    out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    out[1] = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
}

/* y = W x + b for bf16 W (n, kv * 32), x as kv vectors of 32 bf16, row pairs split among
 * threads. */
AVX512_BF16 static void matvec_bf16(const uint16_t *w, int64_t ldw, const __m512bh *xv, int64_t kv,
                                    const uint16_t *bias, uint16_t *y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t pair = 0; pair < n / 2; pair++) {
        const int64_t row = 2 * pair;
        float v[2];
        dot2_bf16(w + row * ldw, w + (row + 1) * ldw, xv, kv, v);
        for (int r = 0; r < 2; r++)
            y[row + r] = to_bf16(bias ? v[r] + from_bf16(bias[row + r]) : v[r]);
    }
    if (n % 2) {
        float v = dot_bf16(w + (n - 1) * ldw, xv, kv);
        y[n - 1] = to_bf16(bias ? v + from_bf16(bias[n - 1]) : v);
    }
}

/* k must be a multiple of 32 and at most 32 * 1024; returns 0, -1 when it is not, -2
 * when memory runs out. */
AVX512_BF16 int rowdot_bf16(const uint16_t *w, int64_t ldw, const uint16_t *x,
                            const uint16_t *bias, uint16_t *y, int64_t n, int64_t k) {
    if (k % 32 != 0 || k > 32 * 1024) return -1;
    const int64_t kv = k / 32;
    /* x once, aligned, off the stack (the caller may be a thread with a small one) */
    __m512bh *xv = aligned_alloc(64, (size_t)kv * sizeof(__m512bh));
    if (!xv) return -2;
    for (int64_t i = 0; i < kv; i++) xv[i] = (__m512bh)_mm512_loadu_si512(x + 32 * i);
    matvec_bf16(w, ldw, xv, kv, bias, y, n);
    free(xv);
    return 0;
}

/* Y = X W^T + b for a few rows of X (m <= 8, bf16, each row k values, a multiple of 32):
 * the weights stream once for all the rows. y is m rows of n. Returns 0, -1 for a shape it
 * does not take, -2 when memory runs out. */
AVX512_BF16 int rowdot_bf16_rows(const uint16_t *w, int64_t ldw, const uint16_t *x,
                                 const uint16_t *bias, uint16_t *y, int64_t n, int64_t k,
                                 int64_t m) {
    if (k % 32 != 0 || k > 32 * 1024 || m < 1 || m > 8) return -1;
    const int64_t kv = k / 32;
    __m512bh *xv = aligned_alloc(64, (size_t)(m * kv) * sizeof(__m512bh));
    if (!xv) return -2;
    for (int64_t i = 0; i < m * kv; i++) xv[i] = (__m512bh)_mm512_loadu_si512(x + 32 * i);
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; row++) {
        const uint16_t *wr = w + row * ldw;
        __m512 acc[8];
        for (int64_t r = 0; r < m; r++) acc[r] = _mm512_setzero_ps();
        for (int64_t i = 0; i < kv; i++) {
            __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + 32 * i);
            for (int64_t r = 0; r < m; r++) acc[r] = _mm512_dpbf16_ps(acc[r], wv, xv[r * kv + i]);
        }
        const float b = bias ? from_bf16(bias[row]) : 0.0f;
        for (int64_t r = 0; r < m; r++) y[r * n + row] = to_bf16(_mm512_reduce_add_ps(acc[r]) + b);
    }
    free(xv);
    return 0;
}

/* ---- fp32 weights, fp32 activations: AVX-512 FMA -------------------------------------- */

AVX512 static inline float dot_f32(const float *w, const float *x, int64_t k) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= k; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= k; i += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < k) {
        __mmask16 m = (__mmask16)((1u << (k - i)) - 1u);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

AVX512 int rowdot_f32(const float *w, int64_t ldw, const float *x, const float *bias,
                      float *y, int64_t n, int64_t k) {
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; row++) {
        float v = dot_f32(w + row * ldw, x, k);
        y[row] = bias ? v + bias[row] : v;
    }
    return 0;
}

/* ---- int8 weights with one scale per row, bf16 activations ------------------------------ */

AVX512 static inline float dot_int8(const int8_t *w, const float *x, int64_t k) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
#define WIDEN(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
    for (; i + 64 <= k; i += 64) {
        a0 = _mm512_fmadd_ps(WIDEN(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(WIDEN(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(WIDEN(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(WIDEN(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i < k; i += 16) a0 = _mm512_fmadd_ps(WIDEN(w + i), _mm512_loadu_ps(x + i), a0);
#undef WIDEN
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* y = (W x) * scales + bias with W int8, the rest bf16; k must be a multiple of 16 and at
 * most 32 * 1024; returns 0, -1 when it is not, -2 when memory runs out. The int8 values
 * are exact in fp32, so this is the dequantised product, accumulated in fp32 and rounded
 * once. */
AVX512 int rowdot_int8(const int8_t *w, int64_t ldw, const uint16_t *x, const uint16_t *scales,
                       const uint16_t *bias, uint16_t *y, int64_t n, int64_t k) {
    if (k % 16 != 0 || k > 32 * 1024) return -1;
    float *xf = aligned_alloc(64, (size_t)(k + 16) * sizeof(float));
    if (!xf) return -2;
    for (int64_t i = 0; i < k; i++) xf[i] = from_bf16(x[i]);
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; row++) {
        float v = dot_int8(w + row * ldw, xf, k) * from_bf16(scales[row]);
        y[row] = to_bf16(bias ? v + from_bf16(bias[row]) : v);
    }
    free(xf);
    return 0;
}

/* ---- int8 weights, activations quantised to int8 in blocks of 64: AVX512-VNNI ----------- */

#define AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,fma")))
#define QBLOCK 64

/* sum over the row of sx[b] * (xq . w) for blocks b of 64, with xu = xq + 128 as unsigned
 * bytes: vpdpbusd multiplies unsigned by signed bytes, and 128 * sum(w) is taken off with a
 * second vpdpbusd on a vector of 128s. */
AVX512_VNNI static inline float dot_q8(const int8_t *w, const uint8_t *xu, const float *sx,
                                       int64_t blocks) {
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        __m512i w0 = _mm512_loadu_si512(w + QBLOCK * b), w1 = _mm512_loadu_si512(w + QBLOCK * (b + 1));
        __m512i x0 = _mm512_loadu_si512(xu + QBLOCK * b), x1 = _mm512_loadu_si512(xu + QBLOCK * (b + 1));
        __m512i d0 = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), x0, w0),
                                      _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, w0));
        __m512i d1 = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), x1, w1),
                                      _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, w1));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_set1_ps(sx[b]), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_set1_ps(sx[b + 1]), a1);
    }
    for (; b < blocks; b++) {
        __m512i w0 = _mm512_loadu_si512(w + QBLOCK * b), x0 = _mm512_loadu_si512(xu + QBLOCK * b);
        __m512i d0 = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), x0, w0),
                                      _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, w0));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_set1_ps(sx[b]), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* x (k bf16 values) as unsigned bytes xu = round(x / sx[b]) + 128 per block b of 64 values,
 * sx[b] = the block's largest magnitude / 127 (as llama.cpp's q8_0 does with blocks of 32). */
static void quantize_q8(const uint16_t *x, int64_t k, uint8_t *xu, float *sx) {
    for (int64_t b = 0; b < k / QBLOCK; b++) {
        float m = 0.0f;
        for (int i = 0; i < QBLOCK; i++) {
            float v = from_bf16(x[QBLOCK * b + i]);
            m = fabsf(v) > m ? fabsf(v) : m;
        }
        float inv = m > 0.0f ? 127.0f / m : 0.0f;
        sx[b] = m / 127.0f;
        for (int i = 0; i < QBLOCK; i++) {
            float q = nearbyintf(from_bf16(x[QBLOCK * b + i]) * inv);
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            xu[QBLOCK * b + i] = (uint8_t)((int)q + 128);
        }
    }
}

/* y = (W xq) * scales + bias for int8 W (n, blocks * 64), xq quantised by quantize_q8. */
AVX512_VNNI static void matvec_q8(const int8_t *w, int64_t ldw, const uint8_t *xu,
                                  const float *sx, int64_t blocks, const uint16_t *scales,
                                  const uint16_t *bias, uint16_t *y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; row++) {
        float v = dot_q8(w + row * ldw, xu, sx, blocks) * from_bf16(scales[row]);
        y[row] = to_bf16(bias ? v + from_bf16(bias[row]) : v);
    }
}

/* Bytes quantize_q8 writes for k values: the bytes, then the block scales, 64-aligned. */
static inline size_t q8_bytes(int64_t k) {
    return (size_t)k + (((size_t)(k / QBLOCK) * sizeof(float) + 63) / 64) * 64;
}

/* y = (W x) * scales + bias with W int8 and x quantised to int8 per block of 64 values
 * (quantize_q8); the rest bf16. k must be a multiple of 64 and at most 32 * 1024; returns
 * 0, -1 when it is not, -2 when memory runs out. */
AVX512_VNNI int rowdot_q8(const int8_t *w, int64_t ldw, const uint16_t *x, const uint16_t *scales,
                          const uint16_t *bias, uint16_t *y, int64_t n, int64_t k) {
    if (k % QBLOCK != 0 || k > 32 * 1024) return -1;
    uint8_t *xu = aligned_alloc(64, q8_bytes(k));
    if (!xu) return -2;
    float *sx = (float *)(xu + k);
    quantize_q8(x, k, xu, sx);
    matvec_q8(w, ldw, xu, sx, k / QBLOCK, scales, bias, y, n);
    free(xu);
    return 0;
}

/* ---- multi-query attention of one query token, bf16 K/V ------------------------------- */

/* exp(x) for x <= 88: 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, p a degree-6 Taylor
 * polynomial (relative error below 2e-7). */
AVX512 static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f)); /* below this exp underflows to 0 */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Sixteen vectors to one: lane i of the result is the sum of the lanes of v[i]. */
AVX512 static inline __m512 sum16(const __m512 *v) {
    __m512 w[8], x[4];
    for (int i = 0; i < 8; i++)
        w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(w[2 * i]), b = _mm512_castps_pd(w[2 * i + 1]);
        x[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    __m512 z0 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88),
                              _mm512_shuffle_f32x4(x[0], x[1], 0xdd));
    __m512 z1 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88),
                              _mm512_shuffle_f32x4(x[2], x[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, 0x88), _mm512_shuffle_f32x4(z0, z1, 0xdd));
}

AVX512 static inline __m512 bf16x16_to_f32(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Raw scores of every head against keys [t0, t0 + n), n <= 16: e[h * lde + t] = scale * q_h.k_t.
 * The block's keys are read from memory once and from the L1 cache for the other heads. q
 * is heads * dv32 vectors of 32 bf16. */
AVX512_BF16 static void block_scores(const __m512bh *q, int64_t heads, int64_t dv32,
                                     const uint16_t *k, int64_t ldk, int64_t t0, int64_t n,
                                     float scale, float *e, int64_t lde) {
    for (int64_t h = 0; h < heads; h++) {
        const __m512bh *qh = q + h * dv32;
        if (n == 16) {
            __m512 acc[16];
            for (int j = 0; j < 16; j++) {
                const uint16_t *row = k + (t0 + j) * ldk;
                __m512 a = _mm512_setzero_ps();
                for (int64_t i = 0; i < dv32; i++)
                    a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(row + 32 * i), qh[i]);
                acc[j] = a;
            }
            _mm512_storeu_ps(e + h * lde + t0, _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale)));
        } else {
            for (int64_t j = 0; j < n; j++) {
                const uint16_t *row = k + (t0 + j) * ldk;
                __m512 a = _mm512_setzero_ps();
                for (int64_t i = 0; i < dv32; i++)
                    a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(row + 32 * i), qh[i]);
                e[h * lde + t0 + j] = _mm512_reduce_add_ps(a) * scale;
            }
        }
    }
}

/* e[t] = exp(e[t] - max e) over [0, s); returns the sum. */
AVX512 static float softmax_numerators(float *e, int64_t s) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 16 <= s; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(e + i));
    float m = _mm512_reduce_max_ps(vmax);
    for (; i < s; i++) m = e[i] > m ? e[i] : m;
    __m512 vm = _mm512_set1_ps(m), total = _mm512_setzero_ps();
    for (i = 0; i + 16 <= s; i += 16) {
        __m512 v = exp512(_mm512_sub_ps(_mm512_loadu_ps(e + i), vm));
        _mm512_storeu_ps(e + i, v);
        total = _mm512_add_ps(total, v);
    }
    if (i < s) {
        __mmask16 mask = (__mmask16)((1u << (s - i)) - 1u);
        __m512 v = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, e + i), vm));
        _mm512_mask_storeu_ps(e + i, mask, v);
        total = _mm512_add_ps(total, _mm512_maskz_mov_ps(mask, v));
    }
    return _mm512_reduce_add_ps(total);
}

AVX512 static inline void store16_bf16(uint16_t *out, __m512 v) {
    float f[16];
    _mm512_storeu_ps(f, v);
    for (int j = 0; j < 16; j++) out[j] = to_bf16(f[j]);
}

AVX512 static inline void store16_f32(float *out, __m512 v) { _mm512_storeu_ps(out, v); }

AVX512 static inline __m512 f32x16(const float *p) { return _mm512_loadu_ps(p); }

/* out[g] = sum_t e[g][t] v_t / sums[g] for G heads at once, DV = head_dim / 16 fp32
 * vectors per head: G * DV accumulators stay in registers while V streams once. T is the
 * type of V and out, LOAD16 widens 16 of them to fp32, STORE16 narrows back. */
#define DEFINE_WEIGHTED_SUM(NAME, T, LOAD16, STORE16, DV, G)                                 \
    AVX512 static void NAME(const float *e, int64_t lde, const float *sums, const T *v,       \
                            int64_t ldv, int64_t s, T *out) {                                 \
        __m512 acc[G][DV];                                                                    \
        for (int g = 0; g < G; g++)                                                           \
            for (int c = 0; c < DV; c++) acc[g][c] = _mm512_setzero_ps();                     \
        for (int64_t t = 0; t < s; t++) {                                                     \
            __m512 vf[DV];                                                                    \
            for (int c = 0; c < DV; c++) vf[c] = LOAD16(v + t * ldv + 16 * c);                \
            for (int g = 0; g < G; g++) {                                                     \
                __m512 w = _mm512_set1_ps(e[g * lde + t]);                                    \
                for (int c = 0; c < DV; c++) acc[g][c] = _mm512_fmadd_ps(w, vf[c], acc[g][c]); \
            }                                                                                 \
        }                                                                                     \
        for (int g = 0; g < G; g++) {                                                         \
            __m512 inv = _mm512_set1_ps(1.0f / sums[g]);                                      \
            for (int c = 0; c < DV; c++)                                                      \
                STORE16(out + g * 16 * DV + 16 * c, _mm512_mul_ps(acc[g][c], inv));           \
        }                                                                                     \
    }

/* The bf16 weighted sums take two keys per step with AVX512-BF16 dot products: the two V rows
 * interleaved (unpacklo/hi_epi16: value pairs (v_t[i], v_t+1[i])) against the pair of
 * weights (e_t, e_t+1) broadcast, so one vdpbf16ps does 32 multiply-adds where fp32 FMAs did
 * 16 and no widening of V is needed. The weights are rounded to bf16 for it, as torch's bf16
 * attention rounds its probabilities before multiplying by V; sums and division stay fp32.
 * pb[g] are G heads' weights as bf16 with one 0 after the last (for an odd s). The unpacks
 * work within 128-bit lanes, so accumulator lane 4L + i of a 32-value chunk holds value
 * 8L + i (lo) or 8L + 4 + i (hi); the stores put them back in order. */
#define DEFINE_WEIGHTED_SUM_PAIRS(NAME, DC, G)                                                \
    AVX512_BF16 static void NAME(uint16_t *const *pb, const float *sums, const uint16_t *v,   \
                                 int64_t ldv, int64_t s, uint16_t *out) {                     \
        __m512 acc[G][2 * DC];                                                                \
        for (int g = 0; g < G; g++)                                                           \
            for (int c = 0; c < 2 * DC; c++) acc[g][c] = _mm512_setzero_ps();                 \
        for (int64_t t = 0; t < s; t += 2) {                                                  \
            __m512i pairs[2 * DC];                                                            \
            for (int c = 0; c < DC; c++) {                                                    \
                __m512i a = _mm512_loadu_si512(v + t * ldv + 32 * c);                         \
                __m512i b = t + 1 < s ? _mm512_loadu_si512(v + (t + 1) * ldv + 32 * c)        \
                                      : _mm512_setzero_si512();                               \
                pairs[2 * c] = _mm512_unpacklo_epi16(a, b);                                   \
                pairs[2 * c + 1] = _mm512_unpackhi_epi16(a, b);                               \
            }                                                                                 \
            for (int g = 0; g < G; g++) {                                                     \
                int32_t w2;                                                                   \
                memcpy(&w2, pb[g] + t, sizeof w2);                                            \
                __m512bh w = (__m512bh)_mm512_set1_epi32(w2);                                 \
                for (int c = 0; c < 2 * DC; c++)                                              \
                    acc[g][c] = _mm512_dpbf16_ps(acc[g][c], (__m512bh)pairs[c], w);           \
            }                                                                                 \
        }                                                                                     \
        for (int g = 0; g < G; g++) {                                                         \
            __m512 inv = _mm512_set1_ps(1.0f / sums[g]);                                      \
            for (int c = 0; c < DC; c++) {                                                    \
                float lo[16], hi[16];                                                         \
                _mm512_storeu_ps(lo, _mm512_mul_ps(acc[g][2 * c], inv));                      \
                _mm512_storeu_ps(hi, _mm512_mul_ps(acc[g][2 * c + 1], inv));                  \
                uint16_t *o = out + g * 32 * DC + 32 * c;                                     \
                for (int lane = 0; lane < 4; lane++)                                          \
                    for (int i = 0; i < 4; i++) {                                             \
                        o[8 * lane + i] = to_bf16(lo[4 * lane + i]);                          \
                        o[8 * lane + 4 + i] = to_bf16(hi[4 * lane + i]);                      \
                    }                                                                         \
            }                                                                                 \
        }                                                                                     \
    }

DEFINE_WEIGHTED_SUM_PAIRS(weighted_pairs_64x6, 2, 6)
DEFINE_WEIGHTED_SUM_PAIRS(weighted_pairs_64x1, 2, 1)
DEFINE_WEIGHTED_SUM_PAIRS(weighted_pairs_128x2, 4, 2)
DEFINE_WEIGHTED_SUM_PAIRS(weighted_pairs_128x1, 4, 1)

/* e (s floats) to bf16 in place at its start, with a 0 after the last: the bf16 writes stay
 * behind the float reads. */
AVX512_BF16 static uint16_t *weights_to_bf16(float *e, int64_t s) {
    uint16_t *pb = (uint16_t *)e;
    int64_t i = 0;
    for (; i + 16 <= s; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(e + i));
        _mm256_storeu_si256((__m256i *)(pb + i), (__m256i)h);
    }
    for (; i < s; i++) pb[i] = to_bf16(e[i]);
    pb[s] = 0;
    return pb;
}
DEFINE_WEIGHTED_SUM(weighted_sum_f32_64x6, float, f32x16, store16_f32, 4, 6)
DEFINE_WEIGHTED_SUM(weighted_sum_f32_64x1, float, f32x16, store16_f32, 4, 1)
DEFINE_WEIGHTED_SUM(weighted_sum_f32_128x3, float, f32x16, store16_f32, 8, 3)
DEFINE_WEIGHTED_SUM(weighted_sum_f32_128x1, float, f32x16, store16_f32, 8, 1)

/* Raw fp32 scores, as block_scores computes them for bf16: q is heads * d floats. */
AVX512 static void block_scores_f32(const float *q, int64_t heads, int64_t d, const float *k,
                                    int64_t ldk, int64_t t0, int64_t n, float scale, float *e,
                                    int64_t lde) {
    for (int64_t h = 0; h < heads; h++) {
        const float *qh = q + h * d;
        __m512 acc[16];
        for (int64_t j = 0; j < n; j++) {
            const float *row = k + (t0 + j) * ldk;
            __m512 a = _mm512_setzero_ps();
            for (int64_t i = 0; i < d; i += 16)
                a = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(qh + i), a);
            acc[j] = a;
        }
        if (n == 16) {
            _mm512_storeu_ps(e + h * lde + t0, _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale)));
        } else {
            for (int64_t j = 0; j < n; j++) e[h * lde + t0 + j] = _mm512_reduce_add_ps(acc[j]) * scale;
        }
    }
}

/* Attention of one query token with `heads` heads over s cached positions that share one
 * key/value head (multi-query): out[h] = softmax(scale * q[h] . K^T) V, all (., d) bf16,
 * K and V rows ldkv elements apart; scratch holds heads * s floats and heads floats more.
 * d must be 64 or 128 and heads at most 48; returns 0, or -1 (nothing written) otherwise. */
/* The weighted sums of every head: groups of `group` heads where they fill one, single heads
 * for the rest. */
#define WEIGHTED_SUMS(SUFFIX)                                                                 \
    do {                                                                                      \
        const int64_t group = d == 64 ? 6 : 3, full = heads / group;                          \
        _Pragma("omp parallel for schedule(static)")                                          \
        for (int64_t h = 0; h < heads; h++) {                                                 \
            if (h < full * group) {                                                           \
                if (h % group != 0) continue;                                                 \
                if (d == 64)                                                                  \
                    weighted_sum##SUFFIX##64x6(e + h * s, s, sums + h, v, ldkv, s, out + h * d); \
                else                                                                          \
                    weighted_sum##SUFFIX##128x3(e + h * s, s, sums + h, v, ldkv, s, out + h * d); \
            } else if (d == 64) {                                                             \
                weighted_sum##SUFFIX##64x1(e + h * s, s, sums + h, v, ldkv, s, out + h * d);  \
            } else {                                                                          \
                weighted_sum##SUFFIX##128x1(e + h * s, s, sums + h, v, ldkv, s, out + h * d); \
            }                                                                                 \
        }                                                                                     \
    } while (0)

AVX512_BF16 static void mqa_core(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                 int64_t ldkv, uint16_t *out, int64_t heads, int64_t s,
                                 int64_t d, float scale, float *scratch) {
    float *e = scratch, *sums = scratch + heads * s;
    const int64_t dv32 = d / 32, blocks = (s + 15) / 16;
    __m512bh qv[48 * 4];
    for (int64_t i = 0; i < heads * dv32; i++)
        qv[i] = (__m512bh)_mm512_loadu_si512(q + 32 * i);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t t0 = 16 * b, n = s - t0 < 16 ? s - t0 : 16;
        block_scores(qv, heads, dv32, k, ldkv, t0, n, scale, e, s);
    }
    /* heads' weights as bf16 in place; s + 1 values fit in the s floats of a head when
     * s >= 1 (2s + 2 <= 4s bytes) */
    uint16_t *pb[48];
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < heads; h++) {
        sums[h] = softmax_numerators(e + h * s, s);
        pb[h] = weights_to_bf16(e + h * s, s);
    }
    const int64_t group = d == 64 ? 6 : 2, full = heads / group;
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < heads; h++) {
        if (h < full * group) {
            if (h % group != 0) continue;
            if (d == 64)
                weighted_pairs_64x6(pb + h, sums + h, v, ldkv, s, out + h * d);
            else
                weighted_pairs_128x2(pb + h, sums + h, v, ldkv, s, out + h * d);
        } else if (d == 64) {
            weighted_pairs_64x1(pb + h, sums + h, v, ldkv, s, out + h * d);
        } else {
            weighted_pairs_128x1(pb + h, sums + h, v, ldkv, s, out + h * d);
        }
    }
}

AVX512 static void mqa_core_f32(const float *q, const float *k, const float *v, int64_t ldkv,
                                float *out, int64_t heads, int64_t s, int64_t d, float scale,
                                float *scratch) {
    float *e = scratch, *sums = scratch + heads * s;
    const int64_t blocks = (s + 15) / 16;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t t0 = 16 * b, n = s - t0 < 16 ? s - t0 : 16;
        block_scores_f32(q, heads, d, k, ldkv, t0, n, scale, e, s);
    }
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < heads; h++) sums[h] = softmax_numerators(e + h * s, s);
    WEIGHTED_SUMS(_f32_);
}

AVX512_BF16 int mqa_decode_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                int64_t ldkv, uint16_t *out, int64_t heads, int64_t s,
                                int64_t d, float scale, float *scratch) {
    if ((d != 64 && d != 128) || s <= 0 || heads <= 0 || heads > 48) return -1;
    mqa_core(q, k, v, ldkv, out, heads, s, d, scale, scratch);
    return 0;
}

/* ---- one transformer block of a decode step, bf16 --------------------------------------- */

/* out = layer_norm(x) * w + b over c values (a multiple of 16), in fp32, stored as T. */
#define DEFINE_LAYER_NORM(NAME, T, LOAD16, STORE16)                                           \
    AVX512 static void NAME(const T *x, const T *w, const T *b, float eps, T *out,            \
                            int64_t c) {                                                      \
        __m512 sum = _mm512_setzero_ps();                                                     \
        for (int64_t i = 0; i < c; i += 16) sum = _mm512_add_ps(sum, LOAD16(x + i));          \
        const __m512 vmean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)c);            \
        __m512 sq = _mm512_setzero_ps();                                                      \
        for (int64_t i = 0; i < c; i += 16) {                                                 \
            __m512 dx = _mm512_sub_ps(LOAD16(x + i), vmean);                                  \
            sq = _mm512_fmadd_ps(dx, dx, sq);                                                 \
        }                                                                                     \
        const __m512 rstd =                                                                   \
            _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) / (float)c + eps));          \
        for (int64_t i = 0; i < c; i += 16) {                                                 \
            __m512 y = _mm512_mul_ps(_mm512_sub_ps(LOAD16(x + i), vmean), rstd);              \
            y = _mm512_mul_ps(y, LOAD16(w + i));                                              \
            if (b) y = _mm512_add_ps(y, LOAD16(b + i));                                       \
            STORE16(out + i, y);                                                              \
        }                                                                                     \
    }

DEFINE_LAYER_NORM(layer_norm_bf16, uint16_t, bf16x16_to_f32, store16_bf16)
DEFINE_LAYER_NORM(layer_norm_f32, float, f32x16, store16_f32)

/* GELU, tanh approximation, in fp32, in place over n values (a multiple of 16) of type T. */
#define DEFINE_GELU_TANH(NAME, T, LOAD16, STORE16)                                            \
    AVX512 static void NAME(T *x, int64_t n) {                                                \
        const __m512 k0 = _mm512_set1_ps(0.7978845608028654f), k1 = _mm512_set1_ps(0.044715f); \
        const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);                 \
        const __m512 lim = _mm512_set1_ps(9.0f), nlim = _mm512_set1_ps(-9.0f);                \
        for (int64_t i = 0; i < n; i += 16) {                                                 \
            __m512 v = LOAD16(x + i);                                                         \
            __m512 z = _mm512_mul_ps(k0, _mm512_fmadd_ps(_mm512_mul_ps(k1, v),                \
                                                         _mm512_mul_ps(v, v), v));            \
            z = _mm512_min_ps(_mm512_max_ps(z, nlim), lim); /* tanh is +-1 in fp32 beyond */ \
            __m512 e = exp512(_mm512_add_ps(z, z));                                           \
            __m512 t = _mm512_div_ps(_mm512_sub_ps(e, one), _mm512_add_ps(e, one));           \
            STORE16(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, t)));     \
        }                                                                                     \
    }

DEFINE_GELU_TANH(gelu_tanh_bf16, uint16_t, bf16x16_to_f32, store16_bf16)
DEFINE_GELU_TANH(gelu_tanh_f32, float, f32x16, store16_f32)

/* x += a, both bf16, rounded once per value (as torch adds two bf16 tensors). */
static void add_bf16(uint16_t *x, const uint16_t *a, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = to_bf16(from_bf16(x[i]) + from_bf16(a[i]));
}

static void add_f32(float *x, const float *a, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += a[i];
}

/* y = W x + b for fp32 W (n, k), rows split among threads. */
AVX512 static void matvec_f32(const float *w, int64_t ldw, const float *x, int64_t k,
                              const float *bias, float *y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; row++) {
        float v = dot_f32(w + row * ldw, x, k);
        y[row] = bias ? v + bias[row] : v;
    }
}

/* A block's parameters (all bf16 or all fp32; biases may be NULL) and the row strides of
 * its matrices. */
typedef struct {
    const void *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
    const void *ln2_w, *ln2_b, *fc_w, *fc_b, *out_w, *out_b;
    int64_t ld_attn, ld_proj, ld_fc, ld_out;
    float eps1, eps2;
    /* int8 blocks (decode_block_q8) only: the matrices' per-row bf16 scales */
    const uint16_t *attn_s, *proj_s, *fc_s, *out_s;
} block_bf16;

static inline uint16_t *carve(unsigned char **cursor, int64_t values) {
    uint16_t *p = (uint16_t *)*cursor;
    *cursor += ((values * 2 + 63) / 64) * 64;
    return p;
}

/* One GPTBigCode block (pre-norm, multi-query attention, GELU-tanh MLP) for one token at
 * position `past`, in place on the residual x (c values): every rounding where torch's bf16
 * path rounds. The token's key and value go to row `past` of k_cache / v_cache (rows ldkv
 * apart), which must hold rows [0, past) already. work: 64-byte aligned, at least
 * decode_block_work_bytes(...) bytes. c = heads * d, d 64 or 128, heads <= 48, c and inner
 * multiples of 32; returns 0, or -1 (nothing written) otherwise. */
AVX512_BF16 int decode_block_bf16(const block_bf16 *p, uint16_t *x, uint16_t *k_cache,
                                  uint16_t *v_cache, int64_t ldkv, int64_t past, int64_t heads,
                                  int64_t d, int64_t inner, float scale, void *work) {
    const int64_t c = heads * d;
    if ((d != 64 && d != 128) || heads <= 0 || heads > 48 || inner % 32 != 0 || past < 0)
        return -1;
    unsigned char *cursor = work;
    uint16_t *h = carve(&cursor, c), *qkv = carve(&cursor, c + 2 * d);
    uint16_t *y = carve(&cursor, c), *f = carve(&cursor, inner), *a = carve(&cursor, c);
    float *scratch = (float *)cursor;

    layer_norm_bf16(x, p->ln1_w, p->ln1_b, p->eps1, h, c);
    matvec_bf16(p->attn_w, p->ld_attn, (const __m512bh *)h, c / 32, p->attn_b, qkv, c + 2 * d);
    memcpy(k_cache + past * ldkv, qkv + c, (size_t)d * 2);
    memcpy(v_cache + past * ldkv, qkv + c + d, (size_t)d * 2);
    mqa_core(qkv, k_cache, v_cache, ldkv, y, heads, past + 1, d, scale, scratch);
    matvec_bf16(p->proj_w, p->ld_proj, (const __m512bh *)y, c / 32, p->proj_b, a, c);
    add_bf16(x, a, c);

    layer_norm_bf16(x, p->ln2_w, p->ln2_b, p->eps2, h, c);
    matvec_bf16(p->fc_w, p->ld_fc, (const __m512bh *)h, c / 32, p->fc_b, f, inner);
    gelu_tanh_bf16(f, inner);
    matvec_bf16(p->out_w, p->ld_out, (const __m512bh *)f, inner / 32, p->out_b, a, c);
    add_bf16(x, a, c);
    return 0;
}

/* decode_block_bf16 for fp32 parameters (the struct's pointers are then to floats),
 * computing as torch's fp32 path does. */
AVX512 int decode_block_f32(const block_bf16 *p, float *x, float *k_cache, float *v_cache,
                            int64_t ldkv, int64_t past, int64_t heads, int64_t d, int64_t inner,
                            float scale, void *work) {
    const int64_t c = heads * d;
    if ((d != 64 && d != 128) || heads <= 0 || heads > 48 || inner % 32 != 0 || past < 0)
        return -1;
    unsigned char *cursor = work;
    /* carve counts 2-byte values: twice as many for floats */
    float *h = (float *)carve(&cursor, 2 * c), *qkv = (float *)carve(&cursor, 2 * (c + 2 * d));
    float *y = (float *)carve(&cursor, 2 * c), *f = (float *)carve(&cursor, 2 * inner);
    float *a = (float *)carve(&cursor, 2 * c);
    float *scratch = (float *)cursor;
#define F(name) ((const float *)p->name)
    layer_norm_f32(x, F(ln1_w), F(ln1_b), p->eps1, h, c);
    matvec_f32(F(attn_w), p->ld_attn, h, c, F(attn_b), qkv, c + 2 * d);
    memcpy(k_cache + past * ldkv, qkv + c, (size_t)d * sizeof(float));
    memcpy(v_cache + past * ldkv, qkv + c + d, (size_t)d * sizeof(float));
    mqa_core_f32(qkv, k_cache, v_cache, ldkv, y, heads, past + 1, d, scale, scratch);
    matvec_f32(F(proj_w), p->ld_proj, y, c, F(proj_b), a, c);
    add_f32(x, a, c);

    layer_norm_f32(x, F(ln2_w), F(ln2_b), p->eps2, h, c);
    matvec_f32(F(fc_w), p->ld_fc, h, c, F(fc_b), f, inner);
    gelu_tanh_f32(f, inner);
    matvec_f32(F(out_w), p->ld_out, f, inner, F(out_b), a, c);
    add_f32(x, a, c);
#undef F
    return 0;
}

/* decode_block_bf16 for int8 matrices with per-row scales (the struct's *_s), activations
 * quantised to int8 per block of 64 values for each product (quantize_q8); the rest bf16.
 * c and inner must be multiples of 64. */
AVX512_VNNI int decode_block_q8(const block_bf16 *p, uint16_t *x, uint16_t *k_cache,
                                uint16_t *v_cache, int64_t ldkv, int64_t past, int64_t heads,
                                int64_t d, int64_t inner, float scale, void *work) {
    const int64_t c = heads * d;
    if ((d != 64 && d != 128) || heads <= 0 || heads > 48 || inner % QBLOCK != 0 ||
        c % QBLOCK != 0 || past < 0)
        return -1;
    unsigned char *cursor = work;
    uint16_t *h = carve(&cursor, c), *qkv = carve(&cursor, c + 2 * d);
    uint16_t *y = carve(&cursor, c), *f = carve(&cursor, inner), *a = carve(&cursor, c);
    uint8_t *xu = (uint8_t *)carve(&cursor, inner); /* q8 bytes and scales of <= inner values */
    float *sx = (float *)carve(&cursor, inner / QBLOCK * 2);
    float *scratch = (float *)cursor;
#define Q(name) ((const int8_t *)p->name)
    layer_norm_bf16(x, p->ln1_w, p->ln1_b, p->eps1, h, c);
    quantize_q8(h, c, xu, sx);
    matvec_q8(Q(attn_w), p->ld_attn, xu, sx, c / QBLOCK, p->attn_s, p->attn_b, qkv, c + 2 * d);
    memcpy(k_cache + past * ldkv, qkv + c, (size_t)d * 2);
    memcpy(v_cache + past * ldkv, qkv + c + d, (size_t)d * 2);
    mqa_core(qkv, k_cache, v_cache, ldkv, y, heads, past + 1, d, scale, scratch);
    quantize_q8(y, c, xu, sx);
    matvec_q8(Q(proj_w), p->ld_proj, xu, sx, c / QBLOCK, p->proj_s, p->proj_b, a, c);
    add_bf16(x, a, c);

    layer_norm_bf16(x, p->ln2_w, p->ln2_b, p->eps2, h, c);
    quantize_q8(h, c, xu, sx);
    matvec_q8(Q(fc_w), p->ld_fc, xu, sx, c / QBLOCK, p->fc_s, p->fc_b, f, inner);
    gelu_tanh_bf16(f, inner);
    quantize_q8(f, inner, xu, sx);
    matvec_q8(Q(out_w), p->ld_out, xu, sx, inner / QBLOCK, p->out_s, p->out_b, a, c);
    add_bf16(x, a, c);
#undef Q
    return 0;
}

/* Bytes of work the decode_block_* functions need for these sizes and up to `positions`
 * positions. */
int64_t decode_block_work_bytes(int64_t heads, int64_t d, int64_t inner, int64_t positions) {
    const int64_t c = heads * d;
    /* as floats: room for either type; then decode_block_q8's bytes and block scales */
    int64_t values[] = {c, c + 2 * d, c, inner, c, inner / 2, inner / QBLOCK * 2};
    int64_t total = 0;
    for (int i = 0; i < 7; i++) total += ((values[i] * 4 + 63) / 64) * 64;
    return total + (heads * (positions + 1)) * (int64_t)sizeof(float);
}

/* Portable decoding kernels: one source, written with GCC/Clang vector extensions, compiled
 * once per instruction set (model/native.py: -DVW=8 -mavx2 -mfma -mf16c for AVX2, -DVW=16
 * -mavx512f for AVX-512, -DVW=4 for 64-bit ARM's NEON). VW is the number of floats in one
 * vector; with -ffp-contract=fast the compiler turns `a += w * x` on these vectors into the
 * ISA's fused multiply-adds. Intrinsics appear only where the extensions' generic code is
 * slow (widening half-precision loads on x86). tests/native/vecdot_check.c checks every
 * build, an ARM one under qemu-user included.
 *
 * What it computes, for fp32 models: matrix products of one row, y = W x + b, and a whole
 * GPTBigCode block of a one-token step (layer norms, the four products, multi-query attention,
 * GELU-tanh, both residual adds), with activations, sums and the KV cache in fp32 and the
 * weights stored as fp32, bf16 or f16. Half-precision weights are widened to fp32 in the
 * kernel as they stream in (bf16: a 16-bit shift; f16: F16C's vcvtph2ps, or NEON's fcvtl), so
 * a CPU without bf16 arithmetic reads half the bytes per token and computes exactly the fp32
 * product of the rounded weights.
 *
 * Layouts as in rowdot.c: W is (n, k) row-major with row stride ldw (elements); x has k
 * values; bias (n values) may be NULL; half values travel as uint16_t.
 */

#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <string.h>

#if !defined(VW) || (VW != 4 && VW != 8 && VW != 16)
#error "compile with -DVW=4, 8 or 16: the floats in one vector"
#endif

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));
typedef uint16_t vh __attribute__((vector_size(VW * 2)));

int vecdot_abi_version(void) { return 1; }

/* The vector width this build was compiled for (floats), for the loader to check. */
int vecdot_width(void) { return VW; }

static inline vf loadf(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void storef(float *p, vf v) { memcpy(p, &v, sizeof v); }

static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

static inline vf vmax(vf a, vf b) {
    vi m = a > b;
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}

static inline vf vmin(vf a, vf b) {
    vi m = a < b;
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}

/* ---- widening half-precision weights ---------------------------------------------------- */

static inline float f32_of_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE half to float, exactly (subnormals, infinities and NaN included). */
static inline float f32_of_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1fu) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: man * 2^-24, exact in fp32 */
        float f = (float)man * 0x1p-24f;
        memcpy(&u, &f, sizeof u);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The vector extensions' own widening (__builtin_convertvector) takes four instructions for
 * eight values on x86; the ISA's zero-extending load takes one. */
static inline vf load_bf16(const uint16_t *p) {
#if VW == 16 && defined(__AVX512F__)
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#elif VW == 8 && defined(__AVX2__)
    return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
}

static inline vf load_f16(const uint16_t *p) {
#if VW == 16 && defined(__AVX512F__)
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif VW == 8 && defined(__F16C__)
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#elif defined(__aarch64__)
    typedef __fp16 vhf __attribute__((vector_size(VW * 2)));
    vhf h;
    memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, vf);
#else
    vf v;
    for (int i = 0; i < VW; i++) v[i] = f32_of_f16(p[i]);
    return v;
#endif
}

static inline float f32_of_f32(float f) { return f; }

/* ---- row products ------------------------------------------------------------------------ */

/* dot(w, x) over k values for weights of type T: four accumulators along the row keep four
 * multiply-adds in flight while the row streams front to back. */
#define DEFINE_DOT(NAME, T, LOADW, SCALARW)                                                   \
    static inline float NAME(const T *w, const float *x, int64_t k) {                         \
        vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                            \
        int64_t i = 0;                                                                        \
        for (; i + 4 * VW <= k; i += 4 * VW) {                                                \
            a0 += LOADW(w + i) * loadf(x + i);                                                \
            a1 += LOADW(w + i + VW) * loadf(x + i + VW);                                      \
            a2 += LOADW(w + i + 2 * VW) * loadf(x + i + 2 * VW);                              \
            a3 += LOADW(w + i + 3 * VW) * loadf(x + i + 3 * VW);                              \
        }                                                                                     \
        for (; i + VW <= k; i += VW) a0 += LOADW(w + i) * loadf(x + i);                       \
        float s = hsum((a0 + a1) + (a2 + a3));                                                \
        for (; i < k; i++) s += SCALARW(w[i]) * x[i];                                         \
        return s;                                                                             \
    }

DEFINE_DOT(dot_f32, float, loadf, f32_of_f32)
DEFINE_DOT(dot_bf16w, uint16_t, load_bf16, f32_of_bf16)
DEFINE_DOT(dot_f16w, uint16_t, load_f16, f32_of_f16)

/* y = W x + b, rows split among threads (each row summed by one thread, in one order). */
#define DEFINE_MATVEC(NAME, T, DOT)                                                           \
    static void NAME(const T *w, int64_t ldw, const float *x, int64_t k, const float *bias,   \
                     float *y, int64_t n) {                                                   \
        _Pragma("omp parallel for schedule(static)")                                          \
        for (int64_t row = 0; row < n; row++) {                                               \
            float v = DOT(w + row * ldw, x, k);                                               \
            y[row] = bias ? v + bias[row] : v;                                                \
        }                                                                                     \
    }

DEFINE_MATVEC(matvec_f32, float, dot_f32)
DEFINE_MATVEC(matvec_bf16w, uint16_t, dot_bf16w)
DEFINE_MATVEC(matvec_f16w, uint16_t, dot_f16w)

int rowdot_f32(const float *w, int64_t ldw, const float *x, const float *bias, float *y,
               int64_t n, int64_t k) {
    matvec_f32(w, ldw, x, k, bias, y, n);
    return 0;
}

int rowdot_f32_bf16w(const uint16_t *w, int64_t ldw, const float *x, const float *bias,
                     float *y, int64_t n, int64_t k) {
    matvec_bf16w(w, ldw, x, k, bias, y, n);
    return 0;
}

int rowdot_f32_f16w(const uint16_t *w, int64_t ldw, const float *x, const float *bias,
                    float *y, int64_t n, int64_t k) {
    matvec_f16w(w, ldw, x, k, bias, y, n);
    return 0;
}

/* ---- elementwise functions --------------------------------------------------------------- */

/* exp(x), x clamped to [-87, 88]: 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, p a degree-6
 * Taylor polynomial (relative error below 2e-7). n is rounded with the 1.5 * 2^23 trick and
 * 2^n built in the exponent bits. */
static inline vf vexp(vf x) {
    const float magic = 12582912.0f;
    x = vmin(vmax(x, (vf){0} - 87.0f), (vf){0} + 88.0f);
    vf t = x * 1.44269504088896341f + magic;
    vf n = t - magic;
    vi ni = (vi)t - 0x4b400000;
    vf r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    vf p = (vf){0} + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * (vf)((ni + 127) << 23);
}

/* out = layer_norm(x) * w + b over c values (a multiple of VW), two passes, in fp32. */
static void layer_norm(const float *x, const float *w, const float *b, float eps, float *out,
                       int64_t c) {
    vf sum = {0};
    for (int64_t i = 0; i < c; i += VW) sum += loadf(x + i);
    const float mean = hsum(sum) / (float)c;
    vf sq = {0};
    for (int64_t i = 0; i < c; i += VW) {
        vf dx = loadf(x + i) - mean;
        sq += dx * dx;
    }
    const float rstd = 1.0f / sqrtf(hsum(sq) / (float)c + eps);
    for (int64_t i = 0; i < c; i += VW) {
        vf y = (loadf(x + i) - mean) * rstd * loadf(w + i);
        if (b) y += loadf(b + i);
        storef(out + i, y);
    }
}

/* GELU, tanh approximation, in place over n values (a multiple of VW). */
static void gelu_tanh(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += VW) {
        vf v = loadf(x + i);
        vf z = (v + v * v * v * 0.044715f) * 0.7978845608028654f;
        z = vmin(vmax(z, (vf){0} - 9.0f), (vf){0} + 9.0f); /* tanh is +-1 in fp32 beyond */
        vf e = vexp(z + z);
        vf t = (e - 1.0f) / (e + 1.0f);
        storef(x + i, v * 0.5f * (t + 1.0f));
    }
}

static void add_f32(float *x, const float *a, int64_t n) {
    for (int64_t i = 0; i < n; i += VW) storef(x + i, loadf(x + i) + loadf(a + i));
}

/* ---- multi-query attention of one query token, fp32 ------------------------------------ */

#if VW == 4
#define EVENS 0, 2, 4, 6
#define ODDS 1, 3, 5, 7
#elif VW == 8
#define EVENS 0, 2, 4, 6, 8, 10, 12, 14
#define ODDS 1, 3, 5, 7, 9, 11, 13, 15
#else
#define EVENS 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define ODDS 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#endif

/* VW vectors to one whose lane j is the sum of a[j]'s lanes (a is overwritten): pairwise
 * sums, halving the vectors each round, instead of a horizontal sum per vector. */
static inline vf reduce_lanes(vf *a) {
    for (int w = VW; w > 1; w /= 2)
        for (int i = 0; i < w / 2; i++)
            a[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], EVENS) +
                   __builtin_shufflevector(a[2 * i], a[2 * i + 1], ODDS);
    return a[0];
}

/* Raw scores of every head against keys [t0, t0 + n), n <= VW: e[h * lde + t] = scale *
 * q_h . k_t. The block's keys are read from memory once and from the L1 cache for the other
 * heads. A full block keeps VW independent accumulators (one per key) in flight and sums
 * their lanes all at once. D is a constant where this is inlined. */
static inline __attribute__((always_inline)) void block_scores(
    const float *q, int64_t heads, const int D, const float *k, int64_t ldkv, int64_t t0,
    int64_t n, float scale, float *e, int64_t lde) {
    for (int64_t h = 0; h < heads; h++) {
        const float *qh = q + h * D;
        if (n == VW) {
            vf acc[VW];
            for (int j = 0; j < VW; j++) acc[j] = (vf){0};
            for (int c = 0; c < D / VW; c++) {
                const vf qc = loadf(qh + c * VW);
                for (int j = 0; j < VW; j++) acc[j] += qc * loadf(k + (t0 + j) * ldkv + c * VW);
            }
            storef(e + h * lde + t0, reduce_lanes(acc) * scale);
        } else {
            for (int64_t j = 0; j < n; j++) {
                const float *kt = k + (t0 + j) * ldkv;
                vf a = {0};
                for (int c = 0; c < D / VW; c++) a += loadf(qh + c * VW) * loadf(kt + c * VW);
                e[h * lde + t0 + j] = hsum(a) * scale;
            }
        }
    }
}

/* e[t] = exp(e[t] - max e) over [0, s); returns the sum. */
static float softmax_numerators(float *e, int64_t s) {
    float m = -INFINITY;
    for (int64_t t = 0; t < s; t++) m = e[t] > m ? e[t] : m;
    vf total = {0};
    int64_t t = 0;
    for (; t + VW <= s; t += VW) {
        vf p = vexp(loadf(e + t) - m);
        storef(e + t, p);
        total += p;
    }
    float sum = hsum(total);
    for (; t < s; t++) {
        e[t] = expf(e[t] - m);
        sum += e[t];
    }
    return sum;
}

/* out[h] = sum_t e[h][t] v_t / sums[h] for heads [h0, h1), D values each. V goes by chunks
 * of KEY_CHUNK rows that stay in the L1 cache while every head of the range takes them (one
 * pass over V per range instead of one per head); a head's D / VW accumulators stay in
 * registers within a chunk. */
#define KEY_CHUNK 32
static inline __attribute__((always_inline)) void weighted_sums(
    const float *e, int64_t lde, const float *sums, const float *v, int64_t ldkv, int64_t s,
    int64_t h0, int64_t h1, const int D, float *out) {
    for (int64_t h = h0; h < h1; h++)
        for (int c = 0; c < D / VW; c++) storef(out + h * D + c * VW, (vf){0});
    for (int64_t t0 = 0; t0 < s; t0 += KEY_CHUNK) {
        const int64_t t1 = s - t0 < KEY_CHUNK ? s : t0 + KEY_CHUNK;
        for (int64_t h = h0; h < h1; h++) {
            vf acc[128 / VW];
            for (int c = 0; c < D / VW; c++) acc[c] = loadf(out + h * D + c * VW);
            for (int64_t t = t0; t < t1; t++) {
                const float *vt = v + t * ldkv;
                const float p = e[h * lde + t];
                for (int c = 0; c < D / VW; c++) acc[c] += p * loadf(vt + c * VW);
            }
            for (int c = 0; c < D / VW; c++) storef(out + h * D + c * VW, acc[c]);
        }
    }
    for (int64_t h = h0; h < h1; h++) {
        const float inv = 1.0f / sums[h];
        for (int c = 0; c < D / VW; c++)
            storef(out + h * D + c * VW, loadf(out + h * D + c * VW) * inv);
    }
}

/* Every head of one query token against the one shared key/value head: scores by blocks of
 * VW keys, each head's softmax, then the weighted sums by ranges of heads, one range per
 * thread. scratch: heads * s + heads floats. */
static void mqa_f32(const float *q, const float *k, const float *v, int64_t ldkv, float *out,
                    int64_t heads, int64_t s, int64_t d, float scale, float *scratch) {
    float *sums = scratch + heads * s;
    const int64_t blocks = (s + VW - 1) / VW;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t t0 = b * VW, n = s - t0 < VW ? s - t0 : VW;
        if (d == 64)
            block_scores(q, heads, 64, k, ldkv, t0, n, scale, scratch, s);
        else
            block_scores(q, heads, 128, k, ldkv, t0, n, scale, scratch, s);
    }
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < heads; h++) sums[h] = softmax_numerators(scratch + h * s, s);
#ifdef _OPENMP
    const int64_t threads = omp_get_max_threads();
#else
    const int64_t threads = 1;
#endif
    const int64_t per = (heads + threads - 1) / threads, ranges = (heads + per - 1) / per;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < ranges; r++) {
        const int64_t h0 = r * per, h1 = h0 + per < heads ? h0 + per : heads;
        if (d == 64)
            weighted_sums(scratch, s, sums, v, ldkv, s, h0, h1, 64, out);
        else
            weighted_sums(scratch, s, sums, v, ldkv, s, h0, h1, 128, out);
    }
}

/* softmax(scale * q K^T) V for `heads` heads of one query token (each head's result d
 * values), K and V rows ldkv apart; scratch: heads * (s + 1) floats. d must be 64 or 128;
 * returns 0, or -1 (nothing written) otherwise. */
int mqa_decode_f32(const float *q, const float *k, const float *v, int64_t ldkv, float *out,
                   int64_t heads, int64_t s, int64_t d, float scale, float *scratch) {
    if ((d != 64 && d != 128) || s <= 0 || heads <= 0) return -1;
    mqa_f32(q, k, v, ldkv, out, heads, s, d, scale, scratch);
    return 0;
}

/* ---- one transformer block of a decode step ------------------------------------------------ */

/* rowdot.c's block_bf16, field for field (model/native.py's BlockParams): here the vectors
 * are fp32 and the matrices fp32, bf16 or f16; the int8 scales are not read. */
typedef struct {
    const void *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
    const void *ln2_w, *ln2_b, *fc_w, *fc_b, *out_w, *out_b;
    int64_t ld_attn, ld_proj, ld_fc, ld_out;
    float eps1, eps2;
    const uint16_t *attn_s, *proj_s, *fc_s, *out_s;
} block_params;

/* Bytes of work decode_block_* need for these sizes and up to `positions` positions. */
int64_t decode_block_work_bytes(int64_t heads, int64_t d, int64_t inner, int64_t positions) {
    const int64_t c = heads * d;
    return (4 * c + 2 * d + inner + heads * (positions + 2)) * (int64_t)sizeof(float);
}

/* One GPTBigCode block (pre-norm, multi-query attention, GELU-tanh MLP) for one token at
 * position `past`, in place on the residual x (c values), all in fp32 with matrices of type T.
 * The token's key and value go to row `past` of k_cache / v_cache (rows ldkv apart), which
 * must hold rows [0, past) already. work: at least decode_block_work_bytes(...) bytes, float
 * aligned. c = heads * d, d 64 or 128, inner a multiple of 32; returns 0, or -1 (nothing
 * written) otherwise. */
#define DEFINE_BLOCK(NAME, T, MATVEC)                                                         \
    int NAME(const block_params *p, float *x, float *k_cache, float *v_cache, int64_t ldkv,   \
             int64_t past, int64_t heads, int64_t d, int64_t inner, float scale, float *work) { \
        const int64_t c = heads * d;                                                          \
        if ((d != 64 && d != 128) || heads <= 0 || inner <= 0 || inner % 32 != 0 || past < 0) \
            return -1;                                                                        \
        float *h = work, *qkv = h + c, *y = qkv + c + 2 * d, *f = y + c, *a = f + inner;      \
        float *scratch = a + c;                                                               \
        const float *ln1_w = p->ln1_w, *ln1_b = p->ln1_b, *ln2_w = p->ln2_w;                  \
        const float *ln2_b = p->ln2_b;                                                        \
        layer_norm(x, ln1_w, ln1_b, p->eps1, h, c);                                           \
        MATVEC((const T *)p->attn_w, p->ld_attn, h, c, p->attn_b, qkv, c + 2 * d);            \
        memcpy(k_cache + past * ldkv, qkv + c, (size_t)d * sizeof(float));                    \
        memcpy(v_cache + past * ldkv, qkv + c + d, (size_t)d * sizeof(float));                \
        mqa_f32(qkv, k_cache, v_cache, ldkv, y, heads, past + 1, d, scale, scratch);          \
        MATVEC((const T *)p->proj_w, p->ld_proj, y, c, p->proj_b, a, c);                      \
        add_f32(x, a, c);                                                                     \
        layer_norm(x, ln2_w, ln2_b, p->eps2, h, c);                                           \
        MATVEC((const T *)p->fc_w, p->ld_fc, h, c, p->fc_b, f, inner);                        \
        gelu_tanh(f, inner);                                                                  \
        MATVEC((const T *)p->out_w, p->ld_out, f, inner, p->out_b, a, c);                     \
        add_f32(x, a, c);                                                                     \
        return 0;                                                                             \
    }

DEFINE_BLOCK(decode_block_f32, float, matvec_f32)
DEFINE_BLOCK(decode_block_f32_bf16w, uint16_t, matvec_bf16w)
DEFINE_BLOCK(decode_block_f32_f16w, uint16_t, matvec_f16w)

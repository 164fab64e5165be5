/* Checks of model/csrc/vecdot.c's kernels against plain double-precision loops, for builds that
 * Python cannot load here (an ARM build run under qemu-user) as well as for the native ones.
 * Compiled together with vecdot.c and the build's flags by tests/test_native.py; prints one
 * line per failed check and exits 1 on any, else prints "ok N checks" and exits 0.
 */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const void *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
    const void *ln2_w, *ln2_b, *fc_w, *fc_b, *out_w, *out_b;
    int64_t ld_attn, ld_proj, ld_fc, ld_out;
    float eps1, eps2;
    const uint16_t *attn_s, *proj_s, *fc_s, *out_s;
} block_params;

int rowdot_f32(const float *, int64_t, const float *, const float *, float *, int64_t, int64_t);
int rowdot_f32_bf16w(const uint16_t *, int64_t, const float *, const float *, float *, int64_t,
                     int64_t);
int rowdot_f32_f16w(const uint16_t *, int64_t, const float *, const float *, float *, int64_t,
                    int64_t);
int mqa_decode_f32(const float *, const float *, const float *, int64_t, float *, int64_t,
                   int64_t, int64_t, float, float *);
int64_t decode_block_work_bytes(int64_t, int64_t, int64_t, int64_t);
int decode_block_f32(const block_params *, float *, float *, float *, int64_t, int64_t, int64_t,
                     int64_t, int64_t, float, float *);
int decode_block_f32_bf16w(const block_params *, float *, float *, float *, int64_t, int64_t,
                           int64_t, int64_t, int64_t, float, float *);
int decode_block_f32_f16w(const block_params *, float *, float *, float *, int64_t, int64_t,
                          int64_t, int64_t, int64_t, float, float *);
int vecdot_width(void);

static int checks, failures;

static void expect_close(const char *what, const float *got, const double *want, int64_t n,
                         double rtol, double atol) {
    checks++;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        if (!(err <= atol + rtol * fabs(want[i]))) {
            printf("FAIL %s: [%lld] got %.9g, want %.9g\n", what, (long long)i, got[i], want[i]);
            failures++;
            return;
        }
    }
}

static uint64_t state = 0x9e3779b97f4a7c15ull;

static float uniform(void) { /* in [-1, 1) */
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(state >> 11) / 4503599627370496.0 - 1.0);
}

static double ref_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static double ref_f16(uint16_t h) { /* from the definition, not from bit moves */
    int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    double v = exp ? ldexp(1.0 + man / 1024.0, exp - 15) : ldexp(man / 1024.0, -14);
    return sign ? -v : v;
}

static uint16_t to_bf16(float f) { /* round to nearest even (finite values) */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static uint16_t to_f16(float f) { /* the compiler's rounding; read back by ref_f16 */
    _Float16 h = (_Float16)f;
    uint16_t bits;
    memcpy(&bits, &h, sizeof bits);
    return bits;
}

/* ---- row products ----------------------------------------------------------------------- */

static void check_products(int64_t n, int64_t k) {
    float *w = malloc(sizeof(float) * n * k), *x = malloc(sizeof(float) * k);
    float *b = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    uint16_t *wb = malloc(2 * n * k), *wh = malloc(2 * n * k);
    double *want = malloc(sizeof(double) * n);
    for (int64_t i = 0; i < n * k; i++) {
        w[i] = uniform() * 0.5f;
        wb[i] = to_bf16(w[i]);
        wh[i] = to_f16(w[i]);
    }
    for (int64_t i = 0; i < k; i++) x[i] = uniform();
    for (int64_t i = 0; i < n; i++) b[i] = uniform();
    char what[64];
    for (int kind = 0; kind < 3; kind++) {
        for (int64_t r = 0; r < n; r++) {
            double s = b[r];
            for (int64_t i = 0; i < k; i++) {
                double wv = kind == 0 ? w[r * k + i]
                            : kind == 1 ? ref_bf16(wb[r * k + i]) : ref_f16(wh[r * k + i]);
                s += wv * x[i];
            }
            want[r] = s;
        }
        if (kind == 0) rowdot_f32(w, k, x, b, y, n, k);
        if (kind == 1) rowdot_f32_bf16w(wb, k, x, b, y, n, k);
        if (kind == 2) rowdot_f32_f16w(wh, k, x, b, y, n, k);
        snprintf(what, sizeof what, "rowdot %s n=%lld k=%lld",
                 kind == 0 ? "f32" : kind == 1 ? "bf16w" : "f16w", (long long)n, (long long)k);
        expect_close(what, y, want, n, 1e-5, 1e-5 * sqrt((double)k));
    }
    free(w), free(x), free(b), free(y), free(wb), free(wh), free(want);
}

/* Every finite f16 value, widened: a product with a one-hot x returns the weight itself. */
static void check_every_f16(void) {
    const int64_t n = 2048, k = 32;
    uint16_t *w = malloc(2 * n * k);
    float *x = calloc(k, sizeof(float)), *y = malloc(sizeof(float) * n);
    double *want = malloc(sizeof(double) * n);
    for (int64_t col = 0; col < k; col++) {
        for (int64_t r = 0; r < n; r++) {
            for (int64_t i = 0; i < k; i++) w[r * k + i] = 0;
            uint16_t h = (uint16_t)(r * k + col);
            if (((h >> 10) & 31) == 31) h &= 0x83ff; /* infinities and NaN: a finite value */
            w[r * k + col] = h;
            want[r] = ref_f16(h);
        }
        x[col] = 1.0f;
        rowdot_f32_f16w(w, k, x, NULL, y, n, k);
        x[col] = 0.0f;
        expect_close("every f16 value", y, want, n, 0.0, 0.0);
    }
    free(w), free(x), free(y), free(want);
}

/* ---- attention and the whole block -------------------------------------------------------- */

static void ref_attention(const float *q, const float *k, const float *v, int64_t ld,
                          int64_t heads, int64_t s, int64_t d, double scale, double *out) {
    double *e = malloc(sizeof(double) * s);
    for (int64_t h = 0; h < heads; h++) {
        double m = -INFINITY, sum = 0;
        for (int64_t t = 0; t < s; t++) {
            double dot = 0;
            for (int64_t i = 0; i < d; i++) dot += (double)q[h * d + i] * k[t * ld + i];
            e[t] = dot * scale;
            m = e[t] > m ? e[t] : m;
        }
        for (int64_t t = 0; t < s; t++) sum += e[t] = exp(e[t] - m);
        for (int64_t i = 0; i < d; i++) {
            double acc = 0;
            for (int64_t t = 0; t < s; t++) acc += e[t] * v[t * ld + i];
            out[h * d + i] = acc / sum;
        }
    }
    free(e);
}

static void check_attention(int64_t heads, int64_t s, int64_t d) {
    const int64_t ld = d + 8;
    float *q = malloc(sizeof(float) * heads * d), *kv = malloc(sizeof(float) * 2 * s * ld);
    float *out = malloc(sizeof(float) * heads * d);
    float *scratch = malloc(sizeof(float) * heads * (s + 1));
    double *want = malloc(sizeof(double) * heads * d);
    for (int64_t i = 0; i < heads * d; i++) q[i] = 2 * uniform();
    for (int64_t i = 0; i < 2 * s * ld; i++) kv[i] = 2 * uniform();
    ref_attention(q, kv, kv + s * ld, ld, heads, s, d, 1 / sqrt((double)d), want);
    mqa_decode_f32(q, kv, kv + s * ld, ld, out, heads, s, d, (float)(1 / sqrt((double)d)),
                   scratch);
    char what[64];
    snprintf(what, sizeof what, "attention heads=%lld s=%lld d=%lld", (long long)heads,
             (long long)s, (long long)d);
    expect_close(what, out, want, heads * d, 1e-5, 1e-5);
    free(q), free(kv), free(out), free(scratch), free(want);
}

static void ref_layer_norm(const double *x, const float *w, const float *b, double eps,
                           double *out, int64_t c) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < c; i++) mean += x[i];
    mean /= c;
    for (int64_t i = 0; i < c; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= c;
    for (int64_t i = 0; i < c; i++) out[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i];
}

static void ref_matvec(const float *w, const double *x, const float *b, double *y, int64_t n,
                       int64_t k) {
    for (int64_t r = 0; r < n; r++) {
        double s = b[r];
        for (int64_t i = 0; i < k; i++) s += (double)w[r * k + i] * x[i];
        y[r] = s;
    }
}

/* One block, kind 0 fp32 / 1 bf16 / 2 f16 matrices (the reference reads the rounded values),
 * at position `past` after `past` random cached rows. */
static void check_block(int kind, int64_t heads, int64_t d, int64_t inner, int64_t past) {
    const int64_t c = heads * d, ld = d, rows[4] = {c + 2 * d, c, inner, c};
    const int64_t cols[4] = {c, c, c, inner};
    float *m[4], *bias[4];
    uint16_t *half[4];
    for (int j = 0; j < 4; j++) {
        m[j] = malloc(sizeof(float) * rows[j] * cols[j]);
        half[j] = malloc(2 * rows[j] * cols[j]);
        bias[j] = malloc(sizeof(float) * rows[j]);
        for (int64_t i = 0; i < rows[j] * cols[j]; i++) {
            float v = uniform() * 0.2f;
            if (kind == 1) half[j][i] = to_bf16(v), v = (float)ref_bf16(half[j][i]);
            if (kind == 2) half[j][i] = to_f16(v), v = (float)ref_f16(half[j][i]);
            m[j][i] = v;
        }
        for (int64_t i = 0; i < rows[j]; i++) bias[j][i] = uniform() * 0.1f;
    }
    float ln[4][1024];
    for (int j = 0; j < 4; j++)
        for (int64_t i = 0; i < c; i++) ln[j][i] = j % 2 ? uniform() * 0.1f : 1 + uniform() * 0.1f;
    float *x = malloc(sizeof(float) * c), *kc = malloc(sizeof(float) * (past + 1) * ld);
    float *vc = malloc(sizeof(float) * (past + 1) * ld);
    for (int64_t i = 0; i < c; i++) x[i] = uniform();
    for (int64_t i = 0; i < (past + 1) * ld; i++) kc[i] = uniform(), vc[i] = uniform();

    /* reference, in double */
    double *r = malloc(sizeof(double) * c), *h = malloc(sizeof(double) * c);
    double *qkv = malloc(sizeof(double) * (c + 2 * d)), *y = malloc(sizeof(double) * c);
    double *f = malloc(sizeof(double) * inner), *a = malloc(sizeof(double) * c);
    for (int64_t i = 0; i < c; i++) r[i] = x[i];
    ref_layer_norm(r, ln[0], ln[1], 1e-5, h, c);
    ref_matvec(m[0], h, bias[0], qkv, c + 2 * d, c);
    float *kr = malloc(sizeof(float) * (past + 1) * ld), *vr = malloc(sizeof(float) * (past + 1) * ld);
    float *qf = malloc(sizeof(float) * c);
    memcpy(kr, kc, sizeof(float) * past * ld), memcpy(vr, vc, sizeof(float) * past * ld);
    for (int64_t i = 0; i < d; i++) kr[past * ld + i] = (float)qkv[c + i];
    for (int64_t i = 0; i < d; i++) vr[past * ld + i] = (float)qkv[c + d + i];
    for (int64_t i = 0; i < c; i++) qf[i] = (float)qkv[i];
    ref_attention(qf, kr, vr, ld, heads, past + 1, d, 1 / sqrt((double)d), y);
    ref_matvec(m[1], y, bias[1], a, c, c);
    for (int64_t i = 0; i < c; i++) r[i] += a[i];
    ref_layer_norm(r, ln[2], ln[3], 1e-5, h, c);
    ref_matvec(m[2], h, bias[2], f, inner, c);
    for (int64_t i = 0; i < inner; i++)
        f[i] = 0.5 * f[i] * (1 + tanh(0.7978845608028654 * (f[i] + 0.044715 * f[i] * f[i] * f[i])));
    ref_matvec(m[3], f, bias[3], a, c, inner);
    for (int64_t i = 0; i < c; i++) r[i] += a[i];

    block_params p = {ln[0], ln[1], kind ? (void *)half[0] : m[0], bias[0],
                      kind ? (void *)half[1] : m[1], bias[1], ln[2], ln[3],
                      kind ? (void *)half[2] : m[2], bias[2], kind ? (void *)half[3] : m[3],
                      bias[3], c, c, c, inner, 1e-5f, 1e-5f, NULL, NULL, NULL, NULL};
    float *work = malloc(decode_block_work_bytes(heads, d, inner, past + 1));
    int rc = (kind == 0   ? decode_block_f32
              : kind == 1 ? decode_block_f32_bf16w
                          : decode_block_f32_f16w)(&p, x, kc, vc, ld, past, heads, d, inner,
                                                   (float)(1 / sqrt((double)d)), work);
    char what[80];
    snprintf(what, sizeof what, "block %s heads=%lld d=%lld inner=%lld past=%lld",
             kind == 0 ? "f32" : kind == 1 ? "bf16w" : "f16w", (long long)heads, (long long)d,
             (long long)inner, (long long)past);
    checks++;
    if (rc != 0) printf("FAIL %s: returned %d\n", what, rc), failures++;
    expect_close(what, x, r, c, 1e-4, 1e-4);
    double *kwant = malloc(sizeof(double) * d);
    for (int64_t i = 0; i < d; i++) kwant[i] = qkv[c + i];
    expect_close(what, kc + past * ld, kwant, d, 1e-5, 1e-5);
    free(kwant), free(work), free(kr), free(vr), free(qf);
    free(r), free(h), free(qkv), free(y), free(f), free(a), free(x), free(kc), free(vc);
    for (int j = 0; j < 4; j++) free(m[j]), free(half[j]), free(bias[j]);
}

int main(void) {
    const int64_t shapes[][2] = {{1, 1}, {7, 50}, {33, 64}, {130, 768}, {3, 3001}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_products(shapes[i][0], shapes[i][1]);
    check_every_f16();
    const int64_t attention[][3] = {{12, 1, 64}, {12, 7, 64}, {5, 17, 64}, {12, 300, 64},
                                    {4, 33, 128}, {3, 129, 128}};
    for (size_t i = 0; i < sizeof attention / sizeof attention[0]; i++)
        check_attention(attention[i][0], attention[i][1], attention[i][2]);
    for (int kind = 0; kind < 3; kind++) {
        check_block(kind, 4, 64, 1024, 0);
        check_block(kind, 6, 64, 768, 40);
        check_block(kind, 2, 128, 512, 17);
    }
    if (failures) {
        printf("%d of %d checks failed (vector width %d)\n", failures, checks, vecdot_width());
        return 1;
    }
    printf("ok %d checks (vector width %d)\n", checks, vecdot_width());
    return 0;
}

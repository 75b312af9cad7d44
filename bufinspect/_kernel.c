/* Fused data-pass kernels of bufinspect: one read of each element (pair) computes every
 * statistic a command reports. Built at install as an optional extension (setup.py); when it
 * is absent, `bufinspect.kernels` falls back to the numpy path, which computes the same fields.
 * Why a C extension (and not numba or torch): see the note at the top of kernels.py.
 *
 * diff is float64 throughout, as in the numpy path: every float32/float16/bfloat16/fp8 value
 * is exactly a float64, so |a - b|, the allclose test, max_abs, max_rel and the counts are
 * bit-identical to numpy's; only the order of the sums differs (float64 partials per lane,
 * merged per block: relative differences around 1e-15). stats: float64 for float32/float64
 * and for pieces up to EXACT elements; larger 16- and 8-bit float pieces sum float32 partials of
 * at most 256 terms (STATS32_FN; bfloat16: stats_bf16w); min, max and every count are exact on
 * all paths.
 *
 * Each pass goes a block of _BLOCK elements at a time: a vectorised loop (omp simd reductions,
 * no -ffast-math) computes the block assuming every value is finite; if the block turns out
 * to hold a NaN or an Inf its partial is dropped and a scalar loop that follows the numpy
 * path's rules element by element redoes it. Compiled with -ffp-contract=off: an FMA would
 * round `rtol * |b| + atol` differently from numpy and move elements across the tolerance.
 *
 * Thread safety: no global state; the GIL is released around every pass, so --jobs threads
 * run kernels in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 2048

/* the vectorised loops' reductions */
#define SIMD_DIFF \
    _Pragma("omp simd reduction(+:sa,sq,saa,sab,sbb,mism) reduction(max:mx) reduction(|:cand)")
#define SIMD_STATS _Pragma("omp simd")
#define SIMD_SCAN \
    _Pragma("omp simd reduction(+:zeros,neg,bad) reduction(min:mn) reduction(max:mx)")
#define SIMD_STATS32 _Pragma("omp simd")
#define SIMD_SCAN32 \
    _Pragma("omp simd reduction(+:z,ng,b) reduction(min:mn) reduction(max:mx)")

enum { F32 = 0, F64 = 1, F16 = 2, BF16 = 3, TAB8 = 4 };

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* x86-64-v3 (AVX2, F16C) and v4 (AVX-512) versions, picked at load time */
#define CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
/* where every product is exact (bf16_sums_plain), let GCC fuse q + x * x into one FMA */
#define CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CLONES
#define CONTRACT
#endif

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE half -> float with integer selects and one int -> float conversion (vectorises):
 * normals and Inf/NaN by moving the exponent, subnormals as mantissa * 2^-24 (exact). */
static inline float half_to_f32(uint16_t h) {
    uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t norm = (em << 13) + (112u << 23);
    norm = em >= 0x7c00u ? norm + (112u << 23) : norm;
    float sub = (float)(int32_t)em * 0x1p-24f;
    uint32_t sb;
    memcpy(&sb, &sub, 4);
    return bits_to_f32((em < 0x400u ? sb : norm) | sign);
}

#define LOAD_F32(p, i, t) ((double)((const float *)(p))[i])
#define LOAD_F64(p, i, t) (((const double *)(p))[i])
#define LOAD_BF16(p, i, t) ((double)bits_to_f32((uint32_t)((const uint16_t *)(p))[i] << 16))
#define LOAD_TAB8(p, i, t) ((double)(t)[((const uint8_t *)(p))[i]])

/* ---- diff ------------------------------------------------------------------------------- */

typedef struct {
    double max_abs, max_rel, sum_abs, sum_d2, aa, ab, bb;
    long long mismatched, nonfinite, elems;
} DiffPart;

/* numpy path's rules for one element pair (see DiffAccumulator._add) */
static inline void diff_one(DiffPart *r, double x, double y, double rtol, double atol) {
    double d = fabs(x - y), ab = fabs(y);
    int same = (x == y) || (isnan(x) && isnan(y));
    int odd = !same && !isfinite(d);
    if (odd) {
        r->nonfinite++;
        r->mismatched++;
    }
    if (same || odd) d = 0.0;
    if (odd || !isfinite(ab)) ab = 0.0;
    if (odd || (same && !isfinite(x))) x = 0.0;
    if (odd || (same && !isfinite(y))) y = 0.0;
    r->mismatched += d > ab * rtol + atol;
    if (d > 0.0) {
        if (d > r->max_abs) r->max_abs = d;
        double q = d / ab; /* d/0 = inf, as numpy */
        if (q > r->max_rel) r->max_rel = q;
    }
    r->sum_abs += d;
    r->sum_d2 += d * d;
    r->aa += x * x;
    r->ab += y * x;
    r->bb += y * y;
}

/* Sums go to LANES fixed accumulators (element i to lane i % LANES, padding with zeros) added
 * in a fixed order: the same bits whatever vector width the CPU's clone uses (AVX2 or AVX-512)
 * and however the compiler vectorises, so reports do not depend on the machine. */
#define LANES 16
#define SIMD_LANES _Pragma("omp simd")

static inline double lanes_sum(const double *v) {
    double h[LANES / 2];
    for (int j = 0; j < LANES / 2; j++) h[j] = v[j] + v[j + LANES / 2];
    for (int w = LANES / 4; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) h[j] += h[j + w];
    return h[0];
}

/* one element pair into lane j's accumulators */
#define DIFF_LANE(j)                                                                               \
    double d = fabs(x - y), ab = fabs(y);                                                          \
    vsa[j] += d;                                                                                   \
    vsq[j] += d * d;                                                                               \
    vaa[j] += x * x;                                                                               \
    vab[j] += y * x;                                                                               \
    vbb[j] += y * y;                                                                               \
    vmx[j] = d > vmx[j] ? d : vmx[j];                                                              \
    vmism[j] += d > ab * rtol + atol;                                                              \
    vcand[j] |= d > bound * ab;

/* max_rel without a division per element: an element can only raise it when
 * d > max_rel * |b|; the bound is lowered by 2^-50 so rounding never hides a candidate, and
 * the few candidates are divided exactly as numpy does. */
#define DIFF_FN(NAME, LOAD)                                                                        \
    CLONES static void NAME(const void *pa, const void *pb, Py_ssize_t n, const float *t,          \
                            double rtol, double atol, DiffPart *r) {                               \
        for (Py_ssize_t s = 0; s < n; s += BLOCK) {                                                \
            Py_ssize_t e = s + BLOCK < n ? s + BLOCK : n;                                          \
            double vsa[LANES] = {0}, vsq[LANES] = {0}, vaa[LANES] = {0}, vab[LANES] = {0};     \
            double vbb[LANES] = {0}, vmx[LANES] = {0};                                             \
            long long vmism[LANES] = {0};                                                          \
            int vcand[LANES] = {0};                                                                \
            double bound = r->max_rel * (1.0 - 0x1p-50);                                           \
            Py_ssize_t i = s;                                                                      \
            for (; i + LANES <= e; i += LANES) {                                                   \
                SIMD_LANES                                                                         \
                for (int j = 0; j < LANES; j++) {                                                  \
                    double x = LOAD(pa, i + j, t), y = LOAD(pb, i + j, t);                         \
                    DIFF_LANE(j)                                                                   \
                }                                                                                  \
            }                                                                                      \
            for (int j = 0; i < e; i++, j++) { /* the block's last few elements */                 \
                double x = LOAD(pa, i, t), y = LOAD(pb, i, t);                                     \
                DIFF_LANE(j)                                                                       \
            }                                                                                      \
            double sa = lanes_sum(vsa), sq = lanes_sum(vsq), saa = lanes_sum(vaa);                 \
            double sab = lanes_sum(vab), sbb = lanes_sum(vbb), mx = 0;                             \
            long long mism = 0;                                                                    \
            int cand = 0;                                                                          \
            for (int j = 0; j < LANES; j++) {                                                      \
                mx = vmx[j] > mx ? vmx[j] : mx;                                                    \
                mism += vmism[j];                                                                  \
                cand |= vcand[j];                                                                  \
            }                                                                                      \
            if (isfinite(sa) && isfinite(saa) && isfinite(sbb) && isfinite(sq)) {                  \
                r->sum_abs += sa;                                                                  \
                r->sum_d2 += sq;                                                                   \
                r->aa += saa;                                                                      \
                r->ab += sab;                                                                      \
                r->bb += sbb;                                                                      \
                r->mismatched += mism;                                                             \
                if (mx > r->max_abs) r->max_abs = mx;                                              \
                if (cand) {                                                                        \
                    for (Py_ssize_t i = s; i < e; i++) {                                           \
                        double x = LOAD(pa, i, t), y = LOAD(pb, i, t);                             \
                        double d = fabs(x - y);                                                    \
                        if (d > 0.0) {                                                             \
                            double q = d / fabs(y);                                                \
                            if (q > r->max_rel) r->max_rel = q;                                    \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
            } else {                                                                               \
                for (Py_ssize_t i = s; i < e; i++)                                                 \
                    diff_one(r, LOAD(pa, i, t), LOAD(pb, i, t), rtol, atol);                       \
            }                                                                                      \
        }                                                                                          \
        r->elems += n;                                                                             \
    }

DIFF_FN(diff_f32, LOAD_F32)
DIFF_FN(diff_f64, LOAD_F64)
DIFF_FN(diff_bf16, LOAD_BF16)
DIFF_FN(diff_tab8, LOAD_TAB8)

/* float16 goes through the float32 kernels a block at a time: the conversion loop alone
 * vectorises (F16C's vcvtph2ps with the compiler's half type), fused into the kernel it did not */
CLONES static void widen_half(const uint16_t *p, Py_ssize_t n, float *out) {
#if defined(__FLT16_MAX__)
    for (Py_ssize_t i = 0; i < n; i++) {
        _Float16 h;
        memcpy(&h, p + i, 2);
        out[i] = (float)h;
    }
#else
    for (Py_ssize_t i = 0; i < n; i++) out[i] = half_to_f32(p[i]);
#endif
}

static void diff_f16(const void *pa, const void *pb, Py_ssize_t n, const float *t, double rtol,
                     double atol, DiffPart *r) {
    float xa[BLOCK], xb[BLOCK];
    for (Py_ssize_t s = 0; s < n; s += BLOCK) {
        Py_ssize_t m = s + BLOCK < n ? BLOCK : n - s;
        widen_half((const uint16_t *)pa + s, m, xa);
        widen_half((const uint16_t *)pb + s, m, xb);
        diff_f32(xa, xb, m, t, rtol, atol, r);
    }
}

/* ---- stats -------------------------------------------------------------------------------- */

typedef struct {
    double mean, m2, min, max;
    long long n, nan, inf, zeros, neg;
} StatsPart;

/* one value into lane j's sums (around the shift k) and the order-free reductions */
#define STATS_LANE(j)                                                                              \
    double d = x - k;                                                                              \
    vs[j] += d;                                                                                    \
    vq[j] += d * d;                                                                                \
    vmn[j] = x < vmn[j] ? x : vmn[j];                                                              \
    vmx[j] = x > vmx[j] ? x : vmx[j];                                                              \
    vz[j] += x == 0.0;                                                                             \
    vng[j] += x < 0.0;                                                                             \
    vbad[j] += (x - x) != 0.0;

#define STATS32_LANE(j)                                                                            \
    float d = x - kf;                                                                              \
    vs[j] += d;                                                                                    \
    vq[j] += d * d;                                                                                \
    vmn[j] = x < vmn[j] ? x : vmn[j];                                                              \
    vmx[j] = x > vmx[j] ? x : vmx[j];                                                              \
    vz[j] += x == 0.0f;                                                                            \
    vng[j] += x < 0.0f;

static inline float lanes_sumf(const float *v) {
    float h[LANES / 2];
    for (int j = 0; j < LANES / 2; j++) h[j] = v[j] + v[j + LANES / 2];
    for (int w = LANES / 4; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) h[j] += h[j + w];
    return h[0];
}

/* Chan's merge of a block (count, sum and sum of squares of x - k) into the running moments */
static inline void merge_block(StatsPart *r, long long n, double k, double s, double q) {
    if (n == 0) return;
    double mean = k + s / (double)n, m2 = q - s * s / (double)n;
    if (m2 < 0) m2 = 0;
    long long tot = r->n + n;
    double delta = mean - r->mean;
    r->mean += delta * (double)n / (double)tot;
    r->m2 += m2 + delta * delta * (double)r->n * (double)n / (double)tot;
    r->n = tot;
}

/* Each block's sums are taken around the running mean (the first value for the first block),
 * so the sum of squares never cancels against a large mean (values ~1e4 with a spread of 0.5
 * keep full precision); blocks are merged with Chan's formula, in float64. */
#define STATS_FN(NAME, LOAD)                                                                       \
    CLONES static void NAME(const void *p, Py_ssize_t n, const float *t, int moments,              \
                            StatsPart *r) {                                                        \
        for (Py_ssize_t s = 0; s < n; s += BLOCK) {                                                \
            Py_ssize_t e = s + BLOCK < n ? s + BLOCK : n;                                          \
            double k = r->n ? r->mean : LOAD(p, s, t);                                             \
            if (!isfinite(k)) k = 0.0;                                                             \
            double sm = 0, sq = 0, mn = INFINITY, mx = -INFINITY;                                  \
            long long zeros = 0, neg = 0, bad = 0;                                                 \
            if (moments) {                                                                         \
                double vs[LANES] = {0}, vq[LANES] = {0}, vmn[LANES], vmx[LANES];                   \
                long long vz[LANES] = {0}, vng[LANES] = {0}, vbad[LANES] = {0};                    \
                for (int j = 0; j < LANES; j++) {                                                  \
                    vmn[j] = INFINITY;                                                             \
                    vmx[j] = -INFINITY;                                                            \
                }                                                                                  \
                Py_ssize_t i = s;                                                                  \
                for (; i + LANES <= e; i += LANES) {                                               \
                    SIMD_STATS                                                                     \
                    for (int j = 0; j < LANES; j++) {                                              \
                        double x = LOAD(p, i + j, t);                                              \
                        STATS_LANE(j)                                                              \
                    }                                                                              \
                }                                                                                  \
                for (int j = 0; i < e; i++, j++) {                                                 \
                    double x = LOAD(p, i, t);                                                      \
                    STATS_LANE(j)                                                                  \
                }                                                                                  \
                sm = lanes_sum(vs);                                                                \
                sq = lanes_sum(vq);                                                                \
                for (int j = 0; j < LANES; j++) {                                                  \
                    mn = vmn[j] < mn ? vmn[j] : mn;                                                \
                    mx = vmx[j] > mx ? vmx[j] : mx;                                                \
                    zeros += vz[j];                                                                \
                    neg += vng[j];                                                                 \
                    bad += vbad[j];                                                                \
                }                                                                                  \
            } else {                                                                               \
                SIMD_SCAN                                                                          \
                for (Py_ssize_t i = s; i < e; i++) {                                               \
                    double x = LOAD(p, i, t);                                                      \
                    mn = x < mn ? x : mn;                                                          \
                    mx = x > mx ? x : mx;                                                          \
                    zeros += x == 0.0;                                                             \
                    neg += x < 0.0;                                                                \
                    bad += (x - x) != 0.0;                                                         \
                }                                                                                  \
            }                                                                                      \
            long long cnt = e - s;                                                                 \
            if (bad) { /* NaN or Inf: count them, reduce the finite values */                      \
                sm = sq = 0;                                                                       \
                mn = INFINITY;                                                                     \
                mx = -INFINITY;                                                                    \
                zeros = neg = 0;                                                                   \
                cnt = 0;                                                                           \
                for (Py_ssize_t i = s; i < e; i++) {                                               \
                    double x = LOAD(p, i, t);                                                      \
                    if (isnan(x)) {                                                                \
                        r->nan++;                                                                  \
                        continue;                                                                  \
                    }                                                                              \
                    if (isinf(x)) {                                                                \
                        r->inf++;                                                                  \
                        continue;                                                                  \
                    }                                                                              \
                    double d = x - k;                                                              \
                    sm += d;                                                                       \
                    sq += d * d;                                                                   \
                    if (x < mn) mn = x;                                                            \
                    if (x > mx) mx = x;                                                            \
                    zeros += x == 0.0;                                                             \
                    neg += x < 0.0;                                                                \
                    cnt++;                                                                         \
                }                                                                                  \
            }                                                                                      \
            r->zeros += zeros;                                                                     \
            r->neg += neg;                                                                         \
            if (mn < r->min) r->min = mn;                                                          \
            if (mx > r->max) r->max = mx;                                                          \
            if (moments)                                                                           \
                merge_block(r, cnt, k, sm, sq);                                                    \
            else                                                                                   \
                r->n += cnt;                                                                       \
        }                                                                                          \
    }

STATS_FN(stats_f32, LOAD_F32)
STATS_FN(stats_f64, LOAD_F64)
STATS_FN(stats_bf16, LOAD_BF16)
STATS_FN(stats_tab8, LOAD_TAB8)

/* 16- and 8-bit floats (bfloat16: stats_bf16w below): twice the lanes in float32. Their
 * values, and their differences from a float32 shift, are exact in float32; the sums are float32
 * over SUB elements (16 per lane with AVX-512), then float64: the numpy path's precision class
 * (float32 partials, ~1e-7 of std at worst), at about half the float64 cost. Min, max and counts
 * stay exact. */
#define SUB 256
/* pieces up to this many elements (small tensors: BatchNorm buffers, biases) stay in float64,
 * as exact as the numpy path's float64 reduction of them; they cost nothing either way */
#define EXACT 65536
#define LOAD32_F32(p, i, t) (((const float *)(p))[i])
#define LOAD32_TAB8(p, i, t) ((t)[((const uint8_t *)(p))[i]])

#define STATS32_FN(NAME, LOAD, SLOW)                                                               \
    CLONES static void NAME(const void *p, Py_ssize_t n, const float *t, int moments,              \
                            StatsPart *r) {                                                        \
        for (Py_ssize_t s = 0; s < n; s += BLOCK) {                                                \
            Py_ssize_t e = s + BLOCK < n ? s + BLOCK : n;                                          \
            float kf = (float)(r->n ? r->mean : (double)LOAD(p, s, t));                            \
            if (!isfinite(kf)) kf = 0.0f;                                                          \
            double sm = 0, sq = 0;                                                                 \
            float mn = INFINITY, mx = -INFINITY;                                                   \
            long long zeros = 0, neg = 0;                                                          \
            int bad = 0;                                                                           \
            for (Py_ssize_t u = s; u < e; u += SUB) {                                              \
                Py_ssize_t v = u + SUB < e ? u + SUB : e;                                          \
                float ss = 0, qq = 0;                                                              \
                int z = 0, ng = 0, b = 0;                                                          \
                if (moments) {                                                                     \
                    float vs[LANES] = {0}, vq[LANES] = {0}, vmn[LANES], vmx[LANES];                \
                    int vz[LANES] = {0}, vng[LANES] = {0};                                         \
                    for (int j = 0; j < LANES; j++) {                                              \
                        vmn[j] = INFINITY;                                                         \
                        vmx[j] = -INFINITY;                                                        \
                    }                                                                              \
                    Py_ssize_t i = u;                                                              \
                    for (; i + LANES <= v; i += LANES) {                                           \
                        SIMD_STATS32                                                               \
                        for (int j = 0; j < LANES; j++) {                                          \
                            float x = LOAD(p, i + j, t);                                           \
                            STATS32_LANE(j)                                                        \
                        }                                                                          \
                    }                                                                              \
                    for (int j = 0; i < v; i++, j++) {                                             \
                        float x = LOAD(p, i, t);                                                   \
                        STATS32_LANE(j)                                                            \
                    }                                                                              \
                    ss = lanes_sumf(vs);                                                           \
                    qq = lanes_sumf(vq);                                                           \
                    for (int j = 0; j < LANES; j++) {                                              \
                        mn = vmn[j] < mn ? vmn[j] : mn;                                            \
                        mx = vmx[j] > mx ? vmx[j] : mx;                                            \
                        z += vz[j];                                                                \
                        ng += vng[j];                                                              \
                    }                                                                              \
                    b = !(isfinite(ss) && isfinite(qq));                                           \
                } else {                                                                           \
                    SIMD_SCAN32                                                                    \
                    for (Py_ssize_t i = u; i < v; i++) {                                           \
                        float x = LOAD(p, i, t);                                                   \
                        mn = x < mn ? x : mn;                                                      \
                        mx = x > mx ? x : mx;                                                      \
                        z += x == 0.0f;                                                            \
                        ng += x < 0.0f;                                                            \
                        b += (x - x) != 0.0f;                                                      \
                    }                                                                              \
                }                                                                                  \
                if (b) {                                                                           \
                    bad = 1;                                                                       \
                    break;                                                                         \
                }                                                                                  \
                sm += ss;                                                                          \
                sq += qq;                                                                          \
                zeros += z;                                                                        \
                neg += ng;                                                                         \
            }                                                                                      \
            if (bad) { /* NaN, Inf (or a float32 overflow): the float64 loop redoes the block */   \
                SLOW(p, s, e - s, t, moments, r);                                                  \
                continue;                                                                          \
            }                                                                                      \
            r->zeros += zeros;                                                                     \
            r->neg += neg;                                                                         \
            if (mn < r->min) r->min = mn;                                                          \
            if (mx > r->max) r->max = mx;                                                          \
            if (moments)                                                                           \
                merge_block(r, e - s, (double)kf, sm, sq);                                         \
            else                                                                                   \
                r->n += e - s;                                                                     \
        }                                                                                          \
    }

static void slow_f32(const void *p, Py_ssize_t s, Py_ssize_t n, const float *t, int moments,
                     StatsPart *r) {
    stats_f32((const float *)p + s, n, t, moments, r);
}

static void slow_tab8(const void *p, Py_ssize_t s, Py_ssize_t n, const float *t, int moments,
                      StatsPart *r) {
    stats_tab8((const uint8_t *)p + s, n, t, moments, r);
}

STATS32_FN(stats32_f32, LOAD32_F32, slow_f32)
STATS32_FN(stats32_tab8, LOAD32_TAB8, slow_tab8)

/* bfloat16 on its raw 16-bit words (large pieces, and check's scan of any piece). Order and
 * class come from integer compares, as in the numpy path (numeric.bf16_range): as int16,
 * non-negative values order like their floats and +Inf/NaN sit from 0x7F80 up; as uint16,
 * negative values order by magnitude and -Inf/NaN sit from 0xFF80 up; zeros are 0x0000 and
 * 0x8000, values below zero above 0x8000. A block's largest int16, largest uint16 and smallest
 * uint16 give its extremes, its smallest magnitude (word & 0x7FFF) whether it holds a zero:
 * 32 words per AVX-512 compare, no conversion, exact; values below zero are counted only when
 * asked for (check's running variances). Only the sums widen, two elements per 32-bit word by a
 * shift and a mask into float32 bits, into WLANES float32 lanes (fixed by the element's place,
 * so every CPU gives the same bits) of WSUB / WLANES terms each, added into float64 lanes: the
 * precision class of STATS32_FN. The sums are plain (no shift: the square of a bfloat16 is
 * exact, so an FMA changes nothing) unless |mean| > std, when the block is summed again around
 * the running mean as in STATS_FN. Half the old float-compare kernel's time; check's scan
 * needs no float at all. A block that holds a NaN or an Inf (or whose float32 sums overflow,
 * or that holds only tiny values) is redone by the float64 loop, which counts them. */
#define WLANES 32
/* blocks whose values are all below 2^-40 go to the float64 loop: float32 squares of their
 * deviations could fall into (or under) float32's subnormal range and lose m2's digits */
#define TINY_BF16 0x2B80u
#define SIMD_W _Pragma("omp simd")

static inline double lanes_sumw(const double *v) {
    double h[WLANES / 2];
    for (int j = 0; j < WLANES / 2; j++) h[j] = v[j] + v[j + WLANES / 2];
    for (int w = WLANES / 4; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) h[j] += h[j + w];
    return h[0];
}

/* sums of x - k and of its square over elements s..e of a block: float32 lanes of WSUB / WLANES
 * terms (16, as STATS32_FN's lanes hold), added into float64 lanes (not a float32 tree) */
#define WSUB 512
#define BF16_SUMS(NAME, SHIFT, ATTR)                                                               \
    ATTR static void NAME(const uint16_t *p, Py_ssize_t s, Py_ssize_t e, float kf, double *sm,    \
                          double *sq) {                                                            \
        double ds[WLANES] = {0}, dq[WLANES] = {0};                                                 \
        for (Py_ssize_t u = s; u < e; u += WSUB) {                                                 \
            Py_ssize_t v = u + WSUB < e ? u + WSUB : e;                                            \
            float vs[WLANES] = {0}, vq[WLANES] = {0};                                              \
            Py_ssize_t k = u;                                                                      \
            for (; k + WLANES <= v; k += WLANES) {                                                 \
                SIMD_W                                                                             \
                for (int j = 0; j < WLANES / 2; j++) { /* a word pair: elements 2j, 2j + 1 */      \
                    uint32_t w;                                                                    \
                    memcpy(&w, p + k + 2 * j, 4);                                                  \
                    float d0 = bits_to_f32(w << 16) SHIFT;                                         \
                    float d1 = bits_to_f32(w & 0xFFFF0000u) SHIFT;                                 \
                    vs[j] += d0;                                                                   \
                    vq[j] += d0 * d0;                                                              \
                    vs[j + WLANES / 2] += d1;                                                      \
                    vq[j + WLANES / 2] += d1 * d1;                                                 \
                }                                                                                  \
            }                                                                                      \
            for (int j = 0; k < v; k++, j++) {                                                     \
                float d = bits_to_f32((uint32_t)p[k] << 16) SHIFT;                                 \
                vs[j] += d;                                                                        \
                vq[j] += d * d;                                                                    \
            }                                                                                      \
            SIMD_W                                                                                 \
            for (int j = 0; j < WLANES; j++) { /* float32 partials of WSUB / WLANES terms */       \
                ds[j] += vs[j];                                                                    \
                dq[j] += vq[j];                                                                    \
            }                                                                                      \
        }                                                                                          \
        *sm = lanes_sumw(ds);                                                                      \
        *sq = lanes_sumw(dq);                                                                      \
    }

/* the plain sums: the square of a bfloat16 value from 2^-67 up (up to float32's overflow, when
 * the block goes to the float64 loop anyway) is exact in float32, so `q + x * x` rounds once
 * whether or not it is contracted into an FMA (where the clone has one, GCC only): every clone
 * gives the same bits; blocks with a zero or a smaller value take the uncontracted loop */
#define EXACT_SQUARE 0x1E00u /* 2^-67 as a bfloat16 word */
BF16_SUMS(bf16_sums_plain, , CLONES CONTRACT)
BF16_SUMS(bf16_sums_shifted, -kf, CLONES)

#define WORD_LANE(j, w)                                                                            \
    {                                                                                              \
        int16_t v_ = (int16_t)(w);                                                                 \
        uint16_t m_ = (w) & 0x7FFFu;                                                               \
        mxu[j] = (w) > mxu[j] ? (w) : mxu[j];                                                      \
        mnu[j] = (w) < mnu[j] ? (w) : mnu[j];                                                      \
        mxs[j] = v_ > mxs[j] ? v_ : mxs[j];                                                        \
        mnm[j] = m_ < mnm[j] ? m_ : mnm[j];                                                        \
    }

CLONES static void stats_bf16w(const void *pv, Py_ssize_t n, const float *t, int moments,
                               int negatives, StatsPart *r) {
    const uint16_t *p = (const uint16_t *)pv;
    for (Py_ssize_t s = 0; s < n; s += BLOCK) {
        Py_ssize_t e = s + BLOCK < n ? s + BLOCK : n;
        /* integer pass: BLOCK / WLANES words per lane, so the uint16 counts cannot wrap */
        uint16_t mxu[WLANES], mnu[WLANES], mnm[WLANES], ng[WLANES];
        int16_t mxs[WLANES];
        for (int j = 0; j < WLANES; j++) {
            mxu[j] = ng[j] = 0;
            mnu[j] = mnm[j] = 0xFFFF;
            mxs[j] = INT16_MIN;
        }
        Py_ssize_t i = s;
        if (negatives) {
            for (; i + WLANES <= e; i += WLANES) {
                SIMD_W
                for (int j = 0; j < WLANES; j++) {
                    uint16_t w = p[i + j];
                    WORD_LANE(j, w)
                    ng[j] += (uint16_t)(w > 0x8000u);
                }
            }
        } else {
            for (; i + WLANES <= e; i += WLANES) {
                SIMD_W
                for (int j = 0; j < WLANES; j++) {
                    uint16_t w = p[i + j];
                    WORD_LANE(j, w)
                }
            }
        }
        for (int j = 0; i < e; i++, j++) {
            uint16_t w = p[i];
            WORD_LANE(j, w)
            ng[j] += (uint16_t)(w > 0x8000u);
        }
        unsigned maxu = 0, minu = 0xFFFF, minm = 0xFFFF;
        int maxs = INT16_MIN;
        long long neg = 0, zeros = 0;
        for (int j = 0; j < WLANES; j++) {
            maxu = mxu[j] > maxu ? mxu[j] : maxu;
            minu = mnu[j] < minu ? mnu[j] : minu;
            maxs = mxs[j] > maxs ? mxs[j] : maxs;
            minm = mnm[j] < minm ? mnm[j] : minm;
            neg += ng[j];
        }
        /* the largest magnitude, as a word without its sign */
        unsigned mag = maxs > 0 ? (unsigned)maxs : 0;
        if (maxu >= 0x8000u && (maxu & 0x7FFFu) > mag) mag = maxu & 0x7FFFu;
        /* NaN or Inf; or only tiny values (TINY_BF16) */
        if (maxs >= 0x7F80 || maxu >= 0xFF80 || (moments && mag < TINY_BF16)) {
            stats_bf16(p + s, e - s, t, moments, r);
            continue;
        }
        if (minm == 0) /* a +0.0 or a -0.0: count the zeros */
            for (Py_ssize_t k = s; k < e; k++) zeros += (p[k] & 0x7FFFu) == 0;
        /* all negative: the largest is the smallest magnitude; none: the smallest is the least */
        float hi = bits_to_f32((uint32_t)(maxs >= 0 ? (unsigned)maxs : minu) << 16);
        float lo = bits_to_f32((uint32_t)(maxu >= 0x8000u ? maxu : minu) << 16);
        double sm = 0, sq = 0;
        float kf = 0.0f;
        if (moments) {
            /* the plain sums first (no subtraction) */
            if (minm >= EXACT_SQUARE) /* every square exact: FMA or not, the same bits */
                bf16_sums_plain(p, s, e, 0.0f, &sm, &sq);
            else
                bf16_sums_shifted(p, s, e, 0.0f, &sm, &sq);
            if (isfinite(sm) && isfinite(sq) && sq - sm * (sm / (double)(e - s)) < 0.5 * sq) {
                /* |mean| > std: the sum of squares would cancel; sum around the running mean */
                kf = (float)(r->n ? r->mean : sm / (double)(e - s));
                if (!isfinite(kf)) kf = 0.0f;
                bf16_sums_shifted(p, s, e, kf, &sm, &sq);
            }
            if (!(isfinite(sm) && isfinite(sq))) { /* a float32 overflow: redo in float64 */
                stats_bf16(p + s, e - s, t, moments, r);
                continue;
            }
        }
        r->zeros += zeros;
        r->neg += neg;
        if (lo < r->min) r->min = lo;
        if (hi > r->max) r->max = hi;
        if (moments)
            merge_block(r, e - s, (double)kf, sm, sq);
        else
            r->n += e - s;
    }
}

static void stats_f16(const void *p, Py_ssize_t n, const float *t, int moments, StatsPart *r) {
    float x[BLOCK];
    for (Py_ssize_t s = 0; s < n; s += BLOCK) {
        Py_ssize_t m = s + BLOCK < n ? BLOCK : n - s;
        widen_half((const uint16_t *)p + s, m, x);
        if (n <= EXACT)
            stats_f32(x, m, t, moments, r);
        else
            stats32_f32(x, m, t, moments, r);
    }
}

/* ---- Python bindings ---------------------------------------------------------------------- */

static const int ITEMSIZE[] = {4, 8, 2, 2, 1};

static int get_table(PyObject *obj, Py_buffer *view, const float **table, int code) {
    *table = NULL;
    view->obj = NULL;
    if (code != TAB8) return 0;
    if (obj == Py_None) {
        PyErr_SetString(PyExc_ValueError, "an 8-bit float needs its 256-entry table");
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    if (view->len != 256 * (Py_ssize_t)sizeof(float)) {
        PyBuffer_Release(view);
        view->obj = NULL;
        PyErr_SetString(PyExc_ValueError, "the table must hold 256 float32 values");
        return -1;
    }
    *table = (const float *)view->buf;
    return 0;
}

static PyObject *py_diff(PyObject *self, PyObject *args) {
    Py_buffer a, b, tv;
    int code;
    double rtol, atol;
    PyObject *tobj = Py_None;
    const float *table;
    if (!PyArg_ParseTuple(args, "y*y*idd|O", &a, &b, &code, &rtol, &atol, &tobj)) return NULL;
    PyObject *out = NULL;
    if (code < 0 || code > TAB8) {
        PyErr_SetString(PyExc_ValueError, "unknown dtype code");
        goto done;
    }
    if (a.len != b.len || a.len % ITEMSIZE[code]) {
        PyErr_SetString(PyExc_ValueError, "buffers differ in length or hold partial elements");
        goto done;
    }
    if (get_table(tobj, &tv, &table, code) < 0) goto done;
    DiffPart r = {0};
    Py_ssize_t n = a.len / ITEMSIZE[code];
    Py_BEGIN_ALLOW_THREADS switch (code) {
    case F32: diff_f32(a.buf, b.buf, n, table, rtol, atol, &r); break;
    case F64: diff_f64(a.buf, b.buf, n, table, rtol, atol, &r); break;
    case F16: diff_f16(a.buf, b.buf, n, table, rtol, atol, &r); break;
    case BF16: diff_bf16(a.buf, b.buf, n, table, rtol, atol, &r); break;
    default: diff_tab8(a.buf, b.buf, n, table, rtol, atol, &r); break;
    }
    Py_END_ALLOW_THREADS if (tv.obj) PyBuffer_Release(&tv);
    out = Py_BuildValue("(LdddddddLL)", r.elems, r.max_abs, r.max_rel, r.sum_abs, r.sum_d2, r.aa,
                        r.ab, r.bb, r.mismatched, r.nonfinite);
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return out;
}

static PyObject *py_stats(PyObject *self, PyObject *args) {
    Py_buffer x, tv;
    int code, moments, negatives = 1;
    PyObject *tobj = Py_None;
    const float *table;
    if (!PyArg_ParseTuple(args, "y*ip|Op", &x, &code, &moments, &tobj, &negatives)) return NULL;
    PyObject *out = NULL;
    if (code < 0 || code > TAB8) {
        PyErr_SetString(PyExc_ValueError, "unknown dtype code");
        goto done;
    }
    if (x.len % ITEMSIZE[code]) {
        PyErr_SetString(PyExc_ValueError, "the buffer holds a partial element");
        goto done;
    }
    if (get_table(tobj, &tv, &table, code) < 0) goto done;
    StatsPart r = {0};
    r.min = INFINITY;
    r.max = -INFINITY;
    Py_ssize_t n = x.len / ITEMSIZE[code];
    Py_BEGIN_ALLOW_THREADS switch (code) {
    case F32: stats_f32(x.buf, n, table, moments, &r); break;
    case F64: stats_f64(x.buf, n, table, moments, &r); break;
    case F16: stats_f16(x.buf, n, table, moments, &r); break;
    case BF16:
        if (n <= EXACT && moments)
            stats_bf16(x.buf, n, table, moments, &r);
        else
            stats_bf16w(x.buf, n, table, moments, negatives, &r);
        break;
    default:
        if (n <= EXACT)
            stats_tab8(x.buf, n, table, moments, &r);
        else
            stats32_tab8(x.buf, n, table, moments, &r);
        break;
    }
    Py_END_ALLOW_THREADS if (tv.obj) PyBuffer_Release(&tv);
    if (!negatives) r.neg = 0; /* not asked for: left 0 on every path */
    out = Py_BuildValue("(LddddLLLL)", r.n, r.mean, r.m2, r.min, r.max, r.nan, r.inf, r.zeros,
                        r.neg);
done:
    PyBuffer_Release(&x);
    return out;
}

static PyMethodDef methods[] = {
    {"diff", py_diff, METH_VARARGS,
     "diff(a, b, code, rtol, atol, table=None) -> (elems, max_abs, max_rel, sum_abs, sum_d2, "
     "aa, ab, bb, mismatched, nonfinite)"},
    {"stats", py_stats, METH_VARARGS,
     "stats(x, code, moments, table=None, negatives=True) -> (n, mean, m2, min, max, nan, inf, "
     "zeros, neg)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel",
                                    "Fused diff and stats passes (see kernels.py).", -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }

/*
 * ZipML (Zhang, Li, Kara, Alistarh, Liu, Zhang): data-optimal quantization
 * levels and stochastic rounding to an arbitrary level set.
 *
 * Levels: stochastic rounding of x between neighbouring levels a <= x <= b
 * is unbiased with variance (x - a)(b - x). Given a sorted sample, the s
 * levels c_1 < ... < c_s (c_1 = min, c_s = max) minimising the summed
 * variance are found by dynamic programming over candidate positions (the
 * distinct sample values, or `max_candidates` quantiles of them when there
 * are more). With prefix sums, an interval [c_i, c_j] holding m points with
 * sum S1 and sum of squares S2 costs  -m c_i c_j + (c_i + c_j) S1 - S2
 * (computed on data centred at the sample mean, the cost being translation
 * invariant). Time O(s * M^2) for M candidates, memory O(s * M).
 *
 * Quantizer: x is clamped to [c_1, c_s] (values outside the level range
 * are biased; fit the levels on data that covers them), the interval is
 * found through a 1024-cell lookup table, and x rounds up to c_{j+1} with
 * probability (x - c_j)/(c_{j+1} - c_j) (53-bit uniform from the counter RNG).
 *
 * Wire format: s float64 levels, strictly increasing, then one level index
 * per element in w = ceil(log2 s) bits (bit stream, LSB-first), zero padded
 * to a byte.  -> w + 64 s / n bits per element (s <= 256, so w <= 8).
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_compress.h"
#include "core/bitstream.h"
#include "core/counter_rng.h"
#include "core/cpu_features.h"
#include "core/errors.h"

#define ZIPML_MAX_LEVELS 256
#define ZIPML_CELLS 1024

static unsigned index_bits(uint32_t s)
{
    unsigned w = 0;
    while ((UINT32_C(1) << w) < s) w++;
    return w ? w : 1;
}

size_t scaleml_zipml_bytes(uint64_t n, uint32_t s)
{
    return (size_t)(8 * (uint64_t)s + (n * index_bits(s) + 7) / 8);
}

int scaleml_zipml_levels(const double *sorted, uint64_t m, uint32_t s, uint32_t max_candidates,
                         double *levels, uint32_t *count)
{
    if (s < 2 || s > ZIPML_MAX_LEVELS) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: s must be in 2..256, got %u", s);
    if (m < 1) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: empty sample");
    if (max_candidates < s) max_candidates = s;
    for (uint64_t i = 0; i < m; i++) {
        if (!isfinite(sorted[i])) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: non-finite value in the sample");
        if (i && sorted[i] < sorted[i - 1]) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: sample is not sorted");
    }
    /* distinct values */
    uint64_t distinct = 1;
    for (uint64_t i = 1; i < m; i++) distinct += sorted[i] != sorted[i - 1];
    uint64_t M = distinct < max_candidates ? distinct : max_candidates;
    double *cand = malloc(M * sizeof *cand);
    double *p0 = malloc((m + 1) * sizeof *p0), *p1 = malloc((m + 1) * sizeof *p1), *p2 = malloc((m + 1) * sizeof *p2);
    uint64_t *lo = malloc(M * sizeof *lo), *hi = malloc(M * sizeof *hi);
    double *f = malloc((size_t)s * M * sizeof *f);
    uint32_t *arg = malloc((size_t)s * M * sizeof *arg);
    int rc = SCALEML_OK;
    if (!cand || !p0 || !p1 || !p2 || !lo || !hi || !f || !arg) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "ZipML: out of memory");
        goto done;
    }
    if (M == distinct) {
        uint64_t j = 0;
        cand[j++] = sorted[0];
        for (uint64_t i = 1; i < m; i++) if (sorted[i] != sorted[i - 1]) cand[j++] = sorted[i];
    } else {
        uint64_t j = 0;
        for (uint64_t q = 0; q < M; q++) {
            double v = sorted[(uint64_t)((double)q * (double)(m - 1) / (double)(M - 1) + 0.5)];
            if (j == 0 || v > cand[j - 1]) cand[j++] = v;
        }
        if (j > 0 && cand[j - 1] != sorted[m - 1]) {
            if (j < M) cand[j++] = sorted[m - 1];
            else cand[j - 1] = sorted[m - 1];
        }
        M = j;
    }
    if (M <= s) {
        memcpy(levels, cand, M * sizeof *cand);
        *count = (uint32_t)M;
        goto done;
    }
    double mean = 0;
    for (uint64_t i = 0; i < m; i++) mean += sorted[i];
    mean /= (double)m;
    p0[0] = p1[0] = p2[0] = 0;
    for (uint64_t i = 0; i < m; i++) {
        double y = sorted[i] - mean;
        p0[i + 1] = (double)(i + 1);
        p1[i + 1] = p1[i] + y;
        p2[i + 1] = p2[i] + y * y;
    }
    {
        uint64_t a = 0, b = 0;
        for (uint64_t j = 0; j < M; j++) {
            while (a < m && sorted[a] < cand[j]) a++;
            while (b < m && sorted[b] <= cand[j]) b++;
            lo[j] = a;  /* first point >= cand[j] */
            hi[j] = b;  /* first point > cand[j] */
        }
    }
    /* f[t][j]: least cost of t+1 levels, the first at cand[0], the last at cand[j] */
    for (uint64_t j = 0; j < M; j++) f[j] = INFINITY;
    f[0] = 0;
    for (uint32_t t = 1; t < s; t++) {
        double *prev = f + (size_t)(t - 1) * M, *cur = f + (size_t)t * M;
        uint32_t *ca = arg + (size_t)t * M;
        cur[0] = INFINITY;
        for (uint64_t j = 1; j < M; j++) {
            double cj = cand[j] - mean, best = INFINITY;
            uint32_t bi = 0;
            for (uint64_t i = 0; i < j; i++) {
                if (prev[i] == INFINITY) continue;
                double ci = cand[i] - mean;
                uint64_t a = lo[i], b = hi[j];
                double cnt = p0[b] - p0[a], s1 = p1[b] - p1[a], s2 = p2[b] - p2[a];
                double cost = -cnt * ci * cj + (ci + cj) * s1 - s2;
                if (cost < 0) cost = 0; /* rounding noise */
                double v = prev[i] + cost;
                if (v < best) { best = v; bi = (uint32_t)i; }
            }
            cur[j] = best;
            ca[j] = bi;
        }
    }
    {
        uint64_t j = M - 1;
        for (uint32_t t = s - 1; t > 0; t--) {
            levels[t] = cand[j];
            j = arg[(size_t)t * M + j];
        }
        levels[0] = cand[0];
        *count = s;
    }
done:
    free(cand); free(p0); free(p1); free(p2); free(lo); free(hi); free(f); free(arg);
    return rc;
}

static int check_levels(const double *levels, uint32_t s)
{
    for (uint32_t j = 0; j < s; j++) {
        if (!isfinite(levels[j]) || (j && !(levels[j] > levels[j - 1]))) return 0;
    }
    return 1;
}

#define ZIPML_DEFINE(SUFFIX, VT)                                                              \
    static int encode_##SUFFIX(const VT *x, uint64_t n, const double *L, uint32_t s,          \
                               const uint16_t *cell, double inv_h, uint64_t key, bitwriter *w, \
                               unsigned wbits)                                                \
    {                                                                                         \
        double lo = L[0], hi = L[s - 1];                                                      \
        for (uint64_t i = 0; i < n; i++) {                                                    \
            double v = (double)x[i];                                                          \
            if (!isfinite(v)) return -1;                                                      \
            v = v < lo ? lo : (v > hi ? hi : v);                                              \
            int64_t c = (int64_t)((v - lo) * inv_h);                                          \
            if (c >= ZIPML_CELLS) c = ZIPML_CELLS - 1;                                        \
            uint32_t j = cell[c];                                                             \
            while (j + 2 < s && L[j + 1] <= v) j++;                                           \
            double a = L[j], b = L[j + 1];                                                    \
            double p = (v - a) / (b - a);                                                     \
            uint32_t idx = j + (crng_uniform53(key, i) < p);                                  \
            bw_put(w, idx, wbits);                                                            \
        }                                                                                     \
        return 0;                                                                             \
    }

ZIPML_DEFINE(f32, float)
ZIPML_DEFINE(f64, double)

/* ---- float32 fast path: the search and rounding in float against the float32
 * levels (the values a float32 decode produces), so E[decode] = x exactly up to
 * the 24-bit uniform. The portable loop and the AVX2 loop give the same bytes:
 * both find the true interval (AVX2: at most two steps from a cell table whose
 * cells are at most half the smallest level gap) and use the same float ops. */

typedef struct {
    float lo, hi, inv_h;
    int32_t cells, fine;
    uint32_t s;
    const float *Ls;   /* search levels: Ls[k] = level k, Ls[s - 1] = +inf */
    const float *Lf;   /* levels as float */
    const float *W;    /* Lf[k + 1] - Lf[k] */
    const int32_t *cell;
    const float *B1, *B2; /* per cell: Ls[cell + 1], Ls[cell + 2] */
    uint32_t k0, k1;
} zip32;

static inline uint8_t zip32_one(const zip32 *z, float v, uint32_t counter)
{
    float vc = v >= z->lo ? v : z->lo;
    vc = vc <= z->hi ? vc : z->hi;
    int32_t c = (int32_t)((vc - z->lo) * z->inv_h);
    c = c < z->cells - 1 ? c : z->cells - 1;
    c = c > 0 ? c : 0;
    int32_t j = z->cell[c];
    while (z->Ls[j + 1] <= vc) j++;
    float u = (float)(int32_t)(crng_u32_lanes(z->k0, z->k1, counter) >> 8) * 0x1.0p-24f;
    return (uint8_t)(j + (int32_t)(u * z->W[j] < vc - z->Lf[j]));
}

static int zip32_portable(const zip32 *z, const float *x, uint32_t len, uint32_t lo32, uint8_t *idx)
{
    int bad = 0;
    for (uint32_t i = 0; i < len; i++) {
        bad |= !(x[i] <= FLT_MAX) | !(x[i] >= -FLT_MAX);
        idx[i] = zip32_one(z, x[i], lo32 + i);
    }
    return bad;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2"))) static inline __m256i mix32_avx2(__m256i x)
{
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int32_t)0x7feb352d));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int32_t)0x846ca68bu));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    return x;
}

__attribute__((target("avx2"))) static int zip32_avx2(const zip32 *z, const float *x, uint32_t len,
                                                      uint32_t lo32, uint8_t *idx)
{
    const __m256 vlo = _mm256_set1_ps(z->lo), vhi = _mm256_set1_ps(z->hi), vinv = _mm256_set1_ps(z->inv_h);
    const __m256 big = _mm256_set1_ps(FLT_MAX), nbig = _mm256_set1_ps(-FLT_MAX);
    const __m256i last = _mm256_set1_epi32(z->cells - 1), zero = _mm256_setzero_si256();
    const __m256i k0 = _mm256_set1_epi32((int32_t)z->k0), k1 = _mm256_set1_epi32((int32_t)z->k1);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 scale = _mm256_set1_ps(0x1.0p-24f);
    int bad = 0;
    uint32_t i = 0;
    if (z->s <= 16) {
        /* up to 16 levels: the interval is a count of compares with broadcast
         * levels, and a, w come from register permutes (no gathers) */
        __m256 lv[16];
        for (uint32_t k = 0; k < 16; k++) lv[k] = _mm256_set1_ps(k < z->s ? z->Ls[k] : INFINITY);
        const __m256 lf_lo = _mm256_loadu_ps(z->Lf), lf_hi = _mm256_loadu_ps(z->Lf + 8);
        const __m256 w_lo = _mm256_loadu_ps(z->W), w_hi = _mm256_loadu_ps(z->W + 8);
        const __m256i seven = _mm256_set1_epi32(7);
        for (; i + 8 <= len; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 ok = _mm256_and_ps(_mm256_cmp_ps(v, big, _CMP_LE_OQ), _mm256_cmp_ps(v, nbig, _CMP_GE_OQ));
            bad |= _mm256_movemask_ps(ok) != 0xff;
            __m256 vc = _mm256_min_ps(_mm256_max_ps(v, vlo), vhi);
            __m256i j = _mm256_setzero_si256();
            for (uint32_t k = 1; k + 1 < z->s; k++)
                j = _mm256_sub_epi32(j, _mm256_castps_si256(_mm256_cmp_ps(lv[k], vc, _CMP_LE_OQ)));
            __m256 high = _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, seven));
            __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lf_lo, j), _mm256_permutevar8x32_ps(lf_hi, j), high);
            __m256 w = _mm256_blendv_ps(_mm256_permutevar8x32_ps(w_lo, j), _mm256_permutevar8x32_ps(w_hi, j), high);
            __m256i ctr = _mm256_add_epi32(_mm256_set1_epi32((int32_t)(lo32 + i)), lane);
            __m256i h = mix32_avx2(_mm256_add_epi32(mix32_avx2(_mm256_xor_si256(ctr, k0)), k1));
            __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), scale);
            __m256 up = _mm256_cmp_ps(_mm256_mul_ps(u, w), _mm256_sub_ps(vc, a), _CMP_LT_OQ);
            __m256i r = _mm256_sub_epi32(j, _mm256_castps_si256(up));
            __m128i r16 = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
            uint64_t b8 = (uint64_t)_mm_cvtsi128_si64(_mm_packus_epi16(r16, r16));
            memcpy(idx + i, &b8, 8);
        }
    }
    for (; z->fine && i + 8 <= len; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 ok = _mm256_and_ps(_mm256_cmp_ps(v, big, _CMP_LE_OQ), _mm256_cmp_ps(v, nbig, _CMP_GE_OQ));
        bad |= _mm256_movemask_ps(ok) != 0xff;
        __m256 vc = _mm256_max_ps(v, vlo); /* NaN -> lo, like the portable loop */
        vc = _mm256_min_ps(vc, vhi);
        __m256i c = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_sub_ps(vc, vlo), vinv));
        c = _mm256_max_epi32(_mm256_min_epi32(c, last), zero);
        /* the entry and the next two boundaries come from the cell at once */
        __m256i j = _mm256_i32gather_epi32(z->cell, c, 4);
        __m256 b1 = _mm256_i32gather_ps(z->B1, c, 4);
        __m256 b2 = _mm256_i32gather_ps(z->B2, c, 4);
        j = _mm256_sub_epi32(j, _mm256_castps_si256(_mm256_cmp_ps(b1, vc, _CMP_LE_OQ)));
        j = _mm256_sub_epi32(j, _mm256_castps_si256(_mm256_cmp_ps(b2, vc, _CMP_LE_OQ)));
        __m256 a = _mm256_i32gather_ps(z->Lf, j, 4);
        __m256 w = _mm256_i32gather_ps(z->W, j, 4);
        __m256i ctr = _mm256_add_epi32(_mm256_set1_epi32((int32_t)(lo32 + i)), lane);
        __m256i h = mix32_avx2(_mm256_add_epi32(mix32_avx2(_mm256_xor_si256(ctr, k0)), k1));
        __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), scale);
        __m256 up = _mm256_cmp_ps(_mm256_mul_ps(u, w), _mm256_sub_ps(vc, a), _CMP_LT_OQ);
        __m256i r = _mm256_sub_epi32(j, _mm256_castps_si256(up));
        int32_t t[8];
        _mm256_storeu_si256((__m256i *)(void *)t, r);
        for (unsigned k = 0; k < 8; k++) idx[i + k] = (uint8_t)t[k];
    }
    for (; i < len; i++) {
        bad |= !(x[i] <= FLT_MAX) | !(x[i] >= -FLT_MAX);
        idx[i] = zip32_one(z, x[i], lo32 + i);
    }
    return bad;
}

/* 8 indices of w bits -> w bytes with PEXT (LSB-first, like the bit writer). */
__attribute__((target("bmi2"))) static uint8_t *zpack_pext(uint8_t *p, uint8_t *end, const uint8_t *c,
                                                           uint64_t groups, unsigned w)
{
    const uint64_t mask = UINT64_C(0x0101010101010101) * ((UINT64_C(1) << w) - 1);
    for (uint64_t g = 0; g < groups; g++, c += 8, p += w) {
        uint64_t b;
        memcpy(&b, c, 8);
        uint64_t acc = _pext_u64(b, mask);
        if (end - p >= 8) memcpy(p, &acc, 8);
        else for (unsigned k = 0; k < w; k++) p[k] = (uint8_t)(acc >> (8 * k));
    }
    return p;
}
#endif

static uint8_t *zpack(uint8_t *p, uint8_t *end, const uint8_t *c, uint64_t groups, unsigned w)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (scaleml_cpu_bmi2()) return zpack_pext(p, end, c, groups, w);
#endif
    for (uint64_t g = 0; g < groups; g++, c += 8, p += w) {
        uint64_t acc = 0;
        for (unsigned k = 0; k < 8; k++) acc |= (uint64_t)c[k] << (k * w);
        if (end - p >= 8) memcpy(p, &acc, 8);
        else for (unsigned k = 0; k < w; k++) p[k] = (uint8_t)(acc >> (8 * k));
    }
    return p;
}

static int encode_f32_levels(const float *x, uint64_t n, const double *levels, uint32_t s, uint64_t key,
                             uint8_t *p, uint8_t *end)
{
    float Lf[ZIPML_MAX_LEVELS + 2] = {0}, Ls[ZIPML_MAX_LEVELS + 2] = {0}, W[ZIPML_MAX_LEVELS + 2] = {0};
    for (uint32_t k = 0; k < s; k++) Lf[k] = Ls[k] = (float)levels[k];
    Ls[s - 1] = Ls[s] = INFINITY;
    Lf[s] = Lf[s - 1];
    for (uint32_t k = 0; k < s; k++) W[k] = Lf[k + 1] - Lf[k];
    float lo = Lf[0], hi = Lf[s - 1], range = hi - lo, mingap = range;
    for (uint32_t k = 0; k + 1 < s; k++) mingap = W[k] < mingap ? W[k] : mingap;
    int32_t cells = 1024;
    while (cells < 65536 && range / (float)cells > mingap / 2) cells *= 2;
    int fine = mingap > 0 && range > 0 && range / (float)cells <= mingap / 2;
    int32_t *cell = malloc((size_t)cells * sizeof *cell);
    float *bounds = malloc(2 * (size_t)cells * sizeof *bounds);
    if (!cell || !bounds) { free(cell); free(bounds); return SCALEML_ERR_NOMEM; }
    double h = range > 0 ? (double)range / cells : 1.0;
    float inv_h = (float)(1.0 / h);
    int32_t j = 0;
    for (int32_t c = 0; c < cells; c++) {
        /* entry: last interval whose left level is <= the left edge of cell c - 1 */
        double edge = (double)lo + h * ((double)c - 1.0);
        while (j + 2 < (int32_t)s && (double)Lf[j + 1] <= edge) j++;
        cell[c] = j;
        bounds[c] = Ls[j + 1];
        bounds[cells + c] = Ls[j + 2];
    }
    zip32 z = {lo, hi, inv_h, cells, fine, s, Ls, Lf, W, cell, bounds, bounds + cells, (uint32_t)key, 0};
    unsigned wbits = index_bits(s);
    int use_avx2 = (fine || s <= 16) && scaleml_cpu_avx2();
    uint8_t idx[4096];
    int bad = 0;
    for (uint64_t start = 0; start < n && !bad; start += 4096) {
        /* 4096-element chunks never straddle a 2^32 boundary of the counter */
        uint32_t len = n - start < 4096 ? (uint32_t)(n - start) : 4096;
        z.k1 = crng_k1(key, start);
#if defined(__x86_64__) && defined(__GNUC__)
        bad = use_avx2 ? zip32_avx2(&z, x + start, len, (uint32_t)start, idx)
                       : zip32_portable(&z, x + start, len, (uint32_t)start, idx);
#else
        (void)use_avx2;
        bad = zip32_portable(&z, x + start, len, (uint32_t)start, idx);
#endif
        p = zpack(p, end, idx, len / 8, wbits);
        if (len % 8) { /* only the last chunk: it ends the stream */
            bitwriter w;
            bw_init(&w, p, (size_t)(end - p));
            for (uint32_t i = len / 8 * 8; i < len; i++) bw_put(&w, idx[i], wbits);
            p += bw_finish(&w, p);
        }
    }
    free(cell);
    free(bounds);
    return bad ? SCALEML_ERR_ARG : SCALEML_OK;
}

int scaleml_zipml_encode(const void *x, int value_bytes, uint64_t n, const double *levels, uint32_t s,
                         uint64_t key, uint8_t *out, size_t cap, size_t *written)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (s < 2 || s > ZIPML_MAX_LEVELS) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: s must be in 2..256, got %u", s);
    if (!check_levels(levels, s))
        return scaleml_fail(SCALEML_ERR_ARG, "ZipML: levels must be finite and strictly increasing");
    size_t need = scaleml_zipml_bytes(n, s);
    *written = need;
    if (cap < need) return scaleml_fail(SCALEML_ERR_TOO_LARGE, "ZipML: output capacity %zu < %zu bytes", cap, need);
    memcpy(out, levels, 8 * (size_t)s);
    if (value_bytes == 4) {
        int rc = encode_f32_levels(x, n, levels, s, key, out + 8 * (size_t)s, out + need);
        if (rc == SCALEML_ERR_NOMEM) return scaleml_fail(rc, "ZipML: out of memory");
        if (rc) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: non-finite value (NaN or Inf) in the input");
        return SCALEML_OK;
    }
    /* float64: cell[c] = index of the last level <= the cell's left edge */
    uint16_t cell[ZIPML_CELLS];
    double lo = levels[0], h = (levels[s - 1] - levels[0]) / ZIPML_CELLS;
    uint32_t j = 0;
    for (unsigned c = 0; c < ZIPML_CELLS; c++) {
        double edge = lo + h * c;
        while (j + 2 < s && levels[j + 1] <= edge) j++;
        cell[c] = (uint16_t)j;
    }
    double inv_h = h > 0 ? 1.0 / h : 0.0;
    bitwriter w;
    bw_init(&w, out + 8 * (size_t)s, need - 8 * (size_t)s);
    unsigned wbits = index_bits(s);
    int bad = value_bytes == 4 ? encode_f32(x, n, levels, s, cell, inv_h, key, &w, wbits)
                               : encode_f64(x, n, levels, s, cell, inv_h, key, &w, wbits);
    if (bad) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: non-finite value (NaN or Inf) in the input");
    bw_finish(&w, out + 8 * (size_t)s);
    return SCALEML_OK;
}

int scaleml_zipml_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t s, void *out,
                         int value_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (s < 2 || s > ZIPML_MAX_LEVELS) return scaleml_fail(SCALEML_ERR_ARG, "ZipML: s must be in 2..256, got %u", s);
    if (bytes != scaleml_zipml_bytes(n, s))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "ZipML payload has %zu bytes, expected %zu", bytes,
                       scaleml_zipml_bytes(n, s));
    double L[ZIPML_MAX_LEVELS];
    memcpy(L, buf, 8 * (size_t)s);
    if (!check_levels(L, s)) return scaleml_fail(SCALEML_ERR_MALFORMED, "ZipML payload: invalid level table");
    bitreader r;
    br_init(&r, buf + 8 * (size_t)s, bytes - 8 * (size_t)s);
    unsigned wbits = index_bits(s);
    uint32_t badidx = 0;
    if (value_bytes == 4) {
        float Lf[ZIPML_MAX_LEVELS + 1];
        for (uint32_t j = 0; j < s; j++) Lf[j] = (float)L[j];
        float *o = out;
        for (uint64_t i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)br_get(&r, wbits);
            badidx |= idx >= s;
            o[i] = Lf[idx < s ? idx : 0];
        }
    } else {
        double *o = out;
        for (uint64_t i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)br_get(&r, wbits);
            badidx |= idx >= s;
            o[i] = L[idx < s ? idx : 0];
        }
    }
    if (r.err || badidx) return scaleml_fail(SCALEML_ERR_MALFORMED, "ZipML payload: level index out of range");
    return SCALEML_OK;
}

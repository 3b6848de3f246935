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
#include "bitstream.h"
#include "counter_rng.h"
#include "sparse_vector.h"

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
    if (s < 2 || s > ZIPML_MAX_LEVELS) return sv_fail(SCALEML_ERR_ARG, "ZipML: s must be in 2..256, got %u", s);
    if (m < 1) return sv_fail(SCALEML_ERR_ARG, "ZipML: empty sample");
    if (max_candidates < s) max_candidates = s;
    for (uint64_t i = 0; i < m; i++) {
        if (!isfinite(sorted[i])) return sv_fail(SCALEML_ERR_ARG, "ZipML: non-finite value in the sample");
        if (i && sorted[i] < sorted[i - 1]) return sv_fail(SCALEML_ERR_ARG, "ZipML: sample is not sorted");
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
        rc = sv_fail(SCALEML_ERR_NOMEM, "ZipML: out of memory");
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

int scaleml_zipml_encode(const void *x, int value_bytes, uint64_t n, const double *levels, uint32_t s,
                         uint64_t key, uint8_t *out, size_t cap, size_t *written)
{
    if (value_bytes != 4 && value_bytes != 8)
        return sv_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (s < 2 || s > ZIPML_MAX_LEVELS) return sv_fail(SCALEML_ERR_ARG, "ZipML: s must be in 2..256, got %u", s);
    if (!check_levels(levels, s))
        return sv_fail(SCALEML_ERR_ARG, "ZipML: levels must be finite and strictly increasing");
    size_t need = scaleml_zipml_bytes(n, s);
    *written = need;
    if (cap < need) return sv_fail(SCALEML_ERR_TOO_LARGE, "ZipML: output capacity %zu < %zu bytes", cap, need);
    memcpy(out, levels, 8 * (size_t)s);
    /* cell[c] = index of the last level <= the cell's left edge */
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
    if (bad) return sv_fail(SCALEML_ERR_ARG, "ZipML: non-finite value (NaN or Inf) in the input");
    bw_finish(&w, out + 8 * (size_t)s);
    return SCALEML_OK;
}

int scaleml_zipml_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t s, void *out,
                         int value_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return sv_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (s < 2 || s > ZIPML_MAX_LEVELS) return sv_fail(SCALEML_ERR_ARG, "ZipML: s must be in 2..256, got %u", s);
    if (bytes != scaleml_zipml_bytes(n, s))
        return sv_fail(SCALEML_ERR_MALFORMED, "ZipML payload has %zu bytes, expected %zu", bytes,
                       scaleml_zipml_bytes(n, s));
    double L[ZIPML_MAX_LEVELS];
    memcpy(L, buf, 8 * (size_t)s);
    if (!check_levels(L, s)) return sv_fail(SCALEML_ERR_MALFORMED, "ZipML payload: invalid level table");
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
    if (r.err || badidx) return sv_fail(SCALEML_ERR_MALFORMED, "ZipML payload: level index out of range");
    return SCALEML_OK;
}

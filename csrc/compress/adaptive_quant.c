/*
 * Adaptive quantization (Dryden, Van Essen and Snir, LBANN).
 *
 * Input: a rows x cols matrix (row-major; the Python side adds the error
 * feedback residual first) and a proportion pi >= 1: send about 1/pi of the
 * entries. Thresholds over the whole matrix: `sample` entries are drawn at
 * random positions (all entries when the matrix is not larger), the
 * ceil(m/pi)-th largest magnitude among them is found by introselect, and
 *   tau+ = the smallest positive sampled value at or above that magnitude,
 *   tau- = the negative sampled value at or above it that is closest to 0;
 * a missing side mirrors the other (tau- = -tau+), none at all sends nothing.
 * Entries >= tau+ or <= tau- are sent. Per column the reconstruction values
 * are the exact means of the sent positive and of the sent negative entries
 * (the threshold itself when a column sent none on that side). The encoder
 * writes the residual in the same pass: value - reconstruction where sent,
 * the value where not.
 *
 * Wire format:
 *   (cols + 1) uint64 word offsets: column c owns words [off[c], off[c+1])
 *   cols x 2 float32: (positive, negative) reconstruction value per column
 *   words: (row << 1) | sign (1 = negative), rows strictly increasing inside
 *          a column; 16-bit words when rows <= 32767, 32-bit when
 *          rows <= 2^31 - 1, 64-bit otherwise
 *   zero padding to a multiple of 8 bytes
 *   -> about 16/pi + 128*cols/(rows*cols) bits per element with 16-bit words.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_compress.h"
#include "core/cpu_features.h"
#include "core/counter_rng.h"
#include "compress/select.h"
#include "core/errors.h"

SELECT_DEFINE(u64, uint64_t)

static unsigned word_bytes(uint64_t rows)
{
    if (rows <= 32767) return 2;
    if (rows <= INT32_MAX) return 4;
    return 8;
}

size_t scaleml_adaptive_bytes(uint64_t rows, uint64_t cols, uint64_t words)
{
    size_t b = (size_t)((cols + 1) * 8 + cols * 8 + words * word_bytes(rows));
    return (b + 7) & ~(size_t)7;
}

static inline uint64_t dkey(double v)
{
    uint64_t k;
    memcpy(&k, &v, 8);
    return k & UINT64_C(0x7fffffffffffffff);
}

static inline void put_word(uint8_t *words, unsigned wb, uint64_t at, uint64_t w)
{
    if (wb == 2) { uint16_t x = (uint16_t)w; memcpy(words + at * 2, &x, 2); }
    else if (wb == 4) { uint32_t x = (uint32_t)w; memcpy(words + at * 4, &x, 4); }
    else memcpy(words + at * 8, &w, 8);
}

static inline uint64_t get_word(const uint8_t *words, unsigned wb, uint64_t at)
{
    if (wb == 2) { uint16_t x; memcpy(&x, words + at * 2, 2); return x; }
    if (wb == 4) { uint32_t x; memcpy(&x, words + at * 4, 4); return x; }
    uint64_t x;
    memcpy(&x, words + at * 8, 8);
    return x;
}

static uint64_t skip_f32(const float *row, uint64_t c, uint64_t C, float tp, float tn, unsigned *mask);
static uint64_t skip_f64(const double *row, uint64_t c, uint64_t C, double tp, double tn, unsigned *mask);

/* The entries pass 1 decided to send, in row-major order: word (row << 1 | sign)
 * and column. Pass 2 then only visits these (about N/pi), not the matrix. */
typedef struct {
    uint64_t *word;
    uint64_t *col;
    uint64_t n, cap;
    int oom;
} sent_list;

static void sl_push(sent_list *l, uint64_t word, uint64_t col)
{
    if (l->n == l->cap) {
        uint64_t cap = l->cap ? 2 * l->cap : 4096;
        uint64_t *w = realloc(l->word, cap * sizeof *w);
        if (w) l->word = w;
        uint64_t *c = w ? realloc(l->col, cap * sizeof *c) : NULL;
        if (c) l->col = c;
        if (!w || !c) { l->oom = 1; return; }
        l->cap = cap;
    }
    l->word[l->n] = word;
    l->col[l->n] = col;
    l->n++;
}

#define ADAPTIVE_DEFINE(SUFFIX, VT, VT_MAX)                                                     \
    static int sample_thresholds_##SUFFIX(const VT *x, uint64_t N, double pi, uint64_t sample,  \
                                          uint64_t key, double *tp, double *tn)                 \
    {                                                                                           \
        uint64_t m = sample < N ? sample : N;                                                   \
        double *v = malloc(m * sizeof *v);                                                      \
        uint64_t *k = malloc(m * sizeof *k);                                                    \
        if (!v || !k) { free(v); free(k); return SCALEML_ERR_NOMEM; }                           \
        for (uint64_t j = 0; j < m; j++) {                                                      \
            uint64_t pos = m == N ? j : (uint64_t)(((unsigned __int128)crng_draw(key, j) * N) >> 64); \
            v[j] = (double)x[pos];                                                              \
            if (!isfinite(v[j])) { free(v); free(k); return SCALEML_ERR_ARG; }                  \
            k[j] = dkey(v[j]);                                                                  \
        }                                                                                       \
        uint64_t ks = (uint64_t)ceil((double)m / pi);                                           \
        if (ks < 1) ks = 1;                                                                     \
        if (ks > m) ks = m;                                                                     \
        select_u64(k, m, m - ks);                                                               \
        uint64_t t = k[m - ks];                                                                 \
        double p = INFINITY, q = -INFINITY;                                                     \
        for (uint64_t j = 0; j < m; j++) {                                                      \
            if (dkey(v[j]) < t) continue;                                                       \
            if (v[j] > 0 && v[j] < p) p = v[j];                                                 \
            if (v[j] < 0 && v[j] > q) q = v[j];                                                 \
        }                                                                                       \
        free(v);                                                                                \
        free(k);                                                                                \
        if (isinf(p) && !isinf(q)) p = -q;                                                      \
        if (isinf(q) && !isinf(p)) q = -p;                                                      \
        *tp = p;                                                                                \
        *tn = q;                                                                                \
        return SCALEML_OK;                                                                      \
    }                                                                                           \
    /* First c' >= c (a multiple of 8 steps from c, at most C) where a block of  \
     * 8 holds a sent or non-finite value; C when none (portable version). */     \
    static uint64_t skip_scalar_##SUFFIX(const VT *row, uint64_t c, uint64_t C, VT tp, VT tn, \
                                         unsigned *mask)                                        \
    {                                                                                           \
        for (; c + 8 <= C; c += 8) {                                                            \
            unsigned m = 0;                                                                     \
            for (unsigned j = 0; j < 8; j++) {                                                  \
                VT v = row[c + j];                                                              \
                m |= (unsigned)((v >= tp) | (v <= tn) | !(v <= VT_MAX) | !(v >= -VT_MAX)) << j; \
            }                                                                                   \
            if (m) { *mask = m; return c; }                                                     \
        }                                                                                       \
        *mask = 0;                                                                              \
        return c;                                                                               \
    }                                                                                           \
    static int pass1_##SUFFIX(const VT *x, uint64_t R, uint64_t C, VT tp, VT tn, double *ps,     \
                              double *ns, uint64_t *pc, uint64_t *nc, sent_list *l)             \
    {                                                                                           \
        int bad = 0;                                                                            \
        for (uint64_t r = 0; r < R; r++) {                                                      \
            const VT *row = x + r * C;                                                          \
            uint64_t c = 0;                                                                     \
            for (;;) {                                                                          \
                unsigned m;                                                                     \
                c = skip_##SUFFIX(row, c, C, tp, tn, &m); /* blocks of 8 with nothing sent */   \
                if (!m) break;                                                                  \
                for (; m; m &= m - 1) {                                                         \
                    uint64_t cc = c + (unsigned)__builtin_ctz(m);                               \
                    VT v = row[cc];                                                             \
                    bad |= !(v <= VT_MAX) | !(v >= -VT_MAX);                                    \
                    if (v >= tp) { ps[cc] += (double)v; pc[cc]++; sl_push(l, r << 1, cc); }     \
                    else if (v <= tn) { ns[cc] += (double)v; nc[cc]++; sl_push(l, (r << 1) | 1, cc); } \
                }                                                                               \
                c += 8;                                                                         \
            }                                                                                   \
            for (; c < C; c++) { /* tail of fewer than 8 */                                     \
                VT v = row[c];                                                                  \
                bad |= !(v <= VT_MAX) | !(v >= -VT_MAX);                                        \
                if (v >= tp) { ps[c] += (double)v; pc[c]++; sl_push(l, r << 1, c); }            \
                else if (v <= tn) { ns[c] += (double)v; nc[c]++; sl_push(l, (r << 1) | 1, c); } \
            }                                                                                   \
        }                                                                                       \
        return bad;                                                                             \
    }                                                                                           \
    static void pass2_##SUFFIX(const VT *x, uint64_t R, uint64_t C, const sent_list *l,         \
                               const float *rec, uint64_t *cursor, uint8_t *words, unsigned wb, \
                               VT *residual)                                                    \
    {                                                                                           \
        if (residual && R && C) memcpy(residual, x, R * C * sizeof(VT));                         \
        for (uint64_t i = 0; i < l->n; i++) {                                                   \
            uint64_t c = l->col[i], w = l->word[i];                                             \
            put_word(words, wb, cursor[c]++, w);                                                \
            if (residual) {                                                                     \
                uint64_t at = (w >> 1) * C + c;                                                 \
                residual[at] = x[at] - (VT)rec[2 * c + (w & 1)];                                \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    static void decode_##SUFFIX(const uint8_t *words, unsigned wb, const uint64_t *off,         \
                                const float *rec, uint64_t C, VT *out)                          \
    {                                                                                           \
        for (uint64_t c = 0; c < C; c++) {                                                      \
            VT vals[2] = {(VT)rec[2 * c], (VT)rec[2 * c + 1]};                                  \
            for (uint64_t j = off[c]; j < off[c + 1]; j++) {                                    \
                uint64_t w = get_word(words, wb, j);                                            \
                out[(w >> 1) * C + c] = vals[w & 1];                                            \
            }                                                                                   \
        }                                                                                       \
    }

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* AVX2 version of the block skip for float32 (same result as the portable one). */
__attribute__((target("avx2"))) static uint64_t skip_f32_avx2(const float *row, uint64_t c, uint64_t C,
                                                              float tp, float tn, unsigned *mask)
{
    const __m256 vtp = _mm256_set1_ps(tp), vtn = _mm256_set1_ps(tn);
    const __m256 big = _mm256_set1_ps(FLT_MAX), nbig = _mm256_set1_ps(-FLT_MAX);
    for (; c + 8 <= C; c += 8) {
        __m256 v = _mm256_loadu_ps(row + c);
        __m256 send = _mm256_or_ps(_mm256_cmp_ps(v, vtp, _CMP_GE_OQ), _mm256_cmp_ps(v, vtn, _CMP_LE_OQ));
        __m256 ok = _mm256_and_ps(_mm256_cmp_ps(v, big, _CMP_LE_OQ), _mm256_cmp_ps(v, nbig, _CMP_GE_OQ));
        unsigned m = (unsigned)_mm256_movemask_ps(send) | ((unsigned)_mm256_movemask_ps(ok) ^ 0xffu);
        if (m) { *mask = m; return c; }
    }
    *mask = 0;
    return c;
}
#endif

ADAPTIVE_DEFINE(f32, float, FLT_MAX)
ADAPTIVE_DEFINE(f64, double, DBL_MAX)

static uint64_t skip_f32(const float *row, uint64_t c, uint64_t C, float tp, float tn, unsigned *mask)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (scaleml_cpu_avx2()) return skip_f32_avx2(row, c, C, tp, tn, mask);
#endif
    return skip_scalar_f32(row, c, C, tp, tn, mask);
}

static uint64_t skip_f64(const double *row, uint64_t c, uint64_t C, double tp, double tn, unsigned *mask)
{
    return skip_scalar_f64(row, c, C, tp, tn, mask);
}

int scaleml_adaptive_encode(const void *x, int value_bytes, uint64_t rows, uint64_t cols, double pi,
                            uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                            void *residual, double *thresholds)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (!(pi >= 1.0) || !isfinite(pi)) return scaleml_fail(SCALEML_ERR_ARG, "adaptive: pi must be finite and >= 1");
    if (sample < 1) return scaleml_fail(SCALEML_ERR_ARG, "adaptive: sample size must be >= 1");
    uint64_t N = rows * cols;
    if (cols && N / cols != rows) return scaleml_fail(SCALEML_ERR_ARG, "adaptive: matrix too large");
    double tp = INFINITY, tn = -INFINITY;
    int rc;
    if (N > 0) {
        rc = value_bytes == 4 ? sample_thresholds_f32(x, N, pi, sample, key, &tp, &tn)
                              : sample_thresholds_f64(x, N, pi, sample, key, &tp, &tn);
        if (rc == SCALEML_ERR_NOMEM) return scaleml_fail(rc, "adaptive: out of memory");
        if (rc) return scaleml_fail(rc, "adaptive: non-finite value (NaN or Inf) in the input");
    }
    /* Thresholds as the input type (tau+ rounded up, tau- down, so the float
     * compare sends exactly the entries the double thresholds select). */
    float tp32 = (float)tp, tn32 = (float)tn;
    if ((double)tp32 < tp) tp32 = nextafterf(tp32, INFINITY);
    if ((double)tn32 > tn) tn32 = nextafterf(tn32, -INFINITY);
    if (thresholds) { thresholds[0] = tp; thresholds[1] = tn; }
    double *sums = calloc(2 * cols + 1, sizeof *sums);
    uint64_t *counts = calloc(2 * cols + 1, sizeof *counts);
    uint64_t *cursor = malloc((cols + 1) * sizeof *cursor);
    if (!sums || !counts || !cursor) {
        free(sums); free(counts); free(cursor);
        return scaleml_fail(SCALEML_ERR_NOMEM, "adaptive: out of memory");
    }
    double *ps = sums, *ns = sums + cols;
    uint64_t *pc = counts, *nc = counts + cols;
    sent_list list = {NULL, NULL, 0, 0, 0};
    int bad = value_bytes == 4 ? pass1_f32(x, rows, cols, tp32, tn32, ps, ns, pc, nc, &list)
                               : pass1_f64(x, rows, cols, tp, tn, ps, ns, pc, nc, &list);
    if (list.oom) {
        free(list.word); free(list.col); free(sums); free(counts); free(cursor);
        return scaleml_fail(SCALEML_ERR_NOMEM, "adaptive: out of memory");
    }
    if (bad) {
        free(list.word); free(list.col); free(sums); free(counts); free(cursor);
        return scaleml_fail(SCALEML_ERR_ARG, "adaptive: non-finite value (NaN or Inf) in the input");
    }
    uint64_t total = 0;
    for (uint64_t c = 0; c < cols; c++) { cursor[c] = total; total += pc[c] + nc[c]; }
    cursor[cols] = total;
    size_t need = scaleml_adaptive_bytes(rows, cols, total);
    *written = need;
    if (cap < need) {
        free(list.word); free(list.col); free(sums); free(counts); free(cursor);
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "adaptive: output capacity %zu < %zu bytes", cap, need);
    }
    memcpy(out, cursor, (cols + 1) * 8);
    float *rec = malloc((2 * cols + 1) * sizeof *rec);
    if (!rec) {
        free(list.word); free(list.col); free(sums); free(counts); free(cursor);
        return scaleml_fail(SCALEML_ERR_NOMEM, "adaptive: out of memory");
    }
    for (uint64_t c = 0; c < cols; c++) {
        rec[2 * c] = pc[c] ? (float)(ps[c] / (double)pc[c]) : (isinf(tp) ? 0.0f : (float)tp);
        rec[2 * c + 1] = nc[c] ? (float)(ns[c] / (double)nc[c]) : (isinf(tn) ? 0.0f : (float)tn);
    }
    uint8_t *recp = out + (cols + 1) * 8;
    memcpy(recp, rec, cols * 8);
    unsigned wb = word_bytes(rows);
    uint8_t *words = recp + cols * 8;
    size_t used = (size_t)((cols + 1) * 8 + cols * 8 + total * wb);
    memset(out + used, 0, need - used);
    if (value_bytes == 4) pass2_f32(x, rows, cols, &list, rec, cursor, words, wb, residual);
    else pass2_f64(x, rows, cols, &list, rec, cursor, words, wb, residual);
    free(list.word);
    free(list.col);
    free(rec); free(sums); free(counts); free(cursor);
    return SCALEML_OK;
}

int scaleml_adaptive_decode(const uint8_t *buf, size_t bytes, uint64_t rows, uint64_t cols,
                            void *out, int value_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (cols > (SIZE_MAX / 16) || bytes < (cols + 1) * 8 + cols * 8)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "adaptive payload truncated (%zu bytes)", bytes);
    uint64_t *off = malloc((cols + 1) * 8);
    float *rec = malloc(cols * 8 + 8);
    if (!off || !rec) { free(off); free(rec); return scaleml_fail(SCALEML_ERR_NOMEM, "adaptive: out of memory"); }
    memcpy(off, buf, (cols + 1) * 8);
    memcpy(rec, buf + (cols + 1) * 8, cols * 8);
    int rc = SCALEML_OK;
    uint64_t total = off[cols];
    if (off[0] != 0 || total > rows * cols || bytes != scaleml_adaptive_bytes(rows, cols, total))
        rc = scaleml_fail(SCALEML_ERR_MALFORMED, "adaptive payload: word count does not match %zu bytes", bytes);
    for (uint64_t c = 0; c < cols && !rc; c++) {
        if (off[c + 1] < off[c] || off[c + 1] - off[c] > rows)
            rc = scaleml_fail(SCALEML_ERR_MALFORMED, "adaptive payload: bad offset of column %llu", (unsigned long long)c);
        else if (!(rec[2 * c] >= 0 && rec[2 * c] <= FLT_MAX) || !(rec[2 * c + 1] <= 0 && rec[2 * c + 1] >= -FLT_MAX))
            rc = scaleml_fail(SCALEML_ERR_MALFORMED, "adaptive payload: bad reconstruction values of column %llu",
                         (unsigned long long)c);
    }
    unsigned wb = word_bytes(rows);
    const uint8_t *words = buf + (cols + 1) * 8 + cols * 8;
    for (uint64_t c = 0; c < cols && !rc; c++) {
        uint64_t prev = 0;
        for (uint64_t j = off[c]; j < off[c + 1]; j++) {
            uint64_t row = get_word(words, wb, j) >> 1;
            if (row >= rows || (j > off[c] && row <= prev)) {
                rc = scaleml_fail(SCALEML_ERR_MALFORMED, "adaptive payload: bad row index in column %llu",
                             (unsigned long long)c);
                break;
            }
            prev = row;
        }
    }
    if (!rc) {
        if (rows && cols) memset(out, 0, rows * cols * (size_t)value_bytes);
        if (value_bytes == 4) decode_f32(words, wb, off, rec, cols, out);
        else decode_f64(words, wb, off, rec, cols, out);
    }
    free(off);
    free(rec);
    return rc;
}

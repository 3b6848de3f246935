/*
 * 1-bit SGD quantization (Seide et al., 2014), per bucket (a bucket is a
 * column when the Python side hands over a matrix column by column).
 *
 * Each value is sent as its sign bit (1 = negative); a bucket's non-negative
 * values are reconstructed as their mean and its negative values as theirs
 * (0 when a side is empty). The encoder can also write the quantization error
 * x - reconstruction (the error feedback residual) in the same pass.
 *
 * Wire format: for each of the ceil(n/d) buckets two float32 values
 * (mean of the non-negative values, mean of the negative values), then n sign
 * bits LSB-first (bit i of the vector), zero padded to a byte.
 *   -> 1 + 64/d bits per element.
 *
 * The per-element math and the order of the bucket sums (8 lanes and a fixed
 * combine) are those of arith/onebit.h, shared with the CUDA kernels.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api_compress.h"
#include "arith/onebit.h"
#include "core/cpu_features.h"
#include "core/bitstream.h"
#include "core/counter_rng.h"
#include "core/errors.h"
#include "core/threads.h"

size_t scaleml_onebit_bytes(uint64_t n, uint64_t bucket)
{
    return (size_t)onebit_payload_bytes(n, bucket);
}

/* Lane-wise passes (vectorizable without reassociation: identical results in
 * every clone). stats: sum of all values, sum of min(v, 0), count of v < 0, in
 * the lanes of arith/onebit.h run side by side. */
#define ONEBIT_DEFINE_LANES(SUFFIX, VT, VT_MAX)                                               \
    SCALEML_CLONES static int stats_##SUFFIX(const VT *v, uint64_t len, double *sum_all,       \
                                             double *sum_neg, uint64_t *count_neg)            \
    {                                                                                         \
        double sa[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sm[8] = {0, 0, 0, 0, 0, 0, 0, 0};            \
        int32_t cn[8] = {0, 0, 0, 0, 0, 0, 0, 0}, bad[8] = {0, 0, 0, 0, 0, 0, 0, 0};          \
        uint64_t i = 0, c = 0;                                                                \
        while (i + 8 <= len) {                                                                \
            uint64_t stop = len - i > (UINT64_C(1) << 28) ? i + (UINT64_C(1) << 28) : len;    \
            for (; i + 8 <= stop; i += 8)                                                     \
                for (unsigned j = 0; j < 8; j++) {                                            \
                    VT a = v[i + j];                                                          \
                    bad[j] |= onebit_bad_##SUFFIX(a);                                         \
                    sa[j] += (double)a;                                                       \
                    sm[j] += onebit_neg_part_##SUFFIX(a);                                     \
                    cn[j] += (int32_t)onebit_sign_##SUFFIX(a);                                \
                }                                                                             \
            for (unsigned j = 0; j < 8; j++) { c += (uint64_t)cn[j]; cn[j] = 0; }             \
        }                                                                                     \
        for (; i < len; i++) {                                                                \
            VT a = v[i];                                                                      \
            bad[0] |= onebit_bad_##SUFFIX(a);                                                 \
            sa[0] += (double)a;                                                               \
            sm[0] += onebit_neg_part_##SUFFIX(a);                                             \
            c += onebit_sign_##SUFFIX(a);                                                     \
        }                                                                                     \
        int32_t b = 0;                                                                        \
        for (unsigned j = 0; j < 8; j++) b |= bad[j];                                         \
        *sum_all = onebit_combine8(sa);                                                       \
        *sum_neg = onebit_combine8(sm);                                                       \
        *count_neg = c;                                                                       \
        return b != 0;                                                                        \
    }                                                                                         \
    /* sign masks of 32-element chunks and (optionally) the residual */                       \
    SCALEML_CLONES static void signs_##SUFFIX(const VT *v, uint64_t chunks, VT vp, VT vn,     \
                                              uint32_t *masks, VT *res)                       \
    {                                                                                         \
        for (uint64_t k = 0; k < chunks; k++) {                                               \
            const VT *x = v + 32 * k;                                                         \
            uint32_t m = 0;                                                                   \
            for (unsigned j = 0; j < 32; j++) m |= onebit_sign_##SUFFIX(x[j]) << j;           \
            masks[k] = m;                                                                     \
            if (res)                                                                          \
                for (unsigned j = 0; j < 32; j++) res[32 * k + j] = onebit_residual_##SUFFIX(x[j], vp, vn); \
        }                                                                                     \
    }

/* Buckets per unit of threaded work: the fewest whose sign bits fill whole
 * bytes, so that every thread's part of the bit stream starts on a byte. */
static uint64_t unit_buckets(uint64_t bucket)
{
    uint64_t g = 1;
    while ((g * bucket) % 8) g++;
    return g;
}

/* One past the last element of the buckets before bucket b_hi. */
static inline uint64_t onebit_range_end(uint64_t n, uint64_t bucket, uint64_t b_hi)
{
    return b_hi * bucket < n ? b_hi * bucket : n;
}

/* Largest bucket whose sum x + addend the fused encoder keeps on the stack. */
#define ONEBIT_SUM_BUCKET 4096

ONEBIT_DEFINE_LANES(f32, float, FLT_MAX)
ONEBIT_DEFINE_LANES(f64, double, DBL_MAX)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* AVX2 version of stats_f32 with the same 8 lanes and the same final order, so
 * its result is bit-identical to the portable loop (GCC does not vectorize the
 * mixed float/double/int lanes of that loop by itself). */
__attribute__((target("avx2"))) static int stats_f32_avx2(const float *v, uint64_t len, double *sum_all,
                                                           double *sum_neg, uint64_t *count_neg)
{
    __m256d sa_lo = _mm256_setzero_pd(), sa_hi = _mm256_setzero_pd();
    __m256d sm_lo = _mm256_setzero_pd(), sm_hi = _mm256_setzero_pd();
    const __m256 zero = _mm256_setzero_ps(), big = _mm256_set1_ps(FLT_MAX), nbig = _mm256_set1_ps(-FLT_MAX);
    uint64_t c = 0;
    int bad = 0;
    uint64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        __m256 a = _mm256_loadu_ps(v + i);
        __m256 ok = _mm256_and_ps(_mm256_cmp_ps(a, big, _CMP_LE_OQ), _mm256_cmp_ps(a, nbig, _CMP_GE_OQ));
        bad |= _mm256_movemask_ps(ok) != 0xff;
        __m256 neg = _mm256_cmp_ps(a, zero, _CMP_LT_OQ);
        c += (uint64_t)__builtin_popcount((unsigned)_mm256_movemask_ps(neg));
        __m256 mn = _mm256_and_ps(a, neg);
        sa_lo = _mm256_add_pd(sa_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
        sa_hi = _mm256_add_pd(sa_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
        sm_lo = _mm256_add_pd(sm_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(mn)));
        sm_hi = _mm256_add_pd(sm_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(mn, 1)));
    }
    double sa[8], sm[8];
    _mm256_storeu_pd(sa, sa_lo);
    _mm256_storeu_pd(sa + 4, sa_hi);
    _mm256_storeu_pd(sm, sm_lo);
    _mm256_storeu_pd(sm + 4, sm_hi);
    for (; i < len; i++) {
        float a = v[i];
        bad |= onebit_bad_f32(a);
        sa[0] += (double)a;
        sm[0] += onebit_neg_part_f32(a);
        c += onebit_sign_f32(a);
    }
    *sum_all = onebit_combine8(sa);
    *sum_neg = onebit_combine8(sm);
    *count_neg = c;
    return bad;
}

static int stats_f32_dispatch(const float *v, uint64_t len, double *sum_all, double *sum_neg, uint64_t *count_neg)
{
    return scaleml_cpu_avx2() ? stats_f32_avx2(v, len, sum_all, sum_neg, count_neg)
                     : stats_f32(v, len, sum_all, sum_neg, count_neg);
}
#else
#define stats_f32_dispatch stats_f32
#endif

static inline int stats_f64_dispatch(const double *v, uint64_t len, double *sum_all, double *sum_neg,
                                     uint64_t *count_neg)
{
    return stats_f64(v, len, sum_all, sum_neg, count_neg);
}

#define ONEBIT_DEFINE(SUFFIX, VT, VT_MAX)                                                    \
    static int encode_##SUFFIX(const VT *x, const VT *addend, uint64_t n, uint64_t bucket,   \
                               uint8_t *out, VT *residual, uint64_t b_lo, uint64_t b_hi)     \
    {                                                                                        \
        uint64_t nb = onebit_bucket_count(n, bucket);                                             \
        VT sum[ONEBIT_SUM_BUCKET];                                                           \
        bitwriter w; /* buckets [b_lo, b_hi): b_lo * bucket is a multiple of 8 */           \
        uint64_t first = b_lo * bucket / 8, last = (onebit_range_end(n, bucket, b_hi) + 7) / 8; \
        bw_init(&w, out + nb * 8 + first, last - first);                                     \
        for (uint64_t b = b_lo; b < b_hi; b++) {                                             \
            const VT *v = x + b * bucket;                                                    \
            uint64_t len = onebit_bucket_len(n, bucket, b);                \
            if (addend) { /* y = x + addend, in cache (residual may be addend) */            \
                const VT *a = addend + b * bucket;                                           \
                for (uint64_t i = 0; i < len; i++) sum[i] = onebit_sum_##SUFFIX(v[i], a[i]);  \
                v = sum;                                                                     \
            }                                                                                \
            onebit_partial total;                                                \
            total.bad = stats_##SUFFIX##_dispatch(v, len, &total.sum_all, &total.sum_neg, &total.count_neg); \
            float rp, rn;                                                        \
            int rc = onebit_bucket_header(&total, len, out + b * 8, &rp, &rn);   \
            if (rc) return rc;                                                   \
            const VT vp = (VT)rp, vn = (VT)rn;                                   \
            VT *res = residual ? residual + b * bucket : NULL;                   \
            uint64_t i = 0, chunks = len / 32;                                   \
            for (uint64_t c0 = 0; c0 < chunks; c0 += 64) {                       \
                uint32_t masks[64];                                              \
                uint64_t cc = chunks - c0 < 64 ? chunks - c0 : 64;               \
                signs_##SUFFIX(v + 32 * c0, cc, vp, vn, masks, res ? res + 32 * c0 : NULL); \
                for (uint64_t k = 0; k < cc; k++) bw_put(&w, masks[k], 32);      \
            }                                                                    \
            i = chunks * 32;                                                     \
            for (; i < len; i++) {                                               \
                if (res) res[i] = onebit_residual_##SUFFIX(v[i], vp, vn);        \
                bw_put(&w, onebit_sign_##SUFFIX(v[i]), 1);                       \
            }                                                                    \
        }                                                                        \
        bw_finish(&w, out + nb * 8 + first);                                                 \
        return 0;                                                                            \
    }                                                                                        \
    static void decode_##SUFFIX(const uint8_t *buf, uint64_t n, uint64_t bucket, VT *out,    \
                                int add, uint64_t b_lo, uint64_t b_hi)                       \
    {                                                                                        \
        uint64_t nb = onebit_bucket_count(n, bucket);                                             \
        bitreader r;                                                                         \
        uint64_t first = b_lo * bucket / 8, last = (onebit_range_end(n, bucket, b_hi) + 7) / 8; \
        br_init(&r, buf + nb * 8 + first, last - first);                                     \
        for (uint64_t b = b_lo; b < b_hi; b++) {                                             \
            uint64_t len = onebit_bucket_len(n, bucket, b);                \
            float rp, rn;                                                                    \
            onebit_load_means(buf + b * 8, &rp, &rn);                                        \
            VT vals[2] = {onebit_value_##SUFFIX(rp, rn, 0), onebit_value_##SUFFIX(rp, rn, 1)}; \
            VT *o = out + b * bucket;                                                        \
            uint64_t i = 0;                                                                  \
            for (; i + 32 <= len; i += 32) {                                                 \
                uint64_t bits = br_get(&r, 32);                                              \
                if (add)                                                                     \
                    for (unsigned j = 0; j < 32; j++) o[i + j] += vals[(bits >> j) & 1];     \
                else                                                                         \
                    for (unsigned j = 0; j < 32; j++) o[i + j] = vals[(bits >> j) & 1];      \
            }                                                                                \
            for (; i < len; i++) {                                                           \
                VT v = vals[br_get(&r, 1)];                                                  \
                o[i] = add ? o[i] + v : v;                                                   \
            }                                                                                \
        }                                                                                    \
    }

ONEBIT_DEFINE(f32, float, FLT_MAX)
ONEBIT_DEFINE(f64, double, DBL_MAX)

#if defined(__x86_64__) && defined(__GNUC__)
/* AVX2 decode of float32: each 32 sign bits become 32 floats by a compare of
 * the broadcast bits against per-lane masks and a blend (no branches, no
 * table); the same values as the portable loop. */
__attribute__((target("avx2"))) static void decode_f32_avx2(const uint8_t *buf, uint64_t n, uint64_t bucket,
                                                             float *out, int add, uint64_t b_lo, uint64_t b_hi)
{
    uint64_t nb = onebit_bucket_count(n, bucket);
    bitreader r;
    uint64_t first = b_lo * bucket / 8, last = (onebit_range_end(n, bucket, b_hi) + 7) / 8;
    br_init(&r, buf + nb * 8 + first, last - first);
    const __m256i lanebits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (uint64_t b = b_lo; b < b_hi; b++) {
        uint64_t len = onebit_bucket_len(n, bucket, b);
        float rp, rn;
        onebit_load_means(buf + b * 8, &rp, &rn);
        const float vals[2] = {onebit_value_f32(rp, rn, 0), onebit_value_f32(rp, rn, 1)};
        const __m256 vp = _mm256_set1_ps(vals[0]), vn = _mm256_set1_ps(vals[1]);
        float *o = out + b * bucket;
        uint64_t i = 0;
        for (; i + 32 <= len; i += 32) {
            uint32_t bits = (uint32_t)br_get(&r, 32);
            for (unsigned j = 0; j < 4; j++) {
                __m256i m = _mm256_set1_epi32((int)((bits >> (8 * j)) & 0xffu));
                m = _mm256_cmpeq_epi32(_mm256_and_si256(m, lanebits), lanebits);
                __m256 v = _mm256_blendv_ps(vp, vn, _mm256_castsi256_ps(m));
                if (add) v = _mm256_add_ps(_mm256_loadu_ps(o + i + 8 * j), v);
                _mm256_storeu_ps(o + i + 8 * j, v);
            }
        }
        for (; i < len; i++) o[i] = add ? o[i] + vals[br_get(&r, 1)] : vals[br_get(&r, 1)];
    }
}
#endif

static int encode_checked(const void *x, const void *addend, int value_bytes, uint64_t n, uint64_t bucket,
                          uint8_t *out, size_t cap, void *residual);

int scaleml_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket,
                          uint8_t *out, size_t cap, void *residual)
{
    return encode_checked(x, NULL, value_bytes, n, bucket, out, cap, residual);
}

int scaleml_onebit_encode_sum(const void *x, const void *addend, int value_bytes, uint64_t n, uint64_t bucket,
                              uint8_t *out, size_t cap, void *residual)
{
    if (bucket > ONEBIT_SUM_BUCKET)
        return scaleml_fail(SCALEML_ERR_ARG, "1-bit: the fused sum takes buckets of at most %d values",
                            ONEBIT_SUM_BUCKET);
    return encode_checked(x, addend, value_bytes, n, bucket, out, cap, residual);
}

static int encode_checked(const void *x, const void *addend, int value_bytes, uint64_t n, uint64_t bucket,
                          uint8_t *out, size_t cap, void *residual)
{
    if (bucket < 1) return scaleml_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (cap < scaleml_onebit_bytes(n, bucket))
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "1-bit: output capacity %zu bytes is too small", cap);
    if (n == 0) return SCALEML_OK;
    uint64_t nb = onebit_bucket_count(n, bucket), unit = unit_buckets(bucket), units = (nb + unit - 1) / unit;
    int threads = threads_for(n, units);
    int status[threads];
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
    for (int t = 0; t < threads; t++) {
        uint64_t lo, hi;
        threads_split_units(nb, unit, threads, t, &lo, &hi);
        status[t] = value_bytes == 4 ? encode_f32(x, addend, n, bucket, out, residual, lo, hi)
                                     : encode_f64(x, addend, n, bucket, out, residual, lo, hi);
    }
    /* the first failing part holds the first failing bucket (the single thread's error; the output and
     * the residual are then unspecified, as they were) */
    int rc = 0;
    for (int t = 0; t < threads && !rc; t++) rc = status[t];
    if (rc == -1) return scaleml_fail(SCALEML_ERR_ARG, "1-bit: non-finite value (NaN or Inf) in the input");
    if (rc == -2) return scaleml_fail(SCALEML_ERR_ARG, "1-bit: bucket mean exceeds the float32 range");
    return SCALEML_OK;
}

static int decode_checked(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out,
                          int value_bytes, int add);

int scaleml_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket,
                          void *out, int value_bytes)
{
    return decode_checked(buf, bytes, n, bucket, out, value_bytes, 0);
}

int scaleml_onebit_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *acc,
                              int value_bytes)
{
    return decode_checked(buf, bytes, n, bucket, acc, value_bytes, 1);
}

static int decode_checked(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out,
                          int value_bytes, int add)
{
    if (bucket < 1) return scaleml_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (bytes != scaleml_onebit_bytes(n, bucket))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "1-bit payload has %zu bytes, expected %zu", bytes,
                       scaleml_onebit_bytes(n, bucket));
    uint64_t nb = onebit_bucket_count(n, bucket);
    for (uint64_t b = 0; b < nb; b++) {
        float rp, rn;
        onebit_load_means(buf + b * 8, &rp, &rn);
        if (!onebit_means_valid(rp, rn))
            return scaleml_fail(SCALEML_ERR_MALFORMED, "1-bit payload: invalid reconstruction values in bucket %llu",
                           (unsigned long long)b);
    }
    uint64_t unit = unit_buckets(bucket), units = (nb + unit - 1) / unit;
    int threads = threads_for(n, units);
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
    for (int t = 0; t < threads; t++) {
        uint64_t lo, hi;
        threads_split_units(nb, unit, threads, t, &lo, &hi);
#if defined(__x86_64__) && defined(__GNUC__)
        if (value_bytes == 4 && scaleml_cpu_avx2()) {
            decode_f32_avx2(buf, n, bucket, out, add, lo, hi);
            continue;
        }
#endif
        if (value_bytes == 4) decode_f32(buf, n, bucket, out, add, lo, hi);
        else decode_f64(buf, n, bucket, out, add, lo, hi);
    }
    return SCALEML_OK;
}

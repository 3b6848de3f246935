/*
 * 1-bit SGD: the per-element and per-bucket arithmetic shared by the CPU
 * kernel (csrc/compress/onebit.c), the CUDA kernels (csrc/cuda/onebit.cu)
 * and their host emulation (csrc/arith/onebit_gpuref.c).
 *
 * Wire format (see onebit.c): per bucket two float32 (mean of the
 * non-negative values, mean of the negative values), then one sign bit per
 * element (1 = negative), bit g of the stream for element g of the vector,
 * LSB-first, zero padded to a byte.
 *
 * The order of the bucket sums, defined here once: a bucket of len values
 * has 8 lanes. Lane j sums, in increasing index order, the values i = j,
 * j + 8, j + 16, ... below full = len - len % 8; lane 0 then goes on with
 * the tail i = full .. len - 1 in order. Each lane's sums are double and
 * start at +0.0. The 8 lane sums are combined as
 * ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). The CPU kernel runs
 * the 8 lanes interleaved (one vector of 8); a GPU thread runs one lane.
 * Counts and the non-finite flag are integers: their order does not matter.
 */
#ifndef SCALEML_ARITH_ONEBIT_H
#define SCALEML_ARITH_ONEBIT_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "arith/hd.h"

#define ONEBIT_LANES 8

/* The sums of one lane of a bucket (or of a whole bucket once combined). */
typedef struct {
    double sum_all;     /* sum of the values */
    double sum_neg;     /* sum of min(value, 0) */
    uint64_t count_neg; /* values < 0 */
    int32_t bad;        /* 1 when a value is NaN or +-Inf */
} onebit_partial;

SCALEML_HD uint64_t onebit_bucket_count(uint64_t n, uint64_t bucket)
{
    return (n + bucket - 1) / bucket;
}

/* Values in bucket b (the last one may be short). */
SCALEML_HD uint64_t onebit_bucket_len(uint64_t n, uint64_t bucket, uint64_t b)
{
    return n - b * bucket < bucket ? n - b * bucket : bucket;
}

/* Payload bytes: 8 per bucket, then the sign bits (0 for bucket 0). */
SCALEML_HD uint64_t onebit_payload_bytes(uint64_t n, uint64_t bucket)
{
    if (bucket == 0) return 0;
    return onebit_bucket_count(n, bucket) * 8 + (n + 7) / 8;
}

/* The values behind the sums below the lane split: lane j owns i % 8 == j for i < full. */
SCALEML_HD uint64_t onebit_lanes_full(uint64_t len)
{
    return len - len % ONEBIT_LANES;
}

/* Combine the 8 lane sums in the fixed order. */
SCALEML_HD double onebit_combine8(const double *lane)
{
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* The bucket's means from its combined sums: 0, or -2 when one is beyond the
 * float32 range (then the encoder fails). A mean of an empty side is 0. */
SCALEML_HD int onebit_means(double sum_all, double sum_neg, uint64_t len, uint64_t count_neg, float *mean_pos,
                            float *mean_neg)
{
    double sum_pos = sum_all - sum_neg;
    float rp = len > count_neg ? (float)(sum_pos / (double)(len - count_neg)) : 0.0f;
    float rn = count_neg ? (float)(sum_neg / (double)count_neg) : 0.0f;
    if (!isfinite(rp) || !isfinite(rn)) return -2;
    if (rp < 0) rp = 0; /* rounding of sum_all - sum_neg on tiny values */
    *mean_pos = rp;
    *mean_neg = rn;
    return 0;
}

/* The two float32 of a bucket's header, little-endian, at any alignment. */
SCALEML_HD void onebit_store_means(uint8_t *header, float mean_pos, float mean_neg)
{
    memcpy(header, &mean_pos, 4);
    memcpy(header + 4, &mean_neg, 4);
}

SCALEML_HD void onebit_load_means(const uint8_t *header, float *mean_pos, float *mean_neg)
{
    memcpy(mean_pos, header, 4);
    memcpy(mean_neg, header + 4, 4);
}

/* What the decoder accepts: 0 <= mean_pos <= FLT_MAX, -FLT_MAX <= mean_neg <= 0 (no NaN). */
SCALEML_HD int onebit_means_valid(float mean_pos, float mean_neg)
{
    return (mean_pos >= 0 && mean_pos <= FLT_MAX) && (mean_neg <= 0 && mean_neg >= -FLT_MAX);
}

/* Per element, for VT = float (f32) and double (f64):
 *   onebit_bad_*       1 for NaN or +-Inf
 *   onebit_neg_part_*  min(a, 0) as double (the summand of sum_neg; +0.0 for a >= 0 and -0.0)
 *   onebit_sign_*      the sign bit (a < 0; -0.0 counts as non-negative)
 *   onebit_sum_*       y = x + addend of the fused encoder, rounded to VT
 *   onebit_residual_*  a - its reconstruction, in VT
 *   onebit_value_*     the reconstruction of a sign bit, in VT
 *   onebit_lane_*      one lane's sums over a bucket (addend may be NULL), the GPU thread's loop */
#define ONEBIT_ARITH_DEFINE(SUFFIX, VT, VT_MAX)                                                             \
    SCALEML_HD int32_t onebit_bad_##SUFFIX(VT a)                                                            \
    {                                                                                                       \
        return (int32_t)(!(a <= VT_MAX) | !(a >= -VT_MAX));                                                 \
    }                                                                                                       \
    SCALEML_HD double onebit_neg_part_##SUFFIX(VT a)                                                        \
    {                                                                                                       \
        return (double)(a < 0 ? a : (VT)0);                                                                 \
    }                                                                                                       \
    SCALEML_HD uint32_t onebit_sign_##SUFFIX(VT a)                                                          \
    {                                                                                                       \
        return (uint32_t)(a < 0);                                                                           \
    }                                                                                                       \
    SCALEML_HD VT onebit_sum_##SUFFIX(VT x, VT addend)                                                      \
    {                                                                                                       \
        return x + addend;                                                                                  \
    }                                                                                                       \
    SCALEML_HD VT onebit_residual_##SUFFIX(VT a, VT value_pos, VT value_neg)                                \
    {                                                                                                       \
        return a - (a < 0 ? value_neg : value_pos);                                                         \
    }                                                                                                       \
    SCALEML_HD VT onebit_value_##SUFFIX(float mean_pos, float mean_neg, uint32_t sign)                      \
    {                                                                                                       \
        return sign ? (VT)mean_neg : (VT)mean_pos;                                                          \
    }                                                                                                       \
    SCALEML_HD VT onebit_input_##SUFFIX(const VT *x, const VT *addend, uint64_t i)                          \
    {                                                                                                       \
        return addend ? onebit_sum_##SUFFIX(x[i], addend[i]) : x[i];                                        \
    }                                                                                                       \
    SCALEML_HD void onebit_lane_##SUFFIX(const VT *x, const VT *addend, uint64_t len, unsigned lane,        \
                                         onebit_partial *p)                                                 \
    {                                                                                                       \
        double sum_all = 0, sum_neg = 0;                                                                    \
        uint64_t count_neg = 0;                                                                             \
        int32_t bad = 0;                                                                                    \
        uint64_t full = onebit_lanes_full(len);                                                             \
        for (uint64_t i = lane; i < full; i += ONEBIT_LANES) {                                              \
            VT a = onebit_input_##SUFFIX(x, addend, i);                                                     \
            bad |= onebit_bad_##SUFFIX(a);                                                                  \
            sum_all += (double)a;                                                                           \
            sum_neg += onebit_neg_part_##SUFFIX(a);                                                         \
            count_neg += onebit_sign_##SUFFIX(a);                                                           \
        }                                                                                                   \
        if (lane == 0)                                                                                      \
            for (uint64_t i = full; i < len; i++) {                                                         \
                VT a = onebit_input_##SUFFIX(x, addend, i);                                                 \
                bad |= onebit_bad_##SUFFIX(a);                                                              \
                sum_all += (double)a;                                                                       \
                sum_neg += onebit_neg_part_##SUFFIX(a);                                                     \
                count_neg += onebit_sign_##SUFFIX(a);                                                       \
            }                                                                                               \
        p->sum_all = sum_all;                                                                               \
        p->sum_neg = sum_neg;                                                                               \
        p->count_neg = count_neg;                                                                           \
        p->bad = bad;                                                                                       \
    }

ONEBIT_ARITH_DEFINE(f32, float, FLT_MAX)
ONEBIT_ARITH_DEFINE(f64, double, DBL_MAX)

/* Combine a bucket's 8 lane partials into its sums (the fixed order above). */
SCALEML_HD void onebit_combine_lanes(const onebit_partial *lanes, onebit_partial *total)
{
    double sum_all[ONEBIT_LANES], sum_neg[ONEBIT_LANES];
    uint64_t count_neg = 0;
    int32_t bad = 0;
    for (unsigned j = 0; j < ONEBIT_LANES; j++) {
        sum_all[j] = lanes[j].sum_all;
        sum_neg[j] = lanes[j].sum_neg;
        count_neg += lanes[j].count_neg;
        bad |= lanes[j].bad;
    }
    total->sum_all = onebit_combine8(sum_all);
    total->sum_neg = onebit_combine8(sum_neg);
    total->count_neg = count_neg;
    total->bad = bad;
}

/* A bucket's header from its combined sums: 0, -1 for a non-finite value, -2 for a mean beyond float32
 * (the CPU encoder's codes; the header is written only on 0). */
SCALEML_HD int onebit_bucket_header(const onebit_partial *total, uint64_t len, uint8_t *header, float *mean_pos,
                                    float *mean_neg)
{
    if (total->bad) return -1;
    int rc = onebit_means(total->sum_all, total->sum_neg, len, total->count_neg, mean_pos, mean_neg);
    if (rc) return rc;
    onebit_store_means(header, *mean_pos, *mean_neg);
    return 0;
}

#endif

/*
 * Host emulation of the 1-bit CUDA kernels (csrc/cuda/onebit.cu), for the
 * tests only: the same shared functions of arith/onebit.h in the same phases
 * (8 lane partials per bucket, then each bucket's combine and header, the
 * first failing bucket as the minimum of 2 * bucket + kind; then per 32-element
 * word the sign bits and residuals, with the word's bytes written by its
 * "lane 0"; decode: the means of every bucket checked, then every element),
 * with a loop over the thread index in place of the grid. The tests compare
 * its bytes with the CPU kernel's (csrc/compress/onebit.c).
 */
#include <stddef.h>
#include <stdint.h>

#include "api_gpuref_onebit_cast.h"
#include "arith/onebit.h"
#include "core/errors.h"

#define NO_FAILURE UINT64_MAX

#define GPUREF_ONEBIT_DEFINE(SUFFIX, VT)                                                                        \
    /* phase 1 (onebit_means_kernel): one "block" per bucket, 8 lane threads, then lane 0 */                   \
    static uint64_t means_##SUFFIX(const VT *x, const VT *addend, uint64_t n, uint64_t bucket, uint8_t *out)    \
    {                                                                                                           \
        uint64_t nb = onebit_bucket_count(n, bucket), failure = NO_FAILURE;                                     \
        for (uint64_t b = 0; b < nb; b++) {                                                                     \
            uint64_t len = onebit_bucket_len(n, bucket, b);                                                     \
            onebit_partial partials[ONEBIT_LANES], total;                                                       \
            for (unsigned lane = 0; lane < ONEBIT_LANES; lane++)                                                \
                onebit_lane_##SUFFIX(x + b * bucket, addend ? addend + b * bucket : NULL, len, lane,            \
                                     &partials[lane]);                                                          \
            onebit_combine_lanes(partials, &total);                                                             \
            float mean_pos, mean_neg;                                                                           \
            int rc = onebit_bucket_header(&total, len, out + b * 8, &mean_pos, &mean_neg);                      \
            uint64_t code = 2 * b + (rc == -2);                                                                 \
            if (rc && code < failure) failure = code;                                                           \
        }                                                                                                       \
        return failure;                                                                                         \
    }                                                                                                           \
    /* phase 2 (onebit_signs_kernel): a "warp" per 32-element word */                                          \
    static void signs_##SUFFIX(const VT *x, const VT *addend, uint64_t n, uint64_t bucket, uint8_t *out,        \
                               VT *residual)                                                                    \
    {                                                                                                           \
        uint64_t nb = onebit_bucket_count(n, bucket);                                                           \
        uint8_t *signs = out + nb * 8;                                                                          \
        for (uint64_t word_start = 0; word_start < n; word_start += 32) {                                       \
            uint32_t word = 0;                                                                                  \
            for (unsigned warp_lane = 0; warp_lane < 32; warp_lane++) {                                         \
                uint64_t i = word_start + warp_lane;                                                            \
                uint32_t sign = 0;                                                                              \
                if (i < n) {                                                                                    \
                    uint64_t b = i / bucket;                                                                    \
                    float mean_pos, mean_neg;                                                                   \
                    onebit_load_means(out + b * 8, &mean_pos, &mean_neg);                                       \
                    VT a = onebit_input_##SUFFIX(x, addend, i);                                                 \
                    sign = onebit_sign_##SUFFIX(a);                                                             \
                    if (residual)                                                                               \
                        residual[i] = onebit_residual_##SUFFIX(a, onebit_value_##SUFFIX(mean_pos, mean_neg, 0), \
                                                               onebit_value_##SUFFIX(mean_pos, mean_neg, 1));   \
                }                                                                                               \
                word |= (uint32_t)(sign != 0) << warp_lane; /* __ballot_sync */                                 \
            }                                                                                                   \
            for (unsigned k = 0; k < 4 && word_start + 8 * k < n; k++)                                          \
                signs[word_start / 8 + k] = (uint8_t)(word >> (8 * k));                                         \
        }                                                                                                       \
    }                                                                                                           \
    /* decode, phase 2 (onebit_decode_kernel): one "thread" per element */                                     \
    static void decode_##SUFFIX(const uint8_t *buf, uint64_t n, uint64_t bucket, VT *out, int add)              \
    {                                                                                                           \
        const uint8_t *signs = buf + onebit_bucket_count(n, bucket) * 8;                                        \
        for (uint64_t i = 0; i < n; i++) {                                                                      \
            uint64_t b = i / bucket;                                                                            \
            float mean_pos, mean_neg;                                                                           \
            onebit_load_means(buf + b * 8, &mean_pos, &mean_neg);                                               \
            uint32_t sign = (signs[i / 8] >> (i % 8)) & 1u;                                                     \
            VT v = onebit_value_##SUFFIX(mean_pos, mean_neg, sign);                                             \
            out[i] = add ? out[i] + v : v;                                                                      \
        }                                                                                                       \
    }

GPUREF_ONEBIT_DEFINE(f32, float)
GPUREF_ONEBIT_DEFINE(f64, double)

static int encode_checked(const void *x, const void *addend, int value_bytes, uint64_t n, uint64_t bucket,
                          uint8_t *out, size_t cap, void *residual)
{
    if (bucket < 1) return scaleml_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (cap < onebit_payload_bytes(n, bucket))
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "1-bit: output capacity %zu bytes is too small", cap);
    if (n == 0) return SCALEML_OK;
    uint64_t failure = value_bytes == 4 ? means_f32(x, addend, n, bucket, out) : means_f64(x, addend, n, bucket, out);
    if (failure == NO_FAILURE) {
        if (value_bytes == 4) signs_f32(x, addend, n, bucket, out, residual);
        else signs_f64(x, addend, n, bucket, out, residual);
        return SCALEML_OK;
    }
    if (failure % 2 == 0) return scaleml_fail(SCALEML_ERR_ARG, "1-bit: non-finite value (NaN or Inf) in the input");
    return scaleml_fail(SCALEML_ERR_ARG, "1-bit: bucket mean exceeds the float32 range");
}

int scaleml_gpuref_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket, uint8_t *out,
                                 size_t cap, void *residual)
{
    return encode_checked(x, NULL, value_bytes, n, bucket, out, cap, residual);
}

int scaleml_gpuref_onebit_encode_sum(const void *x, const void *addend, int value_bytes, uint64_t n,
                                     uint64_t bucket, uint8_t *out, size_t cap, void *residual)
{
    return encode_checked(x, addend, value_bytes, n, bucket, out, cap, residual);
}

static int decode_checked(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out,
                          int value_bytes, int add)
{
    if (bucket < 1) return scaleml_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (bytes != onebit_payload_bytes(n, bucket))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "1-bit payload has %zu bytes, expected %zu", bytes,
                            (size_t)onebit_payload_bytes(n, bucket));
    if (n == 0) return SCALEML_OK;
    /* phase 1 (onebit_check_kernel): the first bucket with invalid means */
    uint64_t nb = onebit_bucket_count(n, bucket), failure = NO_FAILURE;
    for (uint64_t b = 0; b < nb; b++) {
        float mean_pos, mean_neg;
        onebit_load_means(buf + b * 8, &mean_pos, &mean_neg);
        if (!onebit_means_valid(mean_pos, mean_neg) && b < failure) failure = b;
    }
    if (failure != NO_FAILURE)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "1-bit payload: invalid reconstruction values in bucket %llu",
                            (unsigned long long)failure);
    if (value_bytes == 4) decode_f32(buf, n, bucket, out, add);
    else decode_f64(buf, n, bucket, out, add);
    return SCALEML_OK;
}

int scaleml_gpuref_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out,
                                 int value_bytes)
{
    return decode_checked(buf, bytes, n, bucket, out, value_bytes, 0);
}

int scaleml_gpuref_onebit_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *acc,
                                     int value_bytes)
{
    return decode_checked(buf, bytes, n, bucket, acc, value_bytes, 1);
}

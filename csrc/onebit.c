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
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api_compress.h"
#include "bitstream.h"
#include "sparse_vector.h"

size_t scaleml_onebit_bytes(uint64_t n, uint64_t bucket)
{
    if (bucket == 0) return 0;
    uint64_t nb = (n + bucket - 1) / bucket;
    return (size_t)(nb * 8 + (n + 7) / 8);
}

#define ONEBIT_DEFINE(SUFFIX, VT, VT_MAX)                                                    \
    static int encode_##SUFFIX(const VT *x, uint64_t n, uint64_t bucket, uint8_t *out,       \
                               VT *residual)                                                 \
    {                                                                                        \
        uint64_t nb = (n + bucket - 1) / bucket;                                             \
        bitwriter w;                                                                         \
        bw_init(&w, out + nb * 8, (n + 7) / 8);                                              \
        for (uint64_t b = 0; b < nb; b++) {                                                  \
            const VT *v = x + b * bucket;                                                    \
            uint64_t len = n - b * bucket < bucket ? n - b * bucket : bucket;                \
            /* branch free: sum of all values, sum of min(v, 0), count of v < 0; \
             * four accumulators each to break the add latency chains */       \
            double sa[4] = {0, 0, 0, 0}, sm[4] = {0, 0, 0, 0};                   \
            uint64_t cn = 0;                                                     \
            int bad = 0;                                                         \
            uint64_t i = 0;                                                      \
            for (; i + 4 <= len; i += 4) {                                       \
                for (unsigned j = 0; j < 4; j++) {                               \
                    VT a = v[i + j];                                             \
                    bad |= !(a <= VT_MAX) | !(a >= -VT_MAX);                     \
                    sa[j] += (double)a;                                          \
                    sm[j] += (double)(a < 0 ? a : (VT)0);                        \
                    cn += a < 0;                                                 \
                }                                                                \
            }                                                                    \
            for (; i < len; i++) {                                               \
                VT a = v[i];                                                     \
                bad |= !(a <= VT_MAX) | !(a >= -VT_MAX);                         \
                sa[0] += (double)a;                                              \
                sm[0] += (double)(a < 0 ? a : (VT)0);                            \
                cn += a < 0;                                                     \
            }                                                                    \
            if (bad) return -1;                                                  \
            double sn = (sm[0] + sm[1]) + (sm[2] + sm[3]);                       \
            double sp = ((sa[0] + sa[1]) + (sa[2] + sa[3])) - sn;                \
            float rp = len > cn ? (float)(sp / (double)(len - cn)) : 0.0f;       \
            float rn = cn ? (float)(sn / (double)cn) : 0.0f;                     \
            if (!isfinite(rp) || !isfinite(rn)) return -2;                       \
            if (rp < 0) rp = 0; /* rounding of sa - sn on tiny values */         \
            memcpy(out + b * 8, &rp, 4);                                         \
            memcpy(out + b * 8 + 4, &rn, 4);                                     \
            const VT vp = (VT)rp, vn = (VT)rn;                                   \
            VT *res = residual ? residual + b * bucket : NULL;                   \
            i = 0;                                                               \
            for (; i + 32 <= len; i += 32) {                                     \
                uint32_t m = 0;                                                  \
                for (unsigned j = 0; j < 32; j++) m |= (uint32_t)(v[i + j] < 0) << j; \
                if (res)                                                         \
                    for (unsigned j = 0; j < 32; j++)                            \
                        res[i + j] = v[i + j] - (v[i + j] < 0 ? vn : vp);        \
                bw_put(&w, m, 32);                                               \
            }                                                                    \
            for (; i < len; i++) {                                               \
                if (res) res[i] = v[i] - (v[i] < 0 ? vn : vp);                   \
                bw_put(&w, (uint64_t)(v[i] < 0), 1);                             \
            }                                                                    \
        }                                                                        \
        bw_finish(&w, out + nb * 8);                                                         \
        return 0;                                                                            \
    }                                                                                        \
    static void decode_##SUFFIX(const uint8_t *buf, uint64_t n, uint64_t bucket, VT *out)    \
    {                                                                                        \
        uint64_t nb = (n + bucket - 1) / bucket;                                             \
        bitreader r;                                                                         \
        br_init(&r, buf + nb * 8, (n + 7) / 8);                                              \
        for (uint64_t b = 0; b < nb; b++) {                                                  \
            uint64_t len = n - b * bucket < bucket ? n - b * bucket : bucket;                \
            float rp, rn;                                                                    \
            memcpy(&rp, buf + b * 8, 4);                                                     \
            memcpy(&rn, buf + b * 8 + 4, 4);                                                 \
            VT vals[2] = {(VT)rp, (VT)rn};                                                   \
            VT *o = out + b * bucket;                                                        \
            uint64_t i = 0;                                                                  \
            for (; i + 32 <= len; i += 32) {                                                 \
                uint64_t bits = br_get(&r, 32);                                              \
                for (unsigned j = 0; j < 32; j++) o[i + j] = vals[(bits >> j) & 1];          \
            }                                                                                \
            for (; i < len; i++) o[i] = vals[br_get(&r, 1)];                                 \
        }                                                                                    \
    }

ONEBIT_DEFINE(f32, float, FLT_MAX)
ONEBIT_DEFINE(f64, double, DBL_MAX)

int scaleml_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket,
                          uint8_t *out, size_t cap, void *residual)
{
    if (bucket < 1) return sv_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return sv_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (cap < scaleml_onebit_bytes(n, bucket))
        return sv_fail(SCALEML_ERR_TOO_LARGE, "1-bit: output capacity %zu bytes is too small", cap);
    if (n == 0) return SCALEML_OK;
    int rc = value_bytes == 4 ? encode_f32(x, n, bucket, out, residual)
                              : encode_f64(x, n, bucket, out, residual);
    if (rc == -1) return sv_fail(SCALEML_ERR_ARG, "1-bit: non-finite value (NaN or Inf) in the input");
    if (rc == -2) return sv_fail(SCALEML_ERR_ARG, "1-bit: bucket mean exceeds the float32 range");
    return SCALEML_OK;
}

int scaleml_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket,
                          void *out, int value_bytes)
{
    if (bucket < 1) return sv_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return sv_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (bytes != scaleml_onebit_bytes(n, bucket))
        return sv_fail(SCALEML_ERR_MALFORMED, "1-bit payload has %zu bytes, expected %zu", bytes,
                       scaleml_onebit_bytes(n, bucket));
    uint64_t nb = (n + bucket - 1) / bucket;
    for (uint64_t b = 0; b < nb; b++) {
        float rp, rn;
        memcpy(&rp, buf + b * 8, 4);
        memcpy(&rn, buf + b * 8 + 4, 4);
        if (!(rp >= 0 && rp <= FLT_MAX) || !(rn <= 0 && rn >= -FLT_MAX))
            return sv_fail(SCALEML_ERR_MALFORMED, "1-bit payload: invalid reconstruction values in bucket %llu",
                           (unsigned long long)b);
    }
    if (value_bytes == 4) decode_f32(buf, n, bucket, out);
    else decode_f64(buf, n, bucket, out);
    return SCALEML_OK;
}

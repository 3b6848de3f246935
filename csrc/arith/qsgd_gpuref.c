/*
 * Host emulation of the QSGD CUDA kernels (cuda/qsgd.cu), phase by phase, for
 * the CPU tests: each loop below is one kernel's grid, its body the body of
 * one thread, calling the same functions of arith/qsgd.h.
 *   encode: (1) zero the payload words; (2) one thread per (bucket, lane)
 *           computes its lane partial (sum of squares or max key), the lane-0
 *           thread of the bucket combines the 8 in the fixed order, rounds
 *           the norm, records the bucket's scale and ORs the norm's 32 bits
 *           in at their offset (or records the error slot, a minimum);
 *           (3) one thread per element ORs its (bits + 1)-bit code in at its
 *           offset. Payload words: the caller's buffer when it is 4-byte
 *           aligned, its last partial word in a tail word copied after;
 *           otherwise a temporary word buffer copied after.
 *   decode: (1) one thread per bucket validates its norm (a flag);
 *           (2) unless the flag is set, one thread per element reads its
 *           bucket's norm and its field (qsgd_fixed_element_*) and stores or
 *           adds its value: a malformed payload writes nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_compress.h"
#include "api_gpuref_qsgd.h"
#include "arith/qsgd.h"
#include "compress/qsgd_args.h"
#include "core/errors.h"

/* The CUDA entry points' argument checks: the CPU's, and the fixed format only. */
static int check_args(uint32_t bits, uint64_t bucket, int format, int value_bytes)
{
    int rc = qsgd_check_args(bits, bucket, format, value_bytes);
    if (!rc && format == SCALEML_QSGD_ELIAS)
        return scaleml_fail(SCALEML_ERR_ARG, "QSGD: the Elias format is variable-length and runs on the CPU only; "
                                             "the GPU takes SCALEML_QSGD_FIXED");
    return rc;
}

/* The payload's 32-bit words as the kernels see them (atomicOr there; plain OR through memcpy here). */
typedef struct {
    uint8_t *main;       /* words [0, main_words) */
    uint64_t main_words;
    uint32_t *tail;      /* the words after */
} word_sink;

static void sink_or(const word_sink *sink, uint64_t word, uint32_t bits)
{
    if (!bits) return;
    if (word < sink->main_words) {
        uint32_t w;
        memcpy(&w, sink->main + 4 * word, 4);
        w |= bits;
        memcpy(sink->main + 4 * word, &w, 4);
    } else {
        sink->tail[word - sink->main_words] |= bits;
    }
}

static void sink_put(const word_sink *sink, uint64_t bitpos, uint32_t value)
{
    uint64_t window = qsgd_field_window(value, bitpos);
    sink_or(sink, bitpos >> 5, (uint32_t)window);
    sink_or(sink, (bitpos >> 5) + 1, (uint32_t)(window >> 32));
}

/* Phase 2: the lane-0 thread of bucket b, with the 8 lane partials of its group. */
static void norm_thread(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket, int norm,
                        uint64_t b, const double part[8], const uint64_t keys[8], double *scales,
                        const word_sink *sink, uint64_t *err)
{
    uint64_t start = b * bucket, len = n - start < bucket ? n - start : bucket;
    uint64_t key = 0;
    for (unsigned j = 0; j < 8; j++) key = keys[j] > key ? keys[j] : key;
    uint32_t s = (UINT32_C(1) << bits) - 1;
    float nf = 0;
    int bad;
    if (value_bytes == 4)
        bad = norm == SCALEML_NORM_MAX ? qsgd_wire_norm_max_f32((uint32_t)key, &nf)
                                       : qsgd_wire_norm_l2_f32((const float *)x + start, len, qsgd_sumsq_combine(part), &nf);
    else
        bad = norm == SCALEML_NORM_MAX ? qsgd_wire_norm_max_f64(key, &nf)
                                       : qsgd_wire_norm_l2_f64((const double *)x + start, len, qsgd_sumsq_combine(part), &nf);
    if (bad) {
        uint64_t slot = qsgd_error_slot(b, bad);
        *err = slot < *err ? slot : *err;
        scales[b] = 0;
        return;
    }
    scales[b] = nf == 0 ? 0 : value_bytes == 4 ? (double)qsgd_scale_f32(nf, s) : qsgd_scale_f64(nf, s);
    sink_put(sink, qsgd_norm_bit(b, bucket, bits), arith_f32_bits(nf));
}

int scaleml_gpuref_qsgd_encode(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                               int norm, int format, uint64_t key, uint8_t *out, size_t cap, size_t *written)
{
    int rc = check_args(bits, bucket, format, value_bytes);
    if (rc) return rc;
    if (norm != SCALEML_NORM_L2 && norm != SCALEML_NORM_MAX)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown QSGD norm %d", norm);
    *written = 0;
    if (n == 0) return SCALEML_OK;
    uint64_t bytes = qsgd_fixed_bytes(n, bits, bucket);
    if (cap < bytes) {
        *written = (size_t)bytes;
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "QSGD: output capacity %zu bytes is too small", cap);
    }
    uint64_t nb = qsgd_buckets(n, bucket), all_words = (bytes + 3) / 4;
    int aligned = ((uintptr_t)out & 3) == 0;
    uint32_t tail_word = 0;
    double *scales = malloc(nb * sizeof *scales);
    uint32_t *temp = aligned ? NULL : calloc(all_words, 4);
    if (!scales || (!aligned && !temp)) {
        free(scales);
        free(temp);
        return scaleml_fail(SCALEML_ERR_NOMEM, "QSGD: out of memory for %llu buckets", (unsigned long long)nb);
    }
    word_sink sink = {aligned ? out : (uint8_t *)temp, aligned ? bytes / 4 : all_words, &tail_word};
    /* (1) zero the words */
    if (aligned) memset(out, 0, (size_t)(bytes / 4 * 4));
    /* (2) the norms: thread (b, lane) computes its partial; the group's lane 0 finishes the bucket */
    uint64_t err = UINT64_MAX;
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t start = b * bucket, len = n - start < bucket ? n - start : bucket;
        double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        uint64_t keys[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (unsigned lane = 0; lane < 8; lane++) {
            if (value_bytes == 4) {
                const float *v = (const float *)x + start;
                if (norm == SCALEML_NORM_MAX) keys[lane] = qsgd_maxkey_lane_f32(v, len, lane);
                else part[lane] = qsgd_sumsq_lane_f32(v, len, lane);
            } else {
                const double *v = (const double *)x + start;
                if (norm == SCALEML_NORM_MAX) keys[lane] = qsgd_maxkey_lane_f64(v, len, lane);
                else part[lane] = qsgd_sumsq_lane_f64(v, len, lane);
            }
        }
        norm_thread(x, value_bytes, n, bits, bucket, norm, b, part, keys, scales, &sink, &err);
    }
    /* (3) the codes, one thread per element */
    for (uint64_t i = 0; i < n; i++) {
        double scale = scales[i / bucket];
        if (scale == 0) continue;
        uint32_t code = value_bytes == 4
                            ? qsgd_fixed_code_f32(((const float *)x)[i], (float)scale, bits, key, i)
                            : qsgd_fixed_code_f64(((const double *)x)[i], scale, bits, key, i);
        sink_put(&sink, qsgd_field_bit(i, bucket, bits), code);
    }
    /* the words outside the caller's buffer, then the error read back */
    if (aligned) memcpy(out + bytes / 4 * 4, &tail_word, (size_t)(bytes % 4));
    else memcpy(out, temp, (size_t)bytes);
    free(scales);
    free(temp);
    if (err != UINT64_MAX)
        return (err & 1) ? scaleml_fail(SCALEML_ERR_ARG, "QSGD: bucket norm exceeds the float32 range")
                         : scaleml_fail(SCALEML_ERR_ARG, "QSGD: non-finite value (NaN or Inf) in the input");
    *written = (size_t)bytes;
    return SCALEML_OK;
}

static int decode_common(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket, int format,
                         void *out, int value_bytes, int accumulate)
{
    int rc = check_args(bits, bucket, format, value_bytes);
    if (rc) return rc;
    uint64_t expected = qsgd_fixed_bytes(n, bits, bucket);
    if (bytes != expected)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload has %zu bytes, expected %llu", bytes,
                            (unsigned long long)expected);
    /* (1) one thread per bucket validates its norm; (2) one per element decodes, only when all are valid */
    int bad = 0;
    for (uint64_t b = 0; b < qsgd_buckets(n, bucket); b++)
        if (!qsgd_norm_valid(qsgd_fixed_norm(buf, b, bucket, bits))) bad = 1;
    for (uint64_t i = 0; i < n && !bad; i++) {
        if (value_bytes == 4) {
            float v;
            if (qsgd_fixed_element_f32(buf, i, bucket, bits, &v)) {
                bad = 1;
                continue;
            }
            float *o = (float *)out + i;
            *o = accumulate ? qsgd_add_f32(*o, v) : v;
        } else {
            double v;
            if (qsgd_fixed_element_f64(buf, i, bucket, bits, &v)) {
                bad = 1;
                continue;
            }
            double *o = (double *)out + i;
            *o = accumulate ? qsgd_add_f64(*o, v) : v;
        }
    }
    if (bad) return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload holds an invalid bucket norm");
    return SCALEML_OK;
}

int scaleml_gpuref_qsgd_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                               int format, void *out, int value_bytes)
{
    return decode_common(buf, bytes, n, bits, bucket, format, out, value_bytes, 0);
}

int scaleml_gpuref_qsgd_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                                   void *acc, int value_bytes)
{
    return decode_common(buf, bytes, n, bits, bucket, SCALEML_QSGD_FIXED, acc, value_bytes, 1);
}

int scaleml_gpuref_qsgd_sumsq(const void *x, int value_bytes, uint64_t len, double *cpu, double *gpu)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    double lanes[8], each[8];
    if (value_bytes == 4) qsgd_sumsq_lanes_f32((const float *)x, len, lanes);
    else qsgd_sumsq_lanes_f64((const double *)x, len, lanes);
    for (unsigned lane = 0; lane < 8; lane++)
        each[lane] = value_bytes == 4 ? qsgd_sumsq_lane_f32((const float *)x, len, lane)
                                      : qsgd_sumsq_lane_f64((const double *)x, len, lane);
    *cpu = qsgd_sumsq_combine(lanes);
    *gpu = qsgd_sumsq_combine(each);
    return SCALEML_OK;
}

/* Lossy value formats of the collectives: see codec.h. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "api_compress.h"
#include "collectives/codec.h"
#include "core/errors.h"

int codec_lossy(const scaleml_codec *codec)
{
    return codec && codec->kind != SCALEML_CODEC_NONE;
}

static int check_bucket(const scaleml_codec *c)
{
    if (c->bucket < 1 || c->bucket > (UINT64_C(1) << 31))
        return scaleml_fail(SCALEML_ERR_ARG, "bucket size must be in 1..2^31, got %llu", (unsigned long long)c->bucket);
    return SCALEML_OK;
}

int scaleml_codec_check(const scaleml_codec *c)
{
    switch (c->kind) {
    case SCALEML_CODEC_NONE:
    case SCALEML_CODEC_FP16:
    case SCALEML_CODEC_BF16:
        return SCALEML_OK;
    case SCALEML_CODEC_QSGD:
        if (c->bits < 1 || c->bits > 8)
            return scaleml_fail(SCALEML_ERR_ARG, "QSGD bits must be in 1..8, got %u", c->bits);
        if (c->norm != SCALEML_NORM_L2 && c->norm != SCALEML_NORM_MAX)
            return scaleml_fail(SCALEML_ERR_ARG, "unknown QSGD norm %d", c->norm);
        return check_bucket(c);
    case SCALEML_CODEC_ONEBIT:
        return check_bucket(c);
    case SCALEML_CODEC_ADAPTIVE:
        if (!(c->pi >= 1.0) || !isfinite(c->pi))
            return scaleml_fail(SCALEML_ERR_ARG, "adaptive: pi must be finite and >= 1, got %g", c->pi);
        if (c->sample < 1) return scaleml_fail(SCALEML_ERR_ARG, "adaptive: sample size must be >= 1");
        if (c->cols && c->rows > UINT64_MAX / c->cols)
            return scaleml_fail(SCALEML_ERR_ARG, "adaptive: a %llu x %llu matrix is too large",
                                (unsigned long long)c->rows, (unsigned long long)c->cols);
        return SCALEML_OK;
    default:
        return scaleml_fail(SCALEML_ERR_ARG, "unknown value format %d", c->kind);
    }
}

const char *codec_name(int kind)
{
    switch (kind) {
    case SCALEML_CODEC_NONE: return "exact";
    case SCALEML_CODEC_QSGD: return "QSGD";
    case SCALEML_CODEC_FP16: return "fp16";
    case SCALEML_CODEC_BF16: return "bf16";
    case SCALEML_CODEC_ONEBIT: return "1-bit";
    case SCALEML_CODEC_ADAPTIVE: return "adaptive";
    default: return "unknown";
    }
}

size_t codec_bytes(const scaleml_codec *c, uint64_t len, int value_bytes)
{
    if (!codec_lossy(c)) return (size_t)len * (size_t)value_bytes;
    switch (c->kind) {
    case SCALEML_CODEC_QSGD:
        return scaleml_qsgd_max_bytes(len, c->bits, c->bucket, SCALEML_QSGD_FIXED);
    case SCALEML_CODEC_FP16:
    case SCALEML_CODEC_BF16:
        return (size_t)len * 2;
    case SCALEML_CODEC_ONEBIT:
        return scaleml_onebit_bytes(len, c->bucket);
    default:
        return 0;
    }
}

size_t scaleml_codec_bytes(const scaleml_codec *codec, uint64_t len, int value_bytes)
{
    return scaleml_codec_check(codec) ? 0 : codec_bytes(codec, len, value_bytes);
}

int codec_encode(const scaleml_codec *c, const void *x, uint64_t len, int value_bytes, int rank, uint64_t stream,
                 uint8_t *out)
{
    size_t bytes = codec_bytes(c, len, value_bytes), written = 0;
    if (len == 0) return SCALEML_OK;
    if (!codec_lossy(c)) {  /* exact: the values themselves (nothing to do when they are already in place) */
        if ((const void *)out != x) memcpy(out, x, bytes);
        return SCALEML_OK;
    }
    switch (c->kind) {
    case SCALEML_CODEC_QSGD: {
        uint64_t key = scaleml_rng_key(c->seed, (uint64_t)rank, c->step, stream);
        int rc = scaleml_qsgd_encode(x, value_bytes, len, c->bits, c->bucket, c->norm, SCALEML_QSGD_FIXED, key,
                                     out, bytes, &written);
        if (!rc && written != bytes)
            return scaleml_fail(SCALEML_ERR_ARG, "QSGD wrote %zu bytes, expected %zu", written, bytes);
        return rc;
    }
    case SCALEML_CODEC_FP16:
    case SCALEML_CODEC_BF16: {
        /* The cast kernel writes aligned uint16; out may sit at any byte offset. */
        uint16_t *tmp = ((uintptr_t)out % 2) ? malloc(bytes) : (uint16_t *)out;
        if (!tmp) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
        int rc = scaleml_cast_encode(x, value_bytes, len,
                                     c->kind == SCALEML_CODEC_FP16 ? SCALEML_CAST_FP16 : SCALEML_CAST_BF16, tmp);
        if (rc == SCALEML_ERR_ARG && c->overflow_to_inf) rc = SCALEML_OK;  /* the cast wrote +-inf there */
        if (tmp != (uint16_t *)out) {
            memcpy(out, tmp, bytes);
            free(tmp);
        }
        return rc;
    }
    case SCALEML_CODEC_ONEBIT:
        return scaleml_onebit_encode(x, value_bytes, len, c->bucket, out, bytes, NULL);
    default:
        return scaleml_fail(SCALEML_ERR_ARG, "unknown value format %d", c->kind);
    }
}

int codec_decode(const scaleml_codec *c, const uint8_t *buf, size_t bytes, uint64_t len, void *out,
                 int value_bytes)
{
    size_t expected = codec_bytes(c, len, value_bytes);
    if (bytes != expected)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "encoded range of %llu values has %zu bytes, expected %zu",
                            (unsigned long long)len, bytes, expected);
    if (len == 0) return SCALEML_OK;
    if (!codec_lossy(c)) {
        if ((const void *)buf != out) memcpy(out, buf, bytes);
        return SCALEML_OK;
    }
    switch (c->kind) {
    case SCALEML_CODEC_QSGD:
        return scaleml_qsgd_decode(buf, bytes, len, c->bits, c->bucket, SCALEML_QSGD_FIXED, out, value_bytes);
    case SCALEML_CODEC_FP16:
    case SCALEML_CODEC_BF16: {
        const uint16_t *in = ((uintptr_t)buf % 2) ? malloc(bytes) : (const uint16_t *)buf;
        if (!in) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
        if (in != (const uint16_t *)buf) memcpy((void *)in, buf, bytes);
        int rc = scaleml_cast_decode(in, len, c->kind == SCALEML_CODEC_FP16 ? SCALEML_CAST_FP16 : SCALEML_CAST_BF16,
                                     out, value_bytes);
        /* the values are all written: with overflow_to_inf, +-inf (and NaN from inf - inf) are sums, not damage */
        if (rc == SCALEML_ERR_MALFORMED && c->overflow_to_inf) rc = SCALEML_OK;
        if (in != (const uint16_t *)buf) free((void *)in);
        return rc;
    }
    case SCALEML_CODEC_ONEBIT:
        return scaleml_onebit_decode(buf, bytes, len, c->bucket, out, value_bytes);
    default:
        return scaleml_fail(SCALEML_ERR_ARG, "unknown value format %d", c->kind);
    }
}

void codec_add(void *acc, const void *b, uint64_t len, int value_bytes)
{
    if (value_bytes == 4) {
        float *restrict a = acc;
        const float *restrict v = b;
        for (uint64_t i = 0; i < len; i++) a[i] += v[i];
    } else {
        double *restrict a = acc;
        const double *restrict v = b;
        for (uint64_t i = 0; i < len; i++) a[i] += v[i];
    }
}

void codec_sum(void *out, const void *a, const void *b, uint64_t len, int value_bytes)
{
    if (value_bytes == 4) {
        float *restrict o = out;
        const float *restrict x = a, *restrict y = b;
        for (uint64_t i = 0; i < len; i++) o[i] = x[i] + y[i];
    } else {
        double *restrict o = out;
        const double *restrict x = a, *restrict y = b;
        for (uint64_t i = 0; i < len; i++) o[i] = x[i] + y[i];
    }
}

int codec_decode_add(const scaleml_codec *c, const uint8_t *buf, size_t bytes, uint64_t len, void *acc,
                     void *scratch, int value_bytes)
{
    if (!codec_lossy(c)) {  /* exact: add the received values as they are */
        if (bytes != (size_t)len * (size_t)value_bytes)
            return scaleml_fail(SCALEML_ERR_MALFORMED, "range of %llu values has %zu bytes",
                                (unsigned long long)len, bytes);
        codec_add(acc, buf, len, value_bytes);
        return SCALEML_OK;
    }
    if (c->kind == SCALEML_CODEC_QSGD && c->bucket % 8 == 0)  /* one pass */
        return scaleml_qsgd_decode_add(buf, bytes, len, c->bits, c->bucket, acc, value_bytes);
    if (c->kind == SCALEML_CODEC_ONEBIT) return scaleml_onebit_decode_add(buf, bytes, len, c->bucket, acc, value_bytes);
    int rc = codec_decode(c, buf, bytes, len, scratch, value_bytes);
    if (!rc) codec_add(acc, scratch, len, value_bytes);
    return rc;
}

int codec_encode_roundtrip(const scaleml_codec *c, void *x, uint64_t len, int value_bytes, int rank,
                           uint64_t stream, uint8_t *out, void *residual, void *scratch)
{
    size_t bytes = codec_bytes(c, len, value_bytes);
    if (codec_lossy(c) && c->kind == SCALEML_CODEC_ONEBIT && len) {
        /* the encoding pass writes x - decoded itself; then the bytes are decoded over x */
        int rc = scaleml_onebit_encode(x, value_bytes, len, c->bucket, out, bytes, residual);
        return rc ? rc : codec_decode(c, out, bytes, len, x, value_bytes);
    }
    int rc = codec_encode(c, x, len, value_bytes, rank, stream, out);
    if (rc || len == 0) return rc;
    if (!codec_lossy(c)) {  /* exact: nothing changes, no error */
        if (residual) memset(residual, 0, (size_t)len * (size_t)value_bytes);
        return SCALEML_OK;
    }
    void *decoded = scratch ? scratch : malloc((size_t)len * (size_t)value_bytes);
    if (!decoded) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %llu values", (unsigned long long)len);
    rc = codec_decode(c, out, bytes, len, decoded, value_bytes);
    if (!rc) {
        if (residual) {
            if (value_bytes == 4) {
                float *restrict r = residual;
                const float *restrict a = x, *restrict d = decoded;
                for (uint64_t i = 0; i < len; i++) r[i] = a[i] - d[i];
            } else {
                double *restrict r = residual;
                const double *restrict a = x, *restrict d = decoded;
                for (uint64_t i = 0; i < len; i++) r[i] = a[i] - d[i];
            }
        }
        memcpy(x, decoded, (size_t)len * (size_t)value_bytes);
    }
    if (!scratch) free(decoded);
    return rc;
}

int codec_encode_residual(const scaleml_codec *c, const void *x, uint64_t len, int value_bytes, int rank,
                          uint64_t stream, uint8_t *out, void *residual, void *scratch)
{
    if (!residual || len == 0) return codec_encode(c, x, len, value_bytes, rank, stream, out);
    if (codec_lossy(c) && c->kind == SCALEML_CODEC_ONEBIT)  /* one pass */
        return scaleml_onebit_encode(x, value_bytes, len, c->bucket, out, codec_bytes(c, len, value_bytes), residual);
    size_t bytes = (size_t)len * (size_t)value_bytes;
    void *copy = scratch ? scratch : malloc(bytes);
    if (!copy) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %llu values", (unsigned long long)len);
    memcpy(copy, x, bytes);
    int rc = codec_encode_roundtrip(c, copy, len, value_bytes, rank, stream, out, residual, NULL);
    if (!scratch) free(copy);
    return rc;
}

int codec_encode_plus_residual(const scaleml_codec *c, const void *x, uint64_t len, int value_bytes, int rank,
                               uint64_t stream, uint8_t *out, void *residual, void *scratch)
{
    if (len == 0) return SCALEML_OK;
    if (codec_lossy(c) && c->kind == SCALEML_CODEC_ONEBIT && c->bucket <= 4096)  /* one pass, y never stored */
        return scaleml_onebit_encode_sum(x, residual, value_bytes, len, c->bucket, out,
                                         codec_bytes(c, len, value_bytes), residual);
    codec_add(residual, x, len, value_bytes);  /* y = x + e, held in the residual until it is encoded */
    return codec_encode_residual(c, residual, len, value_bytes, rank, stream, out, residual, scratch);
}

/* Median of count seconds (reorders them). */
static double median_of(double *t, int count)
{
    for (int i = 1; i < count; i++)
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) {
            double swap = t[j];
            t[j] = t[j - 1];
            t[j - 1] = swap;
        }
    return count % 2 ? t[count / 2] : (t[count / 2 - 1] + t[count / 2]) / 2;
}

int scaleml_codec_seconds_per_value(const scaleml_codec *c, uint64_t n, int value_bytes, int repetitions,
                                    double *seconds)
{
    int rc = scaleml_codec_check(c);
    if (rc) return rc;
    if (!codec_lossy(c) || n == 0 || repetitions < 1 || (value_bytes != 4 && value_bytes != 8))
        return scaleml_fail(SCALEML_ERR_ARG, "timing a codec needs a lossy format, n > 0, repetitions > 0 and "
                                             "4- or 8-byte values");
    size_t values = (size_t)n * (size_t)value_bytes, bytes = codec_bytes(c, n, value_bytes);
    char *x = malloc(values), *acc = malloc(values), *scratch = malloc(values);
    uint8_t *buf = malloc(bytes);
    double *times = malloc(3 * (size_t)repetitions * sizeof *times);
    if (!x || !acc || !scratch || !buf || !times) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %llu values", (unsigned long long)n);
        goto done;
    }
    uint64_t state = 0x9E3779B97F4A7C15u;
    for (uint64_t i = 0; i < n; i++) {  /* uniform in [-1, 1): no format overflows, every bucket varies */
        state = state * 6364136223846793005u + 1442695040888963407u;
        double v = (double)(state >> 11) / 4503599627370496.0 - 1.0;
        if (value_bytes == 4) ((float *)x)[i] = (float)v;
        else ((double *)x)[i] = v;
    }
    /* run 0 is a warm-up (first touch of the buffers' pages); runs 1 .. repetitions are timed */
    for (int r = 0; r <= repetitions && !rc; r++) {
        double t0 = MPI_Wtime();
        rc = codec_encode(c, x, n, value_bytes, 0, CODEC_STREAM(CODEC_PHASE_REDUCE, 0), buf);
        double t1 = MPI_Wtime();
        if (!rc) rc = codec_decode(c, buf, bytes, n, acc, value_bytes);
        double t2 = MPI_Wtime();
        if (!rc) rc = codec_decode_add(c, buf, bytes, n, acc, scratch, value_bytes);
        double t3 = MPI_Wtime();
        if (r > 0) {
            times[r - 1] = t1 - t0;
            times[repetitions + r - 1] = t2 - t1;
            times[2 * repetitions + r - 1] = t3 - t2;
        }
    }
    for (int k = 0; k < 3 && !rc; k++) seconds[k] = median_of(times + k * repetitions, repetitions) / (double)n;
done:
    free(x), free(acc), free(scratch), free(buf), free(times);
    return rc;
}

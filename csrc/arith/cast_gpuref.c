/*
 * Host emulation of the cast CUDA kernels (csrc/cuda/cast.cu), for the tests
 * only: one "thread" per element running the shared functions of
 * arith/cast.h, every element written (or added), the bad flags OR-ed into
 * one flag that decides the return code. The tests compare its bytes with the
 * CPU kernel's (csrc/compress/cast.c, with its F16C/AVX2 paths).
 */
#include <stddef.h>
#include <stdint.h>

#include "api_gpuref_onebit_cast.h"
#include "arith/cast.h"
#include "core/errors.h"

static int check_args(int value_bytes, int format)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (format != SCALEML_CAST_FP16 && format != SCALEML_CAST_BF16)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown cast format %d", format);
    return SCALEML_OK;
}

int scaleml_gpuref_cast_encode(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out)
{
    int rc = check_args(value_bytes, format);
    if (rc) return rc;
    uint32_t bad = 0;
    for (uint64_t i = 0; i < n; i++)
        out[i] = value_bytes == 4 ? cast_encode_f32(((const float *)x)[i], format, &bad)
                                  : cast_encode_f64(((const double *)x)[i], format, &bad);
    if (bad)
        return scaleml_fail(SCALEML_ERR_ARG, "%s cast: NaN, Inf or a value beyond the format's range in the input",
                            format == SCALEML_CAST_FP16 ? "float16" : "bfloat16");
    return SCALEML_OK;
}

static int decode_checked(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes, int add)
{
    int rc = check_args(value_bytes, format);
    if (rc) return rc;
    uint32_t bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        float f = cast_decode(in[i], format, &bad);
        if (value_bytes == 4) {
            float *o = out;
            o[i] = add ? cast_add_f32(o[i], f) : f;
        } else {
            double *o = out;
            o[i] = add ? cast_add_f64(o[i], f) : (double)f;
        }
    }
    if (bad) return scaleml_fail(SCALEML_ERR_MALFORMED, "16-bit payload holds Inf/NaN patterns (corrupted)");
    return SCALEML_OK;
}

int scaleml_gpuref_cast_decode(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes)
{
    return decode_checked(in, n, format, out, value_bytes, 0);
}

int scaleml_gpuref_cast_decode_add(const uint16_t *in, uint64_t n, int format, void *acc, int value_bytes)
{
    return decode_checked(in, n, format, acc, value_bytes, 1);
}

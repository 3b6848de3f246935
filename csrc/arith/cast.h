/*
 * float16 / bfloat16 casts: the per-element arithmetic shared by the CPU
 * kernel (csrc/compress/cast.c), the CUDA kernels (csrc/cuda/cast.cu) and
 * their host emulation (csrc/arith/cast_gpuref.c).
 *
 * Encode rounds to nearest even; float64 input is first rounded to float32.
 * Every element gets its 16 bits; a "bad" flag marks the ones the encoder
 * rejects as a whole (NaN, Inf, a finite value that rounds beyond the format:
 * those are written as +-Inf, or a NaN/Inf pattern for NaN input). Decode is
 * exact; its bad flag marks the Inf/NaN patterns, which are decoded too.
 * The CPU kernel's F16C and AVX2 paths give the same bits as these functions
 * on every input it accepts (the tests compare them).
 */
#ifndef SCALEML_ARITH_CAST_H
#define SCALEML_ARITH_CAST_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api_compress.h" /* SCALEML_CAST_FP16, SCALEML_CAST_BF16 */
#include "arith/hd.h"

/* Exponent fields of the two formats (all ones: Inf or NaN). */
#define CAST_FP16_EXP UINT16_C(0x7c00)
#define CAST_BF16_EXP UINT16_C(0x7f80)

/* Smallest magnitude float32 bit pattern that is NaN/Inf or rounds to Inf in
 * bfloat16 (tested on the input, so no wrap-around of the rounding add can hide it). */
#define CAST_BF16_BAD_MIN UINT32_C(0x7f7f8000)

/* float32 bits -> float16 bits, round to nearest even (F. Giesen's method);
 * beyond the range (and NaN/Inf) -> +-Inf. */
SCALEML_HD uint16_t cast_f32_to_f16(uint32_t x)
{
    const uint32_t f16max = (uint32_t)(127 + 16) << 23;
    const uint32_t denorm_magic_u = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
    uint32_t sign = x & 0x80000000u;
    uint16_t o;
    x ^= sign;
    if (x >= f16max) {
        o = 0x7c00; /* overflow (the caller flags it) */
    } else if (x < (113u << 23)) {
        /* a float16 subnormal: the float add of the magic number rounds to nearest even */
        float f = arith_f32_from_bits(x) + arith_f32_from_bits(denorm_magic_u);
        o = (uint16_t)(arith_f32_bits(f) - denorm_magic_u);
    } else {
        uint32_t mant_odd = (x >> 13) & 1;
        x += ((uint32_t)(15 - 127) << 23) + 0xfff;
        x += mant_odd;
        o = (uint16_t)(x >> 13);
    }
    return (uint16_t)(o | (sign >> 16));
}

/* float16 bits -> float32 (exact; Inf/NaN patterns keep their payload). */
SCALEML_HD float cast_f16_to_f32(uint16_t h)
{
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t exp = shifted_exp & o;
    o += (uint32_t)(127 - 15) << 23;
    if (exp == shifted_exp) {
        o += (uint32_t)(128 - 16) << 23;
    } else if (exp == 0) {
        /* a float16 subnormal, normalised by an exact float subtraction */
        o += 1u << 23;
        o = arith_f32_bits(arith_f32_from_bits(o) - arith_f32_from_bits(113u << 23));
    }
    o |= (uint32_t)(h & 0x8000u) << 16;
    return arith_f32_from_bits(o);
}

/* float32 bits -> bfloat16 bits, round to nearest even. */
SCALEML_HD uint16_t cast_f32_to_bf16(uint32_t x)
{
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

SCALEML_HD float cast_bf16_to_f32(uint16_t h)
{
    return arith_f32_from_bits((uint32_t)h << 16);
}

/* The bad tests of the encoder: on the float16 result, on the float32 input for bfloat16. */
SCALEML_HD uint32_t cast_f16_bad(uint16_t h)
{
    return (uint32_t)((h & CAST_FP16_EXP) == CAST_FP16_EXP);
}

SCALEML_HD uint32_t cast_bf16_bad_input(uint32_t x)
{
    return (uint32_t)((x & 0x7fffffffu) >= CAST_BF16_BAD_MIN);
}

/* Inf/NaN pattern of either format (the float64 encoder's test on its result, and the decoder's). */
SCALEML_HD uint32_t cast_exp_all_ones(uint16_t h, int format)
{
    uint16_t exp = format == SCALEML_CAST_FP16 ? CAST_FP16_EXP : CAST_BF16_EXP;
    return (uint32_t)((h & exp) == exp);
}

/* One float32 element: its 16 bits; *bad |= 1 when the encoder rejects it. */
SCALEML_HD uint16_t cast_encode_f32(float x, int format, uint32_t *bad)
{
    uint32_t b = arith_f32_bits(x);
    if (format == SCALEML_CAST_FP16) {
        uint16_t h = cast_f32_to_f16(b);
        *bad |= cast_f16_bad(h);
        return h;
    }
    *bad |= cast_bf16_bad_input(b);
    return cast_f32_to_bf16(b);
}

/* One float64 element: rounded to float32 first; rejected beyond FLT_MAX or when the result is Inf/NaN. */
SCALEML_HD uint16_t cast_encode_f64(double x, int format, uint32_t *bad)
{
    *bad |= (uint32_t)!(fabs(x) <= FLT_MAX);
    uint32_t b = arith_f32_bits((float)x);
    uint16_t h = format == SCALEML_CAST_FP16 ? cast_f32_to_f16(b) : cast_f32_to_bf16(b);
    *bad |= cast_exp_all_ones(h, format);
    return h;
}

/* One 16-bit word decoded to float32 (then widened exactly for float64 output); *bad |= 1 for Inf/NaN. */
SCALEML_HD float cast_decode(uint16_t h, int format, uint32_t *bad)
{
    *bad |= cast_exp_all_ones(h, format);
    return format == SCALEML_CAST_FP16 ? cast_f16_to_f32(h) : cast_bf16_to_f32(h);
}

/* acc + decoded in the accumulator's type: the decode-and-add of one element. */
SCALEML_HD float cast_add_f32(float acc, float decoded)
{
    return acc + decoded;
}

SCALEML_HD double cast_add_f64(double acc, float decoded)
{
    return acc + (double)decoded;
}

#endif

/*
 * float16 / bfloat16 casting: the trivial baseline compressor.
 *
 * Encode rounds to nearest even (float64 input goes through float32 first,
 * so a value within half a float32 ulp of a 16-bit tie may round the other
 * way). A finite value beyond the 16-bit range (|x| >= 65520 for float16) or
 * NaN/Inf is rejected rather than turned into Inf. Decode is exact and rejects
 * the Inf/NaN patterns, which the encoder never produces.
 * float32 <-> float16 uses the F16C instructions when the CPU has them.
 * Wire format: n little-endian 16-bit words.  -> 16 bits per element.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api_compress.h"
#include "core/counter_rng.h" /* SCALEML_CLONES */
#include "core/cpu_features.h"
#include "core/errors.h"

/* float32 bits -> float16 bits, round to nearest even (F. Giesen's method). */
static inline uint16_t f32_to_f16(uint32_t x)
{
    const uint32_t f16max = (uint32_t)(127 + 16) << 23;
    const uint32_t denorm_magic_u = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
    uint32_t sign = x & 0x80000000u;
    uint16_t o;
    x ^= sign;
    if (x >= f16max) {
        o = 0x7c00; /* overflow (caller rejects) */
    } else if (x < (113u << 23)) {
        float f, dm;
        memcpy(&f, &x, 4);
        memcpy(&dm, &denorm_magic_u, 4);
        f += dm;
        uint32_t r;
        memcpy(&r, &f, 4);
        o = (uint16_t)(r - denorm_magic_u);
    } else {
        uint32_t mant_odd = (x >> 13) & 1;
        x += ((uint32_t)(15 - 127) << 23) + 0xfff;
        x += mant_odd;
        o = (uint16_t)(x >> 13);
    }
    return (uint16_t)(o | (sign >> 16));
}

static inline float f16_to_f32(uint16_t h)
{
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t exp = shifted_exp & o;
    o += (uint32_t)(127 - 15) << 23;
    if (exp == shifted_exp) {
        o += (uint32_t)(128 - 16) << 23;
    } else if (exp == 0) {
        const uint32_t magic_u = 113u << 23;
        float f, m;
        o += 1u << 23;
        memcpy(&f, &o, 4);
        memcpy(&m, &magic_u, 4);
        f -= m;
        memcpy(&o, &f, 4);
    }
    o |= (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &o, 4);
    return f;
}

static inline uint16_t f32_to_bf16(uint32_t x)
{
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* Smallest magnitude bit pattern that is NaN/Inf or rounds to Inf in bfloat16
 * (checked on the input, so no wrap-around of the rounding add can hide it). */
#define BF16_BAD_MIN UINT32_C(0x7f7f8000)

SCALEML_CLONES static uint32_t bf16_encode(const uint32_t *xb, uint64_t n, uint16_t *out)
{
    uint32_t bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        bad |= (uint32_t)((xb[i] & 0x7fffffffu) >= BF16_BAD_MIN);
        out[i] = f32_to_bf16(xb[i]);
    }
    return bad;
}

static inline uint32_t load_f32_bits(const void *x, int value_bytes, uint64_t i)
{
    float f = value_bytes == 4 ? ((const float *)x)[i] : (float)((const double *)x)[i];
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* F16C versions (hardware round to nearest even, same results as the portable
 * code); 1 when an Inf/NaN/overflow was seen. */
__attribute__((target("avx,f16c"))) static uint32_t f16c_encode(const float *x, uint64_t n, uint16_t *out)
{
    uint64_t i = 0;
    __m128i acc = _mm_setzero_si128();
    const __m128i expmask = _mm_set1_epi16(0x7c00);
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        acc = _mm_or_si128(acc, _mm_cmpeq_epi16(_mm_and_si128(h, expmask), expmask));
        _mm_storeu_si128((__m128i *)(void *)(out + i), h);
    }
    uint32_t bad = (uint32_t)_mm_movemask_epi8(acc) != 0;
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, 4);
        uint16_t h = f32_to_f16(b);
        bad |= (h & 0x7c00u) == 0x7c00u;
        out[i] = h;
    }
    return bad;
}

__attribute__((target("avx,f16c"))) static uint32_t f16c_decode(const uint16_t *in, uint64_t n, float *out)
{
    uint64_t i = 0;
    __m128i acc = _mm_setzero_si128();
    const __m128i expmask = _mm_set1_epi16(0x7c00);
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
        acc = _mm_or_si128(acc, _mm_cmpeq_epi16(_mm_and_si128(h, expmask), expmask));
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
    }
    uint32_t bad = (uint32_t)_mm_movemask_epi8(acc) != 0;
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, in + i, 2);
        bad |= (h & 0x7c00u) == 0x7c00u;
        out[i] = f16_to_f32(h);
    }
    return bad;
}

/* AVX2 bfloat16 encode: the same integer round to nearest even on 16 values
 * at a time, narrowed with packus (values are < 2^16, so no saturation). */
__attribute__((target("avx2"))) static uint32_t bf16_encode_avx2(const uint32_t *xb, uint64_t n, uint16_t *out)
{
    uint64_t i = 0;
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff), badmin = _mm256_set1_epi32((int)(BF16_BAD_MIN - 1));
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    __m256i acc = _mm256_setzero_si256();
    for (; i + 16 <= n; i += 16) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)(xb + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)(xb + i + 8));
        /* |x| and the threshold are < 2^31: the signed compare is exact */
        acc = _mm256_or_si256(acc, _mm256_cmpgt_epi32(_mm256_and_si256(a, absmask), badmin));
        acc = _mm256_or_si256(acc, _mm256_cmpgt_epi32(_mm256_and_si256(b, absmask), badmin));
        a = _mm256_add_epi32(_mm256_add_epi32(a, bias), _mm256_and_si256(_mm256_srli_epi32(a, 16), one));
        b = _mm256_add_epi32(_mm256_add_epi32(b, bias), _mm256_and_si256(_mm256_srli_epi32(b, 16), one));
        __m256i h = _mm256_packus_epi32(_mm256_srli_epi32(a, 16), _mm256_srli_epi32(b, 16));
        h = _mm256_permute4x64_epi64(h, 0xd8);
        _mm256_storeu_si256((__m256i *)(void *)(out + i), h);
    }
    uint32_t bad = !_mm256_testz_si256(acc, acc);
    for (; i < n; i++) {
        bad |= (uint32_t)((xb[i] & 0x7fffffffu) >= BF16_BAD_MIN);
        out[i] = f32_to_bf16(xb[i]);
    }
    return bad;
}

static int have_f16c(void)
{
    return scaleml_cpu_f16c();
}
static int have_avx2(void) { return scaleml_cpu_avx2(); }
#else
static int have_avx2(void) { return 0; }
static uint32_t bf16_encode_avx2(const uint32_t *xb, uint64_t n, uint16_t *out) { (void)xb; (void)n; (void)out; return 0; }
static int have_f16c(void) { return 0; }
static uint32_t f16c_encode(const float *x, uint64_t n, uint16_t *out) { (void)x; (void)n; (void)out; return 0; }
static uint32_t f16c_decode(const uint16_t *in, uint64_t n, float *out) { (void)in; (void)n; (void)out; return 0; }
#endif

int scaleml_cast_encode(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (format != SCALEML_CAST_FP16 && format != SCALEML_CAST_BF16)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown cast format %d", format);
    uint32_t bad = 0;
    if (value_bytes == 4) {
        const uint32_t *xb = x;
        if (format == SCALEML_CAST_FP16 && have_f16c()) {
            bad = f16c_encode(x, n, out);
        } else if (format == SCALEML_CAST_FP16) {
            for (uint64_t i = 0; i < n; i++) {
                uint16_t h = f32_to_f16(xb[i]);
                bad |= (h & 0x7c00u) == 0x7c00u;
                out[i] = h;
            }
        } else {
            bad = have_avx2() ? bf16_encode_avx2(xb, n, out) : bf16_encode(xb, n, out);
        }
    } else {
        for (uint64_t i = 0; i < n; i++) {
            double v = ((const double *)x)[i];
            bad |= !(fabs(v) <= FLT_MAX);
            uint32_t b = load_f32_bits(x, value_bytes, i);
            uint16_t h = format == SCALEML_CAST_FP16 ? f32_to_f16(b) : f32_to_bf16(b);
            bad |= format == SCALEML_CAST_FP16 ? (h & 0x7c00u) == 0x7c00u : (h & 0x7f80u) == 0x7f80u;
            out[i] = h;
        }
    }
    if (bad)
        return scaleml_fail(SCALEML_ERR_ARG, "%s cast: NaN, Inf or a value beyond the format's range in the input",
                       format == SCALEML_CAST_FP16 ? "float16" : "bfloat16");
    return SCALEML_OK;
}

int scaleml_cast_decode(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (format != SCALEML_CAST_FP16 && format != SCALEML_CAST_BF16)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown cast format %d", format);
    uint32_t bad = 0;
    uint16_t expmask = format == SCALEML_CAST_FP16 ? 0x7c00u : 0x7f80u;
    if (format == SCALEML_CAST_FP16 && value_bytes == 4 && have_f16c()) {
        if (f16c_decode(in, n, out))
            return scaleml_fail(SCALEML_ERR_MALFORMED, "16-bit payload holds Inf/NaN patterns (corrupted)");
        return SCALEML_OK;
    }
    if (format == SCALEML_CAST_BF16 && value_bytes == 4) {
        uint32_t *o = out;
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, in + i, 2);
            bad |= (h & 0x7f80u) == 0x7f80u;
            o[i] = (uint32_t)h << 16;
        }
        if (bad) return scaleml_fail(SCALEML_ERR_MALFORMED, "16-bit payload holds Inf/NaN patterns (corrupted)");
        return SCALEML_OK;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, in + i, 2);
        bad |= (h & expmask) == expmask;
        float f;
        if (format == SCALEML_CAST_FP16) {
            f = f16_to_f32(h);
        } else {
            uint32_t b = (uint32_t)h << 16;
            memcpy(&f, &b, 4);
        }
        if (value_bytes == 4) ((float *)out)[i] = f; else ((double *)out)[i] = f;
    }
    if (bad) return scaleml_fail(SCALEML_ERR_MALFORMED, "16-bit payload holds Inf/NaN patterns (corrupted)");
    return SCALEML_OK;
}

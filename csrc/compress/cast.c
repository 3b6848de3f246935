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
 * The per-element arithmetic is arith/cast.h's, shared with the CUDA kernels.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api_compress.h"
#include "arith/cast.h"
#include "core/counter_rng.h" /* SCALEML_CLONES */
#include "core/cpu_features.h"
#include "core/errors.h"
#include "core/threads.h"

/* Elements per unit of threaded work (every value is independent: any split gives the same words). */
#define CAST_UNIT 1024

SCALEML_CLONES static uint32_t bf16_encode(const uint32_t *xb, uint64_t n, uint16_t *out)
{
    uint32_t bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        bad |= cast_bf16_bad_input(xb[i]);
        out[i] = cast_f32_to_bf16(xb[i]);
    }
    return bad;
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
        uint16_t h = cast_f32_to_f16(b);
        bad |= cast_f16_bad(h);
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
        out[i] = cast_decode(h, SCALEML_CAST_FP16, &bad);
    }
    return bad;
}

/* AVX2 bfloat16 encode: the same integer round to nearest even on 16 values
 * at a time, narrowed with packus (values are < 2^16, so no saturation). */
__attribute__((target("avx2"))) static uint32_t bf16_encode_avx2(const uint32_t *xb, uint64_t n, uint16_t *out)
{
    uint64_t i = 0;
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff), badmin = _mm256_set1_epi32((int)(CAST_BF16_BAD_MIN - 1));
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
        bad |= cast_bf16_bad_input(xb[i]);
        out[i] = cast_f32_to_bf16(xb[i]);
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

/* Encode n values into out; 1 when a value is NaN, Inf or beyond the format's range (all are written). */
static uint32_t encode_values(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out)
{
    uint32_t bad = 0;
    if (value_bytes == 4) {
        const uint32_t *xb = x;
        if (format == SCALEML_CAST_FP16 && have_f16c()) {
            bad = f16c_encode(x, n, out);
        } else if (format == SCALEML_CAST_FP16) {
            for (uint64_t i = 0; i < n; i++) {
                uint16_t h = cast_f32_to_f16(xb[i]);
                bad |= cast_f16_bad(h);
                out[i] = h;
            }
        } else {
            bad = have_avx2() ? bf16_encode_avx2(xb, n, out) : bf16_encode(xb, n, out);
        }
    } else {
        const double *xd = x;
        for (uint64_t i = 0; i < n; i++) out[i] = cast_encode_f64(xd[i], format, &bad);
    }
    return bad;
}

int scaleml_cast_encode(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (format != SCALEML_CAST_FP16 && format != SCALEML_CAST_BF16)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown cast format %d", format);
    uint64_t units = (n + CAST_UNIT - 1) / CAST_UNIT;
    int threads = threads_for(n, units);
    uint32_t bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(|: bad) if (threads > 1)
    for (int t = 0; t < threads; t++) {
        uint64_t lo, hi;
        threads_split_units(n, CAST_UNIT, threads, t, &lo, &hi);
        bad |= encode_values((const char *)x + lo * (uint64_t)value_bytes, value_bytes, hi - lo, format, out + lo);
    }
    if (bad)
        return scaleml_fail(SCALEML_ERR_ARG, "%s cast: NaN, Inf or a value beyond the format's range in the input",
                       format == SCALEML_CAST_FP16 ? "float16" : "bfloat16");
    return SCALEML_OK;
}

/* Decode n words into out (value_bytes 4 or 8); 1 when an Inf/NaN pattern was seen (all values are written). */
static uint32_t decode_values(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes)
{
    uint32_t bad = 0;
    if (format == SCALEML_CAST_FP16 && value_bytes == 4 && have_f16c()) return f16c_decode(in, n, out);
    if (format == SCALEML_CAST_BF16 && value_bytes == 4) {
        uint32_t *o = out; /* as bits: the widening is a shift */
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, in + i, 2);
            bad |= cast_exp_all_ones(h, SCALEML_CAST_BF16);
            o[i] = arith_f32_bits(cast_bf16_to_f32(h));
        }
        return bad;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, in + i, 2);
        float f = cast_decode(h, format, &bad);
        if (value_bytes == 4) ((float *)out)[i] = f; else ((double *)out)[i] = f;
    }
    return bad;
}

static int decode_args(int format, int value_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (format != SCALEML_CAST_FP16 && format != SCALEML_CAST_BF16)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown cast format %d", format);
    return SCALEML_OK;
}

typedef uint32_t (*decode_worker)(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes);

/* Run worker over in[0 .. n) split in parts of whole CAST_UNITs over the threads; SCALEML_ERR_MALFORMED when
 * a part saw an Inf/NaN pattern (every value is written or added all the same). */
static int decode_parts(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes, decode_worker worker)
{
    int rc = decode_args(format, value_bytes);
    if (rc) return rc;
    uint64_t units = (n + CAST_UNIT - 1) / CAST_UNIT;
    int threads = threads_for(n, units);
    uint32_t bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(|: bad) if (threads > 1)
    for (int t = 0; t < threads; t++) {
        uint64_t lo, hi;
        threads_split_units(n, CAST_UNIT, threads, t, &lo, &hi);
        bad |= worker(in + lo, hi - lo, format, (char *)out + lo * (uint64_t)value_bytes, value_bytes);
    }
    if (bad) return scaleml_fail(SCALEML_ERR_MALFORMED, "16-bit payload holds Inf/NaN patterns (corrupted)");
    return SCALEML_OK;
}

int scaleml_cast_decode(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes)
{
    return decode_parts(in, n, format, out, value_bytes, decode_values);
}

/* Values decoded per chunk of decode-and-add (on the stack, in cache). */
#define CAST_ADD_CHUNK 1024

/* acc[0 .. n) += decoded in[0 .. n), a chunk at a time; 1 when an Inf/NaN pattern was seen. */
static uint32_t decode_add_values(const uint16_t *in, uint64_t n, int format, void *acc, int value_bytes)
{
    uint32_t bad = 0;
    float chunk32[CAST_ADD_CHUNK];
    double chunk64[CAST_ADD_CHUNK];
    for (uint64_t start = 0; start < n; start += CAST_ADD_CHUNK) {
        uint64_t len = n - start < CAST_ADD_CHUNK ? n - start : CAST_ADD_CHUNK;
        if (value_bytes == 4) {
            bad |= decode_values(in + start, len, format, chunk32, 4);
            float *a = (float *)acc + start;
            for (uint64_t i = 0; i < len; i++) a[i] = cast_add_f32(a[i], chunk32[i]);
        } else {
            bad |= decode_values(in + start, len, format, chunk64, 8);
            double *a = (double *)acc + start;
            for (uint64_t i = 0; i < len; i++) a[i] += chunk64[i]; /* chunk64[i] = (double)decoded: cast_add_f64 */
        }
    }
    return bad;
}

int scaleml_cast_decode_add(const uint16_t *in, uint64_t n, int format, void *acc, int value_bytes)
{
    return decode_parts(in, n, format, acc, value_bytes, decode_add_values);
}

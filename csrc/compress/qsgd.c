/*
 * QSGD stochastic quantization (Alistarh et al., NeurIPS 2017), bucketed.
 *
 * The input is cut into buckets of d consecutive values (the last one may be
 * shorter); each bucket is quantized with its own norm N (L2 or max, rounded
 * UP to float32 so that |v_i| / N <= 1 and the decoder uses exactly the N the
 * encoder used). With s = 2^bits - 1 levels and r_i = s |v_i| / N in [l, l+1]:
 *     level_i = l + 1 with probability r_i - l, else l
 *     Q(v_i)  = N * sgn(v_i) * level_i / s
 * so E[Q(v_i)] = v_i. Element i of the whole vector takes the 32-bit uniform
 * crng_u32(key, i) of the counter RNG, of which 24 bits are used for float32
 * input (the comparison is done in float) and 31 for float64 input, so the
 * rounding probability is exact up to 2^-24 (resp. 2^-31). The quantization
 * loop is branch free and compiled in AVX2/baseline clones.
 *
 * Wire formats (bit streams, LSB-first, see bitstream.h), per bucket in order:
 *   FIXED: 32 bits  float32 norm
 *          per element (bits + 1) bits: level in the low `bits` bits, then the
 *          sign bit (1 = negative; always 0 when the level is 0)
 *          -> bits + 1 + 32/d bits per element.
 *   ELIAS: 32 bits  float32 norm
 *          omega(nnz + 1)
 *          per non-zero: omega(gap) (gap = position - previous position, the
 *          first one counted from -1, so gap >= 1), 1 sign bit, omega(level)
 *          -> for the sparse regime (small s); expected size bounded by
 *          Theorem 3.2 of the paper.
 * The stream is zero padded to a byte; the decoder rejects any other length.
 *
 * The per-element and per-bucket arithmetic (codes, decoded values, the lane
 * order of the L2 sums, the norm's rounding, the fixed format's layout) is
 * arith/qsgd.h, shared with the CUDA kernels; this file holds the CPU's loops
 * and packing around it.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_compress.h"
#include "arith/qsgd.h"
#include "compress/qsgd_args.h"
#include "core/cpu_features.h"
#include "core/bitstream.h"
#include "core/counter_rng.h"
#include "core/errors.h"
#include "core/threads.h"

#define QSGD_MAX_BUCKET (UINT64_C(1) << 31)

int qsgd_check_args(uint32_t bits, uint64_t bucket, int format, int value_bytes)
{
    if (bits < 1 || bits > 8) return scaleml_fail(SCALEML_ERR_ARG, "QSGD bits must be in 1..8, got %u", bits);
    if (bucket < 1 || bucket > QSGD_MAX_BUCKET)
        return scaleml_fail(SCALEML_ERR_ARG, "QSGD bucket size must be in 1..2^31, got %llu",
                       (unsigned long long)bucket);
    if (format != SCALEML_QSGD_FIXED && format != SCALEML_QSGD_ELIAS)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown QSGD format %d", format);
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    return SCALEML_OK;
}

size_t scaleml_qsgd_max_bytes(uint64_t n, uint32_t bits, uint64_t bucket, int format)
{
    if (bits < 1 || bits > 8 || bucket < 1) return 0;
    if (format == SCALEML_QSGD_FIXED) return (size_t)qsgd_fixed_bytes(n, bits, bucket);
    uint64_t s = (UINT64_C(1) << bits) - 1;
    uint64_t full = n / bucket, rest = n % bucket;
    uint64_t per_full = 32 + elias_omega_bits(bucket + 1)
                        + bucket * (elias_omega_bits(bucket) + 1 + elias_omega_bits(s));
    uint64_t total = full * per_full;
    if (rest) total += 32 + elias_omega_bits(rest + 1) + rest * (elias_omega_bits(rest) + 1 + elias_omega_bits(s));
    return (size_t)((total + 7) / 8);
}

/* ---- fast paths of the FIXED format when d % 8 == 0: every bucket then starts on a
 * byte boundary and 8 codes of w bits fill exactly w bytes. ---- */

/* Pack 8 codes (level | sign << 8) as w = bits + 1 bit fields at p; room = bytes left. */
static inline void pack8(uint8_t *p, size_t room, const uint16_t *c, unsigned bits)
{
    unsigned w = bits + 1;
    if (w <= 8) {
        uint64_t acc = 0;
        for (unsigned j = 0; j < 8; j++) {
            uint64_t code = c[j];
            acc |= code << (j * w);
        }
        if (room >= 8) memcpy(p, &acc, 8);
        else for (unsigned b = 0; b < w; b++) p[b] = (uint8_t)(acc >> (8 * b));
    } else { /* w == 9: 72 bits */
        uint64_t lo = 0;
        for (unsigned j = 0; j < 7; j++) lo |= (uint64_t)c[j] << (9 * j);
        lo |= (uint64_t)(c[7] & 1) << 63;
        memcpy(p, &lo, 8);
        p[8] = (uint8_t)(c[7] >> 1);
    }
}

/* Unpack 8 codes (level | sign << bits) from p. */
static inline void unpack8(const uint8_t *p, size_t room, uint32_t *c, unsigned bits)
{
    unsigned w = bits + 1;
    if (w <= 8) {
        uint64_t acc = 0;
        if (room >= 8) memcpy(&acc, p, 8);
        else for (unsigned b = 0; b < w; b++) acc |= (uint64_t)p[b] << (8 * b);
        uint64_t mask = ((uint64_t)1 << w) - 1;
        for (unsigned j = 0; j < 8; j++) c[j] = (uint32_t)((acc >> (j * w)) & mask);
    } else {
        uint64_t lo;
        memcpy(&lo, p, 8);
        for (unsigned j = 0; j < 7; j++) c[j] = (uint32_t)((lo >> (9 * j)) & 0x1ff);
        c[7] = (uint32_t)(lo >> 63) | ((uint32_t)p[8] << 1);
    }
}

/* Sum of squares in the 8 lanes of arith/qsgd.h (vectorizable without
 * reassociation, so every clone gives the same bits), and max |v| as an integer
 * max of the magnitude keys (which vectorizes). */
#define QSGD_DEFINE_NORMS(SUFFIX, VT, KT)                                                    \
    SCALEML_CLONES static double sumsq_##SUFFIX(const VT *v, uint64_t len)                   \
    {                                                                                        \
        double acc[8];                                                                       \
        qsgd_sumsq_lanes_##SUFFIX(v, len, acc);                                              \
        return qsgd_sumsq_combine(acc);                                                      \
    }                                                                                        \
    SCALEML_CLONES static KT maxkey_##SUFFIX(const VT *v, uint64_t len)                      \
    {                                                                                        \
        KT m = 0;                                                                            \
        for (uint64_t i = 0; i < len; i++) {                                                 \
            KT k = qsgd_abs_key_##SUFFIX(v[i]);                                              \
            m = k > m ? k : m;                                                               \
        }                                                                                    \
        return m;                                                                            \
    }

QSGD_DEFINE_NORMS(f32, float, uint32_t)
QSGD_DEFINE_NORMS(f64, double, uint64_t)

/* Bit j set when code j of 64 has a non-zero level (low byte). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <emmintrin.h>
static inline uint64_t nonzero64(const uint16_t *codes) /* SSE2: baseline x86-64 */
{
    const __m128i lowbyte = _mm_set1_epi16(0xff), zero = _mm_setzero_si128();
    uint64_t m = 0;
    for (unsigned k = 0; k < 64; k += 16) {
        __m128i a = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)(codes + k)), lowbyte);
        __m128i b = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)(codes + k + 8)), lowbyte);
        __m128i z = _mm_packs_epi16(_mm_cmpeq_epi16(a, zero), _mm_cmpeq_epi16(b, zero));
        m |= (uint64_t)(~(unsigned)_mm_movemask_epi8(z) & 0xffffu) << k;
    }
    return m;
}
#else
static inline uint64_t nonzero64(const uint16_t *codes)
{
    uint64_t m = 0;
    for (unsigned j = 0; j < 64; j++) m |= (uint64_t)((codes[j] & 0xff) != 0) << j;
    return m;
}
#endif

/* Pack the codes of a bucket, 8 at a time, at a byte-aligned p (w = W bits each). */
#define QSGD_DEFINE_PACK(W)                                                                  \
    static inline uint8_t *pack_w##W(uint8_t *p, uint8_t *end, const uint16_t *c, uint64_t groups) \
    {                                                                                        \
        for (uint64_t g = 0; g < groups; g++, c += 8, p += W) {                              \
            uint64_t acc = 0;                                                                \
            for (unsigned j = 0; j < 8; j++) {                                               \
                uint64_t code = c[j];                                                        \
                acc |= code << (j * W);                                                      \
            }                                                                                \
            if (end - p >= 8) memcpy(p, &acc, 8);                                            \
            else for (unsigned b = 0; b < W; b++) p[b] = (uint8_t)(acc >> (8 * b));          \
        }                                                                                    \
        return p;                                                                            \
    }
QSGD_DEFINE_PACK(2)
QSGD_DEFINE_PACK(3)
QSGD_DEFINE_PACK(4)
QSGD_DEFINE_PACK(5)
QSGD_DEFINE_PACK(6)
QSGD_DEFINE_PACK(7)
QSGD_DEFINE_PACK(8)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* BMI2 packing: 8 codes -> 8 bytes -> PEXT keeps the low w bits of each byte,
 * already in LSB-first order (9-bit codes: two PEXTs over 4 x 16 bits). */
__attribute__((target("bmi2"))) static uint8_t *pack_pext(uint8_t *p, uint8_t *end, const uint16_t *c,
                                                          uint64_t groups, unsigned w)
{
    if (w <= 8) {
        const uint64_t mask = UINT64_C(0x0101010101010101) * ((UINT64_C(1) << w) - 1);
        for (uint64_t g = 0; g < groups; g++, c += 8, p += w) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)c);
            uint64_t b = (uint64_t)_mm_cvtsi128_si64(_mm_packus_epi16(v, v));
            uint64_t acc = _pext_u64(b, mask);
            if (end - p >= 8) memcpy(p, &acc, 8);
            else for (unsigned k = 0; k < w; k++) p[k] = (uint8_t)(acc >> (8 * k));
        }
    } else {
        const uint64_t mask = UINT64_C(0x01ff01ff01ff01ff);
        for (uint64_t g = 0; g < groups; g++, c += 8, p += 9) {
            uint64_t a, b;
            memcpy(&a, c, 8);
            memcpy(&b, c + 4, 8);
            uint64_t lo = _pext_u64(a, mask), hi = _pext_u64(b, mask); /* 36 bits each */
            uint64_t first = lo | (hi << 36);
            memcpy(p, &first, 8);
            p[8] = (uint8_t)(hi >> 28);
        }
    }
    return p;
}

static int have_bmi2(void)
{
    return scaleml_cpu_bmi2();
}
#else
static int have_bmi2(void) { return 0; }
static uint8_t *pack_pext(uint8_t *p, uint8_t *end, const uint16_t *c, uint64_t groups, unsigned w)
{
    (void)end; (void)c; (void)groups; (void)w;
    return p;
}
#endif

static uint8_t *pack_groups(uint8_t *p, uint8_t *end, const uint16_t *c, uint64_t groups, unsigned bits)
{
    if (have_bmi2()) return pack_pext(p, end, c, groups, bits + 1);
    switch (bits + 1) {
    case 2: return pack_w2(p, end, c, groups);
    case 3: return pack_w3(p, end, c, groups);
    case 4: return pack_w4(p, end, c, groups);
    case 5: return pack_w5(p, end, c, groups);
    case 6: return pack_w6(p, end, c, groups);
    case 7: return pack_w7(p, end, c, groups);
    case 8: return pack_w8(p, end, c, groups);
    default:
        for (uint64_t g = 0; g < groups; g++, c += 8, p += 9) pack8(p, (size_t)(end - p), c, bits);
        return p;
    }
}

/* Codes (level | sign << sign_shift, arith/qsgd.h) of len elements whose counters
 * are lo, lo+1, ... (no 32-bit wrap inside); returns the number of non-zero levels. */
SCALEML_CLONES
static uint32_t qsgd_codes_f32(const float *v, uint32_t len, float scale, int32_t s, uint32_t k0, uint32_t k1,
                               uint32_t lo, int32_t sign_shift, uint16_t *codes)
{
    uint32_t nnz = 0;
    for (uint32_t i = 0; i < len; i++) {
        int32_t level = qsgd_level_f32(v[i], scale, s, crng_u32_lanes(k0, k1, lo + i));
        codes[i] = (uint16_t)qsgd_code(level, v[i] < 0, sign_shift);
        nnz += level != 0;
    }
    return nnz;
}

SCALEML_CLONES
static uint32_t qsgd_codes_f64(const double *v, uint32_t len, double scale, int32_t s, uint32_t k0, uint32_t k1,
                               uint32_t lo, int32_t sign_shift, uint16_t *codes)
{
    uint32_t nnz = 0;
    for (uint32_t i = 0; i < len; i++) {
        int32_t level = qsgd_level_f64(v[i], scale, s, crng_u32_lanes(k0, k1, lo + i));
        codes[i] = (uint16_t)qsgd_code(level, v[i] < 0, sign_shift);
        nnz += level != 0;
    }
    return nnz;
}

/* One bucket: norm and the codes level | sign << sign_shift. Returns 0, -1 on a
 * non-finite value, -2 when the norm is beyond float32. */
#define QSGD_DEFINE_BUCKET(SUFFIX, VT, FT)                                                      \
    static int bucket_codes_##SUFFIX(const VT *v, uint64_t len, uint64_t base, int norm_kind, int32_t sign_shift, \
                                     uint32_t s, uint64_t key, uint16_t *codes, float *norm_out, \
                                     uint64_t *nnz_out)                                       \
    {                                                                                         \
        float nf = 0;                                                                         \
        int bad = norm_kind == SCALEML_NORM_MAX                                               \
                      ? qsgd_wire_norm_max_##SUFFIX(maxkey_##SUFFIX(v, len), &nf)             \
                      : qsgd_wire_norm_l2_##SUFFIX(v, len, sumsq_##SUFFIX(v, len), &nf);      \
        if (bad) return bad;                                                                  \
        *norm_out = nf;                                                                       \
        uint64_t nnz = 0;                                                                     \
        if (nf == 0) {                                                                        \
            memset(codes, 0, len * sizeof *codes);                                            \
            *nnz_out = 0;                                                                     \
            return 0;                                                                         \
        }                                                                                     \
        const FT scale = qsgd_scale_##SUFFIX(nf, s);                                          \
        uint64_t i = 0;                                                                       \
        while (i < len) {                                                                     \
            /* split where the low 32 bits of the counter wrap */                             \
            uint64_t c = base + i;                                                            \
            uint64_t run = (UINT64_C(1) << 32) - (c & UINT32_MAX);                            \
            if (run > len - i) run = len - i;                                                 \
            nnz += qsgd_codes_##SUFFIX(v + i, (uint32_t)run, scale, (int32_t)s, (uint32_t)key, \
                                       crng_k1(key, c), (uint32_t)c, sign_shift, codes + i);              \
            i += run;                                                                         \
        }                                                                                     \
        *nnz_out = nnz;                                                                       \
        return 0;                                                                             \
    }

QSGD_DEFINE_BUCKET(f32, float, float)
QSGD_DEFINE_BUCKET(f64, double, double)

/* What every bucket of one encode call shares. */
typedef struct {
    const void *x;
    int value_bytes;
    uint64_t n, bucket, key;
    uint32_t bits, s;
    int norm, format, fast;
    int32_t sign_shift;
    const uint32_t *om_field;
    const uint8_t *om_len;
} qsgd_encoder;

/* Encode the buckets of elements [lo, hi) (lo on a bucket boundary) as a stream
 * of its own into out[0 .. cap): the whole vector at one thread, or one
 * thread's part of the fixed format, which starts on a byte boundary. Returns
 * 0, -1 (non-finite value), -2 (norm beyond float32), -3 (out of memory);
 * *written: the bytes written; *overflow: the stream did not fit. */
static int encode_range(const qsgd_encoder *e, uint64_t lo, uint64_t hi, uint8_t *out, size_t cap,
                        size_t *written, int *overflow)
{
    const uint64_t bucket = e->bucket;
    const uint32_t bits = e->bits;
    uint64_t maxlen = bucket < hi - lo ? bucket : hi - lo;
    uint16_t *codes = malloc(maxlen * sizeof *codes);
    if (!codes) return -3;
    bitwriter w;
    bw_init(&w, out, cap);
    uint8_t *p = out, *end = out + cap;
    int rc = 0;
    for (uint64_t start = lo; start < hi; start += bucket) {
        uint64_t len = hi - start < bucket ? hi - start : bucket;
        float nf;
        uint64_t nnz;
        rc = e->value_bytes == 4
                 ? bucket_codes_f32((const float *)e->x + start, len, start, e->norm, e->sign_shift, e->s, e->key,
                                    codes, &nf, &nnz)
                 : bucket_codes_f64((const double *)e->x + start, len, start, e->norm, e->sign_shift, e->s, e->key,
                                    codes, &nf, &nnz);
        if (rc) break;
        uint32_t nbits;
        memcpy(&nbits, &nf, 4);
        if (e->fast) {
            memcpy(p, &nbits, 4);
            p += 4;
            uint64_t i = 0;
            p = pack_groups(p, end, codes, len / 8, bits);
            i = len / 8 * 8;
            if (i < len) {
                bitwriter t;
                bw_init(&t, p, (size_t)(end - p));
                for (; i < len; i++) bw_put(&t, codes[i], bits + 1);
                p += bw_finish(&t, p);
            }
            continue;
        }
        bw_put(&w, nbits, 32);
        if (e->format == SCALEML_QSGD_FIXED) {
            for (uint64_t i = 0; i < len; i++) bw_put(&w, codes[i], bits + 1);
        } else {
            const uint32_t *om_field = e->om_field;
            const uint8_t *om_len = e->om_len;
            elias_omega_put(&w, nnz + 1);
            uint64_t prev = (uint64_t)-1;
            if (nnz) {
                uint64_t i = 0;
                for (; i + 64 <= len; i += 64) {
                    /* bitmap of the non-zero levels of 64 codes, then visit its set bits */
                    uint64_t m = nonzero64(codes + i);
                    for (; m; m &= m - 1) {
                        uint64_t at = i + (uint64_t)__builtin_ctzll(m);
                        uint32_t c = codes[at];
                        uint64_t gap = at - prev;
                        if (gap < 1024) bw_put(&w, om_field[gap], om_len[gap]);
                        else elias_omega_put(&w, gap);
                        bw_put(&w, c >> 8, 1);
                        bw_put(&w, om_field[c & 0xff], om_len[c & 0xff]);
                        prev = at;
                    }
                }
                for (; i < len; i++) {
                    uint32_t c = codes[i];
                    if (!(c & 0xff)) continue;
                    elias_omega_put(&w, i - prev);
                    bw_put(&w, c >> 8, 1);
                    elias_omega_put(&w, c & 0xff);
                    prev = i;
                }
            }
        }
        if (w.overflow) break;
    }
    free(codes);
    if (e->fast) {
        *written = (size_t)(p - out);
        *overflow = 0;
    } else {
        *written = bw_finish(&w, out);
        *overflow = w.overflow;
    }
    return rc;
}

/* Buckets per unit of work of the threaded fixed format: the fewest whose bits
 * fill whole bytes, so that every thread's part starts on a byte. */
static uint64_t fixed_unit_buckets(uint64_t bucket, uint32_t bits)
{
    uint64_t g = 1;
    while ((g * (32 + bucket * (bits + 1))) % 8) g++;
    return g;
}

/* The fixed format over threads (cap already checked): part p (threads_parts of
 * them, taken one at a time) encodes buckets [lo, hi) of whole units at the byte
 * offset where they start. Returns as encode_range. */
static int encode_fixed_threads(const qsgd_encoder *e, int threads, uint8_t *out, size_t cap)
{
    uint64_t g = fixed_unit_buckets(e->bucket, e->bits);
    uint64_t unit = g * e->bucket;
    uint64_t unit_bytes = g * (32 + e->bucket * (e->bits + 1)) / 8;
    int parts = threads_parts(threads, (e->n + unit - 1) / unit);
    int status[parts];
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int p = 0; p < parts; p++) {
        uint64_t lo, hi;
        threads_split_units(e->n, unit, parts, p, &lo, &hi);
        size_t offset = (size_t)(lo / unit * unit_bytes);
        size_t room = p == parts - 1 ? cap - offset : (size_t)((hi - lo) / unit * unit_bytes);
        size_t written;
        int overflow;
        status[p] = encode_range(e, lo, hi, out + offset, room, &written, &overflow);
    }
    /* the first failing part holds the first failing bucket: the single thread's error */
    for (int p = 0; p < parts; p++)
        if (status[p]) return status[p];
    return 0;
}

int scaleml_qsgd_encode(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                        int norm, int format, uint64_t key, uint8_t *out, size_t cap, size_t *written)
{
    int rc = qsgd_check_args(bits, bucket, format, value_bytes);
    if (rc) return rc;
    if (norm != SCALEML_NORM_L2 && norm != SCALEML_NORM_MAX)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown QSGD norm %d", norm);
    *written = 0;
    if (n == 0) return SCALEML_OK;
    /* Elias omega codes of 1..1023 as single fields (gaps within small buckets, levels) */
    uint32_t om_field[1024];
    uint8_t om_len[1024];
    qsgd_encoder e = {
        .x = x, .value_bytes = value_bytes, .n = n, .bucket = bucket, .key = key, .bits = bits,
        .s = (UINT32_C(1) << bits) - 1, .norm = norm, .format = format,
        .fast = format == SCALEML_QSGD_FIXED && bucket % 8 == 0,
        /* fixed format: codes are the wire fields (level | sign << bits); Elias: sign at bit 8 */
        .sign_shift = format == SCALEML_QSGD_FIXED ? (int32_t)bits : 8,
        .om_field = om_field, .om_len = om_len,
    };
    if (format == SCALEML_QSGD_ELIAS)
        for (unsigned v = 1; v < 1024; v++) {
            unsigned l;
            elias_omega_field(v, &om_field[v], &l);
            om_len[v] = (uint8_t)l;
        }
    size_t need = scaleml_qsgd_max_bytes(n, bits, bucket, format);
    if (e.fast && cap < need) {
        *written = need;
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "QSGD: output capacity %zu bytes is too small", cap);
    }
    size_t bytes = 0;
    int overflow = 0;
    /* the Elias stream is sequential: one thread */
    int threads = format == SCALEML_QSGD_FIXED && cap >= need
                      ? threads_for(n, (n + bucket - 1) / bucket / fixed_unit_buckets(bucket, bits)) : threads_for(0, 1);
    if (threads > 1) {
        rc = encode_fixed_threads(&e, threads, out, cap);
        bytes = need;
    } else {
        rc = encode_range(&e, 0, n, out, cap, &bytes, &overflow);
    }
    if (rc == -3) return scaleml_fail(SCALEML_ERR_NOMEM, "QSGD: out of memory for %llu codes",
                                      (unsigned long long)(bucket < n ? bucket : n));
    if (rc)
        return rc == -1 ? scaleml_fail(SCALEML_ERR_ARG, "QSGD: non-finite value (NaN or Inf) in the input")
                        : scaleml_fail(SCALEML_ERR_ARG, "QSGD: bucket norm exceeds the float32 range");
    if (overflow) {
        *written = need;
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "QSGD: output capacity %zu bytes is too small", cap);
    }
    *written = bytes;
    return SCALEML_OK;
}

static int read_norm(bitreader *r, float *norm)
{
    uint32_t b = (uint32_t)br_get(r, 32);
    if (r->err) return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload truncated");
    memcpy(norm, &b, 4);
    if (!qsgd_norm_valid(*norm))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload holds an invalid bucket norm");
    return SCALEML_OK;
}

/* The fixed-width format with buckets of a multiple of 8 values: 8 codes at a
 * time from whole bytes. Each value is (float)(unit * level) with the sign bit
 * set from the code, as the general path computes it; with few levels per
 * bucket the float32 values of the 2^(bits+1) codes are tabulated once per
 * bucket (the same values, looked up). accumulate: out += decoded values
 * (the collectives' decode-and-add, one pass instead of two). The payload
 * size was checked exactly by the caller, so every read is in bounds. */
static int decode_fixed(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket, void *out,
                        int value_bytes, int accumulate)
{
    uint32_t s = (UINT32_C(1) << bits) - 1, codes = UINT32_C(2) << bits;
    const uint8_t *p = buf, *end = buf + bytes;
    int tabulate = value_bytes == 4 && codes * 4 <= bucket;
    float table[512];
    for (uint64_t start = 0; start < n; start += bucket) {
        uint64_t len = n - start < bucket ? n - start : bucket;
        float nf;
        memcpy(&nf, p, 4);
        p += 4;
        if (!qsgd_norm_valid(nf))
            return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload holds an invalid bucket norm");
        double unit = qsgd_unit(nf, s);
        uint64_t i = 0;
        uint32_t c[8];
        if (tabulate) {
            for (uint32_t code = 0; code < codes; code++) table[code] = qsgd_value_f32(unit, code, bits);
            float *o = (float *)out + start;
            if (accumulate)
                for (; i + 8 <= len; i += 8, p += bits + 1) {
                    unpack8(p, (size_t)(end - p), c, bits);
                    for (unsigned j = 0; j < 8; j++) o[i + j] += table[c[j]];
                }
            else
                for (; i + 8 <= len; i += 8, p += bits + 1) {
                    unpack8(p, (size_t)(end - p), c, bits);
                    for (unsigned j = 0; j < 8; j++) o[i + j] = table[c[j]];
                }
        } else if (value_bytes == 4) {
            float *o = (float *)out + start;
            for (; i + 8 <= len; i += 8, p += bits + 1) {
                unpack8(p, (size_t)(end - p), c, bits);
                for (unsigned j = 0; j < 8; j++) {
                    float val = qsgd_value_f32(unit, c[j], bits);
                    o[i + j] = accumulate ? o[i + j] + val : val;
                }
            }
        } else {
            double *o = (double *)out + start;
            for (; i + 8 <= len; i += 8, p += bits + 1) {
                unpack8(p, (size_t)(end - p), c, bits);
                for (unsigned j = 0; j < 8; j++) {
                    double val = qsgd_value_f64(unit, c[j], bits);
                    o[i + j] = accumulate ? o[i + j] + val : val;
                }
            }
        }
        if (i < len) { /* only the last bucket has a partial group: it ends the stream */
            bitreader t;
            br_init(&t, p, (size_t)(end - p));
            for (; i < len; i++) {
                uint32_t cc = (uint32_t)br_get(&t, bits + 1);
                if (value_bytes == 4) {
                    float f = qsgd_value_f32(unit, cc, bits);
                    ((float *)out)[start + i] = accumulate ? ((float *)out)[start + i] + f : f;
                } else {
                    double val = qsgd_value_f64(unit, cc, bits);
                    ((double *)out)[start + i] = accumulate ? ((double *)out)[start + i] + val : val;
                }
            }
            if (t.err) return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload truncated");
            p = end;
        }
    }
    return SCALEML_OK;
}

/* decode_fixed over threads: every norm is checked first (so a malformed payload
 * fails as at one thread, with nothing written), then each thread decodes the
 * buckets of its part from the byte where they start. */
static int decode_fixed_threaded(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                                 void *out, int value_bytes, int accumulate)
{
    uint64_t buckets = (n + bucket - 1) / bucket;
    int threads = threads_for(n, buckets);
    if (threads == 1) return decode_fixed(buf, bytes, n, bits, bucket, out, value_bytes, accumulate);
    uint64_t bucket_bytes = 4 + bucket / 8 * (bits + 1);
    for (uint64_t b = 0; b < buckets; b++) {
        float nf;
        memcpy(&nf, buf + b * bucket_bytes, 4);
        if (!qsgd_norm_valid(nf))
            return decode_fixed(buf, bytes, n, bits, bucket, out, value_bytes, accumulate);
    }
    int parts = threads_parts(threads, buckets);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int p = 0; p < parts; p++) {
        uint64_t blo, bhi;
        threads_split(buckets, parts, p, &blo, &bhi);
        uint64_t lo = blo * bucket, hi = bhi * bucket < n ? bhi * bucket : n;
        size_t offset = (size_t)(blo * bucket_bytes);
        size_t part = p == parts - 1 ? bytes - offset : (size_t)((bhi - blo) * bucket_bytes);
        /* cannot fail: the norms are valid and the size was checked */
        (void)decode_fixed(buf + offset, part, hi - lo, bits, bucket, (char *)out + lo * (uint64_t)value_bytes,
                           value_bytes, accumulate);
    }
    return SCALEML_OK;
}

int scaleml_qsgd_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                            void *acc, int value_bytes)
{
    int rc = qsgd_check_args(bits, bucket, SCALEML_QSGD_FIXED, value_bytes);
    if (rc) return rc;
    if (bytes != scaleml_qsgd_max_bytes(n, bits, bucket, SCALEML_QSGD_FIXED))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload has %zu bytes, expected %zu", bytes,
                            scaleml_qsgd_max_bytes(n, bits, bucket, SCALEML_QSGD_FIXED));
    if (bucket % 8) return SCALEML_ERR_ARG;  /* the caller decodes and adds in two passes */
    return decode_fixed_threaded(buf, bytes, n, bits, bucket, acc, value_bytes, 1);
}

/* The bit-serial fixed format (any bucket) of elements [lo, hi) from the stream
 * buf[0 .. bytes) where bucket lo / bucket starts; 0, or -1 on an invalid norm
 * or a short stream (no message: the caller decodes again at one thread). */
static int decode_fixed_serial(const uint8_t *buf, size_t bytes, uint64_t lo, uint64_t hi, uint32_t bits,
                               uint64_t bucket, void *out, int value_bytes)
{
    uint32_t s = (UINT32_C(1) << bits) - 1;
    bitreader r;
    br_init(&r, buf, bytes);
    for (uint64_t start = lo; start < hi; start += bucket) {
        uint64_t len = hi - start < bucket ? hi - start : bucket;
        uint32_t nb = (uint32_t)br_get(&r, 32);
        float nf;
        memcpy(&nf, &nb, 4);
        if (r.err || !qsgd_norm_valid(nf)) return -1;
        double unit = qsgd_unit(nf, s);
        if (value_bytes == 4) {
            float *o = (float *)out + start;
            for (uint64_t i = 0; i < len; i++) o[i] = qsgd_value_f32(unit, (uint32_t)br_get(&r, bits + 1), bits);
        } else {
            double *o = (double *)out + start;
            for (uint64_t i = 0; i < len; i++) o[i] = qsgd_value_f64(unit, (uint32_t)br_get(&r, bits + 1), bits);
        }
        if (r.err) return -1;
    }
    return 0;
}

/* decode_fixed_serial over threads: each part (whole units of fixed_unit_buckets,
 * which start on a byte) from its own reader; 0, or -1 when a part failed. */
static int decode_fixed_serial_threaded(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                                        void *out, int value_bytes, int threads)
{
    uint64_t g = fixed_unit_buckets(bucket, bits);
    uint64_t unit = g * bucket;
    uint64_t unit_bytes = g * (32 + bucket * (bits + 1)) / 8;
    int failed = 0, parts = threads_parts(threads, (n + unit - 1) / unit);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(|: failed)
    for (int p = 0; p < parts; p++) {
        uint64_t lo, hi;
        threads_split_units(n, unit, parts, p, &lo, &hi);
        size_t offset = (size_t)(lo / unit * unit_bytes);
        size_t part = p == parts - 1 ? bytes - offset : (size_t)((hi - lo) / unit * unit_bytes);
        failed |= decode_fixed_serial(buf + offset, part, lo, hi, bits, bucket, out, value_bytes) != 0;
    }
    return failed ? -1 : 0;
}

int scaleml_qsgd_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                        int format, void *out, int value_bytes)
{
    int rc = qsgd_check_args(bits, bucket, format, value_bytes);
    if (rc) return rc;
    uint32_t s = (UINT32_C(1) << bits) - 1;
    if (format == SCALEML_QSGD_FIXED && bytes != scaleml_qsgd_max_bytes(n, bits, bucket, format))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload has %zu bytes, expected %zu", bytes,
                       scaleml_qsgd_max_bytes(n, bits, bucket, format));
    if (format == SCALEML_QSGD_FIXED && bucket % 8 == 0)
        return decode_fixed_threaded(buf, bytes, n, bits, bucket, out, value_bytes, 0);
    if (format == SCALEML_QSGD_FIXED) {
        /* over threads when it splits; any failure is reported by the one-thread pass below */
        uint64_t g = fixed_unit_buckets(bucket, bits), units = (n + g * bucket - 1) / (g * bucket);
        int threads = threads_for(n, units);
        if (threads > 1 && decode_fixed_serial_threaded(buf, bytes, n, bits, bucket, out, value_bytes, threads) == 0)
            return SCALEML_OK;
    } else {
        (void)threads_for(0, 1); /* the Elias stream is sequential: one thread */
    }
    bitreader r;
    br_init(&r, buf, bytes);
    for (uint64_t start = 0; start < n; start += bucket) {
        uint64_t len = n - start < bucket ? n - start : bucket;
        float nf;
        if ((rc = read_norm(&r, &nf))) return rc;
        if (format == SCALEML_QSGD_FIXED) {
            double unit = qsgd_unit(nf, s);
            if (value_bytes == 4) {
                float *o = (float *)out + start;
                for (uint64_t i = 0; i < len; i++) o[i] = qsgd_value_f32(unit, (uint32_t)br_get(&r, bits + 1), bits);
            } else {
                double *o = (double *)out + start;
                for (uint64_t i = 0; i < len; i++) o[i] = qsgd_value_f64(unit, (uint32_t)br_get(&r, bits + 1), bits);
            }
            if (r.err) return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload truncated");
        } else {
            memset((char *)out + start * (uint64_t)value_bytes, 0, len * (uint64_t)value_bytes);
            uint64_t nnz1 = elias_omega_get(&r);
            if (r.err || nnz1 - 1 > len)
                return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload: bad non-zero count in bucket at %llu",
                               (unsigned long long)start);
            uint64_t pos = (uint64_t)-1;
            for (uint64_t j = 0; j + 1 < nnz1; j++) {
                uint64_t gap = elias_omega_get(&r);
                uint64_t neg = br_get(&r, 1);
                uint64_t level = elias_omega_get(&r);
                if (r.err || gap > len || pos + gap >= len || level > s)
                    return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload: bad entry in bucket at %llu",
                                   (unsigned long long)start);
                pos += gap;
                uint32_t code = (uint32_t)level | (uint32_t)neg << bits;
                if (value_bytes == 4) ((float *)out)[start + pos] = qsgd_value_f32(qsgd_unit(nf, s), code, bits);
                else ((double *)out)[start + pos] = qsgd_value_f64(qsgd_unit(nf, s), code, bits);
            }
        }
    }
    if (br_bits_left(&r) >= 8)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "QSGD payload has %llu trailing bytes",
                       (unsigned long long)(br_bits_left(&r) / 8));
    return SCALEML_OK;
}

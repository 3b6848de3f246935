/*
 * QSGD's arithmetic, one definition for the CPU kernels (compress/qsgd.c),
 * the CUDA kernels (cuda/qsgd.cu) and their host emulation
 * (arith/qsgd_gpuref.c). See compress/qsgd.c for the method and the wire
 * formats. What lives here:
 *   - the fixed format's layout: the bit offset of every bucket norm and of
 *     every element's (bits + 1)-bit field is a closed formula of
 *     (index, bucket, bits), so fields can be placed in any order;
 *   - a bucket's norm: the L2 sum of squares in 8 lanes (lane j takes the
 *     elements j, j + 8, ... of the full groups of 8, lane 0 also the tail)
 *     combined as ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), the
 *     rescaled sum in element order when finite squares overflow, the max
 *     norm as an integer max of magnitude bit patterns (any order), and the
 *     rounding UP to the float32 the wire carries;
 *   - one element's code (level | sign << shift) and its decoded value.
 *
 * Products and sums go through qsgd_mul_* / qsgd_add_*: on the device they
 * are the _rn intrinsics, which nvcc never contracts into an FMA (nvcc's
 * default -fmad=true would otherwise fuse x * x + acc and change the bits);
 * host C in -std=c11 does not contract.
 */
#ifndef SCALEML_ARITH_QSGD_H
#define SCALEML_ARITH_QSGD_H

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "arith/hd.h"
#include "core/counter_rng.h"

/* Bits of a bucket norm on the wire (a float32). */
#define QSGD_NORM_BITS 32

SCALEML_HD float qsgd_mul_f32(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

SCALEML_HD float qsgd_add_f32(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

SCALEML_HD double qsgd_mul_f64(double a, double b)
{
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

SCALEML_HD double qsgd_add_f64(double a, double b)
{
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

/* ---- layout of the fixed format ---- */

SCALEML_HD uint64_t qsgd_buckets(uint64_t n, uint64_t bucket)
{
    return (n + bucket - 1) / bucket;
}

/* Payload bytes of n values: per bucket a 32-bit norm then (bits + 1) bits per element, zero padded to a byte. */
SCALEML_HD uint64_t qsgd_fixed_bytes(uint64_t n, uint32_t bits, uint64_t bucket)
{
    return (qsgd_buckets(n, bucket) * QSGD_NORM_BITS + n * (bits + 1) + 7) / 8;
}

/* Bit offset of bucket b's norm (every bucket before the last is full). */
SCALEML_HD uint64_t qsgd_norm_bit(uint64_t b, uint64_t bucket, uint32_t bits)
{
    return b * (QSGD_NORM_BITS + bucket * (bits + 1));
}

/* Bit offset of element i's field. */
SCALEML_HD uint64_t qsgd_field_bit(uint64_t i, uint64_t bucket, uint32_t bits)
{
    return qsgd_norm_bit(i / bucket, bucket, bits) + QSGD_NORM_BITS + (i % bucket) * (bits + 1);
}

/* value << (bitpos % 32) (value < 2^32): its low word ORs into 32-bit word bitpos / 32 of the LSB-first
 * stream (a little-endian word buffer), its high word (non-zero only when the field crosses into it)
 * into the next word. */
SCALEML_HD uint64_t qsgd_field_window(uint32_t value, uint64_t bitpos)
{
    return (uint64_t)value << (bitpos & 31);
}

/* The nbits (<= 32) bits at bitpos of an LSB-first stream, read byte by byte (any alignment; reads only
 * the bytes the field touches). */
SCALEML_HD uint32_t qsgd_get_field(const uint8_t *buf, uint64_t bitpos, unsigned nbits)
{
    const uint8_t *p = buf + (bitpos >> 3);
    unsigned shift = (unsigned)(bitpos & 7);
    unsigned nbytes = (shift + nbits + 7) / 8;
    uint64_t v = 0;
    for (unsigned k = 0; k < nbytes; k++) v |= (uint64_t)p[k] << (8 * k);
    return (uint32_t)((v >> shift) & ((UINT64_C(1) << nbits) - 1));
}

/* ---- bucket norms ---- */

/* acc + x * x, never fused. */
SCALEML_HD double qsgd_sq_add(double acc, double x)
{
    return qsgd_add_f64(acc, qsgd_mul_f64(x, x));
}

/* The 8 lane partials at once (the CPU's form: the inner loop is one vector of lanes). */
SCALEML_HD void qsgd_sumsq_lanes_f32(const float *v, uint64_t len, double acc[8])
{
    for (unsigned j = 0; j < 8; j++) acc[j] = 0;
    uint64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (unsigned j = 0; j < 8; j++) acc[j] = qsgd_sq_add(acc[j], (double)v[i + j]);
    for (; i < len; i++) acc[0] = qsgd_sq_add(acc[0], (double)v[i]);
}

SCALEML_HD void qsgd_sumsq_lanes_f64(const double *v, uint64_t len, double acc[8])
{
    for (unsigned j = 0; j < 8; j++) acc[j] = 0;
    uint64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (unsigned j = 0; j < 8; j++) acc[j] = qsgd_sq_add(acc[j], v[i + j]);
    for (; i < len; i++) acc[0] = qsgd_sq_add(acc[0], v[i]);
}

/* One lane's partial alone (the GPU's form: one thread per lane), the same sums as lane `lane` above. */
SCALEML_HD double qsgd_sumsq_lane_f32(const float *v, uint64_t len, unsigned lane)
{
    double acc = 0;
    uint64_t full = len / 8 * 8;
    for (uint64_t i = lane; i < full; i += 8) acc = qsgd_sq_add(acc, (double)v[i]);
    if (lane == 0)
        for (uint64_t i = full; i < len; i++) acc = qsgd_sq_add(acc, (double)v[i]);
    return acc;
}

SCALEML_HD double qsgd_sumsq_lane_f64(const double *v, uint64_t len, unsigned lane)
{
    double acc = 0;
    uint64_t full = len / 8 * 8;
    for (uint64_t i = lane; i < full; i += 8) acc = qsgd_sq_add(acc, v[i]);
    if (lane == 0)
        for (uint64_t i = full; i < len; i++) acc = qsgd_sq_add(acc, v[i]);
    return acc;
}

/* The fixed combine order of the 8 lanes. */
SCALEML_HD double qsgd_sumsq_combine(const double acc[8])
{
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

SCALEML_HD int qsgd_has_nonfinite_f32(const float *v, uint64_t len)
{
    int bad = 0;
    for (uint64_t i = 0; i < len; i++) bad |= !(v[i] <= FLT_MAX && v[i] >= -FLT_MAX);
    return bad;
}

SCALEML_HD int qsgd_has_nonfinite_f64(const double *v, uint64_t len)
{
    int bad = 0;
    for (uint64_t i = 0; i < len; i++) bad |= !(v[i] <= DBL_MAX && v[i] >= -DBL_MAX);
    return bad;
}

/* L2 norm of a bucket whose finite squares overflow: m * sqrt(sum (v_i / m)^2), m = max |v_i|, summed in
 * element order (only float64 input can get here; one thread per such bucket on the GPU). */
SCALEML_HD double qsgd_l2_rescaled_f32(const float *v, uint64_t len)
{
    double m = 0;
    for (uint64_t i = 0; i < len; i++) {
        double a = fabs((double)v[i]);
        m = a > m ? a : m;
    }
    double acc = 0;
    for (uint64_t i = 0; i < len; i++) acc = qsgd_sq_add(acc, (double)v[i] / m);
    return qsgd_mul_f64(m, sqrt(acc));
}

SCALEML_HD double qsgd_l2_rescaled_f64(const double *v, uint64_t len)
{
    double m = 0;
    for (uint64_t i = 0; i < len; i++) {
        double a = fabs(v[i]);
        m = a > m ? a : m;
    }
    double acc = 0;
    for (uint64_t i = 0; i < len; i++) acc = qsgd_sq_add(acc, v[i] / m);
    return qsgd_mul_f64(m, sqrt(acc));
}

/* L2 norm of a bucket from its combined sum of squares t: 0, or -1 when the bucket holds NaN/Inf. */
SCALEML_HD int qsgd_l2_norm_f32(const float *v, uint64_t len, double t, double *norm)
{
    if (isfinite(t)) {
        *norm = sqrt(t);
        return 0;
    }
    if (qsgd_has_nonfinite_f32(v, len)) return -1;
    *norm = qsgd_l2_rescaled_f32(v, len);
    return 0;
}

SCALEML_HD int qsgd_l2_norm_f64(const double *v, uint64_t len, double t, double *norm)
{
    if (isfinite(t)) {
        *norm = sqrt(t);
        return 0;
    }
    if (qsgd_has_nonfinite_f64(v, len)) return -1;
    *norm = qsgd_l2_rescaled_f64(v, len);
    return 0;
}

/* |x| as its bit pattern with the sign cleared: these order like the magnitudes (NaN/Inf at the top), so
 * the max norm is an integer max, in any order. */
SCALEML_HD uint32_t qsgd_abs_key_f32(float x)
{
    return arith_f32_bits(x) & UINT32_C(0x7fffffff);
}

SCALEML_HD uint64_t qsgd_abs_key_f64(double x)
{
    return arith_f64_bits(x) & UINT64_C(0x7fffffffffffffff);
}

/* Max key of the lane's elements (the same partition as the sums; any partition gives the same max). */
SCALEML_HD uint32_t qsgd_maxkey_lane_f32(const float *v, uint64_t len, unsigned lane)
{
    uint32_t m = 0;
    uint64_t full = len / 8 * 8;
    for (uint64_t i = lane; i < full; i += 8) {
        uint32_t k = qsgd_abs_key_f32(v[i]);
        m = k > m ? k : m;
    }
    if (lane == 0)
        for (uint64_t i = full; i < len; i++) {
            uint32_t k = qsgd_abs_key_f32(v[i]);
            m = k > m ? k : m;
        }
    return m;
}

SCALEML_HD uint64_t qsgd_maxkey_lane_f64(const double *v, uint64_t len, unsigned lane)
{
    uint64_t m = 0;
    uint64_t full = len / 8 * 8;
    for (uint64_t i = lane; i < full; i += 8) {
        uint64_t k = qsgd_abs_key_f64(v[i]);
        m = k > m ? k : m;
    }
    if (lane == 0)
        for (uint64_t i = full; i < len; i++) {
            uint64_t k = qsgd_abs_key_f64(v[i]);
            m = k > m ? k : m;
        }
    return m;
}

/* Max norm from the bucket's max key: 0, or -1 when the bucket holds NaN/Inf. */
SCALEML_HD int qsgd_max_norm_f32(uint32_t key, double *norm)
{
    if (key >= UINT32_C(0x7f800000)) return -1;
    *norm = (double)arith_f32_from_bits(key);
    return 0;
}

SCALEML_HD int qsgd_max_norm_f64(uint64_t key, double *norm)
{
    if (key >= UINT64_C(0x7ff0000000000000)) return -1;
    *norm = arith_f64_from_bits(key);
    return 0;
}

/* The norm on the wire: the smallest float32 >= norm (finite, >= 0), so that |v_i| / N <= 1 and the decoder
 * uses exactly the N of the encoder. 0, or -2 when that is beyond float32. (The next float32 up of a finite
 * f >= 0 is its bit pattern + 1, as nextafterf gives.) */
SCALEML_HD int qsgd_wire_norm(double norm, float *wire)
{
    float f = (float)norm;
    if ((double)f < norm) f = arith_f32_from_bits(arith_f32_bits(f) + 1);
    if (!isfinite(f)) return -2;
    *wire = f;
    return 0;
}

/* A bucket's wire norm from its combined sum of squares t (L2) or its max key (max): 0, -1 when the bucket
 * holds NaN/Inf, -2 when the norm is beyond float32. */
SCALEML_HD int qsgd_wire_norm_l2_f32(const float *v, uint64_t len, double t, float *wire)
{
    double norm;
    int bad = qsgd_l2_norm_f32(v, len, t, &norm);
    return bad ? bad : qsgd_wire_norm(norm, wire);
}

SCALEML_HD int qsgd_wire_norm_l2_f64(const double *v, uint64_t len, double t, float *wire)
{
    double norm;
    int bad = qsgd_l2_norm_f64(v, len, t, &norm);
    return bad ? bad : qsgd_wire_norm(norm, wire);
}

SCALEML_HD int qsgd_wire_norm_max_f32(uint32_t key, float *wire)
{
    double norm;
    int bad = qsgd_max_norm_f32(key, &norm);
    return bad ? bad : qsgd_wire_norm(norm, wire);
}

SCALEML_HD int qsgd_wire_norm_max_f64(uint64_t key, float *wire)
{
    double norm;
    int bad = qsgd_max_norm_f64(key, &norm);
    return bad ? bad : qsgd_wire_norm(norm, wire);
}

/* Error slot of bucket b's failure `bad` (-1 or -2): the smallest slot over all buckets is the CPU's error (the
 * first bad bucket in order), whatever order the buckets were done in. */
SCALEML_HD uint64_t qsgd_error_slot(uint64_t b, int bad)
{
    return b << 1 | (uint64_t)(bad == -2);
}

/* A norm read from a payload is usable: finite and >= 0 (else the payload is malformed). */
SCALEML_HD int qsgd_norm_valid(float norm)
{
    return norm >= 0 && isfinite(norm);
}

/* ---- one element ---- */

/* r = s |v_i| / N is computed as |v_i| * scale, scale = s / N rounded to the input's type. */
SCALEML_HD float qsgd_scale_f32(float norm, uint32_t s)
{
    return (float)((double)s / (double)norm);
}

SCALEML_HD double qsgd_scale_f64(float norm, uint32_t s)
{
    return (double)s / (double)norm;
}

/* floor(r) for 0 <= r < 2^31, and INT32_MIN for NaN or r >= 2^31: what x86's conversion gives there (the
 * CPU kernel's bytes; a plain cast is undefined in C and saturates in CUDA). Reached when s / N overflows
 * float32 (a bucket of denormals): r is then +inf (level INT32_MIN + 1, code 1) or NaN for x = 0 (code 0).
 * Written with masks, no selects: the conversion stays unconditional and in range, so that gcc (which
 * keeps float conversions out of if-converted code under -ftrapping-math) still vectorizes the loops. */
SCALEML_HD int32_t qsgd_floor_f32(float r)
{
    uint32_t rb = arith_f32_bits(r) & UINT32_C(0x7fffffff);
    uint32_t keep = UINT32_C(0) - (uint32_t)(rb < UINT32_C(0x4f000000)); /* all ones when |r| < 2^31 */
    int32_t l = (int32_t)arith_f32_from_bits(rb & keep);
    return (int32_t)((uint32_t)l | (~keep & UINT32_C(0x80000000)));
}

SCALEML_HD int32_t qsgd_floor_f64(double r)
{
    uint64_t rb = arith_f64_bits(r) & UINT64_C(0x7fffffffffffffff);
    uint64_t keep = UINT64_C(0) - (uint64_t)(rb < UINT64_C(0x41e0000000000000));
    int32_t l = (int32_t)arith_f64_from_bits(rb & keep);
    return (int32_t)((uint32_t)l | ((uint32_t)~keep & UINT32_C(0x80000000)));
}

/* Level of one element: floor(r) + 1 with probability frac(r), from the element's 32-bit uniform u
 * (crng_u32(key, i)) of which 24 bits are used for float32 (compared in float) and 31 for float64. */
SCALEML_HD int32_t qsgd_level_f32(float x, float scale, int32_t s, uint32_t u)
{
    float r = qsgd_mul_f32(fabsf(x), scale);
    int32_t l = qsgd_floor_f32(r);
    float uf = (float)(int32_t)(u >> 8) * 0x1.0p-24f;
    int32_t level = l + (int32_t)(uf < r - (float)l);
    return level > s ? s : level;
}

SCALEML_HD int32_t qsgd_level_f64(double x, double scale, int32_t s, uint32_t u)
{
    double r = qsgd_mul_f64(fabs(x), scale);
    int32_t l = qsgd_floor_f64(r);
    double uf = (double)(int32_t)(u >> 1) * 0x1.0p-31;
    int32_t level = l + (int32_t)(uf < r - (double)l);
    return level > s ? s : level;
}

/* The code level | sign << sign_shift as the kernels store it (16 bits); the sign only with a non-zero level.
 * The fixed format's field is the code with sign_shift = bits. */
SCALEML_HD uint32_t qsgd_code(int32_t level, int negative, int32_t sign_shift)
{
    int32_t neg = (int32_t)(negative != 0) & (int32_t)(level != 0);
    return (uint16_t)(level | (neg << sign_shift));
}

/* The fixed-format field of element i (0 when its bucket's norm is 0, i.e. scale 0). */
SCALEML_HD uint32_t qsgd_fixed_code_f32(float x, float scale, uint32_t bits, uint64_t key, uint64_t i)
{
    int32_t s = (int32_t)((UINT32_C(1) << bits) - 1);
    return qsgd_code(qsgd_level_f32(x, scale, s, crng_u32(key, i)), x < 0, (int32_t)bits);
}

SCALEML_HD uint32_t qsgd_fixed_code_f64(double x, double scale, uint32_t bits, uint64_t key, uint64_t i)
{
    int32_t s = (int32_t)((UINT32_C(1) << bits) - 1);
    return qsgd_code(qsgd_level_f64(x, scale, s, crng_u32(key, i)), x < 0, (int32_t)bits);
}

/* Decoding: a bucket's unit N / s, and a code's value (float)(unit * level) with the sign bit OR-ed in. */
SCALEML_HD double qsgd_unit(float norm, uint32_t s)
{
    return (double)norm / (double)s;
}

SCALEML_HD float qsgd_value_f32(double unit, uint32_t code, uint32_t bits)
{
    uint32_t level = code & ((UINT32_C(1) << bits) - 1);
    float val = (float)qsgd_mul_f64(unit, (double)level);
    return arith_f32_from_bits(arith_f32_bits(val) | (((code >> bits) & 1) << 31));
}

SCALEML_HD double qsgd_value_f64(double unit, uint32_t code, uint32_t bits)
{
    uint32_t level = code & ((UINT32_C(1) << bits) - 1);
    double val = qsgd_mul_f64(unit, (double)level);
    return arith_f64_from_bits(arith_f64_bits(val) | ((uint64_t)((code >> bits) & 1) << 63));
}

/* Bucket b's norm in a fixed-format payload (its size already checked). */
SCALEML_HD float qsgd_fixed_norm(const uint8_t *buf, uint64_t b, uint64_t bucket, uint32_t bits)
{
    return arith_f32_from_bits(qsgd_get_field(buf, qsgd_norm_bit(b, bucket, bits), QSGD_NORM_BITS));
}

/* Element i of a fixed-format payload (its size already checked): 0 and its value, or -1 when its bucket's
 * norm is invalid (a malformed payload). */
SCALEML_HD int qsgd_fixed_element_f32(const uint8_t *buf, uint64_t i, uint64_t bucket, uint32_t bits, float *val)
{
    float norm = qsgd_fixed_norm(buf, i / bucket, bucket, bits);
    if (!qsgd_norm_valid(norm)) return -1;
    uint32_t code = qsgd_get_field(buf, qsgd_field_bit(i, bucket, bits), bits + 1);
    *val = qsgd_value_f32(qsgd_unit(norm, (UINT32_C(1) << bits) - 1), code, bits);
    return 0;
}

SCALEML_HD int qsgd_fixed_element_f64(const uint8_t *buf, uint64_t i, uint64_t bucket, uint32_t bits, double *val)
{
    float norm = qsgd_fixed_norm(buf, i / bucket, bucket, bits);
    if (!qsgd_norm_valid(norm)) return -1;
    uint32_t code = qsgd_get_field(buf, qsgd_field_bit(i, bucket, bits), bits + 1);
    *val = qsgd_value_f64(qsgd_unit(norm, (UINT32_C(1) << bits) - 1), code, bits);
    return 0;
}

#endif

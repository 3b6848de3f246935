/*
 * TopK's per-element arithmetic, shared by the CPU kernel (compress/topk.c),
 * the CUDA kernels (cuda/topk.cu) and their host emulation (arith/topk_gpuref.c).
 *
 * - Keys: a float's magnitude as its bit pattern with the sign cleared (keys
 *   order like magnitudes; +0.0 and -0.0 are the same key 0); a key at or
 *   above the exponent's all-ones pattern is NaN or Inf (rejected).
 * - Exact mode sends every key above the threshold key t (the k-th largest)
 *   and, in index order, the first take_eq keys equal to it, take_eq = k minus
 *   the number of keys above t. Approximate mode sends every key >= t
 *   (take_eq = ARITH_TOPK_ALL). So an entry's slot in the payload is the number
 *   of keys above t before it plus min(equal keys before it, take_eq), which
 *   lets a parallel compaction place every entry independently.
 * - The approximate threshold: the key of rank (sample - ks) ascending among
 *   `sample` keys read at positions floor(draw(key, j) * n / 2^64) of the
 *   counter RNG, ks = round(sample * k / n) clamped to [1, sample]; never 0
 *   (zeros are never sent).
 * - Radix select (exact mode on the GPU): from the top digit down, the bin of
 *   the histogram of the still-matching keys that holds the k-th largest.
 * - Payload layout: uint64 count, count uint32 indices padded to 8 bytes,
 *   count values.
 */
#ifndef SCALEML_ARITH_TOPK_H
#define SCALEML_ARITH_TOPK_H

#include <stddef.h>
#include <stdint.h>

#include "arith/hd.h"
#include "core/counter_rng.h"

#define ARITH_TOPK_ABS32 UINT32_C(0x7fffffff)
#define ARITH_TOPK_INF32 UINT32_C(0x7f800000)
#define ARITH_TOPK_ABS64 UINT64_C(0x7fffffffffffffff)
#define ARITH_TOPK_INF64 UINT64_C(0x7ff0000000000000)
/* take_eq of approximate mode: every key equal to the threshold is sent. */
#define ARITH_TOPK_ALL UINT64_MAX

/* Magnitude keys of float32 / float64 bit patterns. */
SCALEML_HD uint32_t arith_topk_key32(uint32_t bits) { return bits & ARITH_TOPK_ABS32; }
SCALEML_HD uint64_t arith_topk_key64(uint64_t bits) { return bits & ARITH_TOPK_ABS64; }

/* 1 when the key is NaN's or Inf's. */
SCALEML_HD int arith_topk_bad32(uint32_t key) { return key >= ARITH_TOPK_INF32; }
SCALEML_HD int arith_topk_bad64(uint64_t key) { return key >= ARITH_TOPK_INF64; }

/* Whether an entry is sent, given how many keys equal to t come before it. */
SCALEML_HD int arith_topk_send32(uint32_t key, uint32_t t, uint64_t eq_before, uint64_t take_eq)
{
    return key > t || (key == t && eq_before < take_eq);
}

SCALEML_HD int arith_topk_send64(uint64_t key, uint64_t t, uint64_t eq_before, uint64_t take_eq)
{
    return key > t || (key == t && eq_before < take_eq);
}

/* Slot of a sent entry: keys above t before it plus the equal ones sent before it. */
SCALEML_HD uint64_t arith_topk_slot(uint64_t above_before, uint64_t eq_before, uint64_t take_eq)
{
    return above_before + (eq_before < take_eq ? eq_before : take_eq);
}

/* high 64 bits of a * b */
SCALEML_HD uint64_t arith_topk_mulhi64(uint64_t a, uint64_t b)
{
#ifdef __CUDA_ARCH__
    return __umul64hi(a, b);
#else
    return (uint64_t)(((unsigned __int128)a * b) >> 64);
#endif
}

/* Position of the j-th sampled entry of n (the sampler of both modes' estimates). */
SCALEML_HD uint64_t arith_topk_sample_pos(uint64_t key, uint64_t j, uint64_t n)
{
    return arith_topk_mulhi64(crng_draw(key, j), n);
}

/* ks: how many of the `sample` keys lie at or above the approximate threshold
 * (the threshold is the key of ascending rank sample - ks). */
SCALEML_HD uint64_t arith_topk_sample_rank(uint64_t sample, uint64_t k, uint64_t n)
{
    uint64_t ks = (uint64_t)((double)sample * (double)k / (double)n + 0.5);
    if (ks < 1) ks = 1;
    if (ks > sample) ks = sample;
    return ks;
}

/* The approximate threshold from the selected sample key: never 0, so zeros are never sent. */
SCALEML_HD uint32_t arith_topk_approx_t32(uint32_t t) { return t == 0 ? 1 : t; }
SCALEML_HD uint64_t arith_topk_approx_t64(uint64_t t) { return t == 0 ? 1 : t; }

/* Radix select: the digit of a key at `shift` (ARITH_TOPK_RADIX_BITS wide), and
 * whether a key matches the digits chosen so far (prefix holds them, the bits
 * below `shift` + digit width being 0). */
#define ARITH_TOPK_RADIX_BITS 8
#define ARITH_TOPK_RADIX_BINS 256

SCALEML_HD unsigned arith_topk_digit(uint64_t key, unsigned shift)
{
    return (unsigned)(key >> shift) & (ARITH_TOPK_RADIX_BINS - 1);
}

SCALEML_HD int arith_topk_matches(uint64_t key, uint64_t prefix, unsigned shift)
{
    unsigned up = shift + ARITH_TOPK_RADIX_BITS;
    return up >= 64 || (key >> up) == (prefix >> up);
}

/* One radix step: among the matching keys counted in hist (by digit), the bin
 * that holds the need-th largest, from the top bin down (the CPU's bin walk);
 * *above gets the keys in the bins above it, which are all larger than the
 * final threshold. Requires 1 <= need <= the sum of hist. */
SCALEML_HD unsigned arith_topk_pick_bin(const uint64_t *hist, unsigned top_bin, uint64_t need, uint64_t *above)
{
    uint64_t a = 0;
    unsigned bin = top_bin;
    while (a + hist[bin] < need) a += hist[bin--];
    *above = a;
    return bin;
}

/* Payload size for count entries and the offset of its values. */
SCALEML_HD size_t arith_topk_pad8(size_t b) { return (b + 7) & ~(size_t)7; }

SCALEML_HD size_t arith_topk_value_offset(uint64_t count)
{
    return 8 + arith_topk_pad8((size_t)count * 4);
}

SCALEML_HD size_t arith_topk_payload_bytes(uint64_t count, int value_bytes)
{
    return arith_topk_value_offset(count) + (size_t)count * (size_t)value_bytes;
}

/* A payload's count agrees with its size, n and the uint32 index range. */
SCALEML_HD int arith_topk_count_ok(uint64_t count, size_t bytes, uint64_t n, int value_bytes)
{
    return count <= n && count <= (UINT64_C(1) << 32) && bytes == arith_topk_payload_bytes(count, value_bytes);
}

#endif

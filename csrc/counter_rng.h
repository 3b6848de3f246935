/*
 * Counter-based random numbers for the compression kernels.
 *
 * A stream is a 64-bit key derived from (seed, rank, step, stream id); the
 * i-th 64-bit draw of a stream is a pure function of (key, i):
 *     draw(key, i) = mix64(key + (i + 1) * 0x9e3779b97f4a7c15)
 * where mix64 is the SplitMix64 / MurmurHash3 finaliser (a bijection of
 * 64-bit words with full avalanche). No state is carried between calls, so
 * every element's randomness is reproducible, can be computed in any order,
 * and two ranks (different keys) draw independent-looking numbers.
 *
 * The quantizers split one 64-bit draw into two 32-bit uniforms (element 2j
 * uses the low half of draw(key, j), element 2j+1 the high half).
 */
#ifndef SCALEML_COUNTER_RNG_H
#define SCALEML_COUNTER_RNG_H

#include <stdint.h>

#define CRNG_GOLDEN UINT64_C(0x9e3779b97f4a7c15)

static inline uint64_t crng_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* The i-th 64-bit draw of the stream with this key. */
static inline uint64_t crng_draw(uint64_t key, uint64_t i)
{
    return crng_mix64(key + (i + 1) * CRNG_GOLDEN);
}

/* 32-bit uniform number of element i (two elements share one 64-bit draw). */
static inline uint32_t crng_u32(uint64_t key, uint64_t i)
{
    return (uint32_t)(crng_draw(key, i >> 1) >> ((i & 1) * 32));
}

/* Uniform double in [0, 1) with 53 random bits (one full draw). */
static inline double crng_uniform53(uint64_t key, uint64_t i)
{
    return (double)(crng_draw(key, i) >> 11) * 0x1.0p-53;
}

uint64_t crng_key(uint64_t seed, uint64_t rank, uint64_t step, uint64_t stream);

#endif

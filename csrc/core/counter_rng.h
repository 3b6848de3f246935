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
 * The per-element quantizers (QSGD) use a second, 32-bit-lane form that
 * vectorizes (crng_u32 below: two rounds of a bijective 32-bit mixer over
 * the counter and the key); samplers and ZipML use the 64-bit draws.
 *
 * The inline functions are SCALEML_HD (arith/hd.h): the CUDA kernels draw
 * the same numbers as the CPU kernels.
 */
#ifndef SCALEML_COUNTER_RNG_H
#define SCALEML_COUNTER_RNG_H

#include <stdint.h>

#include "arith/hd.h"

#define CRNG_GOLDEN UINT64_C(0x9e3779b97f4a7c15)

SCALEML_HD uint64_t crng_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* The i-th 64-bit draw of the stream with this key. */
SCALEML_HD uint64_t crng_draw(uint64_t key, uint64_t i)
{
    return crng_mix64(key + (i + 1) * CRNG_GOLDEN);
}

/* lowbias32 (C. Wellons): a bijective 32-bit mixer with two multiplies. */
SCALEML_HD uint32_t crng_mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= UINT32_C(0x7feb352d);
    x ^= x >> 15;
    x *= UINT32_C(0x846ca68b);
    x ^= x >> 16;
    return x;
}

/* Per-element 32-bit uniforms for the vectorized quantizers: element i of a
 * stream takes crng_mix32(crng_mix32(lo32(i) ^ k0) + k1) with k0 = lo32(key)
 * and k1 = hi32(key) ^ (hi32(i) * golden): only 32-bit lane arithmetic, so the
 * loops using it vectorize. */
SCALEML_HD uint32_t crng_k1(uint64_t key, uint64_t i)
{
    return (uint32_t)(key >> 32) ^ ((uint32_t)(i >> 32) * UINT32_C(0x9e3779b9));
}

SCALEML_HD uint32_t crng_u32_lanes(uint32_t k0, uint32_t k1, uint32_t lo)
{
    return crng_mix32(crng_mix32(lo ^ k0) + k1);
}

SCALEML_HD uint32_t crng_u32(uint64_t key, uint64_t i)
{
    return crng_u32_lanes((uint32_t)key, crng_k1(key, i), (uint32_t)i);
}

/* Function clones for the hot loops: an AVX2 version chosen at load
 * time (ifunc), the baseline otherwise. Results are identical in every clone
 * (no reassociation of floating point sums). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SCALEML_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SCALEML_CLONES
#endif

/* Uniform double in [0, 1) with 53 random bits (one full draw). */
SCALEML_HD double crng_uniform53(uint64_t key, uint64_t i)
{
    return (double)(crng_draw(key, i) >> 11) * 0x1.0p-53;
}

#ifndef __CUDACC__
uint64_t crng_key(uint64_t seed, uint64_t rank, uint64_t step, uint64_t stream);
#endif

#endif

/*
 * One definition of the kernels' arithmetic for the host and the GPU.
 *
 * The headers of csrc/arith/ hold the per-element and per-bucket math of the
 * compression methods. They compile as C11 (the CPU kernels of csrc/compress/
 * include them) and as CUDA C++ (the kernels of csrc/cuda/ include them),
 * where SCALEML_HD makes each function __host__ __device__. So the CPU test
 * suite runs, bit for bit, the arithmetic the GPU runs; a CUDA file adds only
 * the parallel decomposition (grid-stride loops, block reductions,
 * compaction) around these functions.
 *
 * Rules for these headers: no floating-point reassociation (sums run in the
 * one order written here), no libc beyond what CUDA device code has (memcpy,
 * fabs, sqrt, nextafterf, isfinite), fixed-width integer types only.
 */
#ifndef SCALEML_ARITH_HD_H
#define SCALEML_ARITH_HD_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define SCALEML_HD static inline __host__ __device__
#else
#define SCALEML_HD static inline
#endif

/* Bit patterns of floats and back (memcpy: defined behaviour in C and CUDA). */
SCALEML_HD uint32_t arith_f32_bits(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    return b;
}

SCALEML_HD float arith_f32_from_bits(uint32_t b)
{
    float x;
    memcpy(&x, &b, 4);
    return x;
}

SCALEML_HD uint64_t arith_f64_bits(double x)
{
    uint64_t b;
    memcpy(&b, &x, 8);
    return b;
}

SCALEML_HD double arith_f64_from_bits(uint64_t b)
{
    double x;
    memcpy(&x, &b, 8);
    return x;
}

#endif

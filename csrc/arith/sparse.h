/*
 * The per-element rules of the sparse scans, shared by the CPU kernels
 * (core/dense_scan.c, and the index check of compress/topk.c's decoder), the
 * CUDA kernels (cuda/sparse.cu, cuda/topk.cu) and their host emulation
 * (arith/sparse_gpuref.c).
 *
 * - A non-zero is a value that compares unequal to 0: NaN counts (it must
 *   reach the sum, as in MPI), +0.0 and -0.0 do not. On bit patterns: the
 *   magnitude bits are not all 0. A negative zero is the sign bit alone.
 * - An index stream (TopK payloads, scatter-add input) is valid when every
 *   index is < n and each is larger than the one before it.
 * - Ordered compaction (the GPU's extract and TopK's emit) works in tiles of
 *   ARITH_COMPACT_TILE elements: per-tile counts, their exclusive prefix sum,
 *   then each element's slot is its tile's offset plus the count before it
 *   inside the tile, in index order.
 */
#ifndef SCALEML_ARITH_SPARSE_H
#define SCALEML_ARITH_SPARSE_H

#include <stdint.h>

#include "arith/hd.h"

/* Elements per compaction tile: 256 threads x 16 consecutive elements each. */
#define ARITH_COMPACT_THREADS 256
#define ARITH_COMPACT_ITEMS 16
#define ARITH_COMPACT_TILE (ARITH_COMPACT_THREADS * ARITH_COMPACT_ITEMS)

/* The non-zero test on values, taken on their bits: the same as v != 0 in
 * IEEE arithmetic, and unchanged by flush-to-zero or denormals-are-zero modes
 * (a build with --use_fast_math, a process that set DAZ): a denormal is a
 * non-zero everywhere. (Vectorizes in the CPU loops like the float compare.) */
SCALEML_HD int arith_sparse_nonzero_f32(float v) { return (arith_f32_bits(v) & UINT32_C(0x7fffffff)) != 0; }
SCALEML_HD int arith_sparse_nonzero_f64(double v) { return (arith_f64_bits(v) & UINT64_C(0x7fffffffffffffff)) != 0; }

/* The same test on bit patterns, and the negative-zero test. */
SCALEML_HD int arith_sparse_nonzero_bits32(uint32_t b) { return (b & UINT32_C(0x7fffffff)) != 0; }
SCALEML_HD int arith_sparse_nonzero_bits64(uint64_t b) { return (b & UINT64_C(0x7fffffffffffffff)) != 0; }
SCALEML_HD int arith_sparse_negzero_bits32(uint32_t b) { return b == UINT32_C(0x80000000); }
SCALEML_HD int arith_sparse_negzero_bits64(uint64_t b) { return b == UINT64_C(0x8000000000000000); }

/* Entry j of an index stream: in range and strictly after entry j - 1 (prev). */
SCALEML_HD int arith_sparse_index_ok(uint64_t j, uint64_t prev, uint64_t index, uint64_t n)
{
    return index < n && (j == 0 || prev < index);
}

#endif

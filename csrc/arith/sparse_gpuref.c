/*
 * Host emulation of cuda/sparse.cu, for the CPU tests only: the same phases
 * on host memory with the shared tests of arith/sparse.h:
 *   - counts: per-"thread" counts over a grid-stride split, summed per block
 *     and then over the blocks (integer sums);
 *   - extract: per-tile non-zero counts, their exclusive sums, then per tile
 *     the exclusive scan over its threads and each thread's elements in
 *     order, dropping slots at or past the capacity;
 *   - scatter-add: the whole index stream checked first, then one add per entry.
 * tests/test_gpu_arith_topk_sparse.py compares the results with the CPU
 * kernels (core/dense_scan.c, and dense[index] += value).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_gpuref_topk_sparse.h"
#include "arith/sparse.h"
#include "core/errors.h"

/* The launch shape the CUDA count uses for n elements (cuda/runtime.h: 256 threads, at most 65535 blocks). */
#define GPUREF_THREADS 256
static uint64_t gpuref_blocks(uint64_t n)
{
    uint64_t b = (n + GPUREF_THREADS - 1) / GPUREF_THREADS;
    if (b < 1) b = 1;
    if (b > 65535) b = 65535;
    return b;
}

static int gpuref_check_widths(int value_bytes, int index_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (index_bytes != 4 && index_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "index_bytes must be 4 or 8, got %d", index_bytes);
    return SCALEML_OK;
}

static uint64_t gpuref_bits(const void *p, int value_bytes, uint64_t i)
{
    if (value_bytes == 4) {
        uint32_t b;
        memcpy(&b, (const uint8_t *)p + 4 * i, 4);
        return b;
    }
    uint64_t b;
    memcpy(&b, (const uint8_t *)p + 8 * i, 8);
    return b;
}

/* The value test on the value itself (count and extract). */
static int gpuref_nonzero(const void *p, int value_bytes, uint64_t i)
{
    if (value_bytes == 4) {
        float v;
        memcpy(&v, (const uint8_t *)p + 4 * i, 4);
        return arith_sparse_nonzero_f32(v);
    }
    double v;
    memcpy(&v, (const uint8_t *)p + 8 * i, 8);
    return arith_sparse_nonzero_f64(v);
}

static void gpuref_count(const void *values, uint64_t n, int value_bytes, int signed_zeros, uint64_t *count,
                         uint64_t *negative_zeros)
{
    uint64_t blocks = gpuref_blocks(n), stride = blocks * GPUREF_THREADS;
    uint64_t total_c = 0, total_z = 0;
    for (uint64_t b = 0; b < blocks; b++) {
        uint64_t block_c = 0, block_z = 0;
        for (uint64_t th = 0; th < GPUREF_THREADS; th++) {
            uint64_t c = 0, z = 0;
            for (uint64_t i = b * GPUREF_THREADS + th; i < n; i += stride) {
                if (signed_zeros) {
                    uint64_t bits = gpuref_bits(values, value_bytes, i);
                    c += value_bytes == 4 ? arith_sparse_nonzero_bits32((uint32_t)bits)
                                          : arith_sparse_nonzero_bits64(bits);
                    z += value_bytes == 4 ? arith_sparse_negzero_bits32((uint32_t)bits)
                                          : arith_sparse_negzero_bits64(bits);
                } else {
                    c += gpuref_nonzero(values, value_bytes, i);
                }
            }
            block_c += c;
            block_z += z;
        }
        total_c += block_c;
        total_z += block_z;
    }
    *count = total_c;
    if (negative_zeros) *negative_zeros = total_z;
}

int scaleml_gpuref_count_nonzeros(const void *values, uint64_t n, int value_bytes, uint64_t *count)
{
    int rc = gpuref_check_widths(value_bytes, 4);
    if (rc) return rc;
    gpuref_count(values, n, value_bytes, 0, count, NULL);
    return SCALEML_OK;
}

int scaleml_gpuref_count_nonzeros_signed(const void *values, uint64_t n, int value_bytes, uint64_t *count,
                                         uint64_t *negative_zeros)
{
    int rc = gpuref_check_widths(value_bytes, 4);
    if (rc) return rc;
    gpuref_count(values, n, value_bytes, 1, count, negative_zeros);
    return SCALEML_OK;
}

int scaleml_gpuref_extract_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes, void *indices,
                                    void *out_values, uint64_t capacity, uint64_t *written)
{
    int rc = gpuref_check_widths(value_bytes, index_bytes);
    if (rc) return rc;
    if (n == 0 || capacity == 0) {
        *written = 0;
        return SCALEML_OK;
    }
    uint64_t tiles = (n + ARITH_COMPACT_TILE - 1) / ARITH_COMPACT_TILE;
    uint64_t *tile_off = malloc(tiles * sizeof *tile_off);
    if (!tile_off) return scaleml_fail(SCALEML_ERR_NOMEM, "extract_nonzeros: out of memory");
    /* tile counts and their exclusive sums */
    uint64_t total = 0;
    for (uint64_t b = 0; b < tiles; b++) {
        uint64_t c = 0;
        for (uint64_t i = b * ARITH_COMPACT_TILE; i < n && i < (b + 1) * ARITH_COMPACT_TILE; i++)
            c += gpuref_nonzero(values, value_bytes, i);
        tile_off[b] = total;
        total += c;
    }
    /* per tile: the block scan, then each thread's elements */
    for (uint64_t b = 0; b < tiles; b++) {
        uint64_t before[ARITH_COMPACT_THREADS], run = 0;
        for (unsigned th = 0; th < ARITH_COMPACT_THREADS; th++) {
            uint64_t c = 0;
            for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
                uint64_t i = b * ARITH_COMPACT_TILE + (uint64_t)th * ARITH_COMPACT_ITEMS + j;
                if (i < n) c += gpuref_nonzero(values, value_bytes, i);
            }
            before[th] = run;
            run += c;
        }
        for (unsigned th = 0; th < ARITH_COMPACT_THREADS; th++) {
            uint64_t slot = tile_off[b] + before[th];
            for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
                uint64_t i = b * ARITH_COMPACT_TILE + (uint64_t)th * ARITH_COMPACT_ITEMS + j;
                if (i >= n || slot >= capacity) break;
                if (gpuref_nonzero(values, value_bytes, i)) {
                    if (index_bytes == 4) {
                        uint32_t i32 = (uint32_t)i;
                        memcpy((uint8_t *)indices + 4 * slot, &i32, 4);
                    } else {
                        memcpy((uint8_t *)indices + 8 * slot, &i, 8);
                    }
                    memcpy((uint8_t *)out_values + (size_t)value_bytes * slot,
                           (const uint8_t *)values + (size_t)value_bytes * i, (size_t)value_bytes);
                    slot++;
                }
            }
        }
    }
    free(tile_off);
    *written = total < capacity ? total : capacity;
    return SCALEML_OK;
}

static uint64_t gpuref_index(const void *indices, int index_bytes, uint64_t j)
{
    if (index_bytes == 4) {
        uint32_t v;
        memcpy(&v, (const uint8_t *)indices + 4 * j, 4);
        return v;
    }
    uint64_t v;
    memcpy(&v, (const uint8_t *)indices + 8 * j, 8);
    return v;
}

int scaleml_gpuref_scatter_add(const void *indices, int index_bytes, const void *values, int value_bytes,
                               uint64_t count, void *dense, uint64_t n)
{
    int rc = gpuref_check_widths(value_bytes, index_bytes);
    if (rc) return rc;
    int bad = 0;
    for (uint64_t j = 0; j < count; j++) {
        uint64_t prev = j > 0 ? gpuref_index(indices, index_bytes, j - 1) : 0;
        bad |= !arith_sparse_index_ok(j, prev, gpuref_index(indices, index_bytes, j), n);
    }
    if (bad)
        return scaleml_fail(SCALEML_ERR_MALFORMED,
                            "scatter_add: an index out of range (n = %llu) or not strictly increasing",
                            (unsigned long long)n);
    for (uint64_t j = 0; j < count; j++) {
        uint64_t i = gpuref_index(indices, index_bytes, j);
        if (value_bytes == 4) {
            float a, v;
            memcpy(&a, (uint8_t *)dense + 4 * i, 4);
            memcpy(&v, (const uint8_t *)values + 4 * j, 4);
            a = a + v;
            memcpy((uint8_t *)dense + 4 * i, &a, 4);
        } else {
            double a, v;
            memcpy(&a, (uint8_t *)dense + 8 * i, 8);
            memcpy(&v, (const uint8_t *)values + 8 * j, 8);
            a = a + v;
            memcpy((uint8_t *)dense + 8 * i, &a, 8);
        }
    }
    return SCALEML_OK;
}

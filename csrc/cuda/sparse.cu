/*
 * Sparse scans on the GPU: scaleml_cuda_count_nonzeros,
 * scaleml_cuda_count_nonzeros_signed, scaleml_cuda_extract_nonzeros and
 * scaleml_cuda_scatter_add (declared in cuda/api_sparse.h).
 *
 * The per-element rules (the non-zero and negative-zero tests, the index
 * stream check) are those of arith/sparse.h, which the CPU kernels
 * (core/dense_scan.c) run too. This file adds the parallel decomposition
 * only; arith/sparse_gpuref.c runs the same phases on the host for the CPU
 * tests:
 *   - counts: grid-stride per-thread counts, a block reduction, one 64-bit
 *     atomic add per block (integer sums: any order gives the same total);
 *   - extract: the ordered compaction of arith/sparse.h: per-tile counts of
 *     non-zeros, their exclusive sum (cub::DeviceScan), then a block scan in
 *     each tile gives every non-zero its slot; slots at or past the capacity
 *     are dropped, so the output is the first `capacity` non-zeros in index
 *     order, as on the CPU;
 *   - scatter-add: a check of the whole index stream (in range, strictly
 *     increasing) with a device flag, then one thread per entry adds its value:
 *     the indices are unique, so no atomics are needed and each sum is the
 *     CPU's dense[i] + value.
 */
#include <stddef.h>
#include <stdint.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include "arith/sparse.h"
#include "cuda/runtime.h"

extern "C" {
#include "cuda/api_sparse.h"
}

namespace {

/* The shared tests for each value type. */
template <typename VT> struct SparseOps;
template <> struct SparseOps<float> {
    typedef uint32_t bits_t;
    __host__ __device__ static int nonzero(float v) { return arith_sparse_nonzero_f32(v); }
    __host__ __device__ static int nonzero_bits(uint32_t b) { return arith_sparse_nonzero_bits32(b); }
    __host__ __device__ static int negzero_bits(uint32_t b) { return arith_sparse_negzero_bits32(b); }
};
template <> struct SparseOps<double> {
    typedef uint64_t bits_t;
    __host__ __device__ static int nonzero(double v) { return arith_sparse_nonzero_f64(v); }
    __host__ __device__ static int nonzero_bits(uint64_t b) { return arith_sparse_nonzero_bits64(b); }
    __host__ __device__ static int negzero_bits(uint64_t b) { return arith_sparse_negzero_bits64(b); }
};


int check_widths(int value_bytes, int index_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (index_bytes != 4 && index_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "index_bytes must be 4 or 8, got %d", index_bytes);
    return SCALEML_OK;
}

/* counts[0] += non-zeros; with `signed_zeros`, counts[1] += -0.0 values (both on the bit patterns). */
template <typename VT>
__global__ void count_kernel(const VT *x, uint64_t n, int signed_zeros, unsigned long long *counts)
{
    typedef typename SparseOps<VT>::bits_t BT;
    typedef cub::BlockReduce<unsigned long long, SCALEML_CUDA_THREADS> Reduce;
    __shared__ typename Reduce::TempStorage tmp;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    unsigned long long c = 0, z = 0;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (signed_zeros) {
            BT b = ((const BT *)x)[i];
            c += SparseOps<VT>::nonzero_bits(b);
            z += SparseOps<VT>::negzero_bits(b);
        } else {
            c += SparseOps<VT>::nonzero(x[i]);
        }
    }
    unsigned long long block_c = Reduce(tmp).Sum(c);
    __syncthreads(); /* tmp is reused */
    unsigned long long block_z = Reduce(tmp).Sum(z);
    if (threadIdx.x == 0) {
        if (block_c) atomicAdd(&counts[0], block_c);
        if (block_z) atomicAdd(&counts[1], block_z);
    }
}

template <typename VT>
int count_nonzeros(const VT *x, uint64_t n, int signed_zeros, uint64_t *count, uint64_t *negative_zeros,
                   cudaStream_t s)
{
    DeviceTemp counts_mem(s);
    TEMP_ALLOC(counts_mem, 2 * sizeof(unsigned long long), "count_nonzeros: counters");
    unsigned long long *counts = (unsigned long long *)counts_mem.ptr;
    SCALEML_CUDA_TRY(cudaMemsetAsync(counts, 0, 2 * sizeof *counts, s), "count_nonzeros: counters");
    count_kernel<VT><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>(x, n, signed_zeros, counts);
    SCALEML_CUDA_TRY(cudaGetLastError(), "count_nonzeros: kernel");
    unsigned long long host[2] = {0, 0};
    SCALEML_CUDA_TRY(cudaMemcpyAsync(host, counts, sizeof host, cudaMemcpyDeviceToHost, s), "count_nonzeros: counters");
    SCALEML_CUDA_TRY(cudaStreamSynchronize(s), "count_nonzeros");
    *count = host[0];
    if (negative_zeros) *negative_zeros = host[1];
    return SCALEML_OK;
}

/* This thread's ARITH_COMPACT_ITEMS consecutive elements of its tile. */
__device__ inline uint64_t thread_base(void)
{
    return (uint64_t)blockIdx.x * ARITH_COMPACT_TILE + (uint64_t)threadIdx.x * ARITH_COMPACT_ITEMS;
}

template <typename VT>
__global__ void __launch_bounds__(ARITH_COMPACT_THREADS)
    tile_count_kernel(const VT *x, uint64_t n, unsigned long long *tile_nnz)
{
    typedef cub::BlockReduce<unsigned long long, ARITH_COMPACT_THREADS> Reduce;
    __shared__ typename Reduce::TempStorage tmp;
    const uint64_t base = thread_base();
    unsigned long long c = 0;
    for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
        uint64_t i = base + j;
        if (i < n) c += SparseOps<VT>::nonzero(x[i]);
    }
    unsigned long long total = Reduce(tmp).Sum(c);
    if (threadIdx.x == 0) tile_nnz[blockIdx.x] = total;
}

__global__ void total_kernel(const unsigned long long *tile_nnz, const unsigned long long *tile_off, uint64_t tiles,
                             unsigned long long *total)
{
    *total = tile_off[tiles - 1] + tile_nnz[tiles - 1];
}

template <typename VT, typename IT>
__global__ void __launch_bounds__(ARITH_COMPACT_THREADS)
    extract_kernel(const VT *x, uint64_t n, const unsigned long long *tile_off, IT *out_idx, VT *out_val,
                   uint64_t capacity)
{
    typedef typename SparseOps<VT>::bits_t BT;
    typedef cub::BlockScan<unsigned long long, ARITH_COMPACT_THREADS> Scan;
    __shared__ typename Scan::TempStorage tmp;
    const uint64_t base = thread_base();
    VT v[ARITH_COMPACT_ITEMS];
    unsigned long long c = 0;
    for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
        uint64_t i = base + j;
        v[j] = i < n ? x[i] : (VT)0;
        c += i < n && SparseOps<VT>::nonzero(v[j]);
    }
    unsigned long long before;
    Scan(tmp).ExclusiveSum(c, before);
    uint64_t slot = tile_off[blockIdx.x] + before;
    for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
        uint64_t i = base + j;
        if (i >= n || slot >= capacity) break;
        if (SparseOps<VT>::nonzero(v[j])) {
            out_idx[slot] = (IT)i;
            /* the bits as read (a NaN's payload is kept, as the CPU's copy does) */
            ((BT *)out_val)[slot] = ((const BT *)x)[i];
            slot++;
        }
    }
}

template <typename VT, typename IT>
int extract_nonzeros(const VT *x, uint64_t n, IT *indices, VT *out_values, uint64_t capacity, uint64_t *written,
                     cudaStream_t s)
{
    if (n == 0 || capacity == 0) {
        *written = 0;
        return SCALEML_OK;
    }
    const uint64_t tiles = (n + ARITH_COMPACT_TILE - 1) / ARITH_COMPACT_TILE;
    DeviceTemp tile_mem(s);
    TEMP_ALLOC(tile_mem, (2 * tiles + 1) * sizeof(unsigned long long), "extract_nonzeros: tile counts");
    unsigned long long *tile_nnz = (unsigned long long *)tile_mem.ptr, *tile_off = tile_nnz + tiles,
                       *total = tile_off + tiles;
    tile_count_kernel<VT><<<(unsigned)tiles, ARITH_COMPACT_THREADS, 0, s>>>(x, n, tile_nnz);
    SCALEML_CUDA_TRY(cudaGetLastError(), "extract_nonzeros: tile counts");
    size_t scan_bytes = 0;
    SCALEML_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, tile_nnz, tile_off, (int64_t)tiles, s),
                     "extract_nonzeros: scan size");
    DeviceTemp scan_mem(s);
    TEMP_ALLOC(scan_mem, scan_bytes, "extract_nonzeros: scan");
    SCALEML_CUDA_TRY(cub::DeviceScan::ExclusiveSum(scan_mem.ptr, scan_bytes, tile_nnz, tile_off, (int64_t)tiles, s),
                     "extract_nonzeros: scan");
    total_kernel<<<1, 1, 0, s>>>(tile_nnz, tile_off, tiles, total);
    extract_kernel<VT, IT><<<(unsigned)tiles, ARITH_COMPACT_THREADS, 0, s>>>(x, n, tile_off, indices, out_values,
                                                                           capacity);
    SCALEML_CUDA_TRY(cudaGetLastError(), "extract_nonzeros: kernel");
    unsigned long long host_total = 0;
    SCALEML_CUDA_TRY(cudaMemcpyAsync(&host_total, total, sizeof host_total, cudaMemcpyDeviceToHost, s),
                     "extract_nonzeros: total");
    SCALEML_CUDA_TRY(cudaStreamSynchronize(s), "extract_nonzeros");
    *written = host_total < capacity ? host_total : capacity;
    return SCALEML_OK;
}

template <typename IT>
__global__ void index_check_kernel(const IT *idx, uint64_t count, uint64_t n, unsigned int *flag)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    int bad = 0;
    for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < count; j += stride) {
        uint64_t prev = j > 0 ? (uint64_t)idx[j - 1] : 0;
        bad |= !arith_sparse_index_ok(j, prev, idx[j], n);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1u);
}

template <typename IT, typename VT>
__global__ void scatter_add_kernel(const IT *idx, const VT *val, uint64_t count, VT *dense)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < count; j += stride)
        dense[idx[j]] = dense[idx[j]] + val[j];
}

template <typename IT, typename VT>
int scatter_add(const IT *idx, const VT *val, uint64_t count, VT *dense, uint64_t n, cudaStream_t s)
{
    if (count == 0) return SCALEML_OK;
    DeviceTemp flag_mem(s);
    TEMP_ALLOC(flag_mem, sizeof(unsigned int), "scatter_add: flag");
    unsigned int *flag = (unsigned int *)flag_mem.ptr;
    SCALEML_CUDA_TRY(cudaMemsetAsync(flag, 0, sizeof *flag, s), "scatter_add: flag");
    index_check_kernel<IT><<<scaleml_cuda_blocks(count), SCALEML_CUDA_THREADS, 0, s>>>(idx, count, n, flag);
    SCALEML_CUDA_TRY(cudaGetLastError(), "scatter_add: index check");
    unsigned int f = 0;
    SCALEML_CUDA_TRY(cudaMemcpyAsync(&f, flag, sizeof f, cudaMemcpyDeviceToHost, s), "scatter_add: flag");
    SCALEML_CUDA_TRY(cudaStreamSynchronize(s), "scatter_add: index check");
    if (f)
        return scaleml_cuda_fail(SCALEML_ERR_MALFORMED,
                                 "scatter_add: an index out of range (n = %llu) or not strictly increasing",
                                 (unsigned long long)n);
    scatter_add_kernel<IT, VT><<<scaleml_cuda_blocks(count), SCALEML_CUDA_THREADS, 0, s>>>(idx, val, count, dense);
    SCALEML_CUDA_TRY(cudaGetLastError(), "scatter_add: kernel");
    return scaleml_cuda_check(cudaStreamSynchronize(s), "scatter_add");
}

} // namespace

extern "C" int scaleml_cuda_count_nonzeros(const void *values, uint64_t n, int value_bytes, uint64_t *count,
                                           uintptr_t stream)
{
    int rc = check_widths(value_bytes, 4);
    if (rc) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    return value_bytes == 4 ? count_nonzeros<float>((const float *)values, n, 0, count, nullptr, s)
                            : count_nonzeros<double>((const double *)values, n, 0, count, nullptr, s);
}

extern "C" int scaleml_cuda_count_nonzeros_signed(const void *values, uint64_t n, int value_bytes, uint64_t *count,
                                                  uint64_t *negative_zeros, uintptr_t stream)
{
    int rc = check_widths(value_bytes, 4);
    if (rc) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    return value_bytes == 4 ? count_nonzeros<float>((const float *)values, n, 1, count, negative_zeros, s)
                            : count_nonzeros<double>((const double *)values, n, 1, count, negative_zeros, s);
}

extern "C" int scaleml_cuda_extract_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes,
                                             void *indices, void *out_values, uint64_t capacity, uint64_t *written,
                                             uintptr_t stream)
{
    int rc = check_widths(value_bytes, index_bytes);
    if (rc) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    if (value_bytes == 4)
        return index_bytes == 4 ? extract_nonzeros<float, uint32_t>((const float *)values, n, (uint32_t *)indices,
                                                                    (float *)out_values, capacity, written, s)
                                : extract_nonzeros<float, uint64_t>((const float *)values, n, (uint64_t *)indices,
                                                                    (float *)out_values, capacity, written, s);
    return index_bytes == 4 ? extract_nonzeros<double, uint32_t>((const double *)values, n, (uint32_t *)indices,
                                                                 (double *)out_values, capacity, written, s)
                            : extract_nonzeros<double, uint64_t>((const double *)values, n, (uint64_t *)indices,
                                                                 (double *)out_values, capacity, written, s);
}

extern "C" int scaleml_cuda_scatter_add(const void *indices, int index_bytes, const void *values, int value_bytes,
                                        uint64_t count, void *dense, uint64_t n, uintptr_t stream)
{
    int rc = check_widths(value_bytes, index_bytes);
    if (rc) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    if (value_bytes == 4)
        return index_bytes == 4 ? scatter_add<uint32_t, float>((const uint32_t *)indices, (const float *)values, count,
                                                               (float *)dense, n, s)
                                : scatter_add<uint64_t, float>((const uint64_t *)indices, (const float *)values, count,
                                                               (float *)dense, n, s);
    return index_bytes == 4 ? scatter_add<uint32_t, double>((const uint32_t *)indices, (const double *)values, count,
                                                            (double *)dense, n, s)
                            : scatter_add<uint64_t, double>((const uint64_t *)indices, (const double *)values, count,
                                                            (double *)dense, n, s);
}

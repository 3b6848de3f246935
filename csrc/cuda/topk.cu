/*
 * TopK on the GPU: scaleml_cuda_topk_encode, scaleml_cuda_topk_decode and
 * scaleml_cuda_topk_decode_add (declared in cuda/api_topk.h).
 *
 * The arithmetic (keys, NaN/Inf test, the threshold and tie rule, the slot of
 * a sent entry, sample positions and quantile rank, the radix bin walk, the
 * payload layout, the index-stream check) is that of arith/topk.h and
 * arith/sparse.h, which the CPU kernel (compress/topk.c) runs too. This file
 * adds the parallel decomposition only; arith/topk_gpuref.c runs the same
 * phases on the host for the CPU tests:
 *   1. threshold: a radix select over the keys, 8 bits per pass from the top
 *      (a histogram of the keys that match the digits chosen so far, then the
 *      shared bin walk in one thread), over x (exact mode) or over the keys
 *      gathered at the sampler's positions (approximate mode, rank ks);
 *   2. tile counts: per tile of ARITH_COMPACT_TILE elements, the keys above
 *      and equal to the threshold, and the NaN/Inf flag; an exclusive prefix
 *      sum of the tile counts (cub::DeviceScan);
 *   3. emit: a block scan inside each tile gives every element the keys above
 *      and equal to the threshold before it, hence whether it is sent and its
 *      slot (arith_topk_slot): indices come out strictly increasing, as on the
 *      CPU; the residual is written in the same pass by the element's thread.
 * All counts are integers, so the result does not depend on the launch shape.
 */
#include <stddef.h>
#include <stdint.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include "arith/sparse.h"
#include "arith/topk.h"
#include "cuda/runtime.h"

extern "C" {
#include "cuda/api_topk.h"
}

static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "64-bit counters");

namespace {

/* The shared functions for the key type of each value type. */
template <typename KT> struct TopkOps;
template <> struct TopkOps<uint32_t> {
    static constexpr unsigned key_bits = 32;
    __host__ __device__ static uint32_t key(uint32_t b) { return arith_topk_key32(b); }
    __host__ __device__ static int bad(uint32_t k) { return arith_topk_bad32(k); }
    __host__ __device__ static int send(uint32_t k, uint32_t t, uint64_t eq, uint64_t take)
    {
        return arith_topk_send32(k, t, eq, take);
    }
    __host__ __device__ static uint32_t approx_t(uint32_t t) { return arith_topk_approx_t32(t); }
};
template <> struct TopkOps<uint64_t> {
    static constexpr unsigned key_bits = 64;
    __host__ __device__ static uint64_t key(uint64_t b) { return arith_topk_key64(b); }
    __host__ __device__ static int bad(uint64_t k) { return arith_topk_bad64(k); }
    __host__ __device__ static int send(uint64_t k, uint64_t t, uint64_t eq, uint64_t take)
    {
        return arith_topk_send64(k, t, eq, take);
    }
    __host__ __device__ static uint64_t approx_t(uint64_t t) { return arith_topk_approx_t64(t); }
};

/* The selection's state, in device memory between the kernels. */
struct TopkState {
    unsigned long long hist[ARITH_TOPK_RADIX_BINS];
    unsigned long long prefix;      /* digits of the threshold chosen so far */
    unsigned long long need;        /* keys still to take among the matching ones */
    unsigned long long above;       /* keys found above the threshold */
    unsigned long long t;           /* the threshold key */
    unsigned long long take_eq;     /* keys equal to t to send (ARITH_TOPK_ALL: all) */
    unsigned long long total_above; /* from the tile counts */
    unsigned long long total_eq;
    unsigned int bad;               /* NaN or Inf seen */
};


__global__ void state_init_kernel(TopkState *st, uint64_t need)
{
    for (unsigned b = 0; b < ARITH_TOPK_RADIX_BINS; b++) st->hist[b] = 0;
    st->prefix = 0;
    st->need = need;
    st->above = 0;
    st->t = 0;
    st->take_eq = 0;
    st->total_above = 0;
    st->total_eq = 0;
    st->bad = 0;
}

/* Histogram of the digit at `shift` of the keys that match the digits chosen so far. */
template <typename KT>
__global__ void radix_hist_kernel(const KT *bits, uint64_t count, unsigned shift, TopkState *st)
{
    __shared__ unsigned int h[ARITH_TOPK_RADIX_BINS];
    for (unsigned b = threadIdx.x; b < ARITH_TOPK_RADIX_BINS; b += blockDim.x) h[b] = 0;
    __syncthreads();
    const uint64_t prefix = st->prefix;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        uint64_t key = TopkOps<KT>::key(bits[i]);
        if (arith_topk_matches(key, prefix, shift)) atomicAdd(&h[arith_topk_digit(key, shift)], 1u);
    }
    __syncthreads();
    for (unsigned b = threadIdx.x; b < ARITH_TOPK_RADIX_BINS; b += blockDim.x)
        if (h[b]) atomicAdd(&st->hist[b], (unsigned long long)h[b]);
}

/* The bin holding the need-th largest matching key (one thread), and a cleared histogram for the next pass. */
__global__ void radix_pick_kernel(TopkState *st, unsigned shift)
{
    uint64_t above;
    unsigned bin = arith_topk_pick_bin((const uint64_t *)st->hist, ARITH_TOPK_RADIX_BINS - 1, st->need, &above);
    st->above += above;
    st->need -= above;
    st->prefix |= (unsigned long long)bin << shift;
    for (unsigned b = 0; b < ARITH_TOPK_RADIX_BINS; b++) st->hist[b] = 0;
}

/* The threshold and how many equal keys to send, from the finished selection. */
template <typename KT>
__global__ void threshold_kernel(TopkState *st, int approximate)
{
    KT t = (KT)st->prefix;
    st->t = approximate ? TopkOps<KT>::approx_t(t) : t;
    st->take_eq = approximate ? ARITH_TOPK_ALL : st->need;
}

/* Keys at the sampler's positions (their raw bits; the key is taken when selecting). */
template <typename KT>
__global__ void sample_gather_kernel(const KT *x, uint64_t n, uint64_t sample, uint64_t rng_key, KT *out)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < sample; j += stride)
        out[j] = x[arith_topk_sample_pos(rng_key, j, n)];
}

/* This thread's ARITH_COMPACT_ITEMS consecutive elements of its tile. */
__device__ inline uint64_t thread_base(void)
{
    return (uint64_t)blockIdx.x * ARITH_COMPACT_TILE + (uint64_t)threadIdx.x * ARITH_COMPACT_ITEMS;
}

/* Per tile: keys above and equal to the threshold (packed: above << 32 | equal, each <= the tile size). */
template <typename KT>
__global__ void __launch_bounds__(ARITH_COMPACT_THREADS)
    tile_count_kernel(const KT *x, uint64_t n, TopkState *st, unsigned long long *tile_above,
                      unsigned long long *tile_eq)
{
    typedef cub::BlockReduce<unsigned long long, ARITH_COMPACT_THREADS> Reduce;
    __shared__ typename Reduce::TempStorage tmp;
    const KT t = (KT)st->t;
    const uint64_t base = thread_base();
    unsigned long long above = 0, eq = 0;
    int bad = 0;
    for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
        uint64_t i = base + j;
        if (i < n) {
            KT key = TopkOps<KT>::key(x[i]);
            bad |= TopkOps<KT>::bad(key);
            above += key > t;
            eq += key == t;
        }
    }
    unsigned long long packed = Reduce(tmp).Sum((above << 32) | eq);
    if (threadIdx.x == 0) {
        tile_above[blockIdx.x] = packed >> 32;
        tile_eq[blockIdx.x] = packed & 0xffffffffu;
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(&st->bad, 1u);
}

/* Totals of the tile counts from their exclusive sums. */
__global__ void totals_kernel(TopkState *st, const unsigned long long *tile_above,
                              const unsigned long long *above_off, const unsigned long long *tile_eq,
                              const unsigned long long *eq_off, uint64_t tiles)
{
    st->total_above = above_off[tiles - 1] + tile_above[tiles - 1];
    st->total_eq = eq_off[tiles - 1] + tile_eq[tiles - 1];
}

/* Ordered compaction: slot of every sent entry, the payload's indices and values, the residual. */
template <typename KT>
__global__ void __launch_bounds__(ARITH_COMPACT_THREADS)
    emit_kernel(const KT *x, uint64_t n, const TopkState *st, const unsigned long long *above_off,
                const unsigned long long *eq_off, uint32_t *out_idx, KT *out_val, KT *residual)
{
    typedef cub::BlockScan<unsigned long long, ARITH_COMPACT_THREADS> Scan;
    __shared__ typename Scan::TempStorage tmp;
    const KT t = (KT)st->t;
    const uint64_t take_eq = st->take_eq;
    const uint64_t base = thread_base();
    KT bits[ARITH_COMPACT_ITEMS];
    unsigned long long above = 0, eq = 0;
    for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
        uint64_t i = base + j;
        bits[j] = i < n ? x[i] : (KT)0;
        KT key = TopkOps<KT>::key(bits[j]);
        above += i < n && key > t;
        eq += i < n && key == t;
    }
    unsigned long long before;
    Scan(tmp).ExclusiveSum((above << 32) | eq, before);
    uint64_t above_before = above_off[blockIdx.x] + (before >> 32);
    uint64_t eq_before = eq_off[blockIdx.x] + (before & 0xffffffffu);
    for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {
        uint64_t i = base + j;
        if (i >= n) break;
        KT key = TopkOps<KT>::key(bits[j]);
        int send = TopkOps<KT>::send(key, t, eq_before, take_eq);
        if (send) {
            uint64_t slot = arith_topk_slot(above_before, eq_before, take_eq);
            out_idx[slot] = (uint32_t)i;
            out_val[slot] = bits[j];
        }
        /* residual may be x: an element is read and written by this thread only */
        if (residual && (send || residual != x)) residual[i] = send ? (KT)0 : bits[j];
        above_before += key > t;
        eq_before += key == t;
    }
}

/* Any NaN/Inf (k = 0: nothing is selected, the input is still checked). */
template <typename KT>
__global__ void finite_kernel(const KT *x, uint64_t n, unsigned int *bad)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    int b = 0;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        b |= TopkOps<KT>::bad(TopkOps<KT>::key(x[i]));
    if (__syncthreads_or(b) && threadIdx.x == 0) atomicOr(bad, 1u);
}

/* The threshold of both modes: the k_sel-th largest of count keys (raw bits at `bits`), in st. */
template <typename KT>
int radix_select(const KT *bits, uint64_t count, uint64_t k_sel, int approximate, TopkState *st, cudaStream_t s)
{
    state_init_kernel<<<1, 1, 0, s>>>(st, k_sel);
    for (int shift = (int)TopkOps<KT>::key_bits - ARITH_TOPK_RADIX_BITS; shift >= 0; shift -= ARITH_TOPK_RADIX_BITS) {
        radix_hist_kernel<KT><<<scaleml_cuda_blocks(count), SCALEML_CUDA_THREADS, 0, s>>>(bits, count,
                                                                                        (unsigned)shift, st);
        radix_pick_kernel<<<1, 1, 0, s>>>(st, (unsigned)shift);
    }
    threshold_kernel<KT><<<1, 1, 0, s>>>(st, approximate);
    return scaleml_cuda_check(cudaGetLastError(), "TopK: threshold kernels");
}

template <typename KT>
int topk_encode(const KT *x, uint64_t n, uint64_t k, int approximate, uint64_t sample, uint64_t rng_key,
                uint8_t *out, size_t cap, size_t *written, KT *residual, cudaStream_t s)
{
    const int value_bytes = (int)sizeof(KT);
    DeviceTemp state_mem(s);
    TEMP_ALLOC(state_mem, sizeof(TopkState), "TopK: state");
    TopkState *st = (TopkState *)state_mem.ptr;
    TopkState host_st;
    if (k == 0) {
        /* nothing sent: every entry stays in the residual (still reject NaN/Inf) */
        state_init_kernel<<<1, 1, 0, s>>>(st, 0);
        finite_kernel<KT><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>(x, n, &st->bad);
        SCALEML_CUDA_TRY(cudaGetLastError(), "TopK: finite check");
        SCALEML_CUDA_TRY(cudaMemcpyAsync(&host_st, st, sizeof host_st, cudaMemcpyDeviceToHost, s), "TopK: state");
        SCALEML_CUDA_TRY(cudaStreamSynchronize(s), "TopK: finite check");
        if (host_st.bad) return scaleml_cuda_fail(SCALEML_ERR_ARG, "TopK: non-finite value (NaN or Inf) in the input");
        size_t need = arith_topk_payload_bytes(0, value_bytes);
        *written = need;
        if (cap < need) return scaleml_cuda_fail(SCALEML_ERR_TOO_LARGE, "TopK: output capacity %zu < %zu bytes", cap, need);
        SCALEML_CUDA_TRY(cudaMemsetAsync(out, 0, 8, s), "TopK: header");
        if (residual && residual != x && n)
            SCALEML_CUDA_TRY(cudaMemcpyAsync(residual, x, n * sizeof(KT), cudaMemcpyDeviceToDevice, s), "TopK: residual");
        return scaleml_cuda_check(cudaStreamSynchronize(s), "TopK: encode");
    }
    /* 1. the threshold (approximate with sample >= n is exact, as on the CPU) */
    int exact = !approximate || sample >= n;
    DeviceTemp sample_mem(s);
    if (exact) {
        int rc = radix_select<KT>(x, n, k, 0, st, s);
        if (rc) return rc;
    } else {
        TEMP_ALLOC(sample_mem, sample * sizeof(KT), "TopK: sample");
        KT *keys = (KT *)sample_mem.ptr;
        sample_gather_kernel<KT><<<scaleml_cuda_blocks(sample), SCALEML_CUDA_THREADS, 0, s>>>(x, n, sample, rng_key,
                                                                                            keys);
        int rc = radix_select<KT>(keys, sample, arith_topk_sample_rank(sample, k, n), 1, st, s);
        if (rc) return rc;
    }
    /* 2. tile counts and their exclusive sums */
    const uint64_t tiles = (n + ARITH_COMPACT_TILE - 1) / ARITH_COMPACT_TILE;
    DeviceTemp tile_mem(s);
    TEMP_ALLOC(tile_mem, 4 * tiles * sizeof(unsigned long long), "TopK: tile counts");
    unsigned long long *tile_above = (unsigned long long *)tile_mem.ptr;
    unsigned long long *tile_eq = tile_above + tiles, *above_off = tile_eq + tiles, *eq_off = above_off + tiles;
    tile_count_kernel<KT><<<(unsigned)tiles, ARITH_COMPACT_THREADS, 0, s>>>(x, n, st, tile_above, tile_eq);
    SCALEML_CUDA_TRY(cudaGetLastError(), "TopK: tile counts");
    size_t scan_bytes = 0;
    SCALEML_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, tile_above, above_off, (int64_t)tiles, s),
                     "TopK: scan size");
    DeviceTemp scan_mem(s);
    TEMP_ALLOC(scan_mem, scan_bytes, "TopK: scan");
    SCALEML_CUDA_TRY(cub::DeviceScan::ExclusiveSum(scan_mem.ptr, scan_bytes, tile_above, above_off, (int64_t)tiles, s),
                     "TopK: scan");
    SCALEML_CUDA_TRY(cub::DeviceScan::ExclusiveSum(scan_mem.ptr, scan_bytes, tile_eq, eq_off, (int64_t)tiles, s),
                     "TopK: scan");
    totals_kernel<<<1, 1, 0, s>>>(st, tile_above, above_off, tile_eq, eq_off, tiles);
    SCALEML_CUDA_TRY(cudaGetLastError(), "TopK: totals");
    SCALEML_CUDA_TRY(cudaMemcpyAsync(&host_st, st, sizeof host_st, cudaMemcpyDeviceToHost, s), "TopK: state");
    SCALEML_CUDA_TRY(cudaStreamSynchronize(s), "TopK: selection");
    if (host_st.bad) return scaleml_cuda_fail(SCALEML_ERR_ARG, "TopK: non-finite value (NaN or Inf) in the input");
    uint64_t count = exact ? k : host_st.total_above + host_st.total_eq;
    if (exact && (host_st.total_above != host_st.above || host_st.take_eq < 1 ||
                  host_st.take_eq > host_st.total_eq || host_st.total_above + host_st.take_eq != k))
        return scaleml_cuda_fail(SCALEML_ERR_DEVICE, "TopK: inconsistent selection (%llu above, %llu of %llu equal, k = %llu)",
                                 host_st.total_above, host_st.take_eq, host_st.total_eq, (unsigned long long)k);
    /* 3. the payload and the residual */
    size_t need = arith_topk_payload_bytes(count, value_bytes);
    *written = need;
    if (cap < need) return scaleml_cuda_fail(SCALEML_ERR_TOO_LARGE, "TopK: output capacity %zu < %zu bytes", cap, need);
    SCALEML_CUDA_TRY(cudaMemcpyAsync(out, &count, 8, cudaMemcpyHostToDevice, s), "TopK: header");
    size_t voff = arith_topk_value_offset(count);
    if (voff > 8 + count * 4) SCALEML_CUDA_TRY(cudaMemsetAsync(out + 8 + count * 4, 0, voff - 8 - count * 4, s), "TopK: padding");
    emit_kernel<KT><<<(unsigned)tiles, ARITH_COMPACT_THREADS, 0, s>>>(x, n, st, above_off, eq_off, (uint32_t *)(out + 8),
                                                                    (KT *)(out + voff), residual);
    SCALEML_CUDA_TRY(cudaGetLastError(), "TopK: emit");
    return scaleml_cuda_check(cudaStreamSynchronize(s), "TopK: encode");
}

/* Validation of a payload's entries: bit 1 an index out of range or order, bit 2 a non-finite value. */
template <typename KT>
__global__ void decode_check_kernel(const uint32_t *idx, const KT *val, uint64_t count, uint64_t n,
                                    unsigned int *flag)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    unsigned f = 0;
    for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < count; j += stride) {
        uint64_t prev = j > 0 ? idx[j - 1] : 0;
        if (!arith_sparse_index_ok(j, prev, idx[j], n)) f |= 1u;
        if (TopkOps<KT>::bad(TopkOps<KT>::key(val[j]))) f |= 2u;
    }
    if (f) atomicOr(flag, f);
}

template <typename KT>
__global__ void decode_scatter_kernel(const uint32_t *idx, const KT *val, uint64_t count, KT *out)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < count; j += stride) out[idx[j]] = val[j];
}

/* Indices are unique (validated), so no two threads add into one entry. */
template <typename VT>
__global__ void decode_add_kernel(const uint32_t *idx, const VT *val, uint64_t count, VT *acc)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < count; j += stride)
        acc[idx[j]] = acc[idx[j]] + val[j];
}

/* The CPU's scaleml_topk_layout on a device payload; *count and the offsets on success. */
template <typename KT>
int topk_layout(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t *count, size_t *value_offset, cudaStream_t s)
{
    const int value_bytes = (int)sizeof(KT);
    if (n > (UINT64_C(1) << 32))
        return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "TopK payload for n = %llu > 2^32 (indices are uint32)",
                                 (unsigned long long)n);
    if (bytes < 8) return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "TopK payload truncated (%zu bytes)", bytes);
    if ((uintptr_t)buf % 8) return scaleml_cuda_fail(SCALEML_ERR_ARG, "TopK: device payload not 8-byte aligned");
    uint64_t c = 0;
    SCALEML_CUDA_TRY(cudaMemcpyAsync(&c, buf, 8, cudaMemcpyDeviceToHost, s), "TopK: payload count");
    SCALEML_CUDA_TRY(cudaStreamSynchronize(s), "TopK: payload count");
    if (!arith_topk_count_ok(c, bytes, n, value_bytes))
        return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "TopK payload: count %llu does not match %zu bytes (n = %llu)",
                                 (unsigned long long)c, bytes, (unsigned long long)n);
    size_t voff = arith_topk_value_offset(c);
    if (c > 0) {
        DeviceTemp flag_mem(s);
        TEMP_ALLOC(flag_mem, sizeof(unsigned int), "TopK: flag");
        unsigned int *flag = (unsigned int *)flag_mem.ptr;
        SCALEML_CUDA_TRY(cudaMemsetAsync(flag, 0, sizeof *flag, s), "TopK: flag");
        decode_check_kernel<KT><<<scaleml_cuda_blocks(c), SCALEML_CUDA_THREADS, 0, s>>>(
            (const uint32_t *)(buf + 8), (const KT *)(buf + voff), c, n, flag);
        SCALEML_CUDA_TRY(cudaGetLastError(), "TopK: payload check");
        unsigned int f = 0;
        SCALEML_CUDA_TRY(cudaMemcpyAsync(&f, flag, sizeof f, cudaMemcpyDeviceToHost, s), "TopK: flag");
        SCALEML_CUDA_TRY(cudaStreamSynchronize(s), "TopK: payload check");
        if (f & 1u) return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "TopK payload: an index out of range or order");
        if (f & 2u) return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "TopK payload: non-finite value");
    }
    *count = c;
    *value_offset = voff;
    return SCALEML_OK;
}

int check_value_bytes(int value_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    return SCALEML_OK;
}

template <typename VT, typename KT>
int topk_decode(const uint8_t *buf, size_t bytes, uint64_t n, void *dst, int add, cudaStream_t s)
{
    uint64_t c = 0;
    size_t voff = 0;
    int rc = topk_layout<KT>(buf, bytes, n, &c, &voff, s);
    if (rc) return rc;
    if (!add && n) SCALEML_CUDA_TRY(cudaMemsetAsync(dst, 0, n * sizeof(KT), s), "TopK: decode");
    if (c > 0) {
        const uint32_t *idx = (const uint32_t *)(buf + 8);
        if (add)
            decode_add_kernel<VT><<<scaleml_cuda_blocks(c), SCALEML_CUDA_THREADS, 0, s>>>(idx, (const VT *)(buf + voff),
                                                                                        c, (VT *)dst);
        else
            decode_scatter_kernel<KT><<<scaleml_cuda_blocks(c), SCALEML_CUDA_THREADS, 0, s>>>(
                idx, (const KT *)(buf + voff), c, (KT *)dst);
        SCALEML_CUDA_TRY(cudaGetLastError(), "TopK: decode");
    }
    return scaleml_cuda_check(cudaStreamSynchronize(s), "TopK: decode");
}

} // namespace

extern "C" int scaleml_cuda_topk_encode(const void *x, int value_bytes, uint64_t n, uint64_t k, int approximate,
                                        uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                                        void *residual, uintptr_t stream)
{
    int rc = check_value_bytes(value_bytes);
    if (rc) return rc;
    if (n > (UINT64_C(1) << 32))
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "TopK: n = %llu exceeds the uint32 index range", (unsigned long long)n);
    if (k > n)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "TopK: k = %llu > n = %llu", (unsigned long long)k,
                                 (unsigned long long)n);
    if (approximate && sample < 1) return scaleml_cuda_fail(SCALEML_ERR_ARG, "TopK: sample size must be >= 1");
    if ((uintptr_t)out % 8) return scaleml_cuda_fail(SCALEML_ERR_ARG, "TopK: device output not 8-byte aligned");
    cudaStream_t s = scaleml_cuda_stream(stream);
    if (value_bytes == 4)
        return topk_encode<uint32_t>((const uint32_t *)x, n, k, approximate, sample, key, out, cap, written,
                                     (uint32_t *)residual, s);
    return topk_encode<uint64_t>((const uint64_t *)x, n, k, approximate, sample, key, out, cap, written,
                                 (uint64_t *)residual, s);
}

extern "C" int scaleml_cuda_topk_decode(const uint8_t *buf, size_t bytes, uint64_t n, void *out, int value_bytes,
                                        uintptr_t stream)
{
    int rc = check_value_bytes(value_bytes);
    if (rc) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    return value_bytes == 4 ? topk_decode<float, uint32_t>(buf, bytes, n, out, 0, s)
                            : topk_decode<double, uint64_t>(buf, bytes, n, out, 0, s);
}

extern "C" int scaleml_cuda_topk_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, void *acc,
                                            int value_bytes, uintptr_t stream)
{
    int rc = check_value_bytes(value_bytes);
    if (rc) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    return value_bytes == 4 ? topk_decode<float, uint32_t>(buf, bytes, n, acc, 1, s)
                            : topk_decode<double, uint64_t>(buf, bytes, n, acc, 1, s);
}

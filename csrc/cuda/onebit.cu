/*
 * 1-bit SGD on the GPU: the parallel decomposition around arith/onebit.h.
 *
 * What this file adds to the shared arithmetic:
 *  - encode, phase 1 (onebit_means_kernel): 8 threads per bucket, thread j
 *    runs lane j of the bucket's sums (onebit_lane_*, the CPU's lanes in the
 *    CPU's order); the bucket's lane-0 thread combines the 8 partials from
 *    shared memory in the fixed order, writes the bucket's two means, and
 *    records the first failing bucket (atomicMin of 2 * bucket + kind);
 *  - encode, phase 2 (onebit_signs_kernel): one thread per element, a warp
 *    per 32-element word of the sign stream (__ballot_sync), whose lane 0
 *    writes the word's bytes; each thread writes its own residual. y = x +
 *    addend is recomputed in both phases, never stored, so the residual may
 *    alias the addend (each element is read before it is written);
 *  - decode: one thread per bucket validates the means (first bad bucket by
 *    atomicMin), then one thread per element writes or adds its value; on a
 *    malformed payload nothing is written.
 * Bucket sums run sequentially per lane, as on the CPU: a bucket of m values
 * costs m / 8 dependent additions in one thread (fast for the usual buckets of
 * up to a few thousand values, slow for one huge bucket).
 *
 * Entry points (csrc/cuda/api_onebit.h): scaleml_cuda_onebit_encode,
 * scaleml_cuda_onebit_encode_sum, scaleml_cuda_onebit_decode,
 * scaleml_cuda_onebit_decode_add.
 */
#include <stddef.h>
#include <stdint.h>

#include "arith/onebit.h"
#include "cuda/runtime.h"

extern "C" {
#include "cuda/api_onebit.h"
}

namespace {

/* No failing bucket (the initial value of the first-failure word). */
const unsigned long long ONEBIT_NO_FAILURE = ~0ull;
/* Buckets per block of the means kernel (8 lanes each). */
const unsigned ONEBIT_BUCKETS_PER_BLOCK = SCALEML_CUDA_THREADS / ONEBIT_LANES;

/* The shared functions by value type. */
__device__ __forceinline__ void lane_sums(const float *x, const float *addend, uint64_t len, unsigned lane,
                                          onebit_partial *p)
{
    onebit_lane_f32(x, addend, len, lane, p);
}
__device__ __forceinline__ void lane_sums(const double *x, const double *addend, uint64_t len, unsigned lane,
                                          onebit_partial *p)
{
    onebit_lane_f64(x, addend, len, lane, p);
}
__device__ __forceinline__ float input_value(const float *x, const float *addend, uint64_t i)
{
    return onebit_input_f32(x, addend, i);
}
__device__ __forceinline__ double input_value(const double *x, const double *addend, uint64_t i)
{
    return onebit_input_f64(x, addend, i);
}
__device__ __forceinline__ uint32_t sign_of(float a) { return onebit_sign_f32(a); }
__device__ __forceinline__ uint32_t sign_of(double a) { return onebit_sign_f64(a); }
__device__ __forceinline__ void value_pair(float mean_pos, float mean_neg, float *vp, float *vn)
{
    *vp = onebit_value_f32(mean_pos, mean_neg, 0);
    *vn = onebit_value_f32(mean_pos, mean_neg, 1);
}
__device__ __forceinline__ void value_pair(float mean_pos, float mean_neg, double *vp, double *vn)
{
    *vp = onebit_value_f64(mean_pos, mean_neg, 0);
    *vn = onebit_value_f64(mean_pos, mean_neg, 1);
}
__device__ __forceinline__ float residual_of(float a, float vp, float vn) { return onebit_residual_f32(a, vp, vn); }
__device__ __forceinline__ double residual_of(double a, double vp, double vn)
{
    return onebit_residual_f64(a, vp, vn);
}
__device__ __forceinline__ float decoded_value(float mean_pos, float mean_neg, uint32_t sign, float *)
{
    return onebit_value_f32(mean_pos, mean_neg, sign);
}
__device__ __forceinline__ double decoded_value(float mean_pos, float mean_neg, uint32_t sign, double *)
{
    return onebit_value_f64(mean_pos, mean_neg, sign);
}

/* Phase 1: each bucket's sums (8 lanes, one thread each), combined by the bucket's lane-0 thread, which
 * writes the means into the payload header. The loop bound is the same for every thread of a block, so
 * the barriers are reached by all. */
template <typename VT>
__global__ void onebit_means_kernel(const VT *x, const VT *addend, uint64_t n, uint64_t bucket, uint64_t nb,
                                    uint8_t *out, unsigned long long *first_failure)
{
    __shared__ onebit_partial partials[SCALEML_CUDA_THREADS];
    const unsigned lane = threadIdx.x % ONEBIT_LANES;
    for (uint64_t group = blockIdx.x; group * ONEBIT_BUCKETS_PER_BLOCK < nb; group += gridDim.x) {
        uint64_t b = group * ONEBIT_BUCKETS_PER_BLOCK + threadIdx.x / ONEBIT_LANES;
        uint64_t len = b < nb ? onebit_bucket_len(n, bucket, b) : 0;
        if (b < nb) lane_sums(x + b * bucket, addend ? addend + b * bucket : NULL, len, lane, &partials[threadIdx.x]);
        __syncthreads();
        if (b < nb && lane == 0) {
            onebit_partial total;
            float mean_pos, mean_neg;
            onebit_combine_lanes(&partials[threadIdx.x], &total);
            int rc = onebit_bucket_header(&total, len, out + b * 8, &mean_pos, &mean_neg);
            if (rc) atomicMin(first_failure, (unsigned long long)(2 * b + (rc == -2)));
        }
        __syncthreads();
    }
}

/* Phase 2: sign bits (a warp per 32-bit word of the stream) and residuals. Warps start on multiples of 32
 * (blockDim and the stride are multiples of 32), so every lane of a warp runs the same iterations. */
template <typename VT>
__global__ void onebit_signs_kernel(const VT *x, const VT *addend, uint64_t n, uint64_t bucket, uint64_t nb,
                                    uint8_t *out, VT *residual, const unsigned long long *first_failure)
{
    if (*first_failure != ONEBIT_NO_FAILURE) return; /* the encoder fails: leave the residual alone */
    const unsigned warp_lane = threadIdx.x % 32;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    uint8_t *signs = out + nb * 8;
    for (uint64_t word_start = (uint64_t)blockIdx.x * blockDim.x + (threadIdx.x - warp_lane); word_start < n;
         word_start += stride) {
        uint64_t i = word_start + warp_lane;
        uint32_t sign = 0;
        if (i < n) {
            uint64_t b = i / bucket;
            float mean_pos, mean_neg;
            onebit_load_means(out + b * 8, &mean_pos, &mean_neg);
            VT a = input_value(x, addend, i);
            sign = sign_of(a);
            if (residual) {
                VT vp, vn;
                value_pair(mean_pos, mean_neg, &vp, &vn);
                residual[i] = residual_of(a, vp, vn);
            }
        }
        uint32_t word = __ballot_sync(0xffffffffu, sign);
        if (warp_lane == 0)
            for (unsigned k = 0; k < 4 && word_start + 8 * k < n; k++)
                signs[word_start / 8 + k] = (uint8_t)(word >> (8 * k));
    }
}

/* Decode, phase 1: the first bucket whose means the decoder rejects. */
__global__ void onebit_check_kernel(const uint8_t *buf, uint64_t nb, unsigned long long *first_failure)
{
    for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += (uint64_t)gridDim.x * blockDim.x) {
        float mean_pos, mean_neg;
        onebit_load_means(buf + b * 8, &mean_pos, &mean_neg);
        if (!onebit_means_valid(mean_pos, mean_neg)) atomicMin(first_failure, (unsigned long long)b);
    }
}

/* Decode, phase 2: each element's value, written (ADD false) or added (ADD true). */
template <typename VT, bool ADD>
__global__ void onebit_decode_kernel(const uint8_t *buf, uint64_t n, uint64_t bucket, uint64_t nb, VT *out,
                                     const unsigned long long *first_failure)
{
    if (*first_failure != ONEBIT_NO_FAILURE) return;
    const uint8_t *signs = buf + nb * 8;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t b = i / bucket;
        float mean_pos, mean_neg;
        onebit_load_means(buf + b * 8, &mean_pos, &mean_neg);
        uint32_t sign = (signs[i / 8] >> (i % 8)) & 1u;
        VT v = decoded_value(mean_pos, mean_neg, sign, out);
        out[i] = ADD ? out[i] + v : v;
    }
}

unsigned blocks_for_buckets(uint64_t nb)
{
    return scaleml_cuda_blocks((nb + ONEBIT_BUCKETS_PER_BLOCK - 1) / ONEBIT_BUCKETS_PER_BLOCK * SCALEML_CUDA_THREADS);
}

template <typename VT>
cudaError_t launch_encode(const void *x, const void *addend, uint64_t n, uint64_t bucket, uint8_t *out,
                          void *residual, unsigned long long *first_failure, cudaStream_t s)
{
    uint64_t nb = onebit_bucket_count(n, bucket);
    onebit_means_kernel<VT><<<blocks_for_buckets(nb), SCALEML_CUDA_THREADS, 0, s>>>(
        (const VT *)x, (const VT *)addend, n, bucket, nb, out, first_failure);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    onebit_signs_kernel<VT><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>(
        (const VT *)x, (const VT *)addend, n, bucket, nb, out, (VT *)residual, first_failure);
    return cudaGetLastError();
}

template <typename VT>
cudaError_t launch_decode(const uint8_t *buf, uint64_t n, uint64_t bucket, void *out, int add,
                          unsigned long long *first_failure, cudaStream_t s)
{
    uint64_t nb = onebit_bucket_count(n, bucket);
    onebit_check_kernel<<<scaleml_cuda_blocks(nb), SCALEML_CUDA_THREADS, 0, s>>>(buf, nb, first_failure);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    if (add)
        onebit_decode_kernel<VT, true><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>(
            buf, n, bucket, nb, (VT *)out, first_failure);
    else
        onebit_decode_kernel<VT, false><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>(
            buf, n, bucket, nb, (VT *)out, first_failure);
    return cudaGetLastError();
}

/* Run the kernels with a device word for the first failure (all ones when none), synchronise, and hand
 * that word back; the word is freed on every path. */
template <typename Launch>
int run_with_failure_word(cudaStream_t s, const char *what, unsigned long long *failure, Launch launch)
{
    unsigned long long *d_failure = NULL;
    SCALEML_CUDA_TRY(cudaMallocAsync((void **)&d_failure, sizeof *d_failure, s), what);
    cudaError_t err = cudaMemsetAsync(d_failure, 0xff, sizeof *d_failure, s);
    if (err == cudaSuccess) err = launch(d_failure);
    if (err == cudaSuccess) err = cudaMemcpyAsync(failure, d_failure, sizeof *failure, cudaMemcpyDeviceToHost, s);
    cudaError_t err_free = cudaFreeAsync(d_failure, s);
    cudaError_t err_sync = cudaStreamSynchronize(s);
    if (err == cudaSuccess) err = err_free;
    if (err == cudaSuccess) err = err_sync;
    return scaleml_cuda_check(err, what);
}

int encode_checked(const void *x, const void *addend, int value_bytes, uint64_t n, uint64_t bucket, uint8_t *out,
                   size_t cap, void *residual, uintptr_t stream)
{
    if (bucket < 1) return scaleml_cuda_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (cap < onebit_payload_bytes(n, bucket))
        return scaleml_cuda_fail(SCALEML_ERR_TOO_LARGE, "1-bit: output capacity %zu bytes is too small", cap);
    if (n == 0) return SCALEML_OK;
    cudaStream_t s = scaleml_cuda_stream(stream);
    unsigned long long failure = ONEBIT_NO_FAILURE;
    int rc = run_with_failure_word(s, "1-bit encode", &failure, [&](unsigned long long *d_failure) {
        return value_bytes == 4 ? launch_encode<float>(x, addend, n, bucket, out, residual, d_failure, s)
                                : launch_encode<double>(x, addend, n, bucket, out, residual, d_failure, s);
    });
    if (rc) return rc;
    if (failure == ONEBIT_NO_FAILURE) return SCALEML_OK;
    if (failure % 2 == 0)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "1-bit: non-finite value (NaN or Inf) in the input");
    return scaleml_cuda_fail(SCALEML_ERR_ARG, "1-bit: bucket mean exceeds the float32 range");
}

int decode_checked(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out, int value_bytes,
                   int add, uintptr_t stream)
{
    if (bucket < 1) return scaleml_cuda_fail(SCALEML_ERR_ARG, "1-bit bucket size must be >= 1");
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (bytes != onebit_payload_bytes(n, bucket))
        return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "1-bit payload has %zu bytes, expected %zu", bytes,
                                 (size_t)onebit_payload_bytes(n, bucket));
    if (n == 0) return SCALEML_OK;
    cudaStream_t s = scaleml_cuda_stream(stream);
    unsigned long long failure = ONEBIT_NO_FAILURE;
    int rc = run_with_failure_word(s, "1-bit decode", &failure, [&](unsigned long long *d_failure) {
        return value_bytes == 4 ? launch_decode<float>(buf, n, bucket, out, add, d_failure, s)
                                : launch_decode<double>(buf, n, bucket, out, add, d_failure, s);
    });
    if (rc) return rc;
    if (failure == ONEBIT_NO_FAILURE) return SCALEML_OK;
    return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "1-bit payload: invalid reconstruction values in bucket %llu",
                             failure);
}

} // namespace

extern "C" int scaleml_cuda_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket, uint8_t *out,
                                          size_t cap, void *residual, uintptr_t stream)
{
    return encode_checked(x, NULL, value_bytes, n, bucket, out, cap, residual, stream);
}

extern "C" int scaleml_cuda_onebit_encode_sum(const void *x, const void *addend, int value_bytes, uint64_t n,
                                              uint64_t bucket, uint8_t *out, size_t cap, void *residual,
                                              uintptr_t stream)
{
    return encode_checked(x, addend, value_bytes, n, bucket, out, cap, residual, stream);
}

extern "C" int scaleml_cuda_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out,
                                          int value_bytes, uintptr_t stream)
{
    return decode_checked(buf, bytes, n, bucket, out, value_bytes, 0, stream);
}

extern "C" int scaleml_cuda_onebit_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket,
                                              void *acc, int value_bytes, uintptr_t stream)
{
    return decode_checked(buf, bytes, n, bucket, acc, value_bytes, 1, stream);
}

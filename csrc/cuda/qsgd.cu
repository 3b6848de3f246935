/*
 * QSGD (fixed format) on the GPU: the parallel decomposition around
 * arith/qsgd.h. arith/qsgd_gpuref.c runs these same phases on the host for
 * the CPU tests (tests/test_gpu_arith_qsgd.py).
 *
 * What this file adds to the shared arithmetic:
 *  - encode, phase 1 (qsgd_norm_kernel): 8 consecutive threads of a warp per
 *    bucket, thread j runs lane j of the bucket's L2 sum of squares or max
 *    key (qsgd_sumsq_lane_* / qsgd_maxkey_lane_*, the CPU's lanes in the
 *    CPU's order); the 8 partials go to the group's lane-0 thread by warp
 *    shuffles, which combines them in the fixed order (and, only for a bucket
 *    whose finite squares overflow, runs the rescaled sum alone), rounds the
 *    norm up to float32, stores the bucket's scale and ORs the norm's 32 bits
 *    in at their offset; a failing bucket records its error slot (atomicMin:
 *    the first failing bucket decides, as on the CPU);
 *  - encode, phase 2 (qsgd_codes_kernel): one thread per element computes its
 *    (bits + 1)-bit code and ORs it (atomicOr) into the zeroed 32-bit words of
 *    the payload at its closed-form bit offset (fields need not be byte
 *    aligned: any bucket). The words are the caller's buffer when it is
 *    4-byte aligned (its last partial word lives in a temporary word, copied
 *    after), else a temporary word buffer copied after;
 *  - decode (qsgd_check_norms_kernel, then qsgd_decode_kernel): one thread per
 *    bucket validates its norm (a device flag); then, unless the flag is set,
 *    one thread per element reads its norm and field byte by byte and stores
 *    or adds its value, so a malformed payload writes nothing.
 * Bucket sums run sequentially per lane, as on the CPU: a bucket of m values
 * costs m / 8 dependent additions in one thread (fast for the usual buckets of
 * up to a few thousand values, slow for one huge bucket).
 *
 * Entry points (csrc/cuda/api_qsgd.h): scaleml_cuda_qsgd_encode,
 * scaleml_cuda_qsgd_decode, scaleml_cuda_qsgd_decode_add.
 */
#include <stddef.h>
#include <stdint.h>

#include "arith/qsgd.h"
#include "cuda/runtime.h"

extern "C" {
#include "api_compress.h"
#include "cuda/api_qsgd.h"
}

namespace {

const uint64_t QSGD_MAX_BUCKET = UINT64_C(1) << 31;
/* No failing bucket (the initial value of the error slot). */
const unsigned long long QSGD_NO_FAILURE = ~0ull;
const unsigned FULL_WARP = 0xffffffffu;

/* The payload's 32-bit little-endian words: [0, main_words) in `main`, the rest in `tail`. */
struct WordSink {
    uint32_t *main;
    uint64_t main_words;
    uint32_t *tail;
};

__device__ __forceinline__ void sink_or(const WordSink &sink, uint64_t word, uint32_t bits)
{
    if (!bits) return;
    uint32_t *p = word < sink.main_words ? sink.main + word : sink.tail + (word - sink.main_words);
    atomicOr(p, bits);
}

/* A field of up to 32 bits at bitpos: it touches word bitpos / 32 and maybe the next one. */
__device__ __forceinline__ void sink_put(const WordSink &sink, uint64_t bitpos, uint32_t value)
{
    uint64_t window = qsgd_field_window(value, bitpos);
    sink_or(sink, bitpos >> 5, (uint32_t)window);
    sink_or(sink, (bitpos >> 5) + 1, (uint32_t)(window >> 32));
}

/* The shared functions by value type. */
__device__ __forceinline__ double lane_sumsq(const float *v, uint64_t len, unsigned lane)
{
    return qsgd_sumsq_lane_f32(v, len, lane);
}
__device__ __forceinline__ double lane_sumsq(const double *v, uint64_t len, unsigned lane)
{
    return qsgd_sumsq_lane_f64(v, len, lane);
}
__device__ __forceinline__ unsigned long long lane_maxkey(const float *v, uint64_t len, unsigned lane)
{
    return qsgd_maxkey_lane_f32(v, len, lane);
}
__device__ __forceinline__ unsigned long long lane_maxkey(const double *v, uint64_t len, unsigned lane)
{
    return qsgd_maxkey_lane_f64(v, len, lane);
}
__device__ __forceinline__ int wire_norm_l2(const float *v, uint64_t len, double t, float *wire)
{
    return qsgd_wire_norm_l2_f32(v, len, t, wire);
}
__device__ __forceinline__ int wire_norm_l2(const double *v, uint64_t len, double t, float *wire)
{
    return qsgd_wire_norm_l2_f64(v, len, t, wire);
}
__device__ __forceinline__ int wire_norm_max(const float *, unsigned long long key, float *wire)
{
    return qsgd_wire_norm_max_f32((uint32_t)key, wire);
}
__device__ __forceinline__ int wire_norm_max(const double *, unsigned long long key, float *wire)
{
    return qsgd_wire_norm_max_f64(key, wire);
}
/* The bucket's scale as a double (a float32 scale converts exactly, and back). */
__device__ __forceinline__ double bucket_scale(const float *, float norm, uint32_t s)
{
    return (double)qsgd_scale_f32(norm, s);
}
__device__ __forceinline__ double bucket_scale(const double *, float norm, uint32_t s)
{
    return qsgd_scale_f64(norm, s);
}
__device__ __forceinline__ uint32_t fixed_code(float x, double scale, uint32_t bits, uint64_t key, uint64_t i)
{
    return qsgd_fixed_code_f32(x, (float)scale, bits, key, i);
}
__device__ __forceinline__ uint32_t fixed_code(double x, double scale, uint32_t bits, uint64_t key, uint64_t i)
{
    return qsgd_fixed_code_f64(x, scale, bits, key, i);
}
__device__ __forceinline__ int fixed_element(const uint8_t *buf, uint64_t i, uint64_t bucket, uint32_t bits, float *v)
{
    return qsgd_fixed_element_f32(buf, i, bucket, bits, v);
}
__device__ __forceinline__ int fixed_element(const uint8_t *buf, uint64_t i, uint64_t bucket, uint32_t bits, double *v)
{
    return qsgd_fixed_element_f64(buf, i, bucket, bits, v);
}
__device__ __forceinline__ float add_value(float a, float b)
{
    return qsgd_add_f32(a, b);
}
__device__ __forceinline__ double add_value(double a, double b)
{
    return qsgd_add_f64(a, b);
}

/* Phase 1 of encode: item = 8 * bucket + lane, 8 consecutive threads per bucket (blockDim is a multiple of 32,
 * so a group never straddles warps, and item % 8 is the thread's lane in its group). The loop bound depends
 * on the block only: whole warps iterate together, as the shuffles need. scales[b] = 0 marks a bucket whose
 * codes are all zero (norm 0) or that failed. */
template <typename T>
__global__ void qsgd_norm_kernel(const T *x, uint64_t n, uint64_t bucket, uint32_t bits, int norm, double *scales,
                                 WordSink sink, unsigned long long *error_slot)
{
    const uint64_t items = qsgd_buckets(n, bucket) * 8;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    const unsigned group = threadIdx.x & 31u & ~7u; /* warp lane of this group's lane 0 */
    const uint32_t s = (UINT32_C(1) << bits) - 1;
    for (uint64_t base = (uint64_t)blockIdx.x * blockDim.x; base < items; base += stride) {
        const uint64_t item = base + threadIdx.x;
        const bool active = item < items;
        const uint64_t b = item / 8;
        const unsigned lane = (unsigned)(item % 8);
        uint64_t start = 0, len = 0;
        double part = 0;
        unsigned long long key = 0;
        if (active) {
            start = b * bucket;
            len = n - start < bucket ? n - start : bucket;
            if (norm == SCALEML_NORM_MAX) key = lane_maxkey(x + start, len, lane);
            else part = lane_sumsq(x + start, len, lane);
        }
        double parts[8];
        unsigned long long max_key = 0;
        for (unsigned j = 0; j < 8; j++) {
            parts[j] = __shfl_sync(FULL_WARP, part, (int)(group + j));
            unsigned long long k = __shfl_sync(FULL_WARP, key, (int)(group + j));
            max_key = k > max_key ? k : max_key;
        }
        if (!active || lane != 0) continue;
        const T *v = x + start;
        float wire = 0;
        int bad = norm == SCALEML_NORM_MAX ? wire_norm_max(v, max_key, &wire)
                                           : wire_norm_l2(v, len, qsgd_sumsq_combine(parts), &wire);
        if (bad) {
            atomicMin(error_slot, (unsigned long long)qsgd_error_slot(b, bad));
            scales[b] = 0;
            continue;
        }
        scales[b] = wire == 0 ? 0 : bucket_scale(v, wire, s);
        sink_put(sink, qsgd_norm_bit(b, bucket, bits), arith_f32_bits(wire));
    }
}

/* Phase 2 of encode: one thread per element. */
template <typename T>
__global__ void qsgd_codes_kernel(const T *x, uint64_t n, uint64_t bucket, uint32_t bits, uint64_t key,
                                  const double *scales, WordSink sink)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double scale = scales[i / bucket];
        if (scale == 0) continue;
        sink_put(sink, qsgd_field_bit(i, bucket, bits), fixed_code(x[i], scale, bits, key, i));
    }
}

/* Decode, phase 1: one thread per bucket. */
__global__ void qsgd_check_norms_kernel(const uint8_t *buf, uint64_t n, uint64_t bucket, uint32_t bits, int *bad)
{
    const uint64_t nb = qsgd_buckets(n, bucket);
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += stride)
        if (!qsgd_norm_valid(qsgd_fixed_norm(buf, b, bucket, bits))) atomicOr(bad, 1);
}

/* Decode, phase 2: one thread per element, nothing when phase 1 found an invalid norm. */
template <typename T, bool ACCUMULATE>
__global__ void qsgd_decode_kernel(const uint8_t *buf, uint64_t n, uint64_t bucket, uint32_t bits, T *out,
                                   const int *bad)
{
    if (*bad) return;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T v;
        if (fixed_element(buf, i, bucket, bits, &v)) continue; /* checked in phase 1 */
        out[i] = ACCUMULATE ? add_value(out[i], v) : v;
    }
}

/* The CPU's argument checks, and the fixed format only. */
int check_args(uint32_t bits, uint64_t bucket, int format, int value_bytes)
{
    if (bits < 1 || bits > 8) return scaleml_cuda_fail(SCALEML_ERR_ARG, "QSGD bits must be in 1..8, got %u", bits);
    if (bucket < 1 || bucket > QSGD_MAX_BUCKET)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "QSGD bucket size must be in 1..2^31, got %llu",
                                 (unsigned long long)bucket);
    if (format != SCALEML_QSGD_FIXED && format != SCALEML_QSGD_ELIAS)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "unknown QSGD format %d", format);
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (format == SCALEML_QSGD_ELIAS)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "QSGD: the Elias format is variable-length and runs on the CPU "
                                                  "only; the GPU takes SCALEML_QSGD_FIXED");
    return SCALEML_OK;
}

/* Enqueue encode's work on st; temp holds the scales (nb doubles), the error slot and the words outside out. */
template <typename T>
int encode_enqueue(const T *x, uint64_t n, uint32_t bits, uint64_t bucket, int norm, uint64_t key, uint8_t *out,
                   uint64_t bytes, bool aligned, uint8_t *temp, unsigned long long *error_host, cudaStream_t st)
{
    const uint64_t nb = qsgd_buckets(n, bucket), all_words = (bytes + 3) / 4;
    double *scales = (double *)(void *)temp;
    unsigned long long *error_slot = (unsigned long long *)(void *)(temp + nb * 8);
    uint32_t *words = (uint32_t *)(void *)(temp + nb * 8 + 8);
    WordSink sink;
    sink.main = aligned ? (uint32_t *)(void *)out : words;
    sink.main_words = aligned ? bytes / 4 : all_words;
    sink.tail = words;
    SCALEML_CUDA_TRY(cudaMemsetAsync(error_slot, 0xff, 8, st), "QSGD encode: cudaMemsetAsync");
    SCALEML_CUDA_TRY(cudaMemsetAsync(words, 0, aligned ? 4 : all_words * 4, st), "QSGD encode: cudaMemsetAsync");
    if (aligned && bytes >= 4)
        SCALEML_CUDA_TRY(cudaMemsetAsync(out, 0, bytes / 4 * 4, st), "QSGD encode: cudaMemsetAsync");
    qsgd_norm_kernel<T><<<scaleml_cuda_blocks(nb * 8), SCALEML_CUDA_THREADS, 0, st>>>(x, n, bucket, bits, norm,
                                                                                       scales, sink, error_slot);
    SCALEML_CUDA_TRY(cudaGetLastError(), "QSGD encode: norm kernel launch");
    qsgd_codes_kernel<T><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, st>>>(x, n, bucket, bits, key, scales,
                                                                                   sink);
    SCALEML_CUDA_TRY(cudaGetLastError(), "QSGD encode: codes kernel launch");
    if (!aligned)
        SCALEML_CUDA_TRY(cudaMemcpyAsync(out, words, bytes, cudaMemcpyDeviceToDevice, st),
                         "QSGD encode: cudaMemcpyAsync");
    else if (bytes % 4)
        SCALEML_CUDA_TRY(cudaMemcpyAsync(out + bytes / 4 * 4, words, bytes % 4, cudaMemcpyDeviceToDevice, st),
                         "QSGD encode: cudaMemcpyAsync");
    SCALEML_CUDA_TRY(cudaMemcpyAsync(error_host, error_slot, 8, cudaMemcpyDeviceToHost, st),
                     "QSGD encode: cudaMemcpyAsync");
    return SCALEML_OK;
}

template <typename T, bool ACCUMULATE>
int decode_enqueue(const uint8_t *buf, uint64_t n, uint32_t bits, uint64_t bucket, T *out, int *bad,
                   int *bad_host, cudaStream_t st)
{
    SCALEML_CUDA_TRY(cudaMemsetAsync(bad, 0, sizeof *bad, st), "QSGD decode: cudaMemsetAsync");
    qsgd_check_norms_kernel<<<scaleml_cuda_blocks(qsgd_buckets(n, bucket)), SCALEML_CUDA_THREADS, 0, st>>>(
        buf, n, bucket, bits, bad);
    SCALEML_CUDA_TRY(cudaGetLastError(), "QSGD decode: norm check kernel launch");
    qsgd_decode_kernel<T, ACCUMULATE><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, st>>>(buf, n, bucket,
                                                                                                bits, out, bad);
    SCALEML_CUDA_TRY(cudaGetLastError(), "QSGD decode: decode kernel launch");
    SCALEML_CUDA_TRY(cudaMemcpyAsync(bad_host, bad, sizeof *bad, cudaMemcpyDeviceToHost, st),
                     "QSGD decode: cudaMemcpyAsync");
    return SCALEML_OK;
}

/* Free temp and wait for the stream; after a failed enqueue (rc != 0) only clean up, keeping rc's message. */
int finish(int rc, void *temp, cudaStream_t st, const char *what)
{
    if (rc) {
        (void)cudaFreeAsync(temp, st);
        (void)cudaStreamSynchronize(st);
        (void)cudaGetLastError();
        return rc;
    }
    rc = scaleml_cuda_check(cudaFreeAsync(temp, st), what);
    int rc_sync = scaleml_cuda_check(cudaStreamSynchronize(st), what);
    return rc ? rc : rc_sync;
}

int decode_common(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket, int format,
                  void *out, int value_bytes, bool accumulate, uintptr_t stream)
{
    int rc = check_args(bits, bucket, format, value_bytes);
    if (rc) return rc;
    const uint64_t expected = qsgd_fixed_bytes(n, bits, bucket);
    if (bytes != expected)
        return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "QSGD payload has %zu bytes, expected %llu", bytes,
                                 (unsigned long long)expected);
    if (n == 0) return SCALEML_OK;
    cudaStream_t st = scaleml_cuda_stream(stream);
    void *temp = NULL;
    SCALEML_CUDA_TRY(cudaMallocAsync(&temp, sizeof(int), st), "QSGD decode: cudaMallocAsync");
    int *bad = (int *)temp;
    int bad_host = 0;
    if (value_bytes == 4)
        rc = accumulate ? decode_enqueue<float, true>(buf, n, bits, bucket, (float *)out, bad, &bad_host, st)
                        : decode_enqueue<float, false>(buf, n, bits, bucket, (float *)out, bad, &bad_host, st);
    else
        rc = accumulate ? decode_enqueue<double, true>(buf, n, bits, bucket, (double *)out, bad, &bad_host, st)
                        : decode_enqueue<double, false>(buf, n, bits, bucket, (double *)out, bad, &bad_host, st);
    rc = finish(rc, temp, st, "QSGD decode");
    if (rc) return rc;
    if (bad_host) return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "QSGD payload holds an invalid bucket norm");
    return SCALEML_OK;
}

} // namespace

extern "C" int scaleml_cuda_qsgd_encode(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                                        int norm, int format, uint64_t key, uint8_t *out, size_t cap,
                                        size_t *written, uintptr_t stream)
{
    int rc = check_args(bits, bucket, format, value_bytes);
    if (rc) return rc;
    if (norm != SCALEML_NORM_L2 && norm != SCALEML_NORM_MAX)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "unknown QSGD norm %d", norm);
    *written = 0;
    if (n == 0) return SCALEML_OK;
    const uint64_t bytes = qsgd_fixed_bytes(n, bits, bucket);
    if (cap < bytes) {
        *written = (size_t)bytes;
        return scaleml_cuda_fail(SCALEML_ERR_TOO_LARGE, "QSGD: output capacity %zu bytes is too small", cap);
    }
    const uint64_t nb = qsgd_buckets(n, bucket);
    const bool aligned = ((uintptr_t)out & 3) == 0;
    const size_t temp_bytes = (size_t)(nb * 8 + 8 + (aligned ? 4 : (bytes + 3) / 4 * 4));
    cudaStream_t st = scaleml_cuda_stream(stream);
    void *temp = NULL;
    SCALEML_CUDA_TRY(cudaMallocAsync(&temp, temp_bytes, st), "QSGD encode: cudaMallocAsync");
    unsigned long long error_host = QSGD_NO_FAILURE;
    if (value_bytes == 4)
        rc = encode_enqueue<float>((const float *)x, n, bits, bucket, norm, key, out, bytes, aligned,
                                   (uint8_t *)temp, &error_host, st);
    else
        rc = encode_enqueue<double>((const double *)x, n, bits, bucket, norm, key, out, bytes, aligned,
                                    (uint8_t *)temp, &error_host, st);
    rc = finish(rc, temp, st, "QSGD encode");
    if (rc) return rc;
    if (error_host != QSGD_NO_FAILURE)
        return (error_host & 1) ? scaleml_cuda_fail(SCALEML_ERR_ARG, "QSGD: bucket norm exceeds the float32 range")
                                : scaleml_cuda_fail(SCALEML_ERR_ARG, "QSGD: non-finite value (NaN or Inf) in the input");
    *written = (size_t)bytes;
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_qsgd_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits,
                                        uint64_t bucket, int format, void *out, int value_bytes, uintptr_t stream)
{
    return decode_common(buf, bytes, n, bits, bucket, format, out, value_bytes, false, stream);
}

extern "C" int scaleml_cuda_qsgd_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits,
                                            uint64_t bucket, void *acc, int value_bytes, uintptr_t stream)
{
    return decode_common(buf, bytes, n, bits, bucket, SCALEML_QSGD_FIXED, acc, value_bytes, true, stream);
}

/*
 * float16 / bfloat16 casts on the GPU: the parallel decomposition around
 * arith/cast.h.
 *
 * What this file adds to the shared arithmetic: grid-stride loops with one
 * thread per element (encode, decode, decode-and-add), and a device flag
 * (atomicOr, once per thread that saw one) for rejected input or Inf/NaN
 * patterns, read after the stream is synchronised. As on the CPU every
 * element is written (or added) even when the call fails: NaN/Inf/out of
 * range input gives SCALEML_ERR_ARG with those elements written as the
 * Inf/NaN patterns, an Inf/NaN pattern in a payload gives
 * SCALEML_ERR_MALFORMED with the values decoded.
 *
 * Entry points (csrc/cuda/api_cast.h): scaleml_cuda_cast_encode,
 * scaleml_cuda_cast_decode, scaleml_cuda_cast_decode_add.
 */
#include <stddef.h>
#include <stdint.h>

#include "arith/cast.h"
#include "cuda/runtime.h"

extern "C" {
#include "cuda/api_cast.h"
}

namespace {

__device__ __forceinline__ uint16_t encode_one(float x, int format, uint32_t *bad)
{
    return cast_encode_f32(x, format, bad);
}
__device__ __forceinline__ uint16_t encode_one(double x, int format, uint32_t *bad)
{
    return cast_encode_f64(x, format, bad);
}
__device__ __forceinline__ float add_one(float acc, float decoded) { return cast_add_f32(acc, decoded); }
__device__ __forceinline__ double add_one(double acc, float decoded) { return cast_add_f64(acc, decoded); }

template <typename VT>
__global__ void cast_encode_kernel(const VT *x, uint64_t n, int format, uint16_t *out, uint32_t *flag)
{
    uint32_t bad = 0;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        out[i] = encode_one(x[i], format, &bad);
    if (bad) atomicOr(flag, 1u);
}

/* Decode (ADD false: out[i] = value in VT) or decode-and-add (ADD true: out[i] += value in VT). */
template <typename VT, bool ADD>
__global__ void cast_decode_kernel(const uint16_t *in, uint64_t n, int format, VT *out, uint32_t *flag)
{
    uint32_t bad = 0;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float f = cast_decode(in[i], format, &bad);
        out[i] = ADD ? add_one(out[i], f) : (VT)f;
    }
    if (bad) atomicOr(flag, 1u);
}

int check_args(int value_bytes, int format)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (format != SCALEML_CAST_FP16 && format != SCALEML_CAST_BF16)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "unknown cast format %d", format);
    return SCALEML_OK;
}

/* Run one kernel with a zeroed device flag, synchronise, and hand the flag back (freed on every path). */
template <typename Launch>
int run_with_flag(cudaStream_t s, const char *what, uint32_t *flag, Launch launch)
{
    uint32_t *d_flag = NULL;
    SCALEML_CUDA_TRY(cudaMallocAsync((void **)&d_flag, sizeof *d_flag, s), what);
    cudaError_t err = cudaMemsetAsync(d_flag, 0, sizeof *d_flag, s);
    if (err == cudaSuccess) {
        launch(d_flag);
        err = cudaGetLastError();
    }
    if (err == cudaSuccess) err = cudaMemcpyAsync(flag, d_flag, sizeof *flag, cudaMemcpyDeviceToHost, s);
    cudaError_t err_free = cudaFreeAsync(d_flag, s);
    cudaError_t err_sync = cudaStreamSynchronize(s);
    if (err == cudaSuccess) err = err_free;
    if (err == cudaSuccess) err = err_sync;
    return scaleml_cuda_check(err, what);
}

int decode_checked(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes, bool add,
                   uintptr_t stream)
{
    int rc = check_args(value_bytes, format);
    if (rc || n == 0) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    unsigned blocks = scaleml_cuda_blocks(n);
    uint32_t bad = 0;
    rc = run_with_flag(s, add ? "16-bit decode-and-add" : "16-bit decode", &bad, [&](uint32_t *d_flag) {
        if (value_bytes == 4 && add)
            cast_decode_kernel<float, true><<<blocks, SCALEML_CUDA_THREADS, 0, s>>>(in, n, format, (float *)out, d_flag);
        else if (value_bytes == 4)
            cast_decode_kernel<float, false><<<blocks, SCALEML_CUDA_THREADS, 0, s>>>(in, n, format, (float *)out, d_flag);
        else if (add)
            cast_decode_kernel<double, true><<<blocks, SCALEML_CUDA_THREADS, 0, s>>>(in, n, format, (double *)out, d_flag);
        else
            cast_decode_kernel<double, false><<<blocks, SCALEML_CUDA_THREADS, 0, s>>>(in, n, format, (double *)out, d_flag);
    });
    if (rc) return rc;
    if (bad) return scaleml_cuda_fail(SCALEML_ERR_MALFORMED, "16-bit payload holds Inf/NaN patterns (corrupted)");
    return SCALEML_OK;
}

} // namespace

extern "C" int scaleml_cuda_cast_encode(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out,
                                        uintptr_t stream)
{
    int rc = check_args(value_bytes, format);
    if (rc || n == 0) return rc;
    cudaStream_t s = scaleml_cuda_stream(stream);
    unsigned blocks = scaleml_cuda_blocks(n);
    uint32_t bad = 0;
    rc = run_with_flag(s, "16-bit encode", &bad, [&](uint32_t *d_flag) {
        if (value_bytes == 4)
            cast_encode_kernel<float><<<blocks, SCALEML_CUDA_THREADS, 0, s>>>((const float *)x, n, format, out, d_flag);
        else
            cast_encode_kernel<double><<<blocks, SCALEML_CUDA_THREADS, 0, s>>>((const double *)x, n, format, out, d_flag);
    });
    if (rc) return rc;
    if (bad)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "%s cast: NaN, Inf or a value beyond the format's range in the input",
                                 format == SCALEML_CAST_FP16 ? "float16" : "bfloat16");
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_cast_decode(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes,
                                        uintptr_t stream)
{
    return decode_checked(in, n, format, out, value_bytes, false, stream);
}

extern "C" int scaleml_cuda_cast_decode_add(const uint16_t *in, uint64_t n, int format, void *acc, int value_bytes,
                                            uintptr_t stream)
{
    return decode_checked(in, n, format, acc, value_bytes, true, stream);
}

/*
 * What every CUDA file of ScaleML shares: the error convention and the
 * launch shape. (C++, included by the .cu files only.)
 *
 * Entry points (the extern "C" functions declared in csrc/cuda/api_*.h) take
 * device pointers and a `uintptr_t stream` (a cudaStream_t; 0 is the legacy
 * default stream), enqueue their kernels on that stream, take temporary
 * device memory with cudaMallocAsync on it, and synchronise the stream before
 * they return, so that errors (non-finite input, out of memory) are returned
 * by the call and the bytes are ready for MPI. They return SCALEML_OK or a
 * SCALEML_ERR_* code (core/errors.h) with a message for
 * scaleml_cuda_error_message(): out of device memory is SCALEML_ERR_NOMEM,
 * any other CUDA failure SCALEML_ERR_DEVICE.
 */
#ifndef SCALEML_CUDA_RUNTIME_H
#define SCALEML_CUDA_RUNTIME_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "core/errors.h"

/* Set the per-thread message; returns code. */
int scaleml_cuda_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* SCALEML_OK when err is cudaSuccess, else the code for err with a message naming what failed
 * (the sticky error is cleared when the context survives). */
int scaleml_cuda_check(cudaError_t err, const char *what);

/* Check a call and return its code from the enclosing function on failure. */
#define SCALEML_CUDA_TRY(call, what)                     \
    do {                                                 \
        int rc_ = scaleml_cuda_check((call), (what));    \
        if (rc_) return rc_;                             \
    } while (0)

/* Threads per block, and blocks for n items of grid-stride work (at least 1, capped so that each thread
 * does several items on large inputs). */
#define SCALEML_CUDA_THREADS 256
static inline unsigned scaleml_cuda_blocks(uint64_t n)
{
    uint64_t b = (n + SCALEML_CUDA_THREADS - 1) / SCALEML_CUDA_THREADS;
    if (b < 1) b = 1;
    if (b > 65535) b = 65535;
    return (unsigned)b;
}

static inline cudaStream_t scaleml_cuda_stream(uintptr_t stream)
{
    return (cudaStream_t)stream;
}

/* Temporary device memory of an entry point, stream-ordered: freed on the stream when it goes out of scope. */
struct DeviceTemp {
    void *ptr = nullptr;
    cudaStream_t stream;
    explicit DeviceTemp(cudaStream_t s) : stream(s) {}
    DeviceTemp(const DeviceTemp &) = delete;
    DeviceTemp &operator=(const DeviceTemp &) = delete;
    ~DeviceTemp()
    {
        if (ptr) cudaFreeAsync(ptr, stream);
    }
    int alloc(size_t bytes, const char *what)
    {
        return scaleml_cuda_check(cudaMallocAsync(&ptr, bytes ? bytes : 1, stream), what);
    }
};

/* Allocate a DeviceTemp and return the error code from the enclosing function on failure. */
#define TEMP_ALLOC(temp, bytes, what)              \
    do {                                           \
        int rc_ = (temp).alloc((bytes), (what));   \
        if (rc_) return rc_;                       \
    } while (0)

#endif

/*
 * The CUDA library's runtime: the error convention of every entry point
 * (runtime.h), and the device, memory, stream and event calls the Python
 * layer's staging and dispatch need (api_runtime.h). No kernel arithmetic
 * here except the exact path's element-wise add.
 *
 * The library links CUDA's runtime statically (nvcc's default), so loading
 * it needs no libcudart and no driver: without a driver every call returns
 * SCALEML_ERR_DEVICE with CUDA's reason, and scaleml_cuda_device_count
 * reports 0 devices.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cuda/runtime.h"

extern "C" {
#include "cuda/api_runtime.h"
}

#ifndef SCALEML_CUDA_ARCHS
#define SCALEML_CUDA_ARCHS "unknown"
#endif

static thread_local char error_message[512];

int scaleml_cuda_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return code;
}

int scaleml_cuda_check(cudaError_t err, const char *what)
{
    if (err == cudaSuccess) return SCALEML_OK;
    cudaGetLastError(); /* clear a non-sticky error so later calls start clean */
    if (err == cudaErrorMemoryAllocation)
        return scaleml_cuda_fail(SCALEML_ERR_NOMEM, "device out of memory in %s: %s", what, cudaGetErrorString(err));
    return scaleml_cuda_fail(SCALEML_ERR_DEVICE, "CUDA error in %s: %s (%s)", what, cudaGetErrorString(err),
                             cudaGetErrorName(err));
}

extern "C" const char *scaleml_cuda_error_message(void) { return error_message; }

extern "C" int scaleml_cuda_build_version(void) { return CUDART_VERSION; }

extern "C" const char *scaleml_cuda_build_archs(void) { return SCALEML_CUDA_ARCHS; }

extern "C" int scaleml_cuda_device_count(int *count, const char **reason)
{
    cudaError_t err = cudaGetDeviceCount(count);
    *reason = "";
    if (err != cudaSuccess) {
        *count = 0;
        *reason = cudaGetErrorString(err);
        cudaGetLastError();
    }
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_device_info(int device, char *name, size_t cap, int *major, int *minor)
{
    cudaDeviceProp prop;
    SCALEML_CUDA_TRY(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (cap) {
        strncpy(name, prop.name, cap - 1);
        name[cap - 1] = '\0';
    }
    *major = prop.major;
    *minor = prop.minor;
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_pointer_device(uintptr_t ptr, int *device, int *is_managed)
{
    cudaPointerAttributes attr;
    SCALEML_CUDA_TRY(cudaPointerGetAttributes(&attr, (const void *)ptr), "cudaPointerGetAttributes");
    *is_managed = attr.type == cudaMemoryTypeManaged;
    *device = (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) ? attr.device : -1;
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_set_device(int device)
{
    return scaleml_cuda_check(cudaSetDevice(device), "cudaSetDevice");
}

extern "C" int scaleml_cuda_get_device(int *device)
{
    return scaleml_cuda_check(cudaGetDevice(device), "cudaGetDevice");
}

extern "C" int scaleml_cuda_malloc(size_t bytes, uintptr_t *ptr)
{
    void *p = NULL;
    SCALEML_CUDA_TRY(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
    *ptr = (uintptr_t)p;
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_free(uintptr_t ptr)
{
    return scaleml_cuda_check(cudaFree((void *)ptr), "cudaFree");
}

extern "C" int scaleml_cuda_host_alloc(size_t bytes, uintptr_t *ptr)
{
    void *p = NULL;
    SCALEML_CUDA_TRY(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable), "cudaHostAlloc");
    *ptr = (uintptr_t)p;
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_host_free(uintptr_t ptr)
{
    return scaleml_cuda_check(cudaFreeHost((void *)ptr), "cudaFreeHost");
}

extern "C" int scaleml_cuda_memcpy_async(uintptr_t dst, uintptr_t src, size_t bytes, int kind, uintptr_t stream)
{
    static const cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                            cudaMemcpyDeviceToDevice};
    if (kind < 0 || kind > 2) return scaleml_cuda_fail(SCALEML_ERR_ARG, "unknown copy kind %d", kind);
    if (!bytes) return SCALEML_OK;
    return scaleml_cuda_check(cudaMemcpyAsync((void *)dst, (const void *)src, bytes, kinds[kind],
                                              scaleml_cuda_stream(stream)),
                              "cudaMemcpyAsync");
}

extern "C" int scaleml_cuda_memset_async(uintptr_t dst, int value, size_t bytes, uintptr_t stream)
{
    if (!bytes) return SCALEML_OK;
    return scaleml_cuda_check(cudaMemsetAsync((void *)dst, value, bytes, scaleml_cuda_stream(stream)),
                              "cudaMemsetAsync");
}

extern "C" int scaleml_cuda_stream_synchronize(uintptr_t stream)
{
    return scaleml_cuda_check(cudaStreamSynchronize(scaleml_cuda_stream(stream)), "cudaStreamSynchronize");
}

extern "C" int scaleml_cuda_event_create(uintptr_t *event)
{
    cudaEvent_t e;
    SCALEML_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    *event = (uintptr_t)e;
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_event_destroy(uintptr_t event)
{
    return scaleml_cuda_check(cudaEventDestroy((cudaEvent_t)event), "cudaEventDestroy");
}

extern "C" int scaleml_cuda_event_record(uintptr_t event, uintptr_t stream)
{
    return scaleml_cuda_check(cudaEventRecord((cudaEvent_t)event, scaleml_cuda_stream(stream)), "cudaEventRecord");
}

extern "C" int scaleml_cuda_event_synchronize(uintptr_t event)
{
    return scaleml_cuda_check(cudaEventSynchronize((cudaEvent_t)event), "cudaEventSynchronize");
}

extern "C" int scaleml_cuda_stream_create(uintptr_t *stream)
{
    cudaStream_t s;
    SCALEML_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    *stream = (uintptr_t)s;
    return SCALEML_OK;
}

extern "C" int scaleml_cuda_stream_destroy(uintptr_t stream)
{
    return scaleml_cuda_check(cudaStreamDestroy(scaleml_cuda_stream(stream)), "cudaStreamDestroy");
}

extern "C" int scaleml_cuda_stream_wait(uintptr_t stream, uintptr_t other)
{
    cudaEvent_t e;
    SCALEML_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    int rc = scaleml_cuda_check(cudaEventRecord(e, scaleml_cuda_stream(other)), "cudaEventRecord");
    if (!rc) rc = scaleml_cuda_check(cudaStreamWaitEvent(scaleml_cuda_stream(stream), e, 0), "cudaStreamWaitEvent");
    cudaEventDestroy(e); /* released once the wait is satisfied */
    return rc;
}

extern "C" int scaleml_cuda_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    return scaleml_cuda_check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

template <typename T>
__global__ void add_kernel(T *acc, const T *x, uint64_t n)
{
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        acc[i] += x[i];
}

extern "C" int scaleml_cuda_add(void *acc, const void *x, uint64_t n, int value_bytes, uintptr_t stream)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (!n) return SCALEML_OK;
    cudaStream_t s = scaleml_cuda_stream(stream);
    if (value_bytes == 4)
        add_kernel<float><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>((float *)acc, (const float *)x, n);
    else
        add_kernel<double><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>((double *)acc, (const double *)x, n);
    SCALEML_CUDA_TRY(cudaGetLastError(), "add kernel launch");
    return scaleml_cuda_check(cudaStreamSynchronize(s), "add kernel");
}

template <typename T>
__global__ void divide_kernel(T *x, uint64_t n, T divisor)
{
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        x[i] /= divisor;
}

extern "C" int scaleml_cuda_divide(void *x, uint64_t n, int value_bytes, double divisor, uintptr_t stream)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (!n) return SCALEML_OK;
    cudaStream_t s = scaleml_cuda_stream(stream);
    if (value_bytes == 4)
        divide_kernel<float><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>((float *)x, n, (float)divisor);
    else
        divide_kernel<double><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>((double *)x, n, divisor);
    SCALEML_CUDA_TRY(cudaGetLastError(), "divide kernel launch");
    return scaleml_cuda_check(cudaStreamSynchronize(s), "divide kernel");
}

template <typename T>
__global__ void nonfinite_kernel(const T *x, uint64_t n, unsigned long long *count)
{
    unsigned long long mine = 0;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        mine += !isfinite(x[i]);
    if (mine) atomicAdd(count, mine);
}

extern "C" int scaleml_cuda_count_nonfinite(const void *x, uint64_t n, int value_bytes, uint64_t *count,
                                            uintptr_t stream)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_cuda_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    *count = 0;
    if (!n) return SCALEML_OK;
    cudaStream_t s = scaleml_cuda_stream(stream);
    unsigned long long *dev = NULL, host = 0;
    SCALEML_CUDA_TRY(cudaMallocAsync((void **)&dev, sizeof *dev, s), "cudaMallocAsync");
    int rc = scaleml_cuda_check(cudaMemsetAsync(dev, 0, sizeof *dev, s), "cudaMemsetAsync");
    if (!rc) {
        if (value_bytes == 4)
            nonfinite_kernel<float><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>((const float *)x, n, dev);
        else
            nonfinite_kernel<double><<<scaleml_cuda_blocks(n), SCALEML_CUDA_THREADS, 0, s>>>((const double *)x, n, dev);
        rc = scaleml_cuda_check(cudaGetLastError(), "non-finite count kernel launch");
    }
    if (!rc) rc = scaleml_cuda_check(cudaMemcpyAsync(&host, dev, sizeof host, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    cudaFreeAsync(dev, s);
    if (!rc) rc = scaleml_cuda_check(cudaStreamSynchronize(s), "non-finite count");
    *count = host;
    return rc;
}

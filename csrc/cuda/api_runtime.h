/*
 * The CUDA library's runtime entry points (runtime.cu): what the Python layer
 * needs around the kernels. Plain C declarations: this file is the cffi cdef
 * of scaleml/_cuda.py. Conventions in csrc/cuda/runtime.h.
 */
#ifndef SCALEML_API_CUDA_RUNTIME_H
#define SCALEML_API_CUDA_RUNTIME_H

/* The message of the last failed call on this thread. */
const char *scaleml_cuda_error_message(void);
/* CUDA runtime version the library was built with (e.g. 13000), and the compiled architectures. */
int scaleml_cuda_build_version(void);
const char *scaleml_cuda_build_archs(void);
/* Visible devices (0 with no driver or no device; *reason says why, from CUDA). */
int scaleml_cuda_device_count(int *count, const char **reason);
/* Name and compute capability of a device. */
int scaleml_cuda_device_info(int device, char *name, size_t cap, int *major, int *minor);
/* The device that owns a pointer (-1 for host memory not registered with CUDA); *is_managed set for managed memory. */
int scaleml_cuda_pointer_device(uintptr_t ptr, int *device, int *is_managed);
int scaleml_cuda_set_device(int device);
int scaleml_cuda_get_device(int *device);
int scaleml_cuda_malloc(size_t bytes, uintptr_t *ptr);
int scaleml_cuda_free(uintptr_t ptr);
/* Page-locked host memory for staging. */
int scaleml_cuda_host_alloc(size_t bytes, uintptr_t *ptr);
int scaleml_cuda_host_free(uintptr_t ptr);
/* Stream-ordered copies (kind: 0 host to device, 1 device to host, 2 device to device) and fill. */
int scaleml_cuda_memcpy_async(uintptr_t dst, uintptr_t src, size_t bytes, int kind, uintptr_t stream);
int scaleml_cuda_memset_async(uintptr_t dst, int value, size_t bytes, uintptr_t stream);
int scaleml_cuda_stream_synchronize(uintptr_t stream);
/* Events: record on a stream, then wait on the host (pipelined staging). */
int scaleml_cuda_event_create(uintptr_t *event);
int scaleml_cuda_event_destroy(uintptr_t event);
int scaleml_cuda_event_record(uintptr_t event, uintptr_t stream);
int scaleml_cuda_event_synchronize(uintptr_t event);
/* A non-blocking stream of the current device, for copies beside the caller's stream. */
int scaleml_cuda_stream_create(uintptr_t *stream);
int scaleml_cuda_stream_destroy(uintptr_t stream);
/* Make `stream` wait for the work enqueued so far on `other` (an event between them). */
int scaleml_cuda_stream_wait(uintptr_t stream, uintptr_t other);
/* Free and total memory of the current device. */
int scaleml_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
/* Element-wise add on the device: acc[0 .. n) += x[0 .. n) (value_bytes 4 or 8); the exact path's reduction. */
int scaleml_cuda_add(void *acc, const void *x, uint64_t n, int value_bytes, uintptr_t stream);
/* x[0 .. n) /= divisor, divided in x's type (value_bytes 4 or 8): average = sum / P, as numpy divides. */
int scaleml_cuda_divide(void *x, uint64_t n, int value_bytes, double divisor, uintptr_t stream);
/* *count = the NaN and +-Inf among x[0 .. n) (value_bytes 4 or 8): the collectives' check_finite. */
int scaleml_cuda_count_nonfinite(const void *x, uint64_t n, int value_bytes, uint64_t *count, uintptr_t stream);

#endif

/*
 * 1-bit SGD on the GPU (csrc/cuda/onebit.cu): the CPU functions of
 * csrc/api_compress.h on device pointers, with the stream last; the same
 * payload bytes, residuals and return codes (conventions in
 * csrc/cuda/runtime.h). encode_sum takes any bucket size (the CPU's takes at
 * most 4096). On a failed encode the payload and the residual are
 * unspecified; a failed decode writes nothing.
 */
#ifndef SCALEML_API_CUDA_ONEBIT_H
#define SCALEML_API_CUDA_ONEBIT_H

int scaleml_cuda_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket, uint8_t *out,
                               size_t cap, void *residual, uintptr_t stream);
/* Encodes y = x + addend (never stored); residual may be NULL or alias addend (updated in place). */
int scaleml_cuda_onebit_encode_sum(const void *x, const void *addend, int value_bytes, uint64_t n, uint64_t bucket,
                                   uint8_t *out, size_t cap, void *residual, uintptr_t stream);
int scaleml_cuda_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out,
                               int value_bytes, uintptr_t stream);
/* acc[i] += decoded value (the same sums as decode then add). */
int scaleml_cuda_onebit_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *acc,
                                   int value_bytes, uintptr_t stream);

#endif

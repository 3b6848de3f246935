/*
 * float16 / bfloat16 casts on the GPU (csrc/cuda/cast.cu): the CPU functions
 * of csrc/api_compress.h on device pointers, with the stream last; the same
 * bits and return codes (conventions in csrc/cuda/runtime.h). format is
 * SCALEML_CAST_FP16 (0) or SCALEML_CAST_BF16 (1). Like the CPU, every element
 * is written (or added) even when the call returns SCALEML_ERR_ARG (rejected
 * input, written as +-Inf/NaN patterns) or SCALEML_ERR_MALFORMED (Inf/NaN
 * patterns in the payload, decoded as such).
 */
#ifndef SCALEML_API_CUDA_CAST_H
#define SCALEML_API_CUDA_CAST_H

int scaleml_cuda_cast_encode(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out,
                             uintptr_t stream);
int scaleml_cuda_cast_decode(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes,
                             uintptr_t stream);
/* acc[i] += decoded value, in acc's type (the same sums as decode then add). */
int scaleml_cuda_cast_decode_add(const uint16_t *in, uint64_t n, int format, void *acc, int value_bytes,
                                 uintptr_t stream);

#endif

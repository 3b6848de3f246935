/*
 * QSGD on the GPU (csrc/cuda/qsgd.cu): the CPU functions of csrc/api_compress.h
 * on device pointers (x, out, buf, acc; `written` is a host pointer), with the
 * stream last; the same payload bytes, values and return codes (conventions in
 * csrc/cuda/runtime.h). The fixed format only: SCALEML_QSGD_ELIAS gives
 * SCALEML_ERR_ARG (that format is variable-length and stays on the CPU). Any
 * bucket >= 1, decode_add included (the CPU's takes multiples of 8). On a
 * failed encode the payload is unspecified; a failed decode writes nothing.
 */
#ifndef SCALEML_API_CUDA_QSGD_H
#define SCALEML_API_CUDA_QSGD_H

int scaleml_cuda_qsgd_encode(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket, int norm,
                             int format, uint64_t key, uint8_t *out, size_t cap, size_t *written, uintptr_t stream);
int scaleml_cuda_qsgd_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                             int format, void *out, int value_bytes, uintptr_t stream);
/* acc[0 .. n) += decode(buf): the same sums as decode then add (the quantized ring's reduction step). */
int scaleml_cuda_qsgd_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                                 void *acc, int value_bytes, uintptr_t stream);

#endif

/*
 * TopK on the GPU (topk.cu): the same payload and residual as
 * scaleml_topk_encode / scaleml_topk_decode (csrc/api_compress.h) for device
 * buffers. Conventions of csrc/cuda/runtime.h: device pointers (x, out,
 * residual, buf, acc; out and buf 8-byte aligned), host pointers for *written,
 * the caller's stream last, synchronised before returning.
 * decode_add adds the sent entries into acc (acc[index] += value); the other
 * entries of acc are not touched.
 */
#ifndef SCALEML_API_CUDA_TOPK_H
#define SCALEML_API_CUDA_TOPK_H

int scaleml_cuda_topk_encode(const void *x, int value_bytes, uint64_t n, uint64_t k, int approximate,
                             uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                             void *residual, uintptr_t stream);
int scaleml_cuda_topk_decode(const uint8_t *buf, size_t bytes, uint64_t n, void *out, int value_bytes,
                             uintptr_t stream);
int scaleml_cuda_topk_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, void *acc, int value_bytes,
                                 uintptr_t stream);

#endif

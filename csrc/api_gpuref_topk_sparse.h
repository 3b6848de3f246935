/*
 * Host emulations of the CUDA kernels of cuda/topk.cu and cuda/sparse.cu
 * (arith/topk_gpuref.c, arith/sparse_gpuref.c), for the CPU tests only: the
 * same arguments as the scaleml_cuda_* entry points without the stream, on
 * host memory, running the kernels' phases with the shared arithmetic of
 * arith/topk.h and arith/sparse.h. They return SCALEML_OK or a SCALEML_ERR_*
 * code like the entry points.
 */
#ifndef SCALEML_API_GPUREF_TOPK_SPARSE_H
#define SCALEML_API_GPUREF_TOPK_SPARSE_H

int scaleml_gpuref_topk_encode(const void *x, int value_bytes, uint64_t n, uint64_t k, int approximate,
                               uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                               void *residual);
int scaleml_gpuref_topk_decode(const uint8_t *buf, size_t bytes, uint64_t n, void *out, int value_bytes);
int scaleml_gpuref_topk_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, void *acc, int value_bytes);

int scaleml_gpuref_count_nonzeros(const void *values, uint64_t n, int value_bytes, uint64_t *count);
int scaleml_gpuref_count_nonzeros_signed(const void *values, uint64_t n, int value_bytes, uint64_t *count,
                                         uint64_t *negative_zeros);
int scaleml_gpuref_extract_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes, void *indices,
                                    void *out_values, uint64_t capacity, uint64_t *written);
int scaleml_gpuref_scatter_add(const void *indices, int index_bytes, const void *values, int value_bytes,
                               uint64_t count, void *dense, uint64_t n);

#endif

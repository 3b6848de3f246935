/*
 * Sparse scans on the GPU (sparse.cu): the non-zero count and extraction of
 * scaleml_count_nonzeros / scaleml_count_nonzeros_signed /
 * scaleml_extract_nonzeros (csrc/api_collectives.h), and the scatter-add of a
 * strictly increasing (index, value) stream into a dense vector. Conventions
 * of csrc/cuda/runtime.h: device pointers for the arrays, host pointers for
 * count, negative_zeros and written, the caller's stream last, synchronised
 * before returning.
 */
#ifndef SCALEML_API_CUDA_SPARSE_H
#define SCALEML_API_CUDA_SPARSE_H

int scaleml_cuda_count_nonzeros(const void *values, uint64_t n, int value_bytes, uint64_t *count, uintptr_t stream);
int scaleml_cuda_count_nonzeros_signed(const void *values, uint64_t n, int value_bytes, uint64_t *count,
                                       uint64_t *negative_zeros, uintptr_t stream);
int scaleml_cuda_extract_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes, void *indices,
                                  void *out_values, uint64_t capacity, uint64_t *written, uintptr_t stream);
int scaleml_cuda_scatter_add(const void *indices, int index_bytes, const void *values, int value_bytes,
                             uint64_t count, void *dense, uint64_t n, uintptr_t stream);

#endif

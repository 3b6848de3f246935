/*
 * Host emulation of the GPU decomposition of the 1-bit and cast kernels
 * (csrc/arith/onebit_gpuref.c, csrc/arith/cast_gpuref.c), for the tests only:
 * the arguments of the CUDA entry points (csrc/cuda/api_onebit.h,
 * api_cast.h) without the stream, on host memory, running the shared
 * arithmetic of csrc/arith/ in the kernels' phases. Return codes and messages
 * are the CPU kernels'.
 */
#ifndef SCALEML_API_GPUREF_ONEBIT_CAST_H
#define SCALEML_API_GPUREF_ONEBIT_CAST_H

int scaleml_gpuref_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket, uint8_t *out,
                                 size_t cap, void *residual);
int scaleml_gpuref_onebit_encode_sum(const void *x, const void *addend, int value_bytes, uint64_t n,
                                     uint64_t bucket, uint8_t *out, size_t cap, void *residual);
int scaleml_gpuref_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *out,
                                 int value_bytes);
int scaleml_gpuref_onebit_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *acc,
                                     int value_bytes);

int scaleml_gpuref_cast_encode(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out);
int scaleml_gpuref_cast_decode(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes);
int scaleml_gpuref_cast_decode_add(const uint16_t *in, uint64_t n, int format, void *acc, int value_bytes);

#endif

/*
 * Host emulation of the QSGD CUDA kernels' decomposition (arith/qsgd_gpuref.c),
 * for the CPU tests only: the same arguments as the entry points of
 * csrc/cuda/api_qsgd.h without the stream, on host memory, running the same
 * shared functions (arith/qsgd.h) in the same phases as the kernels. The fixed
 * format only (SCALEML_QSGD_ELIAS gives SCALEML_ERR_ARG, as on the GPU).
 */
#ifndef SCALEML_API_GPUREF_QSGD_H
#define SCALEML_API_GPUREF_QSGD_H

int scaleml_gpuref_qsgd_encode(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                               int norm, int format, uint64_t key, uint8_t *out, size_t cap, size_t *written);
int scaleml_gpuref_qsgd_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                               int format, void *out, int value_bytes);
/* acc[0 .. n) += decode(buf), any bucket. */
int scaleml_gpuref_qsgd_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                                   void *acc, int value_bytes);
/* The combined sum of squares of one bucket of len values, from the 8 lanes at once (the CPU kernel's form:
 * *cpu) and from one lane at a time (the GPU's thread per lane: *gpu); the float32 norm would hide a last-bit
 * difference of these doubles. */
int scaleml_gpuref_qsgd_sumsq(const void *x, int value_bytes, uint64_t len, double *cpu, double *gpu);

#endif

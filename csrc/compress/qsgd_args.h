/* QSGD's argument checks (compress/qsgd.c), shared with the host twin of the CUDA kernels (arith/qsgd_gpuref.c). */
#ifndef SCALEML_QSGD_ARGS_H
#define SCALEML_QSGD_ARGS_H

#include <stdint.h>

/* SCALEML_OK, or SCALEML_ERR_ARG with a message: bits in 1..8, bucket in 1..2^31, a known format,
 * value_bytes 4 or 8. */
int qsgd_check_args(uint32_t bits, uint64_t bucket, int format, int value_bytes);

#endif

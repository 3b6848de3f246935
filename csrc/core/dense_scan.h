/* Non-zeros of dense float32/float64 values (dense_scan.c), for the C core itself. */
#ifndef SCALEML_DENSE_SCAN_H
#define SCALEML_DENSE_SCAN_H

#include <stdint.h>

/* Positions (offset + i) and values of the non-zeros of values[0 .. n), at
 * most capacity of them; returns how many were written. */
uint64_t dense_extract_nonzeros(const void *values, uint64_t n, uint64_t offset, int value_bytes,
                                int index_bytes, void *indices, void *out_values, uint64_t capacity);

#endif

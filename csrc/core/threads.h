/*
 * How many threads a kernel call uses (threads.c). The kernels split large
 * inputs over OpenMP threads on bucket boundaries, so every thread count gives
 * the same bytes; an input of fewer than SCALEML_THREAD_MIN_ELEMENTS elements
 * per thread stays single-threaded (starting and joining a team costs a few
 * microseconds, about what one core spends on 2^16 elements of the cheapest
 * kernel, the cast).
 */
#ifndef SCALEML_THREADS_H
#define SCALEML_THREADS_H

#include <stdint.h>

#define SCALEML_THREAD_MIN_ELEMENTS (UINT64_C(1) << 16)

/* Threads for a call over `elements` elements whose work splits into `units`
 * independent pieces: min(the configured count, elements / MIN, units), at
 * least 1. Records the answer as the calling thread's last count
 * (scaleml_last_num_threads). */
int threads_for(uint64_t elements, uint64_t units);

/* Part p of `parts` of the range [0, units): [*lo, *hi), as equal as whole
 * units allow (the first units % parts parts get one more). */
void threads_split(uint64_t units, int parts, int p, uint64_t *lo, uint64_t *hi);

#endif

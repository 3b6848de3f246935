/*
 * How many threads a kernel call uses (threads.c). The kernels split large
 * inputs over OpenMP threads on bucket boundaries, so every thread count gives
 * the same bytes; an input of fewer than SCALEML_THREAD_MIN_ELEMENTS elements
 * per thread stays single-threaded: one core takes 20 to 60 us for 2^16
 * elements of the cheapest kernels (casts, scans: 0.3 to 1 ns per element),
 * the order of waking an idle OpenMP team and joining it again (10 to 50 us),
 * so a thread with less work than that cannot pay for itself.
 *
 * OpenMP rather than a pool of our own: libgomp keeps its team between calls,
 * `parallel for` with a reduction is all the kernels need, and it runs under
 * `make sanitize`'s ASan and UBSan. A kernel called from several threads at once (the
 * progress thread of the nonblocking collectives and the caller) gets a team
 * per calling thread.
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

/* A later phase of the same call over `elements` elements: min(threads, elements / MIN), at least 1;
 * the call's recorded count stays the one threads_for gave. */
int threads_within(int threads, uint64_t elements);
/* Parts to cut a call's `units` into for `threads` threads that take them one at a time
 * (schedule(dynamic, 1)): SCALEML_THREAD_PARTS per thread, at most `units`. Where a core is
 * shared (another process, the hypervisor), its thread takes fewer parts instead of holding up
 * the others with an equal share; the bytes depend on the parts' positions only, not on who ran
 * them. */
#define SCALEML_THREAD_PARTS 4
int threads_parts(int threads, uint64_t units);

/* Part p of `parts` of the range [0, units): [*lo, *hi), as equal as whole
 * units allow (the first units % parts parts get one more). */
void threads_split(uint64_t units, int parts, int p, uint64_t *lo, uint64_t *hi);

/* Part p of `parts` of [0, count) cut on multiples of `unit` (the last unit may be short): [*lo, *hi) in
 * elements, the units split as threads_split does. */
void threads_split_units(uint64_t count, uint64_t unit, int parts, int p, uint64_t *lo, uint64_t *hi);

#endif

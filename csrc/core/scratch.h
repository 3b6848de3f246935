/*
 * Per-thread scratch buffers that outlive a kernel call (scratch.c). A kernel
 * that needs megabytes of working memory on every call (TopK's candidate
 * lists) would otherwise map fresh pages each time and fault every one of
 * them in: at 2^24 floats that is 1 to 1.5 ms of a 6 ms call. A slot keeps
 * its largest buffer until its thread exits (the OpenMP team's threads live
 * as long as the process).
 */
#ifndef SCALEML_SCRATCH_H
#define SCALEML_SCRATCH_H
#include <stddef.h>

enum { SCRATCH_SLOTS = 4 };

/* The calling thread's buffer `slot` (0 <= slot < SCRATCH_SLOTS) of at least
 * `bytes` bytes, its contents undefined; NULL when out of memory. Valid until
 * the same thread asks for the same slot again. */
void *scratch_get(int slot, size_t bytes);

#endif

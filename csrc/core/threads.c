/* The kernels' thread count (threads.h): set once from Python (scaleml.config's
 * SCALEML_NUM_THREADS or the cores of the rank's affinity over the ranks that
 * share them), read by every kernel call. */
#include "core/threads.h"

#include <stdint.h>

#include <stddef.h>

#include "api_compress.h"

static int configured_threads = 1;
static _Thread_local int last_threads = 1;

void scaleml_set_num_threads(int threads)
{
    configured_threads = threads < 1 ? 1 : threads;
}

int scaleml_get_num_threads(void)
{
    return configured_threads;
}

int scaleml_last_num_threads(void)
{
    return last_threads;
}

int threads_for(uint64_t elements, uint64_t units)
{
    uint64_t t = (uint64_t)configured_threads;
    uint64_t by_size = elements / SCALEML_THREAD_MIN_ELEMENTS;
    if (t > by_size) t = by_size;
    if (t > units) t = units;
    if (t < 1) t = 1;
    last_threads = (int)t;
    return (int)t;
}

int threads_within(int threads, uint64_t elements)
{
    uint64_t by_size = elements / SCALEML_THREAD_MIN_ELEMENTS;
    if ((uint64_t)threads > by_size) threads = (int)by_size;
    return threads < 1 ? 1 : threads;
}

int threads_parts(int threads, uint64_t units)
{
    uint64_t parts = threads > 1 ? (uint64_t)threads * SCALEML_THREAD_PARTS : 1;
    return (int)(parts < units ? parts : units > 0 ? units : 1);
}

void threads_split(uint64_t units, int parts, int p, uint64_t *lo, uint64_t *hi)
{
    uint64_t q = units / (uint64_t)parts, r = units % (uint64_t)parts, i = (uint64_t)p;
    *lo = i * q + (i < r ? i : r);
    *hi = *lo + q + (i < r);
}

void threads_split_units(uint64_t count, uint64_t unit, int parts, int p, uint64_t *lo, uint64_t *hi)
{
    uint64_t ulo, uhi;
    threads_split((count + unit - 1) / unit, parts, p, &ulo, &uhi);
    *lo = ulo * unit;
    *hi = uhi * unit < count ? uhi * unit : count;
}

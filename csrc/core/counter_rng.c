/* Counter-based random number streams keyed by (seed, rank, step, stream). See counter_rng.h. */
#include "core/counter_rng.h"

#include <stddef.h>
#include <stdint.h>

#include "api_compress.h"

uint64_t crng_key(uint64_t seed, uint64_t rank, uint64_t step, uint64_t stream)
{
    /* Chain the four words through the bijective mixer with distinct odd
     * constants, so that (seed, rank, step, stream) tuples differing in any
     * word give unrelated keys. */
    uint64_t k = crng_mix64(seed ^ UINT64_C(0x6a09e667f3bcc908));
    k = crng_mix64(k ^ (rank * UINT64_C(0xbb67ae8584caa73b) + 1));
    k = crng_mix64(k ^ (step * UINT64_C(0x3c6ef372fe94f82b) + 2));
    k = crng_mix64(k ^ (stream * UINT64_C(0xa54ff53a5f1d36f1) + 3));
    return k;
}

uint64_t scaleml_rng_key(uint64_t seed, uint64_t rank, uint64_t step, uint64_t stream)
{
    return crng_key(seed, rank, step, stream);
}

void scaleml_rng_uniform(uint64_t key, uint64_t offset, uint64_t n, double *out)
{
    for (uint64_t i = 0; i < n; i++) out[i] = crng_uniform53(key, offset + i);
}

/*
 * Dense AllReduce: the path for data that is already dense, so callers never
 * pay for sparsity that is not there. The input is written into an n-value
 * buffer and reduced in place by MPI_Allreduce (the MPI library picks ring,
 * Rabenseifner or recursive doubling by size).
 *
 * Cost (Rabenseifner / ring): 2*log2(P)*alpha + 2*(P-1)/P * n*c_d*beta.
 * Bytes sent per rank are reported as 2*(P-1)/P * n*c_d, the ring figure:
 * MPI does not say which algorithm it used.
 * Memory: the n-value result: O(n) per rank.
 */
#include <limits.h>

#include "collectives/collectives.h"
#include "collectives/registry.h"
#include "collectives/comm_util.h"

int dense_allreduce(sa_context *c, scaleml_result *res)
{
    sv_segment all;
    int rc = result_dense_storage(c, &all);
    if (rc) return rc;
    sv_write_dense(&c->input, all.values);
    MPI_Datatype type = c->value_bytes == 4 ? MPI_FLOAT : MPI_DOUBLE;
    /* Chunks keep every count within int, for MPI libraries without MPI-4 large counts. */
    const uint64_t chunk = (uint64_t)INT_MAX / 2;
    for (uint64_t start = 0; start < c->n && !rc; start += chunk) {
        uint64_t count = c->n - start < chunk ? c->n - start : chunk;
        rc = cu_check(MPI_Allreduce(MPI_IN_PLACE, (char *)all.values + start * (unsigned)c->value_bytes,
                                    (int)count, type, MPI_SUM, c->comm),
                      "MPI_Allreduce");
    }
    if (!rc) rc = result_init(res, 1, c->n);
    if (rc) {
        sv_free(&all);  /* frees nothing when all is the caller's buffer */
        return rc;
    }
    if (c->size > 1)
        c->bytes_sent += 2 * (uint64_t)(c->size - 1) * c->n * (unsigned)c->value_bytes / (uint64_t)c->size;
    res->segments[0] = all;
    return SCALEML_OK;
}

double dense_allreduce_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    int P = c->ranks, log_p = P > 1 ? sa_log2_floor(P) : 0;
    double dense = (double)c->n * c->value_bytes;
    *result_sparse = 0;
    return 2 * log_p * p->alpha + p->beta * 2 * (P - 1) / P * dense + p->gamma * 2 * dense;
}

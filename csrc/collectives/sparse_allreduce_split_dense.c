/*
 * Split AllGather with a dense result (bandwidth-bound, dense output).
 *
 * Steps:
 *   1. sparse reduce-scatter (sparse_reduce_scatter.c) where every owner sums
 *      its range into a dense buffer;
 *   2. dense MPI_Allgatherv of the P ranges straight into the n-value result.
 *
 * Cost: (P-1)*alpha + (P-1)/P * k*c_s*beta            (reduce-scatter)
 *     + log2(P)*alpha + (P-1)/P * n*c_d*beta            (dense allgather;
 *       bytes counted as a ring allgather sends them).
 * Memory: the n-value result: O(n) per rank.
 */
#include <stdlib.h>

#include "collectives/collectives.h"
#include "collectives/registry.h"
#include "collectives/comm_util.h"

int sparse_allreduce_split_dense(sa_context *c, scaleml_result *res)
{
    int P = c->size, rc;
    sv_segment mine, all;
    if ((rc = sparse_reduce_scatter(c, 1, &mine))) return rc;
    if ((rc = result_dense_storage(c, &all))) {
        sv_free(&mine);
        return rc;
    }
    MPI_Count *counts = malloc((size_t)P * sizeof *counts);
    MPI_Aint *displs = malloc((size_t)P * sizeof *displs);
    if (!counts || !displs) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d counts", P);
        goto done;
    }
    for (int j = 0; j < P; j++) {
        uint64_t start, len;
        cu_block_range(c->n, P, j, &start, &len);
        counts[j] = (MPI_Count)len * c->value_bytes;
        displs[j] = (MPI_Aint)start * c->value_bytes;
    }
    cu_prefault(all.values, (size_t)c->n * (unsigned)c->value_bytes);
    rc = cu_allgatherv_bytes(mine.values, (size_t)counts[c->rank], all.values, counts, displs, P,
                             c->comm);
    if (rc) goto done;
    c->bytes_sent += (uint64_t)c->n * (unsigned)c->value_bytes - (uint64_t)counts[(c->rank + 1) % P];
    if ((rc = result_init(res, 1, c->n))) goto done;
    res->segments[0] = all;
    all = (sv_segment){0};
done:
    sv_free(&all);
    sv_free(&mine);
    free(counts);
    free(displs);
    return rc;
}

double sparse_allreduce_split_dense_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                         int *result_sparse)
{
    int P = c->ranks, log_p = P > 1 ? sa_log2_floor(P) : 0;
    double dense = (double)c->n * c->value_bytes;
    *result_sparse = 0;
    return sparse_reduce_scatter_cost(c, p) + log_p * p->alpha + p->beta * (P - 1) / P * dense +
           p->gamma * (dense / P + dense);
}

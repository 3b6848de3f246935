/*
 * Split sparse AllGather (bandwidth-bound case, sparse result).
 *
 * Steps:
 *   1. sparse reduce-scatter (sparse_reduce_scatter.c): rank j sums range j;
 *   2. each owner packs its reduced range, sparse or dense by the densify rule
 *      (decided per range), and the sizes are allgathered (P * 8 bytes);
 *   3. MPI_Allgatherv of the packed ranges; every rank unpacks them in order.
 *
 * With a lossy value format (ctx->codec) the reduce-scatter's dense-enough
 * slices travel quantized (sparse_reduce_scatter.c), and a reduced range past
 * the wire's densify rule is encoded once by its owner and gathered in the
 * codec's n/P*q bytes: every rank, the owner included, decodes the same bytes
 * into a segment of its own (the others stay views into the gathered block),
 * so all results are identical.
 *
 * Cost, K_j the nnz of reduced range j:
 *   (P-1)*alpha + (P-1)/P * k*c_s*beta                      (reduce-scatter)
 * + log2(P)*alpha + P*8*beta                                (sizes)
 * + log2(P)*alpha + beta * sum_{j != me} min(K_j*c_s, n/P*c_d)  (allgather,
 *   about (P-1)/P * min(K*c_s, n*c_d) bytes; bytes are counted as a ring
 *   allgather sends them, whatever algorithm MPI picks); c_d becomes q with a codec,
 *   and reduced ranges that travel quantized add the format's passes: n/P
 *   values encoded by the owner, n decoded by every rank.
 * Memory: the gathered ranges, at most n*c_d plus headers: O(n) per rank.
 */
#include <stdlib.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/registry.h"
#include "collectives/comm_util.h"

int sparse_allreduce_split_allgather(sa_context *c, scaleml_result *res)
{
    int P = c->size, rc;
    const scaleml_codec *codec = P > 1 ? c->codec : NULL;  /* alone, nothing travels */
    sv_segment mine;
    if ((rc = sparse_reduce_scatter(c, 0, &mine))) return rc;

    void *packed = NULL;
    size_t packed_bytes = 0;
    uint64_t *sizes = malloc((size_t)P * sizeof *sizes);
    MPI_Count *counts = malloc((size_t)P * sizeof *counts);
    MPI_Aint *displs = malloc((size_t)P * sizeof *displs);
    if (!sizes || !counts || !displs) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d sizes", P);
        goto done;
    }
    /* No roundtrip: the owner decodes its range from the gathered bytes like every rank. */
    if ((rc = cu_pack_codec(&mine, codec, 0, c->rank, CODEC_STREAM(CODEC_PHASE_SPARSE, SPARSE_STREAM_FINAL),
                            &packed, &packed_bytes)))
        goto done;
    uint64_t my_size = packed_bytes;
    rc = cu_check(MPI_Allgather(&my_size, 1, MPI_UINT64_T, sizes, 1, MPI_UINT64_T, c->comm),
                  "MPI_Allgather");
    if (rc) goto done;
    c->bytes_sent += (uint64_t)(P - 1) * sizeof my_size;

    uint64_t total = 0;
    for (int j = 0; j < P; j++) {
        counts[j] = (MPI_Count)sizes[j];
        displs[j] = (MPI_Aint)total;
        total += sizes[j];
    }
    if ((rc = result_init(res, P, c->n))) goto done;
    res->block = malloc(total ? total : 1);
    if (!res->block) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory gathering %llu bytes", (unsigned long long)total);
        goto done;
    }
    cu_prefault(res->block, total);
    rc = cu_allgatherv_bytes(packed, packed_bytes, res->block, counts, displs, P, c->comm);
    if (rc) goto done;
    c->bytes_sent += total - sizes[(c->rank + 1) % P];  /* ring: all blocks but the next rank's */

    for (int j = 0; j < P && !rc; j++) {
        uint64_t start, len;
        cu_block_range(c->n, P, j, &start, &len);
        /* A quantized range is decoded into memory of its own, freed by scaleml_result_free. */
        rc = sv_unpack_codec((char *)res->block + displs[j], sizes[j], start, len, c->index_bytes,
                             c->value_bytes, codec, &res->segments[j]);
    }
done:
    sv_free(&mine);
    free(packed);
    free(sizes);
    free(counts);
    free(displs);
    return rc;
}

double sparse_allreduce_split_allgather_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                             int *result_sparse)
{
    int P = c->ranks, log_p = P > 1 ? sa_log2_floor(P) : 0;
    double K = sa_expected_union(c->n, (double)c->nnz_sum / P, P);
    double dense = sa_dense_wire_bytes(c, (double)c->n), sparse = K * (c->index_bytes + c->value_bytes);
    double gathered = (sparse < dense ? sparse : dense) + P * SA_SEGMENT_HEADER_BYTES;
    double n = (double)c->n;
    double coding = P > 1 && sa_travels_quantized(c, K) ? sa_codec_seconds(c, n / P, n, 0) : 0;
    *result_sparse = sparse < dense;
    return sparse_reduce_scatter_cost(c, p) + 2 * log_p * p->alpha + p->beta * (P - 1) / P * gathered +
           p->gamma * 2 * gathered + coding;
}

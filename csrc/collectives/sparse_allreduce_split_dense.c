/*
 * Split AllGather with a dense result (bandwidth-bound, dense output).
 *
 * Steps:
 *   1. sparse reduce-scatter (sparse_reduce_scatter.c) where every owner sums
 *      its range into a dense buffer;
 *   2. dense MPI_Allgatherv of the P ranges straight into the n-value result.
 *
 * With a lossy value format (ctx->codec) the reduce-scatter's dense-enough
 * slices travel quantized (sparse_reduce_scatter.c), and the allgather, dense
 * by design, moves every range in the codec's format: each owner encodes its
 * range once, and every rank, the owner included, decodes the same gathered
 * bytes into the result, so all results are identical. The ranges have sizes
 * every rank knows (a 16-byte segment header and the codec's bytes padded to
 * 8, or the exact values where the codec is not smaller), so no sizes are
 * exchanged. When an owner's values do not fit the format (NaN, Inf, beyond
 * float16's range) its block says so and every rank gathers the exact values
 * instead, as without a codec.
 *
 * Cost: (P-1)*alpha + (P-1)/P * k*c_s*beta            (reduce-scatter)
 *     + log2(P)*alpha + (P-1)/P * n*c_d*beta            (dense allgather;
 *       bytes counted as a ring allgather sends them; with a codec
 *       (P-1)/P * (n*q + P*16), and the format's passes: n/P values
 *       encoded by the owner, n decoded by every rank).
 * Memory: the n-value result: O(n) per rank.
 */
#include <stdlib.h>

#include <string.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/registry.h"
#include "collectives/comm_util.h"

/* The header of a gathered block whose owner's values the codec refused. */
#define SPLIT_DENSE_REFUSED UINT64_C(0x4652)  /* "RF" */

/* Gather every rank's dense range in the codec's format into all.values.
 * *refused: some owner's values did not fit the format (nothing written). */
static int gather_quantized(sa_context *c, const scaleml_codec *codec, sv_segment *mine, sv_segment *all,
                            int *refused)
{
    int P = c->size, rc;
    MPI_Count *counts = malloc((size_t)P * sizeof *counts);
    MPI_Aint *displs = malloc((size_t)P * sizeof *displs);
    char *block = NULL, *packed = NULL;
    size_t total = 0;
    *refused = 0;
    if (!counts || !displs) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d counts", P);
        goto done;
    }
    for (int j = 0; j < P; j++) {  /* the same sizes on every rank */
        uint64_t start, len;
        cu_block_range(c->n, P, j, &start, &len);
        counts[j] = (MPI_Count)(SV_WIRE_HEADER_BYTES + sv_dense_wire_body(len, c->value_bytes, codec));
        displs[j] = (MPI_Aint)total;
        total += (size_t)counts[j];
    }
    size_t mine_bytes = (size_t)counts[c->rank], written = 0;
    /* Room for the exact form, which a refused encode writes. */
    if (!(packed = malloc(sv_wire_bytes(mine))) || !(block = malloc(total))) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory gathering %zu bytes", total);
        goto done;
    }
    if ((rc = sv_pack_codec(mine, codec, 0, c->rank, CODEC_STREAM(CODEC_PHASE_SPARSE, SPARSE_STREAM_FINAL),
                            packed, &written)))
        goto done;
    if (written != mine_bytes) {  /* the exact form came back: tell every rank, in a block of the agreed size */
        uint64_t header[2] = {SPLIT_DENSE_REFUSED, mine->len};
        memset(packed, 0, mine_bytes);
        memcpy(packed, header, sizeof header);
    }
    cu_prefault(block, total);
    rc = cu_allgatherv_bytes(packed, mine_bytes, block, counts, displs, P, c->comm);
    if (rc) goto done;
    c->bytes_sent += total - (uint64_t)counts[(c->rank + 1) % P];  /* ring: all blocks but the next rank's */
    for (int j = 0; j < P; j++) {
        uint64_t tag;
        memcpy(&tag, block + displs[j], sizeof tag);
        if (tag == SPLIT_DENSE_REFUSED) *refused = 1;
    }
    for (int j = 0; j < P && !rc && !*refused; j++) {
        uint64_t start, len;
        cu_block_range(c->n, P, j, &start, &len);
        rc = sv_unpack_dense_into(block + displs[j], (size_t)counts[j], len, c->value_bytes, codec,
                                  (char *)all->values + start * (unsigned)c->value_bytes);
    }
done:
    free(counts);
    free(displs);
    free(block);
    free(packed);
    return rc;
}

/* Gather every rank's dense range at full width straight into all.values. */
static int gather_exact(sa_context *c, const sv_segment *mine, sv_segment *all)
{
    int P = c->size, rc;
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
    cu_prefault(all->values, (size_t)c->n * (unsigned)c->value_bytes);
    rc = cu_allgatherv_bytes(mine->values, (size_t)counts[c->rank], all->values, counts, displs, P, c->comm);
    if (!rc)
        c->bytes_sent += (uint64_t)c->n * (unsigned)c->value_bytes - (uint64_t)counts[(c->rank + 1) % P];
done:
    free(counts);
    free(displs);
    return rc;
}

int sparse_allreduce_split_dense(sa_context *c, scaleml_result *res)
{
    int rc, refused = 0;
    const scaleml_codec *codec = c->size > 1 ? c->codec : NULL;  /* alone, nothing travels */
    sv_segment mine, all;
    if ((rc = sparse_reduce_scatter(c, 1, &mine))) return rc;
    if ((rc = result_dense_storage(c, &all))) {
        sv_free(&mine);
        return rc;
    }
    if (codec) rc = gather_quantized(c, codec, &mine, &all, &refused);
    if (!rc && (!codec || refused)) rc = gather_exact(c, &mine, &all);
    if (!rc) rc = result_init(res, 1, c->n);
    if (!rc) {
        res->segments[0] = all;
        all = (sv_segment){0};
    }
    sv_free(&all);
    sv_free(&mine);
    return rc;
}

double sparse_allreduce_split_dense_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                         int *result_sparse)
{
    int P = c->ranks, log_p = P > 1 ? sa_log2_floor(P) : 0;
    double dense = (double)c->n * c->value_bytes;
    double gathered = sa_dense_wire_bytes(c, (double)c->n);
    if (gathered < dense) gathered += P * SA_SEGMENT_HEADER_BYTES;  /* a header per quantized range */
    double n = (double)c->n, coding = P > 1 && sa_quantizes(c) ? sa_codec_seconds(c, n / P, n, 0) : 0;
    *result_sparse = 0;
    return sparse_reduce_scatter_cost(c, p) + log_p * p->alpha + p->beta * (P - 1) / P * gathered +
           p->gamma * (dense / P + dense) + coding;
}

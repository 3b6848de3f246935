/*
 * Sparse reduce-scatter: the first phase of both split algorithms.
 *
 * The index space [0, n) is cut into P contiguous ranges whose lengths differ
 * by at most one. Each rank sends range j of its vector to rank j (P-1
 * non-blocking sends of packed segments, sparse or dense by the densify rule),
 * and rank j sums the P contributions to its range. Contributions are added
 * in rank order, not arrival order, so the result is the same from run to run.
 *
 * A slice travels dense when its entries would take as many bytes (the
 * densify rule at pack time), so dense input costs n/P*c_d per slice, not
 * n/P*c_s. Receives are posted before the sends, each with room for the
 * agreed largest nnz (capped at the dense slice size).
 *
 * With a lossy value format (ctx->codec) a slice past the wire's densify rule
 * (sparse_vector.h) travels in the codec's n/P*q bytes instead: the owner
 * decodes and adds it in full precision (the sender keeps nothing, so it
 * needs no roundtrip); each slice has its own random stream.
 *
 * Cost: (P-1)*alpha + beta * sum over j != me of min(k_j*c_s, n/P*c_d),
 * about (P-1)*alpha + (P-1)/P * k*c_s*beta when indices are spread evenly
 * (c_d becomes q with a codec; slices that travel quantized add the format's
 * passes: (P-1)/P n values encoded by the sender, as many decoded by the
 * owner).
 * Memory: the packed outgoing slices (O(min(k c_s, n c_d))) plus P-1
 * incoming slices of at most n/P*c_d each: O(n).
 *
 * sparse_reduce_scatter_to generalises the owners to the first `owners` ranks
 * (hierarchical_sparse's step 1 on the node communicator, owners = S): the
 * index space is cut into `owners` ranges (cu_block_range(n, owners, j)), every
 * rank sends range j to rank j < owners (not itself), ranks >= owners own
 * nothing and receive nothing; each owner sums its P contributions in rank
 * order as above. owners = P is sparse_reduce_scatter.
 */
#include <stdlib.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/registry.h"
#include "collectives/comm_util.h"

int sparse_reduce_scatter(sa_context *c, int dense_result, sv_segment *mine)
{
    return sparse_reduce_scatter_to(c, c->size, dense_result, mine);
}

int sparse_reduce_scatter_to(sa_context *c, int owners, int dense_result, sv_segment *mine)
{
    int P = c->size, rc = SCALEML_OK, owner = c->rank < owners;
    const scaleml_codec *codec = P > 1 ? c->codec : NULL;
    uint64_t my_start = 0, my_len = 0;
    if (owner) cu_block_range(c->n, owners, c->rank, &my_start, &my_len);
    if (!owner) *mine = (sv_segment){.index_bytes = c->index_bytes, .value_bytes = c->value_bytes};

    /* Pack every outgoing slice into one block; slice j sits at offsets[j]. */
    size_t *offsets = calloc((size_t)owners + 1, sizeof *offsets);
    MPI_Request *sends = malloc((size_t)P * sizeof *sends);
    MPI_Request *recvs = malloc((size_t)P * sizeof *recvs);
    void **recvbufs = calloc((size_t)P, sizeof *recvbufs);
    char *sendblock = NULL;
    int nsends = 0, have = 0;
    if (!offsets || !sends || !recvs || !recvbufs) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d send slots", P);
        goto done;
    }
    for (int j = 0; j < P; j++) recvs[j] = MPI_REQUEST_NULL;
    size_t recvcap = sv_wire_bytes_bound_codec(my_len, c->nnz_max, c->index_bytes, c->value_bytes, codec);
    for (int step = 1; step < P && owner && !rc; step++) {  /* receives first: no message waits unmatched */
        int src = (c->rank - step + P) % P;
        rc = cu_irecv_alloc(c->comm, src, TAG_REDUCE_SCATTER, recvcap, &recvbufs[src], &recvs[src]);
    }
    for (int j = 0; j < owners && !rc; j++) {
        uint64_t start, len;
        sv_segment slice;
        cu_block_range(c->n, owners, j, &start, &len);
        sv_slice(&c->input, start, len, &slice);
        /* The exact size: room for the quantized form and for a refused encode's exact one. */
        offsets[j + 1] = offsets[j] + (j == c->rank ? 0 : sv_wire_bytes(&slice));
    }
    if (!rc && !(sendblock = malloc(offsets[owners] ? offsets[owners] : 1)))
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory packing %zu bytes", offsets[owners]);
    for (int step = 1; step < P && !rc; step++) {  /* start with the next rank: spreads load */
        int j = (c->rank + step) % P;
        if (j >= owners) continue;
        uint64_t start, len;
        sv_segment slice;
        cu_block_range(c->n, owners, j, &start, &len);
        sv_slice(&c->input, start, len, &slice);
        size_t bytes = 0;
        rc = sv_pack_codec(&slice, codec, 0, c->rank,
                           CODEC_STREAM(CODEC_PHASE_SPARSE, SPARSE_STREAM_SLICE + (uint64_t)j),
                           sendblock + offsets[j], &bytes);
        if (!rc)
            rc = cu_isend(c->comm, j, TAG_REDUCE_SCATTER, sendblock + offsets[j], bytes, &sends[nsends],
                          &c->bytes_sent);
        if (!rc) nsends++;
    }

    /* Sum contributions in rank order, not arrival order: the same result every run. */
    if (!rc && owner && dense_result) {
        rc = sv_alloc_dense(mine, my_start, my_len, c->index_bytes, c->value_bytes);
        have = !rc;
    }
    for (int src = 0; src < P && owner && !rc; src++) {
        sv_segment part = {0};
        if (src == c->rank) {
            sv_slice(&c->input, my_start, my_len, &part);
        } else {
            MPI_Status status;
            size_t bytes = 0;
            rc = cu_waitall(1, &recvs[src], &status);
            if (!rc) rc = cu_received_bytes(&status, &bytes);
            if (!rc)
                rc = sv_unpack_codec(recvbufs[src], bytes, my_start, my_len, c->index_bytes, c->value_bytes,
                                     codec, &part);
        }
        if (!rc) {
            if (have) {
                rc = sv_accumulate_consume(mine, &part);  /* a decoded slice may become the sum */
            } else if (part.owned) {  /* a decoded slice: take it */
                *mine = part;
                part.owned = NULL;
                have = 1;
            } else {
                rc = sv_copy(&part, mine);
                have = !rc;
            }
        }
        if (src != c->rank) {
            sv_free(&part);  /* a decoded slice's memory; nothing for a view */
            if (recvs[src] == MPI_REQUEST_NULL) {  /* received; after a failed wait MPI may still write into
                                                    * it: the receive is withdrawn below, then freed */
                free(recvbufs[src]);
                recvbufs[src] = NULL;
            }
        }
    }
    if (!rc && owner && !dense_result) rc = sv_apply_densify_rule(mine);
    if (rc && have) sv_free(mine);

    int wait_rc = nsends ? cu_waitall(nsends, sends, NULL) : SCALEML_OK;
    if (!rc) rc = wait_rc;
done:
    if (recvs && recvbufs) {
        for (int j = 0; j < P; j++) {
            if (recvs[j] != MPI_REQUEST_NULL) {  /* left over after an error: withdraw it */
                MPI_Cancel(&recvs[j]);
                MPI_Wait(&recvs[j], MPI_STATUS_IGNORE);
            }
            free(recvbufs[j]);
        }
    }
    free(sendblock);
    free(sends);
    free(recvs);
    free(recvbufs);
    free(offsets);
    return rc;
}

double sparse_reduce_scatter_cost(const scaleml_cost_case *c, const scaleml_cost_params *p)
{
    int P = c->ranks;
    double sent = (double)c->nnz_max * (c->index_bytes + c->value_bytes);
    double dense = sa_dense_wire_bytes(c, (double)c->n);
    if (sent > dense) sent = dense;
    double share = (double)(P - 1) / P * (double)c->n;
    return (P - 1) * p->alpha + p->beta * (P - 1) / P * sent + p->gamma * 2 * sent +
           (sa_travels_quantized(c, c->nnz_max) ? sa_codec_seconds(c, share, share, 0) : 0);
}

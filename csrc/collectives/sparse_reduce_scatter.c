/*
 * Sparse reduce-scatter: the first phase of both split algorithms.
 *
 * The index space [0, n) is cut into P contiguous ranges whose lengths differ
 * by at most one. Each rank sends range j of its vector to rank j (P-1
 * non-blocking sends of packed segments, sparse or dense by the densify rule),
 * and rank j sums the P contributions to its range. Contributions are added
 * in rank order, not arrival order, so the result is the same from run to run.
 *
 * Cost: (P-1)*alpha + beta * sum over j != me of min(k_j*c_s, n/P*c_d),
 * about (P-1)*alpha + (P-1)/P * k*c_s*beta when indices are spread evenly.
 * Memory: the packed outgoing slices (O(k)) plus one incoming message at a
 * time (O(n/P)).
 */
#include <stdlib.h>

#include "collectives/collectives.h"
#include "collectives/comm_util.h"

int sparse_reduce_scatter(sa_context *c, int dense_result, sv_segment *mine)
{
    int P = c->size, rc = SCALEML_OK;
    uint64_t my_start, my_len;
    cu_block_range(c->n, P, c->rank, &my_start, &my_len);

    /* Pack every outgoing slice into one block; slice j sits at offsets[j]. */
    size_t *offsets = calloc((size_t)P + 1, sizeof *offsets);
    MPI_Request *requests = malloc((size_t)P * sizeof *requests);
    char *sendblock = NULL;
    if (!offsets || !requests) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d send slots", P);
        goto done;
    }
    for (int j = 0; j < P; j++) {
        uint64_t start, len;
        sv_segment slice;
        cu_block_range(c->n, P, j, &start, &len);
        sv_slice(&c->input, start, len, &slice);
        offsets[j + 1] = offsets[j] + (j == c->rank ? 0 : sv_wire_bytes(&slice));
    }
    sendblock = malloc(offsets[P] ? offsets[P] : 1);
    if (!sendblock) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory packing %zu bytes", offsets[P]);
        goto done;
    }
    int nrequests = 0;
    for (int step = 1; step < P && !rc; step++) {  /* start with the next rank: spreads load */
        int j = (c->rank + step) % P;
        uint64_t start, len;
        sv_segment slice;
        cu_block_range(c->n, P, j, &start, &len);
        sv_slice(&c->input, start, len, &slice);
        sv_pack(&slice, sendblock + offsets[j]);
        rc = cu_isend(c->comm, j, TAG_REDUCE_SCATTER, sendblock + offsets[j], offsets[j + 1] - offsets[j],
                      &requests[nrequests], &c->bytes_sent);
        if (!rc) nrequests++;
    }

    /* Sum contributions in rank order. */
    int have = 0;
    if (!rc && dense_result) {
        rc = sv_alloc_dense(mine, my_start, my_len, c->index_bytes, c->value_bytes);
        have = !rc;
    }
    for (int src = 0; src < P && !rc; src++) {
        sv_segment part;
        void *buf = NULL;
        if (src == c->rank) {
            sv_slice(&c->input, my_start, my_len, &part);
        } else {
            rc = cu_recv_segment(c->comm, src, TAG_REDUCE_SCATTER, my_start, my_len, c->index_bytes,
                                 c->value_bytes, &buf, &part, NULL);
        }
        if (!rc) {
            if (have) {
                rc = sv_accumulate(mine, &part);
            } else {
                rc = sv_copy(&part, mine);
                have = !rc;
            }
        }
        free(buf);
    }
    if (!rc && !dense_result) rc = sv_apply_densify_rule(mine);
    if (rc && have) sv_free(mine);

    int wait_rc = nrequests ? cu_check(MPI_Waitall(nrequests, requests, MPI_STATUSES_IGNORE), "MPI_Waitall")
                            : SCALEML_OK;
    if (!rc) rc = wait_rc;
done:
    free(sendblock);
    free(requests);
    free(offsets);
    return rc;
}

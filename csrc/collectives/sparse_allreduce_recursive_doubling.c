/*
 * Sparse AllReduce by recursive doubling (latency-bound case).
 *
 * Steps, with p2 = 2^floor(log2 P) and r = P - p2:
 *   1. fold in (only when P is not a power of two): of the first 2r ranks,
 *      each even rank sends its vector to the next odd rank and sits out;
 *   2. log2(p2) rounds: in round i each active rank exchanges its current
 *      partial sum with the rank at distance 2^i (in the folded numbering) and
 *      merges; a partial sum switches to dense by the densify rule, after which
 *      it travels as n*c_d bytes;
 *   3. fold out: each odd rank of the first 2r sends the result back.
 * Both partners of a round add the same two operands, and IEEE addition is
 * commutative, so every rank ends with a bitwise identical result.
 *
 * Cost (alpha-beta), m_i = min(size of the partial sum after i rounds, n*c_d):
 *   disjoint indices:  log2(p2)*alpha + (P-1)*k*c_s*beta  (capped by dense)
 *   identical indices: log2(p2)*(alpha + k*c_s*beta)
 *   plus, for P not a power of two, 2*(alpha + m*beta) for the folds.
 * Memory: two partial sums of at most n values each: O(n) per rank.
 */
#include <stdlib.h>

#include "collectives/collectives.h"
#include "collectives/comm_util.h"

static int send_segment(sa_context *c, int dest, int tag, const sv_segment *s)
{
    void *buf;
    size_t bytes;
    int rc = cu_pack(s, &buf, &bytes);
    if (rc) return rc;
    rc = cu_send(c->comm, dest, tag, buf, bytes, &c->bytes_sent);
    free(buf);
    return rc;
}

/* Receive a segment over [0, n) that owns its receive buffer. */
static int recv_segment(sa_context *c, int source, int tag, sv_segment *s)
{
    void *buf = NULL;
    int rc = cu_recv_segment(c->comm, source, tag, 0, c->n, c->index_bytes, c->value_bytes, &buf, s,
                             NULL);
    if (rc) {
        free(buf);
        return rc;
    }
    s->owned = buf;
    return SCALEML_OK;
}

static int exchange_and_merge(sa_context *c, int partner, sv_segment *acc)
{
    void *sendbuf, *recvbuf = NULL;
    size_t sendbytes, recvbytes;
    sv_segment theirs;
    int rc = cu_pack(acc, &sendbuf, &sendbytes);
    if (rc) return rc;
    rc = cu_exchange(c->comm, partner, TAG_RD_ROUND, sendbuf, sendbytes, &recvbuf, &recvbytes,
                     &c->bytes_sent);
    free(sendbuf);
    if (!rc) rc = sv_unpack(recvbuf, recvbytes, 0, c->n, c->index_bytes, c->value_bytes, &theirs);
    if (!rc) rc = sv_accumulate(acc, &theirs);
    free(recvbuf);
    return rc;
}

int sparse_allreduce_recursive_doubling(sa_context *c, scaleml_result *res)
{
    int rank = c->rank, size = c->size, rc;
    int p2 = 1;
    while (p2 <= size / 2) p2 *= 2;
    int r = size - p2;
    sv_segment acc = c->input;  /* a view until the first merge */
    if ((rc = sv_apply_densify_rule(&acc))) return rc;

    int folded_rank;  /* rank among the p2 active ranks, or -1 when sitting out */
    if (rank < 2 * r) {
        if (rank % 2 == 0) {
            rc = send_segment(c, rank + 1, TAG_RD_FOLD_IN, &acc);
            folded_rank = -1;
        } else {
            sv_segment theirs;
            rc = recv_segment(c, rank - 1, TAG_RD_FOLD_IN, &theirs);
            if (!rc) rc = sv_accumulate(&acc, &theirs);
            sv_free(&theirs);
            folded_rank = rank / 2;
        }
    } else {
        folded_rank = rank - r;
    }

    for (int mask = 1; !rc && folded_rank >= 0 && mask < p2; mask <<= 1) {
        int partner_folded = folded_rank ^ mask;
        int partner = partner_folded < r ? 2 * partner_folded + 1 : partner_folded + r;
        rc = exchange_and_merge(c, partner, &acc);
    }

    if (!rc && rank < 2 * r) {
        if (rank % 2 == 1) {
            rc = send_segment(c, rank - 1, TAG_RD_FOLD_OUT, &acc);
        } else {
            sv_free(&acc);
            rc = recv_segment(c, rank + 1, TAG_RD_FOLD_OUT, &acc);
        }
    }
    if (!rc && !acc.owned) rc = sv_copy(&c->input, &acc);  /* P == 1: own the result */
    if (rc) {
        sv_free(&acc);
        return rc;
    }
    if ((rc = result_init(res, 1, c->n))) {
        sv_free(&acc);
        return rc;
    }
    res->segments[0] = acc;
    return SCALEML_OK;
}

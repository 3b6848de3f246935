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
#include "collectives/registry.h"
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

/* Receive a segment over [0, n) of at most nnz_bound entries that owns its receive buffer. */
static int recv_segment(sa_context *c, int source, int tag, uint64_t nnz_bound, sv_segment *s)
{
    void *buf = NULL;
    int rc = cu_recv_segment(c->comm, source, tag, 0, c->n, nnz_bound, c->index_bytes, c->value_bytes, &buf, s);
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
    size_t recvcap = sv_wire_bytes_bound(c->n, c->nnz_sum, c->index_bytes, c->value_bytes);
    rc = cu_exchange(c->comm, partner, TAG_RD_ROUND, sendbuf, sendbytes, recvcap, &recvbuf, &recvbytes,
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
            rc = recv_segment(c, rank - 1, TAG_RD_FOLD_IN, c->nnz_max, &theirs);
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
            rc = recv_segment(c, rank + 1, TAG_RD_FOLD_OUT, c->nnz_sum, &acc);
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

/* The model of the header comment: folds, then log2(p2) rounds whose partial
 * sums grow as the union of 2^i ranks' entries (capped at dense). */
double sparse_allreduce_recursive_doubling_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                                int *result_sparse)
{
    int P = c->ranks, log_p = P > 1 ? sa_log2_floor(P) : 0, p2 = 1 << log_p;
    double k = (double)c->nnz_max, k_mean = (double)c->nnz_sum / P;
    double K = sa_expected_union(c->n, k_mean, P);
    double time = 0.0;
    if (P > p2)
        time += 2 * p->alpha + p->beta * (sa_wire_bytes(c, k) + sa_wire_bytes(c, K)) +
                p->gamma * sa_wire_bytes(c, 2 * k);
    for (int i = 0; i < log_p; i++) {
        double ranks_held = (double)(1 << i) * P / p2;
        double size = sa_wire_bytes(c, sa_expected_union(c->n, k_mean, ranks_held < P ? ranks_held : P));
        time += p->alpha + p->beta * size + p->gamma * 3 * size;  /* pack, merge both inputs */
    }
    *result_sparse = K * (c->index_bytes + c->value_bytes) < (double)c->n * c->value_bytes;
    return time;
}

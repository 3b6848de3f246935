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
 * With a lossy value format (ctx->codec, SparCML's switch to dense quantized):
 * a partial sum past the wire's densify rule (sparse_vector.h) travels as the
 * codec's n*q bytes instead of n*c_d. Its sender replaces its own copy by the
 * decoded values (codec_encode_roundtrip), so the partners still add the same
 * operands; the ranks of a group that hold the same partial sum encode it with
 * the same random key (the group's number), so every group member sends the
 * same bytes and all ranks stay identical. The fold-in is decoded and added
 * by the odd rank (the sender keeps nothing); before the fold-out every
 * active rank replaces the sum by its decoded form with one shared key, so
 * the ranks that sat out get the identical result. The decoded values are
 * added in full precision; chained re-encoding adds each round's error.
 *
 * Cost (alpha-beta), m_i = min(size of the partial sum after i rounds, n*c_d):
 *   disjoint indices:  log2(p2)*alpha + (P-1)*k*c_s*beta  (capped by dense)
 *   identical indices: log2(p2)*(alpha + k*c_s*beta)
 *   plus, for P not a power of two, 2*(alpha + m*beta) for the folds.
 *   With a codec every n*c_d above becomes n*q (q: bytes per quantized value),
 *   and each message that travels quantized costs the format's passes: a
 *   round, n encoded and decoded by each partner (the round trip) and n
 *   decoded from the partner's bytes; the fold-in n encoded and decoded; the
 *   fold-out n encoded and decoded twice (round trip, receiver).
 * Memory: two partial sums of at most n values each: O(n) per rank.
 */
#include <stdlib.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/registry.h"
#include "collectives/comm_util.h"

/* The codec (NULL: exact), the sender's key and stream of one step. */
typedef struct {
    const scaleml_codec *codec;
    int key_rank;
    uint64_t stream;
} rd_format;

/* Send s; with roundtrip, s becomes what the receiver decodes. */
static int send_segment(sa_context *c, int dest, int tag, sv_segment *s, rd_format f, int roundtrip)
{
    void *buf;
    size_t bytes;
    int rc = cu_pack_codec(s, f.codec, roundtrip, f.key_rank, f.stream, &buf, &bytes);
    if (rc) return rc;
    rc = cu_send(c->comm, dest, tag, buf, bytes, &c->bytes_sent);
    free(buf);
    return rc;
}

/* Receive a segment over [0, n) of at most nnz_bound entries that owns its memory. */
static int recv_segment(sa_context *c, int source, int tag, uint64_t nnz_bound, const scaleml_codec *codec,
                        sv_segment *s)
{
    void *buf = NULL;
    int rc = cu_recv_segment_codec(c->comm, source, tag, 0, c->n, nnz_bound, c->index_bytes, c->value_bytes,
                                   codec, &buf, s);
    if (rc) {
        free(buf);
        return rc;
    }
    if (s->owned)  /* decoded into memory of its own */
        free(buf);
    else
        s->owned = buf;
    return SCALEML_OK;
}

static int exchange_and_merge(sa_context *c, int partner, sv_segment *acc, rd_format f)
{
    void *sendbuf, *recvbuf = NULL;
    size_t sendbytes, recvbytes;
    sv_segment theirs = {0};
    /* acc is replaced by its decoded form when it travels quantized: the partner adds the same operand. */
    int rc = cu_pack_codec(acc, f.codec, 1, f.key_rank, f.stream, &sendbuf, &sendbytes);
    if (rc) return rc;
    size_t recvcap = sv_wire_bytes_bound_codec(c->n, c->nnz_sum, c->index_bytes, c->value_bytes, f.codec);
    rc = cu_exchange(c->comm, partner, TAG_RD_ROUND, sendbuf, sendbytes, recvcap, &recvbuf, &recvbytes,
                     &c->bytes_sent);
    free(sendbuf);
    if (!rc) rc = sv_unpack_codec(recvbuf, recvbytes, 0, c->n, c->index_bytes, c->value_bytes, f.codec, &theirs);
    if (!rc) rc = sv_accumulate_consume(acc, &theirs);
    sv_free(&theirs);
    free(recvbuf);
    return rc;
}

int sparse_allreduce_recursive_doubling(sa_context *c, scaleml_result *res)
{
    int rank = c->rank, size = c->size, rc;
    int p2 = 1;
    while (p2 <= size / 2) p2 *= 2;
    int r = size - p2;
    const scaleml_codec *codec = size > 1 ? c->codec : NULL;  /* alone, nothing travels */
    sv_segment acc = c->input;  /* a view until the first merge */
    if ((rc = sv_apply_densify_rule(&acc))) return rc;

    int folded_rank;  /* rank among the p2 active ranks, or -1 when sitting out */
    if (rank < 2 * r) {
        if (rank % 2 == 0) {
            rd_format f = {codec, rank, CODEC_STREAM(CODEC_PHASE_SPARSE, SPARSE_STREAM_RD_FOLD_IN)};
            rc = send_segment(c, rank + 1, TAG_RD_FOLD_IN, &acc, f, 0);
            folded_rank = -1;
        } else {
            sv_segment theirs = {0};
            rc = recv_segment(c, rank - 1, TAG_RD_FOLD_IN, c->nnz_max, codec, &theirs);
            if (!rc) rc = sv_accumulate_consume(&acc, &theirs);
            sv_free(&theirs);
            folded_rank = rank / 2;
        }
    } else {
        folded_rank = rank - r;
    }

    int round = 0;
    for (int mask = 1; !rc && folded_rank >= 0 && mask < p2; mask <<= 1, round++) {
        int partner_folded = folded_rank ^ mask;
        int partner = partner_folded < r ? 2 * partner_folded + 1 : partner_folded + r;
        /* Before round i the folded ranks that share folded_rank >> i hold the same partial sum. */
        rd_format f = {codec, folded_rank >> round,
                       CODEC_STREAM(CODEC_PHASE_SPARSE, SPARSE_STREAM_RD_ROUND + (uint64_t)round)};
        rc = exchange_and_merge(c, partner, &acc, f);
    }

    rd_format fold_out = {codec, 0, CODEC_STREAM(CODEC_PHASE_SPARSE, SPARSE_STREAM_RD_FOLD_OUT)};
    if (!rc && rank < 2 * r) {
        if (rank % 2 == 1) {
            rc = send_segment(c, rank - 1, TAG_RD_FOLD_OUT, &acc, fold_out, 1);
        } else {
            sv_free(&acc);
            rc = recv_segment(c, rank + 1, TAG_RD_FOLD_OUT, c->nnz_sum, codec, &acc);
        }
    } else if (!rc && r > 0 && codec) {
        /* Active ranks that send nothing take the decoded sum too: the same for all. */
        void *scratch;
        size_t bytes;
        rc = cu_pack_codec(&acc, codec, 1, fold_out.key_rank, fold_out.stream, &scratch, &bytes);
        free(scratch);
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
    double n = (double)c->n, time = 0.0;
    if (P > p2) {
        time += 2 * p->alpha + p->beta * (sa_wire_bytes(c, k) + sa_wire_bytes(c, K)) +
                p->gamma * sa_wire_bytes(c, 2 * k);
        if (sa_travels_quantized(c, k)) time += sa_codec_seconds(c, n, n, 0);
        if (sa_travels_quantized(c, K)) time += sa_codec_seconds(c, n, 2 * n, 0);
    }
    for (int i = 0; i < log_p; i++) {
        double ranks_held = (double)(1 << i) * P / p2;
        double entries = sa_expected_union(c->n, k_mean, ranks_held < P ? ranks_held : P);
        double size = sa_wire_bytes(c, entries);
        time += p->alpha + p->beta * size + p->gamma * 3 * size;  /* pack, merge both inputs */
        if (sa_travels_quantized(c, entries)) time += sa_codec_seconds(c, n, 2 * n, 0);
    }
    /* A sum past the wire's rule is dense (decoded from the lossy format, if any). */
    *result_sparse = K * (c->index_bytes + c->value_bytes) < sa_dense_wire_bytes(c, (double)c->n);
    return time;
}

/*
 * Quantized AllReduce by recursive halving and recursive doubling
 * (latency-bound case: log2 P messages instead of the ring's P-1), for dense
 * data in the caller's lossy format (collectives/codec.h). Any P.
 *
 * Steps, with p2 = 2^floor(log2 P) and r = P - p2, blocks = p2 ranges of [0, n):
 *   1. fold in (only when P is not a power of two): of the first 2r ranks,
 *      each even rank sends its whole vector, encoded, to the next odd rank,
 *      which decodes and adds it, and sits out;
 *   2. recursive halving, log2(p2) rounds: with the rank's range of blocks
 *      cut in two halves, it sends the half its partner keeps (encoded) and
 *      decodes and adds the partner's encoding of the half it keeps; the
 *      rank ends with the sum of one block;
 *   3. the owner encodes its block once and replaces it by the decoded values;
 *   4. recursive doubling, log2(p2) rounds: partners swap all the encoded
 *      blocks they hold (the bytes are never re-encoded) and decode them;
 *   5. fold out: each odd rank of the first 2r sends all encoded blocks to
 *      its even neighbour. Every rank decodes the same bytes: identical results.
 * At P = 1 the input is the result.
 *
 * Cost, q = encoded bytes per value:
 *   2*log2(p2)*alpha + 2*(p2-1)/p2 * n*q*beta   (+ 2*(alpha + n*q*beta) for the folds)
 *   + exact: gamma * n*c_d * 5 (copy, add) (+ gamma * 2 n*c_d for the folds);
 *   lossy: gamma * 2 n*c_d (the input copy) and, at the format's seconds per
 *   value, n encoded (halves of n/2, n/4, ... n/p2 and the owner's block),
 *   n decoded (the owner's round trip, the doubling's (p2-1)/p2 n) and
 *   (p2-1)/p2 n decoded and added (the halves kept); the folds add n of each
 *   (encoded by the even rank, decoded and added by the odd one, the result's
 *   encoding decoded by the even one).
 * Error: log2(p2) + 1 encodings of each value (+1 with a fold).
 * Memory: the n-value result and the n*q encoded blocks, a send and a receive
 * buffer of at most n*q bytes.
 */
#include <stdlib.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"

/* Send `sendbytes` from sendbuf and receive exactly recvbytes into recvbuf from the same partner. */
static int swap(sa_context *c, int partner, int tag, const void *sendbuf, size_t sendbytes, void *recvbuf,
                size_t recvbytes)
{
    MPI_Request reqs[2];
    int rc = cu_irecv(c->comm, partner, tag, recvbuf, recvbytes, &reqs[0]);
    if (rc) return rc;
    if ((rc = cu_isend(c->comm, partner, tag, sendbuf, sendbytes, &reqs[1], &c->bytes_sent))) {
        qa_cancel(reqs, 1);
        return rc;
    }
    rc = cu_wait_exact(&reqs[0], recvbytes);
    int send_rc = cu_waitall(1, &reqs[1], NULL);
    return rc ? rc : send_rc;
}

/* Values [start, start + len) of blocks [lo, hi). */
static void blocks_range(const qa_layout *l, int lo, int hi, uint64_t *start, uint64_t *len)
{
    uint64_t s0, l0, s1, l1;
    cu_block_range(l->n, l->parts, lo, &s0, &l0);
    cu_block_range(l->n, l->parts, hi - 1, &s1, &l1);
    *start = s0;
    *len = s1 + l1 - s0;
}

static int rhd_core(sa_context *c, const qa_layout *l, int folded, char *all, uint8_t *slots, uint8_t *buf,
                    uint8_t *rbuf, void *scratch, int r_extra)
{
    int p2 = l->parts, rc = SCALEML_OK, lo = 0, round = 0;
    unsigned vb = (unsigned)c->value_bytes;
    for (int mask = p2 / 2; mask >= 1 && !rc; mask /= 2, round++) {
        int partner_f = folded ^ mask, partner = partner_f < r_extra ? 2 * partner_f + 1 : partner_f + r_extra;
        int keep_lo = (folded & mask) ? lo + mask : lo, send_lo = (folded & mask) ? lo : lo + mask;
        uint64_t ks, kl, ss, sl;
        blocks_range(l, keep_lo, keep_lo + mask, &ks, &kl);
        blocks_range(l, send_lo, send_lo + mask, &ss, &sl);
        size_t sbytes = codec_bytes(c->codec, sl, c->value_bytes), rbytes = codec_bytes(c->codec, kl, c->value_bytes);
        rc = codec_encode(c->codec, all + ss * vb, sl, c->value_bytes, c->rank,
                          CODEC_STREAM(CODEC_PHASE_REDUCE, round), buf);
        if (!rc) rc = swap(c, partner, TAG_QUANT_REDUCE, buf, sbytes, rbuf, rbytes);
        if (!rc) rc = codec_decode_add(c->codec, rbuf, rbytes, kl, all + ks * vb, scratch, c->value_bytes);
        lo = keep_lo;
    }
    if (!rc) rc = qa_encode_block(c, l, folded, all, slots, CODEC_PHASE_FINAL, NULL, 0, scratch);
    for (int mask = 1; mask < p2 && !rc; mask *= 2) {
        int partner_f = folded ^ mask, partner = partner_f < r_extra ? 2 * partner_f + 1 : partner_f + r_extra;
        int mine = folded & ~(mask - 1), theirs = partner_f & ~(mask - 1);
        rc = swap(c, partner, TAG_QUANT_GATHER, slots + l->offset[mine], l->offset[mine + mask] - l->offset[mine],
                  slots + l->offset[theirs], l->offset[theirs + mask] - l->offset[theirs]);
        for (int j = theirs; j < theirs + mask && !rc; j++) rc = qa_decode_block(l, j, slots, all, 0, scratch);
    }
    return rc;
}

int quantized_allreduce_rhd(sa_context *c, scaleml_result *res)
{
    scaleml_codec local;
    qa_overflow_to_inf(c, &local);
    sv_segment all;
    int rc = qa_dense_start(c, &all);
    if (rc) return rc;
    int rank = c->rank, size = c->size, p2 = 1;
    while (p2 <= size / 2) p2 *= 2;
    int r_extra = size - p2;
    if (size > 1) {
        qa_layout l;
        uint8_t *slots = NULL, *buf = NULL, *rbuf = NULL;
        void *scratch = NULL;
        size_t whole = codec_bytes(c->codec, c->n, c->value_bytes);
        rc = qa_layout_init(&l, c, p2, 0);
        if (!rc) {
            slots = qa_workspace(QA_WS_SLOTS, l.offset[p2]);
            buf = qa_workspace(QA_WS_SEND0, whole);
            rbuf = qa_workspace(QA_WS_RECV, whole);
            scratch = qa_workspace(QA_WS_SCRATCH, c->n * (unsigned)c->value_bytes);
            if (!slots || !buf || !rbuf || !scratch)
                rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %zu encoded bytes", whole);
        }
        int folded = rank - r_extra;
        if (!rc && rank < 2 * r_extra) {
            if (rank % 2 == 0) {
                folded = -1;
                rc = codec_encode(c->codec, all.values, c->n, c->value_bytes, rank, CODEC_STREAM(CODEC_PHASE_FOLD, 0),
                                  buf);
                if (!rc) rc = cu_send(c->comm, rank + 1, TAG_QUANT_FOLD_IN, buf, whole, &c->bytes_sent);
            } else {
                folded = rank / 2;
                MPI_Request req;
                rc = cu_irecv(c->comm, rank - 1, TAG_QUANT_FOLD_IN, rbuf, whole, &req);
                if (!rc) rc = cu_wait_exact(&req, whole);
                if (!rc) rc = codec_decode_add(c->codec, rbuf, whole, c->n, all.values, scratch, c->value_bytes);
            }
        }
        if (!rc && folded >= 0) rc = rhd_core(c, &l, folded, all.values, slots, buf, rbuf, scratch, r_extra);
        if (!rc && rank < 2 * r_extra) {
            if (rank % 2 == 1) {
                rc = cu_send(c->comm, rank - 1, TAG_QUANT_FOLD_OUT, slots, l.offset[p2], &c->bytes_sent);
            } else {
                MPI_Request req;
                rc = cu_irecv(c->comm, rank + 1, TAG_QUANT_FOLD_OUT, slots, l.offset[p2], &req);
                if (!rc) rc = cu_wait_exact(&req, l.offset[p2]);
                for (int j = 0; j < p2 && !rc; j++) rc = qa_decode_block(&l, j, slots, all.values, 0, scratch);
            }
        }
        qa_layout_free(&l);
    }
    return qa_result(res, &all, c->n, rc);
}

double quantized_allreduce_rhd_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    int P = c->ranks, log_p = P > 1 ? sa_log2_floor(P) : 0, p2 = 1 << log_p;
    int lossy = c->quantized_value_bytes > 0;
    double n = (double)c->n, q = lossy ? c->quantized_value_bytes : c->value_bytes;
    double dense = n * c->value_bytes;
    *result_sparse = 0;
    if (P == 1) return p->gamma * dense;
    double time = 2 * log_p * p->alpha + p->beta * 2 * (p2 - 1) / p2 * n * q +
                  (lossy ? p->gamma * dense * 2 + sa_codec_seconds(c, n, n, (double)(p2 - 1) / p2 * n)
                         : p->gamma * dense * 5);
    if (P > p2)
        time += 2 * (p->alpha + p->beta * n * q) + (lossy ? sa_codec_seconds(c, n, n, n) : p->gamma * dense * 2);
    return time;
}

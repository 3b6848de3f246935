/*
 * Quantized AllReduce with error feedback on both sides (the scheme of 1-bit
 * Adam / DeepSpeed's compressed allreduce; 1-bit by default, any lossy format
 * of collectives/codec.h).
 *
 * Steps (blocks = P ranges of [0, n), block j owned by rank j):
 *   1. worker compression: y = x + e_w (the worker residual over [0, n), when
 *      given); y is encoded block by block and e_w = y - decode(encode(y));
 *   2. each rank sends encoded block j straight to rank j (P-1 messages);
 *   3. the owner decodes the P contributions to its block and sums them in
 *      rank order (not arrival order: the same result every run), adds its
 *      server residual e_s (when given), encodes the block once and keeps
 *      e_s = z - decode(encode(z));
 *   4. ring allgather of the encoded blocks (quantized_allgather.c): every
 *      rank decodes the same bytes, so all ranks hold the same result, bitwise.
 * With both residuals, what was applied plus the residuals equals what was
 * put in, step after step (error feedback conserves mass). At P = 1 the input
 * is the result (no compression, residuals untouched).
 *
 * Cost, q = encoded bytes per value (1-bit: (1 + 64/bucket)/8):
 *   (P-1)*alpha + (P-1)/P * n*q*beta           (to the owners)
 * + (P-1)*alpha*chunks + (P-1)/P * n*q*beta    (allgather)
 * + exact: gamma * n*c_d * 6 (copies and adds on both sides);
 *   lossy: gamma * 2 n/P*c_d (the owner's sum copied in and out) and, at the
 *   format's seconds per value, (P+1)/P n encoded (the worker's n, the
 *   owner's block), (P+1)/P n decoded (the own block's round trip, the
 *   owner's round trip, the (P-1)/P n gathered) and (P-1)/P n decoded and
 *   added (the other ranks' contributions to the owner's block; rank 0's
 *   first is a plain decode, so rank 0 is the slowest). With a worker residual
 *   the other blocks are decoded too ((P-1)/P n more, not in the model: one
 *   pass of 1-bit, bucket <= 4096, writes the residual while encoding).
 * Error: two encodings of each contribution (worker and server), each
 * corrected at the next step by its residual.
 * Memory: the n-value result, n*q bytes encoded to send, (P-1) n*q/P received,
 * n*q/P for the encoded result.
 */
#include <stdlib.h>
#include <string.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"

/* src: this rank's contribution (the caller's dense input, or all itself); all: the result, of which only
 * block r is written here. */
static int reduce_at_owners(sa_context *c, const qa_layout *l, const char *src, char *all, uint8_t *slots,
                            void *scratch)
{
    int P = c->size, r = c->rank, rc = SCALEML_OK;
    unsigned vb = (unsigned)c->value_bytes;
    uint64_t my_start, my_len;
    cu_block_range(c->n, P, r, &my_start, &my_len);
    size_t my_slot = l->offset[r + 1] - l->offset[r];
    uint8_t *send = qa_workspace(QA_WS_SEND0, l->offset[P]), *recv = qa_workspace(QA_WS_RECV, (size_t)P * my_slot);
    char *sum = qa_workspace(QA_WS_SUM, my_len * vb);
    MPI_Request *reqs = malloc(2 * (size_t)P * sizeof *reqs);
    int nsends = 0;
    if (!send || !recv || !sum || !reqs) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %zu encoded bytes", l->offset[P]);
        goto done;
    }
    MPI_Request *recvs = reqs, *sends = reqs + P;
    for (int j = 0; j < P; j++) recvs[j] = MPI_REQUEST_NULL;
    for (int step = 1; step < P && !rc; step++) {  /* receives first */
        int src = (r - step + P) % P;
        rc = cu_irecv(c->comm, src, TAG_QUANT_REDUCE, recv + (size_t)src * my_slot, my_slot, &recvs[src]);
    }
    for (int step = 1; step <= P && !rc; step++) {  /* the next rank first: spreads the load; own block last */
        int j = (r + step) % P;
        if (j == r) {  /* kept: y = x + e_w, replaced by what the owner (this rank) decodes */
            char *own = all + my_start * vb;
            if (c->worker_residual) {
                const char *e = (const char *)c->worker_residual + my_start * vb;
                if (src == all) codec_add(own, e, my_len, c->value_bytes);
                else codec_sum(own, src + my_start * vb, e, my_len, c->value_bytes);
            } else if (src != all) {
                memcpy(own, src + my_start * vb, my_len * vb);
            }
            rc = qa_encode_block(c, l, j, all, send, CODEC_PHASE_REDUCE, c->worker_residual, 0, scratch);
            break;
        }
        /* sent away: only the encoding and the residual matter (block j of the result comes from the
         * allgather), so y = x + e_w is formed inside the encoding, never stored */
        for (uint64_t i = 0; i < qa_chunk_count(l, j) && !rc; i++) {
            uint64_t start, len;
            size_t at, bytes;
            qa_chunk(l, j, i, &start, &len, &at, &bytes);
            if (c->worker_residual)
                rc = codec_encode_plus_residual(c->codec, src + start * vb, len, c->value_bytes, r,
                                                CODEC_STREAM(CODEC_PHASE_REDUCE, start), send + at,
                                                (char *)c->worker_residual + start * vb, scratch);
            else
                rc = codec_encode(c->codec, src + start * vb, len, c->value_bytes, r,
                                  CODEC_STREAM(CODEC_PHASE_REDUCE, start), send + at);
        }
        if (!rc) {
            rc = cu_isend(c->comm, j, TAG_QUANT_REDUCE, send + l->offset[j], l->offset[j + 1] - l->offset[j],
                          &sends[nsends], &c->bytes_sent);
            if (!rc) nsends++;
        }
    }
    for (int src = 0; src < P && !rc; src++) {  /* rank order; the first contribution starts the sum */
        if (src == r) {  /* already decoded by the round trip */
            if (src == 0) memcpy(sum, all + my_start * vb, my_len * vb);
            else codec_add(sum, all + my_start * vb, my_len, c->value_bytes);
            continue;
        }
        rc = cu_wait_exact(&recvs[src], my_slot);
        /* decode block r from the received slot (a copy of the sender's slot r) */
        for (uint64_t i = 0; i < qa_chunk_count(l, r) && !rc; i++) {
            uint64_t start, len;
            size_t at, bytes;
            qa_chunk(l, r, i, &start, &len, &at, &bytes);
            const uint8_t *slot = recv + (size_t)src * my_slot + (at - l->offset[r]);
            char *to = sum + (start - my_start) * vb;
            rc = src == 0 ? codec_decode(c->codec, slot, bytes, len, to, c->value_bytes)
                          : codec_decode_add(c->codec, slot, bytes, len, to, scratch, c->value_bytes);
        }
    }
    if (rc) qa_cancel(recvs, (uint64_t)P);
    if (nsends) {
        int wait_rc = cu_waitall(nsends, sends, NULL);
        if (!rc) rc = wait_rc;
    }
    if (!rc) {
        if (c->server_residual) codec_sum(all + my_start * vb, sum, c->server_residual, my_len, c->value_bytes);
        else memcpy(all + my_start * vb, sum, my_len * vb);
        rc = qa_encode_block(c, l, r, all, slots, CODEC_PHASE_FINAL, c->server_residual, my_start, scratch);
    }
done:
    free(reqs);
    return rc;
}

int quantized_allreduce_direct(sa_context *c, scaleml_result *res)
{
    scaleml_codec local;
    qa_overflow_to_inf(c, &local);
    sv_segment all;
    /* a dense input is read where it lies: only the own block is written into the result before the allgather */
    int rc = c->size > 1 && c->input.dense ? result_dense_storage(c, &all) : qa_dense_start(c, &all);
    if (rc) return rc;
    const char *src = c->size > 1 && c->input.dense ? c->input.values : all.values;
    if (c->size > 1) {
        qa_layout l;
        uint8_t *slots = NULL;
        void *scratch = NULL;
        rc = qa_pipeline_setup(c, &l, &slots, &scratch);
        if (!rc) rc = reduce_at_owners(c, &l, src, all.values, slots, scratch);
        if (!rc) rc = qa_ring_allgather(c, &l, slots, all.values, scratch);
        qa_layout_free(&l);
    }
    return qa_result(res, &all, c->n, rc);
}

double quantized_allreduce_direct_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                       int *result_sparse)
{
    int P = c->ranks;
    int lossy = c->quantized_value_bytes > 0;
    double n = (double)c->n, q = lossy ? c->quantized_value_bytes : c->value_bytes;
    double chunks = n / P / 65536.0, dense = n * c->value_bytes;
    *result_sparse = 0;
    if (P == 1) return p->gamma * dense;
    double local = lossy ? p->gamma * dense * 2 / P +
                               sa_codec_seconds(c, (double)(P + 1) / P * n, (double)(P + 1) / P * n,
                                                (double)(P - 1) / P * n)
                         : p->gamma * dense * 6;
    return (P - 1) * p->alpha * (1 + (chunks > 1 ? chunks : 1)) + p->beta * 2 * (P - 1) / P * n * q + local;
}

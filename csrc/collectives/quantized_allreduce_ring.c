/*
 * Quantized AllReduce by ring reduce-scatter and ring allgather
 * (bandwidth-bound case), for dense data in the caller's lossy format
 * (QSGD b-bit, float16/bfloat16 or 1-bit: collectives/codec.h). Without a
 * lossy format it is the exact pipelined ring (registry entry `ring`): values
 * are sent straight from the result buffer and received into it, no copies.
 *
 * Steps (P ranks, the index space cut into P blocks, each into chunks):
 *   1. reduce-scatter, P-1 steps: in step s rank r sends its partial sum of
 *      block (r-s-1) mod P, encoded, to rank r+1, and receives block
 *      (r-s-2) mod P from rank r-1; each received chunk is decoded, added in
 *      full precision to the rank's own values and re-encoded for the next
 *      step at once, so coding overlaps the transfer of the next chunk.
 *      Rank r ends with the full sum of block r.
 *   2. the owner encodes its block once and replaces it by the decoded values;
 *   3. ring allgather of the encoded blocks (quantized_allgather.c): every
 *      rank decodes the same bytes, so all ranks hold the same result, bitwise.
 * At P = 1 the input is the result (nothing is encoded).
 *
 * Cost, q = encoded bytes per value (QSGD: (bits + 1 + 32/bucket)/8):
 *   2*(P-1)*alpha (times the chunks per block)
 *   + max(2*(P-1)/P * n*q*beta, local work): pipelined, the coding of a chunk
 *   overlaps the transfer of the next. Local work: the input copy (gamma *
 *   2 n*c_d), then exact: adding (P-1)/P n received values (gamma * 3 c_d
 *   each); lossy, at the format's seconds per value: n encoded (block sb in
 *   step 0, the received block in steps 0 .. P-3, the owner's block once),
 *   n decoded (the owner's round trip, the P-1 gathered blocks) and (P-1)/P n
 *   decoded and added (one block per reduce-scatter step).
 * Bytes sent per rank: 2 (P-1)/P n q, independent of P.
 * Error: each block's partial sum is re-encoded at each of the P-1 steps, then
 * once more by its owner: P independent unbiased roundings for QSGD.
 * Memory: the n-value result, two encoded blocks to send and one to receive,
 * the n*q encoded result.
 */
#include <stdlib.h>
#include <string.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"

/* Post the receives of reduce-scatter step s (block (r-s-2) mod P from the left) into buf. */
static int post_step(sa_context *c, const qa_layout *l, int s, uint8_t *buf, MPI_Request *recvs, uint64_t *nrecvs)
{
    int P = c->size, rb = (c->rank - s - 2 + 2 * P) % P, left = (c->rank - 1 + P) % P, rc = SCALEML_OK;
    *nrecvs = 0;
    for (uint64_t i = 0; i < qa_chunk_count(l, rb) && !rc; i++) {
        uint64_t start, len;
        size_t at, bytes;
        qa_chunk(l, rb, i, &start, &len, &at, &bytes);
        rc = cu_irecv(c->comm, left, TAG_QUANT_REDUCE, buf + (at - l->offset[rb]), bytes, &recvs[*nrecvs]);
        if (!rc) (*nrecvs)++;
    }
    return rc;
}

/* Reduce-scatter: rank r ends with the sum of block r in all (see above). The receives of step s+1 are
 * posted before step s is processed, so the left neighbour's first chunks of step s+1 never wait for a
 * receive (a rendezvous message would otherwise stall the pipeline at every step).
 * in: the caller's separate dense input, or NULL when all already holds it. Each block but (r-1) mod P is
 * received exactly once, so a chunk of the input is copied into all just before its first received chunk
 * is added (a cache-hot copy instead of a pass over n values); block (r-1) mod P is sent from in and
 * filled by the allgather. */
static int ring_reduce_scatter(sa_context *c, const qa_layout *l, char *all, const char *in, void *scratch)
{
    int P = c->size, r = c->rank, right = (r + 1) % P, rc = SCALEML_OK;
    unsigned vb = (unsigned)c->value_bytes;
    size_t slot = qa_max_slot(l);
    uint64_t most = qa_chunk_count(l, 0);
    uint8_t *sendbuf[2] = {qa_workspace(QA_WS_SEND0, slot), qa_workspace(QA_WS_SEND1, slot)};
    uint8_t *recvbuf[2] = {qa_workspace(QA_WS_RECV, slot), qa_workspace(QA_WS_RECV1, slot)};
    MPI_Request *sends[2] = {malloc(most * sizeof(MPI_Request)), malloc(most * sizeof(MPI_Request))};
    MPI_Request *recvs[2] = {malloc(most * sizeof(MPI_Request)), malloc(most * sizeof(MPI_Request))};
    uint64_t nsends[2] = {0, 0}, nrecvs[2] = {0, 0};
    if (!sendbuf[0] || !sendbuf[1] || !recvbuf[0] || !recvbuf[1] || !sends[0] || !sends[1] || !recvs[0] ||
        !recvs[1]) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for the ring's buffers (%zu bytes)", slot);
        goto done;
    }
    if (P > 1) rc = post_step(c, l, 0, recvbuf[0], recvs[0], &nrecvs[0]);
    /* Slot offsets of block j relative to the block: chunk i is at at - l->offset[j]. */
    for (int s = 0; s < P - 1 && !rc; s++) {
        int sb = (r - s - 1 + P) % P, rb = (r - s - 2 + 2 * P) % P, cur = s % 2, next = (s + 1) % 2;
        uint64_t chunks = qa_chunk_count(l, rb);
        if (s == 0) {  /* the first step sends the rank's own values of block sb */
            for (uint64_t i = 0; i < qa_chunk_count(l, sb) && !rc; i++) {
                uint64_t start, len;
                size_t at, bytes;
                qa_chunk(l, sb, i, &start, &len, &at, &bytes);
                /* exact: sent straight from the values, which stay untouched until the allgather */
                const char *own = in ? in : all;
                const uint8_t *out = codec_lossy(c->codec) ? sendbuf[cur] + (at - l->offset[sb])
                                                           : (const uint8_t *)own + start * vb;
                rc = codec_encode(c->codec, own + start * vb, len, c->value_bytes, r,
                                  CODEC_STREAM(CODEC_PHASE_REDUCE, start), (uint8_t *)out);
                if (!rc) rc = cu_isend(c->comm, right, TAG_QUANT_REDUCE, out, bytes, &sends[cur][nsends[cur]],
                                       &c->bytes_sent);
                if (!rc) nsends[cur]++;
            }
        }
        /* recvbuf[next] was consumed in step s-1: post step s+1's receives into it now */
        if (!rc && s + 1 < P - 1) rc = post_step(c, l, s + 1, recvbuf[next], recvs[next], &nrecvs[next]);
        /* sendbuf[next] is refilled in this step: the sends of step s-1 that used it must be done. */
        if (!rc && nsends[next]) rc = cu_waitall((int)nsends[next], sends[next], NULL);
        if (!rc) nsends[next] = 0;
        for (uint64_t i = 0; i < chunks && !rc; i++) {
            uint64_t start, len;
            size_t at, bytes;
            qa_chunk(l, rb, i, &start, &len, &at, &bytes);
            rc = cu_wait_exact(&recvs[cur][i], bytes);
            if (!rc && in) memcpy(all + start * vb, in + start * vb, len * vb);
            if (!rc)
                rc = codec_decode_add(c->codec, recvbuf[cur] + (at - l->offset[rb]), bytes, len, all + start * vb,
                                      scratch, c->value_bytes);
            if (!rc && s < P - 2) {  /* block rb is what this rank sends in the next step */
                uint8_t *out = codec_lossy(c->codec) ? sendbuf[next] + (at - l->offset[rb]) : (uint8_t *)all + start * vb;
                rc = codec_encode(c->codec, all + start * vb, len, c->value_bytes, r,
                                  CODEC_STREAM(CODEC_PHASE_REDUCE, start), out);
                if (!rc) rc = cu_isend(c->comm, right, TAG_QUANT_REDUCE, out, bytes, &sends[next][nsends[next]],
                                       &c->bytes_sent);
                if (!rc) nsends[next]++;
            }
        }
    }
    if (rc) {  /* withdraw whatever is still posted */
        qa_cancel(recvs[0], nrecvs[0]);
        qa_cancel(recvs[1], nrecvs[1]);
    }
    for (int b = 0; b < 2; b++) {
        if (nsends[b]) {
            int wait_rc = cu_waitall((int)nsends[b], sends[b], NULL);
            if (!rc) rc = wait_rc;
        }
    }
done:
    free(sends[0]);
    free(sends[1]);
    free(recvs[0]);
    free(recvs[1]);
    return rc;
}

int dense_allreduce_ring(sa_context *c, scaleml_result *res)
{
    c->codec = NULL;  /* exact, whatever format the caller allowed */
    return quantized_allreduce_ring(c, res);
}

int quantized_allreduce_ring(sa_context *c, scaleml_result *res)
{
    scaleml_codec local;
    qa_overflow_to_inf(c, &local);
    sv_segment all;
    /* a separate dense input is read where it lies (see ring_reduce_scatter), not copied first */
    const char *in = c->size > 1 && c->input.dense && c->input.values != c->dense_out ? c->input.values : NULL;
    int rc = in ? result_dense_storage(c, &all) : qa_dense_start(c, &all);
    if (rc) return rc;
    if (c->size > 1) {
        qa_layout l;
        uint8_t *slots = NULL;
        void *scratch = NULL;
        /* exact: the slots are the values themselves (block j's chunk i lies at its values' byte offset) */
        int exact = !codec_lossy(c->codec);
        rc = qa_pipeline_setup(c, &l, exact ? NULL : &slots, &scratch);
        if (exact) slots = all.values;
        if (!rc) rc = ring_reduce_scatter(c, &l, all.values, in, scratch);
        if (!rc) rc = qa_encode_block(c, &l, c->rank, all.values, slots, CODEC_PHASE_FINAL, NULL, 0, scratch);
        if (!rc) rc = qa_ring_allgather(c, &l, slots, all.values, scratch);
        qa_layout_free(&l);
    }
    return qa_result(res, &all, c->n, rc);
}

double quantized_allreduce_ring_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    int P = c->ranks;
    int lossy = c->quantized_value_bytes > 0;
    double n = (double)c->n, q = lossy ? c->quantized_value_bytes : c->value_bytes;
    double chunks = n / P / 65536.0, share = (double)(P - 1) / P;
    *result_sparse = 0;
    if (P == 1) return p->gamma * n * c->value_bytes;
    /* Pipelined: coding a chunk overlaps the transfer of the next, so the slower of the two sets the pace;
     * one chunk's coding is not hidden. Local work: copying the input (2 c_d per value; chunk by chunk), then
     * exact, adding (P-1)/P n values (3 c_d each); lossy, the format's passes (header comment). */
    double wire = p->beta * 2 * share * n * q;
    double work = p->gamma * n * c->value_bytes * (2 + (lossy ? 0 : share * 3)) +
                  (lossy ? sa_codec_seconds(c, n, n, share * n) : 0);
    double messages = 2 * (P - 1) * p->alpha * (chunks > 1 ? chunks : 1);
    return messages + (wire > work ? wire : work) + (chunks > 1 ? (wire < work ? wire : work) / chunks : 0);
}

double dense_allreduce_ring_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    scaleml_cost_case exact = *c;
    exact.quantized_value_bytes = 0;
    return quantized_allreduce_ring_cost(&exact, p, result_sparse);
}

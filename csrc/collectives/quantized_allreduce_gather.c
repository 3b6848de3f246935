/*
 * Quantized AllReduce by allgather of encoded inputs: every lossy step is a
 * whole-vector pass (one encode of each rank's input, then decodes and
 * decode-and-adds), so the CUDA path can run each one as one kernel over
 * device memory and move only compressed bytes across PCIe; this host
 * version is the reference its results are checked against, bitwise.
 *
 * Steps:
 *   1. rank r encodes its whole input once, as consecutive chunks of
 *      scaleml_gather_chunk(codec) values (SCALEML_GATHER_CHUNK rounded down to
 *      whole buckets, at least one bucket; the same for every P), each chunk
 *      with codec_encode and the random stream scaleml_gather_stream(start) =
 *      CODEC_STREAM(CODEC_PHASE_REDUCE, start) of its first value `start`, so
 *      its key is scaleml_rng_key(seed, r, step, scaleml_gather_stream(start));
 *      the chunks' encodings lie one after another in one message of
 *      m = sum of codec_bytes(chunk) bytes, the same size on every rank;
 *   2. allgather of the messages: rank r sends its message to each other rank
 *      (to r+1 first, spreading the load) and receives theirs, point to point
 *      (cu_isend/cu_irecv, so the watchdog and the fault hook see every wait,
 *      and decoding the first messages overlaps the arrival of the later ones);
 *   3. every rank decodes the P messages in rank order into the result, chunk
 *      by chunk: rank 0's with codec_decode, ranks 1 .. P-1 with
 *      codec_decode_add. Every rank decodes the same bytes in the same order,
 *      so the result is identical on every rank, bitwise.
 * Semantics: the result is sum_j decode(encode_j(x_j)); unlike the algorithms
 * that round-trip what they send (codec.h), the own contribution is quantized
 * too, exactly as the others see it. Each value is encoded once (P independent
 * roundings in the sum, against up to P re-encodings of partial sums in the
 * ring). At P = 1 the input is the result, as for the other lossy algorithms
 * (nothing is encoded). fp16/bf16 values beyond the format's range become
 * +-inf (qa_overflow_to_inf). Sparse input is densified into the result first.
 * Cost, q = encoded bytes per value (P = 1: gamma * n*c_d, a copy):
 *   (P-1)*alpha + (P-1) * n*q*beta
 *   + at the format's seconds per value: n encoded, n decoded (rank 0's
 *     message) and (P-1) n decoded and added;
 *   exact values (no format; never run, the entry is lossy): gamma * P n*c_d.
 * It suits few ranks (those sharing a GPU node) and fast decoders: the bytes
 * sent grow as P-1 times the message, the ring's stay below 2.
 * Memory: the n-value result and P*m bytes of messages.
 */
#include <stdint.h>
#include <stdlib.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"

uint64_t scaleml_gather_chunk(const scaleml_codec *codec)
{
    uint64_t bucket = codec && (codec->kind == SCALEML_CODEC_QSGD || codec->kind == SCALEML_CODEC_ONEBIT) &&
                              codec->bucket > 0 ? codec->bucket : 1;
    if (bucket >= SCALEML_GATHER_CHUNK) return bucket;
    return SCALEML_GATHER_CHUNK / bucket * bucket;  /* whole buckets: no short bucket inside the message */
}

uint64_t scaleml_gather_stream(uint64_t start)
{
    return CODEC_STREAM(CODEC_PHASE_REDUCE, start);
}

/* Encode src, allgather the messages and decode them in rank order into all (n values). */
static int gather_and_sum(sa_context *c, const char *src, char *all)
{
    int P = c->size, r = c->rank, rc;
    unsigned vb = (unsigned)c->value_bytes;
    qa_layout l;
    if ((rc = qa_layout_init(&l, c, 1, scaleml_gather_chunk(c->codec)))) return rc;
    size_t m = l.offset[1];
    uint64_t chunks = qa_chunk_count(&l, 0);
    MPI_Request *reqs = malloc(2 * (size_t)P * sizeof *reqs);
    uint8_t *slots = m <= SIZE_MAX / (size_t)P ? qa_workspace(QA_WS_SLOTS, (size_t)P * m) : NULL;
    void *scratch = qa_workspace(QA_WS_SCRATCH, qa_max_chunk(&l) * vb);
    int nsends = 0;
    if (!reqs || !slots || !scratch) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d messages of %zu bytes", P, m);
        goto done;
    }
    MPI_Request *recvs = reqs, *sends = reqs + P;
    for (int j = 0; j < P; j++) recvs[j] = MPI_REQUEST_NULL;
    for (int step = 1; step < P && !rc; step++) {  /* receives first */
        int src_rank = (r - step + P) % P;
        rc = cu_irecv(c->comm, src_rank, TAG_QUANT_GATHER, slots + (size_t)src_rank * m, m, &recvs[src_rank]);
    }
    uint8_t *mine = slots + (size_t)r * m;
    for (uint64_t i = 0; i < chunks && !rc; i++) {
        uint64_t start, len;
        size_t at, bytes;
        qa_chunk(&l, 0, i, &start, &len, &at, &bytes);
        rc = codec_encode(c->codec, src + start * vb, len, c->value_bytes, r, scaleml_gather_stream(start),
                          mine + at);
    }
    for (int step = 1; step < P && !rc; step++) {
        rc = cu_isend(c->comm, (r + step) % P, TAG_QUANT_GATHER, mine, m, &sends[nsends], &c->bytes_sent);
        if (!rc) nsends++;
    }
    for (int j = 0; j < P && !rc; j++) {  /* rank order, the own message at its place; rank 0's starts the sum */
        if (j != r) rc = cu_wait_exact(&recvs[j], m);
        if (!rc) rc = qa_decode_block(&l, 0, slots + (size_t)j * m, all, j > 0, scratch);
    }
    if (rc) qa_cancel(recvs, (uint64_t)P);
    if (nsends) {
        int wait_rc = cu_waitall(nsends, sends, NULL);
        if (!rc) rc = wait_rc;
    }
done:
    free(reqs);
    qa_layout_free(&l);
    return rc;
}

int quantized_allreduce_gather(sa_context *c, scaleml_result *res)
{
    scaleml_codec local;
    qa_overflow_to_inf(c, &local);
    sv_segment all;
    int gather = c->size > 1 && c->n > 0;
    /* a dense input is read where it lies (in place too: every encode precedes the first decode) */
    int rc = gather && c->input.dense ? result_dense_storage(c, &all) : qa_dense_start(c, &all);
    if (rc) return rc;
    if (gather) rc = gather_and_sum(c, c->input.dense ? c->input.values : all.values, all.values);
    return qa_result(res, &all, c->n, rc);
}

double quantized_allreduce_gather_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                       int *result_sparse)
{
    int P = c->ranks;
    int lossy = c->quantized_value_bytes > 0;
    double n = (double)c->n, q = lossy ? c->quantized_value_bytes : c->value_bytes, dense = n * c->value_bytes;
    *result_sparse = 0;
    if (P == 1) return p->gamma * dense;
    double local = lossy ? sa_codec_seconds(c, n, n, (P - 1) * n) : p->gamma * dense * P;
    return (P - 1) * p->alpha + p->beta * (P - 1) * n * q + local;
}

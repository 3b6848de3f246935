/*
 * Shared phases of the quantized AllReduce algorithms (ring, recursive
 * halving/doubling, direct): the layout of encoded blocks, the owner's one
 * encoding of its reduced block, and the ring allgather of encoded blocks.
 *
 * Ring allgather: P-1 steps; in step s rank r passes block (r-s) mod P to
 * rank r+1 and receives block (r-s-1) mod P from rank r-1, chunk by chunk, so
 * a chunk is forwarded as soon as it arrives (pipelined). The bytes are never
 * re-encoded on the way: every rank decodes the same bytes, so every rank ends
 * with the same values, bitwise.
 * Cost: (P-1)*alpha*chunks + (P-1)/P * n*q*beta (q = encoded bytes per value)
 *       + gamma * n*c_d (decoding).
 */
#include <stdlib.h>
#include <string.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/comm_util.h"

int qa_layout_init(qa_layout *l, const sa_context *c, int parts, uint64_t chunk)
{
    *l = (qa_layout){.parts = parts, .n = c->n, .chunk = chunk, .value_bytes = c->value_bytes,
                     .codec = c->codec};
    uint64_t start, len;
    cu_block_range(c->n, parts, 0, &start, &len);
    if (l->chunk == 0 || l->chunk > len) l->chunk = len ? len : 1;  /* block 0 is the longest */
    l->offset = calloc((size_t)parts + 1, sizeof *l->offset);
    if (!l->offset) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d blocks", parts);
    for (int j = 0; j < parts; j++) {
        uint64_t chunks = qa_chunk_count(l, j);
        size_t bytes = 0;
        for (uint64_t i = 0; i < chunks; i++) {
            uint64_t s, n;
            size_t at, b;
            qa_chunk(l, j, i, &s, &n, &at, &b);
            bytes += b;
        }
        l->offset[j + 1] = l->offset[j] + bytes;
    }
    return SCALEML_OK;
}

void qa_layout_free(qa_layout *l)
{
    free(l->offset);
    l->offset = NULL;
}

uint64_t qa_chunk_count(const qa_layout *l, int j)
{
    uint64_t start, len;
    cu_block_range(l->n, l->parts, j, &start, &len);
    return (len + l->chunk - 1) / l->chunk;
}

void qa_chunk(const qa_layout *l, int j, uint64_t i, uint64_t *start, uint64_t *len, size_t *at, size_t *bytes)
{
    uint64_t block_start, block_len;
    cu_block_range(l->n, l->parts, j, &block_start, &block_len);
    *start = block_start + i * l->chunk;
    *len = block_len - i * l->chunk < l->chunk ? block_len - i * l->chunk : l->chunk;
    /* every chunk before i is full */
    *at = (l->offset ? l->offset[j] : 0) + (size_t)i * codec_bytes(l->codec, l->chunk, l->value_bytes);
    *bytes = codec_bytes(l->codec, *len, l->value_bytes);
}

size_t qa_max_slot(const qa_layout *l)
{
    size_t most = 0;
    for (int j = 0; j < l->parts; j++)
        if (l->offset[j + 1] - l->offset[j] > most) most = l->offset[j + 1] - l->offset[j];
    return most;
}

uint64_t qa_max_chunk(const qa_layout *l)
{
    return l->chunk;
}

int qa_encode_block(sa_context *c, const qa_layout *l, int j, void *all, uint8_t *slots, int phase,
                    void *residual, uint64_t residual_origin, void *scratch)
{
    uint64_t chunks = qa_chunk_count(l, j);
    unsigned vb = (unsigned)l->value_bytes;
    for (uint64_t i = 0; i < chunks; i++) {
        uint64_t start, len;
        size_t at, bytes;
        qa_chunk(l, j, i, &start, &len, &at, &bytes);
        int rc = codec_encode_roundtrip(l->codec, (char *)all + start * vb, len, l->value_bytes, c->rank,
                                        CODEC_STREAM(phase, start), slots + at,
                                        residual ? (char *)residual + (start - residual_origin) * vb : NULL, scratch);
        if (rc) return rc;
    }
    return SCALEML_OK;
}

int qa_decode_block(const qa_layout *l, int j, const uint8_t *slots, void *all, int add, void *scratch)
{
    uint64_t chunks = qa_chunk_count(l, j);
    unsigned vb = (unsigned)l->value_bytes;
    for (uint64_t i = 0; i < chunks; i++) {
        uint64_t start, len;
        size_t at, bytes;
        qa_chunk(l, j, i, &start, &len, &at, &bytes);
        int rc = add ? codec_decode_add(l->codec, slots + at, bytes, len, (char *)all + start * vb, scratch,
                                        l->value_bytes)
                     : codec_decode(l->codec, slots + at, bytes, len, (char *)all + start * vb, l->value_bytes);
        if (rc) return rc;
    }
    return SCALEML_OK;
}

/* Withdraw receives left posted after an error, wait for sends (their buffers are about to be freed). */
void qa_cancel(MPI_Request *reqs, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        if (reqs[i] != MPI_REQUEST_NULL) {
            MPI_Cancel(&reqs[i]);
            MPI_Wait(&reqs[i], MPI_STATUS_IGNORE);
        }
    }
}

int qa_ring_allgather(sa_context *c, const qa_layout *l, uint8_t *slots, void *all, void *scratch)
{
    int P = l->parts, r = c->rank, left = (r - 1 + P) % P, right = (r + 1) % P, rc = SCALEML_OK;
    uint64_t most = qa_chunk_count(l, 0);  /* block 0 has the most chunks */
    MPI_Request *recvs = malloc((size_t)P * most * sizeof *recvs);
    MPI_Request *sends = malloc((size_t)P * most * sizeof *sends);
    uint64_t nsends = 0, nrecvs = 0;
    if (!recvs || !sends) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %llu requests", (unsigned long long)most);
        goto done;
    }
    /* Every block lands in its own slot: all receives are posted at once (in step order, the order the left
     * neighbour sends in), so no chunk ever waits for its receive to be posted. */
    for (int s = 0; s < P - 1 && !rc; s++) {
        int rb = (r - s - 1 + P) % P;
        for (uint64_t i = 0; i < qa_chunk_count(l, rb) && !rc; i++) {
            uint64_t start, len;
            size_t at, bytes;
            qa_chunk(l, rb, i, &start, &len, &at, &bytes);
            rc = cu_irecv(c->comm, left, TAG_QUANT_GATHER, slots + at, bytes, &recvs[nrecvs]);
            if (!rc) nrecvs++;
        }
    }
    /* the own block starts the ring; later blocks are forwarded as they arrive */
    for (uint64_t i = 0; i < qa_chunk_count(l, r) && !rc; i++) {
        uint64_t start, len;
        size_t at, bytes;
        qa_chunk(l, r, i, &start, &len, &at, &bytes);
        rc = cu_isend(c->comm, right, TAG_QUANT_GATHER, slots + at, bytes, &sends[nsends], &c->bytes_sent);
        if (!rc) nsends++;
    }
    uint64_t next = 0;
    for (int s = 0; s < P - 1 && !rc; s++) {
        int rb = (r - s - 1 + P) % P;
        for (uint64_t i = 0; i < qa_chunk_count(l, rb) && !rc; i++, next++) {
            uint64_t start, len;
            size_t at, bytes;
            qa_chunk(l, rb, i, &start, &len, &at, &bytes);
            rc = cu_wait_exact(&recvs[next], bytes);
            if (!rc && s < P - 2) {
                rc = cu_isend(c->comm, right, TAG_QUANT_GATHER, slots + at, bytes, &sends[nsends], &c->bytes_sent);
                if (!rc) nsends++;
            }
            if (!rc)
                rc = codec_decode(l->codec, slots + at, bytes, len, (char *)all + start * (unsigned)l->value_bytes,
                                  l->value_bytes);
        }
    }
    if (rc) qa_cancel(recvs, nrecvs);
    if (nsends) {
        int wait_rc = cu_waitall((int)nsends, sends, NULL);
        if (!rc) rc = wait_rc;
    }
done:
    (void)scratch;
    free(recvs);
    free(sends);
    return rc;
}

void qa_overflow_to_inf(sa_context *c, scaleml_codec *local)
{
    if (!c->codec) return;
    *local = *c->codec;
    local->overflow_to_inf = 1;
    c->codec = local;
}

void *qa_workspace(int slot, size_t bytes)
{
    static _Thread_local void *buffers[QA_WS_COUNT];
    static _Thread_local size_t capacity[QA_WS_COUNT];
    if (bytes == 0) bytes = 1;
    if (bytes > capacity[slot]) {
        free(buffers[slot]);
        buffers[slot] = malloc(bytes);
        capacity[slot] = buffers[slot] ? bytes : 0;
    }
    return buffers[slot];
}

int qa_result(scaleml_result *res, sv_segment *all, uint64_t n, int rc)
{
    if (!rc) rc = result_init(res, 1, n);
    if (rc) {
        sv_free(all);  /* frees nothing when it is the caller's buffer */
        return rc;
    }
    res->segments[0] = *all;
    return SCALEML_OK;
}

int qa_dense_start(sa_context *c, sv_segment *all)
{
    int rc = result_dense_storage(c, all);
    if (!rc) sv_write_dense(&c->input, all->values);  /* nothing to do when computing in place */
    return rc;
}

int qa_pipeline_setup(sa_context *c, qa_layout *l, uint8_t **slots, void **scratch)
{
    int rc = qa_layout_init(l, c, c->size, qa_pipeline_chunk(c));
    if (rc) return rc;
    if (slots && !(*slots = qa_workspace(QA_WS_SLOTS, l->offset[c->size])))
        return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for the encoded result");
    *scratch = qa_workspace(QA_WS_SCRATCH, qa_max_chunk(l) * (unsigned)c->value_bytes);
    if (!*scratch) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for the encoded result");
    return SCALEML_OK;
}

uint64_t qa_pipeline_chunk(const sa_context *c)
{
    uint64_t chunk = UINT64_C(1) << 16;
    uint64_t bucket = c->codec && (c->codec->kind == SCALEML_CODEC_QSGD || c->codec->kind == SCALEML_CODEC_ONEBIT)
                          ? c->codec->bucket : 1;
    if (bucket > chunk) return bucket;
    return chunk / bucket * bucket;  /* whole buckets: no short bucket inside a block */
}

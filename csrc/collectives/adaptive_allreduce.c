/*
 * Adaptive-quantization AllReduce of a gradient matrix (Dryden, Van Essen and
 * Snir), with error feedback on both sides: the algorithm behind
 * scaleml.adaptive_allreduce.
 *
 * The n values are a row-major rows x cols matrix, described with the codec
 * (SCALEML_CODEC_ADAPTIVE: rows, cols, pi, sample, seed, step). It is cut into
 * P contiguous row blocks (cu_block_range over the rows), block j owned by
 * rank j, so each block is a matrix with its own column table. Every block
 * travels as one compressed message (framing header, shape (rows of the
 * block, cols), the payload of compress/adaptive_quant.c): byte for byte what
 * scaleml.compress.AdaptiveQuant(pi, sample, seed, rank).encode(block,
 * step=key) writes, with keys step * (P+1) + j for block j and
 * step * (P+1) + P for the owner's encoding.
 *
 * Steps:
 *   1. worker compression: y = x + e_w (the worker residual over the whole
 *      matrix, when given); row block j of y is encoded with key
 *      step * (P+1) + j and e_w = y - decode(encode(y)) (the value itself where
 *      nothing was sent);
 *   2. size exchange (MPI_Alltoall of int64); a rank that could not encode
 *      announces -1 to every rank, and every rank returns an error;
 *   3. rank r sends its encoded block j straight to rank j (P-1 messages);
 *   4. the owner decodes the P contributions to its block (its own from its
 *      own bytes) and sums them from +0 in rank order (not arrival order: the
 *      same sum every run), adds its server residual e_s (when given), encodes
 *      the sum z once with key step * (P+1) + P and keeps
 *      e_s = z - decode(encode(z));
 *   5. size exchange (MPI_Allgather of int64); an owner that could not reduce
 *      its block announces -1, and every rank returns an error (none is left
 *      waiting in the allgather);
 *   6. MPI_Allgatherv of the encoded blocks; every rank decodes every block
 *      from the same bytes, so the result is bitwise identical everywhere.
 * Every value is quantized twice whatever P (also at P = 1).
 *
 * Cost, q_a = bytes of the words per value (about 2/pi with 16-bit words,
 * blocks of up to 32767 rows), c = cols, one block message = its words plus
 * 64 bytes of header and shape and a column table of 16 c + 8 bytes:
 *   (P-1)*alpha + (P-1)/P * n*q_a*beta + (P-1)*(16c + 72)*beta     (to the owners)
 * + (P-1)*alpha + (P-1)/P * n*q_a*beta + (P-1)*(16c + 72)*beta     (allgather, ring figure)
 * + (P-1 + log2 P)*alpha                                           (the size exchanges)
 * + gamma * n*c_d * 6 (worker encode: sample and two passes; the owners'
 *   decodes and encode; the final decode).
 * Bytes sent per rank, counted: the encoded blocks sent to their owners and
 * every gathered block but the next rank's (as a ring allgather sends them);
 * the 8-byte sizes of the exchanges are not counted.
 * Memory: y of one block, the P encoded blocks (room for the worst case, every
 * entry sent; untouched pages cost nothing), the P-1 blocks received, the sum
 * and one decoded contribution of the own block, the gathered result bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_compress.h"
#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"

/* header and shape of a matrix message (framing: 48 + 8 per dimension) */
#define AA_HEADER_BYTES (SCALEML_COMPRESSED_HEADER_BYTES + 2 * 8)

static _Thread_local scaleml_adaptive_wire last_wire;

void scaleml_adaptive_last_wire(scaleml_adaptive_wire *out)
{
    *out = last_wire;
}

typedef struct {
    const scaleml_codec *codec;
    int value_bytes;
    uint32_t pi_bits;   /* header parameter 0: pi as float32 bits, as AdaptiveQuant writes it */
    uint64_t key_base;  /* step * (P + 1): P worker keys and one server key per call */
} aa_format;

/* Room for a message of a block of `rows` rows: header, shape and the payload with every entry sent. */
static size_t message_cap(const aa_format *f, uint64_t rows)
{
    return AA_HEADER_BYTES + scaleml_adaptive_bytes(rows, f->codec->cols, rows * f->codec->cols);
}

/* Encode the rows x cols block x into msg[0 .. cap) as AdaptiveQuant(pi, sample, seed, rank).encode(x,
 * step=key_step) does; residual, if not NULL, gets x - decoded. *bytes: the message size. */
static int encode_message(const aa_format *f, int rank, uint64_t key_step, const void *x, uint64_t rows,
                          void *residual, uint8_t *msg, size_t cap, size_t *bytes)
{
    const scaleml_codec *codec = f->codec;
    size_t payload = 0, header_bytes = 0;
    uint64_t key = scaleml_rng_key(codec->seed, (uint64_t)rank, key_step, 0);
    int rc = scaleml_adaptive_encode(x, f->value_bytes, rows, codec->cols, codec->pi, codec->sample, key,
                                     msg + AA_HEADER_BYTES, cap - AA_HEADER_BYTES, &payload, residual, NULL);
    if (rc) return rc;
    scaleml_compressed_header h;
    memset(&h, 0, sizeof h);
    h.method = SCALEML_METHOD_ADAPTIVE;
    h.dtype_code = f->value_bytes == 4 ? SCALEML_DTYPE_FLOAT32 : SCALEML_DTYPE_FLOAT64;
    h.ndim = 2;
    h.count = rows * codec->cols;
    h.payload_bytes = payload;
    h.params[0] = f->pi_bits;
    h.shape[0] = rows;
    h.shape[1] = codec->cols;
    if ((rc = scaleml_compressed_write_header(msg, cap, &h, &header_bytes))) return rc;
    *bytes = header_bytes + payload;
    return SCALEML_OK;
}

/* Decode a block message that must hold a rows x cols matrix of this call's dtype into out. */
static int decode_message(const aa_format *f, const uint8_t *msg, size_t bytes, uint64_t rows, void *out)
{
    scaleml_compressed_header h;
    int rc = scaleml_compressed_parse(msg, bytes, &h);
    if (rc) return rc;
    uint32_t dtype = f->value_bytes == 4 ? SCALEML_DTYPE_FLOAT32 : SCALEML_DTYPE_FLOAT64;
    if (h.method != SCALEML_METHOD_ADAPTIVE || h.dtype_code != dtype || h.ndim != 2 || h.shape[0] != rows ||
        h.shape[1] != f->codec->cols)
        return scaleml_fail(SCALEML_ERR_MALFORMED,
                            "adaptive_allreduce: a block message (method %u, dtype %u, %u dimensions) is not the "
                            "adaptive %llu x %llu block expected",
                            h.method, h.dtype_code, h.ndim, (unsigned long long)rows,
                            (unsigned long long)f->codec->cols);
    return scaleml_adaptive_decode(msg + h.header_bytes, h.payload_bytes, rows, f->codec->cols, out, f->value_bytes);
}

/* After a size exchange: the error to return when some rank announced a failure (negative size), with
 * failed_together set (every rank saw the same sizes); SCALEML_OK otherwise. own_rc: this rank's own failure,
 * whose message stands. */
static int failure_announced(sa_context *c, const int64_t *sizes, int own_rc, const char *what)
{
    int failed = -1;
    for (int j = 0; j < c->size && failed < 0; j++)
        if (sizes[j] < 0) failed = j;
    if (failed < 0) return SCALEML_OK;
    c->failed_together = 1;
    if (own_rc) return own_rc;
    /* ScaleMLError in Python, as the failing rank's own error is its own */
    return scaleml_fail(SCALEML_ERR_MPI, "adaptive_allreduce: rank %d could not %s; see that rank's exception",
                        failed, what);
}

/* A nonblocking collective completed through cu_waitall (watched like every wait of the algorithms). */
static int wait_one(MPI_Request *req, int mpi_rc, const char *what)
{
    int rc = cu_check(mpi_rc, what);
    return rc ? rc : cu_waitall(1, req, NULL);
}

/* Steps 1-2: encode block j of y = x + e_w into send + offset[j] (sizes[j] bytes); the sizes reach their
 * owners (in_sizes: what every rank sends this one). Returns this rank's failure too, as announced. */
static int encode_blocks(sa_context *c, const aa_format *f, const size_t *offset, uint8_t *send, int64_t *sizes,
                         int64_t *in_sizes, int prior_rc)
{
    int P = c->size, r = c->rank, rc = prior_rc;
    unsigned vb = (unsigned)c->value_bytes;
    uint64_t cols = f->codec->cols, most = 0, start, rows;
    for (int j = 0; j < P; j++) {
        cu_block_range(f->codec->rows, P, j, &start, &rows);
        if (rows > most) most = rows;
    }
    void *y = c->worker_residual ? qa_workspace(QA_WS_SCRATCH, most * cols * vb) : NULL;
    if (!rc && c->worker_residual && !y)
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "adaptive_allreduce: out of memory for %llu values",
                          (unsigned long long)(most * cols));
    for (int j = 0; j < P && !rc; j++) {
        cu_block_range(f->codec->rows, P, j, &start, &rows);
        const char *x = (const char *)c->input.values + start * cols * vb;
        void *e = c->worker_residual ? (char *)c->worker_residual + start * cols * vb : NULL;
        size_t bytes = 0;
        if (e) codec_sum(y, x, e, rows * cols, c->value_bytes);
        rc = encode_message(f, r, f->key_base + (uint64_t)j, e ? y : x, rows, e, send + offset[j],
                            offset[j + 1] - offset[j], &bytes);
        sizes[j] = (int64_t)bytes;
    }
    if (rc)
        for (int j = 0; j < P; j++) sizes[j] = -1;
    MPI_Request req;
    int mpi_rc = wait_one(&req, MPI_Ialltoall(sizes, 1, MPI_INT64_T, in_sizes, 1, MPI_INT64_T, c->comm, &req),
                          "MPI_Ialltoall");
    if (mpi_rc) return mpi_rc;
    return failure_announced(c, in_sizes, rc, "encode its row blocks");
}

/* Step 3: the blocks to their owners; recv gets the P-1 others' encodings of this rank's block at recv_at. */
static int send_blocks(sa_context *c, const size_t *offset, const uint8_t *send, const int64_t *sizes,
                       const int64_t *in_sizes, uint8_t *recv, const size_t *recv_at)
{
    int P = c->size, r = c->rank, rc = SCALEML_OK, nsends = 0;
    MPI_Request *reqs = malloc(2 * (size_t)P * sizeof *reqs);
    if (!reqs) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d requests", 2 * P);
    MPI_Request *recvs = reqs, *sends = reqs + P;
    for (int j = 0; j < P; j++) recvs[j] = MPI_REQUEST_NULL;
    for (int step = 1; step < P && !rc; step++) {  /* receives first */
        int src = (r - step + P) % P;
        rc = cu_irecv(c->comm, src, TAG_ADAPTIVE_BLOCK, recv + recv_at[src], (size_t)in_sizes[src], &recvs[src]);
    }
    for (int step = 1; step < P && !rc; step++) {  /* the next rank first: spreads the load */
        int j = (r + step) % P;
        rc = cu_isend(c->comm, j, TAG_ADAPTIVE_BLOCK, send + offset[j], (size_t)sizes[j], &sends[nsends],
                      &c->bytes_sent);
        if (!rc) nsends++;
    }
    if (!rc) rc = cu_waitall(P, recvs, NULL);
    else qa_cancel(recvs, (uint64_t)P);  /* an MPI error: the engine ends the job */
    if (!rc) rc = cu_waitall(nsends, sends, NULL);
    free(reqs);
    return rc;
}

/* Step 4: the owner's sum of the P decoded contributions (rank order) plus e_s, encoded into mine. */
static int reduce_own_block(sa_context *c, const aa_format *f, const uint8_t *own, size_t own_bytes,
                            const uint8_t *recv, const size_t *recv_at, const int64_t *in_sizes, uint8_t *mine,
                            size_t mine_cap, size_t *mine_bytes)
{
    int P = c->size, r = c->rank, rc = SCALEML_OK;
    uint64_t start, rows, cols = f->codec->cols;
    cu_block_range(f->codec->rows, P, r, &start, &rows);
    size_t values = (size_t)(rows * cols), bytes = values * (unsigned)c->value_bytes;
    void *sum = qa_workspace(QA_WS_SUM, bytes), *part = qa_workspace(QA_WS_RECV1, bytes);
    if (!sum || !part)
        return scaleml_fail(SCALEML_ERR_NOMEM, "adaptive_allreduce: out of memory for %zu values", values);
    memset(sum, 0, bytes);  /* +0, as the sum starts in Python: 0 + -0.0 is +0 */
    for (int src = 0; src < P && !rc; src++) {
        rc = src == r ? decode_message(f, own, own_bytes, rows, part)
                      : decode_message(f, recv + recv_at[src], (size_t)in_sizes[src], rows, part);
        if (!rc) codec_add(sum, part, values, c->value_bytes);
    }
    if (rc) return rc;
    if (c->server_residual) codec_add(sum, c->server_residual, values, c->value_bytes);
    return encode_message(f, r, f->key_base + (uint64_t)P, sum, rows, c->server_residual, mine, mine_cap,
                          mine_bytes);
}

/* Steps 5-6: gather the encoded reduced blocks and decode every one into out (n values). */
static int gather_blocks(sa_context *c, const aa_format *f, const uint8_t *mine, size_t mine_bytes, int own_rc,
                         void *out)
{
    int P = c->size, r = c->rank, rc;
    unsigned vb = (unsigned)c->value_bytes;
    int64_t my_size = own_rc ? -1 : (int64_t)mine_bytes;
    int64_t *sizes = malloc((size_t)P * sizeof *sizes);
    MPI_Count *counts = malloc((size_t)P * sizeof *counts);
    MPI_Aint *displs = malloc((size_t)P * sizeof *displs);
    uint8_t *all = NULL;
    if (!sizes || !counts || !displs) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d sizes", P);
        goto done;
    }
    MPI_Request req;
    rc = wait_one(&req, MPI_Iallgather(&my_size, 1, MPI_INT64_T, sizes, 1, MPI_INT64_T, c->comm, &req),
                  "MPI_Iallgather");
    if (!rc) rc = failure_announced(c, sizes, own_rc, "reduce its row block");
    if (rc) goto done;
    uint64_t total = 0;
    for (int j = 0; j < P; j++) {
        counts[j] = (MPI_Count)sizes[j];
        displs[j] = (MPI_Aint)total;
        total += (uint64_t)sizes[j];
    }
    all = malloc(total ? total : 1);
    if (!all) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory gathering %llu bytes", (unsigned long long)total);
        goto done;
    }
    cu_prefault(all, total);
    if ((rc = cu_allgatherv_bytes(mine, mine_bytes, all, counts, displs, P, c->comm))) goto done;
    uint64_t ring = total - (uint64_t)sizes[(r + 1) % P];  /* a ring sends all blocks but the next rank's */
    c->bytes_sent += ring;
    for (int j = 0; j < P && !rc; j++) {
        uint64_t start, rows;
        cu_block_range(f->codec->rows, P, j, &start, &rows);
        rc = decode_message(f, all + displs[j], (size_t)sizes[j], rows, (char *)out + start * f->codec->cols * vb);
    }
    if (rc) {
        c->failed_together = 1;  /* every rank decodes the same bytes, so every rank fails alike */
        goto done;
    }
    last_wire.allgather_bytes = ring;
    last_wire.encoded_bytes = total;
done:
    free(sizes);
    free(counts);
    free(displs);
    free(all);
    return rc;
}

int adaptive_allreduce(sa_context *c, scaleml_result *res)
{
    const scaleml_codec *codec = c->codec;
    int P = c->size, r = c->rank, rc = SCALEML_OK;
    memset(&last_wire, 0, sizeof last_wire);
    if (!codec || codec->kind != SCALEML_CODEC_ADAPTIVE || !c->input.dense)
        return scaleml_fail(SCALEML_ERR_ARG, "adaptive: needs dense input and the adaptive value format");
    aa_format f = {.codec = codec, .value_bytes = c->value_bytes, .key_base = codec->step * (uint64_t)(P + 1)};
    float pi32 = (float)codec->pi;
    memcpy(&f.pi_bits, &pi32, sizeof f.pi_bits);

    /* Local failures before the first size exchange are announced in it: no rank is inside a message yet. */
    if (codec->rows * codec->cols != c->n)
        rc = scaleml_fail(SCALEML_ERR_ARG, "adaptive: a %llu x %llu matrix does not hold n = %llu values",
                          (unsigned long long)codec->rows, (unsigned long long)codec->cols,
                          (unsigned long long)c->n);
    sv_segment out = {0};
    if (!rc) rc = result_dense_storage(c, &out);
    size_t *offset = malloc(((size_t)P + 1) * sizeof *offset), *recv_at = malloc((size_t)P * sizeof *recv_at);
    int64_t *sizes = malloc((size_t)P * sizeof *sizes), *in_sizes = malloc((size_t)P * sizeof *in_sizes);
    uint8_t *send = NULL, *recv = NULL, *mine = NULL;
    if (!offset || !recv_at || !sizes || !in_sizes) {
        /* nothing to announce with: no memory for the sizes */
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d sizes", P);
        goto done;
    }
    uint64_t my_start, my_rows;
    cu_block_range(codec->rows, P, r, &my_start, &my_rows);
    offset[0] = 0;
    for (int j = 0; j < P; j++) {
        uint64_t start, rows;
        cu_block_range(codec->rows, P, j, &start, &rows);
        offset[j + 1] = offset[j] + message_cap(&f, rows);
    }
    size_t mine_cap = message_cap(&f, my_rows), mine_bytes = 0;
    if (!rc) {
        send = qa_workspace(QA_WS_SEND0, offset[P]);
        mine = qa_workspace(QA_WS_SLOTS, mine_cap);
        if (!send || !mine)
            rc = scaleml_fail(SCALEML_ERR_NOMEM, "adaptive_allreduce: out of memory for %zu encoded bytes",
                              offset[P] + mine_cap);
    }
    if ((rc = encode_blocks(c, &f, offset, send, sizes, in_sizes, rc))) goto done;

    size_t received = 0;
    for (int src = 0; src < P; src++) {
        recv_at[src] = received;
        if (src != r) received += (size_t)in_sizes[src];
    }
    recv = qa_workspace(QA_WS_RECV, received);
    if (!recv) {
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %zu received bytes", received);
        goto done;
    }
    cu_prefault(recv, received);
    if ((rc = send_blocks(c, offset, send, sizes, in_sizes, recv, recv_at))) goto done;
    last_wire.reduce_scatter_bytes = c->bytes_sent;

    int own_rc = reduce_own_block(c, &f, send + offset[r], (size_t)sizes[r], recv, recv_at, in_sizes, mine,
                                  mine_cap, &mine_bytes);
    rc = gather_blocks(c, &f, mine, mine_bytes, own_rc, out.values);
done:
    free(offset);
    free(recv_at);
    free(sizes);
    free(in_sizes);
    if (rc) memset(&last_wire, 0, sizeof last_wire);
    return qa_result(res, &out, c->n, rc);
}

double adaptive_allreduce_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    int P = c->ranks;
    double n = (double)c->n, q = c->quantized_value_bytes > 0 ? c->quantized_value_bytes : c->value_bytes;
    double block = AA_HEADER_BYTES + 16.0 * (double)c->matrix_cols + 8.0;  /* a block message without its words */
    *result_sparse = 0;
    if (P == 1) return p->gamma * n * c->value_bytes * 4;
    return (3.0 * (P - 1) + sa_log2_floor(P)) * p->alpha +
           p->beta * (2.0 * (P - 1) / P * n * q + 2.0 * (P - 1) * block) + p->gamma * n * c->value_bytes * 6;
}

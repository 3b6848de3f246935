/*
 * Hierarchical exact AllReduce: summed exactly within each node over shared
 * memory, so every byte that crosses a node boundary is sent by one ring of
 * node shards, all local ranks using the network at once on 1/S of the data
 * (Horovod's hierarchical allreduce, NCCL's rings within and across nodes).
 *
 * Topology (topology.c): N nodes of L_0 .. L_{N-1} ranks, S = the smallest
 * node's ranks, L = the largest's. The index space is cut into S shards
 * (cu_block_range(n, S, j)); local rank j < S of every node owns shard j, so
 * every shard has one owner on every node and is reduced across all nodes
 * exactly once, by the cross-node communicator of local rank j (N members).
 * Local ranks >= S of a larger node own nothing: they hand their values to the
 * owners in step 1 and receive the result in step 3.
 *
 * Steps:
 *   1. reduce-scatter within the node: every rank sends shard j of its input
 *      to local rank j (j < S, not itself); owner j sums the node's L_i
 *      contributions in local rank order, ((x_0 + x_1) + x_2) + ... in the
 *      input's precision: a fixed order, so the node sum does not depend on
 *      message arrival;
 *   2. across nodes (N > 1): owner j runs the exact pipelined ring (`ring`,
 *      quantized_allreduce_ring.c) on its shard over its cross-node
 *      communicator; the ring leaves the identical sum on all N owners;
 *   3. allgather within the node: owner j sends the reduced shard j to every
 *      other rank of its node.
 * Every shard's final value is computed once (by the ring over the owners) and
 * copied, so the result is identical on every rank, bitwise.
 * Pipeline: the vector is cut into K = scaleml_hierarchical_segments(n) segments
 * (cu_block_range(n, K, k); about 2 MiB of values each, at most 8; 1 with error
 * feedback) and the steps run on each segment's shards in turn: segment k+1's
 * step 1 travels while segment k's step 2 crosses, and segment k's step 3
 * while the later segments run, so the node steps hide behind the network
 * (each step's sends are nonblocking and posted before any wait on them).
 * Dense input is read where it is (no copy of the whole vector first).
 * Fallbacks: one rank per node (L = 1) or no topology: the flat ring on the
 * whole communicator (every byte crosses a node boundary); one node (N = 1):
 * steps 1 and 3 only. Sparse input is densified into the result first.
 * Steps 1 and 3, the fallbacks and the byte counts are hierarchical_run, which
 * hierarchical_quantized.c shares (its step 2 compresses); the intra-node cost
 * terms are hierarchical_cost, shared the same way.
 *
 * Bytes, c_d = value bytes, shard s_j = |shard j| (about n/S; summed over the
 * segments' shards of that owner):
 *   crossing node boundaries (step 2; inter_bytes of
 *   scaleml_hierarchical_last_wire): the ring's 2 (N-1)/N s_j c_d per owner,
 *   in total over all ranks exactly 2 (N-1) n c_d (every shard's N blocks
 *   each travel N-1 hops in each of the ring's two phases), 0 at N = 1;
 *   within a node of L_i ranks (intra_bytes): step 1 sends n c_d from a
 *   non-owner and n c_d - s_j c_d from owner j, step 3 (L_i - 1) s_j c_d from
 *   owner j, in total 2 (L_i - 1) n c_d per node.
 * Cost (alpha, beta: inter-node; alpha_i, beta_i: intra-node, the
 * scaleml_cost_params' alpha_intra, beta_intra; at N = 1 the intra steps cost
 * alpha, beta as the flat algorithms on that node do), s = n/S:
 *   step 1: (L-1) alpha_i + max(max(n, (L-1) s) c_d beta_i, gamma (L-1) s 3 c_d): each arrived shard is
 *           added while the later ones travel
 *   step 2: the ring's cost on s values over N ranks (2 (N-1) alpha times the
 *           chunks + 2 (N-1)/N s c_d S beta, pipelined with its local work): the S
 *           owners of a node send at once through its one link (a node with a
 *           link per local rank would make it beta; the model assumes one)
 *   step 3: (L-1) alpha_i + (L-1) s c_d beta_i
 *   pipelined over K segments: step 2 costed on K shards of s/K values (its
 *   latencies K times), steps 1 and 3 (their latencies K times) count 1/K,
 *   and the rest only where it exceeds step 2: T_2 + T_13 / K +
 *   max(0, T_13 (K-1)/K - T_2);
 *   + gamma 2 n c_d for densifying sparse input.
 * Memory: the n-value result, and at an owner the L-1 received shards of one
 * segment.
 */
#include <stdlib.h>
#include <string.h>

#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"

static _Thread_local scaleml_hierarchical_wire last_wire;

void scaleml_hierarchical_last_wire(scaleml_hierarchical_wire *out)
{
    *out = last_wire;
}

void hierarchical_set_last_wire(const scaleml_hierarchical_wire *wire)
{
    last_wire = *wire;
}

/* acc[i] += x[i] over len values of the input's precision */
static void add_values(void *acc, const void *x, uint64_t len, int value_bytes)
{
    if (value_bytes == 4) {
        float *a = acc;
        const float *b = x;
        for (uint64_t i = 0; i < len; i++) a[i] += b[i];
    } else {
        double *a = acc;
        const double *b = x;
        for (uint64_t i = 0; i < len; i++) a[i] += b[i];
    }
}

uint64_t scaleml_hierarchical_segments(uint64_t n, int value_bytes)
{
    uint64_t k = n * (uint64_t)value_bytes / HIER_SEGMENT_BYTES;
    return k < 1 ? 1 : k > HIER_SEGMENTS ? HIER_SEGMENTS : k;
}

/* One segment's exchange within the node (step 1 or 3), started and not yet completed. */
typedef struct {
    MPI_Request *recvs, *sends;
    char *received;             /* step 1 at an owner: the L-1 shards received (slot k: local rank k, or k+1) */
    int nrecvs, nsends;
    uint64_t start, len;        /* the segment: [start, start + len) of the vector */
    uint64_t mine_start, mine_len;  /* this rank's shard of it (empty for local ranks >= S), from start */
} node_exchange;

/* Complete the sends (the receives cancelled where rc says the exchange failed) and free; returns rc, or
 * the sends' error. */
static int exchange_end(node_exchange *x, int rc)
{
    if (rc) qa_cancel(x->recvs, (uint64_t)x->nrecvs);
    if (x->nsends) {
        int wait_rc = cu_waitall(x->nsends, x->sends, NULL);
        if (!rc) rc = wait_rc;
    }
    free(x->recvs);
    free(x->received);
    x->recvs = x->sends = NULL;
    x->received = NULL;
    return rc;
}

static int exchange_init(node_exchange *x, const scaleml_topology *t, uint64_t start, uint64_t len, size_t recvs,
                         size_t sends)
{
    int S = t->info.node_size_min, me = t->info.local_rank;
    *x = (node_exchange){.start = start, .len = len};
    if (me < S) cu_block_range(len, S, me, &x->mine_start, &x->mine_len);
    x->recvs = malloc((recvs + sends) * sizeof *x->recvs);
    if (!x->recvs) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %zu requests", recvs + sends);
    x->sends = x->recvs + recvs;
    return SCALEML_OK;
}

/* Step 1, started: every rank sends shard j of the segment to local rank j (j < S, not itself), an owner
 * posts the receives of its shard from the L-1 others. */
static int reduce_scatter_start(sa_context *c, const scaleml_topology *t, const char *input, uint64_t start,
                                uint64_t len, node_exchange *x, uint64_t *intra)
{
    int L = t->info.local_size, S = t->info.node_size_min, me = t->info.local_rank;
    unsigned vb = (unsigned)c->value_bytes;
    uint64_t shard_start, shard_len;
    int rc = exchange_init(x, t, start, len, (size_t)L, (size_t)S);
    if (rc) return rc;
    size_t shard_bytes = (size_t)x->mine_len * vb;
    if (shard_bytes && !(x->received = malloc((size_t)(L - 1) * shard_bytes)))
        rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d shards of %zu bytes", L - 1, shard_bytes);
    for (int i = 0; i < L && shard_bytes && !rc; i++) {
        if (i == me) continue;
        rc = cu_irecv(t->node, i, TAG_HIER_REDUCE, x->received + (size_t)(i < me ? i : i - 1) * shard_bytes,
                      shard_bytes, &x->recvs[x->nrecvs]);
        if (!rc) x->nrecvs++;
    }
    for (int j = 0; j < S && !rc; j++) {
        cu_block_range(len, S, j, &shard_start, &shard_len);
        if (j == me || !shard_len) continue;
        uint64_t before = c->bytes_sent;
        rc = cu_isend(t->node, j, TAG_HIER_REDUCE, input + (start + shard_start) * vb, (size_t)shard_len * vb,
                      &x->sends[x->nsends], &c->bytes_sent);
        *intra += c->bytes_sent - before;
        if (!rc) x->nsends++;
    }
    return rc ? exchange_end(x, rc) : rc;
}

/* Step 1, completed: owner j ends with the node's sum of its shard, ((x_0 + x_1) + x_2) + ... in local rank
 * order (a fixed order: the sum does not depend on message arrival), each shard added as soon as it
 * arrived while the later ones travel. */
static int reduce_scatter_finish(sa_context *c, const scaleml_topology *t, const char *input, char *all,
                                 node_exchange *x)
{
    int L = t->info.local_size, me = t->info.local_rank, rc = SCALEML_OK;
    unsigned vb = (unsigned)c->value_bytes;
    size_t shard_bytes = (size_t)x->mine_len * vb;
    char *mine = all + (x->start + x->mine_start) * vb;
    const char *own = input + (x->start + x->mine_start) * vb;
    if (x->mine_len) {
        char *acc = me == 0 ? mine : x->received;
        if (me == 0 && own != mine) memcpy(mine, own, shard_bytes);
        if (me != 0) rc = cu_wait_exact(&x->recvs[0], shard_bytes);
        for (int i = 1; i < L && !rc; i++) {
            int slot = i < me ? i : i - 1;
            if (i != me) rc = cu_wait_exact(&x->recvs[slot], shard_bytes);
            if (!rc) add_values(acc, i == me ? own : x->received + (size_t)slot * shard_bytes, x->mine_len,
                                c->value_bytes);
        }
        if (!rc && me != 0) memcpy(mine, acc, shard_bytes);
    }
    return exchange_end(x, rc);  /* the shards sent are overwritten in step 3 */
}

/* Step 3, started: every rank receives each reduced shard of the segment from its owner. */
static int allgather_start(sa_context *c, const scaleml_topology *t, char *all, uint64_t start, uint64_t len,
                           node_exchange *x, uint64_t *intra)
{
    int L = t->info.local_size, S = t->info.node_size_min, me = t->info.local_rank;
    unsigned vb = (unsigned)c->value_bytes;
    int rc = exchange_init(x, t, start, len, (size_t)S, (size_t)L);
    if (rc) return rc;
    uint64_t shard_start, shard_len;
    for (int j = 0; j < S && !rc; j++) {
        cu_block_range(len, S, j, &shard_start, &shard_len);
        if (j == me || !shard_len) continue;
        rc = cu_irecv(t->node, j, TAG_HIER_GATHER, all + (start + shard_start) * vb, (size_t)shard_len * vb,
                      &x->recvs[x->nrecvs]);
        if (!rc) x->nrecvs++;
    }
    for (int i = 0; i < L && x->mine_len && !rc; i++) {
        if (i == me) continue;
        uint64_t before = c->bytes_sent;
        rc = cu_isend(t->node, i, TAG_HIER_GATHER, all + (start + x->mine_start) * vb, (size_t)x->mine_len * vb,
                      &x->sends[x->nsends], &c->bytes_sent);
        *intra += c->bytes_sent - before;
        if (!rc) x->nsends++;
    }
    return rc ? exchange_end(x, rc) : rc;
}

static int allgather_finish(node_exchange *x, int rc)
{
    if (!rc && x->nrecvs) rc = cu_waitall(x->nrecvs, x->recvs, NULL);
    return exchange_end(x, rc);
}

int hierarchical_cross_run(sa_context *c, const scaleml_topology *t, char *shard, uint64_t len,
                           const scaleml_codec *codec, void *worker_residual, void *server_residual,
                           int (*run)(sa_context *, scaleml_result *), uint64_t *inter)
{
    sa_context sub = {.comm = t->cross, .n = len, .index_bytes = c->index_bytes, .value_bytes = c->value_bytes,
                      .nnz_max = len, .nnz_sum = len * (uint64_t)t->info.nodes, .dense_out = shard, .codec = codec,
                      .worker_residual = worker_residual, .server_residual = server_residual};
    int rc = cu_check(MPI_Comm_rank(sub.comm, &sub.rank), "MPI_Comm_rank");
    if (!rc) rc = cu_check(MPI_Comm_size(sub.comm, &sub.size), "MPI_Comm_size");
    if (rc) return rc;
    sv_view_dense(&sub.input, 0, len, shard, c->index_bytes, c->value_bytes);
    scaleml_result *r = calloc(1, sizeof *r);
    if (!r) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
    rc = run(&sub, r);  /* in place: the result's one segment is the shard itself */
    scaleml_result_free(r);
    c->bytes_sent += sub.bytes_sent;
    *inter += sub.bytes_sent;
    return rc;
}

/* Step 2: the exact ring on this owner's shard over the cross-node communicator. */
static int cross_allreduce(sa_context *c, const scaleml_topology *t, char *shard, uint64_t len, uint64_t segment,
                           uint64_t *inter)
{
    (void)segment;
    return hierarchical_cross_run(c, t, shard, len, NULL, NULL, NULL, dense_allreduce_ring, inter);
}

/* The three steps, shared with hierarchical_quantized.c (collectives.h): `cross` runs step 2 on an owner's
 * shard, `flat` is the whole call at one rank per node. Pipelined over the segments: segment k+1's step 1
 * travels while segment k's step 2 runs, and segment k's step 3 while the later segments' steps run. */
int hierarchical_run(sa_context *c, scaleml_result *res, hierarchical_cross_fn cross,
                     int (*flat)(sa_context *, scaleml_result *), int pipelined)
{
    const scaleml_topology *t = c->topology;
    last_wire = (scaleml_hierarchical_wire){0, 0};
    if (!t || t->info.node_size_max == 1 || c->size == 1) {  /* one rank per node: the flat algorithm */
        int rc = flat(c, res);
        if (!rc && c->size > 1) last_wire.inter_bytes = c->bytes_sent;
        return rc;
    }
    sv_segment all;
    /* Dense input is read where it is: step 1 sends it and sums the own shard from it, steps 1 and 3 write
     * every value of the result (a copy of the whole input first would cost a pass over it). So is sparse
     * input that holds every position (sorted, unique: its values are the dense vector). */
    int whole = c->input.dense || c->input.nnz == c->input.len;
    int rc = whole ? result_dense_storage(c, &all) : qa_dense_start(c, &all);
    if (rc) return rc;
    scaleml_hierarchical_wire wire = {0, 0};
    char *values = all.values;
    const char *input = whole ? c->input.values : values;
    unsigned vb = (unsigned)c->value_bytes;
    uint64_t segments = pipelined ? scaleml_hierarchical_segments(c->n, c->value_bytes) : 1, start, len;
    node_exchange reduce = {0}, gather[HIER_SEGMENTS];
    int gathers = 0, reducing = 0;
    cu_block_range(c->n, (int)segments, 0, &start, &len);
    rc = reduce_scatter_start(c, t, input, start, len, &reduce, &wire.intra_bytes);
    reducing = !rc;
    for (uint64_t k = 0; k < segments && !rc; k++) {
        uint64_t seg_start = reduce.start, seg_len = reduce.len, mine_start = reduce.mine_start,
                 mine_len = reduce.mine_len;
        reducing = 0;
        rc = reduce_scatter_finish(c, t, input, values, &reduce);
        if (!rc && k + 1 < segments) {
            cu_block_range(c->n, (int)segments, (int)k + 1, &start, &len);
            rc = reduce_scatter_start(c, t, input, start, len, &reduce, &wire.intra_bytes);
            reducing = !rc;
        }
        if (!rc && t->info.nodes > 1 && mine_len)
            rc = cross(c, t, values + (seg_start + mine_start) * vb, mine_len, k, &wire.inter_bytes);
        if (!rc) rc = allgather_start(c, t, values, seg_start, seg_len, &gather[gathers], &wire.intra_bytes);
        if (!rc) gathers++;
    }
    if (reducing) exchange_end(&reduce, rc ? rc : SCALEML_ERR_MPI);
    for (int i = 0; i < gathers; i++) {
        int gather_rc = allgather_finish(&gather[i], rc);
        if (!rc) rc = gather_rc;
    }
    if (!rc) last_wire = wire;
    return qa_result(res, &all, c->n, rc);
}

int hierarchical_dense(sa_context *c, scaleml_result *res)
{
    c->codec = NULL;  /* exact, whatever format the caller allowed */
    return hierarchical_run(c, res, cross_allreduce, dense_allreduce_ring, 1);
}

double hierarchical_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, sa_cost_fn cross)
{
    int N = c->nodes, L = c->node_size_max, S = c->node_size_min;
    double n = (double)c->n, cd = c->value_bytes, s = n / S;
    double K = N > 1 ? (double)scaleml_hierarchical_segments(c->n, c->value_bytes) : 1;
    /* one node: no boundary, its steps cost what the flat algorithms on that node are costed at */
    double alpha_i = N > 1 ? p->alpha_intra : p->alpha, beta_i = N > 1 ? p->beta_intra : p->beta;
    double sent1 = L > S ? n : (S - 1) * s, received1 = (L - 1) * s;
    double wire1 = (sent1 > received1 ? sent1 : received1) * cd * beta_i, adds = p->gamma * (L - 1) * s * 3 * cd;
    double node_steps = K * 2 * (L - 1) * alpha_i + (wire1 > adds ? wire1 : adds) + (L - 1) * s * cd * beta_i;
    /* sparse input is densified first (dense input is read in place) */
    double time = c->dense_input ? 0 : p->gamma * 2 * n * cd, cross_time = 0;
    if (N > 1) {
        scaleml_cost_case shard = *c;
        shard.n = (uint64_t)(s / K + 0.5);
        shard.ranks = N;
        /* the S owners of a node cross at once, through the node's one link: each gets 1/S of its bandwidth */
        scaleml_cost_params shared = *p;
        shared.beta = p->beta * S;
        int sparse;
        cross_time = K * cross(&shard, &shared, &sparse);
    }
    /* pipelined: all but one segment's node steps run while the other segments cross */
    double hidden = node_steps * (K - 1) / K;
    return time + cross_time + node_steps / K + (hidden > cross_time ? hidden - cross_time : 0);
}

double hierarchical_dense_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    *result_sparse = 0;
    if (c->nodes < 1 || c->node_size_max <= 1 || c->node_size_min < 1 || c->ranks == 1)
        return dense_allreduce_ring_cost(c, p, result_sparse);
    return hierarchical_cost(c, p, dense_allreduce_ring_cost);  /* the ring's cost is exact whatever the format */
}

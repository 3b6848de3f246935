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
 * Fallbacks: one rank per node (L = 1) or no topology: the flat ring on the
 * whole communicator (every byte crosses a node boundary); one node (N = 1):
 * steps 1 and 3 only. Sparse input is densified into the result first.
 * Steps 1 and 3, the fallbacks and the byte counts are hierarchical_run, which
 * hierarchical_quantized.c shares (its step 2 compresses); the intra-node cost
 * terms are hierarchical_cost, shared the same way.
 *
 * Bytes, c_d = value bytes, shard s_j = |shard j| (about n/S):
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
 *   + gamma 2 n c_d for the input copy.
 * Memory: the n-value result, and at an owner the L-1 received shards.
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

/* Step 1: owner j (local rank < S) ends with the node's sum of shard j in all. */
static int node_reduce_scatter(sa_context *c, const scaleml_topology *t, char *all, uint64_t *intra)
{
    int L = t->info.local_size, S = t->info.node_size_min, me = t->info.local_rank, rc = SCALEML_OK;
    unsigned vb = (unsigned)c->value_bytes;
    uint64_t start, len, mine_start = 0, mine_len = 0;
    if (me < S) cu_block_range(c->n, S, me, &mine_start, &mine_len);
    size_t shard_bytes = (size_t)mine_len * vb;
    MPI_Request *reqs = malloc(((size_t)L + (size_t)S) * sizeof *reqs);
    char *received = mine_len ? malloc((size_t)(L - 1) * shard_bytes) : NULL;
    if (!reqs || (mine_len && !received)) {
        free(reqs);
        return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d shards of %zu bytes", L - 1, shard_bytes);
    }
    MPI_Request *recvs = reqs, *sends = reqs + L;
    int nrecvs = 0, nsends = 0;
    for (int i = 0; i < L && mine_len && !rc; i++) {  /* receives first: slot k holds local rank k (k < me) or k+1 */
        if (i == me) continue;
        rc = cu_irecv(t->node, i, TAG_HIER_REDUCE, received + (size_t)(i < me ? i : i - 1) * shard_bytes,
                      shard_bytes, &recvs[nrecvs]);
        if (!rc) nrecvs++;
    }
    for (int j = 0; j < S && !rc; j++) {
        cu_block_range(c->n, S, j, &start, &len);
        if (j == me || !len) continue;
        uint64_t before = c->bytes_sent;
        rc = cu_isend(t->node, j, TAG_HIER_REDUCE, all + start * vb, (size_t)len * vb, &sends[nsends], &c->bytes_sent);
        *intra += c->bytes_sent - before;
        if (!rc) nsends++;
    }
    if (!rc && mine_len) {
        /* ((x_0 + x_1) + x_2) + ...: local rank 0's values start the sum, the own ones at their place; each
         * shard is added as soon as it arrived, in local rank order, while the later ones travel */
        char *acc = me == 0 ? all + mine_start * vb : received;
        if (me != 0) rc = cu_wait_exact(&recvs[0], shard_bytes);
        for (int i = 1; i < L && !rc; i++) {
            int slot = i < me ? i : i - 1;
            if (i != me) rc = cu_wait_exact(&recvs[slot], shard_bytes);
            if (!rc)
                add_values(acc, i == me ? all + mine_start * vb : received + (size_t)slot * shard_bytes, mine_len,
                           c->value_bytes);
        }
        if (!rc && me != 0) memcpy(all + mine_start * vb, acc, shard_bytes);
    }
    if (rc) qa_cancel(recvs, (uint64_t)nrecvs);
    if (nsends) {  /* the shards sent are overwritten in step 3 */
        int wait_rc = cu_waitall(nsends, sends, NULL);
        if (!rc) rc = wait_rc;
    }
    free(received);
    free(reqs);
    return rc;
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
static int cross_allreduce(sa_context *c, const scaleml_topology *t, char *shard, uint64_t len, uint64_t *inter)
{
    return hierarchical_cross_run(c, t, shard, len, NULL, NULL, NULL, dense_allreduce_ring, inter);
}

/* Step 3: every rank receives each reduced shard from its owner. */
static int node_allgather(sa_context *c, const scaleml_topology *t, char *all, uint64_t *intra)
{
    int L = t->info.local_size, S = t->info.node_size_min, me = t->info.local_rank, rc = SCALEML_OK;
    unsigned vb = (unsigned)c->value_bytes;
    MPI_Request *reqs = malloc(((size_t)L + (size_t)S) * sizeof *reqs);
    if (!reqs) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
    MPI_Request *recvs = reqs, *sends = reqs + S;
    int nrecvs = 0, nsends = 0;
    uint64_t start, len;
    for (int j = 0; j < S && !rc; j++) {
        cu_block_range(c->n, S, j, &start, &len);
        if (j == me || !len) continue;
        rc = cu_irecv(t->node, j, TAG_HIER_GATHER, all + start * vb, (size_t)len * vb, &recvs[nrecvs]);
        if (!rc) nrecvs++;
    }
    if (me < S) {
        cu_block_range(c->n, S, me, &start, &len);
        for (int i = 0; i < L && len && !rc; i++) {
            if (i == me) continue;
            uint64_t before = c->bytes_sent;
            rc = cu_isend(t->node, i, TAG_HIER_GATHER, all + start * vb, (size_t)len * vb, &sends[nsends],
                          &c->bytes_sent);
            *intra += c->bytes_sent - before;
            if (!rc) nsends++;
        }
    }
    if (!rc && nrecvs) rc = cu_waitall(nrecvs, recvs, NULL);
    if (rc) qa_cancel(recvs, (uint64_t)nrecvs);
    if (nsends) {
        int wait_rc = cu_waitall(nsends, sends, NULL);
        if (!rc) rc = wait_rc;
    }
    free(reqs);
    return rc;
}

/* The three steps, shared with hierarchical_quantized.c (collectives.h): `cross` runs step 2 on an owner's
 * shard, `flat` is the whole call at one rank per node. */
int hierarchical_run(sa_context *c, scaleml_result *res, hierarchical_cross_fn cross,
                     int (*flat)(sa_context *, scaleml_result *))
{
    const scaleml_topology *t = c->topology;
    last_wire = (scaleml_hierarchical_wire){0, 0};
    if (!t || t->info.node_size_max == 1 || c->size == 1) {  /* one rank per node: the flat algorithm */
        int rc = flat(c, res);
        if (!rc && c->size > 1) last_wire.inter_bytes = c->bytes_sent;
        return rc;
    }
    sv_segment all;
    int rc = qa_dense_start(c, &all);
    if (rc) return rc;
    scaleml_hierarchical_wire wire = {0, 0};
    char *values = all.values;
    rc = node_reduce_scatter(c, t, values, &wire.intra_bytes);
    if (!rc && t->info.nodes > 1 && t->info.local_rank < t->info.node_size_min) {
        uint64_t start, len;
        cu_block_range(c->n, t->info.node_size_min, t->info.local_rank, &start, &len);
        if (len) rc = cross(c, t, values + start * (unsigned)c->value_bytes, len, &wire.inter_bytes);
    }
    if (!rc) rc = node_allgather(c, t, values, &wire.intra_bytes);
    if (!rc) last_wire = wire;
    return qa_result(res, &all, c->n, rc);
}

int hierarchical_dense(sa_context *c, scaleml_result *res)
{
    c->codec = NULL;  /* exact, whatever format the caller allowed */
    return hierarchical_run(c, res, cross_allreduce, dense_allreduce_ring);
}

double hierarchical_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, sa_cost_fn cross)
{
    int N = c->nodes, L = c->node_size_max, S = c->node_size_min;
    double n = (double)c->n, cd = c->value_bytes, s = n / S;
    /* one node: no boundary, its steps cost what the flat algorithms on that node are costed at */
    double alpha_i = N > 1 ? p->alpha_intra : p->alpha, beta_i = N > 1 ? p->beta_intra : p->beta;
    double sent1 = L > S ? n : (S - 1) * s, received1 = (L - 1) * s;
    double wire1 = (sent1 > received1 ? sent1 : received1) * cd * beta_i, adds = p->gamma * (L - 1) * s * 3 * cd;
    double time = (L - 1) * alpha_i + (wire1 > adds ? wire1 : adds) + p->gamma * 2 * n * cd;
    if (N > 1) {
        scaleml_cost_case shard = *c;
        shard.n = (uint64_t)(s + 0.5);
        shard.ranks = N;
        /* the S owners of a node cross at once, through the node's one link: each gets 1/S of its bandwidth */
        scaleml_cost_params shared = *p;
        shared.beta = p->beta * S;
        int sparse;
        time += cross(&shard, &shared, &sparse);
    }
    return time + (L - 1) * alpha_i + (L - 1) * s * cd * beta_i;
}

double hierarchical_dense_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    *result_sparse = 0;
    if (c->nodes < 1 || c->node_size_max <= 1 || c->node_size_min < 1 || c->ranks == 1)
        return dense_allreduce_ring_cost(c, p, result_sparse);
    return hierarchical_cost(c, p, dense_allreduce_ring_cost);  /* the ring's cost is exact whatever the format */
}

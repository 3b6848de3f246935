/*
 * Hierarchical sparse AllReduce: sparse and exact within each node, and sparse
 * where bytes cross a node boundary: each node sums its ranks' entries of a
 * shard at the shard's owner, the node sums' non-zeros are reduced across nodes
 * by the flat split sparse AllReduce, and the reduced shards go back to the
 * node's ranks packed. So the allgather across nodes carries each shard's
 * global sum once per node instead of once per rank, and no step sends all n
 * values where the data holds k << n non-zeros.
 *
 * Topology and shards as in hierarchical_dense.c: N nodes of L_0 .. L_{N-1}
 * ranks, S = the smallest node's ranks, L = the largest's; the index space cut
 * into S shards (cu_block_range(n, S, j)), local rank j < S of every node owns
 * shard j; local ranks >= S own nothing and only send and receive.
 *
 * Steps:
 *   1. sparse reduce-scatter within the node (sparse_reduce_scatter_to on the
 *      node communicator, owners = S): every rank cuts its entries (a sparse
 *      input's entries, a dense input's non-zeros: -0.0 is none, as in the
 *      drop-in's scan) at the shard boundaries and sends shard j's, packed
 *      sparse or dense by the densify rule, to local rank j (not itself); owner j
 *      merges its node's L_i contributions in local rank order, ((x_0 + x_1) +
 *      x_2) + ... in the input's precision, a missing entry adding nothing, and
 *      keeps the non-zeros of that node sum (an entry that cancelled to zero,
 *      or -0.0, is none), indexed within the shard;
 *   2. across nodes (N > 1): owner j runs `split_allgather`
 *      (sparse_allreduce_split_allgather.c) on those non-zeros over its
 *      cross-node communicator (N members, cross rank = node index), in a
 *      sub-context over [0, s_j): a sparse reduce-scatter of the shard's N
 *      blocks (cu_block_range(s_j, N, m)), summed in node order, then an
 *      allgather of the reduced blocks, each sparse or dense by the densify
 *      rule. It leaves the identical sum on all N owners: the reduced shard, the
 *      entries of its N blocks (a block held dense: its non-zeros). At N = 1 the
 *      reduced shard is the node sum's non-zeros;
 *   3. packed allgather within the node: owner j packs its reduced shard once
 *      (sparse or dense by the densify rule, sv_pack) and sends it to every
 *      other rank of its node; every rank writes every shard into the dense
 *      result (zeros where a shard has no entry).
 * Every shard's final value is computed once and copied, so the result is
 * identical on every rank, bitwise. Exact: the value at an index is
 * ((node_0 + node_1) + ...) + node_{N-1} over the nodes whose sum holds a
 * non-zero there, each node_i = ((x_0 + x_1) + ...) over its local ranks'
 * entries, in the input's precision: the same values as summing the dense
 * vectors in that order (adding a zero changes no non-zero sum); every zero of
 * the result is +0.0, one node included (engine.py's UNSIGNED_ZEROS). A lossy
 * format the call carries is ignored (exact, like hierarchical_dense): the
 * entry takes only exact data in the model.
 *
 * Fallbacks: one rank per node (L = 1), one rank, or no topology: the flat
 * `split_allgather` on the whole communicator (dense input is scanned for its
 * non-zeros first), every byte crossing a node boundary; one node (N = 1):
 * steps 1 and 3 only.
 *
 * The sub-contexts' bounds need no agreement (no extra message): step 1's
 * messages are bounded by the agreed nnz_max (capped at the dense shard), a
 * node's sum of the shard has at most min(s_j, L nnz_max, nnz_sum) non-zeros,
 * all nodes' together at most min(N s_j, nnz_sum); a reduced shard travels in
 * at most 16 + s_j c_d bytes.
 *
 * Bytes, c_d = value bytes, c_i = index bytes, W(e, len) = the wire size of a
 * segment of e entries over len indices: 16 + len c_d when e (c_i + c_d) >=
 * len c_d (the densify rule), else 16 + pad8(e c_i) + e c_d (W(0, 0) = 16):
 *   crossing node boundaries (inter_bytes), per owner of shard j on node i:
 *     sum_{m != i} W(e_ij(m), b_m)           (its node sum's block m to owner m)
 *     + (N-1) 8                              (the reduced blocks' sizes)
 *     + sum_{m != i+1 mod N} W(E_j(m), b_m)  (the allgather, as a ring sends)
 *   with b_m = |cu_block_range(s_j, N, m)|, e_ij(m) the non-zeros of node i's
 *   sum in block m, E_j(m) the entries of the reduced block m (the union of
 *   the nodes' non-zeros there); 0 at N = 1. At the flat fallback the same
 *   with N = P, S = 1 and the ranks' inputs for the node sums;
 *   within a node of L_i ranks (intra_bytes), per rank of local rank r:
 *     sum_{j < S, j != r} W(k_r(j), s_j)     (step 1: its entries in shard j,
 *                                             k_r(j), to owner j; an empty
 *                                             shard still gets 16 bytes)
 *     + (L_i - 1) W(E_r, s_r)                (step 3, r < S and s_r > 0: its
 *                                             reduced shard to the others)
 *   with E_r the reduced shard's entries (N > 1: sum_m E_r(m) where no block
 *   is held dense; N = 1: the non-zeros of the node sum). Against the dense
 *   steps' 2 (L_i - 1) n c_d per node that is about
 *   (L_i - 1)/L_i sum of the ranks' min(k c_s, n c_d) + (L_i - 1) min(K c_s, n c_d).
 * Cost (alpha, beta inter-node; alpha_i, beta_i intra-node = alpha_intra,
 * beta_intra, or alpha, beta at N = 1), s = n/S, k = nnz_max, d = nnz_sum /
 * (P n) the mean density, k_L = s (1 - (1 - d)^L) the expected non-zeros of a
 * node's sum on a shard, K_s = s (1 - (1 - d)^P) of the global sum on a shard
 * (sa_expected_union), W_x = min(x c_s, s c_d):
 *   dense input: + gamma (n c_d + k c_s) for the scan;
 *   step 1: (L-1) alpha_i + max(max(min(k c_s, n c_d) (1 or (S-1)/S),
 *           (L-1) min(k/S c_s, s c_d)) beta_i, gamma 3 (L-1) W_{k_L}): each
 *           arrived contribution is merged while the later ones travel;
 *   step 2 (N > 1): split_allgather's cost on s values over N ranks with
 *           nnz_max = k_L and nnz_sum = N k_L: (N-1) alpha + (N-1)/N k_L c_s S
 *           beta (reduce-scatter) + 2 log2 N alpha + (N-1)/N min(K_s c_s, s c_d)
 *           S beta (allgather) + its local work; S beta: the S owners of a node
 *           cross at once through its one link; + gamma (k_L + K_s) c_s for the
 *           copies in and out;
 *   step 3: (L-1) alpha_i + max(L-1, S) (W_E + 16) beta_i, E = K_s (N > 1) or
 *           k_L (N = 1): an owner sends L-1 packed shards, a rank receives S;
 *   + gamma n c_d for writing the dense result.
 * Across one node link per call that is about (k_N + K) c_s, k_N the non-zeros
 * of the node's sum, against the flat split_allgather's L (k + K) c_s; within
 * the node about k c_s + K c_s per rank instead of the dense steps' 2 n c_d.
 * It pays where several ranks share a node and the data is sparse; at one rank
 * per node it costs as the flat split_allgather, on dense data somewhat more
 * than hierarchical_dense (the scan, and no pipeline of its steps).
 * Memory: the n-value result, the scanned non-zeros of a dense input, at an
 * owner the L-1 received contributions (each at most s c_d) and split_allgather's
 * buffers for s values, at every rank receive buffers for the S packed shards
 * (at most n c_d + 16 S in all, touched only as far as the messages fill them).
 */
#include <stdlib.h>

#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* split_allgather on the non-zeros of values[0 .. len) (or on c's own sparse input when values is NULL) over
 * c's communicator; the result goes to *res. */
static int split_allgather_nonzeros(sa_context *c, const void *values, uint64_t len, scaleml_result *res)
{
    if (!values) return sparse_allreduce_split_allgather(c, res);
    sv_segment given = c->input, dense, nonzeros;
    sv_view_dense(&dense, 0, len, values, c->index_bytes, c->value_bytes);
    int rc = sv_copy_nonzeros(&dense, 0, &nonzeros);
    if (rc) return rc;
    c->input = nonzeros;
    c->input.owned = NULL;  /* a view: nonzeros keeps its memory */
    rc = sparse_allreduce_split_allgather(c, res);  /* its result holds no view of the input */
    c->input = given;
    sv_free(&nonzeros);
    return rc;
}

/* Step 1: every rank sends its input's entries in shard j (a dense input's non-zeros) to local rank j < S;
 * owner j gets its node's sum of shard j, summed in local rank order, as the non-zeros of that sum over
 * [0, s_j) in *node_sum (an empty segment at a rank that owns nothing). */
static int node_sparse_reduce_scatter(sa_context *c, const scaleml_topology *t, sv_segment *node_sum,
                                      uint64_t *intra)
{
    sa_context node = {.comm = t->node, .rank = t->info.local_rank, .size = t->info.local_size, .n = c->n,
                       .index_bytes = c->index_bytes, .value_bytes = c->value_bytes, .nnz_max = c->nnz_max,
                       .nnz_sum = c->nnz_sum, .input = c->input};
    sv_segment scanned = {0}, sum = {0};
    int rc = SCALEML_OK;
    *node_sum = (sv_segment){.index_bytes = c->index_bytes, .value_bytes = c->value_bytes};
    if (c->input.dense) {  /* the dense input's non-zeros, as the flat fallback scans them */
        rc = sv_copy_nonzeros(&c->input, 0, &scanned);
        node.input = scanned;
        node.input.owned = NULL;
    }
    if (!rc) rc = sparse_reduce_scatter_to(&node, t->info.node_size_min, 0, &sum);
    c->bytes_sent += node.bytes_sent;
    *intra += node.bytes_sent;
    sv_free(&scanned);
    /* the sum's non-zeros only (entries that cancelled and -0.0 are none, as in the dense scan of the sum),
     * indexed within the shard for the cross-node step */
    if (!rc && node.rank < t->info.node_size_min) rc = sv_copy_nonzeros(&sum, 0, node_sum);
    sv_free(&sum);
    return rc;
}

/* Step 2: split_allgather on this owner's node sum of its shard (len values) over the cross-node communicator;
 * *reduced gets the shard's global sum as the entries of the reduced blocks over [0, len). */
static int cross_sparse(sa_context *c, const scaleml_topology *t, const sv_segment *node_sum, uint64_t len,
                        sv_segment *reduced, uint64_t *inter)
{
    uint64_t L = (uint64_t)t->info.node_size_max, N = (uint64_t)t->info.nodes;
    uint64_t per_node = L <= UINT64_MAX / (c->nnz_max ? c->nnz_max : 1) ? L * c->nnz_max : UINT64_MAX;
    sa_context sub = {.comm = t->cross, .n = len, .index_bytes = c->index_bytes, .value_bytes = c->value_bytes,
                      .nnz_max = min_u64(min_u64(len, per_node), c->nnz_sum),
                      .nnz_sum = min_u64(len * N, c->nnz_sum), .input = *node_sum};
    sub.input.owned = NULL;
    if (sub.nnz_sum < sub.nnz_max) sub.nnz_sum = sub.nnz_max;
    int rc = cu_check(MPI_Comm_rank(sub.comm, &sub.rank), "MPI_Comm_rank");
    if (!rc) rc = cu_check(MPI_Comm_size(sub.comm, &sub.size), "MPI_Comm_size");
    if (rc) return rc;
    scaleml_result *r = calloc(1, sizeof *r);
    if (!r) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
    rc = sparse_allreduce_split_allgather(&sub, r);
    c->bytes_sent += sub.bytes_sent;
    *inter += sub.bytes_sent;
    if (!rc) {  /* the reduced blocks' entries in one segment (a dense block: its non-zeros) */
        uint64_t entries = scaleml_result_sparse_count(r);
        rc = sv_alloc_sparse(reduced, 0, len, entries, c->index_bytes, c->value_bytes);
        if (!rc) reduced->nnz = scaleml_result_to_sparse(r, reduced->indices, reduced->values, entries);
    }
    scaleml_result_free(r);
    return rc;
}

/* Step 3: owner j sends its reduced shard j, packed (sparse or dense by the densify rule), to every other rank
 * of its node; every rank writes every shard into the dense result all[0 .. n). */
static int node_packed_allgather(sa_context *c, const scaleml_topology *t, const sv_segment *shard, char *all,
                                 uint64_t *intra)
{
    int L = t->info.local_size, S = t->info.node_size_min, me = t->info.local_rank, rc = SCALEML_OK;
    unsigned vb = (unsigned)c->value_bytes;
    MPI_Request *reqs = malloc(((size_t)L + (size_t)S) * sizeof *reqs);
    void **received = calloc((size_t)S, sizeof *received);
    void *packed = NULL;
    if (!reqs || !received) {
        free(reqs);
        free(received);
        return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
    }
    MPI_Request *recvs = reqs, *sends = reqs + S;
    int nsends = 0;
    uint64_t start, len;
    for (int j = 0; j < S; j++) recvs[j] = MPI_REQUEST_NULL;
    for (int j = 0; j < S && !rc; j++) {
        cu_block_range(c->n, S, j, &start, &len);
        if (j == me || !len) continue;
        rc = cu_irecv_alloc(t->node, j, TAG_HIER_GATHER, sv_wire_bytes_bound(len, len, c->index_bytes, c->value_bytes),
                            &received[j], &recvs[j]);
    }
    if (!rc && me < S) {
        cu_block_range(c->n, S, me, &start, &len);
        size_t bytes = 0;
        if (len) rc = cu_pack(shard, &packed, &bytes);
        for (int i = 0; i < L && len && !rc; i++) {
            if (i == me) continue;
            uint64_t before = c->bytes_sent;
            rc = cu_isend(t->node, i, TAG_HIER_GATHER, packed, bytes, &sends[nsends], &c->bytes_sent);
            *intra += c->bytes_sent - before;
            if (!rc) nsends++;
        }
        if (!rc && len) sv_write_dense(shard, all + start * vb);
    }
    for (int j = 0; j < S && !rc; j++) {  /* in shard order: each is written while the later ones travel */
        if (recvs[j] == MPI_REQUEST_NULL) continue;
        cu_block_range(c->n, S, j, &start, &len);
        MPI_Status status;
        size_t bytes = 0;
        sv_segment view;
        rc = cu_waitall(1, &recvs[j], &status);
        if (!rc) rc = cu_received_bytes(&status, &bytes);
        if (!rc) rc = sv_unpack(received[j], bytes, 0, len, c->index_bytes, c->value_bytes, &view);
        if (!rc) sv_write_dense(&view, all + start * vb);
    }
    for (int j = 0; j < S; j++) {
        if (recvs[j] != MPI_REQUEST_NULL) {  /* left over after an error: withdraw it */
            MPI_Cancel(&recvs[j]);
            MPI_Wait(&recvs[j], MPI_STATUS_IGNORE);
        }
        free(received[j]);
    }
    if (nsends) {
        int wait_rc = cu_waitall(nsends, sends, NULL);
        if (!rc) rc = wait_rc;
    }
    free(packed);
    free(received);
    free(reqs);
    return rc;
}

/* One rank per node: the flat split_allgather on the whole communicator (dense input scanned first). */
static int flat_sparse(sa_context *c, scaleml_result *res)
{
    return split_allgather_nonzeros(c, c->input.dense ? c->input.values : NULL, c->n, res);
}

int hierarchical_sparse(sa_context *c, scaleml_result *res)
{
    c->codec = NULL;  /* exact, whatever format the caller allowed */
    const scaleml_topology *t = c->topology;
    scaleml_hierarchical_wire wire = {0, 0};
    hierarchical_set_last_wire(&wire);
    if (!t || t->info.node_size_max == 1 || c->size == 1) {  /* one rank per node: the flat algorithm */
        int rc = flat_sparse(c, res);
        wire.inter_bytes = c->size > 1 ? c->bytes_sent : 0;
        if (!rc) hierarchical_set_last_wire(&wire);
        return rc;
    }
    sv_segment node_sum = {0}, reduced = {0}, all;
    uint64_t start = 0, len = 0;
    int owner = t->info.local_rank < t->info.node_size_min;
    if (owner) cu_block_range(c->n, t->info.node_size_min, t->info.local_rank, &start, &len);
    /* the input is read in step 1 only: the result may be the caller's input buffer (in place) */
    int rc = node_sparse_reduce_scatter(c, t, &node_sum, &wire.intra_bytes);
    if (!rc && owner && len && t->info.nodes > 1) {
        rc = cross_sparse(c, t, &node_sum, len, &reduced, &wire.inter_bytes);
        sv_free(&node_sum);
        node_sum = reduced;
    }
    if (!rc) rc = result_dense_storage(c, &all);  /* every value written in step 3 */
    if (!rc) {
        rc = node_packed_allgather(c, t, &node_sum, all.values, &wire.intra_bytes);
        rc = qa_result(res, &all, c->n, rc);
    }
    sv_free(&node_sum);
    if (!rc) hierarchical_set_last_wire(&wire);
    return rc;
}

/* The cross-node step on one shard: split_allgather's cost, and the copies of the node sum's non-zeros in and
 * the reduced entries out. */
static double cross_sparse_cost(const scaleml_cost_case *shard, const scaleml_cost_params *p, int *result_sparse)
{
    double cs = shard->index_bytes + shard->value_bytes;
    double reduced = sa_expected_union(shard->n, (double)shard->nnz_sum / shard->ranks, shard->ranks);
    return sparse_allreduce_split_allgather_cost(shard, p, result_sparse) + p->gamma * (shard->nnz_max + reduced) * cs;
}

static double min_d(double a, double b)
{
    return a < b ? a : b;
}

static double max_d(double a, double b)
{
    return a > b ? a : b;
}

double hierarchical_sparse_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    scaleml_cost_case exact = *c;  /* whatever format the caller allowed, nothing travels lossy */
    exact.quantized_value_bytes = 0;
    exact.codec_kind = SCALEML_CODEC_NONE;
    exact.encode_seconds = exact.decode_seconds = exact.decode_add_seconds = 0;
    double time, n = (double)c->n, cd = c->value_bytes, cs = c->index_bytes + cd;
    double scan = c->dense_input ? p->gamma * (n * cd + c->nnz_max * cs) : 0.0;  /* dense input: its non-zeros */
    *result_sparse = 0;  /* the result is dense (its result form) */
    if (c->nodes < 1 || c->node_size_max <= 1 || c->node_size_min < 1 || c->ranks == 1)
        return sparse_allreduce_split_allgather_cost(&exact, p, result_sparse) + scan;
    int N = c->nodes, L = c->node_size_max, S = c->node_size_min;
    double s = n / S, density = c->n ? (double)c->nnz_sum / c->ranks / n : 0.0;
    double k = min_d((double)c->nnz_max, n), k_node = sa_expected_union((uint64_t)(s + 0.5), density * s, L);
    /* one node: no boundary, its steps cost what the flat algorithms on that node are costed at */
    double alpha_i = N > 1 ? p->alpha_intra : p->alpha, beta_i = N > 1 ? p->beta_intra : p->beta;
    /* step 1: a rank's entries to the S owners (all of them from a rank that owns nothing), the L-1 others'
     * entries of its shard into an owner, each merged into the sum as it arrives */
    double sent1 = min_d(k * cs, n * cd) * (L > S ? 1.0 : (S - 1.0) / S);
    double received1 = (L - 1) * min_d(k / S * cs, s * cd);
    double merges = p->gamma * (L - 1) * min_d(k_node * cs, s * cd) * 3;
    time = scan + (L - 1) * alpha_i + max_d(max_d(sent1, received1) * beta_i, merges);
    /* step 2: split_allgather on the node sum's k_node non-zeros of a shard; the S owners of a node cross at
     * once, through the node's one link: each gets 1/S of its bandwidth */
    double entries = k_node;  /* of the reduced shard (step 3) */
    if (N > 1) {
        scaleml_cost_case shard = exact;
        shard.n = (uint64_t)(s + 0.5);
        shard.ranks = N;
        shard.nnz_max = k_node;
        shard.nnz_sum = k_node * N;
        scaleml_cost_params shared = *p;
        shared.beta = p->beta * S;
        int sparse;
        time += cross_sparse_cost(&shard, &shared, &sparse);
        entries = sa_expected_union(shard.n, density * s, c->ranks);
    }
    /* step 3: the packed reduced shard from its owner to the L-1 others; a rank receives the S shards
     * (min(K c_s, n c_d) in all) and writes the n-value result */
    double packed = min_d(entries * cs, s * cd) + SA_SEGMENT_HEADER_BYTES;
    return time + (L - 1) * alpha_i + (L - 1 > S ? L - 1 : S) * packed * beta_i + p->gamma * n * cd;
}

/*
 * Hierarchical quantized AllReduce: summed exactly within each node, compressed
 * only where bytes cross a node boundary (Horovod's hierarchical allreduce with
 * CGX's / ZeRO++ qgZ's split: exact intra-node, lossy inter-node), in every
 * element-wise lossy format of collectives/codec.h (QSGD any bits, bucket and
 * norm; 1-bit; fp16/bf16 casts), with or without error feedback.
 *
 * Topology and shards as in hierarchical_dense.c (its steps 1 and 3 are the
 * same code, hierarchical_run): N nodes of L_0 .. L_{N-1} ranks, S = the
 * smallest node's ranks, L = the largest's; the index space cut into S shards
 * (cu_block_range(n, S, j)), local rank j < S of every node owns shard j.
 *
 * Steps:
 *   1. exact reduce-scatter within the node (hierarchical_dense.c, step 1):
 *      owner j ends with the node's sum of shard j, summed in local rank order;
 *   2. across nodes (N > 1): owner j runs the flat quantized AllReduce on its
 *      shard over its cross-node communicator (N members, cross rank = node
 *      index): the quantized ring (quantized_allreduce_ring.c) without error
 *      feedback, the direct algorithm (quantized_allreduce_direct.c: worker
 *      and server residuals) with it. Both leave the identical decoded sum on
 *      all N owners, bitwise (every rank decodes the same bytes);
 *   3. exact allgather within the node (hierarchical_dense.c, step 3): the
 *      owner's decoded shard is copied to every other rank of its node.
 * Every shard's final value is computed once and copied, so the result is
 * identical on every rank, bitwise. Without error feedback the steps are
 * pipelined over segments as in hierarchical_dense.c (with it, one segment:
 * the residuals follow the whole shards).
 *
 * Random streams: the cross-node step keys its encodes as the flat algorithm
 * on N ranks does (key rank = node index, stream = CODEC_STREAM(phase, start
 * within the shard)), with the seed seed ^ (local rank * 0x9E3779B97F4A7C15)
 * ^ (segment * 0xD1B54A32D192ED03): the shards' roundings are independent,
 * and local rank 0 (the whole vector at one rank per node) draws exactly what
 * the flat algorithm draws.
 *
 * Error feedback (both residuals given): the residuals belong to step 2 only.
 * State layout per rank, s_j = |shard j| (cu_block_range(n, S, j)):
 *   worker residual: s_j values (the owner's shard; 0 for local ranks >= S),
 *   server residual: |cu_block_range(s_j, N, node)| values (the block of the
 *   shard this owner reduces in the direct algorithm).
 * At one rank per node this is the flat quantized_direct's layout (n values
 * and cu_block_range(n, P, rank)). What was applied plus every residual
 * equals what was put in (the direct algorithm's conservation on each shard;
 * steps 1 and 3 are exact). scaleml_block_range gives these lengths.
 *
 * Fallbacks: one rank per node (L = 1), one rank, or no topology: the flat
 * algorithm itself (quantized_ring, or quantized_direct with residuals) on the
 * whole communicator, every byte crossing a node boundary. One node (N = 1):
 * nothing crosses a node boundary, so nothing is compressed: steps 1 and 3
 * only, the exact result of hierarchical_dense (the call reports the format
 * exact; residuals untouched); its model cost is then HUGE_VAL, so `auto`
 * leaves the exact one-node path to hierarchical_dense and chooses among
 * algorithms that compress. Sparse input is densified into the result first.
 *
 * Bytes, c_d = value bytes, q = encoded bytes per value, E(j) = the encoded
 * bytes of shard j as the flat algorithm lays it out (each of its N blocks
 * cu_block_range(s_j, N, k) encoded in chunks of qa_pipeline_chunk values,
 * codec_bytes each; about s_j q), summed over the segments: shard j of
 * segment k is cu_block_range(|segment k|, S, j):
 *   crossing node boundaries (inter_bytes): the ring or direct algorithm's
 *   2 (N-1)/N s_j q per owner; in total over all ranks exactly
 *   2 (N-1) sum_j E(j) (every block is sent N-1 times in each of the two
 *   phases), about 2 (N-1) n q; 0 at N = 1;
 *   within a node of L_i ranks (intra_bytes): exact, as hierarchical_dense,
 *   2 (L_i - 1) n c_d per node in total.
 * Cost (alpha, beta inter-node; alpha_i, beta_i intra-node = alpha_intra,
 * beta_intra), s = n/S:
 *   step 1: (L-1) alpha_i + max(max(n, (L-1) s) c_d beta_i, gamma (L-1) s 3 c_d)
 *   step 2: the quantized ring's cost on s values over N ranks:
 *           2 (N-1) alpha (times the chunks) + max(2 (N-1)/N s q S beta, local
 *           work: gamma 2 s c_d + the format's passes over s values); S beta: the
 *           S owners of a node cross at once through its one link
 *   step 3: (L-1) alpha_i + (L-1) s c_d beta_i
 *   pipelined over the segments as hierarchical_dense.c's cost says;
 *   + gamma 2 n c_d for densifying sparse input. (With error feedback the
 *   direct algorithm runs step 2 on whole shards; the model costs the
 *   pipelined ring: error feedback fixes the algorithm, auto does not choose
 *   it.)
 * Error: each shard value is encoded N times (ring: N partial sums of node
 * sums; direct: twice) instead of P times as in the flat ring; the node sums
 * are exact.
 * Memory: the n-value result, at an owner the L-1 received shards and the
 * flat algorithm's buffers for s values.
 */
#include <math.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/registry.h"

#define SHARD_SEED_STRIDE UINT64_C(0x9E3779B97F4A7C15)  /* 2^64 / golden ratio: spreads the local ranks */
#define SEGMENT_SEED_STRIDE UINT64_C(0xD1B54A32D192ED03)  /* and the segments, by another odd constant */

static int feedback(const sa_context *c)
{
    return c->worker_residual || c->server_residual;
}

/* Step 2: the flat quantized algorithm on this owner's shard over the cross-node communicator. */
static int cross_quantized(sa_context *c, const scaleml_topology *t, char *shard, uint64_t len, uint64_t segment,
                           uint64_t *inter)
{
    scaleml_codec shard_codec = *c->codec;
    shard_codec.seed ^= (uint64_t)t->info.local_rank * SHARD_SEED_STRIDE ^ segment * SEGMENT_SEED_STRIDE;
    return hierarchical_cross_run(c, t, shard, len, &shard_codec, c->worker_residual, c->server_residual,
                                  feedback(c) ? quantized_allreduce_direct : quantized_allreduce_ring, inter);
}

int hierarchical_quantized(sa_context *c, scaleml_result *res)
{
    const scaleml_topology *t = c->topology;
    if (t && t->info.nodes == 1 && t->info.node_size_max > 1 && c->size > 1) {
        c->codec = NULL;  /* one node: nothing crosses a node boundary, nothing is compressed */
        c->ran_exact = 1;
    }
    return hierarchical_run(c, res, cross_quantized,
                            feedback(c) ? quantized_allreduce_direct : quantized_allreduce_ring, !feedback(c));
}

double hierarchical_quantized_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse)
{
    *result_sparse = 0;
    if (c->nodes < 1 || c->node_size_max <= 1 || c->node_size_min < 1 || c->ranks == 1)
        return quantized_allreduce_ring_cost(c, p, result_sparse);
    if (c->nodes == 1) return HUGE_VAL;  /* exact on one node: hierarchical_dense's case (header comment) */
    return hierarchical_cost(c, p, quantized_allreduce_ring_cost);
}

/*
 * The registry: every collective algorithm of the sparse AllReduce family,
 * in id order (ids start at 1; 0 is "auto"). See registry.h.
 */
#include "collectives/registry.h"

#include <math.h>

#define SPARSE SCALEML_FORM_SPARSE
#define DENSE SCALEML_FORM_DENSE
#define FLOATS (SCALEML_FORMAT_FLOAT32 | SCALEML_FORMAT_FLOAT64)
/* Value formats: the exact algorithms take the element-wise ones for the sparse-to-quantized switch; the
 * adaptive codec quantizes row blocks of a matrix, which only `adaptive` cuts. */
#define TAKES_EXACT (SA_CODEC_BIT(SCALEML_CODEC_NONE) | SA_CODECS_ELEMENTWISE)
#define TAKES_LOSSY SA_CODECS_ELEMENTWISE
#define TAKES_ADAPTIVE SA_CODEC_BIT(SCALEML_CODEC_ADAPTIVE)

static const sa_algorithm registry[] = {
    {{"recursive_doubling", "latency-bound (few non-zeros)", "log2 P (+2 if P is not a power of 2)",
      "up to (P-1) k c_s, capped at n c_d per round", SPARSE, SPARSE | DENSE, FLOATS, 1, TAKES_EXACT, 1},
     sparse_allreduce_recursive_doubling, sparse_allreduce_recursive_doubling_cost, SA_LINK_EVERY_RANK},
    {{"split_allgather", "bandwidth-bound, sparse result", "(P-1) + 2 log2 P",
      "(P-1)/P (k c_s + min(K c_s, n c_d))", SPARSE, SPARSE | DENSE, FLOATS, 1, TAKES_EXACT, 1},
     sparse_allreduce_split_allgather, sparse_allreduce_split_allgather_cost, SA_LINK_EVERY_RANK},
    {{"split_dense", "bandwidth-bound, dense result", "(P-1) + log2 P", "(P-1)/P (k c_s + n c_d)", SPARSE, DENSE,
      FLOATS, 1, TAKES_EXACT, 1},
     sparse_allreduce_split_dense, sparse_allreduce_split_dense_cost, SA_LINK_EVERY_RANK},
    {{"dense", "data already dense", "2 log2 P (MPI_Allreduce)", "2 (P-1)/P n c_d", SPARSE | DENSE, DENSE, FLOATS,
      1, TAKES_EXACT, 0},
     dense_allreduce, dense_allreduce_cost, SA_LINK_ONE_PER_NODE},
    {{"ring", "dense data, exact, bandwidth-bound (pipelined ring)", "2 (P-1) (pipelined in chunks)",
      "2 (P-1)/P n c_d", SPARSE | DENSE, DENSE, FLOATS, 1, TAKES_EXACT, 0},
     dense_allreduce_ring, dense_allreduce_ring_cost, SA_LINK_ONE_PER_NODE},
    {{"quantized_ring", "dense data, lossy format, bandwidth-bound", "2 (P-1) (pipelined in chunks)",
      "2 (P-1)/P n q", SPARSE | DENSE, DENSE, FLOATS, 0, TAKES_LOSSY, 0},
     quantized_allreduce_ring, quantized_allreduce_ring_cost, SA_LINK_ONE_PER_NODE},
    {{"quantized_rhd", "dense data, lossy format, latency-bound", "2 log2 P (+2 if P is not a power of 2)",
      "2 (P-1)/P n q", SPARSE | DENSE, DENSE, FLOATS, 0, TAKES_LOSSY, 0},
     quantized_allreduce_rhd, quantized_allreduce_rhd_cost, SA_LINK_EVERY_RANK},
    {{"quantized_direct", "lossy format with error feedback on both sides (1-bit Adam)", "2 (P-1)",
      "2 (P-1)/P n q", SPARSE | DENSE, DENSE, FLOATS, 0, TAKES_LOSSY, 0},
     quantized_allreduce_direct, quantized_allreduce_direct_cost, SA_LINK_EVERY_RANK},
    {{"quantized_gather", "dense data, lossy format, few ranks: each input encoded once, allgathered", "P-1",
      "(P-1) n q", SPARSE | DENSE, DENSE, FLOATS, 0, TAKES_LOSSY, 0},
     quantized_allreduce_gather, quantized_allreduce_gather_cost, SA_LINK_EVERY_RANK},
    {{"adaptive", "a gradient matrix in Dryden's adaptive quantization (`adaptive_allreduce`)",
      "2 (P-1) (+ a size exchange before each phase)", "2 (P-1)/P n q_a + 2 (P-1) (16 c + 72)", DENSE, DENSE, FLOATS,
      0, TAKES_ADAPTIVE, 0},
     adaptive_allreduce, adaptive_allreduce_cost, SA_LINK_ONE_PER_NODE},
    {{"hierarchical_dense", "dense data, exact, ranks sharing nodes (summed within the node, one ring per shard across)",
      "2 (L-1) within the node + the ring's 2 (N-1) across (L ranks per node, N nodes)",
      "2 (L-1)/L n c_d within the node + 2 (N-1)/N n/L c_d across", SPARSE | DENSE, DENSE, FLOATS, 1, TAKES_EXACT, 0},
     hierarchical_dense, hierarchical_dense_cost, SA_LINK_OWN},
    {{"hierarchical_quantized",
      "dense data, lossy format, ranks sharing nodes (summed exactly within the node, compressed only across)",
      "2 (L-1) within the node + the quantized ring's 2 (N-1) across (L ranks per node, N nodes)",
      "2 (L-1)/L n c_d within the node + 2 (N-1)/N n/L q across", SPARSE | DENSE, DENSE, FLOATS, 0, TAKES_LOSSY, 0},
     hierarchical_quantized, hierarchical_quantized_cost, SA_LINK_OWN},
    {{"hierarchical_sparse",
      "sparse data, exact, ranks sharing nodes (a sparse reduce-scatter and packed allgather within the node, a "
      "sparse split allgather per shard across)",
      "2 (L-1) within the node + split_allgather's (N-1) + 2 log2 N across (L ranks per node, N nodes)",
      "min(k c_s, n c_d) + min(K c_s, n c_d) within the node + (N-1)/N (k_N c_s + min(K c_s, n c_d))/L across "
      "(k_N: nnz of the node's sum)",
      SPARSE | DENSE, DENSE, FLOATS, 1, TAKES_EXACT, 1},
     hierarchical_sparse, hierarchical_sparse_cost, SA_LINK_OWN},
};

#define REGISTRY_COUNT ((int)(sizeof registry / sizeof registry[0]))

const sa_algorithm *sa_registry_lookup(int id)
{
    return id >= 1 && id <= REGISTRY_COUNT ? &registry[id - 1] : NULL;
}

int scaleml_algorithm_count(void)
{
    return REGISTRY_COUNT;
}

int scaleml_algorithm_describe(int id, scaleml_algorithm_info *info)
{
    const sa_algorithm *a = sa_registry_lookup(id);
    if (!a) return scaleml_fail(SCALEML_ERR_ARG, "unknown algorithm id %d", id);
    *info = a->info;
    return SCALEML_OK;
}

double scaleml_algorithm_cost(int id, const scaleml_cost_case *c, const scaleml_cost_params *p)
{
    const sa_algorithm *a = sa_registry_lookup(id);
    if (!a || c->ranks < 1 || c->codec_kind < SCALEML_CODEC_NONE || c->codec_kind > SA_CODEC_LAST) return -1.0;
    unsigned format = c->codec_kind != SCALEML_CODEC_NONE ? SA_CODEC_BIT(c->codec_kind)
                      : c->quantized_value_bytes > 0 ? SA_CODECS_ELEMENTWISE : 0u;
    if (format && !(a->info.codecs & format)) return HUGE_VAL;  /* it cannot run on that format */
    int result_sparse = 0;
    scaleml_cost_params shared = *p;
    if (a->link == SA_LINK_EVERY_RANK && c->nodes > 1 && c->node_size_max > 1)
        shared.beta = p->beta * c->node_size_max;  /* the node's local ranks cross its one link at once */
    double time = p->delta + a->cost(c, &shared, &result_sparse);
    double c_s = c->index_bytes + c->value_bytes, dense_bytes = (double)c->n * c->value_bytes;
    double K = sa_expected_union(c->n, (double)c->nnz_sum / c->ranks, c->ranks);
    /* Writing the requested output: a dense output or a dense result touches all n values. */
    time += p->gamma * (c->sparse_out && result_sparse ? K * c_s : dense_bytes);
    /* Dense input that an algorithm takes only sparse is scanned for its non-zeros first. */
    if (c->dense_input && !(a->info.input_forms & SCALEML_FORM_DENSE))
        time += p->gamma * (dense_bytes + (double)c->nnz_max * c_s);
    return time;
}

void scaleml_algorithm_costs(const scaleml_cost_case *c, const scaleml_cost_params *p, double *out)
{
    for (int id = 1; id <= REGISTRY_COUNT; id++) out[id - 1] = scaleml_algorithm_cost(id, c, p);
}

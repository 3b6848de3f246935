/*
 * The registry of collective algorithms: one entry per algorithm, giving its
 * name, entry point, cost function and capabilities (registry.c). Adding an
 * algorithm is one C file (entry point + cost function + header comment with
 * its steps and alpha-beta cost) and one entry in registry.c; Python reads the
 * table through scaleml_algorithm_describe and scaleml_algorithm_cost.
 */
#ifndef SCALEML_REGISTRY_H
#define SCALEML_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "api_collectives.h"
#include "collectives/collectives.h"

/* Time of the communication and merging itself; *result_sparse says whether
 * the result can stay sparse (the registry adds the cost of the output form
 * and of scanning dense input). */
typedef double (*sa_cost_fn)(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
typedef int (*sa_run_fn)(sa_context *ctx, scaleml_result *res);

/* How an algorithm's traffic shares a node's one network link when ranks share nodes (the cost model):
 * SA_LINK_EVERY_RANK: every local rank sends across at once (each gets 1/L of the link: beta x L);
 * SA_LINK_ONE_PER_NODE: one rank per node crosses at a time (a ring over node-ordered ranks; MPI's own
 * node-aware Allreduce); SA_LINK_OWN: the cost function accounts for it (the hierarchical entries). */
typedef enum { SA_LINK_EVERY_RANK = 0, SA_LINK_ONE_PER_NODE, SA_LINK_OWN } sa_link_use;

typedef struct {
    scaleml_algorithm_info info;
    sa_run_fn run;
    sa_cost_fn cost;
    sa_link_use link;
} sa_algorithm;

/* Capability bits of scaleml_algorithm_info.codecs. */
#define SA_CODEC_BIT(kind) (1u << (unsigned)(kind))
#define SA_CODECS_ELEMENTWISE                                                                     \
    (SA_CODEC_BIT(SCALEML_CODEC_QSGD) | SA_CODEC_BIT(SCALEML_CODEC_FP16) | SA_CODEC_BIT(SCALEML_CODEC_BF16) | \
     SA_CODEC_BIT(SCALEML_CODEC_ONEBIT))
#define SA_CODEC_LAST SCALEML_CODEC_ADAPTIVE

/* The entry of id (1..count), or NULL. */
const sa_algorithm *sa_registry_lookup(int id);

/* Shared terms of the cost functions (cost.c). */
#define SA_SEGMENT_HEADER_BYTES 16.0  /* per packed segment (sparse_vector.h) */
double sa_expected_union(uint64_t n, double k_mean, double ranks);
/* Wire bytes of len values in dense form: len * c_d, or len * q with a lossy format. */
double sa_dense_wire_bytes(const scaleml_cost_case *c, double len);
/* Wire bytes of a segment over [0, n) holding `entries` non-zeros (capped at dense). */
double sa_wire_bytes(const scaleml_cost_case *c, double entries);
/* 1 when dense data travels in the caller's lossy format (one smaller than the values). */
int sa_quantizes(const scaleml_cost_case *c);
/* 1 when a segment over [0, n) of `entries` non-zeros travels quantized (the switch to dense quantized). */
int sa_travels_quantized(const scaleml_cost_case *c, double entries);
/* Seconds of the lossy format's passes over that many values: encoded, decoded, decoded and added. */
double sa_codec_seconds(const scaleml_cost_case *c, double encoded, double decoded, double decode_added);
int sa_log2_floor(int p);

/* Cost functions, one in each algorithm's file. */
double sparse_allreduce_recursive_doubling_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                                int *result_sparse);
double sparse_allreduce_split_allgather_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                             int *result_sparse);
double sparse_allreduce_split_dense_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                         int *result_sparse);
double dense_allreduce_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
double dense_allreduce_ring_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
double quantized_allreduce_ring_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
double quantized_allreduce_rhd_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
double quantized_allreduce_direct_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                       int *result_sparse);
double quantized_allreduce_gather_cost(const scaleml_cost_case *c, const scaleml_cost_params *p,
                                       int *result_sparse);
double hierarchical_dense_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
double hierarchical_quantized_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
double hierarchical_sparse_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);
/* The hierarchical algorithms' intra-node steps (hierarchical_dense.c) plus `cross`, the cross-node step's
 * cost on one shard (n/S values over N ranks), for a case with N >= 1 nodes of S..L >= 2 ranks. */
double hierarchical_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, sa_cost_fn cross);
double adaptive_allreduce_cost(const scaleml_cost_case *c, const scaleml_cost_params *p, int *result_sparse);

#endif

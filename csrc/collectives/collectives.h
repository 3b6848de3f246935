/*
 * The sparse AllReduce family. Every algorithm takes the same context (a
 * private communicator, the local input as a sparse or dense segment over
 * [0, n)) and leaves the identical global sum on every rank in a
 * scaleml_result, as one or more segments that together cover [0, n).
 *
 * Cost notation in the header comment of each algorithm file: P ranks, n the
 * dimension, k the local nnz, K the nnz of the sum, c_s = index + value bytes,
 * c_d = value bytes, alpha the latency per message, beta seconds per byte;
 * q = bytes per value of the caller's lossy format (ctx->codec), where dense
 * data travels quantized (sparse_vector.h).
 */
#ifndef SCALEML_COLLECTIVES_H
#define SCALEML_COLLECTIVES_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "api_collectives.h"
#include "collectives/sparse_vector.h"

typedef struct {
    MPI_Comm comm;
    int rank, size;
    uint64_t n;
    int index_bytes, value_bytes;
    uint64_t nnz_max;     /* agreed: the largest local nnz, bounds every message of one rank's input */
    uint64_t nnz_sum;     /* agreed: the sum of local nnz, bounds every partial sum */
    sv_segment input;     /* view of the caller's data over [0, n) */
    void *dense_out;      /* caller's n-value output, or NULL: dense results may live there */
    const scaleml_codec *codec;  /* lossy format dense data may travel in, or NULL (exact) */
    void *worker_residual;       /* error feedback over [0, n), or NULL (quantized_direct) */
    void *server_residual;       /* error feedback over this rank's block, or NULL (quantized_direct) */
    const scaleml_topology *topology;  /* the nodes (topology.c), or NULL: unknown */
    uint64_t bytes_sent;  /* bytes this rank put on the wire */
    int ran_exact;        /* a lossy algorithm sent nothing in its format (hierarchical_quantized on one node):
                           * the engine then reports the call exact */
    int failed_together;  /* set with an error that every rank of the call returns too (none is left waiting
                           * in the collective): the engine reports it instead of aborting the job */
} sa_context;

/* A communicator's nodes (scaleml_topology_create). */
struct scaleml_topology {
    MPI_Comm node;   /* the ranks of this rank's node, in communicator order */
    MPI_Comm cross;  /* the ranks of this local rank on every node that has one, in node order */
    scaleml_topology_info info;
};

/* The result: segments in index order covering [0, n), plus the heap blocks
 * they live in. */
struct scaleml_result {
    int nsegments;
    sv_segment *segments;
    void *block;          /* one shared block behind view segments, or NULL */
    uint64_t n;
};
typedef struct scaleml_result scaleml_result;

/* Allocate a result with nsegments empty segments. */
int result_init(scaleml_result *res, int nsegments, uint64_t n);

/* A dense segment over [0, n) for the result: the caller's output buffer when
 * it gave one (no allocation, no final copy; contents undefined), else a new
 * zeroed allocation. */
int result_dense_storage(sa_context *ctx, sv_segment *all);

int sparse_allreduce_recursive_doubling(sa_context *ctx, scaleml_result *res);
int sparse_allreduce_split_allgather(sa_context *ctx, scaleml_result *res);
int sparse_allreduce_split_dense(sa_context *ctx, scaleml_result *res);
int dense_allreduce(sa_context *ctx, scaleml_result *res);
int quantized_allreduce_ring(sa_context *ctx, scaleml_result *res);
int dense_allreduce_ring(sa_context *ctx, scaleml_result *res);
int quantized_allreduce_rhd(sa_context *ctx, scaleml_result *res);
int quantized_allreduce_direct(sa_context *ctx, scaleml_result *res);
int quantized_allreduce_gather(sa_context *ctx, scaleml_result *res);
int adaptive_allreduce(sa_context *ctx, scaleml_result *res);
int hierarchical_dense(sa_context *ctx, scaleml_result *res);
int hierarchical_quantized(sa_context *ctx, scaleml_result *res);
int hierarchical_sparse(sa_context *ctx, scaleml_result *res);

/* Shared steps of the hierarchical algorithms (hierarchical_dense.c). hierarchical_run: step 1 (exact
 * reduce-scatter within the node to the S owners), step 2 (`cross` on the owner's shard over the cross-node
 * communicator, N > 1 only), step 3 (allgather within the node), counting the bytes within and across nodes
 * (scaleml_hierarchical_last_wire); `flat` runs the whole call instead at one rank per node or without a
 * topology. hierarchical_cross_run: `run` on the shard [shard, shard + len) in place over t->cross, with
 * that codec and residuals (NULL: none), adding its bytes to c->bytes_sent and *inter. */
typedef int (*hierarchical_cross_fn)(sa_context *c, const scaleml_topology *t, char *shard, uint64_t len,
                                     uint64_t segment, uint64_t *inter);
/* The bytes scaleml_hierarchical_last_wire reports next, for a hierarchical algorithm with its own steps. */
void hierarchical_set_last_wire(const scaleml_hierarchical_wire *wire);
/* `pipelined`: the steps run over scaleml_hierarchical_segments segments in turn (0: one segment). */
int hierarchical_run(sa_context *c, scaleml_result *res, hierarchical_cross_fn cross,
                     int (*flat)(sa_context *, scaleml_result *), int pipelined);
/* The segments of the pipeline: about HIER_SEGMENT_BYTES of values each, at most HIER_SEGMENTS. */
#define HIER_SEGMENT_BYTES (UINT64_C(2) << 20)
#define HIER_SEGMENTS 8
int hierarchical_cross_run(sa_context *c, const scaleml_topology *t, char *shard, uint64_t len,
                           const scaleml_codec *codec, void *worker_residual, void *server_residual,
                           int (*run)(sa_context *, scaleml_result *), uint64_t *inter);

/* Shared first phase of the split algorithms: rank j ends up with the sum
 * over all ranks of index range j (cu_block_range); dense when
 * dense_result, else in the form the densify rule gives. */
int sparse_reduce_scatter(sa_context *ctx, int dense_result, sv_segment *mine);
/* The same to the first `owners` ranks only (owners <= size): range j is cu_block_range(n, owners, j); a
 * rank >= owners sends its slices and gets an empty *mine. */
int sparse_reduce_scatter_to(sa_context *ctx, int owners, int dense_result, sv_segment *mine);
/* Its alpha-beta-gamma cost (the registry's cost functions of the split algorithms add to it). */
double sparse_reduce_scatter_cost(const scaleml_cost_case *c, const scaleml_cost_params *p);

/* Shared pieces of the quantized algorithms (quantized_allgather.c). The
 * index space is cut into `parts` blocks (cu_block_range) and each block into
 * chunks of `chunk` values, each encoded on its own (so a chunk can be sent,
 * decoded and re-encoded while the next one travels); a block's encoded
 * chunks lie one after another in its slot of a byte buffer. */
typedef struct {
    int parts;
    uint64_t n, chunk;
    int value_bytes;
    const scaleml_codec *codec;
    size_t *offset;       /* parts + 1 byte offsets of the blocks' slots */
} qa_layout;

/* chunk 0: one chunk per block. */
int qa_layout_init(qa_layout *l, const sa_context *c, int parts, uint64_t chunk);
void qa_layout_free(qa_layout *l);
/* Chunks of block j, and chunk i's values [*start, *start + *len) and bytes at slots + *at. */
uint64_t qa_chunk_count(const qa_layout *l, int j);
void qa_chunk(const qa_layout *l, int j, uint64_t i, uint64_t *start, uint64_t *len, size_t *at, size_t *bytes);
/* The largest slot of a block, in bytes, and the most values a chunk holds. */
size_t qa_max_slot(const qa_layout *l);
uint64_t qa_max_chunk(const qa_layout *l);
/* Encode block j of all (n values) chunk by chunk into slots, replacing the
 * values by their decoded form; residual, if not NULL, gets the error (its
 * element 0 is global index residual_origin). scratch: qa_max_chunk values. */
int qa_encode_block(sa_context *c, const qa_layout *l, int j, void *all, uint8_t *slots, int phase,
                    void *residual, uint64_t residual_origin, void *scratch);
/* all[block j] = (or +=, when add) the decoded slot of block j. */
int qa_decode_block(const qa_layout *l, int j, const uint8_t *slots, void *all, int add, void *scratch);
/* Ring allgather of the encoded blocks: rank r holds block r in slots; every
 * other block arrives, is passed on chunk by chunk, and is decoded into all. */
int qa_ring_allgather(sa_context *c, const qa_layout *l, uint8_t *slots, void *all, void *scratch);
/* Work buffers of the quantized algorithms, kept per thread from one call to
 * the next and only grown: fresh multi-MiB buffers cost page faults on every
 * call (the kernel zeroing pages took 9% of a 4-rank ring's time), more than
 * their coding. Distinct slots within one call; never freed by the caller. */
enum { QA_WS_SEND0, QA_WS_SEND1, QA_WS_RECV, QA_WS_RECV1, QA_WS_SLOTS, QA_WS_SCRATCH, QA_WS_SUM, QA_WS_COUNT };
void *qa_workspace(int slot, size_t bytes);

/* Point c->codec at *local, a copy with overflow_to_inf set: float16 partial
 * sums beyond the format's range become +-inf on every rank (as in any float16
 * AllReduce) instead of failing one rank half-way through a collective. */
void qa_overflow_to_inf(sa_context *c, scaleml_codec *local);

/* Withdraw receives still posted after an error. */
void qa_cancel(MPI_Request *reqs, uint64_t count);
/* Hand the dense buffer to the result on success (rc == 0), free it otherwise; returns rc. */
int qa_result(scaleml_result *res, sv_segment *all, uint64_t n, int rc);
/* The dense buffer the quantized algorithms work in (the result), holding the input. */
int qa_dense_start(sa_context *c, sv_segment *all);
/* The layout of the pipelined algorithms (P blocks of qa_pipeline_chunk
 * chunks) and its work buffers: one chunk of scratch and, when slots is not
 * NULL, the encoded slots. */
int qa_pipeline_setup(sa_context *c, qa_layout *l, uint8_t **slots, void **scratch);
/* Chunk size of the pipelined algorithms: big enough to amortize a message,
 * small enough that coding one chunk overlaps the transfer of the next. */
uint64_t qa_pipeline_chunk(const sa_context *c);

/* Tags on the private communicator, one per step kind. */
enum {
    TAG_RD_FOLD_IN = 101,
    TAG_RD_ROUND = 102,
    TAG_RD_FOLD_OUT = 103,
    TAG_REDUCE_SCATTER = 201,
    TAG_QUANT_REDUCE = 301,
    TAG_QUANT_GATHER = 302,
    TAG_QUANT_FOLD_IN = 303,
    TAG_QUANT_FOLD_OUT = 304,
    TAG_ADAPTIVE_BLOCK = 401,
    TAG_HIER_REDUCE = 501,  /* on the node communicator */
    TAG_HIER_GATHER = 502
};

/* Random streams of the sparse algorithms' encodes (codec.h): the key is
 * scaleml_rng_key(seed, key_rank, step, CODEC_STREAM(CODEC_PHASE_SPARSE, index)),
 * distinct for distinct data within one call. */
enum {
    SPARSE_STREAM_RD_FOLD_IN = 0,   /* key_rank: the sender */
    SPARSE_STREAM_RD_FOLD_OUT = 1,  /* key_rank 0: every active rank holds the same sum */
    SPARSE_STREAM_FINAL = 2,        /* key_rank: the owner of the range */
    SPARSE_STREAM_RD_ROUND = 16,    /* + round; key_rank: the group that holds the partial sum */
    SPARSE_STREAM_SLICE = 1 << 20   /* + destination rank; key_rank: the sender */
};

#endif

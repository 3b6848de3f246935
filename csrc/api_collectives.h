/*
 * The C API of ScaleML's core, as the Python extension sees it (this file is
 * also the cffi cdef, so it holds only plain declarations).
 *
 * A communicator is passed as the address of an MPI_Comm handle (mpi4py's
 * MPI._addressof(comm)), which works for both int (MPICH) and pointer
 * (Open MPI) handles as long as the extension and mpi4py use the same MPI.
 */
#ifndef SCALEML_API_COLLECTIVES_H
#define SCALEML_API_COLLECTIVES_H


/* ---- the registry of algorithms (collectives/registry.c) ----
 * One entry per algorithm: its name, entry point, cost function and
 * capabilities. Algorithm ids are 1 .. scaleml_algorithm_count() in registry
 * order; 0 means "auto". Python, the bench, the docs table and the tests all
 * read this table. */

/* Capability bits. */
#define SCALEML_FORM_SPARSE 1       /* input/output forms */
#define SCALEML_FORM_DENSE 2
#define SCALEML_FORMAT_FLOAT32 1    /* value formats */
#define SCALEML_FORMAT_FLOAT64 2

typedef struct {
    const char *name;
    const char *when;          /* the regime it is for (docs table) */
    const char *messages;      /* messages per rank (docs table) */
    const char *bytes;         /* bytes sent per rank (docs table) */
    unsigned input_forms;      /* SCALEML_FORM_* it takes */
    unsigned result_forms;     /* SCALEML_FORM_* its result can stay in without O(n) dense memory */
    unsigned value_formats;    /* SCALEML_FORMAT_* */
    int exact;                 /* 1: lossless */
    unsigned codecs;           /* bit (1 << SCALEML_CODEC_*) of every value format it takes (NONE: exact values) */
    int unsigned_zeros;        /* 1: a zero sum comes out +0.0 even where every rank holds -0.0 (it keeps
                                * non-zeros only: no entry for -0.0); 0: zeros signed as MPI signs them */
} scaleml_algorithm_info;

/* What a prediction depends on (all agreed between ranks). */
typedef struct {
    uint64_t n;
    int ranks;
    double nnz_max, nnz_sum;   /* largest and total nnz over the ranks (the model takes fractional ones) */
    double index_bytes, value_bytes;  /* bytes per index and value (fractional for quantized values) */
    int sparse_out;            /* the caller wants a sparse result */
    int dense_input;           /* the caller holds dense vectors that are scanned first */
    double quantized_value_bytes;  /* bytes per value of the caller's lossy dense format (0: exact) */
    /* Seconds per value of the lossy format's passes (0: not costed): encoding, decoding, and decoding
     * added into the values in place (collectives/codec.h); each lossy algorithm counts its passes. */
    double encode_seconds, decode_seconds, decode_add_seconds;
    int codec_kind;            /* SCALEML_CODEC_* of that format; NONE with quantized_value_bytes > 0 stands for
                                * any element-wise one (QSGD, FP16, BF16, ONEBIT): an algorithm that does not take
                                * the format is predicted to take forever (HUGE_VAL), so no choice picks it */
    uint64_t matrix_cols;      /* SCALEML_CODEC_ADAPTIVE: columns of the matrix (each row block carries a column
                                * table); quantized_value_bytes is then the bytes of its words per value */
    /* The nodes the ranks sit on (scaleml_topology_info): their number and the smallest and largest node's
     * ranks. 0: unknown, costed as one rank per node (the hierarchical algorithms then cost as the flat ring). */
    int nodes, node_size_min, node_size_max;
} scaleml_cost_case;

typedef struct {
    double alpha;              /* seconds per message */
    double beta;               /* seconds per byte sent */
    double gamma;              /* seconds per byte of local work */
    double delta;              /* seconds per call of the engine: the agreement and the Python around it */
    /* alpha and beta are the inter-node (network) ones; within a node (shared memory) the hierarchical
     * algorithms' intra-node steps cost these. */
    double alpha_intra, beta_intra;
} scaleml_cost_params;

int scaleml_algorithm_count(void);
/* Fill *info for algorithm id (1..count); SCALEML_ERR_ARG for an unknown id. */
int scaleml_algorithm_describe(int id, scaleml_algorithm_info *info);
/* Predicted seconds of algorithm id (alpha-beta-gamma model in its C file); -1 for an unknown id. */
double scaleml_algorithm_cost(int id, const scaleml_cost_case *c, const scaleml_cost_params *p);
/* The predictions of every algorithm at once: out[id - 1] for id 1..count. */
void scaleml_algorithm_costs(const scaleml_cost_case *c, const scaleml_cost_params *p, double *out);
/* Expected nnz of the sum of `ranks` random vectors of k_mean non-zeros each over n. */
double scaleml_expected_union(uint64_t n, double k_mean, double ranks);

/* Fields of scaleml_consensus: the first SCALEML_CONSENSUS_MAX_FIELDS are
 * reduced with MAX, the remaining ones with SUM. */
#define SCALEML_CONSENSUS_FIELDS 28
#define SCALEML_CONSENSUS_MAX_FIELDS 24

typedef struct scaleml_result scaleml_result;

/* ---- lossy value formats of the collectives (collectives/codec.c) ----
 * What dense data travels as when the caller opted into a lossy format:
 * every encoded message is decoded, added in full precision and re-encoded
 * before it is passed on; the final value of every index range is encoded
 * once by its owner and decoded from the same bytes on every rank. */
#define SCALEML_CODEC_NONE 0      /* exact: values travel at full width */
#define SCALEML_CODEC_QSGD 1      /* QSGD fixed width: bits + 1 + 32/bucket bits per value */
#define SCALEML_CODEC_FP16 2      /* IEEE half, round to nearest even */
#define SCALEML_CODEC_BF16 3      /* bfloat16, round to nearest even */
#define SCALEML_CODEC_ONEBIT 4    /* sign + two means per bucket: 1 + 64/bucket bits per value */
#define SCALEML_CODEC_ADAPTIVE 5  /* Dryden's adaptive quantization of a rows x cols matrix, per row block
                                   * (the `adaptive` algorithm only; its size depends on the data) */

typedef struct {
    int kind;                  /* SCALEML_CODEC_* */
    uint32_t bits;             /* QSGD: magnitude bits, 1..8 */
    uint64_t bucket;           /* QSGD and 1-bit: values per bucket (one norm or two means each) */
    int norm;                  /* QSGD: SCALEML_NORM_L2 or SCALEML_NORM_MAX */
    uint64_t seed;             /* stochastic rounding draws scaleml_rng_key(seed, rank, step, stream) */
    uint64_t step;             /* the caller's step counter: a fresh stream per call */
    int overflow_to_inf;       /* fp16/bf16: a value beyond the format's range becomes +-inf (set by the dense
                                * quantized algorithms, which cannot fall back to exact values mid-way) instead of
                                * an error */
    double pi;                 /* adaptive: send about 1/pi of each row block's entries (>= 1) */
    uint64_t sample;           /* adaptive: entries sampled to choose each row block's thresholds (>= 1) */
    uint64_t rows, cols;       /* adaptive: the row-major matrix the n values are (rows * cols == n) */
} scaleml_codec;

/* Seconds per value of the codec's encode, decode and decode-and-add passes over n random values
 * (value_bytes 4 or 8), through the kernels the collectives call: the median of repetitions runs each
 * (seconds[0..2]). SCALEML_ERR_ARG for an exact or invalid codec, SCALEML_ERR_NOMEM. */
int scaleml_codec_seconds_per_value(const scaleml_codec *codec, uint64_t n, int value_bytes, int repetitions,
                                    double *seconds);
/* Bytes of len values in the codec's format (exact: len * value_bytes); 0 for invalid parameters and for
 * SCALEML_CODEC_ADAPTIVE, whose size depends on the data. */
size_t scaleml_codec_bytes(const scaleml_codec *codec, uint64_t len, int value_bytes);
/* SCALEML_OK, or SCALEML_ERR_ARG with a message for invalid parameters. */
int scaleml_codec_check(const scaleml_codec *codec);

/* ---- the messages of quantized_gather (collectives/quantized_allreduce_gather.c) ----
 * Rank r encodes its n values as consecutive chunks of scaleml_gather_chunk(codec) values (the last one
 * shorter), the chunk whose first value is `start` with the key
 *     scaleml_rng_key(codec->seed, r, codec->step, scaleml_gather_stream(start))
 * (codec.c's encode of that chunk), the encodings one after another: the message every rank decodes and sums
 * in rank order. The CUDA path reproduces it with these, bitwise. */
#define SCALEML_GATHER_CHUNK 1048576  /* 2^20 values, rounded down to whole buckets (at least one bucket) */
/* Values per chunk for the codec: SCALEML_GATHER_CHUNK rounded down to a multiple of the QSGD or 1-bit bucket,
 * or one bucket when that is larger; SCALEML_GATHER_CHUNK for fp16/bf16. */
uint64_t scaleml_gather_chunk(const scaleml_codec *codec);
/* The random stream of the chunk starting at value `start`. */
uint64_t scaleml_gather_stream(uint64_t start);

/* Sum the sparse vectors (indices sorted, unique, in [0, n); nnz entries) of
 * all ranks with algorithm id. nnz_max and nnz_sum are the agreed largest and
 * total nnz over the ranks: they bound every message (a rank with more entries
 * than nnz_max fails with SCALEML_ERR_ARG). dense_out, if not NULL, is n
 * values the caller will read the result into: algorithms with a dense result
 * compute it there directly. On success *result holds the sum (free with
 * scaleml_result_free). */
int scaleml_sparse_allreduce(uintptr_t comm_address, int algorithm, uint64_t n, int index_bytes,
                             int value_bytes, uint64_t nnz, uint64_t nnz_max, uint64_t nnz_sum,
                             const void *indices, const void *values, void *dense_out,
                             scaleml_result **result, uint64_t *bytes_sent);

/* The general entry point behind scaleml_sparse_allreduce. indices == NULL
 * with nnz == n means values is the dense input (no scan, no index arrays).
 * codec (NULL: exact) is the lossy format dense data may travel in; the
 * lossy algorithms need one. worker_residual (n values) and server_residual
 * (the values of this rank's block, see scaleml_block_range) are the error
 * feedback of the algorithms that keep it (quantized_direct), or NULL. */
int scaleml_allreduce(uintptr_t comm_address, int algorithm, uint64_t n, int index_bytes, int value_bytes,
                      uint64_t nnz, uint64_t nnz_max, uint64_t nnz_sum, const void *indices, const void *values,
                      void *dense_out, const scaleml_codec *codec, void *worker_residual, void *server_residual,
                      scaleml_result **result, uint64_t *bytes_sent);

/* ---- topology (collectives/topology.c) ----
 * The nodes of a communicator: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), or, with ranks_per_node > 0,
 * consecutive ranks cut into nodes of that many (the last one may be smaller) so one machine emulates
 * several. Nodes are numbered by their lowest rank, the same on every rank. Made once per engine state
 * (collective over the communicator), handed to every call, freed with the state. */
typedef struct scaleml_topology scaleml_topology;
typedef struct {
    int node, nodes;                  /* this rank's node index (0 .. nodes-1) and the number of nodes */
    int local_rank, local_size;       /* this rank within its node (ranks in communicator order) */
    int node_size_min, node_size_max; /* ranks of the smallest and of the largest node */
} scaleml_topology_info;
/* Collective over the communicator: the node communicator and the cross-node communicator of this rank's
 * local index (the ranks of the same local rank on every node that has one, ordered by node). */
int scaleml_topology_create(uintptr_t comm_address, int ranks_per_node, scaleml_topology **topology);
/* Frees the communicators (nothing after MPI_Finalize); NULL is ignored. */
void scaleml_topology_free(scaleml_topology *topology);
void scaleml_topology_describe(const scaleml_topology *topology, scaleml_topology_info *info);

/* scaleml_allreduce with the communicator's topology (NULL: unknown; the hierarchical algorithms then run
 * as the flat ring). */
int scaleml_allreduce_topology(uintptr_t comm_address, int algorithm, uint64_t n, int index_bytes, int value_bytes,
                               uint64_t nnz, uint64_t nnz_max, uint64_t nnz_sum, const void *indices,
                               const void *values, void *dense_out, const scaleml_codec *codec,
                               void *worker_residual, void *server_residual, const scaleml_topology *topology,
                               scaleml_result **result, uint64_t *bytes_sent);

/* What the last hierarchical run of this thread sent (collectives/hierarchical_dense.c), all zero until one
 * succeeds: inter_bytes crossed a node boundary (the cross-node step; every byte of the flat fallback),
 * intra_bytes stayed within the node; their sum is its bytes_sent. */
typedef struct {
    uint64_t intra_bytes;
    uint64_t inter_bytes;
} scaleml_hierarchical_wire;
void scaleml_hierarchical_last_wire(scaleml_hierarchical_wire *out);
/* The segments the hierarchical algorithms pipeline their three steps over for n values (1 with error
 * feedback, whose residuals follow the whole shards). */
uint64_t scaleml_hierarchical_segments(uint64_t n, int value_bytes);

/* What the last `adaptive` run of this thread put on the wire (collectives/adaptive_allreduce.c), all zero
 * until it succeeds: reduce_scatter_bytes + allgather_bytes is its bytes_sent. */
typedef struct {
    uint64_t reduce_scatter_bytes;  /* the encoded row blocks this rank sent to their owners */
    uint64_t allgather_bytes;       /* the ring figure of the allgather: every encoded reduced block but one */
    uint64_t encoded_bytes;         /* the P encoded reduced blocks (headers included) */
} scaleml_adaptive_wire;
void scaleml_adaptive_last_wire(scaleml_adaptive_wire *out);

/* 1 when the last scaleml_allreduce of this thread sent anything in a lossy format (a lossy algorithm, or
 * segments that switched to dense-quantized), 0 when everything it sent was exact. */
int scaleml_last_call_quantized(void);

/* Range j of the P contiguous ranges of [0, n) the collectives cut the index space into. */
void scaleml_block_range(uint64_t n, int parts, int j, uint64_t *start, uint64_t *len);

/* Write the result into n dense values. */
void scaleml_result_to_dense(const scaleml_result *result, void *dense);
/* The result written over dense where dense still holds this rank's input: +0.0 at every index but the
 * count positions (index_bytes 4 or 8). Those positions are cleared and the result's entries set, nothing
 * else: 1. Nothing is written, 0, where a segment is dense (the algorithm may have written into dense) or
 * where the entries are too many for this to pay: then scaleml_result_to_dense. */
int scaleml_result_to_dense_over(const scaleml_result *result, void *dense, const void *positions, uint64_t count,
                                 int index_bytes);
/* Number of entries scaleml_result_to_sparse writes. */
uint64_t scaleml_result_sparse_count(const scaleml_result *result);
/* Write the result as sorted (index, value) entries into arrays of capacity
 * entries (scaleml_result_sparse_count); returns how many were written. */
uint64_t scaleml_result_to_sparse(const scaleml_result *result, void *indices, void *values, uint64_t capacity);
/* 1 when every segment of the result is dense. */
int scaleml_result_is_dense(const scaleml_result *result);
void scaleml_result_free(scaleml_result *result);

/* Non-zeros of a dense float32/float64 vector (dense_scan.c): how many, and
 * their positions and values (at most capacity of them; returns how many). */
uint64_t scaleml_count_nonzeros(const void *values, uint64_t n, int value_bytes);
/* The same count, in the same pass *negative_zeros gets the number of -0.0 values (not counted as non-zeros). */
uint64_t scaleml_count_nonzeros_signed(const void *values, uint64_t n, int value_bytes, uint64_t *negative_zeros);
/* 1 when every one of n float32/float64 values is finite (no NaN, no Inf). */
int scaleml_all_finite(const void *values, uint64_t n, int value_bytes);
uint64_t scaleml_extract_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes,
                                  void *indices, void *out_values, uint64_t capacity);
/* Both in one pass: returns the non-zeros, *negative_zeros the -0.0 values, and writes the first
 * non-zeros (at most capacity; *extracted of them, all of them when *extracted equals the count). */
uint64_t scaleml_scan_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes, void *indices,
                               void *out_values, uint64_t capacity, uint64_t *negative_zeros, uint64_t *extracted);

/* 1 when count indices of index_bytes 4 or 8 (signed: int32/int64, else uint32/uint64) strictly increase
 * and lie in [0, bound): sparse input in its canonical form (one pass, no branch per index). */
int scaleml_indices_increasing(const void *indices, uint64_t count, int index_bytes, int is_signed,
                               uint64_t bound);

/* Seconds per byte of input that merging two sparse float32 vectors of nnz
 * entries each (half the indices shared) takes here: gamma of the cost model. */
double scaleml_merge_seconds_per_byte(uint64_t nnz, int repetitions);

/* Validate one packed segment (sparse_vector.h wire format) covering
 * [offset, offset + len) exactly as a receiver does: SCALEML_OK or
 * SCALEML_ERR_MALFORMED (3) with a message. For tests and tools. */
int scaleml_check_segment_message(const void *buf, size_t bytes, uint64_t offset, uint64_t len,
                                  int index_bytes, int value_bytes);

/* One MPI_Allreduce over SCALEML_CONSENSUS_FIELDS int64 fields (MAX, then SUM):
 * how ranks agree on arguments and errors before a collective starts. */
int scaleml_consensus(uintptr_t comm_address, const int64_t *in, int64_t *out);

/* Watchdog of every wait inside ScaleML's collectives (the argument agreement and
 * the algorithms): after warn_seconds one warning on stderr naming the rank and
 * what it waits in; after abort_seconds a message and MPI_Abort of the job
 * (0 turns either off). Defaults: 60 s and 600 s. */
void scaleml_set_watchdog(double warn_seconds, double abort_seconds);

/* Test hook: on the process whose rank in the collective's communicator is
 * `rank`, the `wait`-th wait inside the algorithm of its `call`-th
 * scaleml_allreduce (both counted from 1) fails as an MPI error would
 * (call 0 disarms). A failure inside an algorithm at P > 1 aborts the job. */
void scaleml_set_fault(int rank, uint64_t call, uint64_t wait);

/* Detailed message of the last error on this thread. */
const char *scaleml_error_message(void);

/* The MPI this extension was compiled against. */
const char *scaleml_mpi_vendor(void);
int scaleml_mpi_comm_handle_bytes(void);
int scaleml_mpi_version(void);
/* Whether the MPI moves CUDA device memory itself, as the MPI reports it at run time
 * (MPICH: MPIX_GPU_query_support; Open MPI: MPIX_Query_cuda_support): 1 yes,
 * 0 no, -1 the MPI has no way to say. *how names the query used. Call after MPI_Init. */
int scaleml_mpi_cuda_aware(const char **how);

/* How the extension was built (core/build_info.c): the compiler's version
 * string and the flags _ffi_build.py compiled with ("unknown" if not
 * recorded); and what the hand-written SIMD paths use on this CPU
 * (core/cpu_features.c: 1 when the CPU has it and SCALEML_NO_SIMD is unset). */
const char *scaleml_build_compiler(void);
const char *scaleml_build_cflags(void);
int scaleml_cpu_avx2(void);
int scaleml_cpu_bmi2(void);
int scaleml_cpu_f16c(void);
int scaleml_cpu_avx512f(void);

#endif

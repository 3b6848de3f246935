/* Entry points of the C core: algorithm dispatch, results, consensus, build facts. */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>

#include "collectives.h"
#include "comm_util.h"
#include "api_collectives.h"

int result_init(scaleml_result *res, int nsegments, uint64_t n)
{
    res->segments = calloc((size_t)nsegments, sizeof *res->segments);
    if (!res->segments) return sv_fail(SCALEML_ERR_NOMEM, "out of memory for %d segments", nsegments);
    res->nsegments = nsegments;
    res->block = NULL;
    res->n = n;
    return SCALEML_OK;
}

int result_dense_storage(sa_context *c, sv_segment *all)
{
    if (!c->dense_out) return sv_alloc_dense(all, 0, c->n, c->index_bytes, c->value_bytes);
    *all = (sv_segment){.offset = 0, .len = c->n, .nnz = c->n, .dense = 1, .index_bytes = c->index_bytes,
                        .value_bytes = c->value_bytes, .values = c->dense_out, .owned = NULL};
    return SCALEML_OK;
}

void scaleml_result_free(scaleml_result *res)
{
    if (!res) return;
    for (int i = 0; i < res->nsegments; i++) sv_free(&res->segments[i]);
    free(res->segments);
    free(res->block);
    free(res);
}

int scaleml_sparse_allreduce(uintptr_t comm_address, int algorithm, uint64_t n, int index_bytes,
                             int value_bytes, uint64_t nnz, const void *indices,
                             const void *values, void *dense_out, scaleml_result **result,
                             uint64_t *bytes_sent)
{
    *result = NULL;
    if ((index_bytes != 4 && index_bytes != 8) || (value_bytes != 4 && value_bytes != 8))
        return sv_fail(SCALEML_ERR_ARG, "index and value widths must be 4 or 8 bytes");
    if (index_bytes == 4 && n > (UINT64_C(1) << 32))
        return sv_fail(SCALEML_ERR_ARG, "n = %llu needs 64-bit indices", (unsigned long long)n);
    if (nnz > n)
        return sv_fail(SCALEML_ERR_ARG, "nnz %llu exceeds n %llu", (unsigned long long)nnz,
                       (unsigned long long)n);

    sa_context ctx = {.comm = *(const MPI_Comm *)comm_address, .n = n, .index_bytes = index_bytes,
                      .value_bytes = value_bytes, .dense_out = dense_out, .bytes_sent = 0};
    int rc = cu_check(MPI_Comm_rank(ctx.comm, &ctx.rank), "MPI_Comm_rank");
    if (!rc) rc = cu_check(MPI_Comm_size(ctx.comm, &ctx.size), "MPI_Comm_size");
    if (rc) return rc;
    sv_view_sparse(&ctx.input, 0, n, nnz, indices, values, index_bytes, value_bytes);

    scaleml_result *res = calloc(1, sizeof *res);
    if (!res) return sv_fail(SCALEML_ERR_NOMEM, "out of memory");
    switch (algorithm) {
    case SCALEML_ALG_RECURSIVE_DOUBLING: rc = sparse_allreduce_recursive_doubling(&ctx, res); break;
    case SCALEML_ALG_SPLIT_ALLGATHER: rc = sparse_allreduce_split_allgather(&ctx, res); break;
    case SCALEML_ALG_SPLIT_DENSE: rc = sparse_allreduce_split_dense(&ctx, res); break;
    case SCALEML_ALG_DENSE: rc = dense_allreduce(&ctx, res); break;
    default: rc = sv_fail(SCALEML_ERR_ARG, "unknown algorithm %d", algorithm);
    }
    if (bytes_sent) *bytes_sent = ctx.bytes_sent;
    if (rc) {
        scaleml_result_free(res);
        return rc;
    }
    *result = res;
    return SCALEML_OK;
}

void scaleml_result_to_dense(const scaleml_result *res, void *dense)
{
    for (int i = 0; i < res->nsegments; i++) {
        const sv_segment *s = &res->segments[i];
        sv_write_dense(s, (char *)dense + s->offset * (unsigned)s->value_bytes);
    }
}

uint64_t scaleml_result_sparse_count(const scaleml_result *res)
{
    uint64_t total = 0;
    for (int i = 0; i < res->nsegments; i++) total += sv_sparse_entry_count(&res->segments[i]);
    return total;
}

uint64_t scaleml_result_to_sparse(const scaleml_result *res, void *indices, void *values, uint64_t capacity)
{
    uint64_t total = 0;
    for (int i = 0; i < res->nsegments; i++) {
        const sv_segment *s = &res->segments[i];
        total += sv_write_sparse(s, (char *)indices + total * (unsigned)s->index_bytes,
                                 (char *)values + total * (unsigned)s->value_bytes, capacity - total);
    }
    return total;
}

int scaleml_result_is_dense(const scaleml_result *res)
{
    for (int i = 0; i < res->nsegments; i++)
        if (!res->segments[i].dense) return 0;
    return 1;
}

int scaleml_check_segment_message(const void *buf, size_t bytes, uint64_t offset, uint64_t len,
                                  int index_bytes, int value_bytes)
{
    sv_segment view;
    if ((index_bytes != 4 && index_bytes != 8) || (value_bytes != 4 && value_bytes != 8))
        return sv_fail(SCALEML_ERR_ARG, "index and value widths must be 4 or 8 bytes");
    return sv_unpack(buf, bytes, offset, len, index_bytes, value_bytes, &view);
}

double scaleml_merge_seconds_per_byte(uint64_t nnz, int repetitions)
{
    uint32_t *ia = malloc(nnz * sizeof *ia), *ib = malloc(nnz * sizeof *ib);
    float *va = malloc(nnz * sizeof *va), *vb = malloc(nnz * sizeof *vb);
    double best = -1.0;
    if (ia && ib && va && vb) {
        for (uint64_t i = 0; i < nnz; i++) {  /* a: 0, 2, 4, ...; b: every other one shared */
            ia[i] = (uint32_t)(2 * i);
            ib[i] = (uint32_t)(i % 2 ? 2 * i + 1 : 2 * i);
            va[i] = vb[i] = 1.0f;
        }
        uint64_t n = 2 * nnz + 2;
        for (int r = 0; r < repetitions; r++) {
            sv_segment acc, b;
            sv_view_sparse(&acc, 0, n, nnz, ia, va, 4, 4);
            sv_view_sparse(&b, 0, n, nnz, ib, vb, 4, 4);
            double t0 = MPI_Wtime();
            int rc = sv_accumulate(&acc, &b);
            double t = MPI_Wtime() - t0;
            sv_free(&acc);
            if (rc) break;
            if (best < 0 || t < best) best = t;
        }
    }
    free(ia), free(ib), free(va), free(vb);
    return best < 0 ? best : best / (double)(2 * nnz * 8);
}

/* MAX over the first fields, SUM over the rest. */
static void consensus_op(void *in, void *inout, int *len, MPI_Datatype *type)
{
    (void)type;  /* always the record type: MPI never splits a record */
    for (int r = 0; r < *len; r++) {
        const int64_t *a = (const int64_t *)in + r * SCALEML_CONSENSUS_FIELDS;
        int64_t *b = (int64_t *)inout + r * SCALEML_CONSENSUS_FIELDS;
        for (int i = 0; i < SCALEML_CONSENSUS_MAX_FIELDS; i++) b[i] = a[i] > b[i] ? a[i] : b[i];
        for (int i = SCALEML_CONSENSUS_MAX_FIELDS; i < SCALEML_CONSENSUS_FIELDS; i++) b[i] += a[i];
    }
}

int scaleml_consensus(uintptr_t comm_address, const int64_t *in, int64_t *out)
{
    /* Created once and kept: MPI frees them at MPI_Finalize. */
    static MPI_Op op = MPI_OP_NULL;
    static MPI_Datatype record = MPI_DATATYPE_NULL;
    MPI_Comm comm = *(const MPI_Comm *)comm_address;
    int rc;
    if (record == MPI_DATATYPE_NULL) {
        if ((rc = cu_check(MPI_Type_contiguous(SCALEML_CONSENSUS_FIELDS, MPI_INT64_T, &record),
                           "MPI_Type_contiguous")) ||
            (rc = cu_check(MPI_Type_commit(&record), "MPI_Type_commit")))
            return rc;
    }
    if (op == MPI_OP_NULL && (rc = cu_check(MPI_Op_create(consensus_op, 1, &op), "MPI_Op_create")))
        return rc;
    return cu_check(MPI_Allreduce(in, out, 1, record, op, comm), "MPI_Allreduce");
}

const char *scaleml_mpi_vendor(void)
{
#if defined(OPEN_MPI)
    return "Open MPI";
#elif defined(MPICH_VERSION) || defined(MPICH)
    return "MPICH";
#else
    return "unknown";
#endif
}

int scaleml_mpi_comm_handle_bytes(void) { return (int)sizeof(MPI_Comm); }

int scaleml_mpi_version(void) { return MPI_VERSION * 10 + MPI_SUBVERSION; }

/* Entry point of the sparse AllReduce family: validation and dispatch through the registry. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "collectives/codec.h"
#include "collectives/collectives.h"
#include "collectives/comm_util.h"
#include "collectives/registry.h"
#include "api_collectives.h"

int scaleml_sparse_allreduce(uintptr_t comm_address, int algorithm, uint64_t n, int index_bytes,
                             int value_bytes, uint64_t nnz, uint64_t nnz_max, uint64_t nnz_sum,
                             const void *indices, const void *values, void *dense_out,
                             scaleml_result **result, uint64_t *bytes_sent)
{
    return scaleml_allreduce(comm_address, algorithm, n, index_bytes, value_bytes, nnz, nnz_max, nnz_sum, indices,
                             values, dense_out, NULL, NULL, NULL, result, bytes_sent);
}

static _Thread_local int last_quantized;

int scaleml_last_call_quantized(void)
{
    return last_quantized;
}

void scaleml_block_range(uint64_t n, int parts, int j, uint64_t *start, uint64_t *len)
{
    cu_block_range(n, parts, j, start, len);
}

int scaleml_allreduce(uintptr_t comm_address, int algorithm, uint64_t n, int index_bytes, int value_bytes,
                      uint64_t nnz, uint64_t nnz_max, uint64_t nnz_sum, const void *indices, const void *values,
                      void *dense_out, const scaleml_codec *codec, void *worker_residual, void *server_residual,
                      scaleml_result **result, uint64_t *bytes_sent)
{
    return scaleml_allreduce_topology(comm_address, algorithm, n, index_bytes, value_bytes, nnz, nnz_max, nnz_sum,
                                      indices, values, dense_out, codec, worker_residual, server_residual, NULL,
                                      result, bytes_sent);
}

int scaleml_allreduce_topology(uintptr_t comm_address, int algorithm, uint64_t n, int index_bytes, int value_bytes,
                               uint64_t nnz, uint64_t nnz_max, uint64_t nnz_sum, const void *indices,
                               const void *values, void *dense_out, const scaleml_codec *codec,
                               void *worker_residual, void *server_residual, const scaleml_topology *topology,
                               scaleml_result **result, uint64_t *bytes_sent)
{
    *result = NULL;
    if ((index_bytes != 4 && index_bytes != 8) || (value_bytes != 4 && value_bytes != 8))
        return scaleml_fail(SCALEML_ERR_ARG, "index and value widths must be 4 or 8 bytes");
    if (index_bytes == 4 && n > (UINT64_C(1) << 32))
        return scaleml_fail(SCALEML_ERR_ARG, "n = %llu needs 64-bit indices", (unsigned long long)n);
    if (nnz > n)
        return scaleml_fail(SCALEML_ERR_ARG, "nnz %llu exceeds n %llu", (unsigned long long)nnz,
                       (unsigned long long)n);
    if (nnz > nnz_max || nnz_max > nnz_sum)
        return scaleml_fail(SCALEML_ERR_ARG, "nnz %llu exceeds the agreed bounds (max %llu, sum %llu)",
                            (unsigned long long)nnz, (unsigned long long)nnz_max, (unsigned long long)nnz_sum);
    if (!indices && nnz != n)
        return scaleml_fail(SCALEML_ERR_ARG, "dense input (no indices) must hold n values");
    const sa_algorithm *entry = sa_registry_lookup(algorithm);
    if (!entry) return scaleml_fail(SCALEML_ERR_ARG, "unknown algorithm %d", algorithm);
    int rc;
    if (codec && (rc = scaleml_codec_check(codec))) return rc;
    if (!entry->info.exact && !codec_lossy(codec))
        return scaleml_fail(SCALEML_ERR_ARG, "algorithm %s needs a lossy value format", entry->info.name);
    int kind = codec ? codec->kind : SCALEML_CODEC_NONE;
    if (!(entry->info.codecs & SA_CODEC_BIT(kind)))  /* e.g. adaptive with QSGD: the same answer on every rank */
        return scaleml_fail(SCALEML_ERR_ARG, "algorithm %s does not take the %s value format", entry->info.name,
                            codec_name(kind));

    sa_context ctx = {.comm = *(const MPI_Comm *)comm_address, .n = n, .index_bytes = index_bytes,
                      .value_bytes = value_bytes, .nnz_max = nnz_max, .nnz_sum = nnz_sum,
                      .dense_out = dense_out, .codec = codec_lossy(codec) ? codec : NULL,
                      .worker_residual = worker_residual, .server_residual = server_residual, .topology = topology,
                      .bytes_sent = 0};
    rc = cu_check(MPI_Comm_rank(ctx.comm, &ctx.rank), "MPI_Comm_rank");
    if (!rc) rc = cu_check(MPI_Comm_size(ctx.comm, &ctx.size), "MPI_Comm_size");
    if (rc) return rc;
    if (indices)
        sv_view_sparse(&ctx.input, 0, n, nnz, indices, values, index_bytes, value_bytes);
    else
        sv_view_dense(&ctx.input, 0, n, values, index_bytes, value_bytes);

    scaleml_result *res = calloc(1, sizeof *res);
    if (!res) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
    sv_quantized_packs = 0;
    cu_watch(entry->info.name, ctx.rank, 1);
    rc = entry->run(&ctx, res);
    cu_watch("a collective", ctx.rank, 0);
    last_quantized = (!entry->info.exact && !ctx.ran_exact) || sv_quantized_packs > 0;
    if (bytes_sent) *bytes_sent = ctx.bytes_sent;
    if (rc && ctx.size > 1 && !ctx.failed_together) {
        /* The other ranks are inside the same algorithm, waiting for messages this rank will not send:
         * raising here alone would leave them waiting forever. */
        fprintf(stderr,
                "scaleml: rank %d of %d: %s failed inside the collective: %s. Aborting the job: the other ranks "
                "are inside the same collective and cannot finish it.\n",
                ctx.rank, ctx.size, entry->info.name, scaleml_error_message());
        fflush(stderr);
        cu_pause_before_abort();
        MPI_Abort(ctx.comm, 70);
    }
    if (rc) {
        scaleml_result_free(res);
        return rc;
    }
    *result = res;
    return SCALEML_OK;
}

int scaleml_check_segment_message(const void *buf, size_t bytes, uint64_t offset, uint64_t len,
                                  int index_bytes, int value_bytes)
{
    sv_segment view;
    if ((index_bytes != 4 && index_bytes != 8) || (value_bytes != 4 && value_bytes != 8))
        return scaleml_fail(SCALEML_ERR_ARG, "index and value widths must be 4 or 8 bytes");
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

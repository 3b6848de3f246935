/*
 * The agreement between ranks before a collective: one MPI_Allreduce over
 * SCALEML_CONSENSUS_FIELDS int64 fields, MAX over the first
 * SCALEML_CONSENSUS_MAX_FIELDS and SUM over the rest (a user-defined op on a
 * contiguous record type, so it is one message per step of MPI's algorithm).
 *
 * Cost: that of MPI_Allreduce of SCALEML_CONSENSUS_FIELDS * 8 bytes:
 * about log2(P) * alpha.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>

#include "collectives/comm_util.h"
#include "api_collectives.h"

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
    /* Nonblocking, completed by cu_waitall: it yields the core while waiting (see comm_util.h). */
    MPI_Request req;
    int rank = -1;
    MPI_Comm_rank(comm, &rank);
    cu_watch("the argument agreement of a ScaleML collective", rank, 0);
    if ((rc = cu_check(MPI_Iallreduce(in, out, 1, record, op, comm, &req), "MPI_Iallreduce"))) return rc;
    return cu_waitall(1, &req, NULL);
}

/* Point-to-point helpers; see comm_util.h. */
#include "collectives/comm_util.h"

#include <limits.h>
#include <stdlib.h>

int cu_check(int mpi_rc, const char *what)
{
    if (mpi_rc == MPI_SUCCESS) return SCALEML_OK;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpi_rc, text, &len) != MPI_SUCCESS) len = 0;
    text[len < MPI_MAX_ERROR_STRING ? len : MPI_MAX_ERROR_STRING - 1] = '\0';
    return scaleml_fail(SCALEML_ERR_MPI, "%s failed: %s", what, text);
}

int cu_pack(const sv_segment *s, void **buf, size_t *bytes)
{
    *bytes = sv_wire_bytes(s);
    *buf = malloc(*bytes);
    if (!*buf) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory packing %zu bytes", *bytes);
    sv_pack(s, *buf);
    return SCALEML_OK;
}

/* MPI-4 large-count calls where the library has them; int counts otherwise. */
#if MPI_VERSION >= 4
#define CU_LARGE_COUNT 1
#else
#define CU_LARGE_COUNT 0
#endif

static int count_fits(size_t bytes)
{
    return CU_LARGE_COUNT || bytes <= (size_t)INT_MAX;
}

int cu_isend(MPI_Comm comm, int dest, int tag, const void *buf, size_t bytes, MPI_Request *req,
             uint64_t *bytes_sent)
{
    if (!count_fits(bytes))
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "message of %zu bytes needs MPI-4 large counts", bytes);
#if CU_LARGE_COUNT
    int rc = MPI_Isend_c(buf, (MPI_Count)bytes, MPI_BYTE, dest, tag, comm, req);
#else
    int rc = MPI_Isend(buf, (int)bytes, MPI_BYTE, dest, tag, comm, req);
#endif
    if (rc == MPI_SUCCESS && bytes_sent) *bytes_sent += bytes;
    return cu_check(rc, "MPI_Isend");
}

int cu_send(MPI_Comm comm, int dest, int tag, const void *buf, size_t bytes, uint64_t *bytes_sent)
{
    MPI_Request req;
    int rc = cu_isend(comm, dest, tag, buf, bytes, &req, bytes_sent);
    if (rc) return rc;
    return cu_check(MPI_Wait(&req, MPI_STATUS_IGNORE), "MPI_Wait");
}

int cu_recv(MPI_Comm comm, int source, int tag, void **buf, size_t *bytes, int *actual_source)
{
    MPI_Message msg;
    MPI_Status status;
    int rc;
    *buf = NULL;
    if ((rc = cu_check(MPI_Mprobe(source, tag, comm, &msg, &status), "MPI_Mprobe"))) return rc;
#if CU_LARGE_COUNT
    MPI_Count count = 0;
    rc = MPI_Get_count_c(&status, MPI_BYTE, &count);
#else
    int count = 0;
    rc = MPI_Get_count(&status, MPI_BYTE, &count);
#endif
    if ((rc = cu_check(rc, "MPI_Get_count"))) return rc;
    if (count < 0) return scaleml_fail(SCALEML_ERR_MALFORMED, "message of undefined length");
    *bytes = (size_t)count;
    *buf = malloc(*bytes ? *bytes : 1);
    if (!*buf) {
        /* Still consume the matched message so the communicator stays usable. */
        char dummy;
        MPI_Mrecv(&dummy, 0, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
        return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory receiving %zu bytes", *bytes);
    }
    cu_prefault(*buf, *bytes);
#if CU_LARGE_COUNT
    rc = MPI_Mrecv_c(*buf, count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
#else
    rc = MPI_Mrecv(*buf, count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
#endif
    if (actual_source) *actual_source = status.MPI_SOURCE;
    return cu_check(rc, "MPI_Mrecv");
}

void cu_prefault(void *buf, size_t bytes)
{
    volatile char *p = buf;
    for (size_t i = 0; i < bytes; i += 4096) p[i] = 0;
}

int cu_exchange(MPI_Comm comm, int partner, int tag, const void *sendbuf, size_t sendbytes,
                void **recvbuf, size_t *recvbytes, uint64_t *bytes_sent)
{
    MPI_Request req;
    int rc = cu_isend(comm, partner, tag, sendbuf, sendbytes, &req, bytes_sent);
    if (rc) return rc;
    rc = cu_recv(comm, partner, tag, recvbuf, recvbytes, NULL);
    int wait_rc = cu_check(MPI_Wait(&req, MPI_STATUS_IGNORE), "MPI_Wait");
    return rc ? rc : wait_rc;
}

int cu_recv_segment(MPI_Comm comm, int source, int tag, uint64_t offset, uint64_t len,
                    int index_bytes, int value_bytes, void **buf, sv_segment *view,
                    int *actual_source)
{
    size_t bytes = 0;
    int rc = cu_recv(comm, source, tag, buf, &bytes, actual_source);
    if (rc) return rc;
    return sv_unpack(*buf, bytes, offset, len, index_bytes, value_bytes, view);
}

int cu_allgatherv_bytes(const void *sendbuf, size_t sendbytes, void *recvbuf, const MPI_Count *counts,
                        const MPI_Aint *displs, int parts, MPI_Comm comm)
{
#if CU_LARGE_COUNT
    (void)parts;
    return cu_check(MPI_Allgatherv_c(sendbuf, (MPI_Count)sendbytes, MPI_BYTE, recvbuf, counts, displs,
                                     MPI_BYTE, comm),
                    "MPI_Allgatherv");
#else
    int *icounts = malloc((size_t)parts * sizeof *icounts);
    int *idispls = malloc((size_t)parts * sizeof *idispls);
    int rc = SCALEML_OK;
    if (!icounts || !idispls) rc = scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for %d counts", parts);
    for (int j = 0; j < parts && !rc; j++) {
        if (counts[j] > INT_MAX || displs[j] > INT_MAX)
            rc = scaleml_fail(SCALEML_ERR_TOO_LARGE, "allgather of more than 2 GiB needs MPI-4 large counts");
        else {
            icounts[j] = (int)counts[j];
            idispls[j] = (int)displs[j];
        }
    }
    if (!rc)
        rc = cu_check(MPI_Allgatherv(sendbuf, (int)sendbytes, MPI_BYTE, recvbuf, icounts, idispls,
                                     MPI_BYTE, comm),
                      "MPI_Allgatherv");
    free(icounts);
    free(idispls);
    return rc;
#endif
}

void cu_block_range(uint64_t n, int parts, int j, uint64_t *start, uint64_t *len)
{
    uint64_t q = n / (uint64_t)parts, r = n % (uint64_t)parts, uj = (uint64_t)j;
    *start = uj * q + (uj < r ? uj : r);
    *len = q + (uj < r ? 1 : 0);
}

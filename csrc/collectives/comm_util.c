/* Point-to-point helpers; see comm_util.h. */
#define _POSIX_C_SOURCE 200809L /* sched_yield */
#include "collectives/comm_util.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

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

int cu_pack_codec(sv_segment *s, const scaleml_codec *codec, int roundtrip, int key_rank, uint64_t stream,
                  void **buf, size_t *bytes)
{
    size_t room = sv_wire_bytes(s);  /* the exact size bounds every form */
    *buf = malloc(room);
    if (!*buf) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory packing %zu bytes", room);
    int rc = sv_pack_codec(s, codec, roundtrip, key_rank, stream, *buf, bytes);
    if (rc) {
        free(*buf);
        *buf = NULL;
    }
    return rc;
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

/* Polls before the first yield: a message already on its way completes
 * without a system call. */
#define CU_SPIN_POLLS 64
/* Polls between two looks at the clock once waiting has begun to yield. */
#define CU_CLOCK_POLLS 1024

static double watch_warn = 60.0, watch_abort = 600.0;
static _Thread_local const char *watch_what = "a collective";
static _Thread_local int watch_rank = -1;

static int fault_rank = -1;
static uint64_t fault_call, fault_wait;
static _Thread_local uint64_t algorithm_calls, algorithm_waits;
static _Thread_local int in_algorithm;

void scaleml_set_watchdog(double warn_seconds, double abort_seconds)
{
    watch_warn = warn_seconds > 0 ? warn_seconds : 0;
    watch_abort = abort_seconds > 0 ? abort_seconds : 0;
}

void scaleml_set_fault(int rank, uint64_t call, uint64_t wait)
{
    fault_rank = call ? rank : -1;
    fault_call = call;
    fault_wait = wait ? wait : 1;
    algorithm_calls = 0;
}

void cu_watch(const char *what, int rank, int algorithm)
{
    watch_what = what;
    watch_rank = rank;
    if (algorithm && !in_algorithm) {
        algorithm_calls++;
        algorithm_waits = 0;
    }
    in_algorithm = algorithm;
}

void cu_pause_before_abort(void)
{
    /* MPI_Abort tears the job down at once; the launcher may drop output it has not forwarded yet. */
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

/* A wait past the watchdog's limits: warn once, then abort the job. The usual
 * cause is ranks in different collectives (different ScaleML calls, or one
 * rank in plain MPI), or a rank that stopped. */
static void watchdog(double waited, int *warned)
{
    if (watch_warn > 0 && !*warned && waited >= watch_warn) {
        fprintf(stderr,
                "scaleml: rank %d has waited %.0f s in %s. Are all ranks in the same collective? (a rank in "
                "another ScaleML call, in plain MPI with another op, dtype or count, or one that stopped; "
                "SCALEML_TIMEOUT=%g s aborts the job)\n",
                watch_rank, waited, watch_what, watch_abort);
        fflush(stderr);
        *warned = 1;
    }
    if (watch_abort > 0 && waited >= watch_abort) {
        fprintf(stderr,
                "scaleml: rank %d: aborting the job after waiting %.0f s in %s (SCALEML_TIMEOUT): the ranks are "
                "not all in the same collective, or one of them stopped.\n",
                watch_rank, waited, watch_what);
        fflush(stderr);
        cu_pause_before_abort();
        MPI_Abort(MPI_COMM_WORLD, 124);
    }
}

int cu_waitall(int count, MPI_Request *requests, MPI_Status *statuses)
{
    if (in_algorithm && fault_rank == watch_rank && algorithm_calls == fault_call && ++algorithm_waits == fault_wait)
        return scaleml_fail(SCALEML_ERR_MPI, "fault injected at wait %llu of call %llu (SCALEML_INJECT_FAULT)",
                            (unsigned long long)fault_wait, (unsigned long long)fault_call);
    double start = 0;
    int warned = 0;
    for (unsigned polls = 0;; polls++) {
        int done = 0;
        int rc = MPI_Testall(count, requests, &done, statuses ? statuses : MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return cu_check(rc, "MPI_Testall");
        if (done) return SCALEML_OK;
        if (polls >= CU_SPIN_POLLS) {
            sched_yield();
            if ((watch_warn > 0 || watch_abort > 0) && polls % CU_CLOCK_POLLS == 0) {
                double now = MPI_Wtime();
                if (polls == CU_CLOCK_POLLS) start = now;  /* the first look: waiting has begun */
                else if (polls > CU_CLOCK_POLLS) watchdog(now - start, &warned);
            }
        }
    }
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
    return cu_waitall(1, &req, NULL);
}

int cu_irecv_alloc(MPI_Comm comm, int source, int tag, size_t cap, void **buf, MPI_Request *req)
{
    *req = MPI_REQUEST_NULL;
    if (!count_fits(cap))
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "message of up to %zu bytes needs MPI-4 large counts", cap);
    *buf = malloc(cap ? cap : 1);
    if (!*buf) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory receiving up to %zu bytes", cap);
    cu_prefault(*buf, cap);
#if CU_LARGE_COUNT
    int rc = MPI_Irecv_c(*buf, (MPI_Count)cap, MPI_BYTE, source, tag, comm, req);
#else
    int rc = MPI_Irecv(*buf, (int)cap, MPI_BYTE, source, tag, comm, req);
#endif
    return cu_check(rc, "MPI_Irecv");
}

int cu_irecv(MPI_Comm comm, int source, int tag, void *buf, size_t bytes, MPI_Request *req)
{
    *req = MPI_REQUEST_NULL;
    if (!count_fits(bytes))
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "message of %zu bytes needs MPI-4 large counts", bytes);
#if CU_LARGE_COUNT
    int rc = MPI_Irecv_c(buf, (MPI_Count)bytes, MPI_BYTE, source, tag, comm, req);
#else
    int rc = MPI_Irecv(buf, (int)bytes, MPI_BYTE, source, tag, comm, req);
#endif
    return cu_check(rc, "MPI_Irecv");
}

int cu_wait_exact(MPI_Request *req, size_t expected)
{
    MPI_Status status;
    size_t got = 0;
    int rc = cu_waitall(1, req, &status);
    if (!rc) rc = cu_received_bytes(&status, &got);
    if (!rc && got != expected)
        rc = scaleml_fail(SCALEML_ERR_MALFORMED, "message of %zu bytes where %zu were expected", got, expected);
    return rc;
}

int cu_received_bytes(const MPI_Status *status, size_t *bytes)
{
#if CU_LARGE_COUNT
    MPI_Count count = 0;
    int rc = MPI_Get_count_c(status, MPI_BYTE, &count);
#else
    int count = 0;
    int rc = MPI_Get_count(status, MPI_BYTE, &count);
#endif
    if ((rc = cu_check(rc, "MPI_Get_count"))) return rc;
    if (count < 0) return scaleml_fail(SCALEML_ERR_MALFORMED, "message of undefined length");
    *bytes = (size_t)count;
    return SCALEML_OK;
}

void cu_prefault(void *buf, size_t bytes)
{
    volatile char *p = buf;
    for (size_t i = 0; i < bytes; i += 4096) p[i] = 0;
}

int cu_exchange(MPI_Comm comm, int partner, int tag, const void *sendbuf, size_t sendbytes,
                size_t recvcap, void **recvbuf, size_t *recvbytes, uint64_t *bytes_sent)
{
    MPI_Request reqs[2];
    MPI_Status status[2];
    int rc = cu_irecv_alloc(comm, partner, tag, recvcap, recvbuf, &reqs[0]);
    if (rc) return rc;
    rc = cu_isend(comm, partner, tag, sendbuf, sendbytes, &reqs[1], bytes_sent);
    if (rc) {
        /* Nothing was sent, so the partner may never send either: withdraw the receive. */
        MPI_Cancel(&reqs[0]);
        MPI_Wait(&reqs[0], MPI_STATUS_IGNORE);
        return rc;
    }
    if ((rc = cu_waitall(2, reqs, status))) return rc;
    return cu_received_bytes(&status[0], recvbytes);
}

int cu_recv_segment(MPI_Comm comm, int source, int tag, uint64_t offset, uint64_t len, uint64_t nnz_bound,
                    int index_bytes, int value_bytes, void **buf, sv_segment *view)
{
    return cu_recv_segment_codec(comm, source, tag, offset, len, nnz_bound, index_bytes, value_bytes, NULL, buf,
                                 view);
}

int cu_recv_segment_codec(MPI_Comm comm, int source, int tag, uint64_t offset, uint64_t len, uint64_t nnz_bound,
                          int index_bytes, int value_bytes, const scaleml_codec *codec, void **buf,
                          sv_segment *view)
{
    MPI_Request req;
    MPI_Status status;
    size_t bytes = 0;
    size_t cap = sv_wire_bytes_bound_codec(len, nnz_bound, index_bytes, value_bytes, codec);
    int rc = cu_irecv_alloc(comm, source, tag, cap, buf, &req);
    if (!rc) rc = cu_waitall(1, &req, &status);
    if (!rc) rc = cu_received_bytes(&status, &bytes);
    if (rc) return rc;
    return sv_unpack_codec(*buf, bytes, offset, len, index_bytes, value_bytes, codec, view);
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

/*
 * Point-to-point helpers shared by the collectives: byte messages of any size,
 * received into buffers posted before the matching send with a capacity the
 * agreement bounds (the agreed nnz of every rank bounds every message), so no
 * algorithm assumes that ranks hold equal nnz and no receive needs a probe;
 * every byte sent is counted for the caller's statistics.
 *
 * Waits poll and yield the core between polls (cu_waitall). Measured with
 * MPICH 5 on 2 cores (4 ranks, 256-byte exchange): MPI_Mprobe 4-7 ms,
 * MPI_Waitall 1.5 ms, MPI_Testall + sched_yield 0.1 ms; when every rank has
 * a core of its own sched_yield returns at once and costs nothing.
 */
#ifndef SCALEML_COMM_UTIL_H
#define SCALEML_COMM_UTIL_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "collectives/sparse_vector.h"

/* Map an MPI return code to SCALEML_ERR_MPI with MPI's own error string. */
int cu_check(int mpi_rc, const char *what);

/* Pack a segment into a new heap buffer (caller frees). */
int cu_pack(const sv_segment *s, void **buf, size_t *bytes);
/* The same with a lossy value format (sv_pack_codec: roundtrip replaces s by
 * what the receiver decodes when it travels quantized). */
int cu_pack_codec(sv_segment *s, const scaleml_codec *codec, int roundtrip, int key_rank, uint64_t stream,
                  void **buf, size_t *bytes);

/* Complete requests, polling MPI and yielding the core between polls; the
 * watchdog (scaleml_set_watchdog) warns, then aborts the job, when a wait
 * lasts too long. */
int cu_waitall(int count, MPI_Request *requests, MPI_Status *statuses);

/* What this thread's waits are part of, for the watchdog's messages (a static
 * string), and whether the fault hook (scaleml_set_fault) counts them. */
void cu_watch(const char *what, int rank, int algorithm);

/* A short pause after a message that precedes MPI_Abort, so the launcher forwards it before the job ends. */
void cu_pause_before_abort(void);

int cu_isend(MPI_Comm comm, int dest, int tag, const void *buf, size_t bytes, MPI_Request *req,
             uint64_t *bytes_sent);
int cu_send(MPI_Comm comm, int dest, int tag, const void *buf, size_t bytes, uint64_t *bytes_sent);

/* Post a receive of at most cap bytes into a new heap buffer (caller frees
 * *buf, also on error). The size arrives with the completed request's status
 * (cu_received_bytes). */
int cu_irecv_alloc(MPI_Comm comm, int source, int tag, size_t cap, void **buf, MPI_Request *req);
int cu_received_bytes(const MPI_Status *status, size_t *bytes);
/* Post a receive of exactly `bytes` into buf (the quantized collectives know every size in advance). */
int cu_irecv(MPI_Comm comm, int source, int tag, void *buf, size_t bytes, MPI_Request *req);
/* Wait for a receive posted by cu_irecv and check that it brought exactly `expected` bytes. */
int cu_wait_exact(MPI_Request *req, size_t expected);

/* Send bytes to partner and receive its message of at most recvcap bytes
 * (heap buffer, caller frees). The receive is posted first and both sides
 * complete together, so the pairwise exchange cannot deadlock. */
int cu_exchange(MPI_Comm comm, int partner, int tag, const void *sendbuf, size_t sendbytes,
                size_t recvcap, void **recvbuf, size_t *recvbytes, uint64_t *bytes_sent);

/* Receive one packed segment over [offset, offset+len) holding at most
 * nnz_bound entries (sv_wire_bytes_bound); view validated by sv_unpack. */
int cu_recv_segment(MPI_Comm comm, int source, int tag, uint64_t offset, uint64_t len, uint64_t nnz_bound,
                    int index_bytes, int value_bytes, void **buf, sv_segment *view);
/* The same with a lossy value format: the capacity is sv_wire_bytes_bound_codec
 * and a quantized segment arrives decoded (view owned: sv_free it). */
int cu_recv_segment_codec(MPI_Comm comm, int source, int tag, uint64_t offset, uint64_t len, uint64_t nnz_bound,
                          int index_bytes, int value_bytes, const scaleml_codec *codec, void **buf,
                          sv_segment *view);

/* MPI_Allgatherv of byte blocks (large counts where MPI has them). */
int cu_allgatherv_bytes(const void *sendbuf, size_t sendbytes, void *recvbuf, const MPI_Count *counts,
                        const MPI_Aint *displs, int parts, MPI_Comm comm);

/* Touch every page of a buffer MPI is about to write into. Fresh pages
 * faulted inside MPI's copy loops cost 5-10x more than here when ranks share
 * cores (seen with MPICH's shared-memory transport), so receive buffers are
 * faulted in first; one byte per page, a few microseconds per MiB. */
void cu_prefault(void *buf, size_t bytes);

/* Range j of P contiguous ranges of [0, n): sizes differ by at most one. */
void cu_block_range(uint64_t n, int parts, int j, uint64_t *start, uint64_t *len);

#endif

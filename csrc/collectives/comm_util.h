/*
 * Point-to-point helpers shared by the collectives: byte messages of any size
 * whose length the receiver learns by matched probe (MPI_Mprobe/MPI_Mrecv), so
 * no algorithm assumes that ranks hold equal nnz, and every byte sent is
 * counted for the caller's statistics.
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

/* Send bytes to partner and receive its message of unknown size (heap buffer,
 * caller frees). Sends are non-blocking so the pairwise exchange cannot
 * deadlock whatever the message sizes. */
int cu_exchange(MPI_Comm comm, int partner, int tag, const void *sendbuf, size_t sendbytes,
                void **recvbuf, size_t *recvbytes, uint64_t *bytes_sent);

int cu_send(MPI_Comm comm, int dest, int tag, const void *buf, size_t bytes, uint64_t *bytes_sent);
int cu_isend(MPI_Comm comm, int dest, int tag, const void *buf, size_t bytes, MPI_Request *req,
             uint64_t *bytes_sent);

/* Receive a message of unknown size from source (or MPI_ANY_SOURCE). */
int cu_recv(MPI_Comm comm, int source, int tag, void **buf, size_t *bytes, int *actual_source);

/* Receive one packed segment from source into an owned segment of range [offset, offset+len). */
int cu_recv_segment(MPI_Comm comm, int source, int tag, uint64_t offset, uint64_t len,
                    int index_bytes, int value_bytes, void **buf, sv_segment *view,
                    int *actual_source);

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

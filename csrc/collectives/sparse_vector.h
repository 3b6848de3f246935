/*
 * Sparse vector segments and their wire format (SparCML "sparse stream").
 *
 * A segment covers the contiguous index range [offset, offset + len) of a
 * vector of dimension n. It is stored either
 *   - sparse: nnz (index, value) entries, indices global, sorted and unique,
 *     kept as two arrays (structure of arrays), or
 *   - dense:  len values.
 * Index width is 4 bytes when n <= 2^32, else 8; values are float32 or float64.
 *
 * Densify rule: a segment is kept dense when storing it sparse would take at
 * least as many bytes as dense:  nnz * (index_bytes + value_bytes) >= len * value_bytes.
 * With 32-bit indices and float32 values that is density >= 1/2.
 *
 * Wire format of one segment (all little-endian host order, MPI_BYTE):
 *   uint64 form        SV_WIRE_SPARSE or SV_WIRE_DENSE
 *   uint64 count       nnz (sparse) or len (dense)
 *   sparse: count indices (index_bytes each), zero padding to 8 bytes,
 *           count values (value_bytes each)
 *   dense:  count values
 * The receiver learns the form from the header, never from a guess, and checks
 * that the byte count, range and ordering agree before using the data.
 */
#ifndef SCALEML_SPARSE_VECTOR_H
#define SCALEML_SPARSE_VECTOR_H

#include <stddef.h>
#include <stdint.h>

#include "core/errors.h"

#define SV_WIRE_SPARSE UINT64_C(0x5053)  /* "SP" */
#define SV_WIRE_DENSE UINT64_C(0x4e44)   /* "DN" */
#define SV_WIRE_HEADER_BYTES 16

typedef struct {
    uint64_t offset;   /* first global index the segment covers */
    uint64_t len;      /* number of indices it covers */
    uint64_t nnz;      /* entries stored: len when dense */
    int dense;
    int index_bytes;   /* 4 or 8 */
    int value_bytes;   /* 4 (float32) or 8 (float64) */
    void *indices;     /* nnz global indices; NULL when dense */
    void *values;      /* nnz (sparse) or len (dense) values */
    void *owned;       /* heap block behind indices/values, NULL for a view */
} sv_segment;

int sv_should_densify(uint64_t nnz, uint64_t len, int index_bytes, int value_bytes);

/* Allocate an owned segment: sparse with room for cap entries, or dense zeros. */
int sv_alloc_sparse(sv_segment *s, uint64_t offset, uint64_t len, uint64_t cap,
                    int index_bytes, int value_bytes);
int sv_alloc_dense(sv_segment *s, uint64_t offset, uint64_t len,
                   int index_bytes, int value_bytes);
void sv_free(sv_segment *s);

/* A view of a sparse input given as arrays (no copy). */
void sv_view_sparse(sv_segment *s, uint64_t offset, uint64_t len, uint64_t nnz,
                    const void *indices, const void *values,
                    int index_bytes, int value_bytes);

/* A view of dense values over [offset, offset + len) (no copy). */
void sv_view_dense(sv_segment *s, uint64_t offset, uint64_t len, const void *values,
                   int index_bytes, int value_bytes);

/* A view of the part of v that lies in [offset, offset + len) (no copy). */
void sv_slice(const sv_segment *v, uint64_t offset, uint64_t len, sv_segment *view);

/* Deep copy of src into a new owned segment. */
int sv_copy(const sv_segment *src, sv_segment *dst);

/* acc += b over the same range; acc becomes owned and takes the form the
 * densify rule gives for the result. */
int sv_accumulate(sv_segment *acc, const sv_segment *b);

/* Turn an owned or viewed segment into an owned dense one. */
int sv_densify(sv_segment *s);

/* Apply the densify rule to an owned sparse segment. */
int sv_apply_densify_rule(sv_segment *s);

/* Bytes of s on the wire: dense when the densify rule says so, even for a sparse segment. */
size_t sv_wire_bytes(const sv_segment *s);
/* Largest wire size of a segment over len indices with at most nnz_bound entries. */
size_t sv_wire_bytes_bound(uint64_t len, uint64_t nnz_bound, int index_bytes, int value_bytes);
void sv_pack(const sv_segment *s, void *buf);
/* Zero-copy view of a received segment; validates header, size, range, order. */
int sv_unpack(const void *buf, size_t bytes, uint64_t offset, uint64_t len,
              int index_bytes, int value_bytes, sv_segment *view);

/* Write s into dense[0 .. len) where dense[0] is global index s->offset. */
void sv_write_dense(const sv_segment *s, void *dense);
/* Entries that sv_write_sparse produces: nnz (sparse) or the non-zeros (dense). */
uint64_t sv_sparse_entry_count(const sv_segment *s);
/* Write those entries, at most capacity of them; returns how many were written. */
uint64_t sv_write_sparse(const sv_segment *s, void *indices, void *values, uint64_t capacity);

#endif

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
 * With a lossy value format (codec.h; the caller's scaleml_codec, NULL when
 * exact) dense data travels in that format (SparCML's switch to dense
 * quantized), so the rule on the wire compares with its size instead:
 *   nnz * (index_bytes + value_bytes) >= sv_dense_wire_body(len)
 * where sv_dense_wire_body is the codec's bytes for len values padded to 8
 * when that is smaller than len * value_bytes (sv_quantizes), else
 * len * value_bytes (short ranges, where per-bucket norms outweigh the values,
 * travel exact). What is kept in memory follows the exact rule either way.
 *
 * Wire format of one segment (all little-endian host order, MPI_BYTE):
 *   uint64 form        SV_WIRE_SPARSE, SV_WIRE_DENSE or SV_WIRE_QUANT
 *   uint64 count       nnz (sparse) or len (dense, quantized)
 *   sparse: count indices (index_bytes each), zero padding to 8 bytes,
 *           count values (value_bytes each)
 *   dense:  count values
 *   quant:  codec_bytes(count) bytes of the codec's format, zero padding to
 *           8 bytes (segments gathered back to back keep their values aligned)
 * Without a codec no SV_WIRE_QUANT segment is sent or accepted and the bytes
 * are exactly those of the exact format. The receiver learns the form from the
 * header, never from a guess, and checks that the byte count, range and
 * ordering agree before using the data; a quantized segment is decoded into
 * memory the unpacked segment owns.
 *
 * A segment the codec refuses (SCALEML_ERR_ARG: NaN, Inf, a value beyond
 * float16's range) travels in its exact form instead, so that no rank leaves
 * a collective its partners are still waiting in; the receiver cannot tell
 * the difference and needs none: both sides then hold the exact values.
 */
#ifndef SCALEML_SPARSE_VECTOR_H
#define SCALEML_SPARSE_VECTOR_H

#include <stddef.h>
#include <stdint.h>

#include "api_collectives.h"
#include "core/errors.h"

#define SV_WIRE_SPARSE UINT64_C(0x5053)  /* "SP" */
#define SV_WIRE_DENSE UINT64_C(0x4e44)   /* "DN" */
#define SV_WIRE_QUANT UINT64_C(0x5451)   /* "QT" */
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

/* ---- the wire with a lossy value format (codec NULL or not lossy: exact) ---- */
/* 1 when dense data over len indices travels in the codec's format: a lossy
 * codec whose padded size is below len full-width values (len > 0). */
int sv_quantizes(uint64_t len, int value_bytes, const scaleml_codec *codec);
/* Bytes after the header of a dense segment over len indices on the wire. */
size_t sv_dense_wire_body(uint64_t len, int value_bytes, const scaleml_codec *codec);
/* The densify rule of the wire: nnz * (index_bytes + value_bytes) >= sv_dense_wire_body. */
int sv_should_densify_wire(uint64_t nnz, uint64_t len, int index_bytes, int value_bytes,
                           const scaleml_codec *codec);
/* 1 when s travels in the codec's format (dense, or sparse past the wire rule). */
int sv_travels_quantized(const sv_segment *s, const scaleml_codec *codec);

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
/* The same, then b is freed; an owned dense b may become the sum (no copy). */
int sv_accumulate_consume(sv_segment *acc, sv_segment *b);

/* A new owned sparse segment of src's non-zeros (-0.0 is none: a zero of either sign is no entry) over
 * [offset, offset + src->len): every index moved by offset - src->offset. */
int sv_copy_nonzeros(const sv_segment *src, uint64_t offset, sv_segment *dst);

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

/* The same with a codec. Wire bytes of s: what sv_pack_codec writes unless
 * the codec refuses the values; never more than sv_wire_bytes(s). */
size_t sv_wire_bytes_codec(const sv_segment *s, const scaleml_codec *codec);
/* Largest message over len indices with at most nnz_bound entries, the
 * exact form included (what a refused encode sends). */
size_t sv_wire_bytes_bound_codec(uint64_t len, uint64_t nnz_bound, int index_bytes, int value_bytes,
                                 const scaleml_codec *codec);
/* Pack s into buf (room for sv_wire_bytes(s), the exact size, which bounds
 * every form); *bytes gets the size written. A quantized segment is encoded
 * with the random stream scaleml_rng_key(seed, key_rank, step, stream):
 * senders that hold the same data and pass the same key send the same bytes.
 * roundtrip: s is then replaced (owned, dense) by the values the receiver
 * decodes, for a sender that keeps using it (codec_encode_roundtrip). */
/* Segments this thread has packed in the quantized form (the engine resets it per call, to tell the caller
 * whether anything travelled lossy). */
extern _Thread_local uint64_t sv_quantized_packs;
int sv_pack_codec(sv_segment *s, const scaleml_codec *codec, int roundtrip, int key_rank, uint64_t stream,
                  void *buf, size_t *bytes);
/* View of a received segment; a quantized one is decoded into a dense
 * segment that owns its memory (view->owned): release every view with
 * sv_free. Without a codec exactly sv_unpack. */
int sv_unpack_codec(const void *buf, size_t bytes, uint64_t offset, uint64_t len, int index_bytes,
                    int value_bytes, const scaleml_codec *codec, sv_segment *view);
/* A received dense or quantized segment of len values written into dst[0 .. len). */
int sv_unpack_dense_into(const void *buf, size_t bytes, uint64_t len, int value_bytes,
                         const scaleml_codec *codec, void *dst);

/* Write s into dense[0 .. len) where dense[0] is global index s->offset. */
void sv_write_dense(const sv_segment *s, void *dense);
/* Write a sparse segment's entries at their global indices of whole[0 .. n), and nothing else. */
void sv_write_entries(const sv_segment *s, void *whole);
/* Set whole[positions[i]] to zero for i < count (positions of index_bytes, values of value_bytes). */
void sv_zero_positions(void *whole, const void *positions, uint64_t count, int index_bytes, int value_bytes);
/* Entries that sv_write_sparse produces: nnz (sparse) or the non-zeros (dense). */
uint64_t sv_sparse_entry_count(const sv_segment *s);
/* Write those entries, at most capacity of them; returns how many were written. */
uint64_t sv_write_sparse(const sv_segment *s, void *indices, void *values, uint64_t capacity);

#endif

/* Sparse vector segments: merge, densify rule, wire format. See sparse_vector.h. */
#include "collectives/sparse_vector.h"

#include "api_collectives.h"
#include "collectives/codec.h"
#include "core/counter_rng.h" /* SCALEML_CLONES */
#include "core/dense_scan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sv_should_densify(uint64_t nnz, uint64_t len, int index_bytes, int value_bytes)
{
    /* 128-bit products: nnz and len may be close to 2^64. */
    unsigned __int128 sparse_bytes = (unsigned __int128)nnz * (unsigned)(index_bytes + value_bytes);
    unsigned __int128 dense_bytes = (unsigned __int128)len * (unsigned)value_bytes;
    return len > 0 && sparse_bytes >= dense_bytes;
}

/* ---- type-generic kernels: one instance per (index type, value type) ---- */

/* Values zeroed and filled at a time by sv_write_dense: 16 or 32 KiB, within the L1/L2 cache. */
#define FILL_CHUNK 4096

#define SV_DEFINE_KERNELS(SUFFIX, IT, VT)                                              \
    static uint64_t merge_##SUFFIX(const IT *ai, const VT *av, uint64_t an,            \
                                   const IT *bi, const VT *bv, uint64_t bn,            \
                                   IT *oi, VT *ov)                                     \
    {                                                                                  \
        uint64_t i = 0, j = 0, k = 0;                                                  \
        while (i < an && j < bn) {                                                     \
            if (ai[i] < bi[j]) {                                                       \
                oi[k] = ai[i]; ov[k++] = av[i++];                                      \
            } else if (bi[j] < ai[i]) {                                                \
                oi[k] = bi[j]; ov[k++] = bv[j++];                                      \
            } else {                                                                   \
                oi[k] = ai[i]; ov[k++] = av[i++] + bv[j++];                            \
            }                                                                          \
        }                                                                              \
        for (; i < an; i++, k++) { oi[k] = ai[i]; ov[k] = av[i]; }                     \
        for (; j < bn; j++, k++) { oi[k] = bi[j]; ov[k] = bv[j]; }                     \
        return k;                                                                      \
    }                                                                                  \
    static void scatter_add_##SUFFIX(VT *dense, uint64_t offset, const IT *idx,        \
                                     const VT *val, uint64_t nnz)                      \
    {                                                                                  \
        for (uint64_t i = 0; i < nnz; i++) dense[idx[i] - offset] += val[i];           \
    }                                                                                  \
    static void scatter_set_##SUFFIX(VT *dense, uint64_t offset, const IT *idx,        \
                                     const VT *val, uint64_t nnz)                      \
    {                                                                                  \
        for (uint64_t i = 0; i < nnz; i++) dense[idx[i] - offset] = val[i];            \
    }                                                                                  \
    static void scatter_zero_##SUFFIX(VT *dense, const IT *idx, uint64_t count)        \
    {                                                                                  \
        for (uint64_t i = 0; i < count; i++) dense[idx[i]] = 0;                        \
    }                                                                                  \
    /* dense = the entries, zeros elsewhere: zeroed and set a chunk at a time while it  \
     * is in cache (a whole memset first would send the sets to memory again); entries \
     * past the chunk wait for theirs, any before it land on zeros already written. */ \
    static void fill_##SUFFIX(VT *dense, uint64_t offset, uint64_t len, const IT *idx, \
                              const VT *val, uint64_t nnz)                             \
    {                                                                                  \
        uint64_t e = 0;                                                                \
        for (uint64_t lo = 0; lo < len; lo += FILL_CHUNK) {                            \
            uint64_t hi = len - lo > FILL_CHUNK ? lo + FILL_CHUNK : len;               \
            memset(dense + lo, 0, (size_t)(hi - lo) * sizeof *dense);                  \
            for (; e < nnz && (uint64_t)idx[e] - offset < hi; e++)                     \
                dense[idx[e] - offset] = val[e];                                       \
        }                                                                              \
    }                                                                                  \
    static uint64_t lower_bound_##SUFFIX(const IT *idx, uint64_t nnz, uint64_t key)    \
    {                                                                                  \
        uint64_t lo = 0, hi = nnz;                                                     \
        while (lo < hi) {                                                              \
            uint64_t mid = lo + (hi - lo) / 2;                                         \
            if ((uint64_t)idx[mid] < key) lo = mid + 1; else hi = mid;                 \
        }                                                                              \
        return lo;                                                                     \
    }                                                                                  \
    /* entries whose value is not zero (either sign), indices moved by to - from */     \
    static uint64_t copy_nonzeros_##SUFFIX(const IT *idx, const VT *val, uint64_t nnz, \
                                           uint64_t from, uint64_t to, IT *oi, VT *ov) \
    {                                                                                  \
        uint64_t k = 0;                                                                \
        for (uint64_t i = 0; i < nnz; i++) {                                           \
            if (val[i] == 0) continue;                                                 \
            oi[k] = (IT)((uint64_t)idx[i] - from + to);                                \
            ov[k++] = val[i];                                                          \
        }                                                                              \
        return k;                                                                      \
    }

SV_DEFINE_KERNELS(u32_f32, uint32_t, float)
SV_DEFINE_KERNELS(u32_f64, uint32_t, double)
SV_DEFINE_KERNELS(u64_f32, uint64_t, float)
SV_DEFINE_KERNELS(u64_f64, uint64_t, double)

/* Call KERNEL_<suffix>(args...) for the segment's index and value widths. */
#define SV_DISPATCH(ib, vb, KERNEL, ...)                                     \
    ((ib) == 4 ? ((vb) == 4 ? KERNEL##_u32_f32(__VA_ARGS__)                  \
                            : KERNEL##_u32_f64(__VA_ARGS__))                 \
               : ((vb) == 4 ? KERNEL##_u64_f32(__VA_ARGS__)                  \
                            : KERNEL##_u64_f64(__VA_ARGS__)))
#define SV_DISPATCH_VOID(ib, vb, KERNEL, ...)                                \
    do {                                                                     \
        if ((ib) == 4 && (vb) == 4) KERNEL##_u32_f32(__VA_ARGS__);           \
        else if ((ib) == 4) KERNEL##_u32_f64(__VA_ARGS__);                   \
        else if ((vb) == 4) KERNEL##_u64_f32(__VA_ARGS__);                   \
        else KERNEL##_u64_f64(__VA_ARGS__);                                  \
    } while (0)

/* ---- allocation and views ---- */

static int checked_bytes(uint64_t count, int width, size_t *out)
{
    if (count > (uint64_t)(SIZE_MAX / 2) / (unsigned)width)
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "a buffer of %llu entries does not fit in memory",
                       (unsigned long long)count);
    *out = (size_t)count * (unsigned)width;
    return SCALEML_OK;
}

static size_t pad8(size_t x) { return (x + 7) & ~(size_t)7; }

int sv_alloc_sparse(sv_segment *s, uint64_t offset, uint64_t len, uint64_t cap,
                    int index_bytes, int value_bytes)
{
    size_t ibytes = 0, vbytes = 0;
    int rc;
    if ((rc = checked_bytes(cap, index_bytes, &ibytes)) || (rc = checked_bytes(cap, value_bytes, &vbytes)))
        return rc;
    char *block = malloc(pad8(ibytes) + vbytes + 8);
    if (!block)
        return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory allocating %llu sparse entries",
                       (unsigned long long)cap);
    *s = (sv_segment){.offset = offset, .len = len, .nnz = 0, .dense = 0,
                      .index_bytes = index_bytes, .value_bytes = value_bytes,
                      .indices = block, .values = block + pad8(ibytes), .owned = block};
    return SCALEML_OK;
}

int sv_alloc_dense(sv_segment *s, uint64_t offset, uint64_t len, int index_bytes, int value_bytes)
{
    size_t vbytes = 0;
    int rc = checked_bytes(len, value_bytes, &vbytes);
    if (rc) return rc;
    void *block = calloc(vbytes ? vbytes : 1, 1);
    if (!block)
        return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory allocating a dense segment of %llu values",
                       (unsigned long long)len);
    *s = (sv_segment){.offset = offset, .len = len, .nnz = len, .dense = 1,
                      .index_bytes = index_bytes, .value_bytes = value_bytes,
                      .indices = NULL, .values = block, .owned = block};
    return SCALEML_OK;
}

void sv_free(sv_segment *s)
{
    free(s->owned);
    s->owned = s->indices = s->values = NULL;
    s->nnz = 0;
}

void sv_view_sparse(sv_segment *s, uint64_t offset, uint64_t len, uint64_t nnz,
                    const void *indices, const void *values, int index_bytes, int value_bytes)
{
    *s = (sv_segment){.offset = offset, .len = len, .nnz = nnz, .dense = 0,
                      .index_bytes = index_bytes, .value_bytes = value_bytes,
                      .indices = (void *)indices, .values = (void *)values, .owned = NULL};
}

void sv_view_dense(sv_segment *s, uint64_t offset, uint64_t len, const void *values,
                   int index_bytes, int value_bytes)
{
    *s = (sv_segment){.offset = offset, .len = len, .nnz = len, .dense = 1,
                      .index_bytes = index_bytes, .value_bytes = value_bytes,
                      .indices = NULL, .values = (void *)values, .owned = NULL};
}

void sv_slice(const sv_segment *v, uint64_t offset, uint64_t len, sv_segment *view)
{
    *view = *v;
    view->owned = NULL;
    view->offset = offset;
    view->len = len;
    if (v->dense) {
        view->values = (char *)v->values + (offset - v->offset) * (unsigned)v->value_bytes;
        view->nnz = len;
        return;
    }
    uint64_t lo = SV_DISPATCH(v->index_bytes, v->value_bytes, lower_bound, v->indices, v->nnz, offset);
    uint64_t hi = SV_DISPATCH(v->index_bytes, v->value_bytes, lower_bound, v->indices, v->nnz, offset + len);
    view->nnz = hi - lo;
    view->indices = (char *)v->indices + lo * (unsigned)v->index_bytes;
    view->values = (char *)v->values + lo * (unsigned)v->value_bytes;
}

static void copy_values(void *dst, const void *src, uint64_t count, int width)
{
    if (count) memcpy(dst, src, (size_t)count * (unsigned)width);
}

int sv_copy(const sv_segment *src, sv_segment *dst)
{
    int rc;
    if (src->dense) {
        if ((rc = sv_alloc_dense(dst, src->offset, src->len, src->index_bytes, src->value_bytes)))
            return rc;
        copy_values(dst->values, src->values, src->len, src->value_bytes);
        return SCALEML_OK;
    }
    if ((rc = sv_alloc_sparse(dst, src->offset, src->len, src->nnz, src->index_bytes, src->value_bytes)))
        return rc;
    copy_values(dst->indices, src->indices, src->nnz, src->index_bytes);
    copy_values(dst->values, src->values, src->nnz, src->value_bytes);
    dst->nnz = src->nnz;
    return SCALEML_OK;
}

int sv_densify(sv_segment *s)
{
    if (s->dense && s->owned) return SCALEML_OK;
    sv_segment d;
    int rc = sv_alloc_dense(&d, s->offset, s->len, s->index_bytes, s->value_bytes);
    if (rc) return rc;
    if (s->dense)
        copy_values(d.values, s->values, s->len, s->value_bytes);
    else
        SV_DISPATCH_VOID(s->index_bytes, s->value_bytes, scatter_set, d.values, s->offset,
                         s->indices, s->values, s->nnz);
    sv_free(s);
    *s = d;
    return SCALEML_OK;
}

int sv_apply_densify_rule(sv_segment *s)
{
    if (!s->dense && sv_should_densify(s->nnz, s->len, s->index_bytes, s->value_bytes))
        return sv_densify(s);
    return SCALEML_OK;
}

int sv_accumulate(sv_segment *acc, const sv_segment *b)
{
    int rc;
    if (!acc->owned && acc->dense) { /* a dense view: own a copy before writing */
        sv_segment copy;
        if ((rc = sv_copy(acc, &copy))) return rc;
        *acc = copy;
    }
    if (acc->dense) {
        if (b->dense)
            codec_add(acc->values, b->values, acc->len, acc->value_bytes);
        else
            SV_DISPATCH_VOID(acc->index_bytes, acc->value_bytes, scatter_add, acc->values,
                             acc->offset, b->indices, b->values, b->nnz);
        return SCALEML_OK;
    }
    if (b->dense) {
        sv_segment d;
        if ((rc = sv_copy(b, &d))) return rc;
        SV_DISPATCH_VOID(acc->index_bytes, acc->value_bytes, scatter_add, d.values, d.offset,
                         acc->indices, acc->values, acc->nnz);
        sv_free(acc);
        *acc = d;
        return SCALEML_OK;
    }
    /* Both sparse. The union holds at least max(nnz_a, nnz_b) entries: when
     * that alone is dense by the rule, add into a dense buffer directly. */
    sv_segment out;
    uint64_t larger = acc->nnz > b->nnz ? acc->nnz : b->nnz;
    if (sv_should_densify(larger, acc->len, acc->index_bytes, acc->value_bytes)) {
        if ((rc = sv_densify(acc))) return rc;
        SV_DISPATCH_VOID(acc->index_bytes, acc->value_bytes, scatter_add, acc->values,
                         acc->offset, b->indices, b->values, b->nnz);
        return SCALEML_OK;
    }
    if ((rc = sv_alloc_sparse(&out, acc->offset, acc->len, acc->nnz + b->nnz, acc->index_bytes,
                              acc->value_bytes)))
        return rc;
    out.nnz = SV_DISPATCH(acc->index_bytes, acc->value_bytes, merge, acc->indices, acc->values,
                          acc->nnz, b->indices, b->values, b->nnz, out.indices, out.values);
    sv_free(acc);
    *acc = out;
    return sv_apply_densify_rule(acc);
}

int sv_accumulate_consume(sv_segment *acc, sv_segment *b)
{
    if (b->dense && b->owned && !acc->dense) {
        /* A decoded dense operand: add the sparse entries into it rather than
         * into a copy (same sums: IEEE addition is commutative). */
        SV_DISPATCH_VOID(acc->index_bytes, acc->value_bytes, scatter_add, b->values, b->offset,
                         acc->indices, acc->values, acc->nnz);
        sv_free(acc);
        *acc = *b;
        b->owned = b->indices = b->values = NULL;
        return SCALEML_OK;
    }
    int rc = sv_accumulate(acc, b);
    sv_free(b);
    return rc;
}

int sv_copy_nonzeros(const sv_segment *src, uint64_t offset, sv_segment *dst)
{
    const void *values = src->values;
    uint64_t count = scaleml_count_nonzeros(values, src->nnz, src->value_bytes);  /* nnz = len when dense */
    int rc = sv_alloc_sparse(dst, offset, src->len, count, src->index_bytes, src->value_bytes);
    if (rc) return rc;
    if (src->dense)
        dst->nnz = dense_extract_nonzeros(values, src->len, offset, src->value_bytes, src->index_bytes,
                                          dst->indices, dst->values, count);
    else
        dst->nnz = SV_DISPATCH(src->index_bytes, src->value_bytes, copy_nonzeros, src->indices, values, src->nnz,
                               src->offset, offset, dst->indices, dst->values);
    return SCALEML_OK;
}

/* ---- index checks ---- */

/* 1 when idx[0 .. count) strictly increase within [lo, hi): one pass, no branch per index. */
#define DEFINE_WITHIN(IT, NEGATIVE)                                                    \
    static int within_##IT(const IT *idx, uint64_t count, uint64_t lo, uint64_t hi)    \
    {                                                                                  \
        int bad = NEGATIVE || (uint64_t)idx[0] < lo;                                   \
        for (uint64_t i = 1; i < count; i++) bad |= idx[i] <= idx[i - 1];              \
        return !bad && (uint64_t)idx[count - 1] < hi;                                  \
    }
DEFINE_WITHIN(uint32_t, 0)
DEFINE_WITHIN(uint64_t, 0)
DEFINE_WITHIN(int32_t, idx[0] < 0)
DEFINE_WITHIN(int64_t, idx[0] < 0)

/* AVX2 clone: 64-bit compares of 4 indices at a time (the baseline has none) */
SCALEML_CLONES static int indices_within(const void *indices, uint64_t count, int index_bytes, int is_signed,
                                         uint64_t lo, uint64_t hi)
{
    if (count == 0) return 1;
    if (is_signed)
        return index_bytes == 4 ? within_int32_t(indices, count, lo, hi) : within_int64_t(indices, count, lo, hi);
    return index_bytes == 4 ? within_uint32_t(indices, count, lo, hi) : within_uint64_t(indices, count, lo, hi);
}

int scaleml_indices_increasing(const void *indices, uint64_t count, int index_bytes, int is_signed,
                               uint64_t bound)
{
    return indices_within(indices, count, index_bytes, is_signed, 0, bound);
}

/* ---- wire format ---- */

/* A sparse segment whose entries take at least as many bytes as its dense form
 * travels dense: the densify rule applies to what is sent, not only to what is kept. */
static int packs_dense(const sv_segment *s)
{
    return s->dense || sv_should_densify(s->nnz, s->len, s->index_bytes, s->value_bytes);
}

size_t sv_wire_bytes(const sv_segment *s)
{
    if (packs_dense(s)) return SV_WIRE_HEADER_BYTES + (size_t)s->len * (unsigned)s->value_bytes;
    return SV_WIRE_HEADER_BYTES + pad8((size_t)s->nnz * (unsigned)s->index_bytes) +
           (size_t)s->nnz * (unsigned)s->value_bytes;
}

size_t sv_wire_bytes_bound(uint64_t len, uint64_t nnz_bound, int index_bytes, int value_bytes)
{
    /* Sparse only while nnz*(ib+vb) < len*vb, so a sparse message is below
     * len*vb plus the index padding; a dense one is exactly len*vb. */
    uint64_t nnz = nnz_bound < len ? nnz_bound : len;
    size_t dense = (size_t)len * (unsigned)value_bytes;
    size_t sparse = pad8((size_t)nnz * (unsigned)index_bytes) + (size_t)nnz * (unsigned)value_bytes;
    return SV_WIRE_HEADER_BYTES + (sparse < dense ? sparse : dense + 8);
}

void sv_pack(const sv_segment *s, void *buf)
{
    int dense = packs_dense(s);
    uint64_t header[2] = {dense ? SV_WIRE_DENSE : SV_WIRE_SPARSE, dense ? s->len : s->nnz};
    char *p = buf;
    memcpy(p, header, sizeof header);
    p += SV_WIRE_HEADER_BYTES;
    if (dense) {
        sv_write_dense(s, p);
        return;
    }
    size_t ibytes = (size_t)s->nnz * (unsigned)s->index_bytes;
    copy_values(p, s->indices, s->nnz, s->index_bytes);
    memset(p + ibytes, 0, pad8(ibytes) - ibytes);
    copy_values(p + pad8(ibytes), s->values, s->nnz, s->value_bytes);
}

int sv_unpack(const void *buf, size_t bytes, uint64_t offset, uint64_t len,
              int index_bytes, int value_bytes, sv_segment *view)
{
    uint64_t header[2];
    if (bytes < SV_WIRE_HEADER_BYTES)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "malformed message: %zu bytes, shorter than its header",
                       bytes);
    memcpy(header, buf, sizeof header);
    const char *p = (const char *)buf + SV_WIRE_HEADER_BYTES;
    size_t body = bytes - SV_WIRE_HEADER_BYTES;
    if (header[0] == SV_WIRE_DENSE) {
        if (header[1] != len || body != (size_t)len * (unsigned)value_bytes)
            return scaleml_fail(SCALEML_ERR_MALFORMED,
                           "malformed message: dense segment of %llu values in %zu bytes, expected %llu values",
                           (unsigned long long)header[1], body, (unsigned long long)len);
        *view = (sv_segment){.offset = offset, .len = len, .nnz = len, .dense = 1,
                             .index_bytes = index_bytes, .value_bytes = value_bytes,
                             .indices = NULL, .values = (void *)p, .owned = NULL};
        return SCALEML_OK;
    }
    if (header[0] != SV_WIRE_SPARSE)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "malformed message: unknown form tag %#llx",
                       (unsigned long long)header[0]);
    uint64_t nnz = header[1];
    if (nnz > len || body != pad8((size_t)nnz * (unsigned)index_bytes) + (size_t)nnz * (unsigned)value_bytes)
        return scaleml_fail(SCALEML_ERR_MALFORMED,
                       "malformed message: sparse segment claims %llu entries in %zu bytes",
                       (unsigned long long)nnz, body);
    sv_view_sparse(view, offset, len, nnz, p, p + pad8((size_t)nnz * (unsigned)index_bytes),
                   index_bytes, value_bytes);
    if (!indices_within(view->indices, nnz, index_bytes, 0, offset, offset + len))
        return scaleml_fail(SCALEML_ERR_MALFORMED,
                       "malformed message: indices unsorted, repeated or outside [%llu, %llu)",
                       (unsigned long long)offset, (unsigned long long)(offset + len));
    return SCALEML_OK;
}

/* ---- wire format with a lossy value format ---- */

int sv_quantizes(uint64_t len, int value_bytes, const scaleml_codec *codec)
{
    return codec_lossy(codec) && len > 0 &&
           pad8(codec_bytes(codec, len, value_bytes)) < (size_t)len * (unsigned)value_bytes;
}

size_t sv_dense_wire_body(uint64_t len, int value_bytes, const scaleml_codec *codec)
{
    return sv_quantizes(len, value_bytes, codec) ? pad8(codec_bytes(codec, len, value_bytes))
                                                 : (size_t)len * (unsigned)value_bytes;
}

int sv_should_densify_wire(uint64_t nnz, uint64_t len, int index_bytes, int value_bytes,
                           const scaleml_codec *codec)
{
    if (!sv_quantizes(len, value_bytes, codec)) return sv_should_densify(nnz, len, index_bytes, value_bytes);
    unsigned __int128 sparse_bytes = (unsigned __int128)nnz * (unsigned)(index_bytes + value_bytes);
    return sparse_bytes >= sv_dense_wire_body(len, value_bytes, codec);
}

int sv_travels_quantized(const sv_segment *s, const scaleml_codec *codec)
{
    return sv_quantizes(s->len, s->value_bytes, codec) &&
           (s->dense || sv_should_densify_wire(s->nnz, s->len, s->index_bytes, s->value_bytes, codec));
}

size_t sv_wire_bytes_codec(const sv_segment *s, const scaleml_codec *codec)
{
    if (!sv_travels_quantized(s, codec)) return sv_wire_bytes(s);
    return SV_WIRE_HEADER_BYTES + sv_dense_wire_body(s->len, s->value_bytes, codec);
}

size_t sv_wire_bytes_bound_codec(uint64_t len, uint64_t nnz_bound, int index_bytes, int value_bytes,
                                 const scaleml_codec *codec)
{
    /* As sv_wire_bytes_bound, with the wire rule's threshold: while
     * nnz*(ib+vb) < the dense body no segment can be dense (it became dense
     * only by crossing that rule or the exact one, which lies higher) and
     * every message is sparse; past it the largest message is the exact
     * dense form a refused encode sends, or a sparse one just below the
     * threshold plus index padding. */
    if (!sv_quantizes(len, value_bytes, codec))
        return sv_wire_bytes_bound(len, nnz_bound, index_bytes, value_bytes);
    uint64_t nnz = nnz_bound < len ? nnz_bound : len;
    size_t threshold = sv_dense_wire_body(len, value_bytes, codec);
    size_t sparse = pad8((size_t)nnz * (unsigned)index_bytes) + (size_t)nnz * (unsigned)value_bytes;
    return SV_WIRE_HEADER_BYTES + (sparse < threshold ? sparse : (size_t)len * (unsigned)value_bytes + 8);
}

/* The codec's header and payload of s (dense, owned or not) into buf. */
static void pack_quant_header(const sv_segment *s, const scaleml_codec *codec, void *buf, size_t *bytes)
{
    uint64_t header[2] = {SV_WIRE_QUANT, s->len};
    size_t payload = codec_bytes(codec, s->len, s->value_bytes);
    memcpy(buf, header, sizeof header);
    /* Deterministic padding: the same data gives the same bytes on every sender. */
    memset((char *)buf + SV_WIRE_HEADER_BYTES + payload, 0, pad8(payload) - payload);
    *bytes = SV_WIRE_HEADER_BYTES + pad8(payload);
}

_Thread_local uint64_t sv_quantized_packs;

int sv_pack_codec(sv_segment *s, const scaleml_codec *codec, int roundtrip, int key_rank, uint64_t stream,
                  void *buf, size_t *bytes)
{
    if (!sv_travels_quantized(s, codec)) {
        *bytes = sv_wire_bytes(s);
        sv_pack(s, buf);
        return SCALEML_OK;
    }
    uint8_t *payload = (uint8_t *)buf + SV_WIRE_HEADER_BYTES;
    int rc;
    if (roundtrip) {
        /* Encode an owned dense copy so that a refused encode leaves s as it was. */
        sv_segment d = *s;
        if (!s->dense || !s->owned) {
            if ((rc = sv_alloc_dense(&d, s->offset, s->len, s->index_bytes, s->value_bytes))) return rc;
            sv_write_dense(s, d.values);
        }
        rc = codec_encode_roundtrip(codec, d.values, d.len, d.value_bytes, key_rank, stream, payload, NULL, NULL);
        if (!rc) {
            if (d.owned != s->owned) sv_free(s);
            *s = d;
        } else if (d.owned != s->owned) {
            sv_free(&d);
        }
    } else if (s->dense) {
        rc = codec_encode(codec, s->values, s->len, s->value_bytes, key_rank, stream, payload);
    } else {
        sv_segment d = {0};
        if ((rc = sv_alloc_dense(&d, s->offset, s->len, s->index_bytes, s->value_bytes))) return rc;
        sv_write_dense(s, d.values);
        rc = codec_encode(codec, d.values, d.len, d.value_bytes, key_rank, stream, payload);
        sv_free(&d);
    }
    if (rc == SCALEML_ERR_ARG) {  /* values the format cannot hold: send them exact */
        *bytes = sv_wire_bytes(s);
        sv_pack(s, buf);
        return SCALEML_OK;
    }
    if (!rc) {
        pack_quant_header(s, codec, buf, bytes);
        sv_quantized_packs++;
    }
    return rc;
}

/* Validate the header and size of a quantized segment over len indices. */
static int check_quant(const uint64_t *header, size_t body, uint64_t len, int value_bytes,
                       const scaleml_codec *codec)
{
    if (!sv_quantizes(len, value_bytes, codec))
        return scaleml_fail(SCALEML_ERR_MALFORMED,
                            "malformed message: quantized segment over %llu indices where none is expected",
                            (unsigned long long)len);
    if (header[1] != len || body != sv_dense_wire_body(len, value_bytes, codec))
        return scaleml_fail(SCALEML_ERR_MALFORMED,
                            "malformed message: quantized segment of %llu values in %zu bytes, expected %llu values",
                            (unsigned long long)header[1], body, (unsigned long long)len);
    return SCALEML_OK;
}

int sv_unpack_codec(const void *buf, size_t bytes, uint64_t offset, uint64_t len, int index_bytes,
                    int value_bytes, const scaleml_codec *codec, sv_segment *view)
{
    uint64_t header[2] = {0, 0};
    if (bytes >= SV_WIRE_HEADER_BYTES) memcpy(header, buf, sizeof header);
    if (!codec_lossy(codec) || header[0] != SV_WIRE_QUANT)
        return sv_unpack(buf, bytes, offset, len, index_bytes, value_bytes, view);
    int rc = check_quant(header, bytes - SV_WIRE_HEADER_BYTES, len, value_bytes, codec);
    if (!rc) rc = sv_alloc_dense(view, offset, len, index_bytes, value_bytes);
    if (rc) return rc;
    rc = codec_decode(codec, (const uint8_t *)buf + SV_WIRE_HEADER_BYTES, codec_bytes(codec, len, value_bytes),
                      len, view->values, value_bytes);
    if (rc) sv_free(view);
    return rc;
}

int sv_unpack_dense_into(const void *buf, size_t bytes, uint64_t len, int value_bytes,
                         const scaleml_codec *codec, void *dst)
{
    uint64_t header[2] = {0, 0};
    if (bytes >= SV_WIRE_HEADER_BYTES) memcpy(header, buf, sizeof header);
    const uint8_t *body = (const uint8_t *)buf + SV_WIRE_HEADER_BYTES;
    if (codec_lossy(codec) && header[0] == SV_WIRE_QUANT) {
        int rc = check_quant(header, bytes - SV_WIRE_HEADER_BYTES, len, value_bytes, codec);
        return rc ? rc : codec_decode(codec, body, codec_bytes(codec, len, value_bytes), len, dst, value_bytes);
    }
    if (header[0] != SV_WIRE_DENSE || header[1] != len ||
        bytes != SV_WIRE_HEADER_BYTES + (size_t)len * (unsigned)value_bytes)
        return scaleml_fail(SCALEML_ERR_MALFORMED,
                            "malformed message: expected a dense segment of %llu values in %zu bytes",
                            (unsigned long long)len, bytes);
    copy_values(dst, body, len, value_bytes);
    return SCALEML_OK;
}

/* ---- output ---- */

void sv_write_dense(const sv_segment *s, void *dense)
{
    if (s->dense && s->values == dense) return;  /* computed in place */
    /* every position present (sorted, unique, within the segment): the values are the dense vector */
    if (s->dense || s->nnz == s->len) {
        copy_values(dense, s->values, s->len, s->value_bytes);
        return;
    }
    SV_DISPATCH_VOID(s->index_bytes, s->value_bytes, fill, dense, s->offset, s->len, s->indices, s->values,
                     s->nnz);
}

void sv_write_entries(const sv_segment *s, void *whole)
{
    SV_DISPATCH_VOID(s->index_bytes, s->value_bytes, scatter_set, whole, 0, s->indices, s->values, s->nnz);
}

void sv_zero_positions(void *whole, const void *positions, uint64_t count, int index_bytes, int value_bytes)
{
    SV_DISPATCH_VOID(index_bytes, value_bytes, scatter_zero, whole, positions, count);
}

uint64_t sv_sparse_entry_count(const sv_segment *s)
{
    if (!s->dense) return s->nnz;
    return scaleml_count_nonzeros(s->values, s->len, s->value_bytes);
}

uint64_t sv_write_sparse(const sv_segment *s, void *indices, void *values, uint64_t capacity)
{
    if (!s->dense) {
        if (s->nnz > capacity) return 0;
        copy_values(indices, s->indices, s->nnz, s->index_bytes);
        copy_values(values, s->values, s->nnz, s->value_bytes);
        return s->nnz;
    }
    return dense_extract_nonzeros(s->values, s->len, s->offset, s->value_bytes, s->index_bytes, indices,
                                  values, capacity);
}

/*
 * Bit streams and Elias omega codes shared by the compression kernels.
 *
 * Bits are packed LSB-first: the first bit written is bit 0 of byte 0. A
 * field of w bits written with bw_put(v, w) is read back by br_get(w).
 * The writer checks its capacity (a write past the end sets `overflow` and is
 * dropped); the reader never reads past `end` (a read past it sets `err` and
 * returns 0), so decoders of corrupted input stop cleanly.
 *
 * Elias omega code of an integer N >= 1, as stored here: for each group of
 * the recursive code, from the shortest to the longest, a 1 bit followed by
 * the group's bits below its leading 1; then a terminating 0 bit. A group of
 * L bits is followed by a group of L' = (that group's value) + 1 bits.
 * Length: 1 bit for N = 1, 3 for N = 2..3, 6..7 for N up to 15, about
 * log2 N + log2 log2 N + ... + 1 bits in general.
 */
#ifndef SCALEML_BITSTREAM_H
#define SCALEML_BITSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t *p;
    uint8_t *end;
    uint64_t acc;
    unsigned n;       /* bits pending in acc (< 32 between calls) */
    int overflow;
} bitwriter;

static inline void bw_init(bitwriter *w, uint8_t *buf, size_t cap)
{
    w->p = buf; w->end = buf + cap; w->acc = 0; w->n = 0; w->overflow = 0;
}

/* Append the low nb bits of v (nb <= 32, v < 2^nb). */
static inline void bw_put(bitwriter *w, uint64_t v, unsigned nb)
{
    w->acc |= v << w->n;
    w->n += nb;
    if (w->n >= 32) {
        if (w->end - w->p >= 4) {
            uint32_t lo = (uint32_t)w->acc;
            memcpy(w->p, &lo, 4);
            w->p += 4;
        } else {
            w->overflow = 1;
        }
        w->acc >>= 32;
        w->n -= 32;
    }
}

/* Flush the pending bits (zero padded to a byte); returns bytes written in all. */
static inline size_t bw_finish(bitwriter *w, uint8_t *start)
{
    while (w->n > 0) {
        if (w->p < w->end) *w->p++ = (uint8_t)w->acc; else w->overflow = 1;
        w->acc >>= 8;
        w->n = w->n >= 8 ? w->n - 8 : 0;
    }
    return (size_t)(w->p - start);
}

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    uint64_t acc;
    unsigned n;       /* valid bits in acc */
    int err;
} bitreader;

static inline void br_init(bitreader *r, const uint8_t *buf, size_t bytes)
{
    r->p = buf; r->end = buf + bytes; r->acc = 0; r->n = 0; r->err = 0;
}

static inline void br_refill(bitreader *r)
{
    if (r->end - r->p >= 8) {
        uint64_t w;
        memcpy(&w, r->p, 8);
        r->acc |= w << r->n;
        r->p += (63 - r->n) >> 3;
        r->n |= 56;
    } else {
        while (r->n <= 56 && r->p < r->end) {
            r->acc |= (uint64_t)*r->p++ << r->n;
            r->n += 8;
        }
    }
}

/* Read nb bits (1 <= nb <= 56); past the end: err = 1 and 0 returned. */
static inline uint64_t br_get(bitreader *r, unsigned nb)
{
    if (r->n < nb) {
        br_refill(r);
        if (r->n < nb) { r->err = 1; return 0; }
    }
    uint64_t v = r->acc & ((UINT64_C(1) << nb) - 1);
    r->acc >>= nb;
    r->n -= nb;
    return v;
}

/* Bits left unread (whole stream). */
static inline uint64_t br_bits_left(const bitreader *r)
{
    return (uint64_t)(r->end - r->p) * 8 + r->n;
}

static inline unsigned bit_length64(uint64_t v)
{
    return v ? 64u - (unsigned)__builtin_clzll(v) : 0u;
}

/* Elias omega code of v >= 1 (v < 2^40). */
static inline void elias_omega_put(bitwriter *w, uint64_t v)
{
    uint64_t groups[8];
    int g = 0;
    while (v > 1) {
        groups[g++] = v;
        v = bit_length64(v) - 1;
    }
    while (g > 0) {
        uint64_t x = groups[--g];
        unsigned len = bit_length64(x);
        bw_put(w, 1, 1);
        bw_put(w, x & ((UINT64_C(1) << (len - 1)) - 1), len - 1);
    }
    bw_put(w, 0, 1);
}

/* The Elias omega code of 1 <= v < 2^20 as one field (the bits elias_omega_put
 * writes, in order) and its length (<= 32), for table-driven encoding. */
static inline void elias_omega_field(uint64_t v, uint32_t *field, unsigned *len)
{
    uint64_t groups[8];
    int g = 0;
    while (v > 1) {
        groups[g++] = v;
        v = bit_length64(v) - 1;
    }
    uint64_t acc = 0;
    unsigned n = 0;
    while (g > 0) {
        uint64_t x = groups[--g];
        unsigned l = bit_length64(x);
        acc |= (uint64_t)1 << n;
        n += 1;
        acc |= (x & ((UINT64_C(1) << (l - 1)) - 1)) << n;
        n += l - 1;
    }
    n += 1; /* terminating 0 */
    *field = (uint32_t)acc;
    *len = n;
}

/* Length in bits of the Elias omega code of v >= 1. */
static inline unsigned elias_omega_bits(uint64_t v)
{
    unsigned bits = 1;
    while (v > 1) {
        unsigned len = bit_length64(v);
        bits += len;
        v = len - 1;
    }
    return bits;
}

/* Decode one Elias omega integer; values above 2^40 or a read past the end set err. */
static inline uint64_t elias_omega_get(bitreader *r)
{
    uint64_t v = 1;
    for (;;) {
        uint64_t bit = br_get(r, 1);
        if (r->err) return 0;
        if (!bit) return v;
        if (v > 40) { r->err = 1; return 0; }
        uint64_t low = br_get(r, (unsigned)v);
        if (r->err) return 0;
        v = (UINT64_C(1) << v) | low;
    }
}

#endif

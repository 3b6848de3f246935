/*
 * The header of a compressed message (layout in api_compress.h): written
 * after an encoder filled the payload, parsed and validated before a decoder
 * reads it. Everything is read byte by byte in little-endian order, so the
 * buffer needs no alignment and the format is the same on every host.
 */
#include "compress/framing.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "api_compress.h"
#include "core/errors.h"

_Static_assert(SCALEML_COMPRESSED_HEADER_BYTES == FRAMING_SHAPE_AT, "header size");
_Static_assert(sizeof(((scaleml_compressed_header *)0)->shape) / sizeof(uint64_t) == SCALEML_COMPRESSED_MAX_NDIM,
               "shape array holds SCALEML_COMPRESSED_MAX_NDIM dimensions");

static const uint8_t magic[4] = {'S', 'M', 'L', 'C'};

/* Slicing-by-8 tables of the reflected polynomial, built once from the bitwise
 * definition. The first call to find them missing builds them (state 0 -> 1
 * -> 2); a call that finds them being built by another thread uses the bitwise
 * loop meanwhile, so no thread reads a table that is being written. */
static uint32_t crc_table[8][256];
static _Atomic int crc_table_state; /* 0: not built, 1: being built, 2: ready */

static uint32_t crc32_bitwise(uint32_t crc, const uint8_t *data, size_t bytes)
{
    crc = ~crc;
    for (size_t i = 0; i < bytes; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (UINT32_C(0xEDB88320) & (0u - (crc & 1u)));
    }
    return ~crc;
}

static int crc_tables_ready(void)
{
    int state = atomic_load_explicit(&crc_table_state, memory_order_acquire);
    if (state == 2) return 1;
    int expected = 0;
    if (state != 0 || !atomic_compare_exchange_strong_explicit(&crc_table_state, &expected, 1,
                                                                memory_order_acq_rel, memory_order_acquire))
        return 0;
    for (uint32_t v = 0; v < 256; v++) {
        uint32_t c = v;
        for (int bit = 0; bit < 8; bit++) c = (c >> 1) ^ (UINT32_C(0xEDB88320) & (0u - (c & 1u)));
        crc_table[0][v] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int v = 0; v < 256; v++)
            crc_table[k][v] = (crc_table[k - 1][v] >> 8) ^ crc_table[0][crc_table[k - 1][v] & 0xff];
    atomic_store_explicit(&crc_table_state, 2, memory_order_release);
    return 1;
}

uint32_t framing_crc32_update(uint32_t crc, const uint8_t *data, size_t bytes)
{
    if (bytes < 64 || !crc_tables_ready()) return crc32_bitwise(crc, data, bytes);
    uint32_t(*t)[256] = crc_table;
    crc = ~crc;
    for (; bytes >= 8; bytes -= 8, data += 8) {
        uint32_t lo = load_le32(data) ^ crc, hi = load_le32(data + 4);
        crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
              t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    }
    for (; bytes; bytes--, data++) crc = (crc >> 8) ^ t[0][(crc ^ *data) & 0xff];
    return ~crc;
}

uint32_t scaleml_crc32(uint32_t crc, const uint8_t *data, size_t bytes)
{
    return bytes ? framing_crc32_update(crc, data, bytes) : crc;
}

/* CRC of head[0 .. bytes) (bytes >= 48) with the CRC field read as zero. */
static uint32_t header_crc(const uint8_t *head, size_t bytes)
{
    static const uint8_t zero[4] = {0, 0, 0, 0};
    uint32_t crc = framing_crc32_update(0, head, FRAMING_CRC_AT);
    crc = framing_crc32_update(crc, zero, sizeof zero);
    return framing_crc32_update(crc, head + FRAMING_PAYLOAD_CRC_AT, bytes - FRAMING_PAYLOAD_CRC_AT);
}

static int method_known(uint32_t method)
{
    return method >= SCALEML_METHOD_QSGD && method <= SCALEML_METHOD_CAST;
}

static int dtype_known(uint32_t dtype_code)
{
    return dtype_code == SCALEML_DTYPE_FLOAT32 || dtype_code == SCALEML_DTYPE_FLOAT64;
}

/* The product of shape[0 .. ndim) into *product; returns 0 when it exceeds
 * UINT64_MAX (a product with a zero dimension is 0 whatever the others are). */
static int shape_product(const uint64_t *shape, uint32_t ndim, uint64_t *product)
{
    uint64_t p = 1;
    int overflow = 0;
    for (uint32_t d = 0; d < ndim; d++) {
        if (shape[d] == 0) {
            *product = 0;
            return 1;
        }
        if (p > UINT64_MAX / shape[d])
            overflow = 1;
        else
            p *= shape[d];
    }
    *product = p;
    return !overflow;
}

/* "(d0, d1, ...)" of shape[0 .. ndim) into text[0 .. cap), as Python writes a tuple. */
static void format_shape(const uint64_t *shape, uint32_t ndim, char *text, size_t cap)
{
    size_t at = 0;
    text[0] = '\0';
    at += (size_t)snprintf(text, cap, "(");
    for (uint32_t d = 0; d < ndim && at < cap; d++)
        at += (size_t)snprintf(text + at, cap - at, "%s%llu", d ? ", " : "", (unsigned long long)shape[d]);
    if (at < cap)
        snprintf(text + at, cap - at, ndim == 1 ? ",)" : ")");
}

size_t scaleml_compressed_header_bytes(uint32_t ndim)
{
    return SCALEML_COMPRESSED_HEADER_BYTES + 8 * (size_t)ndim;
}

int scaleml_compressed_header_crc(const uint8_t *head, size_t bytes, uint32_t *crc)
{
    if (head == NULL || crc == NULL || bytes < SCALEML_COMPRESSED_HEADER_BYTES)
        return scaleml_fail(SCALEML_ERR_ARG, "a compressed header has at least %d bytes, got %zu",
                            SCALEML_COMPRESSED_HEADER_BYTES, bytes);
    *crc = header_crc(head, bytes);
    return SCALEML_OK;
}

int scaleml_compressed_write_header(uint8_t *buf, size_t cap, const scaleml_compressed_header *header,
                                    size_t *header_bytes)
{
    if (header == NULL || header_bytes == NULL)
        return scaleml_fail(SCALEML_ERR_ARG, "compressed header: NULL argument");
    if (!method_known(header->method))
        return scaleml_fail(SCALEML_ERR_ARG, "unknown compression method %u", (unsigned)header->method);
    if (!dtype_known(header->dtype_code))
        return scaleml_fail(SCALEML_ERR_ARG, "unknown dtype code %u", (unsigned)header->dtype_code);
    if (header->ndim > SCALEML_COMPRESSED_MAX_NDIM)
        return scaleml_fail(SCALEML_ERR_ARG, "%u dimensions, at most %d are supported",
                            (unsigned)header->ndim, SCALEML_COMPRESSED_MAX_NDIM);
    if (header->flags & ~(uint32_t)SCALEML_COMPRESSED_PAYLOAD_CRC)
        return scaleml_fail(SCALEML_ERR_ARG, "unknown compressed header flags 0x%x", (unsigned)header->flags);
    uint64_t product;
    int exact = shape_product(header->shape, header->ndim, &product);
    if (!exact || product != header->count || header->count >= FRAMING_MAX_COUNT)
        return scaleml_fail(SCALEML_ERR_ARG, "element count %llu does not match the shape or is >= 2^48",
                            (unsigned long long)header->count);
    size_t total = scaleml_compressed_header_bytes(header->ndim);
    *header_bytes = total;
    if (buf == NULL || cap < total)
        return scaleml_fail(SCALEML_ERR_TOO_LARGE, "compressed header needs %zu bytes, the buffer has %zu",
                            total, cap);
    int checksum = (header->flags & SCALEML_COMPRESSED_PAYLOAD_CRC) != 0;
    if (checksum && header->payload_bytes > (uint64_t)(cap - total))
        return scaleml_fail(SCALEML_ERR_ARG, "a checksummed payload of %llu bytes must follow the header in the "
                            "buffer (%zu bytes after it)", (unsigned long long)header->payload_bytes, cap - total);
    memcpy(buf + FRAMING_MAGIC_AT, magic, sizeof magic);
    buf[FRAMING_VERSION_AT] = checksum ? SCALEML_COMPRESSED_VERSION_PAYLOAD_CRC : SCALEML_COMPRESSED_VERSION;
    buf[FRAMING_METHOD_AT] = (uint8_t)header->method;
    buf[FRAMING_DTYPE_AT] = (uint8_t)header->dtype_code;
    buf[FRAMING_NDIM_AT] = (uint8_t)header->ndim;
    store_le64(buf + FRAMING_COUNT_AT, header->count);
    store_le64(buf + FRAMING_PAYLOAD_AT, header->payload_bytes);
    for (int i = 0; i < 4; i++)
        store_le32(buf + FRAMING_PARAMS_AT + 4 * i, header->params[i]);
    store_le32(buf + FRAMING_CRC_AT, 0);
    store_le32(buf + FRAMING_PAYLOAD_CRC_AT,
               checksum ? scaleml_crc32(0, buf + total, (size_t)header->payload_bytes) : 0);
    for (uint32_t d = 0; d < header->ndim; d++)
        store_le64(buf + FRAMING_SHAPE_AT + 8 * d, header->shape[d]);
    store_le32(buf + FRAMING_CRC_AT, header_crc(buf, total));
    return SCALEML_OK;
}

int scaleml_compressed_parse(const uint8_t *buf, size_t bytes, scaleml_compressed_header *header)
{
    if (header == NULL || (buf == NULL && bytes > 0))
        return scaleml_fail(SCALEML_ERR_ARG, "compressed header: NULL argument");
    if (bytes < SCALEML_COMPRESSED_HEADER_BYTES)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "compressed buffer truncated: %zu bytes < %d-byte header",
                            bytes, SCALEML_COMPRESSED_HEADER_BYTES);
    if (memcmp(buf + FRAMING_MAGIC_AT, magic, sizeof magic) != 0)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "not a ScaleML compressed buffer (bad magic)");
    uint32_t version = buf[FRAMING_VERSION_AT];
    if (version != SCALEML_COMPRESSED_VERSION && version != SCALEML_COMPRESSED_VERSION_PAYLOAD_CRC)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "unsupported compressed format version %u", (unsigned)version);
    uint32_t method = buf[FRAMING_METHOD_AT];
    if (!method_known(method))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "unknown compression method %u", (unsigned)method);
    uint32_t dtype_code = buf[FRAMING_DTYPE_AT];
    if (!dtype_known(dtype_code))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "unknown dtype code %u", (unsigned)dtype_code);
    uint32_t ndim = buf[FRAMING_NDIM_AT];
    if (ndim > SCALEML_COMPRESSED_MAX_NDIM)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "bad ndim %u (at most %d)", (unsigned)ndim,
                            SCALEML_COMPRESSED_MAX_NDIM);
    size_t total = scaleml_compressed_header_bytes(ndim);
    if (bytes < total)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "compressed buffer truncated inside its shape");
    uint32_t crc = load_le32(buf + FRAMING_CRC_AT);
    if (header_crc(buf, total) != crc)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "compressed buffer header fails its checksum");
    uint64_t shape[SCALEML_COMPRESSED_MAX_NDIM] = {0};
    for (uint32_t d = 0; d < ndim; d++)
        shape[d] = load_le64(buf + FRAMING_SHAPE_AT + 8 * d);
    uint64_t count = load_le64(buf + FRAMING_COUNT_AT), product;
    int exact = shape_product(shape, ndim, &product);
    if (!exact || product != count || count >= FRAMING_MAX_COUNT) {
        char text[8 * 22 + 3];
        format_shape(shape, ndim, text, sizeof text);
        return scaleml_fail(SCALEML_ERR_MALFORMED, "shape %s does not match element count %llu (or it is >= 2^48)",
                            text, (unsigned long long)count);
    }
    uint64_t payload_bytes = load_le64(buf + FRAMING_PAYLOAD_AT);
    if (payload_bytes != (uint64_t)(bytes - total))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "payload size %llu does not match buffer size %zu",
                            (unsigned long long)payload_bytes, bytes - total);
    /* after the header checks: the payload's size is now known to be what follows the shape */
    uint32_t stored = load_le32(buf + FRAMING_PAYLOAD_CRC_AT);
    int checksum = version == SCALEML_COMPRESSED_VERSION_PAYLOAD_CRC;
    if (!checksum && stored != 0)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "reserved header field is %u, not 0 (version 1)",
                            (unsigned)stored);
    if (checksum && scaleml_crc32(0, buf + total, bytes - total) != stored)
        return scaleml_fail(SCALEML_ERR_MALFORMED, "compressed payload fails its checksum (CRC-32)");
    header->method = method;
    header->dtype_code = dtype_code;
    header->ndim = ndim;
    header->count = count;
    header->payload_bytes = payload_bytes;
    for (int i = 0; i < 4; i++)
        header->params[i] = load_le32(buf + FRAMING_PARAMS_AT + 4 * i);
    memcpy(header->shape, shape, sizeof shape);
    header->crc = crc;
    header->header_bytes = total;
    header->flags = checksum ? SCALEML_COMPRESSED_PAYLOAD_CRC : 0;
    header->payload_crc = checksum ? stored : 0;
    return SCALEML_OK;
}

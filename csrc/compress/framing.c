/*
 * The header of a compressed message (layout in api_compress.h): written
 * after an encoder filled the payload, parsed and validated before a decoder
 * reads it. Everything is read byte by byte in little-endian order, so the
 * buffer needs no alignment and the format is the same on every host.
 */
#include "compress/framing.h"

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

uint32_t framing_crc32_update(uint32_t crc, const uint8_t *data, size_t bytes)
{
    crc = ~crc;
    for (size_t i = 0; i < bytes; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (UINT32_C(0xEDB88320) & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* CRC of head[0 .. bytes) (bytes >= 48) with the CRC field read as zero. */
static uint32_t header_crc(const uint8_t *head, size_t bytes)
{
    static const uint8_t zero[4] = {0, 0, 0, 0};
    uint32_t crc = framing_crc32_update(0, head, FRAMING_CRC_AT);
    crc = framing_crc32_update(crc, zero, sizeof zero);
    return framing_crc32_update(crc, head + FRAMING_RESERVED_AT, bytes - FRAMING_RESERVED_AT);
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
    memcpy(buf + FRAMING_MAGIC_AT, magic, sizeof magic);
    buf[FRAMING_VERSION_AT] = SCALEML_COMPRESSED_VERSION;
    buf[FRAMING_METHOD_AT] = (uint8_t)header->method;
    buf[FRAMING_DTYPE_AT] = (uint8_t)header->dtype_code;
    buf[FRAMING_NDIM_AT] = (uint8_t)header->ndim;
    store_le64(buf + FRAMING_COUNT_AT, header->count);
    store_le64(buf + FRAMING_PAYLOAD_AT, header->payload_bytes);
    for (int i = 0; i < 4; i++)
        store_le32(buf + FRAMING_PARAMS_AT + 4 * i, header->params[i]);
    store_le32(buf + FRAMING_CRC_AT, 0);
    store_le32(buf + FRAMING_RESERVED_AT, 0);
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
    if (version != SCALEML_COMPRESSED_VERSION)
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
    return SCALEML_OK;
}

/*
 * Internal helpers of the compressed-message framing (framing.c): field
 * offsets of the 48-byte header, little-endian loads and stores, and the
 * CRC-32 the header carries. The public functions are in api_compress.h.
 */
#ifndef SCALEML_FRAMING_H
#define SCALEML_FRAMING_H

#include <stddef.h>
#include <stdint.h>

/* Byte offsets of the header fields. */
#define FRAMING_MAGIC_AT 0
#define FRAMING_VERSION_AT 4
#define FRAMING_METHOD_AT 5
#define FRAMING_DTYPE_AT 6
#define FRAMING_NDIM_AT 7
#define FRAMING_COUNT_AT 8
#define FRAMING_PAYLOAD_AT 16
#define FRAMING_PARAMS_AT 24
#define FRAMING_CRC_AT 40
#define FRAMING_PAYLOAD_CRC_AT 44 /* version 1: reserved (0); version 2: CRC-32 of the payload */
#define FRAMING_SHAPE_AT 48

/* Element counts must stay below 2^48. */
#define FRAMING_MAX_COUNT (UINT64_C(1) << 48)

static inline uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

static inline void store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void store_le64(uint8_t *p, uint64_t v)
{
    store_le32(p, (uint32_t)v);
    store_le32(p + 4, (uint32_t)(v >> 32));
}

/* CRC-32 with zlib's parameters (reflected polynomial 0xEDB88320, initial
 * and final XOR 0xFFFFFFFF): crc32_update(0, p, n) == zlib.crc32(p[:n]), and
 * crc32_update(crc32_update(0, a, n), b, m) is the CRC of a followed by b. */
uint32_t framing_crc32_update(uint32_t crc, const uint8_t *data, size_t bytes);

#endif

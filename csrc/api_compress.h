/*
 * The C API of ScaleML's compression kernels, as the Python extension sees it
 * (this file is also the cffi cdef, so it holds only plain declarations).
 *
 * Conventions: `x` / `out` point to n values of `value_bytes` bytes each
 * (4 = float32, 8 = float64). Encoders write a payload into out[0 .. cap) and
 * report its size in *written; when cap is too small they return
 * SCALEML_ERR_TOO_LARGE (5) with the required size in *written. Decoders take
 * the payload and its size and validate everything they read: a truncated or
 * corrupted payload gives SCALEML_ERR_MALFORMED (3), never a read outside
 * buf[0 .. bytes). Non-finite input or a bad argument gives SCALEML_ERR_ARG (4).
 * `key` is a random stream from scaleml_rng_key(seed, rank, step, stream).
 */
#ifndef SCALEML_API_COMPRESS_H
#define SCALEML_API_COMPRESS_H


#define SCALEML_NORM_L2 0
#define SCALEML_NORM_MAX 1
#define SCALEML_QSGD_FIXED 0
#define SCALEML_QSGD_ELIAS 1
#define SCALEML_CAST_FP16 0
#define SCALEML_CAST_BF16 1

/* framing.c: the message header every compressed tensor starts with.
 *
 * Layout (little endian, 48 bytes): magic "SMLC", version (1 or 2), method,
 * dtype code, ndim, uint64 element count, uint64 payload bytes, 4 x uint32
 * method parameters, uint32 CRC-32 (zlib's) of header and shape computed with
 * this field zeroed, uint32 payload checksum; then ndim x uint64 shape; then
 * the payload of the method's encoder. Version 1: the payload checksum field
 * is reserved and 0. Version 2 (written only when asked for, with the flag
 * SCALEML_COMPRESSED_PAYLOAD_CRC): the same layout, the field holds the
 * CRC-32 of the payload, which the parse verifies. */
#define SCALEML_COMPRESSED_HEADER_BYTES 48
#define SCALEML_COMPRESSED_VERSION 1
#define SCALEML_COMPRESSED_VERSION_PAYLOAD_CRC 2
#define SCALEML_COMPRESSED_PAYLOAD_CRC 1
#define SCALEML_COMPRESSED_MAX_NDIM 8
#define SCALEML_METHOD_QSGD 1
#define SCALEML_METHOD_ONEBIT 2
#define SCALEML_METHOD_TOPK 3
#define SCALEML_METHOD_ADAPTIVE 4
#define SCALEML_METHOD_ZIPML 5
#define SCALEML_METHOD_CAST 6
#define SCALEML_DTYPE_FLOAT32 1
#define SCALEML_DTYPE_FLOAT64 2

/* The fields of a header. shape[0 .. ndim) is used (the array has room for
 * SCALEML_COMPRESSED_MAX_NDIM dimensions). crc, header_bytes and payload_crc
 * are filled by scaleml_compressed_parse and ignored by
 * scaleml_compressed_write_header; flags is read by both (0 or
 * SCALEML_COMPRESSED_PAYLOAD_CRC). */
typedef struct {
    uint32_t method;          /* SCALEML_METHOD_* */
    uint32_t dtype_code;      /* SCALEML_DTYPE_* */
    uint32_t ndim;            /* 0 .. SCALEML_COMPRESSED_MAX_NDIM */
    uint64_t count;           /* elements: the product of the shape, < 2^48 */
    uint64_t payload_bytes;   /* bytes after header and shape */
    uint32_t params[4];       /* method parameters */
    uint64_t shape[8];
    uint32_t crc;             /* the stored CRC-32 */
    size_t header_bytes;      /* 48 + 8 ndim: offset of the payload */
    uint32_t flags;           /* SCALEML_COMPRESSED_PAYLOAD_CRC: the message carries its payload's CRC-32 */
    uint32_t payload_crc;     /* that CRC-32 (0 without the flag) */
} scaleml_compressed_header;

/* Bytes of header and shape for ndim dimensions: 48 + 8 ndim. */
size_t scaleml_compressed_header_bytes(uint32_t ndim);
/* Write header and shape (with their CRC) into buf[0 .. cap); *header_bytes
 * gets their size. With flags = SCALEML_COMPRESSED_PAYLOAD_CRC the payload
 * must already follow the shape in buf (cap >= header + payload bytes): its
 * CRC-32 is stored and the version is 2; without flags the header is byte for
 * byte a version 1 header. SCALEML_ERR_ARG for an unknown method, dtype or
 * flag, ndim > 8, count differing from the product of the shape or >= 2^48,
 * a checksummed payload that is not in buf; SCALEML_ERR_TOO_LARGE when cap is
 * smaller than the header. */
int scaleml_compressed_write_header(uint8_t *buf, size_t cap, const scaleml_compressed_header *header,
                                    size_t *header_bytes);
/* Parse and validate the header of the message buf[0 .. bytes): magic,
 * version (1 or 2), known method and dtype, ndim, truncation, CRC, shape
 * product equal to the count (< 2^48), payload size equal to what follows the
 * shape, the reserved field 0 (version 1) or the payload's CRC-32 (version 2).
 * SCALEML_ERR_MALFORMED with a message on any failure (the payload itself is
 * validated by the method's decoder). */
int scaleml_compressed_parse(const uint8_t *buf, size_t bytes, scaleml_compressed_header *header);
/* CRC-32 (zlib's) of data[0 .. bytes), continuing from crc (0 to start):
 * what a version 2 header stores for its payload. */
uint32_t scaleml_crc32(uint32_t crc, const uint8_t *data, size_t bytes);
/* CRC-32 of head[0 .. bytes) (header and shape) with the CRC field taken as
 * zero: the value a header stores. SCALEML_ERR_ARG when bytes < 48. */
int scaleml_compressed_header_crc(const uint8_t *head, size_t bytes, uint32_t *crc);

/* counter_rng.c */
uint64_t scaleml_rng_key(uint64_t seed, uint64_t rank, uint64_t step, uint64_t stream);
void scaleml_rng_uniform(uint64_t key, uint64_t offset, uint64_t n, double *out);

/* qsgd.c: bits = magnitude bits (1..8), s = 2^bits - 1 levels above zero. */
size_t scaleml_qsgd_max_bytes(uint64_t n, uint32_t bits, uint64_t bucket, int format);
int scaleml_qsgd_encode(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                        int norm, int format, uint64_t key, uint8_t *out, size_t cap, size_t *written);
int scaleml_qsgd_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                        int format, void *out, int value_bytes);
/* acc[0 .. n) += decode(buf) for the fixed-width format, in one pass; SCALEML_ERR_ARG (no message) when the
 * bucket is not a multiple of 8 (then decode and add separately). */
int scaleml_qsgd_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                            void *acc, int value_bytes);

/* onebit.c: sign bit per element, two reconstruction values per bucket. */
size_t scaleml_onebit_bytes(uint64_t n, uint64_t bucket);
int scaleml_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket,
                          uint8_t *out, size_t cap, void *residual);
int scaleml_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket,
                          void *out, int value_bytes);
/* Encode y = x + addend (bucket <= 4096, else SCALEML_ERR_ARG) without writing y anywhere; residual, when
 * not NULL, gets y - decoded and may be addend itself (error feedback updated in place). */
int scaleml_onebit_encode_sum(const void *x, const void *addend, int value_bytes, uint64_t n, uint64_t bucket,
                              uint8_t *out, size_t cap, void *residual);
/* acc[0 .. n) += decode(buf), in one pass (the same sums as decoding, then adding). */
int scaleml_onebit_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket, void *acc,
                              int value_bytes);

/* topk.c: exact (selection) or approximate (sampled threshold) top-k by magnitude. */
size_t scaleml_topk_bytes(uint64_t count, int value_bytes);
int scaleml_topk_encode(const void *x, int value_bytes, uint64_t n, uint64_t k, int approximate,
                        uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                        void *residual);
int scaleml_topk_decode(const uint8_t *buf, size_t bytes, uint64_t n, void *out, int value_bytes);
/* Views into a valid payload: count, and byte offsets of the indices and values. */
int scaleml_topk_layout(const uint8_t *buf, size_t bytes, uint64_t n, int value_bytes,
                        uint64_t *count, size_t *index_offset, size_t *value_offset);

/* adaptive_quant.c: rows x cols row-major matrix, send about 1/pi of the entries. */
size_t scaleml_adaptive_bytes(uint64_t rows, uint64_t cols, uint64_t words);
int scaleml_adaptive_encode(const void *x, int value_bytes, uint64_t rows, uint64_t cols, double pi,
                            uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                            void *residual, double *thresholds);
int scaleml_adaptive_decode(const uint8_t *buf, size_t bytes, uint64_t rows, uint64_t cols,
                            void *out, int value_bytes);

/* zipml.c: data-optimal levels and stochastic rounding to any sorted level set. */
int scaleml_zipml_levels(const double *sorted, uint64_t m, uint32_t s, uint32_t max_candidates,
                         double *levels, uint32_t *count);
size_t scaleml_zipml_bytes(uint64_t n, uint32_t s);
int scaleml_zipml_encode(const void *x, int value_bytes, uint64_t n, const double *levels, uint32_t s,
                         uint64_t key, uint8_t *out, size_t cap, size_t *written);
int scaleml_zipml_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t s, void *out,
                         int value_bytes);

/* cast.c: float16 / bfloat16 with round to nearest even. */
int scaleml_cast_encode(const void *x, int value_bytes, uint64_t n, int format, uint16_t *out);
int scaleml_cast_decode(const uint16_t *in, uint64_t n, int format, void *out, int value_bytes);
/* acc[i] += decoded value, in acc's type (the same sums as decode then add); like decode, every value is
 * added and an Inf/NaN pattern gives SCALEML_ERR_MALFORMED. */
int scaleml_cast_decode_add(const uint16_t *in, uint64_t n, int format, void *acc, int value_bytes);

/* threads.c: how many threads the kernels split a large input over (bytes identical for every count;
 * fewer than 2^16 elements per thread stay single-threaded). scaleml.config sets it at import from
 * SCALEML_NUM_THREADS or the rank's cores; values below 1 are taken as 1. */
void scaleml_set_num_threads(int threads);
int scaleml_get_num_threads(void);
/* Threads the last kernel call of the calling thread used (1 when it stayed single-threaded). */
int scaleml_last_num_threads(void);

#endif

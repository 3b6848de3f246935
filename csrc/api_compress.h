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

/* counter_rng.c */
uint64_t scaleml_rng_key(uint64_t seed, uint64_t rank, uint64_t step, uint64_t stream);
void scaleml_rng_uniform(uint64_t key, uint64_t offset, uint64_t n, double *out);

/* qsgd.c: bits = magnitude bits (1..8), s = 2^bits - 1 levels above zero. */
size_t scaleml_qsgd_max_bytes(uint64_t n, uint32_t bits, uint64_t bucket, int format);
int scaleml_qsgd_encode(const void *x, int value_bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                        int norm, int format, uint64_t key, uint8_t *out, size_t cap, size_t *written);
int scaleml_qsgd_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint32_t bits, uint64_t bucket,
                        int format, void *out, int value_bytes);

/* onebit.c: sign bit per element, two reconstruction values per bucket. */
size_t scaleml_onebit_bytes(uint64_t n, uint64_t bucket);
int scaleml_onebit_encode(const void *x, int value_bytes, uint64_t n, uint64_t bucket,
                          uint8_t *out, size_t cap, void *residual);
int scaleml_onebit_decode(const uint8_t *buf, size_t bytes, uint64_t n, uint64_t bucket,
                          void *out, int value_bytes);

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

#endif

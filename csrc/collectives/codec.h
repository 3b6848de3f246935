/*
 * Lossy value formats of the collectives (api_collectives.h, scaleml_codec):
 * one interface over the QSGD, float16/bfloat16 and 1-bit kernels of
 * csrc/compress, for index ranges of dense data. Every format here has a size
 * that depends only on the number of values (codec_bytes), so receivers post
 * exact buffers and allgathers need no size exchange.
 *
 * The invariant that keeps every rank's result bitwise identical: a value that
 * is sent encoded is, on the sender too, replaced by what the receiver decodes
 * (codec_encode_roundtrip), so both sides of every exchange hold the same
 * operands.
 */
#ifndef SCALEML_CODEC_H
#define SCALEML_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "api_collectives.h"

/* Random stream ids of the encodes of one call (the key is
 * scaleml_rng_key(seed, rank, step, stream)): distinct for every encode one
 * rank makes in one call. */
#define CODEC_STREAM(phase, index) (((uint64_t)(phase) << 40) | (uint64_t)(index))
enum { CODEC_PHASE_REDUCE = 1, CODEC_PHASE_FINAL = 2, CODEC_PHASE_FOLD = 3, CODEC_PHASE_SPARSE = 4 };

/* Name of a SCALEML_CODEC_* kind, for messages. */
const char *codec_name(int kind);

/* 1 when the codec is lossy (not NULL and not SCALEML_CODEC_NONE). */
int codec_lossy(const scaleml_codec *codec);

/* Bytes of len values in the codec's format (exact: len * value_bytes). The functions below take the
 * element-wise formats; SCALEML_CODEC_ADAPTIVE (sizes that depend on the data) is coded by the `adaptive`
 * algorithm itself, and the engine gives it to no other. */
size_t codec_bytes(const scaleml_codec *codec, uint64_t len, int value_bytes);

/* Encode len values of x into out (codec_bytes of room) with the random stream. */
int codec_encode(const scaleml_codec *codec, const void *x, uint64_t len, int value_bytes, int rank,
                 uint64_t stream, uint8_t *out);

/* Decode exactly codec_bytes(len) bytes into out (len values); validates the payload. */
int codec_decode(const scaleml_codec *codec, const uint8_t *buf, size_t bytes, uint64_t len, void *out,
                 int value_bytes);

/* acc[0 .. len) += decode(buf): in one pass for QSGD (bucket a multiple of 8) and 1-bit, else decoded into
 * scratch (len values) first. */
int codec_decode_add(const scaleml_codec *codec, const uint8_t *buf, size_t bytes, uint64_t len, void *acc,
                     void *scratch, int value_bytes);

/* Encode x into out, then replace x by the decoded values (what every receiver
 * sees). residual, if not NULL, gets x - decoded (error feedback); scratch
 * holds len values, or is NULL to allocate. */
int codec_encode_roundtrip(const scaleml_codec *codec, void *x, uint64_t len, int value_bytes, int rank,
                           uint64_t stream, uint8_t *out, void *residual, void *scratch);

/* Encode x into out and, if residual is not NULL, write x - decoded into it
 * (x is left as it is). 1-bit writes the residual in its encoding pass. */
int codec_encode_residual(const scaleml_codec *codec, const void *x, uint64_t len, int value_bytes, int rank,
                          uint64_t stream, uint8_t *out, void *residual, void *scratch);

/* Encode y = x + residual into out and set residual = y - decoded (error
 * feedback applied and updated in one call; 1-bit never stores y). scratch as
 * for codec_encode_residual. */
int codec_encode_plus_residual(const scaleml_codec *codec, const void *x, uint64_t len, int value_bytes, int rank,
                               uint64_t stream, uint8_t *out, void *residual, void *scratch);

/* out[0 .. len) = a + b. */
void codec_sum(void *out, const void *a, const void *b, uint64_t len, int value_bytes);

/* acc[0 .. len) += b[0 .. len). */
void codec_add(void *acc, const void *b, uint64_t len, int value_bytes);

#endif

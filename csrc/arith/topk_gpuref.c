/*
 * Host emulation of cuda/topk.cu, for the CPU tests only: the same phases on
 * host memory, each kernel's grid replaced by a loop over its threads (or
 * elements), calling the same shared functions (arith/topk.h,
 * arith/sparse.h):
 *   1. radix select, 8 bits per pass from the top: the histogram of the
 *      matching keys' digits, then arith_topk_pick_bin (x in exact mode, the
 *      sampled keys with rank ks in approximate mode);
 *   2. per-tile counts of keys above and equal to the threshold (and the
 *      NaN/Inf flag), then their exclusive sums;
 *   3. per tile, the exclusive scan over its threads of their counts, then each
 *      thread's elements in order: send rule, slot, payload and residual.
 * tests/test_gpu_arith_topk_sparse.py compares the results with the CPU kernel
 * (compress/topk.c) byte for byte.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_gpuref_topk_sparse.h"
#include "arith/sparse.h"
#include "arith/topk.h"
#include "core/errors.h"

#define GPUREF_TOPK_DEFINE(W, KT)                                                                           \
    static KT gpuref_load##W(const void *p, uint64_t i)                                                     \
    {                                                                                                       \
        KT b;                                                                                               \
        memcpy(&b, (const uint8_t *)p + i * sizeof(KT), sizeof b);                                          \
        return b;                                                                                           \
    }                                                                                                       \
    /* Phase 1: the k_sel-th largest of count keys (raw bits); *need_out = how many equal to take. */       \
    static void gpuref_radix_select##W(const void *bits, uint64_t count, uint64_t k_sel, KT *t_out,         \
                                       uint64_t *above_out, uint64_t *need_out)                             \
    {                                                                                                       \
        uint64_t prefix = 0, need = k_sel, above_total = 0;                                                 \
        for (int shift = W - ARITH_TOPK_RADIX_BITS; shift >= 0; shift -= ARITH_TOPK_RADIX_BITS) {           \
            uint64_t hist[ARITH_TOPK_RADIX_BINS];                                                           \
            memset(hist, 0, sizeof hist);                                                                   \
            for (uint64_t i = 0; i < count; i++) {                                                          \
                uint64_t key = arith_topk_key##W(gpuref_load##W(bits, i));                                  \
                if (arith_topk_matches(key, prefix, (unsigned)shift)) hist[arith_topk_digit(key, (unsigned)shift)]++; \
            }                                                                                               \
            uint64_t above;                                                                                 \
            unsigned bin = arith_topk_pick_bin(hist, ARITH_TOPK_RADIX_BINS - 1, need, &above);              \
            above_total += above;                                                                           \
            need -= above;                                                                                  \
            prefix |= (uint64_t)bin << shift;                                                               \
        }                                                                                                   \
        *t_out = (KT)prefix;                                                                                \
        *above_out = above_total;                                                                           \
        *need_out = need;                                                                                   \
    }                                                                                                       \
    static int gpuref_topk_encode##W(const void *x, uint64_t n, uint64_t k, int approximate, uint64_t sample, \
                                     uint64_t rng_key, uint8_t *out, size_t cap, size_t *written,           \
                                     void *residual)                                                        \
    {                                                                                                       \
        const int value_bytes = (int)sizeof(KT);                                                            \
        if (k == 0) {                                                                                       \
            int bad = 0;                                                                                    \
            for (uint64_t i = 0; i < n; i++) bad |= arith_topk_bad##W(arith_topk_key##W(gpuref_load##W(x, i))); \
            if (bad) return scaleml_fail(SCALEML_ERR_ARG, "TopK: non-finite value (NaN or Inf) in the input"); \
            size_t need = arith_topk_payload_bytes(0, value_bytes);                                         \
            *written = need;                                                                                \
            if (cap < need)                                                                                 \
                return scaleml_fail(SCALEML_ERR_TOO_LARGE, "TopK: output capacity %zu < %zu bytes", cap, need); \
            memset(out, 0, 8);                                                                              \
            if (residual && residual != x && n) memcpy(residual, x, n * sizeof(KT));                        \
            return SCALEML_OK;                                                                              \
        }                                                                                                   \
        /* 1. the threshold */                                                                              \
        int exact = !approximate || sample >= n;                                                            \
        KT t;                                                                                               \
        uint64_t radix_above, take_eq;                                                                      \
        if (exact) {                                                                                        \
            gpuref_radix_select##W(x, n, k, &t, &radix_above, &take_eq);                                    \
        } else {                                                                                            \
            KT *keys = malloc(sample * sizeof *keys);                                                       \
            if (!keys) return scaleml_fail(SCALEML_ERR_NOMEM, "TopK: out of memory");                       \
            for (uint64_t j = 0; j < sample; j++) keys[j] = gpuref_load##W(x, arith_topk_sample_pos(rng_key, j, n)); \
            gpuref_radix_select##W(keys, sample, arith_topk_sample_rank(sample, k, n), &t, &radix_above,    \
                                   &take_eq);                                                               \
            free(keys);                                                                                     \
            t = arith_topk_approx_t##W(t);                                                                  \
            take_eq = ARITH_TOPK_ALL;                                                                       \
        }                                                                                                   \
        /* 2. tile counts and their exclusive sums */                                                       \
        uint64_t tiles = (n + ARITH_COMPACT_TILE - 1) / ARITH_COMPACT_TILE;                                 \
        uint64_t *above_off = malloc(2 * tiles * sizeof *above_off);                                        \
        if (!above_off) return scaleml_fail(SCALEML_ERR_NOMEM, "TopK: out of memory");                      \
        uint64_t *eq_off = above_off + tiles;                                                               \
        uint64_t total_above = 0, total_eq = 0;                                                             \
        int bad = 0;                                                                                        \
        for (uint64_t b = 0; b < tiles; b++) {                                                              \
            uint64_t above = 0, eq = 0;                                                                     \
            for (uint64_t i = b * ARITH_COMPACT_TILE; i < n && i < (b + 1) * ARITH_COMPACT_TILE; i++) {      \
                KT key = arith_topk_key##W(gpuref_load##W(x, i));                                           \
                bad |= arith_topk_bad##W(key);                                                              \
                above += key > t;                                                                           \
                eq += key == t;                                                                             \
            }                                                                                               \
            above_off[b] = total_above;                                                                     \
            eq_off[b] = total_eq;                                                                           \
            total_above += above;                                                                           \
            total_eq += eq;                                                                                 \
        }                                                                                                   \
        if (bad) {                                                                                          \
            free(above_off);                                                                                \
            return scaleml_fail(SCALEML_ERR_ARG, "TopK: non-finite value (NaN or Inf) in the input");       \
        }                                                                                                   \
        uint64_t count = exact ? k : total_above + total_eq;                                                \
        if (exact && (total_above != radix_above || take_eq < 1 || take_eq > total_eq ||                    \
                      total_above + take_eq != k)) {                                                        \
            free(above_off);                                                                                \
            return scaleml_fail(SCALEML_ERR_DEVICE, "TopK: inconsistent selection");                        \
        }                                                                                                   \
        /* 3. the payload and the residual */                                                               \
        size_t need = arith_topk_payload_bytes(count, value_bytes);                                         \
        *written = need;                                                                                    \
        if (cap < need) {                                                                                   \
            free(above_off);                                                                                \
            return scaleml_fail(SCALEML_ERR_TOO_LARGE, "TopK: output capacity %zu < %zu bytes", cap, need); \
        }                                                                                                   \
        memcpy(out, &count, 8);                                                                             \
        size_t voff = arith_topk_value_offset(count);                                                       \
        memset(out + 8 + count * 4, 0, voff - 8 - count * 4);                                               \
        for (uint64_t b = 0; b < tiles; b++) {                                                              \
            /* the block scan: each thread's counts, exclusive over the threads */                          \
            uint64_t thread_above[ARITH_COMPACT_THREADS], thread_eq[ARITH_COMPACT_THREADS];                 \
            uint64_t run_above = 0, run_eq = 0;                                                             \
            for (unsigned th = 0; th < ARITH_COMPACT_THREADS; th++) {                                       \
                uint64_t above = 0, eq = 0;                                                                 \
                for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {                                        \
                    uint64_t i = b * ARITH_COMPACT_TILE + (uint64_t)th * ARITH_COMPACT_ITEMS + j;           \
                    if (i >= n) break;                                                                      \
                    KT key = arith_topk_key##W(gpuref_load##W(x, i));                                       \
                    above += key > t;                                                                       \
                    eq += key == t;                                                                         \
                }                                                                                           \
                thread_above[th] = run_above;                                                               \
                thread_eq[th] = run_eq;                                                                     \
                run_above += above;                                                                         \
                run_eq += eq;                                                                               \
            }                                                                                               \
            for (unsigned th = 0; th < ARITH_COMPACT_THREADS; th++) {                                       \
                uint64_t above_before = above_off[b] + thread_above[th];                                    \
                uint64_t eq_before = eq_off[b] + thread_eq[th];                                             \
                for (unsigned j = 0; j < ARITH_COMPACT_ITEMS; j++) {                                        \
                    uint64_t i = b * ARITH_COMPACT_TILE + (uint64_t)th * ARITH_COMPACT_ITEMS + j;           \
                    if (i >= n) break;                                                                      \
                    KT bits = gpuref_load##W(x, i);                                                         \
                    KT key = arith_topk_key##W(bits);                                                       \
                    int send = arith_topk_send##W(key, t, eq_before, take_eq);                              \
                    if (send) {                                                                             \
                        uint64_t slot = arith_topk_slot(above_before, eq_before, take_eq);                  \
                        uint32_t i32 = (uint32_t)i;                                                         \
                        memcpy(out + 8 + 4 * slot, &i32, 4);                                                \
                        memcpy(out + voff + sizeof(KT) * slot, &bits, sizeof bits);                         \
                    }                                                                                       \
                    if (residual && (send || residual != x)) {                                              \
                        KT r = send ? (KT)0 : bits;                                                         \
                        memcpy((uint8_t *)residual + i * sizeof(KT), &r, sizeof r);                         \
                    }                                                                                       \
                    above_before += key > t;                                                                \
                    eq_before += key == t;                                                                  \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        free(above_off);                                                                                    \
        return SCALEML_OK;                                                                                  \
    }                                                                                                       \
    /* The decoder: the count check, the index and value checks (one thread per entry), then the scatter. */ \
    static int gpuref_topk_decode##W(const uint8_t *buf, size_t bytes, uint64_t n, void *dst, int add)       \
    {                                                                                                       \
        const int value_bytes = (int)sizeof(KT);                                                            \
        if (n > (UINT64_C(1) << 32))                                                                        \
            return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload for n = %llu > 2^32 (indices are uint32)", \
                                (unsigned long long)n);                                                     \
        if (bytes < 8) return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload truncated (%zu bytes)", bytes); \
        uint64_t c;                                                                                         \
        memcpy(&c, buf, 8);                                                                                 \
        if (!arith_topk_count_ok(c, bytes, n, value_bytes))                                                 \
            return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload: count %llu does not match %zu bytes (n = %llu)", \
                                (unsigned long long)c, bytes, (unsigned long long)n);                       \
        size_t voff = arith_topk_value_offset(c);                                                           \
        unsigned flag = 0;                                                                                  \
        for (uint64_t j = 0; j < c; j++) {                                                                  \
            uint32_t idx, prev = 0;                                                                         \
            memcpy(&idx, buf + 8 + 4 * j, 4);                                                               \
            if (j > 0) memcpy(&prev, buf + 8 + 4 * (j - 1), 4);                                             \
            if (!arith_sparse_index_ok(j, prev, idx, n)) flag |= 1u;                                        \
            if (arith_topk_bad##W(arith_topk_key##W(gpuref_load##W(buf + voff, j)))) flag |= 2u;            \
        }                                                                                                   \
        if (flag & 1u) return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload: an index out of range or order"); \
        if (flag & 2u) return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload: non-finite value");        \
        if (!add && n) memset(dst, 0, n * sizeof(KT));                                                      \
        for (uint64_t j = 0; j < c; j++) {                                                                  \
            uint32_t idx;                                                                                   \
            memcpy(&idx, buf + 8 + 4 * j, 4);                                                               \
            if (!add) {                                                                                     \
                memcpy((uint8_t *)dst + (size_t)idx * sizeof(KT), buf + voff + j * sizeof(KT), sizeof(KT)); \
            } else if (sizeof(KT) == 4) {                                                                   \
                float a, v;                                                                                 \
                memcpy(&a, (uint8_t *)dst + (size_t)idx * 4, 4);                                            \
                memcpy(&v, buf + voff + j * 4, 4);                                                          \
                a = a + v;                                                                                  \
                memcpy((uint8_t *)dst + (size_t)idx * 4, &a, 4);                                            \
            } else {                                                                                        \
                double a, v;                                                                                \
                memcpy(&a, (uint8_t *)dst + (size_t)idx * 8, 8);                                            \
                memcpy(&v, buf + voff + j * 8, 8);                                                          \
                a = a + v;                                                                                  \
                memcpy((uint8_t *)dst + (size_t)idx * 8, &a, 8);                                            \
            }                                                                                               \
        }                                                                                                   \
        return SCALEML_OK;                                                                                  \
    }

GPUREF_TOPK_DEFINE(32, uint32_t)
GPUREF_TOPK_DEFINE(64, uint64_t)

static int gpuref_check_value_bytes(int value_bytes)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    return SCALEML_OK;
}

int scaleml_gpuref_topk_encode(const void *x, int value_bytes, uint64_t n, uint64_t k, int approximate,
                               uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                               void *residual)
{
    int rc = gpuref_check_value_bytes(value_bytes);
    if (rc) return rc;
    if (n > (UINT64_C(1) << 32))
        return scaleml_fail(SCALEML_ERR_ARG, "TopK: n = %llu exceeds the uint32 index range", (unsigned long long)n);
    if (k > n)
        return scaleml_fail(SCALEML_ERR_ARG, "TopK: k = %llu > n = %llu", (unsigned long long)k, (unsigned long long)n);
    if (approximate && sample < 1) return scaleml_fail(SCALEML_ERR_ARG, "TopK: sample size must be >= 1");
    return value_bytes == 4 ? gpuref_topk_encode32(x, n, k, approximate, sample, key, out, cap, written, residual)
                            : gpuref_topk_encode64(x, n, k, approximate, sample, key, out, cap, written, residual);
}

int scaleml_gpuref_topk_decode(const uint8_t *buf, size_t bytes, uint64_t n, void *out, int value_bytes)
{
    int rc = gpuref_check_value_bytes(value_bytes);
    if (rc) return rc;
    return value_bytes == 4 ? gpuref_topk_decode32(buf, bytes, n, out, 0) : gpuref_topk_decode64(buf, bytes, n, out, 0);
}

int scaleml_gpuref_topk_decode_add(const uint8_t *buf, size_t bytes, uint64_t n, void *acc, int value_bytes)
{
    int rc = gpuref_check_value_bytes(value_bytes);
    if (rc) return rc;
    return value_bytes == 4 ? gpuref_topk_decode32(buf, bytes, n, acc, 1) : gpuref_topk_decode64(buf, bytes, n, acc, 1);
}

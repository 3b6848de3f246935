/*
 * Scanning a dense vector for its non-zeros: what scaleml.Comm.Allreduce does
 * before it can use a sparse algorithm. One pass over n values counts them and
 * stores the first ones into index and value arrays of a given capacity
 * (scaleml_scan_nonzeros); where they did not fit, a branch-free count
 * (vectorizes) and an extraction into exactly sized arrays. NaN counts as a
 * non-zero (it must reach the sum, as in MPI); -0.0 does not (it adds nothing
 * to a non-zero). The count can also tell the -0.0 values apart, in the same
 * pass: a sum of -0.0 on every rank is -0.0 in MPI,
 * where a sparse algorithm, which holds no entry for them, gives +0.0
 * (scaleml.Comm then lets MPI_Allreduce run; see comm.py).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api_collectives.h"
#include "arith/sparse.h" /* the non-zero and negative-zero tests */
#include "core/counter_rng.h" /* SCALEML_CLONES */
#include "core/cpu_features.h"
#include "core/dense_scan.h"
#include "core/threads.h"

#include <omp.h>

#define DEFINE_COUNT(VT, W)                                                                  \
    static uint64_t count_##VT(const VT *x, uint64_t n)                                      \
    {                                                                                        \
        uint64_t count = 0;                                                                  \
        for (uint64_t i = 0; i < n; i++) count += arith_sparse_nonzero_##W(x[i]);           \
        return count;                                                                        \
    }
DEFINE_COUNT(float, f32)
DEFINE_COUNT(double, f64)

/* Non-zeros (bit pattern other than +0.0 and -0.0) and -0.0 values (the sign
 * bit alone), on the bit patterns (read with memcpy), in one pass that
 * vectorizes: counters of the lane width (CT) per block of 2^16 values, so
 * the compare results need no widening; as fast as the plain count. */
#define DEFINE_COUNT_SIGNED(SUFFIX, UT, CT, W)                                               \
    static uint64_t count_signed_##SUFFIX(const unsigned char *x, uint64_t n, uint64_t *negative_zeros) \
    {                                                                                        \
        uint64_t count = 0, negative = 0, i = 0;                                             \
        while (i < n) {                                                                      \
            uint64_t end = n - i > 65536 ? i + 65536 : n;                                    \
            CT c = 0, z = 0;                                                                 \
            for (; i < end; i++) {                                                           \
                UT bits;                                                                     \
                memcpy(&bits, x + i * sizeof bits, sizeof bits);                             \
                c += arith_sparse_nonzero_bits##W(bits);                                     \
                z += arith_sparse_negzero_bits##W(bits);                                     \
            }                                                                                \
            count += c;                                                                      \
            negative += z;                                                                   \
        }                                                                                    \
        *negative_zeros = negative;                                                          \
        return count;                                                                        \
    }
DEFINE_COUNT_SIGNED(f32, uint32_t, uint32_t, 32)
DEFINE_COUNT_SIGNED(f64, uint64_t, uint64_t, 64)

/* The scan of one part: two bit masks per block of 32 values (non-zero and
 * -0.0; a vectorized compare), the counts from their popcounts, and the first
 * `cap` non-zeros stored at positions offset + i. A block's non-zeros are
 * stored by walking its mask's set bits (a sparse gradient's block holds one
 * or two), or, where more than 8 are set and the output has room for the
 * whole block, by 32 branch-free stores that advance past non-zeros only.
 * `count_all` 0: return at `cap` stored (the counts are then partial). */
#define SCAN_BLOCK 32
#define SCAN_DENSE_BLOCK 8
#define DEFINE_SCAN(SUFFIX, UT, IT, W)                                                       \
    /* the masks of `len` values; inlined with len 32 in the main loop, where the compares vectorize */ \
    static inline __attribute__((always_inline)) void masks_##SUFFIX(const unsigned char *x, int len, \
                                                                     uint32_t *nonzero, uint32_t *negzero) \
    {                                                                                        \
        uint32_t m = 0, z = 0;                                                               \
        for (int j = 0; j < len; j++) {                                                      \
            UT bits;                                                                         \
            memcpy(&bits, x + (uint64_t)j * sizeof bits, sizeof bits);                       \
            m |= (uint32_t)arith_sparse_nonzero_bits##W(bits) << j;                          \
            z |= (uint32_t)arith_sparse_negzero_bits##W(bits) << j;                          \
        }                                                                                    \
        *nonzero = m;                                                                        \
        *negzero = z;                                                                        \
    }                                                                                        \
    static inline __attribute__((always_inline)) uint64_t scan_##SUFFIX(                     \
        const unsigned char *x, uint64_t n, uint64_t offset, IT *idx, UT *val, uint64_t cap, int count_all, \
        uint64_t *stored, uint64_t *negative_zeros)                                          \
    {                                                                                        \
        uint64_t k = 0, count = 0, negative = 0;                                             \
        for (uint64_t i = 0; i < n; i += SCAN_BLOCK) {                                       \
            uint32_t m, z;                                                                   \
            int full = n - i >= SCAN_BLOCK;                                                  \
            if (full)                                                                        \
                masks_##SUFFIX(x + i * sizeof(UT), SCAN_BLOCK, &m, &z);                      \
            else                                                                             \
                masks_##SUFFIX(x + i * sizeof(UT), (int)(n - i), &m, &z);                    \
            negative += (uint64_t)__builtin_popcount(z);                                     \
            if (!m) continue;                                                                \
            int c = __builtin_popcount(m);                                                   \
            count += (uint64_t)c;                                                            \
            if (full && c > SCAN_DENSE_BLOCK && k + SCAN_BLOCK <= cap) {                     \
                for (int j = 0; j < SCAN_BLOCK; j++) {                                       \
                    idx[k] = (IT)(offset + i + (uint64_t)j);                                 \
                    memcpy(val + k, x + (i + (uint64_t)j) * sizeof(UT), sizeof(UT));         \
                    k += (m >> j) & 1u;                                                      \
                }                                                                            \
                continue;                                                                    \
            }                                                                                \
            for (; m && k < cap; m &= m - 1, k++) {                                          \
                int j = __builtin_ctz(m);                                                    \
                idx[k] = (IT)(offset + i + (uint64_t)j);                                     \
                memcpy(val + k, x + (i + (uint64_t)j) * sizeof(UT), sizeof(UT));             \
            }                                                                                \
            if (k == cap && !count_all) break;                                               \
        }                                                                                    \
        *stored = k;                                                                         \
        if (negative_zeros) *negative_zeros = negative;                                      \
        return count;                                                                        \
    }

DEFINE_SCAN(f32_u32, uint32_t, uint32_t, 32)
DEFINE_SCAN(f64_u32, uint64_t, uint32_t, 64)
DEFINE_SCAN(f32_u64, uint32_t, uint64_t, 32)
DEFINE_SCAN(f64_u64, uint64_t, uint64_t, 64)

/* Counts over threads: each thread counts its part, the integer sums do not depend on the split. */
static uint64_t count_part(const void *values, uint64_t n, int value_bytes)
{
    return value_bytes == 4 ? count_float(values, n) : count_double(values, n);
}

uint64_t scaleml_count_nonzeros(const void *values, uint64_t n, int value_bytes)
{
    int threads = threads_for(n, n);
    if (threads == 1) return count_part(values, n, value_bytes);
    uint64_t count = 0;
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(+: count)
    for (int t = 0; t < threads; t++) {
        uint64_t lo, hi;
        threads_split(n, threads, t, &lo, &hi);
        count += count_part((const char *)values + lo * (uint64_t)value_bytes, hi - lo, value_bytes);
    }
    return count;
}

uint64_t scaleml_count_nonzeros_signed(const void *values, uint64_t n, int value_bytes, uint64_t *negative_zeros)
{
    int threads = threads_for(n, n);
    if (threads == 1)
        return value_bytes == 4 ? count_signed_f32(values, n, negative_zeros)
                                : count_signed_f64(values, n, negative_zeros);
    uint64_t count = 0, negative = 0;
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(+: count, negative)
    for (int t = 0; t < threads; t++) {
        uint64_t lo, hi, z;
        threads_split(n, threads, t, &lo, &hi);
        const unsigned char *part = (const unsigned char *)values + lo * (uint64_t)value_bytes;
        count += value_bytes == 4 ? count_signed_f32(part, hi - lo, &z) : count_signed_f64(part, hi - lo, &z);
        negative += z;
    }
    *negative_zeros = negative;
    return count;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* AVX-512 scan of float32 values into uint32 positions, the drop-in's common
 * case: a bit test of 16 values gives the non-zero mask (vptestmd: bits other
 * than the sign, so NaN counts and denormals stay, whatever the FPU's flush
 * modes), and the non-zeros are packed with vpcompressd and stored 16 at a
 * time, advancing by the popcount: no branch per value or per non-zero, which
 * at 1% density costs mispredictions in the mask walk of scan_f32_u32. After
 * a chunk of 1024 values with at most SCAN_SPARSE_CHUNK non-zeros, the next
 * chunk skips the vectors without any (a branch that rarely goes the other
 * way at such densities). Runs by whole chunks while a chunk's values and
 * slots remain; returns the values done, the caller scans the rest. The same
 * entries and counts as scan_f32_u32. */
#define SCAN_CHUNK 1024
#define SCAN_SPARSE_CHUNK 4
__attribute__((target("avx512f,popcnt"))) static uint64_t scan_f32_u32_avx512(
    const uint32_t *x, uint64_t n, uint64_t offset, uint32_t *idx, uint32_t *val, uint64_t cap, uint64_t *stored,
    uint64_t *negative_zeros)
{
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    uint64_t k = 0, i = 0, negative = 0;
    int skip_empty = 1;
    /* the vectors of one chunk; SKIP: pass over those without a non-zero */
#define SCAN_AVX512_VECTORS(SKIP)                                                                  \
    for (; i < end; i += 16) {                                                                     \
        __m512i v = _mm512_loadu_si512((const void *)(x + i));                                     \
        negative += (uint64_t)__builtin_popcount((unsigned)_mm512_cmpeq_epi32_mask(v, sign));      \
        __mmask16 m = _mm512_test_epi32_mask(v, magnitude);                                        \
        if (SKIP && !m) continue;                                                                  \
        __m512i at = _mm512_add_epi32(lanes, _mm512_set1_epi32((int)(uint32_t)(offset + i)));      \
        _mm512_storeu_si512((void *)(val + k), _mm512_maskz_compress_epi32(m, v));                 \
        _mm512_storeu_si512((void *)(idx + k), _mm512_maskz_compress_epi32(m, at));                \
        k += (uint64_t)__builtin_popcount((unsigned)m);                                            \
    }
    while (n - i >= SCAN_CHUNK && cap - k >= SCAN_CHUNK) {
        uint64_t end = i + SCAN_CHUNK, start_k = k;
        if (skip_empty)
            SCAN_AVX512_VECTORS(1)
        else
            SCAN_AVX512_VECTORS(0)
        skip_empty = k - start_k <= SCAN_SPARSE_CHUNK;
    }
#undef SCAN_AVX512_VECTORS
    *stored = k;
    *negative_zeros = negative;
    return i;
}
#define HAVE_SCAN_AVX512 1
#endif

/* scan_* of one part, by value and index width; returns the non-zeros counted, *stored those written. */
SCALEML_CLONES static uint64_t scan_part(const void *values, uint64_t n, uint64_t offset, int value_bytes,
                                         int index_bytes, void *indices, void *out_values, uint64_t capacity,
                                         int count_all, uint64_t *stored, uint64_t *negative_zeros)
{
#ifdef HAVE_SCAN_AVX512
    if (index_bytes == 4 && value_bytes == 4 && scaleml_cpu_avx512f()) {
        uint64_t k, negative, rest_stored, rest_negative;
        uint64_t done = scan_f32_u32_avx512(values, n, offset, indices, out_values, capacity, &k, &negative);
        uint64_t rest = scan_f32_u32((const unsigned char *)values + done * 4, n - done, offset + done,
                                     (uint32_t *)indices + k, (uint32_t *)out_values + k, capacity - k, count_all,
                                     &rest_stored, &rest_negative);
        *stored = k + rest_stored;
        if (negative_zeros) *negative_zeros = negative + rest_negative;
        return k + rest;
    }
#endif
    if (index_bytes == 4)
        return value_bytes == 4
                   ? scan_f32_u32(values, n, offset, indices, out_values, capacity, count_all, stored, negative_zeros)
                   : scan_f64_u32(values, n, offset, indices, out_values, capacity, count_all, stored, negative_zeros);
    return value_bytes == 4
               ? scan_f32_u64(values, n, offset, indices, out_values, capacity, count_all, stored, negative_zeros)
               : scan_f64_u64(values, n, offset, indices, out_values, capacity, count_all, stored, negative_zeros);
}

static uint64_t extract_part(const void *values, uint64_t n, uint64_t offset, int value_bytes, int index_bytes,
                             void *indices, void *out_values, uint64_t capacity)
{
    uint64_t stored;
    (void)scan_part(values, n, offset, value_bytes, index_bytes, indices, out_values, capacity, 0, &stored, NULL);
    return stored;
}

/* Over threads: each thread counts the non-zeros of its part, then extracts them
 * at the slot where its part starts, with exactly its room as capacity (the
 * branch-free stores never cross into the next part); the same entries, in the
 * same order, truncated at `capacity` as one pass truncates. */
uint64_t dense_extract_nonzeros(const void *values, uint64_t n, uint64_t offset, int value_bytes,
                                int index_bytes, void *indices, void *out_values, uint64_t capacity)
{
    int threads = threads_for(n, n);
    if (threads == 1)
        return extract_part(values, n, offset, value_bytes, index_bytes, indices, out_values, capacity);
    uint64_t found[threads];
    int parts = threads;
#pragma omp parallel num_threads(threads)
    {
        /* split by the team the runtime gave (it may be smaller than asked) */
        int t = omp_get_thread_num();
#pragma omp single
        parts = omp_get_num_threads();
        uint64_t lo, hi;
        threads_split(n, parts, t, &lo, &hi);
        const char *part = (const char *)values + lo * (uint64_t)value_bytes;
        found[t] = count_part(part, hi - lo, value_bytes);
#pragma omp barrier
        uint64_t slot = 0;
        for (int u = 0; u < t; u++) slot += found[u];
        if (slot < capacity) {
            uint64_t room = capacity - slot < found[t] ? capacity - slot : found[t];
            (void)extract_part(part, hi - lo, offset + lo, value_bytes, index_bytes,
                               (char *)indices + slot * (uint64_t)index_bytes,
                               (char *)out_values + slot * (uint64_t)value_bytes, room);
        }
    }
    uint64_t total = 0;
    for (int t = 0; t < parts; t++) total += found[t];
    return total < capacity ? total : capacity;
}

uint64_t scaleml_extract_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes,
                                  void *indices, void *out_values, uint64_t capacity)
{
    return dense_extract_nonzeros(values, n, 0, value_bytes, index_bytes, indices, out_values, capacity);
}

/* Over threads: part t stores at most its share of `capacity` at the slot
 * where its share starts; the parts' entries are then moved together in
 * order, up to the first part that had more non-zeros than room (the
 * entries written are always the first ones, as one pass writes them). */
uint64_t scaleml_scan_nonzeros(const void *values, uint64_t n, int value_bytes, int index_bytes, void *indices,
                               void *out_values, uint64_t capacity, uint64_t *negative_zeros, uint64_t *extracted)
{
    int threads = threads_for(n, n);
    if (threads == 1)
        return scan_part(values, n, 0, value_bytes, index_bytes, indices, out_values, capacity, 1, extracted,
                         negative_zeros);
    uint64_t found[threads], stored[threads], zeros[threads];
    int parts = threads;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
#pragma omp single
        parts = omp_get_num_threads();
        uint64_t lo, hi, slot, end;
        threads_split(n, parts, t, &lo, &hi);
        threads_split(capacity, parts, t, &slot, &end);
        found[t] = scan_part((const char *)values + lo * (uint64_t)value_bytes, hi - lo, lo, value_bytes,
                             index_bytes, (char *)indices + slot * (uint64_t)index_bytes,
                             (char *)out_values + slot * (uint64_t)value_bytes, end - slot, 1, &stored[t],
                             &zeros[t]);
    }
    uint64_t total = 0, negative = 0, written = 0;
    int whole = 1;
    for (int t = 0; t < parts; t++) {
        uint64_t slot, end;
        threads_split(capacity, parts, t, &slot, &end);
        if (whole && written != slot) { /* moves down only: written <= slot */
            memmove((char *)indices + written * (uint64_t)index_bytes,
                    (char *)indices + slot * (uint64_t)index_bytes, stored[t] * (uint64_t)index_bytes);
            memmove((char *)out_values + written * (uint64_t)value_bytes,
                    (char *)out_values + slot * (uint64_t)value_bytes, stored[t] * (uint64_t)value_bytes);
        }
        if (whole) written += stored[t];
        whole = whole && stored[t] == found[t];
        total += found[t];
        negative += zeros[t];
    }
    *negative_zeros = negative;
    *extracted = written;
    return total;
}


/* 1 when every value is finite: the largest exponent field of all values is
 * compared with all ones (an integer max, which vectorizes); one pass with no
 * temporary array (numpy's isfinite().all() allocates n booleans). */
SCALEML_CLONES int scaleml_all_finite(const void *values, uint64_t n, int value_bytes)
{
    if (value_bytes == 4) {
        const uint32_t *x = values;
        uint32_t worst = 0;
        for (uint64_t i = 0; i < n; i++) {
            uint32_t e = x[i] & UINT32_C(0x7f800000);
            worst = e > worst ? e : worst;
        }
        return worst != UINT32_C(0x7f800000);
    }
    const uint64_t *x = values;
    uint64_t worst = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t e = x[i] & UINT64_C(0x7ff0000000000000);
        worst = e > worst ? e : worst;
    }
    return worst != UINT64_C(0x7ff0000000000000);
}

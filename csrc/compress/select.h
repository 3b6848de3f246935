/*
 * Linear-time selection (introselect) over unsigned integer keys, shared by
 * TopK, adaptive quantization and the samplers. Magnitudes of IEEE floats
 * compare like their bit patterns with the sign bit cleared, so float keys
 * are selected as uint32/uint64 without any float compare.
 *
 * select_<T>(a, n, r) permutes a[0 .. n) so that a[r] is the value of rank r
 * (0-based, ascending), everything before it is <= a[r] and everything after
 * is >= a[r]. Pivots are medians of three; partitioning is three-way (runs of
 * equal keys, e.g. zeros, cost nothing). After 2*log2(n) + 4 rounds without
 * finishing, pivots switch to the median of medians of five, which bounds
 * the worst case at O(n).
 */
#ifndef SCALEML_SELECT_H
#define SCALEML_SELECT_H

#include <stddef.h>
#include <stdint.h>

#define SELECT_DEFINE(SUFFIX, KT)                                                          \
    static void select_##SUFFIX(KT *a, uint64_t n, uint64_t r);                            \
    static inline void sel_swap_##SUFFIX(KT *a, uint64_t i, uint64_t j)                    \
    {                                                                                      \
        KT t = a[i]; a[i] = a[j]; a[j] = t;                                                \
    }                                                                                      \
    static void sel_insertion_##SUFFIX(KT *a, uint64_t n)                                  \
    {                                                                                      \
        for (uint64_t i = 1; i < n; i++) {                                                 \
            KT v = a[i];                                                                   \
            uint64_t j = i;                                                                \
            while (j > 0 && a[j - 1] > v) { a[j] = a[j - 1]; j--; }                        \
            a[j] = v;                                                                      \
        }                                                                                  \
    }                                                                                      \
    static KT sel_median3_##SUFFIX(KT x, KT y, KT z)                                       \
    {                                                                                      \
        if (x > y) { KT t = x; x = y; y = t; }                                             \
        if (y > z) y = z;                                                                  \
        return x > y ? x : y;                                                              \
    }                                                                                      \
    /* Median of medians of groups of five (moves the medians to the front). */            \
    static KT sel_mom_##SUFFIX(KT *a, uint64_t n)                                          \
    {                                                                                      \
        uint64_t g = 0;                                                                    \
        for (uint64_t i = 0; i + 5 <= n; i += 5, g++) {                                    \
            sel_insertion_##SUFFIX(a + i, 5);                                              \
            sel_swap_##SUFFIX(a, g, i + 2);                                                \
        }                                                                                  \
        if (g == 0) { sel_insertion_##SUFFIX(a, n); return a[n / 2]; }                     \
        select_##SUFFIX(a, g, g / 2);                                                      \
        return a[g / 2];                                                                   \
    }                                                                                      \
    static void select_##SUFFIX(KT *a, uint64_t n, uint64_t r)                             \
    {                                                                                      \
        uint64_t lo = 0, hi = n; /* a[r] lies in [lo, hi) */                               \
        unsigned budget = 4;                                                               \
        for (uint64_t m = n; m > 1; m >>= 1) budget += 2;                                  \
        while (hi - lo > 16) {                                                             \
            KT pivot;                                                                      \
            if (budget > 0) {                                                              \
                budget--;                                                                  \
                uint64_t mid = lo + (hi - lo) / 2;                                         \
                pivot = sel_median3_##SUFFIX(a[lo], a[mid], a[hi - 1]);                    \
            } else {                                                                       \
                pivot = sel_mom_##SUFFIX(a + lo, hi - lo);                                 \
            }                                                                              \
            /* Dijkstra three-way partition: [lo,lt) < p, [lt,i) == p, (gt,hi) > p */      \
            uint64_t lt = lo, i = lo, gt = hi;                                             \
            while (i < gt) {                                                               \
                KT v = a[i];                                                               \
                if (v < pivot) { a[i] = a[lt]; a[lt] = v; lt++; i++; }                     \
                else if (v > pivot) { gt--; a[i] = a[gt]; a[gt] = v; }                     \
                else i++;                                                                  \
            }                                                                              \
            if (r < lt) hi = lt;                                                           \
            else if (r >= gt) lo = gt;                                                     \
            else return;                                                                   \
        }                                                                                  \
        sel_insertion_##SUFFIX(a + lo, hi - lo);                                           \
    }

#endif

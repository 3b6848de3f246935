/*
 * TopK sparsification: the k entries of largest magnitude.
 *
 * Exact mode: magnitudes are compared as float bit patterns with the sign
 * cleared (which order like the magnitudes). A radix select finds the k-th
 * largest: a histogram of the top 16 bits of every key, the bin holding the
 * k-th largest, then introselect (select.h) among the keys of that bin only;
 * O(n) in all, no sort and no copy of the whole vector. One more pass emits
 * every entry above that threshold and, in index order, as many entries
 * equal to it as are needed to reach exactly k. For large n a faster path
 * (candidates_*) first keeps, in one streaming pass, the entries above a
 * conservative cut estimated from 8192 random samples, checks that at least
 * k came out, and selects among those only (same result; it falls back to the
 * radix select when the check fails). Approximate mode: the threshold is the matching
 * quantile of `sample` magnitudes drawn at random positions (counter RNG), and
 * every entry at or above it is sent (about k; zeros never).
 * Either mode can write the error feedback residual (x with the sent entries
 * set to 0) in its final pass; the residual may be x itself (zeroed in place).
 *
 * Wire format (ready for scaleml.sparse_allreduce):
 *   uint64 count
 *   count uint32 indices, strictly increasing, < n   (so n <= 2^32)
 *   zero padding to a multiple of 8 bytes
 *   count values (float32 or float64, the input's type)
 *   -> 32 + 8*value_bytes bits per sent entry, i.e. (k/n)*(32 + 32) + 64/n
 *      bits per element for float32.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_compress.h"
#include "arith/sparse.h"
#include "arith/topk.h"
#include "core/counter_rng.h"
#include "compress/select.h"
#include "core/errors.h"
#include "core/scratch.h"
#include "core/threads.h"

SELECT_DEFINE(u32, uint32_t)
SELECT_DEFINE(u64, uint64_t)

#define pad8 arith_topk_pad8

size_t scaleml_topk_bytes(uint64_t count, int value_bytes)
{
    return arith_topk_payload_bytes(count, value_bytes);
}

#define TOPK_DEFINE(SUFFIX, VT, KT, KSUF, W, SHIFT)                                          \
    static inline KT key_##SUFFIX(VT v)                                                       \
    {                                                                                         \
        KT k;                                                                                 \
        memcpy(&k, &v, sizeof k);                                                             \
        return arith_topk_key##W(k);                                                          \
    }                                                                                         \
    /* histogram of the top 16 bits of the magnitude keys; 1 on NaN/Inf */                    \
    static int histogram_##SUFFIX(const VT *x, uint64_t n, uint64_t *hist)                    \
    {                                                                                         \
        KT bad = 0;                                                                           \
        for (uint64_t i = 0; i < n; i++) {                                                    \
            KT m = key_##SUFFIX(x[i]);                                                        \
            bad |= (KT)arith_topk_bad##W(m);                                                  \
            hist[m >> SHIFT]++;                                                               \
        }                                                                                     \
        return bad != 0;                                                                      \
    }                                                                                         \
    /* The histogram over threads: one per thread, summed (counts: the same at any split); \
     * 1 on NaN/Inf, -1 out of memory. */                                                      \
    static int histogram_threaded_##SUFFIX(const VT *x, uint64_t n, uint64_t *hist)           \
    {                                                                                         \
        int threads = threads_for(n, n);                                                      \
        if (threads == 1) return histogram_##SUFFIX(x, n, hist);                              \
        uint64_t *part = calloc((size_t)(threads - 1) * 65536, sizeof *part);                 \
        if (!part) return -1;                                                                 \
        int bad = 0;                                                                          \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1) reduction(|: bad)") \
        for (int t = 0; t < threads; t++) {                                                   \
            uint64_t lo, hi;                                                                  \
            threads_split(n, threads, t, &lo, &hi);                                           \
            bad |= histogram_##SUFFIX(x + lo, hi - lo, t ? part + (size_t)(t - 1) * 65536 : hist); \
        }                                                                                     \
        for (int t = 1; t < threads; t++)                                                     \
            for (size_t b = 0; b < 65536; b++) hist[b] += part[(size_t)(t - 1) * 65536 + b];   \
        free(part);                                                                           \
        return bad;                                                                           \
    }                                                                                         \
    /* Threshold key and how many entries equal to it to take (UINT64_MAX = all). */          \
    static int threshold_##SUFFIX(const VT *x, uint64_t n, uint64_t k, int approximate,       \
                                  uint64_t sample, uint64_t key, KT *thr, uint64_t *take_eq,  \
                                  uint64_t *count)                                            \
    {                                                                                         \
        if (!approximate || sample >= n) {                                                    \
            /* Radix select: histogram of the top 16 bits of the keys, the bin      \
             * holding the k-th largest, then introselect among that bin's keys    \
             * only. Two streaming passes plus a small selection: O(n). */         \
            uint64_t *hist = calloc(65536, sizeof *hist);                                     \
            if (!hist) return SCALEML_ERR_NOMEM;                                              \
            int hbad = histogram_threaded_##SUFFIX(x, n, hist);                               \
            if (hbad) { free(hist); return hbad < 0 ? SCALEML_ERR_NOMEM : SCALEML_ERR_ARG; }  \
            uint64_t above;                                                                   \
            unsigned bin = arith_topk_pick_bin(hist, 65535, k, &above);                       \
            uint64_t m = hist[bin];                                                           \
            free(hist);                                                                       \
            KT *a = malloc(m * sizeof *a);                                                    \
            if (!a) return SCALEML_ERR_NOMEM;                                                 \
            uint64_t j = 0;                                                                   \
            for (uint64_t i = 0; i < n; i++) {                                                \
                KT key_i = key_##SUFFIX(x[i]);                                                \
                a[j] = key_i;                                                                 \
                j += (unsigned)(key_i >> SHIFT) == bin;                                       \
                if (j == m) break;                                                            \
            }                                                                                 \
            uint64_t need = k - above; /* 1 <= need <= m */                                   \
            uint64_t r = m - need;                                                            \
            select_##KSUF(a, m, r);                                                           \
            KT t = a[r];                                                                      \
            uint64_t gt = above;                                                              \
            for (uint64_t i = r + 1; i < m; i++) gt += a[i] > t;                              \
            free(a);                                                                          \
            *thr = t;                                                                         \
            *take_eq = k - gt;                                                                \
            *count = k;                                                                       \
            return SCALEML_OK;                                                                \
        }                                                                                     \
        KT *a = malloc(sample * sizeof *a);                                                   \
        if (!a) return SCALEML_ERR_NOMEM;                                                     \
        for (uint64_t j = 0; j < sample; j++)                                                 \
            a[j] = key_##SUFFIX(x[arith_topk_sample_pos(key, j, n)]);                         \
        uint64_t ks = arith_topk_sample_rank(sample, k, n);                                   \
        select_##KSUF(a, sample, sample - ks);                                                \
        KT t = arith_topk_approx_t##W(a[sample - ks]); /* never send zeros */                 \
        free(a);                                                                              \
        uint64_t c = 0;                                                                       \
        KT bad = 0;                                                                           \
        int threads = threads_for(n, n);                                                      \
        _Pragma("omp parallel for num_threads(threads) schedule(static) reduction(+: c) reduction(|: bad) if (threads > 1)") \
        for (uint64_t i = 0; i < n; i++) {                                                    \
            KT m = key_##SUFFIX(x[i]);                                                        \
            bad |= (KT)arith_topk_bad##W(m);                                                  \
            c += m >= t;                                                                      \
        }                                                                                     \
        if (bad) return SCALEML_ERR_ARG;                                                      \
        *thr = t;                                                                             \
        *take_eq = UINT64_MAX;                                                                \
        *count = c;                                                                           \
        return SCALEML_OK;                                                                    \
    }                                                                                         \
    /* The final pass over entries [lo, hi), c0 entries sent and eq0 equal to t before lo. */ \
    static void emit_##SUFFIX(const VT *x, uint64_t lo, uint64_t hi, KT t, uint64_t take_eq,  \
                              uint32_t *idx, VT *val, VT *residual, uint64_t c0, uint64_t eq0) \
    {                                                                                         \
        uint64_t c = c0, eq_before = eq0;                                                     \
        for (uint64_t i = lo; i < hi; i++) {                                                  \
            KT m = key_##SUFFIX(x[i]);                                                        \
            int send = arith_topk_send##W(m, t, eq_before, take_eq);                          \
            eq_before += m == t;                                                              \
            if (send) {                                                                       \
                uint32_t ii = (uint32_t)i;                                                    \
                memcpy(idx + c, &ii, 4);                                                      \
                memcpy(val + c, x + i, sizeof(VT));                                           \
                c++;                                                                          \
            }                                                                                 \
            if (residual) residual[i] = send ? (VT)0 : x[i];                                  \
        }                                                                                     \
    }

/* The final pass over threads: each part counts its keys above t and equal to t,
 * which give the slot and the equal keys before every part; then each part
 * emits from there (the same entries, slots and tie rule as one pass). */
#define TOPK_DEFINE_EMIT_THREADED(SUFFIX, VT, KT)                                             \
    static void emit_threaded_##SUFFIX(const VT *x, uint64_t n, KT t, uint64_t take_eq,       \
                                       uint32_t *idx, VT *val, VT *residual)                  \
    {                                                                                         \
        int threads = threads_for(n, n);                                                      \
        if (threads == 1) { emit_##SUFFIX(x, 0, n, t, take_eq, idx, val, residual, 0, 0); return; } \
        uint64_t above[threads], equal[threads];                                              \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1)")                  \
        for (int p = 0; p < threads; p++) {                                                   \
            uint64_t lo, hi, gt = 0, eq = 0;                                                  \
            threads_split(n, threads, p, &lo, &hi);                                           \
            for (uint64_t i = lo; i < hi; i++) {                                              \
                KT m = key_##SUFFIX(x[i]);                                                    \
                gt += m > t;                                                                  \
                eq += m == t;                                                                 \
            }                                                                                 \
            above[p] = gt;                                                                    \
            equal[p] = eq;                                                                    \
        }                                                                                     \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1)")                  \
        for (int p = 0; p < threads; p++) {                                                   \
            uint64_t lo, hi, gt = 0, eq = 0;                                                  \
            threads_split(n, threads, p, &lo, &hi);                                           \
            for (int q = 0; q < p; q++) { gt += above[q]; eq += equal[q]; }                   \
            emit_##SUFFIX(x, lo, hi, t, take_eq, idx, val, residual, gt + (eq < take_eq ? eq : take_eq), eq); \
        }                                                                                     \
    }

TOPK_DEFINE(f32, float, uint32_t, u32, 32, 15)
TOPK_DEFINE(f64, double, uint64_t, u64, 64, 47)
TOPK_DEFINE_EMIT_THREADED(f32, float, uint32_t)
TOPK_DEFINE_EMIT_THREADED(f64, double, uint64_t)

/* A copy of `bytes` over threads (the residual's starting copy of the input). */
static void copy_threaded(void *dst, const void *src, size_t bytes, int threads)
{
    _Pragma("omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)")
    for (int p = 0; p < threads; p++) {
        uint64_t lo, hi;
        threads_split_units(bytes, 64, threads, p, &lo, &hi);
        memcpy((uint8_t *)dst + lo, (const uint8_t *)src + lo, hi - lo);
    }
}

/* The most parts the phases after the candidate filter are cut into. */
#define CANDIDATE_PARTS 64

/* The phases after the candidate filter, over `threads` parts of the candidate
 * list (threads_split of c; ck holds the candidates' raw bits, AM masks them to
 * keys). The output of part p starts at the slot of the entries sent before it
 * (arith_topk_slot of the keys above t and equal to t in the parts before it),
 * so every split writes the same payload. */
#define TOPK_DEFINE_CANDIDATE_PHASES(SUFFIX, VT, KT, KSUF, AM, W)                             \
    /* Exact mode: the k-th largest key t among the c >= k candidates (keys in [tlo, kmax]), \
     * how many keys equal to t to send, and each part's keys above t and equal to t. A      \
     * 4096-bin histogram of key - tlo per part, summed (the same counts at any split); the  \
     * bin holding the k-th largest; its keys gathered in index order (each part from its    \
     * own offset); a selection among them. 1: out of memory. */                              \
    static int candidates_threshold_##SUFFIX(const KT *ck, uint64_t c, uint64_t k, KT tlo,   \
                                             KT kmax, int threads, KT *t_out,                 \
                                             uint64_t *take_eq, uint64_t *above, uint64_t *equal) \
    {                                                                                         \
        unsigned sh = 0;                                                                      \
        while (((kmax - tlo) >> sh) >= 4096) sh++;                                            \
        unsigned top = (unsigned)((kmax - tlo) >> sh);                                        \
        uint64_t *hists = calloc((size_t)threads * 4096, sizeof *hists);                      \
        if (!hists) return 1;                                                                 \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)") \
        for (int p = 0; p < threads; p++) {                                                   \
            uint64_t lo, hi;                                                                  \
            threads_split(c, threads, p, &lo, &hi);                                           \
            uint64_t *h = hists + (size_t)p * 4096;                                           \
            for (uint64_t j = lo; j < hi; j++) h[((ck[j] & AM) - tlo) >> sh]++;               \
        }                                                                                     \
        uint64_t hist[4096], off[threads];                                                    \
        for (unsigned b = 0; b <= top; b++) {                                                 \
            hist[b] = 0;                                                                      \
            for (int p = 0; p < threads; p++) hist[b] += hists[(size_t)p * 4096 + b];         \
        }                                                                                     \
        uint64_t above_bin;                                                                   \
        unsigned bin = arith_topk_pick_bin(hist, top, k, &above_bin);                         \
        uint64_t mb = hist[bin];                                                              \
        for (int p = 0; p < threads; p++)                                                     \
            off[p] = p ? off[p - 1] + hists[(size_t)(p - 1) * 4096 + bin] : 0;                \
        /* the bin's keys in index order, then a copy that the selection permutes */          \
        KT *members = malloc(2 * mb * sizeof *members);                                       \
        if (!members) { free(hists); return 1; }                                              \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)") \
        for (int p = 0; p < threads; p++) {                                                   \
            uint64_t lo, hi, q = off[p], end = off[p] + hists[(size_t)p * 4096 + bin];        \
            threads_split(c, threads, p, &lo, &hi);                                           \
            for (uint64_t j = lo; j < hi && q < end; j++) {                                   \
                members[q] = ck[j] & AM;                                                      \
                q += (KT)(((ck[j] & AM) - tlo) >> sh) == (KT)bin;                             \
            }                                                                                 \
        }                                                                                     \
        KT *sel = members + mb;                                                               \
        memcpy(sel, members, mb * sizeof *sel);                                               \
        uint64_t r = mb - (k - above_bin); /* 1 <= k - above_bin <= mb */                     \
        select_##KSUF(sel, mb, r);                                                            \
        KT t = sel[r];                                                                        \
        uint64_t gt = above_bin;                                                              \
        for (uint64_t j = r + 1; j < mb; j++) gt += sel[j] > t;                               \
        for (int p = 0; p < threads; p++) {                                                   \
            uint64_t a = 0, e = 0, end = off[p] + hists[(size_t)p * 4096 + bin];              \
            for (unsigned b = bin + 1; b <= top; b++) a += hists[(size_t)p * 4096 + b];       \
            for (uint64_t j = off[p]; j < end; j++) { a += members[j] > t; e += members[j] == t; } \
            above[p] = a;                                                                     \
            equal[p] = e;                                                                     \
        }                                                                                     \
        free(members);                                                                        \
        free(hists);                                                                          \
        *t_out = t;                                                                           \
        *take_eq = k - gt;                                                                    \
        return 0;                                                                             \
    }                                                                                         \
    /* Candidates [lo, hi) from output slot o to o_end (the sends of this part): a           \
     * branch-free compaction, every candidate written at slot o, which advances             \
     * only when it is sent; it stops at o_end, so no write leaves the part's slots. */      \
    static void candidates_emit_##SUFFIX(const uint32_t *ci, const KT *ck, uint64_t lo,       \
                                         uint64_t hi, KT t, uint64_t take_eq, uint64_t eq_before, \
                                         uint64_t o, uint64_t o_end, uint8_t *ip, uint8_t *vp, \
                                         VT *residual)                                        \
    {                                                                                         \
        for (uint64_t j = lo; j < hi && o < o_end; j++) {                                     \
            KT m = ck[j] & AM;                                                                \
            uint32_t ij = ci[j];                                                              \
            uint64_t send = (uint64_t)arith_topk_send##W(m, t, eq_before, take_eq);           \
            eq_before += m == t;                                                              \
            memcpy(ip + 4 * o, &ij, 4);                                                       \
            memcpy(vp + sizeof(VT) * o, &ck[j], sizeof(VT));                                  \
            if (residual && send) residual[ij] = 0;                                           \
            o += send;                                                                        \
        }                                                                                     \
    }                                                                                         \
    static void candidates_emit_threaded_##SUFFIX(const uint32_t *ci, const KT *ck, uint64_t c, \
                                                  KT t, uint64_t take_eq, const uint64_t *above, \
                                                  const uint64_t *equal, uint8_t *ip,         \
                                                  uint8_t *vp, VT *residual, int threads)     \
    {                                                                                         \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)") \
        for (int p = 0; p < threads; p++) {                                                   \
            uint64_t lo, hi, gt = 0, eq = 0;                                                  \
            threads_split(c, threads, p, &lo, &hi);                                           \
            for (int q = 0; q < p; q++) { gt += above[q]; eq += equal[q]; }                   \
            uint64_t o = arith_topk_slot(gt, eq, take_eq);                                    \
            uint64_t o_end = arith_topk_slot(gt + above[p], eq + equal[p], take_eq);          \
            candidates_emit_##SUFFIX(ci, ck, lo, hi, t, take_eq, eq, o, o_end, ip, vp, residual); \
        }                                                                                     \
    }

TOPK_DEFINE_CANDIDATE_PHASES(f32, float, uint32_t, u32, UINT32_C(0x7fffffff), 32)
TOPK_DEFINE_CANDIDATE_PHASES(f64, double, uint64_t, u64, UINT64_C(0x7fffffffffffffff), 64)

/* Candidate path (both modes, large n): one streaming pass keeps the (index, key)
 * of every entry whose key is >= a cut t_lo taken from a random sample, then the
 * selection and the output use the candidates only. Exact mode takes a cut a
 * few sampling standard deviations below the estimated k-th largest and checks
 * that at least k candidates came out, so the result is exactly the top k;
 * otherwise (or when the candidates overflow their buffer) the caller falls back
 * to the full radix select. Returns 1 when it produced the output, 0 to fall
 * back, or a negative error (-SCALEML_ERR_*). */
#define TOPK_DEFINE_CANDIDATES(SUFFIX, VT, KT, KSUF, AM, W)                                   \
    static int candidates_##SUFFIX(const VT *x, uint64_t n, uint64_t k, int approximate,      \
                                   uint64_t sample, uint64_t key, uint8_t *out, size_t cap,   \
                                   size_t *written, VT *residual)                             \
    {                                                                                         \
        uint64_t ms = approximate ? sample : 8192;                                            \
        if (ms > n / 8) return 0;                                                             \
        double ks = (double)ms * (double)k / (double)n;                                       \
        double cut = approximate ? ks : ks + 4.0 * sqrt(ks) + 16.0;                           \
        if (!approximate && cut * 4 > (double)ms) return 0; /* dense: radix is better */      \
        uint64_t rank;                                                                        \
        if (approximate) {                                                                    \
            rank = arith_topk_sample_rank(ms, k, n);                                          \
        } else {                                                                              \
            rank = (uint64_t)(cut + 0.5);                                                     \
            if (rank < 1) rank = 1;                                                           \
            if (rank > ms) rank = ms;                                                         \
        }                                                                                     \
        KT *a = malloc(ms * sizeof *a);                                                       \
        if (!a) return -SCALEML_ERR_NOMEM;                                                    \
        /* random reads, one cache miss each: worth threads even for a small sample */        \
        int sthreads = threads_within(scaleml_get_num_threads(), n);                          \
        _Pragma("omp parallel for num_threads(sthreads) schedule(static) if (sthreads > 1)")  \
        for (uint64_t j = 0; j < ms; j++)                                                     \
            a[j] = key_##SUFFIX(x[arith_topk_sample_pos(key, j, n)]);                         \
        select_##KSUF(a, ms, ms - rank);                                                      \
        KT tlo = a[ms - rank];                                                                \
        free(a);                                                                              \
        if (tlo == 0) return 0; /* too many zeros for a useful cut */                         \
        uint64_t expect = (uint64_t)((double)n * (double)rank / (double)ms);                  \
        uint64_t ccap = 2 * expect + 4096;                                                    \
        uint32_t *ci = scratch_get(0, ccap * sizeof *ci);                                     \
        KT *ck = scratch_get(1, ccap * sizeof *ck);                                           \
        if (!ci || !ck) return -SCALEML_ERR_NOMEM;                                            \
        int bad = 0;                                                                          \
        KT kmax = 0;                                                                          \
        uint64_t c = collect_threaded_##SUFFIX(x, n, tlo, ci, ck, ccap, &bad, &kmax);         \
        int rc = 0;                                                                           \
        if (c == UINT64_MAX) { rc = -SCALEML_ERR_NOMEM; goto done; }                          \
        if (bad) { rc = -SCALEML_ERR_ARG; goto done; }                                        \
        if (c > ccap || (!approximate && c < k)) goto done; /* fall back */                   \
        int threads = scaleml_get_num_threads();                                              \
        int cthreads = threads_within(threads < CANDIDATE_PARTS ? threads : CANDIDATE_PARTS, c); \
        uint64_t above[CANDIDATE_PARTS], equal[CANDIDATE_PARTS];                              \
        KT t = tlo;                                                                           \
        uint64_t take_eq = UINT64_MAX, count = c;                                             \
        if (!approximate) {                                                                   \
            if (candidates_threshold_##SUFFIX(ck, c, k, tlo, kmax, cthreads, &t, &take_eq, above, equal)) { \
                rc = -SCALEML_ERR_NOMEM;                                                      \
                goto done;                                                                    \
            }                                                                                 \
            count = k;                                                                        \
        } else {                                                                              \
            for (int p = 0; p < cthreads; p++) { /* every candidate is sent */                \
                uint64_t lo, hi;                                                              \
                threads_split(c, cthreads, p, &lo, &hi);                                      \
                above[p] = hi - lo;                                                           \
                equal[p] = 0;                                                                 \
            }                                                                                 \
        }                                                                                     \
        size_t need = scaleml_topk_bytes(count, (int)sizeof(VT));                             \
        *written = need;                                                                      \
        if (cap < need) { rc = -SCALEML_ERR_TOO_LARGE; goto done; }                           \
        memcpy(out, &count, 8);                                                               \
        uint8_t *ip = out + 8, *vp = out + 8 + pad8(count * 4);                               \
        if (residual && residual != x) copy_threaded(residual, x, n * sizeof(VT), threads_within(cthreads, n)); \
        candidates_emit_threaded_##SUFFIX(ci, ck, c, t, take_eq, above, equal, ip, vp, residual, cthreads); \
        memset(out + 8 + count * 4, 0, pad8(count * 4) - count * 4);                          \
        rc = 1;                                                                               \
    done:                                                                                     \
        return rc;                                                                            \
    }

/* The candidate filter: (index, key) of every entry with key >= tlo, in index
 * order, stored while fewer than ccap; returns how many there are (stored or
 * not), sets *bad on NaN/Inf and *kmax to the largest key (a candidate's
 * whenever there is one). */
#define TOPK_DEFINE_COLLECT(SUFFIX, VT, KT, W)                                                \
    static uint64_t collect_##SUFFIX(const VT *x, uint64_t n, KT tlo, uint32_t *ci, KT *ck,   \
                                     uint64_t ccap, int *bad_out, KT *kmax)                   \
    {                                                                                         \
        uint64_t c = 0;                                                                       \
        KT bad = 0, mx = 0;                                                                   \
        for (uint64_t i = 0; i < n; i++) {                                                    \
            KT m = key_##SUFFIX(x[i]);                                                        \
            bad |= (KT)arith_topk_bad##W(m);                                                  \
            mx = m > mx ? m : mx;                                                             \
            if (m >= tlo) {                                                                   \
                if (c < ccap) { ci[c] = (uint32_t)i; memcpy(&ck[c], x + i, sizeof(VT)); }    \
                c++;                                                                          \
            }                                                                                 \
        }                                                                                     \
        *bad_out = bad != 0;                                                                  \
        *kmax = mx;                                                                           \
        return c;                                                                             \
    }

TOPK_DEFINE_COLLECT(f32, float, uint32_t, 32)
TOPK_DEFINE_COLLECT(f64, double, uint64_t, 64)
#define collect_f64_dispatch collect_f64

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* AVX2 filter for float32: 8 keys per compare, a movemask, and a scalar walk
 * over the (rare) set bits; the same output as collect_f32. */
__attribute__((target("avx2,bmi,bmi2"))) static uint64_t collect_f32_avx2(const float *x, uint64_t n, uint32_t tlo,
                                                                         uint32_t *ci, uint32_t *ck, uint64_t ccap,
                                                                         int bmi2, int *bad_out, uint32_t *kmax)
{
    /* keys are < 2^31 and tlo >= 1, so signed compares against tlo - 1 and
     * INFKEY - 1 are exact */
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    const __m256i lo = _mm256_set1_epi32((int)(tlo - 1)), inf = _mm256_set1_epi32(0x7f800000 - 1);
    __m256i acc = _mm256_setzero_si256(), vmax = _mm256_setzero_si256();
    uint64_t c = 0, i = 0;
    const uint32_t *xb = (const uint32_t *)(const void *)x;
    if (bmi2) {
        /* branch-free compaction while 8 more slots fit: the lanes that pass
         * are packed to the front (a permutation built with pext) and all 8
         * are stored; c advances by the number that passed */
        const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (; i + 8 <= n && c + 8 <= ccap; i += 8) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(const void *)(xb + i));
            __m256i m = _mm256_and_si256(raw, absmask);
            acc = _mm256_or_si256(acc, _mm256_cmpgt_epi32(m, inf));
            vmax = _mm256_max_epu32(vmax, m);
            unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(m, lo)));
            if (!mask) continue;
            uint64_t spread = _pdep_u64(mask, UINT64_C(0x0101010101010101)) * 0xff;
            uint64_t wanted = _pext_u64(UINT64_C(0x0706050403020100), spread);
            __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)wanted));
            __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)i), iota);
            _mm256_storeu_si256((__m256i *)(void *)(ci + c), _mm256_permutevar8x32_epi32(idx, perm));
            _mm256_storeu_si256((__m256i *)(void *)(ck + c), _mm256_permutevar8x32_epi32(raw, perm));
            c += (uint64_t)__builtin_popcount(mask);
        }
    }
    for (; i + 8 <= n; i += 8) {
        __m256i m = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(xb + i)), absmask);
        acc = _mm256_or_si256(acc, _mm256_cmpgt_epi32(m, inf));
        vmax = _mm256_max_epu32(vmax, m);
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(m, lo)));
        while (mask) {
            unsigned j = (unsigned)__builtin_ctz(mask);
            mask &= mask - 1;
            if (c < ccap) { ci[c] = (uint32_t)(i + j); ck[c] = xb[i + j]; }
            c++;
        }
    }
    int bad = !_mm256_testz_si256(acc, acc);
    uint32_t lanes[8], mx = 0;
    _mm256_storeu_si256((__m256i *)(void *)lanes, vmax);
    for (int j = 0; j < 8; j++) mx = lanes[j] > mx ? lanes[j] : mx;
    for (; i < n; i++) {
        uint32_t m = xb[i] & 0x7fffffffu;
        bad |= m >= 0x7f800000u;
        mx = m > mx ? m : mx;
        if (m >= tlo) {
            if (c < ccap) { ci[c] = (uint32_t)i; ck[c] = xb[i]; }
            c++;
        }
    }
    *bad_out = bad;
    *kmax = mx;
    return c;
}
#include "core/cpu_features.h"
static uint64_t collect_f32_dispatch(const float *x, uint64_t n, uint32_t tlo, uint32_t *ci, uint32_t *ck,
                                     uint64_t ccap, int *bad, uint32_t *kmax)
{
    return scaleml_cpu_avx2() ? collect_f32_avx2(x, n, tlo, ci, ck, ccap, scaleml_cpu_bmi2(), bad, kmax)
                              : collect_f32(x, n, tlo, ci, ck, ccap, bad, kmax);
}
#else
#define collect_f32_dispatch collect_f32
#endif

/* The candidate filter over threads: thread 0 fills ci/ck, the others buffers of
 * their own, appended in order (indices shifted to the whole vector): the same
 * list and count as one pass, so the same fallback. UINT64_MAX: out of memory. */
#define TOPK_DEFINE_COLLECT_THREADED(SUFFIX, VT, KT)                                          \
    static uint64_t collect_threaded_##SUFFIX(const VT *x, uint64_t n, KT tlo, uint32_t *ci,  \
                                              KT *ck, uint64_t ccap, int *bad_out, KT *kmax)  \
    {                                                                                         \
        int threads = threads_for(n, n / 8);                                                  \
        if (threads == 1) return collect_##SUFFIX##_dispatch(x, n, tlo, ci, ck, ccap, bad_out, kmax); \
        uint64_t count[threads], start[threads];                                              \
        KT mx[threads];                                                                       \
        int bad[threads];                                                                     \
        uint32_t *pi[threads];                                                                \
        KT *pk[threads];                                                                      \
        /* the other parts' lists, in the caller's scratch (a thread of the team may run  */   \
        /* more than one part) */                                                              \
        uint32_t *more_i = scratch_get(2, (size_t)(threads - 1) * ccap * sizeof *more_i);     \
        KT *more_k = scratch_get(3, (size_t)(threads - 1) * ccap * sizeof *more_k);           \
        if (!more_i || !more_k) return UINT64_MAX;                                            \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1)")                  \
        for (int t = 0; t < threads; t++) {                                                   \
            uint64_t lo, hi;                                                                  \
            threads_split(n / 8, threads, t, &lo, &hi);                                       \
            lo *= 8;                                                                          \
            hi = t == threads - 1 ? n : hi * 8;                                               \
            pi[t] = t ? more_i + (size_t)(t - 1) * ccap : ci;                                 \
            pk[t] = t ? more_k + (size_t)(t - 1) * ccap : ck;                                 \
            count[t] = collect_##SUFFIX##_dispatch(x + lo, hi - lo, tlo, pi[t], pk[t], ccap, &bad[t], &mx[t]); \
        }                                                                                     \
        uint64_t c = 0;                                                                       \
        *bad_out = 0;                                                                         \
        *kmax = 0;                                                                            \
        for (int t = 0; t < threads; t++) {                                                   \
            *bad_out |= bad[t];                                                               \
            *kmax = mx[t] > *kmax ? mx[t] : *kmax;                                            \
            start[t] = c; /* part t's first slot in ci and ck */                              \
            c += count[t];                                                                    \
        }                                                                                     \
        /* the parts after the first, appended at their slots: each cut into `threads` */     \
        /* pieces, so that even two threads copy in parallel */                               \
        if (c <= ccap) {                                                                      \
            _Pragma("omp parallel for num_threads(threads) schedule(static)")                 \
            for (int w = 0; w < (threads - 1) * threads; w++) {                               \
                int t = 1 + w / threads;                                                      \
                uint64_t lo, hi, jlo, jhi;                                                    \
                threads_split(n / 8, threads, t, &lo, &hi);                                   \
                threads_split(count[t], threads, w % threads, &jlo, &jhi);                    \
                for (uint64_t j = jlo; j < jhi; j++) ci[start[t] + j] = pi[t][j] + (uint32_t)(lo * 8); \
                memcpy(ck + start[t] + jlo, pk[t] + jlo, (jhi - jlo) * sizeof(KT));           \
            }                                                                                 \
        }                                                                                     \
        return c;                                                                             \
    }

TOPK_DEFINE_COLLECT_THREADED(f32, float, uint32_t)
TOPK_DEFINE_COLLECT_THREADED(f64, double, uint64_t)

TOPK_DEFINE_CANDIDATES(f32, float, uint32_t, u32, UINT32_C(0x7fffffff), 32)
TOPK_DEFINE_CANDIDATES(f64, double, uint64_t, u64, UINT64_C(0x7fffffffffffffff), 64)

int scaleml_topk_encode(const void *x, int value_bytes, uint64_t n, uint64_t k, int approximate,
                        uint64_t sample, uint64_t key, uint8_t *out, size_t cap, size_t *written,
                        void *residual)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (n > (UINT64_C(1) << 32))
        return scaleml_fail(SCALEML_ERR_ARG, "TopK: n = %llu exceeds the uint32 index range", (unsigned long long)n);
    if (k > n) return scaleml_fail(SCALEML_ERR_ARG, "TopK: k = %llu > n = %llu", (unsigned long long)k,
                              (unsigned long long)n);
    if (approximate && sample < 1) return scaleml_fail(SCALEML_ERR_ARG, "TopK: sample size must be >= 1");
    uint64_t count = 0, take_eq = 0;
    uint32_t t32 = 0;
    uint64_t t64 = 0;
    int rc = SCALEML_OK;
    if (k > 0) {
        int c = value_bytes == 4 ? candidates_f32(x, n, k, approximate, sample, key, out, cap, written, residual)
                                 : candidates_f64(x, n, k, approximate, sample, key, out, cap, written, residual);
        if (c == 1) return SCALEML_OK;
        if (c == -SCALEML_ERR_TOO_LARGE)
            return scaleml_fail(SCALEML_ERR_TOO_LARGE, "TopK: output capacity %zu < %zu bytes", cap, *written);
        if (c == -SCALEML_ERR_NOMEM) return scaleml_fail(SCALEML_ERR_NOMEM, "TopK: out of memory");
        if (c == -SCALEML_ERR_ARG) return scaleml_fail(SCALEML_ERR_ARG, "TopK: non-finite value (NaN or Inf) in the input");
        rc = value_bytes == 4 ? threshold_f32(x, n, k, approximate, sample, key, &t32, &take_eq, &count)
                              : threshold_f64(x, n, k, approximate, sample, key, &t64, &take_eq, &count);
    } else {
        /* nothing sent: every entry stays in the residual (still reject NaN/Inf) */
        for (uint64_t i = 0; i < n && rc == SCALEML_OK; i++) {
            int bad = value_bytes == 4 ? arith_topk_bad32(key_f32(((const float *)x)[i]))
                                       : arith_topk_bad64(key_f64(((const double *)x)[i]));
            if (bad) rc = SCALEML_ERR_ARG;
        }
        t32 = UINT32_MAX; t64 = UINT64_MAX;
    }
    if (rc == SCALEML_ERR_NOMEM) return scaleml_fail(rc, "TopK: out of memory");
    if (rc == SCALEML_ERR_ARG) return scaleml_fail(rc, "TopK: non-finite value (NaN or Inf) in the input");
    size_t need = scaleml_topk_bytes(count, value_bytes);
    *written = need;
    if (cap < need) return scaleml_fail(SCALEML_ERR_TOO_LARGE, "TopK: output capacity %zu < %zu bytes", cap, need);
    memcpy(out, &count, 8);
    uint32_t *idx = (uint32_t *)(void *)(out + 8);
    memset(out + 8 + count * 4, 0, pad8(count * 4) - count * 4);
    void *val = out + 8 + pad8(count * 4);
    if (k == 0) {
        if (residual && residual != x && n) memcpy(residual, x, n * (size_t)value_bytes);
        return SCALEML_OK;
    }
    if (value_bytes == 4) emit_threaded_f32(x, n, t32, take_eq, idx, val, residual);
    else emit_threaded_f64(x, n, t64, take_eq, idx, val, residual);
    return SCALEML_OK;
}

int scaleml_topk_layout(const uint8_t *buf, size_t bytes, uint64_t n, int value_bytes,
                        uint64_t *count, size_t *index_offset, size_t *value_offset)
{
    if (value_bytes != 4 && value_bytes != 8)
        return scaleml_fail(SCALEML_ERR_ARG, "value_bytes must be 4 or 8, got %d", value_bytes);
    if (n > (UINT64_C(1) << 32))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload for n = %llu > 2^32 (indices are uint32)",
                            (unsigned long long)n);
    if (bytes < 8) return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload truncated (%zu bytes)", bytes);
    uint64_t c;
    memcpy(&c, buf, 8);
    if (!arith_topk_count_ok(c, bytes, n, value_bytes))
        return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload: count %llu does not match %zu bytes (n = %llu)",
                       (unsigned long long)c, bytes, (unsigned long long)n);
    const uint8_t *ip = buf + 8;
    uint64_t prev = 0;
    for (uint64_t i = 0; i < c; i++) {
        uint32_t v;
        memcpy(&v, ip + 4 * i, 4);
        if (!arith_sparse_index_ok(i, prev, v, n))
            return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload: index %u at %llu out of range or order", v,
                           (unsigned long long)i);
        prev = v;
    }
    const uint8_t *vp = buf + 8 + pad8(c * 4);
    for (uint64_t i = 0; i < c; i++) {
        double v;
        if (value_bytes == 4) { float f; memcpy(&f, vp + 4 * i, 4); v = f; }
        else memcpy(&v, vp + 8 * i, 8);
        if (!isfinite(v)) return scaleml_fail(SCALEML_ERR_MALFORMED, "TopK payload: non-finite value");
    }
    *count = c;
    *index_offset = 8;
    *value_offset = 8 + pad8(c * 4);
    return SCALEML_OK;
}

int scaleml_topk_decode(const uint8_t *buf, size_t bytes, uint64_t n, void *out, int value_bytes)
{
    uint64_t c;
    size_t io, vo;
    int rc = scaleml_topk_layout(buf, bytes, n, value_bytes, &c, &io, &vo);
    if (rc) return rc;
    if (n) memset(out, 0, n * (size_t)value_bytes);
    for (uint64_t i = 0; i < c; i++) {
        uint32_t j;
        memcpy(&j, buf + io + 4 * i, 4);
        memcpy((uint8_t *)out + (size_t)j * value_bytes, buf + vo + (size_t)i * value_bytes, value_bytes);
    }
    return SCALEML_OK;
}

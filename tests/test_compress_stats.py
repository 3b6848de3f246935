"""Statistical properties of the compressors, with tolerances derived from the bounds.

Fixed seeds make every test deterministic; the tolerances are what the theory
allows at a stated number of standard errors, so a correct implementation
passes with overwhelming probability for any seed and a wrong one (e.g. QSGD
rounding up with probability 1 - p) fails by a wide margin.

Many independent draws of one bucket are made in a single call: the vector is
tiled N times with the bucket size equal to its length, and every position of
the long vector has its own counter-based random number.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from scaleml import compress as C

Z = 5.0  # standard errors allowed; P(|N(0,1)| > 5) = 5.7e-7 per check


def draws(q: C.QSGD, v: np.ndarray, n_draws: int) -> np.ndarray:
    """n_draws independent quantizations of v (one bucket each), shape (n_draws, d)."""
    assert q.bucket == v.size
    x = np.tile(v, n_draws)
    return q.decode(q.encode(x)).astype(np.float64).reshape(n_draws, v.size)


def skewed_vector(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d) * rng.exponential(1.0, d)  # heavy-ish tails, mixed signs
    v[rng.random(d) < 0.1] = 0.0
    return v


CASES = [(1, 16), (2, 64), (3, 100), (4, 512), (8, 256)]  # (bits, d): s = 1, 3, 7, 15, 255


@pytest.mark.parametrize("bits,d", CASES)
@pytest.mark.parametrize("norm", ["l2", "max"])
def test_qsgd_unbiased(bits, d, norm):
    v = skewed_vector(d, seed=bits * 1000 + d)
    q = C.QSGD(bits=bits, bucket=d, norm=norm, seed=42)
    s = q.s
    N = 4000
    Q = draws(q, v, N)
    scale = np.linalg.norm(v) if norm == "l2" else np.abs(v).max()
    # Q(v_i) takes the two values scale*l/s and scale*(l+1)/s (sign aside), so its
    # variance is (scale/s)^2 p(1-p) <= (scale/s)^2 / 4: the mean of N draws has
    # standard error <= scale / (2 s sqrt(N)). Z of those, plus float32 rounding of the
    # stored norm (relative 2^-23), bound |mean - v_i| for every coordinate.
    tol = Z * scale / (2 * s * math.sqrt(N)) + 1e-6 * scale
    err = np.abs(Q.mean(axis=0) - v)
    assert err.max() <= tol, (err.max(), tol)
    # Sanity of the test itself: the biased variant (round up with probability 1 - p)
    # is caught: its bias at coordinate i is (scale/s)|1 - 2p_i|.
    r = s * np.abs(v) / scale
    p = r - np.floor(r)
    biased = (scale / s) * np.abs(1 - 2 * p)
    if s < 255:
        assert biased.max() > 3 * tol


@pytest.mark.parametrize("bits,d", CASES)
def test_qsgd_variance_bound(bits, d):
    v = skewed_vector(d, seed=7 + bits + d)
    q = C.QSGD(bits=bits, bucket=d, norm="l2", seed=9)
    s = q.s
    norm2 = float(v @ v)
    bound = min(d / s**2, math.sqrt(d) / s) * norm2
    # Exact expectation: sum_i (||v||/s)^2 p_i (1 - p_i) (Lemma 3.1 says <= bound).
    nrm = math.sqrt(norm2)
    r = s * np.abs(v) / nrm
    p = r - np.floor(r)
    exact = float(np.sum((nrm / s) ** 2 * p * (1 - p)))
    assert exact <= bound
    N = 3000
    Q = draws(q, v, N)
    err2 = np.sum((Q - v) ** 2, axis=1)  # N i.i.d. draws of ||Q(v) - v||^2
    se = err2.std(ddof=1) / math.sqrt(N)
    # The sample mean is within Z standard errors of its expectation, which is <= bound.
    assert err2.mean() <= bound + Z * se + 1e-5 * norm2
    assert abs(err2.mean() - exact) <= Z * se + 1e-5 * norm2


@pytest.mark.parametrize("bits,d", [(1, 64), (1, 1024), (2, 256), (3, 4096)])
def test_qsgd_expected_nonzeros(bits, d):
    rng = np.random.default_rng(d + bits)
    v = rng.standard_normal(d)
    q = C.QSGD(bits=bits, bucket=d, norm="l2", seed=3)
    s = q.s
    N = 1000
    nnz = np.count_nonzero(draws(q, v, N), axis=1)
    bound = s * (s + math.sqrt(d))
    se = nnz.std(ddof=1) / math.sqrt(N)
    assert nnz.mean() <= bound + Z * se
    # exact E[nnz] = sum_i min(1, s|v_i|/||v||): P(level > 0) = r_i when r_i < 1, else 1
    r = s * np.abs(v) / np.linalg.norm(v)
    assert abs(nnz.mean() - np.minimum(r, 1).sum()) <= Z * se + 0.01


@pytest.mark.parametrize("bits,d", [(1, 512), (2, 1024), (2, 4096)])
def test_qsgd_elias_bits_within_theorem(bits, d):
    """Achieved Elias-coded size vs the bound of Theorem 3.2 (o(1) term dropped)."""
    rng = np.random.default_rng(bits + d)
    N = 200
    x = rng.standard_normal(N * d)
    q = C.QSGD(bits=bits, bucket=d, format="elias", seed=1)
    c = q.encode(x)
    s = q.s
    per_bucket = 8 * c.payload.size / N
    z = s * (s + math.sqrt(d))
    theory = (3 + 1.5 * math.log2(2 * (s * s + d) / z)) * z + 32
    assert per_bucket <= theory
    # and it is far below the dense fixed format
    assert per_bucket < (bits + 1) * d + 32


def test_onebit_error_feedback_average_converges():
    """With error feedback the running average of what 1-bit sends converges to the gradient.

    sum_t sent_t = T g - r_T exactly, so the average error is r_T / T; the residual
    saturates (it is bounded, not growing with T), so the average error falls like 1/T.
    Without error feedback the error would stay at ||C(g) - g|| forever.
    """
    rng = np.random.default_rng(0)
    g = rng.standard_normal(2000)
    ef = C.ErrorFeedback(C.OneBit(bucket=100))
    sent = np.zeros_like(g)
    errs, res = {}, {}
    for t in range(1, 801):
        sent += C.decode(ef.compress("g", g))
        if t in (100, 200, 400, 800):
            errs[t] = np.linalg.norm(sent / t - g)
            res[t] = np.linalg.norm(ef.residual("g"))
    np.testing.assert_allclose(errs[800], res[800] / 800, rtol=1e-6)
    assert res[800] <= 1.5 * res[200]  # bounded residual
    assert errs[800] <= 0.35 * errs[200]  # ~1/T decay (exact 1/T would give 0.25)
    one_shot = np.linalg.norm(C.OneBit(bucket=100).decode(C.OneBit(bucket=100).encode(g)) - g)
    assert errs[800] < 0.05 * one_shot


@pytest.mark.parametrize("pi", [4.0, 16.0, 64.0])
def test_adaptive_sends_requested_proportion(pi):
    rng = np.random.default_rng(int(pi))
    m = rng.standard_normal((1000, 300)).astype(np.float32) * rng.exponential(1.0, 300).astype(np.float32)
    sample = 4096
    a = C.AdaptiveQuant(pi=pi, sample=sample, seed=5)
    c = a.encode(m)
    y = a.decode(c)
    sent = np.count_nonzero(y) / m.size
    # The cut is the ks = ceil(m/pi)-th largest of m sampled magnitudes: the fraction
    # of the matrix above it is ~ Beta(ks, m - ks + 1), mean ks/(m+1), sd
    # sqrt(p(1-p)/m). tau+/tau- are the nearest sampled values of each sign at or
    # beyond the cut, which moves the fraction by O(1/m) more.
    p = 1 / pi
    tol = Z * math.sqrt(p * (1 - p) / sample) + 3 / sample
    assert abs(sent - p) <= tol, (sent, p, tol)
    # the sent set is exactly {x >= tau+} U {x <= tau-}
    tp, tn = a.last_thresholds
    np.testing.assert_array_equal(y != 0, (m >= tp) | (m <= tn))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adaptive_reconstruction_is_column_mean_of_sent(dtype):
    rng = np.random.default_rng(1)
    m = (rng.standard_normal((500, 40)) + rng.standard_normal(40) * 0.5).astype(dtype)
    a = C.AdaptiveQuant(pi=8, sample=2048, seed=2)
    c, res = a.encode_with_residual(m)
    y = a.decode(c)
    off, rec = a.column_table(c)
    tp, tn = a.last_thresholds
    for j in range(m.shape[1]):
        pos = m[:, j] >= tp
        neg = m[:, j] <= tn
        assert off[j + 1] - off[j] == pos.sum() + neg.sum()
        if pos.any():
            assert rec[j, 0] == np.float32(m[pos, j].astype(np.float64).mean())
            np.testing.assert_array_equal(y[pos, j], dtype(rec[j, 0]))
        else:
            assert rec[j, 0] == np.float32(tp)
        if neg.any():
            assert rec[j, 1] == np.float32(m[neg, j].astype(np.float64).mean())
            np.testing.assert_array_equal(y[neg, j], dtype(rec[j, 1]))
    # residual: value - reconstruction where sent, value where not
    np.testing.assert_array_equal(res, m - y)


def brute_force_levels(x: np.ndarray, s: int) -> float:
    """Least rounding variance over all s-level sets drawn from the distinct values of x."""
    u = np.unique(x)
    best = math.inf
    for mid in itertools.combinations(u[1:-1], s - 2):
        lv = np.array((u[0],) + mid + (u[-1],))
        best = min(best, C.ZipML(lv).variance(x))
    return best


def test_zipml_dp_is_optimal_on_small_samples():
    rng = np.random.default_rng(0)
    for _trial in range(5):
        x = rng.lognormal(0, 1, 14)
        for s in (3, 4, 5):
            z = C.ZipML.fit(x, s)
            assert z.levels.size == s and z.levels[0] == x.min() and z.levels[-1] == x.max()
            assert z.variance(x) <= brute_force_levels(x, s) * (1 + 1e-9) + 1e-12


def test_zipml_levels_beat_uniform_on_skewed_sample():
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 1.0, 20000)  # skewed: most mass near the low end
    s = 8
    opt = C.ZipML.fit(x, s, seed=1)
    uni = C.ZipML.uniform(x.min(), x.max(), s, seed=1)
    v_opt, v_uni = opt.variance(x), uni.variance(x)
    assert v_opt < 0.5 * v_uni  # exact expected squared errors
    # Empirically too: the squared error of one rounding of the whole sample is a sum
    # of 20000 independent terms, so its sd is sqrt(sum Var_i) <= sqrt(sum E_i * range^2).
    e_opt = np.sum((opt.decode(opt.encode(x)) - x) ** 2)
    e_uni = np.sum((uni.decode(uni.encode(x)) - x) ** 2)
    assert e_opt < e_uni
    # rounding with any level set is unbiased: mean of N draws within Z standard errors
    N = 400
    tiled = np.tile(x[:50], N)
    Qs = opt.decode(opt.encode(tiled)).reshape(N, 50)
    lv = opt.levels
    j = np.clip(np.searchsorted(lv, x[:50], side="right") - 1, 0, lv.size - 2)
    sd = np.sqrt((x[:50] - lv[j]) * (lv[j + 1] - x[:50]))
    assert np.all(np.abs(Qs.mean(axis=0) - x[:50]) <= Z * sd / math.sqrt(N) + 1e-12)


def test_double_sampling_unbiased_single_sampling_biased():
    rng = np.random.default_rng(2)
    m, d = 40, 4
    A = rng.random((m, d))
    xw = rng.standard_normal(d)
    b = A @ xw + 0.1 * rng.standard_normal(m)
    x = np.ones(d)  # evaluate the gradient away from the optimum
    true = A.T @ (A @ x - b) / m
    zq = C.ZipML.uniform(0.0, 1.0, 3, seed=4)  # coarse levels 0, 0.5, 1: large variance
    N = 3000
    dbl = np.array([C.double_sampling_gradient(A, b, x, zq) for _ in range(N)])
    sgl = np.array([C.double_sampling_gradient(A, b, x, zq, double=False) for _ in range(N)])
    se_d = dbl.std(axis=0, ddof=1) / math.sqrt(N)
    se_s = sgl.std(axis=0, ddof=1) / math.sqrt(N)
    # double sampling: E[Q1 (Q2^T x - b)] = a (a^T x - b) -> within Z standard errors
    assert np.all(np.abs(dbl.mean(axis=0) - true) <= Z * se_d)
    # single sampling: E[Q Q^T] = a a^T + diag(Var Q(a)), so the bias is
    # mean_r diag(Var Q(a_r)) x, with Var Q(a_ri) = (a_ri - lo)(hi - a_ri).
    lv = zq.levels
    j = np.clip(np.searchsorted(lv, A, side="right") - 1, 0, lv.size - 2)
    var = (A - lv[j]) * (lv[j + 1] - A)
    bias = var.mean(axis=0) * x
    z_single = np.abs(sgl.mean(axis=0) - true) / se_s
    assert z_single.max() > 10  # the bias is statistically significant ...
    assert np.all(np.abs(sgl.mean(axis=0) - true - bias) <= Z * se_s)  # ... and the predicted one


def test_zipml_float32_path_unbiased():
    """float32 input is rounded in float against the float32 levels (the values a
    float32 decode returns): the mean of N draws is within Z standard errors."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(0, 1, 64).astype(np.float32)
    z = C.ZipML.fit(x.astype(np.float64), 6, seed=2)
    N = 2000
    Q = z.decode(z.encode(np.tile(x, N))).astype(np.float64).reshape(N, x.size)
    lv = z.levels.astype(np.float32).astype(np.float64)
    xv = x.astype(np.float64)
    j = np.clip(np.searchsorted(lv, xv, side="right") - 1, 0, lv.size - 2)
    sd = np.sqrt(np.maximum((xv - lv[j]) * (lv[j + 1] - xv), 0))
    # 24-bit uniforms: probability exact up to 2^-24 -> bias <= 2^-24 * gap
    tol = Z * sd / math.sqrt(N) + 2.0**-24 * (lv[j + 1] - lv[j]) + 1e-7 * np.abs(xv)
    assert np.all(np.abs(Q.mean(axis=0) - xv) <= tol)
    assert set(np.unique(Q)) <= set(lv)

"""ZipML least squares on one process: the stored layout, and the bias of the gradient estimators.

The estimator test averages each estimator's full gradient over N independent
quantizations of the same rows (seeds 0..N-1). For an unbiased estimator each
coordinate's mean is within 4.5 standard errors (sample standard deviation /
sqrt(N)) of the exact gradient A^T (A x - b)/m (normal approximation: a false
failure has probability about 1e-5 per coordinate). Naive rounding is biased
by exactly (1/m) sum_r diag(v(a_r)) x, v the rounding variances: its mean is
within 4.5 standard errors of that, and more than 10 away from the exact one.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.zipml_linear import (
    QuantizedMatrix,
    _gather,
    _pack,
    least_squares_gradient,
    quantize_matrix,
)

SELF = MPI.COMM_SELF


@pytest.mark.parametrize("w", range(9))
def test_bit_streams_round_trip(w):
    rng = np.random.default_rng(w)
    v = rng.integers(0, 1 << w, 1001)
    stream = _pack(v, w)
    assert stream.size == (1001 * w + 7) // 8 + 1
    pos = rng.permutation(1001)
    np.testing.assert_array_equal(_gather(stream, pos, w), v[pos])


@pytest.mark.parametrize("scope", ["column", "global"])
@pytest.mark.parametrize("samples", [1, 2])
def test_stored_samples_are_the_ends_of_each_values_interval(scope, samples):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((300, 5)) * [1, 2, 3, 4, 5]
    qm = quantize_matrix(A, 2, levels="optimal", scope=scope, samples=samples, seed=3, comm=SELF)
    assert qm.levels.shape == ((5 if scope == "column" else 1), 4)
    assert qm.bits_per_value == (2 if samples == 1 else 2 + 2)
    for k in range(samples):
        q = qm.dequantize(k)
        for j in range(5):
            lv = qm.levels[j if scope == "column" else 0]
            i = np.clip(np.searchsorted(lv, A[:, j], side="right") - 1, 0, lv.size - 2)
            assert np.all((q[:, j] == lv[i]) | (q[:, j] == lv[i + 1]))
    again = quantize_matrix(A, 2, levels=qm.levels, scope=scope, samples=samples, seed=3, comm=SELF)
    np.testing.assert_array_equal(again.dequantize(0), qm.dequantize(0))  # reproducible from the seed
    with pytest.raises(ValueError, match="cover"):
        quantize_matrix(A * 2, 2, levels=qm.levels, scope=scope, comm=SELF)


def test_estimators_reject_the_wrong_data():
    A = np.ones((4, 2)) + np.arange(8).reshape(4, 2)
    one = quantize_matrix(A, 2, samples=1, comm=SELF)
    with pytest.raises(ValueError, match="samples=2"):
        least_squares_gradient(one, np.zeros(4), np.zeros(2), "double")
    with pytest.raises(TypeError):
        least_squares_gradient(A, np.zeros(4), np.zeros(2), "naive")
    with pytest.raises(TypeError):
        least_squares_gradient(one, np.zeros(4), np.zeros(2), "full")


def test_double_sampling_is_unbiased_and_naive_rounding_is_biased_by_the_rounding_variance():
    rng = np.random.default_rng(0)
    m, d, N = 40, 4, 1500
    A = rng.standard_normal((m, d)) * [0.5, 1, 1.5, 2]
    b = A @ rng.standard_normal(d) + 0.1 * rng.standard_normal(m)
    x = rng.standard_normal(d)
    exact = least_squares_gradient(A, b, x, "full")
    np.testing.assert_allclose(exact, A.T @ (A @ x - b) / m)
    table = quantize_matrix(A, 2, comm=SELF).levels
    draws: dict[str, list[np.ndarray]] = {"double": [], "symmetric": [], "naive": []}
    for seed in range(N):
        qm: QuantizedMatrix = quantize_matrix(A, 2, levels=table, seed=seed, comm=SELF)
        draws["double"].append(least_squares_gradient(qm, b, x, "double"))
        draws["symmetric"].append(least_squares_gradient(qm, b, x, "double", symmetric=True))
        draws["naive"].append(least_squares_gradient(qm, b, x, "naive"))
    bias = qm.rounding_variance(A).sum(axis=0) * x / m
    for name, g in draws.items():
        g = np.array(g)
        se = g.std(axis=0, ddof=1) / np.sqrt(N)
        target = exact + bias if name == "naive" else exact
        z = np.abs(g.mean(axis=0) - target) / se
        assert np.all(z <= 4.5), f"{name}: mean off by {z} standard errors"
        if name == "naive":
            assert np.max(np.abs(g.mean(axis=0) - exact) / se) > 10

"""ZipML least squares on stored low-precision data, data-parallel (run on every rank under mpiexec).

Tolerances (fixed before the runs they check):

* sigma_E = root mean square distance of estimator E's exact stationary point
  from its mean over 8 independent re-quantizations of the same data: how far
  the particular stored samples move the solution, bias excluded. It shrinks
  like 1/sqrt(rows) for both estimators; naive rounding's bias does not.
* d_full = distance of full-precision SGD (same steps, batches, step size)
  from np.linalg.lstsq: the optimization error of the schedule.
* Double sampling reaches lstsq: ||x_double - x_ls|| <= 3 (sigma_double + d_full),
  and the mean of its stationary points is within 3 sigma_double / sqrt(8) of x_ls.
* Naive rounding is biased: ||x_naive - x_ls|| > 4 ||x_double - x_ls||, more
  than half the predicted bias ||x_expected - x_ls|| (x_expected solves
  (X^T X + D) x = X^T b, D the summed rounding variances), and
  ||x_naive - x_expected|| <= 3 (sigma_naive + d_full).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.compress import QSGD
from scaleml.zipml_linear import (
    compare_estimators,
    quantize_matrix,
    sgd_least_squares,
    synthetic_regression,
)

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
ROWS, DIM, BATCH, EPOCHS = 16384, 8, 128, 10


def same_everywhere(x: np.ndarray) -> bool:
    return len(set(world.allgather(hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()))) == 1


@pytest.fixture(scope="module")
def problem():
    return synthetic_regression(ROWS, DIM, seed=7, comm=world)


def test_full_precision_sgd_is_the_serial_run_and_identical_everywhere(problem):
    X, b, _ = problem
    par = sgd_least_squares(X, b, "full", comm=world, epochs=2, batch=BATCH, lr=0.01, seed=3)
    Xall, ball, _ = synthetic_regression(ROWS, DIM, seed=7, comm=MPI.COMM_SELF)
    ser = sgd_least_squares(Xall, ball, "full", comm=MPI.COMM_SELF, epochs=2, batch=BATCH, lr=0.01, seed=3)
    assert same_everywhere(par.x) and same_everywhere(par.x_last)
    assert par.steps == ser.steps == 2 * (ROWS // BATCH)
    np.testing.assert_allclose(par.x_last, ser.x_last, rtol=1e-10, atol=1e-12)


def test_stored_matrix_is_compact_and_brackets_the_data(problem):
    X, _, _ = problem
    qm = quantize_matrix(X, 3, levels="optimal", samples=2, comm=world, seed=1)
    m = X.shape[0]
    assert qm.levels.shape == (DIM, 8) and same_everywhere(qm.levels)
    assert qm.bits_per_value == 3 + 2  # 7 intervals in 3 bits, one round-up bit per sample
    assert qm.nbytes == (m * DIM * 3 + 7) // 8 + 1 + (m * DIM * 2 + 7) // 8 + 1 + DIM * 8 * 8
    q1, q2 = qm.dequantize(0), qm.dequantize(1)
    for j in range(DIM):  # both samples are the two ends of the value's level interval
        lv = qm.levels[j]
        k = np.clip(np.searchsorted(lv, X[:, j], side="right") - 1, 0, lv.size - 2)
        for q in (q1[:, j], q2[:, j]):
            assert np.all((q == lv[k]) | (q == lv[k + 1]))
    assert 0 < np.mean(q1 != q2) < 1  # independent roundings
    single = quantize_matrix(X, 3, levels="optimal", samples=1, comm=world, seed=1)
    assert single.bits_per_value == 3 and single.nbytes == (m * DIM * 3 + 7) // 8 + 1 + DIM * 8 * 8
    rows = np.arange(0, m, 5)
    np.testing.assert_array_equal(single.rows(rows), single.dequantize()[rows])


@pytest.mark.parametrize("bits,levels", [(2, "uniform"), (3, "optimal")])
def test_double_sampling_reaches_least_squares_and_naive_rounding_does_not(problem, bits, levels):
    X, b, _ = problem
    r = compare_estimators(X, b, bits=bits, levels=levels, comm=world, epochs=EPOCHS, batch=BATCH, seed=11)
    for run in r.runs.values():
        assert same_everywhere(run.x)
    d_full = r.runs["full"].distance
    d_double, d_naive = r.runs["double"].distance, r.runs["naive"].distance
    s_double, s_naive = r.stationary_std["double"], r.stationary_std["naive"]
    predicted_bias = float(np.linalg.norm(r.naive_expected - r.x_ls))
    summary = (f"bits={bits} {levels}: full {d_full:.2e} naive {d_naive:.4f} double {d_double:.4f} "
               f"sigma_double {s_double:.4f} sigma_naive {s_naive:.4f} predicted bias {predicted_bias:.4f}")
    if rank == 0:
        print(summary)
    assert d_double <= 3 * (s_double + d_full), summary
    assert np.linalg.norm(r.stationary_mean["double"] - r.x_ls) <= 3 * s_double / np.sqrt(8), summary
    assert d_naive > 4 * d_double and d_naive > 0.5 * predicted_bias, summary
    assert np.linalg.norm(r.runs["naive"].x - r.naive_expected) <= 3 * (s_naive + d_full), summary
    assert r.runs["double"].loss < r.runs["naive"].loss
    assert r.stored_bytes < r.full_bytes / 8


def test_gradients_through_quantized_allreduce_stay_identical_and_converge(problem):
    X, b, _ = problem
    q = QSGD(bits=8, bucket=DIM)
    res = sgd_least_squares(X, b, "full", comm=world, epochs=2, batch=BATCH, seed=5, compression=q)
    exact = sgd_least_squares(X, b, "full", comm=world, epochs=2, batch=BATCH, seed=5)
    assert same_everywhere(res.x) and (size == 1 or not np.array_equal(res.x, exact.x))
    # 8-bit QSGD with buckets of DIM values perturbs each gradient sum by an unbiased error of relative
    # standard deviation at most sqrt(min(DIM/255^2, sqrt(DIM)/255)) ~ 1.1%: the averaged iterate moves by less
    assert np.linalg.norm(res.x - exact.x) <= 0.011 * np.linalg.norm(exact.x)

"""scaleml.topk_allreduce on every rank: the sum of every rank's top k, error feedback, errors on every rank."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from helpers import assert_close_to_sum
from mpi4py import MPI

import scaleml
from scaleml.compress import QSGD, ErrorFeedback, TopK
from scaleml.cost_model import ALGORITHMS

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def gradient(shape, dtype, step=0, seed=5):
    """This rank's gradient at ``step``: continuous values, so magnitudes do not tie."""
    return np.random.default_rng([seed, rank, step]).standard_normal(shape).astype(dtype)


def numpy_top_k(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted indices, values) of the k largest |y| (ties to the lower index), computed without ScaleML."""
    flat = y.reshape(-1)
    idx = np.sort(np.argsort(-np.abs(flat), kind="stable")[:k])
    return idx, flat[idx]


def reference_sum(idx, vals, n):
    """Exact float64 sum over ranks of the selections, and the sum of their magnitudes."""
    total, total_abs = np.zeros(n), np.zeros(n)
    for i, v in comm.allgather((idx, vals)):
        np.add.at(total, i, v.astype(np.float64))
        np.add.at(total_abs, i, np.abs(v.astype(np.float64)))
    return total, total_abs


def same_bytes_everywhere(a: np.ndarray) -> bool:
    gathered = comm.allgather(a.tobytes())
    return all(g == gathered[0] for g in gathered)


# shapes: empty, one element, fewer elements than ranks (at P > 2), a matrix, a vector, a 0-d array
CASES = [((0,), 0), ((3, 0), 0), ((1,), 1), ((1,), 0), ((2,), 1), ((), 1), ((7, 13), 9), ((1009,), 37),
         ((50, 40), 20)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", CASES)
def test_sum_of_every_ranks_top_k(shape, k, dtype):
    g = gradient(shape, dtype)
    got, info = scaleml.topk_allreduce(g, comm, k=k, return_info=True)
    assert got.shape == g.shape and got.dtype == g.dtype
    idx, vals = numpy_top_k(g, k)
    exact, exact_abs = reference_sum(idx, vals, g.size)
    assert_close_to_sum(got.reshape(-1), exact, exact_abs, size)
    assert info.nnz_max == k and info.nnz_sum == k * size
    assert same_bytes_everywhere(got)


def test_ratio_gives_ceil_of_ratio_times_n():
    g = gradient((1000,), np.float32)
    got, info = scaleml.topk_allreduce(g, comm, ratio=0.0125, return_info=True)
    assert info.nnz_max == 13  # ceil(12.5)
    exact, exact_abs = reference_sum(*numpy_top_k(g, 13), g.size)
    assert_close_to_sum(got, exact, exact_abs, size)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_gives_the_same_sum(algorithm):
    g = gradient((600,), np.float64, seed=8)
    got, info = scaleml.topk_allreduce(g, comm, k=25, algorithm=algorithm, return_info=True)
    assert info.algorithm == algorithm
    exact, exact_abs = reference_sum(*numpy_top_k(g, 25), g.size)
    assert_close_to_sum(got, exact, exact_abs, size)


def test_average_is_the_sum_divided_by_the_rank_count():
    g = gradient((300,), np.float32)
    total = scaleml.topk_allreduce(g, comm, k=10)
    mean = scaleml.topk_allreduce(g, comm, k=10, average=True)
    assert mean.dtype == np.float32
    np.testing.assert_array_equal(mean, total / np.float32(size))


def test_non_contiguous_input_is_copied():
    base = gradient((40, 30), np.float64)
    strided = base[:, ::3]
    assert not strided.flags.c_contiguous
    got = scaleml.topk_allreduce(strided, comm, k=7)
    np.testing.assert_array_equal(got, scaleml.topk_allreduce(np.ascontiguousarray(strided), comm, k=7))
    assert got.shape == strided.shape


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("approximate", [False, True])
def test_error_feedback_conserves_mass(dtype, tol, approximate):
    """sum over steps of the results + sum over ranks of the final residuals == sum of every gradient."""
    shape, steps = (30, 40), 6
    ef = ErrorFeedback(TopK(ratio=0.02, approximate=approximate, sample=200, seed=3))
    applied = np.zeros(shape)
    my_grads = np.zeros(shape)
    for t in range(steps):
        g = gradient(shape, dtype, step=t)
        my_grads += g
        before = ef.residual("w")
        y = g + before if before is not None else g
        got = scaleml.topk_allreduce(g, comm, error_feedback=ef, name="w")
        assert got.dtype == dtype and same_bytes_everywhere(got)
        applied += got
        sent = y - ef.residual("w")  # what this rank sent: y with the unsent entries zeroed
        n_sent = np.count_nonzero(sent)
        if approximate:
            assert 0 < n_sent < y.size // 4  # about ratio * n = 24 of 1200
        else:
            assert n_sent == 24
            np.testing.assert_array_equal(np.flatnonzero(sent), numpy_top_k(y, 24)[0])
        # a threshold selection: every sent magnitude is at least every kept one
        kept = ef.residual("w")[sent == 0]
        assert np.abs(sent[sent != 0]).min() >= np.abs(kept).max()
        exact, exact_abs = reference_sum(np.flatnonzero(sent), sent[sent != 0], y.size)
        assert_close_to_sum(got.reshape(-1), exact, exact_abs, size)
    assert ef.compressor.step == steps
    all_grads = comm.allreduce(my_grads)
    all_residuals = comm.allreduce(ef.residual("w").astype(np.float64))
    scale = np.abs(all_grads).max()
    np.testing.assert_allclose(applied + all_residuals, all_grads, rtol=0, atol=tol * scale * steps)


def test_k_zero_sends_nothing_and_keeps_everything():
    ef = ErrorFeedback(TopK(k=0))
    g = gradient((17,), np.float64)
    got = scaleml.topk_allreduce(g, comm, error_feedback=ef)
    np.testing.assert_array_equal(got, np.zeros(17))
    np.testing.assert_array_equal(ef.residual("grad"), g)


def test_save_and_load_resume_identically():
    shape = (25, 20)

    def steps(ef, ts):
        # a forced algorithm: auto's choice follows measured times, and another algorithm sums in another order
        return [scaleml.topk_allreduce(gradient(shape, np.float32, step=t), comm, error_feedback=ef, name="fc",
                                       algorithm="split_allgather") for t in ts]

    def make():
        return ErrorFeedback(TopK(ratio=0.05, approximate=True, sample=64, seed=11))

    full = steps(make(), range(6))
    ef = make()
    steps(ef, range(3))
    with tempfile.TemporaryDirectory() as tmp:  # not tmp_path: ranks would race on pytest's shared base dir
        path = f"{tmp}/ef-rank{rank}.npz"  # each rank its own file
        ef.save(path)
        resumed = make()
        resumed.load(path)
    assert resumed.compressor.step == 3
    rest = steps(resumed, range(3, 6))
    for a, b in zip(full[3:], rest):
        np.testing.assert_array_equal(a, b)
    lost = make()  # without the saved state the run differs
    lost.compressor.step = 3
    assert not np.array_equal(steps(lost, [3])[0], rest[0])


def test_quantized_values_through_the_switch():
    # k large enough that the sum of the selections densifies: it continues as 8-bit QSGD (max norm).
    n = 4000
    g = gradient((n,), np.float32)
    q = QSGD(bits=8, bucket=128, norm="max", seed=2)
    total, info = scaleml.topk_allreduce(g, comm, ratio=0.4, compression=q, algorithm="split_allgather",
                                         return_info=True)
    assert len(set(comm.allgather(total.tobytes()))) == 1  # identical on every rank
    assert info.format == ("qsgd8" if comm.Get_size() > 1 else "exact")  # one rank: nothing is encoded
    sel = scaleml.topk_allreduce(g, comm, ratio=0.4)  # the exact sum of the same selections
    abs_sum = np.zeros(n)
    comm.Allreduce(np.abs(g).astype(np.float64), abs_sum)
    # each value is encoded at most P + 1 times, each time off by at most its bucket's max / 255
    bound = (comm.Get_size() + 1) * 2 * abs_sum.max() / 255 + 1e-6
    assert np.abs(total.astype(np.float64) - sel).max() <= bound


# ---- a bad argument on one rank raises on every rank, and nothing is left half done -----------------

BAD = {
    "ratio above 1": (dict(ratio=1.5, error_feedback=None), ValueError),
    "negative k": (dict(k=-1, error_feedback=None), ValueError),
    "k above n": (dict(k=61, error_feedback=None), ValueError),
    "float k": (dict(k=2.0, error_feedback=None), ValueError),
    "integer gradient": (dict(grad=np.arange(60)), TypeError),
    "float16 gradient": (dict(grad=np.ones(60, np.float16)), TypeError),
    "NaN": (dict(grad=np.full(60, np.nan)), ValueError),
    "Inf": (dict(grad=np.r_[np.ones(59), -np.inf]), ValueError),
    "residual of another shape": (dict(grad=np.ones((6, 10))), ValueError),
    "residual of another dtype": (dict(grad=np.ones(60, np.float32)), ValueError),
    "not an ErrorFeedback": (dict(error_feedback={"residual": 0}), TypeError),
    "ErrorFeedback of QSGD": (dict(error_feedback=ErrorFeedback(QSGD(bits=4))), TypeError),
    "k conflicts with the TopK": (dict(k=3), ValueError),
    "approximate conflicts with the TopK": (dict(approximate=True), ValueError),
    "name not a str": (dict(name=7), TypeError),
    "unknown algorithm": (dict(algorithm="ring_of_fire"), ValueError),
}


@pytest.mark.parametrize("bad_rank", ["last", "all"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_argument_on_one_rank_raises_everywhere(case, bad_rank):
    ef = ErrorFeedback(TopK(k=5))
    good = dict(grad=gradient((60,), np.float64), error_feedback=ef, name="w")
    scaleml.topk_allreduce(comm=comm, **good)  # a first step: the residual exists
    residual, step = ef.residual("w").copy(), ef.compressor.step
    overrides, kind = BAD[case]
    mine = good | overrides if bad_rank == "all" or rank == size - 1 else good
    with pytest.raises(kind) as caught:
        scaleml.topk_allreduce(comm=comm, **mine)
    if mine is good:
        assert str(caught.value).startswith("topk_allreduce: ") and f"on rank {size - 1}" in str(caught.value)
    # nobody kept the failed step's residual or advanced the step counter
    np.testing.assert_array_equal(ef.residual("w"), residual)
    assert ef.compressor.step == step
    # and the communicator still works
    got = scaleml.topk_allreduce(comm=comm, **good)
    assert same_bytes_everywhere(got)


def test_size_that_differs_between_ranks_raises_everywhere():
    g = gradient((60 + (rank % 2),), np.float32)
    if size == 1:
        scaleml.topk_allreduce(g, comm, k=2)
        return
    with pytest.raises(ValueError, match="topk_allreduce: n differs"):
        scaleml.topk_allreduce(g, comm, k=2)


def test_out_receives_the_result():
    g = gradient((40, 25), np.float32)
    expected = scaleml.topk_allreduce(g, comm, k=50, algorithm="split_allgather")
    out = np.empty((40, 25), np.float32)
    got = scaleml.topk_allreduce(g, comm, k=50, algorithm="split_allgather", out=out, average=True)
    assert got is out
    np.testing.assert_array_equal(out, expected / np.float32(size))
    with pytest.raises(ValueError, match="dense_out"):
        scaleml.topk_allreduce(g, comm, k=50, out=np.empty(7, np.float32))

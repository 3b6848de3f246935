"""Bad input raises a clear exception on EVERY rank (never a hang), and the communicator stays usable.

A rank that did not raise fails its own pytest.raises; a rank left waiting in a
collective makes the whole job time out: both fail the outer test.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import scaleml

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
N = 100


def good_input(dtype=np.float32):
    idx = np.array([rank % N, (rank * 7 + 3) % N])
    return idx, np.ones(2, dtype=dtype)


def still_works():
    """After any error the next collective on the same communicator is correct."""
    idx, vals = good_input()
    got = scaleml.sparse_allreduce(idx, vals, N, comm)
    expected = np.zeros(N, np.float32)
    for i, v in comm.allgather((idx, vals)):
        np.add.at(expected, i, v)
    np.testing.assert_allclose(got, expected)


def test_index_out_of_range_on_one_rank():
    idx, vals = good_input()
    if rank == size - 1:
        idx[0] = N  # one past the end
    with pytest.raises(ValueError, match="out of range|indices must lie"):
        scaleml.sparse_allreduce(idx, vals, N, comm)
    still_works()


def test_negative_index():
    idx, vals = good_input()
    if rank == 0:
        idx[1] = -1
    with pytest.raises(ValueError):
        scaleml.sparse_allreduce(idx, vals, N, comm)
    still_works()


def test_index_value_length_mismatch():
    idx, vals = good_input()
    if rank == 0:
        vals = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="differ in length|invalid argument"):
        scaleml.sparse_allreduce(idx, vals, N, comm)
    still_works()


def test_n_differs_between_ranks():
    idx, vals = good_input()
    with pytest.raises(ValueError, match="n differs") if size > 1 else _no_error():
        scaleml.sparse_allreduce(idx, vals, N + (rank % 2), comm)
    still_works()


def test_dtype_differs_between_ranks():
    idx, _ = good_input()
    vals = np.ones(2, np.float64 if rank % 2 else np.float32)
    with pytest.raises(TypeError, match="dtype differs") if size > 1 else _no_error():
        scaleml.sparse_allreduce(idx, vals, N, comm)
    still_works()


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.complex64, object])
def test_unsupported_value_dtype(dtype):
    idx, _ = good_input()
    vals = np.ones(2, dtype=dtype)
    with pytest.raises(TypeError, match="float32 or float64|unsupported"):
        scaleml.sparse_allreduce(idx, vals, N, comm)
    still_works()


def test_float_indices_rejected():
    _, vals = good_input()
    with pytest.raises(TypeError):
        scaleml.sparse_allreduce(np.array([1.0, 2.0]), vals, N, comm)
    still_works()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_on_one_rank(bad):
    idx, vals = good_input()
    if rank == size // 2:
        vals[0] = bad
    with pytest.raises(ValueError, match="NaN|non-finite"):
        scaleml.sparse_allreduce(idx, vals, N, comm)
    still_works()


def test_non_finite_allowed_when_asked():
    idx, vals = good_input()
    if rank == 0:
        vals[0] = np.inf
    got = scaleml.sparse_allreduce(idx, vals, N, comm, check_finite=False)
    assert np.isinf(got[idx[0]]) if rank == 0 else True
    assert np.isinf(got).sum() >= 1


@pytest.mark.parametrize("n", [-1, 2.5, "100", None, 1 << 63])
def test_bad_n(n):
    idx, vals = good_input()
    with pytest.raises((ValueError, TypeError)):
        scaleml.sparse_allreduce(idx, vals, n, comm)
    still_works()


def test_unknown_algorithm_and_out():
    idx, vals = good_input()
    with pytest.raises(ValueError, match="unknown algorithm"):
        scaleml.sparse_allreduce(idx, vals, N, comm, algorithm="ring_of_fire")
    with pytest.raises(ValueError, match="out must be"):
        scaleml.sparse_allreduce(idx, vals, N, comm, out="csr")
    still_works()


def test_algorithm_differs_between_ranks():
    idx, vals = good_input()
    algorithm = "recursive_doubling" if rank % 2 else "split_allgather"
    with pytest.raises(ValueError, match="algorithm differs") if size > 1 else _no_error():
        scaleml.sparse_allreduce(idx, vals, N, comm, algorithm=algorithm)
    still_works()


def test_two_dimensional_input():
    idx, vals = good_input()
    with pytest.raises(ValueError, match="1-D"):
        scaleml.sparse_allreduce(idx.reshape(1, 2), vals.reshape(1, 2), N, comm)
    still_works()


def test_dense_result_too_large_for_memory():
    idx = np.array([rank], dtype=np.uint64)
    vals = np.ones(1)
    with pytest.raises(MemoryError):
        scaleml.sparse_allreduce(idx, vals, 1 << 40, comm, out="dense")
    with pytest.raises(MemoryError):
        scaleml.sparse_allreduce(idx, vals, 1 << 40, comm, algorithm="split_dense", out="sparse")
    still_works()


def test_not_a_communicator():
    idx, vals = good_input()
    with pytest.raises(TypeError, match="intra-communicator"):
        scaleml.sparse_allreduce(idx, vals, N, comm=object())


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_cost_parameters_differ_between_ranks():
    from scaleml import cost_model

    before = cost_model.get_params()
    idx, vals = good_input()
    try:
        cost_model.set_params(alpha=before.alpha * (1 + rank))
        with pytest.raises(ValueError, match="cost-model parameters differ") if size > 1 else _no_error():
            scaleml.sparse_allreduce(idx, vals, N, comm)
    finally:
        cost_model.set_params(alpha=before.alpha)
    still_works()


def test_calls_out_of_step_raise_on_every_rank():
    """A rank whose agreement count differs (its calls were paired with other calls) fails everywhere."""
    state = scaleml.engine.engine_state(comm)
    idx, vals = good_input()
    if rank == 0:
        state.sequence += 1
    with pytest.raises(RuntimeError, match="different collective calls") if size > 1 else _no_error():
        scaleml.sparse_allreduce(idx, vals, N, comm)
    if rank == 0:
        state.sequence -= 1
    still_works()

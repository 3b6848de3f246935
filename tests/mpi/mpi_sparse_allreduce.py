"""Correctness of every sparse AllReduce algorithm against a dense reference (run on every rank)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import assert_close_to_sum, dense_reference, sparse_input
from mpi4py import MPI

import scaleml
from scaleml.cost_model import ALGORITHMS

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
ALL = ("auto", *ALGORITHMS)

SMALL_CASES = list(itertools.product([0, 1, 1009], [0.0, 1e-4, 1e-2, 0.3, 1.0],
                                     ["overlap", "disjoint", "identical"], [np.float32, np.float64]))
LARGE_CASES = [(1 << 20, d, p, np.float32) for d in (0.0, 1e-4, 1e-2, 0.3, 1.0) for p in ("overlap", "disjoint")]
LARGE_CASES.append((1 << 20, 1e-2, "overlap", np.float64))


def check_all_algorithms(n, density, pattern, dtype, c=comm, seed=1):
    idx, vals = sparse_input(n, density, pattern, dtype, c, seed)
    exact, exact_abs = dense_reference(idx, vals, n, c)
    for algorithm in ALL:
        for out in ("dense", "sparse"):
            result, info = scaleml.sparse_allreduce(idx, vals, n, c, algorithm, out, return_info=True)
            assert info.algorithm in ALGORITHMS
            if algorithm != "auto":
                assert info.algorithm == algorithm
            if out == "sparse":
                assert isinstance(result, scaleml.SparseVector)
                assert result.n == n and result.values.dtype == dtype
                assert result.indices.dtype == np.uint32
                assert (np.diff(result.indices.astype(np.int64)) > 0).all(), "indices not sorted/unique"
                nonzero = np.flatnonzero(exact)
                assert np.isin(nonzero, result.indices).all(), "a non-zero of the sum is missing"
                result = result.to_dense()
            assert result.dtype == dtype and result.shape == (n,)
            assert_close_to_sum(result, exact, exact_abs, c.Get_size())
    # Every rank holds the same result, bit for bit.
    ref = scaleml.sparse_allreduce(idx, vals, n, c, "split_allgather")
    gathered = c.allgather(ref.tobytes())
    assert all(g == gathered[0] for g in gathered)


@pytest.mark.parametrize("n,density,pattern,dtype", SMALL_CASES)
def test_small(n, density, pattern, dtype):
    check_all_algorithms(n, density, pattern, dtype)


@pytest.mark.parametrize("n,density,pattern,dtype", LARGE_CASES)
def test_large(n, density, pattern, dtype):
    check_all_algorithms(n, density, pattern, dtype)


def test_one_rank_holds_everything():
    n = 5000
    rng = np.random.default_rng(7)
    idx = rng.choice(n, 400, replace=False) if comm.rank == 0 else np.zeros(0, np.int64)
    vals = rng.standard_normal(idx.size)
    exact, exact_abs = dense_reference(idx, vals, n, comm)
    for algorithm in ALL:
        assert_close_to_sum(scaleml.sparse_allreduce(idx, vals, n, comm, algorithm), exact, exact_abs, comm.size)


def test_unsorted_and_repeated_indices_are_summed():
    n = 300
    rng = np.random.default_rng([3, comm.rank])
    idx = rng.integers(0, n, 500)  # many repeats, random order
    vals = rng.standard_normal(500).astype(np.float32)
    exact, exact_abs = dense_reference(idx, vals, n, comm)
    for algorithm in ALL:
        got = scaleml.sparse_allreduce(idx, vals, n, comm, algorithm)
        assert_close_to_sum(got, exact, 2 * exact_abs, comm.size * 4)  # local repeats add rounding steps


def test_split_and_dup_communicators():
    sub = comm.Split(color=comm.rank % 2, key=-comm.rank)
    dup = comm.Dup()
    try:
        for c in (sub, dup):
            check_all_algorithms(2003, 0.05, "overlap", np.float32, c=c, seed=11)
    finally:
        sub.Free()
        dup.Free()


def test_auto_measures_mpi_first_then_follows_the_corrected_model():
    """At a new size and density auto runs 'dense' (MPI_Allreduce, the baseline) twice (its first call is
    cold); then an algorithm the model does not prune (scaleml.tuner), identically on every rank."""
    c = comm.Dup()  # a fresh tuner
    n = 1 << 18
    for density in (1e-4, 1.0):
        data = sparse_input(n, density, "overlap", np.float32, c, 5)
        _, first = scaleml.sparse_allreduce(*data, n, c, return_info=True)
        _, again = scaleml.sparse_allreduce(*data, n, c, return_info=True)
        assert first.algorithm == again.algorithm == "dense"
        _, second = scaleml.sparse_allreduce(*data, n, c, return_info=True)
        stats = scaleml.engine.engine_state(c).tuner.stats("sparse_allreduce", 4, n, "dense")
        assert stats.measured("dense") and stats.runs("dense") == scaleml.tuner.BASELINE_RUNS
        exact = [a for a in scaleml.algorithms.EXACT if a in second.predicted]
        best = min(second.predicted[a] for a in exact)
        assert second.algorithm in exact
        assert second.predicted[second.algorithm] <= scaleml.tuner.PRUNE_FACTOR * best
        assert len(set(c.allgather(second.algorithm))) == 1
        if density < 1 and second.algorithm != "dense":  # sparse data: fewer bytes than MPI's ring
            assert second.bytes_sent < first.bytes_sent or c.size == 1
    c.Free()


def test_huge_dimension_sparse_output():
    """n = 2^40 with 64-bit indices: never allocates O(n)."""
    n = 1 << 40
    rng = np.random.default_rng([9, comm.rank])
    shared = np.random.default_rng(99).integers(0, n, 300, dtype=np.uint64)
    idx = np.concatenate([shared, rng.integers(0, n, 700, dtype=np.uint64)])
    vals = rng.standard_normal(idx.size)
    all_idx = np.concatenate([i for i, _ in comm.allgather((idx, vals))])
    all_vals = np.concatenate([v for _, v in comm.allgather((idx, vals))])
    order = np.argsort(all_idx, kind="stable")
    ref_idx, starts = np.unique(all_idx[order], return_index=True)
    ref_vals = np.add.reduceat(all_vals[order], starts)
    for algorithm in ("auto", "recursive_doubling", "split_allgather"):
        got, info = scaleml.sparse_allreduce(idx, vals, n, comm, algorithm, out="sparse", return_info=True)
        assert got.indices.dtype == np.uint64
        assert info.algorithm in ("recursive_doubling", "split_allgather")
        np.testing.assert_array_equal(got.indices, ref_idx)
        np.testing.assert_allclose(got.values, ref_vals, rtol=1e-12, atol=1e-12)


def test_result_is_reused_safely_across_calls():
    """Many calls in a row on one communicator: no stray messages between calls."""
    n = 4099
    for step in range(20):
        idx, vals = sparse_input(n, 0.02 * (1 + step % 3), "overlap", np.float32, comm, 100 + step)
        exact, exact_abs = dense_reference(idx, vals, n, comm)
        algorithm = ALL[step % len(ALL)]
        assert_close_to_sum(scaleml.sparse_allreduce(idx, vals, n, comm, algorithm), exact, exact_abs, comm.size)


def test_dense_input_travels_dense():
    """The densify rule applies to what is sent: dense slices of the split algorithms go as n/P values,
    not n/P (index, value) pairs (P = 2, n = 10^5: 600,016 bytes before, 400,016 dense)."""
    n, P, rank = 100_000, comm.Get_size(), comm.Get_rank()
    vals = np.arange(1, n + 1, dtype=np.float32) + rank
    idx = np.arange(n)
    dense_bytes = n * 4
    for algorithm in ("split_dense", "split_allgather"):
        result, info = scaleml.sparse_allreduce(idx, vals, n, comm, algorithm, return_info=True)
        # reduce-scatter (P-1)/P n c_d + allgather (P-1)/P n c_d, plus headers and the sizes
        bound = 2 * (P - 1) * dense_bytes // P + 64 * P
        assert info.bytes_sent <= bound, f"{algorithm} sent {info.bytes_sent} > {bound}"
        expected = (np.arange(1, n + 1, dtype=np.float64) * P + P * (P - 1) / 2).astype(np.float32)
        np.testing.assert_allclose(result, expected, rtol=1e-6)


@pytest.mark.parametrize("index_type", [np.int64, np.int32, np.uint32])
def test_every_position_listed_is_read_as_dense_input(index_type):
    """Every position listed in order: the values are read in place as the dense vector, and every
    algorithm gives the same bits and sends the same bytes as the same entries listed in another order
    (which goes through the sort), zeros and -0.0 values included."""
    n, rank = 5003, comm.Get_rank()
    rng = np.random.default_rng(40 + rank)
    for dtype in (np.float32, np.float64):
        vals = rng.standard_normal(n).astype(dtype)
        vals[rng.random(n) < 0.2] = 0.0
        vals[::97] = -0.0  # -0.0 on every rank there: a sparse sum keeps its sign
        idx = np.arange(n, dtype=index_type)
        exact, exact_abs = dense_reference(idx, vals, n, comm)
        for algorithm in ALL:
            for out in ("dense", "sparse"):
                result, info = scaleml.sparse_allreduce(idx, vals, n, comm, algorithm, out, return_info=True)
                listed, listed_info = scaleml.sparse_allreduce(idx[::-1].copy(), vals[::-1].copy(), n, comm,
                                                               info.algorithm, out, return_info=True)
                assert info.bytes_sent == listed_info.bytes_sent, (algorithm, out)
                if out == "sparse":
                    np.testing.assert_array_equal(result.indices, listed.indices)
                    result, listed = result.to_dense(), listed.to_dense()
                assert result.tobytes() == listed.tobytes(), (algorithm, out, info.algorithm)
                assert_close_to_sum(result, exact, exact_abs, comm.Get_size())
        into = np.full(n, 7, dtype)
        assert scaleml.sparse_allreduce(idx, vals, n, comm, "ring", dense_out=into) is into
        assert into.tobytes() == scaleml.sparse_allreduce(idx[::-1].copy(), vals[::-1].copy(), n, comm,
                                                          "ring").tobytes()


def test_every_position_on_some_ranks_plans_alike():
    """Rank 0 lists every position (read as dense input there), the others some: every algorithm sums right,
    and `auto` plans from agreed values only, so every rank's tuner ends in the same state (the plan once
    took rank 0's dense input into its model and the ranks' states parted)."""
    c = comm.Dup()
    n, rank = 4099, c.Get_rank()
    rng = np.random.default_rng(70 + rank)
    for step in range(24):
        if rank == 0:
            idx = np.arange(n)
        else:
            idx = np.flatnonzero(rng.random(n) < 0.3)
        vals = rng.standard_normal(idx.size).astype(np.float32)
        exact, exact_abs = dense_reference(idx, vals, n, c)
        algorithm = ALL[step % len(ALL)] if step % 2 else "auto"
        assert_close_to_sum(scaleml.sparse_allreduce(idx, vals, n, c, algorithm), exact, exact_abs, c.Get_size())
    state = scaleml.engine.engine_state(c)
    mine = {k: (v.calls, v.mpi_until, v.backoff, sorted(v.ratio.items()), v.mpi_seconds, sorted(v.incumbent.items()))
            for k, v in state.tuner.classes.items()}
    assert all(other == mine for other in c.allgather(mine))
    c.Free()

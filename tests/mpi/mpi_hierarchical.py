"""hierarchical_dense and the topology under emulated nodes (run on every rank under mpiexec).

tests/test_mpi_suites.py runs this module at every rank count with SCALEML_RANKS_PER_NODE in {1, 2, 3}
(3 makes unequal nodes at 4, 5 and 8 ranks); each test also makes communicators of other node sizes with
``scaleml.Comm(..., ranks_per_node=)``.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from helpers import assert_close_to_sum
from mpi4py import MPI

import scaleml
from scaleml import cost_model
from scaleml.engine import engine_state

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
EMULATED = int(os.environ.get("SCALEML_RANKS_PER_NODE") or 0)
# fewer values than ranks; several ring chunks per shard; two pipeline segments (scaleml_hierarchical_segments)
SIZES = [0, 1, max(size - 1, 1), 1009, 200003, (1 << 20) + 3]


def data(n: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 * seed + rank).standard_normal(n).astype(dtype)


def everyone_holds_the_same(result: np.ndarray) -> bool:
    return len(set(world.allgather(hashlib.sha256(result.tobytes()).hexdigest()))) == 1


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total, total_abs = np.zeros(x.size), np.zeros(x.size)
    world.Allreduce(x.astype(np.float64), total)
    world.Allreduce(np.abs(x.astype(np.float64)), total_abs)
    return total, total_abs


def node_sizes(ranks_per_node: int) -> list[int]:
    return [min(ranks_per_node, size - start) for start in range(0, size, ranks_per_node)]


def run(x: np.ndarray, comm: MPI.Intracomm, algorithm: str = "hierarchical_dense"):
    return scaleml.sparse_allreduce(np.arange(x.size, dtype=np.uint32), x, x.size, comm, algorithm,
                                    return_info=True)


def test_the_topology_cuts_consecutive_ranks_and_is_the_same_everywhere():
    topo = engine_state(world).topology
    if EMULATED:
        sizes = node_sizes(EMULATED)
        assert (topo.node, topo.local_rank) == (rank // EMULATED, rank % EMULATED)
        assert (topo.nodes, topo.local_size) == (len(sizes), sizes[rank // EMULATED])
        assert (topo.node_size_min, topo.node_size_max) == (min(sizes), max(sizes))
    else:  # one machine: MPI's shared-memory node holds every rank
        assert (topo.nodes, topo.node, topo.local_rank, topo.local_size) == (1, 0, rank, size)
    assert len(set(world.allgather(topo.shape))) == 1
    assert engine_state(world).topology is topo  # made once per state, not per call


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_identical_everywhere_and_as_the_flat_ring(n, dtype):
    x = data(n, dtype, seed=n % 89)
    result, info = run(x, world)
    assert info.algorithm == "hierarchical_dense" and info.format == "exact" and result.dtype == dtype
    assert everyone_holds_the_same(result)
    exact, exact_abs = reference(x)
    assert_close_to_sum(result, exact, exact_abs, size)
    flat, _ = run(x, world, "ring")
    assert_close_to_sum(flat, exact, exact_abs, size)
    if EMULATED == 1 or size == 1:  # one rank per node: the flat ring itself
        np.testing.assert_array_equal(result, flat)


@pytest.mark.parametrize("in_place", [False, True])
def test_dense_input_read_in_place_by_the_drop_in(in_place):
    """The drop-in's dense input is read where it is (step 1 sends it, no copy first): the same sum, whether
    the result buffer is another array or the input itself, over two pipeline segments."""
    n = (1 << 20) + 3
    comm = scaleml.Comm(world, algorithm="hierarchical_dense", min_count=0)
    x = data(n, seed=11)
    kept = x.copy()
    out = x if in_place else np.full_like(x, np.nan)
    comm.Allreduce(MPI.IN_PLACE if in_place else x, out)
    assert comm.last_info.algorithm == "hierarchical_dense" and everyone_holds_the_same(out)
    if not in_place:
        np.testing.assert_array_equal(x, kept)  # the input untouched
    exact, exact_abs = reference(kept)
    assert_close_to_sum(out, exact, exact_abs, size)
    result, _ = run(kept, world)  # sparse input, densified first: the same values
    np.testing.assert_array_equal(out, result)


@pytest.mark.parametrize("ranks_per_node", sorted({1, 2, 3, size}))
@pytest.mark.parametrize("n", [1, max(size - 1, 1), 1009, 200003, (1 << 20) + 3])  # the last: 2 segments
def test_bytes_crossing_nodes_are_the_headers_formula(ranks_per_node, n):
    comm = scaleml.Comm(world.Dup(), ranks_per_node=ranks_per_node)
    topo = engine_state(comm.mpi_comm).topology
    assert topo.ranks_per_node == ranks_per_node and topo.nodes == len(node_sizes(ranks_per_node))
    x = data(n, seed=7)
    result, info = run(x, comm.mpi_comm)
    intra, inter = info.node_bytes
    assert intra + inter == info.bytes_sent
    assert everyone_holds_the_same(result)
    sizes = node_sizes(ranks_per_node)
    N, L = len(sizes), sizes[rank // ranks_per_node]
    if size == 1:
        assert info.node_bytes == (0, 0)
    elif max(sizes) == 1:  # one rank per node: the flat ring, every byte crosses a node boundary
        assert intra == 0 and inter == info.bytes_sent > 0
    else:
        assert world.allreduce(inter) == 2 * (N - 1) * n * 4  # zero on one node: the intra-node path only
        node_comm = world.Split(rank // ranks_per_node, rank)
        assert node_comm.allreduce(intra) == 2 * (L - 1) * n * 4
        node_comm.Free()
    comm.mpi_comm.Free()


def test_a_communicators_nodes_follow_its_argument():
    comm = scaleml.Comm(world.Dup(), ranks_per_node=2)
    assert engine_state(comm.mpi_comm).topology.local_rank == rank % 2
    again = scaleml.Comm(comm.mpi_comm, ranks_per_node=3)  # the same state, its topology made again
    assert engine_state(comm.mpi_comm).topology.local_rank == rank % 3
    x = data(1009, seed=3)
    result, _ = run(x, again.mpi_comm)
    exact, exact_abs = reference(x)
    assert_close_to_sum(result, exact, exact_abs, size)
    with pytest.raises(ValueError, match="ranks_per_node"):
        scaleml.Comm(comm.mpi_comm, ranks_per_node=0)
    comm.mpi_comm.Free()


def test_auto_and_the_drop_in_pick_it_where_the_network_is_slow():
    """Network slow, shared memory free: the model ranks hierarchical_dense first among the exact algorithms on
    several nodes of at least two ranks each (asserted on the predictions auto plans with, not on a choice the
    measured times make: here MPI runs over shared memory whatever the parameters say); the results stay exact
    and the choices, whatever they are, the same on every rank."""
    topo = engine_state(world).topology
    before = cost_model.get_params()
    cost_model.set_params(alpha=1e-3, beta=1e-6, alpha_intra=0.0, beta_intra=1e-12)
    try:
        x = data(50000, seed=5)
        exact, exact_abs = reference(x)
        chosen, predicted = [], {}
        for _ in range(4):
            result, info = scaleml.sparse_allreduce(np.arange(x.size, dtype=np.uint32), x, x.size, world,
                                                    return_info=True)
            assert_close_to_sum(result, exact, exact_abs, size)
            chosen.append(info.algorithm)
            predicted = info.predicted
        drop_in = scaleml.Comm(world)
        out = np.empty_like(x)
        for _ in range(4):
            drop_in.Allreduce(x, out)
            chosen.append(drop_in.last_info.algorithm if drop_in.last_info else "MPI")
            assert_close_to_sum(out, exact, exact_abs, size)
    finally:
        cost_model.set_params(alpha=before.alpha, beta=before.beta, alpha_intra=before.alpha_intra,
                              beta_intra=before.beta_intra)
    assert len({tuple(c) for c in world.allgather(chosen)}) == 1
    if topo.nodes > 1 and topo.node_size_min > 1:  # a node of one rank sends every shard across itself
        exact_ones = {a: t for a, t in predicted.items() if a in scaleml.algorithms.EXACT}
        assert min(exact_ones, key=exact_ones.get) == "hierarchical_dense", exact_ones

"""hierarchical_sparse under emulated nodes (run on every rank under mpiexec).

tests/test_mpi_suites.py runs this module at every rank count with SCALEML_RANKS_PER_NODE in {1, 2, 3} (3 makes
unequal nodes at 4, 5 and 8 ranks) and once on MPI's own nodes (one node here: steps 1 and 3 only); the byte
test also makes communicators of other node sizes with ``scaleml.Comm(..., ranks_per_node=)``.

Exactness: the result must EQUAL (not approximate) the sum computed here in the algorithm's order, in the input's
precision: each node's sum in local rank order ((x_0 + x_1) + ...) + x_{L-1}, then the node sums in node order.
Missing entries add nothing, so the dense sum in that order is what the sparse cross-node step computes (zeros
compare equal whatever their sign). At one rank per node that order is the flat split_allgather's rank order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers import assert_close_to_sum, dense_reference
from mpi4py import MPI

import scaleml
from scaleml import cost_model
from scaleml.compress import Cast
from scaleml.datagen import random_sparse
from scaleml.engine import engine_state
from scaleml.quantized import block_range

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
NAME = "hierarchical_sparse"
SIZES = [0, 1, max(size - 1, 1), 1009, 30011]  # fewer values than ranks; uneven shards and blocks
DENSITIES = [0.001, 0.03, 0.3, 1.0]  # from a few entries per rank to dense


def sparse_data(n: int, density: float, pattern: str, dtype, comm: MPI.Intracomm, seed: int):
    """This rank's sorted (uint32 indices, values), none of the values zero."""
    idx, vals = random_sparse(n, density, pattern, dtype, comm.Get_rank(), comm.Get_size(), seed)
    vals[vals == 0] = 1
    return idx.astype(np.uint32), vals


def dense_of(idx: np.ndarray, vals: np.ndarray, n: int) -> np.ndarray:
    x = np.zeros(n, vals.dtype)
    x[idx] = vals
    return x


def node_layout(comm: MPI.Intracomm) -> list[list[int]]:
    """The ranks of each node, in local rank order, nodes in node order (as every rank sees them)."""
    topo = engine_state(comm).topology
    places = comm.allgather((topo.node, topo.local_rank))
    nodes: list[list[int]] = [[] for _ in range(topo.nodes)]
    for r, (node, local) in enumerate(places):
        nodes[node].append((local, r))
    return [[r for _, r in sorted(ranks)] for ranks in nodes]


def ordered_sum(inputs: list[np.ndarray], nodes: list[list[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the sum in the algorithm's order, each node's sum), in the inputs' precision."""
    node_sums = []
    for ranks in nodes:
        acc = inputs[ranks[0]].copy()
        for r in ranks[1:]:
            acc += inputs[r]
        node_sums.append(acc)
    total = node_sums[0].copy()
    for node_sum in node_sums[1:]:
        total += node_sum
    return total, node_sums


def everyone_holds_the_same(result: np.ndarray, comm: MPI.Intracomm = world) -> bool:
    return len(set(comm.allgather(hashlib.sha256(result.tobytes()).hexdigest()))) == 1


def run(idx, vals, n, comm, algorithm=NAME, **kwargs):
    return scaleml.sparse_allreduce(idx, vals, n, comm, algorithm, return_info=True, **kwargs)


def check_exact(idx, vals, n, comm: MPI.Intracomm = world, **kwargs):
    result, info = run(idx, vals, n, comm, **kwargs)
    assert info.algorithm == NAME and info.format == "exact" and result.dtype == vals.dtype
    assert everyone_holds_the_same(result, comm)
    expected, _ = ordered_sum(comm.allgather(dense_of(idx, vals, n)), node_layout(comm))
    np.testing.assert_array_equal(result, expected)  # exact: no tolerance
    return result, info


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("pattern", ["overlap", "disjoint", "identical"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_and_identical_everywhere(n, pattern, dtype):
    for seed, density in enumerate(DENSITIES):
        idx, vals = sparse_data(n, density, pattern, dtype, world, seed=n % 97 + seed)
        result, _ = check_exact(idx, vals, n)
        exact, exact_abs = dense_reference(idx, vals, n, world)
        assert_close_to_sum(result, exact, exact_abs, size)  # and close to the float64 sum


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_input_and_cancellation(dtype):
    """The whole vector as input (as the drop-in gives it), values that cancel to zero within a node and across
    nodes (an exact zero node sum is no entry), and a rank with nothing."""
    n = 4099
    x = np.random.default_rng([11, rank]).standard_normal(n).astype(dtype)
    x[::3] = rank % 2 * 2 - 1  # +1, -1, +1... : pairs of ranks cancel
    x[1::5] = 0
    if rank == size - 1:
        x[:] = 0
    result, info = check_exact(np.arange(n, dtype=np.uint32), x, n)
    assert info.bytes_sent == sum(info.node_bytes)
    drop_in = scaleml.Comm(world, algorithm=NAME, min_count=1)  # dense input: no indices reach the C core
    out = np.empty_like(x)
    drop_in.Allreduce(x, out)
    assert drop_in.last_info.algorithm == NAME
    np.testing.assert_array_equal(out, result)
    assert everyone_holds_the_same(out)
    topo = engine_state(world).topology
    if size > 1 and topo.node_size_max > 1:  # the drop-in's dense input: its non-zeros cross within the node
        check_node_bytes(drop_in.last_info, world.allgather(x), world)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_explicit_zero_entries_add_nothing_and_come_out_unsigned(dtype):
    """Sparse input that names zeros of either sign (every rank -0.0 at some indices): exact, and on nodes of
    several ranks every zero of the result is +0.0 (the registry's unsigned_zeros: each node sum keeps its
    non-zeros only), one node included. At one rank per node the flat split_allgather keeps a -0.0 every rank names."""
    n = 2003
    x = dense_of(*sparse_data(n, 0.3, "overlap", dtype, world, seed=31), n)
    named = np.zeros(n, bool)
    named[::7] = named[3::11] = True
    x[::7] = -0.0  # every rank names -0.0 here, unless it holds a value
    x[3::11] = 0.0
    idx = np.flatnonzero((x != 0) | named).astype(np.uint32)
    vals = x[idx]
    result, _ = check_exact(idx, vals, n)
    if size > 1 and engine_state(world).topology.node_size_max > 1:
        assert not np.signbit(result[result == 0]).any()


def test_a_lossy_format_is_ignored():
    """A forced hierarchical_sparse with compression= stays exact (the format is never used)."""
    idx, vals = sparse_data(20011, 0.2, "overlap", np.float32, world, seed=5)
    check_exact(idx, vals, 20011, compression=Cast("fp16"))


def wire(entries: int, length: int, index_bytes: int, value_bytes: int) -> int:
    """Bytes of one segment on the wire (the header comment's W(e, len))."""
    if entries * (index_bytes + value_bytes) >= length * value_bytes:
        return 16 + length * value_bytes
    return 16 + (entries * index_bytes + 7) // 8 * 8 + entries * value_bytes


def expected_inter_bytes(node_sums: list[np.ndarray], node: int, local_rank: int, S: int) -> int:
    """The header's formula for the bytes the owner of shard local_rank on `node` sends across nodes."""
    N = len(node_sums)
    if N == 1 or local_rank >= S:
        return 0
    n, vb = node_sums[0].size, node_sums[0].itemsize
    start, length = block_range(n, S, local_rank)
    if length == 0:
        return 0
    shards = [s[start:start + length] != 0 for s in node_sums]
    union = np.logical_or.reduce(shards)
    total = (N - 1) * 8
    for m in range(N):
        b_start, b_len = block_range(length, N, m)
        if m != node:
            total += wire(int(shards[node][b_start:b_start + b_len].sum()), b_len, 4, vb)
        if m != (node + 1) % N:
            total += wire(int(union[b_start:b_start + b_len].sum()), b_len, 4, vb)
    return total


def reduced_entries(node_sums: list[np.ndarray], total: np.ndarray, start: int, length: int) -> int:
    """Entries of the reduced shard [start, start + length) that its owner packs in step 3: at one node the
    node sum's non-zeros; else per block of split_allgather the union of the node sums' non-zeros, or the
    block's non-zeros where that union makes it dense (a sum that cancelled across nodes is an entry only in a
    sparse block)."""
    shard = total[start:start + length]
    if len(node_sums) == 1:
        return int((shard != 0).sum())
    union = np.logical_or.reduce([s[start:start + length] != 0 for s in node_sums])
    entries = 0
    for m in range(len(node_sums)):
        b_start, b_len = block_range(length, len(node_sums), m)
        u = int(union[b_start:b_start + b_len].sum())
        dense = u * (4 + total.itemsize) >= b_len * total.itemsize and b_len > 0
        entries += int((shard[b_start:b_start + b_len] != 0).sum()) if dense else u
    return entries


def expected_intra_bytes(inputs: list[np.ndarray], node_sums: list[np.ndarray], total: np.ndarray,
                         nodes: list[list[int]], node: int, local_rank: int, S: int) -> int:
    """The header's formula for the bytes this rank sends within its node: step 1 its input's entries (here
    its non-zeros) in each other owner's shard, step 3 (owners) the packed reduced shard to every other rank
    of the node."""
    n, vb = total.size, total.itemsize
    mine = inputs[nodes[node][local_rank]] != 0
    sent = 0
    for j in range(S):
        start, length = block_range(n, S, j)
        if j != local_rank:  # an empty shard still gets its 16-byte header
            sent += wire(int(mine[start:start + length].sum()), length, 4, vb)
    if local_rank < S:
        start, length = block_range(n, S, local_rank)
        if length:
            sent += (len(nodes[node]) - 1) * wire(reduced_entries(node_sums, total, start, length), length, 4, vb)
    return sent


def check_node_bytes(info, inputs: list[np.ndarray], comm: MPI.Intracomm) -> None:
    """intra and inter bytes against the header's formulas, on every rank at once (a rank that failed alone
    would leave the others in the next collective)."""
    topo = engine_state(comm).topology
    intra, inter = info.node_bytes
    nodes = node_layout(comm)
    total, node_sums = ordered_sum(inputs, nodes)
    expected = (expected_intra_bytes(inputs, node_sums, total, nodes, topo.node, topo.local_rank,
                                     topo.node_size_min),
                expected_inter_bytes(node_sums, topo.node, topo.local_rank, topo.node_size_min))
    assert comm.allgather((intra, inter)) == comm.allgather(expected)


@pytest.mark.parametrize("ranks_per_node", sorted({1, 2, 3, size}))
@pytest.mark.parametrize(("n", "density"), [(1, 1.0), (max(size - 1, 1), 0.5), (1009, 0.02), (30011, 0.01),
                                            (30011, 0.6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bytes_crossing_nodes_are_the_headers_formula(ranks_per_node, n, density, dtype):
    comm = scaleml.Comm(world.Dup(), ranks_per_node=ranks_per_node)
    topo = engine_state(comm.mpi_comm).topology
    idx, vals = sparse_data(n, density, "overlap", dtype, world, seed=23)
    result, info = check_exact(idx, vals, n, comm.mpi_comm)
    intra, inter = info.node_bytes
    assert intra + inter == info.bytes_sent
    inputs = world.allgather(dense_of(idx, vals, n))
    if size == 1:
        assert info.node_bytes == (0, 0)
    elif topo.node_size_max == 1:  # one rank per node: the flat split_allgather, every byte crosses
        assert intra == 0
        assert inter == expected_inter_bytes(inputs, rank, 0, 1)
        flat, _ = run(idx, vals, n, comm.mpi_comm, "split_allgather")
        np.testing.assert_array_equal(result, flat)  # the same order: bitwise the flat algorithm's result
    else:
        check_node_bytes(info, inputs, comm.mpi_comm)
        if density <= 0.02 and n > 1000:  # sparse data: the node's steps send far less than the dense ones did
            node_comm = world.Split(topo.node, rank)
            assert node_comm.allreduce(intra) <= 2 * (topo.local_size - 1) * n * vals.itemsize / 4
            node_comm.Free()
    comm.mpi_comm.Free()


def test_auto_and_the_drop_in_rank_it_first_on_sparse_data_over_a_slow_network():
    """Slow network, free shared memory, 1% density: the model ranks hierarchical_sparse first among the exact
    algorithms on several nodes of at least two ranks each (asserted on the predictions auto plans with, not on
    a choice the measured times make); results stay exact, choices the same on every rank. The drop-in never
    runs it where every rank holds a -0.0 (its scan drops them; MPI signs them)."""
    topo = engine_state(world).topology
    n = 50000
    idx, vals = sparse_data(n, 0.01, "overlap", np.float32, world, seed=9)
    exact, exact_abs = dense_reference(idx, vals, n, world)
    before = cost_model.get_params()
    cost_model.set_params(alpha=1e-5, beta=1e-7, alpha_intra=0.0, beta_intra=1e-12)
    try:
        chosen, predicted = [], {}
        for _ in range(4):
            result, info = scaleml.sparse_allreduce(idx, vals, n, world, return_info=True)
            assert_close_to_sum(result, exact, exact_abs, size)
            chosen.append(info.algorithm)
            predicted = info.predicted
        drop_in = scaleml.Comm(world, algorithm=NAME, min_count=1)
        x = dense_of(idx, vals, n)
        x[x == 0] = -0.0
        out = np.empty_like(x)
        drop_in.Allreduce(x, out)
        assert drop_in.last_info is None or drop_in.last_info.algorithm != NAME
        assert np.signbit(out[exact == 0]).all()  # MPI's -0.0 where every rank holds -0.0
    finally:
        cost_model.set_params(alpha=before.alpha, beta=before.beta, alpha_intra=before.alpha_intra,
                              beta_intra=before.beta_intra)
    assert len({tuple(c) for c in world.allgather(chosen)}) == 1
    if topo.nodes > 1 and topo.node_size_min > 1:
        exact_ones = {a: t for a, t in predicted.items() if a in scaleml.algorithms.EXACT}
        assert min(exact_ones, key=exact_ones.get) == NAME, exact_ones

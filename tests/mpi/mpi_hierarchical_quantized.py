"""hierarchical_quantized under emulated nodes (run on every rank under mpiexec).

tests/test_mpi_suites.py runs this module at every rank count with SCALEML_RANKS_PER_NODE in {1, 2, 3} (3 makes
unequal nodes at 4, 5 and 8 ranks) and once on MPI's own nodes (one node here: the exact intra-node path).

Bounds (see mpi_quantized.py): the node sums are exact, and across N nodes the quantized ring encodes a value at
most N times (direct, with error feedback: twice), each time with an error below the norm of its bucket of
sum |x| (doubled for the errors the partial sums carry) over 2^bits - 1.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers import assert_close_to_sum
from mpi4py import MPI

import scaleml
from scaleml import cost_model
from scaleml._native import lib
from scaleml.compress import QSGD, Cast, ErrorFeedback, OneBit
from scaleml.engine import engine_state
from scaleml.quantized import block_range, hierarchical_residual_lengths
from scaleml.value_format import value_format

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
NAME = "hierarchical_quantized"
TOPO = engine_state(world).topology
N, S = TOPO.nodes, TOPO.node_size_min
FLAT = TOPO.node_size_max == 1 or size == 1  # one rank per node: the flat algorithm itself
ONE_NODE = N == 1 and size > 1  # nothing crosses a node boundary: exact

FORMATS = {
    "qsgd4": lambda: QSGD(bits=4, bucket=64, seed=1),
    "qsgd8max": lambda: QSGD(bits=8, bucket=100, norm="max", seed=2),
    "qsgd2": lambda: QSGD(bits=2, bucket=512, seed=3),
    "fp16": lambda: Cast("fp16"),
    "bf16": lambda: Cast("bf16"),
    "onebit": lambda: OneBit(bucket=64),
}
SIZES = [0, 1, max(size - 1, 1), 1009, 70001, (1 << 20) + 3]  # fewer values than ranks; uneven shards and
# blocks; two pipeline segments


def data(n: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 * seed + rank).standard_normal(n).astype(dtype)


def everyone_holds_the_same(result: np.ndarray) -> bool:
    return len(set(world.allgather(hashlib.sha256(result.tobytes()).hexdigest()))) == 1


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total, total_abs = np.zeros(x.size), np.zeros(x.size)
    world.Allreduce(x.astype(np.float64), total)
    world.Allreduce(np.abs(x.astype(np.float64)), total_abs)
    return total, total_abs


def bucket_bound(total_abs: np.ndarray, bucket: int, norm: str) -> np.ndarray:
    """2 x the norm of any `bucket` consecutive values around each index: at most the norm of the aligned bucket
    holding it and its two neighbours (the algorithms' buckets start where their shards, blocks and pipeline
    segments start, not at multiples of `bucket`)."""
    pad = (-total_abs.size) % bucket
    b = np.concatenate([total_abs, np.zeros(pad)]).reshape(-1, bucket)
    if norm == "l2":
        squares = (b * b).sum(axis=1)
        norms = np.sqrt(squares + np.r_[0.0, squares[:-1]] + np.r_[squares[1:], 0.0])
    else:
        peaks = b.max(axis=1)
        norms = np.maximum(peaks, np.maximum(np.r_[0.0, peaks[:-1]], np.r_[peaks[1:], 0.0]))
    return 2 * np.repeat(norms, bucket)[: total_abs.size]


def within_the_bound(result: np.ndarray, x: np.ndarray, compression, encodings: int) -> None:
    exact, exact_abs = reference(x)
    err = np.abs(result.astype(np.float64) - exact)
    if isinstance(compression, Cast):
        unit = 2.0 ** -11 if compression.name == "fp16" else 2.0 ** -8
        bound = (encodings + 1) * unit * exact_abs * 1.01 + size * np.finfo(np.float32).eps * exact_abs + 1e-30
    elif isinstance(compression, QSGD):
        bound = (encodings * bucket_bound(exact_abs, compression.bucket, compression.norm) / (2 ** compression.bits - 1)
                 + 1e-6 * exact_abs + 1e-30)
    else:  # 1-bit: biased without error feedback; finite
        assert np.isfinite(result).all()
        return
    assert (err <= bound).all(), float((err / bound).max())


def quantized(x: np.ndarray, compression, algorithm: str = NAME, comm: MPI.Intracomm = world, **kwargs):
    return scaleml.quantized_allreduce(x, comm, compression, algorithm=algorithm, return_info=True, **kwargs)


def node_sizes(ranks_per_node: int) -> list[int]:
    return [min(ranks_per_node, size - start) for start in range(0, size, ranks_per_node)]


def encoded_bytes(n: int, compression, parts: int) -> int:
    """Bytes of [0, n) encoded as the flat quantized algorithms lay it out over `parts` ranks: each block in
    chunks of 2^16 values rounded down to whole buckets (qa_pipeline_chunk)."""
    fmt = value_format(compression)
    bucket = compression.bucket if isinstance(compression, (QSGD, OneBit)) else 1
    chunk = bucket if bucket > 1 << 16 else (1 << 16) // bucket * bucket
    total = 0
    for k in range(parts):
        _, length = block_range(n, parts, k)
        for start in range(0, length, chunk):
            total += fmt.bytes(min(chunk, length - start), 4)
    return total


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", SIZES)
def test_identical_everywhere_within_the_bound_and_as_the_fallbacks(fmt, n):
    x = data(n, seed=n % 89)
    compression = FORMATS[fmt]()
    result, info = quantized(x, compression)
    assert info.algorithm == NAME and result.dtype == x.dtype and result.shape == x.shape
    assert info.format == ("exact" if ONE_NODE else value_format(compression).name)
    assert everyone_holds_the_same(result)
    if size == 1:
        np.testing.assert_array_equal(result, x)
        return
    if ONE_NODE:  # the intra-node path of hierarchical_dense, exact
        exact, exact_abs = reference(x)
        assert_close_to_sum(result, exact, exact_abs, size)
        dense, _ = scaleml.sparse_allreduce(np.arange(n, dtype=np.uint32), x, n, world, "hierarchical_dense",
                                            return_info=True)
        np.testing.assert_array_equal(result, dense)
        return
    within_the_bound(result, x, compression, N)
    flat, flat_info = quantized(x, FORMATS[fmt](), "quantized_ring")
    within_the_bound(flat, x, compression, size)
    if FLAT:  # one rank per node: the flat ring itself, the same draws
        np.testing.assert_array_equal(result, flat)
        assert info.bytes_sent == flat_info.bytes_sent and info.node_bytes == (0, info.bytes_sent)


def test_float64_within_the_bound():
    x = data(5003, np.float64, seed=4)
    result, info = quantized(x, QSGD(bits=4, bucket=64, seed=9))
    assert result.dtype == np.float64 and everyone_holds_the_same(result)
    if not ONE_NODE and size > 1:
        within_the_bound(result, x, QSGD(bits=4, bucket=64), N)


def test_qsgd_is_unbiased():
    n, T, bits, bucket = 96, 100, 2, 32
    x = data(n, np.float64, seed=3)
    exact, exact_abs = reference(x)
    q = QSGD(bits=bits, bucket=bucket, seed=11)
    total = np.zeros(n)
    for _ in range(T):
        total += quantized(x, q)[0]
    mean = total / T
    sigma = np.sqrt(max(N, 1) / 4 / T) * bucket_bound(exact_abs, bucket, "l2") / (2 ** bits - 1)
    assert (np.abs(mean - exact) <= 6 * sigma + 1e-12).all(), float((np.abs(mean - exact) / sigma).max())


@pytest.mark.parametrize("fmt", ["qsgd4", "fp16"])
def test_relative_error_no_larger_than_the_flat_ring(fmt):
    """Exact node sums and N instead of P encodings: on the same data (fixed seeds), the mean relative error
    of several calls is not above the flat quantized_ring's (equal at one rank per node)."""
    ours, flat = [], []
    for seed in range(4):
        x = data(20000, seed=100 + seed)
        exact, _ = reference(x)
        norm = np.linalg.norm(exact) or 1.0
        ours.append(np.linalg.norm(quantized(x, FORMATS[fmt]())[0] - exact) / norm)
        flat.append(np.linalg.norm(quantized(x, FORMATS[fmt](), "quantized_ring")[0] - exact) / norm)
    assert np.mean(ours) <= np.mean(flat) * 1.02 + 1e-12, (np.mean(ours), np.mean(flat))


@pytest.mark.parametrize("fmt", ["onebit", "qsgd2", "fp16"])
def test_error_feedback_conserves_mass_and_lives_on_the_shard(fmt):
    """sum of the decoded outputs + every rank's residuals == sum of the inputs (within float32 rounding); the
    residuals are sized by the shard a rank owns in the cross-node step."""
    n, calls = 3001, 4
    ef = ErrorFeedback(FORMATS[fmt]())
    outputs, inputs = np.zeros(n), np.zeros(n)
    for call in range(calls):
        x = data(n, seed=200 + call)
        result, info = scaleml.quantized_allreduce(x, world, error_feedback=ef, algorithm=NAME, return_info=True)
        assert info.algorithm == NAME and everyone_holds_the_same(result)
        outputs += result
        inputs += reference(x)[0]
    lengths = hierarchical_residual_lengths(n, engine_state(world))
    worker, server = ef.residual("grad/worker"), ef.residual("grad/server")
    assert (worker.size, server.size) == lengths
    shard = block_range(n, S, TOPO.local_rank)[1] if TOPO.local_rank < S else 0
    assert lengths == (shard, block_range(shard, N, TOPO.node)[1])
    if FLAT:  # quantized_direct's layout
        assert lengths == (n, block_range(n, size, rank)[1])
    residual_mass = world.allreduce(float(worker.astype(np.float64).sum() + server.astype(np.float64).sum()))
    scale = calls * size * n * 4 * np.finfo(np.float32).eps  # |x| <~ 4, float32 sums
    assert abs(outputs.sum() + residual_mass - inputs.sum()) <= scale
    if ONE_NODE:  # exact: nothing left behind
        assert residual_mass == 0.0
        np.testing.assert_allclose(outputs, inputs, rtol=1e-5, atol=1e-4)


def test_error_feedback_at_one_rank_per_node_is_quantized_direct():
    n = 1000
    mine, theirs = ErrorFeedback(OneBit(bucket=64)), ErrorFeedback(OneBit(bucket=64))
    for call in range(2):
        x = data(n, seed=300 + call)
        ours = scaleml.quantized_allreduce(x, world, error_feedback=mine, algorithm=NAME)
        flat = scaleml.quantized_allreduce(x, world, error_feedback=theirs, algorithm="quantized_direct")
        if FLAT:
            np.testing.assert_array_equal(ours, flat)
    if FLAT:
        for key in ("grad/worker", "grad/server"):
            np.testing.assert_array_equal(mine.residual(key), theirs.residual(key))


@pytest.mark.parametrize("ranks_per_node", sorted({1, 2, 3, size}))
@pytest.mark.parametrize(("fmt", "feedback"), [("qsgd4", False), ("fp16", False), ("onebit", False),
                                               ("qsgd4", True), ("onebit", True)])
def test_bytes_crossing_nodes_are_the_headers_formula(ranks_per_node, fmt, feedback):
    comm = scaleml.Comm(world.Dup(), ranks_per_node=ranks_per_node)
    sizes = node_sizes(ranks_per_node)
    nodes, smallest, local = len(sizes), min(sizes), rank % ranks_per_node
    for n in (1, max(size - 1, 1), 1009, 140003, (1 << 20) + 3):  # the last: 2 segments without error feedback
        x = data(n, seed=7)
        kwargs = {"error_feedback": ErrorFeedback(FORMATS[fmt]())} if feedback else {}
        result, info = quantized(x, None if feedback else FORMATS[fmt](), comm=comm.mpi_comm, **kwargs)
        intra, inter = info.node_bytes
        assert intra + inter == info.bytes_sent and everyone_holds_the_same(result)
        if size == 1:
            assert info.node_bytes == (0, 0)
            continue
        if nodes == 1:
            assert inter == 0 and info.format == "exact"
        else:
            # 2 (N-1) sum_j E(j): every encoded block of every shard (of every segment) sent N-1 times in each
            # phase
            pipelined = not feedback and max(sizes) > 1  # one rank per node: the flat algorithm, unsegmented
            segments = lib.scaleml_hierarchical_segments(n, 4) if pipelined else 1
            assert segments == (2 if pipelined and n > 1 << 20 else 1)
            expected = 2 * (nodes - 1) * sum(
                encoded_bytes(block_range(block_range(n, segments, k)[1], smallest, j)[1], FORMATS[fmt](), nodes)
                for k in range(segments) for j in range(smallest))
            assert world.allreduce(inter) == expected
            if local >= smallest:
                assert inter == 0  # owns no shard
        node_comm = world.Split(rank // ranks_per_node, rank)
        L = sizes[rank // ranks_per_node]
        assert node_comm.allreduce(intra) == (2 * (L - 1) * n * 4 if max(sizes) > 1 else 0)
        node_comm.Free()
    comm.mpi_comm.Free()


def test_fallbacks_on_other_node_sizes():
    """One rank per node: the flat quantized_ring bitwise; one node: hierarchical_dense bitwise, reported exact."""
    x = data(4099, seed=13)
    for ranks_per_node in (1, size):
        comm = scaleml.Comm(world.Dup(), ranks_per_node=ranks_per_node)
        # a compressor per call: each call takes a step of its counter (a fresh random stream)
        result, info = quantized(x, QSGD(bits=4, bucket=64, seed=21), comm=comm.mpi_comm)
        if ranks_per_node == 1 or size == 1:
            flat, _ = quantized(x, QSGD(bits=4, bucket=64, seed=21), "quantized_ring", comm=comm.mpi_comm)
            np.testing.assert_array_equal(result, flat)
        else:
            dense, _ = scaleml.sparse_allreduce(np.arange(x.size, dtype=np.uint32), x, x.size, comm.mpi_comm,
                                                "hierarchical_dense", return_info=True)
            np.testing.assert_array_equal(result, dense)
            assert info.format == "exact" and info.node_bytes[1] == 0
        comm.mpi_comm.Free()


def test_auto_and_the_drop_in_pick_it_where_the_network_is_slow():
    """Slow network, free shared memory: quantized_allreduce's auto runs hierarchical_quantized on several nodes
    of at least two ranks; never on one node (it would compress nothing: hierarchical_dense's case). The
    drop-in's lossy path may choose it too (the tuner's choice against MPI's measured time): its results and
    their agreement are asserted."""
    before = cost_model.get_params()
    cost_model.set_params(alpha=1e-3, beta=1e-6, alpha_intra=0.0, beta_intra=1e-12)
    try:
        x = data(50000, seed=5)
        chosen = []
        for _ in range(3):
            result, info = quantized(x, QSGD(bits=8, bucket=512), "auto")
            assert everyone_holds_the_same(result)
            chosen.append(info.algorithm)
        drop_in = scaleml.Comm(world, compression=QSGD(bits=8, bucket=512))
        out = np.empty_like(x)
        for _ in range(3):
            drop_in.Allreduce(x, out)
            chosen.append(drop_in.last_info.algorithm if drop_in.last_info else "MPI")
            assert everyone_holds_the_same(out)
    finally:
        cost_model.set_params(alpha=before.alpha, beta=before.beta, alpha_intra=before.alpha_intra,
                              beta_intra=before.beta_intra)
    assert len({tuple(c) for c in world.allgather(chosen)}) == 1
    if N > 1 and S > 1:
        assert NAME in chosen[:3], chosen
    if ONE_NODE:
        assert NAME not in chosen[:3], chosen


def test_the_model_costs_it_on_this_topology():
    p = cost_model.get_params()
    q = value_format(QSGD(bits=4)).value_bytes(1 << 20, 4)
    case = (1 << 20, size, 1 << 20, size << 20, 4, 4, False, True, p.alpha, p.beta, p.gamma, p.delta, q)
    costs = scaleml.algorithms.costs(*case, nodes=TOPO.shape, intra=(p.alpha_intra, p.beta_intra))
    if ONE_NODE:
        assert costs[NAME] == float("inf")
    elif FLAT:
        assert costs[NAME] == costs["quantized_ring"]
    else:
        assert 0 < costs[NAME] < float("inf")
    assert lib.scaleml_algorithm_count() == len(scaleml.algorithms.NAMES)

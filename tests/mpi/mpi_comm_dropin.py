"""scaleml.Comm is a drop-in for mpi4py's communicator: the checks mpi4py runs on its own Allreduce.

Modelled on mpi4py's test_cco_buf.py (testAllreduce): every op over every
typecode with the buffer specs mpi4py accepts, compared with mpi4py's own
Allreduce on the same data.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import scaleml

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()

TYPECODES = ["b", "h", "i", "l", "q", "B", "H", "I", "L", "f", "d"]
ARITH_OPS = [MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN]
INT_OPS = [MPI.BAND, MPI.BOR, MPI.BXOR, MPI.LAND, MPI.LOR, MPI.LXOR]
MPI_TYPES = {"f": MPI.FLOAT, "d": MPI.DOUBLE, "i": MPI.INT, "l": MPI.LONG, "b": MPI.SIGNED_CHAR}


def wrappers():
    # default thresholds, and one that sends even tiny float SUMs through the engine
    return [scaleml.Comm(world), scaleml.Comm(world, min_count=0)]


def data_for(typecode: str, count: int) -> np.ndarray:
    rng = np.random.default_rng([17, rank])
    if typecode in "fd":
        x = rng.standard_normal(count)
        x[rng.random(count) < 0.7] = 0  # mostly zeros, so the sparse path can be chosen
        return x.astype(typecode)
    info = np.iinfo(np.dtype(typecode))
    return rng.integers(max(info.min, -3), min(info.max, 4), count).astype(typecode)


def assert_same(got: np.ndarray, expected: np.ndarray):
    if got.dtype.kind == "f":
        eps = np.finfo(got.dtype).eps
        np.testing.assert_allclose(got, expected, rtol=size * eps * 4, atol=size * eps * 4)
    else:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("typecode", TYPECODES)
@pytest.mark.parametrize("count", [0, 1, 7, 5000])
def test_allreduce_numpy_all_ops(typecode, count):
    ops = ARITH_OPS + (INT_OPS if typecode not in "fd" else [])
    for comm in wrappers():
        for op in ops:
            send = data_for(typecode, count)
            expected = np.empty_like(send)
            world.Allreduce(send, expected, op)
            got = np.full_like(send, 99)
            assert comm.Allreduce(send, got, op) is None
            assert_same(got, expected)


@pytest.mark.parametrize("typecode", ["i", "f", "d"])
def test_buffer_specs(typecode):
    count = 6000
    mpi_type = MPI_TYPES[typecode]
    for comm in wrappers():
        send = data_for(typecode, count)
        expected = np.empty_like(send)
        world.Allreduce(send, expected, MPI.SUM)
        specs = [
            ([send, mpi_type], lambda r: [r, mpi_type]),
            ([send, count, mpi_type], lambda r: [r, count, mpi_type]),
            ((send, mpi_type), lambda r: (r, mpi_type)),
        ]
        for send_spec, recv_spec in specs:
            got = np.zeros_like(send)
            comm.Allreduce(send_spec, recv_spec(got), op=MPI.SUM)
            assert_same(got, expected)
        # a prefix of the buffer: the rest stays untouched
        got = np.full(count, 7, dtype=typecode)
        comm.Allreduce([send, 100, mpi_type], [got, 100, mpi_type], MPI.SUM)
        assert_same(got[:100], expected[:100])
        assert (got[100:] == 7).all()
        # with a displacement
        got = np.full(count, 7, dtype=typecode)
        comm.Allreduce([send, (50, 10), mpi_type], [got, (50, 20), mpi_type], MPI.SUM)
        ref = np.empty(50, dtype=typecode)
        world.Allreduce([send, (50, 10), mpi_type], ref, MPI.SUM)
        assert_same(got[20:70], ref)
        assert (got[:20] == 7).all() and (got[70:] == 7).all()


@pytest.mark.parametrize("typecode", ["i", "f", "d"])
def test_in_place(typecode):
    for comm in wrappers():
        for op in ARITH_OPS:
            buf = data_for(typecode, 5000)
            expected = np.empty_like(buf)
            world.Allreduce(buf, expected, op)
            comm.Allreduce(MPI.IN_PLACE, buf, op)
            assert_same(buf, expected)


def test_bytearray_buffers():
    count = 5000
    send = data_for("f", count)
    expected = np.empty_like(send)
    world.Allreduce(send, expected, MPI.SUM)
    raw = bytearray(send.tobytes())
    out = bytearray(len(raw))
    scaleml.Comm(world, min_count=0).Allreduce([raw, MPI.FLOAT], [out, MPI.FLOAT], MPI.SUM)
    assert_same(np.frombuffer(out, dtype=np.float32), expected)


def test_sparse_path_is_taken_and_reported():
    # A model that calls local work free and the network a million times faster predicts the sparse path in
    # picoseconds: worth a try against any time MPI measured, however busy the machine, so the model decides
    # (whether it then stays depends on this machine's times; that it runs, right and reported, does not).
    before = scaleml.cost_model.get_params()
    scaleml.cost_model.set_params(alpha=before.alpha * 1e-6, beta=before.beta * 1e-6, gamma=0.0, delta=0.0)
    try:
        _sparse_path_is_taken_and_reported()
    finally:
        scaleml.cost_model.set_params(alpha=before.alpha, beta=before.beta, gamma=before.gamma, delta=before.delta)


def _sparse_path_is_taken_and_reported():
    comm = scaleml.Comm(world.Dup())  # a fresh tuner
    n = 1 << 18
    rng = np.random.default_rng([5, rank])
    send = np.zeros(n, np.float32)
    send[rng.choice(n, 20, replace=False)] = 1.0
    out = np.empty_like(send)
    comm.Allreduce(send, out, MPI.SUM)  # the first calls of a size class time MPI_Allreduce itself
    assert comm.last_info is not None and comm.last_info.algorithm == "dense"
    for _ in range(8):  # then the check: 20 non-zeros against 2^18 values, the sparse path wins
        comm.Allreduce(send, out, MPI.SUM)
        if comm.last_info is not None and comm.last_info.algorithm != "dense":
            break
    expected = np.empty_like(send)
    world.Allreduce(send, expected, MPI.SUM)
    assert_same(out, expected)
    assert comm.last_info is not None
    if size > 1:
        assert comm.last_info.algorithm in ("recursive_doubling", "split_allgather")
    dense = rng.standard_normal(n).astype(np.float32)
    world.Allreduce(dense, expected, MPI.SUM)
    for _ in range(6):  # an engine algorithm the model favours may be tried once; measured, it is compared with MPI
        comm.Allreduce(dense, out, MPI.SUM)
        assert_same(out, expected)
        if comm.last_info is None or comm.last_info.algorithm == "dense":
            np.testing.assert_array_equal(out, expected)  # the dense path IS MPI_Allreduce
    comm.Allreduce(dense, out, MPI.MAX)  # not SUM: straight to MPI
    assert comm.last_info is None
    comm.mpi_comm.Free()


@pytest.mark.parametrize("algorithm", scaleml.algorithms.EXACT)  # every exact algorithm (lossy: mpi_quantized.py)
def test_forced_algorithm(algorithm):
    comm = scaleml.Comm(world, algorithm=algorithm, min_count=0)
    send = data_for("d", 3001)
    out = np.empty_like(send)
    comm.Allreduce(send, out)
    expected = np.empty_like(send)
    world.Allreduce(send, expected)
    assert_same(out, expected)
    assert comm.last_info.algorithm == algorithm


def test_scan_stores_the_nonzeros_a_sparse_algorithm_takes(monkeypatch):
    """The drop-in's scan stores the non-zeros as it counts them (up to n/16 in the first call, then n/4
    after an input with at most that many, n/256 after one with more): a sparse algorithm extracts them again
    only when they did not fit."""
    extractions = []
    extract = scaleml.engine.extract_nonzeros
    monkeypatch.setattr(scaleml.engine, "extract_nonzeros", lambda *args: extractions.append(1) or extract(*args))
    comm = scaleml.Comm(world, algorithm="split_allgather", min_count=0)
    n = 50_017
    rng = np.random.default_rng([23, rank])
    for density, extracted in [(0.2, 1), (0.2, 0), (0.001, 0), (1.0, 1), (0.03, 1), (0.2, 0), (0.5, 1),
                               (0.001, 0)]:
        send = np.where(rng.random(n) < density, rng.standard_normal(n), 0).astype(np.float32)
        out, expected = np.empty_like(send), np.empty_like(send)
        comm.Allreduce(send, out)
        world.Allreduce(send, expected)
        assert_same(out, expected)
        assert comm.last_info.algorithm == "split_allgather"
        assert len(extractions) == extracted, density
        extractions.clear()


class CountingLib:
    """scaleml.engine's cffi lib, counting what scaleml_result_to_dense_over returns."""

    def __init__(self, lib):
        self.lib, self.over = lib, []

    def scaleml_result_to_dense_over(self, *args):
        written = self.lib.scaleml_result_to_dense_over(*args)
        self.over.append(written)
        return written

    def __getattr__(self, name):
        return getattr(self.lib, name)


@pytest.mark.parametrize("typecode", ["f", "d"])
@pytest.mark.parametrize("algorithm", ["split_allgather", "recursive_doubling", "split_dense", "hierarchical_sparse"])
def test_in_place_sparse_result_is_written_over_the_input(monkeypatch, typecode, algorithm):
    """MPI.IN_PLACE at low density: the result written over the input (its non-zeros cleared, the result's
    entries set) where it pays, else the whole vector written; sums that cancel to 0 and a -0.0 on one rank
    (which must come out as MPI's +0.0) either way."""
    counting = CountingLib(scaleml.engine.lib)
    monkeypatch.setattr(scaleml.engine, "lib", counting)
    comm = scaleml.Comm(world, algorithm=algorithm, min_count=0)
    n = 40_000
    rng = np.random.default_rng([29, rank])
    for density, negative_zero in [(0.0005, False), (0.0005, True), (0.05, False), (0.0, False)]:
        x = np.where(rng.random(n) < density, rng.standard_normal(n), 0).astype(typecode)
        x[11] = 1.5 if rank % 2 == 0 else -1.5  # 0 where the ranks are even in number
        x[n - 1] = 0.25  # the last index
        if negative_zero and rank == 0:
            x[7] = -0.0
        parts = world.allgather(x)
        expected = parts[0].copy()
        for part in parts[1:]:
            expected += part
        out = x.copy()
        counting.over.clear()
        comm.Allreduce(MPI.IN_PLACE, out)
        failures = []  # gathered before asserting: a rank that failed alone would leave the others waiting
        tolerance = size * 4 * np.finfo(out.dtype).eps
        if not (np.allclose(out, expected, rtol=tolerance, atol=tolerance)
                and np.array_equal(np.signbit(out), np.signbit(expected))):
            failures.append(f"in place, density {density}: wrong sum or sign of zero")
        info = comm.last_info
        if info is not None and info.algorithm == algorithm and size > 1:  # else MPI ran it
            # Written over where this rank's input held no -0.0 and the entries are few (split_dense's result
            # is dense, hierarchical_sparse reads the dense input itself: never over); each rank's own choice,
            # made after the collective (nothing to agree).
            over = not (negative_zero and rank == 0) and density < 0.01 and algorithm in ("split_allgather",
                                                                                             "recursive_doubling")
            if counting.over != [int(over)] and not (counting.over == [] and not over):
                failures.append(f"density {density}, -0.0 {negative_zero}: written over {counting.over}")
        # Not in place: the whole vector, as before.
        send, out = x.copy(), np.full_like(x, 9)
        counting.over.clear()
        comm.Allreduce(send, out)
        if not np.allclose(out, expected, rtol=tolerance, atol=tolerance) or counting.over:
            failures.append(f"not in place, density {density}: wrong sum or written over")
        assert world.allgather(failures) == [[]] * size


def test_attributes_are_the_wrapped_communicators():
    comm = scaleml.Comm(world)
    assert comm.rank == world.rank and comm.Get_size() == size
    assert comm.allreduce(rank) == sum(range(size))
    assert comm.bcast("x", root=0) == "x"
    comm.Barrier()
    assert comm == world and comm.mpi_comm is world
    sub = comm.Split(rank % 2, rank)
    dup = comm.Dup()
    try:
        assert isinstance(sub, scaleml.Comm) and isinstance(dup, scaleml.Comm)
        x = np.zeros(5000, np.float32)
        x[rank] = 1
        out = np.empty_like(x)
        sub.Allreduce(x, out)
        assert out.sum() == sub.Get_size()
    finally:
        sub.Free()
        dup.Free()


# ---- bad input: an error on every rank, never a hang ----

def test_read_only_receive_buffer_on_one_rank():
    comm = scaleml.Comm(world, min_count=0)
    send = data_for("f", 100)
    recv = np.zeros_like(send)
    if rank == 0:
        recv.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|failed"):
        comm.Allreduce(send, recv)


def test_non_contiguous_send_buffer():
    comm = scaleml.Comm(world, min_count=0)
    send = data_for("f", 200)[::2] if rank == 0 else data_for("f", 100)
    recv = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="contiguous|failed"):
        comm.Allreduce(send, recv)


def test_count_differs_between_ranks():
    # A fresh communicator: its calls go through the agreement. (Inside a period in which the tuner sends a
    # size class straight to MPI, counts that differ get what plain MPI gives them; see docs/algorithms.md.)
    fresh = world.Dup()
    comm = scaleml.Comm(fresh, min_count=0)
    count = 100 + (rank % 2)
    send = data_for("f", count)
    recv = np.zeros_like(send)
    with pytest.raises(ValueError, match="n differs") if size > 1 else _no_error():
        comm.Allreduce(send, recv)
    fresh.Free()


def test_send_and_receive_dtype_differ():
    comm = scaleml.Comm(world, min_count=0)
    with pytest.raises(TypeError, match="dtype"):
        comm.Allreduce(np.zeros(100, np.float64), np.zeros(100, np.float32))


def test_wrapping_a_non_communicator():
    with pytest.raises(TypeError):
        scaleml.Comm(object())
    with pytest.raises(ValueError):
        scaleml.Comm(world, algorithm="bogus")


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_forced_algorithm_differs_between_ranks():
    names = scaleml.algorithms.EXACT
    comm = scaleml.Comm(world, algorithm=names[rank % 2], min_count=0)
    send = data_for("f", 500)
    out = np.empty_like(send)
    if size > 1:
        with pytest.raises(ValueError, match="algorithm differs between ranks"):
            comm.Allreduce(send, out)
    else:
        comm.Allreduce(send, out)
    ok = scaleml.Comm(world, min_count=0)  # the communicator is still usable
    ok.Allreduce(send, out)
    expected = np.empty_like(send)
    world.Allreduce(send, expected)
    assert_same(out, expected)


def _class_goes_to_mpi(comm, n: int, dtype) -> None:
    """Put the drop-in's size class of n into its no-agreement MPI period (as the tuner does when MPI wins)."""
    stats = scaleml.engine.engine_state(comm.mpi_comm).tuner.stats("Allreduce", np.dtype(dtype).itemsize, n)
    stats.mpi_until = stats.calls + 1000


def test_mpi_period_bad_buffer_on_one_rank_raises_everywhere():
    comm = scaleml.Comm(world, min_count=0)
    n = 700
    _class_goes_to_mpi(comm, n, np.float32)
    send = data_for("f", n)
    recv = np.zeros_like(send)
    if rank == size - 1:
        recv.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|failed"):
        comm.Allreduce(send, recv)
    assert comm.last_info is None
    recv = np.zeros_like(send)
    comm.Allreduce(send, recv)  # and the next call is right
    expected = np.empty_like(send)
    world.Allreduce(send, expected)
    assert_same(recv, expected)


def _in_fast_mpi_period(comm, n: int, typecode: str) -> None:
    """The class of n in a long MPI period, past its first call: the next calls take the fast path (no planning,
    no timing), as in the steady state of a class MPI won."""
    comm.Allreduce(data_for(typecode, n), np.zeros(n, typecode))  # planned: the class joins the fast lookup
    stats = comm._mpi_fast[n]
    assert stats.dtype == np.dtype(typecode)
    stats.mpi_until = stats.calls + 1000


@pytest.fixture(params=["from C", "through mpi4py"])
def mpi_route(request, monkeypatch):
    """The MPI period's two routes: MPI_Allreduce from C (scaleml._mpi_direct, Python 3.11+) and mpi4py's."""
    if request.param == "through mpi4py":
        monkeypatch.setattr(scaleml.comm, "_allreduce_sum", None)
    elif scaleml.comm._allreduce_sum is None:
        pytest.skip("scaleml._mpi_direct is built on Python 3.11+ only")
    return request.param


@pytest.mark.parametrize("typecode", ["f", "d"])
@pytest.mark.parametrize("in_place", [False, True])
def test_mpi_period_routes_give_mpis_sum(mpi_route, typecode, in_place):
    comm = scaleml.Comm(world, min_count=0)
    n = 702
    _in_fast_mpi_period(comm, n, typecode)
    send = data_for(typecode, n)
    expected = np.empty_like(send)
    world.Allreduce(send, expected)
    recv = send.copy() if in_place else np.zeros_like(send)
    comm.Allreduce(MPI.IN_PLACE if in_place else send, recv)
    np.testing.assert_array_equal(recv, expected)  # the same MPI_Allreduce: bitwise


def _mpi_without_agreement(period: str, n: int) -> scaleml.Comm:
    """A Comm whose next float32 call of n values MPI runs with no agreement: in the tuner's MPI period (fast
    path), or below ``min_count``."""
    if period == "below min_count":
        return scaleml.Comm(world, min_count=n + 1)
    comm = scaleml.Comm(world, min_count=0)
    _in_fast_mpi_period(comm, n, "f")
    return comm


@pytest.mark.parametrize("period", ["MPI period", "below min_count"])
@pytest.mark.parametrize("bad", ["read-only recv", "strided recv", "short send", "float64 send", "strided send",
                                 "bytes recv", "op not an MPI.Op"])
def test_mpi_period_routes_fail_every_rank_on_one_ranks_bad_buffer(mpi_route, period, bad):
    n = 703
    comm = _mpi_without_agreement(period, n)
    send, recv, op = data_for("f", n), np.zeros(n, np.float32), MPI.SUM
    if rank == size - 1:
        if bad == "read-only recv":
            recv.flags.writeable = False
        elif bad == "strided recv":
            recv = np.zeros(2 * n, np.float32)[::2]
        elif bad == "short send":
            send = send[:-1]
        elif bad == "float64 send":
            send = send.astype(np.float64)
        elif bad == "strided send":
            send = np.repeat(send, 2)[::2]
        elif bad == "bytes recv":  # not an array: the drop-in's general path, which mpi4py's check would fail
            recv = [bytes(4 * n), MPI.FLOAT]
        elif bad == "op not an MPI.Op":
            op = "sum"
    failed = None
    try:
        comm.Allreduce(send, recv, op)
    except Exception as exc:  # noqa: BLE001 - every rank must fail, whatever the type
        failed = exc
    assert world.allreduce(failed is not None, op=MPI.LAND), f"rank {rank}: {failed!r}"
    recv = np.zeros(n, np.float32)
    comm.Allreduce(data_for("f", n), recv)  # and the next call is right
    expected = np.empty_like(recv)
    world.Allreduce(data_for("f", n), expected)
    np.testing.assert_array_equal(recv, expected)


@pytest.mark.parametrize("typecode", ["f", "d", "i"])
def test_below_min_count_routes_are_mpis_allreduce(mpi_route, typecode):
    comm = scaleml.Comm(world, min_count=1 << 20)
    send = data_for(typecode, 500)
    expected, recv = np.empty_like(send), np.zeros_like(send)
    world.Allreduce(send, expected)
    comm.Allreduce(send, recv)
    np.testing.assert_array_equal(recv, expected)
    with pytest.raises(ValueError):  # mpi4py's own check, before any MPI call (made on every rank here)
        comm.Allreduce(send, recv[:-1])
    empty = np.zeros(0, send.dtype)
    comm.Allreduce(empty, empty.copy())  # count 0: no index 0 to check


@pytest.mark.parametrize("period", ["MPI period", "below min_count"])
def test_mpi_period_nan_in_the_data_is_mpis_result(period):
    n = 701
    if period == "below min_count":
        comm = scaleml.Comm(world, min_count=n + 1)
    else:
        comm = scaleml.Comm(world, min_count=0)
        _class_goes_to_mpi(comm, n, np.float64)
    send = data_for("d", n)
    if rank == 0:
        send[5] = np.nan
    recv = np.zeros_like(send)
    comm.Allreduce(send, recv)  # no rank failed: the NaN is the data's, as with plain MPI
    expected = np.empty_like(send)
    world.Allreduce(send, expected)
    assert np.isnan(recv[5]) and np.isnan(expected[5])
    assert_same(np.nan_to_num(recv), np.nan_to_num(expected))


def test_tuner_agrees_on_every_rank():
    """After many calls of mixed density every rank holds the same tuner state (the choices depend on it)."""
    comm = scaleml.Comm(world)
    n = 1 << 14
    rng = np.random.default_rng([3, rank])
    for i in range(40):
        send = np.zeros(n, np.float32)
        density = (0.001, 0.5)[(i // 10) % 2]
        send[rng.random(n) < density] = 1.0
        out = np.empty_like(send)
        comm.Allreduce(send, out)
        expected = np.empty_like(send)
        world.Allreduce(send, expected)
        assert_same(out, expected)
    state = scaleml.engine.engine_state(world)
    mine = {k: (v.calls, v.mpi_until, v.backoff, sorted(v.ratio.items()), v.mpi_seconds)
            for k, v in state.tuner.classes.items()}
    assert all(other == mine for other in world.allgather(mine))

"""scaleml.Comm is an MPI.Intracomm; Iallreduce and the nonblocking collectives (run on every rank).

Each nonblocking call is compared with the blocking call or with mpi4py's
Allreduce on the same data; overlap is checked by computing without touching
the request until it reports completion.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml.nonblocking import Request, waitall

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()


def sparse_data(n: int, dtype=np.float32, seed: int = 0, density: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng([seed, rank])
    x = np.zeros(n, dtype)
    hits = rng.random(n) < density
    x[hits] = rng.standard_normal(int(hits.sum())).astype(dtype)
    return x


def reference(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    world.Allreduce(x, out, MPI.SUM)
    return out


def assert_sum_close(got: np.ndarray, expected: np.ndarray) -> None:
    eps = np.finfo(got.dtype).eps
    np.testing.assert_allclose(got, expected, rtol=4 * size * eps, atol=4 * size * eps)


# ---- a scaleml.Comm is a communicator ----

def test_comm_is_an_intracomm_with_every_mpi4py_method():
    comm = scaleml.Comm(world)
    assert isinstance(comm, MPI.Intracomm) and isinstance(comm, MPI.Comm)
    assert comm == world and comm.Compare(world) == MPI.IDENT
    assert set(dir(world)) <= set(dir(comm))
    assert comm.Get_rank() == rank and comm.size == size
    assert comm.allreduce(rank) == sum(range(size))
    assert comm.bcast({"a": 1} if rank == 0 else None, root=0) == {"a": 1}
    assert comm.allgather(rank) == list(range(size))
    assert comm.py2f() == world.py2f()


@pytest.mark.parametrize("make", ["Dup", "Clone", "Split", "Split_type", "Create", "Create_group", "Idup",
                                  "Idup_with_info", "Create_from_group"])
def test_constructors_return_a_comm_with_the_same_settings(make):
    comm = scaleml.Comm(world, min_count=123, algorithm="split_allgather")
    if make == "Split":
        new = comm.Split(rank % 2, rank)
    elif make == "Split_type":
        new = comm.Split_type(MPI.COMM_TYPE_SHARED)
    elif make in ("Create", "Create_group"):
        new = getattr(comm, make)(comm.Get_group())
    elif make in ("Idup", "Idup_with_info"):
        new, request = comm.Idup() if make == "Idup" else comm.Idup_with_info(MPI.INFO_NULL)
        request.Wait()
    elif make == "Create_from_group":
        new = scaleml.Comm.Create_from_group(comm.Get_group())
        new.min_count, new.algorithm = 123, "split_allgather"  # a class method: default settings
    else:
        new = getattr(comm, make)()
    try:
        assert type(new) is scaleml.Comm
        assert new.min_count == 123 and new.algorithm == "split_allgather"
        assert new != comm  # a new communicator
        x = sparse_data(5000, seed=3)
        out = np.empty_like(x)
        new.Allreduce(x, out)  # the engine (forced algorithm) on the new communicator
        expected = np.empty_like(x)
        MPI.Intracomm.Allreduce(new, x, expected)  # mpi4py's own method on the same communicator
        assert_sum_close(out, expected)
        assert new.last_info is not None and new.last_info.algorithm == "split_allgather"
    finally:
        new.Free()


def test_split_with_undefined_color_is_comm_null_and_cart_is_mpi4pys():
    comm = scaleml.Comm(world)
    none = comm.Split(MPI.UNDEFINED if rank == 0 else 0, rank)
    if rank == 0:
        assert none == MPI.COMM_NULL
    else:
        assert isinstance(none, scaleml.Comm) and none.Get_size() == size - 1
        none.Free()
    cart = comm.Create_cart([size])
    assert isinstance(cart, MPI.Cartcomm) and cart.Get_size() == size
    cart.Free()


def test_every_scaleml_function_accepts_a_comm():
    comm = scaleml.Comm(world)
    n = 64
    total = scaleml.sparse_allreduce(np.array([rank % n]), np.array([1.0], np.float32), n, comm)
    assert total.sum() == size
    x = np.full(100, rank, np.float32)
    q = scaleml.quantized_allreduce(x, comm, scaleml.compress.Cast("fp16"))
    assert np.all(q == sum(range(size)))
    ef = scaleml.compress.ErrorFeedback(scaleml.compress.TopK(ratio=0.5))
    g = scaleml.topk_allreduce(np.arange(10, dtype=np.float32), comm, error_feedback=ef)
    assert g.shape == (10,)


# ---- Iallreduce ----

@pytest.mark.parametrize("n", [0, 1, 7, 4095, 4096, 20000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_iallreduce_matches_mpi(n, dtype):
    comm = scaleml.Comm(world)
    x = sparse_data(n, dtype, seed=n)
    out = np.full_like(x, 7)
    request = comm.Iallreduce(x, out, MPI.SUM)
    if n < comm.min_count:
        assert isinstance(request, MPI.Request)  # mpi4py's own, straight to MPI
    else:
        assert isinstance(request, Request)
    assert request.Wait() is True
    assert_sum_close(out, reference(x))


def test_iallreduce_in_place_other_ops_and_integers():
    comm = scaleml.Comm(world, min_count=0)
    x = sparse_data(5000, seed=1)
    buf = x.copy()
    comm.Iallreduce(MPI.IN_PLACE, buf).Wait()
    assert_sum_close(buf, reference(x))
    ints = np.arange(5000, dtype=np.int64) + rank
    out = np.empty_like(ints)
    request = comm.Iallreduce(ints, out, MPI.MAX)
    assert isinstance(request, MPI.Request)
    request.Wait()
    assert np.array_equal(out, np.arange(5000) + size - 1)


def test_many_outstanding_requests_complete_in_order_with_the_right_sums():
    comm = scaleml.Comm(world)
    inputs = [sparse_data(6000, seed=s, density=0.02 * (s + 1)) for s in range(6)]
    outs = [np.empty_like(x) for x in inputs]
    requests = [comm.Iallreduce(x, out) for x, out in zip(inputs, outs)]
    finished = []
    for i, request in enumerate(requests):
        request.add_done_callback(lambda _r, i=i: finished.append(i))
    waitall(requests)
    # Every callback fired once. The order is not issue order: the calls MPI runs complete when waited
    # for (or by a waiter thread), the calls on the progress thread when it is done, as MPI's requests do.
    assert sorted(finished) == list(range(len(inputs)))
    for x, out in zip(inputs, outs):
        assert_sum_close(out, reference(x))


def test_blocking_calls_while_a_nonblocking_one_is_pending():
    comm = scaleml.Comm(world)
    x, y = sparse_data(30000, seed=5), sparse_data(30000, seed=6)
    out_x, out_y = np.empty_like(x), np.empty_like(y)
    request = comm.Iallreduce(x, out_x)
    comm.Allreduce(y, out_y)  # the user's communicator: never matches the pending call's messages
    assert comm.bcast(rank, root=size - 1) == size - 1
    request.Wait()
    assert_sum_close(out_x, reference(x))
    assert_sum_close(out_y, reference(y))


def test_progress_does_not_need_the_caller():
    """The request completes while the caller computes and never calls Test or Wait."""
    comm = scaleml.Comm(world)
    x = sparse_data(200000, seed=9, density=0.3)
    out = np.empty_like(x)
    request = comm.Iallreduce(x, out)
    deadline = time.monotonic() + 120
    work = 0
    while not request.done() and time.monotonic() < deadline:
        work += int(np.sum(np.arange(20000) % 7))  # the caller's own computation
    assert request.done(), "the collective made no progress while the caller computed"
    assert work > 0
    request.Wait()
    assert_sum_close(out, reference(x))


def test_a_bad_argument_on_one_rank_fails_the_request_on_every_rank():
    comm = scaleml.Comm(world, min_count=0)
    x = sparse_data(5000, seed=2)
    out = np.empty_like(x)
    if rank == size - 1:
        out.flags.writeable = False
    request = comm.Iallreduce(x, out)
    with pytest.raises(BufferError):
        request.Wait()
    # and the communicator is still usable afterwards
    out = np.empty_like(x)
    comm.Iallreduce(x, out).Wait()
    assert_sum_close(out, reference(x))


# ---- nonblocking forms of the other collectives ----

def test_isparse_allreduce_equals_the_blocking_call():
    n = 1000
    rng = np.random.default_rng([4, rank])
    idx = rng.choice(n, 50, replace=False)
    vals = rng.standard_normal(50).astype(np.float32)
    blocking = scaleml.sparse_allreduce(idx, vals, n, world)
    request = scaleml.isparse_allreduce(idx, vals, n, world)
    np.testing.assert_array_equal(request.result(timeout=120), blocking)


def test_iquantized_allreduce_equals_the_blocking_call_bitwise():
    x = sparse_data(10000, seed=8, density=1.0)
    blocking = scaleml.quantized_allreduce(x, world, scaleml.compress.QSGD(bits=4, seed=11))
    request = scaleml.iquantized_allreduce(x, world, scaleml.compress.QSGD(bits=4, seed=11))
    np.testing.assert_array_equal(request.wait(), blocking)


def test_itopk_allreduce_equals_the_blocking_call_and_updates_the_residual():
    grad = sparse_data(2000, seed=12, density=1.0)
    ef_a = scaleml.compress.ErrorFeedback(scaleml.compress.TopK(ratio=0.05))
    ef_b = scaleml.compress.ErrorFeedback(scaleml.compress.TopK(ratio=0.05))
    blocking = scaleml.topk_allreduce(grad, world, error_feedback=ef_a)
    got = scaleml.itopk_allreduce(grad, world, error_feedback=ef_b).result(timeout=120)
    np.testing.assert_array_equal(got, blocking)
    np.testing.assert_array_equal(ef_a.state_dict()["residual/grad"], ef_b.state_dict()["residual/grad"])


def test_nonblocking_errors_reach_every_rank():
    n = 100
    idx = np.array([n + 5 if rank == 0 else 1])  # out of range on rank 0
    request = scaleml.isparse_allreduce(idx, np.array([1.0]), n, world)
    with pytest.raises(ValueError):
        request.Wait()


def test_torch_future_completes_with_the_result():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (make install-torch)")
    comm = scaleml.Comm(world)
    x = sparse_data(8000, seed=13)
    out = np.empty_like(x)
    future = comm.Iallreduce(x, out).get_future(value=lambda _info: torch.from_numpy(out))
    assert_sum_close(future.wait().numpy(), reference(x))


# ---- Iallreduce where the engine lost: MPI_Iallreduce on the caller's buffers ----

@pytest.fixture(params=["from C", "through mpi4py"])
def mpi_route(request, monkeypatch):
    """A fresh communicator (its tuner has learned nothing: the engine's first check of a class chooses MPI)
    on which every class the engine loses goes to MPI_Iallreduce (SCALEML_IALLREDUCE_THREAD_BYTES: any size),
    started and waited for from C (scaleml._mpi_direct, Python 3.11+) or through mpi4py's calls (the request
    in Python)."""
    if request.param == "through mpi4py":  # the request in Python too (where scaleml._mpi_direct is not built)
        monkeypatch.setattr(scaleml.comm, "_iallreduce_request", None)
        monkeypatch.setattr(scaleml.comm, "MPIRequest", scaleml.nonblocking.MPIRequestPy)
        monkeypatch.setattr(scaleml.nonblocking, "MPIRequest", scaleml.nonblocking.MPIRequestPy)
    elif scaleml.comm._iallreduce_request is None:
        pytest.skip("scaleml._mpi_direct is built on Python 3.11+ only")
    monkeypatch.setattr(scaleml.nonblocking, "IALLREDUCE_THREAD_BYTES", 1 << 40)
    fresh = world.Dup()
    yield scaleml.Comm(fresh)
    fresh.Free()  # frees its progress channel and private communicators too


def route(request) -> str:
    """Where an Iallreduce runs: ``MPI`` (MPI_Iallreduce on the caller's buffers) or ``thread``."""
    if isinstance(request, (scaleml.nonblocking.MPIRequest, scaleml.nonblocking.MPIRequestPy)):
        return "MPI"
    assert type(request) is Request, type(request)
    return "thread"


def advance_to_mpi_period(comm, x: np.ndarray, room: int = 1) -> None:
    """Good calls until the next ``room`` calls of x's class are certain to go to MPI (alike on every rank:
    the routes are decided from agreed values)."""
    out = np.empty_like(x)
    for _ in range(200):
        routes = comm._iallreduce_routes.get((x.size, x.dtype))
        if routes is not None and routes.mpi and routes.check is None and routes.until - routes.calls >= room:
            return
        comm.Iallreduce(x, out).Wait()
        assert_sum_close(out, reference(x))
    raise AssertionError("the engine never lost to MPI on dense data")


def test_dense_data_goes_to_mpi_iallreduce_with_the_right_sums_and_rechecks_on_the_thread(mpi_route):
    comm = mpi_route
    x = sparse_data(5000, seed=21, density=1.0)
    routes = []
    for _ in range(40):
        out = np.full_like(x, 7)
        request = comm.Iallreduce(x, out)
        routes.append(route(request))
        assert request.Wait() is True
        assert_sum_close(out, reference(x))
    # The first call of a class runs the engine's check on the thread; it has no time of MPI's to beat yet,
    # so MPI runs it, and the next 4 calls are MPI_Iallreduce; the call after them re-checks on the thread.
    # (What the tuner decides after that depends on the times it measures.)
    assert routes[:6] == ["thread"] + ["MPI"] * 4 + ["thread"], routes
    assert comm.allgather(routes) == [routes] * size  # the same routes on every rank


def test_a_forced_algorithm_never_goes_to_mpi():
    comm = scaleml.Comm(world, algorithm="ring")
    x = sparse_data(5000, seed=22, density=1.0)
    for _ in range(8):
        out = np.empty_like(x)
        request = comm.Iallreduce(x, out)
        assert type(request) is Request
        assert request.wait().algorithm == "ring"
        assert_sum_close(out, reference(x))


@pytest.mark.parametrize("bad", ["read-only", "non-contiguous", "send dtype"])
def test_a_bad_buffer_in_an_mpi_period_fails_on_every_rank_and_the_comm_stays_usable(bad, mpi_route):
    # Bad buffers of the same (count, dtype) as the other ranks'. (A receive buffer of another count or dtype
    # is another size class: inside an MPI period it gets what plain MPI gives it, as the blocking drop-in's
    # does; see docs/algorithms.md.)
    comm = mpi_route
    x = sparse_data(5000, seed=23, density=1.0)
    advance_to_mpi_period(comm, x)
    send, out = x, np.empty_like(x)
    if rank == size - 1:
        if bad == "read-only":
            out.flags.writeable = False
        elif bad == "non-contiguous":
            out = np.empty(2 * x.size, np.float32)[::2]
        else:
            send = x.astype(np.float64)
    request = comm.Iallreduce(send, out)
    assert route(request) == "MPI"  # on every rank, the bad one included
    with pytest.raises((BufferError, TypeError, ValueError)) as failure:
        request.Wait()
    errors = comm.allgather(type(failure.value).__name__)
    assert len(set(errors)) == 1, errors  # the same kind of exception on every rank
    out = np.empty_like(x)
    comm.Iallreduce(x, out).Wait()
    assert_sum_close(out, reference(x))


def test_waits_in_another_order_on_some_ranks_still_pair_the_checks(mpi_route):
    comm = mpi_route
    x = sparse_data(5000, seed=24, density=1.0)
    y = sparse_data(5000, seed=25, density=1.0)
    advance_to_mpi_period(comm, x, room=3)
    out_a, out_c = np.empty_like(x), np.empty_like(x)
    out_b = np.empty_like(x)
    if rank == 0:
        out_b.flags.writeable = False  # B fails on every rank; A and C stand
    requests = [comm.Iallreduce(x, out_a), comm.Iallreduce(x, out_b), comm.Iallreduce(y, out_c)]
    assert all(route(r) == "MPI" for r in requests)
    order = [2, 1, 0] if rank % 2 else [0, 1, 2]
    outcomes = {}
    for i in order:
        try:
            requests[i].Wait()
            outcomes[i] = "ok"
        except BufferError:
            outcomes[i] = "BufferError"
    assert outcomes == {0: "ok", 1: "BufferError", 2: "ok"}
    assert_sum_close(out_a, reference(x))
    assert_sum_close(out_c, reference(y))


def test_nan_in_the_data_is_a_result_not_an_error(mpi_route):
    comm = mpi_route
    x = sparse_data(5000, seed=26, density=1.0)
    advance_to_mpi_period(comm, x)
    x[0] = np.nan if rank == 0 else x[0]
    out = np.empty_like(x)
    request = comm.Iallreduce(x, out)
    assert route(request) == "MPI"
    request.Wait()  # NaN at index 0 leads into the agreement, which finds no failure
    assert np.isnan(out[0])
    assert_sum_close(out[1:], reference(x)[1:])


def test_an_mpi_run_request_completes_by_test_by_result_and_by_a_callback_nobody_waits_for(mpi_route):
    comm = mpi_route
    x = sparse_data(5000, seed=27, density=1.0)
    advance_to_mpi_period(comm, x, room=3)
    expected = reference(x)
    out = np.empty_like(x)
    request = comm.Iallreduce(x, out)
    deadline = time.monotonic() + 60
    while not request.Test():
        assert time.monotonic() < deadline
    assert request.done() and request.test() == (True, None)
    assert_sum_close(out, expected)
    out = np.empty_like(x)
    assert comm.Iallreduce(x, out).result(timeout=60) is None
    assert_sum_close(out, expected)
    out = np.empty_like(x)
    request = comm.Iallreduce(x, out)
    fired = threading.Event()
    request.add_done_callback(lambda r: fired.set())
    assert fired.wait(60), "the callback never fired though nobody waited"  # a waiter thread completed it
    assert request.done()
    assert_sum_close(out, expected)


def test_long_collectives_stay_on_the_thread(monkeypatch):
    """From SCALEML_IALLREDUCE_THREAD_BYTES on, the thread's overlap is worth its hand-over: every call."""
    monkeypatch.setattr(scaleml.nonblocking, "IALLREDUCE_THREAD_BYTES", 20000)
    fresh = world.Dup()
    comm = scaleml.Comm(fresh)
    x = sparse_data(5000, seed=28, density=1.0)
    routes = []
    for _ in range(12):
        out = np.empty_like(x)
        request = comm.Iallreduce(x, out)
        routes.append(route(request))
        request.Wait()
        assert_sum_close(out, reference(x))
    assert routes == ["thread"] * 12, routes  # 5000 float32 values: 20000 bytes
    fresh.Free()

"""scaleml.Comm is an MPI.Intracomm; Iallreduce and the nonblocking collectives (run on every rank).

Each nonblocking call is compared with the blocking call or with mpi4py's
Allreduce on the same data; overlap is checked by computing without touching
the request until it reports completion.
"""

from __future__ import annotations

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
    assert finished == list(range(len(inputs)))  # one progress thread: issue order
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

"""scaleml.Comm.Allreduce against plain mpi4py on the same inputs, where mpi4py accepts them and where it raises.

Layouts (Fortran-contiguous arrays and buffers, read in memory order as MPI
reads them), buffers whose byte length is not a multiple of the datatype, and
the sign of zero (MPI: -0.0 + -0.0 = -0.0, +0.0 + -0.0 = +0.0). Every case runs
through the wrappers that reach each path: the default thresholds, the engine
for every size (``min_count=0``, auto), and each exact algorithm forced. Where
mpi4py raises on every rank (every rank passes the bad buffer), the drop-in
must raise the same type on every rank; where only some ranks pass a bad
buffer (mpi4py would leave the others waiting), the drop-in must still raise
on every rank, and the communicator must stay usable.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml.errors import BufferLayoutError

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
N = 5000  # above the default min_count (4096): the engine's paths, not a pass-through to MPI
MPI_TYPE = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}
FORCED = ["recursive_doubling", "split_allgather", "split_dense", "ring", "dense"]
DATA_BOUND = 8.0  # the largest magnitude of any value the tests sum


def wrappers() -> list[scaleml.Comm]:
    return [scaleml.Comm(world), scaleml.Comm(world, min_count=0)] + [
        scaleml.Comm(world, min_count=0, algorithm=name) for name in FORCED]


def name_of(comm: scaleml.Comm) -> str:
    return f"{comm.algorithm}/min_count={comm.min_count}"


def reference(send, recv_like: np.ndarray, op=MPI.SUM) -> np.ndarray:
    """mpi4py's own result for this rank's send buffer, in a receive buffer like recv_like."""
    out = np.zeros_like(recv_like)
    world.Allreduce(send, out, op)
    return out


def assert_bitwise_zeros_and_close(got: np.ndarray, expected: np.ndarray, where: str):
    """Zeros where MPI has zeros, with MPI's sign; other values within summation-order rounding."""
    got, expected = np.asarray(got).reshape(-1, order="A"), np.asarray(expected).reshape(-1, order="A")
    assert np.array_equal(got == 0, expected == 0), where
    zeros = expected == 0
    mismatched = np.flatnonzero(np.signbit(got[zeros]) != np.signbit(expected[zeros]))
    assert mismatched.size == 0, f"{where}: {mismatched.size} zeros with the other sign (first at " \
                                 f"{np.flatnonzero(zeros)[mismatched[:3]]})"
    # Summation-order rounding is bounded by the sum of the magnitudes, not by the (possibly cancelled) sum:
    # every value here is at most DATA_BOUND in magnitude, so |error| <= 4 P eps * P * DATA_BOUND.
    eps = np.finfo(expected.dtype).eps
    np.testing.assert_allclose(got, expected, rtol=size * eps * 4, atol=4 * size * size * eps * DATA_BOUND,
                               err_msg=where)


def raises_everywhere(expected: type[BaseException], allreduce, *args) -> BaseException:
    """Run allreduce(*args); every rank must raise ``expected`` (checked collectively: a miss fails everywhere)."""
    caught: BaseException | None = None
    try:
        allreduce(*args)
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        caught = exc
    ok = isinstance(caught, expected)
    all_ok = world.allreduce(ok, op=MPI.LAND)
    assert all_ok, f"rank {rank}: expected {expected.__name__} on every rank, got {caught!r}"
    return caught  # type: ignore[return-value]


def still_usable(comm: scaleml.Comm):
    x = np.arange(N, dtype=np.float32) * (rank + 1)
    out = np.empty_like(x)
    comm.Allreduce(x, out, MPI.SUM)
    assert_bitwise_zeros_and_close(out, reference(x, x), "after the error")


# ---- 1. layouts: Fortran order and buffers, as mpi4py reads them --------------------------------------------


def fortran_data(dtype, shape=(50, 100)) -> np.ndarray:
    rng = np.random.default_rng([3, rank])
    x = np.clip(rng.standard_normal(shape), -DATA_BOUND, DATA_BOUND)
    x[rng.random(shape) < 0.8] = 0  # sparse, so the sparse algorithms can be chosen
    return np.asfortranarray(x.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fortran_contiguous_arrays_give_mpi4pys_result(dtype):
    send = fortran_data(dtype)
    assert send.flags.f_contiguous and not send.flags.c_contiguous
    mpi_type = MPI_TYPE[np.dtype(dtype)]
    for comm in wrappers():
        where = name_of(comm)
        # F -> F, F -> C (MPI reads and writes memory order: the C result is the transposed layout), C -> F
        for recv_order in ("F", "C"):
            got = np.zeros(send.shape, dtype, order=recv_order)
            comm.Allreduce(send, got, MPI.SUM)
            expected = reference(send, got)
            assert_bitwise_zeros_and_close(got, expected, f"{where} F->{recv_order}")
        c_send = np.ascontiguousarray(send)
        got = np.zeros(send.shape, dtype, order="F")
        comm.Allreduce(c_send, got, MPI.SUM)
        assert_bitwise_zeros_and_close(got, reference(c_send, got), f"{where} C->F")
        # in place into a Fortran array
        buf = send.copy(order="F")
        comm.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        assert_bitwise_zeros_and_close(buf, reference(send, send), f"{where} in place F")
        # buffer specs over Fortran arrays and their memoryviews, with counts and displacements
        got = np.zeros(send.shape, dtype, order="F")
        comm.Allreduce([send, mpi_type], [got, mpi_type], MPI.SUM)
        assert_bitwise_zeros_and_close(got, reference(send, got), f"{where} [F, type]")
        got = np.zeros(send.shape, dtype, order="F")
        comm.Allreduce([memoryview(send), mpi_type], [memoryview(got), mpi_type], MPI.SUM)
        assert_bitwise_zeros_and_close(got, reference([memoryview(send), mpi_type], got), f"{where} memoryview F")
        got = np.full(send.shape, 7, dtype, order="F")
        comm.Allreduce([send, (N - 100, 50), mpi_type], [got, (N - 100, 20), mpi_type], MPI.SUM)
        ref = np.full(send.shape, 7, dtype, order="F")
        world.Allreduce([send, (N - 100, 50), mpi_type], [ref, (N - 100, 20), mpi_type], MPI.SUM)
        assert_bitwise_zeros_and_close(got, ref, f"{where} F with count and displacements")


def test_fortran_3d_and_bytes_views():
    send = np.asfortranarray(fortran_data(np.float64, (10, 20, 30)))
    for comm in wrappers():
        got = np.zeros((30, 20, 10), np.float64)  # another shape, C order: memory order is what counts
        comm.Allreduce(send, got, MPI.SUM)
        assert_bitwise_zeros_and_close(got, reference(send, got), name_of(comm))
        raw = bytearray(send.tobytes(order="A"))
        out = bytearray(len(raw))
        comm.Allreduce([raw, MPI.DOUBLE], [out, MPI.DOUBLE], MPI.SUM)
        assert_bitwise_zeros_and_close(np.frombuffer(out, np.float64), reference(send, send).reshape(-1, order="A"),
                                       f"{name_of(comm)} bytearray")


@pytest.mark.parametrize("case", ["strided-send", "strided-recv", "reversed-send", "memoryview-send"])
def test_non_contiguous_buffers_raise_buffer_error_on_every_rank_like_mpi4py(case):
    base = np.zeros(2 * N, np.float32)

    def buffers():
        if case == "strided-send":
            return base[::2], np.zeros(N, np.float32)
        if case == "strided-recv":
            return np.zeros(N, np.float32), base[::2]
        if case == "reversed-send":
            return base[N - 1::-1], np.zeros(N, np.float32)
        return [memoryview(base)[::2], MPI.FLOAT], np.zeros(N, np.float32)

    send, recv = buffers()
    mpi4py_error = raises_everywhere(BufferError, world.Allreduce, send, recv, MPI.SUM)
    assert type(mpi4py_error) is BufferError
    for comm in wrappers():
        send, recv = buffers()
        raises_everywhere(BufferError, comm.Allreduce, send, recv, MPI.SUM)
    # on one rank only: mpi4py would leave the others waiting; the drop-in raises on every rank
    for comm in wrappers()[1:]:
        send, recv = buffers() if rank == size - 1 else (np.zeros(N, np.float32), np.zeros(N, np.float32))
        exc = raises_everywhere(BufferError, comm.Allreduce, send, recv, MPI.SUM)
        assert isinstance(exc, BufferLayoutError) and isinstance(exc, ValueError)
        still_usable(comm)


def test_read_only_receive_buffer_raises_buffer_error_like_mpi4py():
    def recv():
        r = np.zeros(N, np.float32)
        r.flags.writeable = False
        return r

    send = np.ones(N, np.float32)
    raises_everywhere(BufferError, world.Allreduce, send, recv(), MPI.SUM)
    raises_everywhere(BufferError, world.Allreduce, send, [bytes(4 * N), MPI.FLOAT], MPI.SUM)
    for comm in wrappers():
        raises_everywhere(BufferError, comm.Allreduce, send, recv(), MPI.SUM)
        raises_everywhere(BufferError, comm.Allreduce, send, [bytes(4 * N), MPI.FLOAT], MPI.SUM)
        still_usable(comm)


# ---- 2. byte lengths that are not a multiple of the datatype ------------------------------------------------


@pytest.mark.parametrize("nbytes", [10, 4 * N + 2])
@pytest.mark.parametrize("kind", ["bytearray", "uint8"])
def test_length_not_a_multiple_of_the_datatype_raises_value_error_like_mpi4py(nbytes, kind):
    def spec():
        raw = bytearray(nbytes) if kind == "bytearray" else np.zeros(nbytes, np.uint8)
        return [raw, MPI.FLOAT]

    for send, recv in [(spec(), spec()), (spec(), np.zeros(nbytes // 4, np.float32)),
                       (np.zeros(nbytes // 4, np.float32), spec())]:
        exc = raises_everywhere(ValueError, world.Allreduce, send, recv, MPI.SUM)
        assert "not a multiple" in str(exc)
        for comm in wrappers():
            send2 = spec() if isinstance(send, list) else send
            recv2 = spec() if isinstance(recv, list) else recv
            raises_everywhere(ValueError, comm.Allreduce, send2, recv2, MPI.SUM)
    for comm in wrappers():  # in place
        raises_everywhere(ValueError, comm.Allreduce, MPI.IN_PLACE, spec(), MPI.SUM)
    # an explicit count needs no inference: mpi4py accepts it, and so does the drop-in
    count = nbytes // 4
    x = np.arange(count, dtype=np.float32) + rank
    raw = bytearray(x.tobytes() + bytes(nbytes - 4 * count))
    expected = reference(x, x)
    for comm in wrappers():
        out = bytearray(nbytes)
        comm.Allreduce([raw, count, MPI.FLOAT], [out, count, MPI.FLOAT], MPI.SUM)
        assert_bitwise_zeros_and_close(np.frombuffer(out[:4 * count], np.float32), expected, name_of(comm))
        assert out[4 * count:] == bytes(nbytes - 4 * count)


@pytest.mark.parametrize("which", ["recv", "send"])
def test_length_not_a_multiple_on_one_rank_raises_on_every_rank(which):
    bad = rank == size - 1
    for comm in wrappers()[1:] + [scaleml.Comm(world)]:
        good = np.zeros(N, np.float32)
        spec = [bytearray(4 * N + (2 if bad else 0)), MPI.FLOAT]
        send, recv = (good, spec) if which == "recv" else (spec, good)
        exc = raises_everywhere(ValueError, comm.Allreduce, send, recv, MPI.SUM)
        if bad:
            assert "not a multiple" in str(exc)
        still_usable(comm)


def test_length_not_a_multiple_in_an_mpi_period_raises_on_every_rank():
    # the tuner's no-agreement MPI period: the poison NaN leads every rank into the agreement
    comm = scaleml.Comm(world)
    stats = scaleml.engine.engine_state(world).tuner.stats("Allreduce", 4, N)
    stats.mpi_until = stats.calls + 1000
    recv = [bytearray(4 * N + (3 if rank == 0 else 0)), MPI.FLOAT]
    raises_everywhere(ValueError, comm.Allreduce, np.ones(N, np.float32), recv, MPI.SUM)
    still_usable(comm)


# ---- 3. the sign of zero -------------------------------------------------------------------------------------


def zero_pattern(kind: str, dtype) -> np.ndarray:
    x = np.zeros(N, dtype)
    if kind == "all-negative":
        x[:] = -0.0
    elif kind == "negative-on-some-ranks":  # -0.0 on even ranks, +0.0 on odd ones (all -0.0 on one rank)
        x[:] = -0.0 if rank % 2 == 0 else 0.0
    elif kind == "negative-with-nonzeros":
        x[:] = -0.0
        x[rank::7] = rank + 1.5  # non-zeros at rank-dependent positions
        x[3::11] = -(rank + 0.25)
        x[100:200] = 0.0 if rank == size - 1 else -0.0  # +0.0 from one rank: MPI gives +0.0
        if size > 1:  # exact cancellations: +0.0 in MPI, whatever the other terms' zeros
            x[500:520] = 1.5 if rank == 0 else (-1.5 if rank == 1 else -0.0)
    elif kind == "negative-overlapping":  # -0.0 on every rank, at windows that overlap only in part
        x[10 * rank:10 * rank + 300] = -0.0
    elif kind == "negative-disjoint":  # -0.0 on every rank, never at the same index
        x[rank::size] = -0.0
        x[4000 + rank] = 2.0
    return x


PATTERNS = ["all-negative", "negative-on-some-ranks", "negative-with-nonzeros", "negative-overlapping",
            "negative-disjoint"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_sign_of_zero_is_mpis(pattern, dtype):
    send = zero_pattern(pattern, dtype)
    expected = reference(send, send)
    if pattern == "all-negative":
        assert np.signbit(expected).all()  # what MPI gives: -0.0 + -0.0 = -0.0
    if pattern == "negative-on-some-ranks" and size > 1:
        assert not np.signbit(expected).any()  # +0.0 + -0.0 = +0.0
    for comm in wrappers():
        got = np.full_like(send, 7)
        comm.Allreduce(send, got, MPI.SUM)
        assert_bitwise_zeros_and_close(got, expected, f"{name_of(comm)} {pattern}")
        buf = send.copy()
        comm.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        assert_bitwise_zeros_and_close(buf, expected, f"{name_of(comm)} {pattern} in place")
        if comm.algorithm in ("recursive_doubling", "split_allgather", "split_dense"):
            # the sparse algorithms run where some rank has no -0.0 at all; MPI runs otherwise
            every_rank_negative = world.allreduce(bool(np.signbit(send[send == 0]).any()), op=MPI.LAND)
            assert comm.last_info is not None
            assert (comm.last_info.algorithm == "dense") == every_rank_negative, (pattern, comm.last_info)


def test_sign_of_zero_when_auto_has_chosen_a_sparse_algorithm():
    before = scaleml.cost_model.get_params()
    # local work free and the network a million times faster: the model's sparse estimate (picoseconds) is below
    # any time MPI measured, however busy the machine, so the sparse path is tried whatever the timings
    scaleml.cost_model.set_params(alpha=before.alpha * 1e-6, beta=before.beta * 1e-6, gamma=0.0, delta=0.0)
    dup = world.Dup()
    try:
        comm = scaleml.Comm(dup)
        n = 1 << 16
        rng = np.random.default_rng([11, rank])
        sparse = np.zeros(n, np.float32)
        sparse[rng.choice(n, 20, replace=False)] = 1.0
        out = np.empty_like(sparse)
        for _ in range(12):
            comm.Allreduce(sparse, out, MPI.SUM)
            if comm.last_info is not None and comm.last_info.algorithm not in ("dense", "ring"):
                break
        if size > 1:
            assert comm.last_info is not None and comm.last_info.algorithm in (
                "recursive_doubling", "split_allgather", "split_dense"), comm.last_info
        negative = sparse.copy()
        negative[:64] = -0.0  # -0.0 at the same indices on every rank
        comm.Allreduce(negative, out, MPI.SUM)
        expected = reference(negative, negative)
        assert np.signbit(expected[:64]).all()
        assert_bitwise_zeros_and_close(out, expected, "auto after a sparse choice")
        if size > 1:
            assert comm.last_info is not None and comm.last_info.algorithm == "dense"  # MPI ran this call
        for _ in range(3):  # and the following calls too (an MPI period), still MPI's zeros
            comm.Allreduce(negative, out, MPI.SUM)
            assert_bitwise_zeros_and_close(out, expected, "auto, MPI period")
    finally:
        scaleml.cost_model.set_params(alpha=before.alpha, beta=before.beta, gamma=before.gamma, delta=before.delta)
        dup.Free()


# ---- DLPack buffers (CPU torch tensors), as mpi4py reads them ----

@pytest.mark.parametrize("spec", ["bare", "count_datatype", "datatype", "in_place"])
def test_torch_tensors_take_the_engine_and_match_mpi4py(spec):
    torch = pytest.importorskip("torch", reason="PyTorch not installed (make install-torch)")
    comm = scaleml.Comm(world, min_count=0, algorithm="split_allgather")  # the engine, never MPI
    n = 5000
    rng = np.random.default_rng([21, rank])
    x = np.zeros(n, np.float32)
    x[rng.choice(n, 40, replace=False)] = rng.standard_normal(40)
    expected = np.empty_like(x)
    world.Allreduce(x, expected, MPI.SUM)
    send, recv = torch.from_numpy(x.copy()), torch.zeros(n)
    if spec == "bare":
        comm.Allreduce(send, recv, MPI.SUM)
    elif spec == "count_datatype":
        comm.Allreduce([send, n, MPI.FLOAT], [recv, n, MPI.FLOAT], MPI.SUM)
    elif spec == "datatype":
        comm.Allreduce([send, MPI.FLOAT], [recv, MPI.FLOAT], MPI.SUM)
    else:
        recv = send
        comm.Allreduce(MPI.IN_PLACE, recv, MPI.SUM)
    assert comm.last_info is not None and comm.last_info.algorithm == "split_allgather"
    np.testing.assert_allclose(recv.numpy(), expected, rtol=4 * size * 1.2e-7, atol=4 * size * 1.2e-7)
    # mpi4py reads the same tensors through DLPack: the same result
    mpi_out = torch.zeros(n)
    world.Allreduce(torch.from_numpy(x), mpi_out, MPI.SUM)
    np.testing.assert_allclose(recv.numpy(), mpi_out.numpy(), rtol=4 * size * 1.2e-7, atol=4 * size * 1.2e-7)


def test_a_tensor_that_requires_grad_is_refused_like_mpi4py():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (make install-torch)")
    comm = scaleml.Comm(world, min_count=0)
    send, recv = torch.ones(5000, requires_grad=True), torch.zeros(5000)
    with pytest.raises(Exception) as theirs:
        world.Allreduce(send, recv, MPI.SUM)
    with pytest.raises(type(theirs.value)):
        comm.Allreduce(send, recv, MPI.SUM)

"""scaleml._mpi_direct (csrc/python/mpi_direct.c): MPI_Allreduce(MPI_SUM) from C on plain float buffers, and
None, with nothing touched, for every call mpi4py must run (the drop-in then calls mpi4py); the drop-in's
nonblocking request of the same calls (SumRequest, the C base of scaleml.nonblocking.MPIRequest)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from mpi4py import MPI

import scaleml.comm
from scaleml.nonblocking import MPIRequest, _MPIChecks

if sys.version_info < (3, 11):
    pytest.skip("scaleml._mpi_direct is built on Python 3.11+ only", allow_module_level=True)
from scaleml._mpi_direct import SumRequest, allreduce_sum, iallreduce_request  # noqa: E402 (fails on a failed build)

world = MPI.COMM_SELF


def test_the_drop_in_uses_it_from_python_3_11() -> None:
    assert scaleml.comm._allreduce_sum is allreduce_sum


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 1000])
def test_plain_buffers_are_summed(dtype: type, n: int) -> None:
    x = np.arange(n, dtype=dtype) + 0.5
    out = np.full(n, 7, dtype)
    assert allreduce_sum(world, x, out) is False
    np.testing.assert_array_equal(out, x)  # one rank: the sum is the input
    inplace = x.copy()
    assert allreduce_sum(world, MPI.IN_PLACE, inplace) is False
    np.testing.assert_array_equal(inplace, x)


def test_nan_at_index_0_is_reported() -> None:
    x = np.ones(5, np.float32)
    x[0] = np.nan
    out = np.empty_like(x)
    assert allreduce_sum(world, x, out) is True
    x[0], x[3] = 1, np.nan  # elsewhere it is the data's: not reported
    assert allreduce_sum(world, x, out) is False and np.isnan(out[3])


def _readonly() -> np.ndarray:
    a = np.zeros(8, np.float32)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("case", ["readonly recv", "strided recv", "float16", "int32", "big-endian",
                                  "send shorter", "send float64", "send strided", "send a list spec",
                                  "recv a bytearray"])
def test_anything_but_plain_floats_is_left_to_mpi4py_untouched(case: str) -> None:
    send = np.arange(8, dtype=np.float32)
    recv = np.full(8, 7, np.float32)
    if case == "readonly recv":
        recv = _readonly()
    elif case == "strided recv":
        recv = np.full(16, 7, np.float32)[::2]
    elif case == "float16":
        send, recv = send.astype(np.float16), recv.astype(np.float16)
    elif case == "int32":
        send, recv = send.astype(np.int32), recv.astype(np.int32)
    elif case == "big-endian":
        send, recv = send.astype(">f4"), recv.astype(">f4")
    elif case == "send shorter":
        send = send[:7]
    elif case == "send float64":
        send = send.astype(np.float64)
    elif case == "send strided":
        send = np.arange(16, dtype=np.float32)[::2]
    elif case == "send a list spec":
        send = [send, MPI.FLOAT]
    elif case == "recv a bytearray":
        recv = bytearray(32)
    before = bytes(recv)
    assert allreduce_sum(world, send, recv) is None
    assert bytes(recv) == before


def test_an_mpi_error_raises_mpi4pys_exception() -> None:
    with pytest.raises(MPI.Exception):
        allreduce_sum(MPI.COMM_NULL, np.ones(3, np.float32), np.empty(3, np.float32))


def test_a_non_communicator_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        allreduce_sum(object(), np.ones(3, np.float32), np.empty(3, np.float32))
    with pytest.raises(TypeError):
        allreduce_sum(world, np.ones(3, np.float32))  # type: ignore[call-arg]


@pytest.fixture
def checks():
    made = _MPIChecks(world, 0)
    yield made
    made.free()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("in_place", [False, True])
def test_a_request_started_in_c_sums_and_completes_in_c(dtype: type, in_place: bool, checks) -> None:
    assert scaleml.comm._iallreduce_request is iallreduce_request and issubclass(MPIRequest, SumRequest)
    x = np.arange(1000, dtype=dtype) + 0.5
    out = x if in_place else np.zeros_like(x)
    request = iallreduce_request(MPIRequest, checks, world, MPI.IN_PLACE if in_place else x, out)
    assert type(request) is MPIRequest and list(checks.pending) == [request]
    assert request._recv is out and request._local_error is None and not request._complete
    assert request.Wait() is True
    assert request._complete and request._recv is None and request._send is None and not checks.pending
    assert request._mpi == MPI.REQUEST_NULL  # MPI freed it, as mpi4py's Wait leaves it
    np.testing.assert_array_equal(out, np.arange(1000, dtype=dtype) + 0.5)
    assert request.Wait() is True and request.Test() is True  # complete: nothing more happens


def test_nan_at_index_0_leads_into_the_agreement_which_finds_no_failure(checks) -> None:
    agreed = []
    agree = checks._agree
    checks._agree = lambda request: agreed.append(request) or agree(request)
    x = np.ones(10, np.float32)
    out = np.zeros_like(x)
    assert iallreduce_request(MPIRequest, checks, world, x, out).Wait() is True
    assert agreed == []  # no NaN at index 0: no agreement
    x[0] = np.nan
    request = iallreduce_request(MPIRequest, checks, world, x, out)
    assert request.Wait() is True and request._complete and np.isnan(out[0])
    assert agreed == [request]


def test_requests_complete_in_start_order_whatever_order_they_are_waited_in(checks) -> None:
    xs = [np.full(100, i, np.float64) for i in range(3)]
    outs = [np.zeros(100) for _ in xs]
    requests = [iallreduce_request(MPIRequest, checks, world, x, out) for x, out in zip(xs, outs)]
    assert requests[2].Wait() is True  # not the oldest: Python's checks.complete completes all three
    assert all(r._complete for r in requests) and not checks.pending
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, i)


def test_a_failed_request_raises_at_every_wait(checks) -> None:
    request = MPIRequest(checks, MPI.Request(), np.zeros(3), None)
    request._finish(ValueError("this rank's buffer"))
    for _ in range(2):
        with pytest.raises(ValueError, match="this rank's buffer"):
            request.Wait()


def test_calls_mpi4py_must_run_start_nothing(checks) -> None:
    x = np.ones(10, np.float32)
    assert iallreduce_request(MPIRequest, checks, world, x, np.zeros(20, np.float32)[::2]) is None
    assert iallreduce_request(MPIRequest, checks, world, x, np.zeros(10, np.int32)) is None
    assert not checks.pending
    with pytest.raises(TypeError):
        iallreduce_request(object, checks, world, x, np.zeros_like(x))  # not a SumRequest subclass
    with pytest.raises(TypeError):
        MPIRequest(checks, object(), x, None)  # no mpi4py request
    with pytest.raises(TypeError):
        MPIRequest(checks, MPI.Request(), x, None).Wait(None, None)

"""scaleml._mpi_direct.allreduce_sum (csrc/python/mpi_direct.c): MPI_Allreduce(MPI_SUM) from C on plain float
buffers, and None, with nothing touched, for every call mpi4py must run (the drop-in then calls mpi4py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from mpi4py import MPI

import scaleml.comm

if sys.version_info < (3, 11):
    pytest.skip("scaleml._mpi_direct is built on Python 3.11+ only", allow_module_level=True)
from scaleml._mpi_direct import allreduce_sum, iallreduce_sum, wait_nan_first  # noqa: E402 (fails on a failed build)

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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonblocking_start_and_wait(dtype: type) -> None:
    x = np.arange(1000, dtype=dtype) + 0.5
    out = np.zeros_like(x)
    request = iallreduce_sum(world, x, out)
    assert isinstance(request, MPI.Request)
    assert wait_nan_first(request, out) is False
    assert request == MPI.REQUEST_NULL  # completed: MPI freed it, as mpi4py's Wait leaves it
    np.testing.assert_array_equal(out, x)
    x[0] = np.nan
    assert wait_nan_first(iallreduce_sum(world, MPI.IN_PLACE, x), x) is True
    assert iallreduce_sum(world, x, out[::2]) is None  # what mpi4py must run: nothing started
    with pytest.raises(TypeError):
        wait_nan_first(MPI.REQUEST_NULL, np.zeros(3, np.int32))

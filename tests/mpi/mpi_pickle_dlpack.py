"""scaleml.Comm pickles as mpi4py's communicators do, and reads DLPack objects as mpi4py does.

Pickling: only communicators over a predefined handle pickle (mpi4py raises
``ValueError`` for the others); over ``COMM_WORLD``/``COMM_SELF`` a Comm
round-trips to itself (as ``MPI.COMM_WORLD`` does), with its settings, also
on another rank; a freed one to an object of its class over ``COMM_NULL``.

DLPack: mpi4py reads a producer's capsule without consuming it (the
producer's destructor runs when the capsule is gone) and never calls the
producer's deleter; ``np.from_dlpack`` consumes the capsule and calls the
deleter itself, later (mpi4py's own DLPack test arrays then crash). The
producer here fails a test if any consumer calls its deleter, for calls that
go to MPI (int8 data, with or without a datatype) and for calls the engine
takes (float32), blocking and nonblocking.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import pickle

import numpy as np
import pytest
from mpi4py import MPI

import scaleml

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
N = 5000  # above the default min_count


# ---- pickling ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["COMM_WORLD", "COMM_SELF"])
def test_a_comm_over_a_predefined_handle_round_trips_to_itself(name):
    base = getattr(MPI, name)
    assert pickle.loads(pickle.dumps(base)) is base  # mpi4py's
    comm = scaleml.Comm(base, min_count=123, algorithm="split_allgather")
    again = pickle.loads(pickle.dumps(comm))
    assert again is comm and copy.copy(comm) is comm and copy.deepcopy(comm) is comm
    # mpi4py's other objects over the handle: a new object of their class, equal to it
    plain = pickle.loads(pickle.dumps(MPI.Intracomm(comm)))
    assert type(plain) is MPI.Intracomm and plain == base


def test_an_unpickled_comm_keeps_its_settings_and_works():
    comm = scaleml.Comm(world, min_count=0, algorithm="split_allgather")
    state = pickle.dumps(comm)
    del comm  # nothing alive with these settings: unpickling makes a new Comm (no collective)
    again = pickle.loads(state)
    assert isinstance(again, scaleml.Comm) and again == world
    assert (again.min_count, again.algorithm, again.compression) == (0, "split_allgather", None)
    x = np.zeros(N, np.float32)
    x[rank::7] = rank + 1
    out, expected = np.empty_like(x), np.empty_like(x)
    again.Allreduce(x, out, MPI.SUM)  # its engine state is made here, on every rank alike
    world.Allreduce(x, expected, MPI.SUM)
    assert again.last_info is not None and again.last_info.algorithm == "split_allgather"
    np.testing.assert_array_equal(out, expected)


def test_a_comm_sent_to_another_rank_arrives_over_the_same_handle():
    comm = scaleml.Comm(world, min_count=77)
    got = world.bcast(comm if rank == 0 else None, root=0)  # pickled on rank 0, unpickled everywhere else
    assert isinstance(got, scaleml.Comm) and got == world and got.min_count == 77
    if rank == 0:
        assert got is comm
    again = world.bcast(comm if rank == 0 else None, root=0)
    assert again is got  # elsewhere: the Comm with these settings that this rank unpickled first


@pytest.mark.parametrize("make", ["Dup", "Split", "Create"])
def test_other_communicators_refuse_as_mpi4py_does(make):
    comm = scaleml.Comm(world)
    derived = {"Dup": comm.Dup, "Split": lambda: comm.Split(0, rank),
               "Create": lambda: comm.Create(comm.Get_group())}[make]()
    theirs = {"Dup": world.Dup, "Split": lambda: world.Split(0, rank),
              "Create": lambda: world.Create(world.Get_group())}[make]()
    try:
        assert isinstance(derived, scaleml.Comm)
        with pytest.raises(ValueError) as mpi4py_error:
            pickle.dumps(theirs)
        with pytest.raises(ValueError) as ours:
            pickle.dumps(derived)
        assert str(ours.value) == str(mpi4py_error.value).replace("mpi4py.MPI.Intracomm", "scaleml.comm.Comm")
        with pytest.raises(ValueError):
            copy.copy(derived)
    finally:
        derived.Free()
        theirs.Free()


def test_a_freed_comm_pickles_as_a_freed_mpi4py_communicator():
    comm = scaleml.Comm(world).Dup()
    theirs = world.Dup()
    comm.Free()
    theirs.Free()
    mpi4py_again = pickle.loads(pickle.dumps(theirs))
    again = pickle.loads(pickle.dumps(comm))
    assert type(mpi4py_again) is MPI.Intracomm and mpi4py_again == MPI.COMM_NULL
    assert type(again) is scaleml.Comm and again == MPI.COMM_NULL


# ---- DLPack: a producer whose deleter no consumer may call ---------------------------------------------------------


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _DELETER), ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, _CAPSULE_DESTRUCTOR)(
    ("PyCapsule_New", ctypes.pythonapi))
# The destructor gets the dying capsule: a plain pointer (a py_object would take a reference to it).
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))

_calls = {"deleter": 0, "released_unconsumed": 0, "released_consumed": 0}


@_DELETER
def _deleter(_managed):  # what a consumer that took the capsule calls: mpi4py never does
    _calls["deleter"] += 1


@_CAPSULE_DESTRUCTOR
def _capsule_destructor(capsule):
    if _capsule_is_valid(capsule, b"dltensor") or _capsule_is_valid(capsule, b"dltensor_versioned"):
        _calls["released_unconsumed"] += 1  # the producer's own clean-up (nothing to free here)
    else:
        _calls["released_consumed"] += 1  # renamed "used_...": a consumer took it, and will call the deleter


class Producer:
    """A DLPack producer over a numpy array (DLPack 0.x, or 1.x when ``versioned``), counting what consumers do.

    Its managed tensors stay alive as long as the producer: a consumer that
    calls the deleter does not crash here, it is counted.
    """

    def __init__(self, array: np.ndarray, versioned: bool) -> None:
        self.array = array
        self.versioned = versioned
        self._keep: list[object] = []

    def __dlpack_device__(self):
        return (1, 0)

    def _capsule(self, versioned: bool):
        codes = {"i": 0, "u": 1, "f": 2}
        shape = (ctypes.c_int64 * 1)(self.array.size)
        tensor = _DLTensor(self.array.ctypes.data, _DLDevice(1, 0), 1,
                           _DLDataType(codes[self.array.dtype.kind], 8 * self.array.itemsize, 1), shape, None, 0)
        if versioned:
            managed = _DLManagedTensorVersioned(1, 0, None, _deleter, 0, tensor)
        else:
            managed = _DLManagedTensor(tensor, None, _deleter)
        self._keep += [shape, managed]
        name = b"dltensor_versioned" if versioned else b"dltensor"
        return _capsule_new(ctypes.addressof(managed), name, _capsule_destructor)

    def __dlpack__(self, stream=None, **kwargs):
        if not self.versioned and kwargs:
            raise TypeError(f"__dlpack__() got unexpected keyword arguments {sorted(kwargs)}")  # DLPack 0.x
        return self._capsule(self.versioned and kwargs.get("max_version", (0, 0))[0] >= 1)


@pytest.fixture()
def producers_checked():
    """Every capsule made during the test was released unconsumed and no deleter ran, on every rank."""
    for key in _calls:
        _calls[key] = 0
    yield
    gc.collect()
    calls = dict(_calls)
    consumed = world.allreduce(calls["deleter"] + calls["released_consumed"])
    assert calls["released_unconsumed"] > 0, "no capsule was read: the test tested nothing"
    assert consumed == 0, f"rank {rank}: capsules consumed or deleters called: {calls}"


def _pair(dtype, versioned: bool):
    rng = np.random.default_rng([5, rank])
    if np.dtype(dtype).kind == "f":
        x = np.zeros(N, dtype)
        x[rng.choice(N, 50, replace=False)] = rng.standard_normal(50)
    else:
        x = rng.integers(-3, 4, N).astype(dtype)
    expected = np.empty_like(x)
    world.Allreduce(x, expected, MPI.SUM)
    return Producer(x, versioned), Producer(np.zeros_like(x), versioned), expected


@pytest.mark.parametrize("versioned", [False, True], ids=["dlpack0", "dlpack1"])
@pytest.mark.parametrize("spec", ["bare", "datatype"])
def test_int8_goes_to_mpi_without_consuming(producers_checked, versioned, spec):
    comm = scaleml.Comm(world, min_count=0)
    send, recv, expected = _pair(np.int8, versioned)
    if spec == "bare":
        comm.Allreduce(send, recv, MPI.SUM)
    else:
        comm.Allreduce([send, MPI.SIGNED_CHAR], [recv, N, MPI.SIGNED_CHAR], MPI.SUM)
    assert comm.last_info is None
    np.testing.assert_array_equal(recv.array, expected)
    recv.array[:] = 0
    comm.Iallreduce([send, MPI.SIGNED_CHAR], [recv, MPI.SIGNED_CHAR], MPI.SUM).Wait()
    np.testing.assert_array_equal(recv.array, expected)


@pytest.mark.parametrize("versioned", [False, True], ids=["dlpack0", "dlpack1"])
@pytest.mark.parametrize("spec", ["bare", "datatype", "count_datatype", "in_place"])
def test_float32_taken_by_the_engine_without_consuming(producers_checked, versioned, spec):
    comm = scaleml.Comm(world, min_count=0, algorithm="split_allgather")  # the engine, never MPI
    send, recv, expected = _pair(np.float32, versioned)
    specs = {"bare": (send, recv), "datatype": ([send, MPI.FLOAT], [recv, MPI.FLOAT]),
             "count_datatype": ([send, N, MPI.FLOAT], [recv, N, MPI.FLOAT]),
             "in_place": (MPI.IN_PLACE, recv)}
    if spec == "in_place":
        recv.array[:] = send.array
    comm.Allreduce(*specs[spec], MPI.SUM)
    assert comm.last_info is not None and comm.last_info.algorithm == "split_allgather"
    np.testing.assert_allclose(recv.array, expected, rtol=4 * size * 1.2e-7, atol=4 * size * 1.2e-7)
    recv.array[:] = send.array if spec == "in_place" else 0
    request = comm.Iallreduce(*specs[spec], MPI.SUM)  # the progress thread reads the buffers
    request.Wait()
    assert request.result() is not None
    np.testing.assert_allclose(recv.array, expected, rtol=4 * size * 1.2e-7, atol=4 * size * 1.2e-7)


def test_mpi4py_itself_reads_the_producer_without_consuming(producers_checked):
    """The reference behaviour the drop-in follows."""
    send, recv, expected = _pair(np.float32, versioned=True)
    world.Allreduce(send, recv, MPI.SUM)
    np.testing.assert_allclose(recv.array, expected)

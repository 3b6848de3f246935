"""A DLPack object's host memory as a numpy view, read as mpi4py reads it: the capsule is never consumed.

``numpy.from_dlpack`` consumes the producer's capsule (renames it
``used_dltensor``) and calls the producer's deleter itself when the array
dies. mpi4py (``asdlpack.pxi``: ``Py_GetDLPackBuffer``) never does: it reads
the ``DLTensor`` through the capsule's pointer and keeps the capsule alive as
long as it uses the memory; dropping the unconsumed capsule then runs the
producer's own destructor. Producers may rely on that (mpi4py's own test
arrays free their ``DLManagedTensor`` with the capsule, so a deleter called
later by numpy crashes the process): :func:`host_view` follows mpi4py's
protocol step by step, including its checks and ``BufferError`` messages.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import numpy as np

__all__ = ["DL_HOST", "host_view"]

DL_CPU, DL_CUDA_HOST = 1, 3
DL_HOST = (DL_CPU, DL_CUDA_HOST)
"""DLPack device types of host memory (``__dlpack_device__()[0]``)."""

_READ_ONLY = 1  # DLPACK_FLAG_BITMASK_READ_ONLY
_DL_INT, _DL_UINT, _DL_FLOAT, _DL_COMPLEX, _DL_BOOL = 0, 1, 2, 5, 6
_KINDS = {_DL_INT: "i", _DL_UINT: "u", _DL_FLOAT: "f", _DL_COMPLEX: "c", _DL_BOOL: "b"}


# The structs of dlpack.h, read with struct (one copy of a few bytes: quicker than ctypes fields). DLTensor:
# data, device (type, id), ndim, dtype (code, bits, lanes), shape, strides, byte_offset.
_DL_TENSOR = struct.Struct("PiiiBBHPPQ")
_DL_TENSOR_OFFSET_VERSIONED = 32  # DLManagedTensorVersioned: version (2 x uint32), manager_ctx, deleter, flags
_DL_VERSIONED_HEAD = struct.Struct("IIPPQ")

# Prototypes of our own (not ctypes.pythonapi's shared function objects, whose argtypes others may set).
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


class _CapsuleMemory:
    """The base of a :func:`host_view` array: its memory, and the capsule that keeps it alive."""

    __slots__ = ("__array_interface__", "capsule")

    def __init__(self, capsule: Any, address: int, shape: tuple[int, ...], typestr: str, readonly: bool) -> None:
        self.capsule = capsule
        self.__array_interface__ = {"data": (address, readonly), "shape": shape, "typestr": typestr, "version": 3}


def _is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...] | None, order: str) -> bool:
    """mpi4py's ``dlpack_is_contig``: strides in elements; dimensions of extent <= 1 take any stride."""
    if strides is None:
        return order != "F" or len(shape) <= 1
    dims = range(len(shape)) if order == "F" else reversed(range(len(shape)))
    size = 1
    for dim in dims:
        if shape[dim] > 1 and strides[dim] != size:
            return False
        size *= shape[dim]
    return True


def _numpy_dtype(code: int, bits: int, lanes: int) -> np.dtype | None:
    """The numpy dtype of one element (mpi4py's ``dlpack_get_format``), None where mpi4py reads bytes."""
    if lanes == 2 and code == _DL_FLOAT and bits in (32, 64):
        return np.dtype(f"c{bits // 4}")  # a pair of floats: complex
    if lanes != 1 or code not in _KINDS or bits % 8:
        return None
    try:
        return np.dtype(f"{_KINDS[code]}{bits // 8}")
    except TypeError:  # a size numpy has no type for (float8, float128 on some platforms...)
        return None


_DTYPES: dict[tuple[int, int, int], np.dtype] = {}
"""(code, bits, lanes) -> the numpy dtype of a view: _numpy_dtype's, else bytes (a cache: this runs on every call)."""


def host_view(obj: Any, device_type: int | None = None) -> np.ndarray | None:
    """The memory of a DLPack object in host memory as a flat numpy array, in memory order; None elsewhere.

    Parameters
    ----------
    obj : object
        An object with ``__dlpack__`` and ``__dlpack_device__`` (a CPU
        ``torch.Tensor``, a JAX array, ...).
    device_type : int, optional
        ``obj.__dlpack_device__()[0]`` where the caller has it already.

    Returns
    -------
    numpy.ndarray or None
        A one-dimensional view of the object's memory (no copy), of its
        element type where numpy has one (bytes otherwise), read-only where
        the producer flags it so; None for memory on another device (MPI
        reads or refuses that itself).

    Raises
    ------
    BufferError
        As mpi4py: an invalid capsule or version, a negative shape or stride,
        a buffer that is neither C- nor Fortran-contiguous. What the
        producer's ``__dlpack__`` raises (a tensor that requires grad) is
        raised as it is.

    Notes
    -----
    As ``mpi4py``: ``__dlpack__(max_version=(1, 0), copy=False)`` (with
    ``stream=-1`` for pinned memory), then the DLPack 0.x call where the
    producer refuses those arguments (``TypeError``). The capsule is kept by
    the array (its base), never renamed, so the producer's destructor runs
    when the array is gone, as when mpi4py releases its buffer.
    """
    if device_type is None:
        device_type = int(obj.__dlpack_device__()[0])
    if device_type not in DL_HOST:
        return None
    stream = {} if device_type == DL_CPU else {"stream": -1}
    try:
        capsule = obj.__dlpack__(max_version=(1, 0), copy=False, **stream)
        name = b"dltensor_versioned"
    except TypeError:  # a DLPack 0.x producer
        capsule = obj.__dlpack__(**stream)
        name = b"dltensor"
    if not _capsule_is_valid(capsule, name):
        raise BufferError("dlpack: invalid capsule object")
    pointer = _capsule_pointer(capsule, name)
    if name == b"dltensor_versioned":
        major, _, _, _, flags = _DL_VERSIONED_HEAD.unpack(ctypes.string_at(pointer, _DL_VERSIONED_HEAD.size))
        if major < 1:
            raise BufferError("dlpack: unexpected version")
        readonly = bool(flags & _READ_ONLY)
        pointer += _DL_TENSOR_OFFSET_VERSIONED
    else:
        readonly = False
    data, _, _, ndim, code, bits, lanes, shape_at, strides_at, byte_offset = _DL_TENSOR.unpack(
        ctypes.string_at(pointer, _DL_TENSOR.size))
    if ndim < 0:
        raise BufferError("dlpack: number of dimensions is negative")
    if ndim > 0 and not shape_at:
        raise BufferError("dlpack: shape is NULL")
    shape = struct.unpack(f"{ndim}q", ctypes.string_at(shape_at, 8 * ndim)) if ndim else ()
    strides = struct.unpack(f"{ndim}q", ctypes.string_at(strides_at, 8 * ndim)) if ndim and strides_at else None
    if any(extent < 0 for extent in shape):
        raise BufferError("dlpack: shape item is negative")
    if strides is not None and any(stride < 0 for stride in strides):
        raise BufferError("dlpack: strides item is negative")
    if strides is not None and not (_is_contiguous(shape, strides, "C") or _is_contiguous(shape, strides, "F")):
        raise BufferError("dlpack: buffer is not contiguous")  # (no strides: C-contiguous)
    dtype = _DTYPES.get((code, bits, lanes))
    if dtype is None:
        dtype = _DTYPES[code, bits, lanes] = _numpy_dtype(code, bits, lanes) or np.dtype(np.uint8)
    nbytes = (bits * lanes + 7) // 8
    for extent in shape:
        nbytes *= extent
    if nbytes % dtype.itemsize:
        dtype = np.dtype(np.uint8)
    if nbytes == 0:  # no memory to keep (the data pointer may be NULL, which numpy refuses)
        array = np.empty(0, dtype)
        array.flags.writeable = not readonly
        return array
    return np.asarray(_CapsuleMemory(capsule, (data or 0) + byte_offset, (nbytes // dtype.itemsize,), dtype.str,
                                     readonly))

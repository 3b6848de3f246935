"""CUDA arrays (CuPy, CUDA ``torch.Tensor``, anything with ``__cuda_array_interface__``) as ScaleML sees them.

:func:`device_array` recognises a device array without a copy and without
importing torch or CuPy (``sys.modules`` says whether they are loaded);
:func:`to_host` and :func:`from_host` move bytes between it and host memory
on the array's stream (the caller's current torch or CuPy stream, or the one
its ``__cuda_array_interface__`` names) and wait for the copy, so MPI never
touches bytes a kernel is still writing; :func:`empty_like` allocates a result
with the input's own library on the input's device.
"""

from __future__ import annotations

import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _cuda
from ._cuda_emulation import EmulatedDeviceArray
from .errors import BufferLayoutError, DeviceError

__all__ = ["DeviceArray", "describe", "device_array", "empty_like", "from_host", "is_device", "pinned", "same_device",
           "to_host"]

_DL_CUDA = (2, 13)
"""``kDLCUDA`` and ``kDLCUDAManaged`` in DLPack's device enumeration."""
_COPY_H2D, _COPY_D2H, _COPY_D2D = 0, 1, 2


@dataclass(frozen=True)
class DeviceArray:
    """A C-contiguous array in CUDA memory: where it is, what it holds, and the stream its producer uses."""

    obj: Any
    """The caller's object (a ``cupy.ndarray``, a ``torch.Tensor``...)."""
    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device: int
    stream: int
    """The ``cudaStream_t`` (as an integer) to run on: 0 legacy default, 1 ``cudaStreamLegacy``, 2 per-thread."""
    readonly: bool
    library: str
    """``"torch"``, ``"cupy"``, ``"emulated"`` or ``"other"``: who allocates results like it."""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def is_device(x: object) -> bool:
    """Whether ``x`` is an array in CUDA memory (by its interfaces; nothing is loaded or checked)."""
    if isinstance(x, np.ndarray):
        return False
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.device.type == "cuda"
    if hasattr(type(x), "__cuda_array_interface__"):
        return True
    dl = getattr(x, "__dlpack_device__", None)
    if dl is None:
        return False
    try:
        return int(dl()[0]) in _DL_CUDA
    except Exception:  # noqa: BLE001 - a foreign object's failure: not ours to recognise
        return False


def describe(x: object) -> tuple[np.dtype, int] | None:
    """(dtype, element count) of a CUDA array read from its interface alone (no backend, no checks), or None
    when they cannot be read: what every rank plans a call from, even one whose device is unusable."""
    try:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            return np.dtype(str(x.dtype).removeprefix("torch.")), int(x.numel())
        cai = x.__cuda_array_interface__  # type: ignore[attr-defined]
        return np.dtype(cai["typestr"]), int(np.prod([int(s) for s in cai["shape"]], dtype=np.int64))
    except Exception:  # noqa: BLE001 - unreadable: the caller plans without it
        return None


def _c_contiguous(shape: tuple[int, ...], strides: tuple[int, ...] | None, itemsize: int) -> bool:
    if strides is None:
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def _library(x: object) -> str:
    if isinstance(x, EmulatedDeviceArray):
        return "emulated"
    root = type(x).__module__.partition(".")[0]
    return root if root in ("torch", "cupy") else "other"


def _torch_array(t: Any, what: str) -> DeviceArray:
    torch = sys.modules["torch"]
    t = t.detach()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    try:
        dtype = np.dtype(str(t.dtype).removeprefix("torch."))
    except TypeError:
        raise TypeError(f"{what} is a CUDA tensor of dtype {t.dtype}, which ScaleML does not take") from None
    if not t.is_contiguous():
        raise BufferLayoutError(f"{what} is a CUDA tensor that is not contiguous; pass {what}.contiguous()")
    device = t.device.index if t.device.index is not None else torch.cuda.current_device()
    stream = int(torch.cuda.current_stream(device).cuda_stream)
    return DeviceArray(t, int(t.data_ptr()), tuple(t.shape), dtype, int(device), stream, False, "torch")


def device_array(x: object, what: str = "x") -> DeviceArray | None:
    """``x`` as a :class:`DeviceArray`, or None when it is not in CUDA memory.

    Raises
    ------
    DeviceError
        When ``x`` is a device array and no device backend is there (the CUDA
        library was not built, or no device is visible).
    TypeError, BufferLayoutError
        For a dtype numpy has no type for, or a non-contiguous array.
    """
    if not is_device(x):
        return None
    be = _cuda.backend()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return _torch_array(x, what)
    try:
        cai = x.__cuda_array_interface__  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - e.g. no interface, only DLPack
        raise TypeError(f"{what} is a CUDA array without a usable __cuda_array_interface__ ({exc}); pass a "
                        "CuPy array or a torch tensor") from None
    shape = tuple(int(s) for s in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    if not _c_contiguous(shape, cai.get("strides"), dtype.itemsize):
        raise BufferLayoutError(f"{what} is a CUDA array that is not C-contiguous")
    ptr, readonly = cai["data"]
    stream = cai.get("stream")
    device, managed = be.new("int *"), be.new("int *")
    if ptr:
        be.call("scaleml_cuda_pointer_device", int(ptr), device, managed)
    dev = int(device[0]) if ptr else int(getattr(x, "device", 0) if isinstance(getattr(x, "device", 0), int) else 0)
    if ptr and dev < 0:
        raise DeviceError(f"{what} says it is CUDA memory, but CUDA does not know its address")
    return DeviceArray(x, int(ptr or 0), shape, dtype, dev, int(stream or 0), bool(readonly), _library(x))


def same_device(arrays: list[DeviceArray], what: str) -> int:
    """The one device of ``arrays``; :class:`DeviceError` when they are on different devices."""
    devices = sorted({a.device for a in arrays})
    if len(devices) > 1:
        raise DeviceError(f"{what}: buffers on different devices ({', '.join(f'cuda:{d}' for d in devices)}) in "
                          "one call; put them on one device")
    return devices[0]


def to_host(a: DeviceArray, out: np.ndarray | None = None) -> np.ndarray:
    """A host copy of ``a`` (into ``out`` when given), made on ``a``'s stream after its earlier work."""
    be = _cuda.backend()
    host = np.empty(a.shape, a.dtype) if out is None else out
    if a.nbytes:
        be.call("scaleml_cuda_set_device", a.device)
        be.call("scaleml_cuda_memcpy_async", host.ctypes.data, a.ptr, a.nbytes, _COPY_D2H, a.stream)
        be.call("scaleml_cuda_stream_synchronize", a.stream)
    return host


def from_host(host: np.ndarray, a: DeviceArray) -> None:
    """Copy ``host`` (``a.nbytes`` bytes, C-contiguous) into ``a`` on its stream, and wait for the copy."""
    if a.readonly:
        raise BufferLayoutError("the output is a read-only CUDA array")
    be = _cuda.backend()
    host = np.ascontiguousarray(host)
    if host.nbytes != a.nbytes:
        raise ValueError(f"copy of {host.nbytes} bytes into a device array of {a.nbytes}")
    if a.nbytes:
        be.call("scaleml_cuda_set_device", a.device)
        be.call("scaleml_cuda_memcpy_async", a.ptr, host.ctypes.data, a.nbytes, _COPY_H2D, a.stream)
        be.call("scaleml_cuda_stream_synchronize", a.stream)


def empty_like(a: DeviceArray, shape: tuple[int, ...] | None = None, dtype: Any = None) -> Any:
    """A new array of ``a``'s library on ``a``'s device (``shape``, ``dtype`` default to ``a``'s)."""
    shape = a.shape if shape is None else tuple(shape)
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    try:
        if a.library == "emulated":
            return EmulatedDeviceArray(shape, dtype, a.device)
        if a.library == "torch":
            torch = sys.modules["torch"]
            return torch.empty(shape, dtype=getattr(torch, dtype.name), device=f"cuda:{a.device}")
        cupy = sys.modules.get("cupy")
        if cupy is None:
            raise TypeError(f"results on the device are allocated with CuPy or torch; {type(a.obj).__name__} is "
                            "neither (import cupy to get CuPy results)")
        with cupy.cuda.Device(a.device):
            return cupy.empty(shape, dtype)
    except Exception as exc:
        if "OutOfMemory" in type(exc).__name__ or isinstance(exc, MemoryError):  # torch's, CuPy's, ours
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raise MemoryError(f"device out of memory: {nbytes} bytes on cuda:{a.device} ({exc})") from None
        raise


class _PinnedBuffers(threading.local):
    """Page-locked host buffers by role, one set per thread, grown as needed (allocating them costs far more
    than a copy, so they are kept)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}


_pinned = _PinnedBuffers()


def pinned(role: str, nbytes: int) -> np.ndarray:
    """``nbytes`` of page-locked host memory (``cudaHostAlloc``) as a uint8 array, for staging: copies from and
    to the device run at the link's full speed and asynchronously. The buffer of ``role`` is reused by the next
    call of the same role on this thread: hold it no longer than the call that asked for it."""
    buffer = _pinned.buffers.get(role)
    if buffer is None or buffer.size < nbytes:
        be = _cuda.backend()
        address = be.new("uintptr_t *")
        be.call("scaleml_cuda_host_alloc", max(nbytes, 1), address)
        raw = _cuda.pinned_view(int(address[0]), max(nbytes, 1))
        buffer = np.frombuffer(raw, np.uint8)
        weakref.finalize(buffer, be.call_rc, "scaleml_cuda_host_free", int(address[0]))
        _pinned.buffers[role] = buffer
    return buffer[:nbytes]


def from_host_new(host: np.ndarray, like: DeviceArray) -> Any:
    """A new device array (``like``'s library and device) holding a copy of ``host``."""
    result = empty_like(like, host.shape, host.dtype)
    view = device_array(result, "result")
    assert view is not None
    from_host(host, DeviceArray(view.obj, view.ptr, view.shape, view.dtype, view.device, like.stream, False,
                                view.library))
    return result

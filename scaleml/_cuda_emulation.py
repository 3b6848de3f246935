"""The CUDA runtime emulated on the CPU (``SCALEML_CUDA_EMULATE=1``), and an array type on its "devices".

Test infrastructure shipped with the package, like a framework's fake device:
:class:`EmulatedDeviceArray` exposes ``__cuda_array_interface__`` and a CUDA
``__dlpack_device__`` over host memory, so every device path of ScaleML (the
recognition of device arrays, the checks, staging, the kernels' entry
points, the results' allocation on the input's device) runs on machines
without a GPU. The kernels are the C core's ``scaleml_gpuref_*`` functions:
the CUDA kernels' decomposition over the same shared arithmetic
(``csrc/arith``). Nothing here touches a GPU.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

from .errors import ERR_ARG, ERR_NOMEM

__all__ = ["EmulatedDeviceArray", "EmulatedRuntime", "OutOfMemoryError", "device_of_address"]

_DEVICE_RANGES: dict[int, tuple[int, int, np.ndarray]] = {}
"""start address -> (end, device, the host memory standing for device memory)."""


def _devices() -> int:
    return int(os.environ.get("SCALEML_CUDA_EMULATE_DEVICES") or 2)


def _memory_limit() -> int:
    """Bytes one emulated allocation may take (``SCALEML_CUDA_EMULATE_MEMORY``); beyond: out of memory."""
    return int(os.environ.get("SCALEML_CUDA_EMULATE_MEMORY") or 1 << 40)


def _register(memory: np.ndarray, device: int) -> int:
    address = memory.ctypes.data
    _DEVICE_RANGES[address] = (address + max(memory.nbytes, 1), device, memory)
    return address


def device_of_address(address: int) -> int:
    """The emulated device holding ``address``, or -1 (host memory)."""
    for start, (end, device, _) in _DEVICE_RANGES.items():
        if start <= address < end:
            return device
    return -1


class OutOfMemoryError(MemoryError):
    """An emulated allocation beyond ``SCALEML_CUDA_EMULATE_MEMORY`` (as CuPy's, a ``MemoryError``)."""


class EmulatedDeviceArray:
    """A C-contiguous array in "device" memory of the emulation (host memory registered as device ``device``).

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype
    device : int
        The emulated device (0 .. ``SCALEML_CUDA_EMULATE_DEVICES`` - 1, default 2 devices).
    """

    __slots__ = ("_memory", "shape", "dtype", "device", "readonly")

    def __init__(self, shape: Any, dtype: Any = np.float32, device: int = 0, readonly: bool = False) -> None:
        self.shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        self.dtype = np.dtype(dtype)
        self.device = int(device)
        self.readonly = readonly
        size = int(np.prod(self.shape, dtype=np.int64))
        limit = _memory_limit()
        if size * self.dtype.itemsize > limit:  # as torch and CuPy do: their out-of-memory error
            raise OutOfMemoryError(f"emulated device {device}: {size * self.dtype.itemsize} bytes asked, "
                                   f"{limit} emulated")
        self._memory = np.zeros(size, dtype=self.dtype)
        _register(self._memory, self.device)

    @classmethod
    def from_host(cls, a: Any, device: int = 0) -> EmulatedDeviceArray:
        """A device copy of host array ``a``."""
        a = np.ascontiguousarray(a)
        d = cls(a.shape, a.dtype, device)
        d._memory[...] = a.reshape(-1)
        return d

    def get(self) -> np.ndarray:
        """A host copy (what ``cupy.ndarray.get`` returns)."""
        return self._memory.reshape(self.shape).copy()

    @property
    def size(self) -> int:
        return self._memory.size

    @property
    def nbytes(self) -> int:
        return self._memory.nbytes

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self._memory.ctypes.data, self.readonly),
                "version": 3, "strides": None, "stream": 1}

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self.device)  # kDLCUDA

    def __repr__(self) -> str:
        return f"EmulatedDeviceArray(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class EmulatedRuntime:
    """The runtime entry points of ``csrc/cuda/api_runtime.h`` on host memory (same arguments and codes)."""

    def __init__(self) -> None:
        self.last_message = ""
        self.current = 0
        self._host: dict[int, np.ndarray] = {}
        self._device: dict[int, np.ndarray] = {}

    def _fail(self, code: int, message: str) -> int:
        self.last_message = message
        return code

    def scaleml_cuda_device_count(self, count: Any, reason: Any) -> int:
        count[0] = _devices()
        return 0

    def scaleml_cuda_pointer_device(self, ptr: int, device: Any, is_managed: Any) -> int:
        device[0] = device_of_address(int(ptr))
        is_managed[0] = 0
        return 0

    def scaleml_cuda_set_device(self, device: int) -> int:
        if not 0 <= device < _devices():
            return self._fail(6, f"CUDA error in cudaSetDevice: invalid device ordinal {device}")
        self.current = int(device)
        return 0

    def scaleml_cuda_get_device(self, device: Any) -> int:
        device[0] = self.current
        return 0

    def scaleml_cuda_malloc(self, nbytes: int, ptr: Any) -> int:
        limit = _memory_limit()
        if nbytes > limit:
            return self._fail(ERR_NOMEM, f"device out of memory in cudaMalloc: {nbytes} bytes asked, "
                                         f"{limit} emulated")
        memory = np.empty(max(int(nbytes), 1), np.uint8)
        ptr[0] = _register(memory, self.current)
        self._device[ptr[0]] = memory
        return 0

    def scaleml_cuda_free(self, ptr: int) -> int:
        self._device.pop(int(ptr), None)
        _DEVICE_RANGES.pop(int(ptr), None)
        return 0

    def scaleml_cuda_host_alloc(self, nbytes: int, ptr: Any) -> int:
        memory = np.empty(max(int(nbytes), 1), np.uint8)
        ptr[0] = memory.ctypes.data
        self._host[ptr[0]] = memory
        return 0

    def scaleml_cuda_host_free(self, ptr: int) -> int:
        self._host.pop(int(ptr), None)
        return 0

    def scaleml_cuda_memcpy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> int:
        if kind not in (0, 1, 2):
            return self._fail(ERR_ARG, f"unknown copy kind {kind}")
        if nbytes:
            ctypes.memmove(int(dst), int(src), int(nbytes))
        return 0

    def scaleml_cuda_memset_async(self, dst: int, value: int, nbytes: int, stream: int) -> int:
        if nbytes:
            ctypes.memset(int(dst), int(value), int(nbytes))
        return 0

    def scaleml_cuda_stream_synchronize(self, stream: int) -> int:
        return 0

    def scaleml_cuda_event_create(self, event: Any) -> int:
        event[0] = 1
        return 0

    def scaleml_cuda_event_destroy(self, event: int) -> int:
        return 0

    def scaleml_cuda_event_record(self, event: int, stream: int) -> int:
        return 0

    def scaleml_cuda_event_synchronize(self, event: int) -> int:
        return 0

    def scaleml_cuda_stream_create(self, stream: Any) -> int:
        stream[0] = 0
        return 0

    def scaleml_cuda_stream_destroy(self, stream: int) -> int:
        return 0

    def scaleml_cuda_stream_wait(self, stream: int, other: int) -> int:
        return 0

    def scaleml_cuda_mem_info(self, free_bytes: Any, total_bytes: Any) -> int:
        free_bytes[0] = total_bytes[0] = 1 << 34
        return 0

    def scaleml_cuda_add(self, acc: int, x: int, n: int, value_bytes: int, stream: int) -> int:
        if value_bytes not in (4, 8):
            return self._fail(ERR_ARG, f"value_bytes must be 4 or 8, got {value_bytes}")
        if n:
            ctype = ctypes.c_float if value_bytes == 4 else ctypes.c_double
            a = np.ctypeslib.as_array((ctype * int(n)).from_address(int(acc)))
            b = np.ctypeslib.as_array((ctype * int(n)).from_address(int(x)))
            a += b
        return 0

    def scaleml_cuda_count_nonfinite(self, x: int, n: int, value_bytes: int, count: Any, stream: int) -> int:
        if value_bytes not in (4, 8):
            return self._fail(ERR_ARG, f"value_bytes must be 4 or 8, got {value_bytes}")
        ctype = ctypes.c_float if value_bytes == 4 else ctypes.c_double
        values = np.ctypeslib.as_array((ctype * int(n)).from_address(int(x))) if n else np.empty(0)
        count[0] = int(values.size - np.count_nonzero(np.isfinite(values)))
        return 0

    def scaleml_cuda_divide(self, x: int, n: int, value_bytes: int, divisor: float, stream: int) -> int:
        if value_bytes not in (4, 8):
            return self._fail(ERR_ARG, f"value_bytes must be 4 or 8, got {value_bytes}")
        if n:
            ctype, dtype = (ctypes.c_float, np.float32) if value_bytes == 4 else (ctypes.c_double, np.float64)
            values = np.ctypeslib.as_array((ctype * int(n)).from_address(int(x)))
            values /= dtype(divisor)
        return 0

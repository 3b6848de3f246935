"""PyTorch tensors (and other DLPack objects) as numpy arrays, zero-copy, without importing torch; CUDA arrays staged.

ScaleML's compressors and collectives take numpy arrays; these helpers let
them take CPU ``torch.Tensor`` objects too, and any object that exports CPU
memory through DLPack (``__dlpack__``). The conversion is a view: no bytes are
copied, and an ``out=`` tensor receives the result in its own memory.

Whether ``x`` is a tensor is decided by ``sys.modules``: when torch has not
been imported, no object can be a tensor, so nothing here imports torch
(``import scaleml`` never does).

CUDA arrays (CuPy, CUDA tensors, ``__cuda_array_interface__``) are staged:
:func:`as_numpy` returns a host copy made on the array's stream,
:func:`as_numpy_out` a host array whose content :func:`like_input` copies
into the device ``out``, and :func:`like_input` returns a result on the
input's device. Paths that run kernels on the GPU (``scaleml.compress``, the
sparse collectives' selection) use :mod:`scaleml._device` directly instead.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _device
from .errors import BufferLayoutError, DeviceError

__all__ = ["as_numpy", "device_output", "as_numpy_out", "is_tensor", "like_input", "placement"]

_DL_HOST = (1, 3)
"""``kDLCPU`` and ``kDLCUDAHost`` (pinned host memory) in DLPack's device enumeration (``__dlpack_device__()[0]``)."""


def is_tensor(x: object) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (False, without importing torch, when torch is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _tensor_view(t: Any, what: str) -> np.ndarray:
    """A numpy view of a CPU tensor's memory (strides kept); TypeError for other devices and dtypes."""
    if t.device.type != "cpu":
        raise TypeError(f"{what} is a torch tensor on {t.device}; ScaleML takes CPU and CUDA tensors (move it "
                        "with .cpu())")
    t = t.detach()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()  # a lazy conjugate or negation has no memory of its own to share
    try:
        return np.from_dlpack(t)
    except (BufferError, RuntimeError, TypeError) as exc:  # bfloat16 and other types numpy has no dtype for
        raise TypeError(f"{what} is a torch tensor of dtype {t.dtype}, which numpy cannot view: {exc}") from None


def placement(arrays: dict[str, object]) -> int:
    """Where a call's arrays are: 1 when they are CUDA arrays on one device, 0 when on the host.

    Raises
    ------
    DeviceError
        When some are CUDA arrays and others host arrays, or CUDA arrays are on different devices; when
        there are CUDA arrays and no device backend (the CUDA library not built, no device visible).
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    on_device = {name for name, a in given.items() if _device.is_device(a)}
    if not on_device:
        return 0
    if len(on_device) < len(given):
        host = sorted(set(given) - on_device)
        raise DeviceError(f"{', '.join(sorted(on_device))} on a CUDA device but {', '.join(host)} in host memory: "
                          "pass the arrays of one call on one device")
    views = [v for name in sorted(on_device) if (v := _device.device_array(given[name], name)) is not None]
    _device.same_device(views, "this call")
    return 1


def device_output(x: object, out: object) -> object:
    """``out``; or, for a CUDA ``x`` without ``out``, a new array like ``x`` on its device, allocated before the
    collective so that running out of device memory is this rank's error, raised on every rank."""
    if out is None and _device.is_device(x):
        view = _device.device_array(x, "x")
        assert view is not None
        return _device.empty_like(view)
    return out


def as_numpy(x: object, what: str = "x") -> Any:
    """``x`` as a numpy array when it is a tensor or another DLPack object; anything else unchanged.

    Parameters
    ----------
    x : object
        A ``torch.Tensor`` on the CPU (one that requires grad is detached: its
        data is read), an object with ``__dlpack__`` whose memory is on the
        CPU, or anything else (returned as is, for ``numpy.asarray`` to read).
    what : str
        The argument's name, for error messages.

    Returns
    -------
    numpy.ndarray or object
        A view that shares the memory of ``x`` (writes go through), or ``x``.

    Raises
    ------
    TypeError
        For a tensor on another device (CUDA), or of a dtype numpy has no
        type for (``bfloat16``), or a DLPack object numpy cannot read.
    """
    if isinstance(x, np.ndarray):
        return x
    if _device.is_device(x):
        view = _device.device_array(x, what)
        assert view is not None
        return _device.to_host(view)
    if is_tensor(x):
        return _tensor_view(x, what)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        try:
            device = x.__dlpack_device__()
        except Exception as exc:  # noqa: BLE001 - a foreign object's failure becomes our TypeError
            raise TypeError(f"{what}: its __dlpack_device__() failed: {exc}") from None
        if int(device[0]) not in _DL_HOST:
            raise TypeError(f"{what} is a DLPack object on device {tuple(device)}; ScaleML takes CPU and CUDA "
                            "memory")
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            raise TypeError(f"{what}: numpy cannot read it through DLPack: {exc}") from None
    return x


def as_numpy_out(out: object, what: str = "out") -> Any:
    """An ``out=`` argument as a writable numpy view when it is a tensor; anything else unchanged.

    A tensor that requires grad is refused (writing into it would bypass
    autograd); the caller's own checks (shape, dtype, contiguity) then apply
    to the view. A CUDA array gives a new host array of its shape and dtype,
    which :func:`like_input` copies into it.
    """
    if out is not None and _device.is_device(out):
        view = _device.device_array(out, what)
        assert view is not None
        if view.readonly:
            raise BufferLayoutError(f"{what} is a read-only CUDA array")
        if is_tensor(out) and out.requires_grad:  # type: ignore[attr-defined]
            raise TypeError(f"{what} is a torch tensor that requires grad; pass out.detach() (or a tensor "
                            "without grad) to receive the result")
        return np.empty(view.shape, view.dtype)
    if is_tensor(out):
        if out.requires_grad:  # type: ignore[attr-defined]
            raise TypeError(f"{what} is a torch tensor that requires grad; pass out.detach() (or a tensor "
                            "without grad) to receive the result")
        return _tensor_view(out, what)
    return out


def like_input(result: np.ndarray, x: object, out: object = None) -> Any:
    """What a function given ``x`` (and ``out``) returns for the numpy ``result``.

    ``out`` itself when it is a tensor (``result`` is a view of it); else a
    tensor sharing ``result``'s memory (``torch.from_numpy``) when ``x`` is a
    tensor and ``out`` was not given; else ``result``.
    """
    if out is not None and _device.is_device(out):
        view = _device.device_array(out, "out")
        assert view is not None
        _device.from_host(np.asarray(result), view)
        return out
    if out is not None:
        return out if is_tensor(out) else result
    if x is not None and _device.is_device(x):
        view = _device.device_array(x, "x")
        assert view is not None
        return _device.from_host_new(np.ascontiguousarray(result), view)
    if is_tensor(x):
        torch = sys.modules["torch"]
        if not result.flags.writeable:  # torch.from_numpy warns on a read-only array
            result = result.copy()
        return torch.from_numpy(result)
    return result

"""float16 / bfloat16 casting, the baseline: kernel in ``csrc/compress/cast.c``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .. import _cuda
from .._device import DeviceArray
from .._native import ffi, lib
from ..errors import CorruptBufferError, check
from .base import ArrayLike, Compressor, _as_input, _device_input, _encode_retry, _out_array, _ptr, _wptr
from .device import DeviceCompressed, decode_kernel, encode_kernel, register_device_decoder
from .framing import Compressed, register_method

CAST_ID = int(lib.SCALEML_METHOD_CAST)


_CASTS = {"fp16": 0, "bf16": 1}


class Cast(Compressor):
    """float16 / bfloat16 casting with round to nearest even (the baseline).

    Parameters
    ----------
    format : {"fp16", "bf16"}
        Target format; values beyond its range (and NaN/Inf) raise ``ValueError``.
    """

    method = CAST_ID
    name = "cast"

    def __init__(self, format: Literal["fp16", "bf16"] = "fp16", seed: int = 0,
                 rank: int | None = None) -> None:
        super().__init__(seed, rank)
        if format not in _CASTS:
            raise ValueError(f"format must be 'fp16' or 'bf16', got {format!r}")
        self.format = format

    def encode(self, x: ArrayLike, *, step: int | None = None, checksum: bool = False) -> Compressed:
        """Cast ``x`` to 16 bits; ``checksum=True`` stores the payload's CRC-32 in the header (verified on decode).
        A CUDA array is cast on its device."""
        view = _device_input(x)
        if view is not None:
            return self._encode_on_device(view, checksum)
        a = _as_input(x)
        fmt = _CASTS[self.format]
        xp = _ptr(a)

        def call(out, cap, written):
            written[0] = 2 * a.size
            return lib.scaleml_cast_encode(xp, a.itemsize, a.size, fmt, ffi.cast("uint16_t *", out))

        return _encode_retry(call, 2 * a.size, self.method, a.dtype, a.shape, (fmt,), checksum)


    def _encode_on_device(self, x: DeviceArray, checksum: bool) -> Compressed:
        be = _cuda.backend()
        fmt = _CASTS[self.format]

        def kernel(payload: int, cap: int, written: Any) -> int:
            written[0] = 2 * x.size
            return be.call_rc("scaleml_cuda_cast_encode", x.ptr, x.dtype.itemsize, x.size, fmt, payload, x.stream)

        return encode_kernel(x, 2 * x.size, self.method, (fmt,), kernel, checksum)


def _check_cast_format(c: Compressed) -> int:
    fmt = c.params[0]
    if fmt not in (0, 1):
        raise CorruptBufferError(f"cast header: bad format {fmt}")
    return fmt


def _decode_cast_on_device(c: DeviceCompressed, out: Any) -> Any:
    fmt = _check_cast_format(c)
    if c.payload_bytes != 2 * c.size:
        raise CorruptBufferError(f"cast payload has {c.payload_bytes} bytes, expected {2 * c.size}")
    be = _cuda.backend()
    return decode_kernel(c, out, lambda address: be.call(
        "scaleml_cuda_cast_decode", c.payload_address, c.size, fmt, address, c.dtype.itemsize, c.view.stream))


def _decode_cast(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    fmt = _check_cast_format(c)
    p = c.payload
    if p.size != 2 * c.size:
        raise CorruptBufferError(f"cast payload has {p.size} bytes, expected {2 * c.size}")
    out = _out_array(c, out)
    check(lib.scaleml_cast_decode(_ptr(p, "uint16_t *"), c.size, fmt, _wptr(out), out.itemsize))
    return out


register_method(Cast.method, Cast.name, _decode_cast)
register_device_decoder(Cast.method, _decode_cast_on_device)

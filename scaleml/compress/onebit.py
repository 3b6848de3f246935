"""1-bit SGD (Seide et al., 2014): kernel in ``csrc/compress/onebit.c``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _cuda
from .._device import DeviceArray
from .._native import ffi, lib
from .._tensors import like_input
from ..errors import CorruptBufferError, check
from .base import ArrayLike, Compressor, _as_input, _device_input, _encode_retry, _out_array, _ptr, _wptr
from .device import (
    DeviceCompressed,
    decode_kernel,
    encode_kernel,
    register_device_decoder,
    staged_decode,
    staged_encode,
)
from .framing import Compressed, register_method

ONEBIT_ID = int(lib.SCALEML_METHOD_ONEBIT)


class OneBit(Compressor):
    """1-bit SGD (Seide et al., 2014): sign bit per element, two means per bucket.

    A 2-D input is quantized per column (the paper's setting); other shapes
    per bucket of ``bucket`` consecutive values. Non-negative values are
    reconstructed as the mean of the bucket's non-negative values, negative
    ones as the mean of its negative values. Use with :class:`ErrorFeedback`.

    Parameters
    ----------
    bucket : int
        Bucket size for inputs that are not 2-D (>= 1).
    per_column : bool
        Quantize 2-D inputs column by column (default ``True``).
    """

    method = ONEBIT_ID
    name = "onebit"

    def __init__(self, bucket: int = 512, per_column: bool = True, seed: int = 0,
                 rank: int | None = None) -> None:
        super().__init__(seed, rank)
        if isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer)) or bucket < 1:
            raise ValueError(f"bucket must be a positive integer, got {bucket!r}")
        self.bucket = int(bucket)
        self.per_column = bool(per_column)

    def _layout(self, a: np.ndarray) -> tuple[np.ndarray, int, int]:
        if self.per_column and a.ndim == 2:
            return np.ascontiguousarray(a.T), max(a.shape[0], 1), 1
        return a, self.bucket, 0

    def _encode(self, x: ArrayLike, residual: bool, checksum: bool = False) -> tuple[Compressed, np.ndarray | None]:
        a = _as_input(x)
        flat, bucket, columns = self._layout(a)
        res = np.empty_like(flat) if residual else None
        cap = int(lib.scaleml_onebit_bytes(flat.size, bucket))
        xp = _ptr(flat)
        rp = _wptr(res) if res is not None else ffi.NULL

        def call(out, cap, written):
            rc = lib.scaleml_onebit_encode(xp, a.itemsize, flat.size, bucket, out, cap, rp)
            written[0] = cap
            return rc

        c = _encode_retry(call, cap, self.method, a.dtype, a.shape, (bucket, columns), checksum)
        if res is not None and columns:
            res = np.ascontiguousarray(res.T)
        return c, res

    def encode(self, x: ArrayLike, *, step: int | None = None, checksum: bool = False) -> Compressed:
        """Quantize ``x`` (deterministic; ``step`` is accepted for a uniform interface);
        ``checksum=True`` stores the payload's CRC-32 in the header (verified on decode).
        A CUDA array is encoded on its device (flat buckets; a matrix's per-column buckets through the host)."""
        view = _device_input(x)
        if view is not None:
            return self._encode_on_device(view, checksum)
        return self._encode(x, False, checksum)[0]

    def _encode_on_device(self, x: DeviceArray, checksum: bool) -> Compressed:
        if self.per_column and len(x.shape) == 2:  # a transposed layout: the host encoder
            return staged_encode(lambda a: self._encode(a, False, checksum)[0], x)
        be = _cuda.backend()
        cap = int(lib.scaleml_onebit_bytes(x.size, self.bucket))

        def kernel(payload: int, cap: int, written: Any) -> int:
            written[0] = cap
            return be.call_rc("scaleml_cuda_onebit_encode", x.ptr, x.dtype.itemsize, x.size, self.bucket, payload,
                              cap, 0, x.stream)

        return encode_kernel(x, cap, self.method, (self.bucket, 0), kernel, checksum)

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None) -> tuple[Compressed, np.ndarray]:
        """Quantize ``x`` and return the error ``x - reconstruction`` computed in the same C pass."""
        c, res = self._encode(x, True)
        return c, like_input(res, x)  # type: ignore[arg-type]


def _check_onebit_params(c: Compressed) -> tuple[int, int]:
    bucket, columns = c.params[0], c.params[1]
    if bucket < 1 or columns not in (0, 1) or (columns and len(c.shape) != 2):
        raise CorruptBufferError(f"1-bit header has invalid parameters {c.params}")
    if columns and bucket != max(c.shape[0], 1):
        raise CorruptBufferError("1-bit header: column bucket does not match the row count")
    return bucket, columns


def _decode_onebit_on_device(c: DeviceCompressed, out: Any) -> Any:
    bucket, columns = _check_onebit_params(c)
    if columns:
        return staged_decode(c, out)
    if c.payload_bytes != lib.scaleml_onebit_bytes(c.size, bucket):
        raise CorruptBufferError(
            f"1-bit payload has {c.payload_bytes} bytes, expected {lib.scaleml_onebit_bytes(c.size, bucket)}")
    be = _cuda.backend()
    return decode_kernel(c, out, lambda address: be.call(
        "scaleml_cuda_onebit_decode", c.payload_address, c.payload_bytes, c.size, bucket, address,
        c.dtype.itemsize, c.view.stream))


def _decode_onebit(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    bucket, columns = _check_onebit_params(c)
    n = c.size
    p = c.payload
    if p.size != lib.scaleml_onebit_bytes(n, bucket):
        raise CorruptBufferError(
            f"1-bit payload has {p.size} bytes, expected {lib.scaleml_onebit_bytes(n, bucket)}")
    res = _out_array(c, out)
    flat = np.empty(n, dtype=c.dtype) if columns else res.reshape(-1)
    check(lib.scaleml_onebit_decode(_ptr(p, "uint8_t *"), p.size, n, bucket, _wptr(flat), flat.itemsize))
    if columns:
        res[...] = flat.reshape(c.shape[1], c.shape[0]).T
    return res


register_method(OneBit.method, OneBit.name, _decode_onebit)
register_device_decoder(OneBit.method, _decode_onebit_on_device)

"""QSGD stochastic quantization (Alistarh et al., 2017): kernel in ``csrc/compress/qsgd.c``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .. import _cuda
from .._device import DeviceArray
from .._native import lib
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

QSGD_ID = int(lib.SCALEML_METHOD_QSGD)


_NORMS = {"l2": 0, "max": 1}
_QSGD_FORMATS = {"fixed": 0, "elias": 1}


class QSGD(Compressor):
    """QSGD stochastic quantization (Alistarh et al., 2017), one norm per bucket.

    ``Q(v_i) = ||v|| * sgn(v_i) * xi_i`` where, for ``|v_i|/||v||`` in
    ``[l/s, (l+1)/s]``, ``xi_i = (l+1)/s`` with probability
    ``s*|v_i|/||v|| - l`` and ``l/s`` otherwise; unbiased.

    Parameters
    ----------
    bits : int
        Bits per magnitude, 1..8 (plus one sign bit); ``s = 2**bits - 1`` levels.
    bucket : int
        Bucket size d (each bucket has its own norm); 1 .. 2**31.
    norm : {"l2", "max"}
        L2 norm (the theory's bounds) or max norm (lower variance in practice).
    format : {"fixed", "elias"}
        Fixed-width packing (``bits + 1 + 32/d`` bits per element) or Elias
        omega coding of gaps and levels (sparse regime, small s).
    seed, rank
        See :class:`Compressor`.
    """

    method = QSGD_ID
    name = "qsgd"

    def __init__(self, bits: int = 4, bucket: int = 512, norm: Literal["l2", "max"] = "l2",
                 format: Literal["fixed", "elias"] = "fixed", seed: int = 0, rank: int | None = None) -> None:
        super().__init__(seed, rank)
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
        if (isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer))
                or not 1 <= bucket <= 1 << 31):
            raise ValueError(f"bucket must be an integer in 1..2**31, got {bucket!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be 'l2' or 'max', got {norm!r}")
        if format not in _QSGD_FORMATS:
            raise ValueError(f"format must be 'fixed' or 'elias', got {format!r}")
        self.bits, self.bucket, self.norm, self.format = int(bits), int(bucket), norm, format

    @property
    def s(self) -> int:
        """Number of non-zero levels, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    def encode(self, x: ArrayLike, *, step: int | None = None, checksum: bool = False) -> Compressed:
        """Quantize ``x`` (float32/float64, any shape);
        ``checksum=True`` stores the payload's CRC-32 in the header (verified on decode).
        A CUDA array is encoded on its device (the fixed format; Elias through the host)."""
        view = _device_input(x)
        if view is not None:
            return self._encode_on_device(view, step, checksum)
        a = _as_input(x)
        key = self._key(step)
        fmt = _QSGD_FORMATS[self.format]
        cap = int(lib.scaleml_qsgd_max_bytes(a.size, self.bits, self.bucket, fmt))
        xp = _ptr(a)

        def call(out, cap, written):
            return lib.scaleml_qsgd_encode(xp, a.itemsize, a.size, self.bits, self.bucket, _NORMS[self.norm],
                                           fmt, key, out, cap, written)

        return _encode_retry(call, cap, self.method, a.dtype, a.shape,
                             (self.bits, self.bucket, _NORMS[self.norm], fmt), checksum)


    def _encode_on_device(self, x: DeviceArray, step: int | None, checksum: bool) -> Compressed:
        if self.format != "fixed":  # variable length: the host encoder
            return staged_encode(lambda a: self.encode(a, step=step, checksum=checksum), x)
        key, norm = self._key(step), _NORMS[self.norm]
        be = _cuda.backend()
        cap = int(lib.scaleml_qsgd_max_bytes(x.size, self.bits, self.bucket, 0))

        def kernel(payload: int, cap: int, written: Any) -> int:
            return be.call_rc("scaleml_cuda_qsgd_encode", x.ptr, x.dtype.itemsize, x.size, self.bits, self.bucket,
                              norm, 0, key, payload, cap, written, x.stream)

        return encode_kernel(x, cap, self.method, (self.bits, self.bucket, norm, 0), kernel, checksum)


def _check_qsgd_params(c: Compressed) -> tuple[int, int, int, int]:
    bits, bucket, norm, fmt = c.params
    if not 1 <= bits <= 8 or not 1 <= bucket <= 1 << 31 or norm not in (0, 1) or fmt not in (0, 1):
        raise CorruptBufferError(f"QSGD header has invalid parameters {c.params}")
    return bits, bucket, norm, fmt


def _decode_qsgd_on_device(c: DeviceCompressed, out: Any) -> Any:
    bits, bucket, _, fmt = _check_qsgd_params(c)
    if fmt != 0:  # Elias: the host decoder
        return staged_decode(c, out)
    expected = lib.scaleml_qsgd_max_bytes(c.size, bits, bucket, 0)
    if c.payload_bytes != expected:
        raise CorruptBufferError(f"QSGD payload has {c.payload_bytes} bytes, expected {expected}")
    be = _cuda.backend()
    return decode_kernel(c, out, lambda address: be.call(
        "scaleml_cuda_qsgd_decode", c.payload_address, c.payload_bytes, c.size, bits, bucket, 0, address,
        c.dtype.itemsize, c.view.stream))


def _decode_qsgd(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    bits, bucket, norm, fmt = _check_qsgd_params(c)
    p = c.payload
    # Size checks before allocating the output (a forged shape must not allocate). Fixed width: the size is
    # exact (bits + 1 bits per element and 32 per bucket). Elias: every bucket costs at least 33 bits (its
    # norm and omega(nnz + 1)), zeros cost nothing, so a bucket size the header chooses (up to 2^31) bounds
    # nothing; _out_array's allocation bound, per payload byte, holds whatever the header says.
    if fmt == 0 and p.size != lib.scaleml_qsgd_max_bytes(c.size, bits, bucket, 0):
        raise CorruptBufferError(f"QSGD payload has {p.size} bytes, expected "
                                 f"{lib.scaleml_qsgd_max_bytes(c.size, bits, bucket, 0)}")
    if fmt == 1 and p.size * 8 < -(-c.size // bucket) * 33:
        raise CorruptBufferError(f"QSGD payload of {p.size} bytes is too short for {c.size} elements")
    out = _out_array(c, out)
    check(lib.scaleml_qsgd_decode(_ptr(p, "uint8_t *"), p.size, out.size, bits, bucket, fmt,
                                   _wptr(out), out.itemsize))
    return out


register_method(QSGD.method, QSGD.name, _decode_qsgd)
register_device_decoder(QSGD.method, _decode_qsgd_on_device)

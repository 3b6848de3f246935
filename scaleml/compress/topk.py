"""TopK sparsification (exact selection or sampled threshold): kernel in ``csrc/compress/topk.c``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _cuda, _device
from .._device import DeviceArray
from .._native import ffi, lib
from .._tensors import as_numpy_out, is_tensor, like_input
from ..errors import CorruptBufferError, check
from .base import ArrayLike, Compressor, _as_input, _device_input, _encode_retry, _out_array, _ptr, _wptr
from .device import (
    DeviceCompressed,
    decode_kernel,
    encode_kernel,
    from_device,
    is_device_message,
    payload_count,
    register_device_decoder,
)
from .framing import BufferLike, Compressed, _as_compressed, register_method

TOPK_ID = int(lib.SCALEML_METHOD_TOPK)


class TopK(Compressor):
    """TopK sparsification: the ``k`` entries of largest magnitude.

    Parameters
    ----------
    k : int, optional
        Entries to send (``0 <= k <= n``, checked at encode time).
    ratio : float, optional
        Alternatively the fraction of entries to send (``k = ceil(ratio * n)``).
    approximate : bool
        Estimate the threshold from ``sample`` random entries instead of an
        exact selection; then about ``k`` entries are sent.
    sample : int
        Sample size of the approximate mode.
    """

    method = TOPK_ID
    name = "topk"

    def __init__(self, k: int | None = None, *, ratio: float | None = None, approximate: bool = False,
                 sample: int = 16384, seed: int = 0, rank: int | None = None) -> None:
        super().__init__(seed, rank)
        if (k is None) == (ratio is None):
            raise ValueError("give exactly one of k and ratio")
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        if ratio is not None and not (0.0 <= ratio <= 1.0):
            raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
        if sample < 1:
            raise ValueError("sample must be >= 1")
        self.k, self.ratio, self.approximate, self.sample = k, ratio, bool(approximate), int(sample)

    def k_for(self, n: int) -> int:
        """The number of entries requested for a tensor of ``n`` elements."""
        k = self.k if self.k is not None else math.ceil(self.ratio * n)  # type: ignore[operator]
        if k > n:
            raise ValueError(f"k = {k} exceeds the tensor size n = {n}")
        return int(k)

    def _encode(self, x: ArrayLike, step: int | None, residual: bool, out: np.ndarray | None = None,
                checksum: bool = False) -> tuple[Compressed, np.ndarray | None]:
        a = _as_input(x)
        if a.size > 1 << 32:
            raise ValueError("TopK supports tensors of at most 2**32 elements (uint32 indices)")
        k = self.k_for(a.size)
        key = self._key(step)
        if residual and out is not None and not (out.flags.writeable and (out is a or (
                out.shape == a.shape and out.dtype == a.dtype and out.flags.c_contiguous
                and not np.shares_memory(out, a)))):
            raise ValueError("out must be x itself or a writable C-contiguous array like x that does not "
                             "overlap it")
        res = (out if out is not None else np.empty_like(a)) if residual else None
        guess = k if not self.approximate else min(a.size, 2 * k + 64)
        cap = int(lib.scaleml_topk_bytes(guess, a.itemsize))
        xp = _ptr(a)
        rp = _wptr(res) if res is not None else ffi.NULL

        def call(out, cap, written):
            return lib.scaleml_topk_encode(xp, a.itemsize, a.size, k, int(self.approximate), self.sample, key,
                                           out, cap, written, rp)

        return _encode_retry(call, cap, self.method, a.dtype, a.shape, (int(self.approximate),), checksum), res

    def encode(self, x: ArrayLike, *, step: int | None = None, checksum: bool = False) -> Compressed:
        """Select the top entries of ``x`` (flattened);
        ``checksum=True`` stores the payload's CRC-32 in the header (verified on decode).
        A CUDA array is selected on its device."""
        view = _device_input(x)
        if view is not None:
            return self._encode_on_device(view, step, None, checksum)
        return self._encode(x, step, False, checksum=checksum)[0]

    def _encode_on_device(self, x: DeviceArray, step: int | None, residual: DeviceArray | None,
                          checksum: bool = False) -> Compressed:
        if x.size > 1 << 32:
            raise ValueError("TopK supports tensors of at most 2**32 elements (uint32 indices)")
        k = self.k_for(x.size)
        key = self._key(step)
        be = _cuda.backend()
        guess = k if not self.approximate else min(x.size, 2 * k + 64)

        def kernel(payload: int, cap: int, written: Any) -> int:
            return be.call_rc("scaleml_cuda_topk_encode", x.ptr, x.dtype.itemsize, x.size, k, int(self.approximate),
                              self.sample, key, payload, cap, written, residual.ptr if residual else 0, x.stream)

        return encode_kernel(x, int(lib.scaleml_topk_bytes(guess, x.dtype.itemsize)), self.method,
                             (int(self.approximate),), kernel, checksum)

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None,
                             out: np.ndarray | None = None) -> tuple[Compressed, np.ndarray]:
        """Select and return the unsent remainder (x with the sent entries zeroed), in ``out`` when given
        (``out=x`` zeroes the sent entries of ``x`` in place, when ``x`` is a writable contiguous array).

        ``x`` and ``out`` may be CPU ``torch.Tensor`` objects (viewed without a copy); the remainder is then a
        tensor too (``out`` itself when given).
        """
        view = _device_input(x)
        if view is not None:  # on the device: the remainder in out (x itself for in place) or a new CUDA array
            target = out if out is not None else _device.empty_like(view)
            res = _device.device_array(target, "out")
            if res is None or res.shape != view.shape or res.dtype != view.dtype or res.readonly:
                raise ValueError("out must be a writable CUDA array like x on its device (or x itself)")
            _device.same_device([view, res], "encode_with_residual")
            if res.ptr != view.ptr:
                _cuda.backend().call("scaleml_cuda_memcpy_async", res.ptr, view.ptr, view.nbytes, 2, view.stream)
            return self._encode_on_device(view, step, res), target
        if out is not None and out is x and is_tensor(x):
            view = as_numpy_out(x, "x")
            c, _ = self._encode(view, step, True, view)
            return c, x  # type: ignore[return-value]
        c, res = self._encode(x, step, True, as_numpy_out(out))
        return c, like_input(res, x, out)  # type: ignore[arg-type]

    @staticmethod
    def entries(c: BufferLike) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``(indices, values)`` of a TopK message, ready for ``scaleml.sparse_allreduce``.

        Indices are ``uint32``, sorted and unique (into the flattened tensor).
        """
        c = from_device(c).to_host() if is_device_message(c) else _as_compressed(c)
        if c.method != TOPK_ID:
            raise CorruptBufferError("not a TopK buffer")
        p = c.payload
        count = ffi.new("uint64_t *")
        io, vo = ffi.new("size_t *"), ffi.new("size_t *")
        check(lib.scaleml_topk_layout(_ptr(p, "uint8_t *"), p.size, c.size, c.dtype.itemsize, count, io, vo))
        k = int(count[0])
        idx = p[io[0]:io[0] + 4 * k].view(np.uint32)
        val = p[vo[0]:vo[0] + c.dtype.itemsize * k].view(c.dtype)
        return idx, val


def _decode_topk_on_device(c: DeviceCompressed, out: Any) -> Any:
    if c.size > 1 << 32:
        raise CorruptBufferError(f"TopK message of {c.size} elements: at most 2**32 (its indices are uint32)")
    count = payload_count(c)
    if count > c.size or c.payload_bytes != lib.scaleml_topk_bytes(count, c.dtype.itemsize):
        raise CorruptBufferError(f"TopK payload: count {count} does not match {c.payload_bytes} bytes (n = {c.size})")
    be = _cuda.backend()
    return decode_kernel(c, out, lambda address: be.call(
        "scaleml_cuda_topk_decode", c.payload_address, c.payload_bytes, c.size, address, c.dtype.itemsize,
        c.view.stream))


def _decode_topk(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    # Before allocating: n fits the uint32 indices, and the count in the payload's first 8 bytes is at most n
    # and makes the payload size exactly (8 + 4 count padded to 8 + count values). k = 0 is 8 bytes for any
    # n <= 2^32: _out_array's allocation bound per payload byte covers that.
    p = c.payload
    if c.size > 1 << 32:
        raise CorruptBufferError(f"TopK message of {c.size} elements: at most 2**32 (its indices are uint32)")
    if p.size < 8:
        raise CorruptBufferError(f"TopK payload truncated ({p.size} bytes)")
    count = int.from_bytes(p[:8].tobytes(), "little")
    if count > c.size or p.size != lib.scaleml_topk_bytes(count, c.dtype.itemsize):
        raise CorruptBufferError(f"TopK payload: count {count} does not match {p.size} bytes (n = {c.size})")
    out = _out_array(c, out)
    p = c.payload
    check(lib.scaleml_topk_decode(_ptr(p, "uint8_t *"), p.size, out.size, _wptr(out), out.itemsize))
    return out


register_method(TopK.method, TopK.name, _decode_topk)
register_device_decoder(TopK.method, _decode_topk_on_device)

"""Adaptive quantization (Dryden et al.): kernel in ``csrc/compress/adaptive_quant.c``."""

from __future__ import annotations

import math
import struct

import numpy as np

from .._native import ffi, lib
from .._tensors import like_input
from ..errors import CorruptBufferError, check
from .base import ArrayLike, Compressor, _as_input, _encode_retry, _out_array, _ptr, _wptr
from .framing import BufferLike, Compressed, _as_compressed, register_method

ADAPTIVE_ID = int(lib.SCALEML_METHOD_ADAPTIVE)


class AdaptiveQuant(Compressor):
    """Adaptive quantization (Dryden et al.): send about a proportion ``1/pi`` of a matrix.

    Thresholds tau+ / tau- come from a selection over ``sample`` random
    entries of the whole matrix; each column sends its entries >= tau+ as one
    value (their mean) and its entries <= tau- as another. Words are 16-bit
    (15-bit row + sign) when the matrix has at most 32767 rows, 32/64-bit
    otherwise; each column has a header (offset, two reconstruction values).
    Use with :class:`ErrorFeedback`; ``encode_with_residual`` gives the error
    in the same pass.

    Parameters
    ----------
    pi : float
        Inverse proportion, ``>= 1`` (``pi = 1`` sends every non-zero entry).
    sample : int
        Entries sampled to choose the thresholds (all when the matrix is smaller).
    """

    method = ADAPTIVE_ID
    name = "adaptive"

    def __init__(self, pi: float = 32.0, sample: int = 4096, seed: int = 0, rank: int | None = None) -> None:
        super().__init__(seed, rank)
        if not (isinstance(pi, (int, float, np.floating, np.integer)) and math.isfinite(pi) and pi >= 1):
            raise ValueError(f"pi must be a finite number >= 1, got {pi!r}")
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            raise ValueError(f"sample must be a positive integer, got {sample!r}")
        self.pi, self.sample = float(pi), int(sample)
        self.last_thresholds: tuple[float, float] = (math.inf, -math.inf)

    def _encode(self, x: ArrayLike, step: int | None, residual: bool,
                checksum: bool = False) -> tuple[Compressed, np.ndarray | None]:
        a = _as_input(x)
        if a.ndim > 2:
            raise ValueError("adaptive quantization takes a matrix (or a vector, as one column)")
        rows, cols = (a.shape[0], a.shape[1]) if a.ndim == 2 else (a.size, 1)
        key = self._key(step)
        res = np.empty_like(a) if residual else None
        expect = int(a.size / self.pi * 1.3) + 64
        cap = int(lib.scaleml_adaptive_bytes(rows, cols, min(expect, a.size)))
        taus = ffi.new("double[2]")
        xp = _ptr(a)
        rp = _wptr(res) if res is not None else ffi.NULL

        def call(out, cap, written):
            return lib.scaleml_adaptive_encode(xp, a.itemsize, rows, cols, self.pi, self.sample, key, out,
                                               cap, written, rp, taus)

        pi_bits = struct.unpack("<I", struct.pack("<f", self.pi))[0]
        c = _encode_retry(call, cap, self.method, a.dtype, a.shape, (pi_bits,), checksum)
        self.last_thresholds = (float(taus[0]), float(taus[1]))
        return c, res

    def encode(self, x: ArrayLike, *, step: int | None = None, checksum: bool = False) -> Compressed:
        """Quantize the matrix ``x`` (a 1-D input is one column);
        ``checksum=True`` stores the payload's CRC-32 in the header (verified on decode)."""
        return self._encode(x, step, False, checksum)[0]

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None) -> tuple[Compressed, np.ndarray]:
        """Quantize and return the error (value - reconstruction where sent, value elsewhere)."""
        c, res = self._encode(x, step, True)
        return c, like_input(res, x)  # type: ignore[arg-type]

    @staticmethod
    def column_table(c: BufferLike) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, reconstruction)`` headers: (cols + 1) word offsets, (cols, 2) float32 (pos, neg)."""
        c = _as_compressed(c)
        cols = c.shape[1] if len(c.shape) == 2 else 1
        p = c.payload
        if p.size < 16 * cols + 8:
            raise CorruptBufferError("adaptive payload truncated")
        return p[:8 * (cols + 1)].view(np.uint64), p[8 * (cols + 1):8 * (cols + 1) + 8 * cols].view(
            np.float32).reshape(cols, 2)


def _decode_adaptive(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    if len(c.shape) > 2:
        raise CorruptBufferError("adaptive buffer with more than 2 dimensions")
    rows, cols = (c.shape[0], c.shape[1]) if len(c.shape) == 2 else (c.size, 1)
    # Before allocating: the column table ((cols + 1) offsets, cols pairs of values) fits, and the word count
    # it ends with is at most rows * cols and makes the payload size exactly. Unsent entries cost nothing
    # (a vector with no word sent is 24 bytes for any length): _out_array's allocation bound covers that.
    p = c.payload
    if p.size < 16 * cols + 8:
        raise CorruptBufferError(f"adaptive payload truncated ({p.size} bytes for {cols} columns)")
    words = int.from_bytes(p[8 * cols:8 * cols + 8].tobytes(), "little")
    if words > rows * cols or p.size != lib.scaleml_adaptive_bytes(rows, cols, words):
        raise CorruptBufferError(f"adaptive payload: word count {words} does not match {p.size} bytes")
    out = _out_array(c, out)
    check(lib.scaleml_adaptive_decode(_ptr(p, "uint8_t *"), p.size, rows, cols, _wptr(out), out.itemsize))
    return out


register_method(AdaptiveQuant.method, AdaptiveQuant.name, _decode_adaptive)

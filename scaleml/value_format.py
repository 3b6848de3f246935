"""Lossy value formats of the collectives: a compressor object as the C engine's ``scaleml_codec``."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._native import ffi, lib
from .compress import QSGD, AdaptiveQuant, Cast, OneBit
from .compress.base import Compressor

_NORMS = {"l2": lib.SCALEML_NORM_L2, "max": lib.SCALEML_NORM_MAX}
_CASTS = {"fp16": lib.SCALEML_CODEC_FP16, "bf16": lib.SCALEML_CODEC_BF16}


@dataclass(frozen=True)
class ValueFormat:
    """The lossy format dense data travels in inside a collective (identical on every rank)."""

    compressor: Compressor
    """The object the caller passed: its seed and step counter key the random rounding."""
    kind: int
    bits: int = 0
    bucket: int = 0
    norm: int = 0
    pi: float = 0.0
    """Adaptive: send about ``1/pi`` of each row block's entries."""
    sample: int = 0
    """Adaptive: entries sampled to choose each row block's thresholds."""
    rows: int = 0
    """Adaptive: the rows of the matrix the values are (row-major)."""
    cols: int = 0
    """Adaptive: its columns."""

    @property
    def name(self) -> str:
        """Short name: ``qsgd4``, ``fp16``, ``bf16``, ``onebit``, ``adaptive``."""
        if self.kind == lib.SCALEML_CODEC_QSGD:
            return f"qsgd{self.bits}"
        return {lib.SCALEML_CODEC_FP16: "fp16", lib.SCALEML_CODEC_BF16: "bf16",
                lib.SCALEML_CODEC_ADAPTIVE: "adaptive"}.get(self.kind, "onebit")

    @property
    def fingerprint(self) -> int:
        """One non-negative int64 that ranks compare in the agreement."""
        return (self.kind << 41) | (self.norm << 40) | (self.bits << 32) | self.bucket

    def bytes(self, n: int, value_bytes: int) -> int:
        """Encoded bytes of n values (0 for the adaptive format, whose size depends on the data)."""
        return int(lib.scaleml_codec_bytes(self.codec(), n, value_bytes))

    def value_bytes(self, n: int, value_bytes: int) -> float:
        """Encoded bytes per value at n values (the cost model's q)."""
        return self.bytes(n, value_bytes) / n if n else 0.0

    def codec(self, step: int = 0):
        """A new C ``scaleml_codec *`` for one call at ``step``."""
        c = ffi.new("scaleml_codec *")
        c.kind, c.bits, c.bucket, c.norm = self.kind, self.bits, self.bucket, self.norm
        c.seed, c.step = int(self.compressor.seed) & (2**64 - 1), int(step) & (2**64 - 1)
        c.pi, c.sample, c.rows, c.cols = self.pi, self.sample, self.rows, self.cols
        return c

    def next_codec(self):
        """The codec of the next call: takes one step of the compressor's counter (a fresh random stream)."""
        step = self.compressor.step
        self.compressor.step += 1
        return self.codec(step)


def value_format(compression: object) -> ValueFormat:
    """The :class:`ValueFormat` of a compressor object.

    Accepted: :class:`scaleml.compress.QSGD` (fixed-width format),
    :class:`scaleml.compress.Cast` (fp16, bf16) and
    :class:`scaleml.compress.OneBit`. ``TypeError`` for anything else,
    ``ValueError`` for parameters the collectives do not support.
    """
    if isinstance(compression, QSGD):
        if compression.format != "fixed":
            raise ValueError("the quantized collectives take QSGD's fixed-width format (format='fixed'): every "
                             "message size is then known in advance; Elias coding is for stored messages")
        return ValueFormat(compression, lib.SCALEML_CODEC_QSGD, compression.bits, compression.bucket,
                           _NORMS[compression.norm])
    if isinstance(compression, Cast):
        return ValueFormat(compression, _CASTS[compression.format])
    if isinstance(compression, OneBit):
        return ValueFormat(compression, lib.SCALEML_CODEC_ONEBIT, bucket=compression.bucket)
    raise TypeError("compression must be a scaleml.compress.QSGD, Cast or OneBit instance, got "
                    f"{type(compression).__name__}")


def adaptive_format(quantizer: AdaptiveQuant, rows: int, cols: int) -> ValueFormat:
    """The adaptive value format of a ``rows x cols`` matrix (the ``adaptive`` algorithm's codec).

    Parameters
    ----------
    quantizer : AdaptiveQuant
        Its ``pi``, ``sample`` and ``seed`` are the codec's; its ``step``
        (taken by :meth:`ValueFormat.next_codec`) keys the sampling.
    rows, cols : int
        The row-major matrix the values are.

    Returns
    -------
    ValueFormat
        With ``kind`` ``SCALEML_CODEC_ADAPTIVE``; the C engine gives it to no
        algorithm but ``adaptive``.

    Raises
    ------
    OverflowError
        When ``pi`` does not fit a float32 (the message header stores it as
        one, as :meth:`AdaptiveQuant.encode` does) or the seed is not an
        unsigned 64-bit integer.
    """
    struct.pack("<f", quantizer.pi)  # raises OverflowError as AdaptiveQuant.encode does
    if not 0 <= quantizer.seed < 2**64:
        raise OverflowError(f"seed must be an unsigned 64-bit integer, got {quantizer.seed}")
    return ValueFormat(quantizer, lib.SCALEML_CODEC_ADAPTIVE, pi=quantizer.pi, sample=quantizer.sample,
                       rows=int(rows), cols=int(cols))

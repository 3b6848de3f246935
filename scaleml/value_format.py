"""Lossy value formats of the collectives: a compressor object as the C engine's ``scaleml_codec``."""

from __future__ import annotations

from dataclasses import dataclass

from ._native import ffi, lib
from .compress import QSGD, Cast, OneBit
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

    @property
    def name(self) -> str:
        """Short name: ``qsgd4``, ``fp16``, ``bf16``, ``onebit``."""
        if self.kind == lib.SCALEML_CODEC_QSGD:
            return f"qsgd{self.bits}"
        return {lib.SCALEML_CODEC_FP16: "fp16", lib.SCALEML_CODEC_BF16: "bf16"}.get(self.kind, "onebit")

    @property
    def fingerprint(self) -> int:
        """One non-negative int64 that ranks compare in the agreement."""
        return (self.kind << 41) | (self.norm << 40) | (self.bits << 32) | self.bucket

    def bytes(self, n: int, value_bytes: int) -> int:
        """Encoded bytes of n values."""
        return int(lib.scaleml_codec_bytes(self.codec(), n, value_bytes))

    def value_bytes(self, n: int, value_bytes: int) -> float:
        """Encoded bytes per value at n values (the cost model's q)."""
        return self.bytes(n, value_bytes) / n if n else 0.0

    def codec(self, step: int = 0):
        """A new C ``scaleml_codec *`` for one call at ``step``."""
        c = ffi.new("scaleml_codec *")
        c.kind, c.bits, c.bucket, c.norm = self.kind, self.bits, self.bucket, self.norm
        c.seed, c.step = int(self.compressor.seed) & (2**64 - 1), int(step) & (2**64 - 1)
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

"""Gradient compression: quantizers and sparsifiers with a self-describing wire format.

One class per method, each with ``encode(x) -> Compressed`` and
``decode(compressed) -> numpy.ndarray``:

======================  =======================================================
:class:`QSGD`           stochastic quantization, bucketed, fixed-width or Elias
:class:`OneBit`         1-bit SGD (sign + two means per bucket or column)
:class:`TopK`           k largest magnitudes (exact selection or sampled)
:class:`AdaptiveQuant`  Dryden et al.: send a proportion 1/pi of a matrix
:class:`ZipML`          stochastic rounding to data-optimal levels
:class:`Cast`           float16 / bfloat16 baseline
======================  =======================================================

:class:`PowerSGD` (low-rank factors by power iteration, :mod:`.powersgd`) holds the state of a
collective of its own (:func:`scaleml.powersgd_allreduce.powersgd_allreduce`), not a message format.

:class:`ErrorFeedback` keeps named per-tensor residuals around any of them
(compensate -> compress -> update) and saves/loads its state.

A :class:`Compressed` object is one contiguous ``uint8`` buffer: a 48-byte
header (magic ``SMLC``, version, method, dtype, ndim, element count, payload
size, four method parameters, CRC-32 of header and shape, payload checksum or
0), the shape (``ndim`` uint64), then the payload that the method's C kernel
writes. The header is written and validated in C
(``csrc/compress/framing.c``). It is sent as one MPI message
(:meth:`Compressed.send`, :meth:`Compressed.recv`) and any method decodes it
with :func:`decode`. Decoders validate everything: a truncated or corrupted
buffer raises :class:`CorruptBufferError` (a ``ValueError``), and so does a
header announcing more elements than its payload can hold, checked before
anything is allocated (see :mod:`.framing` and ``docs/reliability.md``).

``encode(x, checksum=True)`` (or :meth:`Compressed.with_checksum`) stores the
CRC-32 of the payload in the header (version 2), verified whenever the message
is parsed or decoded; for messages stored or sent outside MPI. Off by default:
the bytes are then the same as without the option, and old messages decode as
before.

Randomness comes from a counter-based generator keyed by
``(seed, rank, step, stream)``: results are reproducible, and ranks (and
steps) draw independent numbers. Each compressor counts its own steps.

Modules: :mod:`.framing` (the message and :func:`decode`), :mod:`.base`
(:class:`Compressor`, :func:`rng_uniform`), one module per method
(:mod:`.qsgd`, :mod:`.onebit`, :mod:`.topk`, :mod:`.adaptive`, :mod:`.zipml`,
:mod:`.cast`; each registers its id and decoder with the framing),
:mod:`.error_feedback` and :mod:`.names` (compression names such as
``qsgd4`` or ``topk0.01`` -> compressors: the one parser of them).
"""

from __future__ import annotations

# The method ids and _header_crc (tests re-sign edited headers with it) are
# importable from here as before the split into modules, not part of __all__.
from ..errors import CorruptBufferError
from .adaptive import ADAPTIVE_ID as ADAPTIVE_ID
from .adaptive import AdaptiveQuant
from .base import Compressor, rng_uniform
from .cast import CAST_ID as CAST_ID
from .cast import Cast
from .device import DeviceCompressed, decode
from .error_feedback import ErrorFeedback
from .framing import Compressed
from .framing import _header_crc as _header_crc
from .onebit import ONEBIT_ID as ONEBIT_ID
from .onebit import OneBit
from .powersgd import PowerSGD
from .qsgd import QSGD
from .qsgd import QSGD_ID as QSGD_ID
from .topk import TOPK_ID as TOPK_ID
from .topk import TopK
from .zipml import ZIPML_ID as ZIPML_ID
from .zipml import ZipML, double_sampling_gradient

__all__ = [
    "AdaptiveQuant",
    "Cast",
    "Compressed",
    "Compressor",
    "CorruptBufferError",
    "ErrorFeedback",
    "OneBit",
    "PowerSGD",
    "QSGD",
    "TopK",
    "ZipML",
    "DeviceCompressed",
    "decode",
    "double_sampling_gradient",
    "rng_uniform",
]

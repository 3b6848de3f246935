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

:class:`ErrorFeedback` keeps named per-tensor residuals around any of them
(compensate -> compress -> update) and saves/loads its state.

A :class:`Compressed` object is one contiguous ``uint8`` buffer: a 48-byte
header (magic ``SMLC``, version, method, dtype, ndim, element count, payload
size, four method parameters, CRC-32 of header and shape, reserved), the
shape (``ndim`` uint64), then the payload
that the C kernel in ``csrc/`` writes. It is sent as one MPI message
(:meth:`Compressed.send`, :meth:`Compressed.recv`) and any method decodes it
with :func:`decode`. Decoders validate everything: a truncated or corrupted
buffer raises :class:`CorruptBufferError` (a ``ValueError``).

Randomness comes from a counter-based generator keyed by
``(seed, rank, step, stream)``: results are reproducible, and ranks (and
steps) draw independent numbers. Each compressor counts its own steps.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Any, Literal, Union

import numpy as np
from mpi4py import MPI

from ._native import MalformedMessageError, ffi, lib

__all__ = [
    "AdaptiveQuant",
    "Cast",
    "Compressed",
    "Compressor",
    "CorruptBufferError",
    "ErrorFeedback",
    "OneBit",
    "QSGD",
    "TopK",
    "ZipML",
    "decode",
    "double_sampling_gradient",
    "rng_uniform",
]


class CorruptBufferError(MalformedMessageError, ValueError):
    """A compressed buffer failed validation (truncated, corrupted or foreign data)."""


_MAGIC = b"SMLC"
_VERSION = 1
_HEADER = struct.Struct("<4sBBBBQQIIIIII")
assert _HEADER.size == 48
_CRC_AT = 40  # offset of the header checksum (CRC-32 of header + shape, computed with it zeroed)
_MAX_NDIM = 8

QSGD_ID, ONEBIT_ID, TOPK_ID, ADAPTIVE_ID, ZIPML_ID, CAST_ID = 1, 2, 3, 4, 5, 6
_DTYPES = {1: np.dtype(np.float32), 2: np.dtype(np.float64)}
_DTYPE_CODES = {v: k for k, v in _DTYPES.items()}

_ERR_NOMEM, _ERR_MALFORMED, _ERR_ARG, _ERR_TOO_LARGE = 1, 3, 4, 5

ArrayLike = Any
BufferLike = Union["Compressed", bytes, bytearray, memoryview, np.ndarray]


def _check(rc: int) -> None:
    if rc:
        msg = ffi.string(lib.scaleml_error_message()).decode(errors="replace")
        if rc == _ERR_MALFORMED:
            raise CorruptBufferError(msg)
        if rc == _ERR_ARG:
            raise ValueError(msg)
        if rc in (_ERR_NOMEM,):
            raise MemoryError(msg)
        raise RuntimeError(msg)


def _as_input(x: ArrayLike, name: str = "x") -> np.ndarray:
    """float32/float64 C-contiguous view (or copy) of x; TypeError for other dtypes."""
    a = np.asarray(x)
    if a.dtype not in _DTYPE_CODES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim > _MAX_NDIM:
        raise ValueError(f"{name} has {a.ndim} dimensions, at most {_MAX_NDIM} are supported")
    return np.ascontiguousarray(a)


def _ptr(a: np.ndarray, ctype: str = "void *"):
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=False)) if a.size else ffi.NULL


def _wptr(a: np.ndarray, ctype: str = "void *"):
    return ffi.cast(ctype, ffi.from_buffer(a, require_writable=True)) if a.size else ffi.NULL


def _default_rank() -> int:
    return MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() and not MPI.Is_finalized() else 0


def rng_uniform(seed: int, rank: int, step: int, n: int, stream: int = 0, offset: int = 0) -> np.ndarray:
    """Draws ``offset .. offset + n`` of the counter-based stream ``(seed, rank, step, stream)``.

    Parameters
    ----------
    seed, rank, step, stream : int
        The key of the stream (each a 64-bit unsigned integer).
    n : int
        Number of uniform numbers in [0, 1) to return (53 random bits each).
    offset : int
        Index of the first draw.

    Returns
    -------
    numpy.ndarray
        float64 array of length ``n``.
    """
    out = np.empty(int(n), dtype=np.float64)
    key = lib.scaleml_rng_key(seed, rank, step, stream)
    lib.scaleml_rng_uniform(key, offset, out.size, _wptr(out, "double *"))
    return out


class Compressed:
    """A compressed tensor: one contiguous ``uint8`` buffer with a self-describing header.

    Attributes
    ----------
    buffer : numpy.ndarray
        The whole message (header, shape, payload), ``uint8``.
    method : int
        Method identifier (see the ``*_ID`` constants).
    dtype : numpy.dtype
        Data type of the decoded tensor (float32 or float64).
    shape : tuple of int
        Shape of the decoded tensor.
    params : tuple of 4 int
        Method parameters stored in the header.
    """

    __slots__ = ("buffer", "method", "dtype", "shape", "params", "header_bytes")

    def __init__(self, buffer: np.ndarray, method: int, dtype: np.dtype, shape: tuple[int, ...],
                 params: tuple[int, int, int, int], header_bytes: int) -> None:
        self.buffer = buffer
        self.method = method
        self.dtype = dtype
        self.shape = shape
        self.params = params
        self.header_bytes = header_bytes

    @property
    def nbytes(self) -> int:
        """Size of the whole message in bytes (header included)."""
        return int(self.buffer.size)

    @property
    def size(self) -> int:
        """Number of elements of the decoded tensor."""
        return int(math.prod(self.shape))

    @property
    def payload(self) -> np.ndarray:
        """The kernel's payload (a view of :attr:`buffer` after the header)."""
        return self.buffer[self.header_bytes:]

    @property
    def bits_per_element(self) -> float:
        """Message bits (header included) per element of the tensor."""
        return 8.0 * self.nbytes / max(self.size, 1)

    def to_bytes(self) -> bytes:
        """The message as ``bytes``."""
        return self.buffer.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | np.ndarray) -> Compressed:
        """Parse and validate a message header (the payload is validated by ``decode``).

        Raises
        ------
        CorruptBufferError
            When the header is truncated, foreign, or inconsistent with the size.
        """
        buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
        buf = np.array(buf.reshape(-1), dtype=np.uint8, copy=True)  # aligned, owned
        if buf.size < _HEADER.size:
            raise CorruptBufferError(
                f"compressed buffer truncated: {buf.size} bytes < {_HEADER.size}-byte header")
        magic, version, method, dcode, ndim, n, payload, p0, p1, p2, p3, crc, _ = _HEADER.unpack_from(buf, 0)
        if magic != _MAGIC:
            raise CorruptBufferError("not a ScaleML compressed buffer (bad magic)")
        if version != _VERSION:
            raise CorruptBufferError(f"unsupported compressed format version {version}")
        if method not in _DECODERS:
            raise CorruptBufferError(f"unknown compression method {method}")
        if dcode not in _DTYPES:
            raise CorruptBufferError(f"unknown dtype code {dcode}")
        if ndim > _MAX_NDIM:
            raise CorruptBufferError(f"bad ndim {ndim}")
        hdr = _HEADER.size + 8 * ndim
        if buf.size < hdr:
            raise CorruptBufferError("compressed buffer truncated inside its shape")
        if _header_crc(buf[:hdr]) != crc:
            raise CorruptBufferError("compressed buffer header fails its checksum")
        shape = tuple(int(v) for v in struct.unpack_from(f"<{ndim}Q", buf, _HEADER.size))
        total = 1
        for d in shape:
            total *= d
        if total != n or n >= 1 << 48:
            raise CorruptBufferError(f"shape {shape} does not match element count {n}")
        if payload != buf.size - hdr:
            raise CorruptBufferError(f"payload size {payload} does not match buffer size {buf.size - hdr}")
        return cls(buf, method, _DTYPES[dcode], shape, (p0, p1, p2, p3), hdr)

    def send(self, comm: MPI.Comm, dest: int, tag: int = 0) -> None:
        """Send the message to ``dest`` as one MPI message (``MPI.BYTE``)."""
        comm.Send([self.buffer, MPI.BYTE], dest=dest, tag=tag)

    @classmethod
    def recv(cls, comm: MPI.Comm, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG) -> Compressed:
        """Receive one message sent by :meth:`send` (probes its size first)."""
        status = MPI.Status()
        comm.Probe(source=source, tag=tag, status=status)
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        comm.Recv([buf, MPI.BYTE], source=status.Get_source(), tag=status.Get_tag())
        return cls.from_bytes(buf)

    def __repr__(self) -> str:
        name = _NAMES.get(self.method, "?")
        return f"Compressed({name}, shape={self.shape}, dtype={self.dtype}, nbytes={self.nbytes})"


def _header_crc(head: np.ndarray) -> int:
    h = bytearray(head.tobytes())
    h[_CRC_AT:_CRC_AT + 4] = b"\0\0\0\0"
    return zlib.crc32(h)


def _out_array(c: Compressed, out: np.ndarray | None) -> np.ndarray:
    """The array a decoder writes: ``out`` after checks, or a new one."""
    if out is None:
        return np.empty(c.shape, dtype=c.dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError("out must be a numpy array")
    if out.dtype != c.dtype:
        raise TypeError(f"out has dtype {out.dtype}, the message holds {c.dtype}")
    if out.shape != c.shape:
        raise ValueError(f"out has shape {out.shape}, the message holds {c.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out


def _as_compressed(c: BufferLike) -> Compressed:
    return c if isinstance(c, Compressed) else Compressed.from_bytes(c)


def _pack(method: int, dtype: np.dtype, shape: tuple[int, ...], params: tuple[int, ...],
          cap: int) -> tuple[np.ndarray, int]:
    hdr = _HEADER.size + 8 * len(shape)
    buf = np.empty(hdr + cap, dtype=np.uint8)
    return buf, hdr


def _finish(buf: np.ndarray, hdr: int, written: int, method: int, dtype: np.dtype, shape: tuple[int, ...],
            params: tuple[int, ...]) -> Compressed:
    p = tuple(int(v) for v in params) + (0,) * (4 - len(params))
    n = int(math.prod(shape))
    _HEADER.pack_into(buf, 0, _MAGIC, _VERSION, method, _DTYPE_CODES[dtype], len(shape), n, written, *p, 0, 0)
    struct.pack_into(f"<{len(shape)}Q", buf, _HEADER.size, *shape)
    struct.pack_into("<I", buf, _CRC_AT, _header_crc(buf[:hdr]))
    total = hdr + written
    if total < buf.size:
        buf = buf[:total].copy() if total < buf.size // 2 else buf[:total]
    return Compressed(buf, method, dtype, tuple(shape), p, hdr)  # type: ignore[arg-type]


def _encode_retry(call, cap: int, method: int, dtype: np.dtype, shape: tuple[int, ...],
                  params: tuple[int, ...]) -> Compressed:
    """Run a C encoder; on 'capacity too small' retry once with the size it asked for."""
    for _ in range(2):
        buf, hdr = _pack(method, dtype, shape, params, cap)
        written = ffi.new("size_t *")
        rc = call(_wptr(buf[hdr:], "uint8_t *") if cap else ffi.NULL, cap, written)
        if rc == _ERR_TOO_LARGE and written[0] > cap:
            cap = int(written[0])
            continue
        _check(rc)
        return _finish(buf, hdr, int(written[0]), method, dtype, shape, params)
    raise RuntimeError("encoder asked for more room twice")  # pragma: no cover


class Compressor:
    """Base class: seeding, step counting, and the error-feedback hook.

    Parameters
    ----------
    seed : int
        Seed of the counter-based random stream.
    rank : int, optional
        Rank mixed into the key (default: the rank in ``MPI.COMM_WORLD``), so
        ranks draw independent numbers.
    """

    method: int = 0
    name: str = "compressor"

    def __init__(self, seed: int = 0, rank: int | None = None) -> None:
        self.seed = int(seed)
        self.rank = _default_rank() if rank is None else int(rank)
        self.step = 0

    def _key(self, step: int | None, stream: int = 0) -> int:
        if step is None:
            step = self.step
            self.step += 1
        return int(lib.scaleml_rng_key(self.seed, self.rank, int(step), int(stream)))

    def encode(self, x: ArrayLike, *, step: int | None = None) -> Compressed:  # pragma: no cover
        """Compress ``x``; ``step`` overrides the internal step counter."""
        raise NotImplementedError

    def decode(self, c: BufferLike, out: np.ndarray | None = None) -> np.ndarray:
        """Decompress a :class:`Compressed` (or its bytes) made by this method.

        ``out``, when given, is a C-contiguous array of the message's shape and
        dtype that receives the result (no allocation); it is returned.
        """
        c = _as_compressed(c)
        if c.method != self.method:
            raise CorruptBufferError(f"buffer holds method {_NAMES.get(c.method, c.method)}, not {self.name}")
        return _DECODERS[c.method](c, out)

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None) -> tuple[Compressed, np.ndarray]:
        """Compress ``x`` and return the quantization error ``x - decode(encode(x))`` too."""
        a = _as_input(x)
        c = self.encode(a, step=step)
        return c, a - self.decode(c)


# ----------------------------------------------------------------------------- QSGD

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

    def encode(self, x: ArrayLike, *, step: int | None = None) -> Compressed:
        """Quantize ``x`` (float32/float64, any shape)."""
        a = _as_input(x)
        key = self._key(step)
        fmt = _QSGD_FORMATS[self.format]
        cap = int(lib.scaleml_qsgd_max_bytes(a.size, self.bits, self.bucket, fmt))
        xp = _ptr(a)

        def call(out, cap, written):
            return lib.scaleml_qsgd_encode(xp, a.itemsize, a.size, self.bits, self.bucket, _NORMS[self.norm],
                                           fmt, key, out, cap, written)

        return _encode_retry(call, cap, self.method, a.dtype, a.shape,
                             (self.bits, self.bucket, _NORMS[self.norm], fmt))


def _decode_qsgd(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    bits, bucket, norm, fmt = c.params
    if not 1 <= bits <= 8 or not 1 <= bucket <= 1 << 31 or norm not in (0, 1) or fmt not in (0, 1):
        raise CorruptBufferError(f"QSGD header has invalid parameters {c.params}")
    p = c.payload
    # size checks before allocating the output (a forged shape must not allocate)
    if fmt == 0 and p.size != lib.scaleml_qsgd_max_bytes(c.size, bits, bucket, 0):
        raise CorruptBufferError(f"QSGD payload has {p.size} bytes, expected "
                                 f"{lib.scaleml_qsgd_max_bytes(c.size, bits, bucket, 0)}")
    if fmt == 1 and p.size * 8 < -(-c.size // bucket) * 33:
        raise CorruptBufferError(f"QSGD payload of {p.size} bytes is too short for {c.size} elements")
    out = _out_array(c, out)
    _check(lib.scaleml_qsgd_decode(_ptr(p, "uint8_t *"), p.size, out.size, bits, bucket, fmt,
                                   _wptr(out), out.itemsize))
    return out


# ----------------------------------------------------------------------------- 1-bit SGD


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

    def _encode(self, x: ArrayLike, residual: bool) -> tuple[Compressed, np.ndarray | None]:
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

        c = _encode_retry(call, cap, self.method, a.dtype, a.shape, (bucket, columns))
        if res is not None and columns:
            res = np.ascontiguousarray(res.T)
        return c, res

    def encode(self, x: ArrayLike, *, step: int | None = None) -> Compressed:
        """Quantize ``x`` (deterministic; ``step`` is accepted for a uniform interface)."""
        return self._encode(x, False)[0]

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None) -> tuple[Compressed, np.ndarray]:
        """Quantize ``x`` and return the error ``x - reconstruction`` computed in the same C pass."""
        c, res = self._encode(x, True)
        return c, res  # type: ignore[return-value]


def _decode_onebit(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    bucket, columns = c.params[0], c.params[1]
    if bucket < 1 or columns not in (0, 1) or (columns and len(c.shape) != 2):
        raise CorruptBufferError(f"1-bit header has invalid parameters {c.params}")
    if columns and bucket != max(c.shape[0], 1):
        raise CorruptBufferError("1-bit header: column bucket does not match the row count")
    n = c.size
    p = c.payload
    if p.size != lib.scaleml_onebit_bytes(n, bucket):
        raise CorruptBufferError(
            f"1-bit payload has {p.size} bytes, expected {lib.scaleml_onebit_bytes(n, bucket)}")
    res = _out_array(c, out)
    flat = np.empty(n, dtype=c.dtype) if columns else res.reshape(-1)
    _check(lib.scaleml_onebit_decode(_ptr(p, "uint8_t *"), p.size, n, bucket, _wptr(flat), flat.itemsize))
    if columns:
        res[...] = flat.reshape(c.shape[1], c.shape[0]).T
    return res


# ----------------------------------------------------------------------------- TopK


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

    def _encode(self, x: ArrayLike, step: int | None, residual: bool) -> tuple[Compressed, np.ndarray | None]:
        a = _as_input(x)
        if a.size > 1 << 32:
            raise ValueError("TopK supports tensors of at most 2**32 elements (uint32 indices)")
        k = self.k_for(a.size)
        key = self._key(step)
        res = np.empty_like(a) if residual else None
        guess = k if not self.approximate else min(a.size, 2 * k + 64)
        cap = int(lib.scaleml_topk_bytes(guess, a.itemsize))
        xp = _ptr(a)
        rp = _wptr(res) if res is not None else ffi.NULL

        def call(out, cap, written):
            return lib.scaleml_topk_encode(xp, a.itemsize, a.size, k, int(self.approximate), self.sample, key,
                                           out, cap, written, rp)

        return _encode_retry(call, cap, self.method, a.dtype, a.shape, (int(self.approximate),)), res

    def encode(self, x: ArrayLike, *, step: int | None = None) -> Compressed:
        """Select the top entries of ``x`` (flattened)."""
        return self._encode(x, step, False)[0]

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None) -> tuple[Compressed, np.ndarray]:
        """Select and return the unsent remainder (x with the sent entries zeroed)."""
        return self._encode(x, step, True)  # type: ignore[return-value]

    @staticmethod
    def entries(c: BufferLike) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``(indices, values)`` of a TopK message, ready for ``scaleml.sparse_allreduce``.

        Indices are ``uint32``, sorted and unique (into the flattened tensor).
        """
        c = _as_compressed(c)
        if c.method != TOPK_ID:
            raise CorruptBufferError("not a TopK buffer")
        p = c.payload
        count = ffi.new("uint64_t *")
        io, vo = ffi.new("size_t *"), ffi.new("size_t *")
        _check(lib.scaleml_topk_layout(_ptr(p, "uint8_t *"), p.size, c.size, c.dtype.itemsize, count, io, vo))
        k = int(count[0])
        idx = p[io[0]:io[0] + 4 * k].view(np.uint32)
        val = p[vo[0]:vo[0] + c.dtype.itemsize * k].view(c.dtype)
        return idx, val


def _decode_topk(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    out = _out_array(c, out)
    p = c.payload
    _check(lib.scaleml_topk_decode(_ptr(p, "uint8_t *"), p.size, out.size, _wptr(out), out.itemsize))
    return out


# ----------------------------------------------------------------------------- adaptive quantization


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

    def _encode(self, x: ArrayLike, step: int | None, residual: bool) -> tuple[Compressed, np.ndarray | None]:
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
        c = _encode_retry(call, cap, self.method, a.dtype, a.shape, (pi_bits,))
        self.last_thresholds = (float(taus[0]), float(taus[1]))
        return c, res

    def encode(self, x: ArrayLike, *, step: int | None = None) -> Compressed:
        """Quantize the matrix ``x`` (a 1-D input is one column)."""
        return self._encode(x, step, False)[0]

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None) -> tuple[Compressed, np.ndarray]:
        """Quantize and return the error (value - reconstruction where sent, value elsewhere)."""
        return self._encode(x, step, True)  # type: ignore[return-value]

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
    out = _out_array(c, out)
    p = c.payload
    _check(lib.scaleml_adaptive_decode(_ptr(p, "uint8_t *"), p.size, rows, cols, _wptr(out), out.itemsize))
    return out


# ----------------------------------------------------------------------------- ZipML


class ZipML(Compressor):
    """Stochastic rounding to an arbitrary sorted level set (ZipML).

    ``x`` between levels ``a <= x <= b`` rounds to ``b`` with probability
    ``(x - a)/(b - a)`` and to ``a`` otherwise (unbiased, variance
    ``(x - a)(b - x)``); values outside ``[levels[0], levels[-1]]`` are clamped.
    :meth:`fit` finds the data-optimal levels of a sample.

    Parameters
    ----------
    levels : array_like
        2 to 256 finite, strictly increasing levels.
    """

    method = ZIPML_ID
    name = "zipml"

    def __init__(self, levels: ArrayLike, seed: int = 0, rank: int | None = None) -> None:
        super().__init__(seed, rank)
        lv = np.asarray(levels, dtype=np.float64).reshape(-1)
        if not 2 <= lv.size <= 256:
            raise ValueError(f"ZipML needs 2 to 256 levels, got {lv.size}")
        if not np.all(np.isfinite(lv)) or not np.all(np.diff(lv) > 0):
            raise ValueError("levels must be finite and strictly increasing")
        self.levels = np.ascontiguousarray(lv)

    @classmethod
    def fit(cls, sample: ArrayLike, s: int, max_candidates: int = 512, seed: int = 0,
            rank: int | None = None) -> ZipML:
        """Quantizer with the ``s`` levels minimising the rounding variance of ``sample``.

        Dynamic programming over the sorted sample (candidates: its distinct
        values, or ``max_candidates`` quantiles of them), cost of an interval
        ``[c_i, c_j]`` with ``m`` points, sum ``S1``, sum of squares ``S2``:
        ``-m c_i c_j + (c_i + c_j) S1 - S2``. Levels include the sample's min
        and max. Fewer levels are returned when the sample has fewer distinct
        values (at least 2: a constant sample gets a second level above it).
        """
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 2 <= s <= 256:
            raise ValueError(f"s must be an integer in 2..256, got {s!r}")
        a = _as_input(sample, "sample").reshape(-1).astype(np.float64)
        if a.size == 0:
            raise ValueError("cannot fit levels to an empty sample")
        if not np.all(np.isfinite(a)):
            raise ValueError("sample contains NaN or Inf")
        a = np.sort(a)
        levels = np.empty(s, dtype=np.float64)
        count = ffi.new("uint32_t *")
        _check(lib.scaleml_zipml_levels(_ptr(a, "double *"), a.size, s, max(int(max_candidates), s),
                                        _wptr(levels, "double *"), count))
        lv = levels[:count[0]]
        if lv.size == 1:
            lv = np.array([lv[0], lv[0] + max(1.0, abs(lv[0]))])
        return cls(lv, seed=seed, rank=rank)

    @classmethod
    def uniform(cls, lo: float, hi: float, s: int, seed: int = 0, rank: int | None = None) -> ZipML:
        """Quantizer with ``s`` evenly spaced levels from ``lo`` to ``hi``."""
        return cls(np.linspace(lo, hi, s), seed=seed, rank=rank)

    def variance(self, x: ArrayLike) -> float:
        """Exact expected squared error ``sum (x - a)(b - x)`` of rounding (clamped) ``x``."""
        v = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), self.levels[0], self.levels[-1])
        j = np.clip(np.searchsorted(self.levels, v, side="right") - 1, 0, self.levels.size - 2)
        return float(np.sum((v - self.levels[j]) * (self.levels[j + 1] - v)))

    def encode(self, x: ArrayLike, *, step: int | None = None, stream: int = 0) -> Compressed:
        """Round ``x`` stochastically; ``stream`` selects an independent draw for the same step."""
        a = _as_input(x)
        key = self._key(step, stream)
        s = self.levels.size
        cap = int(lib.scaleml_zipml_bytes(a.size, s))
        xp, lp = _ptr(a), _ptr(self.levels, "double *")

        def call(out, cap, written):
            return lib.scaleml_zipml_encode(xp, a.itemsize, a.size, lp, s, key, out, cap, written)

        return _encode_retry(call, cap, self.method, a.dtype, a.shape, (s,))


def _decode_zipml(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    s = c.params[0]
    if not 2 <= s <= 256:
        raise CorruptBufferError(f"ZipML header: bad level count {s}")
    p = c.payload
    if p.size != lib.scaleml_zipml_bytes(c.size, s):
        raise CorruptBufferError(
            f"ZipML payload has {p.size} bytes, expected {lib.scaleml_zipml_bytes(c.size, s)}")
    out = _out_array(c, out)
    _check(lib.scaleml_zipml_decode(_ptr(p, "uint8_t *"), p.size, out.size, s, _wptr(out), out.itemsize))
    return out


def double_sampling_gradient(A: ArrayLike, b: ArrayLike, x: ArrayLike, quantizer: ZipML, *,
                             step: int | None = None, double: bool = True) -> np.ndarray:
    """Least-squares gradient from quantized data rows (ZipML double sampling).

    Returns ``sum_r Q1(a_r) (Q2(a_r)^T x - b_r) / m`` for the ``m`` rows of
    ``A`` (the gradient of ``||A x - b||^2 / (2m)``), where ``Q1`` and ``Q2``
    are two independent stochastic roundings (streams 1 and 2 of the same
    step). Unbiased. With ``double=False`` a single rounding is used for both
    factors, ``Q1(a)(Q1(a)^T x - b)``: biased by ``diag(Var Q(a)) x``.
    """
    A = _as_input(A, "A")
    if A.ndim != 2:
        raise ValueError("A must be a matrix")
    bv = np.asarray(b, dtype=np.float64).reshape(-1)
    xv = np.asarray(x, dtype=np.float64).reshape(-1)
    if bv.size != A.shape[0] or xv.size != A.shape[1]:
        raise ValueError("shapes of A, b and x do not match")
    if step is None:
        step = quantizer.step
        quantizer.step += 1
    q1 = quantizer.decode(quantizer.encode(A, step=step, stream=1)).astype(np.float64)
    q2 = quantizer.decode(quantizer.encode(A, step=step, stream=2)).astype(np.float64) if double else q1
    return q1.T @ (q2 @ xv - bv) / A.shape[0]


# ----------------------------------------------------------------------------- casting

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

    def encode(self, x: ArrayLike, *, step: int | None = None) -> Compressed:
        """Cast ``x`` to 16 bits."""
        a = _as_input(x)
        fmt = _CASTS[self.format]
        xp = _ptr(a)

        def call(out, cap, written):
            written[0] = 2 * a.size
            return lib.scaleml_cast_encode(xp, a.itemsize, a.size, fmt, ffi.cast("uint16_t *", out))

        return _encode_retry(call, 2 * a.size, self.method, a.dtype, a.shape, (fmt,))


def _decode_cast(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    fmt = c.params[0]
    if fmt not in (0, 1):
        raise CorruptBufferError(f"cast header: bad format {fmt}")
    p = c.payload
    if p.size != 2 * c.size:
        raise CorruptBufferError(f"cast payload has {p.size} bytes, expected {2 * c.size}")
    out = _out_array(c, out)
    _check(lib.scaleml_cast_decode(_ptr(p, "uint16_t *"), c.size, fmt, _wptr(out), out.itemsize))
    return out


_DECODERS = {QSGD_ID: _decode_qsgd, ONEBIT_ID: _decode_onebit, TOPK_ID: _decode_topk,
             ADAPTIVE_ID: _decode_adaptive, ZIPML_ID: _decode_zipml, CAST_ID: _decode_cast}
_NAMES = {QSGD_ID: "qsgd", ONEBIT_ID: "onebit", TOPK_ID: "topk", ADAPTIVE_ID: "adaptive", ZIPML_ID: "zipml",
          CAST_ID: "cast"}


def decode(c: BufferLike, out: np.ndarray | None = None) -> np.ndarray:
    """Decode any compressed message (the method is read from its header).

    ``out``: optional C-contiguous array of the message's shape and dtype to
    write the result into.

    Raises
    ------
    CorruptBufferError
        When the buffer is truncated or corrupted.
    """
    c = _as_compressed(c)
    return _DECODERS[c.method](c, out)


# ----------------------------------------------------------------------------- error feedback


class ErrorFeedback:
    """Error feedback around a compressor: named residuals, compensate -> compress -> update.

    For a tensor ``name`` and gradient ``g``: ``y = g + residual[name]``
    (compensate), ``c = compress(y)``, ``residual[name] = y - decode(c)``
    (update); ``c`` is returned. The state (every residual and the
    compressor's step counter) can be saved and loaded, so a checkpointed run
    resumes with the same residuals and random streams.

    Parameters
    ----------
    compressor : Compressor
        Any compressor of this module.
    """

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self._residuals: dict[str, np.ndarray] = {}

    def compress(self, name: str, grad: ArrayLike, *, step: int | None = None) -> Compressed:
        """Compensate ``grad`` with the residual of ``name``, compress, and keep the new residual."""
        g = _as_input(grad, "grad")
        r = self._residuals.get(name)
        if r is not None and (r.shape != g.shape or r.dtype != g.dtype):
            raise ValueError(f"tensor {name!r}: got {g.dtype}{g.shape}, residual is {r.dtype}{r.shape}")
        y = g + r if r is not None else g
        c, res = self.compressor.encode_with_residual(y, step=step)
        self._residuals[name] = res
        return c

    def residual(self, name: str) -> np.ndarray | None:
        """The current residual of ``name`` (``None`` before its first step)."""
        return self._residuals.get(name)

    def names(self) -> list[str]:
        """Names of the tensors with a residual."""
        return sorted(self._residuals)

    def reset(self, name: str | None = None) -> None:
        """Drop the residual of ``name`` (all residuals when ``None``)."""
        if name is None:
            self._residuals.clear()
        else:
            self._residuals.pop(name, None)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every residual (keys ``residual/<name>``) and ``step`` (the compressor's counter)."""
        state = {f"residual/{k}": v.copy() for k, v in self._residuals.items()}
        state["step"] = np.array(self.compressor.step, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""
        residuals = {}
        for k, v in state.items():
            if k.startswith("residual/"):
                a = np.array(v, copy=True)
                if a.dtype not in _DTYPE_CODES:
                    raise TypeError(f"residual {k!r} has dtype {a.dtype}")
                residuals[k[len("residual/"):]] = a
            elif k != "step":
                raise ValueError(f"unexpected key {k!r} in error feedback state")
        self._residuals = residuals
        if "step" in state:
            self.compressor.step = int(np.asarray(state["step"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    def load(self, path: str | os.PathLike) -> None:
        """Read the state written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            self.load_state_dict({k: f[k] for k in f.files})

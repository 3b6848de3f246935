"""The compressed message: :class:`Compressed`, its header (written and validated in C) and decoding.

A message is one contiguous ``uint8`` buffer: a 48-byte header (magic
``SMLC``, version, method, dtype, ndim, element count, payload size, four
method parameters, CRC-32 of header and shape, payload checksum), the shape
(``ndim`` uint64), then the payload that the method's C kernel writes. The
header is written by ``scaleml_compressed_write_header`` and parsed and
validated by ``scaleml_compressed_parse`` (``csrc/compress/framing.c``); this
module only wraps them.

Payload checksum (optional, off by default): ``encode(x, checksum=True)`` or
:meth:`Compressed.with_checksum` writes a version 2 header whose last field
(bytes 44-47, reserved and 0 in version 1) holds the CRC-32 (zlib's) of the
payload, so the message can be stored or sent outside MPI and checked when it
comes back: parsing it (:meth:`Compressed.from_bytes`, :func:`decode`, every
``decode``) verifies the payload and raises :class:`CorruptBufferError` on a
mismatch. Messages without it are version 1, byte for byte as before, and
decode as before; the header's own CRC covers the header in both.

Decoders never allocate more than the message justifies: each checks, before
allocating its output, that the payload can hold the announced shape (the exact
size for fixed-width formats; counts against the payload for the variable ones),
and a decoder that allocates refuses more than
:data:`~scaleml.compress.base.MAX_ELEMENTS_PER_PAYLOAD_BYTE` elements per
payload byte beyond :data:`~scaleml.compress.base.ALLOCATION_FLOOR` (a valid
header with a forged shape over a few bytes raises :class:`CorruptBufferError`
in microseconds; decode into your own ``out=`` array to go beyond the bound).
See ``docs/reliability.md``.

Each method module registers its id, name and decoder with
:func:`register_method`; :func:`decode` dispatches on the id in the header.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Union

import numpy as np
from mpi4py import MPI

from .._native import ffi, lib
from .._tensors import as_numpy, as_numpy_out, like_input
from ..errors import CorruptBufferError, check

__all__ = ["Compressed", "decode", "register_method", "method_name"]

HEADER_BYTES = int(lib.SCALEML_COMPRESSED_HEADER_BYTES)
VERSION_AT = 4  # byte offset of the version: 1, or 2 when the message carries its payload's CRC-32
PAYLOAD_CRC = int(lib.SCALEML_COMPRESSED_PAYLOAD_CRC)
VERSION_PAYLOAD_CRC = int(lib.SCALEML_COMPRESSED_VERSION_PAYLOAD_CRC)
MAX_NDIM = int(lib.SCALEML_COMPRESSED_MAX_NDIM)
DTYPES = {int(lib.SCALEML_DTYPE_FLOAT32): np.dtype(np.float32), int(lib.SCALEML_DTYPE_FLOAT64): np.dtype(np.float64)}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}

BufferLike = Union["Compressed", bytes, bytearray, memoryview, np.ndarray]
Decoder = Callable[["Compressed", Optional[np.ndarray]], np.ndarray]


class _Method(NamedTuple):
    name: str
    decoder: Decoder


#: Method id -> name and decoder, filled by each method module when it is imported.
_METHODS: dict[int, _Method] = {}


def register_method(method: int, name: str, decoder: Decoder) -> None:
    """Make ``decode`` hand messages of method id ``method`` to ``decoder``.

    Parameters
    ----------
    method : int
        The method's id (a ``SCALEML_METHOD_*`` constant of the C core).
    name : str
        Its short name (``Compressor.name``).
    decoder : callable
        ``decoder(compressed, out) -> numpy.ndarray``; validates the payload.
    """
    if method in _METHODS:
        raise ValueError(f"method id {method} is already registered as {_METHODS[method].name!r}")
    _METHODS[method] = _Method(name, decoder)


def method_name(method: int) -> str:
    """The registered name of method id ``method`` (the id as a string when unknown)."""
    entry = _METHODS.get(method)
    return entry.name if entry is not None else str(method)


def _bytes_pointer(buf: np.ndarray):
    return ffi.cast("uint8_t *", ffi.from_buffer(buf, require_writable=False)) if buf.size else ffi.NULL


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
    header_bytes : int
        Size of header and shape: the offset of the payload in :attr:`buffer`.
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

    @property
    def checksum(self) -> bool:
        """Whether the message carries the CRC-32 of its payload (a version 2 header)."""
        return bool(self.buffer.size > VERSION_AT and self.buffer[VERSION_AT] == VERSION_PAYLOAD_CRC)

    def with_checksum(self) -> Compressed:
        """This message with the CRC-32 of its payload in its header (itself when it has one already).

        Returns
        -------
        Compressed
            A copy whose header is version 2: the same fields, the payload's
            CRC-32 in bytes 44-47 and the header CRC over both. Parsing it
            verifies the payload; the payload bytes are unchanged.
        """
        if self.checksum:
            return self
        buf = self.buffer.copy()
        _write_header(buf, self.payload.size, self.method, self.dtype, self.shape, self.params, checksum=True)
        return Compressed(buf, self.method, self.dtype, self.shape, self.params, self.header_bytes)

    def verify(self) -> None:
        """Validate the header again and, when the message carries one, the payload's checksum.

        Raises
        ------
        CorruptBufferError
            When the buffer no longer holds a valid message (for example a
            payload changed after it was checksummed).
        """
        header = ffi.new("scaleml_compressed_header *")
        check(lib.scaleml_compressed_parse(_bytes_pointer(self.buffer), self.buffer.size, header))

    def to_bytes(self) -> bytes:
        """The message as ``bytes``."""
        return self.buffer.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | np.ndarray) -> Compressed:
        """Parse and validate a message header in C (the payload is validated by ``decode``).

        Parameters
        ----------
        data : bytes-like or numpy.ndarray
            The whole message; it is copied into an aligned array the result owns.

        Returns
        -------
        Compressed
            The message with the header's fields.

        Raises
        ------
        CorruptBufferError
            When the header is truncated, foreign, or inconsistent with the size,
            or the payload fails the checksum the message carries
            (``scaleml_compressed_parse`` says which check failed).
        """
        buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
        buf = np.array(buf.reshape(-1), dtype=np.uint8, copy=True)  # aligned, owned
        header = ffi.new("scaleml_compressed_header *")
        check(lib.scaleml_compressed_parse(_bytes_pointer(buf), buf.size, header))
        shape = tuple(int(header.shape[d]) for d in range(header.ndim))
        params = (int(header.params[0]), int(header.params[1]), int(header.params[2]), int(header.params[3]))
        return cls(buf, int(header.method), DTYPES[header.dtype_code], shape, params, int(header.header_bytes))

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
        return (f"Compressed({method_name(self.method)}, shape={self.shape}, dtype={self.dtype}, "
                f"nbytes={self.nbytes})")


def _header_crc(head: np.ndarray) -> int:
    """CRC-32 of a header and shape (``uint8``, at least 48 bytes) with the CRC field taken as zero."""
    head = np.ascontiguousarray(head, dtype=np.uint8).reshape(-1)
    crc = ffi.new("uint32_t *")
    check(lib.scaleml_compressed_header_crc(_bytes_pointer(head), head.size, crc))
    return int(crc[0])


def header_bytes_for(ndim: int) -> int:
    """Bytes of header and shape of a message of an ``ndim``-dimensional tensor."""
    return int(lib.scaleml_compressed_header_bytes(ndim))


def allocate_message(shape: tuple[int, ...], payload_capacity: int) -> tuple[np.ndarray, int]:
    """A buffer with room for header, shape and ``payload_capacity`` payload bytes, and the payload offset."""
    header_bytes = header_bytes_for(len(shape))
    return np.empty(header_bytes + payload_capacity, dtype=np.uint8), header_bytes


def _write_header(buf: np.ndarray, payload_bytes: int, method: int, dtype: np.dtype, shape: tuple[int, ...],
                  params: tuple[int, ...], checksum: bool = False) -> int:
    """Write header and shape (in C) at the start of ``buf``, the payload after them; returns their size."""
    if len(shape) > MAX_NDIM or len(params) > 4:
        raise ValueError(f"a message holds at most {MAX_NDIM} dimensions and 4 parameters")
    p = tuple(int(v) for v in params) + (0,) * (4 - len(params))
    header = ffi.new("scaleml_compressed_header *")
    header.method = method
    header.dtype_code = DTYPE_CODES[np.dtype(dtype)]
    header.ndim = len(shape)
    header.count = math.prod(shape)
    header.payload_bytes = payload_bytes
    header.params = list(p)
    header.shape[0:len(shape)] = [int(d) for d in shape]
    header.flags = PAYLOAD_CRC if checksum else 0
    header_bytes = ffi.new("size_t *")
    check(lib.scaleml_compressed_write_header(ffi.cast("uint8_t *", ffi.from_buffer(buf, require_writable=True)),
                                              buf.size, header, header_bytes))
    return int(header_bytes[0])


def finish_message(buf: np.ndarray, payload_bytes: int, method: int, dtype: np.dtype, shape: tuple[int, ...],
                   params: tuple[int, ...], checksum: bool = False) -> Compressed:
    """Write the header (in C) in front of the ``payload_bytes`` an encoder wrote and wrap the message.

    Parameters
    ----------
    buf : numpy.ndarray
        From :func:`allocate_message`, the payload written after the header.
    payload_bytes : int
        Payload bytes the encoder wrote; a buffer with more room is trimmed.
    method, dtype, shape, params
        Header fields (``params``: up to four uint32, the rest 0).
    checksum : bool
        Store the payload's CRC-32 in the header (version 2); default off
        (version 1, the bytes ScaleML has always written).

    Returns
    -------
    Compressed
        The finished message.
    """
    header_bytes = _write_header(buf, payload_bytes, method, dtype, shape, params, checksum)
    p = tuple(int(v) for v in params) + (0,) * (4 - len(params))
    total = header_bytes + payload_bytes
    if total < buf.size:
        buf = buf[:total].copy() if total < buf.size // 2 else buf[:total]
    return Compressed(buf, method, np.dtype(dtype), tuple(int(d) for d in shape), p,  # type: ignore[arg-type]
                      header_bytes)


def _as_compressed(c: BufferLike) -> Compressed:
    """A parsed message; a :class:`Compressed` that carries a payload checksum is verified again."""
    if isinstance(c, Compressed):
        if c.checksum:
            c.verify()
        return c
    return Compressed.from_bytes(as_numpy(c, "the message"))  # a uint8 torch tensor too


def decoder_for(method: int) -> Decoder:
    """The registered decoder of method id ``method``.

    Raises
    ------
    CorruptBufferError
        When no method module registered that id.
    """
    entry = _METHODS.get(method)
    if entry is None:
        raise CorruptBufferError(f"unknown compression method {method}")
    return entry.decoder


def decode(c: BufferLike, out: np.ndarray | None = None) -> np.ndarray:
    """Decode any compressed message (the method is read from its header).

    Parameters
    ----------
    c : Compressed or bytes-like
        The message.
    out : numpy.ndarray or torch.Tensor, optional
        C-contiguous array (or CPU tensor, written in place through a
        zero-copy view) of the message's shape and dtype to write the result into.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The decoded tensor (``out`` when given; else a new numpy array).

    Raises
    ------
    CorruptBufferError
        When the buffer is truncated or corrupted, fails its payload checksum,
        or announces more elements than its payload can hold (see the module
        docstring).
    """
    c = _as_compressed(c)
    return like_input(decoder_for(c.method)(c, as_numpy_out(out)), None, out)

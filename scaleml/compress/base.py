"""What every compressor shares: :class:`Compressor`, input and output checks, the encoder loop, random streams."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from mpi4py import MPI

from .. import _device
from .._native import ffi, lib
from .._tensors import as_numpy, as_numpy_out, like_input
from ..errors import ERR_TOO_LARGE, CorruptBufferError, check
from .device import decode_on_device, from_device, is_device_message
from .framing import (
    DTYPE_CODES,
    MAX_NDIM,
    BufferLike,
    Compressed,
    _as_compressed,
    allocate_message,
    decoder_for,
    finish_message,
    method_name,
)

__all__ = ["ALLOCATION_FLOOR", "MAX_ELEMENTS_PER_PAYLOAD_BYTE", "ArrayLike", "Compressor", "rng_uniform"]

ArrayLike = Any

#: A decoder that allocates its output allocates at most
#: ``max(ALLOCATION_FLOOR, MAX_ELEMENTS_PER_PAYLOAD_BYTE * payload bytes)`` elements. The fixed-width
#: formats never come near it (their payload size is exact, at least 1 bit per element); it bounds the
#: formats in which zeros cost nothing (QSGD's Elias coding, TopK, adaptive quantization), where a valid
#: header over a few bytes could otherwise announce 2^31 elements (an all-zero Elias bucket of 2^31
#: values is 33 bits). A message beyond it decodes into a caller's ``out=`` array.
MAX_ELEMENTS_PER_PAYLOAD_BYTE = 1 << 16
#: Elements any message may decode to, whatever its payload (2^24: 64 MiB of float32).
ALLOCATION_FLOOR = 1 << 24


def _as_input(x: ArrayLike, name: str = "x") -> np.ndarray:
    """float32/float64 C-contiguous view (or copy) of x; TypeError for other dtypes.

    A CPU ``torch.Tensor`` (or another DLPack object) is viewed without a copy when it is contiguous.
    """
    a = np.asarray(as_numpy(x, name))
    if a.dtype not in DTYPE_CODES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim > MAX_NDIM:
        raise ValueError(f"{name} has {a.ndim} dimensions, at most {MAX_NDIM} are supported")
    return np.ascontiguousarray(a)


def _device_input(x: ArrayLike, name: str = "x") -> _device.DeviceArray | None:
    """``x`` as a float32/float64 :class:`scaleml._device.DeviceArray` when it is a CUDA array, else None."""
    view = _device.device_array(x, name)
    if view is None:
        return None
    if view.dtype not in DTYPE_CODES:
        raise TypeError(f"{name} must be float32 or float64, got {view.dtype}")
    if len(view.shape) > MAX_NDIM:
        raise ValueError(f"{name} has {len(view.shape)} dimensions, at most {MAX_NDIM} are supported")
    return view


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


def _out_array(c: Compressed, out: np.ndarray | None) -> np.ndarray:
    """The array a decoder writes: ``out`` after checks, or a new one within the allocation bound.

    Decoders call it after their own size checks of the payload; when it
    allocates, it first refuses a message whose element count exceeds
    ``max(ALLOCATION_FLOOR, MAX_ELEMENTS_PER_PAYLOAD_BYTE * payload bytes)``.
    """
    if out is None:
        bound = max(ALLOCATION_FLOOR, MAX_ELEMENTS_PER_PAYLOAD_BYTE * c.payload.size)
        if c.size > bound:
            raise CorruptBufferError(
                f"{method_name(c.method)} message announces {c.size} elements over {c.payload.size} payload "
                f"bytes: more than a decoder allocates ({bound}); decode into an out= array to accept it")
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


EncoderCall = Callable[[Any, int, Any], int]


def _encode_retry(call: EncoderCall, cap: int, method: int, dtype: np.dtype, shape: tuple[int, ...],
                  params: tuple[int, ...], checksum: bool = False) -> Compressed:
    """Run a C encoder into a new message; on 'capacity too small' retry once with the size it asked for.

    ``call(payload_pointer, capacity, written_pointer)`` writes the payload and
    its size; the header (with the payload's CRC-32 when ``checksum``) is
    written after it by :func:`finish_message`.
    """
    for _ in range(2):
        buf, header_bytes = allocate_message(shape, cap)
        written = ffi.new("size_t *")
        rc = call(_wptr(buf[header_bytes:], "uint8_t *") if cap else ffi.NULL, cap, written)
        if rc == ERR_TOO_LARGE and written[0] > cap:
            cap = int(written[0])
            continue
        check(rc)
        return finish_message(buf, int(written[0]), method, dtype, shape, params, checksum)
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

    def encode(self, x: ArrayLike, *, step: int | None = None,
               checksum: bool = False) -> Compressed:  # pragma: no cover
        """Compress ``x``; ``step`` overrides the internal step counter.

        ``checksum=True`` stores the CRC-32 of the payload in the header (for
        messages stored or sent outside MPI), verified whenever the message is
        parsed or decoded; off by default (the same bytes as without the option).
        """
        raise NotImplementedError

    def decode(self, c: BufferLike, out: np.ndarray | None = None) -> np.ndarray:
        """Decompress a :class:`Compressed` (or its bytes) made by this method.

        ``out``, when given, is a C-contiguous array (or CPU ``torch.Tensor``)
        of the message's shape and dtype that receives the result (no
        allocation); it is returned. Otherwise a new numpy array is returned.
        Raises :class:`CorruptBufferError` for a truncated, corrupted or foreign
        message, a payload that fails its checksum, or a shape the payload
        cannot hold (checked before anything is allocated).
        """
        on_device = is_device_message(c)
        c = from_device(c) if on_device else _as_compressed(c)
        if c.method != self.method:
            raise CorruptBufferError(f"buffer holds method {method_name(c.method)}, not {self.name}")
        if on_device:
            return decode_on_device(c, out)
        result = decoder_for(c.method)(c, as_numpy_out(out))
        return like_input(result, None, out)

    def encode_with_residual(self, x: ArrayLike, *, step: int | None = None) -> tuple[Compressed, np.ndarray]:
        """Compress ``x`` and return the quantization error ``x - decode(encode(x))`` too.

        The error is a ``torch.Tensor`` when ``x`` is one (sharing a new numpy array's memory), else a numpy array;
        for a CUDA array, the message is on its device and the error a CUDA array (computed on the host).
        """
        view = _device_input(x)
        if view is not None:
            c = self.encode(x, step=step)
            host = _device.to_host(view)
            return c, _device.from_host_new(host - _device.to_host(_device.device_array(self.decode(c))), view)
        a = _as_input(x)
        c = self.encode(a, step=step)
        # its own message: into an array of its own, so no allocation bound applies (see _out_array)
        return c, like_input(a - self.decode(c, out=np.empty_like(a)), x)

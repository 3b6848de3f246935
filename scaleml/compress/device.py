"""Compression of CUDA arrays on the GPU: messages in device memory, encoded and decoded by ``csrc/cuda`` kernels.

``Compressor.encode`` of a CUDA array (CuPy, a CUDA ``torch.Tensor``) returns
a :class:`DeviceCompressed`: the same message, byte for byte, as the host
encoder writes for the same values and seed, in a ``uint8`` array of the
input's library on the input's device. The header is written on the host (in
C, as for host messages) and copied in front of the payload the kernel wrote;
decoding reads it back (a few bytes) and runs the method's decode kernel into
an array on the message's device.

The kernels: QSGD's fixed-width format, 1-bit (flat buckets), fp16/bf16
casts and TopK. Other layouts (QSGD's Elias format, 1-bit's per-column
buckets of a matrix) and methods (adaptive, ZipML) are staged: the values go
to the host, the host encoder runs, and the message comes back to the device;
their decoders likewise. Kernels run on the array's stream and the call
returns when the message is complete.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import _cuda, _device
from .._native import ffi, lib
from ..errors import ERR_TOO_LARGE, CorruptBufferError, DeviceError, check, error_for
from .framing import DTYPES, VERSION_AT, VERSION_PAYLOAD_CRC, Compressed, _write_header, decoder_for, header_bytes_for
from .framing import decode as framing_decode

__all__ = ["DeviceCompressed", "decode", "from_device", "is_device_message", "register_device_decoder"]

_D2D = 2


class DeviceCompressed(Compressed):
    """A compressed message in device memory (:attr:`buffer` is a ``uint8`` CuPy array or CUDA tensor).

    The header's fields are read on the host; :meth:`to_host` copies the
    whole message to a host :class:`~scaleml.compress.Compressed`.
    """

    __slots__ = ("view",)

    def __init__(self, buffer: Any, method: int, dtype: np.dtype, shape: tuple[int, ...],
                 params: tuple[int, int, int, int], header_bytes: int) -> None:
        super().__init__(buffer, method, dtype, shape, params, header_bytes)
        view = _device.device_array(buffer, "the message")
        assert view is not None
        self.view = view

    @property
    def nbytes(self) -> int:
        return self.view.nbytes

    @property
    def payload(self) -> np.ndarray:
        raise TypeError("the payload is in device memory: use payload_address, or to_host()")

    @property
    def payload_address(self) -> int:
        """Device address of the payload."""
        return self.view.ptr + self.header_bytes

    @property
    def payload_bytes(self) -> int:
        return self.view.nbytes - self.header_bytes

    @property
    def checksum(self) -> bool:
        head = _device.to_host(_slice(self.view, 0, min(self.view.nbytes, VERSION_AT + 1)))
        return bool(head.size > VERSION_AT and head[VERSION_AT] == VERSION_PAYLOAD_CRC)

    def to_host(self) -> Compressed:
        """The message copied to host memory."""
        return Compressed.from_bytes(_device.to_host(self.view))

    def to_bytes(self) -> bytes:
        return _device.to_host(self.view).tobytes()

    def verify(self) -> None:
        self.to_host().verify()

    def with_checksum(self) -> DeviceCompressed:
        if self.checksum:
            return self
        host = self.to_host().with_checksum()
        return from_device(_device.from_host_new(host.buffer, self.view))

    def send(self, comm: Any, dest: int, tag: int = 0) -> None:
        self.to_host().send(comm, dest, tag)

    def __repr__(self) -> str:
        return super().__repr__().replace("Compressed(", "DeviceCompressed(", 1) + f" on cuda:{self.view.device}"


def _slice(view: _device.DeviceArray, start: int, stop: int) -> _device.DeviceArray:
    """Bytes ``start .. stop`` of a uint8 device array, as a view (no copy)."""
    return _device.DeviceArray(view.obj, view.ptr + start, (stop - start,), np.dtype(np.uint8), view.device,
                               view.stream, view.readonly, view.library)


def is_device_message(c: object) -> bool:
    """Whether ``c`` is a message in device memory (a :class:`DeviceCompressed` or a uint8 CUDA array)."""
    return isinstance(c, DeviceCompressed) or _device.is_device(c)


def from_device(buffer: Any) -> DeviceCompressed:
    """Parse a message held in a ``uint8`` CUDA array (its header is copied to the host and validated in C).

    A message that carries its payload's checksum is copied whole to be verified.
    """
    if isinstance(buffer, DeviceCompressed):
        return buffer
    view = _device.device_array(buffer, "the message")
    assert view is not None
    if view.dtype != np.uint8:
        raise TypeError(f"a device message is a uint8 array, got {view.dtype}")
    head = _device.to_host(_slice(view, 0, min(view.nbytes, header_bytes_for(8))))
    host = np.zeros(view.nbytes, np.uint8)  # only the header is read (and the payload, when checksummed)
    if head.size > VERSION_AT and head[VERSION_AT] == VERSION_PAYLOAD_CRC:
        host = _device.to_host(view)
    else:
        host[:head.size] = head
    header = ffi.new("scaleml_compressed_header *")
    check(lib.scaleml_compressed_parse(ffi.from_buffer("uint8_t[]", host), host.size, header))
    shape = tuple(int(header.shape[d]) for d in range(header.ndim))
    params = (int(header.params[0]), int(header.params[1]), int(header.params[2]), int(header.params[3]))
    return DeviceCompressed(buffer, int(header.method), DTYPES[header.dtype_code], shape, params,
                            int(header.header_bytes))


KernelCall = Callable[[int, int, Any], int]
"""``kernel(payload_address, capacity, written) -> code``: runs an encode kernel into a device payload."""


def encode_kernel(x: _device.DeviceArray, cap: int, method: int, params: tuple[int, ...], kernel: KernelCall,
                  checksum: bool) -> DeviceCompressed:
    """A device message: the header on the host, the payload by ``kernel`` (once more with the room it asks
    for when its first guess was short), in an array of ``x``'s library on ``x``'s device."""
    be = _cuda.backend()
    be.call("scaleml_cuda_set_device", x.device)
    header_bytes = header_bytes_for(len(x.shape))
    written = be.new("size_t *")
    for _ in range(2):
        message = _device.empty_like(x, (header_bytes + cap,), np.uint8)
        view = _device.device_array(message, "message")
        assert view is not None
        rc = kernel(view.ptr + header_bytes, cap, written)
        if rc == ERR_TOO_LARGE and written[0] > cap:
            cap = int(written[0])
            continue
        if rc:
            raise error_for(rc, be.message())
        break
    else:  # pragma: no cover
        raise RuntimeError("encoder asked for more room twice")
    payload = int(written[0])
    if header_bytes + payload < view.nbytes:  # an exact-size message (TopK writes less than its guess)
        exact = _device.empty_like(x, (header_bytes + payload,), np.uint8)
        exact_view = _device.device_array(exact, "message")
        assert exact_view is not None
        be.call("scaleml_cuda_memcpy_async", exact_view.ptr + header_bytes, view.ptr + header_bytes, payload,
                _D2D, x.stream)
        message, view = exact, exact_view
    host = np.empty(header_bytes + (payload if checksum else 0), np.uint8)
    if checksum:  # the CRC of the payload is computed on the host
        _device.to_host(_slice(view, header_bytes, header_bytes + payload), host[header_bytes:])
    written_header = _write_header(host, payload, method, x.dtype, x.shape, params, checksum)
    _device.from_host(host[:written_header], _slice(view, 0, written_header))
    p = tuple(int(v) for v in params) + (0,) * (4 - len(params))
    return DeviceCompressed(message, method, x.dtype, x.shape, p, written_header)  # type: ignore[arg-type]


def decode_kernel(c: DeviceCompressed, out: Any, kernel: Callable[[int], None]) -> Any:
    """Run ``kernel(out_address)`` into ``out`` (a CUDA array of the message's shape and dtype on its device,
    checked) or into a new one; returns it."""
    if out is None:
        out = _device.empty_like(c.view, c.shape, c.dtype)
    view = _device.device_array(out, "out")
    if view is None:
        raise DeviceError("out is in host memory and the message on a CUDA device: decode into a CUDA array "
                          "(or pass message.to_host())")
    if view.dtype != c.dtype or view.shape != c.shape:
        raise ValueError(f"out has shape {view.shape} and dtype {view.dtype}, the message holds {c.shape} {c.dtype}")
    if view.readonly:
        raise ValueError("out is a read-only CUDA array")
    _device.same_device([view, c.view], "decode")
    _cuda.backend().call("scaleml_cuda_set_device", view.device)
    kernel(view.ptr)
    return out


def staged_encode(encode_on_host: Callable[[np.ndarray], Compressed], x: _device.DeviceArray) -> DeviceCompressed:
    """A method or layout without a kernel: the values to the host, the host encoder, the message back."""
    host = encode_on_host(_device.to_host(x))
    return from_device(_device.from_host_new(host.buffer, x))


def payload_count(c: DeviceCompressed, first_bytes: int = 8) -> int:
    """The little-endian integer in the payload's first ``first_bytes`` bytes (TopK's count), read from the
    device."""
    if c.payload_bytes < first_bytes:
        raise CorruptBufferError(f"payload truncated ({c.payload_bytes} bytes)")
    head = _device.to_host(_slice(c.view, c.header_bytes, c.header_bytes + first_bytes))
    return int.from_bytes(head.tobytes(), "little")


DeviceDecoder = Callable[[DeviceCompressed, Any], Any]
_DEVICE_DECODERS: dict[int, DeviceDecoder] = {}


def register_device_decoder(method: int, decoder: DeviceDecoder) -> None:
    """Make device messages of method id ``method`` decode with ``decoder(message, out) -> CUDA array`` (the
    methods without one are decoded on the host and copied back)."""
    _DEVICE_DECODERS[method] = decoder


def decode_on_device(c: Any, out: Any = None) -> Any:
    """Decode a device message into a CUDA array on its device (``out`` when given)."""
    c = from_device(c)
    decoder = _DEVICE_DECODERS.get(c.method, staged_decode)
    return decoder(c, out)


def staged_decode(c: DeviceCompressed, out: Any) -> Any:
    """A method or layout without a decode kernel: the message to the host, the host decoder, the values back."""
    host = decoder_for(c.method)(c.to_host(), None)
    return decode_kernel(c, out, lambda address: _device.from_host(
        host, _device.DeviceArray(None, address, c.shape, c.dtype, c.view.device, c.view.stream, False, "")))


def decode(c: Any, out: Any = None) -> Any:
    """Decode any compressed message (the method is read from its header), on the device it is in.

    A message in host memory (a :class:`~scaleml.compress.Compressed`, bytes) decodes on the host
    (:func:`scaleml.compress.framing.decode`); one in device memory (a :class:`DeviceCompressed`, a uint8 CUDA
    array) decodes into a CUDA array on its device.

    Parameters
    ----------
    c : Compressed, DeviceCompressed or bytes-like
        The message.
    out : array, optional
        Where to write the result: a host array (or CPU tensor) for a host message, a CUDA array on the
        message's device for a device message.

    Returns
    -------
    numpy.ndarray, torch.Tensor or a CUDA array
        The decoded tensor.
    """
    if is_device_message(c):
        return decode_on_device(c, out)
    return framing_decode(c, out)

"""``quantized_gather`` on CUDA arrays: encoded and decoded by the GPU, only the encoded bytes staged.

The registry entry ``quantized_gather`` (``csrc/collectives/quantized_allreduce_gather.c``) is the
reference: each rank encodes its whole input once, in chunks of ``scaleml_gather_chunk(codec)`` values keyed
by ``scaleml_gather_stream(start)``; the messages are allgathered; every rank decodes the P messages in rank
order (rank 0's with a decode, the others with a decode-and-add). Here the same steps run with the CUDA
kernels of ``csrc/cuda`` on the caller's device memory:

1. in the preparation (before the agreement, so a failure is every rank's error): the non-finite check, the
   encode kernels into a device buffer, and one copy of the m encoded bytes to page-locked host memory;
2. after the agreement, chunk by chunk (the host algorithm's chunks): an ``MPI_Iallgather`` per chunk, all
   posted at once into page-locked host memory; as each chunk arrives, its P encodings are copied to the
   device and decoded into the result (rank 0's decoded, the others' added, in rank order), while the later
   chunks are still on the wire.

The encode is whole and comes first: it must be complete before the agreement (a rank whose encode fails
must not have started sending). So the copy back and the decode of each chunk overlap the transfer of the
later ones, not the encode.

So 2 n q bytes per rank cross PCIe (q: encoded bytes per value) instead of the 2 n value bytes of staging the
values, and the result is the host algorithm's, bitwise (the kernels produce the CPU kernels' bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import _cuda, _device
from ._native import lib
from .engine import Call, LocalError
from .errors import ERR_ARG, ERR_MALFORMED, error_for
from .value_format import ValueFormat

__all__ = ["gather_call"]

ALGORITHM = "quantized_gather"
_H2D, _D2H = 0, 1


def _chunks(fmt: ValueFormat, codec: Any, n: int, value_bytes: int) -> list[tuple[int, int, int, int]]:
    """(start, length, byte offset, bytes) of each chunk of the message (the host algorithm's layout)."""
    chunk = int(lib.scaleml_gather_chunk(codec))
    out, at = [], 0
    for start in range(0, n, chunk):
        length = min(chunk, n - start)
        nbytes = int(lib.scaleml_codec_bytes(codec, length, value_bytes))
        out.append((start, length, at, nbytes))
        at += nbytes
    return out


def _encode(be: _cuda.Backend, fmt: ValueFormat, codec: Any, rank: int, x: _device.DeviceArray, start: int,
            length: int, out: int, nbytes: int) -> None:
    vb = x.dtype.itemsize
    src = x.ptr + start * vb
    key = int(lib.scaleml_rng_key(codec.seed, rank, codec.step, lib.scaleml_gather_stream(start)))
    if fmt.kind == lib.SCALEML_CODEC_QSGD:
        be.call("scaleml_cuda_qsgd_encode", src, vb, length, fmt.bits, fmt.bucket, fmt.norm, 0, key, out, nbytes,
                be.new("size_t *"), x.stream)
    elif fmt.kind == lib.SCALEML_CODEC_ONEBIT:
        be.call("scaleml_cuda_onebit_encode", src, vb, length, fmt.bucket, out, nbytes, 0, x.stream)
    else:  # fp16/bf16: beyond the range is +-inf (the host algorithm's overflow_to_inf), not an error
        rc = be.call_rc("scaleml_cuda_cast_encode", src, vb, length, int(fmt.kind == lib.SCALEML_CODEC_BF16), out,
                        x.stream)
        if rc and rc != ERR_ARG:
            raise error_for(rc, be.message())


def _decode(be: _cuda.Backend, fmt: ValueFormat, add: bool, buf: int, nbytes: int, length: int, out: int,
            value_bytes: int, stream: int) -> None:
    op = "decode_add" if add else "decode"
    if fmt.kind == lib.SCALEML_CODEC_QSGD:
        args: tuple = ("scaleml_cuda_qsgd_" + op, buf, nbytes, length, fmt.bits, fmt.bucket,
                       *(() if add else (0,)), out, value_bytes, stream)
        be.call(*args)
    elif fmt.kind == lib.SCALEML_CODEC_ONEBIT:
        be.call("scaleml_cuda_onebit_" + op, buf, nbytes, length, fmt.bucket, out, value_bytes, stream)
    else:  # +-inf in a cast payload are sums beyond the range (overflow_to_inf), not damage
        rc = be.call_rc("scaleml_cuda_cast_" + op, buf, length, int(fmt.kind == lib.SCALEML_CODEC_BF16), out,
                        value_bytes, stream)
        if rc and rc != ERR_MALFORMED:
            raise error_for(rc, be.message())


def gather_call(private: MPI.Intracomm, x: _device.DeviceArray, result: _device.DeviceArray, fmt: ValueFormat,
                check_finite: bool, requested: str) -> Call:
    """The engine's call of ``quantized_gather`` on device memory: encoded here, the rest after the agreement.

    ``result`` is the caller's output (a CUDA array like ``x``, allocated before the agreement); the step of
    the format's counter is taken only when the collective runs, as on the host.
    """
    be = _cuda.backend()
    be.call("scaleml_cuda_set_device", x.device)
    n, vb, P, rank = x.size, x.dtype.itemsize, private.Get_size(), private.Get_rank()
    if check_finite and n:
        bad = be.new("uint64_t *")
        be.call("scaleml_cuda_count_nonfinite", x.ptr, n, vb, bad, x.stream)
        if bad[0]:
            raise LocalError(4, ValueError("x contains NaN or Inf (pass check_finite=False to allow)"))
    codec = fmt.codec(fmt.compressor.step)
    chunks = _chunks(fmt, codec, n, vb)
    m = sum(c[3] for c in chunks)
    mine = _device.pinned("gather/send", m)  # page-locked: the copies run at the link's speed
    gathered = _device.pinned("gather/receive", P * m)
    messages = _device.device_array(_device.empty_like(x, (max(P * m, 1),), np.uint8), "messages")
    assert messages is not None
    if P > 1:
        for start, length, at, nbytes in chunks:
            _encode(be, fmt, codec, rank, x, start, length, messages.ptr + at, nbytes)
        if m:
            be.call("scaleml_cuda_memcpy_async", mine.ctypes.data, messages.ptr, m, _D2H, x.stream)
            be.call("scaleml_cuda_stream_synchronize", x.stream)

    def run(comm: MPI.Intracomm) -> int:
        fmt.next_codec()  # the step the host algorithm takes (run_algorithm)
        if P == 1:  # the input is the result, as on the host
            be.call("scaleml_cuda_memcpy_async", result.ptr, x.ptr, x.nbytes, 2, x.stream)
            be.call("scaleml_cuda_stream_synchronize", x.stream)
            return 0
        # Chunk by chunk: every chunk's allgather is posted at once (chunk-major: chunk c's P messages lie
        # side by side at P * at_c), then each chunk is copied to the device and decoded as soon as it has
        # arrived, while the later chunks are still on the wire.
        requests = [comm.Iallgather([mine[at:at + nbytes], MPI.BYTE], [gathered[P * at:P * (at + nbytes)], MPI.BYTE])
                    for _, _, at, nbytes in chunks]
        be.call("scaleml_cuda_set_device", x.device)
        for request, (start, length, at, nbytes) in zip(requests, chunks):
            request.Wait()
            be.call("scaleml_cuda_memcpy_async", messages.ptr + P * at, gathered[P * at:].ctypes.data, P * nbytes,
                    _H2D, x.stream)
            for j in range(P):  # rank order: rank 0's message decoded, the others' added
                _decode(be, fmt, j > 0, messages.ptr + P * at + j * nbytes, nbytes, length, result.ptr + start * vb,
                        vb, x.stream)
        be.call("scaleml_cuda_stream_synchronize", x.stream)
        return (P - 1) * m

    placeholder = np.broadcast_to(np.zeros((), x.dtype), (n,))  # n values of x's dtype, no memory: the agreement's
    return Call(n, placeholder, requested=requested, fmt=fmt, lossy_only=True, device=1,
                fixed=(ALGORITHM, "CUDA arrays: encoded on the device, only encoded bytes staged"),
                class_key=(fmt.fingerprint, "device"), device_run=run)

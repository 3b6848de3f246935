"""Decoders against forged headers, and the optional payload checksum.

A forged header is signed the way the framing signs one (zlib's CRC-32 of
header and shape with the CRC field zeroed, computed here with ``struct`` and
``zlib``, independently of the C code), so it passes the header checks and
reaches the method's decoder. Announcing 2^31 or 2^40 elements over a few
payload bytes must then raise :class:`CorruptBufferError` quickly and without
allocating (``tracemalloc`` sees numpy's allocations), through
``scaleml.compress.decode`` and through each compressor's own ``decode``. For
the formats in which zeros cost nothing (QSGD Elias, TopK, adaptive) the few
bytes are a *valid* all-zero payload (the same bytes decode at a small size),
so what rejects them is the allocation bound, not a parse error.

A longer randomized run of the same checks: ``python tests/fuzz_decoders.py
--iterations N`` (docs/reliability.md).
"""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from scaleml import compress as C
from scaleml._native import ffi, lib
from scaleml.compress import base

LAYOUT = struct.Struct("<4sBBBBQQIIIIII")  # the documented 48-byte header
FLOAT32, FLOAT64 = 1, 2
TIME_LIMIT = 0.05  # seconds: generous (the checks take microseconds); a giant allocation and fill take seconds
ALLOC_LIMIT = 1 << 20  # bytes traced while decoding a forged message (the message itself is a few hundred)


def sign(message: bytearray, header_bytes: int) -> bytes:
    """Store the CRC of message[:header_bytes] the documented way (zlib, field zeroed)."""
    head = bytearray(message[:header_bytes])
    head[40:44] = b"\0\0\0\0"
    message[40:44] = struct.pack("<I", zlib.crc32(bytes(head)))
    return bytes(message)


def forge(method: int, shape: tuple[int, ...], params: tuple[int, int, int, int], payload: bytes,
          dtype_code: int = FLOAT32, version: int = 1, payload_crc: int = 0) -> bytes:
    """A message with any header fields, correctly signed."""
    count = 1
    for d in shape:
        count *= d
    head = bytearray(LAYOUT.pack(b"SMLC", version, method, dtype_code, len(shape), count, len(payload), *params,
                                 0, payload_crc))
    head += struct.pack(f"<{len(shape)}Q", *shape)
    return sign(head + payload, len(head))


def compressor_for(method: int) -> C.Compressor:
    return {C.QSGD_ID: C.QSGD(), C.ONEBIT_ID: C.OneBit(), C.TOPK_ID: C.TopK(k=1),
            C.ADAPTIVE_ID: C.AdaptiveQuant(), C.ZIPML_ID: C.ZipML.uniform(-1, 1, 4), C.CAST_ID: C.Cast()}[method]


# name -> (method, params, payload): a few payload bytes with the parameters most favourable to a forger.
# The first three are valid all-zero payloads (see test_the_forged_sparse_payloads_are_valid_at_small_sizes).
FORGED = {
    "qsgd-elias-zero-bucket": (C.QSGD_ID, (1, 1 << 31, 0, 1), bytes(5)),  # norm 0.0, omega(1) = '0': 33 bits
    "topk-k0": (C.TOPK_ID, (0, 0, 0, 0), bytes(8)),  # count 0
    "adaptive-nothing-sent": (C.ADAPTIVE_ID, (0x42000000, 0, 0, 0), bytes(24)),  # offsets 0, 0; values 0, 0
    "qsgd-elias-garbage": (C.QSGD_ID, (8, 1 << 31, 1, 1), b"\x01\x02\x03"),
    "qsgd-fixed": (C.QSGD_ID, (1, 1 << 31, 0, 0), bytes(9)),
    "qsgd-fixed-bucket8": (C.QSGD_ID, (4, 8, 0, 0), bytes(5)),
    "onebit": (C.ONEBIT_ID, (1 << 31, 0, 0, 0), bytes(16)),
    "topk-count-beyond-payload": (C.TOPK_ID, (0, 0, 0, 0), (1 << 31).to_bytes(8, "little") + bytes(8)),
    "topk-truncated": (C.TOPK_ID, (0, 0, 0, 0), bytes(4)),
    "adaptive-truncated": (C.ADAPTIVE_ID, (0x42000000, 0, 0, 0), bytes(5)),
    "adaptive-words-beyond-payload": (C.ADAPTIVE_ID, (0x42000000, 0, 0, 0),
                                      bytes(8) + (1 << 30).to_bytes(8, "little") + bytes(8)),
    "zipml": (C.ZIPML_ID, (2, 0, 0, 0), np.array([-1.0, 1.0]).tobytes()),
    "cast-fp16": (C.CAST_ID, (0, 0, 0, 0), bytes(6)),
    "cast-bf16-empty": (C.CAST_ID, (1, 0, 0, 0), b""),
}
GIANT_SHAPES = {"2^31": (1 << 31,), "2^40": (1 << 40,), "2^20x2^20": (1 << 20, 1 << 20), "2^31x1": (1 << 31, 1),
                "2^47-ish": (1 << 23, 1 << 24)}


def assert_rejected_fast_without_allocating(decode, message: bytes) -> str:
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(C.CorruptBufferError) as info:
            decode(message)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < TIME_LIMIT, f"{elapsed * 1e3:.1f} ms"
    assert peak < ALLOC_LIMIT, f"{peak} bytes allocated"
    return str(info.value)


@pytest.mark.parametrize("shape_name", list(GIANT_SHAPES))
@pytest.mark.parametrize("name", list(FORGED))
@pytest.mark.parametrize("dtype_code", [FLOAT32, FLOAT64])
def test_forged_giant_shapes_fail_fast_without_allocating(name, shape_name, dtype_code):
    method, params, payload = FORGED[name]
    message = forge(method, GIANT_SHAPES[shape_name], params, payload, dtype_code)
    assert C.Compressed.from_bytes(message).size >= 1 << 31  # the header itself is valid: the decoder must refuse
    assert_rejected_fast_without_allocating(C.decode, message)
    assert_rejected_fast_without_allocating(compressor_for(method).decode, message)
    # a Compressed object (not bytes) goes to the same checks
    assert_rejected_fast_without_allocating(C.decode, C.Compressed.from_bytes(message))


@pytest.mark.parametrize("name", ["qsgd-elias-zero-bucket", "topk-k0", "adaptive-nothing-sent"])
def test_the_forged_sparse_payloads_are_valid_at_small_sizes(name):
    # The same few bytes decode to zeros at a small size: at 2^31 only the allocation bound rejects them.
    method, params, payload = FORGED[name]
    for shape in [(1000,), (7, 1)] if method != C.QSGD_ID else [(1000,), (1 << 20,)]:
        got = C.decode(forge(method, shape, params, payload))
        assert got.shape == shape and got.dtype == np.float32 and not got.any()
    message = forge(method, (1 << 31,), params, payload)
    assert "more than a decoder allocates" in assert_rejected_fast_without_allocating(C.decode, message)


def test_the_allocation_bound_and_out(monkeypatch):
    monkeypatch.setattr(base, "ALLOCATION_FLOOR", 1000)
    monkeypatch.setattr(base, "MAX_ELEMENTS_PER_PAYLOAD_BYTE", 16)
    zeros = np.zeros(5000, np.float32)
    messages = [C.TopK(k=0).encode(zeros), C.QSGD(bits=1, bucket=4096, format="elias").encode(zeros),
                C.AdaptiveQuant(pi=4).encode(zeros)]
    for c in messages:
        assert c.size > 16 * c.payload.size  # beyond the patched bound
        with pytest.raises(C.CorruptBufferError, match="decode into an out= array"):
            C.decode(c)
        with pytest.raises(C.CorruptBufferError, match="more than a decoder allocates"):
            C.decode(c.to_bytes())
        out = np.full(5000, 7, np.float32)
        assert C.decode(c, out=out) is out and not out.any()  # the caller's memory: no bound
    # a compressor's own messages (error feedback decodes what it encoded) are not bounded
    ef = C.ErrorFeedback(C.QSGD(bits=1, bucket=4096, format="elias"))
    c = ef.compress("w", zeros)
    assert c.size > 16 * c.payload.size and not ef.residual("w").any()
    # within the bound, and every fixed-width message at any size (at least one bit per element)
    small = np.zeros(900, np.float32)
    assert not C.decode(C.TopK(k=0).encode(small)).any()
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    for comp in [C.QSGD(bits=1, bucket=4096), C.OneBit(bucket=4096), C.Cast(), C.ZipML.uniform(-4, 4, 2)]:
        c = comp.encode(x)
        assert c.size <= 16 * c.payload.size
        assert C.decode(c).shape == x.shape


def test_topk_and_adaptive_counts_are_checked_before_allocating():
    n = 1 << 32
    cases = [
        (C.TOPK_ID, (n,), (n + 1).to_bytes(8, "little"), "count 4294967297 does not match"),  # count > n
        (C.TOPK_ID, (n,), (1).to_bytes(8, "little") + bytes(8), "count 1 does not match"),  # 4 bytes short
        (C.TOPK_ID, (n + 1,), bytes(8), "at most 2\\*\\*32"),
        (C.ADAPTIVE_ID, (n, 1), bytes(8) + (2).to_bytes(8, "little") + bytes(8), "word count 2 does not match 24"),
        (C.ADAPTIVE_ID, (2, 3), bytes(8 * 3) + (7).to_bytes(8, "little") + bytes(32), "word count 7 does not"),
    ]
    for method, shape, payload, reason in cases:
        message = forge(method, shape, (0, 0, 0, 0), payload)
        text = assert_rejected_fast_without_allocating(C.decode, message)
        assert reason.replace("\\", "") in text, (shape, text)
    # the C layout check refuses n > 2^32 too (TopK.entries reads the payload without decoding it)
    with pytest.raises(C.CorruptBufferError, match="2\\^32"):
        C.TopK.entries(forge(C.TOPK_ID, (n + 1,), (0, 0, 0, 0), bytes(8)))


# ----------------------------------------------------------------------------- the payload checksum


def all_compressors() -> dict[str, C.Compressor]:
    return {
        "qsgd": C.QSGD(bits=3, bucket=16, seed=7, rank=1),
        "qsgd_elias": C.QSGD(bits=2, bucket=16, format="elias", seed=7, rank=1),
        "onebit": C.OneBit(bucket=8, rank=0),
        "topk": C.TopK(k=9, seed=3, rank=0),
        "adaptive": C.AdaptiveQuant(pi=4.0, seed=5, rank=0),
        "zipml": C.ZipML.uniform(-3, 3, 5, seed=2, rank=0),
        "cast": C.Cast("bf16", rank=0),
    }


def sample(dtype=np.float32) -> np.ndarray:
    return (np.sin(np.arange(60, dtype=np.float64).reshape(6, 10) * 0.37 - 7.1) * 3).astype(dtype)


@pytest.mark.parametrize("name", list(all_compressors()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_checksum_is_off_by_default_and_stored_in_bytes_44_to_48(name, dtype):
    comp = all_compressors()[name]
    x = sample(dtype)
    plain = comp.encode(x, step=4)
    assert plain.to_bytes() == comp.encode(x, step=4, checksum=False).to_bytes()
    assert not plain.checksum and plain.buffer[4] == 1 and plain.buffer[44:48].tobytes() == bytes(4)
    summed = comp.encode(x, step=4, checksum=True)
    h = summed.header_bytes
    raw = summed.to_bytes()
    assert summed.checksum and raw[4] == 2
    # only the version, the checksum field and the header CRC differ; the payload is the same bytes
    assert raw[h:] == plain.to_bytes()[h:]
    assert [i for i in range(h) if raw[i] != plain.to_bytes()[i]] == \
        [4] + [i for i in range(40, 48) if raw[i] != plain.to_bytes()[i]]
    assert struct.unpack_from("<I", raw, 44)[0] == zlib.crc32(raw[h:])
    assert sign(bytearray(raw), h) == raw  # the header CRC covers the checksum field
    assert plain.with_checksum().to_bytes() == raw
    assert summed.with_checksum() is summed
    for message in (summed, raw, bytearray(raw), np.frombuffer(raw, np.uint8)):
        np.testing.assert_array_equal(C.decode(message), comp.decode(plain))
        np.testing.assert_array_equal(comp.decode(message), comp.decode(plain))
    parsed = C.Compressed.from_bytes(raw)
    assert parsed.checksum and (parsed.method, parsed.shape, parsed.params) == (plain.method, plain.shape,
                                                                                 plain.params)


@pytest.mark.parametrize("name", list(all_compressors()))
def test_every_payload_byte_flip_fails_the_checksum(name):
    comp = all_compressors()[name]
    c = comp.encode(sample(), step=1, checksum=True)
    raw = c.to_bytes()
    h = c.header_bytes
    rng = np.random.default_rng(3)
    for i in range(h, len(raw)):
        b = bytearray(raw)
        b[i] ^= int(rng.integers(1, 256))
        with pytest.raises(C.CorruptBufferError, match="payload fails its checksum"):
            C.decode(bytes(b))
    # without the checksum, some of the same flips decode silently to other values (what the option is for)
    if name in ("cast", "zipml", "onebit", "qsgd"):
        plain = comp.encode(sample(), step=1)
        b = bytearray(plain.to_bytes())
        b[-1] ^= 0x01
        assert not np.array_equal(C.decode(bytes(b)), C.decode(plain))


def test_a_changed_compressed_object_fails_on_decode():
    c = C.Cast("fp16").encode(np.arange(10, dtype=np.float32), checksum=True)
    assert C.decode(c)[3] == 3
    c.payload[6] ^= 0x40  # value 3 changes in place, after the message was made
    with pytest.raises(C.CorruptBufferError, match="checksum"):
        C.decode(c)
    with pytest.raises(C.CorruptBufferError, match="checksum"):
        C.Cast().decode(c)
    with pytest.raises(C.CorruptBufferError, match="checksum"):
        c.verify()
    t = C.TopK(k=3).encode(np.arange(10, dtype=np.float32), checksum=True)
    assert list(C.TopK.entries(t)[0]) == [7, 8, 9]
    t.payload[8] = 1  # index 7 -> 1
    with pytest.raises(C.CorruptBufferError, match="checksum"):
        C.TopK.entries(t)
    # without a checksum a changed object decodes to what it now holds (no CRC pass on that path)
    p = C.Cast("fp16").encode(np.arange(10, dtype=np.float32))
    p.payload[6] ^= 0x40
    assert C.decode(p)[3] != 3


def test_checksum_survives_send_as_bytes_and_empty_payloads():
    for x in (np.zeros((2, 0, 3), np.float64), np.float32(2.0), np.zeros(0, np.float32)):
        c = C.Cast("fp16").encode(x, checksum=True)
        assert c.checksum and struct.unpack_from("<I", c.to_bytes(), 44)[0] == zlib.crc32(c.to_bytes()[c.header_bytes:])
        np.testing.assert_array_equal(C.decode(c.to_bytes()), np.asarray(x).astype(np.float32))


def test_c_write_header_checksum_arguments():
    h = ffi.new("scaleml_compressed_header *")
    h.method, h.dtype_code, h.ndim, h.count, h.payload_bytes = C.CAST_ID, FLOAT32, 1, 4, 8
    h.shape[0] = 4
    buf = bytearray(56 + 8)
    written = ffi.new("size_t *")
    h.flags = 2
    assert lib.scaleml_compressed_write_header(ffi.from_buffer(buf), len(buf), h, written) == 4
    h.flags = lib.SCALEML_COMPRESSED_PAYLOAD_CRC
    assert lib.scaleml_compressed_write_header(ffi.from_buffer(buf), len(buf) - 1, h, written) == 4  # no payload
    buf[56:] = b"payload!"
    assert lib.scaleml_compressed_write_header(ffi.from_buffer(buf), len(buf), h, written) == 0
    parsed = ffi.new("scaleml_compressed_header *")
    assert lib.scaleml_compressed_parse(ffi.from_buffer(buf), len(buf), parsed) == 0
    assert parsed.flags == 1 and parsed.payload_crc == zlib.crc32(b"payload!") and buf[4] == 2
    h.flags = 0
    assert lib.scaleml_compressed_write_header(ffi.from_buffer(buf), 56, h, written) == 0  # payload not needed
    assert buf[4] == 1 and buf[44:48] == bytes(4)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 63, 64, 65, 1000, 4099])
def test_crc32_is_zlibs(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    ptr = ffi.from_buffer(data) if n else ffi.NULL
    assert lib.scaleml_crc32(0, ptr, n) == zlib.crc32(data)
    if n > 5:  # continued
        first = lib.scaleml_crc32(0, ptr, 5)
        assert lib.scaleml_crc32(first, ffi.cast("uint8_t *", ptr) + 5, n - 5) == zlib.crc32(data)

"""The C framing of compressed messages (csrc/compress/framing.c) through cffi.

Every method's messages are parsed by ``scaleml_compressed_parse`` and compared
field by field with an independent reading of the documented layout
(``struct`` + ``zlib.crc32``); each header field is corrupted (and re-signed,
so the check behind the CRC is reached) and truncations are tried, and each
must be rejected with ``SCALEML_ERR_MALFORMED`` and its own message.
``scaleml_compressed_write_header`` is checked to re-encode a parsed header
byte for byte, and golden bytes recorded before the framing moved to C pin
the wire format.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest

from scaleml import compress as C
from scaleml import errors
from scaleml._native import ffi, lib
from scaleml.compress import framing

LAYOUT = struct.Struct("<4sBBBBQQIIIIII")  # the documented 48-byte header
OK, MALFORMED, ARG, TOO_LARGE = 0, 3, 4, 5


def golden_input() -> np.ndarray:
    return np.sin(np.arange(60, dtype=np.float64).reshape(6, 10) * 0.37 - 7.1) * 3


def golden_compressors() -> dict[str, C.Compressor]:
    return {
        "qsgd": C.QSGD(bits=3, bucket=16, seed=7, rank=1),
        "qsgd_elias": C.QSGD(bits=2, bucket=16, format="elias", norm="max", seed=7, rank=1),
        "onebit": C.OneBit(bucket=8, rank=0),
        "topk": C.TopK(k=9, seed=3, rank=0),
        "adaptive": C.AdaptiveQuant(pi=4.0, seed=5, rank=0),
        "zipml": C.ZipML.uniform(-3, 3, 5, seed=2, rank=0),
        "cast": C.Cast("bf16", rank=0),
    }


# Recorded with the Python framing (scaleml/compress.py before this change), step 4.
GOLDEN_HEADERS = {
    ("qsgd", "float32"): (
        "534d4c43010101023c000000000000002e000000000000000300000010000000"
        "0000000000000000de311b3a0000000006000000000000000a00000000000000"),
    ("qsgd", "float64"): (
        "534d4c43010102023c000000000000002e000000000000000300000010000000"
        "00000000000000006b2152e50000000006000000000000000a00000000000000"),
    ("qsgd_elias", "float32"): (
        "534d4c43010101023c0000000000000034000000000000000200000010000000"
        "0100000001000000752351450000000006000000000000000a00000000000000"),
    ("qsgd_elias", "float64"): (
        "534d4c43010102023c0000000000000034000000000000000200000010000000"
        "0100000001000000c033189a0000000006000000000000000a00000000000000"),
    ("onebit", "float32"): (
        "534d4c43010201023c0000000000000058000000000000000600000001000000"
        "0000000000000000db7218dd0000000006000000000000000a00000000000000"),
    ("onebit", "float64"): (
        "534d4c43010202023c0000000000000058000000000000000600000001000000"
        "00000000000000006e6251020000000006000000000000000a00000000000000"),
    ("topk", "float32"): (
        "534d4c43010301023c0000000000000054000000000000000000000000000000"
        "00000000000000007e1164b40000000006000000000000000a00000000000000"),
    ("topk", "float64"): (
        "534d4c43010302023c0000000000000078000000000000000000000000000000"
        "00000000000000009e50ed700000000006000000000000000a00000000000000"),
    ("adaptive", "float32"): (
        "534d4c43010401023c00000000000000c8000000000000000000804000000000"
        "0000000000000000f3e670fb0000000006000000000000000a00000000000000"),
    ("adaptive", "float64"): (
        "534d4c43010402023c00000000000000c8000000000000000000804000000000"
        "000000000000000046f639240000000006000000000000000a00000000000000"),
    ("zipml", "float32"): (
        "534d4c43010501023c000000000000003f000000000000000500000000000000"
        "0000000000000000890e2fa00000000006000000000000000a00000000000000"),
    ("zipml", "float64"): (
        "534d4c43010502023c000000000000003f000000000000000500000000000000"
        "00000000000000003c1e667f0000000006000000000000000a00000000000000"),
    ("cast", "float32"): (
        "534d4c43010601023c0000000000000078000000000000000100000000000000"
        "000000000000000018c6ed170000000006000000000000000a00000000000000"),
    ("cast", "float64"): (
        "534d4c43010602023c0000000000000078000000000000000100000000000000"
        "0000000000000000add6a4c80000000006000000000000000a00000000000000"),
}
GOLDEN_SHA256 = {
    ("qsgd", "float32"): "69733f9d936a695a93f3ae1d603bfa88e0430434fa77e85b85a8e0bd595fd130",
    ("qsgd", "float64"): "f2a1b5246ac762bc20b305bb35562d098658408a926ed1e686cdbc9e00d3dc6f",
    ("qsgd_elias", "float32"): "b363badeaec613bbf6e5e6b2d15326667c1f15586b0167028070bb0591cd461a",
    ("qsgd_elias", "float64"): "cf44b31fed323b03bf0bb99586856153c99f48f856e995f7f6344cbf87efdef6",
    ("onebit", "float32"): "40eff802e29430df40457013d63a72420040e3210d77a99ebe8186b4673db276",
    ("onebit", "float64"): "372abf5a479de53fa284e7e2193f1093df44d50d01ae744cd1e0e7e491e3d3e5",
    ("topk", "float32"): "95d3b97b1cb6a4c4d4bf271ee57a43aed18447081ae7a184cdcf10eed041e741",
    ("topk", "float64"): "c9a758c8a68fad2f1338081b2d946e69b1029f95c36a9ce01c8b36f5fd883a12",
    ("adaptive", "float32"): "cb367351a1f4a0951106c0b30b41c85a90bb9a4cfcc912c0d07aef1e8f6ebcf3",
    ("adaptive", "float64"): "42b14e80b7440a79a65382269c2d30200aa257fdf75247093633b4838e84127f",
    ("zipml", "float32"): "985fb10d0c5bcb4004f9041075c616932c99109c76ecc9f31b25758f6bb53f48",
    ("zipml", "float64"): "b0c53590d5ee78f8f0c68d9273690ebe847201aed05bef37a4c12dc83a9c193c",
    ("cast", "float32"): "413676dfa604de53fc486b19090a1268dfbba64091dde23b4a81ead3a27c7f8f",
    ("cast", "float64"): "f6bda3b6b5cab344c59006ae8f7145f06535f04de549008d3e3ce987342c636b",
}
# Cast("fp16").encode([1.0, -2.5] float32)
GOLDEN_FP16 = ("534d4c43010601010200000000000000040000000000000000000000000000000000000000000000fd1207a400000000"
               "0200000000000000003c00c1")
# Cast("fp16"), zeros((2, 0, 3)) float64
GOLDEN_EMPTY = ("534d4c43010602030000000000000000000000000000000000000000000000000000000000000000f396b10100000000"
                "020000000000000000000000000000000300000000000000")
# Cast("fp16"), float32 scalar 2.0
GOLDEN_SCALAR = ("534d4c430106010101000000000000000200000000000000000000000000000000000000000000006a41233900000000"
                 "01000000000000000040")


def parse(message: bytes) -> tuple[int, object]:
    """rc and header struct of ``scaleml_compressed_parse`` over ``message``."""
    header = ffi.new("scaleml_compressed_header *")
    buf = ffi.from_buffer(message) if message else ffi.NULL
    return lib.scaleml_compressed_parse(ffi.cast("uint8_t *", buf), len(message), header), header


def error_text() -> str:
    return ffi.string(lib.scaleml_error_message()).decode()


def sign(message: bytearray, header_bytes: int) -> bytearray:
    """Store the CRC of message[:header_bytes], computed the documented way (zlib, field zeroed)."""
    head = bytearray(message[:header_bytes])
    head[40:44] = b"\0\0\0\0"
    message[40:44] = struct.pack("<I", zlib.crc32(bytes(head)))
    return message


def reference_fields(message: bytes) -> dict:
    """The header read with struct, independently of the C code."""
    magic, version, method, dcode, ndim, count, payload, p0, p1, p2, p3, crc, reserved = LAYOUT.unpack_from(message)
    shape = struct.unpack_from(f"<{ndim}Q", message, 48)
    return dict(magic=magic, version=version, method=method, dtype_code=dcode, ndim=ndim, count=count,
                payload_bytes=payload, params=(p0, p1, p2, p3), crc=crc, reserved=reserved, shape=shape,
                header_bytes=48 + 8 * ndim)


def all_messages() -> list[tuple[str, bytes]]:
    """Messages of every method, both dtypes, several shapes (0-d, empty, 1-d, 2-d, 8-d)."""
    rng = np.random.default_rng(5)
    out = []
    for name, comp in golden_compressors().items():
        shapes = [(6, 10), (0, 3), (7,), (1,)] if name == "adaptive" else [(6, 10), (2, 0, 3), (7,), (),
                                                                             (1, 2, 1, 2, 1, 2, 1, 3)]
        for shape in shapes:
            for dtype in (np.float32, np.float64):
                x = rng.standard_normal(shape).astype(dtype)
                if name == "topk":
                    comp = C.TopK(k=min(3, x.size), seed=1, rank=0)
                out.append((f"{name}-{shape}-{np.dtype(dtype).name}", comp.encode(x, step=1).to_bytes()))
    return out


MESSAGES = all_messages()


# ----------------------------------------------------------------------------- wire format unchanged


@pytest.mark.parametrize("key", list(GOLDEN_HEADERS), ids=lambda k: "-".join(k))
def test_headers_are_the_recorded_bytes(key):
    name, dtype = key
    c = golden_compressors()[name].encode(golden_input().astype(dtype), step=4)
    assert c.buffer[:c.header_bytes].tobytes().hex() == GOLDEN_HEADERS[key]
    assert hashlib.sha256(c.to_bytes()).hexdigest() == GOLDEN_SHA256[key]


def test_small_messages_are_the_recorded_bytes():
    cast = C.Cast("fp16", rank=0)
    assert cast.encode(np.array([1.0, -2.5], np.float32), step=0).to_bytes().hex() == GOLDEN_FP16
    assert cast.encode(np.zeros((2, 0, 3), np.float64)).to_bytes().hex() == GOLDEN_EMPTY
    assert cast.encode(np.float32(2.0)).to_bytes().hex() == GOLDEN_SCALAR
    for golden in (GOLDEN_FP16, GOLDEN_EMPTY, GOLDEN_SCALAR):
        assert C.Compressed.from_bytes(bytes.fromhex(golden)).to_bytes().hex() == golden


# ----------------------------------------------------------------------------- parse


@pytest.mark.parametrize("name,message", MESSAGES, ids=[m[0] for m in MESSAGES])
def test_c_parse_agrees_with_the_documented_layout(name, message):
    rc, h = parse(message)
    assert rc == OK, error_text()
    ref = reference_fields(message)
    assert ref["magic"] == b"SMLC" and ref["version"] == 1 and ref["reserved"] == 0
    assert (h.method, h.dtype_code, h.ndim, h.count, h.payload_bytes, h.crc, h.header_bytes) == (
        ref["method"], ref["dtype_code"], ref["ndim"], ref["count"], ref["payload_bytes"], ref["crc"],
        ref["header_bytes"])
    assert tuple(h.params) == ref["params"]
    assert tuple(h.shape[0:h.ndim]) == ref["shape"]
    assert h.payload_bytes == len(message) - h.header_bytes
    # the CRC is zlib's CRC-32 of header and shape with the field zeroed
    assert bytes(sign(bytearray(message), h.header_bytes)) == message
    assert C._header_crc(np.frombuffer(message[:h.header_bytes], np.uint8)) == h.crc
    # Compressed.from_bytes is a view of the same fields
    c = C.Compressed.from_bytes(message)
    assert (c.method, c.dtype, c.shape, c.params, c.header_bytes) == (
        h.method, framing.DTYPES[h.dtype_code], ref["shape"], ref["params"], h.header_bytes)


@pytest.mark.parametrize("name,message", MESSAGES[::3], ids=[m[0] for m in MESSAGES[::3]])
def test_c_write_reencodes_a_parsed_header_byte_for_byte(name, message):
    rc, h = parse(message)
    assert rc == OK
    out = bytearray(len(message))
    written = ffi.new("size_t *")
    assert lib.scaleml_compressed_write_header(ffi.from_buffer(out), len(out), h, written) == OK
    assert written[0] == h.header_bytes
    assert bytes(out[:h.header_bytes]) == message[:h.header_bytes]
    # forward with a different payload: a new size gives a new, valid CRC
    h.payload_bytes += 8
    assert lib.scaleml_compressed_write_header(ffi.from_buffer(out), len(out), h, written) == OK
    longer = bytes(out[:h.header_bytes]) + message[h.header_bytes:] + bytes(8)
    assert parse(longer)[0] == OK
    assert bytes(sign(bytearray(longer), h.header_bytes)) == longer
    assert parse(message[:h.header_bytes] + message[h.header_bytes:] + bytes(8))[0] == MALFORMED


def base_message() -> tuple[bytes, int]:
    c = C.QSGD(bits=4, bucket=8, seed=1, rank=0).encode(np.linspace(-1, 1, 24).reshape(4, 6), step=0)
    return c.to_bytes(), c.header_bytes


def edited(field_offset: int, fmt: str, value: int, resign: bool = True) -> bytes:
    message, header_bytes = base_message()
    b = bytearray(message)
    struct.pack_into(fmt, b, field_offset, value)
    return bytes(sign(b, header_bytes) if resign else b)


REJECTIONS = {
    "empty": (b"", "truncated"),
    "magic": (b"SMLD" + base_message()[0][4:], "bad magic"),
    "version": (edited(4, "<B", 3), "version 3"),
    "version-0": (edited(4, "<B", 0), "version 0"),
    # version 2 says bytes 44-47 hold the payload's CRC-32: 0 is not the CRC of this payload
    "version-2-crc": (edited(4, "<B", 2), "payload fails its checksum"),
    "reserved-resigned": (edited(44, "<I", 1), "reserved header field is 1, not 0"),
    "method-0": (edited(5, "<B", 0), "unknown compression method 0"),
    "method-7": (edited(5, "<B", 7), "unknown compression method 7"),
    "method-255": (edited(5, "<B", 255), "unknown compression method 255"),
    "dtype-0": (edited(6, "<B", 0), "unknown dtype code 0"),
    "dtype-3": (edited(6, "<B", 3), "unknown dtype code 3"),
    "ndim-9": (edited(7, "<B", 9), "bad ndim 9"),
    "ndim-3": (edited(7, "<B", 3), "checksum"),  # the CRC then covers 8 more bytes
    "ndim-8": (edited(7, "<B", 8, resign=False), "truncated inside its shape"),  # 112 > the 91 bytes
    "crc": (edited(40, "<I", 12345, resign=False), "checksum"),
    "count": (edited(8, "<Q", 25), "shape (4, 6) does not match element count 25"),
    "payload-size": (edited(16, "<Q", 1), "payload size 1 does not match"),
    "trailing-byte": (base_message()[0] + b"\0", "payload size"),
    "missing-byte": (base_message()[0][:-1], "payload size"),
    "shape": (edited(48, "<Q", 5), "shape (5, 6) does not match element count 24"),
    "reserved": (edited(44, "<I", 1, resign=False), "checksum"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_each_corrupted_field_is_rejected_with_its_reason(case):
    message, reason = REJECTIONS[case]
    rc, _ = parse(message)
    assert rc == MALFORMED
    assert reason in error_text()
    with pytest.raises(C.CorruptBufferError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        C.Compressed.from_bytes(message)
    with pytest.raises(C.CorruptBufferError):
        C.decode(message)


def test_every_truncation_and_every_header_bit_flip_is_rejected():
    message, header_bytes = base_message()
    for length in range(len(message)):
        assert parse(message[:length])[0] == MALFORMED, length
        expected = "truncated" if length < header_bytes else "payload size"
        assert expected in error_text(), (length, error_text())
    for bit in range(8 * header_bytes):
        b = bytearray(message)
        b[bit // 8] ^= 1 << (bit % 8)
        assert parse(bytes(b))[0] == MALFORMED, bit


def forged(shape: tuple[int, ...], count: int, payload: bytes = b"") -> bytes:
    """A Cast float32 message with any shape and count, correctly signed."""
    head = bytearray(LAYOUT.pack(b"SMLC", 1, 6, 1, len(shape), count, len(payload), 0, 0, 0, 0, 0, 0))
    head += struct.pack(f"<{len(shape)}Q", *shape)
    return bytes(sign(head + payload, len(head)))


def test_counts_beyond_2_48_and_overflowing_shapes_are_rejected():
    assert parse(forged((1 << 24, 1 << 24 - 1), 1 << 47))[0] == OK
    assert parse(forged((1 << 24, 1 << 24), 1 << 48))[0] == MALFORMED
    assert "2^48" in error_text()
    # products that wrap around 2^64 must not match a small count
    assert parse(forged((1 << 63, 2), 0))[0] == MALFORMED
    assert parse(forged((1 << 32, 1 << 32, 3), 0))[0] == MALFORMED
    assert parse(forged(((1 << 64) - 1, (1 << 64) - 1), 1))[0] == MALFORMED
    # a zero dimension makes the count 0, whatever the others are (as the Python framing had it)
    assert parse(forged((1 << 63, 0, 5), 0))[0] == OK


# ----------------------------------------------------------------------------- write


def header(method=1, dtype_code=1, shape=(4, 6), count=None, payload=10, params=(4, 8, 0, 0)):
    h = ffi.new("scaleml_compressed_header *")
    h.method, h.dtype_code, h.ndim = method, dtype_code, len(shape)
    h.count = int(np.prod(shape, dtype=object)) if count is None else count
    h.payload_bytes = payload
    h.params = list(params)
    h.shape[0:len(shape)] = list(shape)
    return h


def write(h, cap: int = 200) -> tuple[int, int, bytes]:
    buf = bytearray(cap)
    written = ffi.new("size_t *")
    rc = lib.scaleml_compressed_write_header(ffi.from_buffer(buf) if cap else ffi.NULL, cap, h, written)
    return rc, int(written[0]), bytes(buf)


def test_write_matches_the_documented_layout():
    rc, n, buf = write(header(method=3, dtype_code=2, shape=(5, 7, 2), payload=99, params=(1, 2, 3, 2**32 - 1)))
    assert rc == OK and n == 48 + 24 == lib.scaleml_compressed_header_bytes(3)
    ref = reference_fields(buf)
    assert (ref["magic"], ref["version"], ref["method"], ref["dtype_code"], ref["ndim"], ref["count"],
            ref["payload_bytes"], ref["params"], ref["reserved"], ref["shape"]) == (
        b"SMLC", 1, 3, 2, 3, 70, 99, (1, 2, 3, 2**32 - 1), 0, (5, 7, 2))
    assert bytes(sign(bytearray(buf[:n]), n)) == buf[:n]


@pytest.mark.parametrize("kwargs,code,reason", [
    (dict(method=0), ARG, "unknown compression method 0"),
    (dict(method=7), ARG, "unknown compression method 7"),
    (dict(dtype_code=3), ARG, "unknown dtype code 3"),
    (dict(count=25), ARG, "does not match"),
    (dict(shape=(1 << 24, 1 << 24)), ARG, "2^48"),
    (dict(shape=(1 << 63, 4), count=0), ARG, "does not match"),
])
def test_write_rejects_bad_fields(kwargs, code, reason):
    assert write(header(**kwargs))[0] == code
    assert reason in error_text()


def test_write_rejects_too_many_dimensions_and_a_small_buffer():
    h = header()
    h.ndim = 9
    assert write(h)[0] == ARG and "9 dimensions" in error_text()
    rc, needed, _ = write(header(shape=(2, 3, 4)), cap=60)
    assert rc == TOO_LARGE and needed == 72 and "72" in error_text()
    assert write(header(shape=(2, 3, 4)), cap=0)[0] == TOO_LARGE
    assert write(header(shape=(2, 3, 4)), cap=72)[0] == OK


def test_header_crc_needs_a_whole_header():
    crc = ffi.new("uint32_t *")
    assert lib.scaleml_compressed_header_crc(ffi.from_buffer(bytes(47)), 47, crc) == ARG
    with pytest.raises(ValueError, match="at least 48 bytes"):
        C._header_crc(np.zeros(40, np.uint8))
    head = np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8)
    zeroed = head.copy()
    zeroed[40:44] = 0
    assert C._header_crc(head) == zlib.crc32(zeroed.tobytes())


# ----------------------------------------------------------------------------- one registry


def test_the_methods_c_knows_are_the_registered_ones():
    known_to_c = {m for m in range(256) if write(header(method=m))[0] == OK}
    assert known_to_c == set(framing._METHODS) == {1, 2, 3, 4, 5, 6}
    classes = [C.QSGD, C.OneBit, C.TopK, C.AdaptiveQuant, C.ZipML, C.Cast]
    assert {cls.method: cls.name for cls in classes} == {m: e.name for m, e in framing._METHODS.items()}
    assert (C.QSGD_ID, C.ONEBIT_ID, C.TOPK_ID, C.ADAPTIVE_ID, C.ZIPML_ID, C.CAST_ID) == (1, 2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="already registered"):
        framing.register_method(1, "again", framing._METHODS[1].decoder)


def test_public_names_are_unchanged():
    for name in C.__all__:
        assert hasattr(C, name), name
    assert set(C.__all__) >= {"AdaptiveQuant", "Cast", "Compressed", "Compressor", "CorruptBufferError",
                              "ErrorFeedback", "OneBit", "QSGD", "TopK", "ZipML", "decode",
                              "double_sampling_gradient", "rng_uniform"}
    assert C.CorruptBufferError is errors.CorruptBufferError

"""The segment wire format: valid messages pass, malformed ones are rejected cleanly (fuzzed)."""

from __future__ import annotations

import numpy as np
import pytest

from scaleml._native import ffi, lib

SPARSE, DENSE = 0x5053, 0x4E44
MALFORMED = 3


def pack_sparse(indices, values, index_dtype=np.uint32) -> bytes:
    """The documented layout: form, count, indices padded to 8 bytes, values."""
    idx = np.asarray(indices, index_dtype).tobytes()
    idx += b"\0" * (-len(idx) % 8)
    return np.array([SPARSE, len(values)], np.uint64).tobytes() + idx + np.asarray(values).tobytes()


def pack_dense(values) -> bytes:
    return np.array([DENSE, len(values)], np.uint64).tobytes() + np.asarray(values).tobytes()


def check(message: bytes, offset=0, length=100, index_bytes=4, value_bytes=4) -> int:
    return lib.scaleml_check_segment_message(ffi.from_buffer(message), len(message), offset, length,
                                             index_bytes, value_bytes)


def error_text() -> str:
    return ffi.string(lib.scaleml_error_message()).decode()


def test_valid_messages_pass():
    assert check(pack_sparse([1, 5, 99], np.ones(3, np.float32))) == 0
    assert check(pack_sparse([], np.ones(0, np.float32))) == 0
    assert check(pack_dense(np.ones(100, np.float32))) == 0
    assert check(pack_sparse([10, 20], np.ones(2)), offset=10, length=11, value_bytes=8) == 0
    big = pack_sparse([2**40, 2**40 + 7], np.ones(2), index_dtype=np.uint64)
    assert check(big, offset=2**40, length=8, index_bytes=8, value_bytes=8) == 0


@pytest.mark.parametrize("message,reason", [
    (b"", "shorter than its header"),
    (np.array([0x1234, 0], np.uint64).tobytes(), "unknown form"),
    (pack_sparse([1, 5, 99], np.ones(3, np.float32))[:-1], "claims"),
    (pack_sparse([1, 5, 99], np.ones(3, np.float32)) + b"\0" * 8, "claims"),
    (pack_sparse([5, 1], np.ones(2, np.float32)), "unsorted"),
    (pack_sparse([5, 5], np.ones(2, np.float32)), "unsorted"),
    (pack_sparse([100], np.ones(1, np.float32)), "outside"),
    (pack_dense(np.ones(99, np.float32)), "dense segment"),
    (np.array([SPARSE, 2**63], np.uint64).tobytes(), "claims"),
])
def test_malformed_messages_rejected(message, reason):
    assert check(message) == MALFORMED
    assert reason in error_text()


def test_fuzz_truncations_and_bit_flips():
    """A few thousand corrupted messages: each is accepted or rejected, never a crash or overread.

    Every accepted message must still satisfy the format's invariants, which we
    re-check here in Python.
    """
    rng = np.random.default_rng(2024)
    seeds = [pack_sparse(np.sort(rng.choice(100, 7, replace=False)), rng.standard_normal(7).astype(np.float32)),
             pack_dense(rng.standard_normal(100).astype(np.float32)),
             pack_sparse([], np.zeros(0, np.float32))]
    accepted = rejected = 0
    for _ in range(3000):
        msg = bytearray(seeds[rng.integers(len(seeds))])
        action = rng.integers(3)
        if action == 0 and len(msg):
            msg = msg[: rng.integers(len(msg))]
        elif action == 1 and len(msg):
            for _ in range(rng.integers(1, 4)):
                pos = rng.integers(len(msg))
                msg[pos] ^= 1 << int(rng.integers(8))
        else:
            msg += bytes(rng.integers(0, 256, rng.integers(1, 16), dtype=np.uint8))
        rc = check(bytes(msg))
        assert rc in (0, MALFORMED)
        if rc == 0:
            accepted += 1
            form, count = np.frombuffer(bytes(msg[:16]), np.uint64)
            if form == SPARSE:
                pad = (count * 4 + 7) // 8 * 8
                assert len(msg) == 16 + pad + count * 4
                idx = np.frombuffer(bytes(msg[16:16 + count * 4]), np.uint32)
                assert (idx < 100).all() and (np.diff(idx.astype(np.int64)) > 0).all()
            else:
                assert form == DENSE and count == 100 and len(msg) == 16 + 400
        else:
            rejected += 1
    assert rejected > 1000 and accepted > 0  # both outcomes were exercised


def test_bad_widths_are_an_argument_error():
    assert lib.scaleml_check_segment_message(ffi.NULL, 0, 0, 1, 3, 4) == 4

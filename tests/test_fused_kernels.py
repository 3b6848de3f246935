"""The fused kernels of the collectives give the same bytes and sums as the separate passes they replace."""

from __future__ import annotations

import numpy as np
import pytest

from scaleml._native import ffi, lib
from scaleml.errors import check

SIZES = [0, 1, 31, 33, 512, 1000, 4099]


def _onebit_encode(x: np.ndarray, bucket: int, addend: np.ndarray | None = None,
                   residual: np.ndarray | None = None) -> bytes:
    out = np.zeros(lib.scaleml_onebit_bytes(x.size, bucket), np.uint8)
    res = ffi.NULL if residual is None else ffi.from_buffer(residual, require_writable=True)
    if addend is None:
        check(lib.scaleml_onebit_encode(ffi.from_buffer(x), x.itemsize, x.size, bucket, ffi.from_buffer(out),
                                        out.size, res))
    else:
        check(lib.scaleml_onebit_encode_sum(ffi.from_buffer(x), ffi.from_buffer(addend), x.itemsize, x.size, bucket,
                                            ffi.from_buffer(out), out.size, res))
    return out.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bucket", [1, 40, 512, 4096])
def test_onebit_encode_sum_is_encode_of_the_sum_with_the_residual_in_place(dtype, n, bucket):
    rng = np.random.default_rng(n + bucket)
    x = rng.standard_normal(n).astype(dtype)
    e = (0.3 * rng.standard_normal(n)).astype(dtype)
    expected_residual = np.empty_like(x)
    expected = _onebit_encode(x + e, bucket, residual=expected_residual)
    residual = e.copy()  # updated in place, as error feedback does
    assert _onebit_encode(x, bucket, addend=residual, residual=residual) == expected
    np.testing.assert_array_equal(residual, expected_residual)
    e_before = e.copy()
    assert _onebit_encode(x, bucket, addend=e) == expected  # without a residual: e is only read
    np.testing.assert_array_equal(e, e_before)


def test_onebit_encode_sum_rejects_buckets_it_cannot_hold():
    x = np.ones(8193, np.float32)
    with pytest.raises(ValueError, match="at most 4096"):
        _onebit_encode(x, 8192, addend=x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_onebit_decode_add_is_decode_then_add(dtype, n):
    rng = np.random.default_rng(n)
    payload = np.frombuffer(_onebit_encode(rng.standard_normal(n).astype(dtype), 40), np.uint8)
    acc = rng.standard_normal(n).astype(dtype)
    decoded = np.empty_like(acc)
    check(lib.scaleml_onebit_decode(ffi.from_buffer(payload), payload.size, n, 40, ffi.from_buffer(decoded),
                                    acc.itemsize))
    expected = acc + decoded
    check(lib.scaleml_onebit_decode_add(ffi.from_buffer(payload), payload.size, n, 40, ffi.from_buffer(acc),
                                        acc.itemsize))
    np.testing.assert_array_equal(acc, expected)


def test_onebit_decode_add_validates_the_payload():
    payload = np.frombuffer(_onebit_encode(np.ones(64, np.float32), 32), np.uint8).copy()
    acc = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="expected"):
        check(lib.scaleml_onebit_decode_add(ffi.from_buffer(payload), payload.size - 1, 64, 32,
                                            ffi.from_buffer(acc), 4))
    payload[0:4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)  # bucket 0's mean of the non-negatives
    with pytest.raises(ValueError, match="invalid reconstruction"):
        check(lib.scaleml_onebit_decode_add(ffi.from_buffer(payload), payload.size, 64, 32,
                                            ffi.from_buffer(acc), 4))
    assert not acc.any()  # validated before anything is added


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", [1, 4, 8])
def test_qsgd_decode_add_is_decode_then_add(dtype, n, bits):
    rng = np.random.default_rng(n * 10 + bits)
    x = rng.standard_normal(n).astype(dtype)
    bucket = 64
    cap = lib.scaleml_qsgd_max_bytes(n, bits, bucket, lib.SCALEML_QSGD_FIXED)
    out = np.zeros(max(cap, 1), np.uint8)
    written = ffi.new("size_t *")
    check(lib.scaleml_qsgd_encode(ffi.from_buffer(x), x.itemsize, n, bits, bucket, lib.SCALEML_NORM_L2,
                                  lib.SCALEML_QSGD_FIXED, 7, ffi.from_buffer(out), cap, written))
    acc = rng.standard_normal(n).astype(dtype)
    decoded = np.empty_like(acc)
    check(lib.scaleml_qsgd_decode(ffi.from_buffer(out), cap, n, bits, bucket, lib.SCALEML_QSGD_FIXED,
                                  ffi.from_buffer(decoded), acc.itemsize))
    expected = acc + decoded
    check(lib.scaleml_qsgd_decode_add(ffi.from_buffer(out), cap, n, bits, bucket, ffi.from_buffer(acc),
                                      acc.itemsize))
    np.testing.assert_array_equal(acc, expected)


@pytest.mark.parametrize("n", [0, 1, 1000, 200_003])  # small n: the radix select; large n: the candidate filter
@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_residual_in_place_is_the_residual_out_of_place(n, approximate, dtype):
    from scaleml.compress import TopK
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    sel = TopK(ratio=0.01, approximate=approximate)
    c, residual = sel.encode_with_residual(x, step=3, out=np.empty_like(x))
    y = x.copy()
    c2, residual2 = sel.encode_with_residual(y, step=3, out=y)
    assert residual2 is y
    assert bytes(c.payload) == bytes(c2.payload)
    np.testing.assert_array_equal(y, residual)


def test_topk_residual_must_be_x_or_apart_from_it():
    from scaleml.compress import TopK
    x = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    sel = TopK(ratio=0.1)
    with pytest.raises(ValueError, match="overlap"):
        sel.encode_with_residual(x[1:], out=x[:-1])
    frozen = x.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        sel.encode_with_residual(frozen, out=frozen)

"""The QSGD GPU decomposition, emulated on the host (csrc/arith/qsgd_gpuref.c), gives the CPU kernel's bytes.

The CUDA kernels (csrc/cuda/qsgd.cu) run the shared functions of csrc/arith/qsgd.h in the phases that
``scaleml_gpuref_qsgd_*`` runs them here: one thread per (bucket, lane) for the norms, one per element for
the codes placed with OR at their closed-form bit offsets, one per element for decoding. No GPU needed.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaleml._native import ffi, lib

L2, MAX = 0, 1
FIXED, ELIAS = 0, 1
OK, ERR_MALFORMED, ERR_ARG, ERR_TOO_LARGE = 0, 3, 4, 5
KEY = 0x0123456789ABCDEF
DTYPES = [np.float32, np.float64]
BUCKETS = [1, 3, 8, 13, 64, 100, 512]


def _message() -> str:
    return ffi.string(lib.scaleml_error_message()).decode()


def _encode(which: str, x: np.ndarray, bits: int, bucket: int, norm: int, fmt: int = FIXED, key: int = KEY,
            cap: int | None = None, offset: int = 0) -> tuple[int, bytes, int, str]:
    """(rc, payload, *written, message) of the CPU kernel or the GPU emulation; the payload lands `offset`
    bytes into its buffer (an unaligned word buffer for offset % 4 != 0)."""
    need = lib.scaleml_qsgd_max_bytes(x.size, bits, bucket, fmt)
    cap = need if cap is None else cap
    buf = np.full(cap + offset + 8, 0xA5, np.uint8)  # stale bytes: the kernels must overwrite every byte
    written = ffi.new("size_t *", 12345)
    fn = lib.scaleml_qsgd_encode if which == "cpu" else lib.scaleml_gpuref_qsgd_encode
    rc = fn(ffi.from_buffer(x), x.itemsize, x.size, bits, bucket, norm, fmt, key,
            ffi.from_buffer(buf) + offset, cap, written)
    msg = _message() if rc else ""
    return rc, buf[offset:offset + written[0]].tobytes() if rc == OK else b"", written[0], msg


def _decode(which: str, payload: bytes, n: int, bits: int, bucket: int, dtype, acc: np.ndarray | None = None,
            fmt: int = FIXED) -> tuple[int, np.ndarray]:
    buf = np.frombuffer(payload + b"\0", np.uint8)  # never an empty buffer for from_buffer
    if acc is None:
        out = np.full(max(n, 1), 7, dtype)
        fn = lib.scaleml_qsgd_decode if which == "cpu" else lib.scaleml_gpuref_qsgd_decode
        rc = fn(ffi.from_buffer(buf), len(payload), n, bits, bucket, fmt, ffi.from_buffer(out), out.itemsize)
    else:
        out = np.concatenate([acc, np.zeros(1, dtype)])
        fn = lib.scaleml_qsgd_decode_add if which == "cpu" else lib.scaleml_gpuref_qsgd_decode_add
        rc = fn(ffi.from_buffer(buf), len(payload), n, bits, bucket, ffi.from_buffer(out), out.itemsize)
    return rc, out[:n]


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _random_input(rng: np.random.Generator, n: int, dtype) -> np.ndarray:
    """Normal values with zeros, ties (repeated values and magnitudes) and denormals mixed in."""
    x = rng.standard_normal(n).astype(dtype)
    if n >= 8:
        x[rng.integers(0, n, n // 7)] = 0
        src = rng.integers(0, n, n // 9)
        x[rng.integers(0, n, n // 9)] = x[src]
        src = rng.integers(0, n, n // 11)
        x[rng.integers(0, n, n // 11)] = -x[src]
        tiny = np.finfo(dtype).smallest_subnormal
        x[rng.integers(0, n, n // 13)] = (rng.integers(-40, 40, n // 13) * tiny).astype(dtype)
    return x


def _check_encode_same(x: np.ndarray, bits: int, bucket: int, norm: int, **kw) -> bytes:
    cpu = _encode("cpu", x, bits, bucket, norm, **kw)
    gpu = _encode("gpu", x, bits, bucket, norm, **kw)
    where = f"n={x.size} {x.dtype} bits={bits} bucket={bucket} norm={norm}"
    assert gpu[0] == cpu[0], (where, cpu[3], gpu[3])
    assert gpu[2] == cpu[2], where
    assert gpu[1] == cpu[1], where
    assert gpu[3] == cpu[3], where
    return cpu[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [L2, MAX])
@pytest.mark.parametrize("bucket", BUCKETS)
def test_encode_edge_sizes_match_the_cpu_bytes(dtype, norm, bucket):
    rng = np.random.default_rng(bucket * 2 + norm)
    for n in sorted({0, 1, 7, max(bucket - 1, 0), bucket, bucket + 1, 3 * bucket + 5}):
        x = _random_input(rng, n, dtype)
        for bits in range(1, 9):
            payload = _check_encode_same(x, bits, bucket, norm)
            assert len(payload) == lib.scaleml_qsgd_max_bytes(n, bits, bucket, FIXED)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [L2, MAX])
@pytest.mark.parametrize("bucket,bits", [(512, 4), (100, 8), (1 << 20, 2), (37, 1), (8, 7)])
def test_encode_large_random_inputs_match_the_cpu_bytes(dtype, norm, bucket, bits):
    rng = np.random.default_rng(bucket + bits)
    x = _random_input(rng, 100_003, dtype)
    for key in (KEY, 0, 2**64 - 1):
        _check_encode_same(x, bits, bucket, norm, key=key)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1, 2, 3])
def test_encode_into_an_unaligned_buffer_gives_the_same_bytes(dtype, offset):
    rng = np.random.default_rng(offset)
    x = _random_input(rng, 1001, dtype)
    for bucket in (13, 64):
        cpu = _encode("cpu", x, 3, bucket, L2)
        assert _encode("gpu", x, 3, bucket, L2, offset=offset)[1] == cpu[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [L2, MAX])
def test_denormal_buckets_where_the_scale_overflows_match(dtype, norm):
    """s / N overflows for buckets of denormals: r is inf or NaN and the level comes from INT32_MIN (x86)."""
    tiny = np.finfo(dtype).smallest_subnormal
    rng = np.random.default_rng(3)
    cases = [np.array([tiny], dtype), np.array([-tiny, 0, tiny * 3, 0], dtype),
             (rng.integers(-5, 6, 777) * tiny).astype(dtype),
             (rng.standard_normal(600) * np.finfo(dtype).tiny * 4).astype(dtype)]
    for x in cases:
        for bucket in (1, 2, 8, 13, 64):
            for bits in (1, 4, 8):
                _check_encode_same(x, bits, bucket, norm)


def test_denormal_bucket_bytes_are_the_x86_conversion_of_inf_and_nan():
    """Pinned bytes (the CPU kernel's before arith/qsgd.h): with N = the smallest float32 denormal, s / N is +inf,
    so r = inf gives level INT32_MIN + 1 (code 1, sign kept) and r = 0 * inf = NaN gives code 0."""
    tiny = np.finfo(np.float32).smallest_subnormal
    cases = {(tiny,): "010000000100", (-tiny,): "010000000101", (0.0, tiny): "01000000000200"}
    for values, expected in cases.items():
        x = np.array(values, np.float32)
        for which in ("cpu", "gpu"):
            assert _encode(which, x, 8, x.size, L2)[1].hex() == expected, (which, values)


@pytest.mark.parametrize("norm", [L2, MAX])
def test_overflowing_squares_take_the_rescaled_norm_in_both(norm):
    """float64 values whose squares overflow (the rescaled fallback), within the float32 range of the norm."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(3001) * 1e155
    x[::5] = 0
    for bucket in (1, 7, 8, 512, 4096):
        for bits in (2, 8):
            _check_encode_same(x, bits, bucket, norm)


def test_the_lane_sums_of_the_cpu_and_gpu_forms_are_the_same_doubles():
    """Values of similar magnitude, so that another summation order would change the last bits."""
    rng = np.random.default_rng(5)
    cpu, gpu = ffi.new("double *"), ffi.new("double *")
    order_mattered = 0
    for dtype in DTYPES:
        for n in (1, 7, 8, 9, 15, 16, 17, 23, 63, 100, 511, 4099):
            for _ in range(20):
                x = (rng.standard_normal(n) + 0.1 * rng.random(n)).astype(dtype)
                assert lib.scaleml_gpuref_qsgd_sumsq(ffi.from_buffer(x), x.itemsize, n, cpu, gpu) == OK
                assert cpu[0] == gpu[0], (dtype, n)
                sequential = 0.0
                for v in x.astype(np.float64):
                    sequential += v * v
                order_mattered += sequential != cpu[0]
    assert order_mattered > 100  # the inputs do tell summation orders apart


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_input_gives_the_same_error(dtype):
    rng = np.random.default_rng(6)
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 5, 99, 199):
            x = rng.standard_normal(200).astype(dtype)
            x[where] = bad
            for bucket in (1, 8, 13, 512):
                for norm in (L2, MAX):
                    cpu = _encode("cpu", x, 4, bucket, norm)
                    gpu = _encode("gpu", x, 4, bucket, norm)
                    assert cpu[0] == ERR_ARG
                    assert gpu[0] == cpu[0] and gpu[3] == cpu[3], (bad, where, bucket, norm)


def test_norm_beyond_float32_and_the_first_bad_bucket_decides_the_message():
    x = np.ones(64)
    x[10] = 1e39   # bucket 1 (of 8): its norm is beyond float32
    x[40] = np.nan  # bucket 5: non-finite
    for norm in (L2, MAX):
        cpu = _encode("cpu", x, 4, 8, norm)
        gpu = _encode("gpu", x, 4, 8, norm)
        assert cpu[0] == ERR_ARG and "float32 range" in cpu[3]
        assert gpu[0] == cpu[0] and gpu[3] == cpu[3]
        x2 = x.copy()
        x2[2] = np.inf  # now bucket 0 is the first bad one
        assert _encode("gpu", x2, 4, 8, norm)[3] == _encode("cpu", x2, 4, 8, norm)[3]
        assert "non-finite" in _encode("gpu", x2, 4, 8, norm)[3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_capacity_is_too_large_with_the_required_size(dtype):
    x = np.ones(1000, dtype)
    for bucket in (8, 13):
        need = lib.scaleml_qsgd_max_bytes(1000, 4, bucket, FIXED)
        cpu = _encode("cpu", x, 4, bucket, L2, cap=need - 1)
        gpu = _encode("gpu", x, 4, bucket, L2, cap=need - 1)
        assert cpu[0] == ERR_TOO_LARGE and cpu[2] == need
        assert gpu[0] == ERR_TOO_LARGE and gpu[2] == need


def test_elias_and_bad_arguments_are_refused_like_the_cuda_entry_points():
    x = np.ones(10, np.float32)
    rc, _, _, msg = _encode("gpu", x, 4, 8, L2, fmt=ELIAS)
    assert rc == ERR_ARG and "Elias" in msg
    assert _decode("gpu", b"\0" * 8, 1, 4, 8, np.float32, fmt=ELIAS)[0] == ERR_ARG
    for bits in (0, 9):
        assert _encode("gpu", x, bits, 8, L2)[0] == ERR_ARG
    assert _encode("gpu", x, 4, 0, L2)[0] == ERR_ARG
    assert _encode("gpu", x, 4, 8, 2)[0] == ERR_ARG


def _set_norms(payload: bytes, n: int, bits: int, bucket: int, norms: np.ndarray) -> bytes:
    """The payload with each bucket's 32-bit norm field replaced (LSB-first bit offsets)."""
    stream = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
    nb = -(-n // bucket)
    for b in range(nb):
        at = b * (32 + bucket * (bits + 1))
        word = int(np.asarray(norms[b], np.float32).view(np.uint32))
        stream[at:at + 32] = [(word >> k) & 1 for k in range(32)]
    return np.packbits(stream, bitorder="little").tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", BUCKETS + [1 << 20])
def test_decode_and_decode_add_match_the_cpu(dtype, bucket):
    rng = np.random.default_rng(bucket)
    for n in sorted({0, 1, 7, max(bucket - 1, 0), bucket, bucket + 1, 3 * bucket + 5, 5000}):
        x = _random_input(rng, n, dtype)
        for bits in (1, 3, 4, 8):
            payload = _encode("cpu", x, bits, bucket, L2)[1]
            rc, cpu = _decode("cpu", payload, n, bits, bucket, dtype)
            assert rc == OK
            rc, gpu = _decode("gpu", payload, n, bits, bucket, dtype)
            assert rc == OK and _bits_equal(gpu, cpu), (n, bits, bucket)
            acc = rng.standard_normal(n).astype(dtype)
            rc, summed = _decode("gpu", payload, n, bits, bucket, dtype, acc=acc)
            assert rc == OK and _bits_equal(summed, acc + cpu), (n, bits, bucket)
            if bucket % 8 == 0:  # the CPU's fused decode-and-add exists for these buckets
                rc, cpu_summed = _decode("cpu", payload, n, bits, bucket, dtype, acc=acc)
                assert rc == OK and _bits_equal(summed, cpu_summed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", [5, 8, 64, 99])
def test_forged_payloads_with_any_fields_decode_alike(dtype, bucket):
    """Random field bits (a sign with level 0 included) under valid norms, including -0.0 and denormal norms."""
    rng = np.random.default_rng(bucket + 100)
    n, bits = 3 * bucket + 3, 4
    nb = -(-n // bucket)
    size = lib.scaleml_qsgd_max_bytes(n, bits, bucket, FIXED)
    for trial in range(6):
        norms = np.abs(rng.standard_normal(nb)).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3))
        norms[0] = [0.0, -0.0, 1e-45, 3.4e38, 1.0, 2.5][trial]
        payload = _set_norms(rng.integers(0, 256, size, dtype=np.uint8).tobytes(), n, bits, bucket, norms)
        rc_cpu, cpu = _decode("cpu", payload, n, bits, bucket, dtype)
        rc_gpu, gpu = _decode("gpu", payload, n, bits, bucket, dtype)
        assert rc_cpu == OK and rc_gpu == OK
        assert _bits_equal(gpu, cpu), (trial, bucket)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", [5, 8, 64])
@pytest.mark.parametrize("bad_norm", [np.nan, np.inf, -1.0, -1e-45])
def test_invalid_norms_are_malformed_in_both(dtype, bucket, bad_norm):
    rng = np.random.default_rng(7)
    n, bits = 4 * bucket, 3
    x = _random_input(rng, n, dtype)
    payload = _encode("cpu", x, bits, bucket, L2)[1]
    norms = np.array([np.frombuffer(payload, np.uint8)[0:4].view(np.float32)[0]] * 4, np.float32)
    # keep the real norms, except bucket 2's
    stream = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
    for b in range(4):
        at = b * (32 + bucket * (bits + 1))
        norms[b] = np.packbits(stream[at:at + 32], bitorder="little").view(np.float32)[0]
    norms[2] = bad_norm
    forged = _set_norms(payload, n, bits, bucket, norms)
    assert _decode("cpu", forged, n, bits, bucket, dtype)[0] == ERR_MALFORMED
    assert _decode("gpu", forged, n, bits, bucket, dtype)[0] == ERR_MALFORMED
    acc = np.zeros(n, dtype)
    assert _decode("gpu", forged, n, bits, bucket, dtype, acc=acc)[0] == ERR_MALFORMED
    assert _decode("gpu", payload, n, bits, bucket, dtype)[0] == OK  # the unforged one decodes


@pytest.mark.parametrize("dtype", DTYPES)
def test_payload_of_the_wrong_size_is_malformed_in_both(dtype):
    x = np.ones(100, dtype)
    payload = _encode("cpu", x, 4, 13, L2)[1]
    for wrong in (payload[:-1], payload + b"\0"):
        assert _decode("cpu", wrong, 100, 4, 13, dtype)[0] == ERR_MALFORMED
        assert _decode("gpu", wrong, 100, 4, 13, dtype)[0] == ERR_MALFORMED
        assert _decode("gpu", wrong, 100, 4, 13, dtype, acc=np.zeros(100, dtype))[0] == ERR_MALFORMED

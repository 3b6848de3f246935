"""The GPU decomposition of the 1-bit and cast kernels, emulated on the host, gives the CPU kernels' bytes.

``scaleml_gpuref_*`` (csrc/arith/onebit_gpuref.c, cast_gpuref.c) run the shared arithmetic of
csrc/arith/onebit.h and cast.h in the phases of the CUDA kernels (csrc/cuda/onebit.cu, cast.cu);
the CPU kernels (csrc/compress/onebit.c, cast.c, with their SIMD paths) run it their own way.
No GPU is needed: these tests check everything the GPU runs but the launch.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaleml._native import ffi, lib
from scaleml.errors import ERR_ARG, ERR_MALFORMED, ERR_TOO_LARGE, OK

FP16 = int(lib.SCALEML_CAST_FP16)
BF16 = int(lib.SCALEML_CAST_BF16)
DTYPES = [np.float32, np.float64]
BUCKETS = [1, 7, 40, 512, 4096]


def _sizes(bucket: int) -> list[int]:
    return sorted({0, 1, 7, max(bucket - 1, 0), bucket, bucket + 1, 3 * bucket + 5})


def _ptr(a: np.ndarray):
    return ffi.from_buffer(a, require_writable=a.flags.writeable)


def _u16(a: np.ndarray):
    return ffi.cast("uint16_t *", _ptr(a))


def _hard_values(n: int, dtype, seed: int) -> np.ndarray:
    """Normal values with zeros, -0.0, repeated values (ties) and float32 denormals mixed in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    if n:
        x[rng.integers(0, n, n // 10 + 1)] = 0.0
        x[rng.integers(0, n, n // 20 + 1)] = -0.0
        x[rng.integers(0, n, n // 10 + 1)] = dtype(0.5)
        x[rng.integers(0, n, n // 10 + 1)] = dtype(-0.5)
        tiny = np.finfo(np.float32).tiny
        x[rng.integers(0, n, n // 20 + 1)] = (rng.standard_normal(n // 20 + 1) * tiny / 64).astype(dtype)
    return x


# ---------------------------------------------------------------- 1-bit


def _onebit(fn, x: np.ndarray, bucket: int, residual: np.ndarray | None, addend: np.ndarray | None = None):
    out = np.zeros(int(lib.scaleml_onebit_bytes(x.size, bucket)), np.uint8)
    res = ffi.NULL if residual is None else _ptr(residual)
    if addend is None:
        rc = fn(_ptr(x), x.itemsize, x.size, bucket, _ptr(out), out.size, res)
    else:
        rc = fn(_ptr(x), _ptr(addend), x.itemsize, x.size, bucket, _ptr(out), out.size, res)
    return rc, out


def _both_encode(x: np.ndarray, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    res_cpu, res_gpu = np.full_like(x, 7), np.full_like(x, 9)
    rc_cpu, out_cpu = _onebit(lib.scaleml_onebit_encode, x, bucket, res_cpu)
    rc_gpu, out_gpu = _onebit(lib.scaleml_gpuref_onebit_encode, x, bucket, res_gpu)
    assert rc_cpu == rc_gpu == OK
    assert out_gpu.tobytes() == out_cpu.tobytes()
    assert res_gpu.tobytes() == res_cpu.tobytes()
    _, out_nores = _onebit(lib.scaleml_gpuref_onebit_encode, x, bucket, None)
    assert out_nores.tobytes() == out_cpu.tobytes()
    return out_cpu, res_cpu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_onebit_encode_same_bytes_and_residual_as_cpu(dtype, bucket):
    for n in _sizes(bucket):
        _both_encode(_hard_values(n, dtype, seed=n + bucket), bucket)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", [7, 512, 1000, 100_000])
def test_onebit_encode_large_random_inputs(dtype, bucket):
    rng = np.random.default_rng(bucket)
    for case in range(3):
        x = _hard_values(100_003, dtype, seed=case)
        x *= (10.0 ** rng.integers(-20, 20, x.size)).astype(dtype)  # magnitudes whose sums round
        _both_encode(x, bucket)


@pytest.mark.parametrize("tail", [0, 5])
def test_onebit_lane_order_is_what_the_bytes_depend_on(tail):
    """An input whose mean depends on the summation order: lanes 1-7 keep the ones that a sequential
    sum loses next to -1e16 (as lane 0 loses the tail's), so equal bytes above check the order."""
    x = np.concatenate([np.tile(np.array([-1e16, 1, 1, 1, 1, 1, 1, 1]), 8), np.ones(tail)])
    out, _ = _both_encode(x, x.size)
    sum_all = sum_neg = 0.0
    for v in x.tolist():  # one after the other (Python's sum() compensates, so no sum())
        sum_all = sum_all + v
        sum_neg = sum_neg + min(v, 0.0)
    sequential_mean_pos = np.float32((sum_all - sum_neg) / (56 + tail))
    mean_pos = np.frombuffer(out[:4].tobytes(), np.float32)[0]
    assert sequential_mean_pos == 0 and mean_pos == np.float32(48 / (56 + tail))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_onebit_encode_sum_same_bytes_and_residual_as_cpu(dtype, bucket):
    for n in _sizes(bucket) + [100_003]:
        x = _hard_values(n, dtype, seed=n)
        e = (0.3 * np.random.default_rng(n + 1).standard_normal(n)).astype(dtype)
        res_cpu, res_gpu = e.copy(), e.copy()  # the residual aliases the addend, as error feedback runs it
        rc_cpu, out_cpu = _onebit(lib.scaleml_onebit_encode_sum, x, bucket, res_cpu, addend=res_cpu)
        rc_gpu, out_gpu = _onebit(lib.scaleml_gpuref_onebit_encode_sum, x, bucket, res_gpu, addend=res_gpu)
        assert rc_cpu == rc_gpu == OK
        assert out_gpu.tobytes() == out_cpu.tobytes()
        assert res_gpu.tobytes() == res_cpu.tobytes()
        e_before = e.copy()
        rc, out_plain = _onebit(lib.scaleml_gpuref_onebit_encode_sum, x, bucket, None, addend=e)
        assert rc == OK and out_plain.tobytes() == out_cpu.tobytes()
        assert e.tobytes() == e_before.tobytes()  # without a residual the addend is only read


@pytest.mark.parametrize("dtype", DTYPES)
def test_onebit_encode_sum_beyond_the_cpu_bucket_limit_is_encode_of_the_sum(dtype):
    """The GPU takes any bucket in the fused sum; it equals the CPU's encode of x + addend with its residual."""
    n, bucket = 20_011, 8192
    x = _hard_values(n, dtype, seed=3)
    e = (0.3 * np.random.default_rng(4).standard_normal(n)).astype(dtype)
    res_expected = np.empty_like(x)
    rc_cpu, expected = _onebit(lib.scaleml_onebit_encode, x + e, bucket, res_expected)
    residual = e.copy()
    rc_gpu, out = _onebit(lib.scaleml_gpuref_onebit_encode_sum, x, bucket, residual, addend=residual)
    assert rc_cpu == rc_gpu == OK
    assert out.tobytes() == expected.tobytes()
    assert residual.tobytes() == res_expected.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_onebit_decode_and_decode_add_same_as_cpu(dtype, bucket):
    for n in _sizes(bucket) + [100_003]:
        payload, _ = _both_encode(_hard_values(n, dtype, seed=n + 2), bucket)
        acc = np.random.default_rng(n).standard_normal(n).astype(dtype)
        decoded = {}
        for name, fn in (("cpu", lib.scaleml_onebit_decode), ("gpu", lib.scaleml_gpuref_onebit_decode)):
            out = np.full(n, 5, dtype)
            assert fn(_ptr(payload), payload.size, n, bucket, _ptr(out), out.itemsize) == OK
            decoded[name] = out
        assert decoded["gpu"].tobytes() == decoded["cpu"].tobytes()
        expected = acc + decoded["cpu"]  # decode then add
        for fn in (lib.scaleml_onebit_decode_add, lib.scaleml_gpuref_onebit_decode_add):
            a = acc.copy()
            assert fn(_ptr(payload), payload.size, n, bucket, _ptr(a), a.itemsize) == OK
            assert a.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_onebit_non_finite_input_same_error(dtype, bad):
    for n, bucket, where in ((1, 1, 0), (100, 7, 99), (1000, 512, 600), (9, 40, 3)):
        x = _hard_values(n, dtype, seed=n)
        x[where] = bad
        e = np.zeros_like(x)
        for encode, encode_sum in ((lib.scaleml_onebit_encode, lib.scaleml_onebit_encode_sum),
                                   (lib.scaleml_gpuref_onebit_encode, lib.scaleml_gpuref_onebit_encode_sum)):
            assert _onebit(encode, x, bucket, None)[0] == ERR_ARG
            assert _onebit(encode_sum, x, bucket, e.copy(), addend=e)[0] == ERR_ARG
            # the sum overflows to Inf although neither term is non-finite
            big = np.full(n, np.finfo(dtype).max, dtype)
            assert _onebit(encode_sum, big, bucket, None, addend=big)[0] == ERR_ARG


def test_onebit_mean_beyond_float32_same_error():
    x = np.full(50, 1e39)  # finite float64, its mean is not a float32
    for fn in (lib.scaleml_onebit_encode, lib.scaleml_gpuref_onebit_encode):
        assert _onebit(fn, x, 8, None)[0] == ERR_ARG
        assert _onebit(fn, -x, 8, None)[0] == ERR_ARG


def test_onebit_argument_errors_same_codes():
    x = np.ones(10, np.float32)
    out = np.zeros(64, np.uint8)
    for fn in (lib.scaleml_onebit_encode, lib.scaleml_gpuref_onebit_encode):
        assert fn(_ptr(x), 4, 10, 0, _ptr(out), out.size, ffi.NULL) == ERR_ARG
        assert fn(_ptr(x), 2, 10, 4, _ptr(out), out.size, ffi.NULL) == ERR_ARG
        assert fn(_ptr(x), 4, 10, 4, _ptr(out), 5, ffi.NULL) == ERR_TOO_LARGE


@pytest.mark.parametrize("dtype", DTYPES)
def test_onebit_malformed_payload_same_error_and_accumulator_untouched(dtype):
    n, bucket = 100, 16
    payload, _ = _both_encode(_hard_values(n, dtype, seed=1), bucket)
    corrupt = []
    for header_bytes in (np.array([np.nan, -1.0], np.float32), np.array([1.0, 2.0], np.float32),
                         np.array([-1.0, -1.0], np.float32), np.array([np.inf, -1.0], np.float32)):
        p = payload.copy()
        p[8 * 5:8 * 6] = np.frombuffer(header_bytes.tobytes(), np.uint8)
        corrupt.append(p)
    for p in corrupt:
        for decode, decode_add in ((lib.scaleml_onebit_decode, lib.scaleml_onebit_decode_add),
                                   (lib.scaleml_gpuref_onebit_decode, lib.scaleml_gpuref_onebit_decode_add)):
            acc = np.arange(n, dtype=dtype)
            assert decode(_ptr(p), p.size, n, bucket, _ptr(np.empty(n, dtype)), acc.itemsize) == ERR_MALFORMED
            assert decode_add(_ptr(p), p.size, n, bucket, _ptr(acc), acc.itemsize) == ERR_MALFORMED
            assert acc.tobytes() == np.arange(n, dtype=dtype).tobytes()
    for fn in (lib.scaleml_onebit_decode, lib.scaleml_gpuref_onebit_decode):
        out = np.empty(n, dtype)
        assert fn(_ptr(payload), payload.size - 1, n, bucket, _ptr(out), out.itemsize) == ERR_MALFORMED
        assert fn(_ptr(payload), payload.size, n, 0, _ptr(out), out.itemsize) == ERR_ARG


# ---------------------------------------------------------------- casts


def _cast_inputs(n: int, dtype, seed: int) -> np.ndarray:
    """Magnitudes across float16 subnormals to the overflow edge, float32 denormals, zeros and exact ties."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 5, n)).astype(dtype)
    if n:
        x[rng.integers(0, n, n // 10 + 1)] = 0.0
        x[rng.integers(0, n, n // 20 + 1)] = -0.0
        # float32 values halfway between two float16 (13 low bits 0x1000) and two bfloat16 (16 low bits 0x8000)
        bits = rng.integers(0x30000000, 0x47000000, n // 5 + 1, dtype=np.uint32)
        x[rng.integers(0, n, bits.size)] = ((bits & ~np.uint32(0x1fff)) | np.uint32(0x1000)).view(np.float32)
        x[rng.integers(0, n, bits.size)] = ((bits & ~np.uint32(0xffff)) | np.uint32(0x8000)).view(np.float32)
        tiny = np.finfo(np.float32).tiny
        x[rng.integers(0, n, n // 20 + 1)] = (rng.standard_normal(n // 20 + 1) * tiny / 16).astype(dtype)
        edges = [65504.0, -65504.0, 65519.99, 6.0e-8, 2.9e-8, 3.0e-8, -3.0e-5, 1.0e-45]
        x[:min(n, len(edges))] = edges[:n]
    return x


def _cast_encode(fn, x: np.ndarray, fmt: int) -> tuple[int, np.ndarray]:
    out = np.full(x.size, 0xABCD, np.uint16)
    return fn(_ptr(x), x.itemsize, x.size, fmt, _u16(out)), out


@pytest.mark.parametrize("fmt", [FP16, BF16])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 15, 16, 17, 1000, 100_003])
def test_cast_encode_same_bits_as_cpu(fmt, dtype, n):
    x = _cast_inputs(n, dtype, seed=n)
    rc_cpu, cpu = _cast_encode(lib.scaleml_cast_encode, x, fmt)
    rc_gpu, gpu = _cast_encode(lib.scaleml_gpuref_cast_encode, x, fmt)
    assert rc_cpu == rc_gpu == OK
    assert gpu.tobytes() == cpu.tobytes()


@pytest.mark.parametrize("fmt", [FP16, BF16])
def test_cast_encode_every_float32_exponent_and_rounding_case(fmt):
    """Every exponent with mantissas around each rounding boundary (below, at, above the tie, odd and even)."""
    exps = np.arange(0, 255, dtype=np.uint32) << np.uint32(23)
    low = np.array([0, 1, 0x0fff, 0x1000, 0x1001, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001, 0x18000, 0x7fffff,
                    0x7fe000, 0x7ff000, 0x7f8000, 0x7f7fff], np.uint32)
    bits = (exps[:, None] | low[None, :]).ravel()
    x = np.concatenate([bits, bits | np.uint32(0x80000000)]).view(np.float32)
    x = x[np.abs(x.astype(np.float64)) < (65504.0 if fmt == FP16 else 3.3e38)]  # the accepted range
    for dtype in DTYPES:
        xv = x.astype(dtype)
        rc_cpu, cpu = _cast_encode(lib.scaleml_cast_encode, xv, fmt)
        rc_gpu, gpu = _cast_encode(lib.scaleml_gpuref_cast_encode, xv, fmt)
        assert rc_cpu == rc_gpu
        assert gpu.tobytes() == cpu.tobytes()


@pytest.mark.parametrize("fmt", [FP16, BF16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cast_rejected_input_same_error_and_same_inf(fmt, dtype):
    # the smallest magnitude that rounds to Inf
    limit = 65520.0 if fmt == FP16 else float(np.array([0x7F7F8000], np.uint32).view(np.float32)[0])
    for bad in (np.nan, np.inf, -np.inf, limit, -limit, 1e300 if dtype == np.float64 else np.inf):
        for n, where in ((1, 0), (9, 8), (40, 17)):
            x = _cast_inputs(n, dtype, seed=n)
            x[where] = bad
            rc_cpu, cpu = _cast_encode(lib.scaleml_cast_encode, x, fmt)
            rc_gpu, gpu = _cast_encode(lib.scaleml_gpuref_cast_encode, x, fmt)
            assert rc_cpu == rc_gpu == ERR_ARG
            keep = np.ones(n, bool)
            if np.isnan(bad):
                keep[where] = False  # NaN's pattern is not specified (F16C keeps a NaN, the portable code an Inf)
            assert gpu[keep].tobytes() == cpu[keep].tobytes()  # every element written, +-Inf beyond the range


@pytest.mark.parametrize("fmt", [FP16, BF16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cast_decode_every_pattern_same_as_cpu(fmt, dtype):
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    exp = 0x7C00 if fmt == FP16 else 0x7F80
    finite = patterns[(patterns & exp) != exp]
    for words, rc_expected in ((finite, OK), (patterns, ERR_MALFORMED)):
        results = []
        for fn in (lib.scaleml_cast_decode, lib.scaleml_gpuref_cast_decode):
            out = np.full(words.size, 3, dtype)
            assert fn(_u16(words), words.size, fmt, _ptr(out), out.itemsize) == rc_expected
            results.append(out)
        cpu, gpu = results
        nan = np.isnan(cpu)
        assert np.array_equal(nan, np.isnan(gpu))
        assert gpu[~nan].tobytes() == cpu[~nan].tobytes()  # every value decoded, Inf patterns included
    assert rc_expected == ERR_MALFORMED and nan.any()


@pytest.mark.parametrize("fmt", [FP16, BF16])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 1023, 1024, 1025, 100_003])
def test_cast_decode_add_is_decode_then_add(fmt, dtype, n):
    rng = np.random.default_rng(n)
    rc, words = _cast_encode(lib.scaleml_cast_encode, _cast_inputs(n, dtype, seed=n + 1), fmt)
    assert rc == OK
    acc = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 4, n)).astype(dtype)
    decoded = np.empty(n, dtype)
    assert lib.scaleml_cast_decode(_u16(words), n, fmt, _ptr(decoded), decoded.itemsize) == OK
    expected = acc + decoded
    for fn in (lib.scaleml_cast_decode_add, lib.scaleml_gpuref_cast_decode_add):
        a = acc.copy()
        assert fn(_u16(words), n, fmt, _ptr(a), a.itemsize) == OK
        assert a.tobytes() == expected.tobytes()


@pytest.mark.parametrize("fmt", [FP16, BF16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cast_decode_add_of_inf_patterns_adds_all_and_reports_malformed(fmt, dtype):
    words = np.array([0x3C00, 0x7C00 if fmt == FP16 else 0x7F80, 0x0001, 0xBC00] * 300, np.uint16)
    acc = np.linspace(-3, 3, words.size).astype(dtype)
    decoded = np.empty(words.size, dtype)
    assert lib.scaleml_cast_decode(_u16(words), words.size, fmt, _ptr(decoded), decoded.itemsize) == ERR_MALFORMED
    expected = acc + decoded
    for fn in (lib.scaleml_cast_decode_add, lib.scaleml_gpuref_cast_decode_add):
        a = acc.copy()
        assert fn(_u16(words), words.size, fmt, _ptr(a), a.itemsize) == ERR_MALFORMED
        assert a.tobytes() == expected.tobytes()


def test_cast_argument_errors_same_codes():
    x = np.ones(4, np.float32)
    out = np.zeros(4, np.uint16)
    for encode, decode, decode_add in ((lib.scaleml_cast_encode, lib.scaleml_cast_decode, lib.scaleml_cast_decode_add),
                                       (lib.scaleml_gpuref_cast_encode, lib.scaleml_gpuref_cast_decode,
                                        lib.scaleml_gpuref_cast_decode_add)):
        assert encode(_ptr(x), 2, 4, FP16, _u16(out)) == ERR_ARG
        assert encode(_ptr(x), 4, 4, 7, _u16(out)) == ERR_ARG
        assert decode(_u16(out), 4, 7, _ptr(x), 4) == ERR_ARG
        assert decode_add(_u16(out), 4, FP16, _ptr(x), 3) == ERR_ARG

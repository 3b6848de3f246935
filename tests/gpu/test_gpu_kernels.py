"""The CUDA kernels give the CPU kernels' bytes: every method, float32 and float64, sizes 0, 1, 1000, 2^20 + 3.

Each test runs an entry point of ScaleML's CUDA library (``scaleml._cuda.backend().call("scaleml_cuda_X", ...)``,
pointers to device buffers, the current stream last) and the CPU function of the C core
(``scaleml._native.lib``) on the same input and key, then compares the bytes: payloads, residuals, decoded
values. Decode-and-add is checked against decode, then add (numpy's add in the value type, the CPU's rounding).
Under SCALEML_CUDA_EMULATE=1 the "kernels" are the C core's ``scaleml_gpuref_*`` functions on host memory.
"""

from __future__ import annotations

import numpy as np
import pytest

SIZES = [0, 1, 1000, (1 << 20) + 3]
DTYPES = [np.float32, np.float64]
NORM_L2, NORM_MAX, QSGD_FIXED = 0, 1, 0


@pytest.fixture(scope="module")
def core():
    from scaleml._native import ffi, lib

    return ffi, lib


@pytest.fixture(scope="module")
def be(dev):
    from scaleml import _cuda

    return _cuda.backend()


def gradient(n: int, dtype, seed: int, ties: bool = False) -> np.ndarray:
    """Gradient-like values (normal, a few large); ``ties``: on a grid of 1/4, so many magnitudes are equal."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0], size=n, p=[0.3, 0.69, 0.01])
    if ties:
        x = np.round(x * 4) / 4
    return x.astype(dtype)


def vp(core, a: np.ndarray):
    """A ``void *`` to numpy array ``a`` for the C core (any element type)."""
    return core[0].cast("void *", a.ctypes.data)


def cpu_ok(core, rc: int) -> None:
    assert rc == 0, f"CPU kernel failed with code {rc}: {core[0].string(core[1].scaleml_error_message()).decode()}"


def device_values(dev, a: np.ndarray):
    """A device copy of ``a``, at least one element (no NULL pointer for n = 0)."""
    return dev.from_host(a if a.size else np.zeros(1, a.dtype))


def values_bytes(dev, d, n: int, dtype) -> bytes:
    return dev.host_bytes(d, n * np.dtype(dtype).itemsize)


# ---------------------------------------------------------------------------------------------------------- QSGD

QSGD_CASES = [(4, 512, NORM_L2), (2, 128, NORM_MAX), (8, 100, NORM_L2)]  # bits, bucket, norm; 100: not a multiple of 8


@pytest.mark.parametrize("bits,bucket,norm", QSGD_CASES, ids=[f"{b}bit-bucket{k}-{'max' if m else 'l2'}"
                                                             for b, k, m in QSGD_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_qsgd_encode_decode_and_decode_add_give_the_cpus_bytes(dev, be, core, n, dtype, bits, bucket, norm):
    ffi, lib = core
    vb, stream = np.dtype(dtype).itemsize, dev.stream()
    x = gradient(n, dtype, seed=n + bits)
    cap = int(lib.scaleml_qsgd_max_bytes(n, bits, bucket, QSGD_FIXED))
    key = int(lib.scaleml_rng_key(7, 1, 3, 0))
    ref, written = np.zeros(max(cap, 1), np.uint8), ffi.new("size_t *")
    cpu_ok(core, lib.scaleml_qsgd_encode(vp(core, x), vb, n, bits, bucket, norm, QSGD_FIXED, key, vp(core, ref), cap,
                                         written))
    nbytes = int(written[0])

    dx, dmsg, dwritten = device_values(dev, x), dev.empty_bytes(cap), be.new("size_t *")
    be.call("scaleml_cuda_qsgd_encode", dev.ptr(dx), vb, n, bits, bucket, norm, QSGD_FIXED, key, dev.ptr(dmsg), cap,
            dwritten, stream)
    dev.synchronize()
    assert int(dwritten[0]) == nbytes
    assert dev.host_bytes(dmsg, nbytes) == ref[:nbytes].tobytes(), "QSGD payload differs from the CPU's"

    decoded = np.zeros(n, dtype)
    cpu_ok(core, lib.scaleml_qsgd_decode(vp(core, ref), nbytes, n, bits, bucket, QSGD_FIXED, vp(core, decoded), vb))
    dout = device_values(dev, np.full(n, np.nan, dtype))
    be.call("scaleml_cuda_qsgd_decode", dev.ptr(dmsg), nbytes, n, bits, bucket, QSGD_FIXED, dev.ptr(dout), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dout, n, dtype) == decoded.tobytes(), "QSGD decode differs from the CPU's"

    acc = gradient(n, dtype, seed=99)
    expected = acc + decoded
    dacc = device_values(dev, acc)
    be.call("scaleml_cuda_qsgd_decode_add", dev.ptr(dmsg), nbytes, n, bits, bucket, dev.ptr(dacc), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dacc, n, dtype) == expected.tobytes(), "QSGD decode-and-add differs from decode, then add"
    if bucket % 8 == 0:  # the CPU's fused decode-and-add takes buckets of multiples of 8: the same sums
        cpu_acc = acc.copy()
        cpu_ok(core, lib.scaleml_qsgd_decode_add(vp(core, ref), nbytes, n, bits, bucket, vp(core, cpu_acc), vb))
        assert cpu_acc.tobytes() == expected.tobytes()


# --------------------------------------------------------------------------------------------------------- 1-bit

@pytest.mark.parametrize("bucket", [512, 100])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_onebit_encode_encode_sum_decode_and_decode_add_give_the_cpus_bytes(dev, be, core, n, dtype, bucket):
    ffi, lib = core
    vb, stream = np.dtype(dtype).itemsize, dev.stream()
    x = gradient(n, dtype, seed=n + 1)
    cap = int(lib.scaleml_onebit_bytes(n, bucket))

    ref, residual = np.zeros(max(cap, 1), np.uint8), np.zeros(n, dtype)
    cpu_ok(core, lib.scaleml_onebit_encode(vp(core, x), vb, n, bucket, vp(core, ref), cap, vp(core, residual)))
    dx, dmsg, dres = device_values(dev, x), dev.empty_bytes(cap), device_values(dev, np.full(n, np.nan, dtype))
    be.call("scaleml_cuda_onebit_encode", dev.ptr(dx), vb, n, bucket, dev.ptr(dmsg), cap, dev.ptr(dres), stream)
    dev.synchronize()
    assert dev.host_bytes(dmsg, cap) == ref[:cap].tobytes(), "1-bit payload differs from the CPU's"
    assert values_bytes(dev, dres, n, dtype) == residual.tobytes(), "1-bit residual differs from the CPU's"

    # encode of x + addend with the error feedback updated in place (residual = addend)
    addend = gradient(n, dtype, seed=n + 2) * dtype(0.1)
    ref_sum, cpu_addend = np.zeros(max(cap, 1), np.uint8), addend.copy()
    cpu_ok(core, lib.scaleml_onebit_encode_sum(vp(core, x), vp(core, cpu_addend), vb, n, bucket, vp(core, ref_sum), cap,
                                               vp(core, cpu_addend)))
    dadd, dsum = device_values(dev, addend), dev.empty_bytes(cap)
    be.call("scaleml_cuda_onebit_encode_sum", dev.ptr(dx), dev.ptr(dadd), vb, n, bucket, dev.ptr(dsum), cap,
            dev.ptr(dadd), stream)
    dev.synchronize()
    assert dev.host_bytes(dsum, cap) == ref_sum[:cap].tobytes(), "1-bit encode_sum payload differs from the CPU's"
    assert values_bytes(dev, dadd, n, dtype) == cpu_addend.tobytes(), "1-bit encode_sum residual differs"

    decoded = np.zeros(n, dtype)
    cpu_ok(core, lib.scaleml_onebit_decode(vp(core, ref), cap, n, bucket, vp(core, decoded), vb))
    dout = device_values(dev, np.full(n, np.nan, dtype))
    be.call("scaleml_cuda_onebit_decode", dev.ptr(dmsg), cap, n, bucket, dev.ptr(dout), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dout, n, dtype) == decoded.tobytes(), "1-bit decode differs from the CPU's"

    acc = gradient(n, dtype, seed=77)
    expected = acc + decoded
    cpu_acc = acc.copy()
    cpu_ok(core, lib.scaleml_onebit_decode_add(vp(core, ref), cap, n, bucket, vp(core, cpu_acc), vb))
    assert cpu_acc.tobytes() == expected.tobytes()
    dacc = device_values(dev, acc)
    be.call("scaleml_cuda_onebit_decode_add", dev.ptr(dmsg), cap, n, bucket, dev.ptr(dacc), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dacc, n, dtype) == expected.tobytes(), "1-bit decode-and-add differs"


# ------------------------------------------------------------------------------------------------------ fp16/bf16

@pytest.mark.parametrize("fmt", [0, 1], ids=["fp16", "bf16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_casts_both_ways_and_decode_add_give_the_cpus_bytes(dev, be, core, n, dtype, fmt):
    ffi, lib = core
    vb, stream = np.dtype(dtype).itemsize, dev.stream()
    x = gradient(n, dtype, seed=n + 3)
    if n > 10:  # the edges of rounding: fp16's largest values, subnormals, exact halves
        x[:6] = np.array([65504.0, -65519.0, 1e-7, -6e-8, 1.0 + 2.0 ** -11, 3.0 * 2.0 ** -9], dtype)
    ref = np.zeros(max(n, 1), np.uint16)
    cpu_ok(core, lib.scaleml_cast_encode(vp(core, x), vb, n, fmt, vp(core, ref)))
    dx, dhalf = device_values(dev, x), dev.empty_bytes(2 * n)
    be.call("scaleml_cuda_cast_encode", dev.ptr(dx), vb, n, fmt, dev.ptr(dhalf), stream)
    dev.synchronize()
    assert dev.host_bytes(dhalf, 2 * n) == ref[:n].tobytes(), "cast encode differs from the CPU's"

    decoded = np.zeros(n, dtype)
    cpu_ok(core, lib.scaleml_cast_decode(vp(core, ref), n, fmt, vp(core, decoded), vb))
    dout = device_values(dev, np.full(n, np.nan, dtype))
    be.call("scaleml_cuda_cast_decode", dev.ptr(dhalf), n, fmt, dev.ptr(dout), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dout, n, dtype) == decoded.tobytes(), "cast decode differs from the CPU's"

    acc = gradient(n, dtype, seed=55)
    expected = acc + decoded
    dacc = device_values(dev, acc)
    be.call("scaleml_cuda_cast_decode_add", dev.ptr(dhalf), n, fmt, dev.ptr(dacc), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dacc, n, dtype) == expected.tobytes(), "cast decode-and-add differs"


@pytest.mark.parametrize("bad", [70000.0, np.inf, np.nan])
def test_cast_refuses_what_the_cpu_refuses(dev, be, core, bad):
    ffi, lib = core
    x = gradient(1000, np.float32, seed=8)
    x[500] = bad
    ref = np.zeros(1000, np.uint16)
    rc = lib.scaleml_cast_encode(vp(core, x), 4, x.size, 0, vp(core, ref))
    assert rc == 4  # SCALEML_ERR_ARG: NaN, Inf or beyond float16's range
    dx, dhalf = device_values(dev, x), dev.empty_bytes(2 * x.size)
    with pytest.raises(ValueError, match="float16|range|NaN|Inf|finite"):
        be.call("scaleml_cuda_cast_encode", dev.ptr(dx), 4, x.size, 0, dev.ptr(dhalf), dev.stream())
        dev.synchronize()


# ---------------------------------------------------------------------------------------------------------- TopK

@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("approximate", [0, 1], ids=["exact", "sampled"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_topk_selects_what_the_cpu_selects(dev, be, core, n, dtype, approximate, ties):
    ffi, lib = core
    vb, stream = np.dtype(dtype).itemsize, dev.stream()
    x = gradient(n, dtype, seed=n + 4, ties=ties)
    k = max(1, n // 100) if n else 0
    sample, key = 4096, int(lib.scaleml_rng_key(11, 0, 5, 2))
    cap = int(lib.scaleml_topk_bytes(n, vb))
    ref, written, residual = np.zeros(max(cap, 1), np.uint8), ffi.new("size_t *"), np.zeros(n, dtype)
    cpu_ok(core, lib.scaleml_topk_encode(vp(core, x), vb, n, k, approximate, sample, key, vp(core, ref), cap, written,
                                         vp(core, residual)))
    nbytes = int(written[0])

    dx, dmsg, dwritten = device_values(dev, x), dev.empty_bytes(cap), be.new("size_t *")
    dres = device_values(dev, np.full(n, np.nan, dtype))
    be.call("scaleml_cuda_topk_encode", dev.ptr(dx), vb, n, k, approximate, sample, key, dev.ptr(dmsg), cap, dwritten,
            dev.ptr(dres), stream)
    dev.synchronize()
    got = np.frombuffer(dev.host_bytes(dmsg, cap), np.uint8)[:max(int(dwritten[0]), 0)].copy()

    count, index_offset, value_offset = ffi.new("uint64_t *"), ffi.new("size_t *"), ffi.new("size_t *")
    cpu_ok(core, lib.scaleml_topk_layout(vp(core, ref), nbytes, n, vb, count, index_offset, value_offset))
    cpu_idx = ref[index_offset[0]:index_offset[0] + 4 * count[0]].view(np.uint32)
    assert int(dwritten[0]) == nbytes, f"GPU selected a payload of {dwritten[0]} bytes, the CPU {nbytes}"
    gpu_idx = got[index_offset[0]:index_offset[0] + 4 * count[0]].view(np.uint32)
    np.testing.assert_array_equal(gpu_idx, cpu_idx, err_msg="TopK selection differs from the CPU's")
    assert got.tobytes() == ref[:nbytes].tobytes(), "TopK payload differs from the CPU's"
    assert values_bytes(dev, dres, n, dtype) == residual.tobytes(), "TopK residual differs from the CPU's"

    decoded = np.zeros(n, dtype)
    cpu_ok(core, lib.scaleml_topk_decode(vp(core, ref), nbytes, n, vp(core, decoded), vb))
    dout = device_values(dev, np.full(n, np.nan, dtype))
    be.call("scaleml_cuda_topk_decode", dev.ptr(dmsg), nbytes, n, dev.ptr(dout), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dout, n, dtype) == decoded.tobytes(), "TopK decode differs from the CPU's"

    acc = gradient(n, dtype, seed=33)
    expected = acc + decoded
    dacc = device_values(dev, acc)
    be.call("scaleml_cuda_topk_decode_add", dev.ptr(dmsg), nbytes, n, dev.ptr(dacc), vb, stream)
    dev.synchronize()
    assert values_bytes(dev, dacc, n, dtype) == expected.tobytes(), "TopK decode-and-add differs"


# -------------------------------------------------------------------------------------------------------- sparse

@pytest.mark.parametrize("index_bytes", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_sparse_count_extract_and_scatter_add_give_the_cpus_results(dev, be, core, n, dtype, index_bytes):
    ffi, lib = core
    vb, stream = np.dtype(dtype).itemsize, dev.stream()
    rng = np.random.default_rng(n + index_bytes)
    values = np.where(rng.random(n) < 0.05, gradient(n, dtype, seed=n + 5), 0).astype(dtype)
    if n > 10:
        values[3] = -0.0  # a negative zero is not a non-zero
    dvals = device_values(dev, values)

    nnz = int(lib.scaleml_count_nonzeros(vp(core, values), n, vb))
    dcount = be.new("uint64_t *")
    be.call("scaleml_cuda_count_nonzeros", dev.ptr(dvals), n, vb, dcount, stream)
    dev.synchronize()
    assert int(dcount[0]) == nnz

    itype = np.uint32 if index_bytes == 4 else np.uint64
    idx, out = np.zeros(max(nnz, 1), itype), np.zeros(max(nnz, 1), dtype)
    assert int(lib.scaleml_extract_nonzeros(vp(core, values), n, vb, index_bytes, vp(core, idx), vp(core, out), nnz)) \
        == nnz
    didx, dout, dwritten = dev.empty_bytes(nnz * index_bytes), dev.empty_bytes(nnz * vb), be.new("uint64_t *")
    be.call("scaleml_cuda_extract_nonzeros", dev.ptr(dvals), n, vb, index_bytes, dev.ptr(didx), dev.ptr(dout), nnz,
            dwritten, stream)
    dev.synchronize()
    assert int(dwritten[0]) == nnz
    assert dev.host_bytes(didx, nnz * index_bytes) == idx[:nnz].tobytes(), "extracted indices differ"
    assert dev.host_bytes(dout, nnz * vb) == out[:nnz].tobytes(), "extracted values differ"

    # scatter-add of an (index, value) stream (strictly increasing indices, the streams' form) into a dense vector
    count = min(n, 5000)
    positions = np.sort(rng.choice(n, size=count, replace=False)).astype(itype) if n else np.zeros(0, itype)
    adds = gradient(count, dtype, seed=n + 6)
    dense = gradient(n, dtype, seed=n + 7)
    expected = dense.copy()
    expected[positions.astype(np.int64)] += adds
    dpos, dadds, ddense = device_values(dev, positions), device_values(dev, adds), device_values(dev, dense)
    be.call("scaleml_cuda_scatter_add", dev.ptr(dpos), index_bytes, dev.ptr(dadds), vb, count, dev.ptr(ddense), n,
            stream)
    dev.synchronize()
    assert values_bytes(dev, ddense, n, dtype) == expected.tobytes(), "scatter-add differs from the CPU's sum"

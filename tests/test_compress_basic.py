"""Compression: round trips, edge sizes, dtypes, wire format, bad input, error feedback."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml import compress as C

DTYPES = [np.float32, np.float64]


def make_compressors():
    """One instance of every method (ZipML with fixed levels covering N(0,1) draws)."""
    return [
        C.QSGD(bits=4, bucket=64, seed=1),
        C.QSGD(bits=2, bucket=64, format="elias", seed=1),
        C.QSGD(bits=8, bucket=512, norm="max", seed=1),
        C.OneBit(bucket=32),
        C.TopK(ratio=0.1, seed=1),
        C.TopK(ratio=0.1, approximate=True, sample=64, seed=1),
        C.AdaptiveQuant(pi=4, seed=1),
        C.ZipML(np.linspace(-8, 8, 17), seed=1),  # 0 is a level
        C.Cast("fp16"),
        C.Cast("bf16"),
    ]


COMPRESSORS = make_compressors()
IDS = [f"{type(c).__name__}-{i}" for i, c in enumerate(COMPRESSORS)]


@pytest.mark.parametrize("comp", make_compressors(), ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 1000])
def test_round_trip_shapes_and_sizes(comp, dtype, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    c = comp.encode(x)
    y = comp.decode(c)
    assert y.dtype == dtype and y.shape == x.shape
    # The message survives bytes and is decoded identically by the generic decoder.
    c2 = C.Compressed.from_bytes(c.to_bytes())
    assert c2.nbytes == c.nbytes == len(c.to_bytes())
    np.testing.assert_array_equal(C.decode(c2), y)
    if n >= 63:
        # A lossy compressor still keeps the vector's direction on Gaussian data.
        err = np.linalg.norm(y.astype(np.float64) - x) / np.linalg.norm(x)
        assert err < 1.5


@pytest.mark.parametrize("comp", make_compressors(), ids=IDS)
def test_all_zero_vector(comp):
    x = np.zeros(300, dtype=np.float32)
    y = comp.decode(comp.encode(x))
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_shapes_kept(dtype):
    x = np.random.default_rng(0).standard_normal((37, 11)).astype(dtype)
    for comp in make_compressors():
        y = comp.decode(comp.encode(x))
        assert y.shape == (37, 11) and y.dtype == dtype


def test_cast_exactness():
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 100
    c16 = C.Cast("fp16")
    np.testing.assert_array_equal(c16.decode(c16.encode(x)), x.astype(np.float16).astype(np.float32))
    # bfloat16 = float32 with the mantissa rounded to 7 bits, nearest even
    bits = x.view(np.uint32).astype(np.uint64)
    ref = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    cb = C.Cast("bf16")
    np.testing.assert_array_equal(cb.decode(cb.encode(x)), ref)
    # subnormal float16 values round correctly too
    tiny = np.array([1e-7, -3e-6, 6e-5, 2.98e-8], dtype=np.float32)
    np.testing.assert_array_equal(c16.decode(c16.encode(tiny)), tiny.astype(np.float16).astype(np.float32))
    assert c16.encode(x).payload.size == 2 * x.size


@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("pattern", [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFFFFFFF, 0x7FFFFFFF, 0xFF8000FF,
                                     0x7F7F8000, 0xFF7FFFFF])
def test_bf16_rejects_nan_inf_and_overflow_everywhere(n, pattern):
    """NaN (any payload, either sign), Inf and values that round to Inf raise,
    in the vector body and the tail; the largest value that rounds down passes."""
    cb = C.Cast("bf16")
    for pos in {0, n // 2, n - 1}:
        b = np.full(n, 0x3F800000, dtype=np.uint32)
        b[pos] = pattern
        with pytest.raises(ValueError):
            cb.encode(b.view(np.float32))
    ok = np.full(n, 0x7F7F7FFF, dtype=np.uint32).view(np.float32)
    assert np.all(np.isfinite(cb.decode(cb.encode(ok))))


def test_qsgd_fixed_and_elias_agree_and_sizes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000).astype(np.float32)
    for bits in range(1, 9):
        f = C.QSGD(bits=bits, bucket=128, seed=5).encode(x, step=7)
        e = C.QSGD(bits=bits, bucket=128, format="elias", seed=5).encode(x, step=7)
        # Same random stream -> same quantized vector in both wire formats.
        np.testing.assert_array_equal(C.decode(f), C.decode(e))
        nb = math.ceil(5000 / 128)
        assert f.payload.size == math.ceil((5000 * (bits + 1) + 32 * nb) / 8)
    # levels are multiples of norm/s and |Q| <= norm
    q = C.QSGD(bits=3, bucket=5000)
    y = q.decode(q.encode(x)).astype(np.float64)
    norm = np.linalg.norm(x.astype(np.float64))
    lv = np.abs(y) / norm * 7
    np.testing.assert_allclose(lv, np.round(lv), atol=1e-4)
    assert np.all(np.sign(y[y != 0]) == np.sign(x[y != 0]))


def test_qsgd_rounds_to_neighbouring_levels():
    x = np.random.default_rng(4).standard_normal(2048)
    q = C.QSGD(bits=2, bucket=256, norm="max")
    y = q.decode(q.encode(x))
    for b in range(0, 2048, 256):
        v = x[b:b + 256]
        r = np.abs(v) / np.abs(v).max() * 3
        lv = np.abs(y[b:b + 256]) / np.abs(v).max() * 3
        assert np.all((np.abs(lv - np.floor(r)) < 1e-6) | (np.abs(lv - np.ceil(r)) < 1e-6))


def test_reproducible_and_rank_independent():
    x = np.random.default_rng(0).standard_normal(4096)
    a = C.QSGD(bits=2, seed=11, rank=0)
    b = C.QSGD(bits=2, seed=11, rank=0)
    assert a.encode(x).to_bytes() == b.encode(x).to_bytes()  # same (seed, rank, step)
    r1 = C.QSGD(bits=2, seed=11, rank=1)
    assert C.QSGD(bits=2, seed=11, rank=0).encode(x).to_bytes() != r1.encode(x).to_bytes()
    # Explicit step reproduces the internal counter's draw.
    c = C.QSGD(bits=2, seed=11, rank=0)
    c.encode(x)
    second = c.encode(x)
    assert C.QSGD(bits=2, seed=11, rank=0).encode(x, step=1).to_bytes() == second.to_bytes()
    # Uniform streams: keyed by (seed, rank, step), uncorrelated between ranks.
    u0 = C.rng_uniform(1, 0, 0, 100000)
    u1 = C.rng_uniform(1, 1, 0, 100000)
    assert 0 <= u0.min() and u0.max() < 1
    # mean of U(0,1) has sd 1/sqrt(12 n); correlation of independent streams sd 1/sqrt(n)
    assert abs(u0.mean() - 0.5) < 5 / math.sqrt(12 * u0.size)
    assert abs(np.corrcoef(u0, u1)[0, 1]) < 5 / math.sqrt(u0.size)
    np.testing.assert_array_equal(u0, C.rng_uniform(1, 0, 0, 100000))


def test_onebit_means_and_columns():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((50, 7)) + 0.3
    ob = C.OneBit()
    y = ob.decode(ob.encode(m))
    for j in range(7):
        col = m[:, j]
        pos, neg = col[col >= 0].mean(), col[col < 0].mean()
        np.testing.assert_allclose(y[col >= 0, j], np.float32(pos), rtol=1e-6)
        np.testing.assert_allclose(y[col < 0, j], np.float32(neg), rtol=1e-6)
    v = rng.standard_normal(1000)
    ob = C.OneBit(bucket=100)
    y = ob.decode(ob.encode(v))
    for b in range(10):
        s = v[100 * b:100 * (b + 1)]
        np.testing.assert_allclose(y[100 * b:100 * (b + 1)][s < 0], np.float32(s[s < 0].mean()), rtol=1e-6)
    assert ob.encode(v).payload.size == 10 * 8 + 125


def test_topk_exact_and_ready_for_sparse_allreduce():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(10000).astype(np.float32)
    t = C.TopK(k=123)
    c = t.encode(x)
    idx, val = t.entries(c)
    assert idx.dtype == np.uint32 and idx.size == 123 and np.all(np.diff(idx.astype(np.int64)) > 0)
    expect = np.sort(np.argsort(-np.abs(x), kind="stable")[:123])
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_array_equal(val, x[expect])
    # ties: exactly k entries even when many magnitudes are equal
    z = np.zeros(100)
    z[::3] = 1.0
    z[1::3] = -1.0
    idx, _ = C.TopK(k=10).entries(C.TopK(k=10).encode(z))
    assert idx.size == 10 and np.all(np.abs(z[idx]) == 1)
    # k = n sends everything, k = 0 nothing
    assert C.TopK(k=5).entries(C.TopK(k=5).encode(np.arange(5.0)))[0].size == 5
    assert C.TopK(k=0).decode(C.TopK(k=0).encode(x)).any() == False  # noqa: E712
    # the entries feed the sparse AllReduce of main directly (one rank here)
    idx, val = t.entries(c)
    total = scaleml.sparse_allreduce(idx, val, x.size, MPI.COMM_SELF)
    np.testing.assert_array_equal(total, t.decode(c))


def test_topk_approximate_sends_about_k():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(200000)
    t = C.TopK(k=2000, approximate=True, sample=20000)
    idx, val = t.entries(t.encode(x))
    # The threshold is the (ks = 200)-th largest of 20000 sampled magnitudes; the
    # fraction above it is ~ Beta, sd ~ sqrt(p(1-p)/m) = 7e-4 -> 5 sd = 0.0035 (*n = 700).
    assert abs(idx.size - 2000) < 700
    # every entry above the smallest sent magnitude was sent
    thr = np.abs(val).min()
    assert idx.size == np.count_nonzero(np.abs(x) >= thr)


def test_adaptive_wire_format_16_and_32_bit_words():
    rng = np.random.default_rng(7)
    small = rng.standard_normal((100, 9)).astype(np.float32)
    a = C.AdaptiveQuant(pi=4)
    c = a.encode(small)
    off, rec = a.column_table(c)
    words = int(off[-1])
    assert c.payload.size == 8 * (9 + 1) + 8 * 9 + ((2 * words + 7) // 8) * 8  # 16-bit words
    assert 0.15 < words / small.size < 0.35
    tall = rng.standard_normal((40000, 2)).astype(np.float32)
    c = a.encode(tall)
    off, _ = a.column_table(c)
    assert c.payload.size == 8 * 3 + 16 + ((4 * int(off[-1]) + 7) // 8) * 8  # 32-bit words above 32767 rows
    y = a.decode(c)
    assert np.count_nonzero(y) == int(off[-1])


def test_send_receive_as_one_message():
    comm = MPI.COMM_SELF
    x = np.random.default_rng(0).standard_normal(777).astype(np.float32)
    c = C.QSGD(bits=4).encode(x)
    req = comm.Isend([c.buffer, MPI.BYTE], dest=0, tag=5)
    got = C.Compressed.recv(comm, source=0, tag=5)
    req.Wait()
    np.testing.assert_array_equal(C.decode(got), C.decode(c))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("comp", make_compressors(), ids=IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_rejected(comp, bad):
    x = np.ones(100, dtype=np.float32)
    x[37] = bad
    with pytest.raises(ValueError):
        comp.encode(x)


@pytest.mark.parametrize("comp", make_compressors(), ids=IDS)
@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex64, object])
def test_unsupported_dtype(comp, dtype):
    with pytest.raises(TypeError):
        comp.encode(np.ones(10, dtype=dtype))


def test_parameters_out_of_range():
    for bits in (0, 9, -1, 2.5, True):
        with pytest.raises(ValueError):
            C.QSGD(bits=bits)
    for bucket in (0, -3, 2**31 + 1):
        with pytest.raises(ValueError):
            C.QSGD(bucket=bucket)
    with pytest.raises(ValueError):
        C.QSGD(norm="l1")
    with pytest.raises(ValueError):
        C.QSGD(format="huffman")
    x = np.ones(10)
    with pytest.raises(ValueError):
        C.TopK(k=11).encode(x)
    with pytest.raises(ValueError):
        C.TopK(k=-1)
    with pytest.raises(ValueError):
        C.TopK(ratio=1.5)
    for pi in (0.5, 0, -2, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            C.AdaptiveQuant(pi=pi)
    with pytest.raises(ValueError):
        C.AdaptiveQuant().encode(np.ones((2, 2, 2)))
    with pytest.raises(ValueError):
        C.ZipML([0.0])
    with pytest.raises(ValueError):
        C.ZipML([0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        C.ZipML.fit(np.ones(10), s=1)
    with pytest.raises(ValueError):
        C.ZipML.fit(np.array([1.0, np.nan]), s=4)
    with pytest.raises(ValueError):
        C.Cast("fp8")
    with pytest.raises(ValueError):  # beyond float16 range
        C.Cast("fp16").encode(np.array([70000.0], dtype=np.float32))
    with pytest.raises(ValueError):
        C.OneBit(bucket=0)


def test_corrupt_buffers_rejected():
    x = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    c = C.QSGD(bits=4).encode(x)
    raw = c.to_bytes()
    with pytest.raises(C.CorruptBufferError):
        C.decode(raw[:-1])
    with pytest.raises(C.CorruptBufferError):
        C.decode(raw[:10])
    with pytest.raises(C.CorruptBufferError):
        C.decode(b"XXXX" + raw[4:])
    with pytest.raises(ValueError):  # CorruptBufferError is a ValueError
        C.decode(raw + b"\0")
    with pytest.raises(C.CorruptBufferError):
        C.TopK(k=3).decode(c)  # wrong method for this decoder
    # a valid header over a corrupted payload: a NaN norm
    b = bytearray(raw)
    b[c.header_bytes:c.header_bytes + 4] = np.array([np.nan], dtype=np.float32).tobytes()
    with pytest.raises(C.CorruptBufferError, match="norm"):
        C.decode(bytes(b))
    # TopK with indices out of order
    t = C.TopK(k=5).encode(x)
    b = bytearray(t.to_bytes())
    h = t.header_bytes
    b[h + 8:h + 12], b[h + 12:h + 16] = b[h + 12:h + 16], b[h + 8:h + 12]
    with pytest.raises(C.CorruptBufferError, match="order"):
        C.decode(bytes(b))


# ----------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("comp", [C.OneBit(bucket=16), C.TopK(ratio=0.05), C.AdaptiveQuant(pi=8),
                                  C.QSGD(bits=2, bucket=32), C.Cast("bf16")],
                         ids=["onebit", "topk", "adaptive", "qsgd", "bf16"])
def test_error_feedback_telescopes(comp):
    """sum of what was sent over T steps = sum of gradients - final residual (exactly, up to rounding)."""
    rng = np.random.default_rng(9)
    ef = C.ErrorFeedback(comp)
    shape = (40, 25)
    sent = np.zeros(shape)
    grads = np.zeros(shape)
    for _ in range(20):
        g = rng.standard_normal(shape)
        grads += g
        sent += comp.decode(ef.compress("w", g))
    np.testing.assert_allclose(sent + ef.residual("w"), grads, atol=1e-9)
    # the residual stays bounded (error feedback does not blow up)
    assert np.linalg.norm(ef.residual("w")) < 20 * np.linalg.norm(rng.standard_normal(shape))


def test_error_feedback_residual_definitions():
    rng = np.random.default_rng(10)
    x = rng.standard_normal(1000)
    ef = C.ErrorFeedback(C.TopK(ratio=0.01))
    c = ef.compress("a", x)
    r = ef.residual("a")
    idx, _ = C.TopK.entries(c)
    assert np.all(r[idx] == 0) and np.count_nonzero(r) == 990
    # second step: compensated input is x2 + r
    x2 = rng.standard_normal(1000)
    c2 = ef.compress("a", x2)
    np.testing.assert_allclose(C.decode(c2) + ef.residual("a"), x2 + r)
    # tensors are independent by name; shapes must match per name
    ef.compress("b", np.ones(5))
    assert ef.names() == ["a", "b"]
    with pytest.raises(ValueError):
        ef.compress("b", np.ones(6))


def test_error_feedback_set_residual():
    """set_residual replaces (a contiguous copy of) a residual, None drops it; bad dtypes are refused."""
    ef = C.ErrorFeedback(C.TopK(k=1))
    ef.compress("a", np.array([3.0, 1.0, 2.0]))
    np.testing.assert_array_equal(ef.residual("a"), [0.0, 1.0, 2.0])
    strided = np.arange(6.0)[::2]
    ef.set_residual("a", strided)
    assert ef.residual("a").flags.c_contiguous
    np.testing.assert_array_equal(ef.residual("a"), [0.0, 2.0, 4.0])
    c = ef.compress("a", np.array([1.0, 1.0, 1.0]))  # compensated input [1, 3, 5]
    np.testing.assert_array_equal(C.decode(c), [0.0, 0.0, 5.0])
    with pytest.raises(TypeError):
        ef.set_residual("a", np.arange(3))
    ef.set_residual("a", None)
    assert ef.residual("a") is None and ef.names() == []


def test_error_feedback_save_load(tmp_path):
    rng = np.random.default_rng(11)
    grads = [rng.standard_normal((20, 30)) for _ in range(6)]

    def run(ef, gs):
        return [ef.compressor.decode(ef.compress("layer", g)) for g in gs]

    full = run(C.ErrorFeedback(C.QSGD(bits=2, bucket=64, seed=3)), grads)
    ef = C.ErrorFeedback(C.QSGD(bits=2, bucket=64, seed=3))
    first = run(ef, grads[:3])
    ef.save(tmp_path / "ef.npz")
    resumed = C.ErrorFeedback(C.QSGD(bits=2, bucket=64, seed=3))
    resumed.load(tmp_path / "ef.npz")
    np.testing.assert_array_equal(resumed.residual("layer"), ef.residual("layer"))
    rest = run(resumed, grads[3:])
    for a, b in zip(full, first + rest):
        np.testing.assert_array_equal(a, b)  # resumed run is bit-identical
    # a run that lost its residuals differs
    lost = C.ErrorFeedback(C.QSGD(bits=2, bucket=64, seed=3))
    lost.compressor.step = 3
    assert not np.array_equal(run(lost, grads[3:4])[0], rest[0])


@pytest.mark.parametrize("kind", ["gauss", "ties", "sparse", "small-k", "large-k", "all-k", "equal", "ascending",
                                  "descending", "wide-range", "odd-n", "two-values", "no-k"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_exact_large_matches_sort(kind, dtype):
    """Large n goes through the sampled-candidate path (and its radix fallback); the
    result must equal the top k of a full sort, ties going to the lower index."""
    rng = np.random.default_rng(len(kind))
    n = 300000
    x = rng.standard_normal(n)
    k = 3000
    if kind == "ties":
        x = np.round(x * 4) / 4
    elif kind == "sparse":
        x[rng.random(n) < 0.995] = 0
    elif kind == "small-k":
        k = 1
    elif kind == "large-k":
        k = n // 2
    elif kind == "all-k":
        k = n
    elif kind == "no-k":
        k = 0
    elif kind == "equal":
        x = np.full(n, -1.5)
    elif kind == "ascending":
        x = np.arange(n) * 1e-3
    elif kind == "descending":
        x = -np.arange(n, 0, -1) * 1e-3
    elif kind == "wide-range":
        x = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-30, 30, n)
    elif kind == "odd-n":
        n, k = 300007, 2999
        x = rng.standard_normal(n)
    elif kind == "two-values":
        x = np.where(rng.random(n) < 0.02, 2.0, 1.0) * rng.choice([-1.0, 1.0], n)
    x = x.astype(dtype)
    t = C.TopK(k=k, seed=3)
    c, res = t.encode_with_residual(x)
    idx, val = t.entries(c)
    expect = np.sort(np.lexsort((np.arange(n), -np.abs(x)))[:k])
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_array_equal(val, x[expect])
    r = x.copy()
    r[expect] = 0
    np.testing.assert_array_equal(res, r)


def test_decode_into_out():
    x = np.random.default_rng(0).standard_normal((30, 7)).astype(np.float32)
    for comp in make_compressors():
        c = comp.encode(x)
        out = np.full(x.shape, 7.0, dtype=np.float32)
        got = comp.decode(c, out=out)
        assert got is out
        np.testing.assert_array_equal(out, C.decode(c))
        with pytest.raises(TypeError):
            comp.decode(c, out=np.empty(x.shape, dtype=np.float64))
        with pytest.raises(ValueError):
            comp.decode(c, out=np.empty((7, 30), dtype=np.float32))
        with pytest.raises(ValueError):
            comp.decode(c, out=np.empty((30, 14), dtype=np.float32)[:, ::2])


_SIMD_SCRIPT = """
import sys
import numpy as np
from scaleml import compress as C
from scaleml.dense_scan import scan_nonzeros

def run():
    rng = np.random.default_rng(7)
    out = {}
    for density in (0.001, 0.01, 0.3, 1.0):  # the drop-in's scan (AVX-512 for float32 with uint32 positions)
        x = np.where(rng.random(70001) < density, rng.standard_normal(70001), 0).astype(np.float32)
        x[rng.random(x.size) < 0.01] = -0.0
        for capacity in (x.size, x.size // 50, 0):
            nnz, negative_zeros, nonzeros = scan_nonzeros(x, capacity, np.dtype(np.uint32))
            parts = [np.array([nnz, negative_zeros], np.uint64).view(np.uint8)]
            if nonzeros is not None:
                parts += [nonzeros[0].view(np.uint8), nonzeros[1].view(np.uint8)]
            out[f"scan-{density}-{capacity}"] = np.concatenate(parts)
    for n in (0, 7, 1000, 4099, 100003):
        for dtype in (np.float32, np.float64):
            x = (rng.standard_normal(n) * 3).astype(dtype)
            m = x[: (n // 7) * 7].reshape(-1, 7) if n >= 7 else x.reshape(-1, 1)
            comps = {
                **{f"qsgd{b}": C.QSGD(bits=b, bucket=64, seed=1, rank=0) for b in range(1, 9)},
                "qsgd-odd": C.QSGD(bits=3, bucket=50, seed=1, rank=0),
                "onebit": C.OneBit(bucket=40), "onebit-96": C.OneBit(bucket=96),
                "topk": C.TopK(ratio=0.1, seed=1, rank=0),
                "topk-1pct": C.TopK(ratio=0.01, seed=1, rank=0),
                "topk-approx": C.TopK(ratio=0.01, approximate=True, sample=2048, seed=1, rank=0),
                "fp16": C.Cast("fp16"), "bf16": C.Cast("bf16"),
                "zipml": C.ZipML([-5, -1, -0.3, 0, 0.2, 0.9, 5], seed=1, rank=0),
                "zipml-uniform": C.ZipML(np.linspace(-9, 9, 256), seed=1, rank=0),
                "zipml-tiny-gap": C.ZipML([-5, 0, 1e-6, 5], seed=1, rank=0),
            }
            for name, comp in comps.items():
                c, res = comp.encode_with_residual(x, step=3)
                out[f"{name}-{n}-{dtype.__name__}"] = np.concatenate(
                    [np.frombuffer(c.to_bytes(), np.uint8), C.decode(c).view(np.uint8).ravel(),
                     res.view(np.uint8).ravel()])
            a = C.AdaptiveQuant(pi=3, seed=1, rank=0)
            c, res = a.encode_with_residual(m, step=3)
            out[f"adaptive-{n}-{dtype.__name__}"] = np.concatenate(
                [np.frombuffer(c.to_bytes(), np.uint8), res.view(np.uint8).ravel()])
    return out

if __name__ == "__main__":
    np.savez(sys.argv[1], **run())
"""


def test_portable_and_simd_paths_agree(tmp_path):
    """The hand-written SIMD paths (AVX2, BMI2, F16C, AVX-512F) give the same bytes as the
    portable code, which a subprocess forces with SCALEML_NO_SIMD=1."""
    import os
    import subprocess
    import sys

    script = tmp_path / "simd_case.py"
    script.write_text(_SIMD_SCRIPT)
    env = dict(os.environ, SCALEML_NO_SIMD="1")
    subprocess.run([sys.executable, str(script), str(tmp_path / "portable.npz")], env=env, check=True)
    namespace: dict = {}
    exec(compile(_SIMD_SCRIPT, "simd_case", "exec"), namespace)
    here = namespace["run"]()
    with np.load(tmp_path / "portable.npz") as portable:
        assert sorted(portable.files) == sorted(here)
        for k in here:
            np.testing.assert_array_equal(portable[k], here[k], err_msg=k)


_MPI_SCRIPT = """
import numpy as np
from mpi4py import MPI
from scaleml import compress as C

comm = MPI.COMM_WORLD
x = np.random.default_rng(5).standard_normal(10000).astype(np.float32)
q = C.QSGD(bits=3, bucket=256, seed=9)  # rank taken from COMM_WORLD
mine = q.encode(x, step=0)
if comm.rank == 0:
    mine.send(comm, dest=1, tag=3)
    other = C.Compressed.recv(comm, source=1, tag=4)
else:
    other = C.Compressed.recv(comm, source=0, tag=3)
    mine.send(comm, dest=0, tag=4)
# the received message decodes to what the sender's generator produces
peer = C.QSGD(bits=3, bucket=256, seed=9, rank=1 - comm.rank).encode(x, step=0)
assert other.to_bytes() == peer.to_bytes()
# ranks draw independent numbers: same input, same step, different quantization
assert mine.to_bytes() != other.to_bytes()
# one writer: hydra may interleave the bytes of two ranks' output
statuses = comm.gather(f"ok {comm.rank}")
if comm.rank == 0:
    print(*statuses, sep=chr(10))
"""


def test_two_ranks_exchange_messages(tmp_path):
    """One MPI message per compressed tensor between two processes (mpiexec -n 2)."""
    import os
    import shutil
    import subprocess
    import sys

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    script = tmp_path / "two_ranks.py"
    script.write_text(_MPI_SCRIPT)
    out = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(out.stdout.split()) == ["0", "1", "ok", "ok"]

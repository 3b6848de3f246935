"""The GPU decomposition of TopK and the sparse scans, emulated on the host, gives the CPU kernels' results.

``scaleml_gpuref_*`` (csrc/arith/topk_gpuref.c, csrc/arith/sparse_gpuref.c) run the phases of
csrc/cuda/topk.cu and csrc/cuda/sparse.cu (radix select, tile counts and their prefix sums, the ordered
compaction) with the shared arithmetic of csrc/arith/topk.h and csrc/arith/sparse.h; the CPU kernels are
scaleml_topk_encode/decode and scaleml_count_nonzeros/_signed/scaleml_extract_nonzeros. The tile of the
compaction is 4096 elements, so sizes around 4096 cross tile edges.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaleml._native import ffi, lib

OK, ERR_MALFORMED, ERR_ARG, ERR_TOO_LARGE = 0, 3, 4, 5
TILE = 4096
SIZES = [0, 1, 7, TILE - 1, TILE, TILE + 1, 3 * TILE + 5, 10_000]
LARGE = [100_000, 131_075]
KINDS = ["normal", "zeros", "ties", "denormal"]
RNG_KEY = 0x5CA1E_0001_2345


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.itemsize == 4 else np.uint64)


def _input(kind: str, n: int, dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, n, KINDS.index(kind), np.dtype(dtype).itemsize])
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "zeros":
        x = np.where(rng.random(n) < 0.1, rng.standard_normal(n), 0.0)
        x[rng.random(n) < 0.05] = -0.0
    elif kind == "ties":
        x = rng.choice(np.array([-2.0, -1.0, -0.0, 0.0, 1.0, 2.0, 0.5]), n)
    else:
        tiny = np.finfo(dtype).tiny
        x = rng.choice(np.array([0.0, -0.0, tiny / 2, -tiny / 4, tiny / 8, 1.0, -3.0]), n,
                       p=[0.3, 0.1, 0.2, 0.2, 0.17, 0.02, 0.01])
    x = x.astype(dtype)
    if kind == "denormal" and n:
        x[n // 2] = np.finfo(dtype).tiny / 2
        assert np.any((x != 0) & (np.abs(x) < np.finfo(dtype).tiny))
    return x


def _k_values(n: int) -> list[int]:
    return sorted({k for k in (0, 1, n // 100 + 1, n // 3, n - 1, n) if 0 <= k <= n})


def _modes(n: int) -> list[tuple[int, int]]:
    """(approximate, sample): exact, and sampled thresholds incl. sample >= n (the exact path)."""
    return [(0, 0), (1, 1), (1, 64), (1, 1000), (1, max(n, 1)), (1, n + 5)]


def _encode(fn, x: np.ndarray, k: int, approximate: int, sample: int, residual: str | None,
            cap: int | None = None) -> tuple[int, bytes, int, np.ndarray | None]:
    """(rc, payload, written, residual) of one encoder; residual None, "separate" or "inplace"."""
    x = x.copy()
    count_bound = x.size if approximate else k
    cap = lib.scaleml_topk_bytes(count_bound, x.itemsize) if cap is None else cap
    out = np.full(max(cap, 1), 0xAB, np.uint8)
    written = ffi.new("size_t *")
    if residual is None:
        res, res_ptr = None, ffi.NULL
    elif residual == "separate":
        res = np.full_like(x, 7.0)
        res_ptr = ffi.from_buffer(res, require_writable=True)
    else:
        res = x
        res_ptr = ffi.from_buffer(x, require_writable=True)
    rc = fn(ffi.from_buffer(x), x.itemsize, x.size, k, approximate, sample, RNG_KEY, ffi.from_buffer(out), cap,
            written, res_ptr)
    payload = out[:written[0]].tobytes() if rc == OK else b""
    return rc, payload, int(written[0]), (None if res is None else res.copy())


def _assert_same_encode(x: np.ndarray, k: int, approximate: int, sample: int, residual: str | None) -> None:
    what = f"n={x.size} dtype={x.dtype} k={k} approximate={approximate} sample={sample} residual={residual}"
    cpu = _encode(lib.scaleml_topk_encode, x, k, approximate, sample, residual)
    gpu = _encode(lib.scaleml_gpuref_topk_encode, x, k, approximate, sample, residual)
    assert cpu[0] == OK, what
    assert gpu[0] == cpu[0], what
    assert gpu[2] == cpu[2], what
    assert gpu[1] == cpu[1], what
    if residual is not None:
        np.testing.assert_array_equal(_bits(gpu[3]), _bits(cpu[3]), err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_topk_encode_payload_and_residual_match_the_cpu(dtype, kind, n):
    x = _input(kind, n, dtype, 1)
    for k in _k_values(n):
        for approximate, sample in _modes(n):
            if k == 0 and approximate and sample > 1:
                continue  # k = 0 ignores the mode
            _assert_same_encode(x, k, approximate, sample, None)
    k = n // 3
    for approximate, sample in [(0, 0), (1, 64)]:
        _assert_same_encode(x, k, approximate, sample, "separate")
        _assert_same_encode(x, k, approximate, sample, "inplace")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", LARGE)
def test_topk_encode_large_inputs_match_the_cpu(dtype, kind, n):
    """Large enough for the CPU's sampled-candidate path (n >= 8 * 8192) and many tiles."""
    x = _input(kind, n, dtype, 2)
    for k in (1, 100, n // 100, n // 10, n // 2):
        _assert_same_encode(x, k, 0, 0, "inplace")
        for sample in (256, 8192):
            _assert_same_encode(x, k, 1, sample, "separate")


def test_topk_ties_take_the_lowest_indices():
    x = np.array([1, -3, 3, 0, -3, 3, 2, -3], np.float32)
    rc, payload, _, _ = _encode(lib.scaleml_gpuref_topk_encode, x, 4, 0, 0, None)
    assert rc == OK
    count = int(np.frombuffer(payload[:8], np.uint64)[0])
    idx = np.frombuffer(payload[8:8 + 4 * count], np.uint32)
    assert count == 4 and list(idx) == [1, 2, 4, 5]
    _assert_same_encode(x, 4, 0, 0, "separate")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n, at", [(1, 0), (7, 6), (TILE + 1, TILE), (100_000, 77_777)])
def test_topk_non_finite_input_is_the_same_error(dtype, bad, n, at):
    x = _input("normal", n, dtype, 3)
    x[at] = bad
    for k in sorted({0, 1, n // 2, n}):
        for approximate, sample in [(0, 0), (1, 16), (1, n + 1)]:
            for residual in (None, "inplace"):
                cpu = _encode(lib.scaleml_topk_encode, x, k, approximate, sample, residual)
                gpu = _encode(lib.scaleml_gpuref_topk_encode, x, k, approximate, sample, residual)
                assert cpu[0] == ERR_ARG and gpu[0] == ERR_ARG, (k, approximate, sample)
                if residual is not None:  # nothing written on error
                    np.testing.assert_array_equal(_bits(gpu[3]), _bits(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_bad_arguments_and_small_capacity_are_the_same_errors(dtype):
    x = _input("normal", 1000, dtype, 4)
    for k, approximate, sample in [(1001, 0, 0), (5, 1, 0)]:
        assert _encode(lib.scaleml_topk_encode, x, k, approximate, sample, None, cap=100_000)[0] == ERR_ARG
        assert _encode(lib.scaleml_gpuref_topk_encode, x, k, approximate, sample, None, cap=100_000)[0] == ERR_ARG
    for k, approximate, sample in [(0, 0, 0), (10, 0, 0), (10, 1, 64)]:
        cpu = _encode(lib.scaleml_topk_encode, x, k, approximate, sample, "separate", cap=7)
        gpu = _encode(lib.scaleml_gpuref_topk_encode, x, k, approximate, sample, "separate", cap=7)
        assert cpu[0] == gpu[0] == ERR_TOO_LARGE
        assert gpu[2] == cpu[2] > 7  # the size needed
        np.testing.assert_array_equal(gpu[3], np.full_like(x, 7.0))  # residual untouched
    out = np.zeros(16, np.uint8)
    written = ffi.new("size_t *")
    assert lib.scaleml_gpuref_topk_encode(ffi.from_buffer(x), 2, x.size, 1, 0, 0, 0, ffi.from_buffer(out), 16,
                                          written, ffi.NULL) == ERR_ARG


def _decode(fn, payload: bytes, n: int, dtype: type, acc: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    buf = np.frombuffer(payload, np.uint8) if payload else np.zeros(1, np.uint8)
    out = np.full(n, 9.0, dtype) if acc is None else acc.copy()
    rc = fn(ffi.from_buffer(buf), len(payload), n, ffi.from_buffer(out, require_writable=True),
            np.dtype(dtype).itemsize)
    return rc, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES + [100_000])
def test_topk_decode_and_decode_add_match_the_cpu(dtype, n):
    x = _input("zeros", n, dtype, 5)
    rng = np.random.default_rng(n)
    acc = rng.standard_normal(n).astype(dtype)  # no -0.0: decode then add leaves every other entry as it is
    for k in _k_values(n):
        rc, payload, _, _ = _encode(lib.scaleml_topk_encode, x, k, 0, 0, None)
        assert rc == OK
        cpu_rc, cpu = _decode(lib.scaleml_topk_decode, payload, n, dtype)
        gpu_rc, gpu = _decode(lib.scaleml_gpuref_topk_decode, payload, n, dtype)
        assert cpu_rc == gpu_rc == OK
        np.testing.assert_array_equal(_bits(gpu), _bits(cpu))
        add_rc, added = _decode(lib.scaleml_gpuref_topk_decode_add, payload, n, dtype, acc)
        assert add_rc == OK
        np.testing.assert_array_equal(_bits(added), _bits(acc + cpu))


def test_topk_decode_add_leaves_unsent_entries_untouched():
    """Not decode-then-add bit for bit on -0.0: an entry no index names keeps its -0.0 (as the CPU's sparse sum)."""
    x = np.array([0, 5, 0, 0], np.float32)
    _, payload, _, _ = _encode(lib.scaleml_topk_encode, x, 1, 0, 0, None)
    acc = np.array([-0.0, 1.0, -0.0, 2.0], np.float32)
    rc, added = _decode(lib.scaleml_gpuref_topk_decode_add, payload, 4, np.float32, acc)
    assert rc == OK
    assert list(added) == [0, 6, 0, 2] and np.signbit(added[0]) and np.signbit(added[2])


def _malformed_payloads(dtype: type) -> list[tuple[str, bytes, int]]:
    vb = np.dtype(dtype).itemsize
    n = 100

    def payload(idx: list[int], vals: list[float], count: int | None = None) -> bytes:
        c = len(idx) if count is None else count
        pad = (-4 * len(idx)) % 8
        return (np.uint64(c).tobytes() + np.array(idx, np.uint32).tobytes() + bytes(pad)
                + np.array(vals, dtype).tobytes())

    good = payload([1, 5, 9], [1.0, -2.0, 3.0])
    assert len(good) == 8 + 16 + 3 * vb
    return [
        ("valid", good, n),
        ("empty valid", payload([], []), n),
        ("truncated", good[:5], n),
        ("count too large", payload([1, 5, 9], [1.0, -2.0, 3.0], count=4), n),
        ("count beyond n", payload([0, 1, 2], [1.0, 1.0, 1.0]), 2),
        ("index out of range", payload([1, 5, 100], [1.0, -2.0, 3.0]), n),
        ("index repeated", payload([1, 5, 5], [1.0, -2.0, 3.0]), n),
        ("index decreasing", payload([1, 9, 5], [1.0, -2.0, 3.0]), n),
        ("NaN value", payload([1, 5, 9], [1.0, float("nan"), 3.0]), n),
        ("Inf value", payload([1, 5, 9], [1.0, float("inf"), 3.0]), n),
        ("extra byte", good + b"\0", n),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_malformed_payloads_are_rejected_alike(dtype):
    for what, payload, n in _malformed_payloads(dtype):
        expected = OK if what.endswith("valid") else ERR_MALFORMED
        cpu_rc, cpu = _decode(lib.scaleml_topk_decode, payload, n, dtype)
        gpu_rc, gpu = _decode(lib.scaleml_gpuref_topk_decode, payload, n, dtype)
        acc = np.arange(n, dtype=dtype)
        add_rc, added = _decode(lib.scaleml_gpuref_topk_decode_add, payload, n, dtype, acc)
        assert cpu_rc == gpu_rc == add_rc == expected, what
        if expected == OK:
            np.testing.assert_array_equal(gpu, cpu)
        else:  # nothing written on error
            np.testing.assert_array_equal(gpu, np.full(n, 9.0, dtype))
            np.testing.assert_array_equal(added, acc)


# ---- sparse scans ----

def _sparse_input(kind: str, n: int, dtype: type, seed: int) -> np.ndarray:
    x = _input(kind, n, dtype, seed)
    if n > 3:
        x[:3] = [np.nan, -np.inf, -0.0]  # NaN and Inf are non-zeros, -0.0 is not
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES + LARGE + [65_537])
def test_counts_match_the_cpu(dtype, kind, n):
    x = _sparse_input(kind, n, dtype, 6)
    count = ffi.new("uint64_t *")
    negative = ffi.new("uint64_t *")
    assert lib.scaleml_gpuref_count_nonzeros(ffi.from_buffer(x), n, x.itemsize, count) == OK
    assert count[0] == lib.scaleml_count_nonzeros(ffi.from_buffer(x), n, x.itemsize) == np.count_nonzero(x)
    cpu_negative = ffi.new("uint64_t *")
    cpu_count = lib.scaleml_count_nonzeros_signed(ffi.from_buffer(x), n, x.itemsize, cpu_negative)
    assert lib.scaleml_gpuref_count_nonzeros_signed(ffi.from_buffer(x), n, x.itemsize, count, negative) == OK
    assert count[0] == cpu_count
    assert negative[0] == cpu_negative[0] == np.count_nonzero((x == 0) & np.signbit(x))


def _extract(fn, x: np.ndarray, index_bytes: int, capacity: int) -> tuple[int, np.ndarray, np.ndarray]:
    idx = np.full(max(capacity, 1), 0xEE, np.uint32 if index_bytes == 4 else np.uint64)
    vals = np.full(max(capacity, 1), 5.0, x.dtype)
    args = (ffi.from_buffer(x), x.size, x.itemsize, index_bytes, ffi.from_buffer(idx, require_writable=True),
            ffi.from_buffer(vals, require_writable=True), capacity)
    if fn is lib.scaleml_extract_nonzeros:
        written = fn(*args)
    else:
        w = ffi.new("uint64_t *")
        assert fn(*args, w) == OK
        written = w[0]
    return int(written), idx[:written], vals[:written]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES + LARGE)
def test_extract_matches_the_cpu(dtype, kind, n):
    x = _sparse_input(kind, n, dtype, 7)
    nnz = int(np.count_nonzero(x))
    for index_bytes in (4, 8):
        for capacity in sorted({0, 1, nnz // 2, max(nnz - 1, 0), nnz, nnz + 10}):
            cpu = _extract(lib.scaleml_extract_nonzeros, x, index_bytes, capacity)
            gpu = _extract(lib.scaleml_gpuref_extract_nonzeros, x, index_bytes, capacity)
            assert gpu[0] == cpu[0] == min(nnz, capacity), (index_bytes, capacity)
            np.testing.assert_array_equal(gpu[1], cpu[1])
            np.testing.assert_array_equal(_bits(gpu[2]), _bits(cpu[2]))


def _scatter_add(indices: np.ndarray, values: np.ndarray, dense: np.ndarray) -> tuple[int, np.ndarray]:
    out = dense.copy()
    idx = indices if indices.size else np.zeros(1, indices.dtype)
    vals = values if values.size else np.zeros(1, values.dtype)
    rc = lib.scaleml_gpuref_scatter_add(ffi.from_buffer(idx), indices.itemsize, ffi.from_buffer(vals),
                                        values.itemsize, indices.size, ffi.from_buffer(out, require_writable=True),
                                        out.size)
    return rc, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("n", [1, 7, TILE + 1, 100_000])
def test_scatter_add_is_dense_plus_the_entries(dtype, index_dtype, n):
    rng = np.random.default_rng([n, np.dtype(dtype).itemsize, np.dtype(index_dtype).itemsize])
    dense = rng.standard_normal(n).astype(dtype)
    for nnz in sorted({0, 1, n // 3, n}):
        indices = np.sort(rng.choice(n, nnz, replace=False)).astype(index_dtype)
        values = rng.standard_normal(nnz).astype(dtype)
        rc, out = _scatter_add(indices, values, dense)
        assert rc == OK
        expected = dense.copy()
        expected[indices] += values  # unique indices: one IEEE add each, as the CPU's scatter_add
        np.testing.assert_array_equal(_bits(out), _bits(expected))
        # the same sum through the CPU: decode a TopK payload of these entries, then add
        if index_dtype is np.uint32 and nnz:
            pad = (-4 * nnz) % 8
            payload = np.uint64(nnz).tobytes() + indices.tobytes() + bytes(pad) + values.tobytes()
            cpu_rc, decoded = _decode(lib.scaleml_topk_decode, payload, n, dtype)
            assert cpu_rc == OK
            np.testing.assert_array_equal(_bits(out), _bits(dense + decoded))


@pytest.mark.parametrize("index_dtype", [np.uint32, np.uint64])
def test_scatter_add_rejects_bad_index_streams(index_dtype):
    dense = np.arange(10, dtype=np.float32)
    values = np.ones(3, np.float32)
    for indices in ([1, 5, 10], [1, 5, 5], [4, 2, 8], [0, 0, 1]):
        rc, out = _scatter_add(np.array(indices, index_dtype), values, dense)
        assert rc == ERR_MALFORMED, indices
        np.testing.assert_array_equal(out, dense)  # nothing added
    rc, out = _scatter_add(np.array([0, 4, 9], index_dtype), values, dense)
    assert rc == OK and list(out) == [1, 1, 2, 3, 5, 5, 6, 7, 8, 10]
    assert lib.scaleml_gpuref_scatter_add(ffi.from_buffer(np.zeros(1, index_dtype)), 2, ffi.from_buffer(values), 4, 1,
                                          ffi.from_buffer(dense, require_writable=True), 10) == ERR_ARG

"""Scanning dense vectors for non-zeros (the drop-in's first step), against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from scaleml._native import ffi, lib
from scaleml.dense_scan import ScanScratch, count_nonzeros, count_nonzeros_signed, extract_nonzeros, scan_nonzeros


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 1000, 4099])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_matches_numpy(dtype, n, density):
    rng = np.random.default_rng([n, int(density * 100)])
    x = np.where(rng.random(n) < density, rng.standard_normal(n), 0).astype(dtype)
    k = count_nonzeros(x)
    assert k == np.count_nonzero(x)
    for idx_dtype in (np.dtype(np.uint32), np.dtype(np.uint64)):
        idx, vals = extract_nonzeros(x, k, idx_dtype)
        assert idx.dtype == idx_dtype and vals.dtype == dtype
        np.testing.assert_array_equal(idx, np.flatnonzero(x))
        np.testing.assert_array_equal(vals, x[np.flatnonzero(x)])


def test_nan_is_kept_and_negative_zero_is_not():
    x = np.zeros(100, np.float32)
    x[3], x[50], x[99] = np.nan, -0.0, np.inf
    assert count_nonzeros(x) == 2
    idx, vals = extract_nonzeros(x, 2, np.dtype(np.uint32))
    assert list(idx) == [3, 99] and np.isnan(vals[0]) and np.isinf(vals[1])


def test_capacity_is_respected():
    x = np.ones(100, np.float64)
    idx, vals = extract_nonzeros(x, 10, np.dtype(np.uint32))
    assert list(idx) == list(range(10)) and vals.size == 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 31, 65535, 65536, 65537, 200003])
def test_signed_count_separates_negative_zeros(dtype, n):
    rng = np.random.default_rng(n)
    x = np.where(rng.random(n) < 0.1, rng.standard_normal(n), 0).astype(dtype)
    x[rng.random(n) < 0.05] = -0.0
    if n > 3:
        x[:3] = [np.nan, -np.inf, np.finfo(dtype).tiny / 2]  # NaN, Inf and a subnormal are non-zeros
    nnz, negative_zeros = count_nonzeros_signed(x)
    assert nnz == count_nonzeros(x) == np.count_nonzero(x)
    assert negative_zeros == int(np.count_nonzero((x == 0) & np.signbit(x)))
    assert count_nonzeros_signed(np.abs(x))[1] == 0  # +0.0 is not a negative zero


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 1000, 4099])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_scan_counts_and_extracts_in_one_pass(dtype, n, density):
    rng = np.random.default_rng([n, int(density * 100), 1])
    x = np.where(rng.random(n) < density, rng.standard_normal(n), 0).astype(dtype)
    x[rng.random(n) < 0.05] = -0.0
    if n > 40:
        x[[7, 33, 40]] = [np.nan, -np.inf, np.finfo(dtype).tiny / 2]
    positions = np.flatnonzero(x)
    for idx_dtype in (np.dtype(np.uint32), np.dtype(np.uint64)):
        for capacity in (positions.size, positions.size + 40, max(positions.size - 1, 0), 0):
            nnz, negative_zeros, nonzeros = scan_nonzeros(x, capacity, idx_dtype)
            assert (nnz, negative_zeros) == count_nonzeros_signed(x)
            if capacity < positions.size:
                assert nonzeros is None
                continue
            idx, vals = nonzeros
            assert idx.dtype == idx_dtype and vals.dtype == dtype
            np.testing.assert_array_equal(idx, positions)
            np.testing.assert_array_equal(vals.view(np.uint8), x[positions].view(np.uint8))  # NaN, -Inf alike


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_across_density_changes_and_capacity_cuts(dtype):
    """Long stretches of different densities (the AVX-512 path of float32 with uint32 positions switches,
    chunk by chunk, between skipping empty vectors and branch-free stores), with capacities that run out
    anywhere: the stored entries are always the first non-zeros, the counts always whole."""
    rng = np.random.default_rng(11)
    n = 60_013
    density = np.repeat([0.0005, 0.3, 0.004, 1.0, 0.0, 0.02, 0.6], -(-n // 7))[:n]
    x = np.where(rng.random(n) < density, rng.standard_normal(n), 0).astype(dtype)
    x[rng.random(n) < 0.01] = -0.0
    x[[100, 20_000, 45_000]] = [np.nan, np.finfo(dtype).tiny / 2, -np.inf]  # NaN and a subnormal count
    positions = np.flatnonzero(x)
    expected = count_nonzeros_signed(x)
    for idx_dtype in (np.dtype(np.uint32), np.dtype(np.uint64)):
        for capacity in (positions.size, positions.size + 5000, positions.size - 1, positions.size // 3, 1500,
                         1023, 0):
            idx = np.full(capacity + 17, 7, idx_dtype)  # guard slots: nothing is written past the capacity
            vals = np.full(capacity + 17, 7, dtype)
            negative, extracted = ffi.new("uint64_t *"), ffi.new("uint64_t *")
            nnz = lib.scaleml_scan_nonzeros(ffi.from_buffer(x), n, x.itemsize, idx.itemsize,
                                            ffi.from_buffer(idx, require_writable=True),
                                            ffi.from_buffer(vals, require_writable=True), capacity, negative,
                                            extracted)
            assert (nnz, negative[0]) == expected
            k = extracted[0]
            assert k == min(capacity, positions.size)
            np.testing.assert_array_equal(idx[:k], positions[:k])
            np.testing.assert_array_equal(vals[:k].view(np.uint8), x[positions[:k]].view(np.uint8))
            assert (idx[capacity:] == 7).all() and (vals[capacity:] == 7).all()


def test_scan_into_kept_scratch_matches_fresh_arrays():
    """One ScanScratch over calls of growing and shrinking capacity, value and index types: the same entries
    as fresh arrays, in aligned views of its memory."""
    rng = np.random.default_rng(3)
    scratch = ScanScratch()
    for n, density, dtype, idx_dtype, share in [(5001, 0.01, np.float32, np.uint32, 16), (5001, 0.01, np.float32,
                                                np.uint32, 4), (70001, 0.3, np.float64, np.uint32, 3),
                                               (333, 1.0, np.float64, np.uint64, 1), (99, 0.5, np.float32,
                                                np.uint64, 7), (70001, 0.3, np.float32, np.uint32, 256)]:
        x = np.where(rng.random(n) < density, rng.standard_normal(n), 0).astype(dtype)
        capacity = n // share
        fresh = scan_nonzeros(x, capacity, np.dtype(idx_dtype))
        kept = scan_nonzeros(x, capacity, np.dtype(idx_dtype), scratch)
        assert fresh[:2] == kept[:2]
        assert (fresh[2] is None) == (kept[2] is None)
        if kept[2] is not None:
            for a, b in zip(fresh[2], kept[2]):
                assert a.dtype == b.dtype and b.flags.aligned
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("idx_dtype", [np.uint32, np.uint64, np.int32, np.int64])
def test_indices_increasing_is_the_canonical_form_check(idx_dtype):
    def increasing(idx, bound):
        idx = np.ascontiguousarray(idx, dtype=idx_dtype)
        return bool(lib.scaleml_indices_increasing(ffi.from_buffer(idx), idx.size, idx.itemsize,
                                                   idx.dtype.kind == "i", bound))

    if np.dtype(idx_dtype).kind == "i":
        assert not increasing([-1, 0, 1], 10) and increasing([0, 1], 10)  # negative: not canonical

    assert increasing([], 0) and increasing([0], 1) and increasing(np.arange(1000), 1000)
    assert not increasing([0], 0) and not increasing(np.arange(1000), 999)  # the last one out of range
    assert not increasing([0, 1, 1, 2], 10) and not increasing([0, 2, 1], 10)  # repeated, out of order
    x = np.arange(0, 300000, 3)
    x[-2], x[-1] = x[-1], x[-2]  # out of order at the very end
    assert not increasing(x, 1 << 20)

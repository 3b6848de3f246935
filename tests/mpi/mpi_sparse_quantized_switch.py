"""The sparse algorithms' switch to dense quantized data (SparCML) with a lossy value format (run on every rank).

Calls the C entry ``scaleml_allreduce`` with a ``scaleml_codec`` directly: a partial sum past the densify rule
must travel in the codec's format, every rank must hold the same result bit for bit, the result must stay
within the codec's error of the exact sum (QSGD: unbiased), and input that never densifies must be summed
exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import sparse_input
from mpi4py import MPI

from scaleml import algorithms
from scaleml._native import check, comm_address, ffi, lib
from scaleml.sparse import index_dtype

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
P = comm.Get_size()
PRIVATE = comm.Dup()  # the collectives' messages never meet the test's own
SPARSE_ALGORITHMS = ("recursive_doubling", "split_allgather", "split_dense")

# name: (kind, bits, bucket, norm); bits and norm matter only for QSGD.
CODECS = {
    "qsgd4_l2": (lib.SCALEML_CODEC_QSGD, 4, 64, lib.SCALEML_NORM_L2),
    "qsgd8_max": (lib.SCALEML_CODEC_QSGD, 8, 128, lib.SCALEML_NORM_MAX),
    "fp16": (lib.SCALEML_CODEC_FP16, 0, 0, 0),
    "bf16": (lib.SCALEML_CODEC_BF16, 0, 0, 0),
    "onebit": (lib.SCALEML_CODEC_ONEBIT, 0, 64, 0),
}


def make_codec(name: str | None, seed: int = 7, step: int = 3):
    if name is None:
        return ffi.NULL
    kind, bits, bucket, norm = CODECS[name]
    codec = ffi.new("scaleml_codec *")
    codec.kind, codec.bits, codec.bucket, codec.norm, codec.seed, codec.step = kind, bits, bucket, norm, seed, step
    return codec


def allreduce(idx: np.ndarray, vals: np.ndarray, n: int, algorithm: str, codec_name: str | None, *,
              seed: int = 7, dense_input: bool = False) -> tuple[np.ndarray, int]:
    """(this rank's dense result, bytes it sent) of scaleml_allreduce with the codec (None: exact)."""
    nnz = n if dense_input else idx.size
    nnz_max = comm.allreduce(nnz, op=MPI.MAX)
    nnz_sum = comm.allreduce(nnz, op=MPI.SUM)
    if dense_input:
        values = np.zeros(n, dtype=vals.dtype)
        values[idx] = vals
        indices = ffi.NULL
    else:
        values = vals
        indices = ffi.from_buffer(idx)
    result_ptr = ffi.new("scaleml_result **")
    bytes_sent = ffi.new("uint64_t *")
    out = np.empty(n, dtype=vals.dtype)
    check(lib.scaleml_allreduce(comm_address(PRIVATE), algorithms.REGISTRY[algorithm].id, n, index_dtype(n).itemsize,
                                vals.itemsize, nnz, nnz_max, nnz_sum, indices, ffi.from_buffer(values),
                                ffi.from_buffer(out, require_writable=True), make_codec(codec_name, seed),
                                ffi.NULL, ffi.NULL, result_ptr, bytes_sent))
    res = ffi.gc(result_ptr[0], lib.scaleml_result_free)
    lib.scaleml_result_to_dense(res, ffi.from_buffer(out, require_writable=True))
    # The sparse form of the result holds the same values (decoded segments are dense ones of their own).
    count = lib.scaleml_result_sparse_count(res)
    out_idx, out_vals = np.empty(count, dtype=index_dtype(n)), np.empty(count, dtype=vals.dtype)
    written = lib.scaleml_result_to_sparse(res, ffi.from_buffer(out_idx, require_writable=True),
                                           ffi.from_buffer(out_vals, require_writable=True), count)
    assert written == count
    again = np.zeros(n, dtype=vals.dtype)
    again[out_idx] = out_vals
    assert again.tobytes() == out.tobytes()
    ffi.release(res)
    return out, int(bytes_sent[0])


def make_input(n, density, pattern, dtype=np.float32, seed=1, scale=1.0):
    idx, vals = sparse_input(n, density, pattern, dtype, comm, seed)
    return idx.astype(index_dtype(n)), (vals * scale).astype(dtype)


def exact_sum(idx, vals, n):
    """(float64 sum of all ranks' vectors, sum of their L2 norms, sum of their absolute values)."""
    total, norms, total_abs = np.zeros(n), 0.0, np.zeros(n)
    for i, v in comm.allgather((idx, vals)):
        np.add.at(total, i.astype(np.int64), v.astype(np.float64))
        np.add.at(total_abs, i.astype(np.int64), np.abs(v.astype(np.float64)))
        norms += float(np.linalg.norm(v.astype(np.float64)))
    return total, norms, total_abs


def identical_on_every_rank(result: np.ndarray) -> bool:
    gathered = comm.allgather(result.tobytes())
    return all(g == gathered[0] for g in gathered)


def error_bound(codec_name: str, norms: float, total_abs: np.ndarray, dtype) -> float:
    """A loose bound on ||result - exact||_2.

    Every quantization of a partial sum v adds an error e: QSGD (L2 norm, s levels, buckets of d) has
    E||e||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2 per bucket (the max norm does better), float16/bfloat16
    round to nearest, ||e|| <= u ||v||, and the 1-bit format's two means per bucket keep ||e|| <= ||v||.
    A partial sum's norm is at most the sum of the ranks' norms, and each rank's data passes through at most
    2P + 2 quantizations (recursive doubling: two per round, the folds; split: a slice and its range).
    QSGD's errors are independent and zero-mean, so their squares add; the others' are added as norms. A
    factor 3 over the QSGD expectation keeps the (deterministic, seeded) check far from flaky.
    """
    kind, bits, bucket, _ = CODECS[codec_name]
    events = 2 * P + 2
    rounding = float(np.linalg.norm(P * np.finfo(dtype).eps * total_abs))
    if kind == lib.SCALEML_CODEC_QSGD:
        s = 2**bits - 1
        beta = min(bucket / s**2, np.sqrt(bucket) / s)
        return 3 * np.sqrt(events * beta) * norms + rounding
    unit = {lib.SCALEML_CODEC_FP16: 2.0**-11, lib.SCALEML_CODEC_BF16: 2.0**-8, lib.SCALEML_CODEC_ONEBIT: 1.0}[kind]
    return events * unit * norms + rounding


# (a) + (b): slices switch mid-algorithm: 20-40% density per rank, unions densify after a round or two.
@pytest.mark.parametrize("algorithm", SPARSE_ALGORITHMS)
@pytest.mark.parametrize("codec_name", list(CODECS))
@pytest.mark.parametrize("pattern", ["overlap", "disjoint"])
def test_identical_and_close_when_slices_densify(algorithm, codec_name, pattern):
    n = 3001  # not a multiple of any bucket
    idx, vals = make_input(n, 0.3, pattern)
    keep = vals.copy()
    result, _ = allreduce(idx, vals, n, algorithm, codec_name)
    assert (vals == keep).all(), "the caller's values were changed"
    assert identical_on_every_rank(result)
    exact, norms, total_abs = exact_sum(idx, vals, n)
    assert np.isfinite(result).all()
    err = float(np.linalg.norm(result - exact))
    assert err <= error_bound(codec_name, norms, total_abs, np.float32), (err, norms)


@pytest.mark.parametrize("algorithm", SPARSE_ALGORITHMS)
@pytest.mark.parametrize("codec_name", ["qsgd4_l2", "bf16"])
def test_float64_and_dense_input(algorithm, codec_name):
    n = 1500
    idx, vals = make_input(n, 0.4, "overlap", np.float64, seed=5)
    exact, norms, total_abs = exact_sum(idx, vals, n)
    for dense_input in (False, True):
        result, _ = allreduce(idx, vals, n, algorithm, codec_name, dense_input=dense_input)
        assert result.dtype == np.float64
        assert identical_on_every_rank(result)
        assert float(np.linalg.norm(result - exact)) <= error_bound(codec_name, norms, total_abs, np.float64)


# (b): nothing densifies, so nothing is quantized: the exact algorithm's result and bytes, bit for bit.
@pytest.mark.parametrize("algorithm", ["recursive_doubling", "split_allgather"])
@pytest.mark.parametrize("codec_name", list(CODECS))
def test_exact_when_nothing_densifies(algorithm, codec_name):
    n = 4000
    idx, vals = make_input(n, 2e-3, "overlap", seed=2)
    exact, exact_bytes = allreduce(idx, vals, n, algorithm, None)
    result, sent = allreduce(idx, vals, n, algorithm, codec_name)
    assert result.tobytes() == exact.tobytes()
    assert sent == exact_bytes


def test_split_dense_quantizes_its_dense_allgather():
    """split_dense's allgather is dense by design: with float16 the result is the exact (float32) sum of the
    reduce-scatter, which stays sparse and exact here, rounded to float16 once (alone, nothing travels)."""
    n = 4000
    idx, vals = make_input(n, 2e-3, "overlap", seed=2)
    exact, exact_bytes = allreduce(idx, vals, n, "split_dense", None)
    result, sent = allreduce(idx, vals, n, "split_dense", "fp16")
    if P == 1:
        assert result.tobytes() == exact.tobytes() and sent == exact_bytes == 0
    else:
        assert result.tobytes() == exact.astype(np.float16).astype(np.float32).tobytes()
        assert sent < exact_bytes


# (c): QSGD is unbiased: the mean over seeds approaches the exact sum as 1/sqrt(seeds).
@pytest.mark.parametrize("algorithm", SPARSE_ALGORITHMS)
@pytest.mark.parametrize("codec_name", ["qsgd4_l2", "qsgd8_max"])
def test_qsgd_is_unbiased(algorithm, codec_name):
    n, seeds = 400, 60
    idx, vals = make_input(n, 0.35, "overlap", seed=3)
    exact, _, _ = exact_sum(idx, vals, n)
    samples = np.array([allreduce(idx, vals, n, algorithm, codec_name, seed=s)[0] for s in range(seeds)],
                       dtype=np.float64)
    if P == 1:  # nothing travels, nothing is quantized
        assert (samples == samples[0]).all()
        return
    # E||mean - exact||^2 = E||e||^2 / seeds for an unbiased e; a bias would stay as seeds grow.
    mean_sq_error = float(np.mean(np.sum((samples - exact) ** 2, axis=1)))
    assert mean_sq_error > 0, "nothing was quantized"
    bias_sq = float(np.sum((samples.mean(axis=0) - exact) ** 2))
    assert bias_sq <= 3 * mean_sq_error / seeds + 1e-6 * float(np.sum(exact**2)), (bias_sq, mean_sq_error / seeds)
    # Different seeds give different roundings; the same seed the same result.
    assert not (samples == samples[0]).all()
    again, _ = allreduce(idx, vals, n, algorithm, codec_name, seed=0)
    assert again.tobytes() == samples[0].astype(np.float32).tobytes()


# (d): sizes: empty, one element, fewer elements than ranks, not a multiple of the bucket.
@pytest.mark.parametrize("n", [0, 1, max(P - 1, 1), 3, 130, 1000])
@pytest.mark.parametrize("algorithm", SPARSE_ALGORITHMS)
def test_sizes(n, algorithm):
    for density in (0.3, 1.0):
        idx, vals = make_input(n, density, "overlap", seed=4)
        exact, norms, total_abs = exact_sum(idx, vals, n)
        for codec_name in ("qsgd4_l2", "fp16", "onebit"):
            result, _ = allreduce(idx, vals, n, algorithm, codec_name)
            assert result.shape == (n,)
            assert identical_on_every_rank(result)
            assert float(np.linalg.norm(result - exact)) <= error_bound(codec_name, norms, total_abs, np.float32)


# (e): the switch happened: fewer bytes than the exact run of the same input.
@pytest.mark.parametrize("algorithm", SPARSE_ALGORITHMS)
@pytest.mark.parametrize("codec_name", list(CODECS))
def test_fewer_bytes_when_data_densifies(algorithm, codec_name):
    n = 3000
    idx, vals = make_input(n, 0.3, "overlap", seed=6)
    _, exact_bytes = allreduce(idx, vals, n, algorithm, None)
    _, sent = allreduce(idx, vals, n, algorithm, codec_name)
    exact_total, total = comm.allreduce(exact_bytes), comm.allreduce(sent)
    if P == 1:
        assert total == exact_total == 0
    else:
        assert total < exact_total


def test_no_codec_kind_is_exact():
    n = 2000
    idx, vals = make_input(n, 0.3, "overlap", seed=8)
    codec = make_codec("qsgd4_l2")
    codec.kind = lib.SCALEML_CODEC_NONE
    for algorithm in SPARSE_ALGORITHMS:
        exact, exact_bytes = allreduce(idx, vals, n, algorithm, None)
        nnz = idx.size
        result_ptr, sent = ffi.new("scaleml_result **"), ffi.new("uint64_t *")
        check(lib.scaleml_allreduce(comm_address(PRIVATE), algorithms.REGISTRY[algorithm].id, n, 4, 4, nnz,
                                    comm.allreduce(nnz, op=MPI.MAX), comm.allreduce(nnz), ffi.from_buffer(idx),
                                    ffi.from_buffer(vals), ffi.NULL, codec, ffi.NULL, ffi.NULL, result_ptr, sent))
        res = ffi.gc(result_ptr[0], lib.scaleml_result_free)
        out = np.empty(n, dtype=np.float32)
        lib.scaleml_result_to_dense(res, ffi.from_buffer(out, require_writable=True))
        assert out.tobytes() == exact.tobytes() and int(sent[0]) == exact_bytes


@pytest.mark.parametrize("algorithm", SPARSE_ALGORITHMS)
def test_values_beyond_float16_travel_exact(algorithm):
    """Sums beyond float16's range cannot be encoded: those segments travel exact instead (no rank is left
    waiting), and every rank still holds the same result."""
    n = 600
    idx, vals = make_input(n, 0.5, "overlap", seed=9, scale=3e4)
    exact, norms, total_abs = exact_sum(idx, vals, n)
    result, _ = allreduce(idx, vals, n, algorithm, "fp16")
    assert identical_on_every_rank(result)
    assert float(np.linalg.norm(result - exact)) <= error_bound("fp16", norms, total_abs, np.float32)

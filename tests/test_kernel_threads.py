"""The kernels split large inputs over threads (csrc/core/threads.c) and give the same bytes, residuals and
decoded values at every thread count; inputs under 2^16 elements per thread stay single-threaded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, run_mpi

from scaleml import config
from scaleml._native import ffi, lib
from scaleml.errors import ERR_ARG, ERR_MALFORMED

THREAD_COUNTS = (1, 2, 3, 5)
PER_THREAD = 1 << 16  # SCALEML_THREAD_MIN_ELEMENTS
# around the threshold and beyond: several buckets per thread, n not a multiple of the bucket
SIZES = (PER_THREAD - 1, 2 * PER_THREAD + 13, 5 * PER_THREAD + 1001)
DTYPES = (np.float32, np.float64)


@contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run the kernels with ``threads`` threads, then restore the configured count."""
    before = lib.scaleml_get_num_threads()
    lib.scaleml_set_num_threads(threads)
    try:
        yield
    finally:
        lib.scaleml_set_num_threads(before)


def ptr(a: np.ndarray, ctype: str = "void *") -> Any:
    return ffi.cast(ctype, ffi.from_buffer(a))


def data(n: int, dtype: type, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    x[rng.integers(0, n, n // 10)] = 0  # zeros for the scans and ties for TopK
    return x


def same_at_every_count(run: Callable[[], tuple[np.ndarray, ...]], n: int, threaded: bool = True) -> None:
    """``run`` gives the same arrays at every thread count, and (``threaded``: its last kernel call) uses as
    many threads as the size allows."""
    with num_threads(1):
        reference = run()
    for threads in THREAD_COUNTS[1:]:
        with num_threads(threads):
            got = run()
            used = lib.scaleml_last_num_threads()
        assert used == (max(1, min(threads, n // PER_THREAD)) if threaded else 1), (threads, used)
        for a, b in zip(reference, got):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"{threads} threads")


def check(rc: int) -> None:
    assert rc == 0, ffi.string(lib.scaleml_error_message()).decode()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,bucket", [(4, 512), (2, 100), (8, 37), (3, 64)])
def test_qsgd_fixed(n: int, dtype: type, bits: int, bucket: int) -> None:
    x = data(n, dtype)
    size = int(lib.scaleml_qsgd_max_bytes(n, bits, bucket, lib.SCALEML_QSGD_FIXED))
    key = lib.scaleml_rng_key(7, 0, 3, 1)

    def encode() -> tuple[np.ndarray, ...]:
        out = np.full(size, 0xAB, np.uint8)
        written = ffi.new("size_t *")
        check(lib.scaleml_qsgd_encode(ptr(x), x.itemsize, n, bits, bucket, lib.SCALEML_NORM_L2,
                                      lib.SCALEML_QSGD_FIXED, key, ptr(out, "uint8_t *"), size, written))
        assert written[0] == size
        return (out,)

    same_at_every_count(encode, n)
    (payload,) = encode()

    def decode() -> tuple[np.ndarray, ...]:
        out = np.empty(n, dtype)
        check(lib.scaleml_qsgd_decode(ptr(payload, "uint8_t *"), size, n, bits, bucket, lib.SCALEML_QSGD_FIXED,
                                      ptr(out), x.itemsize))
        acc = data(n, dtype, seed=2)
        rc = lib.scaleml_qsgd_decode_add(ptr(payload, "uint8_t *"), size, n, bits, bucket, ptr(acc), x.itemsize)
        assert rc == (0 if bucket % 8 == 0 else ERR_ARG)
        return out, acc

    same_at_every_count(decode, n)
    if bucket % 8:  # the bit-serial decoder over threads: a bad norm still fails with the one-thread message
        bad = payload.copy()
        bad[-40:] = 0xFF  # a NaN norm in the last bucket(s)
        with num_threads(3):
            out = np.empty(n, dtype)
            rc = lib.scaleml_qsgd_decode(ptr(bad, "uint8_t *"), size, n, bits, bucket, lib.SCALEML_QSGD_FIXED,
                                         ptr(out), x.itemsize)
        assert rc == ERR_MALFORMED
        assert "invalid bucket norm" in ffi.string(lib.scaleml_error_message()).decode()


@pytest.mark.parametrize("dtype", DTYPES)
def test_qsgd_errors_as_at_one_thread(dtype: type) -> None:
    """A non-finite value fails with the single thread's message; a corrupted norm fails the decoder."""
    n, bits, bucket = 4 * PER_THREAD, 4, 512
    x = data(n, dtype)
    x[3 * PER_THREAD + 5] = np.inf
    size = int(lib.scaleml_qsgd_max_bytes(n, bits, bucket, 0))
    out = np.zeros(size, np.uint8)
    written = ffi.new("size_t *")
    with num_threads(3):
        rc = lib.scaleml_qsgd_encode(ptr(x), x.itemsize, n, bits, bucket, 0, 0, 5, ptr(out, "uint8_t *"), size,
                                     written)
        assert rc == ERR_ARG
        assert "non-finite" in ffi.string(lib.scaleml_error_message()).decode()
        x[3 * PER_THREAD + 5] = 1
        check(lib.scaleml_qsgd_encode(ptr(x), x.itemsize, n, bits, bucket, 0, 0, 5, ptr(out, "uint8_t *"),
                                      size, written))
        bucket_bytes = 4 + bucket // 8 * (bits + 1)
        out[300 * bucket_bytes: 300 * bucket_bytes + 4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
        acc = np.zeros(n, dtype)
        rc = lib.scaleml_qsgd_decode_add(ptr(out, "uint8_t *"), size, n, bits, bucket, ptr(acc), x.itemsize)
        assert rc == ERR_MALFORMED
        assert "invalid bucket norm" in ffi.string(lib.scaleml_error_message()).decode()
        assert not acc[300 * bucket:].any()  # as at one thread: nothing past the bad bucket was added


def test_small_inputs_stay_single_threaded() -> None:
    x = data(2 * PER_THREAD - 1, np.float32)
    size = int(lib.scaleml_qsgd_max_bytes(x.size, 4, 512, 0))
    out = np.zeros(size, np.uint8)
    written = ffi.new("size_t *")
    with num_threads(8):
        check(lib.scaleml_qsgd_encode(ptr(x), 4, x.size, 4, 512, 0, 0, 5, ptr(out, "uint8_t *"), size, written))
        assert lib.scaleml_last_num_threads() == 1
        check(lib.scaleml_qsgd_encode(ptr(x), 4, PER_THREAD - 1, 4, 512, 0, 0, 5, ptr(out, "uint8_t *"), size,
                                      written))
        assert lib.scaleml_last_num_threads() == 1
        y = data(2 * PER_THREAD, np.float32)
        size = int(lib.scaleml_qsgd_max_bytes(y.size, 4, 512, 0))
        out = np.zeros(size, np.uint8)
        check(lib.scaleml_qsgd_encode(ptr(y), 4, y.size, 4, 512, 0, 0, 5, ptr(out, "uint8_t *"), size, written))
        assert lib.scaleml_last_num_threads() == 2


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bucket", [512, 37, 4096])
def test_onebit(n: int, dtype: type, bucket: int) -> None:
    x = data(n, dtype)
    addend = data(n, dtype, seed=3)
    size = int(lib.scaleml_onebit_bytes(n, bucket))

    def encode() -> tuple[np.ndarray, ...]:
        out = np.full(size, 0xAB, np.uint8)
        residual = np.empty(n, dtype)
        check(lib.scaleml_onebit_encode(ptr(x), x.itemsize, n, bucket, ptr(out, "uint8_t *"), size, ptr(residual)))
        fused = np.full(size, 0xAB, np.uint8)
        feedback = addend.copy()  # error feedback updated in place
        check(lib.scaleml_onebit_encode_sum(ptr(x), ptr(feedback), x.itemsize, n, bucket, ptr(fused, "uint8_t *"),
                                            size, ptr(feedback)))
        return out, residual, fused, feedback

    same_at_every_count(encode, n)
    payload = encode()[0]

    def decode() -> tuple[np.ndarray, ...]:
        out = np.empty(n, dtype)
        check(lib.scaleml_onebit_decode(ptr(payload, "uint8_t *"), size, n, bucket, ptr(out), x.itemsize))
        acc = addend.copy()
        check(lib.scaleml_onebit_decode_add(ptr(payload, "uint8_t *"), size, n, bucket, ptr(acc), x.itemsize))
        return out, acc

    same_at_every_count(decode, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_cast(n: int, dtype: type, fmt: str) -> None:
    code = lib.SCALEML_CAST_FP16 if fmt == "fp16" else lib.SCALEML_CAST_BF16
    x = data(n, dtype)
    words = np.empty(n, np.uint16)
    check(lib.scaleml_cast_encode(ptr(x), x.itemsize, n, code, ptr(words, "uint16_t *")))

    def run() -> tuple[np.ndarray, ...]:
        out = np.empty(n, np.uint16)
        check(lib.scaleml_cast_encode(ptr(x), x.itemsize, n, code, ptr(out, "uint16_t *")))
        decoded = np.empty(n, dtype)
        check(lib.scaleml_cast_decode(ptr(words, "uint16_t *"), n, code, ptr(decoded), x.itemsize))
        acc = data(n, dtype, seed=4)
        check(lib.scaleml_cast_decode_add(ptr(words, "uint16_t *"), n, code, ptr(acc), x.itemsize))
        return out, decoded, acc

    same_at_every_count(run, n)


def test_errors_of_split_kernels() -> None:
    """A bad value in the last thread's part fails as at one thread."""
    n = 4 * PER_THREAD
    x = data(n, np.float32)
    x[-3] = np.nan
    words = np.empty(n, np.uint16)
    out = np.empty(int(lib.scaleml_onebit_bytes(n, 512)), np.uint8)
    with num_threads(4):
        assert lib.scaleml_cast_encode(ptr(x), 4, n, 0, ptr(words, "uint16_t *")) == ERR_ARG
        assert lib.scaleml_last_num_threads() == 4
        assert lib.scaleml_onebit_encode(ptr(x), 4, n, 512, ptr(out, "uint8_t *"), out.size, ffi.NULL) == ERR_ARG
        assert "non-finite" in ffi.string(lib.scaleml_error_message()).decode()
        words[-1] = 0x7c00  # +Inf
        assert lib.scaleml_cast_decode(ptr(words, "uint16_t *"), n, 0, ptr(x), 4) == ERR_MALFORMED


# ---- the thread count: SCALEML_NUM_THREADS and the default ---------------------------------------

def import_scaleml(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.mark.parametrize("value", ["0", "-1", "x", "2.5"])
def test_a_bad_thread_count_fails_the_import_naming_the_variable(value: str) -> None:
    result = import_scaleml("import scaleml", SCALEML_NUM_THREADS=value)
    assert result.returncode != 0
    assert f"ValueError: SCALEML_NUM_THREADS={value!r}: expected an integer >= 1" in result.stderr


def test_the_variable_sets_the_kernels_thread_count() -> None:
    code = ("import scaleml; from scaleml import config; from scaleml._native import lib; "
            "print(lib.scaleml_get_num_threads(), config.num_threads()[1])")
    result = import_scaleml(code, SCALEML_NUM_THREADS="3")
    assert result.stdout.split() == ["3", "SCALEML_NUM_THREADS"], result.stderr
    result = import_scaleml("import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-m', 'scaleml']))",
                            SCALEML_NUM_THREADS="3")
    assert "kernel threads          3 (SCALEML_NUM_THREADS)" in result.stdout, result.stderr


@pytest.mark.parametrize("cores,sharing,threads", [(1, 1, 1), (2, 1, 2), (2, 2, 1), (2, 4, 1), (16, 4, 4),
                                                   (16, 3, 5), (64, 8, 8), (3, 2, 1), (8, 0, 8)])
def test_default_thread_count(cores: int, sharing: int, threads: int) -> None:
    assert config.default_num_threads(cores, sharing) == threads


def test_the_default_at_one_rank_is_the_affinity() -> None:
    cores, sharing = config.cores_and_sharing()
    assert (cores, sharing) == (len(os.sched_getaffinity(0)), 1)
    assert config.num_threads() == (cores, f"{cores} cores / 1 rank(s) of this node sharing them")
    assert lib.scaleml_get_num_threads() == cores


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < (os.cpu_count() or 0), reason="this process is bound to some cores")
def test_the_launchers_count_of_local_ranks_divides_unbound_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert config.cores_and_sharing({"MPI_LOCALNRANKS": "4"}) == (cores, 4)
    assert config.cores_and_sharing({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}) == (cores, 3)
    assert config.cores_and_sharing({"SLURM_NTASKS_PER_NODE": "2(x3),1"}) == (cores, 2)
    assert config.cores_and_sharing({"MPI_LOCALNRANKS": "zero"}) == (cores, 1)  # unreadable: COMM_WORLD's size


def test_ranks_sharing_cores_divide_them() -> None:
    """3 ranks with the same affinity (no binding) on this node: each gets cores // 3, at least 1."""
    code = ("import scaleml; from mpi4py import MPI; from scaleml import config; "
            "rows = MPI.COMM_WORLD.gather([*config.cores_and_sharing(), config.num_threads()[0]]); "
            "MPI.COMM_WORLD.rank or print('RESULT', rows)")
    out = run_mpi(3, ["-c", code], timeout=120).stdout
    rows = [eval(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")][0]
    cores = len(os.sched_getaffinity(0))
    assert rows == [[cores, 3, max(1, cores // 3)]] * 3, out


def topk_encode(x: np.ndarray, k: int, approximate: int, sample: int, capacity: int) -> tuple[np.ndarray, ...]:
    """(payload, residual) of TopK's encoder on x, with room for ``capacity`` entries (the payload starts as
    0xAB bytes, so bytes the encoder leaves unwritten differ from written zeros)."""
    size = int(lib.scaleml_topk_bytes(capacity, x.itemsize))
    out = np.full(size, 0xAB, np.uint8)
    written = ffi.new("size_t *")
    residual = np.empty_like(x)
    key = lib.scaleml_rng_key(3, 0, 1, 2)
    check(lib.scaleml_topk_encode(ptr(x), x.itemsize, x.size, k, approximate, sample, key, ptr(out, "uint8_t *"),
                                  size, written, ptr(residual)))
    return out[:written[0]], residual


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio,approximate,sample", [(0.01, 0, 0), (0.3, 0, 0), (0.9, 0, 0), (0.01, 1, 4096),
                                                      (0.05, 1, 1 << 14)])
def test_topk(n: int, dtype: type, ratio: float, approximate: int, sample: int) -> None:
    """Same threshold, tie rule and index order (ties: the zeros and repeated values) on every path: the
    candidate filter (1%, and approximate with a small sample), the radix select's histogram and final pass
    (30%, 90%), the sampled threshold's counting and final pass (a sample over n / 8)."""
    x = data(n, dtype)
    x[::7] = x[3]  # many entries equal to one value
    k = max(1, int(n * ratio))
    with num_threads(1):
        reference = topk_encode(x, k, approximate, sample, n)
    for threads in THREAD_COUNTS[1:]:
        with num_threads(threads):
            got = topk_encode(x, k, approximate, sample, n)
            assert lib.scaleml_last_num_threads() == max(1, min(threads, n // PER_THREAD))
        for a, b in zip(reference, got):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"{threads} threads")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio,approximate,sample", [(0.02, 0, 0), (0.05, 1, 1 << 14)])
def test_topk_candidates_over_threads(dtype: type, ratio: float, approximate: int, sample: int) -> None:
    """Enough candidates (over 3 * 2^16) that the phases after the filter (histogram, bin gather, output) are
    cut into parts too; the exact mode's k-th largest magnitude repeated across every part, so the tie rule
    crosses parts: the payload and residual are the one-thread ones at every count, and (exact mode) the k
    largest magnitudes, ties taken in index order."""
    n = (1 << 23) + 3
    k = int(n * ratio)
    x = np.random.default_rng(7).standard_normal(n).astype(dtype)
    tie = np.sort(np.abs(x))[n - k]
    x[5::4099] = np.where(np.arange(len(x[5::4099])) % 2, tie, -tie)  # equal magnitudes, both signs
    with num_threads(1):
        reference = topk_encode(x, k, approximate, sample, k + 4 * n // 100)
    for threads in (2, 3):
        with num_threads(threads):
            got = topk_encode(x, k, approximate, sample, k + 4 * n // 100)
        for a, b in zip(reference, got):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"{threads} threads")
    payload, residual = reference
    count = int(payload[:8].view(np.uint64)[0])
    index = payload[8:8 + 4 * count].view(np.uint32)
    values = payload[len(payload) - count * x.itemsize:].view(dtype)
    np.testing.assert_array_equal(values, x[index])
    np.testing.assert_array_equal(residual, np.where(np.isin(np.arange(n), index), 0, x))
    if not approximate:  # the k largest magnitudes, ties by index: a stable sort on descending magnitude
        expected = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
        np.testing.assert_array_equal(index, expected)
        assert np.count_nonzero(np.abs(x[index]) == tie) < np.count_nonzero(np.abs(x) == tie)  # a tie was cut


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [np.uint32, np.uint64])
def test_dense_scans(n: int, dtype: type, index_dtype: type) -> None:
    x = data(n, dtype)
    x[: n // 3] = 0  # a long run of zeros: the parts hold different counts
    x[5::11] = -0.0
    nnz = int(np.count_nonzero(x))

    def run() -> tuple[np.ndarray, ...]:
        counts = np.zeros(3, np.uint64)
        counts[0] = lib.scaleml_count_nonzeros(ptr(x), n, x.itemsize)
        negative = ffi.new("uint64_t *")
        counts[1] = lib.scaleml_count_nonzeros_signed(ptr(x), n, x.itemsize, negative)
        counts[2] = negative[0]
        arrays: list[np.ndarray] = [counts]
        for capacity in (nnz, nnz // 2 + 3, 0):  # all, and cut short as one pass cuts
            idx = np.zeros(nnz + 64, index_dtype)
            val = np.zeros(nnz + 64, dtype)
            found = lib.scaleml_extract_nonzeros(ptr(x), n, x.itemsize, idx.itemsize, ptr(idx), ptr(val), capacity)
            assert found == min(nnz, capacity)
            arrays += [idx[:found], val[:found]]
        return tuple(arrays)

    same_at_every_count(run, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_dtype", [np.uint32, np.uint64])  # float32 with uint32: the AVX-512 path
def test_scan_over_threads(n: int, dtype: type, idx_dtype: type) -> None:
    """scaleml_scan_nonzeros: the same counts at every thread count; the entries it reports as written are
    the first non-zeros in order, all of them where each thread's share of the capacity holds its part's."""
    x = data(n, dtype)
    x[: n // 3] = 0  # the parts hold different counts
    x[5::11] = -0.0
    expected = np.flatnonzero(x)
    negative_expected = int(np.count_nonzero((x == 0) & np.signbit(x)))

    def scan(capacity: int) -> tuple[np.ndarray, ...]:
        idx = np.zeros(capacity + 1, idx_dtype)
        val = np.zeros(capacity + 1, dtype)
        negative, extracted = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        nnz = lib.scaleml_scan_nonzeros(ptr(x), n, x.itemsize, idx.itemsize, ptr(idx), ptr(val), capacity,
                                        negative, extracted)
        assert (nnz, negative[0]) == (expected.size, negative_expected)
        k = extracted[0]
        assert k <= min(capacity, nnz) and idx[capacity] == 0  # nothing past the capacity
        np.testing.assert_array_equal(idx[:k], expected[:k])
        np.testing.assert_array_equal(val[:k], x[expected[:k]])
        return np.array([nnz, negative[0], k], np.uint64), idx[:k], val[:k]

    same_at_every_count(lambda: scan(expected.size * max(THREAD_COUNTS)), n)  # every share holds its part
    for threads in THREAD_COUNTS:
        with num_threads(threads):
            for capacity in (expected.size, expected.size // 2 + 3, 0):
                _, idx, _ = scan(capacity)
                if threads == 1:  # one pass writes up to the capacity
                    assert idx.size == min(capacity, expected.size)


def test_collectives_give_the_same_bits_at_any_thread_count() -> None:
    """quantized_allreduce (QSGD 4-bit, 1-bit, fp16) and topk_allreduce at 2 ranks with 1 and 3 threads per
    rank: the same result bits (the kernels under the collectives split on bucket boundaries)."""
    code = (
        "import hashlib, numpy as np, scaleml; from mpi4py import MPI; from scaleml.compress import QSGD, OneBit, "
        "Cast; from scaleml._native import lib; comm = MPI.COMM_WORLD; "
        "x = np.random.default_rng(comm.rank).standard_normal((1 << 18) + 77).astype(np.float32); "
        "h = hashlib.sha256(); "
        "[h.update(scaleml.quantized_allreduce(x, comm, c).tobytes()) for c in (QSGD(bits=4), OneBit(), Cast())]; "
        "h.update(scaleml.topk_allreduce(x, comm, ratio=0.01).tobytes()); "
        "digests = comm.gather(h.hexdigest()); "
        "comm.rank or print('RESULT', lib.scaleml_get_num_threads(), *digests)")
    results = []
    for threads in ("1", "3"):
        out = run_mpi(2, ["-c", code], timeout=300, env={"SCALEML_NUM_THREADS": threads}).stdout
        line = [row for row in out.splitlines() if row.startswith("RESULT ")]
        assert line, out
        got_threads, *digests = line[0].split()[1:]
        assert got_threads == threads and len(set(digests)) == 1, out
        results.append(digests[0])
    assert results[0] == results[1]


def test_a_communicators_shared_memory_node_lowers_the_default() -> None:
    """Launchers that each started one rank on one machine (the emulated cluster's hosts) say 1 rank per node, and
    each rank would take every core; the engine's first use of a communicator asks MPI which ranks share this
    machine and divides the cores among them. SCALEML_NUM_THREADS is left as it is."""
    code = ("import os; import scaleml; from mpi4py import MPI; from scaleml import config, engine; "
            "from scaleml._native import lib; "
            "config._settings['SCALEML_NUM_THREADS'].value is None and lib.scaleml_set_num_threads(os.cpu_count()); "
            "before = lib.scaleml_get_num_threads(); engine.engine_state(MPI.COMM_WORLD); "
            "MPI.COMM_WORLD.rank or print('RESULT', before, lib.scaleml_get_num_threads())")
    cores = len(os.sched_getaffinity(0))
    for env, want in (({}, max(1, cores // 3)), ({"SCALEML_NUM_THREADS": "3"}, 3)):
        out = run_mpi(3, ["-c", code], env=env).stdout
        line = next(line for line in out.splitlines() if line.startswith("RESULT"))
        assert int(line.split()[2]) == want, (env, out)

"""The quantized AllReduce family against a dense reference (run on every rank under mpiexec).

Bounds used below, for an encoded value v of a bucket with norm N (QSGD, s =
2^bits - 1 levels): |Q(v) - v| <= N/s always, E[Q(v)] = v and
Var[Q(v)] <= (N/s)^2 / 4; a value is encoded at most R times on its way
(ring: P, recursive halving/doubling: log2 P + 2 with folds, direct: 2). The
gather encodes each rank's input once: its error is bounded by the sum over the
ranks of their own buckets' N_j/s, which R = 2 covers up to 16 ranks for the
L2 norm (sum_j ||x_j|| <= sqrt(P) || sum_j |x_j| ||, and the bound below is
twice the norm of sum_j |x_j|); for the max norm only for data like the tests'
(the worst case is P times), so it takes R = 2 too.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml._native import ffi, lib
from scaleml.compress import QSGD, Cast, ErrorFeedback, OneBit
from scaleml.quantized import LOSSY as ALL_LOSSY
from scaleml.quantized import block_range

# hierarchical_quantized has its own module (mpi_hierarchical_quantized.py): on MPI's one node here it sums exactly
LOSSY = tuple(a for a in ALL_LOSSY if a != "hierarchical_quantized")

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()

FORMATS = {
    "qsgd4": lambda: QSGD(bits=4, bucket=64),
    "qsgd8max": lambda: QSGD(bits=8, bucket=100, norm="max"),
    "fp16": lambda: Cast("fp16"),
    "bf16": lambda: Cast("bf16"),
    "onebit": lambda: OneBit(bucket=64),
}
SIZES = [0, 1, max(size - 1, 1), 1000, 65536 * size + 1234]  # fewer values than ranks; several chunks per block


def encodings(algorithm: str) -> int:
    """How many times a value may be encoded on its way to the result (see the module docstring)."""
    if size == 1:
        return 0
    if algorithm == "quantized_ring":
        return size
    if algorithm == "quantized_rhd":
        return int(np.log2(size)) + 3
    return 2


def data(n: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 * seed + rank).standard_normal(n).astype(dtype)


def everyone_holds_the_same(result: np.ndarray) -> bool:
    digests = world.allgather(hashlib.sha256(result.tobytes()).hexdigest())
    return len(set(digests)) == 1


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 sum over the ranks and the sum of absolute values."""
    total, total_abs = np.zeros(x.size), np.zeros(x.size)
    world.Allreduce(x.astype(np.float64), total)
    world.Allreduce(np.abs(x.astype(np.float64)), total_abs)
    return total, total_abs


def bucket_bound(total_abs: np.ndarray, bucket: int, norm: str) -> np.ndarray:
    """Per-element bound on the norm of any partial sum's bucket: the norm of the bucket of sum |x| (doubled
    for the errors the partial sums already carry)."""
    pad = (-total_abs.size) % bucket
    b = np.concatenate([total_abs, np.zeros(pad)]).reshape(-1, bucket)
    norms = np.linalg.norm(b, axis=1) if norm == "l2" else b.max(axis=1)
    return 2 * np.repeat(norms, bucket)[: total_abs.size]


@pytest.mark.parametrize("algorithm", LOSSY)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", SIZES)
def test_identical_on_every_rank_and_within_the_bound(algorithm, fmt, n):
    x = data(n, seed=n % 97)
    compression = FORMATS[fmt]()
    result, info = scaleml.quantized_allreduce(x, world, compression, algorithm=algorithm, return_info=True)
    assert result.dtype == x.dtype and result.shape == x.shape
    assert info.algorithm == algorithm and info.format == scaleml.value_format.value_format(compression).name
    assert everyone_holds_the_same(result)
    exact, exact_abs = reference(x)
    err = np.abs(result.astype(np.float64) - exact)
    R = encodings(algorithm)
    if size == 1:
        np.testing.assert_array_equal(result, x)  # one rank: nothing is encoded
        return
    if fmt in ("fp16", "bf16"):  # round to nearest: relative error 2^-11 (2^-8) of each partial sum
        unit = 2.0 ** -11 if fmt == "fp16" else 2.0 ** -8
        bound = (R + 1) * unit * exact_abs * 1.01 + size * np.finfo(np.float32).eps * exact_abs + 1e-30
        assert (err <= bound).all(), float((err / bound).max())
    elif fmt.startswith("qsgd"):
        bits, bucket, norm = compression.bits, compression.bucket, compression.norm
        bound = R * bucket_bound(exact_abs, bucket, norm) / (2 ** bits - 1) + 1e-6 * exact_abs + 1e-30
        assert (err <= bound).all(), float((err / bound).max())
    else:  # 1-bit: biased without error feedback; finite, and bytes as announced
        assert np.isfinite(result).all()
    if n:
        encoded = scaleml.value_format.value_format(compression).bytes(n, 4)
        if algorithm == "quantized_gather":  # the whole message to every other rank
            assert info.bytes_sent == (size - 1) * encoded
            return
        folds = algorithm == "quantized_rhd" and size & (size - 1)  # the folds send the whole vector once more
        assert (size - 1) / size * encoded * 0.9 <= info.bytes_sent <= (3 if folds else 2) * encoded + 64 * size


@pytest.mark.parametrize("algorithm", LOSSY)
def test_qsgd_is_unbiased(algorithm):
    # The mean of T independent runs converges to the exact sum: within 6 standard deviations of the bound.
    n, T, bits, bucket = 96, 200, 2, 32
    x = data(n, np.float64, seed=3)
    exact, exact_abs = reference(x)
    q = QSGD(bits=bits, bucket=bucket, seed=11)
    total = np.zeros(n)
    for _ in range(T):
        total += scaleml.quantized_allreduce(x, world, q, algorithm=algorithm)
    mean = total / T
    R = max(encodings(algorithm), 1)
    sigma = np.sqrt(R / 4 / T) * bucket_bound(exact_abs, bucket, "l2") / (2 ** bits - 1)
    assert (np.abs(mean - exact) <= 6 * sigma + 1e-12).all(), float((np.abs(mean - exact) / sigma).max())
    if size > 1:  # and the runs did differ: the rounding is random
        single = scaleml.quantized_allreduce(x, world, q, algorithm=algorithm)
        assert not np.array_equal(single, mean)


def gather_message(compression, x: np.ndarray, key_rank: int, step: int) -> bytes:
    """Rank key_rank's message in quantized_gather, from the compress kernels: its chunks encoded one after
    another, the chunk at `start` with the key scaleml_rng_key(seed, rank, step, scaleml_gather_stream(start))."""
    fmt = scaleml.value_format.value_format(compression)
    chunk = lib.scaleml_gather_chunk(fmt.codec())
    vb = x.itemsize
    parts = []
    for start in range(0, x.size, chunk):
        part = np.ascontiguousarray(x[start:start + chunk])
        length = part.size
        if fmt.kind == lib.SCALEML_CODEC_QSGD:
            cap = lib.scaleml_qsgd_max_bytes(length, fmt.bits, fmt.bucket, lib.SCALEML_QSGD_FIXED)
            out, written = ffi.new("uint8_t[]", cap), ffi.new("size_t *")
            key = lib.scaleml_rng_key(compression.seed & (2**64 - 1), key_rank, step,
                                      lib.scaleml_gather_stream(start))
            assert lib.scaleml_qsgd_encode(ffi.from_buffer(part), vb, length, fmt.bits, fmt.bucket, fmt.norm,
                                           lib.SCALEML_QSGD_FIXED, key, out, cap, written) == 0
            assert written[0] == cap
        elif fmt.kind == lib.SCALEML_CODEC_ONEBIT:
            cap = lib.scaleml_onebit_bytes(length, fmt.bucket)
            out = ffi.new("uint8_t[]", cap)
            assert lib.scaleml_onebit_encode(ffi.from_buffer(part), vb, length, fmt.bucket, out, cap, ffi.NULL) == 0
        else:
            cap = 2 * length
            out = ffi.new("uint16_t[]", length)
            cast = lib.SCALEML_CAST_FP16 if fmt.kind == lib.SCALEML_CODEC_FP16 else lib.SCALEML_CAST_BF16
            assert lib.scaleml_cast_encode(ffi.from_buffer(part), vb, length, cast, out) == 0
        parts.append(bytes(ffi.buffer(out, cap)))
    return b"".join(parts)


def gather_decode(compression, message: bytes, n: int, dtype) -> np.ndarray:
    """One message decoded with the compress kernels, chunk by chunk."""
    fmt = scaleml.value_format.value_format(compression)
    chunk = lib.scaleml_gather_chunk(fmt.codec())
    out = np.empty(n, dtype)
    vb, at = out.itemsize, 0
    for start in range(0, n, chunk):
        length = min(chunk, n - start)
        nbytes = fmt.bytes(length, vb)
        piece = message[at:at + nbytes]
        view = out[start:start + length]
        if fmt.kind == lib.SCALEML_CODEC_QSGD:
            rc = lib.scaleml_qsgd_decode(piece, nbytes, length, fmt.bits, fmt.bucket, lib.SCALEML_QSGD_FIXED,
                                         ffi.from_buffer(view), vb)
        elif fmt.kind == lib.SCALEML_CODEC_ONEBIT:
            rc = lib.scaleml_onebit_decode(piece, nbytes, length, fmt.bucket, ffi.from_buffer(view), vb)
        else:
            cast = lib.SCALEML_CAST_FP16 if fmt.kind == lib.SCALEML_CODEC_FP16 else lib.SCALEML_CAST_BF16
            words = np.frombuffer(piece, np.uint16)
            rc = lib.scaleml_cast_decode(ffi.cast("const uint16_t *", ffi.from_buffer(words)), length, cast,
                                         ffi.from_buffer(view), vb)
        assert rc == 0
        at += nbytes
    assert at == len(message)
    return out


GATHER_FORMATS = {**FORMATS, "qsgd3-bucket-12": lambda: QSGD(bits=3, bucket=12, seed=5),
                  "onebit-bucket-100": lambda: OneBit(bucket=100)}


# n: none; one value; not whole buckets; two chunks (in float64 for two formats only: the time it takes)
GATHER_CASES = [(fmt, n, dtype) for fmt in GATHER_FORMATS for n in (0, 1, 1001, (1 << 20) + 3)
                for dtype in (np.float32, np.float64) if n < 1 << 20 or dtype == np.float32 or fmt in ("qsgd4", "fp16")]


@pytest.mark.parametrize("fmt,n,dtype", GATHER_CASES)
def test_gather_is_the_sum_of_every_ranks_decoded_message(fmt, n, dtype):
    """quantized_gather's result, bitwise: each rank's message built from the compress kernels with the
    documented chunks and keys, decoded and summed in rank order (rank 0's decode starts the sum)."""
    compression = GATHER_FORMATS[fmt]()
    compression.step = 7
    inputs = [np.random.default_rng(100 * j + n % 89).standard_normal(n).astype(dtype) for j in range(size)]
    result = scaleml.quantized_allreduce(inputs[rank], world, compression, algorithm="quantized_gather")
    assert compression.step == 8 and result.dtype == dtype
    if size == 1:  # as the other lossy algorithms: nothing is encoded
        np.testing.assert_array_equal(result, inputs[0])
        return
    expected = np.zeros(n, dtype)
    for j in range(size):
        decoded = gather_decode(compression, gather_message(compression, inputs[j], j, 7), n, dtype)
        expected = decoded if j == 0 else expected + decoded
    assert result.tobytes() == expected.tobytes()
    assert everyone_holds_the_same(result)


def test_gather_chunks_are_whole_buckets_and_the_same_for_every_rank_count():
    codec = scaleml.value_format.value_format(QSGD(bits=4, bucket=100)).codec()
    assert lib.scaleml_gather_chunk(codec) == lib.SCALEML_GATHER_CHUNK // 100 * 100
    assert lib.scaleml_gather_chunk(scaleml.value_format.value_format(Cast("bf16")).codec()) == 1 << 20
    assert lib.scaleml_gather_chunk(scaleml.value_format.value_format(OneBit(bucket=1 << 21)).codec()) == 1 << 21
    assert lib.scaleml_gather_stream(12345) == (1 << 40) | 12345


@pytest.mark.parametrize("fmt", ["onebit", "qsgd4"])
@pytest.mark.parametrize("n", [1, 1000, 4099])
def test_error_feedback_conserves_mass(fmt, n):
    """Applied sums plus every rank's worker residual plus every owner's server residual = sum of the inputs."""
    ef = ErrorFeedback(FORMATS[fmt]())
    applied = np.zeros(n)
    given = np.zeros(n)
    scale = 0.0
    for step in range(8):
        g = data(n, seed=step)
        exact, exact_abs = reference(g)
        given += exact
        scale += exact_abs.max()
        result, info = scaleml.quantized_allreduce(g, world, error_feedback=ef, name="w", return_info=True)
        assert info.algorithm == "quantized_direct"
        assert everyone_holds_the_same(result)
        applied += result
    worker = ef.residual("w/worker").astype(np.float64)
    server = ef.residual("w/server").astype(np.float64)
    assert server.size == block_range(n, size, rank)[1]
    worker_sum = np.zeros(n)
    world.Allreduce(worker, worker_sum)
    server_all = np.concatenate(world.allgather(server))
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(applied + worker_sum + server_all, given, rtol=0, atol=8 * (size + 4) * eps * scale)


@pytest.mark.parametrize("make", [lambda: OneBit(bucket=64), lambda: OneBit(bucket=8192),
                                  lambda: QSGD(bits=4, bucket=64)], ids=["onebit", "onebit-8192", "qsgd4"])
def test_error_feedback_in_place_and_out_of_place_agree(make):
    """The input read where it lies (separate out) and the input overwritten (out=x) give the same bytes and
    the same residuals, step after step; the input is left as it was when out is separate."""
    n = 65536 * size + 999
    a, b = ErrorFeedback(make()), ErrorFeedback(make())
    for step in range(3):
        g = data(n, seed=step)
        kept = g.copy()
        separate = scaleml.quantized_allreduce(g, world, error_feedback=a, out=np.empty_like(g))
        np.testing.assert_array_equal(g, kept)
        in_place = scaleml.quantized_allreduce(g, world, error_feedback=b, out=g)
        assert in_place is g
        np.testing.assert_array_equal(separate, in_place)
        np.testing.assert_array_equal(a.residual("grad/worker"), b.residual("grad/worker"))
        np.testing.assert_array_equal(a.residual("grad/server"), b.residual("grad/server"))
        assert everyone_holds_the_same(separate)


def test_error_feedback_state_saves_and_resumes():
    n = 777
    folder = tempfile.TemporaryDirectory()  # one per rank (pytest's tmp_path races between ranks)
    path = os.path.join(folder.name, "state.npz")
    a, b = ErrorFeedback(OneBit(bucket=32)), ErrorFeedback(OneBit(bucket=32))
    for step in range(3):
        scaleml.quantized_allreduce(data(n, seed=step), world, error_feedback=a)
    a.save(path)  # one file per rank
    b.load(path)
    g = data(n, seed=9)
    np.testing.assert_array_equal(scaleml.quantized_allreduce(g, world, error_feedback=a),
                                  scaleml.quantized_allreduce(g, world, error_feedback=b))


def test_average_and_in_place_output():
    x = data(5000, seed=4)
    summed = scaleml.quantized_allreduce(x, world, Cast("fp16"), algorithm="quantized_ring")
    y = x.copy()
    out = scaleml.quantized_allreduce(y, world, Cast("fp16"), algorithm="quantized_ring", average=True, out=y)
    assert out is y
    np.testing.assert_array_equal(y, summed / size)


def test_auto_picks_a_lossy_algorithm_and_matrix_shapes_work():
    x = data(64 * 33, seed=5).reshape(64, 33)
    result, info = scaleml.quantized_allreduce(x, world, QSGD(bits=8), return_info=True)
    assert result.shape == (64, 33) and info.algorithm in ALL_LOSSY and info.format == "qsgd8"
    assert everyone_holds_the_same(result)


# ---- bad input: an exception on every rank, never a hang ----------------------------------------

def raises_everywhere(exc, call, bad_rank: int = 0):
    with pytest.raises(exc):
        call(rank == bad_rank % size)


@pytest.mark.parametrize("case", ["bits", "elias", "type", "nan", "size", "dtype", "ef_with_ring", "algorithm",
                                  "none", "out"])
def test_bad_arguments_raise_on_every_rank(case):
    x = data(300, seed=6)

    def call(bad: bool):
        kwargs = {"compression": QSGD(bits=4)}
        arr = x
        if case == "bits" and bad:
            kwargs["compression"] = QSGD(bits=5)
        elif case == "elias" and bad:
            kwargs["compression"] = QSGD(bits=4, format="elias")
        elif case == "type" and bad:
            kwargs["compression"] = "qsgd4"
        elif case == "nan" and bad:
            arr = x.copy()
            arr[7] = np.nan
        elif case == "size" and bad:
            arr = x[:-1]
        elif case == "dtype" and bad:
            arr = x.astype(np.float64)
        elif case == "ef_with_ring" and bad:
            kwargs = {"error_feedback": ErrorFeedback(OneBit()), "algorithm": "quantized_ring"}
        elif case == "algorithm" and bad:
            kwargs["algorithm"] = "dense"
        elif case == "none" and bad:
            kwargs["compression"] = None
        elif case == "out" and bad:
            kwargs["out"] = np.empty(3, np.float32)
        return scaleml.quantized_allreduce(arr, world, **kwargs)

    if size == 1 and case in ("bits", "size", "dtype"):  # nothing to disagree with
        call(True)
        return
    raises_everywhere((TypeError, ValueError), call)
    # and the communicator is still in step: a good call works
    assert everyone_holds_the_same(scaleml.quantized_allreduce(x, world, Cast("bf16")))


def test_sparse_allreduce_needs_compression_for_a_lossy_algorithm():
    idx = np.arange(10)
    vals = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="lossy"):
        scaleml.sparse_allreduce(idx, vals, 100, world, algorithm="quantized_ring")


# ---- the drop-in's lossy opt-in -------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", LOSSY)
def test_dropin_lossy_opt_in(algorithm):
    comm = scaleml.Comm(world, compression=QSGD(bits=8, norm="max"), algorithm=algorithm, min_count=0)
    x = data(4097, seed=7)
    out = np.empty_like(x)
    comm.Allreduce(x, out, op=MPI.SUM)
    assert comm.last_info.algorithm == algorithm and comm.last_info.format == "qsgd8"
    assert everyone_holds_the_same(out)
    exact, exact_abs = reference(x)
    bound = encodings(algorithm) * bucket_bound(exact_abs, 512, "max") / 255 + 1e-6 * exact_abs + 1e-30
    assert (np.abs(out - exact) <= bound).all()
    # lossy never applies to other ops or integer data
    comm.Allreduce(x, out, op=MPI.MAX)
    assert comm.last_info is None
    expected = np.empty_like(x)
    world.Allreduce(x, expected, op=MPI.MAX)
    np.testing.assert_array_equal(out, expected)
    ints = np.arange(5000, dtype=np.int32)
    iout = np.empty_like(ints)
    comm.Allreduce(ints, iout)
    assert comm.last_info is None
    np.testing.assert_array_equal(iout, ints * size)


def test_dropin_lossy_formats_differ_between_ranks():
    if size == 1:
        return
    comm = scaleml.Comm(world, compression=QSGD(bits=4 + rank % 2), algorithm="quantized_ring", min_count=0)
    x = data(1000, seed=8)
    with pytest.raises(ValueError, match="compression"):
        comm.Allreduce(x, np.empty_like(x))


def test_dropin_lossy_algorithm_needs_compression():
    with pytest.raises(ValueError, match="lossy"):
        scaleml.Comm(world, algorithm="quantized_ring")


@pytest.mark.parametrize("algorithm", LOSSY)
def test_float16_overflow_becomes_inf_on_every_rank(algorithm):
    # Partial sums beyond float16's range: +-inf everywhere (as in any float16 AllReduce), never an error on one
    # rank half-way through the collective.
    x = np.full(1000, 40000.0, np.float32)
    x[::2] *= -1
    result = scaleml.quantized_allreduce(x, world, Cast("fp16"), algorithm=algorithm)
    assert everyone_holds_the_same(result)
    if size == 1:
        np.testing.assert_array_equal(result, x)
    elif algorithm == "quantized_gather":  # sums are never encoded: only inputs beyond float16's range overflow
        np.testing.assert_array_equal(result, size * x)
        beyond = scaleml.quantized_allreduce(2 * x, world, Cast("fp16"), algorithm=algorithm)
        assert everyone_holds_the_same(beyond)
        assert np.isinf(beyond).all() and (np.sign(beyond) == np.sign(x)).all()
    else:
        assert np.isinf(result).all() and (np.sign(result) == np.sign(x)).all()


def test_format_says_whether_anything_travelled_lossy():
    n = 50000
    sparse_idx = np.array([rank * 7 % n], dtype=np.int64)  # nothing densifies: the switch never happens
    res, info = scaleml.sparse_allreduce(sparse_idx, np.ones(1, np.float32), n, world, "recursive_doubling",
                                         compression=QSGD(bits=4), return_info=True)
    assert info.format == "exact"
    dense_idx = np.arange(n)
    res, info = scaleml.sparse_allreduce(dense_idx, data(n, seed=10), n, world, "recursive_doubling",
                                         compression=QSGD(bits=4), return_info=True)
    assert info.format == ("qsgd4" if size > 1 else "exact")

"""The registry entry `adaptive` (C) against the Python algorithm it replaced, and its place in the registry.

``reference`` below is the scatter-reduce-allgather that ``scaleml.adaptive_allreduce`` ran in Python
before the algorithm moved to ``csrc/collectives/adaptive_allreduce.c`` (Alltoallv of the encoded row
blocks, the owner's decode in rank order, its server residual, one encoding, Allgatherv): the C path must
give bitwise the same results and residuals, and the same message sizes, step after step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml import algorithms
from scaleml._native import lib
from scaleml.compress import QSGD, AdaptiveQuant, decode
from scaleml.engine import Agreement, Call, candidates
from scaleml.errors import ScaleMLError
from scaleml.quantized import block_range
from scaleml.value_format import value_format

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def _displs(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)


def reference(g: np.ndarray, c: MPI.Intracomm, pi: float, sample: int, seed: int, step: int,
              worker: np.ndarray | None, server: np.ndarray | None):
    """One call of the former Python algorithm: (result, worker residual, server residual,
    (bytes_sent, reduce_scatter_bytes, allgather_bytes, compressed_bytes))."""
    r, P = c.Get_rank(), c.Get_size()
    rows, cols = (g.shape[0], g.shape[1]) if g.ndim == 2 else (g.shape[0], 1)
    y = (g + worker if worker is not None else g).reshape(rows, cols)
    q = AdaptiveQuant(pi, sample, seed, rank=r)
    base = step * (P + 1)
    blocks = []
    new_worker = np.empty((rows, cols), dtype=g.dtype)
    for j in range(P):
        b0, bn = block_range(rows, P, j)
        enc, new_worker[b0:b0 + bn] = q.encode_with_residual(y[b0:b0 + bn], step=base + j)
        blocks.append(enc)
    send_sizes = np.array([b.nbytes for b in blocks], dtype=np.int64)
    recv_sizes = np.empty(P, dtype=np.int64)
    c.Alltoall([send_sizes, MPI.INT64_T], [recv_sizes, MPI.INT64_T])
    recvbuf = np.empty(int(recv_sizes.sum()), dtype=np.uint8)
    c.Alltoallv([np.concatenate([b.buffer for b in blocks]), (send_sizes, _displs(send_sizes)), MPI.BYTE],
                [recvbuf, (recv_sizes, _displs(recv_sizes)), MPI.BYTE])
    _, count = block_range(rows, P, r)
    z = np.zeros((count, cols), dtype=g.dtype)
    part = np.empty_like(z)
    for j, at in enumerate(_displs(recv_sizes)):
        z += decode(recvbuf[at:at + recv_sizes[j]], out=part)
    if server is not None:
        z += server
    mine, new_server = q.encode_with_residual(z, step=base + P)
    sizes = np.empty(P, dtype=np.int64)
    c.Allgather([np.array([mine.nbytes], dtype=np.int64), MPI.INT64_T], [sizes, MPI.INT64_T])
    allbuf = np.empty(int(sizes.sum()), dtype=np.uint8)
    c.Allgatherv([mine.buffer, MPI.BYTE], [allbuf, (sizes, _displs(sizes)), MPI.BYTE])
    out = np.empty((rows, cols), dtype=g.dtype)
    for j, at in enumerate(_displs(sizes)):
        b0, bn = block_range(rows, P, j)
        decode(allbuf[at:at + sizes[j]], out=out[b0:b0 + bn])
    rs = int(send_sizes.sum() - send_sizes[r])
    ag = int(sizes.sum() - sizes[(r + 1) % P]) if P > 1 else 0
    return out.reshape(g.shape), new_worker.reshape(g.shape), new_server, (rs + ag, rs, ag, int(sizes.sum()))


def gradient(shape, dtype, step: int, seed: int = 5) -> np.ndarray:
    """This rank's gradient, with exact zeros of both signs among the values."""
    rng = np.random.default_rng([seed, rank, step])
    g = (rng.standard_normal(shape) * rng.choice([0.01, 1.0, 30.0], size=shape)).astype(dtype)
    g[rng.random(shape) < 0.05] = 0.0
    g[rng.random(shape) < 0.05] = -0.0
    return g


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# 0 rows, 1 row, fewer rows than ranks (up to 5), 1 column (and a vector), 0 columns, blocks of more than
# 32767 rows (32-bit words) at one rank, and an ordinary matrix
SHAPES = [(0, 4), (1, 7), (3, 5), (4, 2), (37, 1), (50,), (6, 0), (64, 9), (40000, 2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pi,sample,seed", [(4.0, 64, 9), (1.0, 4096, 0), (32.0, 300, 2**63 + 5)])
def test_c_path_is_the_python_algorithm_bit_for_bit(shape, dtype, pi, sample, seed):
    state = scaleml.AdaptiveAllreduceState(pi=pi, sample=sample, seed=seed)
    ref = comm.Dup()  # the reference's own messages
    worker = server = None
    try:
        for step in range(3):
            g = gradient(shape, dtype, step)
            got, info = scaleml.adaptive_allreduce(g, comm, state=state, name="w", return_info=True)
            want, worker, server, sizes = reference(g, ref, pi, sample, seed, step, worker, server)
            differ = [what for what, same in (
                ("results", same_bytes(got, want)),
                ("worker residuals", same_bytes(state.worker_residual("w"), worker)),
                ("server residuals", same_bytes(state.server_residual("w"), server)),
                ("sizes", (info.bytes_sent, info.reduce_scatter_bytes, info.allgather_bytes,
                           info.compressed_bytes) == sizes),
                ("step", state.step == step + 1)) if not same]
            # every rank asserts on every rank's findings: none goes on to the next step alone
            assert comm.allgather(differ) == [[]] * size, f"step {step}: differ {comm.allgather(differ)}"
    finally:
        ref.Free()


def test_average_and_a_sub_communicator_match_the_reference():
    sub = comm.Split(rank % 2, rank)
    try:
        state = scaleml.AdaptiveAllreduceState(pi=3, sample=50, seed=7)
        g = gradient((23, 4), np.float32, 0)
        got = scaleml.adaptive_allreduce(g, sub, state=state, average=True)
        want = reference(g, sub, 3.0, 50, 7, 0, None, None)[0]
        assert same_bytes(got, want / np.float32(sub.Get_size()))
    finally:
        sub.Free()


def test_counted_bytes_are_the_info_and_the_cost_model_predicts_them():
    rows, cols, pi = 3000, 12, 16.0
    g = gradient((rows, cols), np.float32, 0)
    _, info = scaleml.adaptive_allreduce(g, comm, state=scaleml.AdaptiveAllreduceState(pi=pi), return_info=True)
    assert info.bytes_sent == info.reduce_scatter_bytes + info.allgather_bytes
    P = size
    block = 64 + 16 * cols + 8  # header and shape, column table
    words = (info.compressed_bytes - P * block) / (rows * cols)  # q_a, as sent (padding included)
    model = algorithms.REGISTRY["adaptive"].cost(rows * cols, P, rows * cols, rows * cols * P, 4, 4, False, True,
                                                 0.0, 1.0, 0.0, 0.0, words, codec_kind=lib.SCALEML_CODEC_ADAPTIVE,
                                                 matrix_cols=cols)
    mean = comm.allreduce(info.bytes_sent) / P
    if P == 1:
        assert info.bytes_sent == 0 and model == 0.0
    else:
        # the model's 2 (P-1)/P n q_a + 2 (P-1) (16 c + 72) against the blocks as they came out
        assert abs(mean - model) <= 0.1 * model, (mean, model)


# ---- the registry: no one else picks `adaptive`, and it takes no other format ----

def test_only_the_adaptive_format_reaches_adaptive():
    a = algorithms.REGISTRY["adaptive"]
    assert not a.exact and a.codecs == {"adaptive"} and "adaptive" not in algorithms.LOSSY
    assert a.takes(lib.SCALEML_CODEC_ADAPTIVE) and not a.takes(lib.SCALEML_CODEC_QSGD)
    assert all(not algorithms.REGISTRY[name].takes(lib.SCALEML_CODEC_ADAPTIVE) for name in algorithms.LOSSY)
    args = (1 << 20, 4, 1 << 20, 4 << 20, 4, 4, False, True, 5e-6, 1e-9, 1e-10, 1e-5)
    qsgd = algorithms.costs(*args, 0.66)
    assert qsgd["adaptive"] == math.inf and all(math.isfinite(t) for k, t in qsgd.items() if k != "adaptive")
    own = algorithms.costs(*args, 0.1, codec_kind=lib.SCALEML_CODEC_ADAPTIVE, matrix_cols=64)
    assert math.isfinite(own["adaptive"]) and own["quantized_ring"] == math.inf
    # the candidates of the lossy drop-in, of sparse_allreduce with compression= and of quantized_allreduce
    # never hold it, whatever the predictions are
    x = np.zeros(1 << 20, np.float32)
    fmt = value_format(QSGD(bits=4))
    agreement = Agreement(1 << 20, 4 << 20, dense_fits=True)
    for call in (Call(x.size, x, fmt=fmt, mpi_allreduce=lambda: None), Call(x.size, x, fmt=fmt),
                 Call(x.size, x, fmt=fmt, lossy_only=True)):
        assert "adaptive" not in candidates(call, agreement)


def test_quantized_allreduce_refuses_adaptive_with_qsgd_on_every_rank():
    x = np.random.default_rng(rank).standard_normal(5000).astype(np.float32)
    with pytest.raises(ValueError, match="does not take the QSGD value format"):
        scaleml.quantized_allreduce(x, comm, QSGD(bits=4), algorithm="adaptive")
    _, info = scaleml.quantized_allreduce(x, comm, QSGD(bits=4), return_info=True)  # auto, and still usable
    assert info.algorithm in algorithms.LOSSY


def test_the_lossy_drop_in_never_runs_adaptive():
    lossy = scaleml.Comm(comm, compression=QSGD(bits=4), min_count=16)  # the same handle: not freed here
    x = np.random.default_rng(rank).standard_normal(1 << 15).astype(np.float32)
    out = np.empty_like(x)
    for _ in range(6):
        lossy.Allreduce(x, out)
        assert lossy.last_info is None or lossy.last_info.algorithm != "adaptive"


# ---- a rank that cannot encode or reduce: every rank raises, nothing changes, nobody hangs ----

def _expect_failure_everywhere(failing: int, g: np.ndarray, state: scaleml.AdaptiveAllreduceState, what: str):
    before = state.state_dict()
    if rank == failing:
        with pytest.raises(ValueError, match="non-finite"):
            scaleml.adaptive_allreduce(g, comm, state=state, name="t")
    else:
        with pytest.raises(ScaleMLError, match=f"rank {failing} could not {what}"):
            scaleml.adaptive_allreduce(g, comm, state=state, name="t")
    after = state.state_dict()
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    good = scaleml.adaptive_allreduce(np.ones((8, 3), np.float32), comm, state=state, name="ok")
    assert same_bytes(good, np.full((8, 3), size, np.float32))  # pi = 1, equal columns: exact


def test_an_owner_that_cannot_reduce_its_block_fails_every_rank():
    if size == 1:
        return
    state = scaleml.AdaptiveAllreduceState(pi=1)
    g = np.ones((2 * size, 3), np.float32)
    g[:2] = 3e38  # rows 0-1 are rank 0's block: P >= 2 contributions of 3e38 sum to inf there, and only there
    _expect_failure_everywhere(0, g, state, "reduce its row block")


def test_a_rank_that_cannot_encode_fails_every_rank():
    last = size - 1
    state = scaleml.AdaptiveAllreduceState(pi=1)
    g = np.ones((4, 3), np.float32)
    scaleml.adaptive_allreduce(g, comm, state=state, name="t")  # residuals exist (zero: equal columns)
    if rank == last:  # its worker residual plus its gradient overflows: y = inf
        s = state.state_dict()
        s["worker/t"] = np.full((4, 3), 3e38, np.float32)
        state.load_state_dict(s)
        g = np.full((4, 3), 3e38, np.float32)
    if size == 1:
        with pytest.raises(ValueError, match="non-finite"):
            scaleml.adaptive_allreduce(g, comm, state=state, name="t")
        return
    _expect_failure_everywhere(last, g, state, "encode its row blocks")

"""scaleml.adaptive_allreduce on every rank: identical results, the reduction it claims, error feedback, errors."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml.compress import AdaptiveQuant, decode
from scaleml.quantized import block_range

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def gradient(shape, dtype, step=0, seed=21, r=None):
    """Rank ``r``'s (default: this rank's) gradient at ``step``."""
    return np.random.default_rng([seed, rank if r is None else r, step]).standard_normal(shape).astype(dtype)


def same_bytes_everywhere(a: np.ndarray, c: MPI.Intracomm = comm) -> bool:
    gathered = c.allgather(a.tobytes())
    return all(g == gathered[0] for g in gathered)


def simulate(grads: list[np.ndarray], pi: float, sample: int, seed: int) -> np.ndarray:
    """The first call's result, recomputed on one rank from every rank's gradient with AdaptiveQuant alone:
    rank r encodes row block j with key (seed, r, step j); owner j sums the P decodings in rank order
    and encodes the sum with key (seed, j, step P)."""
    P = len(grads)
    g0 = grads[0]
    rows, cols = (g0.shape[0], g0.shape[1]) if g0.ndim == 2 else (g0.shape[0], 1)
    out = np.empty((rows, cols), g0.dtype)
    for j in range(P):
        b0, bn = block_range(rows, P, j)
        z = np.zeros((bn, cols), g0.dtype)
        for r, g in enumerate(grads):
            z += decode(AdaptiveQuant(pi, sample, seed, rank=r).encode(g.reshape(rows, cols)[b0:b0 + bn], step=j))
        out[b0:b0 + bn] = decode(AdaptiveQuant(pi, sample, seed, rank=j).encode(z, step=P))
    return out.reshape(g0.shape)


SHAPES = [(1, 1), (2, 5), (7, 3), (0, 4), (3, 0), (37, 11), (120, 16), (50,)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_result_is_the_scatter_reduce_allgather_and_identical_everywhere(shape, dtype):
    state = scaleml.AdaptiveAllreduceState(pi=4, sample=64, seed=9)
    g = gradient(shape, dtype)
    got, info = scaleml.adaptive_allreduce(g, comm, state=state, return_info=True)
    assert got.shape == g.shape and got.dtype == g.dtype
    assert same_bytes_everywhere(got)
    np.testing.assert_array_equal(got, simulate(comm.allgather(g), 4, 64, 9))
    rows = shape[0]
    assert (info.rows, info.cols, info.ranks) == (rows, shape[1] if len(shape) == 2 else 1, size)
    assert state.step == 1 and state.worker_residual("grad").shape == g.shape
    assert state.server_residual("grad").shape == (block_range(rows, size, rank)[1], info.cols)


def test_a_sub_communicator_works():
    sub = comm.Split(rank % 2, rank)
    try:
        state = scaleml.AdaptiveAllreduceState(pi=8, sample=128)
        g = gradient((30, 6), np.float32)
        got = scaleml.adaptive_allreduce(g, sub, state=state)
        assert same_bytes_everywhere(got, sub)
        np.testing.assert_array_equal(got, simulate(sub.allgather(g), 8, 128, 0))
    finally:
        sub.Free()


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_error_feedback_conserves_mass(dtype, tol):
    """results summed over steps + every worker residual + every server residual == sum of every gradient."""
    shape, steps = (45, 12), 16
    state = scaleml.AdaptiveAllreduceState(pi=8, sample=256, seed=1)
    applied = np.zeros(shape)
    my_grads = np.zeros(shape)
    for t in range(steps):
        g = gradient(shape, dtype, step=t)
        my_grads += g
        got = scaleml.adaptive_allreduce(g, comm, state=state, name="fc")
        assert same_bytes_everywhere(got)
        applied += got
    workers = comm.allreduce(state.worker_residual("fc").astype(np.float64))
    servers = np.concatenate(comm.allgather(state.server_residual("fc").astype(np.float64)))
    assert servers.shape == shape
    total = comm.allreduce(my_grads)
    scale = np.abs(total).max()
    np.testing.assert_allclose(applied + workers + servers, total, rtol=0, atol=tol * scale * steps * size)
    # and the residuals stay bounded: about 1.5 x one step's summed gradient at pi = 8 (sending nothing,
    # they would grow like sqrt(steps) = 4 x)
    one_step = np.linalg.norm(comm.allreduce(gradient(shape, np.float64, step=steps)))
    assert np.linalg.norm(workers + servers) < 2.5 * one_step


def test_pi_one_keeps_column_sums():
    """pi = 1 sends every non-zero entry, each as its column's mean of that sign: column sums survive both
    encodings (up to rounding), though single entries do not."""
    g = gradient((40, 9), np.float64)
    got = scaleml.adaptive_allreduce(g, comm, state=scaleml.AdaptiveAllreduceState(pi=1))
    total = comm.allreduce(g)
    # reconstruction values are float32: each encoding moves a column sum by float32 rounding of its entries
    bound = 4 * np.finfo(np.float32).eps * comm.allreduce(np.abs(g)).sum(axis=0)
    assert (np.abs(got.sum(axis=0) - total.sum(axis=0)) <= bound).all()
    assert np.count_nonzero(got) == np.count_nonzero(total)
    assert not np.allclose(got, total)  # per-entry values are column means, not the entries


def test_pi_one_is_exact_on_two_valued_columns():
    """With pi = 1, columns whose positive entries share one value and negative ones another are sent
    exactly: identical such gradients on every rank sum exactly, and every residual is zero."""
    rng = np.random.default_rng(4)  # the same on every rank
    signs = rng.integers(-1, 2, size=(23, 6))
    pos, neg = rng.integers(1, 8, 6) * 0.25, -rng.integers(1, 8, 6) * 0.125  # dyadic: sums are exact
    g = np.where(signs > 0, pos, np.where(signs < 0, neg, 0.0)).astype(np.float32)
    state = scaleml.AdaptiveAllreduceState(pi=1)
    got = scaleml.adaptive_allreduce(g, comm, state=state)
    np.testing.assert_array_equal(got, g * size)
    assert not state.worker_residual("grad").any() and not state.server_residual("grad").any()


def test_average_divides_the_same_result():
    shape = (33, 7)
    s_sum = scaleml.AdaptiveAllreduceState(pi=4, seed=2)
    s_avg = scaleml.AdaptiveAllreduceState(pi=4, seed=2)
    for t in range(2):
        g = gradient(shape, np.float32, step=t)
        total = scaleml.adaptive_allreduce(g, comm, state=s_sum)
        mean = scaleml.adaptive_allreduce(g, comm, state=s_avg, average=True)
        np.testing.assert_array_equal(mean, total / np.float32(size))
    np.testing.assert_array_equal(s_sum.worker_residual("grad"), s_avg.worker_residual("grad"))


def test_non_contiguous_input_is_copied():
    base = gradient((20, 12), np.float64)
    a = scaleml.adaptive_allreduce(base[:, ::2], comm, state=scaleml.AdaptiveAllreduceState(pi=3))
    b = scaleml.adaptive_allreduce(np.ascontiguousarray(base[:, ::2]), comm,
                                   state=scaleml.AdaptiveAllreduceState(pi=3))
    np.testing.assert_array_equal(a, b)


def test_save_and_load_resume_identically():
    shape = (26, 10)

    def run(state, ts):
        return [scaleml.adaptive_allreduce(gradient(shape, np.float32, step=t), comm, state=state, name="w")
                for t in ts]

    def make():
        return scaleml.AdaptiveAllreduceState(pi=6, sample=32, seed=5)

    full = run(make(), range(6))
    state = make()
    run(state, range(3))
    with tempfile.TemporaryDirectory() as tmp:  # not tmp_path: ranks would race on pytest's shared base dir
        path = f"{tmp}/adaptive-rank{rank}.npz"  # each rank its own file
        state.save(path)
        resumed = make()
        resumed.load(path)
    assert resumed.step == 3 and resumed.names() == ["w"]
    for a, b in zip(full[3:], run(resumed, range(3, 6))):
        np.testing.assert_array_equal(a, b)
    lost = make()
    lost.step = 3
    assert not np.array_equal(run(lost, [3])[0], full[3])


def test_bytes_do_not_grow_with_the_rank_count():
    """Per rank, about 2 (P-1)/P of one encoded matrix plus a column table per block: measured on this
    communicator and on one of about half its ranks, for the same matrix."""
    shape = (4096, 16)
    g = gradient(shape, np.float32, seed=3, r=0)  # one matrix: the size of its encoding depends on nothing else

    def mean_bytes(c):
        _, info = scaleml.adaptive_allreduce(g, c, state=scaleml.AdaptiveAllreduceState(pi=16), return_info=True)
        assert info.bytes_sent == info.reduce_scatter_bytes + info.allgather_bytes
        P = c.Get_size()
        # the words: 2 (P-1)/P of the result's encoding; the column tables: about 16 cols + 72 per block sent
        bound = 2 * (P - 1) / P * info.compressed_bytes * 1.2 + 2 * (P - 1) * (16 * shape[1] + 80)
        assert info.bytes_sent <= bound
        return c.allreduce(info.bytes_sent) / P, P

    full, P = mean_bytes(comm)
    half = comm.Split(0 if rank < (size + 1) // 2 else 1, rank)
    try:
        part, Q = mean_bytes(half)
    finally:
        half.Free()
    if size == 1:
        assert full == 0
        return
    one_matrix = AdaptiveQuant(16, rank=0).encode(g).nbytes
    assert 0.5 * one_matrix < full < 2.5 * one_matrix
    if rank == 0 and Q > 1:
        # per (P-1)/P, the bytes at P and at about P/2 ranks agree to within the column tables
        assert full / (P - 1) * P < 1.25 * part / (Q - 1) * Q, (full, P, part, Q)
        assert full < 1.6 * part  # raw: (P-1)/P grows by at most 1.5 (2 -> 4 ranks), 8/7 from 4 to 8


# ---- bad input on one rank raises on every rank; the state and the communicator are left as they were ----

def _state_with(**arrays):
    s = scaleml.AdaptiveAllreduceState(pi=4)
    s.load_state_dict(arrays)
    return s


BAD = {
    "integer gradient": (lambda: dict(grad=np.ones((12, 5), np.int32)), TypeError),
    "3-d gradient": (lambda: dict(grad=np.ones((12, 5, 1))), ValueError),
    "NaN": (lambda: dict(grad=np.full((12, 5), np.nan)), ValueError),
    "Inf": (lambda: dict(grad=np.r_[np.ones((11, 5)), np.full((1, 5), np.inf)]), ValueError),
    "not a state": (lambda: dict(state={"pi": 4}), TypeError),
    "name not a str": (lambda: dict(name=3), TypeError),
    "worker residual of another shape": (lambda: dict(grad=np.ones((10, 6))), ValueError),
    "worker residual of another dtype": (lambda: dict(grad=np.ones((12, 5), np.float32)), ValueError),
    "state of another rank": (lambda: dict(state=_state_with(layout=np.array([rank + 1, size]))), ValueError),
}


@pytest.mark.parametrize("bad_rank", ["last", "all"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_on_one_rank_raises_everywhere(case, bad_rank):
    state = scaleml.AdaptiveAllreduceState(pi=4)
    good = dict(grad=gradient((12, 5), np.float64), state=state, name="g")
    scaleml.adaptive_allreduce(comm=comm, **good)  # a first step: the residuals exist
    before = state.state_dict()
    overrides, kind = BAD[case]
    mine = good | overrides() if bad_rank == "all" or rank == size - 1 else good
    with pytest.raises(kind) as caught:
        scaleml.adaptive_allreduce(comm=comm, **mine)
    if mine is good:
        assert str(caught.value).startswith("adaptive_allreduce: ") and f"on rank {size - 1}" in str(caught.value)
    after = state.state_dict()
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert same_bytes_everywhere(scaleml.adaptive_allreduce(comm=comm, **good))


def test_shapes_that_differ_between_ranks_raise_everywhere():
    state = scaleml.AdaptiveAllreduceState(pi=4)
    if size == 1:
        return
    # the same element count, other row counts: caught by the agreement on rows
    with pytest.raises(ValueError, match="number of rows differs"):
        scaleml.adaptive_allreduce(np.ones((4, 6) if rank % 2 else (6, 4)), comm, state=state, name="t")
    with pytest.raises(ValueError, match="adaptive_allreduce: n differs"):
        scaleml.adaptive_allreduce(np.ones((4, 6 + rank % 2)), comm, state=state, name="u")
    assert state.names() == [] and state.step == 0


def test_bad_settings_are_refused():
    for kwargs in (dict(pi=0.5), dict(pi=float("nan")), dict(sample=0), dict(sample=2.5)):
        with pytest.raises(ValueError):
            scaleml.AdaptiveAllreduceState(**kwargs)
    with pytest.raises(ValueError, match="worker and a server"):
        _state_with(**{"worker/a": np.ones(3)})
    with pytest.raises(ValueError, match="unexpected key"):
        _state_with(bogus=np.ones(1))

"""PowerSGD (scaleml.compress.powersgd) in one process: against a NumPy reference of the algorithm, the exact
phase, non-matrix and tiny tensors, error feedback's mass, warm start on and off, the state round trip, names.

Several ranks are emulated by threads that sum their buffers through a barrier (every "rank" gets the same
bits, as from an AllReduce); tests/mpi/mpi_powersgd.py runs the real collectives at 1 to 5 ranks.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from conftest import run_mpi

from scaleml import bench
from scaleml.bench import methods
from scaleml.compress import QSGD
from scaleml.compress.names import parse_compression
from scaleml.compress.powersgd import PowerSGD, _stream, compression_rank, orthogonalize, random_factor

SHAPES = [(24, 40), (40,), (3, 3), (16, 4, 3), ()]  # a matrix, a bias, a tiny matrix, a 3-D tensor, a scalar
RANK = 2


class ThreadSum:
    """An AllReduce of W threads: each rank's buffer summed in rank order, the same bits to every rank."""

    def __init__(self, W: int) -> None:
        self.W = W
        self.barrier = threading.Barrier(W)
        self.buffers: list[np.ndarray | None] = [None] * W
        self.calls = 0

    def for_rank(self, rank: int):
        def total(buf: np.ndarray) -> int:
            self.buffers[rank] = buf.copy()
            self.barrier.wait()
            s = self.buffers[0].copy()
            for b in self.buffers[1:]:
                s += b
            self.barrier.wait()
            buf[...] = s
            if rank == 0:
                self.calls += 1
            return buf.nbytes
        return total


def run_ranks(states: list[PowerSGD], xs: list[np.ndarray], shapes, *, average: bool = True,
              bucket: str = "bucket0") -> list[int]:
    """One step of every emulated rank (threads); each x reduced in place. The bytes each rank reported."""
    W = len(states)
    summer = ThreadSum(W)
    sent = [0] * W
    errors: list[BaseException] = []

    def work(rank: int) -> None:
        try:
            total = summer.for_rank(rank)
            sent[rank] = states[rank].reduce(bucket, xs[rank], shapes, total, total, world_size=W, average=average)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            summer.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(W)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for s in states:
        s.advance()
    return sent


def flat(tensors) -> np.ndarray:
    return np.concatenate([np.asarray(t, np.float32).reshape(-1) for t in tensors])


def split(x: np.ndarray, shapes) -> list[np.ndarray]:
    out, at = [], 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        out.append(x[at:at + n].reshape(s))
        at += n
    return out


def gradients(step: int, W: int, shapes=SHAPES) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 * step + 7)
    return [flat(rng.standard_normal(s) for s in shapes) for _ in range(W)]


def qr_columns(a: np.ndarray) -> np.ndarray:
    """Orthonormal columns of a (n, r) by NumPy's QR, signs fixed so R's diagonal is positive (Gram-Schmidt's)."""
    q, r = np.linalg.qr(a)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


class Reference:
    """PowerSGD in float64 NumPy from the paper and torch's hook, per tensor: P = M Q, sum, orthogonalise (QR),
    Q = M^T P, sum / W, approximation P Q^T, residual M - P Q^T; exact tensors averaged."""

    def __init__(self, W: int, shapes, rank: int, *, warm_start: bool = True, error_feedback: bool = True,
                 start_iter: int = 0, seed: int = 0) -> None:
        self.W, self.shapes, self.rank = W, shapes, rank
        self.warm_start, self.error_feedback, self.start_iter, self.seed = warm_start, error_feedback, start_iter, seed
        self.q: dict[int, np.ndarray] = {}
        self.residual = [[np.zeros(s) for s in shapes] for _ in range(W)]
        self.step = 0

    def __call__(self, grads: list[np.ndarray]) -> list[np.ndarray]:
        per_rank = [[t.astype(np.float64) for t in split(g, self.shapes)] for g in grads]
        out = []
        for j, s in enumerate(self.shapes):
            r = compression_rank(s, self.rank, 2.0)
            if not r or self.step < self.start_iter:
                out.append(sum(p[j] for p in per_rank) / self.W)
                continue
            ms = []
            for i in range(self.W):
                m = per_rank[i][j].reshape(s[0], -1)
                if self.error_feedback:
                    m = m + self.residual[i][j].reshape(m.shape)
                ms.append(m)
            q = self.q.get(j) if self.warm_start else None
            if q is None:
                q = random_factor(self.seed, self.step, _stream("bucket0", j), ms[0].shape[1], r, np.float64).T
            q = qr_columns(q)
            p = qr_columns(sum(m @ q for m in ms))
            q = sum(m.T @ p for m in ms) / self.W
            approx = p @ q.T
            if self.warm_start:
                self.q[j] = q
            for i in range(self.W):
                self.residual[i][j] = (ms[i] - approx).reshape(s)
            out.append(approx.reshape(s))
        self.step += 1
        return out


# ---- the pieces ---------------------------------------------------------------------------------

def test_which_tensors_are_compressed():
    assert compression_rank((), 4, 2) == 0 and compression_rank((1000,), 4, 2) == 0
    assert compression_rank((3, 3), 1, 2) == 0           # (3 + 3) * 1 * 2 = 12 >= 9
    assert compression_rank((24, 40), 2, 2) == 2         # 64 * 2 * 2 = 256 < 960
    assert compression_rank((16, 4, 3), 2, 2) == 2       # viewed as 16 x 12: 28 * 2 * 2 = 112 < 192
    assert compression_rank((16, 4, 3), 4, 2) == 0       # 28 * 4 * 2 = 224 >= 192
    assert compression_rank((2, 500), 4, 0.5) == 2       # the rank is at most min(n, m)
    assert compression_rank((24, 40), 2, 10) == 0        # 64 * 2 * 10 = 1280 >= 960


def test_orthogonalize_is_gram_schmidt_and_guards_zero_columns():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 50)).astype(np.float32)
    expected = qr_columns(a.T.astype(np.float64)).T
    b = a.copy()
    assert not orthogonalize(b)
    np.testing.assert_allclose(b, expected, atol=2e-6)
    np.testing.assert_allclose(b @ b.T, np.eye(3), atol=2e-6)
    z = a.copy()
    z[1] = 0
    assert orthogonalize(z)
    assert np.isfinite(z).all() and not z[1].any()
    np.testing.assert_allclose(z[[0, 2]] @ z[[0, 2]].T, np.eye(2), atol=2e-6)
    assert orthogonalize(np.zeros((2, 5), np.float32))


def test_random_factors_are_seeded_per_step_and_tensor():
    a = random_factor(0, 3, _stream("bucket2", 1), 100, 2, np.float32)
    assert a.shape == (2, 100) and a.dtype == np.float32
    np.testing.assert_array_equal(a, random_factor(0, 3, _stream("bucket2", 1), 100, 2, np.float32))
    for other in (random_factor(1, 3, _stream("bucket2", 1), 100, 2, np.float32),
                  random_factor(0, 4, _stream("bucket2", 1), 100, 2, np.float32),
                  random_factor(0, 3, _stream("bucket2", 0), 100, 2, np.float32),
                  random_factor(0, 3, _stream("bucket1", 1), 100, 2, np.float32)):
        assert not np.array_equal(a, other)
    big = random_factor(5, 0, 0, 100000, 1, np.float64)
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02


# ---- against the reference ----------------------------------------------------------------------

@pytest.mark.parametrize("W", [1, 3])
@pytest.mark.parametrize("warm_start", [True, False])
def test_steps_match_the_numpy_reference(W, warm_start):
    states = [PowerSGD(RANK, start_iter=0, warm_start=warm_start, seed=4) for _ in range(W)]
    ref = Reference(W, SHAPES, RANK, warm_start=warm_start, seed=4)
    for step in range(6):
        grads = gradients(step, W)
        xs = [g.copy() for g in grads]
        run_ranks(states, xs, SHAPES)
        expected = flat(ref(grads))
        for x in xs:
            np.testing.assert_array_equal(x, xs[0])  # every rank the same bits
        np.testing.assert_allclose(xs[0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        for rank in range(W):  # each rank's residual is the reference's
            np.testing.assert_allclose(states[rank].residual("bucket0"), flat(ref.residual[rank]), atol=2e-4)


def test_warm_start_keeps_q_and_cold_start_draws_it_every_step():
    warm, cold = PowerSGD(RANK, start_iter=0), PowerSGD(RANK, start_iter=0, warm_start=False)
    for state in (warm, cold):
        for step in range(3):
            run_ranks([state], [gradients(step, 1)[0]], SHAPES)
    assert cold.q("bucket0", 0) is None and not [k for k in cold.state_dict() if k.startswith("powersgd/q/")]
    q = warm.q("bucket0", 0)
    assert q.shape == (40, RANK) and warm.q("bucket0", 3).shape == (12, RANK) and warm.q("bucket0", 1) is None
    # the kept Q is M^T P of the last step, not a draw of the random stream
    drawn = random_factor(0, 2, _stream("bucket0", 0), 40, RANK, np.float32).T
    assert not np.allclose(q, drawn)
    # warm start: a smooth matrix seen again is approximated better than from a cold start
    g = np.outer(np.arange(24.0), np.ones(40)) + np.outer(np.ones(24), np.sin(np.arange(40.0)))
    g = g + 0.5 * np.random.default_rng(1).standard_normal(g.shape)
    shapes = [(24, 40)]
    errors = {}
    for warm_start in (True, False):
        state = PowerSGD(1, start_iter=0, warm_start=warm_start, error_feedback=False)
        for _ in range(4):
            x = g.astype(np.float32).reshape(-1).copy()
            run_ranks([state], [x], shapes)
        errors[warm_start] = np.linalg.norm(x - g.reshape(-1))
    assert errors[True] < errors[False]


def test_the_exact_phase_averages_exactly_and_keeps_no_state():
    W = 3
    states = [PowerSGD(RANK, start_iter=2, seed=1) for _ in range(W)]
    for step in range(3):
        grads = gradients(step, W)
        xs = [g.copy() for g in grads]
        run_ranks(states, xs, SHAPES)
        exact = (grads[0] + grads[1] + grads[2]) / np.float32(W)
        if step < 2:
            np.testing.assert_array_equal(xs[0], exact)
            assert states[0].residual("bucket0") is None and states[0].q("bucket0", 0) is None
        else:
            assert not np.array_equal(xs[0], exact)
            assert states[0].residual("bucket0") is not None and states[0].q("bucket0", 0) is not None
    assert states[0].state_dict()["powersgd/step"] == 3


def test_non_matrix_and_tiny_tensors_go_exact():
    W = 2
    states = [PowerSGD(RANK, start_iter=0) for _ in range(W)]
    for step in range(3):
        grads = gradients(step, W)
        xs = [g.copy() for g in grads]
        run_ranks(states, xs, SHAPES)
        exact = split((grads[0] + grads[1]) / np.float32(W), SHAPES)
        got = split(xs[0], SHAPES)
        residual = split(states[0].residual("bucket0"), SHAPES)
        for j in (1, 2, 4):  # the bias, the 3 x 3 matrix and the scalar: exact averages, no residual
            np.testing.assert_array_equal(got[j], exact[j])
            assert not residual[j].any()
        for j in (0, 3):
            assert not np.allclose(got[j], exact[j])
            assert np.linalg.matrix_rank(got[j].reshape(got[j].shape[0], -1).astype(np.float64), tol=1e-4) <= RANK


def test_a_bucket_of_only_exact_tensors_is_one_exact_sum():
    state = PowerSGD(RANK, start_iter=0)
    calls = []
    x = np.arange(12, dtype=np.float32)
    state.reduce("bucket0", x, [(12,)], lambda b: calls.append("exact") or 0, lambda b: calls.append("factors") or 0,
                 world_size=1)
    assert calls == ["exact"] and state.residual("bucket0") is None


def test_error_feedback_conserves_mass():
    """Per rank: the compensated gradient M = g + residual_before is split into the approximation everyone
    applies and the new residual, residual_after = M - P Q^T, exactly as computed (bit for bit); so
    g + residual_before == approx + residual_after to float32 rounding, and over the ranks the sum of the
    gradients and old residuals is W * approx plus the sum of the new residuals."""
    W = 3
    states = [PowerSGD(RANK, start_iter=0, seed=2) for _ in range(W)]
    before = [np.zeros(sum(int(np.prod(s)) for s in SHAPES), np.float32) for _ in range(W)]
    exact_part = np.zeros_like(before[0], dtype=bool)
    for j, t in enumerate(split(exact_part, SHAPES)):
        t[...] = compression_rank(SHAPES[j], RANK, 2) == 0
    for step in range(4):
        grads = gradients(step, W)
        xs = [g.copy() for g in grads]
        run_ranks(states, xs, SHAPES)
        approx = xs[0]
        total_in = np.zeros_like(approx, dtype=np.float64)
        total_out = W * approx.astype(np.float64)
        for rank in range(W):
            m = grads[rank] + before[rank]  # the compensated gradient, as PowerSGD formed it
            after = states[rank].residual("bucket0")
            np.testing.assert_array_equal(after[~exact_part], (m - approx)[~exact_part])
            assert not after[exact_part].any()
            total_in += np.where(exact_part, grads[rank], m)
            total_out += after
            before[rank] = after.copy()
        np.testing.assert_allclose(total_out, total_in, atol=1e-5 * np.abs(total_in).max())


def test_without_error_feedback_there_is_no_residual():
    state = PowerSGD(RANK, start_iter=0, error_feedback=False)
    run_ranks([state], [gradients(0, 1)[0]], SHAPES)
    assert state.residual("bucket0") is None and not [k for k in state.state_dict() if k.startswith("ef/")]


def test_an_exactly_low_rank_average_is_recovered():
    W, r = 3, 2
    rng = np.random.default_rng(3)
    u = rng.standard_normal((30, r))
    shapes = [(30, 50)]
    states = [PowerSGD(r, start_iter=0, error_feedback=False) for _ in range(W)]
    grads = [(u @ rng.standard_normal((r, 50))).astype(np.float32).reshape(-1) for _ in range(W)]
    xs = [g.copy() for g in grads]
    run_ranks(states, xs, shapes)
    mean = sum(g.astype(np.float64) for g in grads) / W
    np.testing.assert_allclose(xs[0], mean, atol=1e-5 * np.abs(mean).max())


def test_sum_instead_of_average():
    W = 2
    a = [PowerSGD(RANK, start_iter=0) for _ in range(W)]
    b = [PowerSGD(RANK, start_iter=0) for _ in range(W)]
    grads = gradients(0, W)
    xa, xb = [g.copy() for g in grads], [g.copy() for g in grads]
    run_ranks(a, xa, SHAPES)
    run_ranks(b, xb, SHAPES, average=False)
    np.testing.assert_allclose(xb[0], W * xa[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(a[0].residual("bucket0"), b[0].residual("bucket0"))


def test_state_round_trip_continues_bit_for_bit():
    W = 2
    make = [lambda: PowerSGD(RANK, start_iter=1, seed=9, factor_compression=None),
            lambda: PowerSGD(RANK, start_iter=1, seed=9, factor_compression=QSGD(bits=8, rank=0))]
    for factory in make:
        states = [factory() for _ in range(W)]
        for step in range(3):
            run_ranks(states, gradients(step, W), SHAPES)
        saved = [s.state_dict() for s in states]
        assert {"powersgd/step", "powersgd/q/bucket0/0", "powersgd/q/bucket0/3", "ef/residual/bucket0/worker"} <= \
            set(saved[0])
        np.testing.assert_array_equal(saved[0]["powersgd/q/bucket0/0"], saved[1]["powersgd/q/bucket0/0"])
        resumed = [factory() for _ in range(W)]
        for s, st in zip(resumed, saved):
            s.load_state_dict(st)
        for step in range(3, 6):
            xa, xb = gradients(step, W), gradients(step, W)
            run_ranks(states, xa, SHAPES)
            run_ranks(resumed, xb, SHAPES)
            np.testing.assert_array_equal(xa[0], xb[0])
        for a, b in zip(states, resumed):
            for k, v in a.state_dict().items():
                np.testing.assert_array_equal(v, b.state_dict()[k])


def test_bad_state_and_arguments_raise():
    with pytest.raises(ValueError, match="rank must be"):
        PowerSGD(0)
    with pytest.raises(ValueError, match="start_iter"):
        PowerSGD(1, start_iter=-1)
    with pytest.raises(TypeError, match="factor_compression"):
        PowerSGD(1, factor_compression="qsgd8")
    s = PowerSGD(1)
    with pytest.raises(ValueError, match="lacks 'powersgd/step'"):
        s.load_state_dict({})
    with pytest.raises(ValueError, match="unexpected key"):
        s.load_state_dict({"powersgd/step": np.array(0), "ef/residual/bucket0/server": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="factor compression"):
        s.load_state_dict({"powersgd/step": np.array(0), "powersgd/factor_compressor/step": np.array(2)})
    with pytest.raises(ValueError, match="has 5 elements"):
        s.reduce("bucket0", np.zeros(5, np.float32), [(2, 3)], lambda b: 0, lambda b: 0, world_size=1)


def test_names():
    spec = parse_compression("powersgd4")
    assert (spec.kind, spec.powersgd_rank, spec.factor_bits, spec.error_feedback, spec.lossy) == \
        ("powersgd", 4, 0, True, True)
    assert spec.compressor() is None and spec.fixed_algorithm is None
    state = spec.powersgd(seed=3, rank=1)
    assert state.rank == 4 and state.factor_compression is None and state.seed == 3
    q8 = parse_compression(" PowerSGD1_Q8 ").powersgd(rank=2)
    assert q8.rank == 1 and isinstance(q8.factor_compression, QSGD) and q8.factor_compression.bits == 8
    assert parse_compression("qsgd4").powersgd() is None
    for bad, message in (("powersgd0", ">= 1"), ("powersgd", "unknown compression"),
                         ("powersgd2_q4", "unknown compression"), ("powersgd_q8", "unknown compression")):
        with pytest.raises(ValueError, match=message):
            parse_compression(bad)
    with pytest.raises(ValueError, match="powersgdR or powersgdR_q8"):
        parse_compression("zip")


def test_a_reordered_bucket_moves_its_state_along():
    """DDP reorders a bucket's parameters after its first step (in a resumed job too): each tensor's residual
    and Q follow it, so the results per tensor are those of the old order, bit for bit."""
    order = [3, 0, 4, 2, 1]
    reordered = [SHAPES[i] for i in order]
    a, b = PowerSGD(RANK, start_iter=0), PowerSGD(RANK, start_iter=0)
    for step in range(2):
        run_ranks([a], [gradients(step, 1)[0]], SHAPES)
        run_ranks([b], [gradients(step, 1)[0]], SHAPES)
    saved = b.state_dict()
    assert saved["powersgd/layout/bucket0"] == '[[24, 40], [40], [3, 3], [16, 4, 3], []]'
    b = PowerSGD(RANK, start_iter=0)
    b.load_state_dict(saved)
    for step in range(2, 4):
        x = gradients(step, 1)[0]
        xa = x.copy()
        run_ranks([a], [xa], SHAPES)
        xb = flat(split(x, SHAPES)[i] for i in order)
        run_ranks([b], [xb], reordered)
        np.testing.assert_array_equal(flat(split(xa, SHAPES)[i] for i in order), xb)
    # tensors of one shape cannot be told apart: the bucket starts again
    c = PowerSGD(RANK, start_iter=0)
    twins = [(24, 40), (40,), (24, 40)]
    run_ranks([c], [gradients(0, 1, twins)[0]], twins)
    run_ranks([c], [gradients(1, 1, twins[::-1])[0]], twins[::-1])
    run_ranks([c], [gradients(1, 1, [(40,), (24, 40), (24, 40)])[0]], [(40,), (24, 40), (24, 40)])
    assert c.state_dict()["powersgd/layout/bucket0"] == '[[40], [24, 40], [24, 40]]'


def test_bench_methods_register_and_view_the_vector_as_a_square_matrix():
    for name in ("powersgd1", "powersgd4", "powersgd4_q8"):
        assert bench.register_compression(name) == name and name not in bench.LOSSLESS
    for name in ("powersgd0", "powersgd", "powersgd4_q4"):
        with pytest.raises(ValueError, match="unknown compression"):
            bench.register_compression(name)
    assert methods.powersgd_matrix_shape(8192) == (91, 91) and methods.powersgd_matrix_shape(100) == (10, 10)
    assert methods.powersgd_matrix_shape(101) == (11, 10) and methods.powersgd_matrix_shape(1) == (1, 1)


def test_bench_rows_have_bytes_and_error(tmp_path):
    out = tmp_path / "p.json"
    names = ["powersgd1", "powersgd4", "powersgd4_q8"]
    result = run_mpi(2, ["-m", "scaleml.bench", "--n", "8192", "--density", "1", "-w", "1", "-i", "6",
                         "--methods", "mpi_allreduce", "--compression", *names, "--json", str(out)], timeout=300)
    assert result.returncode == 0, result.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    # 91 x 91: rank r sends P and Q, 2 * 91 * r floats, as two ring AllReduces (2 (P-1)/P = 1 at P = 2)
    assert rows["powersgd1"]["bytes_sent_per_rank"] == 2 * 91 * 1 * 4
    assert rows["powersgd4"]["bytes_sent_per_rank"] == 2 * 91 * 4 * 4
    assert 0 < rows["powersgd4_q8"]["bytes_sent_per_rank"] < rows["powersgd4"]["bytes_sent_per_rank"]
    for name in names:
        # random data is full-rank: one call's rank-r error is large, and error feedback's residual makes the
        # later calls' larger still; the mean over calls approaches the sum
        assert not rows[name]["lossless"] and 0.5 < rows[name]["rel_error"] < 10, name
        assert rows[name]["rel_error_time_avg"] < rows[name]["rel_error"], name
        assert rows[name]["bytes_sent_per_rank"] < rows["mpi_allreduce"]["bytes_sent_per_rank"] / 10
    assert rows["powersgd4"]["rel_error_time_avg"] < rows["powersgd1"]["rel_error_time_avg"]

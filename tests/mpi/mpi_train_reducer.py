"""scaleml.train.GradientReducer on every rank: averages, identical results, fusion, state, errors, the README."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import GradientReducer, TrainingError, agree, check_replicas
from scaleml.train.consistency import ReplicaMismatchError

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

ALL = ["none", "dropin", "sparse", "topk0.05", "qsgd4", "qsgd4_ef", "qsgd8", "onebit", "adaptive", "fp16", "bf16"]
SHAPES = [(40, 30), (30,), (30, 10), (10,), (7,)]  # two matrices (compressed at min_compress_size=64), biases


def gradients(step: int, seed: int = 0, sparse: bool = False) -> list[np.ndarray]:
    """This rank's gradients at ``step`` (ReLU-like zeros when ``sparse``)."""
    rng = np.random.default_rng([seed, rank, step])
    out = []
    for s in SHAPES:
        g = rng.standard_normal(s).astype(np.float32)
        if sparse:
            g[rng.random(s) < 0.8] = 0
        out.append(g)
    return out


def mean_over_ranks(grads: list[np.ndarray]) -> list[np.ndarray]:
    everyone = comm.allgather(grads)
    return [np.mean([np.asarray(e[i], np.float64) for e in everyone], axis=0) for i in range(len(grads))]


def identical_everywhere(arrays: list[np.ndarray]) -> bool:
    mine = b"".join(a.tobytes() for a in arrays)
    return all(x == mine for x in comm.allgather(mine))


@pytest.mark.parametrize("compression", ["none", "dropin", "sparse"])
@pytest.mark.parametrize("fusion_bytes", [0, 1 << 20])
def test_exact_paths_average(compression, fusion_bytes):
    reducer = GradientReducer(comm, compression, fusion_bytes=fusion_bytes, min_compress_size=64)
    for step in range(3):
        grads = gradients(step, sparse=compression == "sparse")
        want = mean_over_ranks(grads)
        out = reducer.reduce(grads)
        assert all(o is g for o, g in zip(out, grads))
        for got, w in zip(out, want):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
        assert identical_everywhere(out)
    expected_collectives = len(SHAPES) if fusion_bytes == 0 else (1 if compression == "none" else 2)
    assert reducer.stats.collectives == 3 * expected_collectives
    assert reducer.stats.calls == 3


@pytest.mark.parametrize("compression", ALL)
def test_every_path_is_identical_on_every_rank_and_close_to_the_mean(compression):
    reducer = GradientReducer(comm, compression, min_compress_size=64, seed=1)
    total_err = total_norm = 0.0
    for step in range(4):
        grads = gradients(step)
        want = mean_over_ranks(grads)
        out = reducer.reduce(grads)
        assert identical_everywhere(out)
        for got, w in zip(out, want):
            assert got.shape == w.shape and got.dtype == np.float32
        # the small tensors (below min_compress_size) are exact whatever the compression
        for i in (1, 3, 4):
            np.testing.assert_allclose(out[i], want[i], rtol=1e-5, atol=1e-6)
        total_err += sum(float(np.sum((o - w) ** 2)) for o, w in zip(out, want))
        total_norm += sum(float(np.sum(w ** 2)) for w in want)
    # A sanity bound on the lossy paths (each is within its own bounds in its own tests). QSGD (L2 norm,
    # buckets of d = 512, s = 2^B - 1 levels) has relative variance up to min(d/s^2, sqrt(d)/s) per encoding:
    # a relative error of about 1.2 at 4 bits, 0.09 at 8 bits. Top-k, 1-bit and adaptive send a small part and
    # keep the rest in their residuals; exact paths and casts are within rounding.
    rel = np.sqrt(total_err / total_norm)
    limit = {"topk0.05": 1.0, "onebit": 1.0, "adaptive": 1.0, "qsgd4": 1.5, "qsgd4_ef": 1.5, "qsgd8": 0.2,
             "fp16": 1e-3, "bf16": 1e-2}.get(compression, 1e-5)
    assert rel < limit, f"{compression}: relative error {rel:.3f}"
    st = reducer.stats
    assert st.bytes_sent > 0 if size > 1 else st.bytes_sent == 0
    if size > 1 and compression in ("topk0.05", "qsgd4", "onebit", "fp16"):
        assert st.bytes_sent < st.bytes_uncompressed, (st.bytes_sent, st.bytes_uncompressed)
    assert st.seconds_collective > 0 and st.calls == 4


@pytest.mark.parametrize("compression", ["topk0.05", "onebit", "qsgd4", "qsgd4_ef", "adaptive"])
def test_state_dict_continues_exactly(compression):
    a = GradientReducer(comm, compression, min_compress_size=64, seed=2)
    for step in range(3):
        a.reduce(gradients(step))
    state = {k: v.copy() for k, v in a.state_dict().items()}
    if compression != "qsgd4":  # error feedback: the residuals are in the state
        assert any(k.startswith(("ef/residual/", "adaptive/worker/")) for k in state), sorted(state)
    b = GradientReducer(comm, compression, min_compress_size=64, seed=2)
    b.load_state_dict(state)
    for step in range(3, 5):
        out_a, out_b = a.reduce(gradients(step)), b.reduce(gradients(step))
        assert all(np.array_equal(x, y) for x, y in zip(out_a, out_b)), step
    fresh = GradientReducer(comm, compression, min_compress_size=64, seed=2)
    differs = not all(np.array_equal(x, y) for x, y in zip(fresh.reduce(gradients(5)), a.reduce(gradients(5))))
    assert differs  # without the state the continuation is not the same: the state matters
    with pytest.raises(ValueError, match="compression"):
        GradientReducer(comm, "none").load_state_dict(state)
    wrong_rank = dict(state, rank=np.array(rank + 1))
    with pytest.raises(ValueError, match="belongs to rank"):
        GradientReducer(comm, compression, min_compress_size=64).load_state_dict(wrong_rank)


@pytest.mark.parametrize("min_compress_size", [64, 0])  # the check rides on an exact bucket / has its own
def test_a_layout_problem_on_one_rank_raises_on_every_rank(min_compress_size):
    reducer = GradientReducer(comm, "qsgd4", min_compress_size=min_compress_size)
    reducer.reduce(gradients(0))
    grads = gradients(1)
    if rank == size - 1:
        grads = grads[:-1]  # this rank alone passes one tensor less
    expected = "shapes and dtypes changed" if rank == size - 1 else "invalid gradients on (1 )?rank"
    with pytest.raises(ValueError, match=expected):
        reducer.reduce(grads)
    grads = gradients(2)
    want = mean_over_ranks(grads)
    reducer.reduce(grads)  # and the reducer is still usable
    assert identical_everywhere(grads)
    if min_compress_size:
        np.testing.assert_allclose(grads[1], want[1], rtol=1e-5, atol=1e-6)  # a bias: exact
    if size > 1:
        fresh = GradientReducer(comm, "none")
        other = [np.zeros(3 + (rank == 1), np.float32)]
        with pytest.raises(ValueError, match="ranks pass gradients of different shapes"):
            fresh.reduce(other)
        bad = [np.zeros(3, np.int32 if rank == 1 else np.float32)]
        with pytest.raises(ValueError, match="float32 or float64|invalid gradients on rank 1"):
            GradientReducer(comm, "none").reduce(bad)


def test_agree_and_check_replicas_raise_on_every_rank():
    agree(comm, None)
    with pytest.raises(TrainingError, match=f"rank {size - 1}: disk on fire" if size > 1 else "disk on fire"):
        agree(comm, OSError("disk on fire") if rank == size - 1 else None)
    with pytest.raises(TrainingError, match="^same everywhere$"):
        agree(comm, ValueError("same everywhere"))
    x = [np.arange(5, dtype=np.float32)]
    check_replicas(comm, x)
    if size > 1:
        y = [x[0] + (rank == size - 1)]
        with pytest.raises(ReplicaMismatchError, match=rf"rank\(s\) \[{size - 1}\]"):
            check_replicas(comm, y)


def test_readme_example_runs():
    readme = Path(__file__).resolve().parents[2] / "README.md"
    section = readme.read_text().split("## Training (`scaleml-train`)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "GradientReducer" in code and len(code.splitlines()) <= 25
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["loss"] < 1e-6, namespace["loss"]
    assert identical_everywhere([namespace["w"], namespace["b"]])
    assert "ef/residual/bucket1" in namespace["state"] or "ef/residual/bucket0" in namespace["state"]


@pytest.mark.parametrize("compression", ["dropin", "sparse", "topk0.05", "qsgd4"])
def test_large_sparse_gradients_and_the_engines_own_choice(compression):
    # 2^15 values at 1% density: the drop-in and auto take the engine's sparse algorithms where they choose to
    reducer = GradientReducer(comm, compression, algorithm="auto", min_compress_size=64)
    # Bytes are checked on the fixed algorithms: auto may keep every call on MPI_Allreduce where it measures MPI
    # faster (a busy machine), and then sends as much as an exact dense AllReduce.
    fixed = GradientReducer(comm, compression, algorithm="fixed", min_compress_size=64)
    for step in range(6):
        rng = np.random.default_rng([7, rank, step])
        g = np.zeros(1 << 15, np.float32)
        at = rng.choice(g.size, g.size // 100, replace=False)
        g[at] = rng.standard_normal(at.size).astype(np.float32)
        grads = [g, rng.standard_normal(10).astype(np.float32)]
        want = mean_over_ranks(grads)
        fixed.reduce([x.copy() for x in grads])
        reducer.reduce(grads)
        assert identical_everywhere(grads)
        np.testing.assert_allclose(grads[1], want[1], rtol=1e-5, atol=1e-6)
        if compression in ("dropin", "sparse"):
            np.testing.assert_allclose(grads[0], want[0], rtol=1e-5, atol=1e-6)
    if size > 1 and compression == "sparse":
        assert fixed.stats.bytes_sent < fixed.stats.bytes_uncompressed  # only the non-zeros travelled

"""Every public collective goes through the one call path: one agreement per call (scaleml.engine), and every
rank chooses alike when each rank's clock is noisy."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml import engine

comm = MPI.COMM_WORLD
N = 1 << 13


def agreements(c: MPI.Intracomm) -> int:
    return engine.engine_state(c).sequence


def grad(seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, comm.rank]).standard_normal(N).astype(np.float32)


def calls() -> dict[str, object]:
    q = scaleml.compress.QSGD(bits=4, seed=3)
    state = scaleml.AdaptiveAllreduceState(pi=4)
    ef = scaleml.compress.ErrorFeedback(scaleml.compress.TopK(ratio=0.01))
    idx = np.arange(comm.rank, N, 97, dtype=np.int64)
    return {
        "sparse_allreduce": lambda c: scaleml.sparse_allreduce(idx, np.ones(idx.size), N, c),
        "quantized_allreduce": lambda c: scaleml.quantized_allreduce(grad(), c, q),
        "topk_allreduce": lambda c: scaleml.topk_allreduce(grad(), c, error_feedback=ef, name="w"),
        "adaptive_allreduce": lambda c: scaleml.adaptive_allreduce(grad().reshape(64, -1), c, state=state),
        "isparse_allreduce": lambda c: scaleml.isparse_allreduce(idx, np.ones(idx.size), N, c).wait(),
        "iquantized_allreduce": lambda c: scaleml.iquantized_allreduce(grad(), c, q).wait(),
        "itopk_allreduce": lambda c: scaleml.itopk_allreduce(grad(), c, ratio=0.01).wait(),
        "iadaptive_allreduce": lambda c: scaleml.iadaptive_allreduce(grad().reshape(64, -1), c, state=state).wait(),
    }


@pytest.mark.mpi
@pytest.mark.parametrize("name", list(calls()))
def test_each_collective_agrees_exactly_once_per_call(name):
    c = comm.Dup()
    fn = calls()[name]
    nonblocking = name.startswith("i")
    for _ in range(3):
        if nonblocking:  # the i-forms run on the progress thread's private communicator
            chan = scaleml.nonblocking.channel(c)
            before = agreements(chan.comm)
            fn(c)
            assert agreements(chan.comm) == before + 1
        else:
            before = agreements(c)
            fn(c)
            assert agreements(c) == before + 1
    c.Free()


@pytest.mark.mpi
def test_the_dropin_agrees_once_per_engine_call_and_never_in_an_mpi_period():
    c = scaleml.Comm(comm.Dup(), algorithm="split_allgather")  # forced: the engine runs every call
    x = np.zeros(N, np.float32)
    x[comm.rank::50] = 1.0
    out = np.empty_like(x)
    for _ in range(3):
        before = agreements(c.mpi_comm)
        c.Allreduce(x, out)
        assert agreements(c.mpi_comm) == before + 1
        assert c.last_info.algorithm == "split_allgather"
    auto = scaleml.Comm(comm.Dup())
    stats = engine.engine_state(auto.mpi_comm).tuner.stats("Allreduce", 4, N, 0)
    auto.Allreduce(x, out)  # MPI measured first, through one agreement
    stats.mpi_until = stats.calls + 5  # an MPI period: no agreement at all
    before = agreements(auto.mpi_comm)
    for _ in range(5):
        auto.Allreduce(x, out)
    assert agreements(auto.mpi_comm) == before
    c.mpi_comm.Free()
    auto.mpi_comm.Free()


@pytest.mark.mpi
def test_only_the_engine_calls_the_c_agreement_and_collective():
    """The C agreement and the C collective are called from scaleml/engine.py alone."""
    from pathlib import Path

    package = Path(scaleml.__file__).parent
    callers = {p.name for p in package.rglob("*.py")
               if any(f"scaleml_{name}(" in p.read_text() for name in ("consensus", "allreduce", "allreduce_topology"))}
    assert callers == {"engine.py"}


@pytest.mark.mpi
@pytest.mark.parametrize("compression", [None, "qsgd4", "fp16"])
def test_every_rank_chooses_alike_under_injected_timing_noise(monkeypatch, compression):
    """Each rank's clock jitters by its own random amount: the drop-in's and sparse_allreduce's choices,
    call by call, are still the same on every rank (they depend only on agreed values)."""
    rng = np.random.default_rng(comm.rank + 100)
    real = engine.time.perf_counter

    def noisy() -> float:
        return real() + rng.uniform(0, 2e-3)

    monkeypatch.setattr(engine.time, "perf_counter", noisy)
    c = scaleml.Comm(comm.Dup(), compression=compression)
    x = np.random.default_rng([5, comm.rank]).standard_normal(1 << 15).astype(np.float32)
    x[np.random.default_rng(comm.rank).random(x.size) < 0.9] = 0.0
    out = np.empty_like(x)
    chosen = []
    idx = np.flatnonzero(x)
    for _ in range(25):
        c.Allreduce(x, out)
        _, info = scaleml.sparse_allreduce(idx, x[idx], x.size, c, return_info=True)
        chosen.append((c.last_info.algorithm if c.last_info else "mpi", info.algorithm))
    every = comm.allgather(chosen)
    assert all(rank_choices == every[0] for rank_choices in every)
    c.mpi_comm.Free()

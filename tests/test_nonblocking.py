"""Nonblocking collectives need MPI_THREAD_MULTIPLE: anything less is a clear error on every rank."""

from __future__ import annotations

from conftest import run_mpi

PROGRAM = """
import mpi4py
mpi4py.rc.thread_level = "serialized"
from mpi4py import MPI
import numpy as np
import scaleml
comm = scaleml.Comm(MPI.COMM_WORLD)
x = np.ones(10000, np.float32)
out = np.empty_like(x)
comm.Allreduce(x, out)  # blocking calls need no threads
assert out[0] == comm.Get_size()
try:
    comm.Iallreduce(x, out)
except RuntimeError as exc:
    print(f"rank {comm.Get_rank()}: RuntimeError: {exc}", flush=True)
else:
    raise SystemExit("no error")
"""


def test_nonblocking_needs_thread_multiple_and_says_so_on_every_rank():
    result = run_mpi(2, ["-c", PROGRAM], timeout=120)
    assert result.returncode == 0, result.stdout
    for rank in (0, 1):
        assert f"rank {rank}: RuntimeError: nonblocking ScaleML collectives need MPI initialized with " \
               "MPI_THREAD_MULTIPLE" in result.stdout


def _routes_for(outcomes):
    """The routes of successive calls when the thread's calls report ``outcomes``: (what ran, MPI's agreed
    seconds, the engine's estimated seconds)."""
    import scaleml.nonblocking as nb
    from scaleml.comm import AllreduceInfo

    routes, taken, outcomes = nb.IallreduceRoutes(), [], iter(outcomes)
    for _ in range(60):
        mpi, recheck = routes.next()
        if mpi:
            taken.append("mpi")
            continue
        ran, mpi_seconds, engine_seconds = next(outcomes)
        request = nb.Request()
        info = None if ran is None else AllreduceInfo(ran, "auto", 0, 0, 0, {ran: 1e-4})
        request._finish(info, RuntimeError("failed") if ran == "failed" else None)
        routes.started(request, [mpi_seconds, engine_seconds])
        taken.append("recheck" if recheck else "thread")
    return taken


def test_iallreduce_routes_periods_grow_while_mpi_keeps_winning_and_a_check_ends_them(monkeypatch):
    import scaleml.nonblocking as nb

    monkeypatch.setattr(nb, "ENGINE_WIN", 0.5)
    # MPI always wins, in 0.1 ms: MPI periods of 4, 16, 64 ... calls, each followed by one re-check
    taken = _routes_for([("dense", None, None)] + [("dense", 1e-4, None)] * 10)
    assert taken[:1] == ["thread"] and taken[1:5] == ["mpi"] * 4 and taken[5] == "recheck"
    assert taken[6:22] == ["mpi"] * 16 and taken[22] == "recheck" and taken[23:60] == ["mpi"] * 37
    # The engine wins by more than ENGINE_WIN: thread calls only, and no call re-checks MPI's win
    assert _routes_for([("ring", 4e-4, 1e-4)] * 60) == ["thread"] * 60
    # ... and by less: MPI_Iallreduce on the caller's thread beats the thread's hand-over
    assert _routes_for([("ring", 4e-4, 3e-4)] * 60)[1:5] == ["mpi"] * 4
    # An engine win with no MPI time known yet stays on the thread
    assert _routes_for([("ring", None, 3e-4)] * 60) == ["thread"] * 60
    # An MPI period of the engine itself (None: it ran MPI without an agreement) counts as MPI winning
    assert _routes_for([(None, 1e-4, None)] * 10)[1:5] == ["mpi"] * 4
    # A failed check decides nothing new: the thread goes on
    assert _routes_for([("failed", None, None)] * 60) == ["thread"] * 60

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

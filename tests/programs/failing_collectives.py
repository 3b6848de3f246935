"""Programs whose ranks cannot finish a collective together (run by tests/test_failures_end_the_job.py).

    python failing_collectives.py CASE

Every case prints "rank R finished" on each rank that returns normally; the
test checks that the job instead ended with ScaleML's message, in time.
"""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

import scaleml
from scaleml.compress import QSGD

world = MPI.COMM_WORLD
rank = world.Get_rank()
case = sys.argv[1]
n = 20000
x = np.random.default_rng(rank).standard_normal(n).astype(np.float32)
idx = np.arange(rank, n, 7)

if case.startswith("fault:"):  # SCALEML_INJECT_FAULT fails a wait of one rank inside the algorithm
    algorithm = case.split(":", 1)[1]
    for _ in range(3):
        if algorithm in scaleml.algorithms.LOSSY:
            scaleml.quantized_allreduce(x, world, QSGD(bits=4), algorithm=algorithm)
        else:
            scaleml.sparse_allreduce(idx, x[idx], n, world, algorithm)
elif case == "count":  # a common bug: one rank's count is below min_count, so it goes to plain MPI
    comm = scaleml.Comm(world)
    mine = x[:100] if rank == 1 else x
    out = np.empty_like(mine)
    comm.Allreduce(mine, out)
elif case == "op":  # one rank passes another op: plain MPI_Allreduce there, the engine elsewhere
    comm = scaleml.Comm(world)
    out = np.empty_like(x)
    comm.Allreduce(x, out, MPI.MAX if rank == 1 else MPI.SUM)
elif case == "functions":  # ranks call different ScaleML functions
    if rank == 1:
        scaleml.quantized_allreduce(x, world, QSGD(bits=4))
    else:
        scaleml.sparse_allreduce(idx, x[idx], n, world)
else:
    raise SystemExit(f"unknown case {case!r}")
print(f"rank {rank} finished", flush=True)

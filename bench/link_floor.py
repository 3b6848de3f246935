"""The network floor of an exact AllReduce on 2 hosts x 2 ranks (not a timed test): every rank exchanges 8 MB
with its partner on the other host (ranks r and r + 2), both ranks of a host at once, so each host's link
carries 16 MB each way, the least any exact AllReduce of 2^22 float32 sends across it on 2 nodes. The
median of 6 calls after 2, the slowest rank's.

    python3 scripts/emulated_cluster.py --hosts 2 --ranks-per-host 2 --rate 1gbit --mpiexec .venv/bin/mpiexec \
        --timeout 120 -- env PYTHONPATH=$PWD .venv/bin/python bench/link_floor.py
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
if comm.Get_size() != 4:
    raise SystemExit("run it on 4 ranks: 2 hosts x 2 ranks")
partner = (rank + 2) % 4
send = np.ones(2 << 20, np.float32)  # 8 MB
recv = np.empty_like(send)
times = []
for _ in range(8):
    comm.Barrier()
    t0 = time.perf_counter()
    comm.Sendrecv(send, partner, 0, recv, partner, 0)
    times.append(time.perf_counter() - t0)
slowest = comm.allreduce(float(np.median(times[2:])), MPI.MAX)
if rank == 0:
    print(f"8 MB each way per rank, both ranks of a host at once: {slowest * 1e3:.1f} ms")

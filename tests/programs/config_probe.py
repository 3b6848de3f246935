"""What the SCALEML_* variables change in a run (run by tests/test_config.py under mpiexec).

    python config_probe.py

Each rank makes the same calls: drop-in Allreduces (sparse and large, small,
MPI.MAX), a sparse, a quantized, a top-k and an adaptive AllReduce, then
prints one line ``PROBE {json}`` with what ran and whether the sums are right.
"""

from __future__ import annotations

import json

import numpy as np
from mpi4py import MPI

import scaleml
from scaleml.compress import QSGD

world = MPI.COMM_WORLD
rank, P = world.Get_rank(), world.Get_size()
n = 1 << 15
x = np.zeros(n, np.float32)
x[rank::997] = 1.0  # sparse: about 3% of n over 2 ranks
expected = np.zeros(n, np.float32)
for r in range(P):
    expected[r::997] += 1.0

comm = scaleml.Comm(world)
explicit = scaleml.Comm(world, algorithm="recursive_doubling")
out = np.empty_like(x)
infos = []
for _ in range(3):
    comm.Allreduce(x, out, op=MPI.SUM)
    infos.append(None if comm.last_info is None else comm.last_info.algorithm)
dropin_ok = bool(np.array_equal(out, expected))
explicit.Allreduce(x, out, op=MPI.SUM)
explicit_algorithm = None if explicit.last_info is None else explicit.last_info.algorithm
small = np.ones(16, np.float32)
comm.Allreduce(small, np.empty_like(small))
comm.Allreduce(x, out, op=MPI.MAX)

idx = np.arange(rank, n, 101)
sparse, sparse_info = scaleml.sparse_allreduce(idx, np.ones(idx.size, np.float32), n, world, return_info=True)
ones = np.ones(4096, np.float32)
quantized, quantized_info = scaleml.quantized_allreduce(ones, world, QSGD(bits=4), return_info=True)
topk, topk_info = scaleml.topk_allreduce(np.arange(1000, dtype=np.float32), world, k=10, return_info=True)
adaptive = scaleml.adaptive_allreduce(np.full((32, 4), 1.0, np.float32), world, state=scaleml.AdaptiveAllreduceState())

print("PROBE " + json.dumps({
    "rank": rank,
    "dropin": infos,
    "dropin_ok": dropin_ok,
    "explicit": explicit_algorithm,
    "min_count": comm.min_count,
    "compression": None if comm.compression is None else type(comm.compression).__name__,
    "sparse": sparse_info.algorithm,
    "quantized": [quantized_info.algorithm, quantized_info.format],
    "quantized_exact": bool(np.array_equal(quantized, ones * P)),
    "topk": topk_info.algorithm,
    "adaptive_exact": bool(np.array_equal(adaptive, np.full((32, 4), float(P), np.float32))),
    "timeline": None if scaleml.timeline.path() is None else str(scaleml.timeline.path()),
}), flush=True)

"""Where the time of one small collective goes: each step of the engine timed alone.

    mpiexec -n 4 .venv/bin/python bench/latency_breakdown.py --n 16384 --density 0.01 --json out.json

Rank 0 prints, for each step, the median over iterations of the slowest rank's
time (every iteration starts after a barrier): plain ``MPI_Allreduce`` on the
dense buffer, the agreement alone, the drop-in's local steps (buffer checks,
non-zero count and extraction, the model's predictions), one engine call
per registered algorithm, and the drop-in and ``auto`` end to end.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from mpi4py import MPI

import scaleml
from scaleml import algorithms
from scaleml.dense_scan import count_nonzeros, extract_nonzeros
from scaleml.engine import agree, engine_state, index_dtype, predict


def timed(comm: MPI.Intracomm, step, iterations: int) -> float:
    """Median over iterations of the slowest rank's seconds for one call of ``step``."""
    for _ in range(5):
        step()
    times = np.empty(iterations)
    for i in range(iterations):
        comm.Barrier()
        t0 = time.perf_counter()
        step()
        times[i] = time.perf_counter() - t0
    slowest = np.empty_like(times)
    comm.Allreduce(times, slowest, MPI.MAX)
    return float(np.median(slowest))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1 << 14, help="float32 elements (16384)")
    p.add_argument("--density", type=float, default=0.01, help="fraction of non-zeros per rank (0.01)")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--json", help="write the steps as JSON")
    args = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, P, n = comm.Get_rank(), comm.Get_size(), args.n
    rng = np.random.default_rng([7, rank])
    x = np.zeros(n, np.float32)
    x[rng.random(n) < args.density] = 1.0
    y = np.empty_like(x)
    state = engine_state(comm)
    dropin = scaleml.Comm(comm)
    nnz = count_nonzeros(x)
    idx, vals = extract_nonzeros(x, nnz, index_dtype(n))
    agreement = agree(state, None, n=n, value_bytes=4, algorithm=0, out=0, nnz=nnz, op_name="breakdown")
    steps = {
        "MPI_Allreduce (dense buffer)": lambda: comm.Allreduce(x, y),
        "agreement (MPI_Iallreduce of 24 int64 + Python)":
            lambda: agree(state, None, n=n, value_bytes=4, algorithm=0, out=0, nnz=nnz, op_name="breakdown"),
        "drop-in buffer checks": lambda: dropin._buffers(x, y, x.dtype, n),
        "count non-zeros": lambda: count_nonzeros(x),
        "extract non-zeros": lambda: extract_nonzeros(x, nnz, index_dtype(n)),
        "model predictions (all algorithms)": lambda: predict(n, P, agreement, 4, 4, False, True),
    }
    for name in algorithms.EXACT:  # the lossy ones need compression=
        steps[f"sparse_allreduce forced {name} (agreement included)"] = (
            lambda name=name: scaleml.sparse_allreduce(idx, vals, n, comm, name))
    steps["sparse_allreduce auto"] = lambda: scaleml.sparse_allreduce(idx, vals, n, comm)
    steps["drop-in Allreduce (steady state)"] = lambda: dropin.Allreduce(x, y)
    results = {name: timed(comm, step, args.iterations) for name, step in steps.items()}
    if rank == 0:
        print(f"# latency breakdown: P={P} n={n} float32 density={args.density} nnz(rank 0)={nnz} "
              f"median of {args.iterations} (slowest rank per iteration)")
        for name, seconds in results.items():
            print(f"{seconds * 1e6:10.1f} us  {name}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": P, "n": n, "density": args.density, "steps_us":
                           {k: v * 1e6 for k, v in results.items()},
                           "mpi": MPI.Get_library_version().splitlines()[0]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

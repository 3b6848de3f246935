"""The first calls of a fresh job: a ScaleML collective against MPI_Allreduce in the same process.

    mpiexec -n 4 .venv/bin/python bench/first_calls.py --method dropin:fp16 --warmup 3 --json run.json

What a user who swaps one line sees in the first calls of a job, not only in the
steady state: ``--warmup`` calls of each (untimed; for ScaleML they are the
planner's first calls of the size class), then ``--iterations`` rounds in which
``MPI_Allreduce``, the method and ``MPI_Allreduce`` again take turns; each
figure is the median over the rounds of the slowest rank's time, and
``speedup`` is MPI's median over the method's. ``aa`` (MPI against its second
turn) is the run's noise. Run it as a fresh process each time (bench/first_calls.sh
does, five times per method): the planner's memory is per process.

Methods: ``dropin`` (exact), ``dropin:FORMAT`` (``fp16``, ``qsgd4``, ``onebit``:
``scaleml.Comm(compression=Cast("fp16") | QSGD(bits=4) | OneBit())``, dense
gaussian data), ``iallreduce[:FORMAT]`` (the same through ``Iallreduce(...).Wait()``),
``sparse:DENSITY`` (``scaleml.sparse_allreduce`` of the bench's overlap pattern
at that density, dense result, against MPI_Allreduce of the same vector dense).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from mpi4py import MPI
from timing import timed_interleaved  # bench/timing.py (this script's folder)

import scaleml
from scaleml.compress import QSGD, Cast, OneBit
from scaleml.datagen import random_sparse

world = MPI.COMM_WORLD
FORMATS = {"fp16": lambda: Cast("fp16"), "bf16": lambda: Cast("bf16"), "qsgd4": lambda: QSGD(bits=4),
           "qsgd8": lambda: QSGD(bits=8), "onebit": lambda: OneBit()}


def method_step(spec: str, n: int):
    """(step, dense input) of a method spec."""
    kind, _, arg = spec.partition(":")
    rank, size = world.Get_rank(), world.Get_size()
    if kind == "sparse":
        idx, vals = random_sparse(n, float(arg), "overlap", np.float32, rank, size)
        dense = np.zeros(n, np.float32)
        dense[idx] = vals
        out = np.empty(n, np.float32)
        return (lambda: scaleml.sparse_allreduce(idx, vals, n, world, dense_out=out)), dense
    dense = np.random.default_rng([7, rank]).standard_normal(n).astype(np.float32)
    out = np.empty_like(dense)
    comm = scaleml.Comm(world, compression=FORMATS[arg]() if arg else "none")
    if kind == "dropin":
        return (lambda: comm.Allreduce(dense, out)), dense
    if kind == "iallreduce":
        return (lambda: comm.Iallreduce(dense, out).Wait()), dense
    raise SystemExit(f"unknown method {spec!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--n", type=int, default=1 << 22)
    parser.add_argument("-w", "--warmup", type=int, default=3)
    parser.add_argument("-i", "--iterations", type=int, default=10)
    parser.add_argument("--json", help="append this run's row (one JSON object per line)")
    args = parser.parse_args(argv)
    step, dense = method_step(args.method, args.n)
    mpi_out = np.empty_like(dense)
    steps = {"mpi": lambda: world.Allreduce(dense, mpi_out),
             "method": step,
             "mpi_again": lambda: world.Allreduce(dense, mpi_out)}
    t = timed_interleaved(steps, args.iterations, args.warmup)
    row = {"method": args.method, "ranks": world.Get_size(), "n": args.n, "warmup": args.warmup,
           "iterations": args.iterations, "mpi_s": t["mpi"], "method_s": t["method"],
           "mpi_again_s": t["mpi_again"], "speedup": t["mpi"] / t["method"], "aa": t["mpi"] / t["mpi_again"],
           "command": " ".join(["python", "bench/first_calls.py", *sys.argv[1:]])}  # repository-relative
    if world.Get_rank() == 0:
        print(f"{args.method:>16}  warmup {args.warmup}  MPI {t['mpi'] * 1e3:8.2f} ms  method "
              f"{t['method'] * 1e3:8.2f} ms  speedup {row['speedup']:5.2f}x  A/A {row['aa']:5.2f}")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

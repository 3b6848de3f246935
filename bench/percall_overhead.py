"""The drop-in's own Python cost per call, alone on one rank: scaleml.Comm against mpi4py, in the same run.

On one rank MPI_Allreduce is a copy, so what differs is the wrapper's work. Sizes below ``min_count``
(MPI straight away) and at or above it (the steady state of a class MPI won: an MPI period). The calls take
turns (ABAB...), and each figure is the median of ``--repeats`` batches of ``--calls`` calls; A/A is mpi4py
against itself. ``Allreduce`` is the blocking call; ``Iallreduce`` is the nonblocking one and its ``Wait``.

    .venv/bin/python bench/percall_overhead.py --json docs/results/dropin_percall_overhead_P1.json
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI
from timing import save_json  # bench/timing.py (this script's folder)

import scaleml


def per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    world = MPI.COMM_WORLD
    if world.size != 1:
        print("run on one rank: it measures the wrapper's cost, not the network", file=sys.stderr)
        return 2
    dropin = scaleml.Comm(world)
    plain = world.Dup()
    rows = []
    for call, n in [(call, n) for call in ("Allreduce", "Iallreduce") for n in args.elements]:
        x = np.ones(n, np.float32)
        out = np.empty_like(x)
        if call == "Allreduce":
            mpi4py_call = functools.partial(plain.Allreduce, x, out)
            scaleml_call = functools.partial(dropin.Allreduce, x, out)
        else:
            def mpi4py_call(x=x, out=out):
                plain.Iallreduce(x, out).Wait()

            def scaleml_call(x=x, out=out):
                dropin.Iallreduce(x, out).Wait()
        for _ in range(50):  # past MPI's first measurement: the class's steady state
            scaleml_call()
        samples: dict[str, list[float]] = {"mpi4py": [], "mpi4py_again": [], "scaleml": []}
        for _ in range(args.repeats):
            samples["mpi4py"].append(per_call(mpi4py_call, args.calls))
            samples["scaleml"].append(per_call(scaleml_call, args.calls))
            samples["mpi4py_again"].append(per_call(mpi4py_call, args.calls))
        med = {k: statistics.median(v) for k, v in samples.items()}
        row = {"call": call, "elements": n, "bytes": 4 * n, "mpi4py_us": med["mpi4py"] * 1e6,
               "scaleml_us": med["scaleml"] * 1e6, "overhead_us": (med["scaleml"] - med["mpi4py"]) * 1e6,
               "aa_us": (med["mpi4py_again"] - med["mpi4py"]) * 1e6,
               "route": "below min_count" if n < dropin.min_count else "MPI period"}
        rows.append(row)
        print(f"{call:>10} {n:>8} floats ({row['route']:>15}): mpi4py {row['mpi4py_us']:.2f} us, "
              f"scaleml {row['scaleml_us']:.2f} us, overhead {row['overhead_us']:+.2f} us (A/A {row['aa_us']:+.2f} us)")
    if args.json:
        save_json(args.json, rows=rows)
    plain.Free()
    return 0


if __name__ == "__main__":
    sys.exit(main())

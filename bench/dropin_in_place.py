"""The drop-in in place (``Allreduce(MPI.IN_PLACE, buf)``, the DDP hook's call) on sparse data, against MPI's.

    mpiexec -n 4 .venv/bin/python bench/dropin_in_place.py --json out.json

For float32 data of ``--n`` values at each density (independent uniform positions per rank), every
iteration refills the buffers from the rank's data (untimed), then times, after a barrier, mpi4py's
in-place ``Allreduce``, the drop-in's, and mpi4py's again (the A/A control), in turns. Each figure is
the median over iterations of the slowest rank; speedup is MPI's time over the drop-in's. The drop-in's
first calls (the tuner's baseline and exploration) are warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from mpi4py import MPI
from timing import save_json, slowest_median  # bench/timing.py (this script's folder)

import scaleml

world = MPI.COMM_WORLD


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 22)
    parser.add_argument("--density", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.05])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=12)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rank, size = world.Get_rank(), world.Get_size()
    plain = world.Dup()
    rows = []
    if rank == 0:
        print(f"# {size} ranks, n = {args.n} float32, in place; median of {args.iterations} of the slowest rank, ms")
        print(f"{'density':>8} {'MPI':>9} {'drop-in':>9} {'speedup':>8} {'A/A':>6}  algorithm")
    for density in args.density:
        dropin = scaleml.Comm(world.Dup())  # a fresh tuner per density: its own first calls are warm-up
        rng = np.random.default_rng([41, rank])
        data = np.where(rng.random(args.n) < density, rng.standard_normal(args.n), 0).astype(np.float32)
        buffers = {name: np.empty_like(data) for name in ("mpi", "dropin", "mpi_again")}
        calls = {"mpi": plain.Allreduce, "dropin": dropin.Allreduce, "mpi_again": plain.Allreduce}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for i in range(args.warmup + args.iterations):
            for name, call in calls.items():
                np.copyto(buffers[name], data)
                world.Barrier()
                t0 = time.perf_counter()
                call(MPI.IN_PLACE, buffers[name])
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        assert np.allclose(buffers["dropin"], buffers["mpi"], rtol=1e-5, atol=1e-5)
        med = {name: slowest_median(values) for name, values in times.items()}
        info = dropin.last_info
        row = {"density": density, "n": args.n, "ranks": size, "mpi_s": med["mpi"], "dropin_s": med["dropin"],
               "mpi_again_s": med["mpi_again"], "speedup": med["mpi"] / med["dropin"],
               "aa_ratio": med["mpi"] / med["mpi_again"], "algorithm": info.algorithm if info else "mpi_allreduce"}
        rows.append(row)
        if rank == 0:
            print(f"{density:>8} {med['mpi'] * 1e3:9.2f} {med['dropin'] * 1e3:9.2f} {row['speedup']:7.2f}x "
                  f"{row['aa_ratio']:6.2f}  {row['algorithm']}")
        dropin.mpi_comm.Free()
    if args.json and rank == 0:
        save_json(args.json, rows=rows)
    plain.Free()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-to-completion time of ``scaleml.Comm.Iallreduce`` against mpi4py's ``Iallreduce`` (nothing to overlap).

    mpiexec -n 4 .venv/bin/python bench/iallreduce_latency.py --json out.json

What a nonblocking call costs when there is nothing to overlap it with: for
float32 dense data of each size, the median over iterations of the slowest
rank's time from the start of the call to the end of ``Wait``, for mpi4py's
``Iallreduce`` and ScaleML's, and their ratio, measured in the same run with
the calls taking turns in every iteration; ``A/A`` is mpi4py's against itself
(a third turn), the run's noise; ``--blocking`` adds the blocking drop-in
against ``MPI_Allreduce`` in the same turns. (From 4096 elements on,
ScaleML's runs on the progress thread, or as ``MPI_Iallreduce`` in a class
where the engine chose MPI and MPI is quick: see scaleml.nonblocking.)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from mpi4py import MPI
from timing import save_json, timed_interleaved  # bench/timing.py (this script's folder)

import scaleml

world = MPI.COMM_WORLD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, nargs="+", default=[4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20])
    parser.add_argument("-i", "--iterations", type=int, default=400)
    parser.add_argument("-w", "--warmup", type=int, default=20)
    parser.add_argument("--blocking", action="store_true",
                        help="also time the blocking drop-in against MPI_Allreduce (speedup column 'blocking')")
    parser.add_argument("--json")
    args = parser.parse_args()
    comm = scaleml.Comm(world)
    rows = []
    if world.Get_rank() == 0:
        print(f"# {world.Get_size()} ranks, float32 dense; median of {args.iterations} of the slowest rank, us")
        print(f"{'bytes':>9} {'mpi4py':>10} {'scaleml':>10} {'speedup':>8} {'A/A':>8}"
              + (f" {'blocking':>9}" if args.blocking else ""))
    for size in args.bytes:
        n = size // 4
        x = np.random.default_rng(world.Get_rank()).standard_normal(n).astype(np.float32)
        out = np.empty_like(x)
        steps = {"mpi4py": lambda: world.Iallreduce(x, out).Wait(),  # noqa: B023
                 "scaleml": lambda: comm.Iallreduce(x, out).Wait(),  # noqa: B023
                 "mpi4py_again": lambda: world.Iallreduce(x, out).Wait()}  # noqa: B023
        if args.blocking:
            steps["mpi4py_blocking"] = lambda: world.Allreduce(x, out)  # noqa: B023
            steps["scaleml_blocking"] = lambda: comm.Allreduce(x, out)  # noqa: B023
        t = timed_interleaved(steps, args.iterations, args.warmup)
        t_mpi, t_sml, t_aa = t["mpi4py"], t["scaleml"], t["mpi4py_again"]
        row = {"bytes": size, "mpi4py_s": t_mpi, "scaleml_s": t_sml, "speedup": t_mpi / t_sml,
               "mpi4py_again_s": t_aa, "aa_ratio": t_mpi / t_aa}
        line = f"{size:>9} {t_mpi * 1e6:>10.1f} {t_sml * 1e6:>10.1f} {t_mpi / t_sml:>8.2f} {t_mpi / t_aa:>8.2f}"
        if args.blocking:
            row.update(mpi4py_blocking_s=t["mpi4py_blocking"], scaleml_blocking_s=t["scaleml_blocking"],
                       blocking_speedup=t["mpi4py_blocking"] / t["scaleml_blocking"])
            line += f" {row['blocking_speedup']:>9.2f}"
        rows.append(row)
        if world.Get_rank() == 0:
            print(line, flush=True)
    if world.Get_rank() == 0 and args.json:
        save_json(args.json, argv=sys.argv, ranks=world.Get_size(), rows=rows)


if __name__ == "__main__":
    main()

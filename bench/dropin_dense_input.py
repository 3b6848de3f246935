"""What `make bench`'s table leaves out (not a timed test): the drop-in's scan of its dense input, timed on the
table's own data right after the table, in the same processes: the ranks' summed CPU time of the scan over
the cores they may run on, the least wall time any schedule of the scans can take (one host).

The table's algorithm rows take the sparse input (positions and values); the drop-in takes the dense vector and
must read all of it to find the non-zeros before anything is sent. Every rank scans at once, as in the drop-in's
call, with the drop-in's kernel and memory (``scan_nonzeros`` into a kept ``ScanScratch``). Whatever the drop-in
does after the scan takes at least the best row's time, so where the best row leaves no core idle to hide the
scan in, ``best / (best + scan)`` is the most ``best / drop-in`` can reach. 4 ranks on 2 cores come close to that
(a rank that waits yields its core) but not all the way, so the figure is an estimate, not a strict bound.
Each round is one table and one scan timing; every round is printed and saved.

    mpiexec -n 4 python bench/dropin_dense_input.py [--n 4194304] [--density 0.01] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from mpi4py import MPI
from timing import save_json  # bench/timing.py (this script's folder)

from scaleml.bench.measure import run_case, run_metadata
from scaleml.bench.methods import BUILTIN
from scaleml.datagen import random_sparse
from scaleml.dense_scan import ScanScratch, scan_nonzeros

NOT_ALGORITHMS = ("mpi_allreduce", "mpi_allreduce_again", "dropin", "auto")
"""Rows that are not one algorithm given the sparse input: the baseline, its A/A, the drop-in and auto."""


def scan_core_time(comm: MPI.Intracomm, dense: np.ndarray, warmup: int, iterations: int) -> tuple[float, int]:
    """The CPU time all ranks' scans of ``dense`` take together, spread over the cores the ranks may run on.

    Every rank scans at once after a barrier, timing its scan's CPU time (``time.thread_time``: where ranks
    outnumber cores, the wall time of one rank's scan also counts the time it waited for a core). Returns the
    median over iterations of the ranks' summed CPU time divided by the cores of their affinity (seconds), which
    no schedule of the scans can beat, and that count of cores. (One host: the cores are counted by number.)
    """
    scratch = ScanScratch()
    capacity = dense.size // 4  # what the drop-in's scan gets after an input that fitted
    u32 = np.dtype(np.uint32)
    for _ in range(warmup):
        scan_nonzeros(dense, capacity, u32, scratch)
    cpu = np.empty(iterations)
    for i in range(iterations):
        comm.Barrier()
        t0 = time.thread_time()
        scan_nonzeros(dense, capacity, u32, scratch)
        cpu[i] = time.thread_time() - t0
    total = np.empty(iterations)
    comm.Allreduce(cpu, total, MPI.SUM)
    cores = min(len(set().union(*comm.allgather(os.sched_getaffinity(0)))), comm.Get_size())
    return float(np.median(total)) / cores, cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 22)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--pattern", default="overlap")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    P, rank = comm.Get_size(), comm.Get_rank()
    idx, vals = random_sparse(args.n, args.density, args.pattern, np.dtype(np.float32), rank, P, 0)
    dense = np.zeros(args.n, np.float32)  # the table's input, built as run_case builds it (seed 0)
    dense[idx] = vals
    rounds = []
    for round_no in range(1, args.rounds + 1):
        rows = run_case(comm, args.n, np.dtype(np.float32), args.density, args.pattern, list(BUILTIN),
                        args.warmup, args.iterations, 0)
        scan, cores = scan_core_time(comm, dense, args.warmup, args.iterations)
        median = {row["method"]: row["time_median_us"] / 1e6 for row in rows}
        best = min((m for m in median if m not in NOT_ALGORITHMS), key=median.__getitem__)
        dropin = next(row for row in rows if row["method"] == "dropin")
        result = {
            "round": round_no, "best_row": best, "best_median_ms": median[best] * 1e3,
            "dropin_algorithm": dropin["algorithm"], "dropin_median_ms": median["dropin"] * 1e3,
            "scan_median_ms": scan * 1e3, "scan_cores": cores, "dropin_over_best": median[best] / median["dropin"],
            "estimate": median[best] / (median[best] + scan),
            "aa_speedup_median": next(r["speedup_median_vs_mpi"] for r in rows if r["method"] == "mpi_allreduce_again"),
            "rows": [{k: row[k] for k in ("method", "algorithm", "time_median_us", "time_avg_us",
                                          "speedup_median_vs_mpi")} for row in rows],
        }
        rounds.append(result)
        if rank == 0:
            print(f"round {round_no}: best row {best} {result['best_median_ms']:.2f} ms, drop-in "
                  f"({dropin['algorithm']}) {result['dropin_median_ms']:.2f} ms, scan alone "
                  f"{result['scan_median_ms']:.2f} ms (CPU over {cores} cores); "
                  f"best/drop-in {result['dropin_over_best']:.2f}, "
                  f"estimate best/(best+scan) {result['estimate']:.2f}; A/A {result['aa_speedup_median']:.2f}x",
                  flush=True)
    meta = run_metadata(comm)
    if rank == 0 and args.json:
        save_json(args.json, n=args.n, density=args.density, ranks=P, medians="rows: median over iterations of the "
                  "slowest rank; scan: median over iterations of the ranks' summed CPU time over scan_cores",
                  rounds=rounds, meta=meta)


if __name__ == "__main__":
    main()

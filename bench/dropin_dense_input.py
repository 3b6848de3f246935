"""What `make bench`'s table leaves out (not a timed test): the drop-in's scan of its dense input, timed on the
table's own data right after the table, in the same processes.

The table's algorithm rows take the sparse input (positions and values); the drop-in takes the dense vector and
must read all of it to find the non-zeros before anything is sent. Every rank scans at once, as in the drop-in's
call, with the drop-in's kernel and memory (``scan_nonzeros`` into a kept ``ScanScratch``). Whatever the drop-in
does after the scan, it cannot take less than the best row, so ``best / (best + scan)`` bounds ``best / drop-in``
from above where the ranks have no idle core to hide the scan in (4 ranks on 2 cores here). Each round is one
table and one scan timing; every round is printed and saved.

    mpiexec -n 4 python bench/dropin_dense_input.py [--n 4194304] [--density 0.01] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse

import numpy as np
from mpi4py import MPI
from timing import save_json  # bench/timing.py (this script's folder)

from scaleml.bench.measure import measure, median_of_iteration_max, run_case, run_metadata
from scaleml.bench.methods import BUILTIN
from scaleml.datagen import random_sparse
from scaleml.dense_scan import ScanScratch, scan_nonzeros

NOT_ALGORITHMS = ("mpi_allreduce", "mpi_allreduce_again", "dropin", "auto")
"""Rows that are not one algorithm given the sparse input: the baseline, its A/A, the drop-in and auto."""


def scan_median(comm: MPI.Intracomm, dense: np.ndarray, warmup: int, iterations: int) -> float:
    """Median over iterations of the slowest rank's scan of ``dense``, all ranks scanning at once (seconds)."""
    scratch = ScanScratch()
    capacity = dense.size // 4  # what the drop-in's scan gets after an input that fitted

    def run():
        scan_nonzeros(dense, capacity, np.dtype(np.uint32), scratch)
        return dense, 0, "scan"

    times = measure(run, comm, warmup, iterations)[0]
    return float(median_of_iteration_max(comm, times[np.newaxis, :])[0])


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
        scan = scan_median(comm, dense, args.warmup, args.iterations)
        median = {row["method"]: row["time_median_us"] / 1e6 for row in rows}
        best = min((m for m in median if m not in NOT_ALGORITHMS), key=median.__getitem__)
        dropin = next(row for row in rows if row["method"] == "dropin")
        result = {
            "round": round_no, "best_row": best, "best_median_ms": median[best] * 1e3,
            "dropin_algorithm": dropin["algorithm"], "dropin_median_ms": median["dropin"] * 1e3,
            "scan_median_ms": scan * 1e3, "dropin_over_best": median[best] / median["dropin"],
            "bound": median[best] / (median[best] + scan),
            "aa_speedup_median": next(r["speedup_median_vs_mpi"] for r in rows if r["method"] == "mpi_allreduce_again"),
            "rows": [{k: row[k] for k in ("method", "algorithm", "time_median_us", "time_avg_us",
                                          "speedup_median_vs_mpi")} for row in rows],
        }
        rounds.append(result)
        if rank == 0:
            print(f"round {round_no}: best row {best} {result['best_median_ms']:.2f} ms, drop-in "
                  f"({dropin['algorithm']}) {result['dropin_median_ms']:.2f} ms, scan alone "
                  f"{result['scan_median_ms']:.2f} ms; best/drop-in {result['dropin_over_best']:.2f}, "
                  f"bound best/(best+scan) {result['bound']:.2f}; A/A {result['aa_speedup_median']:.2f}x",
                  flush=True)
    meta = run_metadata(comm)
    if rank == 0 and args.json:
        save_json(args.json, n=args.n, density=args.density, ranks=P, medians="median over iterations of the "
                  "slowest rank", rounds=rounds, meta=meta)


if __name__ == "__main__":
    main()

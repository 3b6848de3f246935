"""Communication/computation overlap of the nonblocking collectives, measured as OSU's osu_iallreduce does.

    mpiexec -n 4 .venv/bin/python bench/overlap.py --n 1048576 4194304 --json out.json

For each size and collective, rank 0 prints (median over iterations of the
slowest rank):

- ``t_pure``: the blocking call alone;
- ``t_compute``: a computation sized to take about ``t_pure`` (numpy matrix
  products, which release the GIL, as a backward pass does);
- ``t_overall``: start the nonblocking call, compute, then ``Wait``;
- ``overlap %`` = 100 * max(0, 1 - (t_overall - t_compute) / t_pure), OSU's
  definition: 100% when the collective is hidden entirely behind the compute.

Collectives: ``mpi`` (mpi4py's ``Iallreduce``, the baseline), ``dropin``
(``scaleml.Comm.Iallreduce``, lossless), ``qsgd4`` (``iquantized_allreduce``)
and ``topk0.01`` (``itopk_allreduce``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from mpi4py import MPI
from timing import timed  # bench/timing.py (this script's folder)

import scaleml
from scaleml.compress import QSGD, ErrorFeedback, TopK

world = MPI.COMM_WORLD


class Compute:
    """Matrix products of a size chosen so that ``reps`` of them take about ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.a = np.random.default_rng(0).standard_normal((192, 192))
        t0 = time.perf_counter()
        for _ in range(20):
            self.a @ self.a
        per = (time.perf_counter() - t0) / 20
        self.reps = max(1, int(round(seconds / per)))

    def __call__(self) -> None:
        for _ in range(self.reps):
            self.a @ self.a


def collectives(n: int):
    """name -> (blocking step, nonblocking start returning a request)."""
    rank = world.Get_rank()
    rng = np.random.default_rng([1, rank])
    dense = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(dense)
    comm = scaleml.Comm(world)
    q = QSGD(bits=4, seed=1)
    ef = ErrorFeedback(TopK(ratio=0.01))
    return {
        "mpi": (lambda: world.Allreduce(dense, out), lambda: world.Iallreduce(dense, out)),
        "dropin": (lambda: comm.Allreduce(dense, out), lambda: comm.Iallreduce(dense, out)),
        "qsgd4": (lambda: scaleml.quantized_allreduce(dense, world, q, out=out),
                  lambda: scaleml.iquantized_allreduce(dense, world, q, out=out)),
        "topk0.01": (lambda: scaleml.topk_allreduce(dense, world, error_feedback=ef),
                     lambda: scaleml.itopk_allreduce(dense, world, error_feedback=ef)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1 << 20], help="float32 elements")
    parser.add_argument("-i", "--iterations", type=int, default=10)
    parser.add_argument("-w", "--warmup", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["mpi", "dropin", "qsgd4", "topk0.01"])
    parser.add_argument("--json", help="write the rows here (rank 0)")
    args = parser.parse_args()
    rank, P = world.Get_rank(), world.Get_size()
    rows = []
    if rank == 0:
        print(f"# {P} ranks; times in ms (median over {args.iterations} of the slowest rank)")
        print(f"{'n':>10} {'method':>10} {'t_pure':>9} {'t_compute':>10} {'t_overall':>10} {'overlap %':>10}")
    for n in args.n:
        steps = collectives(n)
        for name in args.methods:
            blocking, start = steps[name]
            t_pure = timed(blocking, args.iterations, args.warmup)
            compute = Compute(t_pure)
            compute.reps = world.allreduce(compute.reps, MPI.MIN)  # the same work on every rank
            t_compute = timed(compute, args.iterations, 1)

            def overlapped(start=start, compute=compute) -> None:
                request = start()
                compute()
                request.Wait()

            t_overall = timed(overlapped, args.iterations, args.warmup)
            overlap = 100.0 * max(0.0, 1.0 - (t_overall - t_compute) / t_pure) if t_pure > 0 else 0.0
            row = {"n": n, "method": name, "ranks": P, "t_pure": t_pure, "t_compute": t_compute,
                   "t_overall": t_overall, "overlap_percent": overlap}
            rows.append(row)
            if rank == 0:
                print(f"{n:>10} {name:>10} {t_pure * 1e3:>9.2f} {t_compute * 1e3:>10.2f} "
                      f"{t_overall * 1e3:>10.2f} {overlap:>10.1f}", flush=True)
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": __import__("sys").argv, "ranks": P, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

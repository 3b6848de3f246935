"""ZipML least squares on low-precision data: full precision vs naive rounding vs double sampling.

    mpiexec -n 4 python examples/zipml_linear.py --rows 65536 --dim 16 --bits 2 3 4

Prints, per bit width and level kind, the distance of each SGD solution to
np.linalg.lstsq of the full-precision data, the training losses, the
spread of the stored-sample solution (sigma) and the predicted naive bias.
"""

import argparse
import time

import numpy as np
from mpi4py import MPI

from scaleml.zipml_linear import compare_estimators, synthetic_regression


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--levels", nargs="+", default=["uniform", "optimal"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--symmetric", action="store_true", help="symmetrized double sampling")
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    X, b, _ = synthetic_regression(a.rows, a.dim, seed=7, comm=comm)
    if comm.Get_rank() == 0:
        print(f"ranks={comm.Get_size()} rows={a.rows} dim={a.dim} epochs={a.epochs} batch={a.batch}")
        print("| bits | levels | full | naive | double | sigma double | predicted naive bias | loss full / naive / "
              "double (lstsq) | stored bytes (float64) | s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for bits in a.bits:
        for levels in a.levels:
            t = time.perf_counter()
            r = compare_estimators(X, b, bits=bits, levels=levels, comm=comm, epochs=a.epochs, batch=a.batch,
                                   seed=11, symmetric=a.symmetric)
            dt = time.perf_counter() - t
            if comm.Get_rank() == 0:
                d = {k: v.distance for k, v in r.runs.items()}
                loss = " / ".join(f"{r.runs[k].loss:.4f}" for k in ("full", "naive", "double"))
                print(f"| {bits} | {levels} | {d['full']:.1e} | {d['naive']:.4f} | {d['double']:.4f} | "
                      f"{r.stationary_std['double']:.4f} | {np.linalg.norm(r.naive_expected - r.x_ls):.4f} | "
                      f"{loss} ({r.ls_loss:.4f}) | {r.stored_bytes} ({r.full_bytes}) | {dt:.1f} |")
    if comm.Get_rank() == 0:
        print(f"||x_ls|| = {np.linalg.norm(r.x_ls):.4f}")


if __name__ == "__main__":
    main()

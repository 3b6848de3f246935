"""Distributed mean estimation, the smallest ScaleML program.

Every rank draws ``--samples`` vectors from N(mu, I) (mu known; its own fixed
seed), averages them, and the ranks average their local means through
``scaleml.quantized_allreduce`` (``none``: exact ``MPI_Allreduce``). Over
``--rounds`` rounds the estimate is the mean of the rounds' results (onebit
keeps error feedback across rounds). Rank 0 prints the errors and the bytes.

    mpiexec -n 4 python examples/mean_estimation.py --dim 100000 --compression qsgd4
"""

import argparse

import numpy as np
from mpi4py import MPI

import scaleml
from scaleml.compress import QSGD, Cast, ErrorFeedback, OneBit

FORMATS = {"none": None, "qsgd2": lambda: QSGD(bits=2), "qsgd4": lambda: QSGD(bits=4),
           "qsgd8": lambda: QSGD(bits=8), "fp16": lambda: Cast("fp16"), "onebit": lambda: OneBit()}


def true_mean(dim: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(dim)


def local_means(rank: int, dim: int, samples: int, rounds: int):
    """This rank's local mean (float32) of each round."""
    rng, mu = np.random.default_rng([1, rank]), true_mean(dim)
    for _ in range(rounds):
        yield (mu + rng.standard_normal((samples, dim)).mean(axis=0)).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=100000)
    p.add_argument("--samples", type=int, default=10, help="vectors per rank and round")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--compression", choices=FORMATS, default="qsgd4")
    a = p.parse_args()
    comm, make = MPI.COMM_WORLD, FORMATS[a.compression]
    P = comm.Get_size()
    ef = ErrorFeedback(make()) if a.compression == "onebit" else None
    codec = None if make is None or ef else make()
    estimate, exact, sent, algorithm = np.zeros(a.dim), np.zeros(a.dim), 0, "MPI_Allreduce"
    for local in local_means(comm.Get_rank(), a.dim, a.samples, a.rounds):
        avg = np.empty_like(local)
        comm.Allreduce(local, avg)  # the exact average, the reference
        avg /= P
        exact += avg / a.rounds
        if make is None:
            estimate += avg / a.rounds
            sent += 2 * (P - 1) * local.nbytes // P  # the ring figure of MPI_Allreduce
            continue
        got, info = scaleml.quantized_allreduce(local, comm, codec, error_feedback=ef, name="mean",
                                                average=True, return_info=True)
        estimate += got / a.rounds
        sent, algorithm = sent + info.bytes_sent, info.algorithm
    if comm.Get_rank() == 0:
        print(f"ranks={P} dim={a.dim} samples={a.samples} rounds={a.rounds} compression={a.compression} "
              f"algorithm={algorithm}")
        print(f"error_vs_true_mean={np.linalg.norm(estimate - true_mean(a.dim)):.6e} "
              f"(sampling alone: about {np.sqrt(a.dim / (P * a.samples * a.rounds)):.6e})")
        print(f"error_vs_exact_average={np.linalg.norm(estimate - exact):.6e}")
        print(f"bytes_sent={sent} (exact float32: {2 * (P - 1) * 4 * a.dim * a.rounds // P})")


if __name__ == "__main__":
    main()

"""Helpers for the tests that run on every rank under mpiexec."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from scaleml.datagen import random_sparse


def sparse_input(n: int, density: float, pattern: str, dtype, comm: MPI.Intracomm, seed: int):
    """This rank's (indices, values); see scaleml.datagen.random_sparse."""
    return random_sparse(n, density, pattern, dtype, comm.Get_rank(), comm.Get_size(), seed)


def dense_reference(idx: np.ndarray, vals: np.ndarray, n: int, comm: MPI.Intracomm):
    """(exact float64 sum of all ranks' vectors, sum of their absolute values)."""
    total = np.zeros(n)
    total_abs = np.zeros(n)
    for i, v in comm.allgather((idx, vals)):
        np.add.at(total, i, v.astype(np.float64))
        np.add.at(total_abs, i, np.abs(v.astype(np.float64)))
    return total, total_abs


def assert_close_to_sum(result: np.ndarray, exact: np.ndarray, exact_abs: np.ndarray, nranks: int) -> None:
    """Rounding bound of a P-term sum in any order: |err| <= (P-1) * eps * sum|x| (+ the final cast)."""
    eps = np.finfo(result.dtype).eps
    bound = nranks * eps * exact_abs + np.finfo(result.dtype).tiny
    err = np.abs(result.astype(np.float64) - exact)
    worst = int(np.argmax(err - bound)) if err.size else 0
    assert (err <= bound).all(), f"error {err[worst]} > bound {bound[worst]} at index {worst}"

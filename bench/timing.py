"""Timing helpers shared by the scripts in bench/: the median over iterations of the slowest rank."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI


def slowest_median(times: list[float], comm: MPI.Intracomm = MPI.COMM_WORLD) -> float:
    """Median over iterations of the slowest rank's time (collective: every rank passes as many times)."""
    mine = np.array(times)
    worst = np.empty_like(mine)
    comm.Allreduce(mine, worst, MPI.MAX)
    return float(np.median(worst))


def timed(step: Callable[[], object], iterations: int, warmup: int,
          comm: MPI.Intracomm = MPI.COMM_WORLD) -> float:
    """:func:`slowest_median` of ``step``'s seconds, each iteration after a barrier, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        comm.Barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return slowest_median(times, comm)


def timed_interleaved(steps: dict[str, Callable[[], object]], iterations: int, warmup: int,
                      comm: MPI.Intracomm = MPI.COMM_WORLD) -> dict[str, float]:
    """:func:`slowest_median` of each step's seconds, the steps taking turns in every iteration.

    Steps compared in one run then see the same machine: a neighbour's load
    that comes and goes (this machine is shared) lands on all of them alike,
    not on whichever ran during it.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iterations):
        for name, step in steps.items():
            comm.Barrier()
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: slowest_median(values, comm) for name, values in times.items()}


def save_json(path: str, **fields: Any) -> None:
    """Write ``fields`` to ``path`` as JSON, after ``command``: the command line that made them."""
    with open(path, "w") as f:
        json.dump({"command": " ".join(["python", *sys.argv]), **fields}, f, indent=1)

"""Measurement: time one method (:func:`measure`), run every method on one input (:func:`run_case`), and
record which machine, commit and MPI produced the numbers (:func:`run_metadata`)."""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .. import cost_model
from ..datagen import random_sparse
from .methods import BASELINE, LOSSLESS, METHODS, Case, Runner


def measure(run: Runner, comm: MPI.Intracomm, warmup: int, iterations: int) -> tuple[float, np.ndarray, int, str]:
    """(this rank's average seconds per call, last result, average bytes sent, algorithm)."""
    for _ in range(warmup):
        run()
    total, sent = 0.0, 0
    result, algorithm = None, ""
    for _ in range(max(iterations, 1)):
        comm.Barrier()
        t0 = time.perf_counter()
        result, nbytes, algorithm = run()
        total += time.perf_counter() - t0
        sent += nbytes
    return total / max(iterations, 1), result, sent // max(iterations, 1), algorithm


def run_case(comm: MPI.Intracomm, n: int, dtype: np.dtype, density: float, pattern: str, methods: Sequence[str],
             warmup: int, iterations: int, seed: int) -> list[dict]:
    """Run every method on one input; return rows (meaningful on every rank)."""
    P, rank = comm.Get_size(), comm.Get_rank()
    idx, vals = random_sparse(n, density, pattern, dtype, rank, P, seed)
    dense = np.zeros(n, dtype)
    dense[idx] = vals
    case = Case(comm, n, np.dtype(dtype), density, pattern, idx, vals, dense)
    exact = np.empty(n)
    comm.Allreduce(dense.astype(np.float64), exact, MPI.SUM)
    scale = float(np.abs(exact).max()) if n else 0.0
    nnz = comm.allreduce(int(idx.size), MPI.SUM)
    nnz_max = comm.allreduce(int(idx.size), MPI.MAX)
    rows, baseline_avg = [], None
    for name in [BASELINE, *[m for m in methods if m != BASELINE]]:
        run = METHODS[name](case)
        t, result, sent, ran = measure(run, comm, warmup, iterations)
        err = float(np.abs(result.astype(np.float64) - exact).max()) / scale if n and scale else 0.0
        times = comm.allgather(t)
        err = comm.allreduce(err, MPI.MAX)
        sent = comm.allreduce(sent, MPI.SUM) // P
        algorithm = name if ran == name else f"{name}->{ran}"  # what auto and dropin picked
        t_avg = float(np.mean(times))
        if name == BASELINE:
            baseline_avg = t_avg
        size = n * case.dtype.itemsize
        algbw = size / t_avg / 1e9 if t_avg > 0 else 0.0
        rows.append({
            "size_bytes": size, "count": n, "dtype": case.dtype.name, "ranks": P, "density": density,
            "global_nnz_input": nnz, "max_nnz_input": nnz_max, "pattern": pattern, "method": name,
            "algorithm": algorithm,
            "time_min_us": min(times) * 1e6, "time_avg_us": t_avg * 1e6, "time_max_us": max(times) * 1e6,
            "algbw_GBps": algbw, "busbw_GBps": algbw * 2 * (P - 1) / P, "bytes_sent_per_rank": sent,
            "speedup_vs_mpi": baseline_avg / t_avg if t_avg > 0 else float("inf"),
            "max_rel_error": err, "lossless": name in LOSSLESS,
        })
    return rows


def run_metadata(comm: MPI.Intracomm, collective: bool = True) -> dict:
    """Which machine, commit and MPI produced the numbers (``collective``: count hosts)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ranks": comm.Get_size(),
            "hosts": len(set(comm.allgather(MPI.Get_processor_name()))) if collective else None,
            "machine": platform.node(),
            "cpu": platform.processor() or platform.machine(), "commit": commit,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "cost_params": asdict(cost_model.get_params())}

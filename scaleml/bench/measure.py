"""Measurement: time one method (:func:`measure`), run every method on one input (:func:`run_case`), and
record which machine, commit and MPI produced the numbers (:func:`run_metadata`)."""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import mpi4py
import numpy as np
from mpi4py import MPI

from .. import cost_model
from .._version import __version__
from ..datagen import random_sparse
from .methods import BASELINE, COLLECTIVES, LOSSLESS, METHODS, Case, Runner, bandwidths


def measure(run: Runner, comm: MPI.Intracomm, warmup: int, iterations: int,
            accumulate: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Time one method on this rank: warm-up calls, then timed calls each fenced by a barrier.

    Parameters
    ----------
    run : Runner
        Performs one collective; returns (dense result, bytes sent, algorithm).
        Its ``prepare`` attribute, if any, is called before every call, untimed.
    comm : MPI.Intracomm
        The communicator of the case (its barrier starts every timed call).
    warmup : int
        Untimed calls first.
    iterations : int
        Timed calls (at least one is made).
    accumulate : numpy.ndarray, optional
        float64 array of the result's size: the result of every timed call is
        added to it, untimed (the time-averaged result of error feedback).

    Returns
    -------
    times : numpy.ndarray
        This rank's seconds of each timed call, float64, one per iteration.
    result : numpy.ndarray
        The dense result of the last call.
    sent : int
        Average bytes this rank sent per call.
    algorithm : str
        The algorithm that ran last.
    """
    prepare = getattr(run, "prepare", None)
    for _ in range(warmup):
        if prepare is not None:
            prepare()
        run()
    count = max(iterations, 1)
    times = np.empty(count)
    sent = 0
    result, algorithm = None, ""
    for i in range(count):
        if prepare is not None:
            prepare()
        comm.Barrier()
        t0 = time.perf_counter()
        result, nbytes, algorithm = run()
        times[i] = time.perf_counter() - t0
        sent += nbytes
        if accumulate is not None:
            accumulate += result.reshape(-1)
    return times, result, sent // count, algorithm


def relative_errors(result: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(||result - exact||_2 / ||exact||_2, max |result - exact| / max |exact|) on this rank; 0 where exact is 0.

    Parameters
    ----------
    result : numpy.ndarray
        A method's dense result.
    exact : numpy.ndarray
        The exact sum, float64, of the same size.

    Returns
    -------
    tuple of float
        The relative L2 error and the largest deviation relative to the largest magnitude.
    """
    diff = result.reshape(-1).astype(np.float64) - exact
    norm, scale = float(np.linalg.norm(exact)), float(np.abs(exact).max()) if exact.size else 0.0
    l2 = float(np.linalg.norm(diff)) / norm if norm else 0.0
    return l2, float(np.abs(diff).max()) / scale if scale else 0.0


def out_of_bounds(result: np.ndarray, exact: np.ndarray, magnitude: np.ndarray, dtype: np.dtype,
                  ranks: int) -> int:
    """Number of elements of a lossless result off the exact sum by more than summation rounding.

    Summing P terms in any order rounds each element by at most about ``(P-1) eps`` times the sum of the
    terms' magnitudes; the bound used is ``2 P eps * sum |x|`` with ``eps`` of the coarser of the case's and
    the result's type (a float32 wire of float64 data is float32's rounding).

    Parameters
    ----------
    result : numpy.ndarray
        A method's dense result.
    exact : numpy.ndarray
        The exact sum, float64, of the same size.
    magnitude : numpy.ndarray
        The sum over ranks of the inputs' absolute values, float64.
    dtype : numpy.dtype
        The case's value type.
    ranks : int
        Number of ranks P.

    Returns
    -------
    int
        nccl-tests' ``#wrong`` on this rank.
    """
    kinds = [np.dtype(dtype)] + ([result.dtype] if np.issubdtype(result.dtype, np.floating) else [])
    eps = max(float(np.finfo(k).eps) for k in kinds)
    diff = np.abs(result.reshape(-1).astype(np.float64) - exact)
    return int(np.count_nonzero(diff > 2 * max(ranks, 2) * eps * magnitude))


def median_of_iteration_max(comm: MPI.Intracomm, times: np.ndarray) -> np.ndarray:
    """Median over iterations of each iteration's slowest rank, for several methods at once.

    Collective: one ``Allreduce(MAX)`` of the whole array, so every rank gets the same answer.

    Parameters
    ----------
    comm : MPI.Intracomm
        The ranks that timed the calls.
    times : numpy.ndarray
        This rank's seconds, shape (methods, iterations), float64; the same shape on every rank.

    Returns
    -------
    numpy.ndarray
        Shape (methods,): for each method, the median over iterations of the maximum over ranks.
    """
    local = np.ascontiguousarray(times, dtype=np.float64)
    slowest = np.empty_like(local)
    comm.Allreduce(local, slowest, MPI.MAX)
    return np.median(slowest, axis=-1)


def run_case(comm: MPI.Intracomm, n: int, dtype: np.dtype, density: float, pattern: str, methods: Sequence[str],
             warmup: int, iterations: int, seed: int) -> list[dict]:
    """Run every method on one input, the ``MPI_Allreduce`` baseline first; one row per method.

    ``time_min_us``/``time_avg_us``/``time_max_us`` are the minimum, mean and maximum over ranks of each
    rank's average time per call, and ``speedup_vs_mpi`` is the ratio of the baseline's and the method's
    mean. Errors are against the exact sum, ``MPI_Allreduce`` of the same data in float64: ``rel_error``
    is ``||result - exact|| / ||exact||`` of the last call, ``max_rel_error`` its largest deviation over the
    largest magnitude of the sum, and ``rel_error_time_avg`` the relative L2 error of the mean of the timed
    calls' results (what error feedback makes small: its per-call error stays that of the format), each the
    largest over ranks; ``wrong`` (lossless methods; None for lossy ones) is nccl-tests' ``#wrong``, the
    number of elements off the exact sum by more than rounding (:func:`out_of_bounds`), the largest over ranks.
    ``algbw_GBps`` and ``busbw_GBps`` are nccl-tests' bandwidths of the method's
    ``collective`` (:func:`scaleml.bench.methods.bandwidths`) at the mean time. ``bytes_sent_per_rank`` is
    the mean over ranks of each rank's bytes per call, as the
    method reports them (``MPI_Allreduce``, gloo: the ring's figure). ``time_median_us`` is the median over
    iterations of each iteration's time, which is the maximum over ranks of that iteration (the slowest rank
    finishes the collective), and ``speedup_median_vs_mpi`` is the ratio of the baseline's and the method's
    median.

    Parameters
    ----------
    comm : MPI.Intracomm
        The ranks taking part (collective: every rank calls it with the same arguments).
    n : int
        Length of the dense vector.
    dtype : numpy.dtype
        Value type.
    density : float
        Fraction of non-zeros per rank.
    pattern : str
        How ranks' indices relate (one of :data:`scaleml.datagen.PATTERNS`).
    methods : Sequence[str]
        Names in :data:`METHODS`; the baseline is always run, first.
    warmup : int
        Untimed calls per method.
    iterations : int
        Timed calls per method.
    seed : int
        Seed of the random input.

    Returns
    -------
    list[dict]
        One row per method, the same on every rank.
    """
    P, rank = comm.Get_size(), comm.Get_rank()
    idx, vals = random_sparse(n, density, pattern, dtype, rank, P, seed)
    dense = np.zeros(n, dtype)
    dense[idx] = vals
    case = Case(comm, n, np.dtype(dtype), density, pattern, idx, vals, dense)
    exact = np.empty(n)
    comm.Allreduce(dense.astype(np.float64), exact, MPI.SUM)
    magnitude = np.empty(n)  # sum over ranks of |x|: what bounds the rounding of any order of summation
    comm.Allreduce(np.abs(dense.astype(np.float64)), magnitude, MPI.SUM)
    nnz = comm.allreduce(int(idx.size), MPI.SUM)
    nnz_max = comm.allreduce(int(idx.size), MPI.MAX)
    rows, baseline_avg, per_iteration = [], None, []
    for name in [BASELINE, *[m for m in methods if m != BASELINE]]:
        run = METHODS[name](case)
        lossy = name not in LOSSLESS
        accumulated = np.zeros(n) if lossy else None  # a lossless result is the same every call
        iteration_times, result, sent, ran = measure(run, comm, warmup, iterations, accumulated)
        per_iteration.append(iteration_times)
        t = sum(iteration_times.tolist()) / iteration_times.size
        l2, err = relative_errors(result, exact)
        l2_mean = relative_errors(accumulated / iteration_times.size, exact)[0] if lossy else l2
        wrong = out_of_bounds(result, exact, magnitude, case.dtype, P)
        times = comm.allgather(t)
        errors = np.array([l2, err, l2_mean, wrong])
        comm.Allreduce(MPI.IN_PLACE, errors, MPI.MAX)
        l2, err, l2_mean, wrong = errors.tolist()
        sent = comm.allreduce(sent, MPI.SUM) // P
        # What auto and the drop-in picked; a forced "ALG:FORMAT" ran ALG.
        algorithm = name if ran == name or name.startswith(f"{ran}:") else f"{name}->{ran}"
        t_avg = float(np.mean(times))
        if name == BASELINE:
            baseline_avg = t_avg
        size = n * case.dtype.itemsize
        collective = COLLECTIVES.get(name, "allreduce")
        algbw, busbw = bandwidths(collective, size, P, t_avg)
        rows.append({
            "size_bytes": size, "count": n, "dtype": case.dtype.name, "ranks": P, "density": density,
            "global_nnz_input": nnz, "max_nnz_input": nnz_max, "pattern": pattern, "method": name,
            "algorithm": algorithm, "collective": collective,
            "time_min_us": min(times) * 1e6, "time_avg_us": t_avg * 1e6, "time_max_us": max(times) * 1e6,
            "time_median_us": None,
            "algbw_GBps": algbw, "busbw_GBps": busbw, "bytes_sent_per_rank": sent,
            "speedup_vs_mpi": baseline_avg / t_avg if t_avg > 0 else float("inf"),
            "speedup_median_vs_mpi": None,
            "rel_error": l2, "max_rel_error": err, "rel_error_time_avg": l2_mean, "lossless": not lossy,
            "wrong": None if lossy else int(wrong),
        })
    # The per-iteration times of every method, gathered once per case (not inside the timed loop).
    medians = median_of_iteration_max(comm, np.stack(per_iteration))
    baseline_median = float(medians[0])
    for row, median in zip(rows, medians.tolist()):
        row["time_median_us"] = median * 1e6
        row["speedup_median_vs_mpi"] = baseline_median / median if median > 0 else float("inf")
    return rows


def package_versions() -> dict[str, str | None]:
    """Versions of what produced the numbers.

    Returns
    -------
    dict
        ``scaleml``, ``numpy``, ``mpi4py``, ``python``, ``mpi_library`` (the MPI library's version
        string, ``MPI_Get_library_version``) and ``mpi_standard`` (e.g. ``"3.1"``); None where unknown.
    """
    try:
        version = metadata.version("scaleml")
    except metadata.PackageNotFoundError:  # run from a source tree
        version = __version__
    major, minor = MPI.Get_version()
    return {"scaleml": version, "numpy": np.__version__, "mpi4py": mpi4py.__version__,
            "python": platform.python_version(), "mpi_library": MPI.Get_library_version().strip(),
            "mpi_standard": f"{major}.{minor}"}


def run_metadata(comm: MPI.Intracomm, collective: bool = True) -> dict:
    """Which machine, commit, MPI and package versions produced the numbers.

    Parameters
    ----------
    comm : MPI.Intracomm
        The ranks of the run.
    collective : bool
        Count the hosts (an allgather over ``comm``); False: ``hosts`` is None and no rank else takes part.

    Returns
    -------
    dict
        ``date``, ``ranks``, ``hosts``, ``machine``, ``cpu``, ``commit``, ``mpi`` (the first line of the MPI
        library's version), ``versions`` (:func:`package_versions`) and ``cost_params``.
    """
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
            "versions": package_versions(),
            "cost_params": asdict(cost_model.get_params())}

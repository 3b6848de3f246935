"""The ``scaleml`` logger: the rank on every line, and the decisions of the collectives at INFO.

``SCALEML_LOG_LEVEL=INFO`` (or :func:`scaleml.config.set_log_level`) sends
the logger to stderr as ``[scaleml rank 3] INFO ...``. At INFO each decision
is logged the first time it is made for a collective and size class, and
again whenever it changes (the drop-in going to MPI and why, the algorithm
``auto`` chose with the model's predictions, the lossy format, fallbacks to
MPI); at DEBUG every call is. Every record of the ``scaleml`` loggers carries
``rank`` (``%(rank)s`` in a format of your own).

The drop-in's fast paths check one module flag, :data:`ON` (INFO logging or
a timeline is on), and do nothing more when it is off.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from . import algorithms, config

logger = logging.getLogger("scaleml")

FORMAT = "[scaleml rank %(rank)s] %(levelname)s %(message)s"
"""The format of the handler that ``SCALEML_LOG_LEVEL`` installs."""

ON = False
"""INFO logging or a timeline is on: the drop-in's fast paths take the slower, observed route."""

_rank: int | None = None
_handler: logging.Handler | None = None
_seen: dict[tuple, str] = {}
_SEEN_LIMIT = 100_000
_timeline_span: Callable[..., None] | None = None


def world_rank() -> int:
    """This process's rank in ``MPI.COMM_WORLD`` (the launcher's variable before MPI starts; else 0)."""
    global _rank
    if _rank is None:
        if MPI.Is_initialized() and not MPI.Is_finalized():
            _rank = MPI.COMM_WORLD.Get_rank()
        else:
            for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
                if os.environ.get(var, "").isdigit():
                    return int(os.environ[var])
            return 0
    return _rank


class RankFilter(logging.Filter):
    """Adds ``record.rank`` (the rank in ``MPI.COMM_WORLD``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = world_rank()
        return True


_filter = RankFilter()


def refresh() -> None:
    """Recompute :data:`ON` (after the level or the timeline changed)."""
    global ON
    ON = logger.isEnabledFor(logging.INFO) or _timeline_span is not None


def set_timeline(span: Callable[..., None] | None) -> None:
    """Record the drop-in's MPI calls with ``span`` (None: no timeline is on); :mod:`scaleml.timeline` calls it.

    Parameters
    ----------
    span : callable or None
        :func:`scaleml.timeline.span` while a timeline is written. The
        timeline sits above this module (it logs with its rank), so it hands
        its recorder down rather than being imported here.
    """
    global _timeline_span
    _timeline_span = span
    refresh()


def set_log_level(level: str | int | None) -> None:
    """Log the ``scaleml`` logger to stderr at ``level``, each line with the rank; None removes the handler.

    Parameters
    ----------
    level : {"DEBUG", "INFO", "WARNING", "ERROR"}, int or None
        As ``SCALEML_LOG_LEVEL``. With None the logger goes back to Python's
        logging configuration (its level unset, propagating to the root).
    """
    global _handler
    if _handler is not None:
        logger.removeHandler(_handler)
        _handler = None
    if level is None:
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    else:
        if isinstance(level, str):
            if level.upper() not in config.LOG_LEVELS:
                raise ValueError(f"log level {level!r}: expected one of {', '.join(config.LOG_LEVELS)}")
            level = level.upper()
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter(FORMAT))
        _handler.addFilter(_filter)
        logger.addHandler(_handler)
        logger.setLevel(level)
        logger.propagate = False  # one line per record, not one more through the root's handlers
    refresh()


# ---- decisions -------------------------------------------------------------------------------

def _log_decision(key: tuple, route: str, msg: str, *args: Any) -> None:
    """INFO when ``key``'s route is new or changed, else DEBUG."""
    if _seen.get(key) != route:
        if len(_seen) >= _SEEN_LIMIT:
            _seen.clear()
        _seen[key] = route
        logger.info(msg, *args)
    elif logger.isEnabledFor(logging.DEBUG):
        logger.debug(msg, *args)


_OP_NAMES = ("SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR", "MAXLOC", "MINLOC",
             "REPLACE", "NO_OP")


def op_name(op: Any) -> str:
    """``MPI.SUM``, ``MPI.MAX``... for a predefined op; else what it is."""
    for name in _OP_NAMES:
        if op == getattr(MPI, name, None):
            return f"MPI.{name}"
    return "a user-defined op" if isinstance(op, MPI.Op) else type(op).__name__


def _describe(buf: Any) -> tuple[int, str]:
    if isinstance(buf, np.ndarray):
        return buf.size, str(buf.dtype)
    return -1, type(buf).__name__


def mpi(comm: Any, reason: str | None, fn: Any, sendbuf: Any, recvbuf: Any, op: Any, *rest: Any,
        stats: Any = None) -> Any:
    """The drop-in's call ``fn(sendbuf, recvbuf, op, *rest)`` that goes to MPI, logged and on the timeline.

    ``reason`` None: the call was not planned (``comm._mpi_reason`` says why,
    :meth:`scaleml.Comm._mpi_reason`); with ``stats``, an MPI period of the tuner.
    """
    refresh()
    if logger.isEnabledFor(logging.INFO):
        n, dtype = _describe(recvbuf if isinstance(recvbuf, np.ndarray) else sendbuf)
        if stats is not None:
            why = (f"MPI period of the tuner (MPI won this size class at its last check; next check at call "
                   f"{stats.mpi_until + 1}, now {stats.calls})")
            route = "mpi:tuner"
        else:
            why = reason or comm._mpi_reason(sendbuf, recvbuf, op)
            route = f"mpi:{why}"
        _log_decision(("Allreduce", n, dtype), route, "Allreduce n=%d %s -> MPI_Allreduce: %s", n, dtype, why)
    span = _timeline_span
    if span is None:
        return fn(sendbuf, recvbuf, op, *rest)
    t0 = time.perf_counter()
    try:
        return fn(sendbuf, recvbuf, op, *rest)
    finally:
        n, dtype = _describe(recvbuf if isinstance(recvbuf, np.ndarray) else sendbuf)
        span("Allreduce", "MPI_Allreduce", "algorithm", t0, time.perf_counter(), n=n, dtype=dtype,
                      algorithm="MPI_Allreduce", route="tuner" if stats is not None else (reason or "not planned"))


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f} us"


def decision(op_name: str, n: int, dtype: Any, agreement: Any, predicted: dict[str, float], chosen: str,
             requested: str, fmt: Any = None, stats: Any = None, reason: str = "", P: int = 0,
             candidates: tuple[str, ...] | None = None) -> None:
    """Log an engine collective's choice (INFO when new for its size class, else DEBUG).

    Parameters
    ----------
    op_name : str
        The collective (``Allreduce``, ``sparse_allreduce``...).
    n, dtype
        Its size class.
    agreement : scaleml.sparse.Agreement
        The agreed non-zero counts.
    predicted : dict
        The model's seconds per algorithm.
    chosen, requested : str
        What runs and what the caller asked for.
    fmt : ValueFormat, optional
        The lossy format allowed (None: exact).
    stats : ClassStats, optional
        The tuner's statistics (for MPI's measured time).
    reason : str
        Why (the plan's words: requested, least estimated time, MPI first...).
    P : int
        Ranks.
    candidates : tuple of str, optional
        The algorithms it chose among (default: the exact ones, all with a
        lossy format), for the predictions logged.
    """
    if not logger.isEnabledFor(logging.INFO):
        if ON:
            refresh()
        return
    dtype = str(np.dtype(dtype)) if dtype is not None else "?"
    names = candidates if candidates is not None else algorithms.NAMES if fmt is not None else algorithms.EXACT
    best = sorted(((k, predicted[k]) for k in names if k in predicted), key=lambda kv: kv[1])[:4]
    mpi_seconds = getattr(stats, "mpi_seconds", None) if stats is not None else None
    density = agreement.nnz_sum / (n * P) if n and P else 0.0
    _log_decision((op_name, n, dtype, fmt.name if fmt is not None else "exact"), f"{chosen}:{reason}",
                  "%s n=%d %s nnz_max=%d nnz_sum=%d (density %.3g%%) -> %s (%s); format %s; predicted %s%s",
                  op_name, n, dtype, agreement.nnz_max, agreement.nnz_sum, 100 * density, chosen, reason,
                  fmt.name if fmt is not None else "exact", ", ".join(f"{k} {_us(v)}" for k, v in best),
                  f"; MPI measured {_us(mpi_seconds)}" if mpi_seconds is not None else "")


def note(msg: str, *args: Any) -> None:
    """A one-off INFO line (configuration, a communicator's settings)."""
    logger.info(msg, *args)


logger.addFilter(_filter)
config.register_log_level_setter(set_log_level)
if config.value("SCALEML_LOG_LEVEL"):
    set_log_level(config.value("SCALEML_LOG_LEVEL"))

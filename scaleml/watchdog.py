"""Limits on how long a rank waits inside a ScaleML collective, and the fault-injection hook of the tests.

Every wait inside ScaleML's collectives (the argument agreement and the
algorithms) is watched: past ``warning`` seconds the waiting rank prints one
warning naming what it waits in; past ``timeout`` seconds it prints why and
aborts the job (``MPI_Abort``), as ``torch.distributed``'s timeout does for
NCCL. Ranks wait that long only when they are not in the same collective (a
program whose ranks call different ScaleML functions, or where one rank's op,
dtype or count sends it to plain MPI), or when a rank stopped. A failure
inside an algorithm on one rank (out of memory, an MPI error, a malformed
message) aborts the job at once with its message: the other ranks are inside
the same collective and could never finish it.

Environment (read at import by :mod:`scaleml.config`; a bad value raises ``ValueError`` naming it):

``SCALEML_TIMEOUT``
    Seconds before the job is aborted (default 600; 0: never).
``SCALEML_STALL_WARNING``
    Seconds before the warning (default 60; 0: never).
``SCALEML_INJECT_FAULT``
    ``RANK:CALL[:WAIT]``, for tests: on rank RANK (of the collective's
    communicator) the WAIT-th wait (default 1) inside the algorithm of the
    process's CALL-th engine collective fails as an MPI error would.
"""

from __future__ import annotations

import math

from . import config
from ._native import lib

__all__ = ["set_timeout", "inject_fault"]

DEFAULT_TIMEOUT = 600.0
DEFAULT_WARNING = 60.0


def set_timeout(timeout: float = DEFAULT_TIMEOUT, warning: float = DEFAULT_WARNING) -> None:
    """Set the watchdog of every rank's waits inside ScaleML's collectives (this process only).

    Parameters
    ----------
    timeout : float
        Seconds a rank may wait before it aborts the job; 0 never aborts.
    warning : float
        Seconds before a one-time warning on stderr; 0 never warns.
    """
    for name, value in (("timeout", timeout), ("warning", warning)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    lib.scaleml_set_watchdog(float(warning), float(timeout))


def inject_fault(rank: int, call: int, wait: int = 1) -> None:
    """Test hook: make the ``wait``-th wait inside the algorithm of this process's ``call``-th engine collective
    fail on ``rank`` (its rank in the collective's communicator); ``call=0`` disarms. The job then aborts."""
    for name, value, low in (("rank", rank, 0), ("call", call, 0), ("wait", wait, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    lib.scaleml_set_fault(rank, call, wait)


def _configure_from_environment() -> None:
    """Apply the variables :mod:`scaleml.config` read (and validated) at import."""
    set_timeout(config.value("SCALEML_TIMEOUT"), config.value("SCALEML_STALL_WARNING"))
    fault = config.value("SCALEML_INJECT_FAULT")
    if fault:
        inject_fault(*fault)


_configure_from_environment()

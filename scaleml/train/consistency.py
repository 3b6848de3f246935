"""Agreement between ranks for the training driver: one error on every rank, and identical replicas.

:func:`agree` turns an error that some ranks saw into the same
:class:`TrainingError` on every rank (an allgather of the local messages), so
a problem only one rank sees (its unreadable checkpoint file) never leaves the
other ranks waiting in a collective. :func:`check_replicas` compares a cheap
hash of the parameters between ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from mpi4py import MPI

__all__ = ["ReplicaMismatchError", "TrainingError", "agree", "check_replicas", "digest"]


class TrainingError(Exception):
    """An invalid configuration or input, raised with the same message on every rank.

    Attributes
    ----------
    ranks : list of int
        The ranks that saw the problem.
    """

    def __init__(self, message: str, ranks: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.ranks = list(ranks)


class ReplicaMismatchError(RuntimeError):
    """Ranks hold different parameters (raised on every rank)."""


def agree(comm: MPI.Intracomm, error: BaseException | None) -> None:
    """Raise the same :class:`TrainingError` on every rank when any rank passes an error (collective).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The communicator of the ranks that must agree.
    error : BaseException or None
        This rank's problem, or ``None``.

    Raises
    ------
    TrainingError
        On every rank, when any rank passed an error. The message is the
        error's when every rank saw the same one, else the first failing
        rank's, prefixed with ``rank r:`` (and how many others failed).
    """
    mine = None if error is None else (str(error) or type(error).__name__)
    messages = comm.allgather(mine)
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    ranks = [r for r, _ in failed]
    first_rank, first = failed[0]
    if len(failed) == comm.Get_size() and all(m == first for _, m in failed):
        message = first
    else:
        others = len(failed) - 1
        message = f"rank {first_rank}: {first}" + (f" (and {others} other rank(s) failed)" if others else "")
    if error is not None:
        raise TrainingError(message, ranks) from error
    raise TrainingError(message, ranks)


def digest(arrays: Sequence[np.ndarray]) -> bytes:
    """A 16-byte BLAKE2b hash of the arrays' shapes, dtypes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.digest()


def check_replicas(comm: MPI.Intracomm, arrays: Sequence[np.ndarray], what: str = "parameters") -> None:
    """Check that every rank holds bitwise-identical ``arrays`` (collective: one allgather of 16 bytes).

    Raises
    ------
    ReplicaMismatchError
        On every rank, naming the ranks whose copy differs from rank 0's.
    """
    mine = np.frombuffer(digest(arrays), dtype=np.uint8)
    everyone = np.empty((comm.Get_size(), mine.size), dtype=np.uint8)
    comm.Allgather([mine, MPI.BYTE], [everyone, MPI.BYTE])
    differ = [r for r in range(comm.Get_size()) if not np.array_equal(everyone[r], everyone[0])]
    if differ:
        raise ReplicaMismatchError(f"the {what} of rank(s) {differ} differ from rank 0's: the replicas diverged")

"""Checkpoints of the training driver: one ``.npz`` per rank and a small metadata file, written atomically.

Layout of a checkpoint directory::

    DIR/rank0.npz ... DIR/rank{P-1}.npz   every rank's own state (parameters, optimizer state, the
                                          reducer's error-feedback residuals and step counters, counters)
    DIR/meta.json                         written by rank 0 once every rank file is in place: world size,
                                          configuration, epoch and step, the metrics so far

Every file is written to a temporary name in the same directory and renamed
(``os.replace``), so a crash leaves the previous version or the new one, never
half a file. ``meta.json`` is written last and names the epoch the rank files
must hold: rank files of another epoch (a crash between the two) are refused.
Loading checks every file on its own rank and agrees on the outcome, so a
missing or corrupt file on one rank gives the same :class:`TrainingError` on
every rank.

A checkpoint of ``P`` ranks loads at ``P'`` ranks when the caller passes a
``reshard`` function (``scaleml-train`` does: the reducer's
:meth:`~scaleml.train.GradientReducer.reshard_state_dicts` for its residuals,
the replicated parameters and optimizer state carried): rank 0 then reads all
``P`` files and scatters the ``P'`` new states. The next save writes ``P'``
rank files and a ``meta.json`` of ``P'`` ranks; files of higher old ranks stay
behind, unread.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .consistency import TrainingError, agree

__all__ = ["FORMAT", "checkpoint_exists", "load_checkpoint", "rank_file", "save_checkpoint"]

FORMAT = "scaleml-train-checkpoint"
VERSION = 1

Reshard = Callable[[list[dict[str, np.ndarray]], int], list[dict[str, np.ndarray]]]
"""``reshard(old_states, new_size) -> new_states`` of :func:`load_checkpoint`."""


def rank_file(directory: str, rank: int) -> str:
    """The path of rank ``rank``'s file."""
    return os.path.join(directory, f"rank{rank}.npz")


def _meta_file(directory: str) -> str:
    return os.path.join(directory, "meta.json")


def _atomic_write(path: str, write: Any, binary: bool = True) -> None:
    """Write a file through ``write(fileobj)`` to a temporary name beside ``path``, then rename it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_checkpoint(directory: str, comm: MPI.Intracomm, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write this rank's ``state`` and (rank 0) ``meta`` into ``directory`` (collective).

    Parameters
    ----------
    directory : str
        Created when missing.
    comm : mpi4py.MPI.Intracomm
        The ranks of the run; each writes its own file.
    state : dict of numpy.ndarray
        This rank's arrays (saved with ``numpy.savez``, no pickles); ``epoch``
        is added from ``meta``.
    meta : dict
        JSON-serialisable; must hold ``epoch``. ``format``, ``version`` and
        ``world_size`` are added.

    Raises
    ------
    TrainingError
        On every rank when any rank could not write.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    error = None
    try:
        os.makedirs(directory, exist_ok=True)
        arrays = dict(state, epoch=np.array(int(meta["epoch"]), dtype=np.int64),
                      world_size=np.array(size, dtype=np.int64), rank=np.array(rank, dtype=np.int64))
        _atomic_write(rank_file(directory, rank), lambda f: np.savez(f, **arrays))
    except (OSError, ValueError) as exc:
        error = ValueError(f"cannot write checkpoint file {rank_file(directory, rank)}: {exc}")
    agree(comm, error)
    error = None
    if rank == 0:
        try:
            full = {"format": FORMAT, "version": VERSION, "world_size": size, **meta}
            _atomic_write(_meta_file(directory), lambda f: json.dump(full, f, indent=1, sort_keys=True),
                          binary=False)
        except (OSError, TypeError, ValueError) as exc:
            error = ValueError(f"cannot write checkpoint metadata {_meta_file(directory)}: {exc}")
    agree(comm, error)


def _read_meta(directory: str) -> dict[str, Any]:
    path = _meta_file(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"no checkpoint to resume from: {directory!r} is not a directory")
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint to resume from in {directory!r} ({path} is missing)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"corrupt checkpoint metadata {path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scaleml-train checkpoint")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {meta.get('version')!r}; this scaleml-train reads "
                         f"version {VERSION}")
    for key in ("world_size", "epoch", "step", "config"):
        if key not in meta:
            raise ValueError(f"corrupt checkpoint metadata {path}: no {key!r}")
    return meta


def load_checkpoint(directory: str, comm: MPI.Intracomm, config: dict[str, Any] | None = None,
                    reshard: Reshard | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read this rank's state and the metadata from ``directory`` (collective).

    Parameters
    ----------
    directory : str
        A directory written by :func:`save_checkpoint`.
    comm : mpi4py.MPI.Intracomm
        The ranks of the resumed run: as many as wrote the checkpoint, or any
        number with ``reshard``.
    config : dict, optional
        The configuration of the resumed run; every key must equal the saved one.
    reshard : callable, optional
        ``reshard(old_states, new_size) -> new_states``: for a checkpoint
        written by another number of ranks, turns every old rank's arrays (in
        rank order) into one dict per rank of ``comm``. Rank 0 reads the old
        files, calls it and scatters the result. Without it such a checkpoint
        is refused.

    Returns
    -------
    (dict of numpy.ndarray, dict)
        This rank's arrays and the metadata (whose ``world_size`` is the
        number of ranks that wrote the checkpoint).

    Raises
    ------
    TrainingError
        On every rank when the checkpoint is missing or corrupt on any rank,
        was written by another number of ranks (without ``reshard``, or when
        it raises ``ValueError``), or for another configuration.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    meta: dict[str, Any] | None = None
    error: str | None = None
    # Rank 0 reads the metadata and sends it, or what is wrong with it, to everyone (one reader; the other
    # ranks need only see their own files).
    if rank == 0:
        try:
            meta = _read_meta(directory)
            if config is not None:
                saved = meta["config"]
                differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
                if differ:
                    detail = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in differ)
                    raise ValueError(f"the checkpoint in {directory!r} is for another configuration ({detail})")
        except ValueError as exc:
            error = str(exc)
    meta, error = comm.bcast((meta, error), root=0)
    if error is not None:
        raise TrainingError(error, [0])
    assert meta is not None
    if meta["world_size"] != size:
        return _load_resharded(directory, comm, meta, reshard), meta
    error = None
    state: dict[str, np.ndarray] = {}
    try:
        state = _read_rank_file(directory, rank, size, meta["epoch"])
    except ValueError as exc:
        error = exc
    agree(comm, error)
    return state, meta


def _read_rank_file(directory: str, rank: int, size: int, epoch: int) -> dict[str, np.ndarray]:
    """The arrays of rank ``rank``'s file, checked to be of that rank of ``size`` at ``epoch`` (else ValueError)."""
    path = rank_file(directory, rank)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint file {path} is missing")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise ValueError("not an .npz (zip) file")
        with np.load(path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
    except Exception as exc:  # zip, format and I/O errors alike: the file is unreadable
        raise ValueError(f"corrupt checkpoint file {path}: {exc}") from None
    for key, want in (("rank", rank), ("world_size", size), ("epoch", epoch)):
        got = state.get(key)
        if got is None or got.shape != () or int(got) != want:
            raise ValueError(f"checkpoint file {path} holds {key} {None if got is None else got.tolist()}, "
                             f"expected {want} (files of different checkpoints mixed, or a crash while saving)")
    return state


def _load_resharded(directory: str, comm: MPI.Intracomm, meta: dict[str, Any], reshard: Reshard | None
                    ) -> dict[str, np.ndarray]:
    """This rank's share of a checkpoint written by another number of ranks (collective).

    Rank 0 reads every old rank's file, ``reshard`` turns them into one state
    per rank of ``comm`` and rank 0 scatters them (one reader: the old files
    need not be on every new rank's disk, only on rank 0's). ``epoch``,
    ``world_size`` and ``rank`` are set for the new rank.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    old_size, epoch = int(meta["world_size"]), int(meta["epoch"])
    shares: list[dict[str, np.ndarray]] | None = None
    error: str | None = None
    if rank == 0:
        try:
            if reshard is None:
                raise ValueError(f"the checkpoint in {directory!r} was written by {old_size} ranks; resume it with "
                                 f"mpiexec -n {old_size}, not {size}")
            old = [_read_rank_file(directory, r, old_size, epoch) for r in range(old_size)]
            shares = reshard(old, size)
            if len(shares) != size:
                raise ValueError(f"resharding {old_size} ranks' states gave {len(shares)} states for {size} ranks")
            for r, share in enumerate(shares):
                share.update(epoch=np.array(epoch, dtype=np.int64), world_size=np.array(size, dtype=np.int64),
                             rank=np.array(r, dtype=np.int64))
        except (ValueError, TypeError, KeyError) as exc:
            error = f"checkpoint {directory}: {exc}"
            shares = None
    error = comm.bcast(error, root=0)
    if error is not None:
        raise TrainingError(error, [0])
    return comm.scatter(shares, root=0)


def checkpoint_exists(directory: str) -> bool:
    """Whether ``directory`` holds a checkpoint's metadata."""
    return os.path.exists(_meta_file(directory))


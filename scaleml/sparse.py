"""Sparse AllReduce: validation, agreement between ranks, algorithm choice, and the C call."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from mpi4py import MPI

from . import cost_model
from ._native import check, comm_address, ffi, lib

log = logging.getLogger("scaleml")

Algorithm = Literal["auto", "recursive_doubling", "split_allgather", "split_dense", "dense"]
OutForm = Literal["dense", "sparse"]

_ALGORITHM_CODES = {name: code for code, name in enumerate(cost_model.ALGORITHMS, start=1)}
_OUT_CODES = {"dense": 0, "sparse": 1}
_VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INDEX_LIMIT_32 = 1 << 32


@dataclass
class SparseVector:
    """A vector of dimension ``n`` stored as sorted unique ``indices`` and their ``values``.

    Indices are ``uint32`` when ``n <= 2**32`` and ``uint64`` otherwise; values
    are ``float32`` or ``float64``.
    """

    indices: np.ndarray
    values: np.ndarray
    n: int

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return int(self.indices.size)

    @property
    def dtype(self) -> np.dtype:
        """Data type of the values."""
        return self.values.dtype

    def to_dense(self) -> np.ndarray:
        """Return the vector as a dense array of length ``n``."""
        dense = np.zeros(self.n, dtype=self.values.dtype)
        dense[self.indices] = self.values
        return dense

    @classmethod
    def from_dense(cls, x: np.ndarray) -> SparseVector:
        """Build a sparse vector from the non-zeros of a 1-D array."""
        x = np.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D array, got shape {x.shape}")
        idx = np.flatnonzero(x)
        return cls(idx.astype(index_dtype(x.size)), x[idx], int(x.size))


@dataclass
class AllreduceInfo:
    """What a sparse AllReduce did: the choice of algorithm and its traffic."""

    algorithm: str
    """The algorithm that ran (the choice of ``auto``, or the one forced)."""
    requested: str
    """The algorithm the caller asked for."""
    nnz_max: int
    nnz_sum: int
    bytes_sent: int
    """Bytes this rank put on the wire (dense path: the ring figure)."""
    predicted: dict[str, float] = field(default_factory=dict)
    """Model prediction in seconds for each algorithm."""


def index_dtype(n: int) -> np.dtype:
    """Index type for vectors of dimension ``n``: uint32 when it fits, else uint64."""
    return np.dtype(np.uint32) if n <= _INDEX_LIMIT_32 else np.dtype(np.uint64)


# ---- a private duplicate of each user communicator ----------------------------------------

_private_keyval: int | None = None


def _free_private(comm: MPI.Comm, keyval: int, private: MPI.Comm) -> None:
    if not MPI.Is_finalized() and private != MPI.COMM_NULL:
        private.Free()


def private_comm(comm: MPI.Comm) -> MPI.Intracomm:
    """Return ScaleML's duplicate of ``comm`` (collective on first use; cached as an attribute).

    The collectives send their point-to-point messages on this duplicate so
    they can never match a message of the application's, and it returns MPI
    errors instead of aborting, so they become Python exceptions.
    """
    global _private_keyval
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"expected an mpi4py intra-communicator, got {type(comm).__name__}")
    if _private_keyval is None:
        _private_keyval = MPI.Comm.Create_keyval(delete_fn=_free_private)
    private = comm.Get_attr(_private_keyval)
    if private is None:
        private = comm.Dup()
        private.Set_errhandler(MPI.ERRORS_RETURN)
        comm.Set_attr(_private_keyval, private)
    return private


# ---- agreement between ranks ---------------------------------------------------------------

# Local error codes: every rank learns the largest code and the rank that raised it.
_LOCAL_ERRORS = {
    1: (TypeError, "unsupported argument type or dtype"),
    2: (ValueError, "invalid argument"),
    3: (ValueError, "index out of range [0, n)"),
    4: (ValueError, "non-finite value (NaN or Inf)"),
    5: (MemoryError, "result does not fit in memory"),
}


class _LocalError(Exception):
    def __init__(self, code: int, exc: BaseException):
        super().__init__(str(exc))
        self.code = code
        self.exc = exc


@dataclass
class Agreement:
    """Fields every rank agrees on before a collective starts."""

    nnz_max: int
    nnz_sum: int
    dense_fits: bool
    """Whether every rank has memory for a dense vector of n values."""


def agree(comm: MPI.Intracomm, error: _LocalError | None, *, n: int, value_bytes: int, algorithm: int,
          out: int, nnz: int, op_name: str) -> Agreement:
    """One small MPI_Allreduce that checks arguments on all ranks at once.

    Raises the same kind of exception on every rank when any rank had a local
    error or when ranks disagree on ``n``, dtype, algorithm or output form, so
    a bad argument never leaves some ranks waiting in a collective.
    """
    fields = np.zeros(lib.SCALEML_CONSENSUS_FIELDS, dtype=np.int64)
    rank = comm.Get_rank()
    if error is not None:
        fields[0], fields[1] = error.code, rank
        n = value_bytes = algorithm = out = nnz = 0
    else:
        fields[1] = -1
    fields[2:12] = [n, -n, value_bytes, -value_bytes, algorithm, -algorithm, out, -out, nnz, -nnz]
    fields[12] = 0 if error is not None or _dense_fits(n, value_bytes) else 1
    params = cost_model.params_fingerprint()
    fields[13:15] = [params, -params]
    fields[16] = nnz
    fields[17] = 1 if error is not None else 0
    agreed = np.zeros_like(fields)
    check(lib.scaleml_consensus(comm_address(comm), ffi.from_buffer("int64_t[]", fields),
                                ffi.from_buffer("int64_t[]", agreed)))
    if agreed[0] > 0:
        if error is not None:
            raise error.exc
        kind, what = _LOCAL_ERRORS.get(int(agreed[0]), (ValueError, "invalid argument"))
        raise kind(f"{op_name}: {what} on rank {int(agreed[1])} ({int(agreed[17])} rank(s) failed); "
                   "see that rank's exception")

    def differs(i: int) -> bool:
        return bool(agreed[i] != -agreed[i + 1])

    if differs(2):
        raise ValueError(f"{op_name}: n differs between ranks (from {-agreed[3]} to {agreed[2]})")
    if differs(4):
        raise TypeError(f"{op_name}: value dtype differs between ranks (float32 on some, float64 on others)")
    if differs(6):
        raise ValueError(f"{op_name}: algorithm differs between ranks")
    if differs(8):
        raise ValueError(f"{op_name}: output form differs between ranks")
    if differs(13):
        raise ValueError(f"{op_name}: cost-model parameters differ between ranks (is the calibration file "
                         f"{cost_model.calibration_file()} the same on every node? set_params on every rank?)")
    return Agreement(nnz_max=int(agreed[10]), nnz_sum=int(agreed[16]), dense_fits=not agreed[12])


# ---- input preparation ---------------------------------------------------------------------

def _canonical_input(indices, values, n, check_finite: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate one rank's sparse input; return sorted unique indices and summed values."""
    try:
        n_int = int(n)
    except (TypeError, ValueError) as exc:
        raise _LocalError(1, TypeError(f"n must be an integer, got {n!r}")) from exc
    if n_int != n or n_int < 0 or n_int >= 1 << 63:
        raise _LocalError(2, ValueError(f"n must be an integer in [0, 2**63), got {n!r}"))
    try:
        idx = np.asarray(indices)
        vals = np.asarray(values)
    except Exception as exc:  # objects numpy cannot read as arrays
        raise _LocalError(1, TypeError(f"indices and values must be array-like: {exc}")) from exc
    if vals.dtype not in _VALUE_DTYPES:
        raise _LocalError(1, TypeError(f"values must be float32 or float64, got {vals.dtype}"))
    if idx.size == 0:
        idx = idx.astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise _LocalError(1, TypeError(f"indices must be integers, got {idx.dtype}"))
    if idx.ndim != 1 or vals.ndim != 1:
        raise _LocalError(2, ValueError(f"indices and values must be 1-D, got shapes {idx.shape} and {vals.shape}"))
    if idx.size != vals.size:
        raise _LocalError(2, ValueError(f"indices ({idx.size}) and values ({vals.size}) differ in length"))
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n_int:
            raise _LocalError(3, ValueError(f"indices must lie in [0, {n_int}), got [{lo}, {hi}]"))
    if check_finite and not np.isfinite(vals).all():
        raise _LocalError(4, ValueError("values contain NaN or Inf (pass check_finite=False to allow)"))
    idx = np.ascontiguousarray(idx, dtype=index_dtype(n_int))
    vals = np.ascontiguousarray(vals)
    if idx.size > 1 and not (idx[1:] > idx[:-1]).all():
        order = np.argsort(idx, kind="stable")
        idx, vals = idx[order], vals[order]
        starts = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
        vals = np.add.reduceat(vals, starts)
        idx = idx[starts]
    return idx, vals


def _dense_fits(n: int, value_bytes: int) -> bool:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        memory = 1 << 62
    return n * value_bytes < memory // 2


def sparse_allreduce(indices, values, n: int, comm: MPI.Intracomm = MPI.COMM_WORLD,
                     algorithm: Algorithm = "auto", out: OutForm = "dense", *,
                     check_finite: bool = True, return_info: bool = False):
    """Sum sparse vectors over all ranks of a communicator (collective).

    Parameters
    ----------
    indices : array_like of int
        Positions of this rank's non-zeros in ``[0, n)``; any order, repeats
        allowed (their values are summed).
    values : array_like of float32 or float64
        Values at ``indices``; same length, same dtype on every rank.
    n : int
        Dimension of the vectors, the same on every rank (up to 2**63 - 1 with
        ``out="sparse"``).
    comm : mpi4py.MPI.Intracomm
        Any intra-communicator (``COMM_WORLD``, one from ``Split`` or ``Dup``).
    algorithm : {"auto", "recursive_doubling", "split_allgather", "split_dense", "dense"}
        ``auto`` picks the one with the least predicted time
        (:mod:`scaleml.cost_model`); the same on every rank.
    out : {"dense", "sparse"}
        Return a dense array of length ``n``, or a :class:`SparseVector` that
        holds every non-zero of the sum.
    check_finite : bool
        Reject NaN and Inf values (on every rank) instead of summing them.
    return_info : bool
        Also return an :class:`AllreduceInfo` with the algorithm that ran.

    Returns
    -------
    numpy.ndarray or SparseVector, or a tuple ``(result, AllreduceInfo)``

    Raises
    ------
    TypeError, ValueError, MemoryError
        On every rank when any rank passed bad input or ranks disagree on ``n``,
        dtype, algorithm or ``out``.
    """
    op_name = "sparse_allreduce"
    error = None
    idx = vals = None
    try:
        if algorithm != "auto" and algorithm not in _ALGORITHM_CODES:
            raise _LocalError(2, ValueError(f"unknown algorithm {algorithm!r}; expected 'auto' or one of "
                                            f"{cost_model.ALGORITHMS}"))
        if out not in _OUT_CODES:
            raise _LocalError(2, ValueError(f"out must be 'dense' or 'sparse', got {out!r}"))
        idx, vals = _canonical_input(indices, values, n, check_finite)
        if (out == "dense" or algorithm in ("dense", "split_dense")) and not _dense_fits(int(n), vals.itemsize):
            raise _LocalError(5, MemoryError(f"a dense vector of n = {n} does not fit in memory; "
                                             "use out='sparse' with a sparse algorithm"))
    except _LocalError as exc:
        error = exc
    private = private_comm(comm)
    agreement = agree(private, error, n=int(n) if error is None else 0,
                      value_bytes=vals.itemsize if vals is not None else 0,
                      algorithm=_ALGORITHM_CODES.get(algorithm, 0), out=_OUT_CODES.get(out, 0),
                      nnz=idx.size if idx is not None else 0, op_name=op_name)
    chosen, predicted = choose_algorithm(algorithm, int(n), private.Get_size(), agreement, idx.itemsize,
                                         vals.itemsize, out)
    result, info = _run(private, idx, vals, int(n), chosen, out, agreement)
    info.requested, info.predicted = algorithm, predicted
    return (result, info) if return_info else result


def choose_algorithm(algorithm: str, n: int, P: int, agreement: Agreement, index_bytes: int,
                     value_bytes: int, out: str, dense_input: bool = False) -> tuple[str, dict[str, float]]:
    """The algorithm to run (the same on every rank: it depends only on agreed values)."""
    chosen, predicted = cost_model.choose(n, P, agreement.nnz_max, agreement.nnz_sum, index_bytes,
                                          value_bytes, out, dense_input=dense_input)
    if not agreement.dense_fits:
        chosen = min(("recursive_doubling", "split_allgather"), key=lambda a: predicted[a])
    return (chosen if algorithm == "auto" else algorithm), predicted


def _run(private: MPI.Intracomm, idx: np.ndarray, vals: np.ndarray, n: int, chosen: str, out: str,
         agreement: Agreement, dense_out: np.ndarray | None = None):
    """Run the algorithm ``chosen`` (see :func:`choose_algorithm`); write a dense result into ``dense_out``
    when given. The returned info's ``requested`` and ``predicted`` are for the caller to fill in."""
    result_ptr = ffi.new("scaleml_result **")
    bytes_sent = ffi.new("uint64_t *")
    dense = None
    if out == "dense":
        dense = np.empty(n, dtype=vals.dtype) if dense_out is None else dense_out
    check(lib.scaleml_sparse_allreduce(
        comm_address(private), _ALGORITHM_CODES[chosen], n, idx.itemsize, vals.itemsize, idx.size,
        ffi.from_buffer(idx), ffi.from_buffer(vals),
        ffi.NULL if dense is None else ffi.from_buffer(dense, require_writable=True), result_ptr, bytes_sent))
    res = ffi.gc(result_ptr[0], lib.scaleml_result_free)
    info = AllreduceInfo(algorithm=chosen, requested=chosen, nnz_max=agreement.nnz_max,
                         nnz_sum=agreement.nnz_sum, bytes_sent=int(bytes_sent[0]))
    log.debug("sparse_allreduce n=%d P=%d nnz_max=%d -> %s (%d bytes sent)", n, private.Get_size(),
              agreement.nnz_max, chosen, info.bytes_sent)
    if dense is not None:
        lib.scaleml_result_to_dense(res, ffi.from_buffer(dense, require_writable=True))
        result = dense
    else:
        count = lib.scaleml_result_sparse_count(res)
        out_idx = np.empty(count, dtype=idx.dtype)
        out_vals = np.empty(count, dtype=vals.dtype)
        written = lib.scaleml_result_to_sparse(res, ffi.from_buffer(out_idx, require_writable=True),
                                               ffi.from_buffer(out_vals, require_writable=True), count)
        result = SparseVector(out_idx[:written], out_vals[:written], n)
    ffi.release(res)  # free the C result now rather than at the next garbage collection
    return result, info

"""Sparse AllReduce: validation, agreement between ranks, algorithm choice, and the C call."""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from mpi4py import MPI

from . import _log, algorithms, config, cost_model
from . import timeline as _timeline
from ._native import check, comm_address, ffi, lib
from ._tensors import as_numpy, as_numpy_out, like_input
from .errors import AGREEMENT_EXCEPTIONS
from .tuner import ClassStats, Tuner
from .value_format import ValueFormat, value_format

log = logging.getLogger("scaleml")

Algorithm = str
"""``"auto"`` or a name of :data:`scaleml.algorithms.NAMES`."""
OutForm = Literal["dense", "sparse"]

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
    format: str = "exact"
    """The value format on the wire: ``exact``, or the lossy one (``qsgd4``, ``fp16``, ``onebit``, ...)."""


def index_dtype(n: int) -> np.dtype:
    """Index type for vectors of dimension ``n``: uint32 when it fits, else uint64."""
    return np.dtype(np.uint32) if n <= _INDEX_LIMIT_32 else np.dtype(np.uint64)


# ---- a private duplicate of each user communicator, and the engine's state on it ----------

_state_keyval: int | None = None


@dataclass
class EngineState:
    """What the engine keeps per user communicator (identical on every rank)."""

    private: MPI.Intracomm
    """ScaleML's duplicate: its messages never match the application's."""
    tuner: Tuner = field(default_factory=Tuner)
    sequence: int = 0
    """Agreements so far: ranks compare it, so a call is never paired with another call."""


def _free_state(comm: MPI.Comm, keyval: int, state: EngineState) -> None:
    if not MPI.Is_finalized() and state.private != MPI.COMM_NULL:
        state.private.Free()


def engine_state(comm: MPI.Comm) -> EngineState:
    """ScaleML's state for ``comm`` (collective on first use: duplicates ``comm``; cached as an attribute)."""
    global _state_keyval
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"expected an mpi4py intra-communicator, got {type(comm).__name__}")
    if _state_keyval is None:
        _state_keyval = MPI.Comm.Create_keyval(delete_fn=_free_state)
    state = comm.Get_attr(_state_keyval)
    if state is None:
        private = comm.Dup()
        private.Set_errhandler(MPI.ERRORS_RETURN)
        state = EngineState(private)
        comm.Set_attr(_state_keyval, state)
    return state


# ---- agreement between ranks ---------------------------------------------------------------

# Local error codes: every rank learns the largest code and the rank that raised it.
_LOCAL_ERRORS = AGREEMENT_EXCEPTIONS  # scaleml/errors.py


class _LocalError(Exception):
    def __init__(self, code: int, exc: BaseException):
        super().__init__(str(exc))
        self.code = code
        self.exc = exc


def as_local_error(exc: Exception) -> _LocalError:
    """Map an exception of a rank's local checks to the agreement's code (see ``scaleml.errors``)."""
    if isinstance(exc, TypeError):
        return _LocalError(1, exc)
    if isinstance(exc, MemoryError):
        return _LocalError(5, exc)
    if "non-finite" in str(exc):  # the kernels' message for NaN/Inf
        return _LocalError(4, exc)
    return _LocalError(2, exc)


@dataclass
class Agreement:
    """Fields every rank agrees on before a collective starts."""

    nnz_max: int
    nnz_sum: int
    dense_fits: bool
    """Whether every rank has memory for a dense vector of n values."""
    engine_ns: int = 0
    """Agreed (MAX over ranks) time of the class's last engine call, for the tuner."""
    mpi_ns: int = 0
    """Agreed mean time of the class's plain MPI calls since its last agreement."""
    negative_zero_everywhere: bool = False
    """Whether every rank said it holds a -0.0 (``agree(negative_zero=True)``)."""


# Fields of the agreement (SCALEML_CONSENSUS_FIELDS int64: MAX over the first 24, SUM over the rest).
# A value v with its negation -v beside it gives, after MAX, both max and -min: they differ iff ranks differ.
_ERROR, _ERROR_RANK, _N, _VALUE_BYTES, _ALGORITHM, _OUT, _NNZ, _DENSE_MISSING, _PARAMS, _SEQUENCE = (
    0, 1, 2, 4, 6, 8, 10, 12, 13, 15)
_ENGINE_NS, _MPI_NS, _CODEC, _OPERATION, _NO_NEGATIVE_ZERO = 17, 18, 19, 21, 23
_NNZ_SUM, _FAILED = 24, 25
class _AgreementBuffers(threading.local):
    """The agreement's field arrays, one pair per thread (nonblocking collectives agree on a progress thread)."""

    def __init__(self) -> None:
        self.fields = np.zeros(lib.SCALEML_CONSENSUS_FIELDS, dtype=np.int64)
        self.agreed = np.zeros_like(self.fields)
        self.fields_ptr = ffi.from_buffer("int64_t[]", self.fields)
        self.agreed_ptr = ffi.from_buffer("int64_t[]", self.agreed)


_agreement_buffers = _AgreementBuffers()


def _operation_id(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


_OPERATION_NAMES = {_operation_id(name): name for name in ("sparse_allreduce", "quantized_allreduce", "topk_allreduce",
                                                           "adaptive_allreduce", "Allreduce")}


def agree(state: EngineState, error: _LocalError | None, *, n: int, value_bytes: int, algorithm: int,
          out: int, nnz: int, op_name: str, reports: tuple[int, int] = (0, 0), codec: int = 0,
          negative_zero: bool = False) -> Agreement:
    """One small MPI_Allreduce that checks arguments on all ranks at once.

    Raises the same kind of exception on every rank when any rank had a local
    error or when ranks disagree on ``n``, dtype, algorithm, output form, cost
    parameters or the number of agreements so far, so a bad argument never
    leaves some ranks waiting in a collective. ``reports`` are this rank's
    timings for the tuner (nanoseconds), agreed as their maximum; ``codec``
    is the fingerprint of the lossy value format (0: exact), which must agree.
    """
    comm = state.private
    state.sequence += 1
    buffers = _agreement_buffers
    f = buffers.fields
    f[:] = 0
    if error is not None:
        f[_ERROR], f[_ERROR_RANK] = error.code, comm.Get_rank()
        n = value_bytes = algorithm = out = nnz = codec = 0
        f[_FAILED] = 1
    else:
        f[_ERROR_RANK] = -1
        f[_DENSE_MISSING] = 0 if _dense_fits(n, value_bytes) else 1
    for at, v in ((_N, n), (_VALUE_BYTES, value_bytes), (_ALGORITHM, algorithm), (_OUT, out), (_NNZ, nnz),
                  (_PARAMS, cost_model.params_fingerprint()), (_SEQUENCE, state.sequence), (_CODEC, codec),
                  (_OPERATION, _operation_id(op_name))):
        f[at], f[at + 1] = v, -v
    f[_ENGINE_NS], f[_MPI_NS] = reports
    f[_NO_NEGATIVE_ZERO] = 0 if negative_zero and error is None else 1  # MAX: 0 only if every rank has one
    f[_NNZ_SUM] = nnz
    check(lib.scaleml_consensus(comm_address(comm), buffers.fields_ptr, buffers.agreed_ptr))
    a = buffers.agreed
    if a[_ERROR] > 0:
        if error is not None:
            raise error.exc
        kind, what = _LOCAL_ERRORS.get(int(a[_ERROR]), (ValueError, "invalid argument"))
        raise kind(f"{op_name}: {what} on rank {int(a[_ERROR_RANK])} ({int(a[_FAILED])} rank(s) failed); "
                   "see that rank's exception")

    def differs(i: int) -> bool:
        return bool(a[i] != -a[i + 1])

    if differs(_SEQUENCE):
        raise RuntimeError(f"{op_name}: ranks are in different collective calls (agreement {-a[_SEQUENCE + 1]} "
                           f"to {a[_SEQUENCE]}): every rank must make the same ScaleML calls in the same order")
    if differs(_OPERATION):
        names = sorted({_OPERATION_NAMES.get(int(a[_OPERATION]), "another"),
                        _OPERATION_NAMES.get(int(-a[_OPERATION + 1]), "another")})
        raise RuntimeError(f"{op_name}: ranks are in different ScaleML functions ({' and '.join(names)}): every "
                           "rank must make the same ScaleML calls in the same order")
    if differs(_N):
        raise ValueError(f"{op_name}: n differs between ranks (from {-a[_N + 1]} to {a[_N]})")
    if differs(_VALUE_BYTES):
        raise TypeError(f"{op_name}: value dtype differs between ranks (float32 on some, float64 on others)")
    if differs(_ALGORITHM):
        names = {0: "auto", **{alg.id: alg.name for alg in algorithms.REGISTRY.values()}}
        raise ValueError(f"{op_name}: algorithm differs between ranks ({names.get(int(-a[_ALGORITHM + 1]))!r} "
                         f"on some, {names.get(int(a[_ALGORITHM]))!r} on others)")
    if differs(_OUT):
        raise ValueError(f"{op_name}: output form differs between ranks")
    if differs(_CODEC):
        raise ValueError(f"{op_name}: compression (lossy value format and its parameters) differs between ranks")
    if differs(_PARAMS):
        raise ValueError(f"{op_name}: cost-model parameters differ between ranks (is the calibration file "
                         f"{cost_model.calibration_file()} the same on every node? set_params on every rank?)")
    return Agreement(nnz_max=int(a[_NNZ]), nnz_sum=int(a[_NNZ_SUM]), dense_fits=not a[_DENSE_MISSING],
                     engine_ns=int(a[_ENGINE_NS]), mpi_ns=int(a[_MPI_NS]),
                     negative_zero_everywhere=not a[_NO_NEGATIVE_ZERO])


# ---- input preparation ---------------------------------------------------------------------

def as_float_array(x: object, what: str) -> np.ndarray:
    """``x`` as a float32/float64 numpy array (no copy when it is one); TypeError naming ``what`` otherwise.

    A CPU ``torch.Tensor`` or another DLPack object is viewed without a copy (:func:`scaleml._tensors.as_numpy`).
    """
    try:
        a = np.asarray(as_numpy(x, what))
    except Exception as exc:  # objects numpy cannot read as arrays
        raise TypeError(f"{what} must be array-like: {exc}") from None
    if a.dtype not in _VALUE_DTYPES:
        raise TypeError(f"{what} must be float32 or float64, got {a.dtype}")
    return a


def _canonical_input(indices, values, n, check_finite: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate one rank's sparse input; return sorted unique indices and summed values."""
    try:
        n_int = int(n)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf)
        raise _LocalError(1, TypeError(f"n must be an integer, got {n!r}")) from exc
    if n_int != n or n_int < 0 or n_int >= 1 << 63:
        raise _LocalError(2, ValueError(f"n must be an integer in [0, 2**63), got {n!r}"))
    try:
        idx = np.asarray(as_numpy(indices, "indices"))
        vals = np.asarray(as_numpy(values, "values"))
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


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


_MEMORY = _physical_memory()


def _dense_fits(n: int, value_bytes: int) -> bool:
    return n * value_bytes < _MEMORY // 2


def sparse_allreduce(indices, values, n: int, comm: MPI.Intracomm = MPI.COMM_WORLD,
                     algorithm: Algorithm = "auto", out: OutForm = "dense", *,
                     compression: object = None, dense_out: np.ndarray | None = None, check_finite: bool = True,
                     return_info: bool = False):
    """Sum sparse vectors over all ranks of a communicator (collective).

    Parameters
    ----------
    indices : array_like of int
        Positions of this rank's non-zeros in ``[0, n)``; any order, repeats
        allowed (their values are summed). A CPU ``torch.Tensor`` is accepted
        (viewed without a copy), here and for ``values`` and ``dense_out``.
    values : array_like of float32 or float64
        Values at ``indices``; same length, same dtype on every rank. When it
        is a ``torch.Tensor``, a dense result is one too (sharing the numpy
        result's memory).
    n : int
        Dimension of the vectors, the same on every rank (up to 2**63 - 1 with
        ``out="sparse"``).
    comm : mpi4py.MPI.Intracomm
        Any intra-communicator (``COMM_WORLD``, one from ``Split`` or ``Dup``).
    algorithm : str
        ``"auto"`` or a name of :data:`scaleml.algorithms.NAMES`
        (``recursive_doubling``, ``split_allgather``, ``split_dense``,
        ``dense``); the same on every rank. ``auto`` picks the least estimated
        time: the model of :mod:`scaleml.cost_model` corrected by the times
        measured on earlier calls (:mod:`scaleml.tuner`).
    out : {"dense", "sparse"}
        Return a dense array of length ``n``, or a :class:`SparseVector` that
        holds every non-zero of the sum.
    compression : QSGD, Cast or OneBit, optional
        Opt into a lossy format (the same on every rank): a partial sum that
        becomes dense continues as dense data in this format (the SparCML
        sparse-to-dense-quantized switch: a segment travels quantized when its
        sparse form would take at least as many bytes), and ``auto`` may also
        choose the dense quantized algorithms. Sparse parts stay exact; every
        rank gets the same result, bitwise. ``None`` (default): exact.
    dense_out : numpy.ndarray or torch.Tensor, optional
        With ``out="dense"``: the array of n values (C-contiguous, writable, the
        values' dtype) to write the sum into and return, instead of a new one.
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

    Notes
    -----
    ``SCALEML_ALGORITHM`` replaces ``"auto"`` (with an exact algorithm, or a
    lossy one when ``compression`` is given); ``SCALEML_DISABLE=1`` runs
    ``dense``, exact, whatever was asked (see :mod:`scaleml.config`).
    """
    op_name = "sparse_allreduce"
    tl = _timeline.begin(op_name) if _timeline.ON else None
    if config.DISABLE:
        algorithm, compression = "dense", None
    algorithm = config.apply_algorithm(algorithm, lambda a: compression is not None or algorithms.get(a).exact)
    dense_out_arg = dense_out
    error = None
    idx = vals = fmt = None
    code = out_code = 0
    try:
        code = algorithms.code_of(algorithm)
        if code < 0:
            raise _LocalError(2, ValueError(f"unknown algorithm {algorithm!r}; expected 'auto' or one of "
                                            f"{algorithms.NAMES}"))
        fmt = lossy_format(compression, code)
        if not isinstance(out, str) or out not in _OUT_CODES:
            raise _LocalError(2, ValueError(f"out must be 'dense' or 'sparse', got {out!r}"))
        out_code = _OUT_CODES[out]
        idx, vals = _canonical_input(indices, values, n, check_finite)
        dense_out = as_numpy_out(dense_out, "dense_out")
        if dense_out is not None and not (out == "dense" and isinstance(dense_out, np.ndarray)
                                          and dense_out.dtype == vals.dtype and dense_out.size == int(n)
                                          and dense_out.flags.c_contiguous and dense_out.flags.writeable):
            raise _LocalError(2, ValueError(f"dense_out must be a writable C-contiguous {vals.dtype} array of n = "
                                            f"{n} values, with out='dense'"))
        needs_dense = out == "dense" or (code and "sparse" not in algorithms.BY_ID[code].result_forms)
        if needs_dense and not _dense_fits(int(n), vals.itemsize):
            raise _LocalError(5, MemoryError(f"a dense vector of n = {n} does not fit in memory; "
                                             "use out='sparse' with a sparse algorithm"))
    except _LocalError as exc:
        error = exc
    except Exception as exc:  # any other argument, of any type, fails here too: through the agreement
        error = as_local_error(exc)
    if tl is not None:
        tl.mark("scan")
    t0 = time.perf_counter()
    state = engine_state(comm)
    ok = error is None
    stats = state.tuner.stats("sparse_allreduce", vals.itemsize if ok else 0, int(n) if ok else 0,
                              out if ok else "")
    stats.calls += 1
    agreement = agree(state, error, n=int(n) if ok else 0, value_bytes=vals.itemsize if ok else 0,
                      algorithm=max(code, 0), out=out_code, nnz=idx.size if ok else 0,
                      op_name=op_name, reports=stats.reports_ns(), codec=fmt.fingerprint if fmt else 0)
    if tl is not None:
        tl.mark("agreement")
    stats.learn(agreement.engine_ns, agreement.mpi_ns)
    P = state.private.Get_size()
    stats.at_density(agreement.nnz_sum, P, int(n))
    q = fmt.value_bytes(int(n), vals.itemsize) if fmt else 0.0
    predicted = _predict(int(n), P, agreement, idx.itemsize, vals.itemsize, out == "sparse", dense_input=False,
                         quantized_value_bytes=q)
    if code:
        chosen = algorithm
    elif agreement.dense_fits and not stats.measured("dense"):
        chosen = "dense"  # MPI_Allreduce's time at this size and density first: the baseline never to lose to
    else:
        chosen = choose_algorithm(predicted, agreement, stats, lossy=fmt is not None)
    _log.decision(op_name, int(n), vals.dtype, agreement, predicted, chosen, algorithm, fmt, stats, P=P,
                  reason="" if code or chosen != "dense" or stats.measured("dense") else "measuring MPI first")
    if tl is not None:
        tl.mark("plan")
    result, info = _run(state.private, idx, vals, int(n), chosen, out, agreement, fmt=fmt,
                        dense_out=None if dense_out is None else dense_out.reshape(-1))
    if dense_out is not None:
        result = dense_out
    if out == "dense":
        result = like_input(result, values, dense_out_arg)
    stats.record_engine(chosen, predicted[chosen], time.perf_counter() - t0)
    info.requested, info.predicted = algorithm, predicted
    if tl is not None:
        tl.end(n=int(n), dtype=str(vals.dtype), algorithm=chosen, format=info.format, out=out,
               nnz_max=agreement.nnz_max, nnz_sum=agreement.nnz_sum, bytes=info.bytes_sent)
    return (result, info) if return_info else result


def lossy_format(compression: object, code: int) -> ValueFormat | None:
    """The caller's lossy format (None: exact), checked against the algorithm code; errors as _LocalError."""
    fmt = None
    if compression is not None:
        try:
            fmt = value_format(compression)
        except TypeError as exc:
            raise _LocalError(1, exc) from None
        except ValueError as exc:
            raise _LocalError(2, exc) from None
    if code > 0 and fmt is None and not algorithms.BY_ID[code].exact:
        raise _LocalError(2, ValueError(f"algorithm {algorithms.BY_ID[code].name!r} is lossy: pass compression= "
                                        "(QSGD, Cast or OneBit)"))
    return fmt


def _predict(n: int, P: int, agreement: Agreement, index_bytes: int, value_bytes: int, sparse_out: bool,
             dense_input: bool, quantized_value_bytes: float = 0.0) -> dict[str, float]:
    """The model's prediction for every registered algorithm (seconds)."""
    p = cost_model.get_params()
    return algorithms.costs(n, P, agreement.nnz_max, agreement.nnz_sum, index_bytes, value_bytes, sparse_out,
                            dense_input, p.alpha, p.beta, p.gamma, p.delta, quantized_value_bytes)


def choose_algorithm(predicted: dict[str, float], agreement: Agreement, stats: ClassStats,
                     exclude: tuple[str, ...] = (), lossy: bool = False) -> str:
    """The algorithm with the least estimated time (model x measured correction); the same on every rank,
    since it depends only on agreed values. Without memory for n values only sparse-result algorithms qualify;
    lossy algorithms only when the caller chose a lossy format (``lossy``)."""
    candidates = [a.name for a in algorithms.REGISTRY.values() if a.name not in exclude
                  and (a.exact or lossy) and (agreement.dense_fits or "sparse" in a.result_forms)]
    return min(candidates, key=lambda a: stats.estimate(a, predicted[a]))  # ties: registry order


def _run(private: MPI.Intracomm, idx: np.ndarray | None, vals: np.ndarray, n: int, chosen: str, out: str,
         agreement: Agreement, dense_out: np.ndarray | None = None, fmt: ValueFormat | None = None,
         residuals: tuple[np.ndarray | None, np.ndarray | None] = (None, None)):
    """Run the algorithm ``chosen`` (see :func:`choose_algorithm`); write a dense result into ``dense_out``
    when given. ``idx`` None means ``vals`` is the dense input (n values). ``fmt`` is the lossy format the
    caller allowed (None: exact; one call takes one step of its compressor's counter); ``info.format`` says
    whether anything this rank sent was in it. ``residuals`` the worker and server error feedback
    buffers of the algorithms that keep them. The returned info's ``requested`` and ``predicted`` are for the
    caller to fill in."""
    tl = _timeline.current() if _timeline.ON else None
    result_ptr = ffi.new("scaleml_result **")
    bytes_sent = ffi.new("uint64_t *")
    dense = None
    if out == "dense":
        dense = np.empty(n, dtype=vals.dtype) if dense_out is None else dense_out
    nnz_max, nnz_sum = agreement.nnz_max, agreement.nnz_sum
    if idx is None:  # dense input: n values on every rank (the agreed non-zero counts bound nothing here)
        idx = np.empty(0, dtype=index_dtype(n))
        idx_ptr, nnz = ffi.NULL, n
        nnz_max, nnz_sum = n, n * private.Get_size()
    else:
        idx_ptr, nnz = ffi.from_buffer(idx), idx.size
    worker, server = (ffi.NULL if r is None else ffi.from_buffer(r, require_writable=True) for r in residuals)
    codec = fmt.next_codec() if fmt is not None else None
    check(lib.scaleml_allreduce(
        comm_address(private), algorithms.REGISTRY[chosen].id, n, idx.itemsize, vals.itemsize, nnz,
        nnz_max, nnz_sum, idx_ptr, ffi.from_buffer(vals),
        ffi.NULL if dense is None else ffi.from_buffer(dense, require_writable=True),
        ffi.NULL if codec is None else codec, worker, server, result_ptr, bytes_sent))
    res = ffi.gc(result_ptr[0], lib.scaleml_result_free)
    if tl is not None:
        tl.mark(chosen, "algorithm")
    info = AllreduceInfo(algorithm=chosen, requested=chosen, nnz_max=agreement.nnz_max,
                         nnz_sum=agreement.nnz_sum, bytes_sent=int(bytes_sent[0]))
    if fmt is not None and lib.scaleml_last_call_quantized():
        info.format = fmt.name
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
    if tl is not None:
        tl.mark("decode")
    return result, info

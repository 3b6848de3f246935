"""The one call path of every ScaleML collective: agree, plan, run, record.

Every public collective (:func:`scaleml.sparse_allreduce`,
:func:`scaleml.quantized_allreduce`, :func:`scaleml.topk_allreduce`,
:func:`scaleml.adaptive_allreduce`, the drop-in's ``Allreduce`` and
``Iallreduce`` and the nonblocking forms, which run the same functions on a
progress thread) supplies only its preparation: a function that checks its
arguments and returns a :class:`Call`. :func:`collective` does the rest, the
same way for all of them:

1. **prepare**: the caller's function; any exception it raises becomes this
   rank's local error (:class:`LocalError`), never an exception on this rank
   alone;
2. **agree**: one small ``MPI_Allreduce`` (:func:`agree`) checks the arguments
   on every rank at once, so a bad argument raises on every rank instead of
   leaving the others waiting;
3. **plan**: ``SCALEML_DISABLE``, a forced algorithm, ``SCALEML_ALGORITHM``,
   the algorithm the arguments fix, or the planner (:mod:`scaleml.tuner`) over
   the candidates the call's capabilities allow, from agreed values only;
4. **run**: the registry's C algorithm (:func:`run_algorithm`), or, for the
   drop-in, MPI's own Allreduce on the caller's buffers; the result converted
   to the form asked for;
5. **record**: the time for the tuner, the log line (:mod:`scaleml._log`) and
   the timeline span (:mod:`scaleml.timeline`).

This module is the only Python that calls the C agreement and the C collective.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from . import _log, algorithms, config, cost_model
from . import timeline as _timeline
from ._native import check, comm_address, ffi, lib
from .dense_scan import extract_nonzeros
from .errors import AGREEMENT_EXCEPTIONS, DeviceError
from .tuner import (
    BASELINE_RUNS,
    EXACT_WIN_MARGIN,
    EXPLORE_LIMIT,
    EXPLORE_WITHIN,
    WIN_MARGIN,
    ClassStats,
    Tuner,
    bandwidth_factor,
)
from .value_format import ValueFormat

__all__ = ["Agreement", "AllreduceInfo", "Call", "EngineState", "LocalError", "SparseVector", "Topology", "agree",
           "as_local_error", "collective", "engine_state", "index_dtype", "predict", "run_algorithm"]

_INDEX_LIMIT_32 = 1 << 32
_OUT_CODES = {"dense": 0, "sparse": 1}


def index_dtype(n: int) -> np.dtype:
    """Index type for vectors of dimension ``n``: uint32 when it fits, else uint64."""
    return np.dtype(np.uint32) if n <= _INDEX_LIMIT_32 else np.dtype(np.uint64)


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
    """What a collective did: the choice of algorithm and its traffic."""

    algorithm: str
    """The algorithm that ran (the choice of ``auto``, or the one forced); ``dense`` where MPI ran."""
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
    node_bytes: tuple[int, int] | None = None
    """The hierarchical algorithms: (bytes that stayed within this rank's node, bytes that crossed a node
    boundary) of ``bytes_sent``; None for the others."""


# ---- a private duplicate of each user communicator, and the engine's state on it ----------

_state_keyval: int | None = None


@dataclass(frozen=True)
class Topology:
    """The nodes of the private communicator (``csrc/collectives/topology.c``), the same on every rank."""

    handle: Any
    """The C ``scaleml_topology *`` (its node and cross-node communicators); freed with the state."""
    ranks_per_node: int
    """The emulation's ranks per node (consecutive ranks), or 0: MPI's shared-memory nodes."""
    node: int
    nodes: int
    local_rank: int
    local_size: int
    node_size_min: int
    node_size_max: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nodes, ranks of the smallest node, of the largest): what the cost model takes."""
        return self.nodes, self.node_size_min, self.node_size_max


def make_topology(private: MPI.Intracomm, ranks_per_node: int) -> Topology:
    """The nodes of ``private`` (collective over it): MPI's shared-memory nodes (``ranks_per_node`` 0) or
    consecutive ranks cut into nodes of ``ranks_per_node``."""
    out = ffi.new("scaleml_topology **")
    check(lib.scaleml_topology_create(comm_address(private), ranks_per_node, out))
    handle = ffi.gc(out[0], lib.scaleml_topology_free)
    info = ffi.new("scaleml_topology_info *")
    lib.scaleml_topology_describe(handle, info)
    return Topology(handle, ranks_per_node, info.node, info.nodes, info.local_rank, info.local_size,
                    info.node_size_min, info.node_size_max)


@dataclass
class EngineState:
    """What the engine keeps per user communicator (identical on every rank)."""

    private: MPI.Intracomm
    """ScaleML's duplicate: its messages never match the application's."""
    topology: Topology | None = None
    """Its nodes, made once with the state (collectively) by :func:`engine_state` and handed to every call;
    None for a state that only agrees (the nonblocking MPI checks): unknown, one rank per node."""
    tuner: Tuner = field(default_factory=Tuner)
    sequence: int = 0
    """Agreements so far: ranks compare it, so a call is never paired with another call."""


def _free_state(comm: MPI.Comm, keyval: int, state: EngineState) -> None:
    if state.topology is not None:
        ffi.release(state.topology.handle)  # its communicators go before MPI_Finalize too
    if not MPI.Is_finalized() and state.private != MPI.COMM_NULL:
        state.private.Free()


def _ranks_per_node(ranks_per_node: int | None) -> int:
    if ranks_per_node is None:
        return config.value("SCALEML_RANKS_PER_NODE") or 0
    if isinstance(ranks_per_node, bool) or not isinstance(ranks_per_node, int) or ranks_per_node < 1:
        raise ValueError(f"ranks_per_node must be an integer >= 1 or None, got {ranks_per_node!r}")
    return ranks_per_node


def engine_state(comm: MPI.Comm, ranks_per_node: int | None = None) -> EngineState:
    """ScaleML's state for ``comm`` (collective on first use: duplicates ``comm`` and finds its nodes; cached
    as an attribute).

    ``ranks_per_node`` (default ``SCALEML_RANKS_PER_NODE``, else MPI's shared-memory nodes) cuts consecutive
    ranks into nodes of that many; given for an existing state with other nodes, the topology is made again
    (collective: every rank passes the same).
    """
    global _state_keyval
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"expected an mpi4py intra-communicator, got {type(comm).__name__}")
    emulated = _ranks_per_node(ranks_per_node)
    if _state_keyval is None:
        _state_keyval = MPI.Comm.Create_keyval(delete_fn=_free_state)
    state = comm.Get_attr(_state_keyval)
    if state is None:
        private = comm.Dup()
        private.Set_errhandler(MPI.ERRORS_RETURN)
        state = EngineState(private, make_topology(private, emulated))
        shared = private.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this machine's cores
        config.limit_num_threads(shared.Get_size())
        shared.Free()
        comm.Set_attr(_state_keyval, state)
    elif ranks_per_node is not None and (state.topology is None or state.topology.ranks_per_node != emulated):
        old = state.topology
        state.topology = make_topology(state.private, emulated)
        if old is not None:
            ffi.release(old.handle)
    return state


# ---- agreement between ranks ---------------------------------------------------------------

class LocalError(Exception):
    """An error one rank found in its own arguments: every rank raises at the agreement (``code``: the
    agreement's code of :data:`scaleml.errors.AGREEMENT_EXCEPTIONS`; ``exc``: this rank's exception)."""

    def __init__(self, code: int, exc: BaseException):
        super().__init__(str(exc))
        self.code = code
        self.exc = exc


def as_local_error(exc: BaseException) -> LocalError:
    """Map an exception of a rank's local checks to the agreement's code (see ``scaleml.errors``)."""
    if isinstance(exc, LocalError):
        return exc
    if isinstance(exc, DeviceError):
        return LocalError(7, exc)
    if isinstance(exc, TypeError):
        return LocalError(1, exc)
    if isinstance(exc, MemoryError):
        return LocalError(5, exc)
    if "non-finite" in str(exc):  # the kernels' message for NaN/Inf
        return LocalError(4, exc)
    return LocalError(2, exc)


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
_NNZ_SUM, _FAILED, _DEVICE_RANKS = 24, 25, 26


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


def agree(state: EngineState, error: LocalError | None, *, n: int, value_bytes: int, algorithm: int,
          out: int, nnz: int, op_name: str, reports: tuple[int, int] = (0, 0), codec: int = 0,
          negative_zero: bool = False, device: int = 0) -> Agreement:
    """One small MPI_Allreduce that checks arguments on all ranks at once.

    Raises the same kind of exception on every rank when any rank had a local
    error or when ranks disagree on ``n``, dtype, algorithm, output form, cost
    parameters or the number of agreements so far, so a bad argument never
    leaves some ranks waiting in a collective. ``reports`` are this rank's
    timings for the tuner (nanoseconds), agreed as their maximum; ``codec``
    is the fingerprint of the lossy value format (0: exact), which must agree;
    ``device`` is 1 where this rank's buffers are CUDA arrays (every rank or none).
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
        f[_DENSE_MISSING] = 0 if dense_fits(n, value_bytes) else 1
    for at, v in ((_N, n), (_VALUE_BYTES, value_bytes), (_ALGORITHM, algorithm), (_OUT, out), (_NNZ, nnz),
                  (_PARAMS, cost_model.params_fingerprint()), (_SEQUENCE, state.sequence), (_CODEC, codec),
                  (_OPERATION, _operation_id(op_name))):
        f[at], f[at + 1] = v, -v
    f[_ENGINE_NS], f[_MPI_NS] = reports
    f[_NO_NEGATIVE_ZERO] = 0 if negative_zero and error is None else 1  # MAX: 0 only if every rank has one
    f[_NNZ_SUM] = nnz
    f[_DEVICE_RANKS] = 1 if device and error is None else 0
    check(lib.scaleml_consensus(comm_address(comm), buffers.fields_ptr, buffers.agreed_ptr))
    a = buffers.agreed
    if a[_ERROR] > 0:
        if error is not None:
            raise error.exc
        kind, what = AGREEMENT_EXCEPTIONS.get(int(a[_ERROR]), (ValueError, "invalid argument"))
        raise kind(f"{op_name}: {what} on rank {int(a[_ERROR_RANK])} ({int(a[_FAILED])} rank(s) failed); "
                   "see that rank's exception")

    def differs(i: int) -> bool:
        return bool(a[i] != -a[i + 1])

    if 0 < a[_DEVICE_RANKS] < comm.Get_size():
        raise DeviceError(f"{op_name}: CUDA arrays on {int(a[_DEVICE_RANKS])} of {comm.Get_size()} ranks, host "
                          "arrays on the others: every rank passes its buffers in the same kind of memory")
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


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


_MEMORY = _physical_memory()


def dense_fits(n: int, value_bytes: int) -> bool:
    """Whether a dense vector of ``n`` values of ``value_bytes`` fits comfortably in this node's memory."""
    return n * value_bytes < _MEMORY // 2


# ---- the call ------------------------------------------------------------------------------

@dataclass
class Call:
    """One rank's collective call as its public function prepared it: what the engine agrees on, plans, runs.

    A preparation that fails raises (any exception): :func:`collective` makes
    it this rank's local error, which every rank raises at the agreement.
    """

    n: int
    """The vector's dimension."""
    values: np.ndarray
    """Dense input of ``n`` values (``indices`` None), or the values of the sparse entries."""
    indices: np.ndarray | None = None
    """Sorted unique positions of ``values`` (``index_dtype(n)``); None: ``values`` is dense."""
    requested: str = "auto"
    """``algorithm=`` as the caller gave it (checked by the preparation)."""
    out: str = "dense"
    """Result form: ``dense`` (written to ``dense_out`` when given) or ``sparse`` (a :class:`SparseVector`)."""
    dense_out: np.ndarray | None = None
    fmt: ValueFormat | None = None
    """The lossy format the caller allowed (None: exact)."""
    lossy_only: bool = False
    """``auto`` chooses among the lossy algorithms only (``quantized_allreduce``)."""
    fixed: tuple[str, str] | None = None
    """(algorithm, why) when the arguments fix the algorithm ``auto`` runs (error feedback on both sides)."""
    residuals: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    """Worker and server error-feedback buffers of the algorithms that keep them."""
    same_count: str | None = None
    """What the agreement's count field counts when it must be the same on every rank (``"rows"``: the
    matrix of adaptive quantization); the agreement then raises ``ValueError`` on every rank where it is not."""
    nnz: int | None = None
    """The agreement's count field: the non-zeros of a dense input (extracted for the algorithms that take
    only sparse input); default the entries this rank sends."""
    nonzeros: tuple[np.ndarray, np.ndarray] | None = None
    """(positions, values) of a dense input's ``nnz`` non-zeros where the preparation's scan stored them
    (the drop-in's, in the pass that counts them); else they are extracted where an algorithm needs them."""
    every_position: bool = False
    """The dense input is sparse input that listed every position (``sparse_allreduce``): an algorithm that
    takes sparse input gets all ``n`` entries, zeros included, as the caller listed them."""
    class_key: tuple = ()
    """What else separates the tuner's size classes (the format's fingerprint, the result form)."""
    mpi_allreduce: Callable[[], None] | None = None
    """The drop-in's ``MPI_Allreduce`` on the caller's buffers: its baseline, run where the plan says MPI."""
    negative_zero: bool = False
    """This rank holds a -0.0 (the drop-in: sparse algorithms cannot sign zeros as MPI does)."""
    span: dict[str, Any] = field(default_factory=dict)
    """Extra fields of the timeline span."""
    prepared_phase: str = "scan"
    """The timeline phase of the preparation (``scan``; ``encode`` for a top-k selection)."""
    device: int = 0
    """1 when the caller's buffers are CUDA arrays (every rank must agree)."""
    device_run: Callable[[MPI.Intracomm], int] | None = None
    """The fixed algorithm run on the caller's device memory (``quantized_gather`` on CUDA arrays): called with
    the private communicator once every rank agreed, it returns the bytes this rank sent."""
    kept: Any = None
    """What the preparation leaves for its caller's work after the collective (returned with the call):
    the output array, the new residuals..."""

    @property
    def value_bytes(self) -> int:
        return self.values.itemsize


_FAILED_CALL = Call(0, np.empty(0, np.float32))


def predict(n: int, P: int, agreement: Agreement, index_bytes: int, value_bytes: int, sparse_out: bool,
            dense_input: bool, fmt: ValueFormat | None = None, beta_factor: float = 1.0,
            topology: Topology | None = None) -> dict[str, float]:
    """The model's prediction for every registered algorithm (seconds), with the wire's ``beta`` scaled by
    ``beta_factor`` (0: everything but the bytes' time on the wire); ``fmt``'s passes at its seconds per value;
    the hierarchical algorithms on ``topology``'s nodes (None: one rank per node)."""
    p = cost_model.get_params()
    return algorithms.costs(n, P, agreement.nnz_max, agreement.nnz_sum, index_bytes, value_bytes, sparse_out,
                            dense_input, p.alpha, p.beta * beta_factor, p.gamma, p.delta,
                            fmt.value_bytes(n, value_bytes) if fmt is not None else 0.0,
                            *(p.codec(fmt.name) if fmt is not None else ()),
                            codec_kind=fmt.kind if fmt is not None and fmt.name == "adaptive" else 0,
                            matrix_cols=fmt.cols if fmt is not None else 0,
                            nodes=topology.shape if topology is not None else (0, 0, 0),
                            intra=(p.alpha_intra, p.beta_intra * beta_factor))


def candidates(call: Call, agreement: Agreement) -> list[str]:
    """The algorithms ``auto`` may run for ``call``, in registry order: those its value dtype, its result
    form, its memory and its format allow (lossy ones only with a format; only lossy ones when
    ``lossy_only``); the drop-in's MPI baseline replaces the registry's ``dense``."""
    dtype = call.values.dtype
    names = []
    for a in algorithms.REGISTRY.values():
        if dtype not in a.value_dtypes or (a.exact and call.lossy_only) or (not a.exact and call.fmt is None):
            continue
        if call.fmt is not None and not a.exact and not a.takes(call.fmt.kind):
            continue  # its own value format only (adaptive)
        if not agreement.dense_fits and "sparse" not in a.result_forms:
            continue
        if call.mpi_allreduce is not None and a.name == "dense":
            continue
        names.append(a.name)
    return names


def _prior(predicted: dict[str, float], model: Callable[[float], dict[str, float]],
           baseline_seconds: float | None) -> dict[str, float] | None:
    """The model at the bandwidth the baseline (MPI, the ``dense`` entry's prediction) measured."""
    if baseline_seconds is None:
        return None
    factor = bandwidth_factor(predicted["dense"], model(0.0)["dense"], baseline_seconds)
    return None if factor is None else model(factor)


_FAMILIES = {a.name: (a.exact, "dense" in a.input_forms) for a in algorithms.REGISTRY.values()}
"""Algorithms whose model errs alike (exact or lossy, dense or sparse input): a measured one corrects the
estimates of its untried relatives (:meth:`scaleml.tuner.ClassStats.choose`)."""
_WIN_MARGINS = {a.name: EXACT_WIN_MARGIN if a.exact else WIN_MARGIN for a in algorithms.REGISTRY.values()}
"""The fraction of MPI's time each algorithm must beat to replace it in the drop-in: exact ones give up nothing
but time, lossy ones their error too."""


def plan(call: Call, code: int, agreement: Agreement, stats: ClassStats, predicted: dict[str, float],
         model: Callable[[float], dict[str, float]]) -> tuple[str, str]:
    """(algorithm to run, why): ``dense`` with ``mpi_allreduce`` set is MPI on the caller's buffers.

    ``predicted`` are the model's seconds; ``model(beta_factor)`` predicts again with the wire's ``beta``
    scaled: untried algorithms are estimated at the bandwidth the baseline measured
    (:func:`scaleml.tuner.bandwidth_factor`).
    """
    if config.DISABLE:
        return "dense", "SCALEML_DISABLE=1"
    if code:
        return call.requested, "SCALEML_ALGORITHM" if call.requested == config.ALGORITHM else "requested"
    if call.fixed is not None:
        return call.fixed
    names = candidates(call, agreement)
    if call.mpi_allreduce is not None:  # the drop-in: MPI on the caller's buffers is the one to beat
        if stats.mpi_runs < BASELINE_RUNS:
            stats.baseline_call()
            return "dense", f"MPI first: call {stats.mpi_runs + 1} of {BASELINE_RUNS} measuring its time here"
        if not names:
            stats.go_mpi()
            return "dense", "no engine algorithm takes this call"
        prior = _prior(predicted, model, stats.mpi_seconds)
        ceiling = {a: _WIN_MARGINS[a] * stats.mpi_seconds for a in names}
        chosen = stats.choose(predicted, names, prior, _FAMILIES, ceiling=ceiling)
        estimate = stats.chosen_estimate
        if estimate < ceiling[chosen]:
            stats.stay_engine()
            return chosen, _why(stats)
        stats.go_mpi()
        return "dense", (f"no engine algorithm is estimated clearly faster than MPI's measured time "
                         f"({chosen} {estimate * 1e6:.1f} us); MPI period of {stats.mpi_until - stats.calls} calls")
    if "dense" in names and stats.runs("dense") < BASELINE_RUNS:  # the baseline never to lose to, per density
        stats.baseline_call(stats.runs("dense"))
        return "dense", f"measuring MPI first ({stats.runs('dense') + 1} of {BASELINE_RUNS})"
    prior = _prior(predicted, model, stats.baseline_seconds(predicted))
    return stats.choose(predicted, names, prior, _FAMILIES), _why(stats)


def _why(stats: ClassStats) -> str:
    if stats.second_look:
        return (f"exploring: a second look, its one sample was its cold first call "
                f"({stats.explored[stats.bucket]} of {EXPLORE_LIMIT})")
    if stats.exploring:
        return (f"exploring: never measured here, estimated within {EXPLORE_WITHIN}x of the best measured "
                f"({stats.explored[stats.bucket]} of {EXPLORE_LIMIT})")
    return "least estimated time"


def collective(comm: MPI.Intracomm, op_name: str, prepare: Callable[[EngineState], Call],
               size_class: tuple | None = None) -> tuple[Call, Any, AllreduceInfo]:
    """Run one collective through the call path: prepare, agree, plan, run, record.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The caller's communicator (the engine works on its private duplicate).
    op_name : str
        The public collective (``sparse_allreduce``...): the agreement checks
        that every rank is in the same one; the log and timeline name it.
    prepare : callable
        ``prepare(state) -> Call``: this rank's checks and local work. Any
        exception it raises is raised on every rank at the agreement (this
        rank's own, the others' a same-kind exception naming the rank).
    size_class : tuple, optional
        (value bytes, n, ...) of the tuner's size class when the caller knows it before preparing (the
        drop-in: every rank then counts the call in the same class even where one rank's buffers are bad).

    Returns
    -------
    (Call, result, AllreduceInfo)
        The prepared call, the result (a dense array, a :class:`SparseVector`,
        or None where the drop-in's MPI ran on the caller's buffers) and what ran.
    """
    tl = _timeline.begin(op_name) if _timeline.ON else None
    t0 = time.perf_counter()
    state = engine_state(comm)
    error = None
    try:
        call = prepare(state)
    except Exception as exc:  # any argument, of any type: raised on every rank through the agreement
        error, call = as_local_error(exc), _FAILED_CALL
    if tl is not None:
        tl.mark(call.prepared_phase)
    ok = error is None
    code = algorithms.code_of(call.requested) if ok else 0
    n, value_bytes = (call.n, call.value_bytes) if ok else (0, 0)
    stats = state.tuner.stats(op_name, *(size_class or (value_bytes, n, *call.class_key)))
    stats.calls += 1
    nnz = call.nnz if call.nnz is not None else (n if call.indices is None else call.indices.size)
    agreement = agree(state, error, n=n, value_bytes=value_bytes, algorithm=max(code, 0),
                      out=_OUT_CODES.get(call.out, 0), nnz=nnz if ok else 0, op_name=op_name,
                      reports=stats.reports_ns(), codec=call.fmt.fingerprint if call.fmt is not None else 0,
                      negative_zero=call.negative_zero, device=call.device)
    if call.same_count is not None and agreement.nnz_sum != state.private.Get_size() * agreement.nnz_max:
        raise ValueError(f"{op_name}: the number of {call.same_count} differs between ranks (up to "
                         f"{agreement.nnz_max})")
    if tl is not None:
        tl.mark("agreement")
    stats.learn(agreement.engine_ns, agreement.mpi_ns)
    P = state.private.Get_size()
    stats.at_density(agreement.nnz_sum, P, n)
    # As the caller gave it, the same on every rank: every position listed is read as dense input on some
    # ranks only, and the plan must not depend on that.
    dense_input = call.indices is None and not call.every_position
    idx_bytes = index_dtype(n).itemsize
    case = (n, P, agreement, idx_bytes, value_bytes, call.out == "sparse", dense_input, call.fmt)
    predicted = predict(*case, topology=state.topology)
    chosen, reason = plan(call, code, agreement, stats, predicted,
                          lambda factor: predict(*case, beta_factor=factor, topology=state.topology))
    fmt, residuals = call.fmt, call.residuals
    if chosen == "dense":  # exact, as MPI sums (error-feedback residuals stay as they are)
        fmt, residuals = None, (None, None)
    if chosen != "dense" and fmt is None and call.mpi_allreduce is not None and agreement.negative_zero_everywhere \
            and algorithms.REGISTRY[chosen].unsigned_zeros:
        # Exact zeros as MPI signs them (-0.0 where every rank holds -0.0): a sparse algorithm holds no entry
        # for -0.0. MPI this call, and an MPI period for the class (auto); decided from agreed values only.
        if not code:
            stats.go_mpi()
        chosen, reason = "dense", "-0.0 where every rank holds -0.0: MPI signs it"
    _log.decision(op_name, n, call.values.dtype, agreement, predicted, chosen, call.requested, call.fmt, stats,
                  P=P, reason=reason)
    if tl is not None:
        tl.mark("plan")
    if chosen == "dense" and call.mpi_allreduce is not None:
        t_mpi = time.perf_counter()
        call.mpi_allreduce()  # MPI's own Allreduce on the caller's buffers: no copies
        stats.record_mpi(time.perf_counter() - t_mpi)
        result = None
        info = AllreduceInfo("dense", call.requested, agreement.nnz_max, agreement.nnz_sum,
                             2 * (P - 1) * n * value_bytes // P if P else 0)
        if tl is not None:
            tl.mark("MPI_Allreduce", "algorithm")
    elif call.device_run is not None and call.fixed is not None and chosen == call.fixed[0]:
        result = None
        info = AllreduceInfo(chosen, call.requested, agreement.nnz_max, agreement.nnz_sum,
                             call.device_run(state.private))
        if fmt is not None:  # as the C engine reports a lossy algorithm (scaleml_last_call_quantized)
            info.format = fmt.name
        stats.record_engine(chosen, predicted[chosen], time.perf_counter() - t0)
        if tl is not None:
            tl.mark(chosen, "algorithm")
    else:
        result, info = run_algorithm(state.private, call, chosen, agreement, fmt, residuals, state.topology)
        stats.record_engine(chosen, predicted[chosen], time.perf_counter() - t0)
    info.requested, info.predicted = call.requested, predicted
    if tl is not None:
        tl.end(**{"n": n, "dtype": str(call.values.dtype), "algorithm": "MPI_Allreduce" if result is None else chosen,
                  "format": info.format, "out": call.out, "nnz_max": agreement.nnz_max,
                  "nnz_sum": agreement.nnz_sum, "bytes": info.bytes_sent, **call.span})
    return call, result, info


def run_algorithm(private: MPI.Intracomm, call: Call, chosen: str, agreement: Agreement,
                  fmt: ValueFormat | None, residuals: tuple[np.ndarray | None, np.ndarray | None],
                  topology: Topology | None = None) -> tuple[np.ndarray | SparseVector, AllreduceInfo]:
    """Run the registry's algorithm ``chosen`` on ``call``'s data (the C core); return the result in the form
    the call asked for and what ran. ``fmt`` is the lossy format (None: exact; one call takes one step of its
    compressor's counter); ``info.format`` says whether anything this rank sent was in it. ``topology``:
    ``private``'s nodes (its engine state's), for the hierarchical algorithms (None: the flat ring)."""
    tl = _timeline.current() if _timeline.ON else None
    n, vals = call.n, call.values
    result_ptr = ffi.new("scaleml_result **")
    bytes_sent = ffi.new("uint64_t *")
    dense = None
    if call.out == "dense":
        dense = np.empty(n, dtype=vals.dtype) if call.dense_out is None else call.dense_out
    nnz_max, nnz_sum = agreement.nnz_max, agreement.nnz_sum
    idx = call.indices
    entry = algorithms.REGISTRY[chosen]
    # In place (the drop-in's MPI.IN_PLACE) with this rank's non-zeros known and no -0.0 among its zeros, the
    # result can be written over the input: its non-zeros cleared, the result's entries set (see below).
    over = False
    if call.every_position and ("dense" not in entry.input_forms or entry.unsigned_zeros):
        # the positions as listed, zeros and their signs included (a dense input would drop them)
        idx = np.arange(n, dtype=index_dtype(n))
    elif idx is None and "dense" not in entry.input_forms:  # the drop-in's dense input: its non-zeros
        idx, vals = call.nonzeros if call.nonzeros is not None else \
            extract_nonzeros(vals, call.nnz if call.nnz is not None else n, index_dtype(n))
        over = dense is call.values and not call.negative_zero
        if tl is not None:
            tl.mark("encode")
    if idx is None:  # dense input: n values on every rank (the agreed non-zero counts bound nothing here)
        idx_bytes, idx_ptr, nnz = index_dtype(n).itemsize, ffi.NULL, n
        nnz_max, nnz_sum = n, n * private.Get_size()
    else:
        idx_bytes, idx_ptr, nnz = idx.itemsize, ffi.from_buffer(idx), idx.size
    worker, server = (ffi.NULL if r is None else ffi.from_buffer(r, require_writable=True) for r in residuals)
    codec = fmt.next_codec() if fmt is not None else None
    check(lib.scaleml_allreduce_topology(
        comm_address(private), algorithms.REGISTRY[chosen].id, n, idx_bytes, vals.itemsize, nnz,
        nnz_max, nnz_sum, idx_ptr, ffi.from_buffer(vals),
        ffi.NULL if dense is None else ffi.from_buffer(dense, require_writable=True),
        ffi.NULL if codec is None else codec, worker, server,
        ffi.NULL if topology is None else topology.handle, result_ptr, bytes_sent))
    res = ffi.gc(result_ptr[0], lib.scaleml_result_free)
    if tl is not None:
        tl.mark(chosen, "algorithm")
    info = AllreduceInfo(algorithm=chosen, requested=chosen, nnz_max=agreement.nnz_max,
                         nnz_sum=agreement.nnz_sum, bytes_sent=int(bytes_sent[0]))
    if fmt is not None and lib.scaleml_last_call_quantized():
        info.format = fmt.name
    if chosen.startswith("hierarchical"):
        wire = ffi.new("scaleml_hierarchical_wire *")
        lib.scaleml_hierarchical_last_wire(wire)
        info.node_bytes = (int(wire.intra_bytes), int(wire.inter_bytes))
    result: np.ndarray | SparseVector
    if dense is not None:
        out = ffi.from_buffer(dense, require_writable=True)
        if not (over and lib.scaleml_result_to_dense_over(res, out, ffi.from_buffer(idx), idx.size, idx.itemsize)):
            lib.scaleml_result_to_dense(res, out)
        result = dense
    else:
        out_dtype = index_dtype(n) if idx is None else idx.dtype
        count = lib.scaleml_result_sparse_count(res)
        out_idx = np.empty(count, dtype=out_dtype)
        out_vals = np.empty(count, dtype=vals.dtype)
        written = lib.scaleml_result_to_sparse(res, ffi.from_buffer(out_idx, require_writable=True),
                                               ffi.from_buffer(out_vals, require_writable=True), count)
        result = SparseVector(out_idx[:written], out_vals[:written], n)
    ffi.release(res)  # free the C result now rather than at the next garbage collection
    if tl is not None:
        tl.mark("decode")
    return result, info

"""Adaptive-quantization AllReduce (Dryden, Van Essen & Snir) with worker and server error feedback.

Scatter-reduce-allgather over row blocks of a gradient matrix: each rank
compensates its gradient with its worker residual, encodes row block ``j`` with
:class:`scaleml.compress.AdaptiveQuant` and sends it to rank ``j``; rank ``j``
decodes the ``P`` contributions, sums them in rank order, adds its server
residual and encodes the sum once; the encoded blocks are allgathered and
every rank decodes every block from the same bytes. Every value is quantized
twice whatever ``P``.

The algorithm is the C registry entry ``adaptive``
(``csrc/collectives/adaptive_allreduce.c``), run through the engine like the
other collectives; this module validates, agrees and keeps the residuals
(:func:`_prepare` is the adaptive-specific part of the call).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from . import nonblocking
from ._native import ffi, lib
from ._tensors import device_output, like_input, placement
from .compress.adaptive import AdaptiveQuant
from .compress.framing import DTYPE_CODES
from .engine import Call, EngineState, collective
from .quantized import block_range  # row blocks split as the C core splits index ranges
from .sparse import as_float_array
from .value_format import ValueFormat, adaptive_format

__all__ = ["AdaptiveAllreduceInfo", "AdaptiveAllreduceState", "adaptive_allreduce", "iadaptive_allreduce"]


@dataclass
class AdaptiveAllreduceInfo:
    """What one :func:`adaptive_allreduce` put on the wire (this rank)."""

    bytes_sent: int
    """``reduce_scatter_bytes + allgather_bytes``."""
    reduce_scatter_bytes: int
    """The encoded row blocks this rank sent to their owners (its own block excluded)."""
    allgather_bytes: int
    """The ring figure of the allgather: every encoded reduced block but one."""
    compressed_bytes: int
    """Size of the allgathered result: the ``P`` encoded reduced blocks (headers included)."""
    rows: int
    cols: int
    ranks: int


class AdaptiveAllreduceState:
    """The settings and the residuals of :func:`adaptive_allreduce`, per named tensor, for one rank.

    Each rank keeps the worker residual of the whole matrix (what its own
    encodings left out) and the server residual of the row block it owns (what
    the encoding of the reduced block left out). A state belongs to one rank of
    one communicator; each rank checkpoints its own, e.g.
    ``state.save(f"adaptive-{comm.rank}.npz")``, and resuming needs the same
    number of ranks.

    Parameters
    ----------
    pi : float
        Dryden's proportion: send about ``1/pi`` of the entries of each block
        (``pi >= 1``; ``pi = 1`` sends every non-zero entry), as in
        :class:`scaleml.compress.AdaptiveQuant`.
    sample : int
        Entries sampled to choose each block's thresholds.
    seed : int
        Seed of the sampling (keyed with the rank and the step).
    """

    def __init__(self, pi: float = 32.0, sample: int = 4096, seed: int = 0) -> None:
        AdaptiveQuant(pi, sample, seed, rank=0)  # validates pi, sample, seed
        self.pi, self.sample, self.seed = float(pi), int(sample), int(seed)
        self.step = 0
        """Calls so far (keys the sampling; saved with the state)."""
        self._worker: dict[str, np.ndarray] = {}
        self._server: dict[str, np.ndarray] = {}
        self._layout: tuple[int, int] | None = None  # (rank, size) the server residuals belong to

    def worker_residual(self, name: str) -> np.ndarray | None:
        """This rank's worker residual of ``name`` (the matrix's shape; ``None`` before its first call)."""
        return self._worker.get(name)

    def server_residual(self, name: str) -> np.ndarray | None:
        """The server residual of the row block of ``name`` this rank owns (``None`` before its first call)."""
        return self._server.get(name)

    def names(self) -> list[str]:
        """Names of the tensors with residuals."""
        return sorted(self._worker)

    def reset(self, name: str | None = None) -> None:
        """Drop both residuals of ``name`` (everything, and the communicator layout, when ``None``)."""
        if name is None:
            self._worker.clear()
            self._server.clear()
            self._layout = None
        else:
            self._worker.pop(name, None)
            self._server.pop(name, None)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the residuals (keys ``worker/<name>``, ``server/<name>``), ``step`` and ``layout``
        (this rank and the communicator size, when set)."""
        state = {f"worker/{k}": v.copy() for k, v in self._worker.items()}
        state.update({f"server/{k}": v.copy() for k, v in self._server.items()})
        state["step"] = np.array(self.step, dtype=np.int64)
        if self._layout is not None:
            state["layout"] = np.array(self._layout, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""
        worker: dict[str, np.ndarray] = {}
        server: dict[str, np.ndarray] = {}
        layout = None
        for k, v in state.items():
            if k.startswith(("worker/", "server/")):
                a = np.array(v, copy=True)
                if a.dtype not in DTYPE_CODES:
                    raise TypeError(f"residual {k!r} has dtype {a.dtype}")
                (worker if k.startswith("worker/") else server)[k.split("/", 1)[1]] = a
            elif k == "layout":
                layout = tuple(int(x) for x in np.asarray(v).reshape(-1))
                if len(layout) != 2:
                    raise ValueError(f"layout must hold (rank, size), got {layout}")
            elif k != "step":
                raise ValueError(f"unexpected key {k!r} in adaptive allreduce state")
        if set(worker) != set(server):
            raise ValueError("every tensor needs both a worker and a server residual")
        self._worker, self._server, self._layout = worker, server, layout  # type: ignore[assignment]
        self.step = int(np.asarray(state.get("step", 0)))

    def save(self, path: str | os.PathLike) -> None:
        """Write this rank's state to an ``.npz`` file (one file per rank)."""
        np.savez(path, **self.state_dict())

    def load(self, path: str | os.PathLike) -> None:
        """Read the state written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            self.load_state_dict({k: f[k] for k in f.files})


@dataclass
class _Prepared:
    """What the C call of one :func:`adaptive_allreduce` needs (the adaptive-specific part of the call)."""

    grad: np.ndarray
    """The caller's gradient as a float array (its shape and dtype are the result's)."""
    flat: np.ndarray
    """The same values, C-contiguous and flat (the engine's dense input)."""
    rows: int
    cols: int
    fmt: ValueFormat
    """The adaptive codec: pi, sample, seed, the state's step, the matrix's shape."""
    worker: np.ndarray
    """The new worker residual, in place of the state's (the whole matrix, flat)."""
    server: np.ndarray
    """The new server residual, in place of the state's (this rank's row block)."""


def _prepare(grad: Any, state: Any, name: Any, rank: int, P: int) -> _Prepared:
    """Checks and the arguments of the C call (raises on this rank; the engine raises on every rank).

    The residuals are copies the C engine updates in place: the state takes
    them only when the call succeeds. Before a tensor's first call they are
    -0.0, the additive identity (``g + -0.0`` is ``g`` bit for bit, ``-0.0``
    included), so the first call codes exactly ``g``, as without residuals.
    """
    if not isinstance(state, AdaptiveAllreduceState):
        raise TypeError(f"state must be a scaleml.AdaptiveAllreduceState, got {type(state).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    g = as_float_array(grad, "grad")
    if g.ndim not in (1, 2):
        raise ValueError(f"grad must be a matrix (or a vector, as one column), got shape {g.shape}")
    rows, cols = (g.shape[0], g.shape[1]) if g.ndim == 2 else (g.shape[0], 1)
    if state._layout is not None and state._layout != (rank, P):
        raise ValueError(f"this state holds residuals of rank {state._layout[0]} of {state._layout[1]}, "
                         f"not rank {rank} of {P}")
    w = state._worker.get(name)
    if w is not None and (w.shape != g.shape or w.dtype != g.dtype):
        raise ValueError(f"tensor {name!r}: grad is {g.dtype}{g.shape}, its worker residual is {w.dtype}{w.shape}")
    start, count = block_range(rows, P, rank)
    s = state._server.get(name)
    if s is not None and (s.shape != (count, cols) or s.dtype != g.dtype):
        raise ValueError(f"tensor {name!r}: the server residual is {s.dtype}{s.shape}, rank {rank}'s block "
                         f"of a {rows} x {cols} matrix over {P} ranks is {g.dtype}{(count, cols)}")
    flat = np.ascontiguousarray(g).reshape(-1)
    if not lib.scaleml_all_finite(ffi.from_buffer(flat), flat.size, flat.itemsize):
        raise ValueError("adaptive: non-finite value (NaN or Inf) in the input")
    quantizer = AdaptiveQuant(state.pi, state.sample, state.seed, rank=rank)  # validates the settings
    quantizer.step = state.step
    worker = np.array(w, order="C").reshape(-1) if w is not None else np.full(g.size, -0.0, g.dtype)
    server = np.array(s, order="C") if s is not None else np.full((count, cols), -0.0, g.dtype)
    return _Prepared(g, flat, rows, cols, adaptive_format(quantizer, rows, cols), worker, server)


def adaptive_allreduce(grad: Any, comm: MPI.Intracomm = MPI.COMM_WORLD, *, state: AdaptiveAllreduceState,
                       name: str = "grad", average: bool = False, return_info: bool = False):
    """Sum a gradient matrix over all ranks with adaptive quantization and error feedback (collective).

    Scatter-reduce-allgather over ``P`` contiguous row blocks (rows, not
    elements, so each block is a matrix with its own per-column
    reconstruction values): every rank adds its worker residual, encodes row
    block ``j`` with :class:`scaleml.compress.AdaptiveQuant` (thresholds from
    a sample of that block) and sends it to rank ``j``, keeping ``y -
    decode(y)`` as its new worker residual; rank ``j`` decodes the ``P``
    contributions, sums them in rank order, adds its server residual, encodes
    the sum once (the server residual becomes ``z - decode(z)``), and the
    encoded blocks are allgathered. Every rank decodes every block from the
    same bytes: the result is bitwise identical on every rank. The traffic
    runs on ScaleML's private duplicate of ``comm``.

    Bytes per rank are about ``2 (P-1)/P`` of one encoded matrix plus, per
    block sent, the message header and the block's column table (``16 cols +
    72`` bytes): the words do not grow with ``P``, the column tables do
    (``info.bytes_sent``; the registry entry ``adaptive``'s cost model).

    Parameters
    ----------
    grad : array_like of float32 or float64
        This rank's gradient: a ``rows x cols`` matrix (row-major; a 1-D array
        is one column), the same shape and dtype on every rank. A
        non-contiguous array is copied.
    comm : mpi4py.MPI.Intracomm
        The communicator.
    state : AdaptiveAllreduceState
        Settings and residuals of this rank. The residuals and the step advance
        only when the call succeeds.
    name : str
        The tensor's name in ``state``.
    average : bool
        Divide the sum by the number of ranks (after decoding; the same on
        every rank). The same on every rank.
    return_info : bool
        Also return an :class:`AdaptiveAllreduceInfo`.

    Returns
    -------
    numpy.ndarray or torch.Tensor, or a tuple with an AdaptiveAllreduceInfo
        The decoded sum (or mean), with ``grad``'s shape and dtype; a tensor
        (sharing the numpy result's memory) when ``grad`` is a ``torch.Tensor``.

    Raises
    ------
    TypeError, ValueError
        On every rank when any rank passed bad input (dtype, shape, NaN or Inf,
        a state that is not an ``AdaptiveAllreduceState`` or whose residuals
        do not fit), or when ranks disagree on the number of elements, of rows,
        or the dtype.
    ScaleMLError
        On every other rank when a rank could not encode its row blocks or
        reduce its block (a sum beyond the float range, out of memory); that
        rank raises its own error (``ValueError``, ``MemoryError``). The
        residuals and the step stay as they were, and no rank is left waiting.

    Notes
    -----
    With ``SCALEML_DISABLE=1`` the sum is exact (``MPI_Allreduce``); the
    residuals and the step stay as they are.
    """
    def prepare(es: EngineState) -> Call:
        rank, P = es.private.Get_rank(), es.private.Get_size()
        device = placement({"grad": grad})
        target = device_output(grad, None)
        prep = _prepare(grad, state, name, rank, P)
        # The agreement's count is the rows: every rank must cut the matrix into the same row blocks.
        return Call(prep.flat.size, prep.flat, fmt=prep.fmt, fixed=("adaptive", "adaptive quantization"),
                    residuals=(prep.worker, prep.server), nnz=prep.rows, same_count="rows",
                    class_key=("adaptive",), span={"format": f"adaptive pi={state.pi}"}, device=device,
                    kept=(prep, target))

    call, out, run = collective(comm, "adaptive_allreduce", prepare)
    prep, target = call.kept
    g, rows, cols, P = prep.grad, prep.rows, prep.cols, comm.Get_size()
    out = out.reshape(g.shape)
    if run.algorithm == "adaptive":  # the residuals and the step advance only when adaptive ran and succeeded
        wire = ffi.new("scaleml_adaptive_wire *")
        lib.scaleml_adaptive_last_wire(wire)
        state._worker[name], state._server[name] = prep.worker.reshape(g.shape), prep.server
        state._layout = (comm.Get_rank(), P)
        state.step += 1
        rs, ag, encoded = int(wire.reduce_scatter_bytes), int(wire.allgather_bytes), int(wire.encoded_bytes)
    else:  # SCALEML_DISABLE=1: MPI's exact sum (residuals and step unchanged), the ring's bytes
        ring = 2 * (P - 1) * g.nbytes // P
        rs, ag, encoded = ring // 2, ring // 2, g.nbytes
    if average:
        out /= P
    out = like_input(out, grad, target)
    if not return_info:
        return out
    return out, AdaptiveAllreduceInfo(bytes_sent=run.bytes_sent if run.algorithm == "adaptive" else rs + ag,
                                      reduce_scatter_bytes=rs, allgather_bytes=ag, compressed_bytes=encoded,
                                      rows=rows, cols=cols, ranks=P)


def iadaptive_allreduce(grad: Any, comm: MPI.Intracomm = MPI.COMM_WORLD, **kwargs: Any) -> nonblocking.Request:
    """Nonblocking :func:`adaptive_allreduce`; the request's result is its return value."""
    return nonblocking.start(adaptive_allreduce, comm, grad, **kwargs)

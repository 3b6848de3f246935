"""TopK AllReduce: error-feedback compensation, top-k selection, and a sparse AllReduce of the selection."""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import _device, nonblocking
from ._tensors import device_output, like_input, placement
from .compress.error_feedback import ErrorFeedback
from .compress.topk import TopK
from .engine import Call, EngineState, collective
from .sparse import as_float_array, sparse_call

__all__ = ["itopk_allreduce", "topk_allreduce"]

_DEFAULT_RATIO = 0.01
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _selector(ratio: Any, k: Any, approximate: Any, error_feedback: Any) -> tuple[TopK, int | None]:
    """The TopK that selects, and the step to key its sampling with (``None``: no counter to advance)."""
    if error_feedback is None:
        sel = TopK(k=k) if k is not None else TopK(ratio=ratio)  # TopK validates k and ratio
        sel.approximate = bool(approximate)
        return sel, None
    if not isinstance(error_feedback, ErrorFeedback):
        raise TypeError(f"error_feedback must be a scaleml.compress.ErrorFeedback or None, "
                        f"got {type(error_feedback).__name__}")
    sel = error_feedback.compressor
    if not isinstance(sel, TopK):
        raise TypeError(f"error_feedback's compressor must be a scaleml.compress.TopK, got {type(sel).__name__}")
    # The selection is error_feedback's TopK; arguments that say otherwise are a mistake, not a choice.
    if k is not None and k != sel.k:
        raise ValueError(f"k={k!r} conflicts with error_feedback's TopK (k={sel.k!r}); set k on the TopK")
    if ratio != _DEFAULT_RATIO and ratio != sel.ratio:
        raise ValueError(f"ratio={ratio!r} conflicts with error_feedback's TopK (ratio={sel.ratio!r})")
    if approximate and not sel.approximate:
        raise ValueError("approximate=True conflicts with error_feedback's TopK (approximate=False)")
    return sel, sel.step


def _select(grad: Any, ratio: Any, k: Any, approximate: Any, error_feedback: Any, name: Any):
    """This rank's part before any communication: checks, compensation and selection."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if error_feedback is None and _device.is_device(grad):
        # Selected on the device: only the k (index, value) pairs of the message cross to the host.
        sel, _ = _selector(ratio, k, approximate, None)
        c = sel.encode(grad, step=0)
        idx, vals = TopK.entries(c)
        shape_only = np.broadcast_to(np.zeros((), c.dtype), c.shape)  # grad's shape and dtype, no memory
        return shape_only, idx, vals, None, None
    g = as_float_array(grad, "grad")
    sel, step = _selector(ratio, k, approximate, error_feedback)
    flat = g.reshape(-1)  # a view when grad is contiguous, else a copy
    if error_feedback is None:
        c, residual = sel.encode(flat, step=0), None  # no counter: the same sample keys every call
    else:
        r = error_feedback.residual(name)
        if r is not None and (r.shape != g.shape or r.dtype != g.dtype):
            raise ValueError(f"tensor {name!r}: grad is {g.dtype}{g.shape}, its residual is {r.dtype}{r.shape}")
        # y = grad + residual is formed in a spare buffer kept from call to call (a fresh multi-MiB array
        # costs page faults on every step), and the selection zeroes its sent entries in place: y becomes
        # the next residual. The kept residual is untouched until the call succeeds; then it becomes the
        # next spare.
        spares = error_feedback.__dict__.setdefault("_topk_spares", {})
        y = spares.get(name)
        if y is None or y.shape != flat.shape or y.dtype != flat.dtype:
            y = spares[name] = np.empty_like(flat)
        if r is not None:
            np.add(flat, r.reshape(-1), out=y)
        else:
            y[...] = flat
        c, residual = sel.encode_with_residual(y, step=step, out=y)
        residual = residual.reshape(g.shape)
    idx, vals = TopK.entries(c)  # sorted unique uint32 indices: no dense decode
    return g, idx, vals, residual, step


def topk_allreduce(grad: Any, comm: MPI.Intracomm = MPI.COMM_WORLD, *, ratio: float = _DEFAULT_RATIO,
                   k: int | None = None, error_feedback: ErrorFeedback | None = None, name: str = "grad",
                   approximate: bool = False, compression: Any = None, average: bool = False,
                   algorithm: str = "auto", out: np.ndarray | None = None, return_info: bool = False):
    """Sum the top-k entries of every rank's gradient, with error feedback (collective).

    Each rank compensates ``grad`` with its residual (``y = grad + residual``),
    selects the ``k`` entries of ``y`` of largest magnitude, keeps the rest as
    its new residual, and the selections are summed with
    :func:`scaleml.sparse_allreduce` (``out="dense"``). Every rank gets the
    same array, bit for bit.

    Parameters
    ----------
    grad : array_like of float32 or float64
        This rank's gradient, any shape (flattened for the selection), the same
        size and dtype on every rank. A non-contiguous array is copied. A CPU
        ``torch.Tensor`` (or DLPack object) is read without a copy.
    comm : mpi4py.MPI.Intracomm
        The communicator.
    ratio : float
        Fraction of entries to send, ``k = ceil(ratio * grad.size)``; ignored
        when ``k`` is given.
    k : int, optional
        Number of entries to send, ``0 <= k <= grad.size``. ``k = 0`` (and an
        empty ``grad``) is allowed: nothing is sent, the result is zero and
        with error feedback the whole compensated gradient stays in the residual.
    error_feedback : scaleml.compress.ErrorFeedback, optional
        Residuals per tensor name, around a :class:`scaleml.compress.TopK`
        that then does the selection (its ``k``/``ratio``/``approximate``;
        the arguments ``k``, ``ratio`` and ``approximate`` must be left at their
        defaults or match it). Its residual and step counter advance only when
        the whole call succeeds, so a call that raises leaves it unchanged.
        Checkpoint it with ``save``/``load`` (one file per rank). ``None``:
        plain top-k, the unsent entries are dropped.
    name : str
        The tensor's name in ``error_feedback``.
    approximate : bool
        Estimate the selection threshold from a sample instead of an exact
        selection; then about ``k`` entries are sent (fewer or more). The
        sample is keyed by the step of ``error_feedback``'s TopK; without
        ``error_feedback`` every call samples the same positions.
    compression : object, optional
        Forwarded to :func:`scaleml.sparse_allreduce` as ``compression=`` when
        not ``None`` (a quantizer for its dense phase).
    average : bool
        Divide the sum by the number of ranks.
    algorithm : str
        ``"auto"`` or a name of :data:`scaleml.algorithms.NAMES`, the same on
        every rank (see :func:`scaleml.sparse_allreduce`).
    out : numpy.ndarray or torch.Tensor, optional
        Where to write the result (grad's size and dtype, C-contiguous,
        writable; not grad itself): saves allocating n values per step.
    return_info : bool
        Also return the :class:`scaleml.AllreduceInfo` of the sparse AllReduce.

    Returns
    -------
    numpy.ndarray or torch.Tensor, or a tuple ``(result, AllreduceInfo)``
        The sum (or mean) over ranks of the selected entries, with ``grad``'s
        shape and dtype: ``out`` when given, else a tensor when ``grad`` is one
        (sharing the numpy result's memory), else a numpy array.

    Raises
    ------
    TypeError, ValueError
        On every rank when any rank passed bad input (dtype, ``k``/``ratio``,
        ``k > grad.size``, NaN or Inf, a residual of another shape or dtype, an
        ``error_feedback`` that is not an ``ErrorFeedback`` of a ``TopK``), or
        when ranks disagree on the size, dtype or algorithm.
    """
    def prepare(state: EngineState) -> Call:
        device = placement({"grad": grad, "out": out})
        target = device_output(grad, out)
        g, idx, vals, residual, step = _select(grad, ratio, k, approximate, error_feedback, name)
        call = sparse_call(idx, vals, g.size, algorithm, compression, "dense", target)
        call.device = device
        call.span["k"] = idx.size
        call.prepared_phase = "encode"  # the selection
        call.kept = (g, residual, step, call.kept, target)  # committed after the collective; out as written
        return call

    call, total, info = collective(comm, "topk_allreduce", prepare)
    g, residual, step, dest, target = call.kept
    if error_feedback is not None:  # commit only now: a call that raised kept the old residual and step
        old = error_feedback.residual(name)
        error_feedback.set_residual(name, residual)
        # the next call's spare: the old residual (never the one just kept)
        usable = old is not None and old.flags.c_contiguous and old.size == residual.size and old.dtype == g.dtype
        error_feedback.__dict__["_topk_spares"][name] = old.reshape(-1) if usable else np.empty(residual.size, g.dtype)
        error_feedback.compressor.step = step + 1  # type: ignore[operator]
    total = total.reshape(g.shape) if target is None else dest
    if average:
        total /= comm.Get_size()
    total = like_input(total, grad, target)
    return (total, info) if return_info else total


def itopk_allreduce(grad: Any, comm: MPI.Intracomm = MPI.COMM_WORLD, **kwargs: Any) -> nonblocking.Request:
    """Nonblocking :func:`topk_allreduce`; the request's result is its return value."""
    return nonblocking.start(topk_allreduce, comm, grad, **kwargs)

"""Quantized AllReduce of dense data: validation, agreement, algorithm choice and the C call.

The algorithms live in the C engine (``csrc/collectives/quantized_allreduce_*.c``,
registry entries ``quantized_ring``, ``quantized_rhd``, ``quantized_direct``);
this module is the thin layer in front of them.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from . import _log, algorithms, config
from . import timeline as _timeline
from ._native import ffi, lib
from ._tensors import as_numpy_out, like_input
from .compress import ErrorFeedback
from .sparse import (
    _LocalError,
    _predict,
    _run,
    agree,
    as_float_array,
    as_local_error,
    choose_algorithm,
    engine_state,
    lossy_format,
)

LOSSY = algorithms.LOSSY
"""The lossy algorithms of the registry (what ``algorithm=`` accepts besides ``"auto"``)."""
_WITH_FEEDBACK = "quantized_direct"


def block_range(n: int, P: int, j: int) -> tuple[int, int]:
    """(start, length) of range j of the P contiguous ranges the collectives cut [0, n) into."""
    start, length = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    lib.scaleml_block_range(n, P, j, start, length)
    return int(start[0]), int(length[0])


def quantized_allreduce(x, comm: MPI.Intracomm = MPI.COMM_WORLD, compression: object = None, *,
                        error_feedback: ErrorFeedback | None = None, name: str = "grad",
                        algorithm: str = "auto", average: bool = False, out: np.ndarray | None = None,
                        check_finite: bool = True, return_info: bool = False):
    """Sum (or average) dense arrays over all ranks in a lossy format (collective).

    Every message carries quantized data: partial sums are decoded, added in
    full precision and re-encoded before they are passed on; the owner of each
    index range encodes the final range once and every rank decodes the same
    bytes, so every rank ends with a bitwise-identical result. Bytes sent per
    rank are about ``2 (P-1)/P n q`` for q bytes per encoded value:
    independent of the number of ranks.

    Parameters
    ----------
    x : array_like of float32 or float64
        This rank's contribution, any shape; the same size and dtype on every
        rank. A CPU ``torch.Tensor`` (or DLPack object) is read without a copy.
    comm : mpi4py.MPI.Intracomm
        Any intra-communicator.
    compression : QSGD, Cast or OneBit
        The lossy format: :class:`scaleml.compress.QSGD` (fixed-width, any bits,
        bucket and norm), :class:`scaleml.compress.Cast` (``fp16``, ``bf16``) or
        :class:`scaleml.compress.OneBit`. Its seed and step counter key the
        random rounding. Optional when ``error_feedback`` is given (its compressor).
    error_feedback : ErrorFeedback, optional
        Error feedback on both sides (the 1-bit Adam scheme,
        ``quantized_direct``): each rank keeps the residual of its own
        encoding (``<name>/worker``, n values) and of the range it reduces
        (``<name>/server``); what was applied plus every residual equals the
        sum of what was put in. Save it with :meth:`ErrorFeedback.save` (one
        file per rank).
    name : str
        The tensor's name in ``error_feedback``.
    algorithm : str
        ``"auto"`` (the least predicted time; ``quantized_direct`` when there
        is error feedback) or one of :data:`LOSSY`.
    average : bool
        Divide the sum by the number of ranks.
    out : numpy.ndarray or torch.Tensor, optional
        Where to write the result (same shape and dtype as ``x``, writable,
        C-contiguous; may be ``x`` itself).
    check_finite : bool
        Reject NaN and Inf (on every rank).
    return_info : bool
        Also return an :class:`AllreduceInfo` (algorithm, format, bytes sent).

    Returns
    -------
    numpy.ndarray or torch.Tensor, or a tuple ``(result, AllreduceInfo)``
        ``out`` when given; else a tensor when ``x`` is one (sharing the
        memory of the numpy result), else a numpy array.

    Raises
    ------
    TypeError, ValueError, MemoryError
        On every rank when any rank passed a bad argument or ranks disagree
        (size, dtype, algorithm, format).

    Notes
    -----
    ``SCALEML_ALGORITHM`` replaces ``"auto"`` when it names one of
    :data:`LOSSY`; ``SCALEML_DISABLE=1`` sums exactly (the ``dense``
    algorithm; error feedback residuals are left as they are). See
    :mod:`scaleml.config`.
    """
    op_name = "quantized_allreduce"
    tl = _timeline.begin(op_name) if _timeline.ON else None
    algorithm = config.apply_algorithm(algorithm, lambda a: a in LOSSY and (error_feedback is None
                                                                          or a == _WITH_FEEDBACK))
    out_arg = out
    error = fmt = None
    flat = dest = None
    residuals: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    code = algorithms.code_of(algorithm)
    state = engine_state(comm)
    P, rank = state.private.Get_size(), state.private.Get_rank()
    try:
        if code < 0 or (code > 0 and algorithms.BY_ID[code].exact):
            raise _LocalError(2, ValueError(f"unknown algorithm {algorithm!r}; expected 'auto' or one of {LOSSY}"))
        if error_feedback is not None and not isinstance(error_feedback, ErrorFeedback):
            raise _LocalError(1, TypeError("error_feedback must be a scaleml.compress.ErrorFeedback, got "
                                           f"{type(error_feedback).__name__}"))
        if compression is None and error_feedback is not None:
            compression = error_feedback.compressor
        if compression is None:
            raise _LocalError(1, TypeError("quantized_allreduce needs compression= (QSGD, Cast or OneBit)"))
        if error_feedback is not None and compression is not error_feedback.compressor:
            raise _LocalError(2, ValueError("compression must be error_feedback.compressor (or left out)"))
        if error_feedback is not None and code > 0 and algorithm != _WITH_FEEDBACK:
            raise _LocalError(2, ValueError(f"error feedback on both sides is kept by {_WITH_FEEDBACK!r}, "
                                            f"not {algorithm!r}"))
        fmt = lossy_format(compression, code)
        try:
            a = as_float_array(x, "x")
        except TypeError as exc:
            raise _LocalError(1, exc) from None
        flat = np.ascontiguousarray(a).reshape(-1)
        if check_finite and not lib.scaleml_all_finite(ffi.from_buffer(flat), flat.size, flat.itemsize):
            raise _LocalError(4, ValueError("x contains NaN or Inf (pass check_finite=False to allow)"))
        out = as_numpy_out(out)
        if out is None:
            dest = np.empty(a.shape, a.dtype)
        elif not isinstance(out, np.ndarray) or out.shape != a.shape or out.dtype != a.dtype:
            raise _LocalError(2, ValueError(f"out must be a numpy array of shape {a.shape} and dtype {a.dtype}"))
        elif not (out.flags.c_contiguous and out.flags.writeable):
            raise _LocalError(2, ValueError("out must be writable and C-contiguous"))
        else:
            dest = out
        if error_feedback is not None:
            try:
                residuals = (error_feedback.residual_buffer(f"{name}/worker", (flat.size,), flat.dtype),
                             error_feedback.residual_buffer(f"{name}/server", (block_range(flat.size, P, rank)[1],),
                                                            flat.dtype))
            except ValueError as exc:
                raise _LocalError(2, exc) from None
    except _LocalError as exc:
        error = exc
    except Exception as exc:  # any other argument, of any type, fails here too: through the agreement
        error = as_local_error(exc)
    ok = error is None
    n = flat.size if ok else 0
    if tl is not None:
        tl.mark("scan")
    t0 = time.perf_counter()
    stats = state.tuner.stats(op_name, flat.itemsize if ok else 0, n, fmt.fingerprint if ok else 0)
    stats.calls += 1
    agreement = agree(state, error, n=n, value_bytes=flat.itemsize if ok else 0, algorithm=max(code, 0), out=0,
                      nnz=n, op_name=op_name, codec=fmt.fingerprint if ok else 0,
                      reports=stats.reports_ns())
    if tl is not None:
        tl.mark("agreement")
    stats.learn(agreement.engine_ns, agreement.mpi_ns)
    predicted = _predict(n, P, agreement, 4 if n <= 1 << 32 else 8, flat.itemsize, False, dense_input=True,
                         quantized_value_bytes=fmt.value_bytes(n, flat.itemsize))
    if code:
        chosen = algorithm
    elif error_feedback is not None:
        chosen = _WITH_FEEDBACK
    else:
        chosen = choose_algorithm(predicted, agreement, stats, exclude=tuple(a for a in algorithms.NAMES
                                                                             if a not in LOSSY), lossy=True)
    if config.DISABLE:  # exact, as MPI_Allreduce sums (the residuals stay as they are)
        chosen, fmt, residuals = "dense", None, (None, None)
    _log.decision(op_name, n, flat.dtype, agreement, predicted, chosen, algorithm, fmt, stats, P=P, candidates=LOSSY,
                  reason="error feedback" if error_feedback is not None and not code and not config.DISABLE else "")
    if tl is not None:
        tl.mark("plan")
    result = dest.reshape(-1)
    _, info = _run(state.private, None, flat, n, chosen, "dense", agreement, dense_out=result, fmt=fmt,
                   residuals=residuals)
    if average and P > 1:
        result /= P
    stats.record_engine(chosen, predicted[chosen], time.perf_counter() - t0)
    info.requested, info.predicted = algorithm, predicted
    if tl is not None:
        tl.end(n=n, dtype=str(flat.dtype), algorithm=chosen, format=info.format, bytes=info.bytes_sent)
    dest = like_input(dest, x, out_arg)
    return (dest, info) if return_info else dest

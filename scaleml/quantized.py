"""Quantized AllReduce of dense data: validation, agreement, algorithm choice and the C call.

The algorithms live in the C engine (``csrc/collectives/quantized_allreduce_*.c``,
registry entries ``quantized_ring``, ``quantized_rhd``, ``quantized_direct``);
this module is the thin layer in front of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import _cuda, _device, algorithms, config, nonblocking
from ._native import ffi, lib
from ._tensors import as_numpy_out, device_output, like_input, placement
from .compress import ErrorFeedback
from .engine import Call, EngineState, LocalError, collective
from .quantized_device import ALGORITHM, gather_call
from .sparse import as_float_array, lossy_format

LOSSY = algorithms.LOSSY
"""The lossy algorithms of the registry (what ``algorithm=`` accepts besides ``"auto"``)."""
_WITH_FEEDBACK = "quantized_direct"
_HIERARCHICAL = "hierarchical_quantized"
_KEEP_FEEDBACK = (_WITH_FEEDBACK, _HIERARCHICAL)
"""The algorithms that keep error feedback: ``auto`` with it runs the first; the second when named."""


def block_range(n: int, P: int, j: int) -> tuple[int, int]:
    """(start, length) of range j of the P contiguous ranges the collectives cut [0, n) into."""
    start, length = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    lib.scaleml_block_range(n, P, j, start, length)
    return int(start[0]), int(length[0])


def hierarchical_residual_lengths(n: int, state: EngineState) -> tuple[int, int]:
    """(worker, server) residual lengths of ``hierarchical_quantized`` on this rank (its header comment).

    The residuals belong to the cross-node step: the worker residual covers the shard this rank owns
    (``block_range(n, S, local_rank)``, S the smallest node's ranks; empty for local ranks >= S), the server
    residual the block of that shard this rank reduces across the N nodes (``block_range(shard, N, node)``).
    Without a topology every rank is its own node: quantized_direct's layout (n, and the rank's block of n).
    """
    topology = state.topology
    if topology is None:
        nodes, node, local_rank, smallest = state.private.Get_size(), state.private.Get_rank(), 0, 1
    else:
        nodes, node, local_rank, smallest = topology.nodes, topology.node, topology.local_rank, topology.node_size_min
    shard = block_range(n, smallest, local_rank)[1] if local_rank < smallest else 0
    return shard, block_range(shard, nodes, node)[1]


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
        file per rank). With ``algorithm="hierarchical_quantized"`` the
        residuals belong to its cross-node step (the shard a rank owns:
        :func:`hierarchical_residual_lengths`).
    name : str
        The tensor's name in ``error_feedback``.
    algorithm : str
        ``"auto"`` (the least predicted time; ``quantized_direct`` when there
        is error feedback) or one of :data:`LOSSY` (with error feedback:
        ``quantized_direct`` or ``hierarchical_quantized``).
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
    def prepare(state: EngineState) -> Call:
        requested = config.apply_algorithm(algorithm, lambda a: a in LOSSY and (error_feedback is None
                                                                              or a in _KEEP_FEEDBACK))
        code = algorithms.code_of(requested)
        if code < 0 or (code > 0 and algorithms.BY_ID[code].exact):
            raise ValueError(f"unknown algorithm {requested!r}; expected 'auto' or one of {LOSSY}")
        if error_feedback is not None and not isinstance(error_feedback, ErrorFeedback):
            raise TypeError("error_feedback must be a scaleml.compress.ErrorFeedback, got "
                            f"{type(error_feedback).__name__}")
        lossy = compression
        if lossy is None and error_feedback is not None:
            lossy = error_feedback.compressor
        if lossy is None:
            raise TypeError("quantized_allreduce needs compression= (QSGD, Cast or OneBit)")
        if error_feedback is not None and lossy is not error_feedback.compressor:
            raise ValueError("compression must be error_feedback.compressor (or left out)")
        if error_feedback is not None and code > 0 and requested not in _KEEP_FEEDBACK:
            raise ValueError(f"error feedback on both sides is kept by {_WITH_FEEDBACK!r} (or {_HIERARCHICAL!r}), "
                             f"not {requested!r}")
        fmt = lossy_format(lossy, code)
        device = placement({"x": x, "out": out})
        target = device_output(x, out)
        if device and error_feedback is None and requested in ("auto", ALGORITHM) and not config.DISABLE:
            return _device_gather(state, x, target, fmt, requested)
        a = as_float_array(x, "x")
        flat = np.ascontiguousarray(a).reshape(-1)
        if check_finite and not lib.scaleml_all_finite(ffi.from_buffer(flat), flat.size, flat.itemsize):
            raise LocalError(4, ValueError("x contains NaN or Inf (pass check_finite=False to allow)"))
        dest = as_numpy_out(target)
        if dest is None:
            dest = np.empty(a.shape, a.dtype)
        elif not isinstance(dest, np.ndarray) or dest.shape != a.shape or dest.dtype != a.dtype:
            raise ValueError(f"out must be a numpy array of shape {a.shape} and dtype {a.dtype}")
        elif not (dest.flags.c_contiguous and dest.flags.writeable):
            raise ValueError("out must be writable and C-contiguous")
        residuals: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        keeper = requested if requested in _KEEP_FEEDBACK else _WITH_FEEDBACK
        if error_feedback is not None and keeper == _HIERARCHICAL:
            worker, server = hierarchical_residual_lengths(flat.size, state)
            residuals = (error_feedback.residual_buffer(f"{name}/worker", (worker,), flat.dtype),
                         error_feedback.residual_buffer(f"{name}/server", (server,), flat.dtype))
        elif error_feedback is not None:
            P, rank = state.private.Get_size(), state.private.Get_rank()
            residuals = (error_feedback.residual_buffer(f"{name}/worker", (flat.size,), flat.dtype),
                         error_feedback.residual_buffer(f"{name}/server", (block_range(flat.size, P, rank)[1],),
                                                        flat.dtype))
        return Call(flat.size, flat, requested=requested, fmt=fmt, lossy_only=True, dense_out=dest.reshape(-1),
                    fixed=(keeper, "error feedback") if error_feedback is not None else None,
                    residuals=residuals, class_key=(fmt.fingerprint,), device=device, kept=(dest, target))

    def _device_gather(state: EngineState, x: Any, target: Any, fmt: Any, requested: str) -> Call:
        view, result = _device.device_array(x, "x"), _device.device_array(target, "out")
        assert view is not None and result is not None
        if result.shape != view.shape or result.dtype != view.dtype or result.readonly:
            raise ValueError(f"out must be a writable CUDA array of shape {view.shape} and dtype {view.dtype}")
        _device.same_device([view, result], "quantized_allreduce")
        if view.dtype not in (np.float32, np.float64):
            raise TypeError(f"x must be float32 or float64, got {view.dtype}")
        call = gather_call(state.private, view, result, fmt, check_finite, requested)
        call.kept = (None, target)
        return call

    call, result, info = collective(comm, "quantized_allreduce", prepare)
    P = comm.Get_size()
    dest, target = call.kept
    if dest is None:  # ran on the device: the sum is in target
        view = _device.device_array(target, "out")
        assert view is not None
        if average and P > 1:
            _cuda.backend().call("scaleml_cuda_divide", view.ptr, view.size, view.dtype.itemsize, float(P), view.stream)
        return (target, info) if return_info else target
    if average and P > 1:
        result /= P
    dest = like_input(dest, x, target)  # the array the result was written into (x's shape)
    return (dest, info) if return_info else dest


def iquantized_allreduce(x, comm: MPI.Intracomm = MPI.COMM_WORLD, compression: object = None,
                         **kwargs: Any) -> nonblocking.Request:
    """Nonblocking :func:`quantized_allreduce`; the request's result is its return value."""
    return nonblocking.start(quantized_allreduce, comm, x, compression=compression, **kwargs)

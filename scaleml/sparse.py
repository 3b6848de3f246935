"""Sparse AllReduce: the checks of its input; the engine (:mod:`scaleml.engine`) agrees, plans and runs it."""

from __future__ import annotations

from typing import Literal

import numpy as np
from mpi4py import MPI

from . import _device, algorithms, config, nonblocking
from ._native import ffi, lib
from ._tensors import as_numpy, as_numpy_out, like_input, placement
from .engine import (
    AllreduceInfo,
    Call,
    EngineState,
    LocalError,
    SparseVector,
    collective,
    dense_fits,
    index_dtype,
)
from .value_format import ValueFormat, value_format

__all__ = ["AllreduceInfo", "SparseVector", "as_float_array", "index_dtype", "isparse_allreduce", "lossy_format",
           "sparse_allreduce", "sparse_call"]

Algorithm = str
"""``"auto"`` or a name of :data:`scaleml.algorithms.NAMES`."""
OutForm = Literal["dense", "sparse"]

_VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


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


def _canonical_input(indices, values, n, check_finite: bool, dense_ok: bool = False
                     ) -> tuple[np.ndarray | None, np.ndarray]:
    """Validate one rank's sparse input; return sorted unique indices and summed values, or, with
    ``dense_ok``, (None, values) where the indices are every position in order (0 .. n-1): the values are
    then the dense vector."""
    try:
        n_int = int(n)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf)
        raise LocalError(1, TypeError(f"n must be an integer, got {n!r}")) from exc
    if n_int != n or n_int < 0 or n_int >= 1 << 63:
        raise LocalError(2, ValueError(f"n must be an integer in [0, 2**63), got {n!r}"))
    try:
        idx = np.asarray(as_numpy(indices, "indices"))
        vals = np.asarray(as_numpy(values, "values"))
    except Exception as exc:  # objects numpy cannot read as arrays
        raise LocalError(1, TypeError(f"indices and values must be array-like: {exc}")) from exc
    if vals.dtype not in _VALUE_DTYPES:
        raise LocalError(1, TypeError(f"values must be float32 or float64, got {vals.dtype}"))
    if idx.size == 0:
        idx = idx.astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise LocalError(1, TypeError(f"indices must be integers, got {idx.dtype}"))
    if idx.ndim != 1 or vals.ndim != 1:
        raise LocalError(2, ValueError(f"indices and values must be 1-D, got shapes {idx.shape} and {vals.shape}"))
    if idx.size != vals.size:
        raise LocalError(2, ValueError(f"indices ({idx.size}) and values ({vals.size}) differ in length"))
    # Indices already increasing and in [0, n) (the common case): one C pass checks it all.
    canonical = idx.itemsize in (4, 8) and idx.flags.c_contiguous and \
        bool(lib.scaleml_indices_increasing(ffi.from_buffer(idx), idx.size, idx.itemsize, idx.dtype.kind == "i",
                                            n_int))
    if idx.size and not canonical:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n_int:
            raise LocalError(3, ValueError(f"indices must lie in [0, {n_int}), got [{lo}, {hi}]"))
    vals = np.ascontiguousarray(vals)
    if check_finite and not lib.scaleml_all_finite(ffi.from_buffer(vals), vals.size, vals.itemsize):
        raise LocalError(4, ValueError("values contain NaN or Inf (pass check_finite=False to allow)"))
    if dense_ok and canonical and idx.size == n_int > 0:  # n strictly increasing indices in [0, n): 0 .. n-1
        return None, vals
    idx = np.ascontiguousarray(idx, dtype=index_dtype(n_int))
    if idx.size > 1 and not canonical and not (idx[1:] > idx[:-1]).all():
        order = np.argsort(idx, kind="stable")
        idx, vals = idx[order], vals[order]
        starts = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
        vals = np.add.reduceat(vals, starts)
        idx = idx[starts]
    return idx, vals


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
        Every position in order (``0 .. n-1``, of any integer type) makes
        ``values`` the dense vector, read in place for an exact dense
        result: no index conversion and no scatter.
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
    def prepare(state: EngineState) -> Call:
        device = placement({"indices": indices, "values": values, "dense_out": dense_out})
        # every position listed: the values are read in place as dense input where the sum is exact, on the
        # host, into a dense result; elsewhere the positions go as listed
        idx, vals = _canonical_input(indices, values, n, check_finite,
                                     dense_ok=not device and compression is None and out == "dense")
        target = dense_out
        if device and out == "dense" and dense_out is None:  # the result on the device, allocated before the sum
            view = _device.device_array(values, "values")
            assert view is not None
            target = _device.empty_like(view, (int(n),))
        call = sparse_call(idx, vals, int(n), algorithm, compression, out, target)
        call.device = device
        call.kept = (call.kept, target)
        return call

    call, result, info = collective(comm, "sparse_allreduce", prepare)
    if call.out == "dense":
        dest, target = call.kept
        if dest is not None:  # dense_out as the engine wrote it (the caller's memory, or its host stage)
            result = dest
        result = like_input(result, values, target)
    return (result, info) if return_info else result


def sparse_call(idx: np.ndarray | None, vals: np.ndarray, n: int, algorithm: object, compression: object,
                out: object = "dense", dense_out: object = None) -> Call:
    """The engine's :class:`~scaleml.engine.Call` for summing the canonical entries ``(idx, vals)`` of a
    vector of dimension ``n``: the algorithm (``SCALEML_DISABLE``, ``SCALEML_ALGORITHM``), the lossy format,
    the result form and its memory checked (raises on this rank; the engine raises it on every rank).
    ``idx`` None: the entries are every position in order, ``vals`` the dense vector (read in place)."""
    requested, lossy = ("dense", None) if config.DISABLE else (algorithm, compression)
    requested = config.apply_algorithm(requested, lambda a: lossy is not None or algorithms.get(a).exact)
    code = algorithms.code_of(requested)
    if code < 0:
        raise ValueError(f"unknown algorithm {requested!r}; expected 'auto' or one of {algorithms.NAMES}")
    fmt = lossy_format(lossy, code)
    if not isinstance(out, str) or out not in ("dense", "sparse"):
        raise ValueError(f"out must be 'dense' or 'sparse', got {out!r}")
    dest = as_numpy_out(dense_out, "dense_out")
    if dest is not None and not (out == "dense" and isinstance(dest, np.ndarray) and dest.dtype == vals.dtype
                                 and dest.size == n and dest.flags.c_contiguous and dest.flags.writeable):
        raise ValueError(f"dense_out must be a writable C-contiguous {vals.dtype} array of n = {n} values, "
                         "with out='dense'")
    needs_dense = out == "dense" or (code and "sparse" not in algorithms.BY_ID[code].result_forms)
    if needs_dense and not dense_fits(n, vals.itemsize):
        raise LocalError(5, MemoryError(f"a dense vector of n = {n} does not fit in memory; "
                                        "use out='sparse' with a sparse algorithm"))
    return Call(n, vals, idx, requested=requested, out=out, fmt=fmt,
                dense_out=None if dest is None else dest.reshape(-1), class_key=(out,), kept=dest,
                every_position=idx is None)


def lossy_format(compression: object, code: int) -> ValueFormat | None:
    """The caller's lossy format (None: exact), checked against the algorithm code; errors as LocalError."""
    fmt = None
    if compression is not None:
        try:
            fmt = value_format(compression)
        except TypeError as exc:
            raise LocalError(1, exc) from None
        except ValueError as exc:
            raise LocalError(2, exc) from None
    if code > 0 and fmt is None and not algorithms.BY_ID[code].exact:
        raise LocalError(2, ValueError(f"algorithm {algorithms.BY_ID[code].name!r} is lossy: pass compression= "
                                        "(QSGD, Cast or OneBit)"))
    return fmt




def isparse_allreduce(indices, values, n: int, comm: MPI.Intracomm = MPI.COMM_WORLD, **kwargs) -> nonblocking.Request:
    """Nonblocking :func:`sparse_allreduce`; the request's :meth:`~scaleml.nonblocking.Request.result` is its
    return value."""
    return nonblocking.start(sparse_allreduce, comm, indices, values, n, **kwargs)

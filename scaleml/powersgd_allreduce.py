"""PowerSGD over ScaleML's collectives: :func:`powersgd_allreduce` of one bucket of gradient tensors.

The algorithm and its state are :class:`scaleml.compress.powersgd.PowerSGD`;
this module gives it its two sums: the exact one is ``MPI_Allreduce`` on the
communicator passed (the exact path of :class:`scaleml.train.GradientReducer`
and of the DDP hook; a :class:`scaleml.Comm` takes its drop-in), and the
factors' is that too, or :func:`scaleml.quantized_allreduce` with the
state's ``factor_compression`` (``quantized_ring``: one algorithm, so runs are
reproducible bit for bit). Both return the same bits on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from ._tensors import as_numpy
from .compress.powersgd import PowerSGD
from .quantized import quantized_allreduce

__all__ = ["FACTOR_ALGORITHM", "PowerSGDInfo", "powersgd_allreduce"]

FACTOR_ALGORITHM = "quantized_ring"
"""The algorithm of the quantized factor AllReduces."""


@dataclass(frozen=True)
class PowerSGDInfo:
    """What one :func:`powersgd_allreduce` call did."""

    bytes_sent: int
    """Bytes this rank sent: the quantized collectives' own count, the ring figure ``2 (P-1)/P`` of the
    buffer for ``MPI_Allreduce``."""
    collectives: int
    """Collective calls (1 in the exact phase, else 2 with exact factors, 3 with quantized factors and
    exact tensors in the bucket)."""
    compressed: bool
    """Whether PowerSGD ran (False in the exact phase, or when no tensor of the bucket is compressed)."""


def powersgd_allreduce(x, comm: MPI.Intracomm, state: PowerSGD, *, shapes: Sequence[Sequence[int]] | None = None,
                       bucket: str = "bucket0", average: bool = True, step: int | None = None,
                       return_info: bool = False):
    """Average (or sum) a flat bucket of gradient tensors over the ranks with PowerSGD, in place (collective).

    Parameters
    ----------
    x : numpy.ndarray or CPU torch.Tensor
        The flat bucket: float32 or float64, C-contiguous, writable; the same size, dtype and ``shapes``
        on every rank.
    comm : mpi4py.MPI.Intracomm
        The data-parallel communicator.
    state : PowerSGD
        The configuration and state (one per reducer or hook, built alike on every rank).
    shapes : sequence of shapes, optional
        The tensors the bucket holds, in order (default: one tensor, ``x``'s shape).
    bucket : str
        The bucket's name (``bucket<i>``): it keys the state.
    average : bool
        Divide by the number of ranks (default).
    step : int, optional
        The training step (default ``state.step``); the caller advances ``state`` once per step.
    return_info : bool
        Also return a :class:`PowerSGDInfo`.

    Returns
    -------
    numpy.ndarray or torch.Tensor, or a tuple ``(x, PowerSGDInfo)``
        ``x``, holding the result: identical on every rank, bitwise.
    """
    a = as_numpy(x, "x")
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be a float32 or float64 array, got {getattr(a, 'dtype', type(a).__name__)}")
    if not (a.flags.c_contiguous and a.flags.writeable):
        raise ValueError("x must be C-contiguous and writable (the result is written in place)")
    flat = a.reshape(-1)
    P = comm.Get_size()
    calls = [0]

    def sum_exact(buf: np.ndarray) -> int:
        calls[0] += 1
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return 2 * (P - 1) * buf.nbytes // P if P > 1 else 0

    def sum_quantized(buf: np.ndarray) -> int:
        calls[0] += 1
        _, info = quantized_allreduce(buf, comm, state.factor_compression, algorithm=FACTOR_ALGORITHM, out=buf,
                                      return_info=True)
        return int(info.bytes_sent)

    compressed = state.compresses(step)
    sent = state.reduce(bucket, flat, [a.shape] if shapes is None else shapes, sum_exact,
                        sum_exact if state.factor_compression is None else sum_quantized, world_size=P,
                        average=average, step=step)
    if not return_info:
        return x
    return x, PowerSGDInfo(int(sent), calls[0], compressed and calls[0] > 1)

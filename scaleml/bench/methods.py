"""The benchmark methods: :class:`Case`, the registry (:func:`register`) and every method it holds.

A method is one registration: a factory that receives the case and returns a
callable performing one collective and returning the dense result, the bytes
this rank sent and the algorithm that ran. Lossless methods (the
``MPI_Allreduce`` baseline, every sparse algorithm, ``auto`` and the drop-in)
are registered at import; lossy ones (``--compression NAME``) on demand by
:func:`register_compression`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from .. import algorithms, compress
from ..comm import Comm
from ..sparse import sparse_allreduce


@dataclass
class Case:
    """One benchmark case as every rank sees it."""

    comm: MPI.Intracomm
    n: int
    dtype: np.dtype
    density: float
    pattern: str
    indices: np.ndarray
    values: np.ndarray
    dense: np.ndarray  # the same vector, dense


Runner = Callable[[], "tuple[np.ndarray, int, str]"]
METHODS: dict[str, Callable[[Case], Runner]] = {}
LOSSLESS: set[str] = set()


def register(name: str, lossless: bool = True) -> Callable[[Callable[[Case], Runner]], Callable[[Case], Runner]]:
    """Register a benchmark method: ``factory(case) -> run``, ``run() -> (dense result, bytes sent, algorithm)``."""

    def wrap(factory: Callable[[Case], Runner]) -> Callable[[Case], Runner]:
        METHODS[name] = factory
        if lossless:
            LOSSLESS.add(name)
        return factory

    return wrap


BASELINE = "mpi_allreduce"


def _plain_mpi_allreduce(name: str) -> Callable[[Case], Runner]:
    def factory(case: Case) -> Runner:
        out = np.empty_like(case.dense)
        ring_bytes = _ring_bytes(case)  # MPI does not report its traffic

        def run():
            case.comm.Allreduce(case.dense, out, MPI.SUM)
            return out, ring_bytes, name

        return run

    return factory


register(BASELINE)(_plain_mpi_allreduce(BASELINE))
# The baseline timed again after the other methods: an A/A control whose speedup shows the run's noise.
register("mpi_allreduce_again")(_plain_mpi_allreduce("mpi_allreduce_again"))


def _sparse_method(algorithm: str) -> Callable[[Case], Runner]:
    def factory(case: Case) -> Runner:
        def run():
            result, info = sparse_allreduce(case.indices, case.values, case.n, case.comm, algorithm,
                                            return_info=True)
            return result, info.bytes_sent, info.algorithm

        return run

    return factory


# The exact algorithms only: the lossy ones need a format (compression=).
for _alg in ("auto", *(a.name for a in algorithms.REGISTRY.values() if a.exact)):
    register(_alg)(_sparse_method(_alg))


@register("dropin")
def _dropin(case: Case) -> Runner:
    """scaleml.Comm.Allreduce on the dense buffer: sparsity detection included."""
    return _dropin_runner(case, Comm(case.comm))


BUILTIN: tuple[str, ...] = tuple(METHODS)
"""The methods registered at import: what ``--methods all`` runs."""


def _ring_bytes(case: Case, itemsize: int | None = None) -> int:
    """Bytes a rank sends in a ring AllReduce of the case's vector (MPI and gloo do not report theirs)."""
    P = case.comm.Get_size()
    return 2 * (P - 1) * case.n * (itemsize or case.dtype.itemsize) // P


def _dropin_runner(case: Case, comm: Comm) -> Runner:
    out = np.empty_like(case.dense)
    ring_bytes = _ring_bytes(case)

    def run():
        comm.Allreduce(case.dense, out, MPI.SUM)
        info = comm.last_info
        # No info: the drop-in went straight to MPI_Allreduce (an MPI period), which sends the ring's bytes.
        return out, info.bytes_sent if info else ring_bytes, info.algorithm if info else BASELINE

    return run


# ---- compressed methods (lossy): --compression NAME ... -----------------------------------

def _allgather_compressed(make: Callable[[Case], compress.Compressor], name: str) -> Callable[[Case], Runner]:
    """Each rank compresses its dense vector, the messages are allgathered, every rank decodes and sums."""

    def factory(case: Case) -> Runner:
        compressor = make(case)
        comm, P = case.comm, case.comm.Get_size()

        def run():
            message = compressor.encode(case.dense)
            sizes = comm.allgather(message.nbytes)
            displs = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int)
            gathered = np.empty(int(sum(sizes)), np.uint8)
            comm.Allgatherv(message.buffer, [gathered, (sizes, displs), MPI.BYTE])
            total = np.zeros(case.n, case.dtype)
            part = np.empty(case.n, case.dtype)
            for j in range(P):
                total += compress.decode(gathered[displs[j]:displs[j] + sizes[j]], out=part)
            ring_bytes = sum(sizes) - sizes[(comm.Get_rank() + 1) % P]  # a ring allgather's share
            return total, ring_bytes, name

        return run

    return factory


def _topk_sparse(ratio: float, name: str) -> Callable[[Case], Runner]:
    """TopK of each rank's dense vector, summed by the sparse AllReduce (auto)."""

    def factory(case: Case) -> Runner:
        topk = compress.TopK(ratio=ratio)

        def run():
            idx, vals = compress.TopK.entries(topk.encode(case.dense))
            result, info = sparse_allreduce(idx, vals, case.n, case.comm, "auto", return_info=True)
            return result, info.bytes_sent, info.algorithm

        return run

    return factory


def register_compression(name: str) -> str:
    """Register the lossy method NAME: qsgdB (B = 1..8 bits, max norm, buckets of 512), onebit, fp16, bf16,
    or topkR (R a ratio such as 0.01, then the sparse AllReduce)."""
    if name in METHODS:
        return name
    if m := re.fullmatch(r"qsgd([1-8])", name):
        bits = int(m.group(1))
        factory = _allgather_compressed(
            lambda case: compress.QSGD(bits=bits, bucket=512, norm="max", rank=case.comm.Get_rank()), name)
    elif name == "onebit":
        factory = _allgather_compressed(lambda case: compress.OneBit(bucket=512, rank=case.comm.Get_rank()), name)
    elif name in ("fp16", "bf16"):
        factory = _allgather_compressed(lambda case: compress.Cast(name, rank=case.comm.Get_rank()), name)
    elif (m := re.fullmatch(r"topk(0?\.\d+|1(\.0*)?)", name)) and 0 < float(m.group(1)) <= 1:
        factory = _topk_sparse(float(m.group(1)), name)
    else:
        raise ValueError(f"unknown compression {name!r}: use qsgd1..qsgd8, onebit, fp16, bf16 or topkR (0 < R <= 1)")
    register(name, lossless=False)(factory)
    return name

"""The benchmark methods: :class:`Case`, the registry (:func:`register`) and every method it holds.

A method is one registration: a factory that receives the case and returns a
callable performing one collective and returning the dense result, the bytes
this rank sent and the algorithm that ran. Lossless methods (the
``MPI_Allreduce`` baseline, every exact algorithm of the registry, ``auto`` and
the drop-in) are registered at import; lossy ones and the ``torch.distributed``
baselines (``--compression NAME``) on demand by :func:`register_compression`,
whose names are listed in :data:`COMPRESSION_NAMES`.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

import scaleml

from .. import algorithms, compress
from .._network import NoCommonNetwork, rendezvous
from ..comm import Comm
from ..compress.names import parse_compression, parse_format
from ..powersgd_allreduce import powersgd_allreduce
from ..quantized import quantized_allreduce
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
"""One collective: returns (dense result, bytes this rank sent, algorithm). A runner may carry a ``prepare``
attribute, a callable that :func:`scaleml.bench.measure.measure` calls untimed before each call (an in-place
collective restores its input there)."""
METHODS: dict[str, Callable[[Case], Runner]] = {}
LOSSLESS: set[str] = set()
COLLECTIVES: dict[str, str] = {}
"""The collective each method's traffic is (:data:`BUS_FACTORS` key): ``allreduce`` for every method whose
ranks exchange partial sums (MPI, the sparse and quantized algorithms, gloo), ``allgather`` for those that
gather every rank's whole contribution (``allgather:FORMAT``). It sets the bus bandwidth's factor."""
SETUP: dict[str, Callable[[MPI.Intracomm], None]] = {}
"""Collective set-up of a method, run once on every rank before the sweep; raises :class:`MethodUnavailable`
(on every rank alike) when the method cannot run here."""


def register(name: str, lossless: bool = True,
             collective: str = "allreduce") -> Callable[[Callable[[Case], Runner]], Callable[[Case], Runner]]:
    """Register a benchmark method: ``factory(case) -> run``, ``run() -> (dense result, bytes sent, algorithm)``.

    Parameters
    ----------
    name : str
        The method's name (``--methods``/``--compression``, the rows' ``method``).
    lossless : bool
        Whether its result is the exact sum (up to rounding).
    collective : str
        The collective its traffic is, a key of :data:`BUS_FACTORS` (its bus bandwidth's factor).

    Returns
    -------
    Callable
        A decorator that registers the factory and returns it unchanged.
    """
    if collective not in BUS_FACTORS:
        raise ValueError(f"unknown collective {collective!r}: use one of {sorted(BUS_FACTORS)}")

    def wrap(factory: Callable[[Case], Runner]) -> Callable[[Case], Runner]:
        METHODS[name] = factory
        COLLECTIVES[name] = collective
        if lossless:
            LOSSLESS.add(name)
        else:
            LOSSLESS.discard(name)
        return factory

    return wrap


BUS_FACTORS: dict[str, Callable[[int], float]] = {
    "allreduce": lambda P: 2 * (P - 1) / P,
    "allgather": lambda P: (P - 1) / P,
    "reduce_scatter": lambda P: (P - 1) / P,
    "broadcast": lambda P: 1.0,
    "reduce": lambda P: 1.0,
}
"""nccl-tests' bus bandwidth factors (``busbw = algbw * factor(P)``), per collective."""
DATA_SIZE: dict[str, Callable[[int, int], int]] = {
    "allreduce": lambda size, P: size,
    "allgather": lambda size, P: size * P,
    "reduce_scatter": lambda size, P: size,
    "broadcast": lambda size, P: size,
    "reduce": lambda size, P: size,
}
"""nccl-tests' data size of a collective (its ``algbw`` numerator) from the bytes of one rank's vector: the
vector for AllReduce, ReduceScatter (the input), Broadcast and Reduce; the gathered output, P vectors, for
AllGather."""


def bus_bandwidth_factor(collective: str, ranks: int) -> float:
    """nccl-tests' factor from algorithm bandwidth to bus bandwidth.

    Parameters
    ----------
    collective : str
        ``allreduce`` (2(P-1)/P), ``allgather`` or ``reduce_scatter`` ((P-1)/P), ``broadcast`` or ``reduce`` (1).
    ranks : int
        Number of ranks P (at least 1).

    Returns
    -------
    float
        ``busbw / algbw``: the fraction of the data each rank's link carries in an optimal algorithm.

    Raises
    ------
    ValueError
        An unknown collective or fewer than one rank.
    """
    if collective not in BUS_FACTORS:
        raise ValueError(f"unknown collective {collective!r}: use one of {sorted(BUS_FACTORS)}")
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, not {ranks}")
    return float(BUS_FACTORS[collective](ranks))


def bandwidths(collective: str, size_bytes: int, ranks: int, seconds: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 B/s) of one collective call, as nccl-tests computes them.

    Parameters
    ----------
    collective : str
        A key of :data:`BUS_FACTORS`.
    size_bytes : int
        Bytes of one rank's dense vector (the rows' ``size_bytes``).
    ranks : int
        Number of ranks P.
    seconds : float
        Time of one call; 0 gives bandwidths of 0.

    Returns
    -------
    tuple of float
        ``algbw = data size / time`` (:data:`DATA_SIZE`: the vector for AllReduce, P vectors for AllGather)
        and ``busbw = algbw * bus_bandwidth_factor(collective, ranks)``.
    """
    factor = bus_bandwidth_factor(collective, ranks)
    algbw = DATA_SIZE[collective](size_bytes, ranks) / seconds / 1e9 if seconds > 0 else 0.0
    return algbw, algbw * factor


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


# The exact algorithms only: the lossy ones need a format (``quantized_ring:qsgd4``, see register_compression).
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



# ---- lossy methods and torch.distributed baselines: --compression NAME ... ----------------

FORMAT_NAMES = "qsgdB (B = 1..8 bits, L2 norm), qsgdBmax (max norm), fp16, bf16, onebit; buckets of 512"
_LOSSY_ALGORITHMS = algorithms.LOSSY  # those that take the formats of compression=
_SPARSE_ALGORITHMS = tuple(a.name for a in algorithms.REGISTRY.values() if a.exact and "dense" not in a.input_forms)

DEFAULT_COMPRESSION = (
    "qsgd4", "qsgd8", "qsgd4max", "fp16", "bf16", "onebit", "quantized_ring:qsgd4", "quantized_rhd:qsgd4",
    "quantized_direct:qsgd4", "onebit_ef", "topk0.01", "topk0.01+qsgd8", "switch:qsgd4", "dropin:qsgd4",
    "allgather:qsgd4", "gloo_fp32", "gloo_fp16",
)
"""What ``--compression all`` runs."""
COMPRESSION_NAMES = (
    "FORMAT: scaleml.quantized_allreduce (auto); "
    f"ALG:FORMAT with ALG one of {', '.join(_LOSSY_ALGORITHMS)}: that algorithm forced; "
    "FORMAT_ef (e.g. onebit_ef): quantized_direct with error feedback on both sides; "
    "topkR, topkR+FORMAT (0 < R <= 1, e.g. topk0.01+qsgd8): scaleml.topk_allreduce with error feedback, "
    "values exact or in FORMAT; switch:FORMAT: sparse_allreduce of the case's sparse data with compression= "
    "(the sparse-to-quantized switch); switch_ALG:FORMAT with ALG one of "
    f"{', '.join(_SPARSE_ALGORITHMS)}: that sparse algorithm forced, with the switch; "
    "dropin:FORMAT: scaleml.Comm(compression=).Allreduce; "
    "allgather:FORMAT: every rank allgathers the P compressed vectors (bytes grow with P); "
    "gloo_fp32, gloo_fp16: torch.distributed all_reduce (gloo); "
    "powersgdR, powersgdR_q8 (R >= 1): PowerSGD of rank R of the vector viewed as a ceil(sqrt(n)) x "
    "ceil(n / ceil(sqrt(n))) matrix (zero-padded), error feedback and warm start, no exact phase; _q8: factors "
    "in QSGD(bits=8); "
    f"all: {' '.join(DEFAULT_COMPRESSION)}. FORMAT: {FORMAT_NAMES}"
)
"""What :func:`register_compression` accepts (the CLI's help and its error for unknown names)."""


class MethodUnavailable(RuntimeError):
    """A known method that this installation cannot run (PyTorch, or ``scaleml.topk_allreduce``, missing)."""


def make_format(spec: str, rank: int) -> compress.Compressor:
    """The compressor of a format name (:data:`FORMAT_NAMES`).

    Parameters
    ----------
    spec : str
        ``qsgdB`` (L2 norm, QSGD's default), ``qsgdBmax``, ``fp16``, ``bf16`` or ``onebit``.
    rank : int
        This rank (keys the compressor's random stream; the seed is 0 on every rank).

    Returns
    -------
    scaleml.compress.Compressor
        A fresh compressor (its step counter at 0).
    """
    if not _is_format(spec):
        raise ValueError(f"unknown format {spec!r}: use {FORMAT_NAMES}")
    compressor = parse_format(spec).compressor(rank=rank)  # the buckets at their default, 512
    assert compressor is not None
    return compressor


def _is_format(text: str) -> bool:
    """Whether ``text`` names a value format (:data:`FORMAT_NAMES`; :func:`scaleml.compress.names.parse_format`)."""
    try:
        parse_format(text)
    except ValueError:
        return False
    return True


def _quantized(spec: str, algorithm: str, feedback: bool) -> Callable[[Case], Runner]:
    """scaleml.quantized_allreduce of the dense vector; with ``feedback``, error feedback on both sides."""

    def factory(case: Case) -> Runner:
        fmt = make_format(spec, case.comm.Get_rank())
        # One ErrorFeedback per case: its residuals carry over from call to call, as in training.
        ef = compress.ErrorFeedback(fmt) if feedback else None
        out = np.empty_like(case.dense)

        def run():
            result, info = quantized_allreduce(case.dense, case.comm, None if ef else fmt, error_feedback=ef,
                                               algorithm=algorithm, out=out, return_info=True)
            return result, info.bytes_sent, info.algorithm

        return run

    return factory


def _topk(ratio: float, spec: str | None, topk_allreduce: Callable) -> Callable[[Case], Runner]:
    """scaleml.topk_allreduce of the dense vector with error feedback; values exact or in the format ``spec``."""

    def factory(case: Case) -> Runner:
        ef = compress.ErrorFeedback(compress.TopK(ratio=ratio, rank=case.comm.Get_rank()))
        fmt = make_format(spec, case.comm.Get_rank()) if spec else None
        out = np.empty_like(case.dense)  # as a training loop would: the gradient buffer is reused

        def run():
            result, info = topk_allreduce(case.dense, case.comm, error_feedback=ef, compression=fmt, out=out,
                                          return_info=True)
            return result, info.bytes_sent, info.algorithm

        return run

    return factory


def _switch(spec: str, algorithm: str = "auto") -> Callable[[Case], Runner]:
    """sparse_allreduce of the case's sparse data with compression=: dense partial sums continue quantized."""

    def factory(case: Case) -> Runner:
        fmt = make_format(spec, case.comm.Get_rank())

        def run():
            result, info = sparse_allreduce(case.indices, case.values, case.n, case.comm, algorithm,
                                            compression=fmt, return_info=True)
            return result, info.bytes_sent, info.algorithm

        return run

    return factory


def _dropin_lossy(spec: str) -> Callable[[Case], Runner]:
    """scaleml.Comm(compression=...).Allreduce on the dense buffer (MPI_Allreduce stays its exact fallback)."""

    def factory(case: Case) -> Runner:
        return _dropin_runner(case, Comm(case.comm, compression=make_format(spec, case.comm.Get_rank())))

    return factory


def _allgather_compressed(spec: str) -> Callable[[Case], Runner]:
    """Each rank compresses its dense vector, the messages are allgathered, every rank decodes and sums: the
    baseline whose bytes grow with P."""

    def factory(case: Case) -> Runner:
        compressor = make_format(spec, case.comm.Get_rank())
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
            return total, ring_bytes, "allgather"

        return run

    return factory


def powersgd_matrix_shape(n: int) -> tuple[int, int]:
    """The matrix the ``powersgdR`` methods view an n-vector as: ``ceil(sqrt(n))`` rows (torch's
    ``batched_powerSGD_hook`` squares its bucket the same way), zero-padded to full rows."""
    rows = max(1, int(np.ceil(np.sqrt(n))))
    return rows, max(1, -(-n // rows))


def _powersgd(name: str) -> Callable[[Case], Runner]:
    """PowerSGD of the dense vector as one matrix (:func:`powersgd_matrix_shape`): the sum's rank-R
    approximation. Its state (residual, warm-started Q) carries over from call to call, as in training."""

    def factory(case: Case) -> Runner:
        state = parse_compression(name, ("powersgd",)).powersgd(rank=case.comm.Get_rank())
        assert state is not None
        state.start_iter = 0  # the compressed path from the first call: the exact phase would time MPI
        rows, cols = powersgd_matrix_shape(case.n)
        buf = np.zeros(rows * cols, case.dtype)

        def prepare() -> None:
            buf[:case.n] = case.dense  # reduced in place: every call starts from the data
            buf[case.n:] = 0

        def run():
            _, info = powersgd_allreduce(buf, case.comm, state, shapes=[(rows, cols)], bucket="bucket0",
                                         average=False, return_info=True)
            state.advance()
            return buf[:case.n], info.bytes_sent, name

        run.prepare = prepare  # type: ignore[attr-defined]
        return run

    return factory


# ---- torch.distributed (gloo) baselines ---------------------------------------------------

def torch_unavailable() -> str | None:
    """Why the gloo baselines cannot run here (None: they can). Imports torch, which takes a second or two."""
    # c10d warns on every connection whose peer address has no host name (the emulated cluster's): noise in
    # the table's stream. Set before torch's first import, which reads it.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        import torch.distributed as dist
    except ImportError as exc:
        return f"PyTorch is not importable ({exc}); install it with pip install 'scaleml[torch]'"
    if not (dist.is_available() and dist.is_gloo_available()):
        return "this PyTorch build has no torch.distributed gloo backend"
    return None


_GLOO: dict[str, object] = {}


def gloo_setup(comm: MPI.Intracomm) -> None:
    """Start torch.distributed's gloo process group over the ranks of ``comm`` (collective, once per process).

    Rank 0 picks a free port on an address every rank reaches (:func:`scaleml._network.rendezvous`) and
    broadcasts it; each rank sets ``GLOO_SOCKET_IFNAME`` (unless set) to its interface on that network. Raises
    :class:`MethodUnavailable` on every rank when any rank could not join.
    """
    if _GLOO:
        if _GLOO["size"] != comm.Get_size():
            raise MethodUnavailable("the gloo process group was started over another number of ranks")
        return
    reason = torch_unavailable()
    if comm.allreduce(reason is not None, MPI.LOR):
        raise MethodUnavailable(comm.bcast(reason or "PyTorch is not importable on every rank", root=0))
    import torch
    import torch.distributed as dist

    rank, P = comm.Get_rank(), comm.Get_size()
    try:
        address, port = rendezvous(comm)
    except NoCommonNetwork as exc:
        raise MethodUnavailable(str(exc)) from None
    # A benchmark of the network: torch's intra-op threads would only compete with the other ranks for cores.
    torch.set_num_threads(1)
    error = None
    try:
        dist.init_process_group("gloo", init_method=f"tcp://{address}:{port}", rank=rank, world_size=P,
                                timeout=datetime.timedelta(seconds=60))
    except Exception as exc:  # noqa: BLE001 (any failure skips the method, on every rank alike)
        error = f"torch.distributed.init_process_group(gloo, tcp://{address}:{port}) failed: {exc}"
    errors = comm.allgather(error)
    if any(errors):
        if dist.is_initialized():
            dist.destroy_process_group()
        raise MethodUnavailable(next(e for e in errors if e))
    _GLOO["size"] = P
    atexit.register(dist.destroy_process_group)


def _gloo(wire: str) -> Callable[[Case], Runner]:
    """torch.distributed.all_reduce (gloo) of a CPU tensor holding the case's data in float32 or float16."""

    def factory(case: Case) -> Runner:
        gloo_setup(case.comm)  # started once; the CLI has started it before the sweep
        import torch
        import torch.distributed as dist

        dtype = {"fp32": torch.float32, "fp16": torch.float16}[wire]
        source = torch.from_numpy(case.dense).to(dtype)  # the data in the wire's type, converted once
        buf = torch.empty_like(source)
        ring_bytes = _ring_bytes(case, source.element_size())  # gloo's ring; it does not report its traffic

        def prepare() -> None:
            buf.copy_(source)  # all_reduce sums in place: every call starts from the data

        def run():
            dist.all_reduce(buf)
            return buf.numpy(), ring_bytes, f"gloo_{wire}"

        run.prepare = prepare  # type: ignore[attr-defined]
        return run

    return factory


# ---- names --------------------------------------------------------------------------------

def _parse(name: str) -> tuple[Callable[[Case], Runner], bool]:
    """(factory, lossless) of a compression name; ValueError when unknown, MethodUnavailable when it cannot run.

    The collective of the name's traffic is :func:`_collective_of`'s."""
    if name in ("gloo_fp32", "gloo_fp16"):
        if reason := torch_unavailable():
            raise MethodUnavailable(reason)
        SETUP[name] = gloo_setup
        return _gloo(name[5:]), name == "gloo_fp32"
    # The formats and topkR are compression names (scaleml.compress.names); the rest is this module's grammar.
    if _is_format(name):
        return _quantized(name, "auto", feedback=False), False
    if name.endswith("_ef") and _is_format(name[:-3]):
        return _quantized(name[:-3], "auto", feedback=True), False
    prefix, colon, spec = name.partition(":")
    if colon and _is_format(spec):
        if prefix in _LOSSY_ALGORITHMS:
            return _quantized(spec, prefix, feedback=False), False
        if prefix.startswith("switch_") and prefix[7:] in _SPARSE_ALGORITHMS:
            return _switch(spec, prefix[7:]), False
        if prefix in ("switch", "dropin", "allgather"):
            factory = {"switch": _switch, "dropin": _dropin_lossy, "allgather": _allgather_compressed}[prefix]
            return factory(spec), False
    if name.startswith("powersgd"):
        try:
            parse_compression(name, ("powersgd",))
        except ValueError:
            raise ValueError(f"unknown compression {name!r}") from None
        return _powersgd(name), False
    sparsifier, plus, values = name.partition("+")
    if sparsifier.startswith("topk") and (not plus or _is_format(values)):
        try:
            ratio = parse_compression(sparsifier, ("topk",)).ratio
        except ValueError:  # a ratio out of (0, 1]: not a name of this benchmark either
            raise ValueError(f"unknown compression {name!r}") from None
        topk_allreduce = getattr(scaleml, "topk_allreduce", None)
        if topk_allreduce is None:  # lands separately: the name is known, this build lacks it
            raise MethodUnavailable("scaleml.topk_allreduce is not in this build")
        return _topk(ratio, values or None, topk_allreduce), False
    raise ValueError(f"unknown compression {name!r}")


def register_compression(name: str) -> str:
    """Register the method NAME of :data:`COMPRESSION_NAMES` (``all`` is the CLI's, not a method).

    Parameters
    ----------
    name : str
        E.g. ``qsgd4``, ``quantized_ring:qsgd4``, ``onebit_ef``, ``topk0.01+qsgd8``, ``switch:qsgd4``,
        ``dropin:qsgd4``, ``allgather:qsgd4``, ``gloo_fp16``.

    Returns
    -------
    str
        ``name``, now a key of :data:`METHODS`.

    Raises
    ------
    ValueError
        The name is not one of :data:`COMPRESSION_NAMES`.
    MethodUnavailable
        A known name that this installation cannot run.
    """
    if name not in METHODS:
        factory, lossless = _parse(name)
        register(name, lossless=lossless, collective=_collective_of(name))(factory)
    return name


def _collective_of(name: str) -> str:
    """The collective of a compression name's traffic: ``allgather:FORMAT`` gathers every rank's compressed
    vector; every other name exchanges partial sums (an AllReduce)."""
    return "allgather" if name.startswith("allgather:") else "allreduce"

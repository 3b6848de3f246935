"""``GradientReducer``: average a model's gradients over ranks through any ScaleML collective, fused in buckets.

Tensors are fused into buckets of at most ``fusion_bytes`` (Horovod's fusion
buffer, DDP's buckets) so that small tensors do not each pay a collective.
Tensors of fewer than ``min_compress_size`` elements are never compressed:
they are fused together and averaged exactly with ``MPI_Allreduce``. The
others go through the path ``compression`` names (see :data:`COMPRESSIONS`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from mpi4py import MPI

from ..adaptive_allreduce import AdaptiveAllreduceState, adaptive_allreduce
from ..comm import Comm
from ..compress import ErrorFeedback
from ..compress.names import CompressionSpec, parse_compression
from ..compress.policy import UNMATCHED, CompressionPolicy
from ..compress.powersgd import PowerSGD
from ..powersgd_allreduce import powersgd_allreduce
from ..quantized import quantized_allreduce
from ..reshard import reshard_state_dicts
from ..sparse import sparse_allreduce
from ..topk_allreduce import topk_allreduce

__all__ = ["COMPRESSIONS", "Bucket", "CompressionPolicy", "CompressionSpec", "GradientReducer", "parse_compression",
           "plan_buckets", "plan_policy_buckets"]

COMPRESSIONS = {
    "none": "exact MPI_Allreduce (mpi4py)",
    "dropin": "scaleml.Comm(comm).Allreduce: the drop-in, sparse algorithms when they are faster (exact)",
    "sparse": "scaleml.sparse_allreduce of the non-zeros (exact)",
    "topkR": "scaleml.topk_allreduce of the fraction R (e.g. topk0.01) with ErrorFeedback(TopK(ratio=R))",
    "qsgdB": "scaleml.quantized_allreduce with QSGD(bits=B), B in 1..8 (qsgdB_ef: with error feedback; "
             "qsgdBmax: norm='max')",
    "onebit": "scaleml.quantized_allreduce with ErrorFeedback(OneBit()) (error feedback on both sides)",
    "adaptive": "scaleml.adaptive_allreduce per tensor (adaptivePI: proportion 1/PI sent, default PI = 32)",
    "fp16": "scaleml.quantized_allreduce with Cast('fp16') (bf16: Cast('bf16'))",
    "powersgdR": "PowerSGD of rank R per tensor of a bucket (e.g. powersgd4), error feedback and warm start, exact "
                 "for the first 10 steps; powersgdR_q8: its factors summed with QSGD(bits=8)",
}
"""The ``compression`` names and what each runs (parsed by :func:`scaleml.compress.names.parse_compression`)."""


@dataclass(frozen=True)
class Bucket:
    """Tensors reduced by one collective call."""

    index: int
    members: tuple[int, ...]
    """Indices of the tensors, in order."""
    offsets: tuple[int, ...]
    """Start of each member in the fused buffer (elements)."""
    size: int
    """Elements in all."""
    dtype: np.dtype
    compressed: bool
    """Through the compression path (else exact MPI_Allreduce)."""
    rule: int | None = None
    """With a compression policy: the index of the rule of its tensors (None: no rule matched them, or no policy)."""

    @property
    def name(self) -> str:
        """The bucket's name in the error-feedback state."""
        return f"bucket{self.index}"

    @property
    def nbytes(self) -> int:
        """Bytes of the fused buffer."""
        return self.size * self.dtype.itemsize


def plan_buckets(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any], *, fusion_bytes: int,
                 min_compress_size: int, compress: bool = True, fuse_compressed: bool = True) -> list[Bucket]:
    """Assign tensors to buckets: the fusion plan of :class:`GradientReducer`.

    Tensors are taken in order; each goes to the open bucket of its class
    (compressed or not, and dtype) when the bucket stays within
    ``fusion_bytes``, else it closes that bucket and opens a new one. A
    tensor larger than ``fusion_bytes`` is a bucket of its own (tensors are
    never split). A tensor is compressed when ``compress`` and it has at least
    ``min_compress_size`` elements; compressed tensors each get their own
    bucket when not ``fuse_compressed`` (adaptive quantization works on
    matrices). Buckets are numbered by their first tensor.

    Parameters
    ----------
    shapes, dtypes : sequences
        Shape and dtype of every tensor.
    fusion_bytes : int
        Largest fused buffer in bytes (0: no fusion).
    min_compress_size : int
        Tensors with fewer elements stay uncompressed.
    compress : bool
        Whether there is a compression path at all.
    fuse_compressed : bool
        Whether compressed tensors may share a bucket.

    Returns
    -------
    list of Bucket
    """
    if len(shapes) != len(dtypes):
        raise ValueError(f"{len(shapes)} shapes but {len(dtypes)} dtypes")
    # one rule for every tensor: the policy plan without a policy
    plan = plan_policy_buckets(shapes, dtypes, [0] * len(shapes), [compress], [fuse_compressed],
                               fusion_bytes=fusion_bytes, min_compress_size=min_compress_size)
    return [replace(b, rule=None) for b in plan]


def plan_policy_buckets(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any], rules: Sequence[int | None],
                        compressing: Sequence[bool], fusing: Sequence[bool], *, fusion_bytes: int,
                        min_compress_size: int) -> list[Bucket]:
    """The fusion plan of a :class:`GradientReducer` with a compression policy.

    As :func:`plan_buckets`, with the rule as part of each tensor's class:
    tensors of different rules never share a bucket. A tensor is compressed
    when its rule compresses (``compressing[rule]``) and it has at least
    ``min_compress_size`` elements; the exact tensors of a rule (its small
    ones, or all of a ``none`` rule's) fuse among themselves, and the tensors
    no rule matched (``rules[i]`` None) among themselves.

    Parameters
    ----------
    shapes, dtypes : sequences
        Shape and dtype of every tensor.
    rules : sequence of int or None
        Each tensor's rule index (None: unmatched, exact).
    compressing, fusing : sequences of bool
        Per rule index: whether it compresses at all, and whether its
        compressed tensors may share a bucket (not ``adaptive``).
    fusion_bytes, min_compress_size : int
        As :func:`plan_buckets`.

    Returns
    -------
    list of Bucket
    """
    if fusion_bytes < 0 or min_compress_size < 0:
        raise ValueError(f"fusion_bytes and min_compress_size must be >= 0, got {fusion_bytes} and "
                         f"{min_compress_size}")
    if not len(shapes) == len(dtypes) == len(rules):
        raise ValueError(f"{len(shapes)} shapes, {len(dtypes)} dtypes and {len(rules)} rules")
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    groups: list[list[int]] = []
    group_key: list[tuple[int | None, bool, np.dtype]] = []
    open_group: dict[tuple[int | None, bool, np.dtype], int] = {}
    for i, (n, dt, rule) in enumerate(zip(sizes, (np.dtype(d) for d in dtypes), rules)):
        compressed = rule is not None and compressing[rule] and n >= min_compress_size
        key = (rule, compressed, dt)
        g = open_group.get(key)
        alone = compressed and rule is not None and not fusing[rule]
        if g is not None and not alone and (sum(sizes[j] for j in groups[g]) + n) * dt.itemsize <= fusion_bytes:
            groups[g].append(i)
            continue
        groups.append([i])
        group_key.append(key)
        open_group[key] = len(groups) - 1
    buckets = []
    for index, (members, (rule, compressed, dt)) in enumerate(zip(groups, group_key)):
        offsets = tuple(int(x) for x in np.cumsum([0] + [sizes[j] for j in members[:-1]]))
        buckets.append(Bucket(index, tuple(members), offsets, sum(sizes[j] for j in members), dt, compressed, rule))
    return buckets


@dataclass
class ReducerStats:
    """Cumulative counters of a :class:`GradientReducer` (this rank)."""

    calls: int = 0
    """``reduce`` calls."""
    collectives: int = 0
    """Collective calls (one per bucket and call)."""
    bytes_sent: int = 0
    """Bytes this rank sent: the collectives' ``info.bytes_sent``; for ``MPI_Allreduce``, which does not
    report it, the ring figure ``2 (P-1)/P`` of the buffer."""
    bytes_uncompressed: int = 0
    """What exact ring AllReduces of the same buffers would have sent."""
    seconds_fusion: float = 0.0
    """Copying gradients into fused buffers and back."""
    seconds_compress: float = 0.0
    """Compression done outside the collectives (the non-zero extraction of ``sparse``); the quantizers
    and the top-k selection run inside the collective calls and count in ``seconds_collective``."""
    seconds_collective: float = 0.0
    """Inside the collective calls (communication, and the compression they do)."""
    per_path: dict[str, int] = field(default_factory=dict)
    """Bytes sent per path (``exact`` and the compression's name)."""
    per_rule: dict[str, int] = field(default_factory=dict)
    """With a compression policy: bytes sent per rule (its label ``pattern=name``, and ``unmatched``), exact
    buckets of the rule's small tensors included."""
    elements_compressed: int = 0
    """Elements of the compressed buckets, summed over calls."""
    nonzeros_compressed: int = 0
    """Their non-zeros in this rank's gradients (before any compression or error feedback), summed over calls:
    ``nonzeros_compressed / elements_compressed`` is the measured gradient density (:attr:`density`)."""

    @property
    def density(self) -> float | None:
        """Non-zeros per element of this rank's compressed buckets, over every call so far (None: none yet)."""
        return self.nonzeros_compressed / self.elements_compressed if self.elements_compressed else None

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return {"calls": self.calls, "collectives": self.collectives, "bytes_sent": self.bytes_sent,
                "bytes_uncompressed": self.bytes_uncompressed, "seconds_fusion": self.seconds_fusion,
                "seconds_compress": self.seconds_compress, "seconds_collective": self.seconds_collective,
                "per_path": dict(self.per_path), "per_rule": dict(self.per_rule),
                "elements_compressed": self.elements_compressed, "nonzeros_compressed": self.nonzeros_compressed}


def _ring_bytes(nbytes: int, P: int) -> int:
    return 2 * (P - 1) * nbytes // P if P > 1 else 0


class GradientReducer:
    """Average gradients over the ranks of a communicator through a ScaleML path, fused in buckets.

    Every rank must call :meth:`reduce` with gradients of the same shapes and
    dtypes in the same order; every rank gets the same averaged gradients,
    bitwise (the exact ``MPI_Allreduce`` and every ScaleML collective return
    identical results on all ranks), so replicas that apply the same update
    stay identical.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The data-parallel communicator.
    compression : str
        The path for tensors of at least ``min_compress_size`` elements:
        ``none``, ``dropin``, ``sparse``, ``topkR``, ``qsgdB``, ``qsgdB_ef``,
        ``onebit``, ``adaptive`` or ``adaptivePI``, ``fp16``, ``bf16``,
        ``powersgdR``, ``powersgdR_q8`` (:data:`COMPRESSIONS`). Error feedback, where the path has it, keeps
        one residual per bucket (per tensor for ``adaptive``).
    fusion_bytes : int
        Largest fused buffer in bytes (default 64 MiB, Horovod's; 0: one
        collective per tensor). ``adaptive`` never fuses compressed tensors:
        it quantizes each matrix with its own per-column values.
    min_compress_size : int
        Tensors with fewer elements are fused together and averaged exactly
        with ``MPI_Allreduce``.
    seed : int
        Seed of the stochastic quantizers (QSGD rounding, adaptive sampling).
    algorithm : {"fixed", "auto"}
        ``fixed`` (default): each path runs one algorithm (``split_allgather``
        for ``sparse`` and ``topk``, ``quantized_ring`` for the quantizers,
        ``quantized_direct`` with error feedback), so a run is reproducible
        bit for bit (a resumed run continues exactly). ``auto``: the engine
        chooses by the cost model and the times it measures; faster, identical
        on every rank, but two runs may differ in the last bits.
    policy : CompressionPolicy, mapping or str, optional
        A per-layer compression policy instead of one ``compression`` for all
        (:class:`scaleml.compress.policy.CompressionPolicy`: ordered
        ``{pattern: name}``, first match wins, unmatched tensors exact,
        ``min_compress_size`` still applies). Tensors of different rules
        never share a bucket; each rule has its own compressor and error
        feedback; :attr:`ReducerStats.per_rule` counts each rule's bytes. The
        policy and the names are agreed between ranks at the first
        :meth:`reduce` (a rank that differs makes every rank raise
        ``ValueError``). ``compression`` must then be left at ``none``.
    names : sequence of str, optional
        The tensors' names, in the order :meth:`reduce` takes them (what the
        policy's patterns match); default ``param0``, ``param1``, ...

    Attributes
    ----------
    stats : ReducerStats
        Cumulative bytes and times (this rank).
    buckets : list of Bucket
        The fusion plan (after the first :meth:`reduce`).

    Examples
    --------
    >>> reducer = GradientReducer(MPI.COMM_WORLD, "topk0.01", min_compress_size=1024)
    >>> grads = reducer.reduce(grads)          # in place: the averages over ranks
    >>> np.savez(f"ckpt/rank{MPI.COMM_WORLD.rank}.npz", **reducer.state_dict())
    """

    def __init__(self, comm: MPI.Intracomm, compression: str = "none", *, fusion_bytes: int = 64 << 20,
                 min_compress_size: int = 1024, seed: int = 0, algorithm: str = "fixed",
                 policy: CompressionPolicy | Mapping[str, str] | str | None = None,
                 names: Sequence[str] | None = None) -> None:
        if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
            raise TypeError(f"comm must be an mpi4py intra-communicator, got {type(comm).__name__}")
        if algorithm not in ("fixed", "auto"):
            raise ValueError(f"algorithm must be 'fixed' or 'auto', got {algorithm!r}")
        for what, v in (("fusion_bytes", fusion_bytes), ("min_compress_size", min_compress_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{what} must be a non-negative integer, got {v!r}")
        self.spec = parse_compression(compression)
        self.comm = comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.fusion_bytes, self.min_compress_size = int(fusion_bytes), int(min_compress_size)
        self.seed, self.algorithm = int(seed), algorithm
        self.stats = ReducerStats()
        self.buckets: list[Bucket] = []
        self._layout: list[tuple[tuple[int, ...], str]] | None = None
        self._expected_layout: list[tuple[tuple[int, ...], str]] | None = None
        self._buffers: dict[int, np.ndarray] = {}
        self._carrier: int | None = None
        self._order: list[Bucket] = []
        self._outs: dict[int, np.ndarray] = {}
        self._flag = np.zeros(2, dtype=np.int64)
        self._flag_max = np.zeros(2, dtype=np.int64)
        s = self.spec
        self.compressor: Any = None
        self.error_feedback: ErrorFeedback | None = None
        self.adaptive: AdaptiveAllreduceState | None = None
        self._dropin: Comm | None = None
        self.compressor = s.compressor(seed=self.seed, rank=self.rank)
        if s.kind == "adaptive":
            self.adaptive = AdaptiveAllreduceState(pi=s.pi, seed=self.seed)
        elif s.kind == "dropin":
            self._dropin = Comm(comm)
        if s.error_feedback and self.compressor is not None:
            self.error_feedback = ErrorFeedback(self.compressor)
        # PowerSGD: its own state (Q factors, residuals, step), advanced once per reduce call.
        self.powersgd: PowerSGD | None = s.powersgd(seed=self.seed, rank=self.rank)
        self._init_policy(policy, names)

    # ---- the compression policy -----------------------------------------------------------------

    def _init_policy(self, policy: CompressionPolicy | Mapping[str, str] | str | None,
                     names: Sequence[str] | None) -> None:
        """Parse the policy and the names; one reducer of one compression per compressing rule (its path)."""
        self.policy: CompressionPolicy | None = None
        self.names: list[str] | None = None
        self._rule_reducers: dict[int, GradientReducer] = {}
        self._rules: list[int | None] = []
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise ValueError("names must be a sequence of strings (the tensors' names, in order)")
            names = list(names)
            if len(set(names)) != len(names):
                twice = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"names must be unique; {twice[:3]} appear more than once")
            self.names = names
        if policy is None:
            return
        if self.spec.kind != "none":
            raise ValueError(f"give a compression ({self.spec.name!r}) or a policy, not both")
        self.policy = CompressionPolicy.parse(policy)
        for rule in self.policy.rules:
            if rule.spec.kind != "none":
                # A reducer of the rule's one compression: its path, compressor and error feedback serve the
                # rule's buckets (its counters are this reducer's).
                child = GradientReducer(self.comm, rule.spec.name, fusion_bytes=self.fusion_bytes,
                                        min_compress_size=self.min_compress_size, seed=self.seed,
                                        algorithm=self.algorithm)
                child.stats = self.stats
                self._rule_reducers[rule.index] = child

    def _check_names(self, grads: Sequence[np.ndarray]) -> str | None:
        """What is wrong with the number of gradients against the names (None: nothing)."""
        if self.names is not None and isinstance(grads, list) and len(grads) != len(self.names):
            return f"{len(grads)} gradients for {len(self.names)} names"
        return None

    def _policy_identity(self) -> tuple[str, str] | None:
        """What ranks agree on at setup: the digest of the policy and the names, and the policy's text."""
        if self.policy is None:
            return None
        return self.policy.digest(self.names or ()), str(self.policy)

    def _plan_policy(self, layout: Sequence[tuple[tuple[int, ...], str]]) -> list[Bucket]:
        """Match the names to the rules (warning once about rules that take nothing) and plan the buckets."""
        assert self.policy is not None
        names = self.names if self.names is not None else [f"param{i}" for i in range(len(layout))]
        matched = self.policy.assign(names)
        self._rules = [r.index if r is not None else None for r in matched]
        rules = self.policy.rules
        compressing = [r.spec.kind != "none" for r in rules]
        fusing = [r.spec.kind != "adaptive" for r in rules]  # adaptive quantizes each matrix alone
        buckets = plan_policy_buckets([s for s, _ in layout], [d for _, d in layout], self._rules, compressing, fusing,
                                      fusion_bytes=self.fusion_bytes, min_compress_size=self.min_compress_size)
        for b in buckets:
            child = self._rule_reducers.get(b.rule) if b.rule is not None else None
            if b.compressed and child is not None and child.spec.kind == "topk":
                child._outs[b.index] = np.empty(b.size, dtype=b.dtype)
        return buckets

    def _bucket_path(self, b: Bucket) -> str:
        """The name of the path a bucket takes (``exact`` or a compression), for :attr:`ReducerStats.per_path`."""
        if not b.compressed:
            return "exact"
        if self.policy is None or b.rule is None:
            return self.spec.name
        return self.policy.rules[b.rule].spec.name

    def _count_rule(self, b: Bucket, sent: int) -> None:
        """Add a bucket's bytes to its rule's counter (with a policy)."""
        if self.policy is not None:
            label = self.policy.rules[b.rule].label if b.rule is not None else UNMATCHED
            self.stats.per_rule[label] = self.stats.per_rule.get(label, 0) + sent

    @property
    def assignment(self) -> list[tuple[str, str, str]]:
        """With a policy, after the first :meth:`reduce`: ``(name, rule label, path)`` of every tensor.

        The label is the rule's ``pattern=name`` (``unmatched`` when no rule
        matched); the path is ``exact`` or the compression that runs (a
        tensor below ``min_compress_size`` is exact under any rule).
        """
        if self.policy is None or not self.buckets:
            return []
        names = self.names if self.names is not None else [f"param{i}" for i in range(len(self._rules))]
        out: list[tuple[str, str, str]] = [("", "", "")] * len(names)
        for b in self.buckets:
            label = self.policy.rules[b.rule].label if b.rule is not None else UNMATCHED
            for i in b.members:
                out[i] = (names[i], label, self._bucket_path(b))
        return out

    # ---- the plan -------------------------------------------------------------------------------

    def _check_local(self, grads: Sequence[np.ndarray]) -> str | None:
        """What is wrong with this rank's gradients (None: nothing)."""
        if not isinstance(grads, (list, tuple)):
            return f"grads must be a list of numpy arrays, got {type(grads).__name__}"
        for i, g in enumerate(grads):
            if not isinstance(g, np.ndarray) or g.dtype not in (np.float32, np.float64):
                return f"gradient {i} must be a float32 or float64 numpy array, got " \
                       f"{getattr(g, 'dtype', type(g).__name__)}"
            if not (g.flags.c_contiguous and g.flags.writeable):
                return f"gradient {i} must be C-contiguous and writable (the averages are written in place)"
        layout = [(tuple(g.shape), g.dtype.str) for g in grads]
        expected = self._layout if self._layout is not None else self._expected_layout
        if expected is not None and layout != expected:
            return f"the gradients' shapes and dtypes changed from {_describe(expected)} to {_describe(layout)}"
        return None

    def _agree_local(self, problem: str | None) -> None:
        """Raise ValueError on every rank when any rank has a problem (one small MPI_Allreduce)."""
        self._flag[0] = 1 if problem else 0
        self._flag[1] = self.rank if problem else -1
        self.comm.Allreduce(self._flag, self._flag_max, op=MPI.MAX)
        if self._flag_max[0]:
            if problem:
                raise ValueError(f"GradientReducer.reduce: {problem}")
            raise ValueError(f"GradientReducer.reduce: invalid gradients on rank {int(self._flag_max[1])}; "
                             "see that rank's exception")

    def _setup(self, grads: Sequence[np.ndarray], problem: str | None) -> None:
        """The first call: agree on the layout (one allgather), plan the buckets, allocate the buffers."""
        layout = None if problem else [(tuple(g.shape), g.dtype.str) for g in grads]
        identity = self._policy_identity()
        everyone = self.comm.allgather((problem, layout, identity))
        failed = [r for r, (p, _, _) in enumerate(everyone) if p]
        if failed:
            raise ValueError(f"GradientReducer.reduce: {problem}" if problem else
                             f"GradientReducer.reduce: invalid gradients on rank {failed[0]}; see that rank's "
                             "exception")
        differ = [r for r, (_, lay, _) in enumerate(everyone) if lay != layout]
        if differ:
            raise ValueError(f"GradientReducer.reduce: ranks pass gradients of different shapes or dtypes (rank "
                             f"{differ[0]}: {_describe(everyone[differ[0]][1])}; rank {self.rank}: "
                             f"{_describe(layout)})")
        differ = [r for r, (_, _, ident) in enumerate(everyone) if ident != identity]
        if differ:
            other = everyone[differ[0]][2]
            raise ValueError("GradientReducer.reduce: ranks use different compression policies or tensor names "
                             f"(rank {differ[0]}: {_describe_policy(other)}; rank {self.rank}: "
                             f"{_describe_policy(identity)}); every rank must pass the same policy and names")
        assert layout is not None
        self._layout = layout
        self.buckets = plan_buckets([s for s, _ in layout], [d for _, d in layout],
                                    fusion_bytes=self.fusion_bytes, min_compress_size=self.min_compress_size,
                                    compress=self.spec.kind != "none", fuse_compressed=self.spec.kind != "adaptive")
        if self.policy is not None:
            self.buckets = self._plan_policy(layout)
            for child in self._rule_reducers.values():
                child._layout = layout  # a rule's buckets index the whole layout (PowerSGD's shapes)
        # The first exact bucket carries one more element, the count of ranks whose gradients are invalid: the
        # check of every later call costs no collective of its own. It is reduced first.
        carrier = next((b for b in self.buckets if not b.compressed and b.size), None)
        self._carrier = carrier.index if carrier is not None else None
        self._order = sorted(self.buckets, key=lambda b: b.index != self._carrier)
        for b in self.buckets:
            if b.index == self._carrier:
                self._buffers[b.index] = np.empty(b.size + 1, dtype=b.dtype)
            elif len(b.members) > 1:
                self._buffers[b.index] = np.empty(b.size, dtype=b.dtype)
            if b.compressed and self.spec.kind == "topk":
                self._outs[b.index] = np.empty(b.size, dtype=b.dtype)

    # ---- reduce ---------------------------------------------------------------------------------

    def reduce(self, grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Average ``grads`` over the ranks, in place (collective).

        The first call agrees on the gradients' layout (one allgather) and
        plans the buckets; later calls check the layout locally and agree on
        the outcome through one extra element of the first exact bucket (a
        small MPI_Allreduce of its own when every tensor is compressed), so a
        rank with invalid gradients never leaves the others waiting.

        Parameters
        ----------
        grads : list of numpy.ndarray
            This rank's gradients: C-contiguous, writable float32 or float64
            arrays, the same shapes, dtypes and order on every rank and at
            every call.

        Returns
        -------
        list of numpy.ndarray
            The same arrays, now holding the averages over ranks (identical
            on every rank, bitwise; lossy paths return the decoded average
            of the compressed gradients).

        Raises
        ------
        ValueError
            On every rank, when any rank's gradients are not valid arrays or
            their layout differs between ranks or from the first call.
        """
        grads = list(grads) if isinstance(grads, tuple) else grads
        problem = self._check_local(grads) or self._check_names(grads)
        if self._layout is None:
            self._setup(grads, problem)
        elif self._carrier is None:
            self._agree_local(problem)
        P = self.size
        st = self.stats
        for b in self._order:
            t0 = time.perf_counter()
            carrier = b.index == self._carrier
            if len(b.members) == 1 and not carrier:
                x = grads[b.members[0]].reshape(-1)
            else:
                x = self._buffers[b.index]
                if carrier and problem:
                    x[...] = 0
                else:
                    for i, at in zip(b.members, b.offsets):
                        g = grads[i]
                        x[at:at + g.size] = g.reshape(-1)
                if carrier:
                    x[-1] = 1 if problem else 0
            t1 = time.perf_counter()
            st.seconds_fusion += t1 - t0
            if b.size:
                if b.compressed:
                    sent = self._reduce_bucket(b, x, grads) if self.policy is None else \
                        self._rule_reducers[b.rule]._reduce_bucket(b, x, grads)  # type: ignore[index]
                else:
                    sent = self._exact(x, carrier)
                    if carrier and x[-1]:
                        if problem:
                            raise ValueError(f"GradientReducer.reduce: {problem}")
                        raise ValueError(f"GradientReducer.reduce: invalid gradients on {int(round(x[-1] * P))} "
                                         "rank(s); see their exceptions")
                path = self._bucket_path(b)
                st.per_path[path] = st.per_path.get(path, 0) + sent
                self._count_rule(b, sent)
                st.bytes_sent += sent
                st.bytes_uncompressed += _ring_bytes(b.nbytes, P)
                st.collectives += 1
            t2 = time.perf_counter()
            if len(b.members) > 1 or carrier:
                for i, at in zip(b.members, b.offsets):
                    g = grads[i]
                    g.reshape(-1)[...] = x[at:at + g.size]
            st.seconds_fusion += time.perf_counter() - t2
        st.calls += 1
        for owner in (self, *self._rule_reducers.values()):
            if owner.powersgd is not None:
                owner.powersgd.advance()
        return grads

    def _exact(self, x: np.ndarray, carrier: bool) -> int:
        t0 = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        if self.size > 1:
            x /= self.size
        self.stats.seconds_collective += time.perf_counter() - t0
        return _ring_bytes(x.nbytes - (x.itemsize if carrier else 0), self.size)

    def _reduce_bucket(self, b: Bucket, x: np.ndarray, grads: Sequence[np.ndarray]) -> int:
        """Average the fused buffer ``x`` of a compressed bucket in place; the bytes this rank sent."""
        s, P, st = self.spec, self.size, self.stats
        fixed = self.algorithm == "fixed"
        st.elements_compressed += x.size
        if s.kind == "sparse":
            t0 = time.perf_counter()
            idx = np.flatnonzero(x).astype(np.uint32 if x.size <= 1 << 32 else np.uint64)
            vals = x[idx]
            st.nonzeros_compressed += idx.size
            t1 = time.perf_counter()
            st.seconds_compress += t1 - t0
            _, info = sparse_allreduce(idx, vals, x.size, self.comm, algorithm=s.fixed_algorithm if fixed else "auto",
                                       dense_out=x, return_info=True)
            if P > 1:
                x /= P
            st.seconds_collective += time.perf_counter() - t1
            return int(info.bytes_sent)
        t0 = time.perf_counter()
        st.nonzeros_compressed += int(np.count_nonzero(x))  # the gradient density, for the metrics
        st.seconds_compress += time.perf_counter() - t0
        t0 = time.perf_counter()
        if s.kind == "dropin":
            assert self._dropin is not None
            self._dropin.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
            if P > 1:
                x /= P
            info = self._dropin.last_info
            sent = int(info.bytes_sent) if info is not None else _ring_bytes(x.nbytes, P)
        elif s.kind == "topk":
            out = self._outs[b.index]
            _, info = topk_allreduce(x, self.comm, error_feedback=self.error_feedback, name=b.name, average=True,
                                     algorithm=s.fixed_algorithm if fixed else "auto", out=out, return_info=True)
            x[...] = out
            sent = int(info.bytes_sent)
        elif s.kind in ("qsgd", "onebit", "cast"):
            if self.error_feedback is not None:
                _, info = quantized_allreduce(x, self.comm, error_feedback=self.error_feedback, name=b.name,
                                              algorithm=s.fixed_algorithm if fixed else "auto", average=True,
                                              out=x, return_info=True)
            else:
                _, info = quantized_allreduce(x, self.comm, self.compressor, algorithm=s.fixed_algorithm if fixed
                                              else "auto", average=True, out=x, return_info=True)
            sent = int(info.bytes_sent)
        elif s.kind == "powersgd":
            sent = self._reduce_powersgd(b, x)
        elif s.kind == "adaptive":
            g = grads[b.members[0]]
            m = g.reshape(g.shape[0], -1) if g.ndim > 2 else g
            avg, info = adaptive_allreduce(m, self.comm, state=self.adaptive, name=b.name, average=True,
                                           return_info=True)
            x[...] = avg.reshape(-1)
            sent = int(info.bytes_sent)
        else:  # pragma: no cover - parse_compression admits nothing else
            raise AssertionError(s.kind)
        st.seconds_collective += time.perf_counter() - t0
        return sent

    def _reduce_powersgd(self, b: Bucket, x: np.ndarray) -> int:
        """PowerSGD of the bucket's tensors (each viewed as a matrix), its factors batched; the bytes sent."""
        assert self.powersgd is not None and self._layout is not None
        shapes = [self._layout[i][0] for i in b.members]
        _, info = powersgd_allreduce(x, self.comm, self.powersgd, shapes=shapes, bucket=b.name, average=True,
                                     return_info=True)
        return int(info.bytes_sent)

    # ---- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """This rank's state as numpy arrays (an ``.npz`` holds it; one file per rank).

        Keys: ``compression``, ``world_size``, ``rank``, ``calls``, ``layout``
        (the gradients' shapes and dtypes, when known), ``compressor/step``
        (the quantizer's step counter, which keys its random rounding),
        ``ef/residual/<bucket>[/worker|/server]`` (every error-feedback residual),
        ``adaptive/...`` (:meth:`AdaptiveAllreduceState.state_dict`) and ``powersgd/...``
        (:meth:`PowerSGD.state_dict`: ``powersgd/step``, ``powersgd/q/<bucket>/<j>`` and its residuals
        ``ef/residual/<bucket>/worker``). With a policy: ``compression`` is ``policy:<the policy's text>``
        and each compressing rule's keys are under ``rule<i>/`` (``rule<i>/ef/...``).
        """
        if self.policy is not None:
            return self._policy_state_dict()
        state: dict[str, np.ndarray] = {
            "compression": np.array(self.spec.name),
            "world_size": np.array(self.size, dtype=np.int64),
            "rank": np.array(self.rank, dtype=np.int64),
            "calls": np.array(self.stats.calls, dtype=np.int64),
        }
        layout = self._layout if self._layout is not None else self._expected_layout
        if layout is not None:
            state["layout"] = np.array(_describe(layout))
        if self.compressor is not None:
            state["compressor/step"] = np.array(self.compressor.step, dtype=np.int64)
        if self.error_feedback is not None:
            state.update({f"ef/{k}": v for k, v in self.error_feedback.state_dict().items() if k != "step"})
        if self.adaptive is not None:
            state.update({f"adaptive/{k}": v for k, v in self.adaptive.state_dict().items()})
        if self.powersgd is not None:
            state.update(self.powersgd.state_dict())
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned on the same rank of a run with the same configuration.

        Raises
        ------
        ValueError
            When the state belongs to another compression, number of ranks or
            rank, or holds keys of no part of this reducer (this rank only: a
            caller that loads on every rank should agree on errors, as
            ``scaleml-train`` does).
        """
        def scalar(key: str) -> Any:
            if key not in state:
                raise ValueError(f"reducer state lacks {key!r}")
            return np.asarray(state[key]).item()

        if self.policy is not None:
            self._load_policy_state_dict(state)
            return
        if scalar("compression") != self.spec.name:
            raise ValueError(f"reducer state is for compression {scalar('compression')!r}, not {self.spec.name!r}")
        if scalar("world_size") != self.size or scalar("rank") != self.rank:
            raise ValueError(f"reducer state belongs to rank {scalar('rank')} of {scalar('world_size')}, not rank "
                             f"{self.rank} of {self.size}")
        known = {"compression", "world_size", "rank", "calls", "layout", "compressor/step"}
        if self.powersgd is not None:  # its residuals are ef/ keys too: all of it goes to PowerSGD
            self.powersgd.load_state_dict({k: v for k, v in state.items() if k.startswith(("ef/", "powersgd/"))})
            state = {k: v for k, v in state.items() if not k.startswith(("ef/", "powersgd/"))}
        ef = {k[3:]: v for k, v in state.items() if k.startswith("ef/")}
        ad = {k[9:]: v for k, v in state.items() if k.startswith("adaptive/")}
        extra = [k for k in state if k not in known and not k.startswith(("ef/", "adaptive/"))]
        if extra or (ef and self.error_feedback is None) or (ad and self.adaptive is None):
            raise ValueError(f"reducer state holds {sorted(extra) or sorted(ef or ad)[:3]}, which compression "
                             f"{self.spec.name!r} does not keep")
        if self.compressor is not None and "compressor/step" not in state:
            raise ValueError("reducer state lacks the compressor's step counter 'compressor/step'")
        if self.error_feedback is not None:
            self.error_feedback.load_state_dict(ef)
        if self.adaptive is not None:
            self.adaptive.load_state_dict(ad)
        if self.compressor is not None:
            self.compressor.step = int(scalar("compressor/step"))
        self.stats.calls = int(scalar("calls"))
        if "layout" in state:
            expected = _parse_layout(str(scalar("layout")))
            if self._layout is not None and self._layout != expected:
                raise ValueError(f"reducer state is for gradients {_describe(expected)}, this reducer has "
                                 f"{_describe(self._layout)}")
            self._expected_layout = expected

    _GENERIC_KEYS = ("compression", "world_size", "rank", "calls", "layout")

    def _policy_state_dict(self) -> dict[str, np.ndarray]:
        """:meth:`state_dict` with a policy: the generic keys, then each compressing rule's under ``rule<i>/``."""
        assert self.policy is not None
        state: dict[str, np.ndarray] = {
            "compression": np.array(f"policy:{self.policy}"),
            "world_size": np.array(self.size, dtype=np.int64),
            "rank": np.array(self.rank, dtype=np.int64),
            "calls": np.array(self.stats.calls, dtype=np.int64),
        }
        layout = self._layout if self._layout is not None else self._expected_layout
        if layout is not None:
            state["layout"] = np.array(_describe(layout))
        for index, child in self._rule_reducers.items():
            state.update({f"rule{index}/{k}": v for k, v in child.state_dict().items()
                          if k not in self._GENERIC_KEYS})
        return state

    def _load_policy_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """:meth:`load_state_dict` with a policy (each rule's reducer loads its own keys)."""
        assert self.policy is not None
        want = f"policy:{self.policy}"
        for key in ("compression", "world_size", "rank", "calls"):
            if key not in state:
                raise ValueError(f"reducer state lacks {key!r}")
        got = np.asarray(state["compression"]).item()
        if got != want:
            raise ValueError(f"reducer state is for compression {got!r}, not {want!r}")
        extra = [k for k in state if k not in self._GENERIC_KEYS and
                 not (k.startswith("rule") and k.split("/", 1)[0][4:].isdigit() and
                      int(k.split("/", 1)[0][4:]) in self._rule_reducers)]
        if extra:
            raise ValueError(f"reducer state holds {sorted(extra)[:3]}, which policy {str(self.policy)!r} does not "
                             "keep")
        for index, child in self._rule_reducers.items():
            prefix = f"rule{index}/"
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            sub.update(compression=np.array(child.spec.name), world_size=state["world_size"], rank=state["rank"],
                       calls=state["calls"])
            child.load_state_dict(sub)
        self.stats.calls = int(np.asarray(state["calls"]).item())
        if "layout" in state:
            expected = _parse_layout(str(np.asarray(state["layout"]).item()))
            if self._layout is not None and self._layout != expected:
                raise ValueError(f"reducer state is for gradients {_describe(expected)}, this reducer has "
                                 f"{_describe(self._layout)}")
            self._expected_layout = expected

    @staticmethod
    def reshard_state_dicts(states: Sequence[dict[str, np.ndarray]], new_size: int) -> list[dict[str, np.ndarray]]:
        """The :meth:`state_dict` of every rank of a run at ``P`` ranks, resharded for ``new_size`` ranks.

        Worker residuals: every new rank gets ``sum / new_size`` of the old
        ranks' (summed in float64); server residuals re-cut to the new owners'
        ranges; step counters carried (:func:`scaleml.reshard.reshard_state_dicts`).
        Each rank of the new run then calls :meth:`load_state_dict` with its
        own entry. No communication.

        Parameters
        ----------
        states : sequence of dict
            Every old rank's state, in rank order.
        new_size : int
            The number of ranks that will load them.

        Returns
        -------
        list of dict
            ``new_size`` states, one per new rank.

        Raises
        ------
        ValueError
            For states that do not fit together (see
            :func:`scaleml.reshard.reshard_state_dicts`), and for ``adaptive``,
            whose per-matrix row blocks this does not reshard.
        """
        if any(k.startswith("adaptive/") for s in states[:1] for k in s):
            raise ValueError("the adaptive compression's residuals cannot be resharded to another number of ranks "
                             "(its server residuals are row blocks of each matrix); resume at the same number of "
                             "ranks")
        return reshard_state_dicts(states, new_size)


def _describe_policy(identity: tuple[str, str] | None) -> str:
    if identity is None:
        return "no policy"
    return f"policy {identity[1]!r}, names digest {identity[0]}"


def _describe(layout: Sequence[tuple[tuple[int, ...], str]]) -> str:
    return ";".join(f"{np.dtype(d).name}{list(s)}" for s, d in layout)


def _parse_layout(text: str) -> list[tuple[tuple[int, ...], str]]:
    out = []
    for part in filter(None, text.split(";")):
        m = re.fullmatch(r"(\w+)\[([\d, ]*)\]", part)
        if not m:
            raise ValueError(f"reducer state has a malformed layout {text!r}")
        shape = tuple(int(v) for v in m.group(2).split(",") if v.strip())
        out.append((shape, np.dtype(m.group(1)).str))
    return out

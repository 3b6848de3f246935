"""``scaleml.torch``: a DDP communication hook that sends gradient buckets through ScaleML over MPI.

A ``DistributedDataParallel`` job keeps its model code; one line routes its
gradient buckets through ScaleML's quantized, sparse or exact collectives
(over MPI, not through the process group), with error feedback kept per
bucket:

>>> import scaleml.torch as smt
>>> smt.init_process_group_from_mpi()                 # gloo, rank and size from MPI.COMM_WORLD
>>> ddp = torch.nn.parallel.DistributedDataParallel(model)
>>> state = smt.ScaleMLHookState(compression="qsgd4")
>>> ddp.register_comm_hook(state, smt.allreduce_hook)
>>> ...                                               # train as usual
>>> torch.save({"model": ddp.state_dict(), "hook": state.state_dict()}, f"ckpt{rank}.pt")

DDP still needs a process group (it broadcasts the initial parameters and
agrees on bucket layouts through it): :func:`init_process_group_from_mpi`
starts one with gloo, on the rank and size of an MPI communicator.

PyTorch is an optional dependency: this module imports it when used, and
``import scaleml`` never imports torch. CPU tensors only for now.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from . import _log
from . import nonblocking as _nonblocking_module
from ._network import rendezvous
from ._tensors import as_numpy
from .comm import Comm
from .compress import ErrorFeedback
from .compress.base import Compressor
from .compress.names import KINDS, CompressionSpec, choices, parse_compression
from .compress.policy import UNMATCHED, CompressionPolicy
from .compress.powersgd import PowerSGD
from .powersgd_allreduce import powersgd_allreduce
from .quantized import quantized_allreduce
from .reshard import reshard_state_dicts
from .sparse import sparse_allreduce
from .topk_allreduce import topk_allreduce

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["HOOK_COMPRESSIONS", "ScaleMLHookState", "allreduce_hook", "init_process_group_from_mpi"]

HOOK_COMPRESSIONS = {
    "none": "exact: under DDP the process group's own all_reduce (exact='auto'), else MPI_Allreduce (mpi4py)",
    "dropin": "scaleml.Comm(comm).Allreduce: the drop-in (exact; sparse algorithms when faster)",
    "sparse": "scaleml.sparse_allreduce of the bucket's non-zeros (exact)",
    "topkR": "scaleml.topk_allreduce of the fraction R (e.g. topk0.01) with ErrorFeedback(TopK(ratio=R))",
    "qsgdB": "scaleml.quantized_allreduce with QSGD(bits=B), B in 1..8 (qsgdB_ef: with error feedback; "
             "qsgdBmax: norm='max')",
    "onebit": "scaleml.quantized_allreduce with ErrorFeedback(OneBit()) (error feedback on both sides)",
    "fp16": "scaleml.quantized_allreduce with Cast('fp16') (bf16: Cast('bf16'))",
    "powersgdR": "PowerSGD of rank R per parameter of the bucket (e.g. powersgd4), factors batched per bucket; "
                 "powersgdR_q8: factors summed with QSGD(bits=8)",
}
"""The ``compression`` names the hook takes (those of :data:`scaleml.train.reducer.COMPRESSIONS` but
``adaptive``, which quantizes matrices: a DDP bucket is a flat vector)."""
HOOK_KINDS = tuple(kind for kind in KINDS if kind != "adaptive")
"""The kinds of :func:`scaleml.compress.names.parse_compression` the hook runs."""

_STATE_VERSION = 1

EXACT_PATHS = {
    "auto": "process_group when torch.distributed is initialized when the state is made (DDP's case), else mpi: "
            "measured on the emulated cluster (4 hosts at 1 Gbit/s, docs/torch.md), MPICH over TCP was not faster "
            "than gloo for DDP's buckets (0.93x and, blocking, 0.95x of plain DDP's step; the process group 1.01x)",
    "mpi": "ScaleML's exact path: MPI_Allreduce (mpi4py) of the bucket, then divided by the number of ranks",
    "process_group": "the DDP process group's own all_reduce (gloo, NCCL), as plain DDP: the bucket scaled by 1/P, "
                     "then dist.all_reduce(..., async_op=True); bitwise plain DDP's result",
}
"""The ``exact`` paths of :class:`ScaleMLHookState`: what runs the buckets (and policy slices) that go exact."""


def _torch() -> Any:
    import torch

    return torch


class ScaleMLHookState:
    """The state of :func:`allreduce_hook`: the communicator, the compression and its error feedback.

    Every rank must build it with the same arguments. Buckets of at least
    ``min_compress_numel`` elements go through ``compression``; smaller ones
    are averaged exactly with ``MPI_Allreduce``. Error feedback (where the
    compression has it) keeps one residual per bucket, keyed by
    ``bucket.index()``: when a bucket's size changes (DDP rebuilds its buckets
    after the first iteration) that bucket's residual starts again from zero,
    and :attr:`rebuilt_buckets` counts it.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm, optional
        The data-parallel communicator (default ``MPI.COMM_WORLD``): the ranks
        of DDP's process group, in the same order.
    compression : str
        ``none`` (default), ``dropin``, ``sparse``, ``topkR`` (e.g.
        ``topk0.01``), ``qsgdB`` or ``qsgdB_ef`` (``qsgd4``), ``onebit``,
        ``fp16``, ``bf16``, ``powersgdR`` or ``powersgdR_q8`` (``powersgd4``:
        PowerSGD of rank 4 per parameter, :attr:`powersgd`) (:data:`HOOK_COMPRESSIONS`).
    min_compress_numel : int
        Buckets with fewer elements are averaged exactly.
    average : bool
        Return the mean over ranks (DDP's convention; default) instead of the sum.
    seed : int
        Seed of the stochastic quantizers (QSGD's rounding).
    algorithm : {"fixed", "auto"}
        ``fixed`` (default): one algorithm per path (as
        :class:`scaleml.train.GradientReducer`), so runs, and a run resumed from
        :meth:`state_dict`, are reproducible bit for bit. ``auto``: the engine
        chooses by its cost model and measured times.
    nonblocking : bool
        Run each bucket's collective on ScaleML's progress thread
        (:mod:`scaleml.nonblocking`), overlapping the rest of the backward pass
        (default). ``False``: the collective runs inside the hook and the
        returned future is already complete.
    policy : CompressionPolicy, mapping or str, optional
        A per-layer compression policy instead of one ``compression``
        (:class:`scaleml.compress.policy.CompressionPolicy`; needs
        ``named_parameters`` or ``model``). DDP's buckets stay; inside each,
        every parameter's slice goes by its rule, the slices of one rule fused
        (one collective per rule and bucket), each rule with its own
        compressor and error feedback; parameters no pattern matches, or of
        fewer than ``min_compress_numel`` elements, go exact.
        ``stats["per_rule"]`` counts each rule's bytes. With a policy the
        constructor is collective: ranks agree on the policy and the
        parameter names (one allgather), and a rank that differs makes every
        rank raise ``ValueError``.
    named_parameters : iterable of (str, torch.nn.Parameter), optional
        The model's ``named_parameters()`` (what the patterns match; the
        bucket's parameters are mapped to names by identity).
    model : torch.nn.Module, optional
        Instead of ``named_parameters``: its ``named_parameters()`` (a
        ``DistributedDataParallel`` is unwrapped: names without ``module.``).
    exact : {"auto", "mpi", "process_group"}
        What averages the exact buckets (``compression="none"``, buckets
        below ``min_compress_numel``, and a policy's exact slices):
        ``mpi`` is ScaleML's ``MPI_Allreduce``; ``process_group`` the DDP
        process group's own ``all_reduce`` (as plain DDP, whose result it
        gives bitwise); ``auto`` (default) is ``process_group`` when
        ``torch.distributed`` is initialized as the state is made, else
        ``mpi`` (:data:`EXACT_PATHS`). The path in use is logged once at INFO.
    process_group : torch.distributed.ProcessGroup, optional
        The group of ``exact="process_group"`` (default: the default group).

    Attributes
    ----------
    spec : CompressionSpec
        The parsed compression.
    error_feedback : ErrorFeedback or None
        Every bucket's residuals (``bucket<i>``, or ``bucket<i>/worker`` and
        ``bucket<i>/server`` for the quantizers' two-sided feedback).
    stats : dict
        ``calls`` (buckets reduced), ``compressed_calls``, ``bytes_sent`` (this
        rank; ring estimate for ``MPI_Allreduce``) and ``bytes_uncompressed``
        (what exact ring AllReduces would have sent).
    rebuilt_buckets : int
        Residuals dropped because a bucket changed size.

    Raises
    ------
    ValueError
        For an unknown compression (the message lists the choices), ``adaptive``,
        a negative ``min_compress_numel``, an unknown ``algorithm``, or a
        communicator whose size differs from the initialized process group's.
    """

    def __init__(self, comm: MPI.Intracomm | None = None, compression: str = "none", *,
                 min_compress_numel: int = 1024, average: bool = True, seed: int = 0, algorithm: str = "fixed",
                 nonblocking: bool = True, policy: CompressionPolicy | Mapping[str, str] | str | None = None,
                 named_parameters: Iterable[tuple[str, Any]] | None = None, model: Any = None,
                 exact: str = "auto", process_group: Any = None) -> None:
        try:
            spec = parse_compression(compression)
        except ValueError as exc:
            if not str(exc).startswith("unknown compression"):
                raise
            raise ValueError(f"unknown compression {compression!r} for the DDP hook; expected one of "
                             f"{choices(HOOK_KINDS)}") from None
        if spec.kind == "adaptive":
            raise ValueError(f"compression {compression!r}: adaptive quantization works on matrices, and a DDP "
                             f"bucket is a flat vector; choose one of {', '.join(HOOK_COMPRESSIONS)}")
        if not isinstance(min_compress_numel, (int, np.integer)) or min_compress_numel < 0:
            raise ValueError(f"min_compress_numel must be an integer >= 0, got {min_compress_numel!r}")
        if algorithm not in ("fixed", "auto"):
            raise ValueError(f"algorithm must be 'fixed' or 'auto', got {algorithm!r}")
        self.comm: MPI.Intracomm = MPI.COMM_WORLD if comm is None else comm
        self.spec: CompressionSpec = spec
        self.min_compress_numel = int(min_compress_numel)
        self.average = bool(average)
        self.seed = int(seed)
        self.algorithm = algorithm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        torch = sys.modules.get("torch")
        dist = getattr(torch, "distributed", None) if torch is not None else None
        if dist is not None and dist.is_available() and dist.is_initialized() and \
                dist.get_world_size() != self.size:
            raise ValueError(f"the communicator has {self.size} ranks, the default process group "
                             f"{dist.get_world_size()}: DDP and the hook must span the same ranks")
        self._nb = _nonblocking_module if nonblocking else None
        self.compressor: Compressor | None = spec.compressor(seed=self.seed, rank=self.rank)
        self.error_feedback = ErrorFeedback(self.compressor) if spec.error_feedback and self.compressor else None
        # PowerSGD: its state, each bucket's parameter shapes and the step each bucket's reduction belongs to
        # (noted by the hook on DDP's thread, read on the progress thread).
        self.powersgd: PowerSGD | None = spec.powersgd(seed=self.seed, rank=self.rank)
        self._powersgd_shapes: dict[int, list[tuple[int, ...]]] = {}
        self._powersgd_steps: dict[int, int] = {}
        self._numel: dict[int, int] = {}
        self._outs: dict[int, np.ndarray] = {}
        self._dropins: dict[int, Any] = {}
        self.rebuilt_buckets = 0
        self.stats: dict[str, Any] = {"calls": 0, "compressed_calls": 0, "bytes_sent": 0, "bytes_uncompressed": 0}
        self._init_exact(exact, process_group, dist is not None and dist.is_available() and dist.is_initialized())
        self._init_policy(policy, named_parameters, model)

    @property
    def nonblocking(self) -> bool:
        """Whether the collectives run on ScaleML's progress thread (overlapping the backward pass)."""
        return self._nb is not None

    def __repr__(self) -> str:
        return (f"ScaleMLHookState(compression={self.spec.name!r}, ranks={self.size}, "
                f"min_compress_numel={self.min_compress_numel}, nonblocking={self.nonblocking})")

    # ---- one bucket -----------------------------------------------------------------------------

    def _compressed(self, numel: int) -> bool:
        return self.spec.kind != "none" and numel >= self.min_compress_numel

    def _prepare(self, index: int, numel: int) -> bool:
        """Record bucket ``index``'s size; drop its residuals when the size changed. Whether it is compressed."""
        prev = self._numel.get(index)
        if prev is not None and prev != numel:
            self._drop(index)
            self.rebuilt_buckets += 1
        self._numel[index] = numel
        return self._compressed(numel)

    def _drop(self, index: int) -> None:
        self._outs.pop(index, None)
        if self.error_feedback is not None:
            name = f"bucket{index}"
            for n in (name, f"{name}/worker", f"{name}/server"):
                self.error_feedback.reset(n)
            self.error_feedback.__dict__.get("_topk_spares", {}).pop(name, None)
        if self.powersgd is not None:
            self.powersgd.reset(f"bucket{index}")

    def _compresses_on_device(self) -> bool:
        """Whether CUDA buckets are encoded on the GPU: a QSGD, 1-bit or cast compression without error
        feedback, on ``auto`` (or forced ``quantized_gather``): ``quantized_allreduce``'s device path."""
        s = self.spec
        return s.kind in ("qsgd", "onebit", "cast") and self.error_feedback is None and \
            (self.algorithm != "fixed" or s.fixed_algorithm == "quantized_gather")

    def reduce_(self, index: int, x: np.ndarray, *, comm: MPI.Intracomm | None = None) -> np.ndarray:
        """Average (or sum) bucket ``index``'s flat buffer ``x`` over the ranks, in place (collective).

        What the hook runs for each bucket (on the progress thread when
        nonblocking); usable without DDP (PowerSGD: :meth:`note_bucket` first,
        with the bucket's parameter shapes). ``comm`` overrides the state's
        communicator (the private duplicate the progress thread passes).

        Parameters
        ----------
        index : int
            The bucket's index: it names the bucket's residuals.
        x : numpy.ndarray
            Flat, C-contiguous, writable float32 or float64 array; the same
            size and dtype on every rank.
        comm : mpi4py.MPI.Intracomm, optional
            The communicator to run on (default: the state's).

        Returns
        -------
        numpy.ndarray
            ``x``, holding the result.
        """
        x = as_numpy(x, "x")
        if self._numel.get(index) != x.size:
            self._prepare(index, x.size)
        return self._reduce(index, x, self._compressed(x.size), comm=self.comm if comm is None else comm)

    def _reduce(self, index: int, x: np.ndarray, compressed: bool, *, comm: MPI.Intracomm) -> np.ndarray:
        P, s, fixed = self.size, self.spec, self.algorithm == "fixed"
        ring = 2 * (P - 1) * x.nbytes // P if P > 1 else 0
        name = f"bucket{index}"
        sent = ring
        if not compressed or s.kind == "none":
            comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
            if self.average and P > 1:
                x /= P
        elif s.kind == "dropin":
            key = MPI._handleof(comm) if hasattr(MPI, "_handleof") else id(comm)
            dropin = self._dropins.get(key)
            if dropin is None:
                dropin = self._dropins[key] = Comm(comm)
            dropin.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
            if self.average and P > 1:
                x /= P
            info = dropin.last_info
            sent = int(info.bytes_sent) if info is not None else ring
        elif s.kind == "sparse":
            idx = np.flatnonzero(x).astype(np.uint32 if x.size <= 1 << 32 else np.uint64)
            _, info = sparse_allreduce(idx, x[idx], x.size, comm, algorithm=s.fixed_algorithm if fixed else "auto",
                                       dense_out=x, return_info=True)
            if self.average and P > 1:
                x /= P
            sent = int(info.bytes_sent)
        elif s.kind == "topk":
            out = self._outs.get(index)
            if out is None or out.shape != x.shape or out.dtype != x.dtype:
                out = self._outs[index] = np.empty_like(x)
            _, info = topk_allreduce(x, comm, error_feedback=self.error_feedback, name=name, average=self.average,
                                     algorithm=s.fixed_algorithm if fixed else "auto", out=out, return_info=True)
            x[...] = out
            sent = int(info.bytes_sent)
        elif s.kind == "powersgd":
            sent = self._reduce_powersgd(index, x, comm)
        else:  # qsgd, onebit, cast
            if self.error_feedback is not None:
                _, info = quantized_allreduce(x, comm, error_feedback=self.error_feedback, name=name,
                                              algorithm=s.fixed_algorithm if fixed else "auto", average=self.average,
                                              out=x, return_info=True)
            else:
                _, info = quantized_allreduce(x, comm, self.compressor, algorithm=s.fixed_algorithm if fixed
                                              else "auto", average=self.average, out=x, return_info=True)
            sent = int(info.bytes_sent)
        st = self.stats
        st["calls"] += 1
        st["compressed_calls"] += int(compressed and s.kind != "none")
        st["bytes_sent"] += sent
        st["bytes_uncompressed"] += ring
        return x

    # ---- the exact path and the per-layer policy ------------------------------------------------

    def _init_exact(self, exact: str, process_group: Any, have_group: bool) -> None:
        """Validate ``exact``; the path it resolves to (``have_group``: torch.distributed is initialized)."""
        if exact not in EXACT_PATHS:
            raise ValueError(f"exact must be one of {', '.join(repr(k) for k in EXACT_PATHS)}, got {exact!r}")
        self.exact = exact
        self.exact_path = "process_group" if exact == "process_group" or (exact == "auto" and have_group) \
            else "mpi"
        """The exact path that runs: ``mpi`` or ``process_group`` (``auto`` resolved)."""
        self.process_group = process_group
        self._exact_logged = False

    def _note_exact(self) -> None:
        """One INFO line, at the first exact bucket, saying which exact path runs."""
        if not self._exact_logged:
            self._exact_logged = True
            _log.note("scaleml.torch hook: exact buckets run through %s (exact=%r)",
                      "the DDP process group's all_reduce" if self.exact_path == "process_group"
                      else "ScaleML's MPI_Allreduce", self.exact)

    def _process_group_allreduce(self, tensor: Any) -> Any:
        """Start the process group's all_reduce of ``tensor`` in place (averaged as plain DDP); its Work."""
        dist = _torch().distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("exact='process_group' needs an initialized torch.distributed process group")
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if self.average:
            # Plain DDP scales each gradient by 1/P while copying it into the bucket, then sums: the same
            # multiplication (not a division after the sum) gives its result bitwise.
            tensor.mul_(1.0 / dist.get_world_size(group))
        return dist.all_reduce(tensor, group=group, async_op=True)

    def _count_exact(self, nbytes: int) -> int:
        """Count one exact process-group bucket in the stats (the ring estimate); the bytes."""
        ring = 2 * (self.size - 1) * nbytes // self.size if self.size > 1 else 0
        self.stats["calls"] += 1
        self.stats["bytes_sent"] += ring
        self.stats["bytes_uncompressed"] += ring
        return ring

    def _init_policy(self, policy: CompressionPolicy | Mapping[str, str] | str | None,
                     named_parameters: Iterable[tuple[str, Any]] | None, model: Any) -> None:
        """Parse the policy, name the parameters, agree on both between ranks, build each rule's state."""
        self.policy: CompressionPolicy | None = None
        self.names: list[str] = []
        self._name_of: dict[int, str] = {}
        self._rule_states: dict[int, ScaleMLHookState] = {}
        self._plans: dict[int, tuple[tuple[int, ...], list[_SliceGroup]]] = {}
        if policy is None:
            if named_parameters is not None or model is not None:
                raise ValueError("named_parameters and model name the parameters of a policy; give policy= too")
            return
        if self.spec.kind != "none":
            raise ValueError(f"give a compression ({self.spec.name!r}) or a policy, not both")
        if (named_parameters is None) == (model is None):
            raise ValueError("a policy needs the parameters' names: give named_parameters= or model= (one of them)")
        if model is not None:
            if type(model).__name__ == "DistributedDataParallel" and hasattr(model, "module"):
                model = model.module  # the names of the model, without DDP's "module." prefix
            named_parameters = model.named_parameters()
        assert named_parameters is not None
        pairs = list(named_parameters)
        self.names = [str(n) for n, _ in pairs]
        self._params = [p for _, p in pairs]  # held, so their ids stay theirs
        self._name_of = {id(p): n for n, p in pairs}
        self.policy = CompressionPolicy.parse(policy, HOOK_KINDS)
        identity = (self.policy.digest(self.names), str(self.policy))
        everyone = self.comm.allgather(identity)
        differ = [r for r, ident in enumerate(everyone) if ident != identity]
        if differ:
            other = everyone[differ[0]]
            raise ValueError(f"ScaleMLHookState: ranks use different compression policies or parameter names (rank "
                             f"{differ[0]}: policy {other[1]!r}, names digest {other[0]}; rank {self.rank}: policy "
                             f"{identity[1]!r}, names digest {identity[0]}); every rank must pass the same policy and "
                             "model")
        self._rule_of = {n: (r.index if r is not None else None)
                         for n, r in zip(self.names, self.policy.assign(self.names))}
        for rule in self.policy.rules:
            if rule.spec.kind != "none":
                self._rule_states[rule.index] = ScaleMLHookState(
                    self.comm, rule.spec.name, min_compress_numel=0, average=self.average, seed=self.seed,
                    algorithm=self.algorithm, nonblocking=False)
        self.stats["per_rule"] = {}

    @property
    def assignment(self) -> dict[str, tuple[str, str]]:
        """With a policy: each parameter's name -> (its rule's label, the path it takes: a compression or ``exact``).

        The label is ``pattern=name`` (``unmatched`` when no pattern
        matched); a parameter below ``min_compress_numel`` is ``exact``.
        """
        out: dict[str, tuple[str, str]] = {}
        if self.policy is None:
            return out
        for p, name in zip(self._params, self.names):
            rule = self._rule_of[name]
            label = self.policy.rules[rule].label if rule is not None else UNMATCHED
            compressed = rule is not None and rule in self._rule_states and p.numel() >= self.min_compress_numel
            out[name] = (label, self.policy.rules[rule].spec.name if compressed and rule is not None else "exact")
        return out

    def _bucket_plan(self, index: int, params: list[Any], numel: int) -> list[_SliceGroup]:
        """The slices of bucket ``index``, grouped by rule (and exact or not), cached until DDP rebuilds it."""
        key = tuple(id(p) for p in params)
        cached = self._plans.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        assert self.policy is not None
        groups: dict[tuple[int | None, bool], _SliceGroup] = {}
        at = 0
        for p in params:
            name = self._name_of.get(id(p))
            if name is None:
                raise ValueError(f"bucket {index} holds a parameter of shape {tuple(p.shape)} that is not among the "
                                 "named parameters the hook's state was given")
            rule = self._rule_of[name]
            n = int(p.numel())
            compressed = rule is not None and rule in self._rule_states and n >= self.min_compress_numel
            label = self.policy.rules[rule].label if rule is not None else UNMATCHED
            group = groups.setdefault((rule, compressed), _SliceGroup(rule, label, compressed))
            group.slices.append((at, n))
            group.shapes.append(tuple(int(d) for d in p.shape))
            at += n
        if at != numel:
            raise ValueError(f"bucket {index} holds {numel} elements, its parameters {at}: the hook's policy needs "
                             "DDP's dense buckets (one contiguous slice per parameter)")
        plan = list(groups.values())
        for g in plan:
            g.numel = sum(n for _, n in g.slices)
            g.contiguous = all(g.slices[i][0] + g.slices[i][1] == g.slices[i + 1][0] for i in range(len(g.slices) - 1))
            if g.compressed:
                self._rule_states[g.rule]._prepare(index, g.numel)  # type: ignore[index]
        self._plans[index] = (key, plan)
        return plan

    def _reduce_policy(self, index: int, x: np.ndarray, plan: list[_SliceGroup],
                       launched: list[tuple[_SliceGroup, np.ndarray, Any]], *, comm: MPI.Intracomm) -> np.ndarray:
        """Average the slices of bucket buffer ``x`` group by group (collective); ``launched``: the exact groups
        already started on the process group, finished here."""
        P = self.size
        st = self.stats
        for g in plan:
            if any(g is pg for pg, _, _ in launched):
                continue
            xg = _gather(x, g)
            if g.compressed:
                child = self._rule_states[g.rule]  # type: ignore[index]
                before = child.stats["bytes_sent"]
                child._reduce(index, xg, True, comm=comm)
                sent = child.stats["bytes_sent"] - before
                st["compressed_calls"] += 1
            else:
                comm.Allreduce(MPI.IN_PLACE, xg, op=MPI.SUM)
                if self.average and P > 1:
                    xg /= P
                sent = 2 * (P - 1) * xg.nbytes // P if P > 1 else 0
            _scatter(x, g, xg)
            self._count_group(g, sent, xg.nbytes)
        for g, xg, work in launched:
            work.wait()
            _scatter(x, g, xg)
            self._count_group(g, 2 * (P - 1) * xg.nbytes // P if P > 1 else 0, xg.nbytes)
        return x

    def _count_group(self, g: _SliceGroup, sent: int, nbytes: int) -> None:
        st, P = self.stats, self.size
        st["calls"] += 1
        st["bytes_sent"] += sent
        st["bytes_uncompressed"] += 2 * (P - 1) * nbytes // P if P > 1 else 0
        st["per_rule"][g.label] = st["per_rule"].get(g.label, 0) + sent

    _GENERIC_KEYS = ("version", "compression", "world_size", "rank", "calls")

    def _policy_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` with a policy: the generic keys, each compressing rule's under ``rule<i>/``."""
        state: dict[str, Any] = {"version": _STATE_VERSION, "compression": f"policy:{self.policy}",
                                 "world_size": self.size, "rank": self.rank, "calls": self.stats["calls"]}
        for rule, child in self._rule_states.items():
            state.update({f"rule{rule}/{k}": v for k, v in child.state_dict().items() if k not in self._GENERIC_KEYS})
        return state

    def _load_policy_state_dict(self, state: Mapping[str, Any]) -> None:
        """:meth:`load_state_dict` with a policy (each rule's state loads its own keys)."""
        def get(key: str) -> Any:
            if key not in state:
                raise ValueError(f"hook state lacks {key!r}")
            v = state[key]
            return v.item() if hasattr(v, "item") else v

        want = f"policy:{self.policy}"
        if get("compression") != want:
            raise ValueError(f"hook state is for compression {get('compression')!r}, not {want!r}")
        if int(get("world_size")) != self.size or int(get("rank")) != self.rank:
            raise ValueError(f"hook state belongs to rank {get('rank')} of {get('world_size')}, not rank {self.rank} "
                             f"of {self.size}")
        prefixes = tuple(f"rule{r}/" for r in self._rule_states)
        extra = [k for k in state if k not in self._GENERIC_KEYS and not k.startswith(prefixes)]
        if extra:
            raise ValueError(f"hook state holds {sorted(extra)[:3]}, which policy {str(self.policy)!r} does not keep")
        for rule, child in self._rule_states.items():
            prefix = f"rule{rule}/"
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            sub.update(version=_STATE_VERSION, compression=child.spec.name, world_size=self.size, rank=self.rank,
                       calls=get("calls"))
            child.load_state_dict(sub)
        self._plans.clear()
        self.stats["calls"] = int(get("calls"))

    def note_bucket(self, index: int, shapes: list[tuple[int, ...]], *, last: bool = False) -> None:
        """PowerSGD: record bucket ``index``'s parameter shapes (in the bucket's order) and the step it belongs
        to; ``last``: the step's last bucket (DDP's ``bucket.is_last()``), after which the step advances.

        :func:`allreduce_hook` calls it for every bucket; a caller of :meth:`reduce_` without DDP calls it
        before each bucket (a bucket of unknown shapes is one flat tensor: exact).
        """
        if self.powersgd is None:
            return
        # (PowerSGD itself moves a bucket's state along when DDP reorders its parameters)
        self._powersgd_shapes[index] = [tuple(int(d) for d in s) for s in shapes]
        self._powersgd_steps[index] = self.powersgd.step
        if last:
            self.powersgd.advance()

    def _reduce_powersgd(self, index: int, x: np.ndarray, comm: MPI.Intracomm) -> int:
        """PowerSGD of bucket ``index`` (each parameter a matrix, factors batched); the bytes sent."""
        assert self.powersgd is not None
        shapes = self._powersgd_shapes.get(index)
        if shapes is None or sum(int(np.prod(s, dtype=np.int64)) for s in shapes) != x.size:
            shapes = [(x.size,)]
        _, info = powersgd_allreduce(x, comm, self.powersgd, shapes=shapes, bucket=f"bucket{index}",
                                     average=self.average, step=self._powersgd_steps.get(index),
                                     return_info=True)
        return int(info.bytes_sent)

    # ---- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's hook state: every bucket's residuals and the step counters (one file per rank).

        The values are ``str``, ``int`` and CPU tensors (copies), so
        ``torch.save`` writes it and ``torch.load(..., weights_only=True)``
        reads it. Call it between iterations (no bucket in flight).

        Returns
        -------
        dict
            ``version``, ``compression``, ``world_size``, ``rank``, ``calls``,
            ``compressor/step`` (the quantizer's counter, which keys its random
            rounding), ``numel/<i>`` (each bucket's size) and
            ``ef/residual/bucket<i>[/worker|/server]`` (float tensors); PowerSGD's
            ``powersgd/step``, ``powersgd/q/bucket<i>/<j>``, ``powersgd/layout/bucket<i>`` (replicated) and
            ``powersgd/factor_compressor/step`` (``_q8``), its residuals being
            ``ef/residual/bucket<i>/worker``. With a policy: ``compression`` is
            ``policy:<the policy's text>`` and each compressing rule's keys are under ``rule<i>/``.
        """
        if self.policy is not None:
            return self._policy_state_dict()
        torch = _torch()
        state: dict[str, Any] = {"version": _STATE_VERSION, "compression": self.spec.name,
                                 "world_size": self.size, "rank": self.rank, "calls": self.stats["calls"]}
        if self.compressor is not None:
            state["compressor/step"] = int(self.compressor.step)
        for index, numel in sorted(self._numel.items()):
            state[f"numel/{index}"] = int(numel)
        if self.error_feedback is not None:
            for k, v in self.error_feedback.state_dict().items():
                if k != "step":
                    state[f"ef/{k}"] = torch.from_numpy(np.array(v, copy=True))
        if self.powersgd is not None:  # powersgd/step, powersgd/q/..., ef/residual/bucket<i>/worker
            for k, v in self.powersgd.state_dict().items():
                state[k] = v.item() if v.ndim == 0 else torch.from_numpy(v)  # int, str (a layout) or tensor
        return state

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Restore what :meth:`state_dict` returned, on the same rank of a job with the same configuration.

        Residuals are restored bit for bit; the buckets must have the same
        sizes (the same model and ``bucket_cap_mb``), else a bucket whose size
        differs starts again from zero (:attr:`rebuilt_buckets`).

        ``state`` may also be the list of every rank's state of the job that
        saved them (in rank order; each rank of this job passes the whole
        list): at the same number of ranks this rank's own entry is loaded, at
        another the states are resharded first
        (:func:`scaleml.reshard.reshard_state_dicts`, as
        :meth:`scaleml.train.GradientReducer.reshard_state_dicts`): every rank
        gets ``1/P'`` of the summed worker residuals, the server residuals are
        re-cut to the new owners' ranges, the step counters carry over.

        Raises
        ------
        ValueError
            When the state is for another compression, number of ranks or rank,
            or holds keys this compression does not keep; for a list, when the
            states do not fit together.
        """
        if isinstance(state, (list, tuple)):
            state = self._own_share(state)
        def get(key: str) -> Any:
            if key not in state:
                raise ValueError(f"hook state lacks {key!r}")
            v = state[key]
            return v.item() if hasattr(v, "item") else v

        if self.policy is not None:
            self._load_policy_state_dict(state)
            return
        if get("compression") != self.spec.name:
            raise ValueError(f"hook state is for compression {get('compression')!r}, not {self.spec.name!r}")
        if int(get("world_size")) != self.size or int(get("rank")) != self.rank:
            raise ValueError(f"hook state belongs to rank {get('rank')} of {get('world_size')}, not rank {self.rank} "
                             f"of {self.size}")
        known = {"version", "compression", "world_size", "rank", "calls", "compressor/step"}
        if self.powersgd is not None:  # its residuals are ef/ keys too: all of it goes to PowerSGD
            self.powersgd.load_state_dict({k: np.array(v if isinstance(v, (int, str)) else as_numpy(v, k), copy=True)
                                           for k, v in state.items() if k.startswith(("ef/", "powersgd/"))})
            state = {k: v for k, v in state.items() if not k.startswith(("ef/", "powersgd/"))}
        ef = {k[3:]: np.array(as_numpy(v, k), copy=True) for k, v in state.items() if k.startswith("ef/")}
        extra = [k for k in state if k not in known and not k.startswith(("ef/", "numel/"))]
        if extra or (ef and self.error_feedback is None):
            raise ValueError(f"hook state holds {sorted(extra) or sorted(ef)[:3]}, which compression "
                             f"{self.spec.name!r} does not keep")
        if self.compressor is not None and "compressor/step" not in state:
            raise ValueError("hook state lacks the compressor's step counter 'compressor/step'")
        numel = {int(k[6:]): int(state[k]) for k in state if k.startswith("numel/")}
        if self.error_feedback is not None:
            self.error_feedback.load_state_dict(ef)
            self.error_feedback.__dict__.pop("_topk_spares", None)
        if self.compressor is not None:
            self.compressor.step = int(get("compressor/step"))
        self._numel = numel
        self._outs.clear()
        self.stats["calls"] = int(get("calls"))

    def _own_share(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """This rank's state out of every old rank's: its own entry at the same size, else its resharded share."""
        if not states:
            raise ValueError("load_state_dict got an empty list of states")
        sizes = {int(as_numpy(s.get("world_size", -1), "world_size")) for s in states}
        if sizes == {len(states)} and len(states) == self.size:
            return states[self.rank]
        return reshard_state_dicts(states, self.size)[self.rank]


def allreduce_hook(state: ScaleMLHookState, bucket: Any) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average ``bucket`` over the ranks through ScaleML (collective).

    Register it with ``ddp_model.register_comm_hook(state, allreduce_hook)``.
    The bucket's flat buffer is viewed as a numpy array (no copy) and reduced
    in place by :meth:`ScaleMLHookState.reduce_`, over MPI. When the state is
    nonblocking the collective runs on ScaleML's progress thread and the
    returned future completes when it is done (the backward pass goes on
    meanwhile); else the future is already complete. A failed collective
    fails the future (DDP raises it from ``backward``) on every rank.

    Buffers of ``float16``/``bfloat16`` are reduced in float32 and copied back.
    CUDA buckets are copied to host memory (after the work queued on the
    current stream), reduced there, and copied back: the whole bucket crosses
    PCIe both ways (a GPU-side compression for the hook is future work).

    Parameters
    ----------
    state : ScaleMLHookState
        The hook's state (the same configuration on every rank).
    bucket : torch.distributed.GradBucket
        The bucket DDP hands the hook.

    Returns
    -------
    torch.futures.Future of torch.Tensor
        Completes with the bucket's buffer, holding the average.
    """
    torch = _torch()
    if not isinstance(state, ScaleMLHookState):
        raise TypeError(f"allreduce_hook's state must be a scaleml.torch.ScaleMLHookState, got "
                        f"{type(state).__name__}")
    buffer = bucket.buffer()
    if buffer.device.type not in ("cpu", "cuda"):
        raise TypeError(f"bucket {bucket.index()} is on {buffer.device}; the ScaleML hook takes CPU and CUDA buckets")
    float_type = buffer.dtype if buffer.dtype in (torch.float32, torch.float64) else torch.float32
    index = int(bucket.index())
    if buffer.is_sparse:
        return _sparse_bucket(state, buffer, float_type)
    if state.policy is not None:
        return _policy_hook(state, bucket, index, float_type)
    compressed = state._prepare(index, buffer.numel())
    if state.powersgd is not None:  # after _prepare: a rebuilt bucket's PowerSGD state is dropped first
        state.note_bucket(index, [tuple(g.shape) for g in bucket.gradients()], last=bucket.is_last())
    if not compressed and state.exact_path == "process_group":
        state._note_exact()
        state._count_exact(buffer.numel() * buffer.element_size())
        return state._process_group_allreduce(buffer).get_future().then(lambda fut: fut.value()[0])
    if not compressed:
        state._note_exact()
    if buffer.device.type == "cuda" and compressed and state._compresses_on_device():
        # Encoded and decoded on the GPU (quantized_gather): only the encoded bytes go through host memory.
        work = buffer if float_type == buffer.dtype else buffer.to(float_type)
        if state._nb is not None:  # the progress thread runs on its own stream: the backward's work first
            torch.cuda.current_stream(buffer.device).synchronize()
        x = work.detach()
    else:
        # A CUDA bucket otherwise is staged: copied to host memory after the kernels queued on the current
        # stream (the backward's), reduced on the host like a CPU bucket, and copied back.
        work = buffer if buffer.device.type == "cpu" and float_type == buffer.dtype else \
            buffer.detach().to(device="cpu", dtype=float_type)
        x = work.detach().numpy()

    def finish(value: Any = None) -> Any:
        if work is not buffer:
            buffer.copy_(work)
        return buffer

    if state._nb is not None:
        req = state._nb.start(state._reduce, state.comm, index, x, compressed)
        return req.get_future().then(lambda fut: finish(fut.value()))
    state._reduce(index, x, compressed, comm=state.comm)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(finish())
    return fut


def _sparse_bucket(state: ScaleMLHookState, buffer: Any, float_type: Any) -> Any:
    """A sparse gradient's bucket (``nn.Embedding``/``EmbeddingBag`` with ``sparse=True``): its non-zero rows
    summed exactly by :func:`scaleml.sparse_allreduce` and returned as a sparse tensor, as DDP's own allreduce
    of sparse gradients does. The rows are what any compressor would send, so no format applies."""
    torch = _torch()
    grad = buffer.detach().coalesce().to(device="cpu", dtype=float_type)
    sparse_shape, dense_shape = tuple(grad.shape[:grad.sparse_dim()]), tuple(grad.shape[grad.sparse_dim():])
    width = int(np.prod(dense_shape, dtype=np.int64))
    rows = np.ravel_multi_index(grad.indices().numpy(), sparse_shape) if grad.indices().shape[1] else \
        np.zeros(0, np.int64)
    # DDP scales each gradient by 1/P before the sum: the same multiplication here.
    values = grad.values().numpy().reshape(-1, width) * np.asarray(1.0 / state.size, grad.values().numpy().dtype)
    flat = (rows[:, None] * width + np.arange(width)).ravel()
    total, info = sparse_allreduce(flat, values.ravel(), int(np.prod(sparse_shape, dtype=np.int64)) * width,
                                   state.comm, out="sparse", return_info=True)
    row_of, column_of = np.divmod(total.indices.astype(np.int64), width)
    out_rows = np.unique(row_of)
    out_values = np.zeros((out_rows.size, width), values.dtype)
    out_values[np.searchsorted(out_rows, row_of), column_of] = total.values
    result = torch.sparse_coo_tensor(torch.from_numpy(np.stack(np.unravel_index(out_rows, sparse_shape))),
                                     torch.from_numpy(out_values.reshape(out_rows.size, *dense_shape)),
                                     tuple(grad.shape), is_coalesced=True, check_invariants=False)
    result = result.to(device=buffer.device, dtype=buffer.dtype)
    st = state.stats
    st["calls"] += 1
    st["compressed_calls"] += 1
    st["bytes_sent"] += int(info.bytes_sent)
    st["bytes_uncompressed"] += 2 * (state.size - 1) * buffer.numel() * buffer.element_size() // state.size
    fut = torch.futures.Future()
    fut.set_result(result)
    return fut


class _SliceGroup:
    """The slices of one DDP bucket that one rule reduces together (one collective)."""

    def __init__(self, rule: int | None, label: str, compressed: bool) -> None:
        self.rule, self.label, self.compressed = rule, label, compressed
        self.slices: list[tuple[int, int]] = []
        """(offset, elements) of each parameter's slice in the bucket, in bucket order."""
        self.shapes: list[tuple[int, ...]] = []
        """Each slice's parameter shape (PowerSGD's matrices)."""
        self.numel = 0
        self.contiguous = True
        """The slices follow each other: the group is a view of the bucket, no copy."""


def _gather(x: np.ndarray, g: _SliceGroup) -> np.ndarray:
    """The group's slices of ``x``: a view when contiguous, else a fused copy."""
    if g.contiguous:
        start = g.slices[0][0]
        return x[start:start + g.numel]
    return np.concatenate([x[at:at + n] for at, n in g.slices])


def _scatter(x: np.ndarray, g: _SliceGroup, xg: np.ndarray) -> None:
    """Copy a fused group back into its slices of ``x`` (nothing for a view)."""
    if g.contiguous:
        return
    pos = 0
    for at, n in g.slices:
        x[at:at + n] = xg[pos:pos + n]
        pos += n


def _policy_hook(state: ScaleMLHookState, bucket: Any, index: int,
                 float_type: Any) -> torch.futures.Future[torch.Tensor]:
    """:func:`allreduce_hook` with a policy: each rule's slices of the bucket fused and reduced by its path."""
    torch = _torch()
    buffer = bucket.buffer()
    plan = state._bucket_plan(index, list(bucket.parameters()), buffer.numel())
    # Reduced on the host (a CUDA bucket, or a half-precision one, is staged there and copied back).
    work = buffer if buffer.device.type == "cpu" and float_type == buffer.dtype else \
        buffer.detach().to(device="cpu", dtype=float_type)
    x = work.detach().numpy()
    launched: list[tuple[_SliceGroup, np.ndarray, Any]] = []
    if any(not g.compressed for g in plan):
        state._note_exact()
    for g in plan:  # a PowerSGD rule's matrices are its slices' parameters
        if g.compressed:
            state._rule_states[g.rule].note_bucket(index, g.shapes)  # type: ignore[index]
    if bucket.is_last():  # every PowerSGD rule counts the step, whether or not this bucket holds its slices
        for child in state._rule_states.values():
            if child.powersgd is not None:
                child.powersgd.advance()
    if state.exact_path == "process_group":
        # The exact slices start on the process group now, in the order every rank issues its buckets.
        for g in plan:
            if not g.compressed:
                xg = _gather(x, g)
                launched.append((g, xg, state._process_group_allreduce(torch.from_numpy(xg))))

    def finish(value: Any = None) -> Any:
        if work is not buffer:
            buffer.copy_(work)
        return buffer

    if state._nb is not None:
        req = state._nb.start(state._reduce_policy, state.comm, index, x, plan, launched)
        return req.get_future().then(lambda fut: finish(fut.value()))
    state._reduce_policy(index, x, plan, launched, comm=state.comm)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(finish())
    return fut


# DDP's register_comm_hook compares the annotations of ``bucket`` and of the return value with the objects
# dist.GradBucket and Future[Tensor]; this module's are strings (postponed evaluation, and torch is imported
# lazily), so they are left out of what inspect.signature sees. The docstring says what they are.
allreduce_hook.__annotations__ = {"state": "ScaleMLHookState"}


def init_process_group_from_mpi(backend: str = "gloo", comm: MPI.Intracomm | None = None, *,
                                timeout: timedelta | None = None) -> None:
    """Initialize ``torch.distributed``'s default process group on the ranks of an MPI communicator (collective).

    The rank and world size are MPI's; rank 0 picks a free TCP port and
    broadcasts it (over MPI) with its address: ``MASTER_ADDR`` when set, else
    loopback when every rank runs on one host and network namespace, else rank
    0's address on an IPv4 network every rank has an address in (hosts of a
    cluster, or the emulated cluster's namespaces), with each rank's
    ``GLOO_SOCKET_IFNAME`` (unless set) its interface there.
    ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE`` are set in
    the environment too. Nothing happens when the group is initialized
    already (its size must then be the communicator's).

    Parameters
    ----------
    backend : str
        The process group's backend (``gloo`` for CPU tensors).
    comm : mpi4py.MPI.Intracomm, optional
        Default ``MPI.COMM_WORLD``.
    timeout : datetime.timedelta, optional
        Passed to ``init_process_group``.

    Raises
    ------
    RuntimeError
        When torch.distributed is not available in this torch build, or an
        initialized group's size differs from the communicator's;
        :class:`scaleml._network.NoCommonNetwork` (a ``RuntimeError``) on every
        rank when no network joins them (set ``MASTER_ADDR`` or
        ``GLOO_SOCKET_IFNAME``).
    """
    import torch.distributed as dist

    comm = MPI.COMM_WORLD if comm is None else comm
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if dist.is_initialized():
        if dist.get_world_size() != comm.Get_size():
            raise RuntimeError(f"the default process group has {dist.get_world_size()} ranks, the communicator "
                               f"{comm.Get_size()}")
        return
    rank, size = comm.Get_rank(), comm.Get_size()
    addr, port = rendezvous(comm)
    os.environ.update(MASTER_ADDR=str(addr), MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size))
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=size, **kwargs)

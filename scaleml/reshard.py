"""Error-feedback state of P ranks resharded to P' ranks: a pure function of the P per-rank state dicts.

:func:`reshard_state_dicts` takes the state dicts that every rank of a run at
``P`` ranks saved (:meth:`scaleml.train.GradientReducer.state_dict`,
:meth:`scaleml.torch.ScaleMLHookState.state_dict`) and returns the ``P'``
state dicts a run at ``P'`` ranks loads. It does no communication: the caller
gathers the old states (a checkpoint directory holds them all) and hands each
new rank its own.

What each key becomes:

``ef/residual/<name>`` and ``ef/residual/<name>/worker`` (worker residuals)
    Each rank's worker residual is what its own encodings left out; error
    feedback adds it back to that rank's next gradient, so what the run owes
    the model is the **sum** over ranks. The old residuals are summed in
    float64 (in rank order) and every new rank gets the same share
    ``sum / P'``, rounded once to the residual's dtype: no rank holds a
    biased part of the debt (giving it all to rank 0 would make rank 0's next
    compressed gradient larger than the others'). The sum over new ranks is
    ``P' * float32(sum / P')``: the old sum to float32 rounding (a relative
    error of about ``P' * 2**-24`` of the largest entry), not bitwise.
``ef/residual/<name>/server`` (server residuals of ``quantized_direct``)
    Rank ``j`` keeps the residual of the index range it reduces, range ``j``
    of :func:`scaleml.quantized.block_range` (the C core's
    ``scaleml_block_range``, the one formula the algorithm cuts with). The old
    owners' ranges are concatenated in owner order into the whole vector and
    cut again at the ``P'`` boundaries of the same function: each entry stays
    bit for bit, now held by its new owner.
replicated keys (:data:`REPLICATED_KEYS`, :data:`REPLICATED_PREFIXES`)
    Step counters (``compressor/step``, ``powersgd/step``), PowerSGD's ``Q``
    matrices (``powersgd/q/...``), ``calls``, the configuration
    (``compression``, ``layout``, ``version``) and the hook's bucket sizes
    (``numel/<i>``) are identical on every rank of a healthy run: they must be
    equal (bitwise) on every old rank, else :class:`ValueError`, and carry
    over unchanged.
``world_size`` and ``rank``
    Rewritten to ``P'`` and the new rank.

Any other key raises :class:`ValueError` (a state this function does not know
how to split, e.g. ``adaptive/...``, is refused rather than guessed).

What cannot be conserved: which rank holds which part of the worker residuals
(every new rank holds the mean), and the random rounding streams, keyed by
``(seed, rank, step)``: rank ``r`` at ``P'`` ranks continues its own stream at
the carried step, so the draws after the resume differ from those an
uninterrupted run at ``P`` ranks would have made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._tensors import as_numpy
from .quantized import block_range

__all__ = ["REPLICATED_KEYS", "REPLICATED_PREFIXES", "replicated_value", "reshard_state_dicts", "server_ranges"]

REPLICATED_KEYS = ("compression", "version", "layout", "calls", "compressor/step", "powersgd/step",
                   "powersgd/factor_compressor/step")
"""Keys that are the same on every rank and carry over unchanged."""
REPLICATED_PREFIXES = ("numel/", "powersgd/q/", "powersgd/layout/")
"""Key prefixes whose every key is the same on every rank and carries over unchanged."""
RESIDUAL_PREFIX = "ef/residual/"
"""Prefix of the error-feedback residuals (worker: bare or ``/worker``; server: ``/server``)."""


def server_ranges(n: int, world_size: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the range of ``[0, n)`` each of ``world_size`` owners reduces (and keeps the server
    residual of) in ``quantized_direct``: :func:`scaleml.quantized.block_range`, the C core's cut."""
    return [block_range(n, world_size, j) for j in range(world_size)]


def _array(value: Any, key: str) -> np.ndarray:
    """A read-only numpy view (or copy) of a state value: numpy arrays, CPU tensors, Python scalars and str."""
    try:
        return np.asarray(as_numpy(value, key))
    except Exception as exc:  # whatever numpy cannot read is a state this function does not know
        raise ValueError(f"state key {key!r}: cannot read {type(value).__name__} as an array ({exc})") from None


RULE_PREFIX = re.compile(r"rule\d+/")
"""A compression policy's rule keeps its reducer's keys under ``rule<i>/`` (:class:`GradientReducer` with
``policy=``): they are classified by what follows."""


def _kind(key: str) -> str:
    """``rewritten``, ``replicated``, ``worker`` or ``server``; ValueError for a key of no known kind."""
    if key in ("world_size", "rank"):
        return "rewritten"
    rule = RULE_PREFIX.match(key)
    inner = key[rule.end():] if rule and key[rule.end():] not in ("world_size", "rank") else key
    if inner in REPLICATED_KEYS or inner.startswith(REPLICATED_PREFIXES):
        return "replicated"
    if inner.startswith(RESIDUAL_PREFIX) and len(inner) > len(RESIDUAL_PREFIX):
        return "server" if inner.endswith("/server") else "worker"
    raise ValueError(f"state key {key!r} is not one resharding knows how to split (known: world_size, rank, "
                     f"{', '.join(REPLICATED_KEYS)}, {', '.join(p + '*' for p in REPLICATED_PREFIXES)}, "
                     f"{RESIDUAL_PREFIX}*)")


def _same_scalar_type(old: Any, value: int) -> Any:
    """``value`` in the container ``old`` came in: a numpy array of its dtype, else a Python int."""
    if isinstance(old, np.ndarray):
        return np.array(value, dtype=old.dtype)
    return int(value)


def replicated_value(states: Sequence[Mapping[str, Any]], key: str) -> Any:
    """``states[0][key]``, checked to be bitwise equal (same shape and dtype) in every state.

    Raises
    ------
    ValueError
        When a state lacks ``key`` or holds another value.
    """
    if key not in states[0]:
        raise ValueError(f"the state of old rank 0 lacks {key!r}")
    first = _array(states[0][key], key)
    for r, state in enumerate(states[1:], 1):
        if key not in state:
            raise ValueError(f"the state of old rank {r} lacks {key!r}")
        a = _array(state[key], key)
        if a.shape != first.shape or a.dtype != first.dtype or a.tobytes() != first.tobytes():
            raise ValueError(f"{key!r} differs between old ranks 0 and {r}: it must be identical on every rank "
                             "(states of different runs, or replicas that diverged)")
    return states[0][key]


def reshard_state_dicts(states: Sequence[Mapping[str, Any]], new_size: int) -> list[dict[str, Any]]:
    """Reshard the error-feedback state of every old rank to ``new_size`` ranks (no communication).

    Parameters
    ----------
    states : sequence of mapping
        The state dict of every old rank, in rank order (``states[r]`` holds
        ``rank == r`` and ``world_size == len(states)``). Values are numpy
        arrays, CPU ``torch.Tensor``s or Python scalars.
    new_size : int
        The number of ranks of the resumed run. It may equal
        ``len(states)``: the server residuals then come back unchanged and the
        worker residuals evened out (a caller that resumes at the same size
        loads each rank's own state instead).

    Returns
    -------
    list of dict
        ``new_size`` state dicts, ``result[r]`` for rank ``r``: residuals as
        numpy arrays of the old dtype; replicated values as the old rank 0's
        objects; ``world_size`` and ``rank`` rewritten (numpy ``int64`` when
        they were arrays, else ``int``). See the module docstring for what
        each key becomes.

    Raises
    ------
    ValueError
        For no states, ``new_size < 1``, states out of rank order or of
        another world size, keys not on every old rank, a key of unknown kind,
        replicated values that differ between old ranks, residuals of
        different shapes or dtypes, or server residuals whose lengths are not
        the owners' ranges.
    """
    old_size = len(states)
    if old_size < 1:
        raise ValueError("reshard_state_dicts needs the state of at least one old rank")
    if isinstance(new_size, bool) or not isinstance(new_size, (int, np.integer)) or new_size < 1:
        raise ValueError(f"new_size must be an integer >= 1, got {new_size!r}")
    new_size = int(new_size)
    keys = list(states[0])
    for r, state in enumerate(states):
        for key, want in (("world_size", old_size), ("rank", r)):
            if key not in state:
                raise ValueError(f"the state of old rank {r} lacks {key!r}")
            got = _array(state[key], key)
            if got.shape != () or got.item() != want:
                raise ValueError(f"the state at position {r} holds {key} {got.tolist()!r}, expected {want} (pass "
                                 f"every old rank's state, in rank order)")
        if set(state) != set(keys):
            differ = sorted(set(state) ^ set(keys))
            raise ValueError(f"old ranks 0 and {r} hold different keys ({', '.join(differ[:4])}): states of "
                             "different runs or configurations")
    new: list[dict[str, Any]] = [{} for _ in range(new_size)]
    for key in keys:
        kind = _kind(key)
        if kind == "rewritten":
            for r, state in enumerate(new):
                state[key] = _same_scalar_type(states[0][key], new_size if key == "world_size" else r)
            continue
        if kind == "replicated":
            value = replicated_value(states, key)
            for state in new:
                state[key] = value
            continue
        arrays = [_array(s[key], key) for s in states]
        first = arrays[0]
        if first.dtype not in (np.float32, np.float64):
            raise ValueError(f"residual {key!r} has dtype {first.dtype}; expected float32 or float64")
        for r, a in enumerate(arrays[1:], 1):
            if a.dtype != first.dtype or (kind == "worker" and a.shape != first.shape):
                raise ValueError(f"residual {key!r} is {a.dtype}{a.shape} on old rank {r} and "
                                 f"{first.dtype}{first.shape} on old rank 0")
        if kind == "worker":
            total = np.zeros(first.shape, dtype=np.float64)
            for a in arrays:  # rank order: the same sum wherever this runs
                total += a
            share = (total / new_size).astype(first.dtype)
            for state in new:
                state[key] = share.copy()
        else:
            flat = [a.reshape(-1) for a in arrays]
            n = sum(a.size for a in flat)
            for r, (a, (_, length)) in enumerate(zip(flat, server_ranges(n, old_size))):
                if a.size != length:
                    raise ValueError(f"server residual {key!r} of old rank {r} has {a.size} values; its range of "
                                     f"{n} at {old_size} ranks has {length}")
            whole = np.concatenate(flat)
            for r, (start, length) in enumerate(server_ranges(n, new_size)):
                new[r][key] = whole[start:start + length].copy()
    return new

"""PowerSGD (Vogels, Karimireddy and Jaggi, NeurIPS 2019): low-rank gradients by one step of power iteration.

Each gradient tensor of shape ``(d0, d1, ...)`` is viewed as a matrix ``M`` of
shape ``(n, m) = (d0, d1 * ...)`` and sent as two thin factors, ``P`` (n x r)
and ``Q`` (m x r), instead of its ``n m`` values. Per step, as torch's
``powerSGD_hook`` does it:

1. ``M += residual`` (error feedback, this rank's own residual);
2. ``P = M Q`` with the ``Q`` of the previous step (warm start) or one drawn
   from the seeded random stream, orthogonalised first;
3. AllReduce ``P`` (every compressed tensor of the bucket in one collective),
   then orthogonalise it (Gram-Schmidt, :func:`orthogonalize`);
4. ``Q = M^T P``; AllReduce ``Q`` (one collective), divided by the number of
   ranks ``W``: ``Q = mean_i(M_i)^T P``;
5. the result is ``P Q^T``, the projection of the average gradient onto the
   span of ``P`` (every rank computes it from the same ``P`` and ``Q``:
   identical on every rank, bitwise); ``residual = M - P Q^T``.

Tensors that are not matrices (0-D and 1-D) and matrices too small to gain,
``(n m) / ((n + m) r) <= min_compression_rate`` with ``r = min(n, m, rank)``
(torch's test), are summed exactly, fused into the first collective. During
the first ``start_iter`` steps every tensor is summed exactly (the exact phase:
neither the residuals nor ``Q`` change).

This module holds the algorithm and its state; it runs no collective itself:
:meth:`PowerSGD.reduce` takes the two sums as callables.
:func:`scaleml.powersgd_allreduce.powersgd_allreduce` wires them to ScaleML's
collectives (exact ``MPI_Allreduce``, or ``quantized_allreduce`` with the
``factor_compression``), and :class:`scaleml.train.GradientReducer` and
:mod:`scaleml.torch` use that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .base import Compressor, rng_uniform

__all__ = ["DEFAULT_EPSILON", "DEFAULT_START_ITER", "PowerSGD", "compression_rank", "matrix_shape",
           "orthogonalize", "random_factor"]

DEFAULT_START_ITER = 10
"""Exact steps before PowerSGD starts. torch's ``PowerSGDState`` defaults to 1000 (long ImageNet runs); 10 covers
DDP's bucket rebuild after its first step and a short warm-up, and the driver's runs are short: set it to the
warm-up length of your schedule."""
DEFAULT_EPSILON = 1e-12
"""A column whose norm is at most this is set to zero by :func:`orthogonalize` (never divided: no NaN)."""

Sum = Callable[[np.ndarray], int]
"""A collective sum in place over the ranks of a flat buffer, returning the bytes this rank sent."""


def matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """The matrix view ``(d0, d1 * d2 * ...)`` of a tensor of ``shape``; None for 0-D and 1-D tensors."""
    if len(shape) < 2:
        return None
    return int(shape[0]), int(math.prod(int(d) for d in shape[1:]))


def compression_rank(shape: Sequence[int], rank: int, min_compression_rate: float) -> int:
    """The rank PowerSGD gives a tensor of ``shape``: ``min(n, m, rank)``, or 0 when it goes exact.

    Exact: 0-D and 1-D tensors, and matrices where ``(n + m) r min_compression_rate >= n m`` (torch's
    ``_should_compress``: the factors would not be ``min_compression_rate`` times smaller).
    """
    nm = matrix_shape(shape)
    if nm is None:
        return 0
    n, m = nm
    r = min(n, m, int(rank))
    return r if r > 0 and (n + m) * r * min_compression_rate < n * m else 0


def orthogonalize(columns: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> bool:
    """Orthonormalise the rows of ``columns`` in place (modified Gram-Schmidt); whether one vanished.

    ``columns`` is ``(r, n)``: the r columns of an n x r factor, each contiguous. Row k is divided by its
    norm, then its projection is removed from the rows after it. A row whose norm is at most ``epsilon`` is set
    to zero instead (an all-zero gradient gives a zero factor, not NaN). Only elementwise products and numpy's
    sums: the same input gives the same bits on every rank.
    """
    vanished = False
    r = columns.shape[0]
    for k in range(r):
        col = columns[k]
        norm = float(np.sqrt(np.sum(col * col)))
        if norm <= epsilon or not math.isfinite(norm):
            col[...] = 0
            vanished = True
            continue
        col /= col.dtype.type(norm)
        if k + 1 < r:
            rest = columns[k + 1:]
            rest -= np.sum(rest * col, axis=1, keepdims=True) * col
    return vanished


def random_factor(seed: int, step: int, stream: int, rows: int, r: int, dtype: np.dtype) -> np.ndarray:
    """An ``(r, rows)`` array of standard normal draws (Box-Muller) from the counter-based stream.

    Keyed by ``(seed, 0, step, stream)``: the same on every rank (rank 0 in the key), another at every step.
    """
    u = rng_uniform(seed, 0, step, 2 * r * rows, stream)
    radius = np.sqrt(-2.0 * np.log1p(-u[0::2]))  # 1 - u in (0, 1]: no log(0)
    return (radius * np.cos(2.0 * np.pi * u[1::2])).astype(dtype).reshape(r, rows)


@dataclass(frozen=True)
class _Layout:
    """Where each tensor of a bucket lies, and where its factors lie in the two batched buffers."""

    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    ranks: tuple[int, ...]
    """PowerSGD's rank of each tensor (0: exact)."""
    p_offsets: tuple[int, ...]
    q_offsets: tuple[int, ...]
    p_total: int
    q_total: int
    exact_total: int
    order: tuple[int, ...]
    """The tensors by shape (then position): the order of the batched buffers."""

    @property
    def compressed(self) -> list[int]:
        return [j for j in self.order if self.ranks[j]]

    @property
    def exact(self) -> list[int]:
        return [j for j in self.order if not self.ranks[j]]


class PowerSGD:
    """PowerSGD's configuration and state: replicated ``Q`` factors, per-rank residuals, the step.

    Parameters
    ----------
    rank : int
        The rank r of the approximation (>= 1); a matrix of n x m gets ``min(n, m, r)``.
    min_compression_rate : float
        A matrix is compressed only when its factors are more than this many times smaller than it
        (torch's default, 2); the others, and every 0-D and 1-D tensor, are summed exactly.
    start_iter : int
        Steps summed exactly before PowerSGD starts (:data:`DEFAULT_START_ITER`, 10; torch's default
        is 1000). The residuals and ``Q`` do not change in that phase.
    warm_start : bool
        Keep each ``Q`` for the next step (default); else draw a new one every step.
    error_feedback : bool
        Keep each rank's residual ``M - P Q^T`` and add it to the next step's gradient (default).
    factor_compression : Compressor, optional
        None: the factors are summed exactly. A compressor such as ``QSGD(bits=8)``: the two factor
        AllReduces run through :func:`scaleml.quantized_allreduce` with it (the exact tensors stay exact).
    epsilon : float
        Columns of norm at most this are zeroed in the orthogonalisation (:func:`orthogonalize`).
    seed : int
        Seed of the random ``Q`` (the same on every rank).

    Attributes
    ----------
    step : int
        Steps taken (exact phase included): the caller advances it once per training step
        (:meth:`advance`), after every bucket of the step.
    """

    def __init__(self, rank: int = 1, *, min_compression_rate: float = 2.0, start_iter: int = DEFAULT_START_ITER,
                 warm_start: bool = True, error_feedback: bool = True,
                 factor_compression: Compressor | None = None, epsilon: float = DEFAULT_EPSILON,
                 seed: int = 0) -> None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
        if not isinstance(min_compression_rate, (int, float)) or not min_compression_rate >= 0:
            raise ValueError(f"min_compression_rate must be a number >= 0, got {min_compression_rate!r}")
        if isinstance(start_iter, bool) or not isinstance(start_iter, (int, np.integer)) or start_iter < 0:
            raise ValueError(f"start_iter must be an integer >= 0, got {start_iter!r}")
        if factor_compression is not None and not isinstance(factor_compression, Compressor):
            raise TypeError(f"factor_compression must be a scaleml.compress compressor or None, got "
                            f"{type(factor_compression).__name__}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        self.rank = int(rank)
        self.min_compression_rate = float(min_compression_rate)
        self.start_iter = int(start_iter)
        self.warm_start = bool(warm_start)
        self.error_feedback = bool(error_feedback)
        self.factor_compression = factor_compression
        self.epsilon = float(epsilon)
        self.seed = int(seed)
        self.step = 0
        self._q: dict[tuple[str, int], np.ndarray] = {}
        self._residuals: dict[str, np.ndarray] = {}
        self._layouts: dict[tuple[tuple[int, ...], ...], _Layout] = {}
        self._bucket_shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self._scratch = np.empty(0, dtype=np.float32)

    def __repr__(self) -> str:
        return (f"PowerSGD(rank={self.rank}, min_compression_rate={self.min_compression_rate}, "
                f"start_iter={self.start_iter}, warm_start={self.warm_start}, error_feedback={self.error_feedback}, "
                f"factor_compression={self.factor_compression!r}, step={self.step})")

    # ---- the plan -------------------------------------------------------------------------------

    def layout(self, shapes: Sequence[Sequence[int]]) -> _Layout:
        """The bucket layout of tensors of ``shapes`` (in order, contiguous in the flat bucket)."""
        key = tuple(tuple(int(d) for d in s) for s in shapes)
        found = self._layouts.get(key)
        if found is not None:
            return found
        sizes = tuple(int(math.prod(s)) for s in key)
        offsets = tuple(int(v) for v in np.cumsum((0, *sizes[:-1]))) if sizes else ()
        ranks = tuple(compression_rank(s, self.rank, self.min_compression_rate) for s in key)
        # The factors (and the exact tensors) lie in the batched buffers in the order of their shapes, not of
        # the bucket: a bucket whose tensors DDP reorders sends the same buffers (quantized alike).
        order = sorted(range(len(key)), key=lambda j: (key[j], j))
        p_offsets, q_offsets, p_total, q_total = [0] * len(key), [0] * len(key), 0, 0
        for j in order:
            p_offsets[j], q_offsets[j] = p_total, q_total
            if ranks[j]:
                n, m = matrix_shape(key[j])  # type: ignore[misc]
                p_total += n * ranks[j]
                q_total += m * ranks[j]
        exact_total = sum(n for n, r in zip(sizes, ranks) if not r)
        found = self._layouts[key] = _Layout(key, offsets, sizes, ranks, tuple(p_offsets), tuple(q_offsets),
                                             p_total, q_total, exact_total, tuple(order))
        return found

    def compresses(self, step: int | None = None) -> bool:
        """Whether ``step`` (default: the current one) is past the exact phase."""
        return (self.step if step is None else step) >= self.start_iter

    def advance(self) -> None:
        """Count one training step (call it once per step, after every bucket)."""
        self.step += 1

    # ---- one bucket -----------------------------------------------------------------------------

    def reduce(self, bucket: str, x: np.ndarray, shapes: Sequence[Sequence[int]], sum_exact: Sum,
               sum_factors: Sum, *, world_size: int, average: bool = True, step: int | None = None) -> int:
        """Reduce one bucket in place: the average (or sum) of its PowerSGD approximation; bytes sent.

        Parameters
        ----------
        bucket : str
            The bucket's name (``bucket<i>``): it keys its residual and ``Q`` factors.
        x : numpy.ndarray
            The flat bucket (float32 or float64, C-contiguous, writable): the tensors of ``shapes`` one
            after the other. On return: the exact tensors' averages and the compressed ones' ``P Q^T``.
        shapes : sequence of shapes
            The bucket's tensors, in order; the same on every rank.
        sum_exact, sum_factors : callable
            ``f(buffer) -> bytes sent``: sum a flat buffer over the ranks in place (identical result on
            every rank). ``sum_exact`` takes the exact tensors (with the ``P`` factors when ``sum_factors``
            is ``sum_exact``: one collective), ``sum_factors`` the batched ``P`` and then ``Q`` factors.
        world_size : int
            The number of ranks W (the average divides by it).
        average : bool
            Return the average (default) rather than the sum.
        step : int, optional
            The step this bucket belongs to (default :attr:`step`): it decides the exact phase and keys
            the random ``Q``.

        Returns
        -------
        int
            Bytes this rank sent (what the callables reported).
        """
        step = self.step if step is None else int(step)
        lay = self.layout(shapes)
        if sum(lay.sizes) != x.size:
            raise ValueError(f"bucket {bucket!r} has {x.size} elements, its tensors {list(lay.shapes)} hold "
                             f"{sum(lay.sizes)}")
        before = self._bucket_shapes.get(bucket)
        if before is not None and before != lay.shapes:
            self._relayout(bucket, before, lay.shapes)
        self._bucket_shapes[bucket] = lay.shapes
        W = int(world_size)
        if not self.compresses(step) or not lay.p_total:
            sent = sum_exact(x)
            if average and W > 1:
                x /= W
            return sent
        dtype = x.dtype
        if self.error_feedback:
            residual = self._residuals.get(bucket)
            if residual is not None and (residual.shape != x.shape or residual.dtype != dtype):
                raise ValueError(f"residual {bucket!r} is {residual.dtype}{residual.shape}, the bucket "
                                 f"{dtype}{x.shape} (another layout under the same name?)")
            if residual is not None:
                x += residual
        fused = sum_factors is sum_exact
        matrices = {j: x[lay.offsets[j]:lay.offsets[j] + lay.sizes[j]].reshape(matrix_shape(lay.shapes[j]))
                    for j in lay.compressed}
        # ---- P = M Q, with the exact tensors in front when they share its collective
        head = lay.exact_total if fused else 0
        p_buffer = np.empty(head + lay.p_total, dtype=dtype)
        exact_buffer = p_buffer[:head] if fused else np.empty(lay.exact_total, dtype=dtype)
        at = 0
        for j in lay.exact:
            exact_buffer[at:at + lay.sizes[j]] = x[lay.offsets[j]:lay.offsets[j] + lay.sizes[j]]
            at += lay.sizes[j]
        qs, ps = {}, {}
        for j, M in matrices.items():
            r = lay.ranks[j]
            q = self._start_q(bucket, j, step, M.shape[1], r, dtype)
            qs[j] = q
            p = ps[j] = p_buffer[head + lay.p_offsets[j]:head + lay.p_offsets[j] + M.shape[0] * r].reshape(
                r, M.shape[0])
            np.matmul(q, M.T, out=p)  # (r, m) (m, n): the columns of M Q as rows
        sent = 0
        if not fused and lay.exact_total:
            sent += sum_exact(exact_buffer)
        sent += sum_factors(p_buffer)
        # ---- orthogonalise P, Q = M^T P, sum Q
        q_buffer = np.empty(lay.q_total, dtype=dtype)
        for j, M in matrices.items():
            orthogonalize(ps[j], self.epsilon)
            q = q_buffer[lay.q_offsets[j]:lay.q_offsets[j] + M.shape[1] * lay.ranks[j]].reshape(
                lay.ranks[j], M.shape[1])
            np.matmul(ps[j], M, out=q)  # (r, n) (n, m)
            qs[j] = q
        sent += sum_factors(q_buffer)
        if W > 1:
            q_buffer /= W  # Q = mean(M)^T P: P Q^T is the average's projection
        # ---- the approximation P Q^T (the same bits on every rank: elementwise products of the summed
        # factors, no BLAS), the residual M - P Q^T, and the exact tensors' averages
        if self.error_feedback:
            residual = self._residuals.get(bucket)
            if residual is None:
                residual = self._residuals[bucket] = np.zeros(x.size, dtype=dtype)
        for j, M in matrices.items():
            p, q = ps[j], qs[j]
            if self.error_feedback:
                kept = residual[lay.offsets[j]:lay.offsets[j] + lay.sizes[j]].reshape(M.shape)
                kept[...] = M
            # M = sum_k p_k q_k^T, written in place; a scratch buffer, reused, holds each further product
            np.multiply(p[0][:, None], q[0][None, :], out=M)
            if lay.ranks[j] > 1:
                term = self._scratch_matrix(M.shape, dtype)
                for k in range(1, lay.ranks[j]):
                    np.multiply(p[k][:, None], q[k][None, :], out=term)
                    M += term
            if self.error_feedback:
                kept -= M  # the residual: the compensated gradient minus the approximation
            if not average and W > 1:
                M *= W
            if self.warm_start:
                self._q[(bucket, j)] = q.copy()
        if not self.warm_start:
            self.drop_q(bucket)
        if average and W > 1:
            exact_buffer /= W
        at = 0
        for j in lay.exact:
            x[lay.offsets[j]:lay.offsets[j] + lay.sizes[j]] = exact_buffer[at:at + lay.sizes[j]]
            at += lay.sizes[j]
        return sent

    def _scratch_matrix(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A scratch array of ``shape`` (reused from step to step: no new pages for each product)."""
        need = int(math.prod(shape))
        if self._scratch.dtype != dtype or self._scratch.size < need:
            self._scratch = np.empty(need, dtype=dtype)
        return self._scratch[:need].reshape(shape)

    def _relayout(self, bucket: str, before: tuple[tuple[int, ...], ...],
                  after: tuple[tuple[int, ...], ...]) -> None:
        """The bucket's tensors changed order (DDP rebuilds its buckets after its first step, also in a resumed
        job): move each tensor's residual and ``Q`` along when the shapes tell the tensors apart, else drop
        the bucket's state."""
        if sorted(before) != sorted(after) or len(set(after)) != len(after):
            self.reset(bucket)
            return
        old, new = self.layout(before), self.layout(after)
        source = [before.index(s) for s in after]
        residual = self._residuals.get(bucket)
        if residual is not None:
            moved = np.empty_like(residual)
            for j, i in enumerate(source):
                moved[new.offsets[j]:new.offsets[j] + new.sizes[j]] = residual[old.offsets[i]:old.offsets[i] +
                                                                                old.sizes[i]]
            self._residuals[bucket] = moved
        qs = {j: self._q.pop((bucket, i)) for j, i in enumerate(source) if (bucket, i) in self._q}
        self.drop_q(bucket)
        self._q.update({(bucket, j): q for j, q in qs.items()})

    def _start_q(self, bucket: str, j: int, step: int, m: int, r: int, dtype: np.dtype) -> np.ndarray:
        """This step's ``Q`` of tensor ``j`` (r, m), orthonormal rows: the kept one, else a random draw."""
        q = self._q.get((bucket, j)) if self.warm_start else None
        if q is not None and q.shape == (r, m) and q.dtype == dtype:
            q = q.copy()
            if not orthogonalize(q, self.epsilon):
                return q
            # a column vanished (a zero gradient): warm start would keep it zero for good; draw afresh
        q = random_factor(self.seed, step, _stream(bucket, j), m, r, dtype)
        orthogonalize(q, self.epsilon)
        return q

    # ---- state ----------------------------------------------------------------------------------

    def q(self, bucket: str, j: int) -> np.ndarray | None:
        """The kept ``Q`` of tensor ``j`` of ``bucket`` as an (m, r) matrix (a copy; None when there is none)."""
        q = self._q.get((bucket, j))
        return None if q is None else q.T.copy()

    def residual(self, bucket: str) -> np.ndarray | None:
        """The residual of ``bucket`` (flat, the bucket's size; zero at its exact tensors), or None."""
        return self._residuals.get(bucket)

    def drop_q(self, bucket: str) -> None:
        """Forget the ``Q`` factors of ``bucket``."""
        for key in [k for k in self._q if k[0] == bucket]:
            del self._q[key]

    def reset(self, bucket: str | None = None) -> None:
        """Drop the residual and ``Q`` factors of ``bucket`` (of every bucket when None)."""
        if bucket is None:
            self._q.clear()
            self._residuals.clear()
            self._bucket_shapes.clear()
        else:
            self.drop_q(bucket)
            self._residuals.pop(bucket, None)
            self._bucket_shapes.pop(bucket, None)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as numpy arrays (copies).

        Keys: ``powersgd/step``; ``powersgd/q/<bucket>/<j>`` (the (m, r) ``Q`` of the bucket's tensor
        ``j``: replicated, the same on every rank); ``ef/residual/<bucket>/worker`` (this rank's residual,
        flat over the bucket; the residuals' sum over ranks is what error feedback owes);
        ``powersgd/layout/<bucket>`` (the shapes of the bucket's tensors, in order, as JSON: replicated;
        a job whose bucket holds them in another order moves the state along, see :meth:`reduce`); and
        ``powersgd/factor_compressor/step`` with a factor compression (its rounding counter, the same on
        every rank).
        """
        state: dict[str, np.ndarray] = {"powersgd/step": np.array(self.step, dtype=np.int64)}
        for (bucket, j), q in sorted(self._q.items()):
            state[f"powersgd/q/{bucket}/{j}"] = q.T.copy()
        for bucket, r in sorted(self._residuals.items()):
            state[f"ef/residual/{bucket}/worker"] = r.copy()
        for bucket, shapes in sorted(self._bucket_shapes.items()):
            state[f"powersgd/layout/{bucket}"] = np.array(json.dumps([list(s) for s in shapes]))
        if self.factor_compression is not None:
            state["powersgd/factor_compressor/step"] = np.array(self.factor_compression.step, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (every key of it; others raise ``ValueError``)."""
        if "powersgd/step" not in state:
            raise ValueError("PowerSGD state lacks 'powersgd/step'")
        qs: dict[tuple[str, int], np.ndarray] = {}
        residuals: dict[str, np.ndarray] = {}
        layouts: dict[str, tuple[tuple[int, ...], ...]] = {}
        factor_step = None
        for key, value in state.items():
            a = np.asarray(value)
            if key == "powersgd/step":
                continue
            if key == "powersgd/factor_compressor/step":
                factor_step = int(a)
            elif key.startswith("powersgd/layout/"):
                try:
                    layouts[key[len("powersgd/layout/"):]] = tuple(tuple(int(d) for d in s)
                                                                   for s in json.loads(str(a)))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"PowerSGD state has a malformed layout {key!r}: {exc}") from None
            elif key.startswith("powersgd/q/"):
                bucket, _, j = key[len("powersgd/q/"):].rpartition("/")
                if not bucket or not j.isdigit() or a.ndim != 2 or a.dtype not in (np.float32, np.float64):
                    raise ValueError(f"PowerSGD state has a malformed entry {key!r} ({a.dtype}{a.shape})")
                qs[(bucket, int(j))] = np.ascontiguousarray(a.T)
            elif key.startswith("ef/residual/") and key.endswith("/worker"):
                if a.ndim != 1 or a.dtype not in (np.float32, np.float64):
                    raise ValueError(f"PowerSGD state has a malformed residual {key!r} ({a.dtype}{a.shape})")
                residuals[key[len("ef/residual/"):-len("/worker")]] = np.array(a, copy=True)
            else:
                raise ValueError(f"unexpected key {key!r} in PowerSGD state")
        if (factor_step is None) != (self.factor_compression is None):
            raise ValueError("PowerSGD state and this PowerSGD differ in having a factor compression")
        self.step = int(np.asarray(state["powersgd/step"]))
        self._q, self._residuals, self._bucket_shapes = qs, residuals, layouts
        if factor_step is not None and self.factor_compression is not None:
            self.factor_compression.step = factor_step


def _stream(bucket: str, j: int) -> int:
    """The random stream of tensor ``j`` of ``bucket``: the bucket's number (``bucket<i>``) and ``j``."""
    digits = "".join(ch for ch in bucket if ch.isdigit())
    index = int(digits) if digits else sum(bucket.encode())
    return ((index & 0xFFFFFFFF) << 32) | (j & 0xFFFFFFFF)

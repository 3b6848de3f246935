"""ZipML end to end: least squares trained by data-parallel SGD on data stored at low precision.

The training matrix is stored with ``bits`` bits per value (ZipML stochastic
rounding, :class:`scaleml.compress.ZipML`, to uniform or data-optimal levels)
and SGD reads only the stored codes. Stochastic rounding is unbiased for the
data, ``E[Q(a)] = a``, but the least-squares gradient ``a (a^T x - b)`` is
quadratic in ``a``: with one sample, ``E[Q(a) Q(a)^T] = a a^T + diag(v(a))``
(``v`` the rounding variances), so SGD converges to the solution of
``(A^T A + D) x = A^T b`` with ``D = sum_r diag(v(a_r))``, not to least
squares. Double sampling stores a second, independent rounding of every value
(one more bit: both samples lie in the same level interval) and uses
``Q1(a) (Q2(a)^T x - b)``, which is unbiased.

>>> from mpi4py import MPI
>>> from scaleml.zipml_linear import synthetic_regression, compare_estimators
>>> X, b, _ = synthetic_regression(8192, 8, seed=0, comm=MPI.COMM_WORLD)   # this rank's rows
>>> res = compare_estimators(X, b, bits=2, comm=MPI.COMM_WORLD)
>>> {name: run.distance for name, run in res.runs.items()}                  # distance to lstsq
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from mpi4py import MPI

from .compress import Compressor, ZipML
from .quantized import quantized_allreduce

ESTIMATORS = ("full", "naive", "double")
"""Gradient estimators of :func:`sgd_least_squares`."""

_FIT_SAMPLE = 4096


def _pack(values: np.ndarray, w: int) -> np.ndarray:
    """``w``-bit unsigned values as an LSB-first bit stream, plus one padding byte (for :func:`_gather`)."""
    if w == 0:
        return np.zeros(1, np.uint8)
    bits = ((values.reshape(-1, 1).astype(np.uint16) >> np.arange(w, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.concatenate([np.packbits(bits.reshape(-1), bitorder="little"), np.zeros(1, np.uint8)])


def _gather(stream: np.ndarray, pos: np.ndarray, w: int) -> np.ndarray:
    """Values number ``pos`` of a ``w``-bit stream written by :func:`_pack` (``w <= 8``)."""
    if w == 0:
        return np.zeros(pos.shape, np.intp)
    bit = pos.astype(np.int64) * w
    byte = bit >> 3
    word = stream[byte].astype(np.uint16) | (stream[byte + 1].astype(np.uint16) << 8)
    return ((word >> (bit & 7).astype(np.uint16)) & ((1 << w) - 1)).astype(np.intp)


def _width(count: int) -> int:
    """Bits for an index in ``0 .. count - 1``."""
    return int(count - 1).bit_length()


def _row_offset(m: int, comm: MPI.Intracomm) -> tuple[int, int]:
    """(first global row of this rank, global row count) for shards stored in rank order."""
    offset = comm.exscan(m, op=MPI.SUM)
    return (0 if comm.Get_rank() == 0 or offset is None else int(offset)), int(comm.allreduce(m, op=MPI.SUM))


@dataclass
class QuantizedMatrix:
    """This rank's rows of a matrix, stored as level codes (ZipML double sampling layout).

    A value ``a`` between levels ``L[j] <= a <= L[j+1]`` is stored as its
    interval ``j`` (``ceil(log2(s - 1))`` bits for ``s`` levels) and one bit
    per sample, set when that sample rounded up: sample ``k`` is
    ``L[j + up_k]``. With one sample the level code itself is stored
    (``ceil(log2 s)`` bits). Codes are kept row-major in bit streams; rows are
    decoded on demand (:meth:`rows`).
    """

    shape: tuple[int, int]
    """(local rows, columns)."""
    levels: np.ndarray
    """Levels, float64 of shape ``(columns, s)`` (per column) or ``(1, s)`` (global)."""
    samples: int
    """Independent roundings stored per value (1 or 2)."""
    index: np.ndarray
    """Bit stream of the interval indices (the level codes with one sample)."""
    up: np.ndarray
    """Bit stream of ``samples`` round-up bits per value (empty with one sample)."""

    @property
    def s(self) -> int:
        """Number of levels."""
        return int(self.levels.shape[1])

    @property
    def index_bits(self) -> int:
        """Bits per value of :attr:`index`."""
        return _width(self.s) if self.samples == 1 else _width(self.s - 1)

    @property
    def bits_per_value(self) -> int:
        """Bits stored per value for all samples together (without the level table)."""
        return self.index_bits + (self.samples if self.samples > 1 else 0)

    @property
    def nbytes(self) -> int:
        """Bytes held: codes (with one padding byte per stream) and the level table."""
        return int(self.index.nbytes + self.up.nbytes + self.levels.nbytes)

    def rows(self, rows: np.ndarray, sample: int = 0) -> np.ndarray:
        """Sample ``sample`` of local rows ``rows``, decoded to a float64 ``(len(rows), columns)`` array."""
        if not 0 <= sample < self.samples:
            raise ValueError(f"sample must be in 0..{self.samples - 1}, got {sample}")
        d = self.shape[1]
        pos = np.asarray(rows, dtype=np.int64).reshape(-1, 1) * d + np.arange(d)
        code = _gather(self.index, pos, self.index_bits)
        if self.samples > 1:
            code = code + ((_gather(self.up, pos, self.samples) >> sample) & 1)
        if self.levels.shape[0] == 1:
            return self.levels[0][code]
        return self.levels[np.arange(d), code]

    def dequantize(self, sample: int = 0) -> np.ndarray:
        """All local rows of sample ``sample`` as a float64 matrix."""
        return self.rows(np.arange(self.shape[0]), sample)

    def rounding_variance(self, X: np.ndarray) -> np.ndarray:
        """Variance ``(a - L[j]) (L[j+1] - a)`` of rounding each value of ``X`` (the matrix stored here)."""
        X = np.asarray(X, dtype=np.float64)
        out = np.empty_like(X)
        for j in range(X.shape[1]):
            lv = self.levels[min(j, self.levels.shape[0] - 1)]
            a = np.clip(X[:, j], lv[0], lv[-1])
            k = np.clip(np.searchsorted(lv, a, side="right") - 1, 0, lv.size - 2)
            out[:, j] = (a - lv[k]) * (lv[k + 1] - a)
        return out


def _agreed_levels(values: np.ndarray, s: int, kind: str, comm: MPI.Intracomm) -> np.ndarray:
    """Levels for ``values`` (this rank's part of one column, or of all values), identical on every rank."""
    if kind == "uniform":
        lo = comm.allreduce(float(values.min()) if values.size else np.inf, op=MPI.MIN)
        hi = comm.allreduce(float(values.max()) if values.size else -np.inf, op=MPI.MAX)
        return ZipML.uniform(lo, hi, s).levels if hi > lo else np.array([lo, lo + max(1.0, abs(lo))])
    # data-optimal: every rank contributes evenly spaced order statistics of its values (its min and
    # max included, so no value is clamped); rank 0 fits and broadcasts the levels.
    share = max(2, _FIT_SAMPLE // comm.Get_size())
    v = np.sort(values.reshape(-1))
    part = v[np.unique(np.linspace(0, v.size - 1, min(share, v.size)).round().astype(np.int64))] if v.size else v
    sample = comm.gather(part, root=0)
    levels = ZipML.fit(np.concatenate(sample), s).levels if comm.Get_rank() == 0 else None
    return comm.bcast(levels, root=0)


def quantize_matrix(X: np.ndarray, bits: int = 3, *, levels: Literal["uniform", "optimal"] | np.ndarray = "uniform",
                    scope: Literal["column", "global"] = "column", samples: int = 2, seed: int = 0,
                    comm: MPI.Intracomm = MPI.COMM_WORLD) -> QuantizedMatrix:
    """Store this rank's rows of ``X`` with ``2**bits`` levels (collective).

    Parameters
    ----------
    X : numpy.ndarray
        This rank's rows (2-D, finite).
    bits : int
        ``s = 2**bits`` levels, 1 to 8 bits per sample (ignored with a level table).
    levels : {"uniform", "optimal"} or numpy.ndarray
        Evenly spaced over ``[min, max]``, or data-optimal (least rounding
        variance, :meth:`scaleml.compress.ZipML.fit` on a sample of every
        rank's values that includes the extremes); identical on every rank.
        Or the level table of an earlier call (:attr:`QuantizedMatrix.levels`,
        the same on every rank), to draw new samples without fitting again.
    scope : {"column", "global"}
        One level set per column, or one for the whole matrix.
    samples : int
        Independent roundings stored: 1 (naive) or 2 (double sampling).
    seed : int
        Key of the rounding (with the rank, the column and the sample).
    comm : mpi4py.MPI.Intracomm
        The ranks holding the other rows.

    Returns
    -------
    QuantizedMatrix
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise ValueError("X must be a finite 2-D array")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    given = isinstance(levels, np.ndarray)
    if samples not in (1, 2):
        raise ValueError(f"samples must be 1 or 2, got {samples!r}")
    if scope not in ("column", "global") or not (given or levels in ("uniform", "optimal")):
        raise ValueError("levels must be 'uniform', 'optimal' or a level table, scope 'column' or 'global'")
    m, d = X.shape
    s = 1 << bits
    if given:
        table = np.asarray(levels, dtype=np.float64)
        if table.shape != ((1 if scope == "global" else d), table.shape[-1]) or not np.all(np.diff(table) > 0):
            raise ValueError("a level table must have one increasing row per column (one row for scope='global')")
        if np.any(X < table[:, :1].T) or np.any(X > table[:, -1:].T):
            raise ValueError("the level table does not cover the data (values would be clamped: biased)")
    elif scope == "global":
        table = _agreed_levels(X, s, levels, comm)[None, :]
    else:
        table = [_agreed_levels(X[:, j], s, levels, comm) for j in range(d)]
    if not given:
        # ZipML.fit returns fewer levels when the data has fewer distinct values: pad to a common width
        width = max((lv.size for lv in table), default=2)
        table = np.stack([np.concatenate([lv, lv[-1] + np.arange(1, width - lv.size + 1)]) for lv in table]) \
            if len(table) else np.zeros((0, 2))
    codes = np.empty((samples, m, d), np.intp)
    interval = np.empty((m, d), np.intp)
    rank = comm.Get_rank()
    for j in range(d if scope == "column" else 1):
        lv = table[j]
        part = X[:, j] if scope == "column" else X.reshape(-1)
        q = ZipML(lv, seed=seed, rank=rank)
        for k in range(samples):
            got = np.searchsorted(lv, q.decode(q.encode(part, step=j, stream=k + 1)))
            if scope == "column":
                codes[k, :, j] = got
            else:
                codes[k] = got.reshape(m, d)
        lower = np.clip(np.searchsorted(lv, np.clip(part, lv[0], lv[-1]), side="right") - 1, 0, lv.size - 2)
        if scope == "column":
            interval[:, j] = lower
        else:
            interval[:] = lower.reshape(m, d)
    qm = QuantizedMatrix((m, d), table, samples, np.zeros(1, np.uint8), np.zeros(0, np.uint8))
    if samples == 1:
        qm.index = _pack(codes[0], qm.index_bits)
        return qm
    up = codes - interval
    if up.size and (up.min() < 0 or up.max() > 1):
        raise RuntimeError("ZipML rounding left the value's level interval")  # never: a kernel bug
    qm.index = _pack(interval, qm.index_bits)
    qm.up = _pack(up[0] | (up[1] << 1), 2)
    return qm


def synthetic_regression(rows: int, dim: int, *, seed: int = 0, noise: float = 0.1,
                         comm: MPI.Intracomm = MPI.COMM_WORLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's contiguous share of a fixed synthetic least-squares problem.

    ``X`` has independent Gaussian columns with standard deviations evenly
    spaced in ``[0.5, 2]``, ``b = X x_true + noise * N(0, 1)``; the whole
    problem depends only on ``seed`` (every rank draws it and keeps its rows).

    Returns
    -------
    (X, b, x_true) : this rank's rows and targets, and the generating model.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, dim)) * np.linspace(0.5, 2.0, dim)
    x_true = rng.standard_normal(dim)
    b = X @ x_true + noise * rng.standard_normal(rows)
    P, r = comm.Get_size(), comm.Get_rank()
    lo, hi = rows * r // P, rows * (r + 1) // P
    return X[lo:hi].copy(), b[lo:hi].copy(), x_true


def _batch_gradient(data: np.ndarray | QuantizedMatrix, b: np.ndarray, x: np.ndarray, rows: np.ndarray,
                    estimator: str, symmetric: bool) -> np.ndarray:
    """Sum over ``rows`` of the estimator's least-squares gradient (not divided by the batch)."""
    bb = b[rows]
    if estimator == "full":
        A = data[rows]
        return A.T @ (A @ x - bb)
    q1 = data.rows(rows, 0)
    if estimator == "naive":
        return q1.T @ (q1 @ x - bb)
    q2 = data.rows(rows, 1)
    g = q1.T @ (q2 @ x - bb)
    return (g + q2.T @ (q1 @ x - bb)) / 2 if symmetric else g


def least_squares_gradient(data: np.ndarray | QuantizedMatrix, b: np.ndarray, x: np.ndarray,
                           estimator: str = "double", *, symmetric: bool = False) -> np.ndarray:
    """This rank's gradient estimate of ``||A x - b||^2 / (2m)`` over all its rows (local, no communication).

    Parameters
    ----------
    data : numpy.ndarray or QuantizedMatrix
        The full-precision rows (``"full"``) or the stored ones.
    b : numpy.ndarray
        Targets of these rows.
    x : numpy.ndarray
        The model.
    estimator : {"full", "naive", "double"}
        ``A^T (A x - b)``; ``Q(A)^T (Q(A) x - b)`` with one sample (biased by
        ``D x``, ``D`` the summed rounding variances); or double sampling
        ``Q1(A)^T (Q2(A) x - b)`` (unbiased).
    symmetric : bool
        Double sampling averaged with the two samples swapped (also unbiased).

    Returns
    -------
    numpy.ndarray
        The mean over rows, float64.
    """
    _check(data, estimator)
    m = data.shape[0]
    return _batch_gradient(data, np.asarray(b, np.float64), np.asarray(x, np.float64), np.arange(m), estimator,
                           symmetric) / max(m, 1)


def _check(data: np.ndarray | QuantizedMatrix, estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if (estimator == "full") == isinstance(data, QuantizedMatrix):
        raise TypeError("'full' takes the full-precision rows, 'naive' and 'double' a QuantizedMatrix")
    if estimator == "double" and data.samples < 2:
        raise ValueError("double sampling needs a QuantizedMatrix stored with samples=2")


@dataclass
class SGDResult:
    """What :func:`sgd_least_squares` returns (identical on every rank)."""

    x: np.ndarray
    """The average of the iterates over the second half of the steps (Polyak-Ruppert)."""
    x_last: np.ndarray
    """The last iterate."""
    steps: int
    lr: float
    """The step size used."""


def mean_row_norm2(data: np.ndarray | QuantizedMatrix, comm: MPI.Intracomm = MPI.COMM_WORLD) -> float:
    """Mean squared row norm over all ranks' rows (of every stored sample: the largest), collective."""
    m = data.shape[0]
    if isinstance(data, QuantizedMatrix):
        local = max(float(np.sum(data.dequantize(k) ** 2)) for k in range(data.samples))
    else:
        local = float(np.sum(np.asarray(data, np.float64) ** 2))
    total, count = comm.allreduce(np.array([local, m], np.float64), op=MPI.SUM)
    return float(total / max(count, 1))


def sgd_least_squares(data: np.ndarray | QuantizedMatrix, b: np.ndarray, estimator: str = "double", *,
                      comm: MPI.Intracomm = MPI.COMM_WORLD, epochs: int = 20, batch: int = 64,
                      lr: float | None = None, seed: int = 0, symmetric: bool = False,
                      compression: Compressor | None = None, x0: np.ndarray | None = None) -> SGDResult:
    """Data-parallel mini-batch SGD for ``min ||A x - b||^2 / (2m)`` (collective).

    Rows are sharded over the ranks in rank order. Every epoch draws one
    permutation of the global rows (the same on every rank, from ``seed``);
    step ``t`` takes its ``batch`` rows ``t*batch .. (t+1)*batch - 1``, each
    rank computes the gradient of those it holds, and the sums are added with
    ``MPI_Allreduce`` (or :func:`scaleml.quantized_allreduce` with
    ``compression``) and divided by ``batch``. On full-precision rows the
    trajectory is therefore the same at any number of ranks up to the order
    of the additions (stored samples are drawn per rank); the parameters are
    identical on every rank. Constant step size; the result is
    the average of the second half of the iterates.

    Parameters
    ----------
    data : numpy.ndarray or QuantizedMatrix
        This rank's rows: full precision for ``"full"``, stored for the others.
    b : numpy.ndarray
        This rank's targets.
    estimator : {"full", "naive", "double"}
        The gradient estimator (see :func:`least_squares_gradient`).
    comm : mpi4py.MPI.Intracomm
        The ranks holding the rows.
    epochs, batch : int
        Passes over the data; global rows per step (``rows // batch`` steps per epoch).
    lr : float, optional
        Step size; default ``0.5 / mean_row_norm2(data)``.
    seed : int
        Seed of the row permutations.
    symmetric : bool
        Symmetrized double sampling.
    compression : Compressor, optional
        Lossy format for the gradient sums (QSGD, Cast or OneBit), via
        :func:`scaleml.quantized_allreduce`; default exact ``MPI_Allreduce``.
    x0 : numpy.ndarray, optional
        Start (default zeros).

    Returns
    -------
    SGDResult
    """
    _check(data, estimator)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    m, d = data.shape
    if b.size != m:
        raise ValueError(f"b has {b.size} values for {m} rows")
    offset, total = _row_offset(m, comm)
    if total < batch or batch < 1 or epochs < 1:
        raise ValueError(f"need 1 <= batch <= rows ({total}) and epochs >= 1")
    if lr is None:
        lr = 0.5 / mean_row_norm2(data, comm)
    x = np.zeros(d) if x0 is None else np.array(x0, dtype=np.float64).reshape(d)
    per_epoch = total // batch
    steps = epochs * per_epoch
    tail = steps - steps // 2
    avg = np.zeros(d)
    g_sum = np.empty(d)
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(total)[: per_epoch * batch].reshape(per_epoch, batch)
        for t in range(per_epoch):
            rows = perm[t]
            rows = rows[(rows >= offset) & (rows < offset + m)] - offset
            g = _batch_gradient(data, b, x, rows, estimator, symmetric)
            if compression is None:
                comm.Allreduce(g, g_sum, op=MPI.SUM)
            else:
                quantized_allreduce(g, comm, compression, out=g_sum)
            x -= (lr / batch) * g_sum
            if epoch * per_epoch + t >= steps - tail:
                avg += x
    return SGDResult(avg / tail, x, steps, float(lr))


def stationary_point(data: np.ndarray | QuantizedMatrix, b: np.ndarray, estimator: str = "double", *,
                     comm: MPI.Intracomm = MPI.COMM_WORLD, symmetric: bool = False) -> np.ndarray:
    """The exact point where the estimator's full gradient over all ranks' rows vanishes (collective).

    SGD with a decreasing effective step converges to it: for ``"full"`` the
    least-squares solution (by the normal equations), for ``"naive"``
    ``(Q^T Q)^{-1} Q^T b``, for ``"double"`` ``(Q1^T Q2)^{-1} Q1^T b``
    (symmetrized: both averaged over the two orders).
    """
    _check(data, estimator)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if estimator == "full":
        q1 = q2 = np.asarray(data, np.float64)
    else:
        q1 = data.dequantize(0)
        q2 = q1 if estimator == "naive" else data.dequantize(1)
    d = q1.shape[1]
    H, c = q1.T @ q2, q1.T @ b
    if symmetric and estimator == "double":
        H, c = (H + H.T) / 2, (c + q2.T @ b) / 2
    local = np.concatenate([H.reshape(-1), c])
    tot = np.empty_like(local)
    comm.Allreduce(local, tot, op=MPI.SUM)
    return np.linalg.solve(tot[: d * d].reshape(d, d), tot[d * d:])


def least_squares_loss(X: np.ndarray, b: np.ndarray, x: np.ndarray, comm: MPI.Intracomm = MPI.COMM_WORLD) -> float:
    """``||X x - b||^2 / (2m)`` over all ranks' full-precision rows (collective)."""
    r = np.asarray(X, np.float64) @ x - np.asarray(b, np.float64)
    total, count = comm.allreduce(np.array([float(r @ r), r.size], np.float64), op=MPI.SUM)
    return float(total / (2 * max(count, 1)))


def lstsq_solution(X: np.ndarray, b: np.ndarray, comm: MPI.Intracomm = MPI.COMM_WORLD) -> np.ndarray:
    """``np.linalg.lstsq`` of all ranks' full-precision rows (gathered on rank 0, broadcast; collective)."""
    parts = comm.gather((np.asarray(X, np.float64), np.asarray(b, np.float64)), root=0)
    x = None
    if comm.Get_rank() == 0:
        x = np.linalg.lstsq(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                            rcond=None)[0]
    return comm.bcast(x, root=0)


@dataclass
class EstimatorRun:
    """One estimator's SGD run in :func:`compare_estimators`."""

    name: str
    x: np.ndarray
    """The SGD solution (tail average)."""
    distance: float
    """``||x - x_ls||`` to the least-squares solution of the full-precision data."""
    loss: float
    """Training loss ``||X x - b||^2 / (2m)`` on the full-precision data."""
    stationary: np.ndarray
    """The estimator's exact stationary point on the data it reads (:func:`stationary_point`)."""


@dataclass
class ZipMLComparison:
    """Full precision, naive rounding and double sampling on the same problem (identical on every rank)."""

    bits: int
    levels: str
    scope: str
    x_ls: np.ndarray
    """``np.linalg.lstsq`` of the full-precision data."""
    ls_loss: float
    runs: dict[str, EstimatorRun]
    """By estimator name: ``full``, ``naive``, ``double``."""
    naive_expected: np.ndarray
    """Where naive rounding is expected to go: the solution of ``(X^T X + D) x = X^T b``, ``D`` the summed
    per-value rounding variances (``E[Q^T Q] = X^T X + D``)."""
    stationary_mean: dict[str, np.ndarray] = field(default_factory=dict)
    """For ``naive`` and ``double``: the mean of the stationary point (:func:`stationary_point`) over
    ``spread_seeds`` independent re-quantizations of ``X`` (other seeds than the runs')."""
    stationary_std: dict[str, float] = field(default_factory=dict)
    """For ``naive`` and ``double``: root mean square distance of those stationary points from their mean,
    ``sqrt(mean ||x_k - mean||^2)``: how far the particular stored samples move the solution (the bias
    excluded)."""
    stored_bytes: int = 0
    """Bytes of the quantized matrix over all ranks (both samples, codes and levels)."""
    full_bytes: int = 0
    """Bytes of the float64 matrix over all ranks."""
    lr: float = 0.0


def compare_estimators(X: np.ndarray, b: np.ndarray, *, bits: int = 3,
                       levels: Literal["uniform", "optimal"] = "uniform",
                       scope: Literal["column", "global"] = "column", comm: MPI.Intracomm = MPI.COMM_WORLD,
                       epochs: int = 20, batch: int = 64, step: float = 0.5, seed: int = 0,
                       symmetric: bool = False, spread_seeds: int = 8,
                       compression: Compressor | None = None) -> ZipMLComparison:
    """Train least squares with the three estimators and measure each against ``np.linalg.lstsq`` (collective).

    ``X`` is stored with :func:`quantize_matrix` (two samples); naive rounding
    reads sample 0, double sampling both. All three runs use the same step
    size, ``step / R^2`` with ``R^2`` the largest mean squared row norm of
    the full and the stored data, the same batches and epochs.

    Parameters
    ----------
    X, b : numpy.ndarray
        This rank's full-precision rows and targets.
    bits, levels, scope
        See :func:`quantize_matrix`.
    comm : mpi4py.MPI.Intracomm
        The ranks holding the rows.
    epochs, batch, seed, symmetric, compression
        See :func:`sgd_least_squares`.
    step : float
        Step size relative to ``1 / R^2``.
    spread_seeds : int
        Re-quantizations for :attr:`ZipMLComparison.stationary_mean` and
        :attr:`ZipMLComparison.stationary_std` (0: skip).

    Returns
    -------
    ZipMLComparison
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    qm = quantize_matrix(X, bits, levels=levels, scope=scope, samples=2, seed=seed, comm=comm)
    x_ls = lstsq_solution(X, b, comm)
    lr = step / max(mean_row_norm2(X, comm), mean_row_norm2(qm, comm))
    runs = {}
    for name in ESTIMATORS:
        data = X if name == "full" else qm
        res = sgd_least_squares(data, b, name, comm=comm, epochs=epochs, batch=batch, lr=lr, seed=seed,
                                symmetric=symmetric, compression=compression)
        runs[name] = EstimatorRun(name, res.x, float(np.linalg.norm(res.x - x_ls)),
                                  least_squares_loss(X, b, res.x, comm),
                                  stationary_point(data, b, name, comm=comm, symmetric=symmetric))
    D = comm.allreduce(qm.rounding_variance(X).sum(axis=0), op=MPI.SUM)
    G = comm.allreduce(np.concatenate([(X.T @ X).reshape(-1), X.T @ b]), op=MPI.SUM)
    d = X.shape[1]
    naive_expected = np.linalg.solve(G[: d * d].reshape(d, d) + np.diag(D), G[d * d:])
    mean: dict[str, np.ndarray] = {}
    std: dict[str, float] = {}
    if spread_seeds > 0:
        points: dict[str, list[np.ndarray]] = {"naive": [], "double": []}
        for k in range(1, spread_seeds + 1):
            other = quantize_matrix(X, bits, levels=qm.levels, scope=scope, samples=2, seed=seed + 1000 * k,
                                    comm=comm)
            for name, got in points.items():
                got.append(stationary_point(other, b, name, comm=comm, symmetric=symmetric))
        for name, got in points.items():
            pts = np.array(got)
            mean[name] = pts.mean(axis=0)
            std[name] = float(np.sqrt(np.mean(np.sum((pts - mean[name]) ** 2, axis=1))))
    return ZipMLComparison(bits, levels, scope, x_ls, least_squares_loss(X, b, x_ls, comm), runs, naive_expected,
                           mean, std, int(comm.allreduce(qm.nbytes, op=MPI.SUM)),
                           int(comm.allreduce(X.nbytes, op=MPI.SUM)), float(lr))

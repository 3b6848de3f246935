"""ZipML stochastic rounding to data-optimal levels, and double sampling: kernel in ``csrc/compress/zipml.c``."""

from __future__ import annotations

import numpy as np

from .._native import ffi, lib
from ..errors import CorruptBufferError, check
from .base import ArrayLike, Compressor, _as_input, _encode_retry, _out_array, _ptr, _wptr
from .framing import Compressed, register_method

ZIPML_ID = int(lib.SCALEML_METHOD_ZIPML)


class ZipML(Compressor):
    """Stochastic rounding to an arbitrary sorted level set (ZipML).

    ``x`` between levels ``a <= x <= b`` rounds to ``b`` with probability
    ``(x - a)/(b - a)`` and to ``a`` otherwise (unbiased, variance
    ``(x - a)(b - x)``); values outside ``[levels[0], levels[-1]]`` are clamped.
    :meth:`fit` finds the data-optimal levels of a sample.

    Parameters
    ----------
    levels : array_like
        2 to 256 finite, strictly increasing levels.
    """

    method = ZIPML_ID
    name = "zipml"

    def __init__(self, levels: ArrayLike, seed: int = 0, rank: int | None = None) -> None:
        super().__init__(seed, rank)
        lv = np.asarray(levels, dtype=np.float64).reshape(-1)
        if not 2 <= lv.size <= 256:
            raise ValueError(f"ZipML needs 2 to 256 levels, got {lv.size}")
        if not np.all(np.isfinite(lv)) or not np.all(np.diff(lv) > 0):
            raise ValueError("levels must be finite and strictly increasing")
        self.levels = np.ascontiguousarray(lv)

    @classmethod
    def fit(cls, sample: ArrayLike, s: int, max_candidates: int = 512, seed: int = 0,
            rank: int | None = None) -> ZipML:
        """Quantizer with the ``s`` levels minimising the rounding variance of ``sample``.

        Dynamic programming over the sorted sample (candidates: its distinct
        values, or ``max_candidates`` quantiles of them), cost of an interval
        ``[c_i, c_j]`` with ``m`` points, sum ``S1``, sum of squares ``S2``:
        ``-m c_i c_j + (c_i + c_j) S1 - S2``. Levels include the sample's min
        and max. Fewer levels are returned when the sample has fewer distinct
        values (at least 2: a constant sample gets a second level above it).
        """
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 2 <= s <= 256:
            raise ValueError(f"s must be an integer in 2..256, got {s!r}")
        a = _as_input(sample, "sample").reshape(-1).astype(np.float64)
        if a.size == 0:
            raise ValueError("cannot fit levels to an empty sample")
        if not np.all(np.isfinite(a)):
            raise ValueError("sample contains NaN or Inf")
        a = np.sort(a)
        levels = np.empty(s, dtype=np.float64)
        count = ffi.new("uint32_t *")
        check(lib.scaleml_zipml_levels(_ptr(a, "double *"), a.size, s, max(int(max_candidates), s),
                                        _wptr(levels, "double *"), count))
        lv = levels[:count[0]]
        if lv.size == 1:
            lv = np.array([lv[0], lv[0] + max(1.0, abs(lv[0]))])
        return cls(lv, seed=seed, rank=rank)

    @classmethod
    def uniform(cls, lo: float, hi: float, s: int, seed: int = 0, rank: int | None = None) -> ZipML:
        """Quantizer with ``s`` evenly spaced levels from ``lo`` to ``hi``."""
        return cls(np.linspace(lo, hi, s), seed=seed, rank=rank)

    def variance(self, x: ArrayLike) -> float:
        """Exact expected squared error ``sum (x - a)(b - x)`` of rounding (clamped) ``x``."""
        v = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), self.levels[0], self.levels[-1])
        j = np.clip(np.searchsorted(self.levels, v, side="right") - 1, 0, self.levels.size - 2)
        return float(np.sum((v - self.levels[j]) * (self.levels[j + 1] - v)))

    def encode(self, x: ArrayLike, *, step: int | None = None, stream: int = 0,
               checksum: bool = False) -> Compressed:
        """Round ``x`` stochastically; ``stream`` selects an independent draw for the same step;
        ``checksum=True`` stores the payload's CRC-32 in the header (verified on decode)."""
        a = _as_input(x)
        key = self._key(step, stream)
        s = self.levels.size
        cap = int(lib.scaleml_zipml_bytes(a.size, s))
        xp, lp = _ptr(a), _ptr(self.levels, "double *")

        def call(out, cap, written):
            return lib.scaleml_zipml_encode(xp, a.itemsize, a.size, lp, s, key, out, cap, written)

        return _encode_retry(call, cap, self.method, a.dtype, a.shape, (s,), checksum)


def _decode_zipml(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    s = c.params[0]
    if not 2 <= s <= 256:
        raise CorruptBufferError(f"ZipML header: bad level count {s}")
    p = c.payload
    if p.size != lib.scaleml_zipml_bytes(c.size, s):
        raise CorruptBufferError(
            f"ZipML payload has {p.size} bytes, expected {lib.scaleml_zipml_bytes(c.size, s)}")
    out = _out_array(c, out)
    check(lib.scaleml_zipml_decode(_ptr(p, "uint8_t *"), p.size, out.size, s, _wptr(out), out.itemsize))
    return out


def double_sampling_gradient(A: ArrayLike, b: ArrayLike, x: ArrayLike, quantizer: ZipML, *,
                             step: int | None = None, double: bool = True) -> np.ndarray:
    """Least-squares gradient from quantized data rows (ZipML double sampling).

    Returns ``sum_r Q1(a_r) (Q2(a_r)^T x - b_r) / m`` for the ``m`` rows of
    ``A`` (the gradient of ``||A x - b||^2 / (2m)``), where ``Q1`` and ``Q2``
    are two independent stochastic roundings (streams 1 and 2 of the same
    step). Unbiased. With ``double=False`` a single rounding is used for both
    factors, ``Q1(a)(Q1(a)^T x - b)``: biased by ``diag(Var Q(a)) x``.
    """
    A = _as_input(A, "A")
    if A.ndim != 2:
        raise ValueError("A must be a matrix")
    bv = np.asarray(b, dtype=np.float64).reshape(-1)
    xv = np.asarray(x, dtype=np.float64).reshape(-1)
    if bv.size != A.shape[0] or xv.size != A.shape[1]:
        raise ValueError("shapes of A, b and x do not match")
    if step is None:
        step = quantizer.step
        quantizer.step += 1
    q1 = quantizer.decode(quantizer.encode(A, step=step, stream=1)).astype(np.float64)
    q2 = quantizer.decode(quantizer.encode(A, step=step, stream=2)).astype(np.float64) if double else q1
    return q1.T @ (q2 @ xv - bv) / A.shape[0]


register_method(ZipML.method, ZipML.name, _decode_zipml)

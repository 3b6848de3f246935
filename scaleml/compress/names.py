"""Compression names: the one parser from a name (``qsgd4``, ``topk0.01``, ``onebit``...) to its compressor.

Every entry point that takes a compression by name reads it here: the
configuration (``SCALEML_COMPRESSION``, ``scaleml.Comm(compression="qsgd4")``),
:class:`scaleml.train.GradientReducer`, the DDP hook (:mod:`scaleml.torch`)
and the benchmark (``scaleml-bench --compression``). Each accepts the kinds it
can run (:func:`parse_compression`'s ``kinds``) and builds the compressor with
:meth:`CompressionSpec.compressor`.

=====================  ==========  =================================================================
name                   kind        meaning
=====================  ==========  =================================================================
``none``               none        exact ``MPI_Allreduce``
``dropin``             dropin      ``scaleml.Comm(comm).Allreduce`` (exact)
``sparse``             sparse      ``scaleml.sparse_allreduce`` of the non-zeros (exact)
``topkR``              topk        ``TopK(ratio=R)``, ``0 < R <= 1`` (``topk0.01``, ``topk.5``, ``topk1e-3``)
``qsgdB``              qsgd        ``QSGD(bits=B)``, ``B`` in 1..8; ``qsgdBmax``: ``norm="max"``;
                                   ``_ef`` after either: with error feedback (``qsgd4_ef``)
``onebit``             onebit      ``OneBit()``
``fp16``, ``bf16``     cast        ``Cast("fp16")``, ``Cast("bf16")``
``adaptive[PI]``       adaptive    ``scaleml.adaptive_allreduce``, proportion ``1/PI`` (default 32)
``powersgdR``          powersgd    ``PowerSGD(rank=R)``, ``R >= 1`` (``powersgd1``, ``powersgd4``), factors summed
                                   exactly; ``powersgdR_q8``: factors summed with ``QSGD(bits=8)``
=====================  ==========  =================================================================

Names are read without surrounding blanks and in any case. The *value
formats* (:data:`FORMAT_KINDS`: ``qsgdB``, ``qsgdBmax``, ``onebit``, ``fp16``,
``bf16``, without ``_ef``) are one compressor each (:func:`parse_format`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from .base import Compressor
from .cast import Cast
from .onebit import OneBit
from .powersgd import PowerSGD
from .qsgd import QSGD
from .topk import TopK

__all__ = ["DEFAULT_PI", "FORMAT_KINDS", "KINDS", "VALUE_FORMATS", "CompressionSpec", "choices",
           "parse_compression", "parse_format"]

KINDS = ("none", "dropin", "sparse", "topk", "qsgd", "onebit", "adaptive", "cast", "powersgd")
"""Every kind of compression name, in the order the error messages list them."""

FORMAT_KINDS = ("qsgd", "onebit", "cast")
"""The kinds that are a value format: one compressor, no path of their own."""

VALUE_FORMATS = ("qsgd1", "qsgd2", "qsgd3", "qsgd4", "qsgd5", "qsgd6", "qsgd7", "qsgd8", "fp16", "bf16", "onebit")
"""The value formats with every parameter at its default (what ``SCALEML_COMPRESSION`` takes besides ``none``)."""

DEFAULT_PI = 32.0
"""``adaptive``'s proportion ``1/PI`` sent when the name gives none."""

# What each kind's names look like, for the error that lists the choices.
_SPELLINGS = {
    "none": "none",
    "dropin": "dropin",
    "sparse": "sparse",
    "topk": "topkR (e.g. topk0.01)",
    "qsgd": "qsgdB or qsgdB_ef (B in 1..8, e.g. qsgd4; qsgdBmax: max norm)",
    "onebit": "onebit",
    "adaptive": "adaptive or adaptivePI",
    "cast": "fp16, bf16",
    "powersgd": "powersgdR or powersgdR_q8 (R >= 1, e.g. powersgd4)",
}
# The ratio of topkR: 0.01, .5, 1, 1., 1.00, 1e-3 (the reducer's and the benchmark's spellings together).
_TOPK = re.compile(r"topk((?:\d+\.?\d*|\.\d+)(?:e-?\d+)?)")
_QSGD = re.compile(r"qsgd(\d+)(max)?(_ef)?")
_ADAPTIVE = re.compile(r"adaptive(\d*\.?\d+)?")
_POWERSGD = re.compile(r"powersgd(\d+)(_q8)?")
_POWERSGD_FACTOR_BITS = 8  # powersgdR_q8: the factors' QSGD bits
# The paths whose collectives take a compressor, and the one algorithm each runs when fixed (reproducible).
_FIXED_SPARSE = "split_allgather"
_FIXED_DENSE = "quantized_ring"
_FIXED_FEEDBACK = "quantized_direct"


@dataclass(frozen=True)
class CompressionSpec:
    """A parsed compression name."""

    name: str
    """The name as read (blanks stripped, lower case): ``none``, ``topk0.01``, ``qsgd4_ef``, ..."""
    kind: str
    """``none``, ``dropin``, ``sparse``, ``topk``, ``qsgd``, ``onebit``, ``adaptive``, ``cast`` or ``powersgd``."""
    ratio: float = 0.0
    bits: int = 0
    pi: float = 0.0
    cast: str = ""
    error_feedback: bool = False
    """Whether a training path (the reducer, the DDP hook) keeps error feedback: always for ``topk``,
    ``onebit``, ``adaptive`` and ``powersgd``; for ``qsgd`` when the name ends in ``_ef``."""
    norm: str = "l2"
    """QSGD's norm (``max`` for ``qsgdBmax``)."""
    powersgd_rank: int = 0
    """PowerSGD's rank R (``powersgdR``)."""
    factor_bits: int = 0
    """The QSGD bits of PowerSGD's factor AllReduces (``powersgdR_q8``: 8; 0: exact)."""

    @property
    def lossy(self) -> bool:
        """Whether the path changes the values (every path but ``none``, ``dropin`` and ``sparse``)."""
        return self.kind not in ("none", "dropin", "sparse")

    @property
    def fixed_algorithm(self) -> str | None:
        """The one algorithm a training path runs with ``algorithm="fixed"`` (None: the path has no choice).

        ``split_allgather`` for ``sparse`` and ``topk``; for the value formats
        ``quantized_direct`` with error feedback, else ``quantized_ring``.
        """
        if self.kind in ("sparse", "topk"):
            return _FIXED_SPARSE
        if self.kind in FORMAT_KINDS:
            return _FIXED_FEEDBACK if self.error_feedback else _FIXED_DENSE
        return None

    def compressor(self, *, seed: int = 0, rank: int | None = None) -> Compressor | None:
        """A new compressor of this name (its step counter at 0); None for the kinds that have none.

        Parameters
        ----------
        seed, rank : int
            Key the compressor's random stream (see :class:`scaleml.compress.Compressor`).

        Returns
        -------
        Compressor or None
            ``TopK``, ``QSGD``, ``OneBit`` or ``Cast`` with their default
            buckets; None for ``none``, ``dropin``, ``sparse``, ``adaptive`` and
            ``powersgd`` (see :meth:`powersgd`); not wrapped in error feedback: the caller decides.
        """
        if self.kind == "topk":
            return TopK(ratio=self.ratio, seed=seed, rank=rank)
        if self.kind == "qsgd":
            return QSGD(bits=self.bits, norm="max" if self.norm == "max" else "l2", seed=seed, rank=rank)
        if self.kind == "onebit":
            return OneBit(seed=seed, rank=rank)
        if self.kind == "cast":
            return Cast("bf16" if self.cast == "bf16" else "fp16", seed=seed, rank=rank)
        return None

    def powersgd(self, *, seed: int = 0, rank: int | None = None) -> PowerSGD | None:
        """A new :class:`PowerSGD` of this name (its defaults otherwise); None for the other kinds.

        Parameters
        ----------
        seed : int
            Seed of the random ``Q`` factors (and of the factors' QSGD rounding for ``_q8``).
        rank : int, optional
            This process's rank: keys the factors' QSGD rounding (not the random ``Q``, which every rank
            draws alike).
        """
        if self.kind != "powersgd":
            return None
        factors = QSGD(bits=self.factor_bits, seed=seed, rank=rank) if self.factor_bits else None
        return PowerSGD(self.powersgd_rank, factor_compression=factors, seed=seed)


def choices(kinds: Collection[str] = KINDS) -> str:
    """The names of ``kinds``, as the errors list them."""
    return ", ".join(_SPELLINGS[k] for k in KINDS if k in kinds)


def _read(name: str, s: str) -> CompressionSpec | None:
    """The spec of the lower-case name ``s`` (None: no kind's spelling); ValueError for a parameter out of range."""
    if s in ("none", "dropin", "sparse"):
        return CompressionSpec(s, s)
    if s == "onebit":
        return CompressionSpec(s, "onebit", error_feedback=True)
    if s in ("fp16", "bf16"):
        return CompressionSpec(s, "cast", cast=s)
    if m := _TOPK.fullmatch(s):
        ratio = float(m.group(1))
        if not 0 < ratio <= 1:
            raise ValueError(f"the ratio of {name!r} must be in (0, 1], got {ratio}")
        return CompressionSpec(s, "topk", ratio=ratio, error_feedback=True)
    if m := _QSGD.fullmatch(s):
        bits = int(m.group(1))
        if not 1 <= bits <= 8:
            raise ValueError(f"QSGD takes 1 to 8 bits, got {name!r}")
        return CompressionSpec(s, "qsgd", bits=bits, error_feedback=bool(m.group(3)),
                               norm="max" if m.group(2) else "l2")
    if m := _POWERSGD.fullmatch(s):
        rank = int(m.group(1))
        if rank < 1:
            raise ValueError(f"PowerSGD's rank must be >= 1, got {name!r}")
        return CompressionSpec(s, "powersgd", powersgd_rank=rank, error_feedback=True,
                               factor_bits=_POWERSGD_FACTOR_BITS if m.group(2) else 0)
    if m := _ADAPTIVE.fullmatch(s):
        pi = float(m.group(1)) if m.group(1) else DEFAULT_PI
        if pi < 1:
            raise ValueError(f"the proportion of {name!r} must be >= 1, got {pi}")
        return CompressionSpec(s, "adaptive", pi=pi, error_feedback=True)
    return None


def parse_compression(name: str, kinds: Collection[str] = KINDS) -> CompressionSpec:
    """Parse a compression name (see the module's table).

    Parameters
    ----------
    name : str
        The name; blanks around it and case are ignored.
    kinds : collection of str
        The kinds the caller runs (default: all of :data:`KINDS`).

    Returns
    -------
    CompressionSpec

    Raises
    ------
    ValueError
        ``unknown compression NAME; expected one of ...`` (the choices of
        ``kinds``) for a name of no kind or of another kind; for a known
        spelling whose parameter is out of range (``qsgd9``, ``topk2``,
        ``adaptive0.5``), a message naming the range; for a non-string,
        ``compression must be a string``.
    """
    if not isinstance(name, str):
        raise ValueError(f"compression must be a string, got {type(name).__name__}")
    spec = _read(name, name.strip().lower())
    if spec is None or spec.kind not in kinds:
        raise ValueError(f"unknown compression {name!r}; expected one of {choices(kinds)}")
    return spec


def parse_format(name: str) -> CompressionSpec:
    """Parse a value format name: ``qsgdB``, ``qsgdBmax``, ``onebit``, ``fp16`` or ``bf16`` (no ``_ef``).

    Its :meth:`~CompressionSpec.compressor` is the format; what ``error_feedback``
    says of training paths does not apply to it.

    Raises
    ------
    ValueError
        ``unknown compression NAME; ...`` for anything else (a bit count out
        of range says so).
    """
    try:
        spec: CompressionSpec | None = parse_compression(name, FORMAT_KINDS)
    except ValueError as exc:
        if not str(exc).startswith("unknown compression"):
            raise
        spec = None
    if spec is None or spec.name.endswith("_ef"):
        raise ValueError(f"unknown compression {name!r}; expected a value format: qsgdB or qsgdBmax (B in 1..8), "
                         "onebit, fp16, bf16")
    return spec

"""Alpha-beta cost model of the sparse AllReduce family; ``auto`` starts from its minimum.

The formulas live next to each algorithm, in its C file (the registry's cost
functions); this module holds the machine parameters and the Python entry
points. Measured times correct the predictions online (:mod:`scaleml.tuner`).

Each prediction is ``messages * alpha + bytes_on_the_wire * beta + bytes_touched * gamma``
along the critical path of one rank, with the step counts and bytes that the
header comment of each algorithm's C file gives:

* ``alpha``: seconds per message (latency);
* ``beta``: seconds per byte sent (inverse bandwidth);
* ``gamma``: seconds per byte of local work (merging, packing, densifying);
* ``alpha_intra``, ``beta_intra``: the same within a node (shared memory), for
  the intra-node steps of the hierarchical algorithms; ``alpha`` and ``beta``
  are the inter-node (network) ones, which every flat algorithm is costed at;
* the lossy formats' coding, at each format's own seconds per value
  (:attr:`CostParams.codecs`): every lossy path counts the values it
  encodes, decodes, and decodes and adds in place.

The nnz of the global sum is not known before the collective runs; it is
estimated from the ranks' nnz by assuming independent, uniformly spread
indices (``n * (1 - (1 - k/n)^m)`` for the union of m ranks), which is the
pessimistic case for sparse algorithms: overlapping indices only make them
cheaper.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from . import algorithms, config
from ._native import lib

ALGORITHMS = algorithms.EXACT
"""The exact algorithms of :func:`scaleml.sparse_allreduce`, in registry order (see :mod:`scaleml.algorithms`)."""


class CodecSeconds(NamedTuple):
    """Seconds per value of one lossy format's passes (the kernels of ``csrc/collectives/codec.c``)."""

    encode: float
    decode: float
    decode_add: float
    """Decoding added into the values in place (the reduce steps' pass)."""


CODEC_FORMATS: tuple[str, ...] = ("fp16", "bf16", "onebit", *(f"qsgd{bits}" for bits in range(1, 9)))
"""The lossy formats the model costs, by :attr:`scaleml.value_format.ValueFormat.name`."""

_NS = 1e-9
DEFAULT_CODECS: tuple[tuple[str, CodecSeconds], ...] = (
    ("fp16", CodecSeconds(0.25 * _NS, 0.20 * _NS, 0.50 * _NS)),
    ("bf16", CodecSeconds(0.28 * _NS, 0.23 * _NS, 0.55 * _NS)),
    ("onebit", CodecSeconds(0.40 * _NS, 0.17 * _NS, 0.15 * _NS)),
    *((f"qsgd{bits}", CodecSeconds(1.1 * _NS, 0.42 * _NS, 0.50 * _NS)) for bits in range(1, 7)),
    ("qsgd7", CodecSeconds(0.95 * _NS, 0.96 * _NS, 1.55 * _NS)),
    ("qsgd8", CodecSeconds(1.0 * _NS, 0.70 * _NS, 1.25 * _NS)),
)
"""Measured here (one core of an AMD EPYC, float32, 2^20 .. 2^22 values; see :class:`CostParams`)."""

_NOT_COSTED = CodecSeconds(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class CostParams:
    """Machine parameters of the model.

    Defaults describe a commodity cluster (5 us latency, about 10 Gbit/s per
    link, 4 GB/s of local merge throughput) and the engine's fixed cost per
    call measured here (30 us: the agreement, an MPI_Allreduce of 192 bytes,
    and the Python around it). They are replaced, in this order, by the file
    ``scaleml-bench calibrate`` writes (``$SCALEML_COST_FILE``, else
    ``~/.config/scaleml/cost_model.json``), the environment variables
    ``SCALEML_ALPHA``, ``SCALEML_BETA``, ``SCALEML_GAMMA`` and
    ``SCALEML_DELTA`` (seconds, seconds per byte, seconds per byte, seconds),
    and :func:`set_params`.

    ``alpha`` and ``beta`` are the network's (between nodes); ``alpha_intra``
    and ``beta_intra`` are those within a node (shared memory; defaults 1 us
    and 10 GB/s), which only the hierarchical algorithms' intra-node steps
    use (``scaleml-bench calibrate`` measures both levels; the file or
    :func:`set_params` sets them).

    ``codecs`` holds the seconds per value of each lossy format's encode,
    decode and decode-and-add passes (:data:`CODEC_FORMATS`; float64 values
    use the float32 figures). The defaults, :data:`DEFAULT_CODECS`, were
    measured on one core of this project's development machine (an AMD EPYC;
    float32, 2^20 .. 2^22 values; rounded from the faster of several runs, as
    the machine was shared and other load slowed the longer passes up to
    5x), in ns per value (encode, decode, decode-and-add): fp16 0.25, 0.20, 0.50; bf16 0.28,
    0.23, 0.55; 1-bit 0.40, 0.17, 0.15; QSGD of 1 to 6 bits 1.1, 0.42, 0.50,
    7 bits 0.95, 0.96, 1.55, 8 bits 1.0, 0.70, 1.25. ``scaleml-bench
    calibrate`` measures them on the machine it runs on; :func:`set_params`
    sets any of them.
    """

    alpha: float = 5e-6
    beta: float = 1.0 / 1.25e9
    gamma: float = 1.0 / 4e9
    delta: float = 30e-6
    alpha_intra: float = 1e-6
    beta_intra: float = 1.0 / 10e9
    codecs: tuple[tuple[str, CodecSeconds], ...] = DEFAULT_CODECS
    """(format name, :class:`CodecSeconds`) pairs, in :data:`CODEC_FORMATS` order: a tuple, so the
    parameters stay hashable."""

    def codec(self, name: str) -> CodecSeconds:
        """The seconds per value of format ``name``'s passes; zeros (not costed) for a format not listed."""
        return next((seconds for key, seconds in self.codecs if key == name), _NOT_COSTED)

    def with_codecs(self, changes: Mapping[str, Sequence[float]]) -> CostParams:
        """A copy with the seconds of the formats in ``changes`` (name -> (encode, decode, decode_add)) replaced.

        ``ValueError`` for a name not in :data:`CODEC_FORMATS` or seconds that are not three numbers >= 0.
        """
        table = dict(self.codecs)
        for name, seconds in changes.items():
            if name not in CODEC_FORMATS:
                raise ValueError(f"unknown lossy format {name!r}; expected one of {CODEC_FORMATS}")
            values = tuple(float(v) for v in seconds)
            if len(values) != 3 or any(not v >= 0 for v in values):
                raise ValueError(f"{name}: expected three seconds per value >= 0 (encode, decode, decode_add), "
                                 f"got {seconds!r}")
            table[name] = CodecSeconds(*values)
        ordered = tuple((n, table[n]) for n in CODEC_FORMATS if n in table)
        return replace(self, codecs=ordered)

    def to_json(self) -> dict:
        """The parameters as the calibration file holds them (``"codecs"``: :func:`codecs_to_json`)."""
        return {**{f: getattr(self, f) for f in _FIELDS}, "codecs": codecs_to_json(dict(self.codecs))}


def calibration_file() -> Path:
    """Where ``scaleml-bench calibrate`` saves and ``auto`` reads the parameters."""
    configured = os.environ.get("SCALEML_COST_FILE")
    return Path(configured) if configured else Path.home() / ".config" / "scaleml" / "cost_model.json"


_FIELDS = ("alpha", "beta", "gamma", "delta", "alpha_intra", "beta_intra")
_ENV_FIELDS = ("alpha", "beta", "gamma", "delta")


def codecs_from_json(saved: object) -> dict[str, CodecSeconds]:
    """The ``"codecs"`` object of a calibration file (name -> {"encode", "decode", "decode_add"}, seconds
    per value) as :class:`CodecSeconds`; names this version does not know are skipped."""
    if not isinstance(saved, dict):
        raise ValueError("codecs: not a JSON object")
    return {name: CodecSeconds(*(float(entry[k]) for k in CodecSeconds._fields))
            for name, entry in saved.items() if name in CODEC_FORMATS}


def codecs_to_json(codecs: Mapping[str, CodecSeconds]) -> dict[str, dict[str, float]]:
    """The inverse of :func:`codecs_from_json`."""
    return {name: seconds._asdict() for name, seconds in codecs.items()}


def _params_from_env() -> CostParams:
    params = CostParams()
    path = calibration_file()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            loaded = replace(params, **{f: float(saved[f]) for f in _FIELDS if f in saved})
            if "codecs" in saved:
                loaded = loaded.with_codecs(codecs_from_json(saved["codecs"]))
            params = loaded  # all of the file or none of it
        except (OSError, ValueError, TypeError, KeyError) as exc:
            warnings.warn(f"ignoring unreadable cost-model file {path}: {exc}", stacklevel=2)
    for field in _ENV_FIELDS:
        var = f"SCALEML_{field.upper()}"
        if os.environ.get(var, "").strip():
            params = replace(params, **{field: config.parse(var, os.environ[var])})
    return params


_params = _params_from_env()


def get_params() -> CostParams:
    """Return the parameters ``auto`` uses now."""
    return _params


def params_fingerprint() -> int:
    """A 62-bit digest of the parameters: ranks compare it so ``auto`` decides alike everywhere."""
    return _fingerprint(_params)


@functools.lru_cache(maxsize=8)
def _fingerprint(params: CostParams) -> int:  # every agreement sends it: computed once per value
    digest = hashlib.blake2b(repr(astuple(params)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def set_params(alpha: float | None = None, beta: float | None = None, gamma: float | None = None,
               delta: float | None = None, codecs: Mapping[str, Sequence[float]] | None = None,
               alpha_intra: float | None = None, beta_intra: float | None = None) -> CostParams:
    """Set the parameters ``auto`` uses (every rank must set the same values).

    Parameters
    ----------
    alpha, beta, gamma, delta : float, optional
        Latency per message (s), time per byte sent (s/B), time per byte of
        local work (s/B) and the engine's fixed time per call (s). Omitted
        ones keep their value.
    alpha_intra, beta_intra : float, optional
        Latency per message (s) and time per byte (s/B) within a node.
    codecs : mapping, optional
        Format name (:data:`CODEC_FORMATS`) -> seconds per value of its
        (encode, decode, decode_add) passes; formats not named keep theirs.
    """
    global _params
    given = {"alpha": alpha, "beta": beta, "gamma": gamma, "delta": delta, "alpha_intra": alpha_intra,
             "beta_intra": beta_intra}
    changes = {k: float(v) for k, v in given.items() if v is not None}
    if any(not v >= 0 for v in changes.values()):
        raise ValueError("cost parameters must be non-negative numbers")
    params = replace(_params, **changes)
    _params = params.with_codecs(codecs) if codecs else params
    return _params


def expected_union(n: int, k_mean: float, ranks: float) -> float:
    """Expected nnz of the sum of ``ranks`` vectors with ``k_mean`` random non-zeros each."""
    return float(lib.scaleml_expected_union(n, k_mean, ranks))


def predict(algorithm: str, n: int, P: int, nnz_max: int, nnz_sum: int, index_bytes: int, value_bytes: int,
            out: str = "dense", params: CostParams | None = None, dense_input: bool = False,
            quantized_value_bytes: float = 0.0, codec: str | None = None) -> float:
    """Predicted seconds of one sparse AllReduce (the cost function of the algorithm's C file).

    Parameters
    ----------
    algorithm : str
        One of :data:`ALGORITHMS`.
    n : int
        Dimension of the vectors.
    P : int
        Number of ranks.
    nnz_max, nnz_sum : int
        Largest and total number of non-zeros over the ranks.
    index_bytes, value_bytes : int
        Bytes per index (4 or 8) and per value (4 or 8).
    out : {"dense", "sparse"}
        Form the caller wants the result in (converting costs local work).
    params : CostParams, optional
        Machine parameters; default :func:`get_params`.
    dense_input : bool
        The caller holds dense vectors (``scaleml.Comm.Allreduce``): every
        algorithm that takes only sparse input first scans them for non-zeros.
    quantized_value_bytes : float
        Bytes per value of the lossy format dense data travels in (0: exact;
        :meth:`scaleml.value_format.ValueFormat.value_bytes`).
    codec : str, optional
        That format's name (:data:`CODEC_FORMATS`): its passes are costed at
        :meth:`CostParams.codec` seconds per value.
    """
    p = params or _params
    seconds = p.codec(codec) if codec else _NOT_COSTED
    return algorithms.get(algorithm).cost(n, P, nnz_max, nnz_sum, index_bytes, value_bytes, out == "sparse",
                                          dense_input, p.alpha, p.beta, p.gamma, p.delta, quantized_value_bytes,
                                          *seconds)


def choose(n: int, P: int, nnz_max: int, nnz_sum: int, index_bytes: int, value_bytes: int,
           out: str = "dense", params: CostParams | None = None,
           dense_input: bool = False) -> tuple[str, dict[str, float]]:
    """Return the algorithm with the smallest predicted time, and every prediction (see :func:`predict`)."""
    predictions = {alg: predict(alg, n, P, nnz_max, nnz_sum, index_bytes, value_bytes, out, params, dense_input)
                   for alg in ALGORITHMS}
    best = min(ALGORITHMS, key=lambda a: predictions[a])  # ties: earlier in ALGORITHMS
    return best, predictions

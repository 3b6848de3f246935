"""Alpha-beta cost model of the sparse AllReduce family; ``auto`` starts from its minimum.

The formulas live next to each algorithm, in its C file (the registry's cost
functions); this module holds the machine parameters and the Python entry
points. Measured times correct the predictions online (:mod:`scaleml.tuner`).

Each prediction is ``messages * alpha + bytes_on_the_wire * beta + bytes_touched * gamma``
along the critical path of one rank, with the step counts and bytes that the
header comment of each algorithm's C file gives:

* ``alpha``: seconds per message (latency);
* ``beta``: seconds per byte sent (inverse bandwidth);
* ``gamma``: seconds per byte of local work (merging, packing, densifying).

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
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from . import algorithms, config
from ._native import lib

ALGORITHMS = algorithms.EXACT
"""The exact algorithms of :func:`scaleml.sparse_allreduce`, in registry order (see :mod:`scaleml.algorithms`)."""


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
    """

    alpha: float = 5e-6
    beta: float = 1.0 / 1.25e9
    gamma: float = 1.0 / 4e9
    delta: float = 30e-6


def calibration_file() -> Path:
    """Where ``scaleml-bench calibrate`` saves and ``auto`` reads the parameters."""
    configured = os.environ.get("SCALEML_COST_FILE")
    return Path(configured) if configured else Path.home() / ".config" / "scaleml" / "cost_model.json"


_FIELDS = ("alpha", "beta", "gamma", "delta")


def _params_from_env() -> CostParams:
    params = CostParams()
    path = calibration_file()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            params = replace(params, **{f: float(saved[f]) for f in _FIELDS if f in saved})
        except (OSError, ValueError, TypeError) as exc:
            warnings.warn(f"ignoring unreadable cost-model file {path}: {exc}", stacklevel=2)
    for field in _FIELDS:
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
               delta: float | None = None) -> CostParams:
    """Set the parameters ``auto`` uses (every rank must set the same values).

    Parameters
    ----------
    alpha, beta, gamma, delta : float, optional
        Latency per message (s), time per byte sent (s/B), time per byte of
        local work (s/B) and the engine's fixed time per call (s). Omitted
        ones keep their value.
    """
    global _params
    given = {"alpha": alpha, "beta": beta, "gamma": gamma, "delta": delta}
    changes = {k: float(v) for k, v in given.items() if v is not None}
    if any(not v >= 0 for v in changes.values()):
        raise ValueError("cost parameters must be non-negative numbers")
    _params = replace(_params, **changes)
    return _params


def expected_union(n: int, k_mean: float, ranks: float) -> float:
    """Expected nnz of the sum of ``ranks`` vectors with ``k_mean`` random non-zeros each."""
    return float(lib.scaleml_expected_union(n, k_mean, ranks))


def predict(algorithm: str, n: int, P: int, nnz_max: int, nnz_sum: int, index_bytes: int, value_bytes: int,
            out: str = "dense", params: CostParams | None = None, dense_input: bool = False) -> float:
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
    """
    p = params or _params
    return algorithms.get(algorithm).cost(n, P, nnz_max, nnz_sum, index_bytes, value_bytes, out == "sparse",
                                          dense_input, p.alpha, p.beta, p.gamma, p.delta)


def choose(n: int, P: int, nnz_max: int, nnz_sum: int, index_bytes: int, value_bytes: int,
           out: str = "dense", params: CostParams | None = None,
           dense_input: bool = False) -> tuple[str, dict[str, float]]:
    """Return the algorithm with the smallest predicted time, and every prediction (see :func:`predict`)."""
    predictions = {alg: predict(alg, n, P, nnz_max, nnz_sum, index_bytes, value_bytes, out, params, dense_input)
                   for alg in ALGORITHMS}
    best = min(ALGORITHMS, key=lambda a: predictions[a])  # ties: earlier in ALGORITHMS
    return best, predictions

"""Alpha-beta cost model of the sparse AllReduce family; ``auto`` picks its minimum.

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

import hashlib
import json
import math
import os
import warnings
from dataclasses import astuple, dataclass, replace
from pathlib import Path

ALGORITHMS = ("recursive_doubling", "split_allgather", "split_dense", "dense")
"""Algorithms of :func:`scaleml.sparse_allreduce`, in the order of their C codes (1..4)."""

HEADER_BYTES = 16  # per packed segment (sparse_vector.h)


@dataclass(frozen=True)
class CostParams:
    """Machine parameters of the model.

    Defaults describe a commodity cluster (5 us latency, about 10 Gbit/s per
    link, 4 GB/s of local merge throughput). They are replaced, in this order,
    by the file ``scaleml-bench calibrate`` writes (``$SCALEML_COST_FILE``, else
    ``~/.config/scaleml/cost_model.json``), the environment variables
    ``SCALEML_ALPHA``, ``SCALEML_BETA`` and ``SCALEML_GAMMA`` (seconds, seconds
    per byte, seconds per byte), and :func:`set_params`.
    """

    alpha: float = 5e-6
    beta: float = 1.0 / 1.25e9
    gamma: float = 1.0 / 4e9


def calibration_file() -> Path:
    """Where ``scaleml-bench calibrate`` saves and ``auto`` reads the parameters."""
    configured = os.environ.get("SCALEML_COST_FILE")
    return Path(configured) if configured else Path.home() / ".config" / "scaleml" / "cost_model.json"


def _params_from_env() -> CostParams:
    params = CostParams()
    path = calibration_file()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            params = replace(params, **{f: float(saved[f]) for f in ("alpha", "beta", "gamma") if f in saved})
        except (OSError, ValueError, TypeError) as exc:
            warnings.warn(f"ignoring unreadable cost-model file {path}: {exc}", stacklevel=2)
    for field, var in (("alpha", "SCALEML_ALPHA"), ("beta", "SCALEML_BETA"), ("gamma", "SCALEML_GAMMA")):
        if var in os.environ:
            params = replace(params, **{field: float(os.environ[var])})
    return params


_params = _params_from_env()


def get_params() -> CostParams:
    """Return the parameters ``auto`` uses now."""
    return _params


def params_fingerprint() -> int:
    """A 62-bit digest of the parameters: ranks compare it so ``auto`` decides alike everywhere."""
    digest = hashlib.blake2b(repr(astuple(_params)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def set_params(alpha: float | None = None, beta: float | None = None, gamma: float | None = None) -> CostParams:
    """Set the parameters ``auto`` uses (every rank must set the same values).

    Parameters
    ----------
    alpha, beta, gamma : float, optional
        Latency per message (s), time per byte sent (s/B) and time per byte of
        local work (s/B). Omitted ones keep their value.
    """
    global _params
    changes = {k: float(v) for k, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)) if v is not None}
    if any(v < 0 for v in changes.values()):
        raise ValueError("cost parameters must be non-negative")
    _params = replace(_params, **changes)
    return _params


def _log2_floor(p: int) -> int:
    return p.bit_length() - 1


def expected_union(n: int, k_mean: float, ranks: float) -> float:
    """Expected nnz of the sum of ``ranks`` vectors with ``k_mean`` random non-zeros each."""
    if n == 0 or k_mean <= 0:
        return 0.0
    density = min(k_mean / n, 1.0)
    return n * -_expm1_log1p(ranks, -density)


def _expm1_log1p(m: float, x: float) -> float:
    # (1 + x)^m - 1, accurate for tiny x (very sparse vectors in huge dimensions)
    if x <= -1.0:
        return -1.0
    return math.expm1(m * math.log1p(x))


def predict(algorithm: str, n: int, P: int, nnz_max: int, nnz_sum: int, index_bytes: int, value_bytes: int,
            out: str = "dense", params: CostParams | None = None, dense_input: bool = False) -> float:
    """Predicted seconds of one sparse AllReduce.

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
        algorithm but ``dense`` first scans them for non-zeros.
    """
    p = params or _params
    c_s, c_d = index_bytes + value_bytes, value_bytes
    dense_bytes = n * c_d
    k = float(nnz_max)
    k_mean = nnz_sum / P if P else 0.0

    def wire(entries: float) -> float:  # bytes of a segment of `entries` non-zeros over n
        return HEADER_BYTES + min(entries * c_s, dense_bytes)

    K = expected_union(n, k_mean, P)
    frac = (P - 1) / P
    log_p = _log2_floor(P) if P > 1 else 0
    if algorithm == "recursive_doubling":
        p2 = 1 << log_p
        extra = P - p2
        time = 0.0
        if extra:
            time += 2 * p.alpha + p.beta * (wire(k) + wire(K)) + p.gamma * wire(2 * k)
        for i in range(log_p):
            held = expected_union(n, k_mean, min(P, (1 << i) * P / p2))
            size = wire(held)
            time += p.alpha + p.beta * size + p.gamma * 3 * size  # pack, merge both inputs
        result_sparse = K * c_s < dense_bytes
    elif algorithm in ("split_allgather", "split_dense"):
        slice_dense = dense_bytes / P
        time = (P - 1) * p.alpha + p.beta * frac * min(k * c_s, dense_bytes) + p.gamma * 2 * min(k * c_s, dense_bytes)
        if algorithm == "split_allgather":
            gathered = min(K * c_s, dense_bytes) + P * HEADER_BYTES
            time += 2 * log_p * p.alpha + p.beta * frac * gathered + p.gamma * 2 * gathered
            result_sparse = K * c_s < dense_bytes
        else:
            time += log_p * p.alpha + p.beta * frac * dense_bytes + p.gamma * (slice_dense + dense_bytes)
            result_sparse = False
    elif algorithm == "dense":
        time = 2 * log_p * p.alpha + p.beta * 2 * frac * dense_bytes + p.gamma * 2 * dense_bytes
        result_sparse = False
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    # Writing the requested output: a dense output or a dense result touches all n values.
    time += p.gamma * (K * c_s if out == "sparse" and result_sparse else dense_bytes)
    if dense_input and algorithm != "dense":
        time += p.gamma * (dense_bytes + k * c_s)
    return time


def choose(n: int, P: int, nnz_max: int, nnz_sum: int, index_bytes: int, value_bytes: int,
           out: str = "dense", params: CostParams | None = None,
           dense_input: bool = False) -> tuple[str, dict[str, float]]:
    """Return the algorithm with the smallest predicted time, and every prediction (see :func:`predict`)."""
    predictions = {alg: predict(alg, n, P, nnz_max, nnz_sum, index_bytes, value_bytes, out, params, dense_input)
                   for alg in ALGORITHMS}
    best = min(ALGORITHMS, key=lambda a: predictions[a])  # ties: earlier in ALGORITHMS
    return best, predictions

"""The registry of collective algorithms, as the C core defines it (``csrc/collectives/registry.c``).

Every algorithm is one entry there: its name, C entry point, cost function and
capabilities. This module is a read-only view of that table; selection
(:mod:`scaleml.cost_model`, :mod:`scaleml.tuner`), argument validation, the
benchmark's method list, the documentation table and the parametrised tests
all read it, so an algorithm added in C appears everywhere at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ._native import check, ffi, lib

_FORMS = {"sparse": lib.SCALEML_FORM_SPARSE, "dense": lib.SCALEML_FORM_DENSE}
_FORMATS = {np.dtype(np.float32): lib.SCALEML_FORMAT_FLOAT32, np.dtype(np.float64): lib.SCALEML_FORMAT_FLOAT64}
CODECS: dict[str, int] = {"exact": lib.SCALEML_CODEC_NONE, "qsgd": lib.SCALEML_CODEC_QSGD,
                          "fp16": lib.SCALEML_CODEC_FP16, "bf16": lib.SCALEML_CODEC_BF16,
                          "onebit": lib.SCALEML_CODEC_ONEBIT, "adaptive": lib.SCALEML_CODEC_ADAPTIVE}
"""Value format name -> ``SCALEML_CODEC_*`` kind (``scaleml.value_format.ValueFormat.kind``)."""
ELEMENTWISE = frozenset({"qsgd", "fp16", "bf16", "onebit"})
"""The formats of ``compression=`` (QSGD, Cast, OneBit): every value coded on its own."""


@dataclass(frozen=True)
class Algorithm:
    """One registry entry."""

    id: int
    """Code passed to the C core (1..count); 0 is ``auto``."""
    name: str
    when: str
    """The regime it is made for."""
    messages: str
    """Messages each rank sends."""
    bytes: str
    """Bytes each rank sends."""
    input_forms: frozenset[str]
    """``"sparse"``, ``"dense"``: what it takes without converting."""
    result_forms: frozenset[str]
    """Forms its result can stay in; without ``"sparse"`` it needs memory for n values."""
    value_dtypes: tuple[np.dtype, ...]
    exact: bool
    codecs: frozenset[str]
    """Value formats it takes (names of :data:`CODECS`): ``"exact"``, the :data:`ELEMENTWISE` formats of
    ``compression=``, or ``"adaptive"`` (the row blocks of :func:`scaleml.adaptive_allreduce`)."""
    unsigned_zeros: bool
    """Its zero sums come out +0.0 even where every rank holds -0.0 (it keeps non-zeros only), where MPI gives
    -0.0."""

    def takes(self, kind: int) -> bool:
        """Whether it runs on values in the format of ``SCALEML_CODEC_*`` ``kind`` (the C engine refuses others)."""
        return any(CODECS[name] == kind for name in self.codecs)

    def cost(self, n: int, P: int, nnz_max: int, nnz_sum: int, index_bytes: int, value_bytes: int,
             sparse_out: bool, dense_input: bool, alpha: float, beta: float, gamma: float,
             delta: float = 0.0, quantized_value_bytes: float = 0.0, encode_seconds: float = 0.0,
             decode_seconds: float = 0.0, decode_add_seconds: float = 0.0, codec_kind: int = 0,
             matrix_cols: int = 0, nodes: tuple[int, int, int] = (0, 0, 0),
             intra: tuple[float, float] = (0.0, 0.0)) -> float:
        """Predicted seconds (the alpha-beta-gamma model of the algorithm's C file; see :func:`costs`)."""
        return costs(n, P, nnz_max, nnz_sum, index_bytes, value_bytes, sparse_out, dense_input,
                     alpha, beta, gamma, delta, quantized_value_bytes, encode_seconds, decode_seconds,
                     decode_add_seconds, codec_kind, matrix_cols, nodes, intra)[self.name]


def _load() -> dict[str, Algorithm]:
    table = {}
    info = ffi.new("scaleml_algorithm_info *")
    for code in range(1, lib.scaleml_algorithm_count() + 1):
        check(lib.scaleml_algorithm_describe(code, info))

        def text(ptr) -> str:
            return ffi.string(ptr).decode()

        entry = Algorithm(
            id=code, name=text(info.name), when=text(info.when), messages=text(info.messages),
            bytes=text(info.bytes),
            input_forms=frozenset(f for f, bit in _FORMS.items() if info.input_forms & bit),
            result_forms=frozenset(f for f, bit in _FORMS.items() if info.result_forms & bit),
            value_dtypes=tuple(dt for dt, bit in _FORMATS.items() if info.value_formats & bit),
            exact=bool(info.exact),
            codecs=frozenset(name for name, kind in CODECS.items() if info.codecs & (1 << kind)),
            unsigned_zeros=bool(info.unsigned_zeros))
        table[entry.name] = entry
    return table


REGISTRY: dict[str, Algorithm] = _load()
"""Every algorithm by name, in id order."""

NAMES: tuple[str, ...] = tuple(REGISTRY)
"""Algorithm names in id order (what ``algorithm=`` accepts besides ``"auto"``)."""

BY_ID: dict[int, Algorithm] = {a.id: a for a in REGISTRY.values()}

EXACT: tuple[str, ...] = tuple(a.name for a in REGISTRY.values() if a.exact)
"""The lossless algorithms (what runs without ``compression=``)."""

LOSSY: tuple[str, ...] = tuple(a.name for a in REGISTRY.values() if not a.exact and a.codecs & ELEMENTWISE)
"""The algorithms that need a lossy format (``compression=``): the dense quantized AllReduce family. Lossy
entries that take none of those formats (``adaptive``, :func:`scaleml.adaptive_allreduce`'s) are not here:
neither ``algorithm="auto"`` nor a forced name of this list reaches them."""


def get(name: str) -> Algorithm:
    """The entry of ``name``; ``ValueError`` naming the choices for an unknown one."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown algorithm {name!r}; expected 'auto' or one of {NAMES}") from None


def code_of(name: object) -> int:
    """The agreed code of an ``algorithm=`` argument: 0 for ``"auto"``, the id otherwise, -1 if unknown
    (anything that is not one of the names, of any type: never an exception)."""
    try:
        key = str.__str__(name) if isinstance(name, str) else None  # a plain str, even from a str subclass
    except Exception:
        key = None
    if key is None:
        return -1
    if key == "auto":
        return 0
    entry = REGISTRY.get(key)
    return entry.id if entry else -1


class _CostBuffers(threading.local):
    """The C call's argument structs, one set per thread (nonblocking collectives plan on a progress thread)."""

    def __init__(self) -> None:
        self.case = ffi.new("scaleml_cost_case *")
        self.params = ffi.new("scaleml_cost_params *")
        self.costs = ffi.new("double[]", len(NAMES))


_buffers = _CostBuffers()


def costs(n: int, P: int, nnz_max: float, nnz_sum: float, index_bytes: float, value_bytes: float,
          sparse_out: bool, dense_input: bool, alpha: float, beta: float, gamma: float,
          delta: float = 0.0, quantized_value_bytes: float = 0.0, encode_seconds: float = 0.0,
          decode_seconds: float = 0.0, decode_add_seconds: float = 0.0, codec_kind: int = 0,
          matrix_cols: int = 0, nodes: tuple[int, int, int] = (0, 0, 0),
          intra: tuple[float, float] = (0.0, 0.0)) -> dict[str, float]:
    """Predicted seconds of every algorithm by name (one C call; see :meth:`Algorithm.cost`).

    ``quantized_value_bytes`` is the size of a value in the caller's lossy
    format (0: exact); the lossy algorithms and the sparse-to-quantized switch
    are costed with it. ``encode_seconds``, ``decode_seconds`` and
    ``decode_add_seconds`` are that format's seconds per value of each pass
    (:meth:`scaleml.cost_model.CostParams.codec` of its name; 0: not costed):
    every lossy path adds the passes it makes along its critical path.
    ``codec_kind`` (``SCALEML_CODEC_*``) names that format when it is not one
    of :data:`ELEMENTWISE` (0: exact, or any of those); an algorithm that does
    not take the format is predicted ``inf`` (it cannot run). ``matrix_cols``:
    the columns of :func:`scaleml.adaptive_allreduce`'s matrix (``codec_kind``
    adaptive, ``quantized_value_bytes`` the bytes of its words per value).
    ``nodes`` is (number of nodes, ranks of the smallest node, of the largest) of the ranks' topology
    (:class:`scaleml.engine.EngineState`; zeros: unknown, one rank per node) and ``intra`` the
    (``alpha``, ``beta``) within a node: the hierarchical algorithms' intra-node steps cost those, every
    other term the inter-node ``alpha`` and ``beta``.
    """
    buffers = _buffers
    c, p = buffers.case, buffers.params
    c.n, c.ranks, c.nnz_max, c.nnz_sum = int(n), int(P), nnz_max, nnz_sum
    c.quantized_value_bytes = quantized_value_bytes
    c.encode_seconds, c.decode_seconds, c.decode_add_seconds = encode_seconds, decode_seconds, decode_add_seconds
    c.codec_kind, c.matrix_cols = int(codec_kind), int(matrix_cols)
    c.nodes, c.node_size_min, c.node_size_max = (int(v) for v in nodes)
    c.index_bytes, c.value_bytes, c.sparse_out, c.dense_input = index_bytes, value_bytes, sparse_out, dense_input
    p.alpha, p.beta, p.gamma, p.delta = alpha, beta, gamma, delta
    p.alpha_intra, p.beta_intra = intra
    lib.scaleml_algorithm_costs(c, p, buffers.costs)
    return dict(zip(NAMES, buffers.costs))


def markdown_table() -> str:
    """The algorithm table of the README and docs/algorithms.md, generated from the registry."""
    lines = ["| algorithm | when | exact | messages | bytes sent per rank |", "|---|---|---|---|---|"]
    lines += [f"| `{a.name}` | {a.when} | {_exact_column(a)} | {a.messages} | {a.bytes} |" for a in REGISTRY.values()]
    return "\n".join(lines)


def _exact_column(a: Algorithm) -> str:
    if a.exact:
        return "yes"
    return "no (needs `compression=`)" if a.codecs & ELEMENTWISE else "no (its own value format)"


if __name__ == "__main__":  # python -m scaleml.algorithms: print the docs table
    print(markdown_table())

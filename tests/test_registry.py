"""The registry of algorithms (csrc/collectives/registry.c) is the one place every consumer reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scaleml import algorithms, cost_model
from scaleml._native import ffi, lib
from scaleml.bench import METHODS
from scaleml.errors import ERR_ARG

ROOT = Path(__file__).resolve().parent.parent


def test_ids_are_contiguous_and_names_unique():
    assert len(algorithms.NAMES) == lib.scaleml_algorithm_count() >= 1
    assert [a.id for a in algorithms.REGISTRY.values()] == list(range(1, len(algorithms.NAMES) + 1))
    assert len(set(algorithms.NAMES)) == len(algorithms.NAMES)
    assert "auto" not in algorithms.NAMES


@pytest.mark.parametrize("name", algorithms.NAMES)
def test_every_entry_is_complete(name):
    a = algorithms.REGISTRY[name]
    assert a.when and a.messages and a.bytes
    assert a.input_forms and a.input_forms <= {"sparse", "dense"}
    assert a.result_forms and a.result_forms <= {"sparse", "dense"}
    assert set(a.value_dtypes) == {np.dtype(np.float32), np.dtype(np.float64)}
    assert a.exact == (name in algorithms.EXACT) and not (a.exact and name in algorithms.LOSSY)
    # LOSSY: the lossy algorithms of compression='s formats; `adaptive` takes only its own
    assert (name in algorithms.LOSSY) == (not a.exact and bool(a.codecs & algorithms.ELEMENTWISE))
    assert a.codecs and a.codecs <= set(algorithms.CODECS) and ("exact" in a.codecs) == a.exact
    t = a.cost(1 << 20, 8, 1000, 8000, 4, 4, False, False, 5e-6, 1e-9, 1e-10, 1e-5)
    assert math.isfinite(t) and t > 1e-5


@pytest.mark.parametrize("name", algorithms.LOSSY)
def test_lossy_algorithms_cost_less_with_fewer_bytes_per_value(name):
    # 4-bit QSGD (about 0.66 bytes per value) against fp16 (2) at the same size: fewer bytes, less time.
    args = (1 << 22, 8, 1 << 22, 8 << 22, 4, 4, False, True, 5e-6, 1e-9, 1e-11, 1e-5)
    assert algorithms.REGISTRY[name].cost(*args, 0.66) < algorithms.REGISTRY[name].cost(*args, 2.0)


def test_unknown_ids_are_refused_in_c():
    info = ffi.new("scaleml_algorithm_info *")
    assert lib.scaleml_algorithm_describe(0, info) == ERR_ARG
    assert lib.scaleml_algorithm_describe(len(algorithms.NAMES) + 1, info) == ERR_ARG
    case = ffi.new("scaleml_cost_case *", {"n": 10, "ranks": 2})
    params = ffi.new("scaleml_cost_params *")
    assert lib.scaleml_algorithm_cost(99, case, params) == -1.0


def test_consumers_read_the_registry():
    assert cost_model.ALGORITHMS == algorithms.EXACT
    assert set(algorithms.EXACT) | {"auto"} <= set(METHODS)  # the bench times every algorithm
    assert algorithms.code_of("auto") == 0 and algorithms.code_of("nope") == -1 and algorithms.code_of(3) == -1
    with pytest.raises(ValueError, match="unknown algorithm"):
        algorithms.get("nope")
    with pytest.raises(ValueError, match="unknown algorithm"):
        cost_model.predict("nope", 10, 2, 1, 2, 4, 4)


@pytest.mark.parametrize("doc", ["README.md", "docs/algorithms.md"])
def test_docs_table_is_the_registry(doc):
    """The table in the docs is what `python -m scaleml.algorithms` prints from the registry."""
    assert algorithms.markdown_table() in (ROOT / doc).read_text()


def test_only_sparse_result_algorithms_run_without_dense_memory():
    from scaleml.engine import Agreement, Call, candidates

    names = candidates(Call(10, np.zeros(3, np.float32), np.arange(3, dtype=np.uint32)),
                       Agreement(10, 20, dense_fits=False))
    assert names and all("sparse" in algorithms.REGISTRY[a].result_forms for a in names)
    assert "dense" not in names and "split_dense" not in names


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
def test_all_finite_finds_any_nan_or_inf(dtype, bad):
    for n, at in ((1, 0), (1001, 777), (64, 63)):
        x = np.random.default_rng(n).standard_normal(n).astype(dtype)
        if bad is not None:
            x[at] = bad
        assert lib.scaleml_all_finite(ffi.from_buffer(x), n, x.itemsize) == (bad is None)

"""The two-level cost model of hierarchical_dense and SCALEML_RANKS_PER_NODE (no MPI job needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scaleml import algorithms, config, cost_model
from scaleml.cost_model import CostParams, params_fingerprint

ARGS = dict(index_bytes=4, value_bytes=4, sparse_out=False, dense_input=True, alpha=5e-6, beta=1 / 1.25e9,
            gamma=1 / 4e9, delta=0.0)


def costs(n: int, P: int, nodes: tuple[int, int, int], intra=(1e-6, 1e-10)) -> dict[str, float]:
    return algorithms.costs(n, P, n, n * P, ARGS["index_bytes"], ARGS["value_bytes"], ARGS["sparse_out"],
                            ARGS["dense_input"], ARGS["alpha"], ARGS["beta"], ARGS["gamma"], ARGS["delta"],
                            nodes=nodes, intra=intra)


@pytest.mark.parametrize("P", [64, 1024])
def test_hierarchical_beats_the_flat_exact_algorithms_at_8_ranks_per_node(P):
    c = costs(1 << 24, P, (P // 8, 8, 8))
    flat = min(c[name] for name in algorithms.EXACT if name != "hierarchical_dense")
    assert c["hierarchical_dense"] < flat


def test_unknown_or_one_rank_per_node_costs_as_the_flat_ring():
    for nodes in ((0, 0, 0), (16, 1, 1)):
        c = costs(1 << 20, 16, nodes)
        assert c["hierarchical_dense"] == c["ring"]


def test_the_intra_node_terms_use_the_intra_parameters():
    free, slow = costs(1 << 22, 16, (2, 8, 8), intra=(0.0, 0.0)), costs(1 << 22, 16, (2, 8, 8), intra=(1e-3, 1e-8))
    assert free["hierarchical_dense"] < slow["hierarchical_dense"]
    assert free["ring"] == slow["ring"]  # the flat algorithms are costed at the inter-node alpha, beta


def test_the_fingerprint_includes_the_intra_node_parameters():
    before = cost_model.get_params()
    try:
        fingerprint = params_fingerprint()
        cost_model.set_params(beta_intra=before.beta_intra * 2)
        assert params_fingerprint() != fingerprint
    finally:
        cost_model.set_params(beta_intra=before.beta_intra)
    assert CostParams().alpha_intra == 1e-6 and CostParams().beta_intra == 1e-10


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_a_bad_ranks_per_node_fails_at_import_naming_it(text):
    env = dict(os.environ, SCALEML_RANKS_PER_NODE=text)
    proc = subprocess.run([sys.executable, "-c", "import scaleml"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "SCALEML_RANKS_PER_NODE" in proc.stderr


def test_ranks_per_node_parses():
    assert config.parse("SCALEML_RANKS_PER_NODE", " 3 ") == 3
    assert config.value("SCALEML_RANKS_PER_NODE") in (None, *range(1, 1 << 20))

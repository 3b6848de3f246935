"""The two-level cost model of hierarchical_dense and hierarchical_quantized, SCALEML_RANKS_PER_NODE and the
topology line of ``python -m scaleml`` (no MPI job needed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from scaleml import algorithms, bench, config, cost_model
from scaleml.compress import QSGD, Cast, OneBit
from scaleml.cost_model import CostParams, params_fingerprint
from scaleml.value_format import value_format

ARGS = dict(index_bytes=4, value_bytes=4, sparse_out=False, dense_input=True, alpha=5e-6, beta=1 / 1.25e9,
            gamma=1 / 4e9, delta=0.0)


def costs(n: int, P: int, nodes: tuple[int, int, int], intra=(1e-6, 1e-10)) -> dict[str, float]:
    return algorithms.costs(n, P, n, n * P, ARGS["index_bytes"], ARGS["value_bytes"], ARGS["sparse_out"],
                            ARGS["dense_input"], ARGS["alpha"], ARGS["beta"], ARGS["gamma"], ARGS["delta"],
                            nodes=nodes, intra=intra)


@pytest.mark.parametrize(("P", "nodes"), [(4, (2, 2, 2)), (16, (2, 8, 8))])
def test_hierarchical_beats_the_flat_exact_algorithms_where_few_nodes_share_a_slow_link(P, nodes, monkeypatch):
    """Per node link the flat ring moves 2 (P-1)/P n values, the hierarchical one 2 (N-1)/N n: 1.5 n against n at
    2 x 2 (measured on the emulated cluster: 174-188 ms against the ring's 232-242 ms)."""
    monkeypatch.setitem(ARGS, "beta", 8e-9)  # 1 Gbit/s
    c = costs(1 << 22, P, nodes)
    flat = min(c[name] for name in algorithms.EXACT if name != "hierarchical_dense")
    assert c["hierarchical_dense"] < flat


def test_flat_algorithms_whose_every_rank_crosses_share_the_nodes_link():
    """One link per node: an algorithm whose L local ranks all send across at once is costed at L x beta; a
    ring over node-ordered ranks (one crossing per node) and MPI's node-aware Allreduce are not."""
    on_nodes = costs(1 << 20, 16, (2, 8, 8))
    alone = costs(1 << 20, 16, (0, 0, 0))
    assert on_nodes["ring"] == alone["ring"] and on_nodes["dense"] == alone["dense"]
    shared = algorithms.costs(1 << 20, 16, 1 << 20, 16 << 20, 4, 4, False, True, ARGS["alpha"], 8 * ARGS["beta"],
                              ARGS["gamma"], ARGS["delta"])
    for name in ("split_dense", "split_allgather", "recursive_doubling"):
        assert on_nodes[name] == pytest.approx(shared[name]) and on_nodes[name] > alone[name]


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


def lossy_costs(n: int, P: int, nodes: tuple[int, int, int], compression, beta: float = ARGS["beta"],
                intra=(1e-6, 1e-10)) -> dict[str, float]:
    fmt, params = value_format(compression), CostParams()
    return algorithms.costs(n, P, n, n * P, 4, 4, False, True, ARGS["alpha"], beta, ARGS["gamma"], 0.0,
                            fmt.value_bytes(n, 4), *params.codec(fmt.name), nodes=nodes, intra=intra)


FLAT_LOSSY = [a for a in algorithms.LOSSY if a != "hierarchical_quantized"]


@pytest.mark.parametrize(("P", "nodes", "compression"),
                         [(4, (2, 2, 2), Cast("fp16")), (16, (2, 8, 8), Cast("fp16")), (16, (2, 8, 8), QSGD(bits=4))],
                         ids=["fp16-2x2", "fp16-2x8", "qsgd4-2x8"])
def test_hierarchical_quantized_beats_the_flat_lossy_ones_where_few_nodes_share_a_slow_link(P, nodes, compression):
    """As measured at 2 x 2 and 1 Gbit/s: fp16 84-90 ms against the flat quantized ring's 109-113 ms."""
    c = lossy_costs(1 << 22, P, nodes, compression, beta=8e-9)  # 1 Gbit/s, the cluster
    assert c["hierarchical_quantized"] < min(c[a] for a in FLAT_LOSSY)


def test_hierarchical_quantized_falls_back_as_it_runs():
    q = QSGD(bits=4)
    for nodes in ((0, 0, 0), (16, 1, 1)):  # unknown, one rank per node: the flat quantized ring
        c = lossy_costs(1 << 20, 16, nodes, q)
        assert c["hierarchical_quantized"] == c["quantized_ring"]
    # one node: exact, hierarchical_dense's case; auto leaves it there
    assert lossy_costs(1 << 20, 8, (1, 8, 8), q)["hierarchical_quantized"] == math.inf
    # unequal nodes: costed from the smallest node's shards
    assert math.isfinite(lossy_costs(1 << 20, 5, (2, 2, 3), OneBit())["hierarchical_quantized"])


def test_hierarchical_quantized_costs_fewer_bytes_across_and_the_intra_terms():
    q = QSGD(bits=4)
    free = lossy_costs(1 << 22, 64, (8, 8, 8), q, intra=(0.0, 0.0))
    slow = lossy_costs(1 << 22, 64, (8, 8, 8), q, intra=(1e-3, 1e-8))
    assert free["hierarchical_quantized"] < slow["hierarchical_quantized"]
    assert free["quantized_ring"] == slow["quantized_ring"]
    exact = lossy_costs(1 << 22, 64, (8, 8, 8), Cast("fp16"))
    assert exact["hierarchical_quantized"] < exact["hierarchical_dense"]  # the cross-node step sends half


def test_bench_model_shows_it_beside_the_flat_ones_at_64_and_1024(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert bench.main(["model", "--n", "4194304", "--ranks", "64", "1024", "--ranks-per-node", "8", "--beta", "8e-9",
                       "--compression", "qsgd4", "fp16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hierarchical_quantized" in text
    rows = json.loads(out.read_text())["node_lossy_rows"]
    assert [(r["ranks"], r["nodes"], r["format"]) for r in rows] == [
        (64, 8, "qsgd4"), (64, 8, "fp16"), (1024, 128, "qsgd4"), (1024, 128, "fp16")]
    for r in rows:
        assert 0 < r["speedup_vs_flat"] < math.inf  # at 8 ranks per node on one link: about even (docs/benchmarks.md)
        # 1/8 of the data crosses per local rank
        assert r["hierarchical_quantized_inter_node_bytes_per_rank"] < r["quantized_ring_inter_node_bytes_per_rank"] / 7


@pytest.mark.parametrize(("variable", "expected"), [(None, "MPI"), ("2", "SCALEML_RANKS_PER_NODE=2")])
def test_python_m_scaleml_reports_the_topology(variable, expected):
    env = {k: v for k, v in os.environ.items() if k != "SCALEML_RANKS_PER_NODE"}
    if variable is not None:
        env["SCALEML_RANKS_PER_NODE"] = variable
    proc = subprocess.run([sys.executable, "-m", "scaleml"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("topology"))
    assert "1 node of 1 rank" in line and expected in line


def sparse_costs(n: int, P: int, density: float, nodes: tuple[int, int, int], beta: float = 8e-9,
                 intra=(1e-6, 1e-10), dense_input: bool = False, **kwargs) -> dict[str, float]:
    k = n * density
    return algorithms.costs(n, P, k, k * P, 4, 4, False, dense_input, ARGS["alpha"], beta, ARGS["gamma"], 0.0,
                            nodes=nodes, intra=intra, **kwargs)


@pytest.mark.parametrize(("P", "nodes", "density"), [(64, (8, 8, 8), 1e-3), (64, (8, 8, 8), 1e-2),
                                                     (1024, (128, 8, 8), 1e-3), (16, (2, 8, 8), 1e-2)])
def test_hierarchical_sparse_beats_every_other_exact_one_on_sparse_data_over_a_slow_link(P, nodes, density):
    """1 Gbit/s, 8 ranks per node: the flat split algorithms send every rank's k and the global K through the
    node's one link L times over; hierarchical_sparse sends the node sum's non-zeros and the shard's K once per
    node, and beats hierarchical_dense while the union stays well below dense."""
    c = sparse_costs(1 << 22, P, density, nodes)
    assert c["hierarchical_sparse"] < c["split_allgather"] / 1.5
    others = {a: c[a] for a in algorithms.EXACT if a != "hierarchical_sparse"}
    assert c["hierarchical_sparse"] < min(others.values()), others


def test_hierarchical_sparse_loses_or_ties_where_its_header_says():
    n, P = 1 << 22, 64
    # one rank per node, or nodes unknown: the flat split_allgather, exactly its cost
    for nodes in ((0, 0, 0), (64, 1, 1)):
        c = sparse_costs(n, P, 1e-2, nodes)
        assert c["hierarchical_sparse"] == c["split_allgather"]
    # dense data: hierarchical_dense's steps plus the scan, the input copy and a sparse exchange without its pipeline
    dense = sparse_costs(n, P, 1.0, (8, 8, 8), dense_input=True)
    assert dense["hierarchical_dense"] < dense["hierarchical_sparse"] < 1.25 * dense["hierarchical_dense"]
    # very few non-zeros: latency-bound, recursive doubling's log2 P messages win
    tiny = sparse_costs(n, P, 1e-5, (8, 8, 8))
    assert tiny["recursive_doubling"] < tiny["hierarchical_sparse"]
    # a fast network (100 Gbit/s): the network no longer bounds the flat algorithms; the node steps' latencies,
    # copies and the n-value result write cost more than what they save across the node link
    fast = sparse_costs(n, P, 1e-3, (8, 8, 8), beta=8e-11)
    assert min(fast[a] for a in ("split_allgather", "dense")) < fast["hierarchical_sparse"]


def test_hierarchical_sparse_costs_the_intra_terms_and_no_lossy_format():
    free = sparse_costs(1 << 22, 64, 1e-3, (8, 8, 8), intra=(0.0, 0.0))
    slow = sparse_costs(1 << 22, 64, 1e-3, (8, 8, 8), intra=(1e-3, 1e-8))
    assert free["hierarchical_sparse"] < slow["hierarchical_sparse"]
    assert free["split_allgather"] == slow["split_allgather"]
    # a lossy format the call allows is never used: the exact cost (it takes the format, ignores it)
    fmt = value_format(Cast("fp16"))
    for nodes in ((8, 8, 8), (64, 1, 1)):
        lossy = sparse_costs(1 << 22, 64, 1e-1, nodes, quantized_value_bytes=fmt.value_bytes(1 << 22, 4),
                             encode_seconds=1e-9, decode_seconds=1e-9, decode_add_seconds=1e-9)
        assert lossy["hierarchical_sparse"] == sparse_costs(1 << 22, 64, 1e-1, nodes)["hierarchical_sparse"]
    # unequal nodes: costed from the smallest node's shards
    assert math.isfinite(sparse_costs(1 << 20, 5, 1e-2, (2, 2, 3))["hierarchical_sparse"])


def test_bench_model_shows_hierarchical_sparse_beside_the_flat_ones_at_64_and_1024(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert bench.main(["model", "--n", "4194304", "--ranks", "64", "1024", "--ranks-per-node", "8", "--beta", "8e-9",
                       "--density", "0.001", "0.01", "--compression", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hierarchical_sparse" in text
    rows = json.loads(out.read_text())["node_sparse_rows"]
    assert [(r["ranks"], r["nodes"], r["density"]) for r in rows] == [
        (64, 8, 0.001), (64, 8, 0.01), (1024, 128, 0.001), (1024, 128, 0.01)]
    for r in rows:
        assert r["speedup_vs_best_other"] > 1  # 1 Gbit/s, 8 ranks on a node's link, sparse: it pays
        assert (r["hierarchical_sparse_inter_node_bytes_per_rank"]
                < r["split_allgather_inter_node_bytes_per_rank"])

"""The alpha-beta model behind algorithm='auto', against costs computed by hand."""

from __future__ import annotations

import math

import pytest

from scaleml import cost_model
from scaleml.cost_model import ALGORITHMS, CostParams, choose, expected_union, predict

LATENCY_ONLY = CostParams(alpha=1.0, beta=0.0, gamma=0.0, delta=0.0)
BANDWIDTH_ONLY = CostParams(alpha=0.0, beta=1.0, gamma=0.0, delta=0.0)
LOCAL_ONLY = CostParams(alpha=0.0, beta=0.0, gamma=1.0, delta=0.0)
CALL_ONLY = CostParams(alpha=0.0, beta=0.0, gamma=0.0, delta=1.0)
# n = 1000 float32 with 32-bit indices: c_s = 8, c_d = 4; each of P ranks holds k = 10
N, K, IB, VB = 1000, 10, 4, 4


def p(alg, P, params, out="dense", **kw):
    return predict(alg, N, P, K, K * P, IB, VB, out, params, **kw)


@pytest.mark.parametrize("P,rd,split,split_dense,dense", [
    (1, 0, 0, 0, 0),
    (2, 1, 1 + 2, 1 + 1, 2),
    (4, 2, 3 + 4, 3 + 2, 4),
    (5, 2 + 2, 4 + 4, 4 + 2, 4),   # RD folds 1 extra rank in and out: 2 messages
    (8, 3, 7 + 6, 7 + 3, 6),
])
def test_message_counts(P, rd, split, split_dense, dense):
    assert p("recursive_doubling", P, LATENCY_ONLY) == rd
    assert p("split_allgather", P, LATENCY_ONLY) == split
    assert p("split_dense", P, LATENCY_ONLY) == split_dense
    assert p("dense", P, LATENCY_ONLY) == dense


def test_bytes_on_the_wire():
    P = 4
    # dense: 2 (P-1)/P n c_d
    assert p("dense", P, BANDWIDTH_ONLY) == pytest.approx(2 * 3 / 4 * N * 4)
    # split dense: (P-1)/P k c_s for the reduce-scatter + (P-1)/P n c_d for the allgather
    assert p("split_dense", P, BANDWIDTH_ONLY) == pytest.approx(3 / 4 * K * 8 + 3 / 4 * N * 4)
    # split allgather: same reduce-scatter + (P-1)/P (K c_s + P headers), K the expected union of 4 ranks
    union4 = N * (1 - (1 - K / N) ** 4)
    assert p("split_allgather", P, BANDWIDTH_ONLY) == pytest.approx(3 / 4 * K * 8 + 3 / 4 * (union4 * 8 + 4 * 16))
    # recursive doubling: round i sends the union of 2^i ranks (+ a 16-byte header)
    rounds = [16 + N * (1 - (1 - K / N) ** m) * 8 for m in (1, 2)]
    assert p("recursive_doubling", P, BANDWIDTH_ONLY) == pytest.approx(sum(rounds))


def test_sparse_messages_are_capped_at_dense_size():
    # every rank dense: a round can never cost more than n c_d (+ header)
    cost = predict("recursive_doubling", N, 4, N, 4 * N, IB, VB, "dense", BANDWIDTH_ONLY)
    assert cost == pytest.approx(2 * (16 + N * 4))


def test_local_work_of_output_and_dense_input():
    assert p("dense", 4, LOCAL_ONLY) == pytest.approx(3 * N * 4)  # densify/reduce 2 n c_d + write output
    extra = p("recursive_doubling", 4, LOCAL_ONLY, dense_input=True) - p("recursive_doubling", 4, LOCAL_ONLY)
    assert extra == pytest.approx(N * 4 + K * 8)  # scanning the dense input for non-zeros
    assert p("dense", 4, LOCAL_ONLY, dense_input=True) == p("dense", 4, LOCAL_ONLY)


def test_expected_union():
    assert expected_union(1000, 0, 8) == 0
    assert expected_union(0, 5, 8) == 0
    assert expected_union(1000, 1000, 3) == pytest.approx(1000)
    assert expected_union(1000, 10, 1) == pytest.approx(10)
    assert expected_union(2**40, 1000, 4) == pytest.approx(4000, rel=1e-6)  # tiny density stays accurate


def test_choices_follow_the_regime():
    n, P = 1 << 22, 4
    very_sparse, _ = choose(n, P, 40, 160, 4, 4)
    one_percent, _ = choose(n, P, n // 100, P * n // 100, 4, 4)
    dense, _ = choose(n, P, n, P * n, 4, 4)
    assert very_sparse == "recursive_doubling"  # latency-bound
    assert one_percent in ("recursive_doubling", "split_allgather")
    assert dense in ("dense", "ring")  # the dense-data algorithms: MPI_Allreduce or the pipelined ring
    huge_sparse, predictions = choose(1 << 40, 8, 1000, 8000, 8, 8, out="sparse")
    assert huge_sparse in ("recursive_doubling", "split_allgather")
    assert predictions["dense"] > 100 * predictions[huge_sparse]


def test_bandwidth_bound_many_ranks_prefers_split():
    # many ranks, moderately sparse: recursive doubling's growing messages lose to split
    best, _ = choose(1 << 24, 256, 1 << 15, 256 << 15, 4, 4, params=CostParams(alpha=1e-6, beta=1e-9, gamma=0))
    assert best in ("split_allgather", "split_dense")


def test_set_params_and_environment(monkeypatch):
    before = cost_model.get_params()
    try:
        cost_model.set_params(alpha=2e-6)
        assert cost_model.get_params().alpha == 2e-6 and cost_model.get_params().beta == before.beta
        with pytest.raises(ValueError):
            cost_model.set_params(beta=-1)
    finally:
        cost_model.set_params(alpha=before.alpha, beta=before.beta, gamma=before.gamma)
    monkeypatch.setenv("SCALEML_BETA", "3e-10")
    assert math.isclose(cost_model._params_from_env().beta, 3e-10)


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown algorithm"):
        predict("ring_of_fire", N, 4, K, 4 * K, IB, VB)


def test_fixed_cost_per_call_is_paid_once_by_every_algorithm():
    for algorithm in ALGORITHMS:
        assert predict(algorithm, 1 << 20, 8, 100, 800, 4, 4, params=CALL_ONLY) == 1.0
    assert choose(1 << 20, 8, 100, 800, 4, 4, params=CALL_ONLY)[0] == ALGORITHMS[0]  # ties: registry order

"""The sparse algorithms' cost functions with a lossy value format (quantized_value_bytes > 0): dense data
travels as n*q bytes instead of n*c_d (the switch to dense quantized); q = 0 is the exact model."""

from __future__ import annotations

import pytest

from scaleml import algorithms
from scaleml._native import ffi, lib

N, K, IB, VB = 1000, 10, 4, 4
Q = (4 + 1 + 32 / 64) / 8  # QSGD 4 bits, buckets of 64: bytes per value
SPARSE = ("recursive_doubling", "split_allgather", "split_dense")


def cost(algorithm, P, nnz_max, q=0.0, *, beta=0.0, gamma=0.0, sparse_out=False, encode=0.0, decode=0.0):
    case = ffi.new("scaleml_cost_case *")
    case.n, case.ranks, case.nnz_max, case.nnz_sum = N, P, nnz_max, nnz_max * P
    case.index_bytes, case.value_bytes, case.sparse_out, case.quantized_value_bytes = IB, VB, sparse_out, q
    case.encode_seconds, case.decode_seconds, case.decode_add_seconds = encode, decode, 1.0  # no switch adds
    params = ffi.new("scaleml_cost_params *")
    params.beta, params.gamma = beta, gamma
    return lib.scaleml_algorithm_cost(algorithms.REGISTRY[algorithm].id, case, params)


def union(m, k=K):
    return N * (1 - (1 - k / N) ** m)


@pytest.mark.parametrize("algorithm", SPARSE)
@pytest.mark.parametrize("nnz", [K, N // 3, N])
def test_exact_when_q_is_zero_or_not_smaller(algorithm, nnz):
    for kw in ({"beta": 1.0}, {"gamma": 1.0}, {"gamma": 1.0, "sparse_out": True}):
        exact = cost(algorithm, 4, nnz, **kw)
        assert cost(algorithm, 4, nnz, 0.0, **kw) == exact
        assert cost(algorithm, 4, nnz, VB, **kw) == exact  # a format no smaller than the values: exact


def test_dense_rounds_travel_quantized():
    # every rank dense: each recursive doubling round sends n*q (+ a header)
    assert cost("recursive_doubling", 4, N, Q, beta=1.0) == pytest.approx(2 * (16 + N * Q))
    # 5 ranks: the folds move n*q too
    assert cost("recursive_doubling", 5, N, Q, beta=1.0) == pytest.approx(4 * (16 + N * Q))


def test_split_algorithms_gather_quantized():
    P, k = 4, 300  # slices past the wire's rule (300 * 8 > 1000 * Q)
    reduce_scatter = 3 / 4 * min(k * 8, N * Q)
    assert cost("split_dense", P, k, Q, beta=1.0) == pytest.approx(reduce_scatter + 3 / 4 * (N * Q + P * 16))
    gathered = min(union(P, k) * 8, N * Q) + P * 16
    assert cost("split_allgather", P, k, Q, beta=1.0) == pytest.approx(reduce_scatter + 3 / 4 * gathered)


def test_sparse_rounds_are_unchanged():
    # very sparse: nothing crosses the rule, the quantized model is the exact one
    assert cost("recursive_doubling", 4, K, Q, beta=1.0) == cost("recursive_doubling", 4, K, beta=1.0)


def test_result_is_dense_past_the_quantized_rule():
    # a union (8 bytes per entry) between n*q and n*c_d: the exact result stays sparse, the switched one is
    # dense (decoded), so asking for a sparse output costs it a scan of all n values instead of the entries
    big = 40
    assert N * Q < union(4, big) * 8 < N * VB
    for algorithm in ("recursive_doubling", "split_allgather"):
        exact = [cost(algorithm, 4, big, gamma=1.0, sparse_out=s) for s in (False, True)]
        switched = [cost(algorithm, 4, big, Q, gamma=1.0, sparse_out=s) for s in (False, True)]
        assert exact[1] < exact[0]
        assert switched[1] == switched[0]


# ---- the format's passes where segments travel quantized (encode/decode seconds per value) ----

@pytest.mark.parametrize("algorithm,P,nnz,encoded,decoded", [
    # every round dense: each partner encodes and decodes its sum (round trip) and decodes the other's
    ("recursive_doubling", 4, N, 2 * N, 2 * 2 * N),
    # + the fold-in (encoded, decoded) and the fold-out (encoded, decoded by the round trip and the receiver)
    ("recursive_doubling", 5, N, 4 * N, 2 * 2 * N + N + 2 * N),
    # slices past the rule: (P-1)/P n encoded by the senders and decoded by the owner; the gather: the owner
    # encodes n/P, every rank decodes n
    ("split_dense", 4, 300, 3 / 4 * N + N / 4, 3 / 4 * N + N),
    ("split_allgather", 4, 300, 3 / 4 * N + N / 4, 3 / 4 * N + N),
    # sparse slices, a reduced union past the rule: only the gather is coded; split_dense's gather always is
    ("split_allgather", 4, 60, N / 4, N),
    ("split_dense", 4, 60, N / 4, N),
])
def test_switch_paths_add_their_codec_passes(algorithm, P, nnz, encoded, decoded):
    assert cost(algorithm, P, nnz, Q) == 0.0  # nothing else costed
    for seconds in (1.0, 2.0):
        assert cost(algorithm, P, nnz, Q, encode=seconds) == pytest.approx(encoded * seconds)
        assert cost(algorithm, P, nnz, Q, decode=seconds) == pytest.approx(decoded * seconds)


@pytest.mark.parametrize("algorithm", SPARSE)
def test_no_codec_passes_where_nothing_travels_quantized(algorithm):
    coded = {"encode": 1.0, "decode": 1.0}
    assert cost(algorithm, 1, N, Q, **coded) == 0.0  # alone: nothing travels
    assert cost(algorithm, 4, N, 0.0, **coded) == 0.0  # exact: nothing is coded
    # very sparse: nothing crosses the rule (split_dense's dense gather is coded all the same)
    assert cost(algorithm, 4, K, Q, **coded) == (N / 4 + N if algorithm == "split_dense" else 0.0)

"""The alpha-beta model behind algorithm='auto', against costs computed by hand."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest

from scaleml import algorithms, cost_model
from scaleml.compress import QSGD, Cast, OneBit
from scaleml.cost_model import ALGORITHMS, CodecSeconds, CostParams, choose, expected_union, predict
from scaleml.engine import predict as engine_predict
from scaleml.value_format import value_format

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


# ---- the lossy formats' coding: each algorithm's passes at the format's seconds per value ----

FREE = CostParams(alpha=0.0, beta=0.0, gamma=0.0, delta=0.0)
DENSE_N = 1 << 20  # dense data: every rank holds n values


def P2(P):
    """The largest power of two <= P (the ranks recursive halving/doubling keeps)."""
    return 1 << (P.bit_length() - 1)


def lossy(algorithm, P, encode=0.0, decode=0.0, decode_add=0.0, q=2.0):
    """A lossy algorithm's prediction with nothing but the coding costed."""
    return algorithms.costs(DENSE_N, P, DENSE_N, DENSE_N * P, 4, 4, False, True, 0.0, 0.0, 0.0, 0.0, q,
                            encode, decode, decode_add)[algorithm]


@pytest.mark.parametrize("P", [2, 4, 5, 8])
@pytest.mark.parametrize("algorithm,passes", [
    # (values encoded, decoded, decoded and added) by one rank along its critical path, as fractions of n
    ("quantized_ring", lambda P: (1, 1, (P - 1) / P)),
    ("quantized_rhd", lambda P: (1, 1, (P2(P) - 1) / P2(P)) if P == P2(P) else (2, 2, 1 + (P2(P) - 1) / P2(P))),
    ("quantized_direct", lambda P: ((P + 1) / P, (P + 1) / P, (P - 1) / P)),
    ("quantized_gather", lambda P: (1, 1, P - 1)),  # its own input once; rank 0's message, then the others'
])
def test_codec_passes_grow_the_lossy_predictions(algorithm, P, passes):
    encoded, decoded, added = passes(P)
    assert lossy(algorithm, P) == 0.0  # nothing else costed
    for seconds in (1e-9, 3e-9):
        assert lossy(algorithm, P, encode=seconds) == pytest.approx(encoded * DENSE_N * seconds)
        assert lossy(algorithm, P, decode=seconds) == pytest.approx(decoded * DENSE_N * seconds)
        assert lossy(algorithm, P, decode_add=seconds) == pytest.approx(added * DENSE_N * seconds)
    both = lossy(algorithm, P, 1e-9, 2e-9, 3e-9)
    assert both == pytest.approx(DENSE_N * (encoded * 1e-9 + decoded * 2e-9 + added * 3e-9))


def test_codec_passes_overlap_the_ring_transfer():
    # the pipelined ring: coding hides behind a slower transfer (one chunk's coding shows)
    P, q, beta = 4, 2.0, 1e-9
    wire = beta * 2 * (P - 1) / P * DENSE_N * q
    chunks = DENSE_N / P / 65536
    coding = DENSE_N * (0.1e-9 + 0.1e-9 + (P - 1) / P * 0.1e-9)
    costs = algorithms.costs(DENSE_N, P, DENSE_N, DENSE_N * P, 4, 4, False, True, 0.0, beta, 0.0, 0.0, q,
                             0.1e-9, 0.1e-9, 0.1e-9)
    assert coding < wire and costs["quantized_ring"] == pytest.approx(wire + coding / chunks)


def test_exact_algorithms_ignore_codec_seconds():
    plain = algorithms.costs(DENSE_N, 4, DENSE_N, 4 * DENSE_N, 4, 4, False, True, 1e-6, 1e-9, 1e-10, 1e-5, 2.0)
    coded = algorithms.costs(DENSE_N, 4, DENSE_N, 4 * DENSE_N, 4, 4, False, True, 1e-6, 1e-9, 1e-10, 1e-5, 2.0,
                             1e-9, 1e-9, 1e-9)
    for algorithm in ("dense", "ring"):
        assert coded[algorithm] == plain[algorithm]
    for algorithm in algorithms.LOSSY:
        assert coded[algorithm] > plain[algorithm]


def _dense_predictions(params, compressor, n=1 << 22, P=4):
    fmt = value_format(compressor)
    return algorithms.costs(n, P, n, n * P, 4, 4, False, True, params.alpha, params.beta, params.gamma,
                            params.delta, fmt.value_bytes(n, 4), *params.codec(fmt.name))


@pytest.mark.parametrize("beta", [8e-9, CostParams().beta])  # 1 Gbit/s (the cluster), the default
def test_fp16_ring_beats_the_exact_ring_with_default_codec_costs(beta):
    params = CostParams(beta=beta)
    fp16 = _dense_predictions(params, Cast("fp16"))
    assert fp16["quantized_ring"] < fp16["ring"]
    if beta == 8e-9:  # bandwidth-bound: fewer bytes win despite slower coding
        for compressor in (QSGD(bits=4), OneBit()):
            assert _dense_predictions(params, compressor)["quantized_ring"] < fp16["quantized_ring"]


def test_engine_predict_passes_the_format_seconds(monkeypatch):
    # engine.predict (every collective's planner) costs the caller's format at the current parameters
    n, P = 1 << 22, 4
    agreement = SimpleNamespace(nnz_max=n, nnz_sum=n * P)
    params = CostParams(beta=8e-9)
    monkeypatch.setattr(cost_model, "_params", params)
    fmt = value_format(Cast("fp16"))
    with_format = engine_predict(n, P, agreement, 4, 4, False, True, fmt=fmt)
    assert with_format == pytest.approx(_dense_predictions(params, Cast("fp16")))
    monkeypatch.setattr(cost_model, "_params", replace(params, codecs=()))  # no format listed: not costed
    bare = engine_predict(n, P, agreement, 4, 4, False, True, fmt=fmt)
    assert bare["quantized_ring"] < with_format["quantized_ring"] and bare["ring"] == with_format["ring"]


def test_codec_table_defaults_and_lookup():
    params = CostParams()
    assert [name for name, _ in params.codecs] == list(cost_model.CODEC_FORMATS)
    for name in cost_model.CODEC_FORMATS:
        assert all(0 < s < 1e-8 for s in params.codec(name))
    assert params.codec("zipml") == (0.0, 0.0, 0.0)  # not listed: not costed
    assert value_format(QSGD(bits=3)).name == "qsgd3"  # the names the table is keyed by
    assert hash(params) == hash(CostParams())


def test_set_params_codecs_and_fingerprint():
    before = cost_model.get_params()
    fingerprint = cost_model.params_fingerprint()
    try:
        cost_model.set_params(codecs={"fp16": (1e-9, 2e-9, 3e-9)})
        now = cost_model.get_params()
        assert now.codec("fp16") == (1e-9, 2e-9, 3e-9) and now.codec("bf16") == before.codec("bf16")
        assert now.alpha == before.alpha
        assert cost_model.params_fingerprint() != fingerprint  # ranks that disagree on it find out
        cost_model.set_params(codecs={"fp16": before.codec("fp16")})
        assert cost_model.params_fingerprint() == fingerprint
        for bad in ({"fp32": (1e-9, 1e-9, 1e-9)}, {"fp16": (1e-9, -1e-9, 1e-9)}, {"fp16": (1e-9, 1e-9)}):
            with pytest.raises(ValueError):
                cost_model.set_params(codecs=bad)
        assert cost_model.get_params() == before
    finally:
        cost_model._params = before


def test_calibration_file_round_trips_the_codec_seconds(tmp_path, monkeypatch):
    measured = {"fp16": CodecSeconds(1e-10, 2e-10, 3e-10), "qsgd4": CodecSeconds(4e-10, 5e-10, 6e-10)}
    path = tmp_path / "cost.json"
    path.write_text(json.dumps({"alpha": 1e-6, "codecs": {**cost_model.codecs_to_json(measured),
                                                          "someday": {"encode": 1}}}))
    monkeypatch.setenv("SCALEML_COST_FILE", str(path))
    loaded = cost_model._params_from_env()
    assert loaded.alpha == 1e-6
    assert loaded.codec("fp16") == measured["fp16"] and loaded.codec("qsgd4") == measured["qsgd4"]
    assert loaded.codec("onebit") == CostParams().codec("onebit")  # not in the file: the default
    assert cost_model._fingerprint(loaded) != cost_model._fingerprint(CostParams(alpha=1e-6))
    path.write_text(json.dumps({"alpha": 1e-6, "codecs": {"fp16": {"encode": 1e-9}}}))
    with pytest.warns(UserWarning, match="ignoring unreadable cost-model file"):
        assert cost_model._params_from_env() == CostParams()

"""scaleml.reshard: error-feedback state of P ranks resharded to P' ranks (a pure function, no MPI job)."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.quantized import block_range
from scaleml.reshard import reshard_state_dicts, server_ranges
from scaleml.train import GradientReducer

PAIRS = [(4, 2), (2, 3), (3, 5), (1, 4), (5, 1)]
N = 1001  # not a multiple of any rank count: uneven ranges
SMALL = 3  # fewer values than new ranks at 5: empty ranges


def old_states(P: int, *, seed: int = 0, dtype=np.float32) -> list[dict]:
    """What P ranks' GradientReducer.state_dict() hold for 1-bit (worker and server) and top-k-like residuals, plus
    PowerSGD's replicated keys, all with rank-dependent residuals of a wide range of magnitudes."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((7, 2)).astype(np.float32)  # identical on every rank
    states = []
    for r in range(P):
        s = {"compression": np.array("onebit"), "world_size": np.array(P, dtype=np.int64),
             "rank": np.array(r, dtype=np.int64), "calls": np.array(12, dtype=np.int64),
             "layout": np.array("float32[1001];float32[3]"), "compressor/step": np.array(24, dtype=np.int64),
             "powersgd/step": np.array(12, dtype=np.int64), "powersgd/q/bucket2/0": q.copy(),
             "ef/residual/bucket0/worker": (rng.standard_normal(N) * 10.0 ** rng.integers(-6, 4, N)).astype(dtype),
             "ef/residual/bucket1/worker": rng.standard_normal(SMALL).astype(dtype),
             "ef/residual/bucket2": rng.standard_normal(50).astype(dtype),  # top-k's worker residual
             "ef/residual/bucket2/worker": rng.standard_normal(50).astype(dtype)}  # PowerSGD's
        for name, n in (("bucket0", N), ("bucket1", SMALL)):
            start, length = block_range(n, P, r)
            s[f"ef/residual/{name}/server"] = (rng.standard_normal(length) + start).astype(dtype)
        states.append(s)
    return states


WORKERS = ["ef/residual/bucket0/worker", "ef/residual/bucket1/worker", "ef/residual/bucket2",
           "ef/residual/bucket2/worker"]
SERVERS = ["ef/residual/bucket0/server", "ef/residual/bucket1/server"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("P,P_new", PAIRS)
def test_worker_residual_sum_is_conserved_and_split_evenly(P, P_new, dtype):
    old = old_states(P, dtype=dtype)
    new = reshard_state_dicts(old, P_new)
    assert len(new) == P_new
    eps = np.finfo(dtype).eps
    for key in WORKERS:
        before = np.sum([s[key].astype(np.float64) for s in old], axis=0)
        after = np.sum([s[key].astype(np.float64) for s in new], axis=0)
        # each of the P' equal shares is rounded once to the dtype: at most half an ulp of sum/P' each
        assert np.all(np.abs(after - before) <= eps * np.abs(before) + 1e-300), key
        for s in new:
            assert s[key].dtype == dtype and s[key].shape == old[0][key].shape
            assert np.array_equal(s[key], new[0][key])  # no rank holds a biased share
        np.testing.assert_array_equal(new[0][key], (before / P_new).astype(dtype))


@pytest.mark.parametrize("P,P_new", PAIRS)
def test_server_residuals_are_the_whole_vector_recut_at_the_c_boundaries(P, P_new):
    old = old_states(P)
    new = reshard_state_dicts(old, P_new)
    for key in SERVERS:
        whole = np.concatenate([s[key] for s in old])
        assert np.array_equal(np.concatenate([s[key] for s in new]), whole)  # bit for bit, in owner order
        for r, s in enumerate(new):
            start, length = block_range(whole.size, P_new, r)
            assert (start, length) == server_ranges(whole.size, P_new)[r]
            assert np.array_equal(s[key], whole[start:start + length])


@pytest.mark.parametrize("P,P_new", PAIRS)
def test_replicated_keys_carry_over_and_rank_and_size_are_rewritten(P, P_new):
    old = old_states(P)
    new = reshard_state_dicts(old, P_new)
    for r, s in enumerate(new):
        assert sorted(s) == sorted(old[0])
        assert int(s["world_size"]) == P_new and int(s["rank"]) == r and s["rank"].dtype == np.int64
        for key in ("compression", "calls", "layout", "compressor/step", "powersgd/step", "powersgd/q/bucket2/0"):
            assert np.array_equal(s[key], old[0][key]), key


def test_unequal_replicated_values_raise():
    for key in ("compressor/step", "powersgd/q/bucket2/0", "calls", "compression"):
        old = old_states(3)
        old[2][key] = np.array("qsgd4") if key == "compression" else old[2][key] + 1
        with pytest.raises(ValueError, match=f"'{key}' differs between old ranks 0 and 2"):
            reshard_state_dicts(old, 2)


def test_unknown_keys_and_mismatched_states_raise():
    old = old_states(2)
    for s in old:
        s["adaptive/worker/bucket0"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="'adaptive/worker/bucket0' is not one resharding knows how to split"):
        reshard_state_dicts(old, 3)
    with pytest.raises(ValueError, match="adaptive compression's residuals cannot be resharded"):
        GradientReducer.reshard_state_dicts(old, 3)
    old = old_states(2)
    old[1]["ef/residual/bucket9"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="old ranks 0 and 1 hold different keys"):
        reshard_state_dicts(old, 3)
    with pytest.raises(ValueError, match="position 0 holds rank 1"):
        reshard_state_dicts(old_states(2)[::-1], 3)
    with pytest.raises(ValueError, match="holds world_size 3, expected 2"):
        reshard_state_dicts(old_states(3)[:2], 3)
    old = old_states(3)
    old[1]["ef/residual/bucket0/worker"] = old[1]["ef/residual/bucket0/worker"][:-1]
    with pytest.raises(ValueError, match="bucket0/worker' is float32"):
        reshard_state_dicts(old, 2)
    old = old_states(3)
    old[1]["ef/residual/bucket0/server"] = old[1]["ef/residual/bucket0/server"][:-1]
    old[2]["ef/residual/bucket0/server"] = np.append(old[2]["ef/residual/bucket0/server"], np.float32(0))
    with pytest.raises(ValueError, match="server residual 'ef/residual/bucket0/server' of old rank 1 has"):
        reshard_state_dicts(old, 2)
    with pytest.raises(ValueError, match="new_size must be an integer >= 1"):
        reshard_state_dicts(old_states(2), 0)
    with pytest.raises(ValueError, match="at least one old rank"):
        reshard_state_dicts([], 2)


def test_the_reducer_loads_its_resharded_share_on_one_rank():
    """Three ranks' onebit states resharded to one: a reducer on COMM_SELF loads it and holds the whole sum."""
    reducer = GradientReducer(MPI.COMM_SELF, "onebit", min_compress_size=8)
    grads = [np.ones(40, dtype=np.float32)]
    reducer.reduce(grads)
    template = reducer.state_dict()
    rng = np.random.default_rng(1)
    old = []
    for r in range(3):
        s = dict(template, world_size=np.array(3, dtype=np.int64), rank=np.array(r, dtype=np.int64))
        s["ef/residual/bucket0/worker"] = rng.standard_normal(40).astype(np.float32)
        s["ef/residual/bucket0/server"] = rng.standard_normal(block_range(40, 3, r)[1]).astype(np.float32)
        old.append(s)
    (share,) = GradientReducer.reshard_state_dicts(old, 1)
    fresh = GradientReducer(MPI.COMM_SELF, "onebit", min_compress_size=8)
    fresh.load_state_dict(share)
    ef = fresh.error_feedback
    assert ef is not None
    np.testing.assert_array_equal(ef.residual("bucket0/worker"),
                                  np.sum([s["ef/residual/bucket0/worker"].astype(np.float64) for s in old],
                                         axis=0).astype(np.float32))
    np.testing.assert_array_equal(ef.residual("bucket0/server"),
                                  np.concatenate([s["ef/residual/bucket0/server"] for s in old]))
    assert fresh.compressor.step == reducer.compressor.step
    fresh.reduce([np.ones(40, dtype=np.float32)])  # the shapes fit the collective at one rank


def test_the_hook_loads_a_list_of_every_old_ranks_state():
    torch = pytest.importorskip("torch")
    smt = pytest.importorskip("scaleml.torch")
    state = smt.ScaleMLHookState(MPI.COMM_SELF, "topk0.1", min_compress_numel=8, nonblocking=False)
    state.reduce_(0, np.ones(30, dtype=np.float32))
    saved = state.state_dict()
    old = [dict(saved, world_size=2, rank=r, **{"ef/residual/bucket0": torch.full((30,), float(r + 1))})
           for r in range(2)]
    fresh = smt.ScaleMLHookState(MPI.COMM_SELF, "topk0.1", min_compress_numel=8, nonblocking=False)
    fresh.load_state_dict(old)
    assert fresh.error_feedback is not None
    np.testing.assert_array_equal(fresh.error_feedback.residual("bucket0"), np.full(30, 3.0, dtype=np.float32))
    assert fresh.compressor.step == state.compressor.step and fresh.stats["calls"] == 1
    # at the same number of ranks: this rank's own entry, untouched
    again = smt.ScaleMLHookState(MPI.COMM_SELF, "topk0.1", min_compress_numel=8, nonblocking=False)
    again.load_state_dict([saved])
    np.testing.assert_array_equal(again.error_feedback.residual("bucket0"), saved["ef/residual/bucket0"].numpy())
    old[1]["compressor/step"] = 99
    with pytest.raises(ValueError, match="'compressor/step' differs between old ranks 0 and 1"):
        fresh.load_state_dict(old)


@pytest.mark.parametrize("P,P_new", PAIRS)
def test_a_policys_rules_are_resharded_by_their_own_keys(P, P_new):
    """GradientReducer(policy=...) keeps each rule's reducer state under rule<i>/: the same rules apply there."""
    plain = old_states(P)
    old = [{"compression": s["compression"], "world_size": s["world_size"], "rank": s["rank"], "calls": s["calls"],
            **{f"rule{i}/{k}": v for i in (0, 2) for k, v in s.items()
               if k not in ("compression", "world_size", "rank", "calls", "layout")}} for s in plain]
    new = reshard_state_dicts(old, P_new)
    expected = reshard_state_dicts(plain, P_new)
    for r in range(P_new):
        for i in (0, 2):
            for key in WORKERS + SERVERS + ["compressor/step", "powersgd/q/bucket2/0"]:
                np.testing.assert_array_equal(new[r][f"rule{i}/{key}"], expected[r][key])
        assert int(new[r]["rank"]) == r and int(new[r]["world_size"]) == P_new
    with pytest.raises(ValueError, match="rule0/adaptive"):
        reshard_state_dicts([{**s, "rule0/adaptive/x": np.zeros(2)} for s in old], P_new)


def test_a_powersgd_reducers_real_state_reshards_and_loads():
    """The keys a PowerSGD reducer really writes (with 8-bit factors): Q, layout and step counters carried, the
    residual's sum conserved, and the share loads into a reducer of the new size."""
    rng = np.random.default_rng(0)
    olds = []
    for r in range(2):
        red = GradientReducer(MPI.COMM_SELF, "powersgd2_q8", min_compress_size=16)
        for _ in range(12):  # past the exact phase: residuals and Q exist
            red.reduce([rng.standard_normal((32, 16)).astype(np.float32), rng.standard_normal(8).astype(np.float32)])
        olds.append({**red.state_dict(), "world_size": np.array(2, dtype=np.int64), "rank": np.array(r)})
    for key in ("powersgd/q/bucket0/0", "powersgd/layout/bucket0", "powersgd/factor_compressor/step"):
        olds[1][key] = olds[0][key]  # replicated in a real run (here two independent reducers)
    (new,) = GradientReducer.reshard_state_dicts(olds, 1)
    key = "ef/residual/bucket0/worker"
    np.testing.assert_allclose(new[key], olds[0][key].astype(np.float64) + olds[1][key], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(new["powersgd/q/bucket0/0"], olds[0]["powersgd/q/bucket0/0"])
    fresh = GradientReducer(MPI.COMM_SELF, "powersgd2_q8", min_compress_size=16)
    fresh.load_state_dict(new)
    assert fresh.powersgd.step == 12

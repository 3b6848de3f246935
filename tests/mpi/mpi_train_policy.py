"""GradientReducer with a per-layer compression policy, on every rank.

Each tensor goes by its rule (per-rule byte counters and the assignment), the results equal the per-rule
reference bitwise (each rule's tensors reduced by a reducer of that one compression), a rank whose policy or
names differ makes every rank raise, and the state continues exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import GradientReducer

pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

NAMES = ["embed.weight", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "head.weight", "head.bias"]
SHAPES = [(300, 8), (40, 30), (30,), (30, 20), (20,), (20, 10), (10,)]
POLICY = {"*.bias": "none", "embed.*": "topk0.05", "fc*": "qsgd4", "*": "onebit"}
# with min_compress_size=256: embed.weight (2400) topk, fc1.weight (1200) and fc2.weight (600) qsgd4 (fused),
# head.weight (200) below the threshold: exact under its rule "*=onebit"; the biases exact under "*.bias=none"
EXPECTED = {"embed.weight": ("embed.*=topk0.05", "topk0.05"), "fc1.weight": ("fc*=qsgd4", "qsgd4"),
            "fc1.bias": ("*.bias=none", "exact"), "fc2.weight": ("fc*=qsgd4", "qsgd4"),
            "fc2.bias": ("*.bias=none", "exact"), "head.weight": ("*=onebit", "exact"),
            "head.bias": ("*.bias=none", "exact")}


def gradients(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng([3, rank, step])
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def reducer(**kw) -> GradientReducer:
    return GradientReducer(comm, policy=kw.pop("policy", POLICY), names=kw.pop("names", NAMES),
                           min_compress_size=256, seed=kw.pop("seed", 5), **kw)


@pytest.mark.parametrize("fusion_bytes", [64 << 20, 4096, 0])
def test_every_tensor_goes_by_its_rule_and_equals_the_per_rule_reference(fusion_bytes):
    red = reducer(fusion_bytes=fusion_bytes)
    rules = {"embed.*=topk0.05": ("topk0.05", [0]), "fc*=qsgd4": ("qsgd4", [1, 3]),
             "*.bias=none": ("none", [2, 4, 6]), "*=onebit": ("onebit", [5])}
    # the reference: each rule's tensors, alone, through a reducer of its one compression (same seed, fusion)
    refs = {label: GradientReducer(comm, name, min_compress_size=256, seed=5, fusion_bytes=fusion_bytes)
            for label, (name, _) in rules.items()}
    for step in range(4):
        grads = gradients(step)
        want = [g.copy() for g in grads]
        for label, (_, members) in rules.items():
            refs[label].reduce([want[i] for i in members])
        red.reduce(grads)
        for i, (got, w) in enumerate(zip(grads, want)):
            assert got.tobytes() == w.tobytes(), (NAMES[i], step)
    assert {n: (label, path) for n, label, path in red.assignment} == EXPECTED
    # no bucket mixes rules
    for b in red.buckets:
        assert len({EXPECTED[NAMES[i]][0] for i in b.members}) == 1, b
    st = red.stats
    assert set(st.per_rule) == set(rules)
    assert sum(st.per_rule.values()) == st.bytes_sent
    for label, (_, _) in rules.items():  # each rule sent what its reference sent
        assert st.per_rule[label] == refs[label].stats.bytes_sent, (label, st.per_rule, refs[label].stats.bytes_sent)
    if size > 1:
        assert all(v > 0 for v in st.per_rule.values())
        assert st.per_rule["embed.*=topk0.05"] < 2 * (size - 1) * 2400 * 4 // size  # compressed: less than a ring
    assert {"topk0.05", "qsgd4", "exact"} <= set(st.per_path) and "onebit" not in st.per_path


def test_unmatched_tensors_are_exact_and_unused_patterns_warn_once():
    policy = {"embed.*": "topk0.05", "nothing.*": "fp16", "fc1.*": "qsgd8", "*.weight": "qsgd4"}
    red = reducer(policy=policy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            grads = gradients(step)
            want = [np.mean([np.asarray(e[i], np.float64) for e in comm.allgather(grads)], axis=0)
                    for i in (4, 6)]
            red.reduce(grads)
            for i, w in zip((4, 6), want):  # fc2.bias, head.bias: no rule matches them, exact
                np.testing.assert_allclose(grads[i], w, rtol=1e-5, atol=1e-6)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len([m for m in messages if "'nothing.*'" in m]) == 1, messages
    assignment = {n: (label, path) for n, label, path in red.assignment}
    assert assignment["fc2.bias"] == assignment["head.bias"] == ("unmatched", "exact")
    assert assignment["fc1.bias"] == ("fc1.*=qsgd8", "exact")  # matched, below min_compress_size
    assert assignment["fc1.weight"] == ("fc1.*=qsgd8", "qsgd8")
    assert assignment["fc2.weight"] == ("*.weight=qsgd4", "qsgd4")
    assert "unmatched" in red.stats.per_rule


def test_mismatched_policies_or_names_raise_on_every_rank():
    if size > 1:
        policy = dict(POLICY, **{"fc*": "qsgd8"}) if rank == size - 1 else POLICY
        with pytest.raises(ValueError, match="ranks use different compression policies or tensor names"):
            reducer(policy=policy).reduce(gradients(0))
        names = NAMES if rank else NAMES[:1] + ["fc1.w"] + NAMES[2:]
        with pytest.raises(ValueError, match="ranks use different compression policies or tensor names"):
            reducer(names=names).reduce(gradients(0))
        plain = GradientReducer(comm, min_compress_size=256) if rank == 0 else reducer()
        with pytest.raises(ValueError, match="no policy"):
            plain.reduce(gradients(0))
    # a wrong number of names raises on every rank too
    names = NAMES[:-1] if rank == size - 1 else NAMES
    with pytest.raises(ValueError, match="6 names|invalid gradients on rank"):
        reducer(names=names).reduce(gradients(0))
    red = reducer()
    red.reduce(gradients(0))  # and agreeing ranks go on


def test_state_continues_exactly_and_refuses_another_policy():
    a = reducer()
    for step in range(3):
        a.reduce(gradients(step))
    state = {k: v.copy() for k, v in a.state_dict().items()}
    assert any(k.startswith("rule1/ef/residual/") for k in state), sorted(state)  # topk's residuals
    b = reducer()
    b.load_state_dict(state)
    for step in range(3, 5):
        out_a, out_b = a.reduce(gradients(step)), b.reduce(gradients(step))
        assert all(x.tobytes() == y.tobytes() for x, y in zip(out_a, out_b)), step
    with pytest.raises(ValueError, match="policy:"):
        reducer(policy={"*": "qsgd4"}).load_state_dict(state)
    with pytest.raises(ValueError, match="compression 'policy:"):
        GradientReducer(comm, "qsgd4").load_state_dict(state)


def test_bad_policies_and_names_raise():
    with pytest.raises(ValueError, match="not both"):
        GradientReducer(comm, "qsgd4", policy=POLICY)
    with pytest.raises(ValueError, match="pattern 'fc\\*'.*unknown compression 'qsgd'"):
        GradientReducer(comm, policy={"fc*": "qsgd"})
    with pytest.raises(ValueError, match="unique"):
        GradientReducer(comm, policy=POLICY, names=["a", "a"])
    # default names param0, param1, ...
    red = GradientReducer(comm, policy="param1=none,*=fp16", min_compress_size=0)
    grads = gradients(0)[:2]
    red.reduce(grads)
    assert [(n, path) for n, _, path in red.assignment] == [("param0", "fp16"), ("param1", "exact")]

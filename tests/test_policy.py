"""CompressionPolicy: the forms it is read from, first-match order, unmatched names, the warning, errors;
and the reducer's per-rule bucket plan."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from scaleml.compress.names import KINDS
from scaleml.compress.policy import CompressionPolicy
from scaleml.train.cli import ArgumentError, parse_args
from scaleml.train.reducer import plan_policy_buckets

NAMES = ["embed.weight", "fc.weight", "fc.bias", "out.weight", "out.bias"]
TEXT = "*.bias=none,embed.*=topk0.01,*=qsgd4"


def labels(policy: CompressionPolicy, names=NAMES) -> list[str | None]:
    return [r.label if r is not None else None for r in policy.assign(names, warn=False)]


def test_every_form_reads_the_same_policy(tmp_path):
    mapping = {"*.bias": "none", "embed.*": "topk0.01", "*": "qsgd4"}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(mapping))
    forms = [TEXT, " *.bias = none , embed.*=TOPK0.01,*=qsgd4, ", mapping, list(mapping.items()), json.dumps(mapping),
             str(path)]
    policies = [CompressionPolicy.parse(f) for f in forms]
    assert all(p == policies[0] for p in policies)
    assert str(policies[0]) == TEXT
    assert CompressionPolicy.parse(policies[0]) is policies[0]
    assert CompressionPolicy.parse(str(policies[0])) == policies[0]  # the text round-trips
    assert policies[0].to_dict() == mapping


def test_first_match_wins_in_order():
    p = CompressionPolicy.parse(TEXT)
    assert labels(p) == ["embed.*=topk0.01", "*=qsgd4", "*.bias=none", "*=qsgd4", "*.bias=none"]
    q = CompressionPolicy.parse("*=qsgd4,*.bias=none")  # the catch-all first takes everything
    with pytest.warns(UserWarning, match=r"pattern '\*\.bias' \(none\) matches only parameters an earlier rule"):
        assert [r.label for r in q.assign(NAMES)] == ["*=qsgd4"] * 5
    assert p.rules[1].spec.kind == "topk" and p.rules[1].spec.ratio == 0.01


def test_unmatched_names_have_no_rule_and_globs_are_case_sensitive():
    p = CompressionPolicy.parse("embed.*=topk0.01,fc.w*=fp16")
    assert labels(p) == ["embed.*=topk0.01", "fc.w*=fp16", None, None, None]
    assert p.match("Embed.weight") is None
    assert p.match("layer[1].weight") is None
    assert CompressionPolicy.parse("layer[[]1].*=fp16").match("layer[1].weight") is not None


def test_a_pattern_that_takes_nothing_warns_once_per_policy():
    p = CompressionPolicy.parse("nothing.*=fp16,*=qsgd4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p.assign(NAMES)
        p.assign(NAMES)
        p.assign(["other"])
    assert len(caught) == 1 and "pattern 'nothing.*' (fp16) matches no parameter of the 5" in str(caught[0].message)
    with pytest.warns(UserWarning):  # another policy object warns again
        CompressionPolicy.parse("nothing.*=fp16,*=qsgd4").assign(NAMES)


@pytest.mark.parametrize("bad, message", [
    ("", "no rules"),
    ("*.bias", "is not PATTERN=NAME"),
    ("*=qsgd", "pattern '\\*': unknown compression 'qsgd'"),
    ("*=qsgd9", "pattern '\\*': QSGD takes 1 to 8 bits"),
    ("a=none,a=fp16", "pattern 'a' appears twice"),
    ("=fp16", "non-empty"),
    ("{\"a\": 4}", "JSON must be an object"),
    ("{\"a\": ", "malformed JSON"),
    ("missing_policy.json", "compression policy file 'missing_policy.json'"),
    (42, "must be a mapping, pairs or a string"),
    ([("a",)], "pairs"),
])
def test_bad_policies_raise_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        CompressionPolicy.parse(bad)


def test_kinds_limit_the_compressions():
    hook_kinds = [k for k in KINDS if k != "adaptive"]
    with pytest.raises(ValueError, match="unknown compression 'adaptive'"):
        CompressionPolicy.parse("*=adaptive", hook_kinds)
    with pytest.raises(ValueError, match="not available here"):
        CompressionPolicy.parse(CompressionPolicy.parse("*=adaptive"), hook_kinds)


def test_digest_depends_on_the_policy_and_the_names_in_order():
    p, q = CompressionPolicy.parse(TEXT), CompressionPolicy.parse("*.bias=none,embed.*=topk0.01,*=qsgd8")
    assert p.digest(NAMES) == CompressionPolicy.parse(TEXT).digest(NAMES)
    assert p.digest(NAMES) != q.digest(NAMES)
    assert p.digest(NAMES) != p.digest(NAMES[::-1])


def test_buckets_never_mix_rules():
    shapes = [(300, 8), (40, 30), (30,), (30, 20), (20,), (20, 10), (10,), (5,)]
    rules = [1, 2, 0, 2, 0, 3, 0, None]
    compressing, fusing = [False, True, True, True], [True, True, True, False]
    buckets = plan_policy_buckets(shapes, [np.float32] * len(shapes), rules, compressing, fusing,
                                  fusion_bytes=1 << 20, min_compress_size=256)
    got = [(b.members, b.rule, b.compressed) for b in buckets]
    # rule 2's two matrices fused; rule 0's biases fused and exact; rule 3's small matrix exact in its own bucket;
    # the unmatched tensor alone
    assert got == [((0,), 1, True), ((1, 3), 2, True), ((2, 4, 6), 0, False), ((5,), 3, False), ((7,), None, False)]
    alone = plan_policy_buckets([(300,), (300,)], [np.float32] * 2, [3, 3], compressing, fusing,
                                fusion_bytes=1 << 20, min_compress_size=256)
    assert [b.members for b in alone] == [(0,), (1,)]  # a rule that does not fuse (adaptive)
    assert [b.members for b in plan_policy_buckets([(300,), (300,)], [np.float32] * 2, [2, 2], compressing, fusing,
                                                   fusion_bytes=1200, min_compress_size=256)] == [(0,), (1,)]


def test_the_command_line_takes_a_policy(tmp_path):
    config = parse_args(["--model", "mlp", "--compression-policy", " b* = none , *=QSGD4"])
    assert config.compression_policy == "b*=none,*=qsgd4"
    path = tmp_path / "p.json"
    path.write_text('{"b*": "none", "*": "qsgd4"}')
    assert parse_args(["--compression-policy", str(path)]).identity()["compression_policy"] == "b*=none,*=qsgd4"
    assert parse_args([]).compression_policy is None
    with pytest.raises(ArgumentError, match="unknown compression 'qsgd'"):
        parse_args(["--compression-policy", "*=qsgd"])
    with pytest.raises(ValueError, match="not both"):
        parse_args(["--compression", "qsgd4", "--compression-policy", "*=fp16"])

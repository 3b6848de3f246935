"""scaleml.compress.names: the one parser of compression names, and the spellings each entry point took before."""

from __future__ import annotations

import pytest

from scaleml import config
from scaleml.compress import QSGD, Cast, OneBit, TopK
from scaleml.compress.names import KINDS, CompressionSpec, parse_compression, parse_format
from scaleml.train import reducer


@pytest.mark.parametrize("name, kind, compressor", [
    ("none", "none", None), ("dropin", "dropin", None), ("sparse", "sparse", None),
    ("topk0.01", "topk", TopK), ("topk.5", "topk", TopK), ("topk1", "topk", TopK), ("topk1.", "topk", TopK),
    ("topk1.00", "topk", TopK), ("topk1e-3", "topk", TopK),
    ("qsgd1", "qsgd", QSGD), ("qsgd8_ef", "qsgd", QSGD), ("qsgd4max", "qsgd", QSGD), ("qsgd4max_ef", "qsgd", QSGD),
    ("onebit", "onebit", OneBit), ("fp16", "cast", Cast), ("bf16", "cast", Cast),
    ("adaptive", "adaptive", None), ("adaptive8", "adaptive", None), (" QSGD4 ", "qsgd", QSGD),
])
def test_every_spelling_taken_before_is_taken(name, kind, compressor):
    spec = parse_compression(name)
    assert spec.kind == kind and spec.name == name.strip().lower()
    made = spec.compressor(seed=3, rank=1)
    assert made is None if compressor is None else type(made) is compressor


def test_parameters_and_paths():
    assert parse_compression("qsgd4max").compressor().norm == "max"
    assert parse_compression("qsgd4").compressor().norm == "l2"
    assert parse_compression("bf16").compressor().format == "bf16"
    assert parse_compression("topk0.25").compressor().ratio == 0.25
    assert [parse_compression(n).error_feedback for n in ("qsgd4", "qsgd4_ef", "onebit", "topk0.1", "fp16")] == \
        [False, True, True, True, False]
    assert [parse_compression(n).fixed_algorithm for n in ("sparse", "topk0.1", "qsgd4", "qsgd4_ef", "onebit",
                                                           "none", "dropin", "adaptive")] == \
        ["split_allgather", "split_allgather", "quantized_ring", "quantized_direct", "quantized_direct",
         None, None, None]


@pytest.mark.parametrize("name, message", [
    ("zip", "unknown compression 'zip'"), ("", "unknown compression"), ("qsgd9", "1 to 8 bits"),
    ("qsgd0", "1 to 8 bits"), ("topk0", r"\(0, 1\]"), ("topk1.5", r"\(0, 1\]"), ("adaptive0.5", ">= 1"),
    ("onebit_ef", "unknown compression"), ("qsgd4_ef_ef", "unknown compression"), (4, "must be a string"),
])
def test_bad_names_raise(name, message):
    with pytest.raises(ValueError, match=message):
        parse_compression(name)


def test_kinds_restrict_what_a_caller_takes():
    with pytest.raises(ValueError, match="unknown compression 'adaptive'; expected one of none, dropin"):
        parse_compression("adaptive", [k for k in KINDS if k != "adaptive"])
    assert parse_format("qsgd2max").norm == "max"
    for name in ("qsgd4_ef", "none", "topk0.1", "sparse"):
        with pytest.raises(ValueError, match="expected a value format"):
            parse_format(name)


def test_the_entry_points_share_the_parser():
    assert reducer.parse_compression is parse_compression and reducer.CompressionSpec is CompressionSpec
    assert config.COMPRESSIONS == ("none", "qsgd1", "qsgd2", "qsgd3", "qsgd4", "qsgd5", "qsgd6", "qsgd7", "qsgd8",
                                   "fp16", "bf16", "onebit")
    assert isinstance(config.make_compressor("qsgd3"), QSGD) and config.make_compressor("none") is None
    with pytest.raises(ValueError, match="unknown compression 'qsgd4max'"):
        config.make_compressor("qsgd4max")

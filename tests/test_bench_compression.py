"""The compression benchmark: --compression names, rows with error and bytes, the gloo baselines, the model."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import run_mpi

import scaleml
from scaleml import _network, bench
from scaleml._network import NoCommonNetwork
from scaleml.bench import methods

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TOPK = hasattr(scaleml, "topk_allreduce")

KNOWN = ["qsgd4", "qsgd8", "qsgd4max", "qsgd1max", "fp16", "bf16", "onebit", "quantized_ring:qsgd4",
         "quantized_rhd:fp16", "quantized_direct:onebit", "onebit_ef", "qsgd4_ef", "switch:qsgd4", "dropin:bf16",
         "allgather:qsgd4max"]
UNKNOWN = ["qsgd9", "qsgd0", "qsgd4l1", "int8", "quantized_ring", "dense:qsgd4", "recursive_doubling:qsgd4",
           "switch:topk0.01", "onebit_ef_ef", "topk0", "topk2", "topk0.01+topk0.01", "gloo_fp64", "allgather:",
           "all", ""]


@pytest.mark.parametrize("name", KNOWN)
def test_compression_names_register(name):
    assert bench.register_compression(name) == name
    assert name in bench.METHODS and name not in bench.LOSSLESS  # lossy rows are marked so


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_compression_names_raise(name):
    with pytest.raises(ValueError, match="unknown compression"):
        bench.register_compression(name)
    assert name not in bench.METHODS


@pytest.mark.parametrize("name", ["topk0.01", "topk0.5+qsgd8", "topk1"])
def test_topk_names_need_topk_allreduce(name):
    if HAS_TOPK:
        assert bench.register_compression(name) == name
    else:  # a known name that this build cannot run: skipped by the CLI, not an error
        with pytest.raises(methods.MethodUnavailable, match="topk_allreduce"):
            bench.register_compression(name)


def test_default_compression_names_are_known():
    for name in methods.DEFAULT_COMPRESSION:
        try:
            bench.register_compression(name)
        except methods.MethodUnavailable:
            assert name.startswith(("topk", "gloo_"))


def test_make_format():
    q = methods.make_format("qsgd4max", 1)
    assert (q.bits, q.bucket, q.norm, q.format) == (4, 512, "max", "fixed")
    assert methods.make_format("qsgd8", 0).norm == "l2"  # QSGD's own default
    assert methods.make_format("bf16", 0).format == "bf16"
    with pytest.raises(ValueError, match="unknown format"):
        methods.make_format("qsgd9", 0)


def test_unknown_compression_is_one_error_from_rank_0():
    result = run_mpi(2, ["-m", "scaleml.bench", "--n", "100", "--compression", "qsgd4", "qsgd9", "nope"],
                     timeout=120)
    assert result.returncode == 2
    assert result.stdout.count("unknown compression") == 1, result.stdout  # rank 0 only, both names at once
    assert "'qsgd9', 'nope'" in result.stdout and "FORMAT" in result.stdout


def test_lossy_rows_have_error_and_bytes(tmp_path):
    out = tmp_path / "c.json"
    # byte counts are asserted on forced rows (quantized_ring:...): auto's choice depends on measured times
    names = ["qsgd4", "onebit_ef", "fp16", "quantized_ring:qsgd4", "quantized_ring:fp16", "switch:qsgd4",
             "dropin:qsgd4", "allgather:qsgd4"]
    result = run_mpi(2, ["-m", "scaleml.bench", "--n", "8192", "--density", "1", "-w", "1", "-i", "6",
                         "--methods", "recursive_doubling", "--compression", *names, "--json", str(out)],
                     timeout=300)
    assert result.returncode == 0, result.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["mpi_allreduce", "recursive_doubling", *names]
    mpi = rows["mpi_allreduce"]
    assert mpi["bytes_sent_per_rank"] == 8192 * 4  # the ring's 2 (P-1)/P n 4 bytes at P = 2
    for name in names:
        row = rows[name]
        assert not row["lossless"] and row["time_avg_us"] > 0 and row["speedup_vs_mpi"] > 0
        assert row["bytes_sent_per_rank"] > 0, name
        assert row["wrong"] is None, name  # nccl-tests' #wrong counts lossless results only
        assert 0 <= row["rel_error"] < 3 and 0 <= row["rel_error_time_avg"] < 3, name
    assert 1e-6 < rows["fp16"]["rel_error"] < 1e-3  # fp16 rounding of each contribution and of the sum
    # bytes: 4-bit QSGD < fp16 < float32, and P = 2 keeps the allgather at one compressed vector per rank
    ring_q4, ring_fp16 = rows["quantized_ring:qsgd4"], rows["quantized_ring:fp16"]
    assert ring_q4["bytes_sent_per_rank"] < ring_fp16["bytes_sent_per_rank"] < mpi["bytes_sent_per_rank"]
    assert ring_fp16["bytes_sent_per_rank"] == mpi["bytes_sent_per_rank"] // 2
    assert ring_q4["algorithm"] == "quantized_ring:qsgd4" and ring_fp16["algorithm"] == "quantized_ring:fp16"
    assert rows["qsgd4"]["algorithm"].startswith("qsgd4->quantized_")
    assert rows["onebit_ef"]["algorithm"] == "onebit_ef->quantized_direct"
    # error feedback: each call is as rough as 1-bit, the mean over calls approaches the exact sum
    ef = rows["onebit_ef"]
    assert ef["rel_error"] > 0.1 and ef["rel_error_time_avg"] < ef["rel_error"]
    assert rows["recursive_doubling"]["rel_error"] < 1e-6 and rows["recursive_doubling"]["lossless"]
    # nccl-tests' bandwidths of each method's collective: the allgather's data is the P gathered vectors and its
    # factor (P-1)/P; every other method is an AllReduce, 2(P-1)/P (both 1 at P = 2)
    gather = rows["allgather:qsgd4"]
    assert gather["collective"] == "allgather"
    assert gather["algbw_GBps"] == pytest.approx(2 * gather["size_bytes"] / gather["time_avg_us"] / 1e3)
    assert gather["busbw_GBps"] == pytest.approx(gather["algbw_GBps"] / 2)
    for name in ("mpi_allreduce", "qsgd4", "switch:qsgd4"):
        assert rows[name]["collective"] == "allreduce"
        assert rows[name]["busbw_GBps"] == pytest.approx(rows[name]["algbw_GBps"])


def _gloo_run(tmp_path, python_args=("-m", "scaleml.bench")):
    out = tmp_path / "g.json"
    result = run_mpi(2, [*python_args, "--n", "5000", "--density", "1", "-w", "1", "-i", "2",
                         "--methods", "mpi_allreduce", "--compression", "gloo_fp32", "gloo_fp16", "fp16",
                         "--json", str(out)], timeout=300)
    return result, out


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (make install-torch)")
def test_gloo_baselines(tmp_path):
    result, out = _gloo_run(tmp_path)
    assert result.returncode == 0, result.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["mpi_allreduce", "gloo_fp32", "gloo_fp16", "fp16"]
    assert rows["gloo_fp32"]["lossless"] and rows["gloo_fp32"]["rel_error"] < 1e-6
    assert not rows["gloo_fp16"]["lossless"] and 1e-6 < rows["gloo_fp16"]["rel_error"] < 1e-3
    assert rows["gloo_fp32"]["bytes_sent_per_rank"] == 2 * rows["gloo_fp16"]["bytes_sent_per_rank"] == 5000 * 4
    assert rows["gloo_fp16"]["time_avg_us"] > 0 and rows["gloo_fp16"]["algorithm"] == "gloo_fp16"


def test_gloo_baselines_skip_without_torch(tmp_path):
    # None in sys.modules makes `import torch` fail: a machine without PyTorch.
    result, out = _gloo_run(tmp_path, ("-c", "import runpy, sys; sys.modules['torch'] = None; "
                                             "runpy.run_module('scaleml.bench', run_name='__main__')"))
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("skipping gloo_fp32: PyTorch is not importable") == 1, result.stdout
    assert "scaleml[torch]" in result.stdout
    assert [r["method"] for r in json.loads(out.read_text())["rows"]] == ["mpi_allreduce", "fp16"]


@pytest.mark.skipif(not HAS_TOPK, reason="scaleml.topk_allreduce is not in this build")
def test_topk_rows(tmp_path):
    out = tmp_path / "t.json"
    # The byte counts asserted need a sparse algorithm: forced, since auto may take the dense path when it
    # measures MPI faster (a busy machine did); SCALEML_ALGORITHM replaces topk_allreduce's "auto".
    result = run_mpi(2, ["-m", "scaleml.bench", "--n", "8192", "--density", "1", "-w", "1", "-i", "2",
                         "--methods", "mpi_allreduce", "--compression", "topk0.05", "topk0.05+qsgd8",
                         "--json", str(out)], timeout=300, env={"SCALEML_ALGORITHM": "recursive_doubling"})
    assert result.returncode == 0, result.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ("topk0.05", "topk0.05+qsgd8"):
        assert rows[name]["algorithm"].endswith("recursive_doubling"), rows[name]["algorithm"]
        assert 0 < rows[name]["rel_error"] < 1.5 and 0 < rows[name]["bytes_sent_per_rank"]
        assert rows[name]["bytes_sent_per_rank"] < rows["mpi_allreduce"]["bytes_sent_per_rank"]


# ---- where torch.distributed meets -----------------------------------------------------------

LO = {"lo": ("127.0.0.1", "255.0.0.0")}


def test_rendezvous_on_one_machine_is_loopback():
    one = {**LO, "eth0": ("192.168.1.5", "255.255.255.0")}
    assert _network.choose_rendezvous([one, one, one], ["vm"] * 3) == ("127.0.0.1", ["lo"] * 3)


def test_rendezvous_in_the_emulated_cluster():
    # One host name, a network namespace per emulated host: each sees only its own sml0 (and lo).
    ranks = [{**LO, "sml0": (f"10.77.0.{h + 1}", "255.255.255.0")} for h in (0, 0, 1, 1)]
    assert _network.choose_rendezvous(ranks, ["vm"] * 4) == ("10.77.0.1", ["sml0"] * 4)


def test_rendezvous_across_hosts_uses_the_shared_network():
    a = {**LO, "docker0": ("172.17.0.1", "255.255.0.0"), "ib0": ("10.1.0.1", "255.255.0.0")}
    b = {**LO, "eno1": ("10.1.3.7", "255.255.0.0")}
    assert _network.choose_rendezvous([a, b], ["a", "b"]) == ("10.1.0.1", ["ib0", "eno1"])
    assert _network.choose_rendezvous([a, {**b, "ib0": ("10.2.0.1", "255.255.0.0")}], ["a", "b"],
                                     preferred="ib0") == ("10.1.0.1", ["ib0", "ib0"])
    with pytest.raises(NoCommonNetwork, match="GLOO_SOCKET_IFNAME"):
        _network.choose_rendezvous([a, {**LO, "eno1": ("192.168.0.2", "255.255.255.0")}], ["a", "b"])


def test_ipv4_interfaces_has_loopback():
    found = _network.ipv4_interfaces()
    assert any(addr == "127.0.0.1" for addr, _ in found.values()), found


# ---- the model: bytes per rank at 4, 64 and 1024 ranks ---------------------------------------

def test_model_lossy_table(tmp_path, capsys):
    out = tmp_path / "m.json"
    n = 1 << 20
    assert bench.main(["model", "--n", str(n), "--ranks", "4", "64", "1024", "--density", "1e-2",
                       "--compression", "qsgd4", "fp16", "--alpha", "1e-6", "--beta", "1e-9", "--gamma", "0",
                       "--delta", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("quantized_ring", "quantized_rhd", "quantized_direct", "allgather", "MB"):
        assert name in text
    rows = json.loads(out.read_text())["lossy_rows"]
    assert [(r["ranks"], r["format"]) for r in rows] == [(P, f) for P in (4, 64, 1024) for f in ("qsgd4", "fp16")]
    for r in rows:
        P, q = r["ranks"], r["quantized_value_bytes"]
        ring = 2 * (P - 1) / P * n * q
        assert r["quantized_ring_bytes_per_rank"] == pytest.approx(ring)
        assert r["quantized_direct_bytes_per_rank"] == pytest.approx(ring)
        assert r["quantized_gather_bytes_per_rank"] == pytest.approx((P - 1) * n * q)  # the whole message to each
        assert r["dense_bytes_per_rank"] == pytest.approx(2 * (P - 1) / P * n * 4)
        # the allgather: P-1 compressed vectors (header and shape included)
        assert r["allgather_bytes_per_rank"] == pytest.approx((P - 1) * (n * q + 56))
        assert r["allgather_s"] == pytest.approx((P - 1) * 1e-6 + (P - 1) * (n * q + 56) * 1e-9)
    fp16 = {r["ranks"]: r for r in rows if r["format"] == "fp16"}
    assert fp16[4]["quantized_value_bytes"] == 2.0
    # from 4 to 1024 ranks the quantized AllReduce sends 4/3 as many bytes per rank (2 (P-1)/P), the allgather
    # of compressed vectors 341 times as many (P-1)
    for name, growth in (("quantized_ring", 4 / 3), ("quantized_rhd", 4 / 3), ("allgather", 341)):
        ratio = fp16[1024][f"{name}_bytes_per_rank"] / fp16[4][f"{name}_bytes_per_rank"]
        assert ratio == pytest.approx(growth, rel=1e-2), name
    assert bench.main(["model", "--compression", "int8"]) == 2

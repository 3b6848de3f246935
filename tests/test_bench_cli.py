"""The benchmark CLI: argument parsing, and a short sweep under mpiexec whose JSON and CSV are checked."""

from __future__ import annotations

import argparse
import csv
import json
import re

import pytest
from conftest import run_mpi

from scaleml import bench
from scaleml.cost_model import CODEC_FORMATS

ROW_FIELDS = {
    "size_bytes": int, "count": int, "dtype": str, "ranks": int, "density": float, "global_nnz_input": int,
    "max_nnz_input": int,
    "pattern": str, "method": str, "algorithm": str, "collective": str, "time_min_us": float, "time_avg_us": float,
    "time_max_us": float, "time_median_us": float, "algbw_GBps": float, "busbw_GBps": float,
    "bytes_sent_per_rank": int, "speedup_vs_mpi": float, "speedup_median_vs_mpi": float, "rel_error": float,
    "max_rel_error": float, "rel_error_time_avg": float, "lossless": bool, "wrong": int,
}


@pytest.mark.parametrize("text,value", [("1024", 1024), ("4K", 4096), ("64M", 64 << 20), ("1g", 1 << 30),
                                        ("8KB", 8192)])
def test_parse_size(text, value):
    assert bench.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "four", "1T", "-5"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_size(text)


def test_size_sweep_like_nccl_tests():
    args = bench.build_parser().parse_args(["-b", "4K", "-e", "64K", "-f", "2"])
    assert bench.sizes_from(args, 4) == [1024, 2048, 4096, 8192, 16384]
    args = bench.build_parser().parse_args(["--n", "10", "1000"])
    assert bench.sizes_from(args, 4) == [10, 1000]


def test_every_algorithm_is_registered():
    assert {"mpi_allreduce", "auto", "recursive_doubling", "split_allgather", "split_dense", "dense",
            "dropin"} <= set(bench.METHODS)
    # the lossy algorithms need a format: they run as ALG:FORMAT (--compression), not in --methods all
    assert not {"quantized_ring", "quantized_rhd", "quantized_direct"} & set(bench.BUILTIN)


def test_short_sweep_under_mpiexec(tmp_path):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    # no progress lines on stderr: mpiexec merges them into this stream, where they could split the table's
    result = run_mpi(2, ["-m", "scaleml.bench", "-b", "4K", "-e", "16K", "-f", "4", "--density", "0.01", "0.5",
                         "-w", "1", "-i", "2", "--json", str(out_json), "--csv", str(out_csv), "--no-progress"],
                     timeout=300)
    assert result.returncode == 0, result.stdout
    assert "mpi_allreduce" in result.stdout and "speedup" in result.stdout
    doc = json.loads(out_json.read_text())
    meta = doc["meta"]
    assert meta["ranks"] == 2 and meta["mpi"].startswith("MPICH")
    assert meta["schema_version"] == bench.SCHEMA_VERSION
    assert meta["argv"][1:] == ["-b", "4K", "-e", "16K", "-f", "4", "--density", "0.01", "0.5", "-w", "1", "-i", "2",
                                "--json", str(out_json), "--csv", str(out_csv), "--no-progress"]
    assert (meta["seed"], meta["warmup"], meta["iterations"], meta["dtype"]) == (0, 1, 2, "float32")
    assert set(meta["versions"]) == {"scaleml", "numpy", "mpi4py", "python", "mpi_library", "mpi_standard"}
    assert meta["versions"]["mpi_library"].startswith("MPICH") and all(meta["versions"].values())
    rows = doc["rows"]
    assert len(rows) == 2 * 2 * len(bench.BUILTIN)  # sizes x densities x methods (all: those built in)
    for row in rows:
        assert set(row) == set(ROW_FIELDS)
        for key, kind in ROW_FIELDS.items():
            assert isinstance(row[key], kind) or (kind is float and isinstance(row[key], int)), key
        assert row["time_min_us"] <= row["time_avg_us"] <= row["time_max_us"]
        # every built-in method is an AllReduce: nccl-tests' busbw = algbw * 2(P-1)/P, 1 at P = 2
        assert row["collective"] == "allreduce" and row["busbw_GBps"] == pytest.approx(row["algbw_GBps"])
        assert row["algbw_GBps"] == pytest.approx(row["size_bytes"] / row["time_avg_us"] / 1e3)
        assert row["time_min_us"] > 0 and row["speedup_vs_mpi"] > 0
        assert row["time_median_us"] > 0 and row["speedup_median_vs_mpi"] > 0
        assert row["max_rel_error"] < 1e-5 and row["rel_error"] < 1e-5  # every method here is lossless
        assert row["rel_error_time_avg"] == row["rel_error"]
        assert row["wrong"] == 0  # nccl-tests' #wrong: no value off the exact sum by more than rounding
        if row["method"] == "mpi_allreduce":
            assert row["speedup_vs_mpi"] == 1.0 and row["speedup_median_vs_mpi"] == 1.0
        # both speedups are against the baseline of the same case: the means, and the medians
        baseline = next(r for r in rows if r["method"] == "mpi_allreduce" and r["size_bytes"] == row["size_bytes"]
                        and r["density"] == row["density"])
        assert row["speedup_vs_mpi"] == pytest.approx(baseline["time_avg_us"] / row["time_avg_us"])
        assert row["speedup_median_vs_mpi"] == pytest.approx(baseline["time_median_us"] / row["time_median_us"])
    with out_csv.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(rows[0]) and "time_median_us" in reader.fieldnames
        assert len(list(reader)) == len(rows)
    header = next(line for line in result.stdout.splitlines() if "algorithm" in line)
    assert header.split()[4:8] == ["min(us)", "avg(us)", "max(us)", "med(us)"] and header.split()[-1] == "#wrong"
    # nccl-tests' closing lines: the check, and the mean bus bandwidth over sizes, one line per method
    assert result.stdout.count("# Out of bounds values : 0 OK") == 1
    # sparse data and the drop-in: one line says that its input, unlike the sparse rows', is the dense vector
    assert result.stdout.count("# input: dropin gets the dense vector") == 1
    averages = {line.split()[-1]: float(line.split()[5]) for line in result.stdout.splitlines()
                if line.startswith("# Avg bus bandwidth    : ")}
    assert set(averages) == set(bench.BUILTIN)
    for method, value in averages.items():
        busbw = [r["busbw_GBps"] for r in rows if r["method"] == method]
        assert value == pytest.approx(sum(busbw) / len(busbw), rel=1e-3, abs=1e-4)
    assert "# [" not in result.stdout


def test_old_style_arguments_and_progress_lines():
    # `make bench`'s arguments (long names of before), and progress under mpiexec by default: one line per
    # case from rank 0 (on stderr, merged here: searched, not matched per line)
    result = run_mpi(2, ["-m", "scaleml.bench", "--n", "64", "256", "--density", "0.01", "--iterations", "2",
                         "--warmup", "1", "--methods", "mpi_allreduce"], timeout=300)
    assert result.returncode == 0, result.stdout
    progress = re.findall(r"# \[(\d)/2\] ([\w ]+), density 0\.01 done", result.stdout)
    assert progress == [("1", "256 B"), ("2", "1 KiB")], result.stdout
    assert result.stdout.count("# Avg bus bandwidth    : ") == 1
    quiet = run_mpi(2, ["-m", "scaleml.bench", "--n", "64", "256", "--density", "0.01", "--iterations", "2",
                        "--warmup", "1", "--methods", "mpi_allreduce", "--no-progress"], timeout=300)
    assert quiet.returncode == 0 and "# [" not in quiet.stdout, quiet.stdout


def test_bus_bandwidth_factors():
    # nccl-tests: AllReduce 2(P-1)/P; AllGather and ReduceScatter (P-1)/P; Broadcast and Reduce 1
    assert bench.bus_bandwidth_factor("allreduce", 4) == pytest.approx(1.5)
    assert bench.bus_bandwidth_factor("allgather", 4) == pytest.approx(0.75)
    assert bench.bus_bandwidth_factor("reduce_scatter", 8) == pytest.approx(7 / 8)
    assert bench.bus_bandwidth_factor("broadcast", 8) == 1.0
    assert bench.bus_bandwidth_factor("allreduce", 1) == 0.0
    with pytest.raises(ValueError):
        bench.bus_bandwidth_factor("alltoall", 4)
    with pytest.raises(ValueError):
        bench.bus_bandwidth_factor("allreduce", 0)
    # algbw: the AllReduce's vector, the AllGather's gathered output (P vectors); 1000 B in 1 us at P = 4
    assert bench.bandwidths("allreduce", 1000, 4, 1e-6) == pytest.approx((1.0, 1.5))
    assert bench.bandwidths("allgather", 1000, 4, 1e-6) == pytest.approx((4.0, 3.0))
    assert bench.bandwidths("allreduce", 1000, 4, 0.0) == (0.0, 0.0)


def test_each_method_has_its_collective():
    assert all(bench.COLLECTIVES[m] == "allreduce" for m in bench.BUILTIN)
    for name, collective in [("allgather:qsgd4", "allgather"), ("qsgd4", "allreduce"),
                             ("quantized_ring:fp16", "allreduce"), ("switch:qsgd8", "allreduce")]:
        bench.register_compression(name)
        assert bench.COLLECTIVES[name] == collective, name


def test_average_bus_bandwidth_per_method():
    rows = [{"method": "a", "busbw_GBps": 1.0}, {"method": "b", "busbw_GBps": 4.0},
            {"method": "a", "busbw_GBps": 3.0}]
    assert bench.average_bus_bandwidth(rows) == {"a": 2.0, "b": 4.0}


def test_nccl_tests_flags_and_aliases():
    parse = bench.build_parser().parse_args
    # -n is nccl-tests' iterations; --n (two dashes) stays the element counts
    args = parse(["-n", "7", "--n", "10", "20", "-w", "3", "-c", "0", "-d", "double", "-o", "sum"])
    assert (args.iterations, args.n, args.warmup, args.check, args.dtype) == (7, [10, 20], 3, 0, "float64")
    args = parse(["--minbytes", "1K", "--maxbytes", "8K", "--stepfactor", "2", "--iters", "4", "--warmup_iters", "0",
                  "--datatype", "float"])
    assert (args.min_bytes, args.max_bytes, args.step_factor, args.iterations, args.warmup, args.dtype) == (
        1024, 8192, 2, 4, 0, "float32")
    # the names of before, and OSU's -i and -x
    args = parse(["--min-bytes", "2K", "--max-bytes", "4K", "--step-factor", "3", "--iterations", "5", "--warmup", "2",
                  "--dtype", "float64"])
    assert (args.min_bytes, args.max_bytes, args.step_factor, args.iterations, args.warmup, args.dtype) == (
        2048, 4096, 3, 5, 2, "float64")
    assert (parse(["-i", "9"]).iterations, parse(["-x", "4"]).warmup) == (9, 4)
    # nccl-tests' linear steps (its -i) are --stepbytes here
    assert bench.sizes_from(parse(["-b", "4K", "-e", "16K", "--stepbytes", "4K"]), 4) == [1024, 2048, 3072, 4096]


@pytest.mark.parametrize("argv,message", [
    (["--n", "-5"], "argument --n: an element count must be positive, not -5"),
    (["--n", "0"], "argument --n: an element count must be positive"),
    (["-b", "0"], "argument -b/--minbytes: the smallest size must be positive"),
    (["-b", "64K", "-e", "4K"], "65536 B is larger than -e/--maxbytes 4096 B"),
    (["-f", "1"], "argument -f/--stepfactor: must be at least 2, not 1"),
    (["--stepbytes", "0"], "argument --stepbytes: the size increment must be positive"),
    (["-b", "1", "-e", "1G", "--stepbytes", "1"], "at most 10000"),
    (["--density", "2"], "a density must be in (0, 1], not 2"),
    (["--density", "0.1", "-0.1"], "a density must be in (0, 1], not -0.1"),
    (["--density", "0"], "a density must be in (0, 1], not 0"),
    (["-n", "0"], "argument -n/--iters: must be at least 1, not 0"),
    (["-i", "0"], "argument -n/--iters: must be at least 1, not 0"),
    (["-w", "-1"], "argument -w/--warmup_iters: must be at least 0, not -1"),
    (["--seed", "-1"], "argument --seed: must be at least 0"),
    (["--methods", "nope"], "unknown method(s) 'nope'"),
    (["--compression", "qsgd9"], "unknown compression 'qsgd9'"),
])
def test_validate_run(argv, message):
    assert message in bench.validate_run(bench.build_parser().parse_args(argv))


def test_validate_run_accepts_the_defaults_and_bounds():
    parse = bench.build_parser().parse_args
    for argv in ([], ["--density", "1", "1e-6"], ["-b", "4K", "-e", "4K"], ["-w", "0", "-n", "1"]):
        assert bench.validate_run(parse(argv)) is None, argv


def test_output_paths_are_checked(tmp_path):
    assert bench.check_output_path(tmp_path / "new.json", "--json") is None
    assert not (tmp_path / "new.json").exists()  # the probe leaves nothing behind
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    assert bench.check_output_path(existing, "--json") is None and existing.read_text() == "keep"
    assert "is a directory" in bench.check_output_path(tmp_path, "--csv")
    assert "does not exist" in bench.check_output_path(tmp_path / "no" / "x.json", "--json")
    assert bench.check_output_path(tmp_path / "a" / "b" / "cost.json", "--output", make_parents=True) is None


# One error, printed once (rank 0), exit status 2 on every rank, no traceback, before any measurement.
USAGE_ERRORS = [
    (["--n", "-5"], "an element count must be positive"),
    (["-b", "64K", "-e", "4K"], "is larger than -e/--maxbytes"),
    (["--density", "2"], "a density must be in (0, 1]"),
    (["-i", "0"], "must be at least 1"),
    (["-b", "-5"], "not a size: '-5'"),
    (["--methods", "nope"], "unknown method(s) 'nope'"),
    (["--json", "/nonexistent-dir/out.json"], "argument --json: cannot write /nonexistent-dir/out.json"),
    (["--plot", "{tmp}/plot.xyz"], "matplotlib cannot write .xyz files"),
    (["--csv", "{tmp}"], "is a directory"),
    (["calibrate", "-e", "0"], "the largest message must be positive"),
]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_message_from_rank_0(tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    # the default sweep (4K to 16M, every method) would take minutes: the error comes before it
    result = run_mpi(2, ["-m", "scaleml.bench", *argv], timeout=120)
    assert result.returncode == 2, result.stdout
    assert result.stdout.count("error:") == 1 and result.stdout.count(message) == 1, result.stdout
    assert result.stdout.count("usage: scaleml-bench") == 1, result.stdout
    assert "Traceback" not in result.stdout and "algorithm" not in result.stdout, result.stdout


def test_help_lists_subcommands(capsys):
    assert bench.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("run", "calibrate", "model"):
        assert bench.cli.COMMANDS[name] in " ".join(text.split())
    for sub, option in [("run", "--minbytes"), ("calibrate", "--no-save"), ("model", "--ranks")]:
        assert bench.main([sub, "--help"]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: scaleml-bench {sub}") and option in text, sub
    assert bench.main(["run", "-h"]) == 0
    text = capsys.readouterr().out
    assert "flags of nccl-tests" in text and "-n, --iters" in text  # the epilog's table of flags


def test_help_under_mpiexec_is_printed_once():
    result = run_mpi(2, ["-m", "scaleml.bench", "calibrate", "--help"], timeout=120)
    assert result.returncode == 0 and result.stdout.count("usage: scaleml-bench calibrate") == 1, result.stdout


def test_model_rejects_bad_values(capsys):
    assert bench.main(["model", "--density", "2"]) == 2
    assert bench.main(["model", "--ranks", "0"]) == 2
    assert bench.main(["model", "--beta", "0"]) == 2
    assert bench.main(["model", "--compression", "qsgd9"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4 and "unknown format 'qsgd9'" in err


def test_format_size():
    assert [bench.format_size(b) for b in (512, 4096, 1536 << 10, 1 << 30)] == ["512 B", "4 KiB", "1.5 MiB",
                                                                                 "1 GiB"]


def test_plot_has_a_line_per_method_and_density(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    rows = [{"method": m, "density": d, "size_bytes": s, "time_avg_us": 1.0 + s / 1e3, "speedup_vs_mpi": 1.0}
            for m in ("mpi_allreduce", "auto") for d in (0.01, 0.1, 1.0) for s in (4096, 65536, 1 << 20)]
    meta = {"ranks": 2, "hosts": 1, "commit": "abc", "date": "today"}
    seen = {}
    monkeypatch.setattr(plt, "close", lambda fig: seen.setdefault("fig", fig))  # keep the figure to look at
    bench.plot(rows, meta, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    ax_time = seen["fig"].axes[0]
    assert len(ax_time.get_lines()) == 2 * 3
    seen["fig"].canvas.draw()
    labels = [t.get_text() for t in ax_time.get_xticklabels()]
    assert "4 KiB" in labels and "1 MiB" in labels


CHECK_SCRIPT = """
import sys
from scaleml import bench


@bench.register("wrong_sum")
def wrong(case):
    def run():
        return case.dense * 2, 0, "wrong_sum"  # not the sum over ranks

    return run


sys.exit(bench.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("check", ["1", "0"])
def test_check_flags_a_wrong_result(tmp_path, check):
    script = tmp_path / "check.py"
    script.write_text(CHECK_SCRIPT)
    result = run_mpi(2, [str(script), "--n", "256", "--density", "1", "-n", "1", "-w", "0", "--methods", "wrong_sum",
                         "-c", check], timeout=120)
    if check == "1":
        assert result.returncode == 1, result.stdout
        # searched, not matched per line: mpiexec merges rank 0's stderr (the "wrong result" message) into
        # the same stream, and a line of one may land in the middle of a line of the other
        summary = re.findall(r"# Out of bounds values : (\d+) (OK|FAILED)", result.stdout)
        assert len(summary) == 1 and summary[0][1] == "FAILED", result.stdout
        row = next(line for line in result.stdout.splitlines() if line.split()[3:4] == ["wrong_sum"])
        wrong = int(row.split()[-1])  # the #wrong column: nearly every one of the 256 values
        assert 200 < wrong <= 256 and int(summary[0][0]) == wrong
        assert result.stdout.count("wrong result: wrong_sum") == 1
    else:
        assert result.returncode == 0 and "Out of bounds" not in result.stdout, result.stdout


# Each rank's seconds per timed call, per method; a fake clock advances by them (deterministic timings).
FAKE_DURATIONS = {
    "mpi_allreduce": [[2, 2, 2], [2, 2, 2]],
    "slow_tail": [[1, 1, 10], [1, 1, 10]],  # one slow iteration: mean 4, median 1
    "skewed": [[1, 5, 1], [5, 1, 1]],  # each rank's median is 1, but the slowest rank per iteration: 5, 5, 1
}

FAKE_CLOCK_SCRIPT = """
import json, sys, types
import numpy as np
from mpi4py import MPI
from scaleml import bench
from scaleml.bench import measure as measure_module

durations = json.loads(sys.argv[1])
rank = MPI.COMM_WORLD.Get_rank()
clock = [0.0]
measure_module.time = types.SimpleNamespace(perf_counter=lambda: clock[0])


def fake(per_rank):
    def factory(case):
        steps = iter(per_rank[rank])

        def run():
            clock[0] += next(steps)
            return case.dense, 0, "fake"

        return run

    return factory


for name, per_rank in durations.items():
    bench.METHODS[name] = fake(per_rank)
rows = bench.run_case(MPI.COMM_WORLD, 64, np.float32, 0.5, "overlap", ["slow_tail", "skewed"], 0, 3, 0)
if rank == 0:
    print("ROWS " + json.dumps(rows))
"""


def test_median_is_over_iterations_of_the_slowest_rank(tmp_path):
    script = tmp_path / "fake_clock.py"
    script.write_text(FAKE_CLOCK_SCRIPT)
    result = run_mpi(2, [str(script), json.dumps(FAKE_DURATIONS)], timeout=120)
    assert result.returncode == 0, result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("ROWS "))
    rows = {r["method"]: r for r in json.loads(line[len("ROWS "):])}
    assert list(rows) == ["mpi_allreduce", "slow_tail", "skewed"]
    base, tail, skewed = rows["mpi_allreduce"], rows["slow_tail"], rows["skewed"]
    assert base["time_avg_us"] == pytest.approx(2e6) and base["time_median_us"] == pytest.approx(2e6)
    assert base["speedup_vs_mpi"] == 1.0 and base["speedup_median_vs_mpi"] == 1.0
    # the mean sees the slow iteration, the median does not; speedup_vs_mpi stays the ratio of means
    assert tail["time_avg_us"] == pytest.approx(4e6) and tail["time_median_us"] == pytest.approx(1e6)
    assert tail["speedup_vs_mpi"] == pytest.approx(0.5) and tail["speedup_median_vs_mpi"] == pytest.approx(2.0)
    # max over ranks per iteration first (5, 5, 1), then the median: 5 (not the ranks' own medians, 1)
    assert skewed["time_min_us"] == pytest.approx(7e6 / 3) and skewed["time_max_us"] == pytest.approx(7e6 / 3)
    assert skewed["time_median_us"] == pytest.approx(5e6)
    assert skewed["speedup_median_vs_mpi"] == pytest.approx(0.4)
    assert skewed["speedup_vs_mpi"] == pytest.approx(2 / (7 / 3))


def test_unknown_method_is_an_error():
    result = run_mpi(1, ["-m", "scaleml.bench", "--n", "100", "--methods", "nope"], timeout=120)
    assert result.returncode == 2 and "unknown method" in result.stdout


def test_model_subcommand_prints_every_algorithm(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert bench.main(["model", "--n", "4194304", "--ranks", "4", "1024", "--density", "1e-3", "1e-1",
                       "--alpha", "1e-6", "--beta", "1e-9", "--gamma", "0", "--delta", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("recursive_doubling", "split_allgather", "split_dense", "dense", "auto"):
        assert name in text
    doc = json.loads(out.read_text())
    codecs = doc["params"].pop("codecs")
    assert doc["params"] == {"alpha": 1e-6, "beta": 1e-9, "gamma": 0.0, "delta": 0.0, "alpha_intra": 1e-6,
                             "beta_intra": 1e-10}
    assert list(codecs) == list(CODEC_FORMATS)  # the lossy formats' seconds per value, as calibrate saves them
    assert len(doc["rows"]) == 4
    # nodes of 8 ranks: the flat algorithms next to hierarchical_dense, which sends 1/8 as much across nodes
    assert [(r["ranks"], r["nodes"]) for r in doc["node_rows"]] == [(4, 1), (1024, 128)]
    wide = doc["node_rows"][1]
    assert wide["hierarchical_dense_inter_node_bytes_per_rank"] < wide["ring_inter_node_bytes_per_rank"] / 7
    # one link per node: its per-node bytes (2 (N-1)/N n) are about the node-ordered ring's (2 (P-1)/P n) at
    # N = 128, so the model puts it near the flat ones there (docs/algorithms.md), not below
    assert 0.5 < wide["hierarchical_dense_s"] / min(wide["ring_s"], wide["dense_s"]) < 2
    assert "hierarchical_dense" in text
    row = doc["rows"][0]
    # hand check of the dense prediction: 2 log2 P alpha + 2 (P-1)/P n c_d beta
    assert row["dense_s"] == pytest.approx(2 * 2 * 1e-6 + 2 * 3 / 4 * 4194304 * 4 * 1e-9)
    assert row["speedup_vs_dense"] == pytest.approx(row["dense_s"] / row[row["auto"] + "_s"])
    assert row["bits"] == 32


def test_model_with_quantized_values(tmp_path):
    out = tmp_path / "model.json"
    assert bench.main(["model", "--n", "1048576", "--ranks", "8", "--density", "1", "--bits", "32", "8",
                       "--alpha", "0", "--beta", "1e-9", "--gamma", "0", "--delta", "0", "--json", str(out)]) == 0
    full, quantized = json.loads(out.read_text())["rows"]
    # dense AllReduce of 8-bit values moves a quarter of the bytes of float32: 4x by the model
    assert quantized["dense_s"] == pytest.approx(full["dense_s"] / 4)
    assert quantized["speedup_vs_dense"] == pytest.approx(4.0)
    assert bench.main(["model", "--bits", "0"]) == 2


def test_calibrate_fits_and_saves(tmp_path):
    target = tmp_path / "cost.json"
    result = run_mpi(2, ["-m", "scaleml.bench", "calibrate", "-e", "64K", "-i", "5", "--output", str(target)],
                     timeout=300)
    assert result.returncode == 0, result.stdout
    saved = json.loads(target.read_text())
    assert saved["alpha"] >= 0 and saved["beta"] > 0 and saved["gamma"] > 0
    assert 0 < saved["delta"] < 0.1  # the engine's fixed cost per call: some microseconds, not nothing
    assert len(saved["samples"]) == 18  # 0 and 2^0 .. 2^16 bytes
    # every lossy format's seconds per value of each pass, and the table of them
    assert list(saved["codecs"]) == list(CODEC_FORMATS)
    for name, seconds in saved["codecs"].items():
        assert set(seconds) == {"encode", "decode", "decode_add"} and all(0 < s < 1e-6 for s in seconds.values())
        assert f" {name} " in result.stdout
    assert "encode    decode  decode+add" in result.stdout
    # auto reads the file at import
    check = run_mpi(1, ["-c", "import scaleml, json, sys; p = scaleml.cost_model.get_params(); "
                              f"s = json.load(open({str(target)!r})); "
                              "sys.exit(0 if (p.beta, p.delta) == (s['beta'], s['delta']) and "
                              "all(p.codec(f) == tuple(c.values()) for f, c in s['codecs'].items()) else 1)"],
                    timeout=120, env={"SCALEML_COST_FILE": str(target)})
    assert check.returncode == 0, check.stdout


def test_calibrate_needs_two_ranks():
    result = run_mpi(1, ["-m", "scaleml.bench", "calibrate", "--no-save"], timeout=120)
    assert result.returncode == 2 and "at least 2 ranks" in result.stdout


def test_alpha_beta_fit_recovers_a_known_line():
    import numpy as np

    m = np.array([0, 8, 512, 1024, 4096, 65536, 1 << 20, 1 << 24], float)
    t = 5e-6 + 8e-9 * m
    t[4] *= 0.3  # a shaper's burst allowance lets a mid-size message through early: ignored
    alpha, beta = bench.fit_alpha_beta(m, t)
    assert alpha == pytest.approx(5e-6, rel=1e-3) and beta == pytest.approx(8e-9, rel=1e-3)

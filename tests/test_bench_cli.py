"""The benchmark CLI: argument parsing, and a short sweep under mpiexec whose JSON and CSV are checked."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
from conftest import run_mpi

from scaleml import bench

ROW_FIELDS = {
    "size_bytes": int, "count": int, "dtype": str, "ranks": int, "density": float, "global_nnz_input": int,
    "max_nnz_input": int,
    "pattern": str, "method": str, "algorithm": str, "time_min_us": float, "time_avg_us": float,
    "time_max_us": float, "time_median_us": float, "algbw_GBps": float, "busbw_GBps": float,
    "bytes_sent_per_rank": int, "speedup_vs_mpi": float, "speedup_median_vs_mpi": float, "rel_error": float,
    "max_rel_error": float, "rel_error_time_avg": float, "lossless": bool,
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
    result = run_mpi(2, ["-m", "scaleml.bench", "-b", "4K", "-e", "16K", "-f", "4", "--density", "0.01", "0.5",
                         "-w", "1", "-i", "2", "--json", str(out_json), "--csv", str(out_csv)], timeout=300)
    assert result.returncode == 0, result.stdout
    assert "mpi_allreduce" in result.stdout and "speedup" in result.stdout
    doc = json.loads(out_json.read_text())
    assert doc["meta"]["ranks"] == 2 and doc["meta"]["mpi"].startswith("MPICH")
    rows = doc["rows"]
    assert len(rows) == 2 * 2 * len(bench.BUILTIN)  # sizes x densities x methods (all: those built in)
    for row in rows:
        assert set(row) == set(ROW_FIELDS)
        for key, kind in ROW_FIELDS.items():
            assert isinstance(row[key], kind) or (kind is float and isinstance(row[key], int)), key
        assert row["time_min_us"] <= row["time_avg_us"] <= row["time_max_us"]
        assert row["time_min_us"] > 0 and row["speedup_vs_mpi"] > 0
        assert row["time_median_us"] > 0 and row["speedup_median_vs_mpi"] > 0
        assert row["max_rel_error"] < 1e-5 and row["rel_error"] < 1e-5  # every method here is lossless
        assert row["rel_error_time_avg"] == row["rel_error"]
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
    assert header.split()[4:8] == ["min(us)", "avg(us)", "max(us)", "med(us)"]


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
    assert doc["params"] == {"alpha": 1e-6, "beta": 1e-9, "gamma": 0.0, "delta": 0.0}
    assert len(doc["rows"]) == 4
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
    # auto reads the file at import
    check = run_mpi(1, ["-c", "import scaleml, json, sys; p = scaleml.cost_model.get_params(); "
                              f"s = json.load(open({str(target)!r})); "
                              "sys.exit(0 if (p.beta, p.delta) == (s['beta'], s['delta']) else 1)"],
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

"""SCALEML_* variables (scaleml.config), the ranked decision log, the Chrome-trace timeline and `python -m scaleml`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_mpi
from mpi4py import MPI

import scaleml
from scaleml import config, timeline
from scaleml.compress import QSGD, Cast, OneBit

PROBE = str(ROOT / "tests" / "programs" / "config_probe.py")


def import_scaleml(**env: str) -> subprocess.CompletedProcess:
    """``python -c "import scaleml"`` with ``env`` added to this environment."""
    return subprocess.run([sys.executable, "-c", "import scaleml"], cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT), **env}, timeout=60)


@pytest.fixture
def environ():
    """Reload the configuration from a dict of variables; the real environment's again afterwards."""
    def load(**variables: str) -> dict:
        return config.reload(variables)
    yield load
    config.reload()


# ---- validation at import ----------------------------------------------------------------------

@pytest.mark.parametrize("variable,value,listed", [
    ("SCALEML_DISABLE", "maybe", "expected 1 or 0"),
    ("SCALEML_ALGORITHM", "fastest", "split_allgather"),
    ("SCALEML_ALGORITHM", "split_allgater", "did you mean 'split_allgather'"),
    ("SCALEML_COMPRESSION", "qsgd9", "qsgd4, qsgd5"),
    ("SCALEML_COMPRESSION", "zip", "fp16, bf16, onebit"),
    ("SCALEML_MIN_COUNT", "-1", "integer >= 0"),
    ("SCALEML_MIN_COUNT", "lots", "integer >= 0"),
    ("SCALEML_COST_FILE", "/", "not a directory"),
    ("SCALEML_COST_FILE", "/no/such/dir/cost.json", "no such file"),
    ("SCALEML_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR"),
    ("SCALEML_TIMELINE", "/no/such/dir/trace.json", "does not exist"),
    ("SCALEML_TIMELINE", "trace-{host}.json", "{rank}"),
    ("SCALEML_BETA", "-1e-9", ">= 0"),
    ("SCALEML_TIMEOUT", "soon", "seconds"),
])
def test_a_bad_value_fails_the_import_naming_the_variable(variable, value, listed):
    result = import_scaleml(**{variable: value})
    assert result.returncode != 0
    assert "ValueError" in result.stderr
    assert f"{variable}={value!r}" in result.stderr
    assert listed in result.stderr


def test_a_cost_file_that_is_not_a_calibration_fails_the_import(tmp_path):
    bad = tmp_path / "cost.json"
    bad.write_text("alpha = 1")
    result = import_scaleml(SCALEML_COST_FILE=str(bad))
    assert result.returncode != 0 and f"SCALEML_COST_FILE={str(bad)!r}" in result.stderr


def test_every_bad_variable_is_named_at_once():
    result = import_scaleml(SCALEML_DISABLE="2", SCALEML_MIN_COUNT="x")
    assert result.returncode != 0
    assert "SCALEML_DISABLE='2'" in result.stderr and "SCALEML_MIN_COUNT='x'" in result.stderr


def test_an_unknown_variable_warns_with_the_likely_one():
    result = import_scaleml(SCALEML_ALGORTHM="dense")
    assert result.returncode == 0
    assert "SCALEML_ALGORTHM is not a ScaleML variable (did you mean SCALEML_ALGORITHM?)" in result.stderr


def test_good_values_parse(environ, tmp_path):
    s = environ(SCALEML_DISABLE="yes", SCALEML_ALGORITHM="ring", SCALEML_COMPRESSION="FP16",
                SCALEML_MIN_COUNT="0", SCALEML_LOG_LEVEL="info", SCALEML_TIMELINE=str(tmp_path / "t.json"),
                SCALEML_INJECT_FAULT="1:2", SCALEML_COST_FILE=" ")
    assert s["SCALEML_DISABLE"].value is True and s["SCALEML_DISABLE"].source == "env"
    assert config.DISABLE and config.ALGORITHM == "ring"
    assert s["SCALEML_COMPRESSION"].value == "fp16" and s["SCALEML_MIN_COUNT"].value == 0
    assert s["SCALEML_LOG_LEVEL"].value == "INFO" and s["SCALEML_INJECT_FAULT"].value == (1, 2)
    assert s["SCALEML_COST_FILE"].source == "default"  # blank: unset
    assert config.settings()["SCALEML_TIMEOUT"].source == "default"


def test_timeline_paths_per_rank():
    assert config.timeline_path("trace.json", 3) == Path("trace.rank3.json")
    assert config.timeline_path("out/trace", 0) == Path("out/trace.rank0")
    assert config.timeline_path("t-{rank}.json", 12) == Path("t-12.json")


# ---- precedence: code over environment, SCALEML_DISABLE over both -----------------------------

def test_compression_from_the_environment_and_code(environ):
    environ(SCALEML_COMPRESSION="qsgd2")
    q = config.resolve_compression(None)
    assert isinstance(q, QSGD) and q.bits == 2
    assert config.resolve_compression("none") is None  # exact in code, whatever the environment says
    mine = Cast("bf16")
    assert config.resolve_compression(mine) is mine
    assert isinstance(config.resolve_compression("onebit"), OneBit)
    with pytest.raises(ValueError, match="compression='qsgd0'"):
        config.resolve_compression("qsgd0")
    environ(SCALEML_COMPRESSION="qsgd2", SCALEML_DISABLE="1")
    assert config.resolve_compression(None) is None and config.resolve_compression(mine) is None


def test_algorithm_from_the_environment_replaces_auto_only(environ):
    environ(SCALEML_ALGORITHM="split_dense")
    assert config.apply_algorithm("auto") == "split_dense"
    assert config.apply_algorithm("ring") == "ring"
    assert config.apply_algorithm(42) == 42  # a bad argument stays for the agreement to reject
    assert config.apply_algorithm("auto", lambda a: False) == "auto"


def test_comm_defaults_from_the_environment(environ):
    environ(SCALEML_MIN_COUNT="123", SCALEML_ALGORITHM="split_allgather", SCALEML_COMPRESSION="fp16")
    comm = scaleml.Comm(MPI.COMM_WORLD)
    assert comm.min_count == 123 and comm.algorithm == "split_allgather" and isinstance(comm.compression, Cast)
    mine = scaleml.Comm(MPI.COMM_WORLD, min_count=7, algorithm="ring", compression="none")
    assert mine.min_count == 7 and mine.algorithm == "ring" and mine.compression is None
    assert mine.Dup().compression is None  # an exact communicator's duplicate stays exact
    environ(SCALEML_ALGORITHM="quantized_ring")
    with pytest.raises(ValueError, match="SCALEML_ALGORITHM='quantized_ring' is lossy"):
        scaleml.Comm(MPI.COMM_WORLD)
    assert scaleml.Comm(MPI.COMM_WORLD, compression=QSGD(bits=4)).algorithm == "quantized_ring"


def test_disable_sends_the_drop_in_to_mpi(environ):
    environ(SCALEML_DISABLE="1", SCALEML_ALGORITHM="split_allgather")
    comm = scaleml.Comm(MPI.COMM_WORLD, min_count=0)
    assert comm.algorithm == "auto"
    x = np.zeros(1 << 14, np.float32)
    x[::100] = 1
    out = np.empty_like(x)
    comm.Allreduce(x, out)
    assert comm.last_info is None and np.array_equal(out, x * MPI.COMM_WORLD.Get_size())
    _, info = scaleml.sparse_allreduce([1, 2], np.ones(2, np.float32), 10, MPI.COMM_WORLD,
                                       algorithm="recursive_doubling", return_info=True)
    assert info.algorithm == "dense"


# ---- logging ------------------------------------------------------------------------------------

def test_log_lines_carry_the_rank_and_the_decision(capsys):
    try:
        config.set_log_level("INFO")
        comm = scaleml.Comm(MPI.COMM_WORLD, min_count=1000)
        small = np.ones(10, np.float32)
        comm.Allreduce(small, np.empty_like(small))
        comm.Allreduce(small, np.empty_like(small))  # the same decision again: not repeated at INFO
    finally:
        config.set_log_level(None)
    err = capsys.readouterr().err
    assert err.count("[scaleml rank 0] INFO Allreduce n=10 float32 -> MPI_Allreduce: below min_count") == 1
    with pytest.raises(ValueError, match="LOUD"):
        config.set_log_level("LOUD")


# ---- the timeline -------------------------------------------------------------------------------

def test_a_timeline_cut_short_is_still_read(tmp_path):
    path = tmp_path / "t.rank0.json"
    path.write_text('{"traceEvents": [\n{"name":"a","ph":"X","pid":0,"tid":1,"ts":5,"dur":1},\n{"name":"b","ph')
    assert [e["name"] for e in timeline.read(path)["traceEvents"]] == ["a"]
    merged = timeline.merge([path], tmp_path / "all.json")
    assert merged["traceEvents"][0]["ts"] == 0
    with pytest.raises(FileNotFoundError):
        timeline.merge([tmp_path / "nothing.json"])


def test_a_timeline_in_process(tmp_path):
    try:
        path = timeline.start(tmp_path / "t.json", rank=0)
        scaleml.sparse_allreduce([1, 2], np.ones(2, np.float32), 10, MPI.COMM_WORLD)
    finally:
        timeline.stop()
    events = json.loads(path.read_text())["traceEvents"]
    assert {e["cat"] for e in events if e["ph"] == "X"} >= {"call", "scan", "agreement", "plan", "algorithm",
                                                            "decode"}


# ---- two ranks, configured from the environment ---------------------------------------------------

def probe(nprocs: int = 2, **env: str) -> tuple[list[dict], str]:
    result = run_mpi(nprocs, [PROBE], timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-4000:]
    # ranks' lines may interleave without a newline between them: each report is a flat JSON object
    lines = [json.loads(found) for found in re.findall(r"PROBE (\{[^{}]*\})", result.stdout)]
    assert sorted(p["rank"] for p in lines) == list(range(nprocs))
    return lines, result.stdout


def test_disable_runs_everything_exactly_on_mpi():
    for p in probe(SCALEML_DISABLE="1", SCALEML_ALGORITHM="split_allgather")[0]:
        assert p["dropin"] == [None, None, None] and p["explicit"] is None and p["dropin_ok"]
        assert p["sparse"] == "dense" and p["topk"] == "dense"
        assert p["quantized"] == ["dense", "exact"] and p["quantized_exact"] and p["adaptive_exact"]


def test_the_algorithm_variable_forces_auto_but_not_an_explicit_choice():
    for p in probe(SCALEML_ALGORITHM="split_allgather", SCALEML_MIN_COUNT="1000")[0]:
        assert p["dropin"] == ["split_allgather"] * 3 and p["dropin_ok"]
        assert p["explicit"] == "recursive_doubling" and p["min_count"] == 1000
        assert p["sparse"] == "split_allgather" and p["topk"] == "split_allgather"
        assert p["quantized"][0] in scaleml.algorithms.LOSSY  # an exact name does not apply there


def test_ranked_log_and_timeline_of_a_two_rank_run(tmp_path):
    template = tmp_path / "trace.json"
    lines, out = probe(SCALEML_LOG_LEVEL="INFO", SCALEML_TIMELINE=str(template))
    for rank in (0, 1):
        assert f"[scaleml rank {rank}] INFO Allreduce n=32768 float32 nnz_max=" in out  # the engine's choice
        assert f"[scaleml rank {rank}] INFO Allreduce n=16 float32 -> MPI_Allreduce: below min_count" in out
        assert f"[scaleml rank {rank}] INFO Allreduce n=32768 float32 -> MPI_Allreduce: op MPI.MAX" in out
        assert f"[scaleml rank {rank}] INFO sparse_allreduce n=32768 float32" in out
        assert f"[scaleml rank {rank}] INFO quantized_allreduce n=4096 float32" in out
    files = timeline.rank_files(template)
    assert [f.name for f in files] == ["trace.rank0.json", "trace.rank1.json"]
    phases = {"scan", "agreement", "plan", "algorithm", "decode", "encode"}
    for rank, f in enumerate(files):
        events = json.loads(f.read_text())["traceEvents"]  # valid JSON after the run
        timed = [e for e in events if e["ph"] == "X"]
        assert {e["pid"] for e in events} == {rank}
        assert all(e["dur"] >= 0 and e["ts"] > 0 for e in timed)
        lanes = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
        assert lanes == {"Allreduce", "sparse_allreduce", "quantized_allreduce", "topk_allreduce",
                         "adaptive_allreduce"}
        calls = [e for e in timed if e["cat"] == "call"]
        assert all({"n", "algorithm"} <= set(e["args"]) for e in calls)
        assert phases <= {e["cat"] for e in timed}
        sparse = [e for e in calls if e["name"] == "sparse_allreduce"]
        assert sparse and all("bytes" in e["args"] for e in sparse)
    merged = tmp_path / "all.json"
    result = subprocess.run([sys.executable, "-m", "scaleml", "timeline", "merge", str(template), "-o", str(merged)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    events = json.loads(merged.read_text())["traceEvents"]
    assert {e["pid"] for e in events} == {0, 1} and min(e["ts"] for e in events if "ts" in e) == 0


# ---- python -m scaleml -----------------------------------------------------------------------------

def test_python_m_scaleml_prints_the_installation_and_configuration():
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "SCALEML_MIN_COUNT": "77"}
    text = subprocess.run([sys.executable, "-m", "scaleml"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=120)
    assert text.returncode == 0, text.stderr
    for field in (f"ScaleML {scaleml.__version__}", "mpi4py", "library", "ScaleML built against", "thread level",
                  "compiler", "flags", "SIMD paths in use", "CUDA", "available", "SCALEML_DISABLE",
                  "SCALEML_TIMELINE"):
        assert field in text.stdout
    assert any(line.split()[:3] == ["SCALEML_MIN_COUNT", "77", "env"] for line in text.stdout.splitlines())
    js = subprocess.run([sys.executable, "-m", "scaleml", "--json"], cwd=ROOT, capture_output=True, text=True,
                        env=env, timeout=120)
    assert js.returncode == 0, js.stderr
    report = json.loads(js.stdout)
    assert report["scaleml"]["version"] == scaleml.__version__
    assert report["mpi"]["library"] == MPI.Get_library_version().strip()
    assert report["mpi"]["built_against"].startswith(scaleml.BUILT_MPI_VENDOR)
    assert set(report["build"]["simd_in_use"]) == {"avx2", "bmi2", "f16c", "avx512f"} and report["build"]["cflags"]
    assert isinstance(report["cuda"]["available"], bool)
    assert report["configuration"]["SCALEML_MIN_COUNT"] == {"value": 77, "source": "env",
                                                          "help": config.VARIABLES["SCALEML_MIN_COUNT"].help}
    assert report["configuration"]["SCALEML_ALGORITHM"]["source"] == "default"

"""A rank that fails inside a collective, or ranks in different collectives, end the job with a clear message
in bounded time (never a hang, never a silent result); see scaleml/watchdog.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_mpi

PROGRAM = str(ROOT / "tests" / "programs" / "failing_collectives.py")


def run_case(nprocs: int, case: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    result = run_mpi(nprocs, [PROGRAM, case], timeout=60, env=env)
    return result, time.monotonic() - t0


@pytest.mark.parametrize("nprocs", [2, 5])
@pytest.mark.parametrize("algorithm", ["recursive_doubling", "split_allgather", "split_dense", "ring",
                                       "quantized_ring", "quantized_rhd", "quantized_direct", "quantized_gather"])
def test_a_failure_inside_an_algorithm_aborts_the_job_with_its_message(nprocs, algorithm):
    # rank 1 fails at the first wait of its second engine call; the others are inside the same collective
    result, seconds = run_case(nprocs, f"fault:{algorithm}", SCALEML_INJECT_FAULT="1:2:1")
    assert result.returncode != 0
    assert f"rank 1 of {nprocs}: {algorithm} failed inside the collective" in result.stdout
    assert "fault injected" in result.stdout
    assert "finished" not in result.stdout
    assert seconds < 30


@pytest.mark.parametrize("nprocs", [2, 3, 5])
def test_ranks_in_different_scaleml_functions_raise_together(nprocs):
    result, seconds = run_case(nprocs, "functions")
    assert result.returncode != 0
    assert "finished" not in result.stdout
    assert result.stdout.count("ranks are in different ScaleML functions (quantized_allreduce and "
                               "sparse_allreduce)") == nprocs  # every rank raised, naming both
    assert seconds < 30


@pytest.mark.parametrize("nprocs", [2, 3, 4])
@pytest.mark.parametrize("case", ["count", "op"])
def test_ranks_in_different_collectives_end_in_an_abort_with_the_reason(case, nprocs):
    result, seconds = run_case(nprocs, case, SCALEML_TIMEOUT="3", SCALEML_STALL_WARNING="1")
    assert result.returncode != 0
    assert "finished" not in result.stdout  # no rank returned a result
    assert "Are all ranks in the same collective?" in result.stdout
    assert "aborting the job after waiting" in result.stdout
    assert seconds < 30


@pytest.mark.parametrize("variable,value", [("SCALEML_TIMEOUT", "-1"), ("SCALEML_TIMEOUT", "soon"),
                                            ("SCALEML_STALL_WARNING", "nan"), ("SCALEML_INJECT_FAULT", "1"),
                                            ("SCALEML_INJECT_FAULT", "a:b"), ("SCALEML_INJECT_FAULT", "0:0")])
def test_bad_settings_name_their_variable(variable, value):
    result = subprocess.run([sys.executable, "-c", "import scaleml"], cwd=ROOT, capture_output=True, text=True,
                            env={**__import__("os").environ, variable: value}, timeout=60)
    assert result.returncode != 0
    assert f"{variable}={value!r}" in result.stderr


def test_set_timeout_validates_its_arguments():
    import scaleml
    for bad in (-1, float("inf"), "10", True):
        with pytest.raises(ValueError):
            scaleml.set_timeout(bad)
    scaleml.set_timeout(600, 60)  # the defaults again

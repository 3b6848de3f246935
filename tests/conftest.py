"""Shared helpers: run a pytest module under mpiexec, with a timeout that kills every rank."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Tests use the built-in cost parameters, never a calibration file of this machine.
os.environ["SCALEML_COST_FILE"] = os.devnull

ROOT = Path(__file__).resolve().parent.parent
MPI_TESTS = Path(__file__).resolve().parent / "mpi"
RANK_COUNTS = [1, 2, 3, 4, 5, 8]


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """pytest-mpi prints an "MPI Information" section (about 600 characters) on every rank after the
    failures; at 8 ranks it would fill the tail of the output that run_pytest_under_mpi reports. Keep it
    on rank 0 only (the launcher's rank variables: MPICH/Hydra, Open MPI, PMIx)."""
    rank = next((os.environ[v] for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if v in os.environ), "0")
    if rank != "0":
        for plugin in config.pluginmanager.get_plugins():
            if type(plugin).__name__ == "MPIPlugin" and hasattr(plugin, "_is_testing_mpi"):
                plugin._is_testing_mpi = False


def mpiexec() -> str:
    """The mpiexec next to this Python (the venv's MPICH), else the one on PATH."""
    local = Path(sys.prefix) / "bin" / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        pytest.fail("no mpiexec found: run `make install`")
    return found


def run_mpi(nprocs: int, args: list[str], timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n nprocs python ARGS``; on timeout kill the whole job and fail.

    The job runs in its own session so a hung rank cannot outlive the test.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {}))
    return run_killing_on_timeout([mpiexec(), "-n", str(nprocs), sys.executable, *args], timeout, env,
                                  f"mpiexec -n {nprocs}")


def run_killing_on_timeout(cmd: list[str], timeout: float, env: dict[str, str],
                           what: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session (stdout and stderr merged); on timeout kill the whole session and fail."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{what} timed out after {timeout} s (a hang):\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def run_pytest_under_mpi(nprocs: int, module: str, timeout: float = 600, extra: tuple[str, ...] = (),
                         env: dict[str, str] | None = None) -> str:
    """Run tests/mpi/<module> with pytest on every rank; fail unless every rank passed.

    The modules' tests carry pytest-mpi's ``mpi`` marker: ``--with-mpi`` runs them
    (without it, e.g. ``pytest tests/mpi/mpi_bad_input.py``, pytest-mpi skips them).
    """
    result = run_mpi(nprocs, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--with-mpi",
                              str(MPI_TESTS / module), *extra], timeout=timeout, env=env)
    if result.returncode != 0:
        pytest.fail(f"{module} failed under mpiexec -n {nprocs} (exit {result.returncode}):\n"
                    f"{result.stdout[-8000:]}")
    if "need --with-mpi option to run" in result.stdout:  # skipped, not run: a green that tested nothing
        pytest.fail(f"{module}: pytest-mpi skipped its tests under mpiexec -n {nprocs}:\n{result.stdout[-4000:]}")
    return result.stdout

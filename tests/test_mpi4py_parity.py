"""Parity with mpi4py's own test suite (scripts/mpi4py_parity.py), and the drop-in's pickling and DLPack reads.

The script downloads the sdist of the installed mpi4py (once, into
build/mpi4py-parity/), runs its collective, point-to-point, communicator and
request tests at 1, 2 and 3 ranks, plain and with every communicator a
``scaleml.Comm``, and fails where the two pass different tests. A download
that fails fails this test, with pip's reason: CI reaches PyPI (``make
install`` does).
"""

from __future__ import annotations

import os
import sys

import pytest
from conftest import ROOT, run_killing_on_timeout, run_pytest_under_mpi

SCRIPT = ROOT / "scripts" / "mpi4py_parity.py"


@pytest.mark.parametrize("nprocs", [1, 2])
def test_pickling_and_dlpack_reads_follow_mpi4py(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_pickle_dlpack.py", timeout=300)


def test_wrapped_mpi4py_test_suite_passes_what_plain_mpi4py_passes():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # six launches of at most 240 s each (the script's own limit), and the download
    proc = run_killing_on_timeout([sys.executable, str(SCRIPT)], 1200, env, "scripts/mpi4py_parity.py")
    out = proc.stdout
    print(out)  # the table, in the report of a failure (and with -s)
    if proc.returncode != 0:
        pytest.fail(f"scripts/mpi4py_parity.py failed (exit {proc.returncode}):\n{out[-8000:]}")

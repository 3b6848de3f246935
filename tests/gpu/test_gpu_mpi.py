"""The collectives on device arrays at 1, 2 and 4 ranks (tests/gpu/mpi_gpu_collectives.py under mpiexec).

``SCALEML_GPU_MPI_RANKS`` (e.g. ``1``) limits the rank counts: scripts/gpu_check.sh runs this file at 1
rank and the module at 2 and 4 ranks as steps of their own.
"""

from __future__ import annotations

import os

import pytest

from . import gpu_support

RANKS = [int(r) for r in os.environ.get("SCALEML_GPU_MPI_RANKS", "1,2,4").split(",") if r.strip()]


@pytest.mark.parametrize("nprocs", RANKS)
def test_collectives_on_device_arrays_equal_the_host_results(dev, nprocs):
    gpu_support.run_mpi_module(nprocs, "mpi_gpu_collectives.py", timeout=300 + 60 * nprocs)

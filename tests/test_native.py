"""Build facts of the C core and the MPI ABI check made at import."""

from __future__ import annotations

import pytest
from mpi4py import MPI

import scaleml
from scaleml._native import check_mpi_abi, lib


def test_extension_matches_the_mpi_mpi4py_loaded():
    assert lib.scaleml_mpi_comm_handle_bytes() == MPI._sizeof(MPI.Comm)
    assert scaleml.BUILT_MPI_VENDOR in ("MPICH", "Open MPI", "unknown")
    assert lib.scaleml_mpi_version() >= 30


@pytest.mark.parametrize("built,runtime", [
    (("MPICH", 4), ("MPICH", 4)),
    (("MPICH", 4), ("Intel MPI", 4)),   # same ABI family
    (("Open MPI", 8), ("Open MPI", 8)),
])
def test_abi_check_accepts_matching_mpi(built, runtime):
    check_mpi_abi(built[0], built[1], runtime[0], runtime[1])


@pytest.mark.parametrize("built,runtime", [
    (("Open MPI", 8), ("MPICH", 4)),     # pointer handles vs int handles
    (("MPICH", 4), ("Open MPI", 8)),
    (("MPICH", 4), ("MPICH", 8)),
])
def test_abi_mismatch_is_an_import_error_that_says_how_to_rebuild(built, runtime):
    with pytest.raises(ImportError, match="MPICC=.*pip install") as exc:
        check_mpi_abi(built[0], built[1], runtime[0], runtime[1])
    assert built[0] in str(exc.value) and runtime[0] in str(exc.value)

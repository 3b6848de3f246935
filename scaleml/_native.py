"""Loads the C core and checks that it was built against the MPI mpi4py uses.

The exceptions and :func:`check` live in :mod:`scaleml.errors`; they are
re-exported here for the modules that import them from ``_native``.
"""

from __future__ import annotations

import os

from mpi4py import MPI

from . import errors
from .errors import CorruptBufferError, MalformedMessageError, ScaleMLError, check

__all__ = ["BUILT_MPI_VENDOR", "CorruptBufferError", "MalformedMessageError", "ScaleMLError", "check",
           "check_mpi_abi", "comm_address", "error_message", "ffi", "lib"]

_REBUILD_HINT = (
    "Rebuild ScaleML against the MPI that mpi4py loads: with the MPI from PyPI run "
    "`make install`; with a cluster MPI run "
    "`MPICC=$(which mpicc) pip install --no-build-isolation --force-reinstall --no-deps .` "
    "in the environment whose mpi4py was built with that MPI."
)

# The kernels' OpenMP threads sleep between parallel regions instead of spinning, unless the user chose: a
# spinning thread steals its core from the other ranks wherever ranks share cores that no launcher or MPI
# can see (one machine serving several emulated hosts: 1-bit AllReduce 42 ms spinning, 16 ms sleeping,
# docs/benchmarks.md). Read once, when the OpenMP runtime starts with the extension below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(f"ScaleML's C extension scaleml._core could not be loaded ({exc}). {_REBUILD_HINT}") from exc

ffi = _core.ffi
lib = _core.lib


def error_message() -> str:
    """The C core's message for the calling thread's last error (what :func:`check` raises with)."""
    return ffi.string(lib.scaleml_error_message()).decode(errors="replace")


errors.set_message_source(error_message)

# mpi4py vendor names of MPI libraries that share MPICH's ABI (int handles).
_MPICH_FAMILY = {"MPICH", "Intel MPI", "MVAPICH", "MVAPICH2", "Cray MPICH", "Microsoft MPI"}


def _family(vendor: str) -> str:
    return "MPICH" if vendor in _MPICH_FAMILY else vendor


def check_mpi_abi(built_vendor: str, built_handle_bytes: int, runtime_vendor: str,
                  runtime_handle_bytes: int) -> None:
    """Raise ImportError when the extension's MPI differs from mpi4py's.

    MPICH-family handles are ints and Open MPI handles are pointers: passing one
    for the other would crash, so a mismatch must stop the import.
    """
    if built_handle_bytes != runtime_handle_bytes or (
        built_vendor != "unknown" and _family(built_vendor) != _family(runtime_vendor)
    ):
        raise ImportError(
            f"ScaleML was built against {built_vendor} (MPI_Comm handles of {built_handle_bytes} bytes) "
            f"but mpi4py loaded {runtime_vendor} (handles of {runtime_handle_bytes} bytes). {_REBUILD_HINT}"
        )


BUILT_MPI_VENDOR = ffi.string(lib.scaleml_mpi_vendor()).decode()
check_mpi_abi(BUILT_MPI_VENDOR, lib.scaleml_mpi_comm_handle_bytes(), MPI.get_vendor()[0], MPI._sizeof(MPI.Comm))


def comm_address(comm: MPI.Comm) -> int:
    """Address of the MPI_Comm handle inside an mpi4py communicator."""
    return MPI._addressof(comm)

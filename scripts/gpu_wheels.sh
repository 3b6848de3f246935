#!/usr/bin/env bash
# Download, here (a machine with PyPI), the wheels that scripts/gpu_check.sh installs on the GPU machine, which
# has Python 3.12, torch, CuPy, numpy, pytest and an mpi4py of its own, but no registry, no cffi and no MPI:
#   cffi + pycparser  the build (scaleml/_ffi_build.py) and the CUDA library's loader (scaleml/_cuda.py)
#   mpich             libmpi, mpicc (our build) and mpiexec (the 2- and 4-rank steps)
#   mpi4py            the PyPI wheel, the one `make install` uses: it loads the MPI found at run time (the mpich
#                     wheel's libmpi), where the machine's own mpi4py may be built for another MPI
#   pytest-mpi        --with-mpi, the marker of the MPI test modules
# Versions: those of requirements.txt / the .venv of `make install`. Usage: scripts/gpu_wheels.sh [DIR] (.whl)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two of one package stop the whole install
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" \
    cffi==2.1.1 pycparser==3.12 mpich==5.0.2 mpi4py==4.1.2 pytest-mpi==0.6
ls -l "$DEST"
du -sh "$DEST"

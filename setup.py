"""Build of ScaleML's C core (cffi extension ``scaleml._core``), the drop-in's direct MPI call
(``scaleml._mpi_direct``, Python 3.11+) and, when nvcc is present, its CUDA library (``scaleml/_cuda_build.py``);
metadata is in pyproject.toml."""

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent / "scaleml"))
import _cuda_build  # noqa: E402  (build scripts beside the package: importing scaleml needs the built core)
import _ffi_build  # noqa: E402


class BuildExtWithCuda(build_ext):
    """The cffi extension, then the CUDA library into the same folder (skipped with a notice without nvcc)."""

    def run(self) -> None:
        super().run()
        _cuda_build.build(Path(self.get_ext_fullpath("scaleml._core")).parent)



def mpi_direct_extensions() -> list:
    """``scaleml._mpi_direct`` (csrc/python/mpi_direct.c) on the stable ABI of Python 3.11, the first whose
    limited API has the buffer protocol; none before 3.11 or without mpi4py's C headers, and the drop-in then
    calls mpi4py (the same calls, about 0.5 us slower each)."""
    try:
        import mpi4py
    except ImportError:
        print("scaleml: mpi4py not importable at build time: scaleml._mpi_direct not built", file=sys.stderr)
        return []
    if sys.version_info < (3, 11):
        return []
    flags = _ffi_build.mpi_flags(_ffi_build.find_mpicc())
    return [Extension(
        "scaleml._mpi_direct",
        sources=["csrc/python/mpi_direct.c"],
        include_dirs=[mpi4py.get_include()] + flags["include_dirs"],
        library_dirs=flags["library_dirs"],
        libraries=flags["libraries"],
        extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
        extra_link_args=flags["extra_link_args"],
        py_limited_api=True,
    )]


setup(
    ext_modules=mpi_direct_extensions(),
    cffi_modules=["scaleml/_ffi_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithCuda},
    # cffi builds the extension against the stable ABI (scaleml/_core.abi3.so; the
    # C code uses no Python API), so one wheel serves CPython 3.9 and later;
    # scaleml._mpi_direct is on 3.11's stable ABI, and optional below 3.11.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)

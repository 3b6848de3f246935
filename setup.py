"""Build of ScaleML's C core (cffi extension ``scaleml._core``) and, when nvcc is present, its CUDA library
(``scaleml/_cuda_build.py``); metadata is in pyproject.toml."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent / "scaleml"))
import _cuda_build  # noqa: E402  (a build script beside the package: importing scaleml needs the built core)


class BuildExtWithCuda(build_ext):
    """The cffi extension, then the CUDA library into the same folder (skipped with a notice without nvcc)."""

    def run(self) -> None:
        super().run()
        _cuda_build.build(Path(self.get_ext_fullpath("scaleml._core")).parent)


setup(
    cffi_modules=["scaleml/_ffi_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithCuda},
    # cffi builds the extension against the stable ABI (scaleml/_core.abi3.so; the
    # C code uses no Python API), so one wheel serves CPython 3.9 and later.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)

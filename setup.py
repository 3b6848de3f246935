"""Build of ScaleML's C core (cffi extension ``scaleml._core``); metadata is in pyproject.toml."""

from setuptools import setup

setup(
    cffi_modules=["scaleml/_ffi_build.py:ffibuilder"],
    # cffi builds the extension against the stable ABI (scaleml/_core.abi3.so; the
    # C code uses no Python API), so one wheel serves CPython 3.9 and later.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)

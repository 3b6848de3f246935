"""Build of ScaleML's C core (cffi extension ``scaleml._core``); metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["scaleml/_ffi_build.py:ffibuilder"])

"""The version of ScaleML: its one source (pyproject.toml reads it without importing the package)."""

__version__ = "0.1.0"

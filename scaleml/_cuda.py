"""ScaleML's CUDA library, loaded when first needed: the kernels of ``csrc/cuda`` and the runtime calls of staging.

The library (``_scaleml_cuda.so`` beside this module, built by
``scaleml/_cuda_build.py`` when nvcc is present) is opened with cffi in ABI
mode, so ``import scaleml`` never needs it, a GPU or a driver. :func:`backend`
returns the one :class:`Backend` every device path calls; it raises
:class:`~scaleml.errors.DeviceError` saying why when there is none (not
built, no device visible).

``SCALEML_CUDA_EMULATE=1`` replaces the library with its emulation on the
CPU, for the test suite on machines without a GPU: every kernel entry point
``scaleml_cuda_X`` runs ``scaleml_gpuref_X`` of the C core (the CUDA kernels'
decomposition over the same shared arithmetic, on host memory), and "device"
memory is host memory (:mod:`scaleml._cuda_emulation`). It checks everything
of the device paths but the CUDA code itself.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from pathlib import Path
from typing import Any

from cffi import FFI

from . import errors
from ._cuda_emulation import EmulatedRuntime
from ._native import ffi as core_ffi
from ._native import lib as core_lib
from .errors import DeviceError

__all__ = ["LIBRARY_PATH", "Backend", "backend", "emulated", "library_report"]

LIBRARY_PATH = Path(__file__).resolve().parent / "_scaleml_cuda.so"
_API_PATH = LIBRARY_PATH.with_name("_scaleml_cuda_api.h")
_DEFINE = re.compile(r"^#define\s+\w+\s+\(?-?\w+\)?\s*$")


def emulated() -> bool:
    """Whether ``SCALEML_CUDA_EMULATE`` asks for the CPU emulation (read here, below :mod:`scaleml.config`,
    which validates it with the other variables)."""
    return os.environ.get("SCALEML_CUDA_EMULATE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _cdef_text(text: str) -> str:
    """Declarations only: preprocessor lines dropped except ``#define NAME value`` constants."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#") or _DEFINE.match(line))


def _open(path: Path) -> tuple[FFI, Any]:
    """cffi's ABI-mode view of the library at ``path``, declared by the copied ``csrc/cuda/api_*.h``."""
    ffi = FFI()
    ffi.cdef(_cdef_text(_API_PATH.read_text() if _API_PATH.exists() else ""))
    return ffi, ffi.dlopen(str(path))


class Backend:
    """The device operations: ``call(name, *args)`` runs entry point ``name`` and raises on its error.

    Pointer arguments may be given as integers (addresses); ``new(ctype)``
    makes the out-parameters.
    """

    def __init__(self, name: str, ffi: FFI, lib: Any, message: Any) -> None:
        self.name = name
        self.ffi = ffi
        self.lib = lib
        self._message = message
        self._types: dict[str, Any] = {}

    def new(self, ctype: str) -> Any:
        """An out-parameter of C type ``ctype`` (e.g. ``"size_t *"``)."""
        return self.ffi.new(ctype)

    def _function(self, name: str) -> Any:
        return getattr(self.lib, name)

    def call(self, name: str, *args: Any) -> None:
        """Run ``name(*args)``; raise the exception of its return code (``scaleml.errors``) with its message."""
        rc = self.call_rc(name, *args)
        if rc:
            raise errors.error_for(rc, self._message())

    def call_rc(self, name: str, *args: Any) -> int:
        """Run ``name(*args)`` and return its code (0, or a ``SCALEML_ERR_*`` whose message :meth:`message` has)."""
        fn = self._function(name)
        types = self._types.get(name)
        if types is None:
            types = self._types[name] = [t.kind == "pointer" for t in self.ffi.typeof(fn).args]
        converted = [self.ffi.cast("void *", a) if is_ptr and isinstance(a, int) else a
                     for a, is_ptr in zip(args, types)]
        return int(fn(*converted))

    def message(self) -> str:
        return self._message()


class _EmulatedLibrary:
    """Attribute access like a cffi library: kernels -> the C core's ``scaleml_gpuref_*`` (stream dropped),
    runtime calls -> :class:`EmulatedRuntime`."""

    def __init__(self, runtime: EmulatedRuntime) -> None:
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        if hasattr(self._runtime, name):
            return getattr(self._runtime, name)
        ref = getattr(core_lib, name.replace("scaleml_cuda_", "scaleml_gpuref_", 1))

        def kernel(*args: Any) -> int:
            return ref(*args[:-1])  # the stream: the emulation runs in order, at once
        kernel.__name__ = name
        return kernel


class _EmulatedBackend(Backend):
    def __init__(self) -> None:
        self.runtime = EmulatedRuntime()
        super().__init__("emulated", core_ffi, _EmulatedLibrary(self.runtime), self._emulated_message)

    def _emulated_message(self) -> str:
        return self.runtime.last_message or core_ffi.string(core_lib.scaleml_error_message()).decode(errors="replace")

    def call_rc(self, name: str, *args: Any) -> int:
        self.runtime.last_message = ""
        fn = getattr(self.lib, name)
        if hasattr(self.runtime, name):
            return int(fn(*args))
        types = self._types.get(name)
        if types is None:
            c_fn = getattr(core_lib, name.replace("scaleml_cuda_", "scaleml_gpuref_", 1))
            types = self._types[name] = [t.kind == "pointer" for t in core_ffi.typeof(c_fn).args] + [False]
        return int(fn(*[core_ffi.cast("void *", a) if is_ptr and isinstance(a, int) else a
                        for a, is_ptr in zip(args, types)]))


_lock = threading.Lock()
_backend: Backend | None = None
_load_error: str | None = None


def _load() -> Backend:
    if emulated():
        return _EmulatedBackend()
    path = Path(os.environ.get("SCALEML_CUDA_LIBRARY") or LIBRARY_PATH)
    if not path.exists():
        raise DeviceError(f"ScaleML's CUDA library is not built ({path.name} missing: nvcc was not found at "
                          "install time); install with nvcc on PATH (make install) to use device arrays")
    try:
        ffi, lib = _open(path)
    except OSError as exc:
        raise DeviceError(f"ScaleML's CUDA library {path} could not be loaded: {exc}") from None

    def message() -> str:
        return ffi.string(lib.scaleml_cuda_error_message()).decode(errors="replace")

    be = Backend("cuda", ffi, lib, message)
    count, reason = ffi.new("int *"), ffi.new("const char **")
    lib.scaleml_cuda_device_count(count, reason)
    if count[0] < 1:
        raise DeviceError(f"no CUDA device is visible ({ffi.string(reason[0]).decode(errors='replace')})")
    return be


def backend() -> Backend:
    """The device backend (loaded once); :class:`~scaleml.errors.DeviceError` when there is none, saying why."""
    global _backend, _load_error
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is None:
            if _load_error is not None:
                raise DeviceError(_load_error)
            try:
                _backend = _load()
            except DeviceError as exc:
                _load_error = str(exc)
                raise
    return _backend


def library_report() -> dict[str, Any]:
    """For ``python -m scaleml``: whether the library was built and loads, its build, and the visible devices."""
    report: dict[str, Any] = {"built": LIBRARY_PATH.exists(), "path": str(LIBRARY_PATH)}
    if emulated():
        report["emulated"] = True
    if not report["built"]:
        report["detail"] = "not built (nvcc was not found at install time)"
        return report
    try:
        ffi, lib = _open(LIBRARY_PATH)
    except OSError as exc:
        report["detail"] = f"built, but it does not load: {exc}"
        return report
    version = lib.scaleml_cuda_build_version()
    report["cuda_runtime"] = f"{version // 1000}.{version % 1000 // 10}"
    report["architectures"] = ffi.string(lib.scaleml_cuda_build_archs()).decode()
    count, reason = ffi.new("int *"), ffi.new("const char **")
    lib.scaleml_cuda_device_count(count, reason)
    report["devices"] = int(count[0])
    devices = []
    for d in range(count[0]):
        name, major, minor = ffi.new("char[256]"), ffi.new("int *"), ffi.new("int *")
        if lib.scaleml_cuda_device_info(d, name, 256, major, minor) == 0:
            devices.append(f"{ffi.string(name).decode(errors='replace')} (sm_{major[0]}{minor[0]})")
    report["device_names"] = devices
    report["detail"] = (f"built (CUDA {report['cuda_runtime']}, sm {report['architectures']}); "
                        + (f"{count[0]} device(s): {', '.join(devices)}" if count[0]
                           else f"no device visible ({ffi.string(reason[0]).decode(errors='replace')})"))
    return report


def pinned_view(address: int, nbytes: int) -> Any:
    """A writable ctypes buffer over ``nbytes`` of host memory at ``address`` (pinned staging memory)."""
    return (ctypes.c_uint8 * nbytes).from_address(address)

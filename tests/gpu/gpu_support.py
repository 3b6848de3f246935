"""What the GPU tests share: which device library is there, an array factory over it, and the MPI launcher.

The tests run on whichever of these is available, in this order:

- ``SCALEML_CUDA_EMULATE=1``: ScaleML's CPU emulation of the CUDA library
  (arrays: :class:`scaleml._cuda_emulation.EmulatedDeviceArray`); it checks
  the plumbing (pointers, sizes, staging), not CUDA code;
- CUDA ``torch.Tensor`` (torch sees a device);
- CuPy arrays (CuPy sees a device).

With none of them every test of ``tests/gpu`` skips, with the reason (CI has
no GPU). ``SCALEML_GPU_TESTS_REQUIRED=1`` (set by ``scripts/gpu_check.sh``)
turns that skip into a failure, so a GPU run cannot pass by skipping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = Path(__file__).resolve().parent


def emulated() -> bool:
    """Whether ``SCALEML_CUDA_EMULATE`` asks for the CPU emulation (the rule of ``scaleml._cuda.emulated``)."""
    return os.environ.get("SCALEML_CUDA_EMULATE", "").strip().lower() not in ("", "0", "false", "no", "off")


def required() -> bool:
    """Whether a run must not skip for want of a device (``SCALEML_GPU_TESTS_REQUIRED=1``)."""
    return os.environ.get("SCALEML_GPU_TESTS_REQUIRED", "") == "1"


@lru_cache(maxsize=1)
def torch_cuda() -> bool:
    """Whether torch is installed and sees a CUDA device (without importing torch when it is absent)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@lru_cache(maxsize=1)
def cupy_cuda() -> bool:
    """Whether CuPy is installed and sees a CUDA device."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # noqa: BLE001 - no driver, no device: CuPy raises its own CUDARuntimeError
        return False


def libraries() -> list[str]:
    """The array libraries the tests can run on here: ``["emulated"]`` under the emulation, else those of
    ``"torch"`` and ``"cupy"`` that see a device (torch first)."""
    if emulated():
        return ["emulated"]
    return [name for name, seen in (("torch", torch_cuda()), ("cupy", cupy_cuda())) if seen]


@lru_cache(maxsize=1)
def skip_reason() -> str | None:
    """Why the GPU tests cannot run here (None when they can)."""
    if emulated():
        return None
    if not libraries():
        return ("no CUDA device visible through torch or CuPy, and SCALEML_CUDA_EMULATE is not set "
                "(set SCALEML_CUDA_EMULATE=1 to run these tests on ScaleML's CPU emulation)")
    from scaleml import _cuda  # after the check above: importing scaleml needs its built C core

    try:
        _cuda.backend()
    except Exception as exc:  # noqa: BLE001 - DeviceError: the library not built, or no device for it
        return f"a CUDA device is visible but ScaleML's CUDA library cannot be used: {exc}"
    return None


class ArrayFactory:
    """Device arrays of one library (``"torch"``, ``"cupy"`` or ``"emulated"``), made from and read into numpy.

    ``from_host`` keeps the dtype (float32, float64, int32, int64, uint8);
    ``empty_bytes`` gives a raw byte buffer (payloads, uint16 casts) of at
    least one byte, so that no pointer is NULL for an empty input.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "torch":
            import torch

            self._torch = torch
        elif kind == "cupy":
            import cupy

            self._cupy = cupy

    def __repr__(self) -> str:
        return f"ArrayFactory({self.kind!r})"

    def from_host(self, a: np.ndarray) -> Any:
        """A device copy of ``a`` (C-contiguous, same dtype and shape)."""
        a = np.ascontiguousarray(a)
        if self.kind == "torch":
            if a.dtype in (np.uint16, np.uint32, np.uint64):  # torch's "shell" dtypes: moved as bytes
                a = a.reshape(-1).view(np.uint8)
            return self._torch.from_numpy(a.copy()).to("cuda")
        if self.kind == "cupy":
            return self._cupy.asarray(a)
        from scaleml._cuda_emulation import EmulatedDeviceArray

        return EmulatedDeviceArray.from_host(a)

    def empty_bytes(self, nbytes: int) -> Any:
        """An uninitialised byte buffer of ``max(nbytes, 1)`` bytes on the device."""
        return self.from_host(np.full(max(int(nbytes), 1), 0xA5, np.uint8))  # a fill: no stale zeros pass a test

    def to_host(self, d: Any) -> np.ndarray:
        """A host copy of device array ``d`` (after the work queued on the current stream)."""
        if self.kind == "torch":
            return d.cpu().numpy()
        if self.kind == "cupy":
            return self._cupy.asnumpy(d)
        return d.get()

    def host_bytes(self, d: Any, nbytes: int | None = None) -> bytes:
        """The first ``nbytes`` bytes (all by default) of device array ``d``."""
        raw = self.to_host(d).reshape(-1).view(np.uint8)
        return raw.tobytes() if nbytes is None else raw[:nbytes].tobytes()

    def is_mine(self, obj: Any) -> bool:
        """Whether ``obj`` is a device array of this library (a result that stayed on the device)."""
        if self.kind == "torch":
            return isinstance(obj, self._torch.Tensor) and obj.device.type == "cuda"
        if self.kind == "cupy":
            return isinstance(obj, self._cupy.ndarray)
        from scaleml._cuda_emulation import EmulatedDeviceArray

        return isinstance(obj, EmulatedDeviceArray)

    def ptr(self, d: Any) -> int:
        """The device address of ``d``'s first byte."""
        if self.kind == "torch":
            return int(d.data_ptr())
        if self.kind == "cupy":
            return int(d.data.ptr)
        return int(d.__cuda_array_interface__["data"][0])

    def stream(self) -> int:
        """The current stream of the library, as the ``uintptr_t stream`` argument of the entry points."""
        if self.kind == "torch":
            return int(self._torch.cuda.current_stream().cuda_stream)
        if self.kind == "cupy":
            return int(self._cupy.cuda.get_current_stream().ptr)
        return 0

    def synchronize(self) -> None:
        """Wait for the device."""
        if self.kind == "torch":
            self._torch.cuda.synchronize()
        elif self.kind == "cupy":
            self._cupy.cuda.Device().synchronize()


def host_array(x: Any) -> np.ndarray:
    """``x`` in host memory: a device array of any library copied, anything else through numpy."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    if hasattr(x, "get") and hasattr(x, "__cuda_array_interface__"):
        return x.get()
    return np.asarray(x)


def mpiexec() -> str:
    """``$SCALEML_MPIEXEC``, else the mpiexec beside this Python, else the one on PATH."""
    found = os.environ.get("SCALEML_MPIEXEC") or str(Path(sys.prefix) / "bin" / "mpiexec")
    if not Path(found).exists():
        found = shutil.which("mpiexec") or ""
    if not found:
        raise RuntimeError("no mpiexec found: set SCALEML_MPIEXEC, or run `make install`")
    return found


def run_mpi_module(nprocs: int, module: str, timeout: float, extra: tuple[str, ...] = ()) -> str:
    """Run ``tests/gpu/<module>`` with pytest on ``nprocs`` ranks (``--with-mpi``); return the output.

    The job runs in its own session, killed whole on timeout. Raises AssertionError (with the output's
    tail) unless every rank passed.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "--with-mpi", "-rs", str(GPU_TESTS / module), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"mpiexec -n {nprocs} {module} timed out after {timeout} s:\n{out[-6000:]}") from None
    assert proc.returncode == 0, f"{module} failed under mpiexec -n {nprocs} (exit {proc.returncode}):\n{out[-8000:]}"
    assert "need --with-mpi option to run" not in out, f"{module}: pytest-mpi skipped its tests:\n{out[-4000:]}"
    return out

"""The CUDA path without a GPU: the nvcc build, the loader and its messages, python -m scaleml's report,
scaleml.compress on CUDA arrays (on the CPU emulation of the CUDA library), and the errors of bad device
input (docs/gpu.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cffi import FFI
from conftest import ROOT

import scaleml
from scaleml import _cuda, _cuda_build, _device
from scaleml._cuda_emulation import EmulatedDeviceArray as Dev
from scaleml.compress import QSGD, Cast, DeviceCompressed, OneBit, TopK, decode

NVCC = _cuda_build.find_nvcc()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


@pytest.fixture
def emulated(monkeypatch):
    """The CPU emulation as this process's device backend (the loaded backend is cached: reset around)."""
    monkeypatch.setenv("SCALEML_CUDA_EMULATE", "1")
    monkeypatch.setattr(_cuda, "_backend", None)
    monkeypatch.setattr(_cuda, "_load_error", None)


# ---- build and loader ---------------------------------------------------------------------------------------


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on this machine (CI and the dev machines have it)")
def test_the_library_was_built_and_exports_every_declared_entry_point():
    assert _cuda.LIBRARY_PATH.exists(), "make install with nvcc present builds scaleml/_scaleml_cuda.so"
    ffi = FFI()
    text = _cuda_build.api_text()
    ffi.cdef(_cuda._cdef_text(text))
    lib = ffi.dlopen(str(_cuda.LIBRARY_PATH))
    names = [line.split("(")[0].split()[-1].lstrip("*") for line in _cuda._cdef_text(text).splitlines()
             if line.startswith(("int ", "const char *", "uint64_t ")) and "(" in line]
    assert len(names) >= 30
    for family in ("qsgd", "onebit", "cast", "topk", "nonzeros", "scatter_add", "memcpy"):
        assert any(family in name for name in names), family
    missing = [name for name in names if not hasattr(lib, name)]
    assert not missing, f"declared in csrc/cuda/api_*.h but not in the library: {missing}"
    arch = ffi.string(lib.scaleml_cuda_build_archs()).decode()
    assert arch == "80;90" or os.environ.get("SCALEML_CUDA_ARCHS")


def test_build_without_nvcc_skips_with_a_one_line_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_cuda_build, "find_nvcc", lambda: None)
    assert _cuda_build.build(tmp_path) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "nvcc not found" in out[0] and "not built" in out[0]
    assert not (tmp_path / _cuda_build.LIBRARY).exists()
    monkeypatch.setenv("SCALEML_CUDA", "0")
    assert _cuda_build.build(tmp_path) is None
    assert "SCALEML_CUDA=0" in capsys.readouterr().out


def test_gencode_flags_embed_ptx_of_the_last_architecture():
    assert _cuda_build.gencode_flags("80;90") == ["-gencode=arch=compute_80,code=sm_80",
                                                 "-gencode=arch=compute_90,code=[sm_90,compute_90]"]
    with pytest.raises(ValueError, match="compute capabilities"):
        _cuda_build.gencode_flags("sm_90")


def test_import_and_host_work_without_the_library_and_device_arrays_say_why():
    code = ("import numpy as np, scaleml\n"
            "from mpi4py import MPI\n"
            "from scaleml.compress import QSGD\n"
            "r = scaleml.quantized_allreduce(np.ones(8, np.float32), MPI.COMM_SELF, QSGD(bits=8))\n"
            "assert r.shape == (8,)\n"
            "class Cuda:\n"
            "    __cuda_array_interface__ = {'shape': (8,), 'typestr': '<f4', 'data': (1, False), 'version': 3}\n"
            "try:\n"
            "    QSGD().encode(Cuda())\n"
            "except scaleml.DeviceError as e:\n"
            "    print('DeviceError:', e)\n")
    missing = run_python(code, SCALEML_CUDA_LIBRARY="/nonexistent/_scaleml_cuda.so")
    assert missing.returncode == 0, missing.stderr
    assert "DeviceError: ScaleML's CUDA library is not built" in missing.stdout
    if NVCC is not None and _cuda.LIBRARY_PATH.exists():
        no_device = run_python(code)
        assert no_device.returncode == 0, no_device.stderr
        if "not built" not in no_device.stdout:  # a machine with a GPU accepts the array's check differently
            assert "no CUDA device is visible" in no_device.stdout or "CUDA" in no_device.stdout


def test_python_m_scaleml_reports_library_device_and_cuda_aware_mpi():
    result = subprocess.run([sys.executable, "-m", "scaleml", "--json"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode == 0, result.stderr
    cuda = json.loads(result.stdout)["cuda"]
    assert cuda["scaleml_library"]["built"] is _cuda.LIBRARY_PATH.exists()
    assert cuda["mpi_cuda_aware"]["value"] in ("yes", "no", "unknown")
    assert "MPIX" in cuda["mpi_cuda_aware"]["how"] or "no query" in cuda["mpi_cuda_aware"]["how"]
    text = subprocess.run([sys.executable, "-m", "scaleml"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120).stdout
    for label in ("ScaleML CUDA library", "MPI CUDA-aware", "transport"):
        assert label in text


# ---- scaleml.compress on CUDA arrays (the emulation) --------------------------------------------------------


COMPRESSORS = {
    "qsgd4": lambda: QSGD(bits=4, seed=3), "qsgd2b13max": lambda: QSGD(bits=2, bucket=13, norm="max", seed=3),
    "qsgd_elias": lambda: QSGD(bits=2, format="elias", seed=3), "fp16": lambda: Cast("fp16"),
    "bf16": lambda: Cast("bf16"), "onebit": lambda: OneBit(bucket=64), "onebit_columns": lambda: OneBit(),
    "topk": lambda: TopK(ratio=0.05, seed=3), "topk_approx": lambda: TopK(ratio=0.05, approximate=True, seed=3),
}


@pytest.mark.parametrize("shape", [(0,), (1,), (1001,), (40, 33)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_device_messages_are_the_host_messages_and_decode_on_the_device(emulated, name, dtype, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    host = COMPRESSORS[name]().encode(x, step=4)
    dev = COMPRESSORS[name]().encode(Dev.from_host(x, device=1), step=4)
    assert isinstance(dev, DeviceCompressed) and dev.view.device == 1
    assert dev.to_bytes() == host.to_bytes()
    assert (dev.method, dev.shape, dev.dtype, dev.params) == (host.method, host.shape, host.dtype, host.params)
    for decoded in (decode(dev), COMPRESSORS[name]().decode(dev)):
        assert isinstance(decoded, Dev) and decoded.device == 1
        assert decoded.get().tobytes() == decode(host).tobytes()
    out = Dev(shape, dtype, device=1)
    assert decode(dev.buffer, out=out) is out  # a uint8 CUDA array is a message too
    assert out.get().tobytes() == decode(host).tobytes()
    checked = COMPRESSORS[name]().encode(Dev.from_host(x, device=1), step=4, checksum=True)
    assert checked.checksum and checked.to_bytes() == COMPRESSORS[name]().encode(x, step=4, checksum=True).to_bytes()


def test_residuals_on_the_device_are_the_host_residuals(emulated):
    x = np.random.default_rng(2).standard_normal(5000).astype(np.float32)
    for make in (COMPRESSORS["qsgd4"], COMPRESSORS["topk"], COMPRESSORS["fp16"]):
        hc, hr = make().encode_with_residual(x, step=1)
        dc, dr = make().encode_with_residual(Dev.from_host(x), step=1)
        assert dc.to_bytes() == hc.to_bytes() and isinstance(dr, Dev)
        np.testing.assert_array_equal(dr.get(), np.asarray(hr))
    in_place = Dev.from_host(x)
    c, r = TopK(ratio=0.05, seed=3).encode_with_residual(in_place, step=1, out=in_place)
    assert r is in_place
    np.testing.assert_array_equal(in_place.get(), TopK(ratio=0.05, seed=3).encode_with_residual(x, step=1)[1])


def test_device_messages_are_validated_before_anything_is_written(emulated):
    x = Dev.from_host(np.ones(100, np.float32))
    c = QSGD(bits=4).encode(x)
    raw = np.frombuffer(c.to_bytes(), np.uint8).copy()
    raw[-1] ^= 0xFF  # the payload (the header's CRC covers the header only)
    forged = Dev.from_host(raw[:-3])  # truncated
    with pytest.raises(scaleml.compress.CorruptBufferError):
        decode(forged)
    with pytest.raises(scaleml.DeviceError, match="host memory"):
        decode(c, out=np.empty(100, np.float32))
    with pytest.raises(ValueError, match="shape"):
        decode(c, out=Dev((99,), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        QSGD().encode(Dev.from_host(np.ones(4, np.int32)))


def test_device_out_of_memory_is_a_memory_error(emulated, monkeypatch):
    x = Dev.from_host(np.ones(1000, np.float32))
    monkeypatch.setenv("SCALEML_CUDA_EMULATE_MEMORY", "64")
    with pytest.raises(MemoryError, match="device out of memory"):
        QSGD(bits=4).encode(x)


def test_pinned_staging_buffers_are_reused_per_role_and_grow(emulated):
    first = _device.pinned("test/role", 100)
    again = _device.pinned("test/role", 60)
    assert first.size == 100 and again.size == 60 and np.shares_memory(first, again)
    other = _device.pinned("test/other", 60)
    assert not np.shares_memory(first, other)
    grown = _device.pinned("test/role", 1000)
    assert grown.size == 1000 and not np.shares_memory(first, grown)
    grown[:] = 7
    assert (grown == 7).all()

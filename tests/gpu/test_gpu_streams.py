"""Streams are respected: work queued on the caller's current stream just before a call is waited for.

A side stream is made current, a long kernel (``torch.cuda._sleep``) and then ``x.mul_(2)`` are queued on it,
and a ScaleML call takes ``x`` at once: it must see the doubled data, i.e. give the CPU's result for ``2 x``.
CUDA torch tensors only (the emulation runs everything at once, in order).
"""

from __future__ import annotations

import numpy as np
import pytest

from . import gpu_support

N = 1 << 24  # 64 MiB of float32: the multiply alone takes tens of microseconds, the sleep before it far longer
SLEEP_CYCLES = 200_000_000  # about 0.1 s at 2 GHz


@pytest.fixture
def torch_dev(dev):
    if dev.kind != "torch":
        pytest.skip(f"the stream test needs CUDA torch tensors (running on {dev.kind})")
    import torch

    return torch


def _doubled_on_a_side_stream(torch, host: np.ndarray):
    """``x``, a device copy of ``host`` (copied: nothing left queued), and a new side stream."""
    x = torch.from_numpy(host.copy()).cuda()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    return x, side


def test_compress_waits_for_the_side_streams_kernel(torch_dev):
    torch = torch_dev
    from scaleml import compress as C

    host = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    for make in (lambda: C.QSGD(bits=4, seed=1), lambda: C.Cast("bf16"), lambda: C.TopK(ratio=0.01)):
        x, side = _doubled_on_a_side_stream(torch, host)
        with torch.cuda.stream(side):
            torch.cuda._sleep(SLEEP_CYCLES)
            x.mul_(2)
            got = make().encode(x)
            got_bytes = gpu_support.host_array(got.buffer).tobytes()
        expected = make().encode(host * np.float32(2))
        assert got_bytes == expected.buffer.tobytes(), f"{type(make()).__name__} did not wait for the side stream"


def test_quantized_allreduce_waits_for_the_side_streams_kernel(torch_dev):
    torch = torch_dev
    from mpi4py import MPI

    import scaleml
    from scaleml import compress as C

    host = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    x, side = _doubled_on_a_side_stream(torch, host)
    with torch.cuda.stream(side):
        torch.cuda._sleep(SLEEP_CYCLES)
        x.mul_(2)
        got = scaleml.quantized_allreduce(x, MPI.COMM_SELF, C.QSGD(bits=4, seed=2), algorithm="quantized_ring")
        got_host = gpu_support.host_array(got)
    expected = scaleml.quantized_allreduce(host * np.float32(2), MPI.COMM_SELF, C.QSGD(bits=4, seed=2),
                                           algorithm="quantized_ring")
    assert got_host.tobytes() == expected.tobytes()


def test_a_kernel_entry_point_runs_on_the_stream_it_is_given(torch_dev, core_lib):
    torch = torch_dev
    from scaleml import _cuda

    ffi, lib = core_lib
    be = _cuda.backend()
    host = np.random.default_rng(2).standard_normal(N).astype(np.float32)
    x, side = _doubled_on_a_side_stream(torch, host)
    out = torch.empty(2 * N, dtype=torch.uint8, device="cuda")
    with torch.cuda.stream(side):
        torch.cuda._sleep(SLEEP_CYCLES)
        x.mul_(2)
        be.call("scaleml_cuda_cast_encode", int(x.data_ptr()), 4, N, 0, int(out.data_ptr()), int(side.cuda_stream))
    side.synchronize()
    doubled = host * np.float32(2)
    ref = np.zeros(N, np.uint16)
    assert lib.scaleml_cast_encode(ffi.cast("void *", doubled.ctypes.data), 4, N, 0,
                                   ffi.cast("void *", ref.ctypes.data)) == 0
    assert out.cpu().numpy().tobytes() == ref.tobytes()


@pytest.fixture(scope="module")
def core_lib():
    from scaleml._native import ffi, lib

    return ffi, lib

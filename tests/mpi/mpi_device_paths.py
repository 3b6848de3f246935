"""CUDA arrays through every collective, on the CPU emulation of the CUDA library (run under mpiexec with
SCALEML_CUDA_EMULATE=1: tests/test_mpi_suites.py).

The emulation's arrays (:class:`scaleml._cuda_emulation.EmulatedDeviceArray`) expose
``__cuda_array_interface__`` over host memory and its kernels are the C core's ``scaleml_gpuref_*`` functions
(the CUDA kernels' decomposition over the shared arithmetic), so every device path (recognition, checks,
staging, kernels' entry points, results on the input's device) runs here; only the CUDA code itself does not.
Each result must equal the host call's bitwise, with the same seeds and forced algorithms.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml import _cuda
from scaleml._cuda_emulation import EmulatedDeviceArray as Dev
from scaleml.compress import QSGD, Cast, ErrorFeedback, OneBit, TopK
from scaleml.quantized import LOSSY

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(not _cuda.emulated(), reason="needs SCALEML_CUDA_EMULATE=1")]

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
SIZES = [0, 1, 1000, 65536 * size + 1234]
FORMATS = {"qsgd4": lambda: QSGD(bits=4, bucket=64, seed=5), "fp16": lambda: Cast("fp16"),
           "onebit": lambda: OneBit(bucket=64)}


def data(n: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 * seed + rank).standard_normal(n).astype(dtype)


def assert_device_result(result, expected: np.ndarray, device: int = 0) -> None:
    assert isinstance(result, Dev), f"the result is a {type(result).__name__}, not on the device"
    assert result.device == device
    got = result.get()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes(), "the device path's result differs from the host's"


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("algorithm", LOSSY)
def test_quantized_allreduce_on_device_is_the_host_result(algorithm, fmt, n):
    if algorithm == "adaptive":
        pytest.skip("adaptive has its own function")
    x = data(n, seed=1)
    host = scaleml.quantized_allreduce(x, world, FORMATS[fmt](), algorithm=algorithm)
    dev = scaleml.quantized_allreduce(Dev.from_host(x), world, FORMATS[fmt](), algorithm=algorithm)
    assert_device_result(dev, host)
    out = Dev((n,), np.float32, device=1)
    got = scaleml.quantized_allreduce(Dev.from_host(x, device=1), world, FORMATS[fmt](), algorithm=algorithm, out=out)
    assert got is out
    assert_device_result(out, host, device=1)


@pytest.mark.parametrize("n", [0, 1, 1000, (1 << 20) + 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", ["qsgd4", "qsgd3b13", "fp16", "bf16", "onebit", "onebit100"])
def test_auto_on_device_encodes_on_the_device_as_quantized_gather(fmt, dtype, n):
    """auto on CUDA arrays runs quantized_gather with the device kernels (only encoded bytes staged): the host
    algorithm's result, bitwise, including chunks beyond the first and buckets not a multiple of 8."""
    make = {**FORMATS, "qsgd3b13": lambda: QSGD(bits=3, bucket=13, norm="max", seed=7), "bf16": lambda: Cast("bf16"),
            "onebit100": lambda: OneBit(bucket=100)}[fmt]
    x = data(n, dtype, seed=6)
    for average in (False, True):
        host, host_info = scaleml.quantized_allreduce(x, world, make(), algorithm="quantized_gather", average=average,
                                                      return_info=True)
        dev, info = scaleml.quantized_allreduce(Dev.from_host(x), world, make(), average=average, return_info=True)
        assert info.algorithm == "quantized_gather" and info.bytes_sent == host_info.bytes_sent
        assert info.format == host_info.format
        assert_device_result(dev, host)
    # the compressor's step advances as on the host: a second call keys new random roundings alike
    ch, cd = make(), make()
    for _ in range(2):
        host = scaleml.quantized_allreduce(x, world, ch, algorithm="quantized_gather")
        dev = scaleml.quantized_allreduce(Dev.from_host(x), world, cd)
        assert_device_result(dev, host)


def test_device_gather_rejects_non_finite_values_on_every_rank():
    x = data(1000)
    if rank == size - 1:
        x[7] = np.nan
    with pytest.raises(ValueError, match="NaN|non-finite"):
        scaleml.quantized_allreduce(Dev.from_host(x), world, QSGD(bits=4))
    ok = scaleml.quantized_allreduce(Dev.from_host(data(1000)), world, QSGD(bits=4))  # and the next call works
    assert isinstance(ok, Dev)


@pytest.mark.parametrize("n", [1, 1000, 65536 * size + 1234])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_allreduce_on_device_is_the_host_result(dtype, n):
    x = data(n, dtype, seed=2)
    for kwargs in ({"ratio": 0.05}, {"k": 1}, {"ratio": 0.05, "approximate": True}):
        host = scaleml.topk_allreduce(x, world, algorithm="split_allgather", **kwargs)
        dev = scaleml.topk_allreduce(Dev.from_host(x), world, algorithm="split_allgather", **kwargs)
        assert_device_result(dev, host)
    ef_h, ef_d = ErrorFeedback(TopK(ratio=0.01)), ErrorFeedback(TopK(ratio=0.01))
    for step in range(3):
        g = data(n, dtype, seed=10 + step)
        host = scaleml.topk_allreduce(g, world, error_feedback=ef_h, algorithm="recursive_doubling")
        dev = scaleml.topk_allreduce(Dev.from_host(g), world, error_feedback=ef_d, algorithm="recursive_doubling")
        assert_device_result(dev, host)
    assert ef_h.residual("grad").tobytes() == ef_d.residual("grad").tobytes()


def test_sparse_allreduce_of_device_entries_is_the_host_result():
    n = 5000
    rng = np.random.default_rng(rank)
    idx = np.sort(rng.choice(n, 100, replace=False)).astype(np.uint32)
    vals = rng.standard_normal(100).astype(np.float32)
    host = scaleml.sparse_allreduce(idx, vals, n, world, algorithm="split_allgather")
    dev = scaleml.sparse_allreduce(Dev.from_host(idx), Dev.from_host(vals), n, world, algorithm="split_allgather")
    assert_device_result(dev, host)


@pytest.mark.parametrize("n", [3, 1000, 65536 + 7])
@pytest.mark.parametrize("compression", [None, "qsgd4", "fp16"])
def test_dropin_allreduce_and_iallreduce_on_device_are_the_host_result(compression, n):
    algorithm = "ring" if compression is None else "quantized_ring"
    x = data(n, seed=3)
    host, dev_out = np.empty_like(x), Dev((n,), np.float32)
    scaleml.Comm(world, compression=compression, algorithm=algorithm, min_count=1).Allreduce(x, host)
    scaleml.Comm(world, compression=compression, algorithm=algorithm, min_count=1).Allreduce(Dev.from_host(x), dev_out)
    assert_device_result(dev_out, host)
    in_place = Dev.from_host(x)
    scaleml.Comm(world, compression=compression, algorithm=algorithm, min_count=1).Allreduce(MPI.IN_PLACE, in_place)
    assert_device_result(in_place, host)
    # the nonblocking form (a communicator of its own: its progress thread's compressor starts at step 0)
    nb_out = Dev((n,), np.float32)
    nb_comm = world.Dup()
    scaleml.Comm(nb_comm, compression=compression, algorithm=algorithm, min_count=1).Iallreduce(
        Dev.from_host(x), nb_out).Wait()
    nb_comm.Free()
    assert_device_result(nb_out, host)


def test_dropin_small_and_integer_device_buffers_go_to_mpi_staged():
    ones = Dev.from_host(np.ones(4, np.int64))
    out = Dev((4,), np.int64)
    scaleml.Comm(world).Allreduce(ones, out)
    assert (out.get() == size).all()


def test_adaptive_allreduce_on_device_is_the_host_result():
    g = data(64 * 32, seed=4).reshape(64, 32)
    host = scaleml.adaptive_allreduce(g, world, state=scaleml.AdaptiveAllreduceState(pi=4.0))
    dev = scaleml.adaptive_allreduce(Dev.from_host(g), world, state=scaleml.AdaptiveAllreduceState(pi=4.0))
    assert_device_result(dev, host)


# ---- bad input: a clear exception on every rank, never a hang ------------------------------------------------


def test_device_arrays_on_some_ranks_only_raise_on_every_rank():
    if size == 1:
        pytest.skip("needs two ranks")
    x = data(1000)
    mine = Dev.from_host(x) if rank == 0 else x
    with pytest.raises(scaleml.DeviceError, match="CUDA arrays on 1 of"):
        scaleml.quantized_allreduce(mine, world, QSGD(bits=4))
    with pytest.raises(scaleml.DeviceError, match="CUDA arrays on 1 of"):
        scaleml.topk_allreduce(mine, world, ratio=0.1)


def test_buffers_on_two_devices_of_one_rank_raise_on_every_rank():
    x = data(1000)
    out = Dev((1000,), np.float32, device=1 if rank == size - 1 else 0)
    with pytest.raises((scaleml.DeviceError, ValueError), match="device|CUDA"):
        scaleml.quantized_allreduce(Dev.from_host(x), world, QSGD(bits=4), out=out)
    with pytest.raises((scaleml.DeviceError, ValueError), match="device|CUDA"):
        scaleml.Comm(world, min_count=1).Allreduce(Dev.from_host(x), out)
    host_out = np.empty(1000, np.float32) if rank == size - 1 else Dev((1000,), np.float32)
    with pytest.raises((scaleml.DeviceError, ValueError), match="device|CUDA|host"):
        scaleml.quantized_allreduce(Dev.from_host(x), world, QSGD(bits=4), out=host_out)
    # and the communicator still works afterwards
    ok = Dev((1000,), np.float32)
    scaleml.Comm(world, min_count=1).Allreduce(Dev.from_host(x), ok)


def test_device_out_of_memory_raises_on_every_rank(monkeypatch):
    x = Dev.from_host(data(1000))
    if rank == size - 1:
        monkeypatch.setenv("SCALEML_CUDA_EMULATE_MEMORY", "100")
    with pytest.raises(MemoryError, match="out of memory|does not fit in memory"):
        scaleml.quantized_allreduce(x, world, QSGD(bits=4))

"""The collectives on device arrays equal the host results bitwise, on every rank; the hook trains a CUDA model.

Run by tests/gpu/test_gpu_mpi.py (and scripts/gpu_check.sh) under mpiexec at 1, 2 and 4 ranks, every rank
sharing the one GPU: ``mpiexec -n 4 python -m pytest --with-mpi tests/gpu/mpi_gpu_collectives.py``. Each test
runs a collective twice with the same seeds and the same forced algorithm, once on device arrays (each
available library: CUDA torch, CuPy, or the emulation's arrays) and once on numpy arrays, and compares the
bytes. The DDP test trains the same small model with the ScaleML hook (qsgd4) on the GPU and on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml import compress as C
from scaleml.quantized import LOSSY

from . import gpu_support

pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
P, RANK = comm.Get_size(), comm.Get_rank()
N = 100_003  # not a multiple of 2 or 4: uneven blocks
# forced: "auto" may choose differently from one call to the next (the tuner), and exact sums in another order
# round differently
SPARSE_ALGORITHMS = ["recursive_doubling", "split_allgather", "split_dense", "dense", "ring"]


@pytest.fixture(scope="module", params=["ring", "recursive_doubling", "split_allgather"])
def scomm(request):
    """A drop-in communicator with a forced algorithm (one per parameter; constructing it is collective)."""
    return scaleml.Comm(comm, algorithm=request.param)


def gradient(n: int, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, RANK])
    return (rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0], size=n, p=[0.3, 0.69, 0.01])).astype(dtype)


def same_everywhere(a: np.ndarray) -> None:
    """The result is bitwise the same on every rank."""
    digests = comm.allgather(a.tobytes())
    assert all(d == digests[0] for d in digests), "ranks disagree"


def assert_on_device_and_equal(dev, got, expected: np.ndarray, what: str) -> None:
    assert dev.is_mine(got), f"{what}: the result left the device ({type(got).__name__})"
    host = gpu_support.host_array(got)
    assert host.dtype == expected.dtype and host.shape == expected.shape, what
    assert host.tobytes() == np.asarray(expected).tobytes(), f"{what}: device result differs from the host result"


COMPRESSIONS = {
    "qsgd4": lambda: C.QSGD(bits=4, seed=2),
    "qsgd2max": lambda: C.QSGD(bits=2, bucket=128, norm="max", seed=3),
    "bf16": lambda: C.Cast("bf16"),
    "fp16": lambda: C.Cast("fp16"),
    "onebit": lambda: C.OneBit(seed=4),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("compression", list(COMPRESSIONS))
@pytest.mark.parametrize("algorithm", list(LOSSY))
def test_quantized_allreduce(any_dev, algorithm, compression, dtype):
    x = gradient(N, dtype, seed=1)
    expected = scaleml.quantized_allreduce(x, comm, COMPRESSIONS[compression](), algorithm=algorithm)
    got = scaleml.quantized_allreduce(any_dev.from_host(x), comm, COMPRESSIONS[compression](), algorithm=algorithm)
    assert_on_device_and_equal(any_dev, got, expected, f"quantized_allreduce {algorithm} {compression}")
    same_everywhere(gpu_support.host_array(got))


def test_quantized_allreduce_into_out_averaged(any_dev):
    x = gradient(N, np.float32, seed=2)
    expected = scaleml.quantized_allreduce(x, comm, C.QSGD(bits=8, seed=5), average=True, algorithm="quantized_rhd")
    out = any_dev.from_host(np.zeros(N, np.float32))
    got = scaleml.quantized_allreduce(any_dev.from_host(x), comm, C.QSGD(bits=8, seed=5), average=True, out=out,
                                      algorithm="quantized_rhd")
    assert got is out
    assert_on_device_and_equal(any_dev, got, expected, "quantized_allreduce out= average")


def test_quantized_allreduce_with_error_feedback(any_dev):
    ef_host, ef_dev = C.ErrorFeedback(C.OneBit(seed=6)), C.ErrorFeedback(C.OneBit(seed=6))
    for step in range(3):
        x = gradient(N, np.float32, seed=10 + step)
        expected = scaleml.quantized_allreduce(x, comm, error_feedback=ef_host)
        got = scaleml.quantized_allreduce(any_dev.from_host(x), comm, error_feedback=ef_dev)
        assert_on_device_and_equal(any_dev, got, expected, f"quantized_allreduce error feedback step {step}")
    for name in ("grad/worker", "grad/server"):
        assert (gpu_support.host_array(ef_dev.residual(name)).tobytes()
                == gpu_support.host_array(ef_host.residual(name)).tobytes()), name


@pytest.mark.parametrize("approximate", [False, True], ids=["exact", "sampled"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_topk_allreduce(any_dev, dtype, approximate):
    ef_host = C.ErrorFeedback(C.TopK(ratio=0.01, approximate=approximate, seed=7))
    ef_dev = C.ErrorFeedback(C.TopK(ratio=0.01, approximate=approximate, seed=7))
    for step in range(2):
        x = gradient(N, dtype, seed=20 + step)
        expected = scaleml.topk_allreduce(x, comm, error_feedback=ef_host, approximate=approximate,
                                          algorithm="split_allgather")
        got = scaleml.topk_allreduce(any_dev.from_host(x), comm, error_feedback=ef_dev, approximate=approximate,
                                     algorithm="split_allgather")
        assert_on_device_and_equal(any_dev, got, expected, f"topk_allreduce step {step}")
    assert (gpu_support.host_array(ef_dev.residual("grad")).tobytes()
            == gpu_support.host_array(ef_host.residual("grad")).tobytes())


@pytest.mark.parametrize("algorithm", SPARSE_ALGORITHMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sparse_allreduce(any_dev, algorithm, dtype):
    rng = np.random.default_rng([30, RANK])
    idx = np.sort(rng.choice(N, size=N // 100, replace=False)).astype(np.int64)
    vals = gradient(idx.size, dtype, seed=31)
    expected = scaleml.sparse_allreduce(idx, vals, N, comm, algorithm=algorithm)
    got = scaleml.sparse_allreduce(any_dev.from_host(idx), any_dev.from_host(vals), N, comm, algorithm=algorithm)
    assert_on_device_and_equal(any_dev, got, expected, f"sparse_allreduce {algorithm}")
    same_everywhere(gpu_support.host_array(got))


@pytest.mark.parametrize("n", [1, 1000, (1 << 20) + 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dropin_allreduce(any_dev, scomm, dtype, n):
    x = gradient(n, dtype, seed=40)
    expected = np.empty_like(x)
    scomm.Allreduce(x, expected, op=MPI.SUM)
    send, recv = any_dev.from_host(x), any_dev.from_host(np.zeros(n, dtype))
    scomm.Allreduce(send, recv, op=MPI.SUM)
    assert_on_device_and_equal(any_dev, recv, expected, "Comm.Allreduce")
    inplace = any_dev.from_host(x)
    scomm.Allreduce(MPI.IN_PLACE, inplace, op=MPI.SUM)
    assert_on_device_and_equal(any_dev, inplace, expected, "Comm.Allreduce IN_PLACE")
    same_everywhere(expected)


def test_dropin_iallreduce(any_dev, scomm):
    x = gradient(1 << 16, np.float32, seed=41)
    expected = np.empty_like(x)
    scomm.Allreduce(x, expected, op=MPI.SUM)
    recv = any_dev.from_host(np.zeros_like(x))
    scomm.Iallreduce(any_dev.from_host(x), recv, op=MPI.SUM).Wait()
    assert_on_device_and_equal(any_dev, recv, expected, "Comm.Iallreduce")


# ------------------------------------------------------------------------------------------------- the DDP hook

MARGIN = 2.0  # points of test accuracy: as tests/mpi/mpi_torch_hook.py's compressed runs against plain DDP
SEEDS = (0, 1)
EPOCHS = 20


def _train(torch, device: str, compression: str, seed: int, data) -> float:
    """Train examples/torch_ddp.py's two-layer perceptron on ``device`` with the ScaleML hook; test accuracy %."""
    from torch.nn.parallel import DistributedDataParallel

    import scaleml.torch as smt

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import torch_ddp

    X, y, X_test, y_test = data
    batch = max(128 // P, 1)
    torch.manual_seed(seed)
    model = torch_ddp.make_model(X.shape[1], 128, int(y.max()) + 1).to(device)
    ddp = DistributedDataParallel(model, device_ids=[torch.device(device).index or 0] if device != "cpu" else None)
    ddp.register_comm_hook(smt.ScaleMLHookState(comm, compression, min_compress_numel=1024, seed=seed),
                           smt.allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2)
    per_rank = len(y) // P
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    for epoch in range(EPOCHS):
        order = np.random.default_rng([seed, epoch]).permutation(len(y))[RANK::P][:per_rank]
        for s in range(-(-per_rank // batch)):
            idx = torch.from_numpy(order[s * batch:(s + 1) * batch]).to(device)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(Xt[idx]), yt[idx]).backward()
            opt.step()
    with torch.no_grad():
        pred = model(torch.from_numpy(X_test).to(device)).argmax(1).cpu().numpy()
    return 100.0 * float((pred == y_test).mean())


def test_the_hook_trains_a_cuda_model_to_the_cpu_hooks_accuracy(dev):
    if dev.kind != "torch":
        pytest.skip(f"the DDP test needs CUDA torch tensors (running on {dev.kind})")
    pytest.importorskip("sklearn", reason="scikit-learn not installed (the digits dataset)")
    import torch

    import scaleml.torch as smt

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import torch_ddp

    torch.set_num_threads(1)
    smt.init_process_group_from_mpi()
    data = torch_ddp.load_digits()
    cpu = [_train(torch, "cpu", "qsgd4", s, data) for s in SEEDS]
    gpu = [_train(torch, "cuda:0", "qsgd4", s, data) for s in SEEDS]
    if RANK == 0:
        print(f"\nP={P} qsgd4: CUDA model {gpu} (mean {np.mean(gpu):.2f}) vs CPU {cpu} (mean {np.mean(cpu):.2f})")
    assert np.mean(gpu) >= np.mean(cpu) - MARGIN, (gpu, cpu)
    same_everywhere(np.array(gpu))

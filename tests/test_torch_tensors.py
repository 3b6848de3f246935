"""CPU torch tensors (and DLPack objects) wherever numpy arrays go: scaleml.compress and the collectives (1 rank).

The collectives at 2 to 4 ranks are checked in tests/mpi/mpi_torch_hook.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed (make install-torch)")

from mpi4py import MPI  # noqa: E402

import scaleml  # noqa: E402
from scaleml import _cuda  # noqa: E402
from scaleml import compress as C  # noqa: E402

COMPRESSORS = [lambda: C.QSGD(bits=4, seed=3), lambda: C.OneBit(), lambda: C.TopK(ratio=0.1),
               lambda: C.Cast("fp16"), lambda: C.Cast("bf16"), lambda: C.AdaptiveQuant(pi=4.0, seed=1)]


def test_import_scaleml_does_not_import_torch():
    code = "import sys, scaleml, scaleml.compress, scaleml.train; assert 'torch' not in sys.modules, 'torch loaded'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("make", COMPRESSORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_of_a_tensor_is_the_encode_of_its_array(make, dtype):
    t = torch.randn(64, 33, generator=torch.Generator().manual_seed(0), dtype=dtype)
    a = t.numpy().copy()
    ct, ca = make().encode(t, step=5), make().encode(a, step=5)
    assert ct.buffer.tobytes() == ca.buffer.tobytes()
    # decode: numpy without out=; into a tensor (in place, returned) with out=
    ref = C.decode(ca)
    assert isinstance(ref, np.ndarray)
    out = torch.full_like(t, np.nan)
    got = make().decode(ct, out=out)
    assert got is out
    np.testing.assert_array_equal(out.numpy(), ref)
    assert C.decode(ct, out=torch.empty_like(t)).numpy().tobytes() == ref.tobytes()


@pytest.mark.parametrize("make", COMPRESSORS)
def test_encode_with_residual_returns_a_tensor_for_a_tensor(make):
    t = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    c, res = make().encode_with_residual(t, step=2)
    c2, res2 = make().encode_with_residual(t.numpy().copy(), step=2)
    assert isinstance(res, torch.Tensor) and isinstance(res2, np.ndarray)
    np.testing.assert_array_equal(res.numpy(), res2)
    assert c.buffer.tobytes() == c2.buffer.tobytes()


def test_inputs_are_views_not_copies():
    t = torch.randn(1000)
    y = t.clone()
    c, res = C.TopK(k=10).encode_with_residual(y, out=y)  # zeroes the sent entries of y itself
    assert res is y and int((y == 0).sum()) == 10
    idx, vals = C.TopK.entries(c)
    np.testing.assert_array_equal(t.numpy()[idx.astype(np.int64)], vals)
    # a tensor that requires grad is read (detached); a non-contiguous one is copied
    w = torch.randn(30, 20, requires_grad=True)
    np.testing.assert_array_equal(C.decode(C.Cast("fp16").encode(w)), C.decode(C.Cast("fp16").encode(w.detach()
                                                                                                        .numpy())))
    nc = torch.randn(20, 30).T
    assert C.decode(C.QSGD(bits=8).encode(nc, step=0)).tobytes() == \
        C.decode(C.QSGD(bits=8).encode(nc.contiguous().numpy(), step=0)).tobytes()


def test_error_feedback_takes_tensors():
    ef_t, ef_a = C.ErrorFeedback(C.QSGD(bits=2, seed=9)), C.ErrorFeedback(C.QSGD(bits=2, seed=9))
    g = torch.randn(500, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        ct, ca = ef_t.compress("w", g), ef_a.compress("w", g.numpy())
        assert ct.buffer.tobytes() == ca.buffer.tobytes()
    np.testing.assert_array_equal(ef_t.residual("w"), ef_a.residual("w"))


def test_message_bytes_in_a_uint8_tensor_decode():
    c = C.QSGD(bits=4).encode(np.arange(100, dtype=np.float32), step=0)
    as_tensor = torch.from_numpy(c.buffer.copy())
    np.testing.assert_array_equal(C.decode(as_tensor), C.decode(c))


def test_unsupported_tensors_raise_type_error():
    with pytest.raises(TypeError, match="bfloat16"):
        C.QSGD().encode(torch.ones(4, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="float32 or float64"):
        C.QSGD().encode(torch.ones(4, dtype=torch.int32))
    c = C.Cast("fp16").encode(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="requires grad"):
        C.decode(c, out=torch.ones(4, requires_grad=True))
    with pytest.raises(TypeError, match="dtype"):
        C.decode(c, out=torch.ones(4, dtype=torch.float64))


class _Meta:
    """A DLPack producer whose memory is on a device ScaleML does not take (Vulkan, kDLVulkan = 7)."""

    device = 7

    def __dlpack_device__(self):
        return (self.device, 0)

    def __dlpack__(self, **kwargs):  # pragma: no cover - never called
        raise AssertionError


class _CudaOnly(_Meta):
    """A CUDA DLPack producer without __cuda_array_interface__ (ScaleML reads CUDA arrays through it)."""

    device = 2


def test_dlpack_objects_on_other_devices_raise():
    with pytest.raises(TypeError, match="CPU"):
        C.QSGD().encode(_Meta())
    with pytest.raises(TypeError, match="CPU"):
        scaleml.quantized_allreduce(_Meta(), MPI.COMM_SELF, C.Cast("fp16"))


@pytest.mark.skipif(_cuda.emulated(), reason="the CPU emulation stands for a device here")
def test_cuda_objects_without_a_device_raise_device_error():
    """Without a usable device (here: no GPU; the library built or not) a CUDA object is a DeviceError."""
    with pytest.raises(scaleml.DeviceError, match="CUDA"):
        C.QSGD().encode(_CudaOnly())
    with pytest.raises(scaleml.DeviceError, match="CUDA"):
        scaleml.quantized_allreduce(_CudaOnly(), MPI.COMM_SELF, C.Cast("fp16"))


# ---- the collectives, on one rank (COMM_SELF): tensor in, tensor out -------------------------------------------


def test_quantized_allreduce_tensor_in_tensor_out():
    t = torch.randn(300, generator=torch.Generator().manual_seed(3))
    got = scaleml.quantized_allreduce(t, MPI.COMM_SELF, C.QSGD(bits=8, seed=1))
    ref = scaleml.quantized_allreduce(t.numpy().copy(), MPI.COMM_SELF, C.QSGD(bits=8, seed=1))
    assert isinstance(got, torch.Tensor) and got.dtype == t.dtype and got.shape == t.shape
    np.testing.assert_array_equal(got.numpy(), ref)
    out = torch.empty_like(t)
    assert scaleml.quantized_allreduce(t, MPI.COMM_SELF, C.Cast("fp16"), out=out) is out
    ef = C.ErrorFeedback(C.OneBit())
    r = scaleml.quantized_allreduce(t, MPI.COMM_SELF, error_feedback=ef, name="b0", out=t)  # in place
    assert r is t


def test_topk_and_sparse_allreduce_tensor_in_tensor_out():
    t = torch.randn(200, generator=torch.Generator().manual_seed(4))
    ef_t, ef_a = C.ErrorFeedback(C.TopK(ratio=0.05)), C.ErrorFeedback(C.TopK(ratio=0.05))
    got = scaleml.topk_allreduce(t, MPI.COMM_SELF, error_feedback=ef_t, name="g")
    ref = scaleml.topk_allreduce(t.numpy().copy(), MPI.COMM_SELF, error_feedback=ef_a, name="g")
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(ef_t.residual("g"), ef_a.residual("g"))
    out = torch.empty_like(t)
    assert scaleml.topk_allreduce(t, MPI.COMM_SELF, ratio=0.1, out=out) is out
    idx, vals = torch.tensor([7, 1, 7]), torch.tensor([1.0, 2.0, 3.0])
    dense = scaleml.sparse_allreduce(idx, vals, 10, MPI.COMM_SELF)
    assert isinstance(dense, torch.Tensor)
    np.testing.assert_array_equal(dense.numpy(), [0, 2, 0, 0, 0, 0, 0, 4, 0, 0])
    sv = scaleml.sparse_allreduce(idx, vals, 10, MPI.COMM_SELF, out="sparse")
    assert isinstance(sv, scaleml.SparseVector)
    out10 = torch.zeros(10)
    assert scaleml.sparse_allreduce(idx, vals, 10, MPI.COMM_SELF, dense_out=out10) is out10
    assert float(out10[7]) == 4.0


def test_adaptive_allreduce_tensor_in_tensor_out():
    t = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    got = scaleml.adaptive_allreduce(t, MPI.COMM_SELF, state=scaleml.AdaptiveAllreduceState(pi=4, seed=2))
    ref = scaleml.adaptive_allreduce(t.numpy().copy(), MPI.COMM_SELF, state=scaleml.AdaptiveAllreduceState(pi=4,
                                                                                                            seed=2))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), ref)


def test_collectives_reject_cuda_like_and_grad_outputs():
    with pytest.raises(TypeError, match="requires grad"):
        scaleml.quantized_allreduce(torch.ones(4), MPI.COMM_SELF, C.Cast("fp16"), out=torch.ones(4,
                                                                                            requires_grad=True))
    with pytest.raises(TypeError, match="requires grad"):
        scaleml.topk_allreduce(torch.ones(4), MPI.COMM_SELF, ratio=0.5, out=torch.ones(4, requires_grad=True))

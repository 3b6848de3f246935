"""PowerSGD on every rank: identical results, an exactly low-rank average recovered, the reducer's and the DDP
hook's paths, and state round trips that continue bit for bit.

Run by tests/test_mpi_suites.py under mpiexec at 1 to 5 ranks.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.compress.names import parse_compression
from scaleml.compress.powersgd import PowerSGD
from scaleml.powersgd_allreduce import powersgd_allreduce
from scaleml.train import GradientReducer

pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

SHAPES = [(40, 30), (30,), (30, 10), (10,), (7,), (8, 4, 5)]  # matrices, biases, a 3-D tensor
NAMES = ["powersgd2", "powersgd2_q8"]


def gradients(step: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, rank, step])
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def identical_everywhere(arrays: list[np.ndarray]) -> bool:
    mine = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return all(x == mine for x in comm.allgather(mine))


def mean_over_ranks(grads: list[np.ndarray]) -> list[np.ndarray]:
    everyone = comm.allgather(grads)
    return [np.mean([np.asarray(e[i], np.float64) for e in everyone], axis=0) for i in range(len(grads))]


@pytest.mark.parametrize("compression", NAMES)
def test_reducer_is_exact_first_then_low_rank_and_identical_everywhere(compression):
    reducer = GradientReducer(comm, compression, min_compress_size=64, seed=3)
    assert reducer.powersgd is not None and reducer.powersgd.start_iter == 10
    for step in range(13):
        grads = gradients(step)
        mean = mean_over_ranks(grads)
        out = reducer.reduce(grads)
        assert identical_everywhere(out), step
        for j, (o, m) in enumerate(zip(out, mean)):
            compressed = reducer.powersgd.compresses(step) and j in (0, 2, 5)
            if not compressed:  # the exact phase, and the biases always
                np.testing.assert_allclose(o, m, rtol=1e-5, atol=1e-6)
            else:
                mat = o.reshape(o.shape[0], -1).astype(np.float64)
                assert np.linalg.matrix_rank(mat, tol=1e-4 * np.abs(mat).max()) <= 2
    state = reducer.state_dict()
    assert int(state["powersgd/step"]) == 13
    assert {"powersgd/q/bucket0/0", "powersgd/q/bucket0/2", "ef/residual/bucket0/worker"} <= set(state), sorted(state)
    # the Q factors are replicated; the residuals are each rank's own
    assert identical_everywhere([state[k] for k in sorted(state) if k.startswith("powersgd/q/")])
    assert compression.endswith("_q8") == ("powersgd/factor_compressor/step" in state)
    if size > 1:
        assert reducer.stats.per_path[compression] < reducer.stats.bytes_uncompressed


@pytest.mark.parametrize("compression", NAMES)
def test_reducer_state_dict_continues_exactly(compression):
    a = GradientReducer(comm, compression, min_compress_size=64, seed=2)
    for step in range(11):
        a.reduce(gradients(step))
    state = {k: np.array(v, copy=True) for k, v in a.state_dict().items()}
    b = GradientReducer(comm, compression, min_compress_size=64, seed=2)
    b.load_state_dict(state)
    for step in range(11, 14):
        out_a, out_b = a.reduce(gradients(step)), b.reduce(gradients(step))
        assert all(np.array_equal(x, y) for x, y in zip(out_a, out_b)), step
    fresh = GradientReducer(comm, compression, min_compress_size=64, seed=2)
    fresh.load_state_dict({**state, "powersgd/step": np.array(0)})  # the exact phase again: another result
    assert not all(np.array_equal(x, y) for x, y in zip(fresh.reduce(gradients(14)), a.reduce(gradients(14))))
    with pytest.raises(ValueError, match="does not keep"):
        GradientReducer(comm, "none").load_state_dict({**state, "compression": np.array("none")})


@pytest.mark.parametrize("factor_bits", [0, 8])
def test_an_exactly_low_rank_average_is_recovered(factor_bits):
    r = 3
    shared = np.random.default_rng(11)
    u = shared.standard_normal((60, r))  # the same column space on every rank
    v = np.random.default_rng([12, rank]).standard_normal((r, 45))
    g = (u @ v).astype(np.float32)
    mean = mean_over_ranks([g])[0]
    spec = parse_compression(f"powersgd{r}" + ("_q8" if factor_bits else ""))
    state = spec.powersgd(seed=1, rank=rank)
    state.start_iter, state.error_feedback = 0, False
    x = g.reshape(-1).copy()
    _, info = powersgd_allreduce(x, comm, state, shapes=[g.shape], return_info=True)
    assert identical_everywhere([x])
    assert info.compressed and info.collectives == 2
    error = np.linalg.norm(x.reshape(g.shape) - mean) / np.linalg.norm(mean)
    assert error < (1e-5 if not factor_bits else 0.1), error  # QSGD(bits=8), L2 norm per 512: about 5%
    if size > 1:
        exact_bytes = 2 * (size - 1) * g.nbytes // size
        assert info.bytes_sent < exact_bytes / 4, (info.bytes_sent, exact_bytes)


def test_exact_tensors_share_the_first_collective_or_not():
    for factors, expected in ((None, 2), ("q8", 3)):
        state = PowerSGD(2, start_iter=0, factor_compression=parse_compression("qsgd8").compressor(rank=rank)
                         if factors else None)
        grads = gradients(0)
        x = np.concatenate([g.reshape(-1) for g in grads])
        _, info = powersgd_allreduce(x, comm, state, shapes=SHAPES, return_info=True)
        assert info.collectives == expected and identical_everywhere([x])
        state.advance()


# ---- the DDP hook ---------------------------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch", reason="PyTorch not installed (make install-torch)")


@pytest.fixture(scope="module")
def process_group():
    torch = _torch()
    import scaleml.torch as smt

    torch.set_num_threads(1)
    smt.init_process_group_from_mpi()
    return smt


def _train(smt, compression: str, steps: range, *, resume: bytes | None = None, nonblocking: bool = True):
    """A small MLP under DDP (two buckets) through the hook on synthetic data; batch s at step s."""
    torch = _torch()
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import torch_ddp

    torch.manual_seed(7)
    model = torch_ddp.make_model(64, 128, 10)
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.02)
    state = smt.ScaleMLHookState(comm, compression, min_compress_numel=1024, seed=5, nonblocking=nonblocking)
    ddp.register_comm_hook(state, smt.allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    if resume is not None:
        ckpt = torch.load(io.BytesIO(resume), weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state.load_state_dict(ckpt["hook"])
    losses = []
    for s in steps:
        gen = np.random.default_rng([s, rank])
        X = torch.from_numpy(gen.standard_normal((16, 64)).astype(np.float32))
        y = torch.from_numpy((X[:, :10].numpy().argmax(axis=1)).astype(np.int64))
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()}, buf)
    params = np.concatenate([p.detach().numpy().reshape(-1) for p in model.parameters()])
    return params, state, buf.getvalue(), losses


@pytest.mark.parametrize("nonblocking", [False, True])
@pytest.mark.parametrize("compression", NAMES)
def test_hook_is_identical_everywhere_and_resumes_bit_for_bit(process_group, compression, nonblocking):
    smt = process_group
    whole, state, _, losses = _train(smt, compression, range(14), nonblocking=nonblocking)
    assert identical_everywhere([whole])
    saved = state.state_dict()
    assert saved["powersgd/step"] == 14
    assert any(k.startswith("powersgd/q/") for k in saved) and any(k.startswith("ef/residual/") for k in saved)
    if size > 1:
        assert state.stats["bytes_sent"] < state.stats["bytes_uncompressed"]
    assert losses[-1] < losses[0]
    _, _, ckpt, _ = _train(smt, compression, range(11), nonblocking=nonblocking)
    resumed, state_b, _, _ = _train(smt, compression, range(11, 14), resume=ckpt, nonblocking=nonblocking)
    assert resumed.tobytes() == whole.tobytes()
    assert state_b.rebuilt_buckets == 0
    with pytest.raises(ValueError, match="does not keep"):
        smt.ScaleMLHookState(comm, "onebit").load_state_dict({**saved, "compression": "onebit"})


# ---- in a per-layer compression policy -------------------------------------------------------------

def test_a_policy_rule_runs_powersgd_in_the_reducer():
    """A policy's PowerSGD rule gets its tensors' shapes and counts one step per reduce, like a whole reducer."""
    names = ["W1", "b1", "W2"]
    shapes = [(40, 24), (24,), (24, 8)]
    by_policy = GradientReducer(comm, policy={"W*": "powersgd2", "*": "none"}, names=names, min_compress_size=16,
                                seed=3)
    alone = GradientReducer(comm, "powersgd2", min_compress_size=16, seed=3)
    for step in range(13):
        gen = np.random.default_rng([step, rank])
        grads = [gen.standard_normal(s).astype(np.float32) for s in shapes]
        got = by_policy.reduce([g.copy() for g in grads])
        ref = alone.reduce([grads[0].copy(), grads[2].copy()])
        np.testing.assert_array_equal(got[0], ref[0])  # the rule's tensors: what PowerSGD alone gives them
        np.testing.assert_array_equal(got[2], ref[1])
    child = next(iter(by_policy._rule_reducers.values()))
    assert child.powersgd.step == 13 and child.powersgd.step > child.powersgd.start_iter
    assert len(set(comm.allgather(b"".join(g.tobytes() for g in got)))) == 1


def test_a_policy_rule_runs_powersgd_in_the_hook(process_group):
    torch = _torch()
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.004)
    state = process_group.ScaleMLHookState(comm, policy={"*.weight": "powersgd2", "*": "none"}, model=ddp,
                                           min_compress_numel=64, nonblocking=False)
    ddp.register_comm_hook(state, process_group.allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    exact_phase = 0
    for s in range(14):
        if s == 10:  # start_iter: the first 10 steps are exact
            exact_phase = state.stats["per_rule"]["*.weight=powersgd2"]
        gen = np.random.default_rng([s, rank])
        X = torch.from_numpy(gen.standard_normal((16, 64)).astype(np.float32))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(X), torch.from_numpy(gen.integers(0, 10, 16))).backward()
        opt.step()
    child = next(iter(state._rule_states.values()))
    assert child.powersgd.step == 14
    noted = sorted(s for shapes in child._powersgd_shapes.values() for s in shapes)
    assert noted == [(10, 48), (48, 64)]  # the weights' matrices only: the biases are the exact rule's
    exact_ring = 2 * (size - 1) * (48 * 64 + 10 * 48) * 4 * 4 // size  # the last 4 steps, uncompressed
    assert state.stats["per_rule"]["*.weight=powersgd2"] - exact_phase < exact_ring / 2 or size == 1
    digest = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    assert len(set(comm.allgather(digest))) == 1

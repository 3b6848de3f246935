"""scaleml.train checkpoints resumed at another number of ranks (issue 22 item 3): 4 -> 2, 2 -> 3, 3 -> 5.

Every pair runs on sub-communicators of one job (5 ranks run every pair; fewer ranks run the pairs that fit).
The ranks a pair does not use wait in a sleeping loop, so they leave the cores to the ranks that train.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.quantized import block_range
from scaleml.train import TrainConfig, train
from scaleml.train.checkpoint import rank_file

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

PAIRS = [(4, 2), (2, 3), (3, 5)]
BASE = dict(dataset="synthetic", synthetic_samples=1200, synthetic_features=24, synthetic_classes=5, model="mlp",
            hidden=[16], optimizer="momentum", lr=0.1, batch_size=64, seed=3, min_compress_size=64, quiet=True,
            check_every=10)
# the configuration of tests/mpi/mpi_train_accuracy.py (1-bit within 1 point of exact there), 30 + 30 epochs
DIGITS = dict(dataset="digits", model="mlp", hidden=[32], optimizer="sgd", lr=0.2, batch_size=32, seed=0,
              min_compress_size=256, quiet=True, check_every=0)
TIMES = ("time_", "elapsed", "bytes_")


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory every rank sees (rank 0 makes it), removed afterwards."""
    path = comm.bcast(tempfile.mkdtemp(prefix="scaleml-reshard-") if rank == 0 else None, root=0)
    yield path
    comm.Barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def on_ranks(n: int, work: Callable[[MPI.Intracomm], Any]) -> Any:
    """Run ``work(sub)`` on the first ``n`` ranks; the others sleep until every rank is done. The result on the
    first ``n`` ranks, ``None`` on the others."""
    sub = comm.Split(0 if rank < n else MPI.UNDEFINED, rank)
    result = error = None
    try:
        if sub != MPI.COMM_NULL:
            result = work(sub)
    except Exception as exc:  # raised on every rank below, so that no rank goes on alone
        error = exc
    if sub != MPI.COMM_NULL:
        sub.Free()
    done = comm.Ibarrier()
    while not done.Test():
        time.sleep(0.002)
    failed = comm.allgather(None if error is None else repr(error))
    if error is not None:
        raise error
    if any(failed):
        raise RuntimeError(f"failed on other ranks: {[f for f in failed if f][:2]}")
    return result


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_reference(source: str, target: str, new_size: int) -> dict[str, float]:
    """A checkpoint of ``new_size`` ranks written by hand from ``source`` (rank 0 only), the reference's input.

    Its definition, independent of scaleml.reshard: parameters, optimizer state and step from old rank 0; every
    new rank's worker residual (``ef/residual/<b>`` and ``.../worker``) is the old ranks' residuals summed in
    float64 and divided by the new number of ranks, rounded once to float32; the server residuals (``.../server``)
    are the old owners' ranges concatenated and cut at ``block_range(n, new_size, r)``; everything else is old
    rank 0's. Returns, per worker residual, the largest deviation of the new sum from the old one relative to
    the largest old sum (float32 rounding: below 2**-23).
    """
    with open(os.path.join(source, "meta.json")) as f:
        meta = json.load(f)
    old = [load(rank_file(source, r)) for r in range(meta["world_size"])]
    os.makedirs(target)
    deviation = {}
    for r in range(new_size):
        state = {}
        for key, value in old[0].items():
            if key in ("world_size", "rank", "reducer/world_size", "reducer/rank"):
                state[key] = np.array(new_size if key.endswith("world_size") else r, dtype=np.int64)
            elif key.startswith("reducer/ef/residual/") and key.endswith("/server"):
                whole = np.concatenate([s[key] for s in old])
                start, length = block_range(whole.size, new_size, r)
                state[key] = whole[start:start + length]
            elif key.startswith("reducer/ef/residual/"):
                total = np.sum([s[key].astype(np.float64) for s in old], axis=0)
                state[key] = (total / new_size).astype(value.dtype)
                again = state[key].astype(np.float64) * new_size
                deviation[key] = float(np.max(np.abs(again - total)) / max(np.max(np.abs(total)), 1e-30))
            else:
                state[key] = value
        np.savez(rank_file(target, r), **state)
    with open(os.path.join(target, "meta.json"), "w") as f:
        json.dump(dict(meta, world_size=new_size), f)
    return deviation


def without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if not k.startswith(TIMES)} for e in history]


@pytest.mark.parametrize("compression", ["onebit", "topk0.05", "qsgd4_ef"])
@pytest.mark.parametrize("old_size,new_size", PAIRS)
def test_resumed_run_equals_a_reference_fed_the_same_residual_sum(shared_dir, old_size, new_size, compression,
                                                                  capsys):
    if max(old_size, new_size) > size:
        pytest.skip(f"needs {max(old_size, new_size)} ranks")
    cfg = dict(BASE, compression=compression)
    resharded, reference = os.path.join(shared_dir, "resharded"), os.path.join(shared_dir, "reference")
    on_ranks(old_size, lambda sub: train(TrainConfig(epochs=1, checkpoint=resharded, **cfg), sub))
    deviation: Any = None
    if rank == 0:
        try:
            deviation = write_reference(resharded, reference, new_size)
        except Exception as exc:  # told to every rank, not left for them to wait on
            deviation = repr(exc)
    deviation = comm.bcast(deviation, root=0)
    assert isinstance(deviation, dict), deviation
    assert deviation and all(d < 2.0 ** -23 for d in deviation.values()), deviation  # conserved to float32 rounding
    capsys.readouterr()
    quiet = dict(cfg, quiet=False)
    got = on_ranks(new_size, lambda sub: train(TrainConfig(epochs=2, checkpoint=resharded, resume=True, **quiet), sub))
    said = capsys.readouterr().out
    want = on_ranks(new_size, lambda sub: train(TrainConfig(epochs=2, checkpoint=reference, resume=True, **cfg), sub))
    problems: list[str] = []
    if rank < new_size:
        if rank == 0 and f"resuming a checkpoint of {old_size} ranks at {new_size} ranks: residuals resharded, " \
                "sum conserved" not in said:
            problems.append(f"no resharding line in {said!r}")
        if [e["epoch"] for e in got.history] != [1, 2] or got.world_size != new_size:
            problems.append(f"epochs {[e['epoch'] for e in got.history]} at {got.world_size} ranks")
        if not all(np.array_equal(a, b) for a, b in zip(got.params, want.params)):
            problems.append("the parameters differ from the reference's")
        if without_times(got.history) != without_times(want.history):
            problems.append("the metrics differ from the reference's")
        # and every state after the resumed epoch: residuals, moments, counters, bit for bit
        a, b = load(rank_file(resharded, rank)), load(rank_file(reference, rank))
        problems += [f"state {k!r} differs" for k in sorted(set(a) | set(b))
                     if k not in a or k not in b or a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]
        with open(os.path.join(resharded, "meta.json")) as f:
            if json.load(f)["world_size"] != new_size:
                problems.append("meta.json names another world size")
    # agreed, so that every rank fails (or passes) the same test
    everyone = comm.allgather(problems)
    assert not any(everyone), [f"rank {r}: {p[:4]}" for r, p in enumerate(everyone) if p]


def test_a_resumed_onebit_run_reaches_the_uninterrupted_accuracy(shared_dir):
    """1-bit on digits: 60 epochs at 4 ranks, against 30 at 4 ranks resumed for 30 more at 2 (the resumed epochs
    take a global batch of 64 instead of 128). The margin is the issue's: at most 1 point below."""
    if size < 4:
        pytest.skip("needs 4 ranks")
    cfg = dict(DIGITS, compression="onebit")
    straight = on_ranks(4, lambda sub: train(TrainConfig(epochs=60, **cfg), sub).history[-1]["test_accuracy"])
    path = os.path.join(shared_dir, "digits")
    on_ranks(4, lambda sub: train(TrainConfig(epochs=30, checkpoint=path, **cfg), sub))
    history = on_ranks(2, lambda sub: train(TrainConfig(epochs=60, checkpoint=path, resume=True, **cfg), sub).history)
    straight, history = comm.bcast((straight, history), root=0)
    before, after, resumed = (history[i]["test_accuracy"] for i in (29, 30, -1))
    if rank == 0:
        print(f"\n[digits onebit] 4 ranks x 60 epochs: {straight:.4f}; 4 x 30 then 2 x 30: {resumed:.4f} (epoch 30: "
              f"{before:.4f}, 31: {after:.4f})")
    assert straight > 0.95 and len(history) == 60
    assert after >= before - 0.02  # the run continues from where it was, it does not start again
    assert resumed >= straight - 0.01


@pytest.mark.parametrize("compression", ["onebit", "topk0.05"])
@pytest.mark.parametrize("old_size,new_size", PAIRS)
def test_hook_state_loads_every_old_ranks_state_at_another_number_of_ranks(old_size, new_size, compression):
    """ScaleMLHookState (reduce_ without DDP): the list of the old ranks' states loads at the new size; the summed
    worker residual is conserved to float32 rounding and the resumed state reduces identically everywhere."""
    if max(old_size, new_size) > size:
        pytest.skip(f"needs {max(old_size, new_size)} ranks")
    pytest.importorskip("torch")
    smt = pytest.importorskip("scaleml.torch")
    numel = 1000
    worker = "ef/residual/bucket0/worker" if compression == "onebit" else "ef/residual/bucket0"

    def old_run(sub: MPI.Intracomm) -> list[dict[str, Any]]:
        state = smt.ScaleMLHookState(sub, compression, min_compress_numel=8, nonblocking=False)
        rng = np.random.default_rng(sub.Get_rank())
        for _ in range(3):
            state.reduce_(0, rng.standard_normal(numel).astype(np.float32))
        return sub.allgather(state.state_dict())

    def new_run(sub: MPI.Intracomm) -> tuple[np.ndarray, np.ndarray]:
        state = smt.ScaleMLHookState(sub, compression, min_compress_numel=8, nonblocking=False)
        state.load_state_dict(old)
        assert state.error_feedback is not None
        total = state.error_feedback.residual(worker[len("ef/residual/"):]).astype(np.float64)
        sub.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        out = state.reduce_(0, np.full(numel, 0.5, dtype=np.float32))
        return total, np.concatenate(sub.allgather(out))

    old = comm.bcast(on_ranks(old_size, old_run), root=0)
    result = on_ranks(new_size, new_run)
    problems = []
    if rank < new_size:
        total, outs = result
        before = np.sum([s[worker].numpy().astype(np.float64) for s in old], axis=0)
        if not np.all(np.abs(total - before) <= 2.0 ** -23 * np.abs(before)):
            problems.append(f"worker residual sum moved by {np.max(np.abs(total - before))}")
        if not np.array_equal(outs.reshape(new_size, numel), np.broadcast_to(outs[:numel], (new_size, numel))):
            problems.append("the ranks' results differ")
    everyone = comm.allgather(problems)
    assert not any(everyone), everyone

"""scaleml.train checkpoints on every rank: a resumed run equals the straight one bit for bit; bad checkpoints
fail with the same error on every rank."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import TrainConfig, TrainingError, train
from scaleml.train.checkpoint import load_checkpoint, rank_file

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

BASE = dict(dataset="synthetic", synthetic_samples=1200, synthetic_features=24, synthetic_classes=5, model="mlp",
            hidden=[16], optimizer="momentum", lr=0.1, batch_size=64, seed=3, min_compress_size=64, quiet=True,
            check_every=1)
TIMES = ("time_", "elapsed")


@pytest.fixture
def shared_dir():
    """A directory every rank sees (rank 0 makes it), removed afterwards."""
    path = comm.bcast(tempfile.mkdtemp(prefix="scaleml-train-") if rank == 0 else None, root=0)
    yield path
    comm.Barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def without_times(history):
    return [{k: v for k, v in e.items() if not k.startswith(TIMES)} for e in history]


@pytest.mark.parametrize("compression,optimizer", [("none", "momentum"), ("topk0.05", "momentum"),
                                                   ("onebit", "adam"), ("qsgd4", "sgd")])
def test_resume_equals_the_straight_run_bit_for_bit(shared_dir, compression, optimizer):
    cfg = dict(BASE, compression=compression, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.1)
    straight_dir, split_dir = os.path.join(shared_dir, "straight"), os.path.join(shared_dir, "split")
    straight = train(TrainConfig(epochs=3, checkpoint=straight_dir, **cfg), comm)
    first = train(TrainConfig(epochs=1, checkpoint=split_dir, **cfg), comm)
    assert len(first.history) == 1
    resumed = train(TrainConfig(epochs=3, checkpoint=split_dir, resume=True, **cfg), comm)
    # the parameters, and every rank's whole state: optimizer moments, residuals, step counters
    assert all(np.array_equal(a, b) for a, b in zip(straight.params, resumed.params))
    a, b = load(rank_file(straight_dir, rank)), load(rank_file(split_dir, rank))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    if compression in ("topk0.05", "onebit"):
        residuals = [k for k in a if k.startswith("reducer/ef/residual/")]
        assert residuals and any(np.abs(a[k]).max() > 0 for k in residuals)
    # the history (metrics, without the times) continues too; the resumed run reports all three epochs
    assert without_times(resumed.history) == without_times(straight.history)
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    with open(os.path.join(split_dir, "meta.json")) as f:
        meta = json.load(f)
    assert meta["epoch"] == 3 and meta["world_size"] == size and meta["config"]["compression"] == compression
    leftovers = [n for n in os.listdir(split_dir) if n.endswith(".tmp")]
    assert not leftovers  # written through temporary files and renamed


def _checkpoint(directory: str) -> dict:
    cfg = dict(BASE, compression="topk0.05", epochs=1, checkpoint=directory)
    train(TrainConfig(**cfg), comm)
    return dict(cfg, epochs=2, resume=True)


def _expect_everywhere(cfg: dict, match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        train(TrainConfig(**cfg), comm)
    comm.Barrier()


def test_a_corrupt_file_on_one_rank_fails_on_every_rank(shared_dir):
    cfg = _checkpoint(shared_dir)
    if rank == size - 1:
        with open(rank_file(shared_dir, rank), "r+b") as f:
            f.seek(30)
            f.write(b"\x00garbage\x00" * 8)
    comm.Barrier()
    _expect_everywhere(cfg, f"rank {size - 1}: corrupt checkpoint file .*rank{size - 1}.npz")


def test_a_missing_file_on_one_rank_fails_on_every_rank(shared_dir):
    cfg = _checkpoint(shared_dir)
    if rank == size - 1:
        os.unlink(rank_file(shared_dir, rank))
    comm.Barrier()
    _expect_everywhere(cfg, f"checkpoint file .*rank{size - 1}.npz is missing")


def test_a_file_of_another_epoch_is_refused(shared_dir):
    cfg = _checkpoint(shared_dir)
    comm.Barrier()
    if rank == 0:
        path = os.path.join(shared_dir, "meta.json")
        with open(path) as f:
            meta = json.load(f)
        meta["epoch"] = 7
        with open(path, "w") as f:
            json.dump(meta, f)
    comm.Barrier()
    _expect_everywhere(cfg, "holds epoch 1, expected 7")


def test_no_checkpoint_and_other_configurations_are_refused(shared_dir):
    _expect_everywhere(dict(BASE, resume=True, checkpoint=os.path.join(shared_dir, "nothing")),
                       "no checkpoint to resume from")
    cfg = _checkpoint(shared_dir)
    _expect_everywhere(dict(cfg, lr=0.2), r"another configuration \(lr: 0.1 -> 0.2\)")
    _expect_everywhere(dict(cfg, compression="qsgd4"), "another configuration .*compression: 'topk0.05' -> 'qsgd4'")
    # another number of ranks: refused without a reshard function (scaleml-train passes one:
    # tests/mpi/mpi_train_reshard.py)
    if size > 1:
        sub = comm.Split(0 if rank < size - 1 else MPI.UNDEFINED, rank)
        if sub != MPI.COMM_NULL:
            with pytest.raises(TrainingError, match=f"written by {size} ranks; resume it with mpiexec -n {size}"):
                load_checkpoint(shared_dir, sub, TrainConfig(**cfg).identity())
            sub.Free()
        comm.Barrier()
    # and the checkpoint still resumes with the right configuration
    assert [e["epoch"] for e in train(TrainConfig(**cfg), comm).history] == [1, 2]

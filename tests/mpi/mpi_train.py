"""scaleml.train.train on every rank: the loss decreases and the replicas stay identical, for every model."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import TrainConfig, TrainingError, train

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def identical_everywhere(arrays: list[np.ndarray]) -> bool:
    mine = b"".join(a.tobytes() for a in arrays)
    return all(x == mine for x in comm.allgather(mine))


SMALL = dict(quiet=True, check_every=1, seed=0)
CONVERGENCE = [
    TrainConfig(dataset="digits", model="softmax", optimizer="sgd", lr=0.5, epochs=3, compression="none", **SMALL),
    TrainConfig(dataset="synthetic", model="linear", synthetic_samples=2000, synthetic_features=10, optimizer="sgd",
                lr=0.05, epochs=3, compression="qsgd8", min_compress_size=4, **SMALL),
    TrainConfig(dataset="synthetic", model="logistic", synthetic_samples=2000, synthetic_features=10,
                optimizer="adam", lr=0.05, epochs=3, compression="topk0.2", min_compress_size=4, **SMALL),
    TrainConfig(dataset="digits", model="mlp", hidden=[16, 16], optimizer="sgd", lr=0.3, epochs=3,
                compression="onebit", min_compress_size=64, fusion_bytes=0, **SMALL),
]


@pytest.mark.parametrize("config", CONVERGENCE, ids=lambda c: f"{c.model}-{c.optimizer}-{c.compression}")
def test_loss_decreases_and_replicas_stay_identical(config):
    result = train(config, comm)
    h = result.history
    assert [e["epoch"] for e in h] == [1, 2, 3]
    assert h[-1]["train_loss"] < h[0]["train_loss"], [e["train_loss"] for e in h]
    assert h[-1]["test_loss"] < 0.5 * result.initial["test_loss"], (result.initial, h[-1])
    if config.model == "linear":
        assert h[-1]["test_r2"] > 0.9, h[-1]
    else:
        assert h[-1]["test_accuracy"] > 0.7, h[-1]  # chance: 0.1 (digits), 0.5 (binary)
    assert identical_everywhere(result.params)
    # the metrics are the same on every rank, and the time and byte counters add up
    assert comm.allgather(h[-1]["test_loss"]) == [h[-1]["test_loss"]] * size
    for e in h:
        assert 0 <= e["time_compute"] <= e["time_train"] and 0 <= e["time_collective"] <= e["time_reduce"]
        assert (e["bytes_sent_per_rank"] > 0) == (size > 1)
    assert result.reducer.stats.calls == h[-1]["step"]


@pytest.mark.parametrize("compression", ["none", "qsgd4"])
def test_a_diverging_run_fails_with_one_error_on_every_rank(compression):
    config = TrainConfig(dataset="synthetic", model="linear", synthetic_samples=2000, synthetic_features=10, lr=5.0,
                         epochs=3, compression=compression, min_compress_size=4, quiet=True)
    with pytest.raises(TrainingError, match="diverged"):
        train(config, comm)


def test_a_target_accuracy_stops_every_rank_at_the_first_epoch_that_reaches_it():
    base = dict(dataset="digits", model="softmax", optimizer="sgd", lr=0.5, quiet=True, seed=0)
    full = train(TrainConfig(epochs=6, **base), comm)
    accs = [e["test_accuracy"] for e in full.history]
    target = accs[2]  # reached at epoch 3 at the latest
    first = next(i for i, a in enumerate(accs) if a >= target) + 1
    assert full.summary()["target"] is None
    folder = comm.bcast(tempfile.mkdtemp(prefix="scaleml-target-") if rank == 0 else None, root=0)
    ck = os.path.join(folder, "ck")
    stopped = train(TrainConfig(epochs=6, target_accuracy=target, checkpoint=ck, **base), comm)
    assert [e["epoch"] for e in stopped.history] == list(range(1, first + 1))
    assert [e["test_accuracy"] for e in stopped.history] == accs[:first]  # the same run, cut short
    t = stopped.summary()["target"]
    last = stopped.history[-1]
    assert t["reached"] and t["epoch"] == first and t["accuracy"] == target
    assert (t["elapsed"], t["elapsed_wall"], t["bytes_total_per_rank"]) == (
        last["elapsed"], last["elapsed_wall"], last["bytes_total_per_rank"])
    for e in stopped.history:  # wall time: the training time and the evaluation, the slowest rank's
        assert e["time_wall"] >= e["time_train"] and e["time_wall"] >= e["time_eval"]
    walls = [e["time_wall"] for e in stopped.history]
    assert abs(last["elapsed_wall"] - sum(walls)) < 1e-9 and last["elapsed_wall"] >= last["elapsed"]
    # resuming a run that stopped at its target trains no more; a higher target continues it
    again = train(TrainConfig(epochs=6, target_accuracy=target, checkpoint=ck, resume=True, **base), comm)
    assert len(again.history) == first
    unreachable = train(TrainConfig(epochs=first + 1, target_accuracy=1.0, checkpoint=ck, resume=True, **base), comm)
    assert len(unreachable.history) == first + 1 and not unreachable.summary()["target"]["reached"]
    assert unreachable.summary()["target"]["epoch"] is None
    comm.Barrier()
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)

"""scaleml.train.train on every rank: the loss decreases and the replicas stay identical, for every model."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import TrainConfig, TrainingError, train

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

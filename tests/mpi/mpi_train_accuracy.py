"""scaleml.train on digits: every compressor against the exact run, same epochs, within 1 point of accuracy."""

from __future__ import annotations

import pytest
from mpi4py import MPI

from scaleml.train import TrainConfig, train

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


# The comparison on digits. The configuration was chosen from the exact run alone (it plateaus at about 97% by
# epoch 12 on 2 and 4 ranks), and the margin decided before any compressed run: every compressor must end the
# same 15 epochs at most 1 point of test accuracy below the exact run (doing better is fine). Both weight
# matrices (64x32, 32x10, fused into one bucket) are compressed (min_compress_size=256); the biases are
# averaged exactly. Fixed seeds and algorithms: the numbers are reproducible on a machine.
DIGITS = dict(dataset="digits", model="mlp", hidden=[32], optimizer="momentum", lr=0.1, batch_size=32, epochs=15,
              seed=0, min_compress_size=256, quiet=True)

# The compressors that measured more than 1 point short, kept in the comparison and marked (not skipped):
# pytest reports them as xfailed, and a strict mark fails the run if one starts to pass.
SHORT = {
    "topk0.01": pytest.mark.xfail(strict=True, reason=(
        "ends about 3 points short (94.2% vs 97.2% at P=2, 93.9% vs 97.2% at P=4): 24 of 2368 values per rank "
        "and step; it reaches the exact accuracy after about 30 epochs")),
    "onebit": pytest.mark.xfail(strict=True, reason=(
        "diverges with momentum 0.9 and lr 0.1 (37% at P=2, 45% at P=4); with plain SGD at lr 0.1 it reaches "
        "93.6% at P=2 in 15 epochs")),
    "adaptive": pytest.mark.xfail(strict=False, reason=(
        "within 1 point at P=2 (96.4% vs 97.2%), 1.9 points short at P=4 (95.3% vs 97.2%)")),
}
DENSE = ["dropin", "sparse", "qsgd4", "qsgd4_ef", "qsgd8", "fp16"]
SPARSIFIERS = ["topk0.01", "onebit", "adaptive"]
_exact: dict[str, float] = {}


def exact_run() -> dict[str, float]:
    if not _exact:
        final = train(TrainConfig(compression="none", **DIGITS), comm).history[-1]
        _exact.update(acc=final["test_accuracy"], bytes=final["bytes_total_per_rank"])
        assert _exact["acc"] > 0.95, "the exact run must converge for the comparison to mean anything"
    return _exact


@pytest.mark.parametrize("compression", [pytest.param(c, marks=SHORT[c]) if c in SHORT else c
                                         for c in DENSE + SPARSIFIERS])
def test_compressor_reaches_the_exact_accuracy_within_one_point(compression):
    exact = exact_run()
    final = train(TrainConfig(compression=compression, **DIGITS), comm).history[-1]
    acc = final["test_accuracy"]
    if rank == 0:
        print(f"\n[digits P={size}] {compression}: test accuracy {acc:.4f} vs exact {exact['acc']:.4f} "
              f"({100 * (acc - exact['acc']):+.2f} points), {final['bytes_total_per_rank'] / 1e6:.3f} MB/rank "
              f"vs {exact['bytes'] / 1e6:.3f}")
    if size > 1 and compression not in ("dropin", "sparse"):
        assert final["bytes_total_per_rank"] < exact["bytes"]
    assert acc >= exact["acc"] - 0.01, f"{compression}: {acc:.4f} vs exact {exact['acc']:.4f}"
